//! postern's built-in certificate authority.
//!
//! DESIGN invariant 5: *identity comes from certificates that die young.* This crate
//! issues short-lived client certificates (hours, not years) whose only identity is a SAN
//! URI `spiffe://<trust-domain>/<user|service>/<name>`, and turns a client certificate back
//! into a [`ClientIdentity`] at the gateway's request layer.
//!
//! Division of labour with the gateway: rustls/webpki (`WebPkiClientVerifier`) validates the
//! chain, signatures and validity at the handshake; [`client_identity`] is the identity
//! step, run per request, which refuses CA certificates, certificates without the
//! `clientAuth` extended key usage, certificates that expired since the connection opened,
//! foreign trust domains, and identities that live only in the subject CN.
//!
//! A client certificate can also carry signed opt-out [`Grant`]s and the start of the session
//! it continues, in two non-critical private extensions under postern's UUID-derived OID arc
//! (see [`extension`] for the OIDs and why certificates are re-signed after rcgen builds
//! them). Requesters may bring their own key in a CSR ([`Ca::sign_client_csr`]); the CA
//! still decides every name in the certificate.
//!
//! [`CaStore`] keeps a CA in a directory with its lifetime policy (`max_ttl`, enforced on every
//! issuance), an append-only issuance index (so `revoke_identity("alice")` finds every live
//! certificate alice holds), the revocation list (`revoked.json`) and a CRL re-signed at each
//! revocation, for `WebPkiClientVerifier::with_crls`. It can also hold an intermediate CA
//! (pathlen 0) under an offline root.
//!
//! Everything that depends on the clock takes `now` as an argument: no function here reads
//! the system clock, so every behaviour is testable at any instant.

#![warn(missing_docs)]

mod ca;
mod csr;
mod error;
pub mod extension;
mod files;
mod grant;
mod identity;
mod pem;
mod revocation;
mod spiffe;
mod store;

pub use ca::{
    Ca, CertifiedKey, ClientCertRequest, IssuedCertificate, KeyAlg, Kind, CLOCK_SKEW_ALLOWANCE,
    ROOT_VALIDITY,
};
pub use error::{IdentityError, PkiError};
pub use extension::{GRANTS_OID, POSTERN_OID_ARC, SESSION_OID};
pub use files::write_private_key;
pub use grant::{grants_from_cert, session_started_at, Grant, MAX_GRANTS_PAYLOAD};
pub use identity::{client_identity, fingerprint_sha256, ClientIdentity};
pub use pem::{cert_der_from_pem, certs_from_pem, crls_from_pem, private_key_from_pem};
pub use revocation::{
    normalize_serial, IssuedRecord, RevocationList, RevocationReason, RevokedCert,
};
pub use store::{
    CaInitOptions, CaStore, CRL_LIFETIME, DEFAULT_MAX_TTL, DEFAULT_TTL, INTERMEDIATE_VALIDITY,
    MAX_TTL_CEILING,
};
