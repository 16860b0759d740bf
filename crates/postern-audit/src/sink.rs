//! The durable, group-committing audit sink.
//!
//! # Invariants
//!
//! * **Durable means fsynced.** [`AuditLog::append_durable`] answers `Ok(seq)` only
//!   after the batch holding the record was written with one `write_all` and
//!   flushed with `fdatasync`. Any doubt (write error, fsync error, the file was
//!   made read-only, renamed, replaced or grown by someone else) answers `Err`,
//!   and the gateway fails closed.
//! * **Chain order is write order.** Only the writer thread assigns `seq` and
//!   `prev` and serializes records, so the chain order is the byte order in the
//!   file.
//! * **The file only ever holds whole, chained records written by us.** A failed
//!   write is cut back to the last committed length before anything else is
//!   written; seq and prev roll back with it.
//! * **Non-durable records are never dropped.** If a batch fails, its
//!   non-durable records stay queued in memory and are retried; the memory is
//!   bounded by [`AuditOptions::queue_capacity`] (a non-durable record holds one
//!   permit from submission until it is on disk, so `append` waits when full).
//!   Durable records of a failed batch are *not* retried: their callers got
//!   `Err` and did not honour what they described.
//! * **Signed checkpoints.** Every [`AuditOptions::checkpoint_every`] records,
//!   when records have waited [`AuditOptions::idle_checkpoint`] without one, and
//!   at close, the writer appends a signed checkpoint.
//! * **The head file only names a checkpoint that is on disk.** The writer
//!   fsyncs the log, then atomically replaces `<path>.head` with the latest
//!   checkpoint line: at close, and otherwise at most once per
//!   [`AuditOptions::idle_checkpoint`] (and within it, when a checkpoint is
//!   left waiting). Under load that is one fsync and one head replacement a
//!   second rather than one per checkpoint (each costs three fsyncs and a
//!   rename), and the head is never older than that interval: the window in
//!   which cutting the log's tail goes unnoticed stays bounded in time.
//!
//! Request tasks never touch the file: they send to a dedicated writer thread
//! (running its own single-threaded tokio runtime, for the idle timer) and wait
//! on a oneshot.

use crate::event::{kind, AuditEvent};
use crate::keys::key_id;
use crate::record::{self, CheckpointFields, EncodedEvent, LineProblem, GENESIS_PREV};
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// Most messages one batch drains from the queue.
const MAX_BATCH: usize = 4096;
/// How long the writer waits to gather more buffered records into a batch:
/// also the longest a buffered record waits in memory before it is written.
const LINGER: Duration = Duration::from_millis(5);
/// Shortest pause between retries of a failing log.
const MIN_RETRY: Duration = Duration::from_millis(10);
/// Longest record line accepted when reading the tail of an existing log.
const MAX_TAIL_LINE: u64 = 16 * 1024 * 1024;

/// Tuning knobs of the sink.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Write a checkpoint after this many records (at least 1). Default 1000.
    pub checkpoint_every: u64,
    /// Write a checkpoint once the oldest record not yet covered by one has
    /// waited this long (so an idle log is covered within this time). Also the
    /// retry interval of a failing log, and the most often (and, once a
    /// checkpoint waits, the longest) between replacements of the head file.
    /// Default 1 s.
    pub idle_checkpoint: Duration,
    /// Most non-durable records held in memory (queued or kept after a failed
    /// write); `append` waits beyond that. Default 65536.
    pub queue_capacity: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            idle_checkpoint: Duration::from_secs(1),
            queue_capacity: 65536,
        }
    }
}

