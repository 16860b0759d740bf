//! Serving HTTP/1.1 clients: postern's own lane for requests without a
//! body, hyper for everything else.
//!
//! Most requests through a gateway are `GET`s: a head and nothing after it.
//! For those postern reads the head, builds the `Request` and writes the
//! answer itself (one buffer, usually one TLS record, per answer) instead of
//! running hyper's HTTP/1 dispatcher, which costs several thousand
//! instructions per request in state-machine polls, a head timer and body
//! channels (`docs/decisions.md`, "postern serves bodyless HTTP/1.1 requests
//! itself").
//!
//! The lane takes only what is unambiguous, and hands the connection to
//! hyper, with every byte read so far, at the first request that is not:
//! - a head httparse (strict defaults, the same parser and settings hyper
//!   uses) cannot read, or one over [`MAX_HEAD_BYTES`] or [`MAX_HEADERS`];
//! - a version other than HTTP/1.1, a target not in origin form (`/…`),
//!   or the `CONNECT` method;
//! - any `Content-Length` or `Transfer-Encoding` (even `0`): the lane only
//!   serves requests that have no body by RFC 9112 §6.3, so it can never
//!   misjudge where a body ends and read part of one as the next request;
//! - `Upgrade`, `Expect` or `TE`, which need hyper's machinery.
//!
//! hyper then serves the rest of the connection exactly as it would have
//! from the start, so everything the lane does not take keeps hyper's
//! behaviour (its 400 for a bad head, its body framing checks). What the
//! lane does take, hyper reads as the same request (method, target, every
//! header in order): the `differential` property test checks it.
//!
//! Invariants of the lane:
//! - an answer's framing is postern's own: `Content-Length` from a body of
//!   known length, else chunked; the header map's `Content-Length`,
//!   `Transfer-Encoding` and `Connection` are never copied. A body that
//!   yields more or fewer bytes than announced closes the connection.
//! - answers to `HEAD`, `204` and `304` carry no body.
//! - every request head must arrive within `header_read_timeout`, counted
//!   from when the lane starts waiting for it (idle keep-alive included).
//! - `Connection: close` from the client, or a gateway shutdown, closes the
//!   connection after the answer, which then says `connection: close`.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::upstream::h1::{has_token, Span};
use crate::Body;

/// Header lines the lane accepts in one request head (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;
/// Bytes the lane accepts in one request head; a longer one goes to hyper.
pub(crate) const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long a clean close (TLS close_notify) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Answer bytes gathered before they are written.
const WRITE_CHUNK: usize = 64 * 1024;

/// A request's body as the service sees it: none (a request the lane
/// read, which has no body by construction) or hyper's.
#[derive(Debug)]
pub enum ReqBody {
    Empty,
    Hyper(Incoming),
}

impl HttpBody for ReqBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Hyper(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// What answers a connection's requests. Its future borrows it, so the lane
/// clones nothing per request (an `Arc` shared by every connection would
/// have its count bounce between the cores).
pub trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request<ReqBody>,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + '_;
}

/// What [`parse_request`] made of the bytes at the start of a buffer.
#[derive(Debug)]
// Returned once per request and taken apart at once: boxing the request
// would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Parsed {
    /// Not all of the head has arrived.
    Partial,
    /// A bodyless HTTP/1.1 request; its head was taken off the buffer.
    /// `close`: the client asked to close the connection after it.
    Request { req: Request<ReqBody>, close: bool },
    /// Not for the lane: hyper serves the connection from here. `taken` is
    /// the head, when it was already taken off the buffer (it goes back in
    /// front of it).
    Handover { taken: Option<Bytes> },
}

