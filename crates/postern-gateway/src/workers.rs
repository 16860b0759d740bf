//! Connection workers: one single-threaded runtime per core.
//!
//! The listener accepts on the main runtime and hands each connection, as
//! a plain socket, to the next worker, which registers it with its own
//! reactor and serves it to the end: the TLS session, every request on it,
//! and the upstream connections those requests drive (see
//! [`crate::upstream`]) are all polled by one thread. Compared with
//! tokio's work-stealing runtime this saves the cross-thread wake-ups and
//! the atomic task hand-offs on the request path (the design of
//! thread-per-core servers such as nginx's worker processes).
//!
//! Background work (reload, alerts, the revocation watcher, the audit
//! writer) stays where it was started; nothing here holds state that a
//! request could observe.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Once a second on each worker: close upstream connections idle too long.
///
/// The tick also keeps the worker's timer from sleeping longer than a
/// second. That matters on the request path: tokio wakes a parked timer
/// driver (an `eventfd` write and an extra trip through `epoll_wait`) when a
/// new timer is due before its next wake-up, and with no timer pending any
/// new one is. Without the tick, about one request in five paid that for
/// its upstream timeout; with it, a timeout longer than a second never does.
async fn housekeeping() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        crate::upstream::prune_idle_on_this_thread();
    }
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping these ends the workers' runtimes (after the drain).
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// `n` workers, each a thread running a current-thread runtime with I/O
    /// and timers; with `n == 0` connections are served by the runtime that
    /// calls [`Workers::spawn`] (tokio's work-stealing scheduler).
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new()
                .name(format!("postern-worker-{i}"))
                .spawn(move || {
                    rt.block_on(async {
                        tokio::select! {
                            _ = rx => {}
                            () = housekeeping() => {}
                        }
                        crate::upstream::close_idle_on_this_thread();
                    })
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            _stop: stop,
        })
    }

    /// As many workers as the machine has cores, or `POSTERN_WORKERS` when
    /// set (`0`: no workers of their own).
    pub fn per_core() -> std::io::Result<Workers> {
        let n = match std::env::var("POSTERN_WORKERS") {
            Ok(v) => v.trim().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("POSTERN_WORKERS=`{v}` is not a number of threads"),
                )
            })?,
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Workers::start(n)
    }

    /// Run `fut` on the next worker (round robin), or on the calling
    /// runtime when there are no workers.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(fut);
            return;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        if let Some(h) = self.handles.get(i) {
            h.spawn(fut);
        }
    }
}