/// Why the audit file cannot take records right now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailReason {
    /// The file's mode lost its owner-write bit: an operator asked writes to stop
    /// (checked by mode, because postern running as root would still be allowed
    /// to write).
    #[error("is no longer writable (mode {mode:04o})")]
    NotWritable { mode: u32 },
    /// The path no longer exists.
    #[error("was removed or renamed")]
    Missing,
    /// The path now names a different file than the one open.
    #[error("was replaced by another file (the path now has a different inode)")]
    Replaced,
    /// The file's length is not what this writer left: someone else wrote to
    /// or truncated it.
    #[error("was changed by someone else (expected {expected} bytes, found {found})")]
    ChangedBehindOurBack { expected: u64, found: u64 },
    /// An I/O call failed.
    #[error("could not be {op}: {message}")]
    Io {
        op: &'static str,
        kind: std::io::ErrorKind,
        message: String,
    },
}

impl FailReason {
    fn io(op: &'static str, e: &std::io::Error) -> Self {
        Self::Io {
            op,
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    /// An event that could not be encoded (only its `extra` value could fail).
    fn unserializable(e: &serde_json::Error) -> Self {
        Self::Io {
            op: "serialized",
            kind: std::io::ErrorKind::InvalidData,
            message: e.to_string(),
        }
    }
}

/// Errors of the audit sink. Any `Err` from [`AuditLog::append_durable`] means
/// the record is not durably logged: fail closed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The log file could not be opened or read at startup.
    #[error("cannot open audit file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The existing log ends without a newline or with an unparsable line.
    /// postern does not truncate it: a human should look at it first.
    #[error("audit file {path} ends with a torn last line at byte {offset} (a crash mid-write?): {detail}; run `postern audit verify`, then move the file aside or cut the torn line by hand")]
    TornTail {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    /// The existing log's last records do not chain or hash correctly.
    #[error("audit file {path}: the last record (seq {seq}) {detail}; run `postern audit verify`")]
    BrokenTail {
        path: PathBuf,
        seq: u64,
        detail: String,
    },
    /// The options are unusable.
    #[error("invalid audit options: {0}")]
    InvalidOptions(&'static str),
    /// The event used a kind only the sink may write.
    #[error("audit event kind `{0}` is reserved for the audit sink")]
    ReservedKind(&'static str),
    /// The file cannot take records (see [`FailReason`]).
    #[error("audit file {path} {reason}")]
    Unavailable { path: PathBuf, reason: FailReason },
    /// The log was closed.
    #[error("the audit log {path} is closed")]
    Closed { path: PathBuf },
    /// The writer thread could not be started.
    #[error("cannot start the audit writer: {0}")]
    Spawn(#[source] std::io::Error),
}

/// Handle to an open audit log. Cheap to clone; `Send + Sync`.
///
/// When the last handle is dropped without [`AuditLog::close`], the writer
/// still writes a final checkpoint and stops.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    tx: mpsc::UnboundedSender<Msg>,
    permits: Arc<Semaphore>,
    shared: Arc<Shared>,
}

/// State the writer publishes to handles.
#[derive(Default)]
struct Shared {
    failing: AtomicBool,
    closed: AtomicBool,
    last_seq: AtomicU64,
    fsyncs: AtomicU64,
}

type DurableReply = oneshot::Sender<Result<u64, AuditError>>;

struct Entry {
    event: EncodedEvent,
    /// Must be fsynced before the batch is acknowledged.
    durable: bool,
    waiter: Option<DurableReply>,
    /// A non-durable record holds one of the queue's permits until it is on
    /// disk (bounds memory). Taken with `forget` and given back by the
    /// writer, a batch at a time: no `Arc` clone and no release per record.
    counted: bool,
}

enum Msg {
    Append(Entry),
    Close(oneshot::Sender<Result<(), AuditError>>),
}

impl AuditLog {
    /// Opens (creates or continues) the log at `path` and writes a chained,
    /// fsynced `start` record (pid, version).
    ///
    /// Continuing a log reads its tail: the last line must end in a newline and
    /// hash correctly, and must chain to the line before it; seq and prev
    /// continue from it. A torn last line is an error naming it — it is never
    /// silently truncated.
    ///
    /// The writer runs on a dedicated thread with its own runtime, so this may
    /// be called from inside or outside a tokio runtime.
    pub fn open(path: &Path, key: SigningKey, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        if opts.checkpoint_every == 0 {
            return Err(AuditError::InvalidOptions(
                "checkpoint_every must be at least 1",
            ));
        }
        if opts.queue_capacity == 0 {
            return Err(AuditError::InvalidOptions(
                "queue_capacity must be at least 1",
            ));
        }
        let open_err = |source| AuditError::Open {
            path: path.to_owned(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let (next_seq, prev) = match read_tail(path, &mut file, meta.len())? {
            Some((seq, hash)) => (seq.saturating_add(1), hash),
            None => (1, GENESIS_PREV.to_owned()),
        };
        let shared = Arc::new(Shared::default());
        shared.last_seq.store(next_seq - 1, Ordering::Relaxed);
        let key_id = key_id(&key.verifying_key());
        let permits = Arc::new(Semaphore::new(opts.queue_capacity));
        let mut writer = Writer {
            path: path.to_owned(),
            head_path: crate::verify::head_path_of(path),
            dev: meta.dev(),
            ino: meta.ino(),
            committed_len: meta.len(),
            dirty: false,
            file,
            key,
            key_id,
            next_seq,
            prev,
            since_checkpoint: 0,
            oldest_uncovered: None,
            head_written: None,
            head_pending: None,
            last_failure: None,
            retained: VecDeque::new(),
            opts: opts.clone(),
            shared: shared.clone(),
            permits: permits.clone(),
        };

        let mut start = AuditEvent::now(kind::START);
        start.extra = Some(serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
        }));
        let start = EncodedEvent::new(&start).map_err(|e| AuditError::Unavailable {
            path: path.to_owned(),
            reason: FailReason::unserializable(&e),
        })?;
        writer
            .commit(
                vec![Entry {
                    event: start,
                    durable: true,
                    waiter: None,
                    counted: false,
                }],
                false,
            )
            .map_err(|reason| AuditError::Unavailable {
                path: path.to_owned(),
                reason,
            })?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(AuditError::Spawn)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("postern-audit-writer".into())
            .spawn(move || runtime.block_on(writer.run(rx)))
            .map_err(AuditError::Spawn)?;

        Ok(AuditLog {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                tx,
                permits,
                shared,
            }),
        })
    }

    /// Appends `ev` and waits until it is written **and** fsynced; returns its
    /// seq. One fsync covers every record queued at that moment (group commit).
    ///
    /// `Err` when the write or fsync fails, the file is no longer writable,
    /// removed or replaced, or the log is closed: the caller must fail closed.
    pub async fn append_durable(&self, ev: AuditEvent) -> Result<u64, AuditError> {
        if ev.kind == kind::CHECKPOINT {
            return Err(AuditError::ReservedKind(ev.kind));
        }
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Err(self.closed());
        }
        let event =
            EncodedEvent::new(&ev).map_err(|e| self.unavailable(FailReason::unserializable(&e)))?;
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Append(Entry {
            event,
            durable: true,
            waiter: Some(reply),
            counted: false,
        });
        self.inner.tx.send(msg).map_err(|_| self.closed())?;
        answer.await.unwrap_or_else(|_| Err(self.closed()))
    }

    /// Appends `ev` without waiting for it to reach the disk: it is written with
    /// the next batch and fsynced by the next durable batch or checkpoint.
    /// Never drops a record of an open log; waits only while
    /// [`AuditOptions::queue_capacity`] records are held in memory.
    ///
    /// Records appended after [`AuditLog::close`] are discarded (with an error
    /// in the tracing log), as are events of the reserved `checkpoint` kind.
    ///
    /// The event is encoded before the returned future is first polled (on
    /// the caller's thread), so the future holds only the encoded bytes: it
    /// stays small in the request futures that await it, which are moved
    /// whole at every await.
    pub fn append(&self, ev: AuditEvent) -> impl std::future::Future<Output = ()> + Send + '_ {
        let event = Self::encode(ev);
        async move {
            let Some(event) = event else { return };
            match self.inner.permits.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => match self.inner.permits.acquire().await {
                    Ok(p) => p.forget(),
                    Err(_) => return, // the semaphore is never closed
                },
            }
            let msg = Msg::Append(Entry {
                event,
                durable: false,
                waiter: None,
                counted: true,
            });
            if self.inner.tx.send(msg).is_err() {
                tracing::error!(path = %self.inner.path.display(), "audit record appended after close discarded");
            }
        }
    }

    /// Encodes a non-durable record; `None` (logged) for one that must not be
    /// written.
    fn encode(ev: AuditEvent) -> Option<EncodedEvent> {
        if ev.kind == kind::CHECKPOINT {
            tracing::error!(kind = ev.kind, "audit event of a reserved kind discarded");
            return None;
        }
        match EncodedEvent::new(&ev) {
            Ok(e) => Some(e),
            Err(e) => {
                // Unreachable for these types; never write a partial record.
                tracing::error!(error = %e, kind = ev.kind, "audit record could not be serialized");
                None
            }
        }
    }

    /// True while the last write attempt failed (for health checks, metrics
    /// and alerts).
    pub fn is_failing(&self) -> bool {
        self.inner.shared.failing.load(Ordering::Acquire)
    }

    /// The seq of the last record written (checkpoints included); equals the
    /// number of records in the file.
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.last_seq.load(Ordering::Acquire)
    }

    /// How many fsyncs the writer has issued (group commit makes this much
    /// smaller than the number of durable appends under load).
    pub fn fsync_count(&self) -> u64 {
        self.inner.shared.fsyncs.load(Ordering::Relaxed)
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Writes every queued record and a final checkpoint, fsyncs, and stops
    /// the writer. Idempotent. On `Err` (the file cannot be written) the writer
    /// keeps running with the records still queued, and `close` may be retried.
    pub async fn close(&self) -> Result<(), AuditError> {
        if self.inner.shared.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(reply)).is_err() {
            return Ok(()); // the writer already stopped after a close
        }
        answer.await.unwrap_or(Ok(()))
    }

    fn unavailable(&self, reason: FailReason) -> AuditError {
        AuditError::Unavailable {
            path: self.inner.path.clone(),
            reason,
        }
    }

    fn closed(&self) -> AuditError {
        AuditError::Closed {
            path: self.inner.path.clone(),
        }
    }
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("last_seq", &self.last_seq())
            .field("failing", &self.is_failing())
            .finish_non_exhaustive()
    }
}

