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
    /// Signed review of opt-out changes: when present, the policy loads only
    /// with a quorum of reviewer approvals over its opt-out digest.
    #[serde(default)]
    pub review: Option<ReviewConfig>,
    /// The admin listener (metrics); absent: no admin listener.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Alert sinks (webhooks).
    #[serde(default, rename = "alert")]
    pub alerts: Vec<AlertConfig>,
    /// The built-in CA: revocations checked per request and at the
    /// handshake, renewals served at `POST /v1/certs/renew`.
    #[serde(default)]
    pub ca: Option<CaConfig>,
    /// Browser sign-in with OpenID Connect (the `oidc` factor); see docs/oidc.md.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
    /// Where user-chosen opt-outs (offers) keep their consents; defaults
    /// apply when the policy has offers and this section is absent.
    #[serde(default)]
    pub consent: Option<ConsentConfig>,
    /// The request risk score that opt-outs with `max_risk` are held to
    /// (see [`crate::risk`]); absent: every request scores 0.
    #[serde(default)]
    pub risk: Option<RiskConfig>,

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
    /// Which per-core worker serves a new connection (read at start; a
    /// connection stays on its worker).
    #[serde(default)]
    pub placement: Placement,
    /// Seconds an HTTP/1.1 client has to send a whole request head,
    /// counted from when the connection starts waiting for one (so an idle
    /// keep-alive connection is closed after this long too). Slow-header
    /// clients (slowloris) cannot hold connections open. Read at start.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: std::num::NonZeroU64,
}

/// How connections are placed on the per-core workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The first worker that is idle when the connection arrives, else the
    /// one with the fewest connections: nginx's default. A quiet gateway runs
    /// on few cores and leaves the others to what shares the machine, but
    /// long-lived connections opened while it was quiet stay packed if the
    /// load then grows.
    #[default]
    FirstIdle,
    /// Always the worker with the fewest connections: every core takes a
    /// share of a pool of long-lived connections opened at once.
    Spread,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: default_listen(),
            trusted_proxies: Vec::new(),
            max_optout_days: default_max_optout_days(),
            max_buffered_body_bytes: default_max_body_bytes(),
            upstream_timeout_secs: default_upstream_timeout(),
            placement: Placement::default(),
            header_read_timeout_secs: default_header_read_timeout(),
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
fn default_header_read_timeout() -> std::num::NonZeroU64 {
    std::num::NonZeroU64::MIN.saturating_add(29)
}

/// `[admin]`: plain HTTP on loopback, `GET /metrics` (Prometheus text format).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
    /// The admin console: a separate TLS listener (the gateway's server
    /// certificate) that requires a client certificate from the configured
    /// client CAs. Absent: no console.
    #[serde(default)]
    pub console_listen: Option<SocketAddr>,
    /// Principals whose client certificate opens the console (e.g. `alice`);
    /// any other verified certificate gets 403.
    #[serde(default)]
    pub console_identities: Vec<String>,
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}

/// Events an alert sink may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEventKind {
    /// An opt-out was used (subject to `optout_mode`).
    Optout,
    /// A policy was loaded or refused.
    Policy,
    /// The audit sink failed; an opt-out fell back to authentication.
    AuditFailure,
    /// A revoked, expired or otherwise invalid credential was presented.
    CredentialRefused,
    /// An opt-out rule is 7 days or 1 day from its expiry.
    RuleExpiry,
}

/// When an opt-out use raises an alert (counted per rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptOutAlertMode {
    /// Every use.
    #[default]
    Every,
    /// The first use per rule in each `window_secs`.
    FirstPerWindow,
    /// Once per minute in which a rule is used more than `rate_per_min` times.
    Rate,
}

/// A per-rule override of an alert sink's opt-out mode (`[alert.rule.<id>]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptOutAlertRule {
    pub optout_mode: OptOutAlertMode,
    pub window_secs: Option<u64>,
    pub rate_per_min: Option<u32>,
}

