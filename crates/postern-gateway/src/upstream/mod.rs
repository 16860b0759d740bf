//! The HTTP/1.1 client for plain-`http` upstreams: a pool of keep-alive
//! connections, each used inside the task of the request that holds it.
//!
//! Most requests carry no body, or one postern holds in full (a verified
//! webhook). For those postern writes the request itself and reads the
//! answer itself ([`h1`]): one write, usually one read, and a response body
//! that is often complete in that read, so the connection goes back to the
//! pool before the response is even passed on. hyper's client connection
//! spent about 17,000 instructions a request on the same exchange (seven
//! write polls and six read polls, and its body channel); this path spends
//! a fraction of that.
//!
//! A request whose body streams in from the client goes through a hyper
//! client connection over the same pooled socket, which reads the answer
//! while the body is still being sent (an upstream may answer early); once
//! that exchange is over, the socket is taken back out of hyper and pooled
//! like any other.
//!
//! Invariants:
//! - A connection is pooled again only once its response has been read to
//!   the end, exactly: a response that says it is the last (`Connection:
//!   close`, HTTP/1.0, no length), bytes after the end of a response, an
//!   error, or a body dropped part way all close the connection instead. A
//!   connection is never shared by two requests, so a response can only
//!   reach the request it answers.
//! - Framing is read strictly ([`h1`]); anything ambiguous is a 502 and the
//!   connection is closed.
//! - A pooled connection the upstream closed while it was idle is noticed at
//!   checkout and thrown away; a request whose first write fails on a reused
//!   connection (nothing reached the upstream) is sent once more on a new
//!   connection. A request that may have reached the upstream is never
//!   sent twice.
//! - Idle connections are bounded per upstream and thread, and dropped after
//!   [`IDLE_TIMEOUT`].
//!
//! `https` upstreams and protocol upgrades (WebSocket) keep using the
//! hyper-util client ([`crate::UpstreamClient`]).

pub(crate) mod h1;

pub use h1::WireError;

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::{Body, BoxError};
use h1::{ChunkedDecoder, Decoded, Framing};

/// How long a connection may sit idle in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream; more are closed when they come back.
pub const MAX_IDLE_PER_UPSTREAM: usize = 256;
/// Bytes read from an upstream at a time.
const READ_CHUNK: usize = 8 * 1024;
/// A body up to this size is written together with the request head.
const INLINE_BODY: usize = 16 * 1024;

/// What follows a request's head.
pub enum Payload {
    /// No body.
    Empty,
    /// A body postern holds in full.
    Full(Bytes),
    /// A body still streaming in from the client.
    Stream(Body),
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
    #[error("connection to the upstream failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the upstream closed the connection without answering")]
    Closed,
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// An idle upstream connection.
struct Idle {
    tcp: TcpStream,
    since: Instant,
}

thread_local! {
    /// Idle connections, per thread: a connection goes back to the pool of
    /// the thread whose reactor it is registered with, so the worker that
    /// checks it out next also receives its I/O events (see
    /// [`crate::workers`]). Keyed by pool, then upstream authority.
    static IDLE: RefCell<IdleMap> = RefCell::new(HashMap::default());
}

type IdleMap = HashMap<Key, VecDeque<Idle>, BuildHasherDefault<KeyHasher>>;

/// An idle map's key: a pool, and an upstream's authority compared and
/// hashed by its exact bytes. They come from the configuration, the same
/// bytes every time; `Authority`'s own comparison lower-cases byte by byte.
#[derive(Clone)]
struct Key {
    pool: usize,
    authority: Authority,
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.pool == other.pool && self.authority.as_str() == other.authority.as_str()
    }
}