/// Reads and checks the last record of an existing log; `None` for an empty
/// file. Returns the last seq and hash.
fn read_tail(path: &Path, file: &mut File, len: u64) -> Result<Option<(u64, String)>, AuditError> {
    if len == 0 {
        return Ok(None);
    }
    let open_err = |source| AuditError::Open {
        path: path.to_owned(),
        source,
    };
    // Read a window from the end that holds the last two lines (or the whole
    // file), doubling it as needed.
    let mut window: u64 = 64 * 1024;
    let (start, buf) = loop {
        let start = len.saturating_sub(window);
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(start)).map_err(open_err)?;
        Read::by_ref(file)
            .take(len - start)
            .read_to_end(&mut buf)
            .map_err(open_err)?;
        let newlines = buf.iter().filter(|&&b| b == b'\n').count();
        if start == 0 || newlines >= 3 {
            break (start, buf);
        }
        if window >= 2 * MAX_TAIL_LINE {
            return Err(AuditError::TornTail {
                path: path.to_owned(),
                offset: start,
                detail: "the last record is longer than 16 MiB".into(),
            });
        }
        window *= 2;
    };
    let Some(body) = buf.strip_suffix(b"\n") else {
        let offset = buf
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(start, |i| start + i as u64 + 1);
        return Err(AuditError::TornTail {
            path: path.to_owned(),
            offset,
            detail: "no trailing newline".into(),
        });
    };
    let last_start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let last = &body[last_start..];
    let last_offset = start + last_start as u64;
    let parsed = record::parse_line(last).map_err(|p| match p {
        LineProblem::HashMismatch => AuditError::BrokenTail {
            path: path.to_owned(),
            seq: 0,
            detail: "does not match its hash: it was edited".into(),
        },
        LineProblem::NoHashSuffix => AuditError::TornTail {
            path: path.to_owned(),
            offset: last_offset,
            detail: "the line has no record hash".into(),
        },
        LineProblem::Malformed(m) => AuditError::TornTail {
            path: path.to_owned(),
            offset: last_offset,
            detail: m,
        },
    })?;
    if last_start > 0 {
        let before = &body[..last_start - 1];
        let prev_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        // Only check the link when the whole previous line is in the window.
        if prev_start > 0 || start == 0 {
            let seq = parsed.fields.seq;
            let broken = |detail: String| AuditError::BrokenTail {
                path: path.to_owned(),
                seq,
                detail,
            };
            let prior = record::parse_line(&before[prev_start..])
                .map_err(|_| broken("follows a record that is not valid".into()))?;
            if prior.fields.seq.checked_add(1) != Some(seq) {
                return Err(broken(format!(
                    "follows record {} instead of record {}",
                    prior.fields.seq,
                    seq.saturating_sub(1)
                )));
            }
            if parsed.fields.prev != prior.hash {
                return Err(broken("does not chain to the record before it".into()));
            }
        }
    } else if parsed.fields.seq != 1 || parsed.fields.prev != GENESIS_PREV {
        return Err(AuditError::BrokenTail {
            path: path.to_owned(),
            seq: parsed.fields.seq,
            detail: "is the only record but is not record 1 of a chain".into(),
        });
    }
    Ok(Some((parsed.fields.seq, parsed.hash)))
}

