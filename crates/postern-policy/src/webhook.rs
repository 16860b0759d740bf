//! Webhook signatures: HMAC-SHA256 over `<timestamp>.<body>`.
//!
//! The sender puts the Unix timestamp (seconds) in the timestamp header and
//! `sha256=<hex>` (or bare hex) of HMAC-SHA256(secret, timestamp + "." + body)
//! in the signature header. Comparison is constant-time; a timestamp further
//! than the tolerance from `now` is refused (replay window).

use time::OffsetDateTime;

use crate::policy::WebhookSpec;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    #[error("the signature header `{0}` is missing")]
    MissingSignature(String),
    #[error("the timestamp header `{0}` is missing")]
    MissingTimestamp(String),
    #[error("the timestamp is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now, beyond the tolerance")]
    Stale(i64),
    #[error("the signature is not hex")]
    BadSignatureEncoding,
    #[error("the signature does not match")]
    Mismatch,
}

/// Verify a webhook request. `timestamp` and `signature` are the header values.
pub fn verify(
    spec: &WebhookSpec,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), WebhookError> {
    todo!("{spec:?} {timestamp:?} {signature:?} {body:?} {now}")
}

/// Compute the signature header value (`sha256=<hex>`) for a body: what a sender does.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    todo!("{secret:?} {timestamp} {body:?}")
}
