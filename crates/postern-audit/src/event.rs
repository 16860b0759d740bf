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

impl AuditEvent {
    /// Appends the event's JSON object to `buf`: the same bytes as
    /// `serde_json::to_vec(self)` (`tests::encoder_matches_serde` pins that),
    /// written by hand because every request pays for it. On `Err` (only
    /// `extra` goes through serde_json, and a `Value` does not fail) `buf` is
    /// left as it was.
    pub fn encode_json(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        let start = buf.len();
        let fields: [(&str, &Option<String>); 12] = [
            ("request_id", &self.request_id),
            ("peer", &self.peer),
            ("method", &self.method),
            ("host", &self.host),
            ("path", &self.path),
            ("route", &self.route),
            ("rule", &self.rule),
            ("identity", &self.identity),
            ("auth", &self.auth),
            ("cert_serial", &self.cert_serial),
            ("cert_fingerprint", &self.cert_fingerprint),
            ("decision", &self.decision),
        ];
        // The whole record in one allocation (escapes aside): a decision
        // record is about 600 bytes.
        let need = 96
            + self.kind.len()
            + fields
                .iter()
                .filter_map(|(n, v)| v.as_ref().map(|v| n.len() + v.len() + 6))
                .sum::<usize>()
            + self.reasons.iter().map(|r| r.len() + 3).sum::<usize>();
        buf.reserve(need);
        buf.extend_from_slice(b"{\"ts\":\"");
        write_ts(buf, self.ts);
        buf.extend_from_slice(b"\",\"kind\":");
        json_str(buf, self.kind);
        for (name, value) in fields {
            if let Some(v) = value {
                key(buf, name);
                json_str(buf, v);
            }
        }
        if !self.reasons.is_empty() {
            key(buf, "reasons");
            buf.push(b'[');
            for (i, r) in self.reasons.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                json_str(buf, r);
            }
            buf.push(b']');
        }
        if let Some(status) = self.status {
            key(buf, "status");
            push_u64(buf, u64::from(status));
        }
        if let Some(extra) = &self.extra {
            key(buf, "extra");
            if let Err(e) = serde_json::to_writer(&mut *buf, extra) {
                buf.truncate(start);
                return Err(e);
            }
        }
        buf.push(b'}');
        Ok(())
    }
}

/// `,"name":`
fn key(buf: &mut Vec<u8>, name: &str) {
    buf.extend_from_slice(b",\"");
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(b"\":");
}

/// `n` in decimal.
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// `n` in decimal, zero-padded to `width` digits (wider numbers are written whole).
fn push_padded(buf: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n;
    while m > 0 || digits.len() - i < width {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
    }
    buf.extend_from_slice(&digits[i..]);
}

/// [`format_ts`] without the intermediate `String`.
fn write_ts(buf: &mut Vec<u8>, ts: OffsetDateTime) {
    match ts.checked_to_offset(UtcOffset::UTC) {
        Some(u) if (0..=9999).contains(&u.year()) => {
            push_padded(buf, u64::from(u.year().unsigned_abs()), 4);
            for (sep, v) in [
                (b'-', u8::from(u.month())),
                (b'-', u.day()),
                (b'T', u.hour()),
                (b':', u.minute()),
                (b':', u.second()),
            ] {
                buf.push(sep);
                push_padded(buf, u64::from(v), 2);
            }
            buf.push(b'.');
            push_padded(buf, u64::from(u.microsecond()), 6);
            buf.push(b'Z');
        }
        // Negative or five-digit years, or the edge of the representable range.
        _ => buf.extend_from_slice(format_ts(ts).as_bytes()),
    }
}

