//! postern's tamper-evident audit log.
//!
//! This crate carries two of postern's invariants (see `DESIGN.md`):
//!
//! * **No unlogged bypass (invariant 3).** [`AuditLog::append_durable`] returns
//!   `Ok(seq)` only after the record has been written *and* fsynced. The gateway
//!   honours an opt-out only after that `Ok`; any `Err` means "fall back to full
//!   authentication" (fail closed).
//! * **The log cannot be quietly edited (invariant 4).** Records form a SHA-256
//!   hash chain (every record names the hash of the one before it), and the sink
//!   periodically appends ed25519-signed checkpoints over the chain head.
//!   [`verify_file`] finds any edit, deletion, reordering, duplication or
//!   truncation and names the first bad record.
//!
//! # On-disk format
//!
//! One JSON object per line. The *body* is serialized by serde in a fixed field
//! order: `{"seq":N,"ts":"…","kind":"…",…,"prev":"<64 hex>"}`. The line is the
//! body with its closing `}` replaced by `,"hash":"<64 hex>"}`, where the hash is
//! SHA-256 over the exact body bytes, so a verifier rebuilds the body byte for
//! byte by stripping the fixed-length suffix — no re-serialization involved.
//! `seq` starts at 1 and grows by exactly 1; the first record's `prev` is 64
//! zeros. See [`record`] for the details and the checkpoint signing message.

pub mod event;
pub mod keys;
pub mod record;
pub mod sink;
pub mod verify;

pub use event::{AuditEvent, Decision as AuditDecision};
pub use keys::{
    generate_signing_key, key_id, read_signing_key, read_verifying_key, write_signing_key,
    write_verifying_key, KeyError,
};
pub use sink::{AuditError, AuditLog, AuditOptions, FailReason};
pub use verify::{verify_file, CheckpointProblem, VerifyError, VerifyReport};
