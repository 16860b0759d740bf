//! `postern audit verify`: checks a log file end to end and names the first
//! bad record.
//!
//! What is checked, in file order, for every line:
//! 1. it ends in a newline (else: a torn last line);
//! 2. its hash matches its body (else: the record was edited);
//! 3. its seq is exactly one more than the line before (else: a record was
//!    deleted, duplicated or moved), starting at 1;
//! 4. its `prev` is the previous line's hash (else: the chain was broken);
//! 5. a checkpoint names the verifying key, covers the record before it, has
//!    that record's hash as head, and carries a valid ed25519 signature.
//!
//! Then the log must end with a checkpoint (records after the last checkpoint
//! could have been appended or cut by anyone), and if `<path>.head` exists the
//! log must contain that checkpoint, byte for byte (same seq and hash), which
//! catches a log cut back to an earlier checkpoint.
//!
//! The file is streamed line by line; memory use does not grow with its size.

use crate::keys::key_id;
use crate::record::{self, LineProblem, Parsed, GENESIS_PREV};
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Longest line accepted; anything longer is not a record postern wrote.
const MAX_LINE: u64 = 16 * 1024 * 1024;

/// What a successful verification saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the file, checkpoints included.
    pub records: u64,
    /// Checkpoints among them.
    pub checkpoints: u64,
    /// Seq of the last record (equals `records`).
    pub last_seq: u64,
    /// Seq of the last checkpoint (equals `last_seq`: a verified log ends with one).
    pub last_checkpoint_seq: u64,
    /// Whether a `<path>.head` file existed and its checkpoint was found.
    pub head_checked: bool,
}

/// What is wrong with a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointProblem {
    /// `key_id` names another key than the one verifying.
    #[error("was signed by key `{found}`, not by the verifying key `{expected}`")]
    OtherKey { found: String, expected: String },
    /// `covers` is not the seq of the record before it.
    #[error("covers record {found}, expected {expected}")]
    WrongCovers { found: u64, expected: u64 },
    /// `head` is not the hash of the record before it.
    #[error("head is not the hash of record {covers}")]
    WrongHead { covers: u64 },
    /// A checkpoint field is absent.
    #[error("lacks the `{0}` field")]
    MissingField(&'static str),
    /// The signature is not valid base64 of 64 bytes.
    #[error("signature is not base64 of 64 bytes")]
    MalformedSignature,
    /// The signature does not verify.
    #[error("signature does not verify: the checkpoint was forged or altered")]
    BadSignature,
}

/// Why a log failed verification. Record-level variants name the line number
/// (1-based) and the record's seq (the seq the record should have, when its
/// own cannot be trusted).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The file (or its `.head` sidecar) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file has no records.
    #[error("audit file {path} is empty")]
    Empty { path: PathBuf },
    /// The last line lacks its newline or is not a complete record.
    #[error("line {line}: torn last line (a crash mid-write?) after record {after_seq}")]
    TornLastLine { line: u64, after_seq: u64 },
    /// A line that is not a record (and is not the last line).
    #[error("record {seq} (line {line}): not a valid record: {reason}")]
    Malformed { line: u64, seq: u64, reason: String },
    /// The body's hash differs from the recorded hash.
    #[error("record {seq} (line {line}): hash mismatch: the record was edited")]
    HashMismatch { line: u64, seq: u64 },
    /// The record's seq is not the next one.
    #[error("record {found} (line {line}): expected record {expected}: {}", seq_story(*expected, *found))]
    SeqMismatch {
        line: u64,
        expected: u64,
        found: u64,
    },
    /// `prev` is not the previous record's hash.
    #[error("record {seq} (line {line}): chain broken: prev is not the hash of the record before it (a record was replaced or the chain rewritten)")]
    ChainBroken { line: u64, seq: u64 },
    /// A checkpoint is invalid.
    #[error("record {seq} (line {line}): checkpoint {problem}")]
    BadCheckpoint {
        line: u64,
        seq: u64,
        problem: CheckpointProblem,
    },
    /// The log does not end with a checkpoint.
    #[error("truncated or still open after record {last_seq}: the last records are not covered by a signed checkpoint")]
    Truncated { last_seq: u64 },
    /// The `.head` sidecar names a checkpoint the log does not reach.
    #[error(
        "truncated: {head_path} names checkpoint {head_seq} but the log ends at record {last_seq}"
    )]
    TruncatedBeforeHead {
        head_path: PathBuf,
        head_seq: u64,
        last_seq: u64,
    },
    /// The log's record at the `.head` checkpoint's seq is a different record.
    #[error("record {seq} (line {line}): differs from the checkpoint in {head_path}: the log was rewritten after that checkpoint")]
    HeadMismatch {
        line: u64,
        seq: u64,
        head_path: PathBuf,
    },
    /// The `.head` sidecar exists but is not a checkpoint record.
    #[error("{head_path} is not a valid checkpoint record: {reason}")]
    BadHeadFile { head_path: PathBuf, reason: String },
}