/// `[[alert]]`: a webhook receiving JSON (with a Slack-compatible `text`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// `http://…` or `https://…`.
    pub url: String,
    /// Events sent to this sink; empty: all of them.
    #[serde(default)]
    pub events: Vec<AlertEventKind>,
    #[serde(default)]
    pub optout_mode: OptOutAlertMode,
    #[serde(default = "default_alert_window")]
    pub window_secs: u64,
    #[serde(default = "default_alert_rate")]
    pub rate_per_min: u32,
    /// Per-rule overrides of `optout_mode`, keyed by opt-out rule id.
    #[serde(default)]
    pub rule: std::collections::BTreeMap<String, OptOutAlertRule>,
    /// Per-attempt timeout.
    #[serde(default = "default_alert_timeout")]
    pub timeout_ms: u64,
    /// Attempts per alert (1 = no retry); backoff doubles from `backoff_ms`.
    #[serde(default = "default_alert_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_alert_backoff")]
    pub backoff_ms: u64,
    /// Alerts waiting for this sink; beyond it they are dropped (and counted).
    #[serde(default = "default_alert_queue")]
    pub queue_size: usize,
}

fn default_alert_queue() -> usize {
    1024
}

fn default_alert_window() -> u64 {
    3600
}
fn default_alert_rate() -> u32 {
    60
}
fn default_alert_timeout() -> u64 {
    5000
}
fn default_alert_attempts() -> u32 {
    4
}
fn default_alert_backoff() -> u64 {
    250
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

/// `[review]`: who must approve opt-out changes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewConfig {
    /// The reviewers file (`reviewers.toml`), relative to the config file.
    pub reviewers: PathBuf,
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
    /// Step-up: a request this route lets through on an OIDC session needs
    /// the session's `acr` to be one of these (else re-authentication).
    #[serde(default)]
    pub step_up_acr: Option<Vec<String>>,
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
    /// The rule applies only to a request whose verified client certificate
    /// carries a live grant (signed into the certificate by postern's CA)
    /// naming this rule.
    #[serde(default)]
    pub require_grant: bool,
    /// Dynamic risk: above this request risk score (0-100) the rule does not
    /// apply and the request must authenticate.
    #[serde(default)]
    pub max_risk: Option<Spanned<u8>>,
    /// A user-chosen opt-out: the rule applies only to a user who consented
    /// to this offer's disclosure on this device.
    #[serde(default)]
    pub offer: Option<Spanned<OfferConfig>>,
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
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) => Err(vec![Diagnostic {
                severity: Severity::Error,
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                field: String::new(),
                message: format!("cannot read `{}`: {e}", path.display()),
            }]),
        }
    }

    /// Parse config text as if read from `path`.
    ///
    /// Never panics, whatever the text (property-tested).
    pub fn parse(path: &Path, text: &str) -> Result<Config, Vec<Diagnostic>> {
        match toml::from_str::<Config>(text) {
            Ok(mut config) => {
                config.source = ConfigSource {
                    path: path.to_path_buf(),
                    text: text.to_string(),
                };
                Ok(config)
            }
            Err(e) => Err(vec![toml_error_diagnostic(path, text, &e)]),
        }
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

/// Turns byte offsets of a config text into 1-based lines and columns.
pub(crate) struct LineIndex {
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    /// 1-based (line, column); the column counts characters, not bytes.
    pub(crate) fn locate(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts.get(line - 1).copied().unwrap_or(0);
        let column = text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }
}

/// A toml error as a diagnostic: position from its byte span, the field from
/// the text around it (the enclosing table header and the key on that line),
/// the message without toml's own rendering of the source.
fn toml_error_diagnostic(path: &Path, text: &str, e: &toml::de::Error) -> Diagnostic {
    let (line, column, field) = match e.span() {
        Some(span) => {
            let (line, column) = LineIndex::new(text).locate(text, span.start);
            (line, column, field_at(text, span.start))
        }
        None => (0, 0, String::new()),
    };
    let mut message = e.message().trim().to_string();
    if message.contains("TOML datetime") || message.contains("$__toml_private") {
        message = "expected a TOML offset datetime such as `2027-01-31T00:00:00Z` (not a string)"
            .to_string();
    }
    Diagnostic {
        severity: Severity::Error,
        file: path.to_path_buf(),
        line,
        column,
        field,
        message,
    }
}

/// Best-effort dotted field name for a byte offset: the last `[table]` or
/// `[[table]]` header before it, plus the `key =` of its line, if any.
fn field_at(text: &str, offset: usize) -> String {
    let before = text.get(..offset).unwrap_or("");
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text
        .get(line_start..)
        .and_then(|l| l.lines().next())
        .unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim())
        .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
        .map(|k| k.trim_matches('"').to_string());
    let table = before
        .get(..line_start)
        .unwrap_or("")
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| {
            l.trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        });
    match (table, key) {
        (Some(t), Some(k)) => format!("{t}.{k}"),
        (Some(t), None) => t,
        (None, Some(k)) => k,
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const EXAMPLE: &str = r#"
[gateway]
listen = "127.0.0.1:8443"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
trust_domain = "postern.demo"
[audit]
path = "audit.jsonl"
signing_key = "audit.key"
[[upstream]]
name = "echo"
url = "http://127.0.0.1:9000"
[[route]]
id = "app"
host = "*"
path_prefix = "/"
upstream = "echo"
require = [["mtls"], ["jwt"]]
[[optout]]
id = "healthz"
route = "app"
methods = ["GET", "HEAD"]
paths = ["/healthz"]
waive = "all"
owner = "platform-team"
reason = "load balancer health checks"
expires = 2027-01-31T00:00:00Z
source_cidrs = ["127.0.0.0/8", "::1/128"]
"#;

    #[test]
    fn example_parses_with_source_filled() {
        let c = Config::parse(Path::new("conf/postern.toml"), EXAMPLE).unwrap();
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.optouts.len(), 1);
        assert_eq!(c.source.path, Path::new("conf/postern.toml"));
        assert_eq!(c.source.text, EXAMPLE);
        assert_eq!(c.resolve(Path::new("x.secret")), Path::new("conf/x.secret"));
        assert_eq!(c.gateway.max_optout_days, 90);
        let o = c.optouts[0].get_ref();
        assert!(matches!(o.waive.get_ref(), Waive::Keyword(k) if k == "all"));
        assert!(o.expires.is_some());
    }

    #[test]
    fn unknown_field_is_an_error_with_line_and_field() {
        let text = EXAMPLE.replace("expires = ", "expire = ");
        let d = Config::parse(Path::new("p.toml"), &text).unwrap_err();
        assert_eq!(d.len(), 1);
        let d = &d[0];
        assert_eq!(d.severity, Severity::Error);
        assert_eq!(d.file, Path::new("p.toml"));
        let line = text.lines().position(|l| l.starts_with("expire ")).unwrap() + 1;
        assert_eq!(d.line, line, "{d}");
        assert_eq!(d.column, 1);
        assert_eq!(d.field, "optout.expire");
        assert!(d.message.contains("expire"), "{d}");
    }

    #[test]
    fn header_read_timeout_defaults_to_30_s_and_zero_is_refused_with_its_line() {
        let c = Config::parse(Path::new("p.toml"), EXAMPLE).unwrap();
        assert_eq!(c.gateway.header_read_timeout_secs.get(), 30);
        let text = "[gateway]\nlisten = \"127.0.0.1:8443\"\nheader_read_timeout_secs = 0\n";
        let d = Config::parse(Path::new("p.toml"), text).unwrap_err();
        assert_eq!(d[0].line, 3, "{}", d[0]);
        assert!(d[0].message.contains("nonzero"), "{}", d[0]);
        let text = EXAMPLE.replacen(
            "[gateway]\n",
            "[gateway]\nheader_read_timeout_secs = 5\n",
            1,
        );
        assert_ne!(text, EXAMPLE);
        let c = Config::parse(Path::new("p.toml"), &text).unwrap();
        assert_eq!(c.gateway.header_read_timeout_secs.get(), 5);
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let text = "[gateway]\nlisten = \"127.0.0.1:8443\"\nmax_optout_days = = 3\n";
        let d = Config::parse(Path::new("p.toml"), text).unwrap_err();
        assert_eq!(d[0].line, 3, "{}", d[0]);
        assert!(d[0].column > 1);
    }

    #[test]
    fn string_expiry_gets_a_clear_message() {
        let text = EXAMPLE.replace(
            "expires = 2027-01-31T00:00:00Z",
            "expires = \"2027-01-31T00:00:00Z\"",
        );
        let d = Config::parse(Path::new("p.toml"), &text).unwrap_err();
        assert!(d[0].message.contains("offset datetime"), "{}", d[0]);
        assert_eq!(d[0].field, "optout.expires");
    }

    #[test]
    fn missing_file_is_a_diagnostic_naming_it() {
        let d = Config::load(Path::new("/nonexistent/postern.toml")).unwrap_err();
        assert_eq!(d[0].line, 0);
        assert!(d[0].message.contains("/nonexistent/postern.toml"));
    }

    #[test]
    fn line_index_counts_characters() {
        let text = "ab\né x\n\nz";
        let idx = LineIndex::new(text);
        assert_eq!(idx.locate(text, 0), (1, 1));
        assert_eq!(idx.locate(text, 3), (2, 1));
        assert_eq!(idx.locate(text, 6), (2, 3));
        assert_eq!(idx.locate(text, 8), (3, 1));
        assert_eq!(idx.locate(text, 9), (4, 1));
        assert_eq!(idx.locate(text, 100), (4, 2));
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(s in any::<String>()) {
            let _ = Config::parse(Path::new("p.toml"), &s);
        }

        #[test]
        fn parse_never_panics_on_mutated_example(pos in 0usize..800, del in 0usize..20, ins in "[\\[\\]=\"a-z0-9 \n.#-]{0,10}") {
            // EXAMPLE is ASCII, so every index is a char boundary.
            let mut text = EXAMPLE.to_string();
            let pos = pos.min(text.len());
            let end = (pos + del).min(text.len());
            text.replace_range(pos..end, &ins);
            let _ = Config::parse(Path::new("p.toml"), &text);
        }
    }
}