/// Read one request head at the start of `buf` (sans-IO). On
/// [`Parsed::Request`] the head's bytes are taken off `buf`, and the header
/// values share them.
pub(crate) fn parse_request(buf: &mut BytesMut) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    // Not initialized up front: httparse fills what it parses.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, &mut slots);
    let len = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Parsed::Partial,
        // Malformed, too many headers, too long: hyper gives its answer.
        _ => return Parsed::Handover { taken: None },
    };
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parsed::Handover { taken: None };
    };
    if req.version != Some(1) || !target.starts_with('/') || method == "CONNECT" {
        return Parsed::Handover { taken: None };
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Handover { taken: None };
    };
    // Where the target, each name and each value sit, so that they can
    // share the head's bytes once it is split off.
    let mut spans = [(Span::default(), Span::default()); MAX_HEADERS];
    let count = req.headers.len();
    let mut close = false;
    for (span, h) in spans.iter_mut().zip(req.headers.iter()) {
        let name = h.name.as_bytes();
        let needs_hyper = match name.len() {
            2 => name.eq_ignore_ascii_case(b"te"),
            6 => name.eq_ignore_ascii_case(b"expect"),
            7 => name.eq_ignore_ascii_case(b"upgrade"),
            14 => name.eq_ignore_ascii_case(b"content-length"),
            17 => name.eq_ignore_ascii_case(b"transfer-encoding"),
            10 => {
                if name.eq_ignore_ascii_case(b"connection") {
                    close |= has_token(h.value, b"close");
                }
                false
            }
            _ => false,
        };
        if needs_hyper {
            return Parsed::Handover { taken: None };
        }
        *span = (Span::of(buf, name), Span::of(buf, h.value));
    }
    let target = Span::of(buf, target.as_bytes());
    let head = buf.split_to(len).freeze();
    let uri = match head.get(target.range()) {
        Some(_) => Uri::from_maybe_shared(head.slice(target.range())),
        None => return Parsed::Handover { taken: Some(head) },
    };
    let Ok(uri) = uri else {
        return Parsed::Handover { taken: Some(head) };
    };
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, value) in spans.iter().take(count) {
        let Some(name) = head
            .get(name.range())
            .and_then(|n| HeaderName::from_bytes(n).ok())
        else {
            return Parsed::Handover { taken: Some(head) };
        };
        if head.get(value.range()).is_none() {
            return Parsed::Handover { taken: Some(head) };
        }
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(value.range())) else {
            return Parsed::Handover { taken: Some(head) };
        };
        headers.append(name, value);
    }
    let mut req = Request::new(ReqBody::Empty);
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Parsed::Request { req, close }
}

/// How an answer's body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body at all (`HEAD`, `204`, `304`).
    None,
    Length(u64),
    Chunked,
}

/// The framing of an answer with `status` and a body of `hint`, to a
/// request that was (`head_request`) or was not a `HEAD`.
pub(crate) fn framing(status: StatusCode, hint: &SizeHint, head_request: bool) -> Framing {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(n) = hint.exact() {
        Framing::Length(n)
    } else {
        Framing::Chunked
    }
}

/// Write an answer's head: status line, `headers` (less framing and
/// connection headers, which are postern's to write), `date` if the map has
/// none, the framing, `connection: close` when closing, blank line.
pub(crate) fn write_response_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let keep_length = framing == Framing::None;
    let mut dated = false;
    for (name, value) in headers {
        dated |= *name == DATE;
        // A HEAD/204/304 answer may state the length it would have had.
        if (*name == CONTENT_LENGTH && !keep_length)
            || *name == TRANSFER_ENCODING
            || *name == CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !dated {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append the current time as an HTTP date (RFC 9110 §5.6.7), formatted
/// at most once a second per thread.
fn http_date(out: &mut BytesMut) {
    thread_local! {
        static CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, format_http_date(secs));
        }
        out.extend_from_slice(&c.1);
    });
}

/// `secs` since the Unix epoch as `Sun, 06 Nov 1994 08:49:37 GMT`.
fn format_http_date(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hour, min, sec) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut s = [0u8; 29];
    let two = |v: u64| [b'0' + (v / 10 % 10) as u8, b'0' + (v % 10) as u8];
    let wd = DAYS[(days % 7) as usize];
    let mo = MONTHS[((month - 1).clamp(0, 11)) as usize];
    let y = year.clamp(0, 9999) as u64;
    let parts: [&[u8]; 14] = [
        wd,
        b", ",
        &two(day as u64),
        b" ",
        mo,
        b" ",
        &[
            b'0' + (y / 1000) as u8,
            b'0' + (y / 100 % 10) as u8,
            b'0' + (y / 10 % 10) as u8,
            b'0' + (y % 10) as u8,
        ],
        b" ",
        &two(hour),
        b":",
        &two(min),
        b":",
        &two(sec),
        b" GMT",
    ];
    let mut at = 0;
    for p in parts {
        if let Some(dst) = s.get_mut(at..at + p.len()) {
            dst.copy_from_slice(p);
        }
        at += p.len();
    }
    s
}

