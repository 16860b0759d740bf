//! `postern ca …`: the built-in CA from the command line (DESIGN invariant 5: identity
//! comes from certificates that die young).
//!
//! `init`, `issue`, `revoke` and `crl` work on a CA directory through
//! [`postern_pki::CaStore`]; `renew` is the client side of the gateway's
//! `POST /v1/certs/renew` endpoint, optionally in a loop (`--watch`) that renews at two
//! thirds of each certificate's lifetime.
//!
//! Errors name the flag or file at fault; nothing here panics on input.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use postern_pki::{
    CaInitOptions, CaStore, ClientCertRequest, Grant, KeyAlg, Kind, PkiError, RevocationReason,
};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a CA directory: a root CA, or an intermediate under --parent-cert/--parent-key.
    Init(InitArgs),
    /// Issue a short-lived client certificate, optionally carrying signed opt-out grants.
    Issue(IssueArgs),
    /// Revoke one certificate (--serial) or every live certificate of an identity.
    Revoke(RevokeArgs),
    /// Export the CA's CRL (RFC 5280) as DER (PREFIX.crl) and PEM (PREFIX.crl.pem).
    Crl(CrlArgs),
    /// Renew a client certificate at a gateway over mTLS, with a new key (--watch: forever).
    Renew(RenewArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The CA directory to create (0700); refused if it already holds a CA.
    #[arg(long)]
    pub dir: PathBuf,
    /// SPIFFE trust domain of the identities issued: spiffe://<trust-domain>/<kind>/<name>.
    #[arg(long, default_value = "postern.local")]
    pub trust_domain: String,
    /// Subject CN of the CA certificate [default: "postern CA" / "postern intermediate CA"].
    #[arg(long)]
    pub common_name: Option<String>,
    /// Key algorithm of the CA and of the keys it generates.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    pub key_type: KeyType,
    /// Lifetime of a certificate when `issue` gets no --ttl (e.g. 30m, 8h, 1d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "8h")]
    pub default_ttl: Duration,
    /// Hard maximum lifetime any issuance may ask for (at most 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "24h")]
    pub max_ttl: Duration,
    /// Certificate (PEM) of the CA to sign this one under: makes an intermediate.
    #[arg(long, value_name = "PEM", requires = "parent_key")]
    pub parent_cert: Option<PathBuf>,
    /// Private key (PEM) of --parent-cert. It is read, never copied into --dir.
    #[arg(long, value_name = "PEM", requires = "parent_cert")]
    pub parent_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The CA directory (from `postern ca init`).
    #[arg(long)]
    pub dir: PathBuf,
    /// User or service name: one SPIFFE path segment (letters, digits, `.`, `-`, `_`).
    #[arg(long, value_name = "NAME")]
    pub identity: String,
    /// What the identity names.
    #[arg(long, value_enum, default_value_t = KindArg::User)]
    pub kind: KindArg,
    /// Certificate lifetime (e.g. 30m, 8h) [default: the CA's default_ttl]; never above max_ttl.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    /// A signed opt-out grant, repeatable:
    /// `id=ID,rules=R1+R2,waives=jwt,ttl=1h,reason=TEXT,approved_by=WHO`
    /// (rules/waives `+`-separated, at least one of them; ttl defaults to the certificate's;
    /// values cannot contain commas).
    #[arg(long = "grant", value_name = "SPEC", value_parser = parse_grant_spec)]
    pub grants: Vec<GrantSpec>,
    /// Sign the key in this PKCS#10 CSR (PEM) instead of generating one: only PREFIX.pem is
    /// written, the private key never leaves its owner. Names in the CSR are ignored.
    #[arg(long, value_name = "FILE")]
    pub csr: Option<PathBuf>,
    /// Output prefix: writes PREFIX.pem (certificate, plus chain for an intermediate CA)
    /// and PREFIX.key (private key, 0600).
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
#[command(group(ArgGroup::new("target").required(true).args(["serial", "identity"])))]
pub struct RevokeArgs {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Serial number in hex (any case, `:` separators allowed).
    #[arg(long)]
    pub serial: Option<String>,
    /// Revoke every unexpired certificate of this principal: `alice`, `service/billing`.
    #[arg(long, value_name = "NAME")]
    pub identity: Option<String>,
    /// RFC 5280 reason code recorded in the revocation list and the CRL.
    #[arg(long, value_enum, default_value_t = ReasonArg::Unspecified)]
    pub reason: ReasonArg,
    /// Revoke --serial even though this CA's issuance index does not list it (a lost index);
    /// without it an unknown serial is refused, so a typo never passes for a revocation.
    #[arg(long, requires = "serial")]
    pub allow_unknown_serial: bool,
}

#[derive(Args, Debug)]
pub struct CrlArgs {
    /// The CA directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Output prefix: writes PREFIX.crl (DER) and PREFIX.crl.pem.
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RenewArgs {
    /// The current client certificate (PEM, may be followed by its chain); replaced on success.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Its private key (PEM); replaced by the new key on success (0600).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The gateway: https://host:port
    #[arg(long, value_name = "URL")]
    pub gateway: String,
    /// CA certificate(s) to verify the gateway with [default: ca.pem next to --cert].
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// Keep running: renew at 2/3 of each certificate's lifetime; retry failures with
    /// backoff (1 s doubling to 5 min) until the certificate expires (then exit 1).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "ed25519")]
    Ed25519,
}

impl From<KeyType> for KeyAlg {
    fn from(k: KeyType) -> KeyAlg {
        match k {
            KeyType::EcdsaP256 => KeyAlg::EcdsaP256,
            KeyType::Ed25519 => KeyAlg::Ed25519,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    User,
    Service,
}

impl From<KindArg> for Kind {
    fn from(k: KindArg) -> Kind {
        match k {
            KindArg::User => Kind::User,
            KindArg::Service => Kind::Service,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReasonArg {
    Unspecified,
    KeyCompromise,
    Superseded,
    CessationOfOperation,
    AffiliationChanged,
    PrivilegeWithdrawn,
}

impl From<ReasonArg> for RevocationReason {
    fn from(r: ReasonArg) -> RevocationReason {
        match r {
            ReasonArg::Unspecified => RevocationReason::Unspecified,
            ReasonArg::KeyCompromise => RevocationReason::KeyCompromise,
            ReasonArg::Superseded => RevocationReason::Superseded,
            ReasonArg::CessationOfOperation => RevocationReason::CessationOfOperation,
            ReasonArg::AffiliationChanged => RevocationReason::AffiliationChanged,
            ReasonArg::PrivilegeWithdrawn => RevocationReason::PrivilegeWithdrawn,
        }
    }
}

impl ReasonArg {
    fn name(self) -> &'static str {
        match self {
            ReasonArg::Unspecified => "unspecified",
            ReasonArg::KeyCompromise => "key-compromise",
            ReasonArg::Superseded => "superseded",
            ReasonArg::CessationOfOperation => "cessation-of-operation",
            ReasonArg::AffiliationChanged => "affiliation-changed",
            ReasonArg::PrivilegeWithdrawn => "privilege-withdrawn",
        }
    }
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Init(args) => init(&args),
        CaCommand::Issue(args) => issue(&args),
        CaCommand::Revoke(args) => revoke(&args),
        CaCommand::Crl(args) => crl(&args),
        CaCommand::Renew(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(renew(&args))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Durations and grant specs
// ---------------------------------------------------------------------------------------

/// The longest duration the parser accepts (far above any CA limit; it only keeps the
/// arithmetic away from overflow).
const MAX_PARSED: Duration = Duration::days(3660);

/// Parses `90s`, `30m`, `8h`, `7d` and sums like `1h30m`. Every number needs a unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration: write e.g. 30m, 8h or 7d".into());
    }
    let mut total = Duration::ZERO;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => Duration::SECOND,
            'm' => Duration::MINUTE,
            'h' => Duration::HOUR,
            'd' => Duration::DAY,
            _ => {
                return Err(format!(
                    "`{text}`: unknown unit `{c}` (use s, m, h or d, e.g. 30m, 8h, 7d)"
                ))
            }
        };
        if digits.is_empty() {
            return Err(format!("`{text}`: unit `{c}` without a number before it"));
        }
        let n: i32 = digits
            .parse()
            .map_err(|_| format!("`{text}`: the number `{digits}` is too large"))?;
        digits.clear();
        total = unit
            .checked_mul(n)
            .and_then(|d| total.checked_add(d))
            .filter(|d| *d <= MAX_PARSED)
            .ok_or_else(|| {
                format!(
                    "`{text}` is too long (at most {}d)",
                    MAX_PARSED.whole_days()
                )
            })?;
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{digits}` has no unit (write {digits}h, {digits}m, {digits}d or {digits}s)"
        ));
    }
    if !total.is_positive() {
        return Err(format!("`{text}`: the duration must be positive"));
    }
    Ok(total)
}

/// `1d2h`, `8h`, `30m`, `45s`: the shortest form that `parse_duration` reads back.
pub fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let mut out = String::new();
    if d.is_negative() {
        out.push('-');
    }
    let mut secs = d.whole_seconds().unsigned_abs();
    for (unit, size) in [("d", 86_400u64), ("h", 3600), ("m", 60), ("s", 1)] {
        let n = secs / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            secs %= size;
        }
    }
    out
}

/// The current time, truncated to whole seconds as X.509 and grants record it.
fn now_whole_seconds() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A parsed `--grant` value, before the certificate's lifetime is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantSpec {
    pub id: String,
    pub rules: Vec<String>,
    pub waives: Vec<String>,
    /// `None`: as long as the certificate.
    pub ttl: Option<Duration>,
    pub reason: String,
    pub approved_by: String,
}

const GRANT_KEYS: &str = "id, rules, waives, ttl, reason, approved_by";

/// Parses `id=…,rules=a+b,waives=jwt,ttl=8h,reason=…,approved_by=…`.
pub fn parse_grant_spec(s: &str) -> Result<GrantSpec, String> {
    let mut id = None;
    let mut rules = None;
    let mut waives = None;
    let mut ttl = None;
    let mut reason = None;
    let mut approved_by = None;
    for field in s.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(format!(
                "`{field}` is not key=value (fields are separated by commas, so values cannot \
                 contain one; keys: {GRANT_KEYS})"
            ));
        };
        let key = key.trim();
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("`{key}` is empty"));
        }
        let slot_taken = match key {
            "id" => id.replace(value.to_owned()).is_some(),
            "rules" => rules.replace(split_list(key, value)?).is_some(),
            "waives" => waives.replace(split_list(key, value)?).is_some(),
            "ttl" => ttl
                .replace(parse_duration(value).map_err(|e| format!("ttl {e}"))?)
                .is_some(),
            "reason" => reason.replace(value.to_owned()).is_some(),
            "approved_by" => approved_by.replace(value.to_owned()).is_some(),
            other => return Err(format!("unknown key `{other}` (keys: {GRANT_KEYS})")),
        };
        if slot_taken {
            return Err(format!("`{key}` is given twice"));
        }
    }
    let id = id.ok_or("`id` is required")?;
    let rules: Vec<String> = rules.unwrap_or_default();
    let waives: Vec<String> = waives.unwrap_or_default();
    if rules.is_empty() && waives.is_empty() {
        return Err(format!(
            "grant `{id}` needs `rules` (opt-out rule ids) or `waives` (factors), or both"
        ));
    }
    Ok(GrantSpec {
        reason: reason.ok_or_else(|| format!("grant `{id}` needs `reason` (why it is granted)"))?,
        approved_by: approved_by
            .ok_or_else(|| format!("grant `{id}` needs `approved_by` (who approved it)"))?,
        id,
        rules,
        waives,
        ttl,
    })
}

fn split_list(key: &str, value: &str) -> Result<Vec<String>, String> {
    value
        .split('+')
        .map(|item| {
            let item = item.trim();
            if item.is_empty() {
                Err(format!("`{key}` has an empty item in `{value}`"))
            } else {
                Ok(item.to_owned())
            }
        })
        .collect()
}

impl GrantSpec {
    /// The grant for a certificate of lifetime `cert_ttl` issued at `now`. A grant may be
    /// shorter than its certificate, never longer: a longer `ttl` is refused rather than
    /// silently shortened.
    fn resolve(&self, cert_ttl: Duration, now: OffsetDateTime) -> anyhow::Result<Grant> {
        let ttl = self.ttl.unwrap_or(cert_ttl);
        if ttl > cert_ttl {
            bail!(
                "--grant `{}`: ttl {} exceeds the certificate's lifetime {} (a grant cannot \
                 outlive the certificate that carries it)",
                self.id,
                fmt_duration(ttl),
                fmt_duration(cert_ttl)
            );
        }
        let grant = Grant {
            id: self.id.clone(),
            rules: self.rules.clone(),
            waives: self.waives.clone(),
            not_after: now + ttl,
            reason: self.reason.clone(),
            approved_by: self.approved_by.clone(),
        };
        Ok(grant)
    }
}

// ---------------------------------------------------------------------------------------
// init / issue / revoke / crl
// ---------------------------------------------------------------------------------------

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s: OsString = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_text(path: &Path, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} `{}`", path.display()))
}

fn open_store(dir: &Path) -> anyhow::Result<CaStore> {
    CaStore::open(dir)
        .with_context(|| format!("opening the ca directory `{}` (--dir)", dir.display()))
}

/// Refuses `--out alice.pem`, which would write `alice.pem.pem`.
fn check_prefix(prefix: &Path, suffixes: &[&str]) -> anyhow::Result<()> {
    let name = prefix
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.is_empty() || name == "." || name == ".." {
        bail!(
            "--out `{}` must end in a file name prefix (e.g. certs/alice)",
            prefix.display()
        );
    }
    for suffix in suffixes {
        if let Some(stem) = name.strip_suffix(suffix) {
            bail!(
                "--out is a prefix: `{}` would write `{name}{suffix}`; pass `{stem}`",
                prefix.display()
            );
        }
    }
    Ok(())
}

fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    if args.max_ttl > postern_pki::MAX_TTL_CEILING {
        bail!(
            "--max-ttl {} exceeds the ceiling of {}: certificates must die young",
            fmt_duration(args.max_ttl),
            fmt_duration(postern_pki::MAX_TTL_CEILING)
        );
    }
    if args.default_ttl > args.max_ttl {
        bail!(
            "--default-ttl {} exceeds --max-ttl {}",
            fmt_duration(args.default_ttl),
            fmt_duration(args.max_ttl)
        );
    }
    let parent = match (&args.parent_cert, &args.parent_key) {
        (Some(cert), Some(key)) => Some((
            read_text(cert, "the parent ca certificate (--parent-cert)")?,
            read_text(key, "the parent ca key (--parent-key)")?,
        )),
        _ => None,
    };
    let common_name = args.common_name.clone().unwrap_or_else(|| {
        if parent.is_some() {
            "postern intermediate CA".into()
        } else {
            "postern CA".into()
        }
    });
    let opts = CaInitOptions {
        alg: args.key_type.into(),
        default_ttl: args.default_ttl,
        max_ttl: args.max_ttl,
        parent,
        ..CaInitOptions::new(common_name.clone(), args.trust_domain.clone())
    };
    let now = now_whole_seconds();
    let store = CaStore::init(&args.dir, &opts, now).map_err(|e| match e {
        // The store's own message names the directory and why it refuses.
        PkiError::CaExists(_) => anyhow!(e),
        other => anyhow!(other).context(format!(
            "creating the ca in `{}` (--dir)",
            args.dir.display()
        )),
    })?;
    let ca = store.ca();
    let facts = CertFacts::parse(ca.cert_der()).context("reading back the new ca certificate")?;
    println!(
        "created {} CA `{common_name}` ({}) in {}",
        if store.is_intermediate() {
            "intermediate"
        } else {
            "root"
        },
        ca.alg(),
        store.dir().display()
    );
    println!("  trust domain   {}", ca.trust_domain());
    println!(
        "  lifetimes      default {}, max {}",
        fmt_duration(store.default_ttl()),
        fmt_duration(store.max_ttl())
    );
    println!("  valid until    {}", fmt_time(ca.not_after()));
    println!(
        "  sha256         {}",
        postern_pki::fingerprint_sha256(ca.cert_der())
    );
    println!("  serial         {}", facts.serial_hex);
    let dir = store.dir();
    for (name, what) in [
        (
            "ca.pem",
            "CA certificate (trust anchor for the gateway's client_ca)",
        ),
        (
            "chain.pem",
            "CA certificate and its issuers, appended to issued certificates",
        ),
        ("ca.key", "CA private key, mode 0600"),
        ("ca.toml", "trust domain, key algorithm, lifetimes"),
        ("revoked.json", "revocation list (empty)"),
        ("crl.pem", "signed CRL"),
    ] {
        println!("wrote {}: {what}", dir.join(name).display());
    }
    Ok(ExitCode::SUCCESS)
}

fn issue(args: &IssueArgs) -> anyhow::Result<ExitCode> {
    check_prefix(&args.out, &[".pem", ".key", ".crt"])?;
    let store = open_store(&args.dir)?;
    let now = now_whole_seconds();
    let ttl = args.ttl.unwrap_or_else(|| store.default_ttl());
    if ttl > store.max_ttl() {
        bail!(
            "--ttl {} exceeds the ca's maximum certificate lifetime {} (max_ttl in `{}`)",
            fmt_duration(ttl),
            fmt_duration(store.max_ttl()),
            store.dir().join("ca.toml").display()
        );
    }
    let mut grants = Vec::with_capacity(args.grants.len());
    for spec in &args.grants {
        let grant = spec.resolve(ttl, now)?;
        grant
            .validate()
            .with_context(|| format!("--grant `{}`", spec.id))?;
        grants.push(grant);
    }
    let kind: Kind = args.kind.into();
    let cert_path = with_suffix(&args.out, ".pem");
    let key_path = with_suffix(&args.out, ".key");
    let identity_ctx = || format!("issuing a certificate for --identity `{}`", args.identity);

    let (cert_pem, cert_der, key_written) = match &args.csr {
        Some(csr_path) => {
            let csr = read_text(csr_path, "the certificate signing request (--csr)")?;
            let issued = store
                .issue_from_csr(&csr, &args.identity, kind, ttl, &grants, now)
                .with_context(|| {
                    format!("{} from --csr `{}`", identity_ctx(), csr_path.display())
                })?;
            (issued.cert_pem, issued.cert_der, false)
        }
        None => {
            let req = ClientCertRequest::new(args.identity.clone(), kind, ttl).with_grants(grants);
            let issued = store
                .issue_client_with(&req, now)
                .with_context(identity_ctx)?;
            postern_pki::write_private_key(&key_path, &issued.key_pem)
                .with_context(|| format!("writing the private key `{}`", key_path.display()))?;
            (issued.cert_pem, issued.cert_der, true)
        }
    };
    let mut file = cert_pem;
    if store.is_intermediate() {
        if !file.ends_with('\n') {
            file.push('\n');
        }
        file.push_str(store.chain_pem());
    }
    write_file_atomic(&cert_path, file.as_bytes(), 0o644)
        .with_context(|| format!("writing the certificate `{}`", cert_path.display()))?;

    let facts = CertFacts::parse(&cert_der).context("reading back the issued certificate")?;
    println!(
        "issued {}",
        facts.spiffe_uri.as_deref().unwrap_or("(no spiffe id)")
    );
    println!("  serial       {}", facts.serial_hex);
    println!("  not before   {}", fmt_time(facts.not_before));
    println!(
        "  not after    {}  ({})",
        fmt_time(facts.not_after),
        fmt_duration(ttl)
    );
    println!(
        "  sha256       {}",
        postern_pki::fingerprint_sha256(&cert_der)
    );
    let carried = postern_pki::grants_from_cert(&cert_der)
        .context("reading back the grants of the issued certificate")?;
    for g in &carried {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join("+")
            }
        };
        println!(
            "  grant        {}: rules {}, waives {}, until {}, approved by {} ({})",
            g.id,
            list(&g.rules),
            list(&g.waives),
            fmt_time(g.not_after),
            g.approved_by,
            g.reason
        );
    }
    println!(
        "wrote {}{}",
        cert_path.display(),
        if store.is_intermediate() {
            ": certificate + chain"
        } else {
            ": certificate"
        }
    );
    if key_written {
        println!("wrote {}: private key, mode 0600", key_path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: &RevokeArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(&args.dir)?;
    let now = now_whole_seconds();
    let reason: RevocationReason = args.reason.into();
    let issued = store
        .issued()
        .with_context(|| format!("reading the issuance index in `{}`", store.dir().display()))?;
    let describe = |serial: &str| {
        issued
            .iter()
            .find(|r| r.serial_hex == serial)
            .map(|r| format!(" ({}, valid until {})", r.identity, fmt_time(r.not_after)))
            .unwrap_or_else(|| " (not in this ca's issuance index)".into())
    };
    match (&args.serial, &args.identity) {
        (Some(serial), _) => {
            let serial = postern_pki::normalize_serial(serial).context("--serial")?;
            if !args.allow_unknown_serial && !issued.iter().any(|r| r.serial_hex == serial) {
                bail!(
                    "--serial `{serial}` is not in the issuance index of `{}`: check the serial \
                     (`openssl x509 -noout -serial -in CERT`), or pass --allow-unknown-serial \
                     to revoke it anyway",
                    store.dir().display()
                );
            }
            let added = store
                .revoke(&serial, reason, now)
                .with_context(|| format!("revoking serial `{serial}`"))?;
            if added {
                println!(
                    "revoked {serial}{} reason {}",
                    describe(&serial),
                    args.reason.name()
                );
            } else {
                println!("already revoked: {serial}{}", describe(&serial));
            }
        }
        (None, Some(identity)) => {
            let serials = match store.revoke_identity(identity, reason, now) {
                Ok(s) => s,
                Err(PkiError::UnknownIdentity(_)) => {
                    let service = format!("service/{identity}");
                    let hint = if issued.iter().any(|r| r.identity == service) {
                        format!("; did you mean --identity {service}?")
                    } else {
                        String::new()
                    };
                    bail!(
                        "--identity `{identity}`: this ca never issued a certificate to it{hint}"
                    );
                }
                Err(e) => {
                    return Err(anyhow!(e).context(format!("revoking --identity `{identity}`")))
                }
            };
            if serials.is_empty() {
                println!("{identity} holds no unexpired certificate that is not revoked already");
            }
            for serial in &serials {
                println!(
                    "revoked {serial}{} reason {}",
                    describe(serial),
                    args.reason.name()
                );
            }
        }
        (None, None) => bail!("give --serial or --identity"),
    }
    println!(
        "updated {} and {}",
        store.revoked_path().display(),
        store.crl_path().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn crl(args: &CrlArgs) -> anyhow::Result<ExitCode> {
    check_prefix(&args.out, &[".crl", ".pem"])?;
    let store = open_store(&args.dir)?;
    let now = now_whole_seconds();
    let der = store.crl_der(now).context("signing the crl")?;
    let pem = store.crl_pem(now).context("signing the crl")?;
    let der_path = with_suffix(&args.out, ".crl");
    let pem_path = with_suffix(&args.out, ".crl.pem");
    write_file_atomic(&der_path, &der, 0o644)
        .with_context(|| format!("writing `{}`", der_path.display()))?;
    write_file_atomic(&pem_path, pem.as_bytes(), 0o644)
        .with_context(|| format!("writing `{}`", pem_path.display()))?;
    let listed = store
        .revocations()
        .context("reading the revocation list")?
        .entries()
        .iter()
        .filter(|r| r.not_after.is_none_or(|t| t >= now))
        .count();
    println!(
        "crl of {}: {listed} revoked certificate(s), next update {}",
        store.dir().display(),
        fmt_time(now + postern_pki::CRL_LIFETIME)
    );
    println!("wrote {}: DER", der_path.display());
    println!("wrote {}: PEM", pem_path.display());
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------
// Certificates as read back from DER
// ---------------------------------------------------------------------------------------

struct CertFacts {
    serial_hex: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    spiffe_uri: Option<String>,
    spki: Vec<u8>,
    issuer: Vec<u8>,
}

impl CertFacts {
    fn parse(der: &[u8]) -> anyhow::Result<CertFacts> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| anyhow!("unparsable certificate: {e}"))?;
        let serial_hex = postern_pki::normalize_serial(&hex::encode(cert.raw_serial()))
            .unwrap_or_else(|_| "00".into());
        let spiffe_uri = cert
            .subject_alternative_name()
            .map_err(|e| anyhow!("bad subjectAltName: {e}"))?
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
                    _ => None,
                })
            });
        Ok(CertFacts {
            serial_hex,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            spiffe_uri,
            spki: cert.public_key().raw.to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
        })
    }

    /// The leaf (first certificate) of a PEM file.
    fn of_pem_file(path: &Path) -> anyhow::Result<(CertFacts, Vec<Vec<u8>>)> {
        let text = read_text(path, "the certificate (--cert)")?;
        let certs = postern_pki::certs_from_pem(&text)
            .with_context(|| format!("reading `{}` (--cert)", path.display()))?;
        let ders: Vec<Vec<u8>> = certs.iter().map(|c| c.as_ref().to_vec()).collect();
        let leaf = ders
            .first()
            .ok_or_else(|| anyhow!("`{}` (--cert) holds no certificate", path.display()))?;
        let facts = CertFacts::parse(leaf)
            .with_context(|| format!("reading `{}` (--cert)", path.display()))?;
        Ok((facts, ders))
    }
}

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// A temporary sibling of `path`, created with `mode` from the start, written and synced.
fn stage(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<PathBuf> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// Temp file in the same directory, fsync, rename, fsync the directory.
fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = stage(path, contents, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Replaces a certificate and its key together: both are staged (synced) before either is
/// renamed into place, so the window in which they disagree is two renames long.
fn write_cert_and_key(
    cert: &Path,
    cert_pem: &str,
    key: &Path,
    key_pem: &str,
) -> anyhow::Result<()> {
    let cert_tmp = stage(cert, cert_pem.as_bytes(), 0o644)
        .with_context(|| format!("writing `{}`", cert.display()))?;
    let key_tmp = match stage(key, key_pem.as_bytes(), 0o600) {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&cert_tmp);
            return Err(e).with_context(|| format!("writing `{}`", key.display()));
        }
    };
    if let Err(e) = std::fs::rename(&key_tmp, key) {
        let _ = std::fs::remove_file(&key_tmp);
        let _ = std::fs::remove_file(&cert_tmp);
        return Err(e).with_context(|| format!("replacing `{}`", key.display()));
    }
    if let Err(e) = std::fs::rename(&cert_tmp, cert) {
        let _ = std::fs::remove_file(&cert_tmp);
        return Err(e).with_context(|| {
            format!(
                "replacing `{}` (the new key is already in `{}`)",
                cert.display(),
                key.display()
            )
        });
    }
    sync_parent(key).with_context(|| format!("syncing the directory of `{}`", key.display()))?;
    sync_parent(cert).with_context(|| format!("syncing the directory of `{}`", cert.display()))
}

// ---------------------------------------------------------------------------------------
// renew
// ---------------------------------------------------------------------------------------

/// Largest response body read from the gateway.
const MAX_RESPONSE: usize = 1 << 20;
/// Bound on one renewal exchange (connect, handshake, request, response).
const EXCHANGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// First retry delay in `--watch`, doubled after each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(300);

/// Where to renew: parsed once from `--gateway`.
struct Gateway {
    /// `host:port` as given, for the Host header.
    authority: String,
    /// Host for TCP and for certificate verification (IPv6 without brackets).
    host: String,
    port: u16,
    /// Path of the renewal endpoint under the gateway URL.
    path: String,
    url: String,
}

impl Gateway {
    fn parse(url: &str) -> anyhow::Result<Gateway> {
        let bad = |why: &str| anyhow!("--gateway `{url}`: {why} (expected https://host:port)");
        let uri: http::Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => {
                return Err(bad(&format!(
                    "scheme `{other}`: renewal needs https (mTLS)"
                )))
            }
            None => return Err(bad("no scheme")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let port = authority.port_u16().unwrap_or(443);
        let path = format!("{}/v1/certs/renew", uri.path().trim_end_matches('/'));
        Ok(Gateway {
            authority: authority.as_str().to_owned(),
            host,
            port,
            url: format!("https://{}{path}", authority.as_str()),
            path,
        })
    }

    fn server_name(&self) -> anyhow::Result<rustls_pki_types::ServerName<'static>> {
        rustls_pki_types::ServerName::try_from(self.host.clone()).map_err(|e| {
            anyhow!(
                "--gateway host `{}` is not a valid server name: {e}",
                self.host
            )
        })
    }
}

struct RenewCtx {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    gateway: Gateway,
}

/// Why a renewal did not happen.
enum RenewError {
    /// The gateway answered and said no.
    Refused {
        status: u16,
        error: String,
        request_id: Option<String>,
    },
    /// The gateway refused the client certificate at the TLS handshake (revoked, expired,
    /// unknown issuer): it sent this alert instead of an HTTP answer.
    HandshakeRefused { alert: String, url: String },
    /// Anything else: files, network, TLS, a response that does not fit the key.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for RenewError {
    fn from(e: anyhow::Error) -> Self {
        RenewError::Failed(e)
    }
}

impl std::fmt::Display for RenewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenewError::Refused {
                status,
                error,
                request_id,
            } => {
                write!(
                    f,
                    "the gateway refused the renewal (HTTP {status}): {error}"
                )?;
                if let Some(id) = request_id {
                    write!(f, " (request_id {id})")?;
                }
                Ok(())
            }
            RenewError::HandshakeRefused { alert, url } => write!(
                f,
                "the gateway refused the client certificate at the tls handshake \
                 (alert {alert}) for POST {url}: it is revoked, expired or not from its ca"
            ),
            RenewError::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

struct Renewed {
    serial_hex: String,
    not_after: OffsetDateTime,
}

async fn renew(args: &RenewArgs) -> anyhow::Result<ExitCode> {
    let ca = match &args.ca {
        Some(ca) => ca.clone(),
        None => match args.cert.parent() {
            Some(dir) => dir.join("ca.pem"),
            None => PathBuf::from("ca.pem"),
        },
    };
    let ctx = RenewCtx {
        cert: args.cert.clone(),
        key: args.key.clone(),
        ca,
        gateway: Gateway::parse(&args.gateway)?,
    };
    if args.watch {
        return watch(&ctx).await;
    }
    let (current, _) = CertFacts::of_pem_file(&ctx.cert)?;
    let now = OffsetDateTime::now_utc();
    if now > current.not_after {
        bail!(
            "`{}` (--cert) expired at {}; renewal needs a valid certificate: issue a new one \
             with `postern ca issue`",
            ctx.cert.display(),
            fmt_time(current.not_after)
        );
    }
    match renew_once(&ctx).await {
        Ok(r) => {
            println!(
                "renewed {} valid until {}",
                r.serial_hex,
                fmt_time(r.not_after)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (RenewError::Refused { .. } | RenewError::HandshakeRefused { .. })) => {
            eprintln!("postern: {e}");
            Ok(ExitCode::from(1))
        }
        Err(RenewError::Failed(e)) => Err(e),
    }
}

/// Renews at two thirds of each certificate's lifetime, forever. On failure, retries with
/// backoff until the certificate expires; then exits 1.
async fn watch(ctx: &RenewCtx) -> anyhow::Result<ExitCode> {
    loop {
        // Re-read each round: the file is what we renewed last, or what an operator put there.
        let (current, _) = CertFacts::of_pem_file(&ctx.cert)?;
        let lifetime = current.not_after - current.not_before;
        let renew_at = current.not_before + lifetime * 2 / 3;
        tracing::info!(
            "certificate {} valid until {}; next renewal at {}",
            current.serial_hex,
            fmt_time(current.not_after),
            fmt_time(renew_at)
        );
        sleep_until(renew_at).await;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let now = OffsetDateTime::now_utc();
            if now >= current.not_after {
                eprintln!(
                    "postern: certificate {} in `{}` expired at {} without a successful renewal",
                    current.serial_hex,
                    ctx.cert.display(),
                    fmt_time(current.not_after)
                );
                return Ok(ExitCode::from(1));
            }
            match renew_once(ctx).await {
                Ok(r) => {
                    println!(
                        "renewed {} valid until {}",
                        r.serial_hex,
                        fmt_time(r.not_after)
                    );
                    // Never spin, whatever lifetime the gateway hands out.
                    tokio::time::sleep(FIRST_BACKOFF).await;
                    break;
                }
                Err(e) => {
                    let left =
                        std::time::Duration::try_from(current.not_after - now).unwrap_or_default();
                    let wait = backoff.min(left);
                    tracing::warn!(
                        "renewal failed: {e}; retrying in {}",
                        fmt_duration(Duration::try_from(wait).unwrap_or(Duration::ZERO))
                    );
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Sleeps until the wall clock reaches `t`, waking at least every minute so that a
/// suspended machine or a clock step is noticed.
async fn sleep_until(t: OffsetDateTime) {
    loop {
        let left = t - OffsetDateTime::now_utc();
        if !left.is_positive() {
            return;
        }
        let step = std::time::Duration::try_from(left.min(Duration::MINUTE)).unwrap_or_default();
        tokio::time::sleep(step).await;
    }
}

async fn renew_once(ctx: &RenewCtx) -> Result<Renewed, RenewError> {
    let (current, current_chain) = CertFacts::of_pem_file(&ctx.cert)?;
    let tls = client_tls(ctx)?;

    let key = rcgen::KeyPair::generate().context("generating the new key")?;
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .context("making the certificate signing request")?;

    let exchange = tokio::time::timeout(EXCHANGE_TIMEOUT, post_csr(ctx, tls, csr))
        .await
        .map_err(|_| {
            anyhow!(
                "POST {}: no answer within {}s",
                ctx.gateway.url,
                EXCHANGE_TIMEOUT.as_secs()
            )
        })?;
    let (status, body) = match exchange {
        Ok(answer) => answer,
        Err(e) => {
            return Err(match refusal_alert(&e) {
                Some(alert) => RenewError::HandshakeRefused {
                    alert: format!("{alert:?}"),
                    url: ctx.gateway.url.clone(),
                },
                None => RenewError::Failed(e.context(format!("POST {}", ctx.gateway.url))),
            })
        }
    };

    if status != 200 {
        let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
        let field = |name: &str| {
            json.as_ref()
                .and_then(|j| j.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let error = field("error").unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            if text.is_empty() {
                "(empty response body)".to_owned()
            } else {
                text.chars().take(500).collect()
            }
        });
        return Err(RenewError::Refused {
            status,
            error,
            request_id: field("request_id"),
        });
    }

    let text = std::str::from_utf8(&body)
        .map_err(|_| anyhow!("the gateway's certificate response is not PEM text"))?;
    let certs =
        postern_pki::certs_from_pem(text).context("reading the gateway's certificate response")?;
    let leaf_der = certs
        .first()
        .ok_or_else(|| anyhow!("the gateway's response holds no certificate"))?;
    let leaf = CertFacts::parse(leaf_der.as_ref()).context("reading the renewed certificate")?;
    // Write nothing that would leave the client unable to authenticate next time.
    if leaf.spki != rcgen::PublicKeyData::subject_public_key_info(&key) {
        return Err(anyhow!("the renewed certificate is not for the key this client generated; keeping the current files").into());
    }
    if leaf.spiffe_uri != current.spiffe_uri {
        return Err(anyhow!(
            "the renewed certificate names {} but the current one names {}; keeping the current files",
            leaf.spiffe_uri.as_deref().unwrap_or("no spiffe id"),
            current.spiffe_uri.as_deref().unwrap_or("no spiffe id"),
        )
        .into());
    }
    if leaf.not_after <= OffsetDateTime::now_utc() {
        return Err(anyhow!(
            "the renewed certificate is already expired ({}); keeping the current files",
            fmt_time(leaf.not_after)
        )
        .into());
    }

    let mut cert_pem = text.trim_end().to_owned();
    cert_pem.push('\n');
    // A gateway that returns the leaf alone: keep the chain the current file carried (same
    // issuer), so a client of an intermediate CA can still present a full path.
    if certs.len() == 1 && current_chain.len() > 1 && leaf.issuer == current.issuer {
        for der in current_chain.iter().skip(1) {
            cert_pem.push_str(&pem_block("CERTIFICATE", der));
        }
    }
    write_cert_and_key(&ctx.cert, &cert_pem, &ctx.key, &key.serialize_pem())?;
    Ok(Renewed {
        serial_hex: leaf.serial_hex,
        not_after: leaf.not_after,
    })
}

/// The TLS alert with which the gateway refused our certificate, if that is why `e` happened.
/// (With TLS 1.3 the server's verdict on the client certificate arrives after the client's
/// handshake completed, so it surfaces from the first read, inside hyper and io errors.)
fn refusal_alert(e: &anyhow::Error) -> Option<rustls::AlertDescription> {
    use rustls::AlertDescription as A;
    let alert = e.chain().find_map(|cause| {
        let rustls_error = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        match rustls_error {
            Some(rustls::Error::AlertReceived(alert)) => Some(*alert),
            _ => None,
        }
    })?;
    matches!(
        alert,
        A::CertificateRevoked
            | A::CertificateExpired
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateUnknown
            | A::UnknownCA
            | A::AccessDenied
            | A::CertificateRequired
    )
    .then_some(alert)
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// mTLS client config: the current certificate and key, the gateway verified against `--ca`.
fn client_tls(ctx: &RenewCtx) -> anyhow::Result<rustls::ClientConfig> {
    let chain = postern_gateway::tls::load_certs(&ctx.cert).context("--cert")?;
    let key = postern_gateway::tls::load_key(&ctx.key).context("--key")?;
    let mut roots = rustls::RootCertStore::empty();
    let anchors = postern_gateway::tls::load_certs(&ctx.ca)
        .context("the gateway's ca (--ca, default: ca.pem next to --cert)")?;
    for anchor in anchors {
        roots.add(anchor).with_context(|| {
            format!("`{}` (--ca) is not a usable trust anchor", ctx.ca.display())
        })?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(postern_gateway::tls::provider())
        .with_safe_default_protocol_versions()
        .context("tls protocol versions")?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .with_context(|| {
            format!(
                "`{}` (--cert) and `{}` (--key) do not make a usable client identity",
                ctx.cert.display(),
                ctx.key.display()
            )
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// One HTTP/1.1 exchange over a fresh mTLS connection: the CSR in, status and body out.
async fn post_csr(
    ctx: &RenewCtx,
    tls: rustls::ClientConfig,
    csr_pem: String,
) -> anyhow::Result<(u16, bytes::Bytes)> {
    use http_body_util::BodyExt;

    let gw = &ctx.gateway;
    let tcp = tokio::net::TcpStream::connect((gw.host.as_str(), gw.port))
        .await
        .with_context(|| format!("connecting to {}:{}", gw.host, gw.port))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let stream = connector
        .connect(gw.server_name()?, tcp)
        .await
        .context("tls handshake")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .context("http handshake")?;
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::builder()
        .method(http::Method::POST)
        .uri(gw.path.as_str())
        .header(http::header::HOST, gw.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/pkcs10")
        .header(
            http::header::ACCEPT,
            "application/pem-certificate-chain, application/json",
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(csr_pem)))
        .context("building the request")?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .context("sending the request")?;
        let status = resp.status().as_u16();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the response: {e}"))?
            .to_bytes();
        anyhow::Ok((status, body))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_sums() {
        assert_eq!(parse_duration("30m"), Ok(Duration::minutes(30)));
        assert_eq!(parse_duration("8h"), Ok(Duration::hours(8)));
        assert_eq!(parse_duration("7d"), Ok(Duration::days(7)));
        assert_eq!(parse_duration("90s"), Ok(Duration::seconds(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::minutes(90)));
        for bad in [
            "",
            "8",
            "h",
            "8x",
            "0h",
            "-1h",
            "1.5h",
            "99999999999h",
            "4000d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("8").is_err_and(|e| e.contains("8h")));
    }

    #[test]
    fn durations_print_back_in_parseable_form() {
        for d in [
            Duration::minutes(30),
            Duration::hours(8),
            Duration::hours(26),
            Duration::seconds(3661),
        ] {
            assert_eq!(parse_duration(&fmt_duration(d)), Ok(d));
        }
        assert_eq!(fmt_duration(Duration::hours(24)), "1d");
    }

    #[test]
    fn grant_specs_parse_every_key() {
        let g = parse_grant_spec(
            "id=reports-batch,rules=reports-batch+other,waives=jwt,ttl=1h,reason=nightly batch,approved_by=alice",
        )
        .unwrap();
        assert_eq!(g.id, "reports-batch");
        assert_eq!(g.rules, ["reports-batch", "other"]);
        assert_eq!(g.waives, ["jwt"]);
        assert_eq!(g.ttl, Some(Duration::hours(1)));
        assert_eq!(g.reason, "nightly batch");
        assert_eq!(g.approved_by, "alice");
        let g = parse_grant_spec("id=x,waives=jwt,reason=r,approved_by=a").unwrap();
        assert!(g.rules.is_empty() && g.ttl.is_none());
    }

    #[test]
    fn grant_specs_refuse_unknown_missing_and_repeated_keys() {
        let err = |s: &str| parse_grant_spec(s).unwrap_err();
        assert!(
            err("id=x,rules=a,reason=r,approved_by=a,colour=red").contains("unknown key `colour`")
        );
        assert!(err("rules=a,reason=r,approved_by=a").contains("`id`"));
        assert!(err("id=x,rules=a,approved_by=a").contains("reason"));
        assert!(err("id=x,rules=a,reason=r").contains("approved_by"));
        assert!(err("id=x,reason=r,approved_by=a").contains("rules"));
        assert!(err("id=x,id=y,rules=a,reason=r,approved_by=a").contains("twice"));
        assert!(err("id=x,rules=a++b,reason=r,approved_by=a").contains("empty item"));
        assert!(err("id=x,rules=a,reason=r, see ticket,approved_by=a").contains("not key=value"));
        assert!(err("id=x,rules=a,ttl=soon,reason=r,approved_by=a").contains("ttl"));
    }

    #[test]
    fn a_grant_may_not_outlive_its_certificate() {
        let spec = parse_grant_spec("id=x,rules=a,ttl=9h,reason=r,approved_by=a").unwrap();
        let now = OffsetDateTime::now_utc();
        assert!(spec.resolve(Duration::hours(8), now).is_err());
        let g = spec.resolve(Duration::hours(9), now).unwrap();
        assert_eq!(g.not_after, now + Duration::hours(9));
    }

    #[test]
    fn gateway_urls() {
        let g = Gateway::parse("https://gw.example.org:8443").unwrap();
        assert_eq!((g.host.as_str(), g.port), ("gw.example.org", 8443));
        assert_eq!(g.path, "/v1/certs/renew");
        let g = Gateway::parse("https://[::1]/prefix/").unwrap();
        assert_eq!((g.host.as_str(), g.port), ("::1", 443));
        assert_eq!(g.path, "/prefix/v1/certs/renew");
        assert!(g.server_name().is_ok());
        assert!(Gateway::parse("http://gw:80").is_err());
        assert!(Gateway::parse("gw:443").is_err());
        assert!(Gateway::parse("https://gw/?x=1").is_err());
    }

    #[test]
    fn out_prefixes_refuse_file_extensions() {
        assert!(check_prefix(Path::new("certs/alice"), &[".pem"]).is_ok());
        assert!(check_prefix(Path::new("certs/alice.pem"), &[".pem"]).is_err());
    }
}
