//! Webhook signatures: HMAC-SHA256 over `<timestamp>.<body>`.
//!
//! The sender puts the Unix timestamp (seconds) in the timestamp header and
//! `sha256=<hex>` (or bare hex) of HMAC-SHA256(secret, timestamp + "." + body)
//! in the signature header. Comparison is constant-time; a timestamp further
//! than the tolerance from `now` is refused (replay window).
//!
//! Why the timestamp is signed with the body: without it a captured request
//! could be replayed forever; with it, only within the tolerance. The check is
//! symmetric (a timestamp too far in the *future* is refused as well), so a
//! sender with a fast clock cannot mint long-lived requests.
//!
//! Pure: `now` is an argument, the secret comes in the [`WebhookSpec`].

use hmac::{Hmac, Mac};
use sha2::Sha256;
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

type HmacSha256 = Hmac<Sha256>;

/// The prefix of the signature header value; a bare hex digest is accepted too.
const SIG_PREFIX: &str = "sha256=";

/// The longest timestamp accepted, in digits (i64 seconds fit in 19).
const MAX_TIMESTAMP_DIGITS: usize = 19;

/// Verify a webhook request. `timestamp` and `signature` are the header values.
///
/// Order of checks: both headers present, timestamp well-formed, signature
/// hex, signature matches (constant-time, via `Mac::verify_slice`), timestamp
/// within `tolerance_secs` of `now` in either direction. So
/// [`WebhookError::Stale`] is only ever reported for an authentic request.
pub fn verify(
    spec: &WebhookSpec,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: OffsetDateTime,
) -> Result<(), WebhookError> {
    let signature =
        signature.ok_or_else(|| WebhookError::MissingSignature(spec.signature_header.clone()))?;
    let timestamp =
        timestamp.ok_or_else(|| WebhookError::MissingTimestamp(spec.timestamp_header.clone()))?;
    let ts = parse_timestamp(timestamp)?;
    let sig_hex = signature.trim();
    let sig_hex = sig_hex.strip_prefix(SIG_PREFIX).unwrap_or(sig_hex);
    let sig = hex::decode(sig_hex).map_err(|_| WebhookError::BadSignatureEncoding)?;
    let mut mac = keyed_mac(&spec.secret);
    // Sign the header's text as sent, not a re-rendering of the parsed
    // number: `0123` and `123` are different signed messages.
    mac.update(timestamp.trim().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&sig).map_err(|_| WebhookError::Mismatch)?;
    let skew = now.unix_timestamp().saturating_sub(ts);
    if skew.unsigned_abs() > spec.tolerance_secs {
        return Err(WebhookError::Stale(skew));
    }
    Ok(())
}

/// Compute the signature header value (`sha256=<hex>`) for a body: what a sender does.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = keyed_mac(secret);
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("{SIG_PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
}

fn keyed_mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (long keys are hashed, short ones padded),
    // so `new_from_slice` cannot fail for HMAC-SHA256.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable_mac(),
    }
}

#[cold]
fn unreachable_mac() -> HmacSha256 {
    // Never reached: see `keyed_mac`. Keyed with a fixed, useless key rather
    // than panicking; a mac with an unknown key verifies nothing.
    <HmacSha256 as hmac::digest::KeyInit>::new(&Default::default())
}