/// Serve one HTTP/1.1 connection: the lane while requests are bodyless,
/// then hyper (`hyper_h1`) for the rest of it from the first that is not.
/// `svc` answers each request; `stop` turning true is a graceful shutdown.
pub(crate) async fn serve<IO, H>(
    io: IO,
    svc: H,
    hyper_h1: Arc<hyper::server::conn::http1::Builder>,
    header_read_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut lane = Lane {
        io,
        buf: BytesMut::with_capacity(8 * 1024),
        out: BytesMut::with_capacity(8 * 1024),
    };
    match lane.run(&svc, header_read_timeout, &stop).await {
        End::Closed => {}
        End::Close => {
            // close_notify, bounded: a client that reads nothing must not
            // hold the connection by leaving the alert unsent.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, lane.io.shutdown()).await;
        }
        End::Handover(taken) => {
            let pre = match taken {
                None => lane.buf.freeze(),
                Some(head) => {
                    let mut all = BytesMut::with_capacity(head.len() + lane.buf.len());
                    all.extend_from_slice(&head);
                    all.extend_from_slice(&lane.buf);
                    all.freeze()
                }
            };
            let io = Rewind {
                pre,
                inner: lane.io,
            };
            let svc = Arc::new(svc);
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let svc = svc.clone();
                async move { svc.call(req.map(ReqBody::Hyper)).await }
            });
            let fut = hyper_h1
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades();
            tokio::pin!(fut);
            if *stop.borrow() {
                fut.as_mut().graceful_shutdown();
            } else {
                tokio::select! {
                    _ = fut.as_mut() => return,
                    _ = stop.changed() => fut.as_mut().graceful_shutdown(),
                }
            }
            let _ = fut.await;
        }
    }
}

/// What ended a wait for request bytes.
enum Woke {
    Read(io::Result<usize>),
    Timer,
    Stop,
}

/// The gateway is shutting down (or its stop signal is gone): a lock-free
/// look at the signal's version.
fn stopping(stop: &watch::Receiver<bool>) -> bool {
    !matches!(stop.has_changed(), Ok(false))
}

/// How the lane left a connection.
enum End {
    /// The peer is gone, or the connection broke: nothing more to send.
    Closed,
    /// Close it cleanly (TLS close_notify).
    Close,
    /// hyper serves it from here.
    Handover(Option<Bytes>),
}

struct Lane<IO> {
    io: IO,
    /// What was read and not yet parsed.
    buf: BytesMut,
    /// The answer being written.
    out: BytesMut,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Lane<IO> {
    async fn run<H: Handler>(
        &mut self,
        svc: &H,
        header_read_timeout: Duration,
        stop: &watch::Receiver<bool>,
    ) -> End {
        // One timer for the connection. It is re-armed lazily: each head
        // only moves `deadline`, and when the timer fires before it, the
        // timer is set to it (no timer-wheel work per request).
        let mut deadline = Instant::now() + header_read_timeout;
        let timer = tokio::time::sleep_until(deadline);
        tokio::pin!(timer);
        // The stop signal wakes this task through one registration made
        // here and kept for the connection; between wake-ups a stop is seen
        // by an atomic load (`stopping`). Polling `changed()` while waiting
        // for each head would take the signal's waiter lock, shared by
        // every connection, two or three times per request.
        if *stop.borrow() {
            return End::Close;
        }
        let mut watcher = stop.clone();
        let registered = watcher.changed();
        tokio::pin!(registered);
        let stopped_already =
            std::future::poll_fn(|cx| Poll::Ready(registered.as_mut().poll(cx).is_ready())).await;
        if stopped_already {
            return End::Close;
        }
        loop {
            let mut waiting = false;
            let (req, close) = loop {
                match parse_request(&mut self.buf) {
                    Parsed::Request { req, close } => break (req, close),
                    Parsed::Handover { taken } => return End::Handover(taken),
                    Parsed::Partial => {}
                }
                if !waiting {
                    waiting = true;
                    deadline = Instant::now() + header_read_timeout;
                }
                let (io, buf) = (&mut self.io, &mut self.buf);
                let woke = std::future::poll_fn(|cx| {
                    if stopping(stop) {
                        return Poll::Ready(Woke::Stop);
                    }
                    let read = io.read_buf(buf);
                    tokio::pin!(read);
                    if let Poll::Ready(r) = read.poll(cx) {
                        return Poll::Ready(Woke::Read(r));
                    }
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(Woke::Timer),
                        Poll::Pending => Poll::Pending,
                    }
                })
                .await;
                match woke {
                    Woke::Read(Ok(0) | Err(_)) => return End::Closed,
                    Woke::Read(Ok(_)) => {}
                    Woke::Timer if Instant::now() >= deadline => return End::Close,
                    Woke::Timer => timer.as_mut().reset(deadline),
                    // Mid-head or idle: nothing is in flight.
                    Woke::Stop => return End::Close,
                }
            };
            let head_request = req.method() == Method::HEAD;
            let resp = match svc.call(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let close = close || stopping(stop);
            if self.respond(resp, head_request, close).await.is_err() {
                return End::Closed;
            }
            if close {
                return End::Close;
            }
        }
    }

    /// Write one answer. An error leaves the connection unusable (the
    /// answer may be cut short): the caller drops it.
    async fn respond(
        &mut self,
        resp: Response<Body>,
        head_request: bool,
        close: bool,
    ) -> io::Result<()> {
        let (parts, mut body) = resp.into_parts();
        let framing = framing(parts.status, &body.size_hint(), head_request);
        self.out.clear();
        write_response_head(&mut self.out, parts.status, &parts.headers, framing, close);
        drop(parts);
        if framing == Framing::None {
            drop(body);
            return self.write_out().await;
        }
        let mut sent: u64 = 0;
        loop {
            // Gather what the body has ready; write when it has to wait.
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(f) => f,
                Poll::Pending => {
                    self.write_out().await?;
                    body.frame().await
                }
            };
            let data = match frame {
                None => break,
                Some(Err(_)) => return Err(io::Error::other("answer body failed")),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => d,
                    // Trailers: only to clients that asked (TE), who hyper serves.
                    Err(_) => continue,
                },
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            match framing {
                Framing::Length(n) if sent > n => {
                    return Err(io::Error::other("answer body longer than announced"))
                }
                Framing::Chunked => {
                    let mut hex = [0u8; 16];
                    let digits = hex_digits(data.len() as u64, &mut hex);
                    self.out.extend_from_slice(digits);
                    self.out.extend_from_slice(b"\r\n");
                    self.push(data).await?;
                    self.out.extend_from_slice(b"\r\n");
                }
                _ => self.push(data).await?,
            }
        }
        match framing {
            Framing::Length(n) if sent != n => {
                return Err(io::Error::other("answer body shorter than announced"))
            }
            Framing::Chunked => self.out.extend_from_slice(b"0\r\n\r\n"),
            _ => {}
        }
        self.write_out().await
    }

