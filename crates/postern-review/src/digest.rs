//! The canonical opt-out digest: SHA-256 over a canonical JSON form of
//! everything that decides what an opt-out lets through.
//!
//! What is in it:
//! - every opt-out rule: id, route, methods (sorted, deduplicated), path
//!   patterns (sorted, deduplicated), waived factors (sorted; `"all"` is every
//!   factor), owner, reason, expiry (RFC 3339 in UTC), source CIDRs
//!   (normalized, sorted), time window, webhook check (header names
//!   lower-cased, tolerance, and *where* the secret comes from, never the
//!   secret itself), whether it may upgrade;
//! - every route: id, host (lower-case), path prefix (normalized),
//!   requirement (factor sets sorted) and identity allow-list. All routes,
//!   not only those named by an opt-out: routing is longest-prefix, so adding
//!   or removing another route changes which requests reach an opt-out's route;
//! - `gateway.trusted_proxies`, which decide whose `x-forwarded-for` counts
//!   against `source_cidrs`.
//! - the `[risk]` section (CIDR lists normalized and sorted, window,
//!   thresholds, weights) when any opt-out sets `max_risk`: lowering a
//!   weight or trusting a range lets such a rule apply where it did not.
//!   Without a `max_risk` rule it decides nothing and is left out.
//!
//! What is not: upstream names and addresses, TLS, JWT, audit and listener
//! settings, comments, formatting, order of tables and of list items.
//!
//! The serialization is `serde_json` of the structs below: fields in
//! declaration order, no whitespace, lists sorted. Normalization only ever
//! merges spellings that the compiler treats identically, so two configs with
//! the same digest let the same requests through; the converse need not hold
//! (two equivalent spellings may differ, which costs only a re-approval).

use std::path::Path;

use ipnet::IpNet;
use postern_policy::config::{
    OfferConfig, OptOutConfig, RiskConfig, RiskWeightsConfig, RouteConfig, TimeWindowConfig, Waive,
    WebhookConfig,
};
use postern_policy::risk;
use postern_policy::{normalize_path, Config, Factor};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

/// Version tag inside the canonical form: a change of the canonicalization
/// changes every digest rather than silently colliding.
pub const CANONICAL_VERSION: &str = "postern-optout-digest-v1";

/// The canonical form of a config's opt-out surface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Canonical {
    pub version: &'static str,
    pub trusted_proxies: Vec<String>,
    pub routes: Vec<CanonRoute>,
    pub optouts: Vec<CanonOptOut>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<CanonRisk>,
}

/// `[risk]`, with every default filled in (an explicit default and an
/// absent field are the same risk model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CanonRisk {
    pub trusted_cidrs: Vec<String>,
    pub untrusted_cidrs: Vec<String>,
    pub rate_window_secs: u64,
    pub rate_threshold: u64,
    pub auth_failure_threshold: u64,
    pub optout_velocity_threshold: u64,
    /// `(signal, points)`, every signal, in a fixed order.
    pub weights: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CanonRoute {
    pub id: String,
    pub host: String,
    pub path_prefix: String,
    /// Alternatives, each a sorted set of factor names; alternatives sorted.
    pub require: Vec<Vec<String>>,
    pub identities: Option<Vec<String>>,
    /// Step-up: acceptable `acr` values (dropping them lets weaker sessions in).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_up_acr: Option<Vec<String>>,
}

