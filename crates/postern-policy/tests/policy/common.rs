//! Shared fixtures: a config builder and a fixed clock.
#![allow(dead_code)]

use std::path::Path;

use postern_policy::{Config, Diagnostic, Policy, Severity};
use time::macros::datetime;
use time::OffsetDateTime;

/// Load time used by every test: 61 days before the example expiry.
pub const NOW: OffsetDateTime = datetime!(2026-12-01 00:00:00 UTC);

/// The required sections plus one upstream; append routes and rules.
pub const PREAMBLE: &str = r#"
[gateway]
listen = "127.0.0.1:8443"
[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
trust_domain = "postern.demo"
[jwt]
issuer = "https://issuer.example"
audience = "postern"
jwks_file = "jwks.json"
algorithms = ["ES256"]
[audit]
path = "audit.jsonl"
signing_key = "audit.key"
[[upstream]]
name = "echo"
url = "http://127.0.0.1:9000"
"#;

pub const APP_ROUTE: &str = r#"
[[route]]
id = "app"
host = "*"
path_prefix = "/"
upstream = "echo"
require = [["mtls"], ["jwt"]]
"#;

pub const HEALTHZ: &str = r#"
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

pub fn config(extra: &str) -> Config {
    let text = format!("{PREAMBLE}{extra}");
    match Config::parse(Path::new("/etc/postern/postern.toml"), &text) {
        Ok(c) => c,
        Err(d) => panic!("parse failed: {}", render(&d)),
    }
}

pub fn policy(extra: &str) -> Policy {
    match Policy::compile(&config(extra), NOW) {
        Ok((p, _)) => p,
        Err(d) => panic!("compile failed:\n{}", render(&d)),
    }
}

/// Every diagnostic of a config (errors and warnings).
pub fn diagnostics(extra: &str) -> Vec<Diagnostic> {
    Policy::check(&config(extra), NOW)
}

pub fn errors(extra: &str) -> Vec<Diagnostic> {
    diagnostics(extra)
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

pub fn warnings(extra: &str) -> Vec<Diagnostic> {
    diagnostics(extra)
        .into_iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect()
}

pub fn render(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

/// An opt-out rule with sane defaults; `extra` lines are appended to it.
pub fn optout(id: &str, methods: &str, paths: &str, extra: &str) -> String {
    format!(
        r#"
[[optout]]
id = "{id}"
route = "app"
methods = {methods}
paths = {paths}
waive = "all"
owner = "team"
reason = "because"
expires = 2027-01-31T00:00:00Z
{extra}
"#
    )
}