    /// Add `data` to the answer, writing it through when it is large.
    async fn push(&mut self, data: Bytes) -> io::Result<()> {
        if self.out.len() + data.len() <= WRITE_CHUNK {
            self.out.extend_from_slice(&data);
            Ok(())
        } else {
            self.write_out().await?;
            self.io.write_all(&data).await
        }
    }

    async fn write_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }
}

/// `n` in lower-case hex, without leading zeros.
fn hex_digits(n: u64, buf: &mut [u8; 16]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        if let Some(slot) = buf.get_mut(i) {
            *slot = HEX[(v & 0xf) as usize];
        }
        v >>= 4;
        if v == 0 || i == 0 {
            break;
        }
    }
    buf.get(i..).unwrap_or_default()
}

/// An I/O stream with bytes already read put back in front of it.
struct Rewind<T> {
    pre: Bytes,
    inner: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(this.pre.get(..n).unwrap_or_default());
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(raw: &[u8]) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let p = parse_request(&mut buf);
        (p, buf)
    }

    #[test]
    fn a_bodyless_request_is_read_and_what_follows_it_stays() {
        let (p, rest) = parse(
            b"GET /a/b?c=d HTTP/1.1\r\nHost: example\r\nX-Two: 1\r\nx-two: 2\r\n\r\nGET /next",
        );
        let Parsed::Request { req, close } = p else {
            panic!("{p:?}")
        };
        assert!(!close);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().path(), "/a/b");
        assert_eq!(req.uri().query(), Some("c=d"));
        assert_eq!(req.version(), http::Version::HTTP_11);
        assert_eq!(req.headers()["host"], "example");
        let two: Vec<_> = req.headers().get_all("x-two").iter().collect();
        assert_eq!(two, ["1", "2"]);
        assert!(req.body().is_end_stream());
        assert_eq!(req.body().size_hint().exact(), Some(0));
        assert_eq!(&rest[..], b"GET /next");
    }

    #[test]
    fn connection_close_is_seen_in_any_case_and_in_a_list() {
        for value in ["close", "CLOSE", "keep-alive, Close", " foo ,close "] {
            let raw = format!("GET / HTTP/1.1\r\nConnection: {value}\r\n\r\n");
            let (p, _) = parse(raw.as_bytes());
            assert!(
                matches!(p, Parsed::Request { close: true, .. }),
                "{value}: {p:?}"
            );
        }
        let (p, _) = parse(b"GET / HTTP/1.1\r\nConnection: closed, keep-alive\r\n\r\n");
        assert!(matches!(p, Parsed::Request { close: false, .. }), "{p:?}");
    }

    #[test]
    fn requests_that_may_carry_a_body_or_need_hyper_are_handed_over_untouched() {
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        let long = format!(
            "GET / HTTP/1.1\r\nA: {}\r\n\r\n",
            "x".repeat(MAX_HEAD_BYTES)
        );
        let cases: Vec<&[u8]> = vec![
            b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nTRANSFER-ENCODING: identity\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n",
            b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.1\r\nTE: trailers\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"CONNECT example:443 HTTP/1.1\r\n\r\n",
            b"GET http://example/ HTTP/1.1\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\n\r\n",
            // Malformed: hyper answers them (400).
            b"GET / HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"G\x01T / HTTP/1.1\r\n\r\n",
            many.as_bytes(),
            long.as_bytes(),
        ];
        for raw in cases {
            let (p, rest) = parse(raw);
            assert!(
                matches!(p, Parsed::Handover { taken: None }),
                "{:?}: {p:?}",
                String::from_utf8_lossy(raw)
            );
            assert_eq!(&rest[..], raw, "the buffer is handed over whole");
        }
    }

    #[test]
    fn a_head_the_http_types_refuse_after_parsing_is_handed_over_with_its_bytes() {
        // httparse takes these targets, the URI parser does not.
        for raw in [
            &b"GET /a<b> HTTP/1.1\r\n\r\nnext"[..],
            b"GET /` HTTP/1.1\r\nX: y\r\n\r\n",
        ] {
            let (p, rest) = parse(raw);
            let Parsed::Handover { taken: Some(head) } = p else {
                panic!("{p:?}")
            };
            let mut all = head.to_vec();
            all.extend_from_slice(&rest);
            assert_eq!(all, raw);
        }
    }

    #[test]
    fn answer_framing_is_postern_s_own() {
        let exact = SizeHint::with_exact(5);
        let unknown = SizeHint::new();
        assert_eq!(framing(StatusCode::OK, &exact, false), Framing::Length(5));
        assert_eq!(framing(StatusCode::OK, &unknown, false), Framing::Chunked);
        assert_eq!(framing(StatusCode::OK, &exact, true), Framing::None);
        assert_eq!(
            framing(StatusCode::NO_CONTENT, &exact, false),
            Framing::None
        );
        assert_eq!(
            framing(StatusCode::NOT_MODIFIED, &unknown, false),
            Framing::None
        );

        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("999"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let head_of = |h: &HeaderMap, framing, close| {
            let mut out = BytesMut::new();
            write_response_head(&mut out, StatusCode::OK, h, framing, close);
            String::from_utf8(out.to_vec()).unwrap()
        };
        let head = |framing, close| head_of(&h, framing, close);
        let s = head(Framing::Length(5), false);
        assert!(s.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ndate: "), "{s}");
        assert!(s.ends_with(" GMT\r\ncontent-length: 5\r\n\r\n"), "{s}");
        assert_eq!(s.matches("content-length").count(), 1, "{s}");
        assert!(!s.contains("transfer-encoding") && !s.contains("connection"));
        let s = head(Framing::Chunked, true);
        assert!(
            s.ends_with("\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"),
            "{s}"
        );
        assert!(!s.contains("content-length"), "{s}");
        // A HEAD answer keeps the length it would have had.
        let s = head(Framing::None, false);
        assert!(s.contains("\r\ncontent-length: 999\r\n"), "{s}");
        assert!(!s.contains("transfer-encoding"), "{s}");
        // A date of the service's own is not doubled.
        let mut h = h.clone();
        h.insert(
            "date",
            HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"),
        );
        assert_eq!(
            head_of(&h, Framing::Length(0), false)
                .matches("date:")
                .count(),
            1
        );
    }

    #[test]
    fn http_dates_are_rfc_9110_imf_fixdate() {
        assert_eq!(
            &format_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(&format_http_date(0), b"Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            &format_http_date(951_782_400),
            b"Tue, 29 Feb 2000 00:00:00 GMT"
        );
    }

    #[test]
    fn chunk_sizes_are_lower_hex() {
        let mut b = [0u8; 16];
        assert_eq!(hex_digits(0, &mut b), b"0");
        assert_eq!(hex_digits(255, &mut b), b"ff");
        assert_eq!(hex_digits(65_536, &mut b), b"10000");
        assert_eq!(hex_digits(u64::MAX, &mut b), b"ffffffffffffffff");
    }

    proptest! {
        #[test]
        fn any_bytes_are_read_handed_over_or_waited_for_never_a_panic(
            raw in proptest::collection::vec(any::<u8>(), 0..512)
        ) {
            let (p, rest) = parse(&raw);
            match p {
                Parsed::Request { req, .. } => {
                    // Only bodyless requests, and the head was taken off.
                    for name in ["content-length", "transfer-encoding", "upgrade", "expect", "te"] {
                        prop_assert!(!req.headers().contains_key(name));
                    }
                    prop_assert!(rest.len() < raw.len());
                    prop_assert!(raw.ends_with(&rest));
                }
                Parsed::Handover { taken: None } | Parsed::Partial => prop_assert_eq!(&rest[..], &raw[..]),
                Parsed::Handover { taken: Some(head) } => {
                    let mut all = head.to_vec();
                    all.extend_from_slice(&rest);
                    prop_assert_eq!(all, raw);
                }
            }
        }

        #[test]
        fn a_head_split_anywhere_waits_for_the_rest(cut in 0usize..60) {
            let raw = b"GET /x?y HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
            let cut = cut.min(raw.len() - 1);
            let (p, rest) = parse(&raw[..cut]);
            prop_assert!(matches!(p, Parsed::Partial), "{:?}", p);
            prop_assert_eq!(&rest[..], &raw[..cut]);
        }

        #[test]
        fn http_dates_match_the_time_crate(secs in 0u64..253_402_300_799) {
            let t = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
            let f = time::macros::format_description!(
                "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
            );
            prop_assert_eq!(String::from_utf8(format_http_date(secs).to_vec()).unwrap(), t.format(&f).unwrap());
        }
    }

    // The lane and the handover, driven over an in-memory connection.

    /// Answers `METHOD path body-length` (a body read in full).
    struct Echo;

    impl Handler for Echo {
        async fn call(&self, req: Request<ReqBody>) -> Result<Response<Body>, Infallible> {
            let (parts, body) = req.into_parts();
            let n = body.collect().await.map_or(0, |b| b.to_bytes().len());
            let text = format!("{} {} {n}", parts.method, parts.uri);
            Ok(Response::new(crate::respond::full(text)))
        }
    }

    /// Answers every request with a [`Dribble`] of `chunks`.
    struct Dribbler {
        chunks: Vec<Bytes>,
        hint: Option<u64>,
    }

    impl Handler for Dribbler {
        async fn call(&self, _req: Request<ReqBody>) -> Result<Response<Body>, Infallible> {
            let body = Dribble {
                chunks: self.chunks.clone(),
                hint: self.hint,
                pending: false,
            };
            Ok(Response::new(BodyExt::boxed(body)))
        }
    }

    fn start(
        timeout: Duration,
    ) -> (
        tokio::io::DuplexStream,
        watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (stop_tx, stop) = watch::channel(false);
        let h1 = Arc::new(hyper::server::conn::http1::Builder::new());
        let task = tokio::spawn(serve(server, Echo, h1, timeout, stop));
        (client, stop_tx, task)
    }

    async fn read_all(c: &mut tokio::io::DuplexStream) -> String {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).into_owned()
    }

    /// The bodies of the answers in `raw`, in order (Content-Length framed).
    fn bodies(raw: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = raw;
        while let Some(end) = rest.find("\r\n\r\n") {
            let head = rest[..end].to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            out.push(rest[end + 4..end + 4 + len].to_string());
            rest = &rest[end + 4 + len..];
        }
        out
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_across_the_handover() {
        let (mut c, _stop, task) = start(Duration::from_secs(30));
        let inner = "GET /smuggled HTTP/1.1\r\n\r\n";
        let raw = format!(
            "GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\n\
             POST /c HTTP/1.1\r\nContent-Length: {}\r\n\r\n{inner}\
             GET /d HTTP/1.1\r\nConnection: close\r\n\r\n",
            inner.len()
        );
        c.write_all(raw.as_bytes()).await.unwrap();
        let got = read_all(&mut c).await;
        let heads = got.matches("HTTP/1.1 200 OK").count();
        assert_eq!(heads, 4, "{got}");
        let bodies = bodies(&got);
        assert_eq!(bodies[0], "GET /a 0");
        // The HEAD answer states a length and carries no body.
        assert_eq!(bodies[1], "");
        assert_eq!(bodies[2], format!("POST /c {}", inner.len()));
        assert_eq!(bodies[3], "GET /d 0");
        assert!(!got.contains("/smuggled "), "{got}");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn close_is_honoured_and_said() {
        let (mut c, _stop, task) = start(Duration::from_secs(30));
        c.write_all(b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut c).await;
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
        assert!(got.contains("\r\nconnection: close\r\n"), "{got}");
        assert!(got.ends_with("GET /a 0"), "{got}");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_malformed_head_gets_hyper_s_400() {
        let (mut c, _stop, _task) = start(Duration::from_secs(30));
        c.write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nBad Name: x\r\n\r\n")
            .await
            .unwrap();
        let got = read_all(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.contains("HTTP/1.1 400 Bad Request\r\n"), "{got}");
        assert!(!got.contains("GET /b"), "{got}");
        // A target the URI parser refuses, after httparse took the head.
        let (mut c, _stop, _task) = start(Duration::from_secs(30));
        c.write_all(b"GET /a<b> HTTP/1.1\r\n\r\n").await.unwrap();
        let got = read_all(&mut c).await;
        assert!(got.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{got}");
    }

    #[tokio::test]
    async fn slow_and_idle_clients_are_closed_at_the_head_deadline() {
        let t = Duration::from_millis(300);
        // Idle after one answer.
        let (mut c, _stop, task) = start(t);
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let got = read_all(&mut c).await;
        assert!(got.ends_with("GET /a 0"), "{got}");
        assert!(started.elapsed() >= t && started.elapsed() < Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        // A head that trickles in and never ends, across several deadlines'
        // worth of re-arming.
        let (mut c, _stop, task) = start(t);
        let started = std::time::Instant::now();
        for b in b"GET /slow HTTP/1.1\r\nX: " {
            if c.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = read_all(&mut c).await;
        assert_eq!(got, "", "nothing is answered");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections_and_finishes_the_answer_in_flight() {
        let (mut c, stop, task) = start(Duration::from_secs(30));
        c.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let mut first = vec![0u8; 4096];
        let n = c.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..n]).ends_with("GET /a 0"));
        stop.send(true).unwrap();
        let rest = read_all(&mut c).await;
        assert_eq!(rest, "");
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A body that yields `chunks` one poll apart, announcing `hint`.
    struct Dribble {
        chunks: Vec<Bytes>,
        hint: Option<u64>,
        pending: bool,
    }

    impl HttpBody for Dribble {
        type Data = Bytes;
        type Error = crate::BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, crate::BoxError>>> {
            let this = self.get_mut();
            this.pending = !this.pending;
            if this.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if this.chunks.is_empty() {
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Ok(Frame::data(this.chunks.remove(0)))))
        }
        fn size_hint(&self) -> SizeHint {
            self.hint.map_or_else(SizeHint::new, SizeHint::with_exact)
        }
    }

    async fn answer_with(chunks: &[&'static str], hint: Option<u64>) -> String {
        let chunks: Vec<Bytes> = chunks
            .iter()
            .map(|c| Bytes::from_static(c.as_bytes()))
            .collect();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (_stop_tx, stop) = watch::channel(false);
        let svc = Dribbler { chunks, hint };
        let h1 = Arc::new(hyper::server::conn::http1::Builder::new());
        tokio::spawn(serve(server, svc, h1, Duration::from_secs(30), stop));
        client
            .write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        read_all(&mut client).await
    }

    #[tokio::test]
    async fn streamed_answers_are_chunked_and_a_wrong_length_cuts_the_connection() {
        let got = answer_with(&["ab", "", "cde"], None).await;
        assert!(got.contains("\r\ntransfer-encoding: chunked\r\n"), "{got}");
        assert!(
            got.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
            "{got}"
        );
        let got = answer_with(&["ab", "cde"], Some(5)).await;
        assert!(
            got.ends_with("\r\ncontent-length: 5\r\nconnection: close\r\n\r\nabcde"),
            "{got}"
        );
        // Longer than announced: not a byte beyond the length.
        let got = answer_with(&["ab", "cdefg"], Some(5)).await;
        assert!(got.ends_with("\r\n\r\nab"), "{got}");
        // Shorter: the connection ends without a complete answer.
        let got = answer_with(&["ab"], Some(5)).await;
        assert!(got.ends_with("\r\n\r\nab"), "{got}");
    }
}

/// The lane against hyper on the same bytes: whatever the lane accepts,
/// hyper's HTTP/1 server reads as the same request (method, target and
/// every header, in order). The lane makes no parsing decision of its own.
#[cfg(test)]
mod differential {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Mutex;

    type Seen = (String, String, Vec<(String, Vec<u8>)>);

    /// What a request says: method, target, every header in order.
    fn seen<B>(req: &Request<B>) -> Seen {
        (
            req.method().to_string(),
            req.uri().to_string(),
            req.headers()
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// The first request hyper's server reads from `raw`, if any.
    fn seen_by_hyper(raw: &[u8]) -> Option<Seen> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(256 * 1024);
            let got: Arc<Mutex<Option<Seen>>> = Arc::default();
            let keep = got.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let seen = seen(&req);
                let mut slot = keep.lock().unwrap();
                if slot.is_none() {
                    *slot = Some(seen);
                }
                async { Ok::<_, Infallible>(Response::new(crate::respond::full("ok"))) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), svc);
            let task = tokio::spawn(conn);
            client.write_all(raw).await.unwrap();
            client.shutdown().await.unwrap();
            let mut sink = Vec::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut sink)).await;
            task.abort();
            let seen = got.lock().unwrap().take();
            seen
        })
    }

    /// Mostly one of `usual`, sometimes one of `odd`.
    fn mostly(usual: Vec<&'static str>, odd: Vec<&'static str>) -> BoxedStrategy<&'static str> {
        prop_oneof![
            8 => prop::sample::select(usual),
            1 => prop::sample::select(odd),
        ]
        .boxed()
    }

    fn head() -> impl Strategy<Value = Vec<u8>> {
        let method = mostly(
            vec!["GET", "HEAD", "DELETE", "OPTIONS", "PURGE"],
            vec!["get", "G@T", "", "GET ", "CONNECT", "M\u{e4}"],
        );
        let target = mostly(
            vec![
                "/",
                "/a/b?c=d",
                "/%2e%2e/x",
                "//x",
                "/a;b",
                "/?",
                "/%00",
                "/a?b=/c",
            ],
            vec![
                "/a#b",
                "/a<b",
                "*",
                "http://h/x",
                "/\u{e4}",
                "/a b",
                "/a\tb",
                "",
                "h:1",
            ],
        );
        let version = mostly(
            vec!["HTTP/1.1"],
            vec!["HTTP/1.0", "HTTP/1.2", "http/1.1", "HTTP/2"],
        );
        let name = mostly(
            vec![
                "Host",
                "host",
                "X-A",
                "x_a",
                "Connection",
                "Authorization",
                "Cookie",
                "x-a",
            ],
            vec![
                "X-A ",
                " X-A",
                "Content-Length",
                "Transfer-Encoding",
                "Upgrade",
                "X\u{e4}",
                "X:Y",
                "",
                "Expect",
                "TE",
                "X\u{0}",
            ],
        );
        let value = mostly(
            vec![
                "v",
                "",
                " v ",
                "a, b",
                "close",
                "keep-alive, Close",
                "a\tb",
                "0",
                "a  b",
            ],
            vec![
                "\u{e4}", "a\u{0}b", "a\rb", "x\r\n y", "\u{7f}", "h2c", "chunked",
            ],
        );
        let eol = mostly(vec!["\r\n"], vec!["\n", "\r"]);
        (
            method,
            target,
            version,
            prop::collection::vec((name, value, eol.clone()), 0..6),
            eol,
        )
            .prop_map(|(m, t, v, headers, end)| {
                let mut raw = format!("{m} {t} {v}\r\n");
                for (n, val, e) in headers {
                    raw.push_str(&format!("{n}: {val}{e}"));
                }
                raw.push_str(end);
                raw.into_bytes()
            })
    }

    #[test]
    fn the_comparison_sees_requests_and_differences() {
        let raw = b"GET /a?b HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n";
        let mut buf = BytesMut::from(&raw[..]);
        let Parsed::Request { req, .. } = parse_request(&mut buf) else {
            panic!("not read")
        };
        let lane = seen(&req);
        assert_eq!(lane.2.len(), 3);
        assert_eq!(Some(lane.clone()), seen_by_hyper(raw));
        assert_ne!(
            Some(lane),
            seen_by_hyper(b"GET /a?b HTTP/1.1\r\nHost: h\r\n\r\n")
        );
        assert_eq!(
            seen_by_hyper(b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n"),
            None
        );
    }

    // About half of these heads are ones the lane takes (the rest it hands
    // over, which is hyper's business); each is compared with hyper's reading.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn whatever_the_lane_reads_hyper_reads_the_same(raw in head()) {
            let mut buf = BytesMut::from(&raw[..]);
            if let Parsed::Request { req, .. } = parse_request(&mut buf) {
                let lane = seen(&req);
                let hyper = seen_by_hyper(&raw);
                prop_assert_eq!(Some(lane), hyper, "{:?}", String::from_utf8_lossy(&raw));
            }
        }
    }
}
