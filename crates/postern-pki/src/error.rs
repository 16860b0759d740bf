//! Error types: one enum per fallible surface, every variant documented.
//!
//! Messages are lowercase, name the offending input in backticks and never mention Rust
//! type names, so the gateway and CLI can show them to operators unchanged.

use std::path::PathBuf;

use time::OffsetDateTime;

/// Why the CA could not be created, loaded, or could not issue a certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The trust domain does not follow the SPIFFE trust-domain grammar (lowercase letters,
    /// digits, `.`, `-`, `_`). It becomes the authority of every SPIFFE ID the CA issues, so a
    /// bad one would produce certificates the gateway itself refuses.
    #[error("invalid trust domain `{trust_domain}`: {reason}")]
    InvalidTrustDomain {
        /// The rejected trust domain.
        trust_domain: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// The workload or user name cannot be one SPIFFE path segment.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// A DNS name for a server certificate is not a valid IA5 string.
    #[error("invalid dns name `{0}`")]
    InvalidDnsName(String),
    /// The requested lifetime is zero, negative or does not fit the calendar.
    #[error("invalid certificate lifetime `{0}`: it must be positive")]
    InvalidTtl(time::Duration),
    /// The requested lifetime exceeds the CA's configured maximum; postern's certificates
    /// die young by construction, so this is refused rather than silently shortened.
    #[error("requested lifetime `{requested}` exceeds the ca maximum of `{max}`")]
    TtlExceedsMax {
        /// What the caller asked for.
        requested: time::Duration,
        /// The CA's `max_ttl`.
        max: time::Duration,
    },
    /// The certificate would still be valid after its issuing CA expires.
    #[error("the certificate would expire at {not_after}, after its ca expires at {ca_not_after}")]
    OutlivesCa {
        /// Requested not-after of the new certificate.
        not_after: OffsetDateTime,
        /// Not-after of the issuing CA.
        ca_not_after: OffsetDateTime,
    },
    /// The CA certificate is expired or not yet valid at the issuance time.
    #[error("the ca certificate is not valid at {now} (valid {not_before} to {not_after})")]
    CaNotValid {
        /// Issuance time.
        now: OffsetDateTime,
        /// CA not-before.
        not_before: OffsetDateTime,
        /// CA not-after.
        not_after: OffsetDateTime,
    },
    /// PEM input held no usable block of the expected kind.
    #[error("could not read {what} from pem: {reason}")]
    Pem {
        /// What was expected (`certificate`, `private key`, ...).
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A certificate could not be parsed as DER X.509.
    #[error("could not parse {what}: {reason}")]
    Certificate {
        /// Which certificate (`ca certificate`, ...).
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// A certificate offered as a CA lacks `basicConstraints CA:TRUE` or `keyCertSign`.
    #[error("the certificate is not a ca: {0}")]
    NotACa(&'static str),
    /// The private key does not belong to the CA certificate; signing with it would produce
    /// certificates that no verifier accepts.
    #[error("the private key does not match the ca certificate's public key")]
    KeyMismatch,
    /// The key is neither ECDSA P-256 nor Ed25519, the two algorithms postern issues with.
    #[error("unsupported key algorithm: postern's ca uses ecdsa p-256 or ed25519")]
    UnsupportedKeyAlgorithm,
    /// A certificate signing request was unparsable, badly signed or used unsupported features.
    #[error("invalid certificate signing request: {0}")]
    InvalidCsr(String),
    /// The session start of a renewal lies after the issuance time.
    #[error("the session cannot start in the future ({0})")]
    InvalidSessionStart(OffsetDateTime),
    /// A grant carried by a certificate is malformed or outlives the certificate.
    #[error("invalid grant: {0}")]
    InvalidGrant(String),
    /// The CA directory already holds a CA; overwriting it would orphan every certificate
    /// issued so far.
    #[error("a ca already exists in `{0}`; refusing to overwrite it")]
    CaExists(PathBuf),
    /// A CA directory file is missing or malformed.
    #[error("invalid ca directory `{path}`: {reason}")]
    CaStore {
        /// The offending file.
        path: PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// The named identity has no issued certificate in the issuance index.
    #[error("no certificate was issued to `{0}`")]
    UnknownIdentity(String),
    /// A serial number is not hexadecimal.
    #[error("invalid serial number `{0}`: expected hexadecimal")]
    InvalidSerial(String),
    /// Reading or writing a file failed.
    #[error("i/o error on `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused to build or sign the certificate.
    #[error("certificate generation failed: {0}")]
    Generation(#[from] rcgen::Error),
}

impl PkiError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Why a client certificate yields no identity.
///
/// The gateway maps every variant to "unauthenticated" (and a step-up challenge, DESIGN
/// invariant 7); the message is for the audit record and the operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not one DER X.509 certificate (or have trailing data).
    #[error("the client certificate could not be parsed: {0}")]
    Unparsable(String),
    /// The certificate is a CA (`basicConstraints CA:TRUE`); a CA certificate names an
    /// issuer, never a client, so accepting one would let a leaked intermediate log in.
    #[error("the certificate is a ca certificate (basicConstraints CA:TRUE) and cannot identify a client")]
    CaCertificate,
    /// The certificate has no extendedKeyUsage, or one without `id-kp-clientAuth`. A server
    /// certificate (serverAuth) must not be replayable as a client identity.
    #[error(
        "the certificate is not for client authentication (extendedKeyUsage lacks clientAuth)"
    )]
    NotClientAuth,
    /// Expired at `now`. Connections outlive certificates, so the gateway re-checks per request.
    #[error("the certificate expired at {not_after} (now {now})")]
    Expired {
        /// Certificate not-after.
        not_after: OffsetDateTime,
        /// The time of the check.
        now: OffsetDateTime,
    },
    /// Not yet valid at `now`.
    #[error("the certificate is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Certificate not-before.
        not_before: OffsetDateTime,
        /// The time of the check.
        now: OffsetDateTime,
    },
    /// The identity is only in the subject CN. CNs are free text that many CAs copy from
    /// requests unchecked; postern takes identity only from SANs.
    #[error("the certificate names its identity only in the subject CN; postern requires a SAN URI or DNS name")]
    IdentityOnlyInCn,
    /// Neither a SAN URI, a SAN DNS name nor even a CN names anyone.
    #[error("the certificate names no identity (no SAN URI or DNS name)")]
    NoIdentity,
    /// The SPIFFE ID belongs to another trust domain.
    #[error(
        "the certificate's spiffe id `{uri}` belongs to trust domain `{found}`, not `{expected}`"
    )]
    ForeignTrustDomain {
        /// The SAN URI.
        uri: String,
        /// Its trust domain.
        found: String,
        /// The gateway's trust domain.
        expected: String,
    },
    /// A `spiffe:` SAN URI that breaks the SPIFFE ID grammar or postern's `/<kind>/<name>` path.
    #[error("malformed spiffe id `{uri}`: {reason}")]
    MalformedSpiffeId {
        /// The SAN URI.
        uri: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// The fallback SAN DNS name is not a plain host name (empty label, wildcard, odd
    /// characters); a wildcard names a set of hosts, never one caller.
    #[error("the certificate's dns name `{0}` is not a plain host name")]
    MalformedDnsName(String),
    /// More than one `spiffe:` SAN URI: an X509-SVID carries exactly one, and picking one
    /// would make identity depend on SAN order.
    #[error("the certificate carries more than one spiffe id")]
    AmbiguousSpiffeId,
}
