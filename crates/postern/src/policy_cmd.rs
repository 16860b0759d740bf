//! `postern policy …`: reviewer keys, the opt-out digest, approvals,
//! verification and the semantic diff (invariant 6).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use postern_policy::Config;
use postern_review::approvals::{append_approval, approvals_path};
use postern_review::reviewers::{read_signing_key, write_keypair};
use postern_review::{check_config, Approval, ReviewStatus, Reviewers};
use time::OffsetDateTime;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Make a reviewer key pair: NAME.key (private, 0600) and NAME.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the digest of what the config's opt-outs let through.
    Digest {
        #[arg(long)]
        config: PathBuf,
    },
    /// Sign the config's current opt-out digest; appends to `<config>.approvals`.
    Approve {
        #[arg(long)]
        config: PathBuf,
        /// The reviewer's private key (from `policy keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Reviewer id; default: the reviewer whose public key matches.
        #[arg(long)]
        reviewer: Option<String>,
    },
    /// Who approved the current digest, and whether the quorum holds (exit 1 if not).
    Verify {
        #[arg(long)]
        config: PathBuf,
    },
    /// Explain opt-out changes: `diff OLD NEW`, or `diff --git REV --config FILE`.
    Diff {
        /// Old config file (or, with --git, nothing).
        old: Option<PathBuf>,
        /// New config file.
        new: Option<PathBuf>,
        /// Compare FILE at this git revision with FILE in the working tree.
        #[arg(long = "git", value_name = "REV")]
        git: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn run(cmd: PolicyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCommand::Keygen { out } => keygen(&out),
        PolicyCommand::Digest { config } => {
            let c = load_config(&config)?;
            println!("{}", postern_review::digest(&c));
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Approve {
            config,
            key,
            reviewer,
        } => approve(&config, &key, reviewer.as_deref()),
        PolicyCommand::Verify { config } => verify(&config),
        PolicyCommand::Diff {
            old,
            new,
            git,
            config,
        } => diff(old, new, git, config),
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|diags| {
        crate::print_diagnostics(&diags);
        anyhow::anyhow!("`{}` cannot be parsed", path.display())
    })
}

fn keygen(out: &Path) -> anyhow::Result<ExitCode> {
    let key = postern_review::reviewers::generate_key();
    let (key_path, pub_path) = write_keypair(out, &key)?;
    let id = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "reviewer".to_string());
    println!(
        "wrote {} (keep it secret) and {}",
        key_path.display(),
        pub_path.display()
    );
    println!("add to reviewers.toml:");
    println!();
    println!("[[reviewer]]");
    println!("id = \"{id}\"");
    println!("name = \"{id}\"");
    println!(
        "public_key = \"{}\"",
        hex::encode(key.verifying_key().to_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

fn approve(
    config_path: &Path,
    key_path: &Path,
    reviewer: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    // Never sign what the gateway would refuse anyway: a reviewer approves a
    // policy that compiles, and sees its warnings first.
    let diags = postern_policy::Policy::check(&config, time::OffsetDateTime::now_utc());
    crate::print_diagnostics(&diags);
    let errors = diags
        .iter()
        .filter(|d| d.severity == postern_policy::Severity::Error)
        .count();
    if errors > 0 {
        bail!(
            "`{}` has {errors} error(s) above: fix them before approving",
            config_path.display()
        );
    }
    let key = read_signing_key(key_path)?;
    let digest = postern_review::digest(&config);
    let reviewers = match &config.review {
        Some(r) => Some(Reviewers::load(&config.resolve(&r.reviewers))?),
        None => None,
    };
    let id = match (&reviewers, reviewer) {
        (Some(rs), Some(id)) => {
            let Some(r) = rs.get(id) else {
                bail!("`{id}` is not a reviewer in `{}`", rs.path.display());
            };
            if r.key != key.verifying_key() {
                bail!(
                    "`{}` is not reviewer `{id}`'s key (per `{}`)",
                    key_path.display(),
                    rs.path.display()
                );
            }
            id.to_string()
        }
        (Some(rs), None) => match rs.by_key(&key.verifying_key()) {
            Some(r) => r.id.clone(),
            None => bail!(
                "`{}` belongs to no reviewer in `{}`",
                key_path.display(),
                rs.path.display()
            ),
        },
        (None, Some(id)) => id.to_string(),
        (None, None) => bail!(
            "`{}` has no [review] section; pass --reviewer ID",
            config_path.display()
        ),
    };
    if let Some(r) = reviewers.as_ref().and_then(|rs| rs.get(&id)) {
        if r.removed {
            bail!("reviewer `{id}` is removed; the approval would not count");
        }
    }
    let approval = Approval::sign(&key, &id, &digest, OffsetDateTime::now_utc());
    let path = approvals_path(config_path);
    append_approval(&path, &approval)?;
    println!("{id} approved {digest}");
    println!("appended to {}", path.display());
    if let Some(status) = check_config(&config)? {
        println!("{}", status.verification.summary());
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path)?;
    let Some(status) = check_config(&config)? else {
        println!(
            "{}: no [review] section: opt-out changes are not enforced (digest {})",
            config_path.display(),
            postern_review::digest(&config)
        );
        return Ok(ExitCode::from(1));
    };
    print_status(&status);
    Ok(if status.verification.holds() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_status(status: &ReviewStatus) {
    let v = &status.verification;
    println!("digest: {}", v.digest);
    println!(
        "reviewers: {} (quorum {} of {} active)",
        status.reviewers.path.display(),
        v.quorum,
        status.reviewers.active_keys().len()
    );
    for id in &v.approvers {
        let name = status
            .reviewers
            .get(id)
            .map(|r| r.name.as_str())
            .unwrap_or("");
        println!("  approved: {id} ({name})");
    }
    for i in &v.ignored {
        println!("  not counted: {i}");
    }
    if v.holds() {
        println!(
            "quorum holds: {} of {} approvals",
            v.approvers.len(),
            v.quorum
        );
    } else {
        println!(
            "quorum NOT met: {} of {} approvals; the gateway refuses this policy",
            v.approvers.len(),
            v.quorum
        );
    }
}

/// The text of `file` at git revision `rev` (`git show REV:./NAME` run in
/// the file's directory).
fn git_show(rev: &str, file: &Path) -> anyhow::Result<String> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = file
        .file_name()
        .with_context(|| format!("`{}` names no file", file.display()))?;
    if rev.starts_with('-') {
        bail!("`{rev}` is not a git revision");
    }
    let spec = format!("{rev}:./{}", name.to_string_lossy());
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(&dir)
        .arg("show")
        .arg(&spec)
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!(
            "git show {spec} (in {}): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{spec} is not UTF-8"))
}

fn diff(
    old: Option<PathBuf>,
    new: Option<PathBuf>,
    git: Option<String>,
    config: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let (old_cfg, new_cfg) = match (git, config, old, new) {
        (Some(rev), Some(file), None, None) | (Some(rev), None, Some(file), None) => {
            let text = git_show(&rev, &file)?;
            let label = PathBuf::from(format!("{rev}:{}", file.display()));
            let old = Config::parse(&label, &text).map_err(|d| {
                crate::print_diagnostics(&d);
                anyhow::anyhow!("`{}` cannot be parsed", label.display())
            })?;
            (old, load_config(&file)?)
        }
        (None, None, Some(a), Some(b)) => (load_config(&a)?, load_config(&b)?),
        _ => bail!(
            "use `postern policy diff OLD NEW` or `postern policy diff --git REV --config FILE`"
        ),
    };
    let d = postern_review::diff::diff(&old_cfg, &new_cfg);
    println!(
        "{} -> {}",
        old_cfg.source.path.display(),
        new_cfg.source.path.display()
    );
    println!("{d}");
    if d.needs_approval() {
        if let Ok(Some(status)) = check_config(&new_cfg) {
            println!("{}", status.verification.summary());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Start-time enforcement: a config with `[review]` loads only with the
/// quorum over its current opt-out digest.
pub fn enforce(config: &Config) -> anyhow::Result<Option<ReviewStatus>> {
    let status = check_config(config).with_context(|| {
        format!(
            "`{}`: cannot check the opt-out review",
            config.source.path.display()
        )
    })?;
    if let Some(s) = &status {
        if !s.verification.holds() {
            let mut msg = format!(
                "`{}` is refused: {}",
                config.source.path.display(),
                s.verification.summary()
            );
            for i in &s.verification.ignored {
                msg.push_str(&format!("\n  not counted: {i}"));
            }
            msg.push_str(&format!(
                "\n  approve with: postern policy approve --config {} --key REVIEWER.key",
                config.source.path.display()
            ));
            bail!(msg);
        }
    }
    Ok(status)
}
