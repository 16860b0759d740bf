//! The record format: encoding (used by the sink's writer) and line parsing
//! (shared by [`crate::verify`] and the sink's tail check on reopen).
//!
//! A record *body* is `{"seq":N,<event fields>,[checkpoint fields],"prev":"<hex>"}`
//! with the event fields in [`crate::AuditEvent`]'s declaration order. The line is
//! `body[..len-1] + ,"hash":"<hex>"}` + `\n`, where the hash is SHA-256 over the
//! body bytes. Because the suffix has a fixed length ([`HASH_SUFFIX_LEN`]), a reader
//! recovers the exact hashed bytes without re-serializing anything.
//!
//! A checkpoint at seq `N` has `covers = N-1` and `head = prev` (the hash of
//! record `N-1`), and `sig` is an ed25519 signature, base64 (standard, padded),
//! over [`checkpoint_message`]`(N-1, head)`.

use crate::event::{json_str, push_u64, AuditEvent};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `prev` of the very first record.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation for checkpoint signatures, so a checkpoint signature can
/// never be replayed as a signature over anything else made with the same key.
pub const CHECKPOINT_CONTEXT: &str = "postern-audit-checkpoint-v1";

const HASH_PREFIX: &[u8] = br#","hash":""#;
const HASH_CLOSE: &[u8] = br#""}"#;

/// Length of `,"hash":"<64 hex>"}`.
pub const HASH_SUFFIX_LEN: usize = HASH_PREFIX.len() + 64 + HASH_CLOSE.len();

/// The exact bytes a checkpoint signs: `postern-audit-checkpoint-v1\n<covers>\n<head>`.
pub fn checkpoint_message(covers: u64, head: &str) -> Vec<u8> {
    format!("{CHECKPOINT_CONTEXT}\n{covers}\n{head}").into_bytes()
}

/// Checkpoint fields of a record body (all `None` for ordinary records).
#[derive(Debug, Default)]
pub(crate) struct CheckpointFields<'a> {
    pub covers: Option<u64>,
    pub head: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub sig: Option<&'a str>,
}

/// An event's JSON object, encoded by [`AuditEvent::encode_json`] (so it is
/// `{"ts":...}`: never empty, starts with `{` and ends with `}`).
///
/// Requests encode their events on their own threads; the writer only
/// splices the bytes into the chain. That keeps the strings of an event on
/// the thread that made them, and the writer's work per record to copying
/// and hashing.
#[derive(Debug, Clone)]
pub(crate) struct EncodedEvent(Vec<u8>);

impl EncodedEvent {
    pub(crate) fn new(event: &AuditEvent) -> Result<Self, serde_json::Error> {
        let mut buf = Vec::new();
        event.encode_json(&mut buf)?;
        Ok(Self(buf))
    }
}

/// Appends one record line (with `\n`) to `buf` and returns its hash in
/// lowercase hex.
///
/// Writes in place, with no intermediate body: `{"seq":N` then the event's
/// own JSON object with its `{` turned into `,` (the same bytes as
/// flattening the event into the body; `tests::same_bytes_as_flatten` pins
/// that), then the checkpoint fields, `prev`, and the hash.
pub(crate) fn encode_into(
    buf: &mut Vec<u8>,
    seq: u64,
    event: &EncodedEvent,
    checkpoint: &CheckpointFields<'_>,
    prev: &str,
) -> [u8; 64] {
    let start = buf.len();
    write_body(buf, seq, event, checkpoint, prev);
    let mut hex = [0u8; 64];
    let digest = Sha256::digest(buf.get(start..).unwrap_or_default());
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(digest, &mut hex);
    // The body is a JSON object, so its last byte is `}`: replace it.
    buf.pop();
    buf.extend_from_slice(HASH_PREFIX);
    buf.extend_from_slice(&hex);
    buf.extend_from_slice(HASH_CLOSE);
    buf.push(b'\n');
    hex
}

