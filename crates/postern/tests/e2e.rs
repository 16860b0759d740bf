//! End-to-end tests: the demo gateway, started in-process on an ephemeral
//! port, driven by real TLS clients presenting real client certificates.
//! One test binary for the crate (build time on 2 cores matters).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

mod browser;
mod ca;
mod certs;
mod cli;
mod consent;
mod console;
mod gateway;
mod observe;
mod oidc;
mod review;
mod risk;
mod upstream;
