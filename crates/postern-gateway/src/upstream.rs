//! The HTTP/1.1 client for plain-`http` upstreams: a pool of keep-alive
//! connections, each driven inside the task of the request that is using it.
//!
//! hyper-util's pooled client runs every upstream connection as a task of
//! its own: each request is handed to that task over a channel and its
//! answer handed back, two cross-task wake-ups per request, plus the pool's
//! bookkeeping. On the request path that was the largest share of postern's
//! own CPU after TLS. Here a checked-out connection belongs to the request:
//! the request's future polls the connection while it waits for the answer,
//! and the response body polls it while the body streams, so the request,
//! its upstream I/O and the client's connection all make progress in one
//! task. (This is the same shape as a proxy worker that owns its upstream
//! connection for the length of an exchange.)
//!
//! Invariants:
//! - A connection is pooled again only once its response body has been read
//!   to the end and hyper reports it ready for another request; a body that
//!   is dropped early, an error, or an upstream `Connection: close` closes
//!   the connection instead. A connection is never shared by two requests.
//! - A pooled connection the upstream closed while it was idle is noticed at
//!   checkout (its connection future has completed) and thrown away; a
//!   request that hyper hands back unsent is retried once on a new
//!   connection. A request that may have reached the upstream is never
//!   retried.
//! - Idle connections are bounded per upstream and thread, and dropped after
//!   [`IDLE_TIMEOUT`].
//!
//! `https` upstreams and protocol upgrades (WebSocket) keep using the
//! hyper-util client ([`crate::UpstreamClient`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::{Body, BoxError};

/// How long a connection may sit idle in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; more are closed when they come back.
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;

type Driver = http1::Connection<TokioIo<TcpStream>, Body>;

/// One upstream connection: the handle requests are sent on and the future
/// that does the connection's I/O.
struct Conn {
    sender: http1::SendRequest<Body>,
    driver: Pin<Box<Driver>>,
    /// The driver future has completed: the connection is closed.
    closed: bool,
}

impl Conn {
    /// Let the connection do whatever I/O it can. Returns false once it is
    /// closed (by the upstream, an error, or `Connection: close`).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed {
            if let Poll::Ready(result) = self.driver.as_mut().poll(cx) {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection closed");
                }
                self.closed = true;
            }
        }
        !self.closed
    }

    /// Usable for a new request right now.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Why a request got no response from the upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot resolve `{authority}`: {reason}")]
    Resolve { authority: String, reason: String },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

thread_local! {
    /// Idle connections, per thread: a connection goes back to the pool of
    /// the thread whose reactor it is registered with, so the worker that
    /// checks it out next also receives its I/O events (see
    /// [`crate::workers`]). Keyed by pool, then upstream authority.
    static IDLE: RefCell<IdleMap> = RefCell::new(HashMap::default());
}

type IdleMap = HashMap<(usize, Authority), VecDeque<Idle>, BuildHasherDefault<KeyHasher>>;