fn write_body(
    buf: &mut Vec<u8>,
    seq: u64,
    event: &EncodedEvent,
    checkpoint: &CheckpointFields<'_>,
    prev: &str,
) {
    buf.reserve(event.0.len() + 200);
    buf.extend_from_slice(b"{\"seq\":");
    push_u64(buf, seq);
    buf.push(b',');
    // Between the event's braces (never empty: see `EncodedEvent`).
    let inner = event.0.len().saturating_sub(1).max(1);
    buf.extend_from_slice(event.0.get(1..inner).unwrap_or_default());
    if let Some(covers) = checkpoint.covers {
        buf.extend_from_slice(b",\"covers\":");
        push_u64(buf, covers);
    }
    for (name, value) in [
        (&b",\"head\":"[..], checkpoint.head),
        (&b",\"key_id\":"[..], checkpoint.key_id),
        (&b",\"sig\":"[..], checkpoint.sig),
    ] {
        if let Some(v) = value {
            buf.extend_from_slice(name);
            json_str(buf, v);
        }
    }
    buf.extend_from_slice(b",\"prev\":");
    json_str(buf, prev);
    buf.push(b'}');
}

/// An encoded record: the full line (with `\n`) and its hash in lowercase hex.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Encoded {
    pub line: Vec<u8>,
    pub hash: String,
}

/// Serializes one record on its own (see [`encode_into`]).
#[cfg(test)]
pub(crate) fn encode(
    seq: u64,
    event: &AuditEvent,
    checkpoint: &CheckpointFields<'_>,
    prev: &str,
) -> Result<Encoded, serde_json::Error> {
    let mut line = Vec::with_capacity(512);
    let hex = encode_into(&mut line, seq, &EncodedEvent::new(event)?, checkpoint, prev);
    Ok(Encoded {
        line,
        hash: String::from_utf8_lossy(&hex).into_owned(),
    })
}

/// The fields a verifier needs from a record body; everything else is covered
/// by the hash and not interpreted.
#[derive(Debug, Deserialize)]
pub(crate) struct Fields {
    pub seq: u64,
    pub kind: String,
    pub prev: String,
    pub covers: Option<u64>,
    pub head: Option<String>,
    pub key_id: Option<String>,
    pub sig: Option<String>,
}

/// A line whose hash matched its body.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub fields: Fields,
    pub hash: String,
}

/// Why a line (without its `\n`) is not a well-formed record.
#[derive(Debug)]
pub(crate) enum LineProblem {
    /// The line does not end in `,"hash":"<64 lowercase hex>"}`.
    NoHashSuffix,
    /// The body's SHA-256 differs from the hash in the line.
    HashMismatch,
    /// The hash matches but the body is not a record.
    Malformed(String),
}

/// Parses one line (without the trailing `\n`), checking its own hash.
pub(crate) fn parse_line(line: &[u8]) -> Result<Parsed, LineProblem> {
    let Some(split) = line.len().checked_sub(HASH_SUFFIX_LEN) else {
        return Err(LineProblem::NoHashSuffix);
    };
    let (prefix, suffix) = line.split_at(split);
    let claimed = suffix
        .strip_prefix(HASH_PREFIX)
        .and_then(|s| s.strip_suffix(HASH_CLOSE))
        .filter(|h| is_lower_hex_64(h))
        .ok_or(LineProblem::NoHashSuffix)?;
    let mut hasher = Sha256::new();
    hasher.update(prefix);
    hasher.update(b"}");
    let hash = hex::encode(hasher.finalize());
    if hash.as_bytes() != claimed {
        return Err(LineProblem::HashMismatch);
    }
    let mut body = Vec::with_capacity(prefix.len() + 1);
    body.extend_from_slice(prefix);
    body.push(b'}');
    let fields: Fields =
        serde_json::from_slice(&body).map_err(|e| LineProblem::Malformed(e.to_string()))?;
    if !is_lower_hex_64(fields.prev.as_bytes()) {
        return Err(LineProblem::Malformed(
            "`prev` is not 64 lowercase hex digits".into(),
        ));
    }
    Ok(Parsed { fields, hash })
}

