//! Real-file tests of the sink and the verifier: concurrency, restart,
//! failing closed, and every kind of tampering the verifier must name.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "tests panic on unexpected failures by design"
)]

use ed25519_dalek::{Signer, SigningKey};
use postern_audit::{
    generate_signing_key, verify_file, AuditError, AuditEvent, AuditLog, AuditOptions,
    CheckpointProblem, FailReason, VerifyError,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

const SUFFIX_LEN: usize = 75; // ,"hash":"<64 hex>"}

fn event(i: usize) -> AuditEvent {
    let mut ev = AuditEvent::now("decision");
    ev.request_id = Some(format!("req-{i}"));
    ev.path = Some(format!("/health/{i}"));
    ev.decision = Some("optout".into());
    ev.reasons = vec!["rule matched".into()];
    ev
}

fn opts(checkpoint_every: u64) -> AuditOptions {
    AuditOptions {
        checkpoint_every,
        idle_checkpoint: Duration::from_secs(60),
        ..AuditOptions::default()
    }
}

fn read_lines(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .unwrap()
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).unwrap();
}

fn json(line: &[u8]) -> serde_json::Value {
    serde_json::from_slice(line).unwrap()
}

/// What an attacker without the signing key can do: rewrite `prev`/`hash` of
/// every line from `from` on so the hash chain is consistent again.
fn rechain(lines: &mut [Vec<u8>], from: usize) {
    for i in from..lines.len() {
        let line = &lines[i];
        let mut body = line[..line.len() - 1 - SUFFIX_LEN].to_vec();
        if i > from {
            let prev_hash = {
                let p = &lines[i - 1];
                p[p.len() - 1 - 66..p.len() - 3].to_vec()
            };
            let text = String::from_utf8(body.clone()).unwrap();
            let at = text.rfind(r#""prev":""#).unwrap() + 8;
            body.splice(at..at + 64, prev_hash);
        }
        body.push(b'}');
        let hash = hex::encode(Sha256::digest(&body));
        body.pop();
        body.extend_from_slice(format!(r#","hash":"{hash}"}}"#).as_bytes());
        body.push(b'\n');
        lines[i] = body;
    }
}

/// A closed log: seq 1 start, then 12 events with a checkpoint every 5th seq
/// (5, 10, 15) and the closing checkpoint at 17.
async fn make_log(dir: &Path) -> (PathBuf, SigningKey) {
    let path = dir.join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(&path, key.clone(), opts(4)).unwrap();
    for i in 0..12 {
        log.append_durable(event(i)).await.unwrap();
    }
    log.close().await.unwrap();
    assert_eq!(log.last_seq(), 17);
    (path, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_and_non_durable_appends_all_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(&path, key.clone(), opts(100)).unwrap();
    let mut tasks = Vec::new();
    for t in 0..50 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20 {
                let ev = event(t * 100 + i);
                if i % 2 == 0 {
                    seqs.push(log.append_durable(ev).await.unwrap());
                } else {
                    log.append(ev).await;
                }
            }
            seqs
        }));
    }
    let mut durable_seqs = Vec::new();
    for t in tasks {
        durable_seqs.extend(t.await.unwrap());
    }
    log.close().await.unwrap();
    durable_seqs.sort_unstable();
    durable_seqs.dedup();
    assert_eq!(
        durable_seqs.len(),
        500,
        "every durable append got its own seq"
    );

    let report = verify_file(&path, &key.verifying_key()).unwrap();
    let lines = read_lines(&path);
    let events = lines
        .iter()
        .filter(|l| json(l)["kind"] == "decision")
        .count();
    assert_eq!(events, 1000);
    assert_eq!(report.records, lines.len() as u64);
    assert_eq!(report.records, 1 + 1000 + report.checkpoints);
    assert!(report.checkpoints >= 10, "a checkpoint every 100 records");
    assert_eq!(report.last_seq, log.last_seq());
    assert_eq!(report.last_checkpoint_seq, report.last_seq);
    assert!(report.head_checked);
}