fn seq_story(expected: u64, found: u64) -> &'static str {
    if found > expected {
        "records before it were deleted or moved"
    } else {
        "it repeats or moves an earlier record"
    }
}

/// Verifies the log at `path` against `key`; see the module docs for what is
/// checked. Returns the first problem found.
pub fn verify_file(path: &Path, key: &VerifyingKey) -> Result<VerifyReport, VerifyError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| VerifyError::Io { path: p, source }
    };
    let head_path = head_path_of(path);
    let head = read_head(&head_path)?;
    let file = File::open(path).map_err(io(path))?;
    let mut reader = BufReader::new(file);
    let expected_key_id = key_id(key);

    let mut report = VerifyReport {
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        last_checkpoint_seq: 0,
        head_checked: false,
    };
    let mut prev = GENESIS_PREV.to_owned();
    let mut last_was_checkpoint = false;
    let mut line_no: u64 = 0;
    let mut next = read_line(&mut reader).map_err(io(path))?;
    if next.is_none() {
        return Err(VerifyError::Empty {
            path: path.to_owned(),
        });
    }
    while let Some(line) = next {
        line_no += 1;
        next = read_line(&mut reader).map_err(io(path))?;
        let is_last = next.is_none();
        let expected = report.last_seq + 1;
        let torn = || VerifyError::TornLastLine {
            line: line_no,
            after_seq: report.last_seq,
        };
        let Some(content) = line.strip_suffix(b"\n") else {
            if is_last {
                return Err(torn());
            }
            return Err(VerifyError::Malformed {
                line: line_no,
                seq: expected,
                reason: "the line is longer than 16 MiB".into(),
            });
        };
        let Parsed { fields, hash } = match record::parse_line(content) {
            Ok(p) => p,
            Err(LineProblem::NoHashSuffix | LineProblem::Malformed(_)) if is_last => {
                return Err(torn())
            }
            Err(LineProblem::NoHashSuffix) => {
                return Err(VerifyError::Malformed {
                    line: line_no,
                    seq: expected,
                    reason: "no record hash at the end of the line".into(),
                })
            }
            Err(LineProblem::Malformed(reason)) => {
                return Err(VerifyError::Malformed {
                    line: line_no,
                    seq: expected,
                    reason,
                })
            }
            Err(LineProblem::HashMismatch) => {
                return Err(VerifyError::HashMismatch {
                    line: line_no,
                    seq: expected,
                })
            }
        };
        if fields.seq != expected {
            return Err(VerifyError::SeqMismatch {
                line: line_no,
                expected,
                found: fields.seq,
            });
        }
        if fields.prev != prev {
            return Err(VerifyError::ChainBroken {
                line: line_no,
                seq: fields.seq,
            });
        }
        last_was_checkpoint = fields.kind == crate::event::kind::CHECKPOINT;
        if last_was_checkpoint {
            check_checkpoint(&fields, key, &expected_key_id).map_err(|problem| {
                VerifyError::BadCheckpoint {
                    line: line_no,
                    seq: fields.seq,
                    problem,
                }
            })?;
            report.checkpoints += 1;
            report.last_checkpoint_seq = fields.seq;
        }
        if let Some((head_seq, head_hash)) = &head {
            if *head_seq == fields.seq {
                if *head_hash != hash {
                    return Err(VerifyError::HeadMismatch {
                        line: line_no,
                        seq: fields.seq,
                        head_path,
                    });
                }
                report.head_checked = true;
            }
        }
        prev = hash;
        report.records += 1;
        report.last_seq = fields.seq;
    }
    if !last_was_checkpoint {
        return Err(VerifyError::Truncated {
            last_seq: report.last_seq,
        });
    }
    if let Some((head_seq, _)) = head {
        if head_seq > report.last_seq {
            return Err(VerifyError::TruncatedBeforeHead {
                head_path,
                head_seq,
                last_seq: report.last_seq,
            });
        }
    }
    Ok(report)
}