/// The built-in CA, as the gateway uses it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// The CA directory (`postern ca init`), relative to the config file.
    pub dir: PathBuf,
    /// Serve `POST /v1/certs/renew` (mTLS with the current certificate + a CSR).
    #[serde(default = "default_renewal")]
    pub renewal: bool,
    /// Longest session a certificate may be renewed into, counted from the
    /// original issuance (carried in the certificate), in hours.
    #[serde(default = "default_max_session_age_hours")]
    pub max_session_age_hours: u64,
}

fn default_renewal() -> bool {
    true
}
fn default_max_session_age_hours() -> u64 {
    7 * 24
}

/// What a user is offered, and who may accept it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferConfig {
    /// Short title on the consent page, e.g. "Remember this device for read-only pages".
    pub title: String,
    /// The disclosure shown on the consent page, in plain words: what is
    /// skipped, where, for how long, and the risk. Consents are bound to its
    /// SHA-256: changing the text voids earlier consents.
    pub disclosure: String,
    /// How long a consent lasts, in days.
    pub duration_days: u32,
    /// Only users whose identity provider verified their email may accept.
    #[serde(default = "default_true")]
    pub require_email_verified: bool,
    /// Only users who signed in with one of these methods (`amr`) may accept,
    /// e.g. `["mfa", "otp", "hwk"]`. Empty: any.
    #[serde(default)]
    pub require_amr_any: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// `[oidc]`: browser sign-in with an OpenID provider (authorization code