#[tokio::test(flavor = "current_thread")]
async fn one_fsync_covers_many_concurrent_durable_appends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, generate_signing_key(), opts(1000)).unwrap();
    let before = log.fsync_count();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append_durable(event(i)).await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let fsyncs = log.fsync_count() - before;
    assert!(fsyncs < 100, "200 durable appends took {fsyncs} fsyncs");
    log.close().await.unwrap();
}

#[tokio::test]
async fn restart_continues_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(&path, key.clone(), opts(1000)).unwrap();
    assert_eq!(log.append_durable(event(1)).await.unwrap(), 2);
    log.close().await.unwrap();
    log.close().await.unwrap(); // idempotent
    assert!(matches!(
        log.append_durable(event(9)).await,
        Err(AuditError::Closed { .. })
    ));
    // seq 1 start, 2 event, 3 checkpoint
    let log = AuditLog::open(&path, key.clone(), opts(1000)).unwrap();
    assert_eq!(log.last_seq(), 4, "the second start record follows");
    assert_eq!(log.append_durable(event(2)).await.unwrap(), 5);
    log.close().await.unwrap();

    let report = verify_file(&path, &key.verifying_key()).unwrap();
    assert_eq!(report.records, 6);
    assert_eq!(report.checkpoints, 2);
    let seqs: Vec<u64> = read_lines(&path)
        .iter()
        .map(|l| json(l)["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn reopening_a_log_with_a_torn_last_line_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() - 10]).unwrap();
    let err = AuditLog::open(&path, key, opts(4)).unwrap_err();
    assert!(matches!(err, AuditError::TornTail { .. }), "{err}");
    assert!(err.to_string().contains("torn last line"), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap().len(),
        full.len() - 10,
        "the torn file is left as it is"
    );
}

#[tokio::test]
async fn reopening_a_log_whose_last_record_was_edited_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    let last = lines.len() - 1;
    lines[last][20] ^= 1;
    write_lines(&path, &lines);
    let err = AuditLog::open(&path, key, opts(4)).unwrap_err();
    assert!(matches!(err, AuditError::BrokenTail { .. }), "{err}");
}

#[tokio::test]
async fn editing_one_byte_of_a_middle_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    let pos = lines[6].windows(6).position(|w| w == b"health").unwrap();
    lines[6][pos] = b'H';
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(err, VerifyError::HashMismatch { line: 7, seq: 7 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "record 7 (line 7): hash mismatch: the record was edited"
    );
}

#[tokio::test]
async fn deleting_a_middle_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    lines.remove(6);
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::SeqMismatch {
                line: 7,
                expected: 7,
                found: 8
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("deleted"), "{err}");
}

#[tokio::test]
async fn swapping_two_records_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    lines.swap(6, 7);
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::SeqMismatch {
                line: 7,
                expected: 7,
                found: 8
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn duplicating_a_record_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    let copy = lines[6].clone();
    lines.insert(7, copy);
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::SeqMismatch {
                line: 8,
                expected: 8,
                found: 7
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("repeats"), "{err}");
}

#[tokio::test]
async fn truncating_at_a_line_boundary_is_reported_as_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let lines = read_lines(&path);
    write_lines(&path, &lines[..12]);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(err, VerifyError::Truncated { last_seq: 12 }),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "truncated or still open after record 12: the last records are not covered by a signed checkpoint"
    );
}

