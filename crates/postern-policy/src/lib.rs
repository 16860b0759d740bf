//! postern's policy: the configuration model, path normalization, the rule
//! compiler and the pure decision core.
//!
//! Invariants this crate upholds (see `docs/DESIGN.md` in the repository):
//! - `decide()` is pure: no I/O, no clock reads, no async. Everything it needs
//!   arrives as arguments, so it is exhaustively testable and fuzzable.
//! - Default deny: a request that no live opt-out rule covers must satisfy its
//!   route's requirement. No rule can waive authentication for a whole host.
//! - A present-but-invalid credential never falls into an opt-out.
//! - The path that is matched is the path that is forwarded
//!   ([`normalize::NormalizedPath`]).
//!
//! The flow, as the gateway runs it:
//!
//! ```
//! use std::path::Path;
//! use postern_policy::{decide, split_target, Config, Identity, Policy, RequestFacts, Verdict};
//!
//! let text = r#"
//! [tls]
//! cert = "server.pem"
//! key = "server.key"
//! client_ca = ["ca.pem"]
//! [audit]
//! path = "audit.jsonl"
//! signing_key = "audit.key"
//! [[upstream]]
//! name = "echo"
//! url = "http://127.0.0.1:9000"
//! [[route]]
//! id = "app"
//! path_prefix = "/"
//! upstream = "echo"
//! require = [["mtls"]]
//! [[optout]]
//! id = "healthz"
//! route = "app"
//! methods = ["GET"]
//! paths = ["/healthz"]
//! waive = "all"
//! owner = "platform-team"
//! reason = "load balancer health checks"
//! expires = 2027-01-31T00:00:00Z
//! "#;
//! let now = time::macros::datetime!(2027-01-01 00:00:00 UTC);
//! let config = Config::parse(Path::new("postern.toml"), text).map_err(|d| d[0].to_string())?;
//! let (policy, _warnings) = Policy::compile(&config, now).map_err(|d| d[0].to_string())?;
//!
//! // Normalize once; match and forward the same path.
//! let (path, _query) = split_target("/healthz/../healthz?probe=1").map_err(|e| e.to_string())?;
//! let facts = RequestFacts {
//!     method: "GET",
//!     host: "app.example",
//!     path: &path,
//!     peer: "10.0.0.7".parse().map_err(|_| "ip")?,
//!     upgrade: false,
//!     risk: 0,
//! };
//! let decision = decide(&policy, &facts, &Identity::anonymous(), now);
//! assert!(decision.is_optout());
//! // The audit record could not be written: fail closed.
//! let decision = decision.fall_back("audit sink unavailable");
//! assert!(matches!(decision.verdict, Verdict::Challenge { .. }));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod config;
pub mod decide;
pub mod factor;
pub mod normalize;
pub mod policy;
pub mod risk;
pub mod webhook;

pub use config::{Config, Diagnostic, Severity};
pub use decide::{
    decide, AuthVia, Condition, ConsentClaim, Decision, GrantClaim, Identity, InvalidCredential,
    RequestFacts, Verdict,
};
pub use factor::{Factor, FactorSet};
pub use normalize::{normalize_path, split_target, NormalizedPath, PathError};
pub use policy::{
    OfferSpec, OptOutRule, PathPattern, Policy, Route, TimeWindow, Upstream, WebhookSpec,
};
pub use webhook::WebhookError;
