//! `postern`: the command-line entry point. Thin: each subcommand parses its
//! arguments and calls into the library crates.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern::{demo, explain, load_policy, shutdown_signal};
use postern_policy::{Config, Policy, Severity};
use time::OffsetDateTime;

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "An identity-aware access gateway whose authentication opt-outs are guarded side gates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway described by a config file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a working gateway in one directory (CA, certificates, JWT issuer, policy, echo upstream) and serve it.
    Demo {
        #[arg(long, default_value = "./postern-demo")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8443")]
        listen: std::net::SocketAddr,
        /// Let browsers sign in at this OpenID provider (issuer URL; discovery
        /// at <issuer>/.well-known/openid-configuration).
        #[arg(long, value_name = "ISSUER_URL")]
        oidc: Option<String>,
        /// The demo's client id at the provider (redirect URI:
        /// https://localhost:PORT/_postern/oidc/callback).
        #[arg(long, default_value = "postern-demo", requires = "oidc")]
        oidc_client_id: String,
        /// File holding the client secret (omit for a public client with PKCE).
        #[arg(long, requires = "oidc")]
        oidc_client_secret_file: Option<PathBuf>,
        /// Extra trust anchor (PEM) for the provider's TLS certificate.
        #[arg(long, requires = "oidc")]
        oidc_ca: Option<PathBuf>,
    },
    /// Lint a config: every problem with file, line and field. Exit 1 on any error.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Show what the gateway would decide for a request, and why.
    Explain(explain::ExplainArgs),
    /// Signed review of opt-out changes: keygen, digest, approve, verify, diff.
    Policy {
        #[command(subcommand)]
        command: postern::policy_cmd::PolicyCommand,
    },
    /// Built-in CA: init, issue (with grants), revoke, crl, renew.
    Ca {
        #[command(subcommand)]
        command: postern::ca_cmd::CaCommand,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chain and signed checkpoints; names the first bad record.
    Verify {
        file: PathBuf,
        /// Checkpoint public key: a PEM file (e.g. audit.pub) or 64 hex characters.
        #[arg(long)]
        key: String,
    },
}

/// mimalloc: the proxy allocates and frees per request on several threads;
/// glibc's allocator spent ~17% of the CPU in malloc/free under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("postern: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let rt = runtime()?;
            rt.block_on(serve(&config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo {
            dir,
            listen,
            oidc,
            oidc_client_id,
            oidc_client_secret_file,
            oidc_ca,
        } => {
            let oidc = oidc.map(|issuer| demo::DemoOidc {
                issuer,
                client_id: oidc_client_id,
                client_secret_file: oidc_client_secret_file.map(absolute),
                extra_ca: oidc_ca.map(absolute),
            });
            let rt = runtime()?;
            rt.block_on(demo::run(&dir, listen, oidc))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => Ok(check(&config)),
        Command::Explain(args) => {
            let rt = runtime()?;
            rt.block_on(explain::run(args))
        }
        Command::Audit {
            command: AuditCommand::Verify { file, key },
        } => audit_verify(&file, &key),
        Command::Policy { command } => postern::policy_cmd::run(command),
        Command::Ca { command } => postern::ca_cmd::run(command),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(path: &Path) -> anyhow::Result<()> {
    let (config, policy) = load_policy(path)?;
    let gw = postern_gateway::start(&config, policy).await?;
    tracing::info!(addr = %gw.local_addr, "postern is serving");
    if let Some(admin) = gw.admin_addr {
        tracing::info!("metrics on http://{admin}/metrics");
    }
    if let Some(console) = gw.console_addr {
        tracing::info!("admin console (mTLS) on https://{console}/");
    }
    let reloader = postern_gateway::reload::spawn_reloader(
        gw.shared.clone(),
        path.to_path_buf(),
        postern_gateway::reload::ReloadOptions::default(),
    );
    shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    reloader.stop().await;
    gw.shutdown().await;
    Ok(())
}

fn check(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(diags) => {
            postern::print_diagnostics(&diags);
            return ExitCode::from(1);
        }
    };
    let diags = Policy::check(&config, OffsetDateTime::now_utc());
    postern::print_diagnostics(&diags);
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = diags.len() - errors;
    if errors > 0 {
        eprintln!(
            "{}: {errors} error(s), {warnings} warning(s)",
            path.display()
        );
        ExitCode::from(1)
    } else {
        println!(
            "{}: ok ({} route(s), {} opt-out rule(s), {warnings} warning(s))",
            path.display(),
            config.routes.len(),
            config.optouts.len()
        );
        ExitCode::SUCCESS
    }
}

fn audit_verify(file: &Path, key: &str) -> anyhow::Result<ExitCode> {
    let key = postern_audit::read_verifying_key(key)
        .with_context(|| format!("reading the verification key `{key}`"))?;
    match postern_audit::verify_file(file, &key) {
        Ok(report) => {
            println!(
                "{}: intact: {} records, {} signed checkpoints, last seq {}",
                file.display(),
                report.records,
                report.checkpoints,
                report.last_seq
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: TAMPERED OR DAMAGED: {e}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}

/// Paths given on the command line, made absolute (the demo config lives in
/// another directory).
fn absolute(p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    }
}