/// flow with PKCE, state and nonce); the session is an encrypted cookie.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; discovery is read from
    /// `<issuer>/.well-known/openid-configuration`. `https://`, or `http://`
    /// only for a loopback host.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (relative to the config file) ...
    pub client_secret_file: Option<PathBuf>,
    /// ... or environment variable holding it. Neither: a public client (PKCE only).
    pub client_secret_env: Option<String>,
    /// Where the provider sends the browser back (a path on this gateway).
    #[serde(default = "default_oidc_redirect_path")]
    pub redirect_path: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// A session unused this long is over.
    #[serde(default = "default_session_idle_minutes")]
    pub session_idle_minutes: u64,
    /// A session is over this long after sign-in, used or not.
    #[serde(default = "default_session_absolute_hours")]
    pub session_absolute_hours: u64,
    /// 32 or more random bytes that encrypt the session cookie (relative to
    /// the config file); created (mode 0600) when missing.
    pub cookie_key_file: PathBuf,
    /// Extra PEM trust anchors for the provider's TLS (e.g. a local test provider).
    pub extra_ca: Option<PathBuf>,
    /// Which ID token claim names the principal: `sub` (default) or `email`
    /// (accepted only with `email_verified = true`).
    #[serde(default = "default_principal_claim")]
    pub principal_claim: String,
    /// After sign-out, ask the provider to send the browser back to this
    /// path on the gateway (`post_logout_redirect_uri`; it must be
    /// registered at the provider). Absent: the provider's own page.
    #[serde(default)]
    pub post_logout_redirect_path: Option<String>,
}