fn check_checkpoint(
    fields: &record::Fields,
    key: &VerifyingKey,
    expected_key_id: &str,
) -> Result<(), CheckpointProblem> {
    let key_id = fields
        .key_id
        .as_deref()
        .ok_or(CheckpointProblem::MissingField("key_id"))?;
    if key_id != expected_key_id {
        return Err(CheckpointProblem::OtherKey {
            found: key_id.to_owned(),
            expected: expected_key_id.to_owned(),
        });
    }
    let covers = fields
        .covers
        .ok_or(CheckpointProblem::MissingField("covers"))?;
    let expected_covers = fields.seq.saturating_sub(1);
    if covers != expected_covers {
        return Err(CheckpointProblem::WrongCovers {
            found: covers,
            expected: expected_covers,
        });
    }
    let head = fields
        .head
        .as_deref()
        .ok_or(CheckpointProblem::MissingField("head"))?;
    // `prev` was already checked against the chain, so it is the true head.
    if head != fields.prev {
        return Err(CheckpointProblem::WrongHead { covers });
    }
    let sig = fields
        .sig
        .as_deref()
        .ok_or(CheckpointProblem::MissingField("sig"))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(sig)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
        .ok_or(CheckpointProblem::MalformedSignature)?;
    key.verify_strict(&record::checkpoint_message(covers, head), &sig)
        .map_err(|_| CheckpointProblem::BadSignature)
}

/// `<path>.head`.
pub(crate) fn head_path_of(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".head");
    PathBuf::from(s)
}

/// Reads the `.head` sidecar: `None` if absent, else its checkpoint's seq and
/// hash. Its signature needs no check of its own: it only ever has to match a
/// record of the log, whose checkpoint is checked.
fn read_head(head_path: &Path) -> Result<Option<(u64, String)>, VerifyError> {
    let bytes = match std::fs::read(head_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(VerifyError::Io {
                path: head_path.to_owned(),
                source,
            })
        }
    };
    let bad = |reason: &str| VerifyError::BadHeadFile {
        head_path: head_path.to_owned(),
        reason: reason.to_owned(),
    };
    let line = bytes
        .strip_suffix(b"\n")
        .ok_or_else(|| bad("no trailing newline"))?;
    let parsed = record::parse_line(line).map_err(|p| match p {
        LineProblem::HashMismatch => bad("hash mismatch"),
        LineProblem::NoHashSuffix => bad("no record hash"),
        LineProblem::Malformed(m) => bad(&m),
    })?;
    if parsed.fields.kind != crate::event::kind::CHECKPOINT {
        return Err(bad("not a checkpoint"));
    }
    Ok(Some((parsed.fields.seq, parsed.hash)))
}

/// Reads one line including its `\n` (absent only at the end of the file).
fn read_line(reader: &mut BufReader<File>) -> std::io::Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let n = reader.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    Ok((n > 0).then_some(buf))
}