/// Whether `b` must be escaped in a JSON string (as serde_json does: `"`,
/// `\` and the C0 controls; DEL and non-ASCII are written as they are).
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `s` as a JSON string, escaped exactly as serde_json escapes it.
pub(crate) fn json_str(buf: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    // Fast path: most strings need no escape. Checking whole chunks without
    // an early exit lets the compiler vectorize the test.
    let clean = bytes
        .chunks(32)
        .all(|c| !c.iter().fold(false, |acc, &b| acc | needs_escape(b)));
    if clean {
        buf.extend_from_slice(bytes);
    } else {
        let mut from = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if !needs_escape(b) {
                continue;
            }
            buf.extend_from_slice(bytes.get(from..i).unwrap_or_default());
            from = i + 1;
            let short = match b {
                b'"' => Some(b'"'),
                b'\\' => Some(b'\\'),
                0x08 => Some(b'b'),
                0x0c => Some(b'f'),
                b'\n' => Some(b'n'),
                b'\r' => Some(b'r'),
                b'\t' => Some(b't'),
                _ => None,
            };
            match short {
                Some(c) => buf.extend_from_slice(&[b'\\', c]),
                None => {
                    const HEX: &[u8; 16] = b"0123456789abcdef";
                    buf.extend_from_slice(b"\\u00");
                    buf.push(HEX[usize::from(b >> 4)]);
                    buf.push(HEX[usize::from(b & 0xf)]);
                }
            }
        }
        buf.extend_from_slice(bytes.get(from..).unwrap_or_default());
    }
    buf.push(b'"');
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

/// An event with every field set, with strings that need escaping (tests).
#[cfg(test)]
pub(crate) fn every_field_set() -> AuditEvent {
    let mut full = AuditEvent::new(
        time::macros::datetime!(2026-11-22 23:01:02.5 +02:00),
        "decision",
    );
    full.request_id = Some("r\"1".into());
    full.peer = Some("::1".into());
    full.method = Some("GET".into());
    full.host = Some("h\u{e9}\u{7f}".into());
    full.path = Some("/a\\b".into());
    full.route = Some("app".into());
    full.rule = Some("hz".into());
    full.identity = Some("alice".into());
    full.auth = Some("mtls".into());
    full.cert_serial = Some("01".into());
    full.cert_fingerprint = Some("ff".into());
    full.decision = Some("allow".into());
    full.reasons = vec![
        "x\ny\t\r\u{8}\u{c}".into(),
        "\u{1}\u{1f}".into(),
        String::new(),
    ];
    full.status = Some(u16::MAX);
    full.extra = Some(serde_json::json!({"risk": {"score": 3, "why": ["a\"b"]}}));
    full
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

    fn encoded(ev: &AuditEvent) -> Vec<u8> {
        let mut buf = b"kept".to_vec();
        ev.encode_json(&mut buf).unwrap();
        assert_eq!(&buf[..4], b"kept");
        buf.split_off(4)
    }

    #[test]
    fn encoder_matches_serde() {
        let full = every_field_set();
        let mut long = AuditEvent::new(datetime!(2026-01-01 0:00 UTC), "result");
        long.reasons = vec![format!("{}\"{}", "a".repeat(100), "b".repeat(33))];
        for ev in [
            &full,
            &long,
            &AuditEvent::new(datetime!(2026-01-01 0:00 UTC), "start"),
            &AuditEvent::new(datetime!(-0001-01-01 0:00 UTC), "x"),
            &AuditEvent::default(),
        ] {
            assert_eq!(encoded(ev), serde_json::to_vec(ev).unwrap());
        }
    }

    proptest::proptest! {
        #[test]
        fn encoder_matches_serde_on_any_strings(
            a in proptest::prelude::any::<String>(),
            b in "[\\x00-\\x7f]{0,80}",
            status in proptest::prelude::any::<Option<u16>>(),
            micros in 0i64..4_102_444_800_000_000,
        ) {
            let ts = OffsetDateTime::UNIX_EPOCH + time::Duration::microseconds(micros);
            let mut ev = AuditEvent::new(ts, "decision");
            ev.identity = Some(a.clone());
            ev.path = Some(b.clone());
            ev.reasons = vec![a, b];
            ev.status = status;
            proptest::prop_assert_eq!(encoded(&ev), serde_json::to_vec(&ev).unwrap());
        }
    }
}