fn is_lower_hex_64(s: &[u8]) -> bool {
    s.len() == 64 && s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
    fn encoded_line_parses_back_with_the_same_hash() {
        let mut ev = AuditEvent::new(datetime!(2026-11-22 23:01:02.123456 UTC), "decision");
        ev.reasons = vec!["a".into()];
        let enc = encode(7, &ev, &CheckpointFields::default(), GENESIS_PREV).unwrap();
        let text = std::str::from_utf8(&enc.line).unwrap();
        assert!(text.starts_with(
            r#"{"seq":7,"ts":"2026-11-22T23:01:02.123456Z","kind":"decision","reasons":["a"],"prev":"000"#
        ));
        assert!(text.ends_with(&format!(",\"hash\":\"{}\"}}\n", enc.hash)));
        let parsed = parse_line(&enc.line[..enc.line.len() - 1]).unwrap();
        assert_eq!(parsed.hash, enc.hash);
        assert_eq!(parsed.fields.seq, 7);
        assert_eq!(parsed.fields.kind, "decision");
    }

    #[test]
    fn checkpoint_fields_follow_the_event_and_precede_prev() {
        let ev = AuditEvent::new(datetime!(2026-01-01 0:00 UTC), "checkpoint");
        let cp = CheckpointFields {
            covers: Some(4),
            head: Some("h"),
            key_id: Some("k"),
            sig: Some("s"),
        };
        let enc = encode(5, &ev, &cp, "p").unwrap();
        let text = std::str::from_utf8(&enc.line).unwrap();
        assert!(text.starts_with(
            r#"{"seq":5,"ts":"2026-01-01T00:00:00.000000Z","kind":"checkpoint","covers":4,"head":"h","key_id":"k","sig":"s","prev":"p","hash":""#
        ));
    }

    /// The record body as it was first defined: the event flattened into it.
    #[derive(serde::Serialize)]
    struct Flattened<'a> {
        seq: u64,
        #[serde(flatten)]
        event: &'a AuditEvent,
        #[serde(skip_serializing_if = "Option::is_none")]
        covers: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        head: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        key_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        sig: Option<&'a str>,
        prev: &'a str,
    }

    #[test]
    fn same_bytes_as_flatten() {
        let full = crate::event::every_field_set();
        let bare = AuditEvent::new(datetime!(2026-01-01 0:00 UTC), "start");
        let cp = CheckpointFields {
            covers: Some(u64::MAX),
            head: Some("h\"d"),
            key_id: Some("k"),
            sig: Some("s/+="),
        };
        for (ev, cp) in [
            (&full, CheckpointFields::default()),
            (&bare, CheckpointFields::default()),
            (&bare, cp),
        ] {
            for seq in [0, 1, 42, u64::MAX] {
                let want = serde_json::to_vec(&Flattened {
                    seq,
                    event: ev,
                    covers: cp.covers,
                    head: cp.head,
                    key_id: cp.key_id,
                    sig: cp.sig,
                    prev: GENESIS_PREV,
                })
                .unwrap();
                let mut buf = b"earlier".to_vec();
                let hex = encode_into(
                    &mut buf,
                    seq,
                    &EncodedEvent::new(ev).unwrap(),
                    &cp,
                    GENESIS_PREV,
                );
                let line = &buf[7..];
                let body_len = line.len() - 1 - HASH_SUFFIX_LEN;
                assert_eq!(&line[..body_len], &want[..want.len() - 1]);
                assert_eq!(hex::encode(Sha256::digest(&want)).as_bytes(), &hex[..]);
                let parsed = parse_line(&line[..line.len() - 1]).unwrap();
                assert_eq!(parsed.fields.seq, seq);
            }
        }
    }

    #[test]
    fn uppercase_hash_is_not_accepted() {
        let ev = AuditEvent::new(datetime!(2026-01-01 0:00 UTC), "decision");
        let enc = encode(1, &ev, &CheckpointFields::default(), GENESIS_PREV).unwrap();
        let mut line = enc.line[..enc.line.len() - 1].to_vec();
        let n = line.len();
        let pos = (n - 66..n - 2)
            .find(|&i| line[i].is_ascii_lowercase())
            .unwrap();
        line[pos] = line[pos].to_ascii_uppercase();
        assert!(matches!(parse_line(&line), Err(LineProblem::NoHashSuffix)));
    }
}