impl Eq for Key {}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_usize(self.pool);
        h.write(self.authority.as_str().as_bytes());
    }
}
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
                m.retain(|key, _| key.pool != id);
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

    /// Send a request (origin-form target), postern's own headers `own`
    /// (`Host` among them; they replace any of the same name in `parts`) and
    /// its payload to the upstream at `authority`, and wait for the response
    /// head. A response body still to be read keeps the connection, and
    /// returns it to the pool when it ends.
    pub async fn request(
        self: &Arc<Self>,
        authority: &Authority,
        mut parts: http::request::Parts,
        own: Vec<(HeaderName, HeaderValue)>,
        payload: Payload,
    ) -> Result<Response<Body>, UpstreamError> {
        match payload {
            Payload::Empty => self.exchange(authority, &parts, &own, Bytes::new()).await,
            Payload::Full(body) => self.exchange(authority, &parts, &own, body).await,
            Payload::Stream(body) => {
                for (name, value) in own {
                    parts.headers.insert(name, value);
                }
                Box::pin(self.exchange_streaming(authority, Request::from_parts(parts, body))).await
            }
        }
    }

    /// One exchange whose request body is known in full, on postern's own
    /// HTTP/1.1 code ([`h1`]).
    async fn exchange(
        self: &Arc<Self>,
        authority: &Authority,
        parts: &http::request::Parts,
        own: &[(HeaderName, HeaderValue)],
        body: Bytes,
    ) -> Result<Response<Body>, UpstreamError> {
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let inline = body.len() <= INLINE_BODY;
        let mut out = Vec::with_capacity(
            128 + target.len()
                + (parts.headers.len() + own.len()) * 64
                + if inline { body.len() } else { 0 },
        );
        h1::write_request_head(
            &mut out,
            &parts.method,
            target,
            &parts.headers,
            own,
            body.len(),
        );
        if inline {
            out.extend_from_slice(&body);
        }
        let rest: &[u8] = if inline { &[] } else { &body };

        let (mut tcp, mut reused) = match self.checkout(authority).await {
            Some(t) => (t, true),
            None => (connect(authority).await?, false),
        };
        loop {
            match send(&mut tcp, &out, rest).await {
                Ok(()) => break,
                // Nothing was written: the pooled connection had been closed
                // by the upstream. Once more, on a connection of its own.
                Err(Send::Unsent(_)) if reused => {
                    tcp = connect(authority).await?;
                    reused = false;
                }
                Err(Send::Unsent(e) | Send::Partly(e)) => return Err(UpstreamError::Io(e)),
            }
        }

        let head_request = parts.method == Method::HEAD;
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let head = loop {
            if !buf.is_empty() {
                if let Some(head) = h1::parse_response(&mut buf, head_request)? {
                    // An interim answer (100 Continue, 103 Early Hints) is
                    // followed by the real one.
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    break head;
                }
            }
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Err(UpstreamError::Closed);
            }
        };

        let h1::Head {
            status,
            headers,
            framing,
            keep_alive,
        } = head;
        let body = match framing {
            Framing::Empty => {
                self.done(authority, tcp, keep_alive && buf.is_empty());
                crate::respond::full(Bytes::new())
            }
            // The whole body came with the head (the common case).
            Framing::Length(n) if buf.len() as u64 >= n => {
                let data = buf
                    .split_to(usize::try_from(n).unwrap_or(usize::MAX))
                    .freeze();
                self.done(authority, tcp, keep_alive && buf.is_empty());
                crate::respond::full(data)
            }
            // The rest is read as the body is, and the connection goes with
            // it (an answer that runs to the close is never `keep_alive`).
            framing => Body::new(RawBody::new(
                tcp,
                buf,
                BodyState::of(framing),
                keep_alive,
                (self.clone(), authority.clone()),
            )),
        };
        let mut resp = Response::new(body);
        // The version stays 1.1: it is the upstream hop's, not the
        // client's (hyper answers the client in the client's version).
        *resp.status_mut() = status;
        *resp.headers_mut() = headers;
        Ok(resp)
    }

    /// One exchange whose request body streams: a hyper client connection
    /// over a pooled socket, driven in this task.
    async fn exchange_streaming(
        self: &Arc<Self>,
        authority: &Authority,
        req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        let (mut conn, mut reused) = match self.checkout(authority).await {
            Some(t) => (HyperConn::handshake(t).await?, true),
            None => (
                HyperConn::handshake(connect(authority).await?).await?,
                false,
            ),
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
                        conn = HyperConn::handshake(connect(authority).await?).await?;
                        reused = false;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }

    /// An exchange is over: pool its connection, or close it.
    fn done(&self, authority: &Authority, tcp: TcpStream, reusable: bool) {
        if reusable {
            self.put_back(authority.clone(), tcp);
        }
    }

    /// The most recently used idle connection that is still open.
    async fn checkout(&self, authority: &Authority) -> Option<TcpStream> {
        loop {
            let key = Key {
                pool: self.id,
                authority: authority.clone(),
            };
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
            let tcp = idle.tcp;
            if poll_fn(|cx| Poll::Ready(still_open(&tcp, cx))).await {
                return Some(tcp);
            }
        }
    }

    fn put_back(&self, authority: Authority, tcp: TcpStream) {
        let _ = IDLE.try_with(|idle| {
            let Ok(mut map) = idle.try_borrow_mut() else {
                return;
            };
            let key = Key {
                pool: self.id,
                authority,
            };
            let list = map.entry(key).or_default();
            let now = Instant::now();
            prune(list, now);
            if list.len() < MAX_IDLE_PER_UPSTREAM {
                list.push_back(Idle { tcp, since: now });
            }
        });
    }
}

