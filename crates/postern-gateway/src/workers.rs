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

use std::cell::Cell;
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

thread_local! {
    /// Set on a worker's thread: its tasks never run anywhere else.
    static ON_WORKER: Cell<bool> = const { Cell::new(false) };
    /// Requests being answered on this worker.
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// Held by a request for as long as it is being answered: counts the
/// worker's requests in flight (nothing, off the workers).
pub struct InFlight(bool);

impl InFlight {
    pub fn enter() -> InFlight {
        let on = ON_WORKER.try_with(Cell::get).unwrap_or(false);
        if on {
            let _ = IN_FLIGHT.try_with(|n| n.set(n.get().saturating_add(1)));
        }
        InFlight(on)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0 {
            let _ = IN_FLIGHT.try_with(|n| n.set(n.get().saturating_sub(1)));
        }
    }
}

/// Before a request is written upstream: when the worker is answering
/// other requests too, let those that are ready run up to this point
/// first, so that the upstream requests of one batch of client events leave
/// back to back.
///
/// Spread out, each of them found the upstream asleep and paid for waking
/// it inside `writev` (an IPI on a VM): about 4 % of a proxied request's CPU
/// at saturation (`bench/ab.sh`, 25 interleaved rounds), with lower p50 and
/// p99. With few requests in flight the others are mostly waiting on their
/// upstream, and a yield would cost a scheduler round for nothing (1.04×
/// paced at 3,000 req/s when any other request made the worker busy).
pub async fn yield_if_busy() {
    /// More requests in flight than this on the worker make it busy.
    const BUSY: usize = 3;
    let busy = ON_WORKER.try_with(Cell::get).unwrap_or(false)
        && IN_FLIGHT.try_with(Cell::get).unwrap_or(0) > BUSY;
    if busy {
        tokio::task::yield_now().await;
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
                    ON_WORKER.set(true);
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

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "tests panic on unexpected failures by design"
)]
mod tests {
    use super::*;

    /// Whether `f` is ready at its first poll.
    fn ready_at_once<F: Future>(f: F) -> bool {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        std::pin::pin!(f).poll(&mut cx).is_ready()
    }

    #[test]
    fn only_a_busy_worker_yields() {
        // A thread of its own: fresh thread-locals.
        std::thread::spawn(|| {
            let off_worker: Vec<_> = (0..8).map(|_| InFlight::enter()).collect();
            assert_eq!(IN_FLIGHT.get(), 0, "nothing is counted off the workers");
            assert!(ready_at_once(yield_if_busy()));
            drop(off_worker);

            ON_WORKER.set(true);
            let mut guards: Vec<_> = (0..3).map(|_| InFlight::enter()).collect();
            assert_eq!(IN_FLIGHT.get(), 3);
            assert!(ready_at_once(yield_if_busy()), "3 in flight is not busy");
            guards.push(InFlight::enter());
            assert!(!ready_at_once(yield_if_busy()), "4 in flight is busy");
            drop(guards);
            assert_eq!(IN_FLIGHT.get(), 0, "every request that ends is counted out");
            assert!(ready_at_once(yield_if_busy()));
        })
        .join()
        .unwrap();
    }
}