fn default_oidc_redirect_path() -> String {
    "/_postern/oidc/callback".to_string()
}
fn default_oidc_scopes() -> Vec<String> {
    vec![
        "openid".to_string(),
        "email".to_string(),
        "profile".to_string(),
    ]
}
fn default_session_idle_minutes() -> u64 {
    30
}
fn default_session_absolute_hours() -> u64 {
    12
}
fn default_principal_claim() -> String {
    "sub".to_string()
}

/// `[risk]`: what the risk score counts and how much (see [`crate::risk`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskConfig {
    /// Sources that score nothing for where they are.
    #[serde(default)]
    pub trusted_cidrs: Vec<Spanned<String>>,
    /// Sources that score `untrusted_source` (wins over `trusted_cidrs`).
    #[serde(default)]
    pub untrusted_cidrs: Vec<Spanned<String>>,
    /// The sliding window of the counted signals, seconds (default 60).
    pub rate_window_secs: Option<Spanned<u64>>,
    /// Requests per window per source, and per identity, that are normal
    /// (default 100); the rate signals reach their weight at twice it.
    pub rate_threshold: Option<Spanned<u64>>,
    /// Invalid credentials per source per window that score
    /// `auth_failures` in full (default 5).
    pub auth_failure_threshold: Option<Spanned<u64>>,
    /// Uses of one opt-out rule per window that are normal (default 600);
    /// `optout_velocity` reaches its weight at twice it.
    pub optout_velocity_threshold: Option<Spanned<u64>>,
    /// Points per signal, 0-100 each; an absent weight is 0.
    pub weights: Option<RiskWeightsConfig>,
}

/// `[risk.weights]`: points per signal, 0-100 each.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskWeightsConfig {
    pub untrusted_source: Option<Spanned<u64>>,
    pub unknown_source: Option<Spanned<u64>>,
    pub new_device: Option<Spanned<u64>>,
    pub rate_per_source: Option<Spanned<u64>>,
    pub rate_per_identity: Option<Spanned<u64>>,
    pub auth_failures: Option<Spanned<u64>>,
    pub outside_window: Option<Spanned<u64>>,
    pub optout_velocity: Option<Spanned<u64>>,
    pub old_tls: Option<Spanned<u64>>,
}

/// The consent store of user-chosen opt-outs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentConfig {
    /// Append-only consent records (JSON lines), relative to the config file.
    #[serde(default = "default_consent_store")]
    pub store: PathBuf,
    /// HMAC key for device cookies and CSRF tokens (created 0600 if missing).
    #[serde(default = "default_consent_key")]
    pub key_file: PathBuf,
}

impl Default for ConsentConfig {
    fn default() -> Self {
        ConsentConfig {
            store: default_consent_store(),
            key_file: default_consent_key(),
        }
    }
}

fn default_consent_store() -> PathBuf {
    PathBuf::from("consents.jsonl")
}
fn default_consent_key() -> PathBuf {
    PathBuf::from("consent.key")
}
