//! The PKI crate's integration tests, in one binary: real peers (OpenSSL's
//! command line, rustls' webpki verifier) judge the certificates and CRLs.

#![allow(clippy::unwrap_used, clippy::panic)]

mod openssl;
mod webpki;