/// A user-chosen opt-out's offer: the exact disclosure (by digest) and who
/// may accept it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CanonOffer {
    pub title: String,
    pub disclosure_sha256: String,
    pub duration_days: u32,
    pub require_email_verified: bool,
    pub require_amr_any: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CanonWindow {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CanonWebhook {
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    pub signature_header: String,
    pub timestamp_header: String,
    pub tolerance_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct CanonOptOut {
    pub id: String,
    pub route: String,
    pub methods: Vec<String>,
    pub paths: Vec<String>,
    pub waive: Vec<String>,
    pub owner: Option<String>,
    pub reason: Option<String>,
    pub expires: Option<String>,
    pub source_cidrs: Option<Vec<String>>,
    pub time_window: Option<CanonWindow>,
    pub webhook: Option<CanonWebhook>,
    pub allow_upgrade: bool,
    /// Only with a live grant in the client certificate naming this rule.
    pub require_grant: bool,
    /// Above this risk score the rule does not apply (raising or dropping it widens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_risk: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer: Option<CanonOffer>,
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// A CIDR or bare IP in its normal spelling (`::1` → `::1/128`); anything
/// unparseable is kept verbatim (the compiler refuses it anyway).
fn canon_net(s: &str) -> String {
    let t = s.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return net.to_string();
    }
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return IpNet::from(ip).to_string();
    }
    s.to_string()
}

/// An offset datetime as RFC 3339 UTC; local datetimes verbatim (refused by
/// the compiler).
fn canon_datetime(dt: &toml::value::Datetime) -> String {
    let verbatim = || dt.to_string();
    let (Some(date), Some(t), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return verbatim();
    };
    let Ok(month) = time::Month::try_from(date.month) else {
        return verbatim();
    };
    let Ok(d) = time::Date::from_calendar_date(i32::from(date.year), month, date.day) else {
        return verbatim();
    };
    let Ok(clock) = time::Time::from_hms_nano(t.hour, t.minute, t.second, t.nanosecond) else {
        return verbatim();
    };
    let secs = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i32::from(minutes) * 60,
    };
    let Ok(off) = UtcOffset::from_whole_seconds(secs) else {
        return verbatim();
    };
    let instant: OffsetDateTime = time::PrimitiveDateTime::new(d, clock).assume_offset(off);
    instant
        .to_offset(UtcOffset::UTC)
        .format(&Rfc3339)
        .unwrap_or_else(|_| verbatim())
}

fn canon_waive(w: &Waive) -> Vec<String> {
    match w {
        Waive::Keyword(k) if k == "all" => Factor::ALL.iter().map(|f| f.to_string()).collect(),
        Waive::Keyword(k) => vec![format!("keyword:{k}")],
        Waive::Factors(f) => sorted(f.clone()),
    }
}

// The destructurings below are exhaustive on purpose: a field added to the
// config model does not compile here until someone decides whether it
// changes what an opt-out lets through (then it goes into the digest and
// the diff) or not (then it is ignored here, with the reason).

fn canon_route(r: &RouteConfig) -> CanonRoute {
    let RouteConfig {
        id,
        host,
        path_prefix,
        upstream: _, // where requests go, not whether they need authentication
        require,
        identities,
        allow_upgrade: _, // the route's own upgrade switch; opt-outs carry their own
        step_up_acr,
    } = r;
    let raw = path_prefix.get_ref();
    let path_prefix = match normalize_path(raw) {
        Ok(p) => {
            let s = p.as_str();
            if s.len() > 1 {
                s.trim_end_matches('/').to_string()
            } else {
                s.to_string()
            }
        }
        Err(_) => raw.clone(),
    };
    let mut require: Vec<Vec<String>> = require.get_ref().iter().cloned().map(sorted).collect();
    require.sort();
    require.dedup();
    CanonRoute {
        id: id.clone(),
        host: host.to_ascii_lowercase(),
        path_prefix,
        require,
        identities: identities.clone().map(sorted),
        step_up_acr: step_up_acr.clone().filter(|v| !v.is_empty()).map(sorted),
    }
}

fn canon_webhook(w: &WebhookConfig) -> CanonWebhook {
    let WebhookConfig {
        secret_file,
        secret_env,
        signature_header,
        timestamp_header,
        tolerance_secs,
    } = w;
    CanonWebhook {
        secret_file: secret_file
            .as_deref()
            .map(|p: &Path| p.to_string_lossy().into_owned()),
        secret_env: secret_env.clone(),
        signature_header: signature_header.to_ascii_lowercase(),
        timestamp_header: timestamp_header.to_ascii_lowercase(),
        tolerance_secs: *tolerance_secs,
    }
}