#[tokio::test]
async fn truncating_mid_line_is_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    lines.truncate(12);
    lines[11].truncate(40);
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::TornLastLine {
                line: 12,
                after_seq: 11
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("torn last line (a crash mid-write?)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_last_line_with_broken_json_is_a_torn_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    lines.truncate(12);
    lines[11] = b"{\"seq\":12,\"ts\n".to_vec();
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(err, VerifyError::TornLastLine { line: 12, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn cutting_back_to_an_earlier_checkpoint_is_caught_by_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let lines = read_lines(&path);
    assert_eq!(json(&lines[9])["kind"], "checkpoint");
    write_lines(&path, &lines[..10]);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::TruncatedBeforeHead {
                head_seq: 17,
                last_seq: 10,
                ..
            }
        ),
        "{err}"
    );
    // Without the sidecar the cut is undetectable: that is what the sidecar is for.
    let mut head = path.clone().into_os_string();
    head.push(".head");
    std::fs::remove_file(&head).unwrap();
    assert_eq!(
        verify_file(&path, &key.verifying_key()).unwrap().last_seq,
        10
    );
}

#[tokio::test]
async fn verifying_with_another_key_names_the_first_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _key) = make_log(dir.path()).await;
    let other = generate_signing_key().verifying_key();
    let err = verify_file(&path, &other).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BadCheckpoint {
                line: 5,
                seq: 5,
                problem: CheckpointProblem::OtherKey { .. }
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn forged_checkpoint_signature_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    let cp = json(&lines[9]);
    let msg = format!(
        "postern-audit-checkpoint-v1\n{}\n{}",
        cp["covers"],
        cp["head"].as_str().unwrap()
    );
    use base64::Engine as _;
    let forged = base64::engine::general_purpose::STANDARD
        .encode(generate_signing_key().sign(msg.as_bytes()).to_bytes());
    let real = cp["sig"].as_str().unwrap();
    let text = String::from_utf8(lines[9].clone())
        .unwrap()
        .replace(real, &forged);
    lines[9] = text.into_bytes();
    rechain(&mut lines, 9);
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BadCheckpoint {
                line: 10,
                seq: 10,
                problem: CheckpointProblem::BadSignature
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn editing_and_rechaining_is_caught_by_the_next_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (path, key) = make_log(dir.path()).await;
    let mut lines = read_lines(&path);
    let text = String::from_utf8(lines[6].clone())
        .unwrap()
        .replace("optout", "deny!!");
    lines[6] = text.into_bytes();
    rechain(&mut lines, 6);
    write_lines(&path, &lines);
    let err = verify_file(&path, &key.verifying_key()).unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::BadCheckpoint {
                line: 10,
                seq: 10,
                problem: CheckpointProblem::WrongHead { covers: 9 }
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_empty_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, b"").unwrap();
    let err = verify_file(&path, &generate_signing_key().verifying_key()).unwrap_err();
    assert!(matches!(err, VerifyError::Empty { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_log_fails_durable_appends_and_keeps_queued_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(
        &path,
        key.clone(),
        AuditOptions {
            checkpoint_every: 1000,
            idle_checkpoint: Duration::from_millis(20),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    log.append_durable(event(0)).await.unwrap();
    assert!(!log.is_failing());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    for i in 0..5 {
        let mut ev = event(100 + i);
        ev.request_id = Some(format!("queued-{i}"));
        log.append(ev).await;
    }
    let err = log.append_durable(event(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Unavailable {
                reason: FailReason::NotWritable { mode: 0o444 },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "audit file {} is no longer writable (mode 0444)",
            path.display()
        )
    );
    assert!(log.is_failing());
    tokio::time::sleep(Duration::from_millis(100)).await; // a few retries
    assert!(log.is_failing());

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let seq = log.append_durable(event(2)).await.unwrap();
    assert!(!log.is_failing());
    log.close().await.unwrap();

    verify_file(&path, &key.verifying_key()).unwrap();
    let lines = read_lines(&path);
    let ids: Vec<String> = lines
        .iter()
        .filter_map(|l| json(l)["request_id"].as_str().map(str::to_owned))
        .collect();
    let queued: Vec<&String> = ids.iter().filter(|id| id.starts_with("queued-")).collect();
    assert_eq!(
        queued,
        ["queued-0", "queued-1", "queued-2", "queued-3", "queued-4"]
    );
    assert!(
        !ids.contains(&"req-1".to_owned()),
        "the refused durable record is not written"
    );
    let last_event_seq = lines
        .iter()
        .map(|l| json(l))
        .find(|v| v["request_id"] == "req-2")
        .unwrap()["seq"]
        .as_u64()
        .unwrap();
    assert_eq!(last_event_seq, seq);
}

#[tokio::test]
async fn a_renamed_log_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, generate_signing_key(), opts(1000)).unwrap();
    std::fs::rename(&path, dir.path().join("moved.jsonl")).unwrap();
    let err = log.append_durable(event(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Unavailable {
                reason: FailReason::Missing,
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(&path, b"").unwrap();
    let err = log.append_durable(event(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Unavailable {
                reason: FailReason::Replaced,
                ..
            }
        ),
        "{err}"
    );
    assert!(log.is_failing());
    assert!(
        log.close().await.is_err(),
        "close cannot seal a file it lost"
    );
}

#[tokio::test]
async fn a_log_appended_to_by_someone_else_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, generate_signing_key(), opts(1000)).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"forged\":true}\n").unwrap();
    let err = log.append_durable(event(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Unavailable {
                reason: FailReason::ChangedBehindOurBack { .. },
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn an_idle_log_is_sealed_by_a_checkpoint_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(
        &path,
        key.clone(),
        AuditOptions {
            idle_checkpoint: Duration::from_millis(30),
            ..AuditOptions::default()
        },
    )
    .unwrap();
    log.append(event(1)).await;
    let mut verified = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(r) = verify_file(&path, &key.verifying_key()) {
            verified = Some(r);
            break;
        }
    }
    let report = verified.expect("an idle checkpoint seals the log");
    assert_eq!(report.records, 3);
    assert_eq!(log.last_seq(), 3);
}

/// The seq of the checkpoint `<path>.head` names.
fn head_seq(path: &Path) -> u64 {
    let mut head = path.to_path_buf().into_os_string();
    head.push(".head");
    json(&std::fs::read(head).unwrap())["seq"].as_u64().unwrap()
}

/// The seq the head file names, once there is one (at most 5 s).
async fn wait_for_head(path: &Path) -> u64 {
    let mut head = path.to_path_buf().into_os_string();
    head.push(".head");
    for _ in 0..100 {
        if std::path::Path::new(&head).exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    head_seq(path)
}

async fn wait_for_seq(log: &AuditLog, seq: u64) {
    for _ in 0..500 {
        if log.last_seq() >= seq {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(log.last_seq(), seq, "the log did not reach record {seq}");
}

#[tokio::test]
async fn the_head_file_moves_at_most_once_per_interval_and_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let interval = Duration::from_secs(2);
    let log = AuditLog::open(
        &path,
        key.clone(),
        AuditOptions {
            checkpoint_every: 4,
            idle_checkpoint: interval,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    // No head can be written twice before `started + interval`: the first
    // is written after this instant, the next one an interval after that.
    let started = std::time::Instant::now();
    // The start record and 19 more: a checkpoint after every 4 records, so
    // the log ends with checkpoint 25.
    for i in 0..19 {
        log.append(event(i)).await;
    }
    wait_for_seq(&log, 25).await;
    // The first head is written at once, but after the batch that made
    // the log reach seq 25 is published: wait for the file.
    let first = wait_for_head(&path).await;
    let fsyncs = log.fsync_count();
    // 20 more: the log ends with checkpoint 50.
    for i in 19..39 {
        log.append(event(i)).await;
    }
    wait_for_seq(&log, 50).await;
    if started.elapsed() < interval {
        // Five more checkpoints were written, none of them fsynced or named
        // by the head yet.
        assert_eq!(head_seq(&path), first, "the head moved within the interval");
        assert_eq!(
            log.fsync_count(),
            fsyncs,
            "a checkpoint was fsynced within the interval"
        );
    }
    // With no more records and no close, the head still reaches the last
    // checkpoint once the interval has passed.
    let mut caught_up = false;
    for _ in 0..100 {
        if head_seq(&path) == 50 {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        caught_up,
        "the head file never named the last checkpoint: {} (log at {})",
        head_seq(&path),
        log.last_seq()
    );
    assert!(
        log.fsync_count() > fsyncs,
        "the log was fsynced before the head named it"
    );
    let report = verify_file(&path, &key.verifying_key()).unwrap();
    assert!(report.head_checked);
    assert_eq!(report.last_checkpoint_seq, 50);
    assert_eq!(
        report.last_seq, 50,
        "no idle checkpoint: nothing was uncovered"
    );
    // Cutting the tail back to before that checkpoint is caught.
    let lines = read_lines(&path);
    write_lines(&path, &lines[..lines.len() - 5]);
    assert!(matches!(
        verify_file(&path, &key.verifying_key()).unwrap_err(),
        VerifyError::TruncatedBeforeHead { head_seq: 50, .. }
    ));
}

#[tokio::test]
async fn dropping_every_handle_still_seals_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(&path, key.clone(), opts(1000)).unwrap();
    log.append(event(1)).await;
    drop(log);
    let mut ok = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if verify_file(&path, &key.verifying_key()).is_ok() {
            ok = true;
            break;
        }
    }
    assert!(
        ok,
        "the writer writes a final checkpoint when the last handle goes"
    );
}

#[tokio::test]
async fn checkpoint_kind_is_reserved_for_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let log = AuditLog::open(&path, generate_signing_key(), opts(1000)).unwrap();
    let err = log
        .append_durable(AuditEvent::now("checkpoint"))
        .await
        .unwrap_err();
    assert!(matches!(err, AuditError::ReservedKind(_)), "{err}");
    log.close().await.unwrap();
}

/// A valid log (and its key and head file) shared by the property test.
fn sample_log() -> &'static (Vec<u8>, Vec<u8>, SigningKey) {
    static LOG: OnceLock<(Vec<u8>, Vec<u8>, SigningKey)> = OnceLock::new();
    LOG.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (path, key) = rt.block_on(make_log(dir.path()));
        let mut head = path.clone().into_os_string();
        head.push(".head");
        (
            std::fs::read(&path).unwrap(),
            std::fs::read(head).unwrap(),
            key,
        )
    })
}

#[test]
fn the_sample_log_verifies() {
    let (log, head, key) = sample_log();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, log).unwrap();
    std::fs::write(dir.path().join("audit.jsonl.head"), head).unwrap();
    let report = verify_file(&path, &key.verifying_key()).unwrap();
    assert_eq!(report.records, 17);
    assert_eq!(report.checkpoints, 4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_single_byte_change_fails_verification(pos in any::<prop::sample::Index>(), delta in 1u8..=255) {
        let (log, head, key) = sample_log();
        let mut bytes = log.clone();
        let i = pos.index(bytes.len());
        bytes[i] = bytes[i].wrapping_add(delta);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, &bytes).unwrap();
        std::fs::write(dir.path().join("audit.jsonl.head"), head).unwrap();
        prop_assert!(verify_file(&path, &key.verifying_key()).is_err(), "changed byte {} went unnoticed", i);
    }
}

#[tokio::test]
async fn a_full_queue_waits_until_records_are_on_disk_and_then_flows_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let key = generate_signing_key();
    let log = AuditLog::open(
        &path,
        key.clone(),
        AuditOptions {
            checkpoint_every: 1000,
            idle_checkpoint: Duration::from_millis(20),
            queue_capacity: 2,
        },
    )
    .unwrap();
    // Many more records than the queue holds: each permit comes back once
    // its record is written, so none of these waits for long.
    tokio::time::timeout(Duration::from_secs(10), async {
        for i in 0..200 {
            log.append(event(i)).await;
        }
    })
    .await
    .expect("the queue's permits come back as records are written");

    // While the file cannot be written, the queue fills and an append waits.
    log.append_durable(event(1000)).await.unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    log.append(event(1001)).await;
    log.append(event(1002)).await;
    let third = tokio::time::timeout(Duration::from_millis(300), log.append(event(1003))).await;
    assert!(third.is_err(), "a third record fits in a queue of 2");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), log.append(event(1004)))
        .await
        .expect("the queue drains once the file is writable again");
    log.close().await.unwrap();

    verify_file(&path, &key.verifying_key()).unwrap();
    let ids: Vec<String> = read_lines(&path)
        .iter()
        .filter_map(|l| json(l)["request_id"].as_str().map(str::to_owned))
        .collect();
    let want: Vec<String> = (0..200)
        .chain([1000, 1001, 1002, 1004])
        .map(|i| format!("req-{i}"))
        .collect();
    assert_eq!(ids, want, "every record, in order, none lost");
}