/// An idle connection is still usable: nothing has arrived on it since its
/// last answer (neither the upstream's close nor stray bytes). Costs no
/// system call unless the reactor saw it become readable.
fn still_open(tcp: &TcpStream, cx: &mut Context<'_>) -> bool {
    match tcp.poll_read_ready(cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// A failed write: whether any of the request reached the socket.
enum Send {
    Unsent(std::io::Error),
    Partly(std::io::Error),
}

async fn send(tcp: &mut TcpStream, head: &[u8], rest: &[u8]) -> Result<(), Send> {
    let mut written = 0;
    for part in [head, rest] {
        let mut part = part;
        while !part.is_empty() {
            match tcp.write(part).await {
                Ok(0) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    return Err(if written == 0 {
                        Send::Unsent(e)
                    } else {
                        Send::Partly(e)
                    });
                }
                Ok(n) => {
                    written += n;
                    part = part.get(n..).unwrap_or_default();
                }
                Err(e) => {
                    return Err(if written == 0 {
                        Send::Unsent(e)
                    } else {
                        Send::Partly(e)
                    })
                }
            }
        }
    }
    Ok(())
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

async fn connect(authority: &Authority) -> Result<TcpStream, UpstreamError> {
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
                return Ok(tcp);
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

/// Where a response body read by [`RawBody`] stands.
enum BodyState {
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl BodyState {
    /// What is left to read of a body framed so.
    fn of(framing: Framing) -> BodyState {
        match framing {
            Framing::Empty => BodyState::Length(0),
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => BodyState::UntilClose,
        }
    }
}

/// A response body read from the connection, which it holds; once read to
/// the end, exactly, the connection goes back to the pool.
struct RawBody {
    tcp: Option<TcpStream>,
    /// Read but not yet handed on.
    buf: BytesMut,
    state: BodyState,
    keep_alive: bool,
    home: (Arc<Pool>, Authority),
    ended: bool,
}

impl RawBody {
    fn new(
        tcp: TcpStream,
        buf: BytesMut,
        state: BodyState,
        keep_alive: bool,
        home: (Arc<Pool>, Authority),
    ) -> RawBody {
        RawBody {
            tcp: Some(tcp),
            buf,
            state,
            keep_alive,
            home,
            ended: false,
        }
    }

    /// The body has ended: pool the connection if nothing follows it.
    fn finish(&mut self) {
        self.ended = true;
        if let Some(tcp) = self.tcp.take() {
            let (pool, authority) = &self.home;
            pool.done(authority, tcp, self.keep_alive && self.buf.is_empty());
        }
    }

    /// The next frame from what has been read; `None`: read more (or the
    /// body has ended).
    fn decode(&mut self) -> Result<Option<Frame<Bytes>>, WireError> {
        match &mut self.state {
            BodyState::Length(0) => {
                self.finish();
                Ok(None)
            }
            BodyState::Length(left) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                let data = self.buf.split_to(take).freeze();
                *left -= take as u64;
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(Frame::data(data)))
            }
            BodyState::Chunked(decoder) => match decoder.decode(&mut self.buf)? {
                Some(Decoded::Data(data)) => Ok(Some(Frame::data(data))),
                Some(Decoded::Trailers(map)) => Ok(Some(Frame::trailers(map))),
                Some(Decoded::End) => {
                    self.finish();
                    Ok(None)
                }
                None => Ok(None),
            },
            BodyState::UntilClose if self.buf.is_empty() => Ok(None),
            BodyState::UntilClose => Ok(Some(Frame::data(self.buf.split().freeze()))),
        }
    }

    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        self.tcp = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for RawBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.decode() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.ended => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return this.fail(Box::new(e)),
            }
            let Some(tcp) = this.tcp.as_mut() else {
                return this.fail("upstream connection lost".into());
            };
            if this.buf.capacity() - this.buf.len() < READ_CHUNK / 4 {
                this.buf.reserve(READ_CHUNK);
            }
            let read = std::pin::pin!(tcp.read_buf(&mut this.buf)).poll(cx);
            match ready!(read) {
                Ok(0) if matches!(this.state, BodyState::UntilClose) => {
                    this.ended = true;
                    this.tcp = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail("the upstream closed the connection mid-body".into()),
                Ok(_) => {}
                Err(e) => return this.fail(Box::new(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || matches!(self.state, BodyState::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}

type Driver = http1::Connection<TokioIo<TcpStream>, Body>;

/// A hyper client connection over a pooled socket, for one exchange whose
/// request body streams.
struct HyperConn {
    sender: http1::SendRequest<Body>,
    driver: Pin<Box<Driver>>,
    /// The driver future has completed: the connection is closed.
    closed: bool,
}

impl HyperConn {
    async fn handshake(tcp: TcpStream) -> Result<HyperConn, UpstreamError> {
        let (sender, driver) = http1::Builder::new().handshake(TokioIo::new(tcp)).await?;
        Ok(HyperConn {
            sender,
            driver: Box::pin(driver),
            closed: false,
        })
    }

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

    /// Usable for another request right now.
    fn ready(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx) && self.sender.is_ready()
    }

    /// The socket, out of hyper, if nothing hyper read is left unhandled.
    fn into_socket(self) -> Option<TcpStream> {
        drop(self.sender);
        let parts = Pin::into_inner(self.driver).into_parts();
        parts.read_buf.is_empty().then(|| parts.io.into_inner())
    }
}

/// A response body from a [`HyperConn`] that drives its connection and,
/// once read to the end, returns the socket to the pool.
struct PooledBody {
    body: Incoming,
    conn: Option<HyperConn>,
    home: Option<(Arc<Pool>, Authority)>,
}

impl PooledBody {
    /// The body has ended: pool the socket if it can take another request.
    fn finish(&mut self, cx: &mut Context<'_>) {
        if let (Some(mut conn), Some((pool, authority))) = (self.conn.take(), self.home.take()) {
            if conn.ready(cx) {
                if let Some(tcp) = conn.into_socket() {
                    pool.put_back(authority, tcp);
                }
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
