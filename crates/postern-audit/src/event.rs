//! The audit event the gateway submits.
//!
//! The sink wraps an [`AuditEvent`] into a record by adding `seq`, `prev` and
//! `hash` (see [`crate::record`]). The event's own serialization fixes the field
//! order of the record body, so changing the order of the fields below changes
//! the on-disk format: append new fields at the end, before nothing else.

use serde::{Serialize, Serializer};
use time::{OffsetDateTime, UtcOffset};

/// Record kinds written by the sink itself. The gateway must not submit them:
/// [`crate::AuditLog`] refuses events whose kind is [`kind::CHECKPOINT`], since a
/// verifier would treat them as (unsigned, hence forged) checkpoints.
pub mod kind {
    /// A request's authorization decision.
    pub const DECISION: &str = "decision";
    /// The outcome of a forwarded request.
    pub const RESULT: &str = "result";
    /// A policy load or reload.
    pub const POLICY: &str = "policy";
    /// Written by the sink when a log is opened (carries pid and version).
    pub const START: &str = "start";
    /// Written by the sink: a signed statement over the chain head.
    pub const CHECKPOINT: &str = "checkpoint";
}

/// What the gateway submits. The sink adds `seq`, `prev` and `hash`.
///
/// `None` fields and an empty `reasons` list are left out of the record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Gateway clock; serialized as RFC 3339 in UTC with microseconds,
    /// e.g. `2026-11-22T23:01:02.123456Z`.
    #[serde(serialize_with = "serialize_ts")]
    pub ts: OffsetDateTime,
    /// `"decision"`, `"result"`, `"policy"`, … (see [`kind`]).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The normalized path (the one that was matched and forwarded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// The opt-out rule id, when one applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// `"mtls"`, `"jwt"`, `"mtls+jwt"`, `"optout:<rule-id>"`, `"none"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_fingerprint: Option<String>,
    /// See [`Decision`] for the values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Room for later fields (grant id, risk score, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extra: Option<serde_json::Value>,
}

impl AuditEvent {
    /// An event of `kind` at `ts` with every other field empty.
    pub fn new(ts: OffsetDateTime, kind: &'static str) -> Self {
        Self {
            ts,
            kind,
            request_id: None,
            peer: None,
            method: None,
            host: None,
            path: None,
            route: None,
            rule: None,
            identity: None,
            auth: None,
            cert_serial: None,
            cert_fingerprint: None,
            decision: None,
            reasons: Vec::new(),
            status: None,
            extra: None,
        }
    }

    /// An event of `kind` stamped with the current UTC time.
    pub fn now(kind: &'static str) -> Self {
        Self::new(OffsetDateTime::now_utc(), kind)
    }
}

impl Default for AuditEvent {
    /// The Unix epoch and an empty kind; meant for `..Default::default()`.
    fn default() -> Self {
        Self::new(OffsetDateTime::UNIX_EPOCH, "")
    }
}

/// The values of [`AuditEvent::decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    Allow,
    OptOut,
    Deny,
    Challenge,
    Forbidden,
    BadRequest,
    NotFound,
    UpstreamError,
}

impl Decision {
    /// The string written to the log.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::OptOut => "optout",
            Self::Deny => "deny",
            Self::Challenge => "challenge",
            Self::Forbidden => "forbidden",
            Self::BadRequest => "bad_request",
            Self::NotFound => "not_found",
            Self::UpstreamError => "upstream_error",
        }
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Decision> for String {
    fn from(d: Decision) -> Self {
        d.as_str().to_owned()
    }
}

/// RFC 3339 in UTC with exactly six sub-second digits. Written by hand so it
/// cannot fail: a formatting error here would make a record unwritable.
pub(crate) fn format_ts(ts: OffsetDateTime) -> String {
    match ts.checked_to_offset(UtcOffset::UTC) {
        Some(u) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
            u.year(),
            u8::from(u.month()),
            u.day(),
            u.hour(),
            u.minute(),
            u.second(),
            u.microsecond()
        ),
        // Only at the edge of the representable range: keep the original offset.
        None => {
            let (h, m, _) = ts.offset().as_hms();
            let sign = if ts.offset().is_negative() { '-' } else { '+' };
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}{sign}{:02}:{:02}",
                ts.year(),
                u8::from(ts.month()),
                ts.day(),
                ts.hour(),
                ts.minute(),
                ts.second(),
                ts.microsecond(),
                h.unsigned_abs(),
                m.unsigned_abs()
            )
        }
    }
}

fn serialize_ts<S: Serializer>(ts: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_ts(*ts))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "tests panic on unexpected failures by design"
)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn timestamps_are_utc_with_microseconds() {
        let ts = datetime!(2026-11-22 23:01:02.123456789 +01:00);
        assert_eq!(format_ts(ts), "2026-11-22T22:01:02.123456Z");
        assert_eq!(
            format_ts(OffsetDateTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000Z"
        );
    }

    #[test]
    fn empty_fields_are_left_out() {
        let mut ev = AuditEvent::new(datetime!(2026-01-01 0:00 UTC), kind::DECISION);
        ev.decision = Some(Decision::OptOut.into());
        let json = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            json,
            r#"{"ts":"2026-01-01T00:00:00.000000Z","kind":"decision","decision":"optout"}"#
        );
    }
}