/// The idle map's hasher. Its keys come from the configuration, never from a
/// request, so it needs no protection against chosen collisions; SipHash
/// cost ~1,400 instructions per request here, because `Authority` hashes
/// byte by byte (lower-cased).
struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325) // FNV-1a's offset basis
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u8(b);
        }
    }

    fn write_u8(&mut self, b: u8) {
        // FNV-1a.
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Keep-alive connections to plain-`http` upstreams, by authority.
#[derive(Debug)]
pub struct Pool {
    /// Tells this pool's idle connections from another gateway's in the
    /// same process (tests run several).
    id: usize,
}

static NEXT_POOL: AtomicUsize = AtomicUsize::new(0);

impl Drop for Pool {
    fn drop(&mut self) {
        // Only this thread's idle connections can be reached from here; the
        // others close when their thread next returns one to the pool, or
        // when the thread ends.
        let id = self.id;
        let _ = IDLE.try_with(|idle| {
            if let Ok(mut m) = idle.try_borrow_mut() {
                m.retain(|(pool, _), _| *pool != id);
            }
        });
    }
}

impl Pool {
    pub fn new() -> Arc<Pool> {
        Arc::new(Pool {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Send `req` (origin-form target, `Host` set) to the upstream at
    /// `authority` and wait for the response head. The response body keeps
    /// driving the connection and returns it to the pool when it ends.
    pub async fn request(
        self: &Arc<Self>,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (mut conn, mut reused) = match self.checkout(authority).await {
            Some(c) => (c, true),
            None => (Box::pin(connect(authority)).await?, false),
        };
        let mut req = req;
        loop {
            let mut sent = std::pin::pin!(conn.sender.try_send_request(req));
            let result = poll_fn(|cx| {
                conn.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let body = PooledBody {
                        body,
                        conn: Some(conn),
                        home: Some((self.clone(), authority.clone())),
                    };
                    return Ok(Response::from_parts(parts, Body::new(body)));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the pooled connection had been closed by
                    // the upstream. Once more, on a connection of its own.
                    Some(unsent) if reused => {
                        req = unsent;
                        conn = Box::pin(connect(authority)).await?;
                        reused = false;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection that is still open.
    async fn checkout(&self, authority: &Authority) -> Option<Conn> {
        loop {
            let key = (self.id, authority.clone());
            let idle = IDLE
                .try_with(|idle| {
                    let mut map = idle.try_borrow_mut().ok()?;
                    map.get_mut(&key)?.pop_back()
                })
                .ok()
                .flatten()?;
            if idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            let mut conn = idle.conn;
            if poll_fn(|cx| Poll::Ready(conn.ready(cx))).await {
                return Some(conn);
            }
        }
    }

    fn put_back(&self, authority: Authority, conn: Conn) {
        let _ = IDLE.try_with(|idle| {
            let Ok(mut map) = idle.try_borrow_mut() else {
                return;
            };
            let list = map.entry((self.id, authority)).or_default();
            let now = Instant::now();
            prune(list, now);
            if list.len() < MAX_IDLE_PER_UPSTREAM {
                list.push_back(Idle { conn, since: now });
            }
        });
    }
}

/// Drop the connections idle longer than [`IDLE_TIMEOUT`]: used last in,
/// first out, they are at the front.
fn prune(list: &mut VecDeque<Idle>, now: Instant) {
    while list
        .front()
        .is_some_and(|i| now.duration_since(i.since) > IDLE_TIMEOUT)
    {
        list.pop_front();
    }
}

/// Close the idle connections this thread holds that have been idle longer
/// than [`IDLE_TIMEOUT`] (oldest first in each list).
pub(crate) fn prune_idle_on_this_thread() {
    let now = Instant::now();
    let _ = IDLE.try_with(|idle| {
        if let Ok(mut m) = idle.try_borrow_mut() {
            for list in m.values_mut() {
                prune(list, now);
            }
            m.retain(|_, list| !list.is_empty());
        }
    });
}

/// Close every idle connection this thread holds (a worker stopping).
pub(crate) fn close_idle_on_this_thread() {
    let _ = IDLE.try_with(|idle| {
        if let Ok(mut m) = idle.try_borrow_mut() {
            m.clear();
        }
    });
}

async fn connect(authority: &Authority) -> Result<Conn, UpstreamError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host();
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .ok();
    let addrs: Vec<SocketAddr> = match literal {
        Some(ip) => vec![SocketAddr::new(ip, port)],
        None => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| UpstreamError::Resolve {
                authority: authority.to_string(),
                reason: e.to_string(),
            })?
            .collect(),
    };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(tcp)).await?;
                return Ok(Conn {
                    sender,
                    driver: Box::pin(driver),
                    closed: false,
                });
            }
            Err(source) => {
                last = Some(UpstreamError::Connect {
                    addr: addr.to_string(),
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| UpstreamError::Resolve {
        authority: authority.to_string(),
        reason: "no addresses".to_string(),
    }))
}

/// A response body that drives its connection and, once read to the end,
/// returns the connection to the pool.
struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    home: Option<(Arc<Pool>, Authority)>,
}

impl PooledBody {
    /// The body has ended: pool the connection if it can take another request.
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let (Some(mut conn), Some((pool, authority))) = (self.conn.take(), self.home.take()) {
            if conn.ready(cx) {
                pool.put_back(authority, conn);
            }
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(conn) = this.conn.as_mut() {
            conn.drive(cx);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.finish(cx),
            Poll::Ready(Some(Ok(_))) if this.body.is_end_stream() => this.finish(cx),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled.map(|f| f.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Bodies nobody reads (HEAD, 204, 304) end here; one dropped part
        // way closes its connection.
        if self.conn.is_some() && self.body.is_end_stream() {
            self.finish(&mut Context::from_waker(Waker::noop()));
        }
    }
}
