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

pub mod config;
pub mod decide;
pub mod factor;
pub mod normalize;
pub mod policy;
pub mod webhook;

pub use config::{Config, Diagnostic, Severity};
pub use decide::{
    decide, AuthVia, Condition, Decision, Identity, InvalidCredential, RequestFacts, Verdict,
};
pub use factor::{Factor, FactorSet};
pub use normalize::{normalize_path, split_target, NormalizedPath, PathError};
pub use policy::Policy;
