//! The configuration file model (`postern.toml`) and its loader.
//!
//! Parse, don't validate twice: [`Config::load`] reads the TOML into these
//! raw structs (unknown fields are errors, so a typo such as `expire` is never
//! silently ignored), then [`crate::Policy::compile`] validates everything and
//! produces typed, compiled rules. Every problem is a [`Diagnostic`] naming
//! file, line, column and field.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    pub tls: TlsConfig,
    pub jwt: Option<JwtConfig>,
    pub audit: AuditConfig,
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<Spanned<UpstreamConfig>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RouteConfig>>,
    #[serde(default, rename = "optout")]
    pub optouts: Vec<Spanned<OptOutConfig>>,

    /// The file this was read from (set by the loader, not by TOML).
    #[serde(skip)]
    pub source: ConfigSource,
}

/// Where a config came from, for diagnostics and for resolving relative paths.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// Path of the file as given.
    pub path: PathBuf,
    /// The file's text, kept to turn byte spans into lines.
    pub text: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Listener address, e.g. `127.0.0.1:8443`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Proxies whose `x-forwarded-for` is believed. Empty: believe nobody.
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// The longest an opt-out rule may live, counted from load time (days).
    #[serde(default = "default_max_optout_days")]
    pub max_optout_days: u32,
    /// Requests whose body must be buffered (webhook verification) are refused above this.
    #[serde(default = "default_max_body_bytes")]
    pub max_buffered_body_bytes: usize,
    /// Upstream response timeout in seconds (504 past it).
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: default_listen(),
            trusted_proxies: Vec::new(),
            max_optout_days: default_max_optout_days(),
            max_buffered_body_bytes: default_max_body_bytes(),
            upstream_timeout_secs: default_upstream_timeout(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_max_optout_days() -> u32 {
    90
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_upstream_timeout() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM), relative to the config file.
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// Trust anchors for client certificates (PEM). Empty: mTLS is off.
    #[serde(default)]
    pub client_ca: Vec<PathBuf>,
    /// SPIFFE trust domain of client identities (`spiffe://<trust_domain>/user/<name>`).
    pub trust_domain: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    pub issuer: String,
    pub audience: String,
    /// JWKS file (relative to the config file) ...
    pub jwks_file: Option<PathBuf>,
    /// ... or URL (http or https), fetched at start.
    pub jwks_url: Option<String>,
    /// Allowed algorithms: any of `RS256`, `ES256`, `EdDSA`.
    pub algorithms: Vec<Spanned<String>>,
    /// Clock skew allowed on `exp` / `nbf`, seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The JSON-lines audit log.
    pub path: PathBuf,
    /// ed25519 key (PKCS#8 PEM) that signs checkpoints.
    pub signing_key: PathBuf,
    /// A signed checkpoint every this many records (and at shutdown / when idle).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_checkpoint_every() -> u64 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `http://host:port` (the path part, if any, is ignored).
    pub url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub id: String,
    /// Exact host name (no port, case-insensitive) or `*`.
    #[serde(default = "default_host")]
    pub host: String,
    /// Normalized path prefix, matched at segment boundaries (`/api` covers `/api` and `/api/x`, not `/apix`).
    pub path_prefix: Spanned<String>,
    pub upstream: Spanned<String>,
    /// Alternatives of factor sets: `[["mtls"], ["jwt"]]` = either; `[["mtls", "jwt"]]` = both.
    pub require: Spanned<Vec<Vec<String>>>,
    /// Optional allow-list of identities; others get 403.
    #[serde(default)]
    pub identities: Option<Vec<String>>,
    /// May requests on this route upgrade (WebSocket)? Tunnelled only after the upstream answers 101.
    #[serde(default)]
    pub allow_upgrade: bool,
}

fn default_host() -> String {
    "*".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutConfig {
    pub id: Spanned<String>,
    pub route: Spanned<String>,
    /// Explicit methods. `HEAD` is not implied by `GET`.
    pub methods: Spanned<Vec<String>>,
    /// Exact normalized paths, or `prefix/**`.
    pub paths: Spanned<Vec<String>>,
    /// `"all"` or a list of factor names.
    pub waive: Spanned<Waive>,
    pub owner: Option<Spanned<String>>,
    pub reason: Option<Spanned<String>>,
    /// RFC 3339 timestamp (TOML datetime or string).
    pub expires: Option<Spanned<toml::value::Datetime>>,
    #[serde(default)]
    pub source_cidrs: Option<Spanned<Vec<String>>>,
    pub time_window: Option<Spanned<TimeWindowConfig>>,
    pub webhook: Option<Spanned<WebhookConfig>>,
    /// May a request under this opt-out upgrade (WebSocket)?
    #[serde(default)]
    pub allow_upgrade: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Waive {
    /// Only `"all"` is accepted; anything else is a diagnostic.
    Keyword(String),
    Factors(Vec<String>),
}

/// A daily window in UTC, `HH:MM` to `HH:MM`; it may wrap past midnight.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindowConfig {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// File holding the shared secret (relative to the config file) ...
    pub secret_file: Option<PathBuf>,
    /// ... or environment variable holding it.
    pub secret_env: Option<String>,
    #[serde(default = "default_sig_header")]
    pub signature_header: String,
    #[serde(default = "default_ts_header")]
    pub timestamp_header: String,
    /// How far the signed timestamp may be from now, seconds.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: u64,
}

fn default_sig_header() -> String {
    "x-postern-signature".to_string()
}
fn default_ts_header() -> String {
    "x-postern-timestamp".to_string()
}
fn default_tolerance() -> u64 {
    300
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

/// One problem found in a configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Dotted field path, e.g. `optout[healthz].expires`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: `{}`: {}",
            self.file.display(),
            self.line,
            self.column,
            self.field,
            self.message
        )
    }
}

impl Config {
    /// Read and parse a config file. Syntax errors and unknown fields come back
    /// as diagnostics with line numbers. Does not validate semantics: see
    /// [`crate::Policy::compile`].
    pub fn load(path: &Path) -> Result<Config, Vec<Diagnostic>> {
        todo!("{path:?}")
    }

    /// Parse config text as if read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
        todo!("{path:?} {text}")
    }

    /// Resolve a path given in the config relative to the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            return p.to_path_buf();
        }
        match self.source.path.parent() {
            Some(dir) => dir.join(p),
            None => p.to_path_buf(),
        }
    }
}
