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
//! # Which worker gets a connection
//!
//! By default ([`Placement::FirstIdle`]) the first worker, in index order,
//! that is idle (parked in its reactor with nothing to run) at the moment
//! the connection is accepted; when none is idle, the one serving the
//! fewest connections. This is what nginx's workers do by default (they
//! wait on the listening socket with `EPOLLEXCLUSIVE`, and the kernel wakes
//! the first idle one): a lightly loaded gateway runs on few cores, whose
//! wake-ups then each find several requests ready, and connections reach a
//! second core once the first is busy when they arrive. Round robin spread
//! 64 keep-alive connections over both workers of a 2-core machine that the
//! load generator and the upstream shared; packed, the same load took 0.93×
//! the CPU per request (BENCHMARKS.md). Connections are not moved once placed, so a pool of
//! long-lived connections opened while the gateway was quiet stays on one
//! core; `[gateway] placement = "spread"` ([`Placement::Spread`]) always
//! picks the worker with the fewest connections instead.
//!
//! Background work (reload, alerts, the revocation watcher, the audit
//! writer) stays where it was started; nothing here holds state that a
//! request could observe.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use postern_policy::config::Placement;
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
    workers: Vec<Worker>,
    placement: Placement,
    /// Dropping these ends the workers' runtimes (after the drain).
    _stop: Vec<oneshot::Sender<()>>,
}

struct Worker {
    handle: Handle,
    load: Arc<Load>,
}

/// What the acceptor knows of a worker's load.
#[derive(Default)]
struct Load {
    /// Parked in its reactor with no task to run (set and cleared by the
    /// runtime's park hooks).
    idle: AtomicBool,
    /// Connections it is serving.
    conns: AtomicUsize,
}

/// Counts a connection against its worker until the connection ends.
struct Placed(Arc<Load>);

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.conns.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The worker for a new connection: with [`Placement::FirstIdle`] the first
/// idle one; otherwise, or when none is idle, the one with the fewest
/// connections (the first of those on a tie).
fn pick(placement: Placement, loads: impl Iterator<Item = (bool, usize)>) -> Option<usize> {
    let mut fewest: Option<(usize, usize)> = None;
    for (i, (idle, conns)) in loads.enumerate() {
        if idle && placement == Placement::FirstIdle {
            return Some(i);
        }
        if fewest.is_none_or(|(_, n)| conns < n) {
            fewest = Some((i, conns));
        }
    }
    fewest.map(|(i, _)| i)
}

impl Workers {
    /// `n` workers, each a thread running a current-thread runtime with I/O
    /// and timers; with `n == 0` connections are served by the runtime that
    /// calls [`Workers::spawn`] (tokio's work-stealing scheduler).
    pub fn start(n: usize, placement: Placement) -> std::io::Result<Workers> {
        let mut workers = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let load = Arc::new(Load::default());
            let (parked, unparked) = (load.clone(), load.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(move || parked.idle.store(true, Ordering::Relaxed))
                .on_thread_unpark(move || unparked.idle.store(false, Ordering::Relaxed))
                .build()?;
            workers.push(Worker {
                handle: rt.handle().clone(),
                load,
            });
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
            workers,
            placement,
            _stop: stop,
        })
    }

    /// As many workers as the machine has cores, or `POSTERN_WORKERS` when
    /// set (`0`: no workers of their own).
    pub fn per_core(placement: Placement) -> std::io::Result<Workers> {
        let n = match std::env::var("POSTERN_WORKERS") {
            Ok(v) => v.trim().parse().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("POSTERN_WORKERS=`{v}` is not a number of threads"),
                )
            })?,
            Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        Workers::start(n, placement)
    }

    /// Run the connection `fut` on the worker [`pick`] chooses, or on the
    /// calling runtime when there are no workers.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let loads = self.workers.iter().map(|w| {
            (
                w.load.idle.load(Ordering::Relaxed),
                w.load.conns.load(Ordering::Relaxed),
            )
        });
        let Some(w) = pick(self.placement, loads).and_then(|i| self.workers.get(i)) else {
            tokio::spawn(fut);
            return;
        };
        w.load.conns.fetch_add(1, Ordering::Relaxed);
        let placed = Placed(w.load.clone());
        w.handle.spawn(async move {
            let _placed = placed;
            fut.await;
        });
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
    fn the_first_idle_worker_gets_the_connection() {
        assert_eq!(
            pick(Placement::FirstIdle, [].into_iter()),
            None,
            "no workers: the caller's runtime"
        );
        assert_eq!(
            pick(Placement::FirstIdle, [(true, 50), (true, 0)].into_iter()),
            Some(0)
        );
        assert_eq!(
            pick(Placement::FirstIdle, [(false, 0), (true, 50)].into_iter()),
            Some(1)
        );
        assert_eq!(
            pick(
                Placement::FirstIdle,
                [(false, 5), (false, 2), (false, 2)].into_iter()
            ),
            Some(1),
            "none idle: the fewest connections, the first on a tie"
        );
        assert_eq!(
            pick(
                Placement::Spread,
                [(true, 3), (false, 1), (true, 1)].into_iter()
            ),
            Some(1),
            "spread: the fewest connections whether idle or not"
        );
        assert_eq!(pick(Placement::Spread, [].into_iter()), None);
    }

    #[test]
    fn connections_are_counted_and_placed_on_idle_workers() {
        let workers = Workers::start(2, Placement::FirstIdle).unwrap();
        // Both idle at first: everything goes to worker 0 while it stays idle.
        let wait_idle = |w: &Worker| {
            for _ in 0..500 {
                if w.load.idle.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            panic!("worker never parked");
        };
        wait_idle(&workers.workers[0]);
        wait_idle(&workers.workers[1]);
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(held));
        let (ran, on) = std::sync::mpsc::channel::<String>();
        let ran2 = ran.clone();
        // Worker 0 gets a connection that keeps its thread busy until released.
        workers.spawn(async move {
            let name = std::thread::current().name().unwrap_or("").to_string();
            ran2.send(name).unwrap();
            let _ = held.lock().unwrap().recv();
        });
        assert_eq!(on.recv().unwrap(), "postern-worker-0");
        assert_eq!(workers.workers[0].load.conns.load(Ordering::Relaxed), 1);
        assert!(
            !workers.workers[0].load.idle.load(Ordering::Relaxed),
            "busy"
        );
        // The next one goes to the idle worker 1.
        workers.spawn(async move {
            let name = std::thread::current().name().unwrap_or("").to_string();
            ran.send(name).unwrap();
        });
        assert_eq!(on.recv().unwrap(), "postern-worker-1");
        hold.send(()).unwrap();
        // Ended connections are counted out.
        for _ in 0..500 {
            let total: usize = workers
                .workers
                .iter()
                .map(|w| w.load.conns.load(Ordering::Relaxed))
                .sum();
            if total == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("connections were not counted out");
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
