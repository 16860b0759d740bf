//! The policy crate's integration tests, in one binary (one link step on a
//! 2-core machine): config diagnostics, every `decide()` branch, and the
//! properties over random policies.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod common;
mod compile;
mod decide;
mod properties;