fn canon_optout(o: &OptOutConfig) -> CanonOptOut {
    let OptOutConfig {
        id,
        route,
        methods,
        paths,
        waive,
        owner,
        reason,
        expires,
        source_cidrs,
        time_window,
        webhook,
        allow_upgrade,
        require_grant,
        max_risk,
        offer,
    } = o;
    CanonOptOut {
        id: id.get_ref().clone(),
        route: route.get_ref().clone(),
        methods: sorted(methods.get_ref().clone()),
        paths: sorted(paths.get_ref().clone()),
        waive: canon_waive(waive.get_ref()),
        owner: owner.as_ref().map(|s| s.get_ref().clone()),
        reason: reason.as_ref().map(|s| s.get_ref().clone()),
        expires: expires.as_ref().map(|d| canon_datetime(d.get_ref())),
        source_cidrs: source_cidrs
            .as_ref()
            .map(|c| sorted(c.get_ref().iter().map(|s| canon_net(s)).collect())),
        time_window: time_window.as_ref().map(|w| {
            let TimeWindowConfig { start, end } = w.get_ref();
            CanonWindow {
                start: start.trim().to_string(),
                end: end.trim().to_string(),
            }
        }),
        webhook: webhook.as_ref().map(|w| canon_webhook(w.get_ref())),
        allow_upgrade: *allow_upgrade,
        require_grant: *require_grant,
        max_risk: max_risk.as_ref().map(|m| *m.get_ref()),
        offer: offer.as_ref().map(|o| {
            let OfferConfig {
                title,
                disclosure,
                duration_days,
                require_email_verified,
                require_amr_any,
            } = o.get_ref();
            CanonOffer {
                title: title.clone(),
                disclosure_sha256: hex::encode(Sha256::digest(disclosure.as_bytes())),
                duration_days: *duration_days,
                require_email_verified: *require_email_verified,
                require_amr_any: sorted(require_amr_any.clone()),
            }
        }),
    }
}

fn canon_risk(r: &RiskConfig) -> CanonRisk {
    let RiskConfig {
        trusted_cidrs,
        untrusted_cidrs,
        rate_window_secs,
        rate_threshold,
        auth_failure_threshold,
        optout_velocity_threshold,
        weights,
    } = r;
    let RiskWeightsConfig {
        untrusted_source,
        unknown_source,
        new_device,
        rate_per_source,
        rate_per_identity,
        auth_failures,
        outside_window,
        optout_velocity,
        old_tls,
    } = weights.clone().unwrap_or_default();
    let n =
        |v: &Option<toml::Spanned<u64>>, default: u64| v.as_ref().map_or(default, |v| *v.get_ref());
    let nets =
        |v: &[toml::Spanned<String>]| sorted(v.iter().map(|s| canon_net(s.get_ref())).collect());
    let weights = [
        ("untrusted_source", untrusted_source),
        ("unknown_source", unknown_source),
        ("new_device", new_device),
        ("rate_per_source", rate_per_source),
        ("rate_per_identity", rate_per_identity),
        ("auth_failures", auth_failures),
        ("outside_window", outside_window),
        ("optout_velocity", optout_velocity),
        ("old_tls", old_tls),
    ]
    .iter()
    .map(|(name, v)| (name.to_string(), n(v, 0)))
    .collect();
    CanonRisk {
        trusted_cidrs: nets(trusted_cidrs),
        untrusted_cidrs: nets(untrusted_cidrs),
        rate_window_secs: n(rate_window_secs, risk::DEFAULT_RATE_WINDOW_SECS),
        rate_threshold: n(rate_threshold, u64::from(risk::DEFAULT_RATE_THRESHOLD)),
        auth_failure_threshold: n(
            auth_failure_threshold,
            u64::from(risk::DEFAULT_AUTH_FAILURE_THRESHOLD),
        ),
        optout_velocity_threshold: n(
            optout_velocity_threshold,
            u64::from(risk::DEFAULT_OPTOUT_VELOCITY_THRESHOLD),
        ),
        weights,
    }
}

impl Canonical {
    /// The canonical form of a parsed config. Pure: reads no files.
    pub fn of(config: &Config) -> Canonical {
        let mut routes: Vec<CanonRoute> = config
            .routes
            .iter()
            .map(|r| canon_route(r.get_ref()))
            .collect();
        routes.sort();
        let mut optouts: Vec<CanonOptOut> = config
            .optouts
            .iter()
            .map(|o| canon_optout(o.get_ref()))
            .collect();
        optouts.sort();
        Canonical {
            version: CANONICAL_VERSION,
            trusted_proxies: sorted(
                config
                    .gateway
                    .trusted_proxies
                    .iter()
                    .map(|p| canon_net(p.get_ref()))
                    .collect(),
            ),
            routes,
            optouts,
            risk: config
                .risk
                .as_ref()
                .filter(|_| {
                    config
                        .optouts
                        .iter()
                        .any(|o| o.get_ref().max_risk.is_some())
                })
                .map(canon_risk),
        }
    }