/// Unix seconds: optional `-`, then 1 to 19 ASCII digits. No `+`, no spaces
/// inside, no fractions.
fn parse_timestamp(s: &str) -> Result<i64, WebhookError> {
    let s = s.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty()
        || digits.len() > MAX_TIMESTAMP_DIGITS
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(WebhookError::BadTimestamp);
    }
    s.parse::<i64>().map_err(|_| WebhookError::BadTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const NOW: i64 = 1_800_000_000;

    fn spec(secret: &[u8]) -> WebhookSpec {
        WebhookSpec {
            rule: Arc::from("hook"),
            signature_header: "x-postern-signature".into(),
            timestamp_header: "x-postern-timestamp".into(),
            tolerance_secs: 300,
            secret: secret.to_vec(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(NOW).unwrap()
    }

    fn check(spec: &WebhookSpec, ts: i64, sig: &str, body: &[u8]) -> Result<(), WebhookError> {
        verify(spec, Some(&ts.to_string()), Some(sig), body, now())
    }

    #[test]
    fn valid_signature_verifies() {
        let s = spec(b"s3cret");
        let sig = sign(b"s3cret", NOW, b"{\"a\":1}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(check(&s, NOW, &sig, b"{\"a\":1}"), Ok(()));
    }

    #[test]
    fn bare_hex_signature_is_accepted() {
        let s = spec(b"s3cret");
        let sig = sign(b"s3cret", NOW, b"body");
        let bare = sig.strip_prefix("sha256=").unwrap();
        assert_eq!(check(&s, NOW, bare, b"body"), Ok(()));
        assert_eq!(check(&s, NOW, &bare.to_ascii_uppercase(), b"body"), Ok(()));
    }

    #[test]
    fn known_answer_matches_hmac_sha256() {
        // HMAC-SHA256(key="key", "0.The quick brown fox jumps over the lazy dog")
        // computed independently with Python's hmac module.
        let sig = sign(b"key", 0, b"The quick brown fox jumps over the lazy dog");
        assert_eq!(
            sig,
            "sha256=8511f28f7a1949f0c42772b447d68b2daf760f5f0439a20a17e3b4e7cd395763"
        );
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let sig = sign(b"other", NOW, b"body");
        assert_eq!(
            check(&spec(b"s3cret"), NOW, &sig, b"body"),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn altered_body_is_a_mismatch() {
        let sig = sign(b"s3cret", NOW, b"amount=1");
        assert_eq!(
            check(&spec(b"s3cret"), NOW, &sig, b"amount=9"),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn altered_timestamp_is_a_mismatch() {
        let sig = sign(b"s3cret", NOW, b"body");
        assert_eq!(
            check(&spec(b"s3cret"), NOW + 1, &sig, b"body"),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn truncated_signature_is_a_mismatch() {
        let sig = sign(b"s3cret", NOW, b"body");
        let short = &sig[..sig.len() - 2];
        assert_eq!(
            check(&spec(b"s3cret"), NOW, short, b"body"),
            Err(WebhookError::Mismatch)
        );
        assert_eq!(
            check(&spec(b"s3cret"), NOW, "sha256=", b"body"),
            Err(WebhookError::Mismatch)
        );
    }

    #[test]
    fn stale_timestamp_is_refused_even_if_signed() {
        let ts = NOW - 301;
        let sig = sign(b"s3cret", ts, b"body");
        assert_eq!(
            check(&spec(b"s3cret"), ts, &sig, b"body"),
            Err(WebhookError::Stale(301))
        );
        let ts = NOW - 300;
        let sig = sign(b"s3cret", ts, b"body");
        assert_eq!(check(&spec(b"s3cret"), ts, &sig, b"body"), Ok(()));
    }

    #[test]
    fn future_timestamp_is_refused_even_if_signed() {
        let ts = NOW + 301;
        let sig = sign(b"s3cret", ts, b"body");
        assert_eq!(
            check(&spec(b"s3cret"), ts, &sig, b"body"),
            Err(WebhookError::Stale(-301))
        );
        let ts = i64::MIN;
        let sig = sign(b"s3cret", ts, b"body");
        assert!(matches!(
            check(&spec(b"s3cret"), ts, &sig, b"body"),
            Err(WebhookError::Stale(_))
        ));
    }

    #[test]
    fn missing_headers_are_named() {
        let s = spec(b"s3cret");
        assert_eq!(
            verify(&s, Some("1"), None, b"", now()),
            Err(WebhookError::MissingSignature("x-postern-signature".into()))
        );
        assert_eq!(
            verify(&s, None, Some("sha256=00"), b"", now()),
            Err(WebhookError::MissingTimestamp("x-postern-timestamp".into()))
        );
    }

    #[test]
    fn non_hex_signature_is_refused() {
        let s = spec(b"s3cret");
        assert_eq!(
            check(&s, NOW, "sha256=zz", b""),
            Err(WebhookError::BadSignatureEncoding)
        );
        assert_eq!(
            check(&s, NOW, "sha256=abc", b""),
            Err(WebhookError::BadSignatureEncoding)
        );
        assert_eq!(
            check(&s, NOW, "sha1=abcd", b""),
            Err(WebhookError::BadSignatureEncoding)
        );
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        let s = spec(b"s3cret");
        for ts in [
            "",
            "abc",
            "+1800000000",
            "1.5",
            "1 2",
            "99999999999999999999",
            "-",
        ] {
            assert_eq!(
                verify(&s, Some(ts), Some("sha256=00"), b"", now()),
                Err(WebhookError::BadTimestamp),
                "{ts:?}"
            );
        }
    }
}