/// The writer's state; lives on the writer thread after `open`.
struct Writer {
    path: PathBuf,
    head_path: PathBuf,
    dev: u64,
    ino: u64,
    file: File,
    /// File length after the last successful batch.
    committed_len: u64,
    /// A failed write may have left bytes past `committed_len`.
    dirty: bool,
    key: SigningKey,
    key_id: String,
    next_seq: u64,
    prev: String,
    /// Records written since the last checkpoint.
    since_checkpoint: u64,
    oldest_uncovered: Option<Instant>,
    /// When `<path>.head` was last replaced.
    head_written: Option<Instant>,
    /// A checkpoint line written (not necessarily fsynced) after the one the
    /// head file names.
    head_pending: Option<Vec<u8>>,
    last_failure: Option<Instant>,
    /// Non-durable records of failed batches, oldest first.
    retained: VecDeque<Entry>,
    opts: AuditOptions,
    shared: Arc<Shared>,
    /// The queue's permits, given back once records are on disk.
    permits: Arc<Semaphore>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        loop {
            let first = match self.next_deadline() {
                Some(deadline) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(msg) => msg,
                    Err(_elapsed) => {
                        let force = self.checkpoint_due();
                        let _ = self.commit(Vec::new(), force);
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(first) = first else {
                // Every handle was dropped without close(): still seal the log.
                if let Err(reason) = self.commit(Vec::new(), true) {
                    tracing::error!(path = %self.path.display(), %reason, "final audit checkpoint failed");
                }
                return;
            };
            let mut batch = vec![first];
            drain(&mut rx, &mut batch);
            // Nobody waits for a batch of buffered records: linger briefly so
            // one wake-up, one file check and one write cover many records
            // (under load a batch was 1-2 records, each costing a futex wake,
            // a statx and a write). Durable records and close never wait.
            let urgent =
                |m: &Msg| matches!(m, Msg::Close(_)) || matches!(m, Msg::Append(e) if e.durable);
            if batch.len() < MAX_BATCH && !batch.iter().any(urgent) {
                tokio::time::sleep(LINGER).await;
                drain(&mut rx, &mut batch);
            }
            let mut appends = Vec::new();
            let mut msgs = batch.into_iter();
            while let Some(msg) = msgs.next() {
                match msg {
                    Msg::Append(entry) => appends.push(entry),
                    Msg::Close(reply) => {
                        let _ = self.commit(std::mem::take(&mut appends), false);
                        match self.commit(Vec::new(), true) {
                            // A successful commit has written every kept record.
                            Ok(()) => {
                                self.shared.closed.store(true, Ordering::Release);
                                let _ = reply.send(Ok(()));
                                rx.close();
                                let rest = msgs
                                    .by_ref()
                                    .chain(std::iter::from_fn(|| rx.try_recv().ok()));
                                for late in rest.collect::<Vec<_>>() {
                                    self.refuse_after_close(late);
                                }
                                return;
                            }
                            Err(reason) => {
                                let _ = reply.send(Err(self.unavailable(reason)));
                            }
                        }
                    }
                }
            }
            if !appends.is_empty() {
                let _ = self.commit(appends, false);
            }
        }
    }

    fn refuse_after_close(&self, msg: Msg) {
        match msg {
            Msg::Append(entry) => match entry.waiter {
                Some(w) => {
                    let _ = w.send(Err(AuditError::Closed {
                        path: self.path.clone(),
                    }));
                }
                None => {
                    tracing::error!(path = %self.path.display(), "audit record appended after close discarded");
                }
            },
            Msg::Close(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// When the writer must wake up without a message: to retry kept records
    /// or to write an overdue checkpoint.
    fn next_deadline(&self) -> Option<Instant> {
        let retry = self.opts.idle_checkpoint.max(MIN_RETRY);
        let due = if !self.retained.is_empty() {
            Some(self.last_failure.map_or_else(Instant::now, |t| t + retry))
        } else {
            let checkpoint = self.oldest_uncovered.map(|t| t + self.opts.idle_checkpoint);
            let head = self.head_pending.as_ref().map(|_| self.head_due_at());
            checkpoint.into_iter().chain(head).min()
        }?;
        match self.last_failure {
            Some(t) if self.shared.failing.load(Ordering::Relaxed) => Some(due.max(t + retry)),
            _ => Some(due),
        }
    }

    /// When the head file may next be replaced.
    fn head_due_at(&self) -> Instant {
        self.head_written
            .map_or_else(Instant::now, |t| t + self.opts.idle_checkpoint)
    }

    /// Fsyncs the log and points the head file at the waiting checkpoint.
    fn flush_head(&mut self) -> Result<(), FailReason> {
        let Some(line) = self.head_pending.take() else {
            return Ok(());
        };
        if let Err(e) = self.file.sync_data() {
            self.head_pending = Some(line);
            let reason = FailReason::io("fsynced", &e);
            self.fail(Vec::new(), &reason); // backs the next attempt off
            return Err(reason);
        }
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.shared.failing.store(false, Ordering::Release);
        self.replace_head(&line);
        Ok(())
    }

    fn replace_head(&mut self, line: &[u8]) {
        self.head_written = Some(Instant::now());
        if let Err(e) = self.write_head(line) {
            tracing::warn!(path = %self.head_path.display(), error = %e, "could not update the audit head file");
        }
    }

    fn checkpoint_due(&self) -> bool {
        self.oldest_uncovered
            .is_some_and(|t| t + self.opts.idle_checkpoint <= Instant::now())
    }

    fn unavailable(&self, reason: FailReason) -> AuditError {
        AuditError::Unavailable {
            path: self.path.clone(),
            reason,
        }
    }

    /// Checks that the path still names our file, that an operator has not
    /// made it read-only, and that nobody else changed its length.
    fn check_file(&mut self) -> Result<(), FailReason> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FailReason::Missing),
            Err(e) => return Err(FailReason::io("inspected", &e)),
        };
        if meta.dev() != self.dev || meta.ino() != self.ino {
            return Err(FailReason::Replaced);
        }
        if meta.mode() & 0o200 == 0 {
            return Err(FailReason::NotWritable {
                mode: meta.mode() & 0o7777,
            });
        }
        if meta.len() != self.committed_len {
            if self.dirty && meta.len() > self.committed_len {
                self.file
                    .set_len(self.committed_len)
                    .map_err(|e| FailReason::io("repaired after a failed write", &e))?;
                self.dirty = false;
            } else {
                return Err(FailReason::ChangedBehindOurBack {
                    expected: self.committed_len,
                    found: meta.len(),
                });
            }
        }
        Ok(())
    }

    /// Writes kept records, then `new`, inserting checkpoints as they fall due,
    /// plus a final checkpoint if `force_checkpoint` and any record is
    /// uncovered. One `write_all`; one fdatasync if anything durable or a
    /// checkpoint is in the batch. Answers durable waiters.
    fn commit(&mut self, new: Vec<Entry>, force_checkpoint: bool) -> Result<(), FailReason> {
        let mut entries: Vec<Entry> = self.retained.drain(..).collect();
        entries.extend(new);
        if entries.is_empty() && !(force_checkpoint && self.since_checkpoint > 0) {
            if self.head_pending.is_some()
                && (force_checkpoint || self.head_due_at() <= Instant::now())
            {
                return self.flush_head();
            }
            return Ok(());
        }
        if let Err(reason) = self.check_file() {
            self.fail(entries, &reason);
            return Err(reason);
        }

        let mut buf = Vec::with_capacity(entries.len() * 768);
        let mut seq = self.next_seq;
        let mut prev = self.prev.clone();
        let mut since = self.since_checkpoint;
        let mut need_sync = false;
        let mut last_checkpoint: Option<(usize, usize)> = None;
        let mut written: Vec<(Entry, u64)> = Vec::with_capacity(entries.len());
        let mut pending = entries.into_iter();
        while let Some(entry) = pending.next() {
            let hash = record::encode_into(
                &mut buf,
                seq,
                &entry.event,
                &CheckpointFields::default(),
                &prev,
            );
            prev.clear();
            prev.push_str(std::str::from_utf8(&hash).unwrap_or_default());
            need_sync |= entry.durable;
            written.push((entry, seq));
            seq += 1;
            since += 1;
            if since >= self.opts.checkpoint_every {
                let at = buf.len();
                if let Err(reason) = self.push_checkpoint(&mut buf, &mut seq, &mut prev) {
                    let unwritten = written.into_iter().map(|(e, _)| e).chain(pending);
                    self.fail(unwritten.collect(), &reason);
                    return Err(reason);
                }
                last_checkpoint = Some((at, buf.len()));
                since = 0;
            }
        }
        if force_checkpoint && since > 0 {
            let at = buf.len();
            if let Err(reason) = self.push_checkpoint(&mut buf, &mut seq, &mut prev) {
                self.fail(written.into_iter().map(|(e, _)| e).collect(), &reason);
                return Err(reason);
            }
            last_checkpoint = Some((at, buf.len()));
            since = 0;
        }
        // The head file moves (to this batch's checkpoint, else to one left
        // waiting by an earlier batch) only at close or once the interval has
        // passed; the checkpoint must then be on disk first.
        let head_now = (last_checkpoint.is_some() || self.head_pending.is_some())
            && (force_checkpoint || self.head_due_at() <= Instant::now());
        need_sync |= head_now;

        let result = self
            .file
            .write_all(&buf)
            .map_err(|e| FailReason::io("written", &e));
        let result = result.and_then(|()| {
            if need_sync {
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                self.file
                    .sync_data()
                    .map_err(|e| FailReason::io("fsynced", &e))
            } else {
                Ok(())
            }
        });
        if let Err(reason) = result {
            // Cut back to the last whole record so a retry appends cleanly; if
            // even that fails, `check_file` retries the cut before any write.
            self.dirty = self.file.set_len(self.committed_len).is_err();
            self.fail(written.into_iter().map(|(e, _)| e).collect(), &reason);
            return Err(reason);
        }

        let now = Instant::now();
        self.committed_len += buf.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        self.oldest_uncovered = match (since, self.since_checkpoint, last_checkpoint) {
            (0, _, _) => None,
            (_, _, Some(_)) | (_, 0, None) => Some(now),
            _ => self.oldest_uncovered,
        };
        self.since_checkpoint = since;
        self.shared.last_seq.store(seq - 1, Ordering::Release);
        self.shared.failing.store(false, Ordering::Release);
        let mut on_disk = 0;
        for (entry, seq) in written {
            on_disk += usize::from(entry.counted);
            if let Some(w) = entry.waiter {
                let _ = w.send(Ok(seq));
            }
        }
        if on_disk > 0 {
            self.permits.add_permits(on_disk);
        }
        match (last_checkpoint, head_now) {
            (Some((from, to)), true) => {
                self.head_pending = None;
                self.replace_head(&buf[from..to]);
            }
            (Some((from, to)), false) => self.head_pending = Some(buf[from..to].to_vec()),
            (None, true) => {
                if let Some(line) = self.head_pending.take() {
                    self.replace_head(&line);
                }
            }
            (None, false) => {}
        }
        Ok(())
    }

    /// Appends a checkpoint over the record before `seq` to `buf`.
    fn push_checkpoint(
        &self,
        buf: &mut Vec<u8>,
        seq: &mut u64,
        prev: &mut String,
    ) -> Result<(), FailReason> {
        let covers = *seq - 1;
        let sig = self.key.sign(&record::checkpoint_message(covers, prev));
        let sig = base64::engine::general_purpose::STANDARD.encode(sig.to_bytes());
        let event = EncodedEvent::new(&AuditEvent::now(kind::CHECKPOINT))
            .map_err(|e| FailReason::unserializable(&e))?;
        let fields = CheckpointFields {
            covers: Some(covers),
            head: Some(prev),
            key_id: Some(&self.key_id),
            sig: Some(&sig),
        };
        let hash = record::encode_into(buf, *seq, &event, &fields, prev);
        *prev = String::from_utf8_lossy(&hash).into_owned();
        *seq += 1;
        Ok(())
    }

    /// Fails a batch: durable waiters get `Err`, non-durable records are kept
    /// (in order) for the next attempt.
    fn fail(&mut self, entries: Vec<Entry>, reason: &FailReason) {
        self.shared.failing.store(true, Ordering::Release);
        self.last_failure = Some(Instant::now());
        tracing::error!(path = %self.path.display(), %reason, "audit write failed; failing closed");
        for entry in entries {
            match entry.waiter {
                Some(w) => {
                    let _ = w.send(Err(self.unavailable(reason.clone())));
                }
                None if entry.durable => {} // the start record: open() reports it
                None => self.retained.push_back(entry),
            }
        }
    }

    /// Atomically replaces `<path>.head` with the checkpoint line: write a temp
    /// file, fsync it, rename over, fsync the directory.
    fn write_head(&self, line: &[u8]) -> std::io::Result<()> {
        let mut tmp = self.head_path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&tmp)?;
        f.write_all(line)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.head_path)?;
        if let Some(dir) = self.head_path.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Move every message already queued into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::UnboundedReceiver<Msg>, batch: &mut Vec<Msg>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(msg) => batch.push(msg),
            Err(_) => break,
        }
    }
}