    /// The canonical JSON bytes that are hashed.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings, bools and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// `sha256:<64 hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.to_json())))
    }
}

/// The opt-out digest of a parsed config.
pub fn digest(config: &Config) -> String {
    Canonical::of(config).digest()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const BASE: &str = r#"
# a comment
[gateway]
listen = "127.0.0.1:8443"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
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
paths = ["/healthz", "/status/**"]
waive = "all"
owner = "platform-team"
reason = "load balancer health checks"
expires = 2027-01-31T00:00:00Z
source_cidrs = ["127.0.0.0/8", "::1/128"]
[[optout]]
id = "hook"
route = "app"
methods = ["POST"]
paths = ["/webhooks/x"]
waive = ["mtls"]
owner = "payments"
reason = "signed webhooks"
expires = 2027-01-31T00:00:00Z
time_window = { start = "08:00", end = "18:00" }
[optout.webhook]
secret_file = "hook.secret"
"#;

    pub(crate) fn cfg(text: &str) -> Config {
        Config::parse(Path::new("p.toml"), text).unwrap()
    }

    pub(crate) fn d(text: &str) -> String {
        digest(&cfg(text))
    }

    /// The same config written differently: reordered tables and lists,
    /// other comments and whitespace, equivalent spellings.
    const REFORMATTED: &str = r#"
[audit]
signing_key = "audit.key"
path = "audit.jsonl"

[[optout]]
# webhook first this time
id = "hook"
route   = "app"
paths = [ "/webhooks/x" ]
methods = ["POST"]
waive = ["mtls", "mtls"]
reason = "signed webhooks"
owner = "payments"
expires = 2027-01-31T01:00:00+01:00
time_window.start = "08:00"
time_window.end = "18:00"
webhook = { secret_file = "hook.secret", signature_header = "X-Postern-Signature" }

[gateway]
listen = "127.0.0.1:8443"

[[optout]]
id = "healthz"
route = "app"
methods = ["HEAD", "GET", "GET"]
paths = ["/status/**", "/healthz"]
waive = "all"
owner = "platform-team"
reason = "load balancer health checks"
expires = 2027-01-31T00:00:00Z
source_cidrs = ["::1", "127.0.0.0/8"]

[tls]
key = "server.key"
cert = "server.pem"
client_ca = ["ca.pem"]

[[route]]
require = [["jwt"], ["mtls"]]
id = "app"
host = "*"
path_prefix = "/"
upstream = "echo"

[[upstream]]
name = "echo"
url = "http://127.0.0.1:9000"
"#;

    #[test]
    fn digest_is_sha256_hex() {
        let x = d(BASE);
        assert!(x.starts_with("sha256:"));
        assert_eq!(x.len(), 7 + 64);
    }

    #[test]
    fn reformatting_and_reordering_keep_the_digest() {
        assert_eq!(Canonical::of(&cfg(BASE)), Canonical::of(&cfg(REFORMATTED)));
        assert_eq!(d(BASE), d(REFORMATTED));
    }

    #[test]
    fn upstream_address_alone_keeps_the_digest() {
        let other = BASE.replace("http://127.0.0.1:9000", "http://10.9.9.9:80");
        assert_eq!(d(BASE), d(&other));
        let other = BASE.replace("client_ca = [\"ca.pem\"]", "client_ca = [\"other.pem\"]");
        assert_eq!(d(BASE), d(&other));
    }

    /// Each of these changes what an opt-out lets through (or who may
    /// change it): every one must change the digest.
    pub(crate) const WIDENINGS: &[(&str, &str)] = &[
        (
            "methods = [\"GET\", \"HEAD\"]",
            "methods = [\"GET\", \"HEAD\", \"POST\"]",
        ),
        (
            "paths = [\"/healthz\", \"/status/**\"]",
            "paths = [\"/healthz\", \"/status/**\", \"/metrics\"]",
        ),
        ("\"/status/**\"", "\"/s/**\""),
        (
            "source_cidrs = [\"127.0.0.0/8\", \"::1/128\"]",
            "source_cidrs = [\"0.0.0.0/0\", \"::1/128\"]",
        ),
        ("source_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\n", "\n"),
        (
            "expires = 2027-01-31T00:00:00Z\nsource",
            "expires = 2027-02-28T00:00:00Z\nsource",
        ),
        ("waive = [\"mtls\"]", "waive = [\"mtls\", \"jwt\"]"),
        ("[optout.webhook]\nsecret_file = \"hook.secret\"\n", ""),
        ("secret_file = \"hook.secret\"", "secret_env = \"HOOK\""),
        ("time_window = { start = \"08:00\", end = \"18:00\" }\n", ""),
        ("end = \"18:00\"", "end = \"20:00\""),
        ("host = \"*\"", "host = \"app.example\""),
        (
            "require = [[\"mtls\"], [\"jwt\"]]",
            "require = [[\"mtls\"]]",
        ),
        (
            "listen = \"127.0.0.1:8443\"",
            "listen = \"127.0.0.1:8443\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
        ),
        ("id = \"healthz\"", "id = \"healthz2\""),
        (
            "route = \"app\"\nmethods = [\"POST\"]",
            "route = \"app\"\nallow_upgrade = true\nmethods = [\"POST\"]",
        ),
        ("owner = \"payments\"", "owner = \"someone-else\""),
        (
            "route = \"app\"\nmethods = [\"GET\", \"HEAD\"]",
            "route = \"app\"\nrequire_grant = true\nmethods = [\"GET\", \"HEAD\"]",
        ),
    ];

    #[test]
    fn every_semantic_change_changes_the_digest() {
        let base = d(BASE);
        for (from, to) in WIDENINGS {
            assert!(BASE.contains(from), "fixture: {from}");
            let changed = BASE.replacen(from, to, 1);
            let c = cfg(&changed);
            assert_ne!(digest(&c), base, "{from} -> {to} kept the digest");
        }
    }

    #[test]
    fn another_route_changes_the_digest() {
        let more = format!(
            "{BASE}\n[[route]]\nid = \"api\"\npath_prefix = \"/api\"\nupstream = \"echo\"\nrequire = [[\"mtls\"]]\n"
        );
        assert_ne!(d(BASE), d(&more));
    }

    #[test]
    fn risk_section_counts_only_when_a_rule_sets_max_risk() {
        let risk = "\n[risk]\nuntrusted_cidrs = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\n[risk.weights]\nuntrusted_source = 60\n";
        // No max_risk: the risk model decides nothing about opt-outs.
        assert_eq!(d(BASE), d(&format!("{BASE}{risk}")));
        let gated = BASE.replacen(
            "source_cidrs = [\"127.0.0.0/8\", \"::1/128\"]",
            "source_cidrs = [\"127.0.0.0/8\", \"::1/128\"]\nmax_risk = 40",
            1,
        );
        let with = d(&format!("{gated}{risk}"));
        assert_ne!(d(&gated), with);
        // Same model, other spelling: order of CIDRs, explicit defaults.
        let respelled = "\n[risk]\nuntrusted_cidrs = [\"198.51.100.0/24\", \"192.0.2.0/24\"]\nrate_window_secs = 60\n[risk.weights]\nuntrusted_source = 60\nold_tls = 0\n";
        assert_eq!(with, d(&format!("{gated}{respelled}")));
        for (from, to) in [
            ("untrusted_source = 60", "untrusted_source = 10"),
            ("\"192.0.2.0/24\", ", ""),
            ("[risk]\n", "[risk]\ntrusted_cidrs = [\"0.0.0.0/0\"]\n"),
            ("[risk]\n", "[risk]\nrate_threshold = 1000\n"),
        ] {
            let changed = risk.replacen(from, to, 1);
            assert_ne!(with, d(&format!("{gated}{changed}")), "{from} -> {to}");
        }
    }

    fn shuffle<T: Clone>(v: &[T], seed: &[usize]) -> Vec<T> {
        let mut out: Vec<T> = v.to_vec();
        for (i, s) in seed.iter().enumerate() {
            if out.len() > 1 {
                let a = i % out.len();
                let b = s % out.len();
                out.swap(a, b);
            }
        }
        out
    }

    fn render(
        methods: &[String],
        paths: &[String],
        cidrs: &[String],
        comment: &str,
        pad: &str,
        upstream_port: u16,
        reversed: bool,
    ) -> String {
        let q = |v: &[String]| {
            v.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(&format!(",{pad}"))
        };
        let head = format!(
            "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\n[audit]\npath = \"a\"\nsigning_key = \"k\"\n[[upstream]]\nname = \"u\"\nurl = \"http://127.0.0.1:{upstream_port}\"\n[[route]]\nid = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\nrequire = [[\"mtls\"]]\n"
        );
        let a = format!(
            "[[optout]] # {comment}\nid{pad}= \"a\"\nroute = \"r\"\nmethods = [{}]\npaths = [{}]\nwaive = \"all\"\nsource_cidrs = [{}]\n",
            q(methods),
            q(paths),
            q(cidrs)
        );
        let b = "[[optout]]\nid = \"b\"\nroute = \"r\"\nmethods = [\"GET\"]\npaths = [\"/b\"]\nwaive = [\"mtls\"]\n";
        if reversed {
            format!("# {comment}\n{b}{a}{head}")
        } else {
            format!("{head}{a}{b}")
        }
    }

    const METHODS: [&str; 5] = ["GET", "HEAD", "POST", "PUT", "DELETE"];
    const PATHS: [&str; 5] = ["/a", "/b/**", "/c/d", "/e/**", "/f"];
    const NETS: [&str; 4] = ["10.0.0.0/8", "192.168.1.0/24", "::1/128", "127.0.0.1/32"];

    fn pick(all: &[&str], mask: u8) -> Vec<String> {
        all.iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, s)| s.to_string())
            .collect()
    }

    proptest! {
        /// Reordering lists and tables, comments, whitespace, duplicates and
        /// the upstream's address never change the digest.
        #[test]
        fn presentation_never_changes_the_digest(
            m in 1u8..32, p in 1u8..32, c in 1u8..16,
            seed in proptest::collection::vec(0usize..16, 0..8),
            comment in "[a-z ]{0,12}", pad in "[ \t]{0,3}", port in 1u16..65535,
            dup in any::<bool>(), reversed in any::<bool>(),
        ) {
            let (methods, paths, nets) = (pick(&METHODS, m), pick(&PATHS, p), pick(&NETS, c));
            let base = render(&methods, &paths, &nets, "", " ", 9000, false);
            let mut methods2 = shuffle(&methods, &seed);
            if dup { methods2.push(methods[0].clone()); }
            let nets2: Vec<String> = shuffle(&nets, &seed)
                .into_iter()
                .map(|n| n.strip_suffix("/128").or(n.strip_suffix("/32")).map(str::to_string).unwrap_or(n))
                .collect();
            let other = render(&methods2, &shuffle(&paths, &seed), &nets2, &comment, &pad, port, reversed);
            prop_assert_eq!(d(&base), d(&other));
        }

        /// Adding a method, a path or a CIDR, or dropping the CIDR list,
        /// always changes the digest.
        #[test]
        fn widening_always_changes_the_digest(
            m in 1u8..31, p in 1u8..31, c in 1u8..15, which in 0u8..4,
        ) {
            let (methods, paths, nets) = (pick(&METHODS, m), pick(&PATHS, p), pick(&NETS, c));
            let base = render(&methods, &paths, &nets, "", " ", 9000, false);
            let wider = match which {
                0 => {
                    let extra = METHODS.iter().find(|x| !methods.contains(&x.to_string())).map(|s| s.to_string());
                    let mut v = methods.clone(); v.extend(extra);
                    render(&v, &paths, &nets, "", " ", 9000, false)
                }
                1 => {
                    let extra = PATHS.iter().find(|x| !paths.contains(&x.to_string())).map(|s| s.to_string());
                    let mut v = paths.clone(); v.extend(extra);
                    render(&methods, &v, &nets, "", " ", 9000, false)
                }
                2 => {
                    let extra = NETS.iter().find(|x| !nets.contains(&x.to_string())).map(|s| s.to_string());
                    let mut v = nets.clone(); v.extend(extra);
                    render(&methods, &paths, &v, "", " ", 9000, false)
                }
                _ => base.replace(&format!("source_cidrs = [{}]\n", nets.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", ")), ""),
            };
            prop_assert_ne!(d(&base), d(&wider));
        }
    }
}
