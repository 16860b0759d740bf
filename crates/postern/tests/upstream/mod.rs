//! How the gateway talks to its upstream, seen from both ends: a real TLS
//! client in front, a scripted HTTP/1.1 upstream (a plain TcpListener
//! answering raw bytes) behind. Black-box: these hold whatever client the
//! gateway uses to reach its upstreams.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::support::*;

// ---------------------------------------------------------------------------
// Wire: HTTP/1.1 message framing over any byte stream (both ends use it).

/// A request or response head: the first line and the header fields
/// (names lowercased, in order, repeats kept).
#[derive(Debug, Clone)]
struct Head {
    line: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn parse(raw: &[u8]) -> Head {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap_or_default().to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l
                    .split_once(':')
                    .unwrap_or_else(|| panic!("bad header line {l:?}"));
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        Head { line, headers }
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn chunked(&self) -> bool {
        self.has_token("transfer-encoding", "chunked")
    }

    fn content_length(&self) -> Option<usize> {
        self.get("content-length").map(|v| v.parse().unwrap())
    }

    fn method(&self) -> &str {
        self.line.split(' ').next().unwrap_or_default()
    }

    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or_default()
    }
}

/// A buffered HTTP/1.1 reader (and the stream, for writing).
struct Wire<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + Unpin> Wire<S> {
    fn new(s: S) -> Self {
        Wire { s, buf: Vec::new() }
    }

    /// Read more bytes; false at EOF or on an error.
    async fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 16 * 1024];
        match self.s.read(&mut tmp).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
        }
    }

    /// Everything up to and including `delim`, or None at EOF.
    async fn until(&mut self, delim: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.windows(delim.len()).position(|w| w == delim) {
                return Some(self.buf.drain(..i + delim.len()).collect());
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// The next head, or None when the peer closed (or sent a partial head).
    async fn head(&mut self) -> Option<Head> {
        let raw = self.until(b"\r\n\r\n").await?;
        Some(Head::parse(&raw))
    }

    async fn chunked_body(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line = self.until(b"\r\n").await?;
            let line = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
            if size == 0 {
                // Trailer fields, then the empty line.
                while self.until(b"\r\n").await? != b"\r\n" {}
                return Some(out);
            }
            out.extend(self.exact(size).await?);
            assert_eq!(self.exact(2).await?, b"\r\n", "chunk not followed by CRLF");
        }
    }

    /// A request body as its head frames it.
    async fn request_body(&mut self, h: &Head) -> Option<Vec<u8>> {
        if h.chunked() {
            self.chunked_body().await
        } else {
            self.exact(h.content_length().unwrap_or(0)).await
        }
    }

    /// One response; `to_head`: it answers a HEAD request (no body follows).
    async fn response(&mut self, to_head: bool) -> Resp {
        let h = self.head().await.expect("a response head");
        assert!(
            h.line.starts_with("HTTP/1.1 "),
            "not a status line: {:?} (stray bytes before the response?)",
            h.line
        );
        let status: u16 = h.line[9..12].parse().unwrap();
        let body = if to_head || status == 204 || status == 304 {
            Vec::new()
        } else if h.chunked() {
            self.chunked_body().await.expect("a complete chunked body")
        } else if let Some(n) = h.content_length() {
            self.exact(n).await.expect("a complete body")
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        Resp {
            status,
            headers: h.headers,
            body,
        }
    }
}

// ---------------------------------------------------------------------------
// The scripted upstream.

/// A request as the upstream received it.
#[derive(Debug, Clone)]
struct Req {
    head: Head,
    body: Vec<u8>,
}

struct Reply {
    bytes: Vec<u8>,
    /// Close the connection after this answer (whatever it says).
    close: bool,
    delay: Duration,
}

impl Reply {
    fn raw(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            close: false,
            delay: Duration::ZERO,
        }
    }
    fn then_close(mut self) -> Reply {
        self.close = true;
        self
    }
    fn after(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// `200 OK` with a Content-Length body (keep-alive).
fn ok(body: &[u8]) -> Reply {
    let mut b = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    b.extend_from_slice(body);
    Reply::raw(b)
}

struct Upstream {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Req>>>,
    task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Serve persistent connections: every request (body read in full) is
    /// answered with `handler`'s reply; a request's `Connection: close` is
    /// honoured.
    async fn serve(handler: impl Fn(&Req) -> Reply + Send + Sync + 'static) -> Upstream {
        let handler = Arc::new(handler);
        Upstream::custom(move |mut w, seen| {
            let handler = handler.clone();
            async move {
                while let Some(head) = w.head().await {
                    let Some(body) = w.request_body(&head).await else {
                        return;
                    };
                    let req = Req { head, body };
                    seen.lock().unwrap().push(req.clone());
                    let reply = handler(&req);
                    if !reply.delay.is_zero() {
                        tokio::time::sleep(reply.delay).await;
                    }
                    if w.s.write_all(&reply.bytes).await.is_err() {
                        return;
                    }
                    if reply.close || req.head.has_token("connection", "close") {
                        return; // dropping the socket closes it
                    }
                }
            }
        })
        .await
    }

    /// Each accepted connection is handed to `conn`, with the request log.
    async fn custom<F, Fut>(conn: F) -> Upstream
    where
        F: Fn(Wire<TcpStream>, Arc<Mutex<Vec<Req>>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (a, s) = (accepts.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(conn(Wire::new(sock), s.clone()));
            }
        });
        Upstream {
            addr,
            accepts,
            seen,
            task,
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// The gateway in front of it, and the client.

/// The demo gateway with its `echo` upstream pointed at `upstream`
/// (and `[gateway] upstream_timeout_secs`, when given).
async fn gateway_to(upstream: SocketAddr, timeout_secs: Option<u64>) -> Demo {
    let dir = demo_dir();
    let path = dir.path().join("postern.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let mut config = original.replace(
        "url = \"builtin:echo\"",
        &format!("url = \"http://{upstream}\""),
    );
    assert_ne!(config, original, "the demo has no builtin:echo upstream");
    if let Some(secs) = timeout_secs {
        config = config.replacen(
            "[gateway]\n",
            &format!("[gateway]\nupstream_timeout_secs = {secs}\n"),
            1,
        );
        assert!(config.contains("upstream_timeout_secs"));
    }
    std::fs::write(&path, config).unwrap();
    Demo::start_in(dir).await
}

/// `f`, or a panic naming `what` after `secs` seconds.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {secs} s"))
}

/// One request as alice on a fresh connection (`head` lines end in `\n`;
/// `Connection: close` is added).
async fn alice(d: &Demo, head: &str, body: &[u8]) -> Resp {
    let what = head.lines().next().unwrap_or_default();
    within(10, what, d.client().raw(Some(&d.alice()), head, body)).await
}

async fn get(d: &Demo, path: &str) -> Resp {
    alice(d, &format!("GET {path} HTTP/1.1\nHost: localhost\n"), b"").await
}

/// A kept-open TLS connection as alice.
async fn keep_alive(d: &Demo) -> Wire<tokio_rustls::client::TlsStream<TcpStream>> {
    Wire::new(within(10, "TLS connect", d.client().connect(Some(&d.alice()))).await)
}

/// One request on a kept-open connection, one response read by its framing.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    w: &mut Wire<S>,
    method: &str,
    path: &str,
    extra: &str,
) -> Resp {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n");
    within(10, &format!("{method} {path}"), async {
        w.s.write_all(req.as_bytes()).await.unwrap();
        w.response(method == "HEAD").await
    })
    .await
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The audit records of the request whose error body named `r`'s id.
fn audit_records(d: &Demo, r: &Resp) -> Vec<serde_json::Value> {
    let id = r.json()["request_id"].as_str().unwrap().to_string();
    lines(&d.path("audit.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|rec| rec["request_id"] == id.as_str())
        .collect()
}

/// The `upstream_error` audit record of the request that got `r`.
fn upstream_error_record(d: &Demo, r: &Resp) -> serde_json::Value {
    let recs = audit_records(d, r);
    recs.iter()
        .find(|rec| rec["decision"] == "upstream_error")
        .cloned()
        .unwrap_or_else(|| panic!("no upstream_error record: {recs:?}"))
}

/// Deterministic, not periodic at any small stride.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn digest(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// `body` in chunks of varying sizes, ending with the last-chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let sizes = [1, 7, 4096, 100, 16 * 1024, 3, 65 * 1024, 1000];
    let (mut rest, mut i) = (body, 0);
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].min(rest.len());
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------
// a. Nobody listening.

#[tokio::test]
async fn upstream_down_is_502_with_a_json_error_and_audited() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut d = gateway_to(addr, None).await;
    let r = get(&d, "/private").await;
    assert_eq!(r.status, 502, "{}", text(&r));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    assert_eq!(
        r.header("x-postern-request-id"),
        j["request_id"].as_str(),
        "{r:?}"
    );
    d.stop().await;
    let rec = upstream_error_record(&d, &r);
    assert_eq!(rec["status"], 502, "{rec}");
    assert_eq!(rec["identity"], "alice", "{rec}");
}

// b. An upstream that accepts and never answers.

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_after_the_timeout_and_audited() {
    let up = Upstream::custom(|mut w, seen| async move {
        if let Some(head) = w.head().await {
            seen.lock().unwrap().push(Req {
                head,
                body: Vec::new(),
            });
        }
        // Hold the connection open, silent.
        std::future::pending::<()>().await;
    })
    .await;
    let mut d = gateway_to(up.addr, Some(1)).await;
    let started = Instant::now();
    let r = get(&d, "/private").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", text(&r));
    assert!(r.json()["error"].as_str().is_some(), "{}", text(&r));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "504 after {took:?}, the timeout is 1 s"
    );
    assert_eq!(up.seen().len(), 1, "the request reached the upstream once");
    d.stop().await;
    let rec = upstream_error_record(&d, &r);
    assert_eq!(rec["status"], 504, "{rec}");
}

// c. Pooled connections the upstream has closed.

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_not_used_again() {
    // Answers as if keeping the connection, then closes it.
    let up = Upstream::serve(|r| ok(r.head.target().as_bytes()).then_close()).await;
    let d = gateway_to(up.addr, None).await;
    let r = get(&d, "/private/1").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/private/1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = get(&d, "/private/2").await;
    assert_eq!(
        (r.status, text(&r).as_str()),
        (200, "/private/2"),
        "the second request went to the closed connection"
    );
    assert_eq!(up.seen().len(), 2, "each request reached the upstream once");
}

#[tokio::test]
async fn an_upstream_closing_right_after_each_answer_never_fails_a_request() {
    // The FIN follows the response at once and races the next request.
    let up = Upstream::serve(|r| ok(r.head.target().as_bytes()).then_close()).await;
    let d = gateway_to(up.addr, None).await;
    let mut c = keep_alive(&d).await;
    for i in 0..20 {
        let path = format!("/private/{i}");
        let r = exchange(&mut c, "GET", &path, "").await;
        assert_eq!(
            (r.status, text(&r).as_str()),
            (200, path.as_str()),
            "request {i}: {r:?}"
        );
    }
    assert!(up.accepts() >= 20, "{} connections", up.accepts());
}

// d. Pooling.

#[tokio::test]
async fn sequential_requests_reuse_the_upstream_connection() {
    let up = Upstream::serve(|r| ok(r.head.target().as_bytes())).await;
    let d = gateway_to(up.addr, None).await;
    for i in 0..10 {
        // Each on its own client connection (which asks to close): the
        // upstream connection is the gateway's, not the client's.
        let path = format!("/private/{i}");
        let r = get(&d, &path).await;
        assert_eq!((r.status, text(&r).as_str()), (200, path.as_str()));
    }
    assert_eq!(up.seen().len(), 10);
    assert!(
        up.accepts() <= 2,
        "10 sequential requests took {} upstream connections",
        up.accepts()
    );
}

// e. What the upstream receives.

#[tokio::test]
async fn the_upstream_gets_origin_form_its_own_host_and_only_the_gateways_identity() {
    let up = Upstream::serve(|_| ok(b"fine")).await;
    let d = gateway_to(up.addr, None).await;
    let r = alice(
        &d,
        "GET /private?x=1 HTTP/1.1\nHost: localhost\nx-postern-identity: mallory\nX-Postern-Identity: mallory\n",
        b"",
    )
    .await;
    assert_eq!((r.status, text(&r).as_str()), (200, "fine"));
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].head;
    assert_eq!(h.line, "GET /private?x=1 HTTP/1.1", "{h:?}");
    assert_eq!(
        h.all("host"),
        [up.addr.to_string().as_str()],
        "exactly one Host, the upstream's authority: {h:?}"
    );
    assert_eq!(h.all("x-postern-identity"), ["alice"], "{h:?}");
    assert_eq!(h.all("x-postern-auth"), ["mtls"], "{h:?}");
    // A bodyless GET goes without a body.
    assert!(!h.chunked(), "{h:?}");
    assert!(matches!(h.content_length(), None | Some(0)), "{h:?}");
    // The client's `Connection: close` is hop-by-hop: not forwarded.
    assert!(!h.has_token("connection", "close"), "{h:?}");
}

// f. Request bodies stream through complete.

#[tokio::test]
async fn streamed_request_bodies_arrive_complete() {
    let up =
        Upstream::serve(|r| ok(format!("{} {}", r.body.len(), digest(&r.body)).as_bytes())).await;
    let d = gateway_to(up.addr, None).await;
    let body = pattern(256 * 1024 + 17);
    let want = format!("{} {}", body.len(), digest(&body));

    let r = alice(
        &d,
        "POST /upload HTTP/1.1\nHost: localhost\nTransfer-Encoding: chunked\n",
        &chunked(&body),
    )
    .await;
    assert_eq!((r.status, text(&r)), (200, want.clone()), "chunked");

    let r = alice(&d, "POST /upload HTTP/1.1\nHost: localhost\n", &body).await;
    assert_eq!((r.status, text(&r)), (200, want), "content-length");

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.head.method() == "POST"));
}

// g. Response bodies stream through complete.

#[tokio::test]
async fn large_and_chunked_response_bodies_arrive_complete() {
    let big = pattern(1024 * 1024 + 3);
    let small = pattern(300 * 1024 + 5);
    let (b, s) = (big.clone(), small.clone());
    let up = Upstream::serve(move |r| {
        if r.head.target() == "/big" {
            ok(&b)
        } else {
            let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            raw.extend(chunked(&s));
            Reply::raw(raw)
        }
    })
    .await;
    let d = gateway_to(up.addr, None).await;

    let r = get(&d, "/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), big.len());
    assert!(r.body == big, "the 1 MiB body arrived altered");

    let r = get(&d, "/chunked").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), small.len());
    assert!(r.body == small, "the chunked body arrived altered");

    // Again on one kept-open connection, where framing errors would show.
    let mut c = keep_alive(&d).await;
    for _ in 0..2 {
        let r = exchange(&mut c, "GET", "/chunked", "").await;
        assert!(r.status == 200 && r.body == small, "chunked, kept-open");
        let r = exchange(&mut c, "GET", "/big", "").await;
        assert!(r.status == 200 && r.body == big, "1 MiB, kept-open");
    }
}

// h. Answers without a body.

#[tokio::test]
async fn head_204_and_304_carry_no_body_and_wedge_nothing() {
    let up = Upstream::serve(|r| match (r.head.method(), r.head.target()) {
        // A HEAD answer announces the GET's length and sends nothing.
        ("HEAD", _) => Reply::raw(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n",
        ),
        (_, "/nothing") => Reply::raw("HTTP/1.1 204 No Content\r\n\r\n"),
        // A 304 may name the representation's length; no body follows.
        (_, "/cached") => {
            Reply::raw("HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 1234\r\n\r\n")
        }
        (_, path) => ok(format!("after {path}").as_bytes()),
    })
    .await;
    let d = gateway_to(up.addr, None).await;
    let mut c = keep_alive(&d).await;

    let r = exchange(&mut c, "HEAD", "/doc", "").await;
    assert_eq!(r.status, 200);
    let r = exchange(&mut c, "GET", "/after-head", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "after /after-head"));

    let r = exchange(&mut c, "GET", "/nothing", "").await;
    assert_eq!(r.status, 204);
    let r = exchange(&mut c, "GET", "/after-204", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "after /after-204"));

    let r = exchange(&mut c, "GET", "/cached", "If-None-Match: \"v1\"\r\n").await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));
    let r = exchange(&mut c, "GET", "/after-304", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "after /after-304"));

    // Nothing stray on the client connection.
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
    // Every request reached the upstream once, with the method it was sent with.
    let seen: Vec<String> = up.seen().iter().map(|r| r.head.line.clone()).collect();
    assert_eq!(
        seen,
        [
            "HEAD /doc HTTP/1.1",
            "GET /after-head HTTP/1.1",
            "GET /nothing HTTP/1.1",
            "GET /after-204 HTTP/1.1",
            "GET /cached HTTP/1.1",
            "GET /after-304 HTTP/1.1",
        ]
    );
    // A connection left waiting for a body that never comes is not reused;
    // more than 2 connections means the bodyless answers wedged theirs.
    assert!(up.accepts() <= 2, "{} upstream connections", up.accepts());
}

// i. An upstream that answers before reading the request body.

#[tokio::test]
async fn an_early_answer_reaches_the_client_while_the_body_is_still_coming() {
    let up = Upstream::custom(|mut w, seen| async move {
        while let Some(head) = w.head().await {
            if head.method() == "POST" {
                seen.lock().unwrap().push(Req {
                    head,
                    body: Vec::new(),
                });
                let _ = w
                    .s
                    .write_all(
                        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
                    )
                    .await;
                // Read nothing more for a while, then go.
                tokio::time::sleep(Duration::from_secs(10)).await;
                return;
            }
            let _ = w.request_body(&head).await;
            seen.lock().unwrap().push(Req {
                head,
                body: Vec::new(),
            });
            if w.s.write_all(&ok(b"still here").bytes).await.is_err() {
                return;
            }
        }
    })
    .await;
    let d = gateway_to(up.addr, None).await;

    // 256 MiB announced: far more than the socket buffers on the way hold,
    // so a gateway that sends the whole body before it reads the answer
    // never reads it.
    let body_len: usize = 256 * 1024 * 1024;
    let tls = within(10, "TLS connect", d.client().connect(Some(&d.alice()))).await;
    let (rd, mut wr) = tokio::io::split(tls);
    let written = Arc::new(AtomicUsize::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {body_len}\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..body_len / chunk.len() {
            wr.write_all(&chunk).await?;
            w.fetch_add(chunk.len(), Ordering::SeqCst);
        }
        wr.flush().await
    });
    // Well before the upstream gives up on the connection (10 s).
    let r = within(5, "the early 413", Wire::new(rd).response(false)).await;
    let sent = written.load(Ordering::SeqCst);
    writer.abort();
    assert_eq!((r.status, text(&r).as_str()), (413, "too large"), "{r:?}");
    assert!(
        sent < body_len,
        "the whole body was sent before the answer came: not an early answer"
    );
    assert_eq!(up.seen().len(), 1);

    // The gateway and its upstream pool are fine afterwards.
    let r = get(&d, "/after").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "still here"));
}

// j. Concurrency.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_requests_all_get_their_own_answer() {
    // A short pause per answer makes the requests overlap upstream too.
    let up = Upstream::serve(|r| {
        ok(format!("answer to {}", r.head.target()).as_bytes()).after(Duration::from_millis(20))
    })
    .await;
    let d = gateway_to(up.addr, None).await;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..50 {
        let (client, creds) = (d.client(), d.alice());
        set.spawn(async move {
            let path = format!("/private/{i}");
            let head = format!("GET {path} HTTP/1.1\nHost: localhost\n");
            let r = client.raw(Some(&creds), &head, b"").await;
            (path, r)
        });
    }
    let results = within(20, "50 concurrent requests", async {
        let mut v = Vec::new();
        while let Some(res) = set.join_next().await {
            v.push(res.unwrap());
        }
        v
    })
    .await;
    assert_eq!(results.len(), 50);
    for (path, r) in &results {
        assert_eq!(
            (r.status, text(r)),
            (200, format!("answer to {path}")),
            "{path}"
        );
    }
    assert_eq!(
        up.seen().len(),
        50,
        "each request reached the upstream once"
    );
}

// j. Responses that try to slip something to the next request. A pooled
// connection carries one user's request after another's: an answer whose
// end is misjudged would hand its tail (or a forged answer) to whoever is
// next. Each script below answers `/next` honestly on any connection.

/// The upstream answers `/bad` with `raw` (without closing), anything else
/// with its own path.
async fn answering_bad_with(raw: &'static [u8]) -> Upstream {
    Upstream::serve(move |r| match r.head.target() {
        "/bad" => Reply::raw(raw),
        path => ok(path.as_bytes()),
    })
    .await
}

#[tokio::test]
async fn ambiguous_response_framing_is_502_audited_and_its_connection_dropped() {
    let smuggles: [(&[u8], &str); 5] = [
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            "both Transfer-Encoding and Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nContent-Length: 49\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
            "Content-Length values that differ",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
            "a coding after chunked",
        ),
        (
            b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 0\r\n\r\n",
            "malformed response head",
        ),
        (
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "Transfer-Encoding on an HTTP/1.0 response",
        ),
    ];
    for (raw, why) in smuggles {
        let up = answering_bad_with(raw).await;
        let mut d = gateway_to(up.addr, None).await;
        let mut c = keep_alive(&d).await;
        let r = exchange(&mut c, "GET", "/bad", "").await;
        assert_eq!(r.status, 502, "{why}: {r:?}");
        for i in 0..3 {
            let r = exchange(&mut c, "GET", "/next", "").await;
            assert_eq!((r.status, text(&r).as_str()), (200, "/next"), "{why}, {i}");
        }
        assert_eq!(up.accepts(), 2, "{why}: the refused connection was reused");
        drop(c);
        d.stop().await;
        let rec = upstream_error_record(&d, &r);
        assert!(
            rec["reasons"].to_string().contains(why),
            "{why}: the audit record says {rec}"
        );
    }
}

#[tokio::test]
async fn bytes_after_an_answer_never_reach_the_next_request() {
    // A complete answer, and a forged one right behind it in the same write.
    let up = answering_bad_with(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\noneHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    )
    .await;
    let d = gateway_to(up.addr, None).await;
    let mut c = keep_alive(&d).await;
    let r = exchange(&mut c, "GET", "/bad", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "one"));
    for _ in 0..3 {
        let r = exchange(&mut c, "GET", "/next", "").await;
        assert_eq!((r.status, text(&r).as_str()), (200, "/next"));
    }
    assert_eq!(
        up.accepts(),
        2,
        "the connection with stray bytes was reused"
    );

    // The same after a chunked body and after a bodiless 204.
    for raw in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\none\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"[..],
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    ] {
        let up = Upstream::serve(move |r| match r.head.target() {
            "/bad" => Reply::raw(raw),
            path => ok(path.as_bytes()),
        })
        .await;
        let d = gateway_to(up.addr, None).await;
        let mut c = keep_alive(&d).await;
        let r = exchange(&mut c, "GET", "/bad", "").await;
        assert!(r.status == 200 || r.status == 204, "{r:?}");
        let r = exchange(&mut c, "GET", "/next", "").await;
        assert_eq!((r.status, text(&r).as_str()), (200, "/next"));
        assert_eq!(up.accepts(), 2);
    }
}

#[tokio::test]
async fn a_broken_chunked_body_aborts_that_response_only() {
    // The head is fine; the body's second chunk is not followed by CRLF.
    let up = answering_bad_with(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged",
    )
    .await;
    let d = gateway_to(up.addr, None).await;
    let mut tls = within(10, "TLS connect", d.client().connect(Some(&d.alice()))).await;
    tls.write_all(b"GET /bad HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = within(10, "GET /bad", tls.read_to_end(&mut got)).await;
    // The fault is found after the status is decided: the client connection
    // is cut, with at most the part before the fault, never the forgery,
    // and never a clean end of a chunked body.
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(!got.contains("forged"), "{got:?}");
    assert!(!got.ends_with("0\r\n\r\n"), "{got:?}");
    // Reused, the broken connection would answer with the forgery. (The
    // client connections may land on either worker, each with its own
    // pool: hence at least one new upstream connection, not exactly one.)
    for _ in 0..3 {
        let r = get(&d, "/next").await;
        assert_eq!((r.status, text(&r).as_str()), (200, "/next"));
    }
    assert!(up.accepts() >= 2, "{} upstream connections", up.accepts());
}

#[tokio::test]
async fn interim_answers_are_skipped_and_closing_answers_are_honoured() {
    let up = Upstream::serve(|r| match r.head.target() {
        "/early" => Reply::raw(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
        ),
        // Says it is the last answer but leaves the socket open.
        "/last" => Reply::raw("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 4\r\n\r\nlast"),
        // HTTP/1.0 without a length: the body runs to the close.
        "/old" => Reply::raw("HTTP/1.0 200 OK\r\n\r\nuntil the end").then_close(),
        path => ok(path.as_bytes()),
    })
    .await;
    let d = gateway_to(up.addr, None).await;
    let mut c = keep_alive(&d).await;
    let r = exchange(&mut c, "GET", "/early", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "final"));
    let r = exchange(&mut c, "GET", "/next", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/next"));
    assert_eq!(up.accepts(), 1, "interim answers cost the connection");

    let r = exchange(&mut c, "GET", "/last", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "last"));
    let r = within(10, "after /last", exchange(&mut c, "GET", "/next", "")).await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/next"));
    assert_eq!(
        up.accepts(),
        2,
        "a connection the upstream called the last was reused"
    );

    let r = exchange(&mut c, "GET", "/old", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "until the end"));
    let r = exchange(&mut c, "GET", "/next", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/next"));
    assert_eq!(up.accepts(), 3);
}

// k. An opt-out's verified body is the body the upstream gets.

#[tokio::test]
async fn a_verified_webhook_reaches_the_upstream_with_exactly_its_verified_body() {
    let up =
        Upstream::serve(|r| ok(format!("{} {}", r.body.len(), digest(&r.body)).as_bytes())).await;
    let d = gateway_to(up.addr, None).await;
    let body = br#"{"event":"paid","amount":42}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = sign_webhook(&d.path("webhook.secret"), ts, body);
    let ts = ts.to_string();
    let headers = [
        ("x-postern-timestamp", ts.as_str()),
        ("x-postern-signature", sig.as_str()),
    ];
    let r = within(
        10,
        "webhook",
        d.client()
            .request(None, "POST", "/webhooks/demo", &headers, body),
    )
    .await;
    assert_eq!(
        (r.status, text(&r)),
        (200, format!("{} {}", body.len(), digest(body)))
    );
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].head;
    // One length, postern's own, and no second framing for the upstream to
    // read the body (or a smuggled request after it) differently.
    assert_eq!(h.all("content-length"), [body.len().to_string().as_str()]);
    assert!(h.all("transfer-encoding").is_empty(), "{h:?}");
    assert_eq!(h.get("x-postern-auth"), Some("optout:demo-webhook"));
    assert_eq!(seen[0].body, body);

    // A signed body cannot carry a second request behind it: the gateway
    // refuses a request that frames its body two ways before any opt-out.
    let r = within(
        10,
        "webhook with two framings",
        d.client().raw(
            None,
            &format!(
                "POST /webhooks/demo HTTP/1.1\nHost: localhost\nx-postern-timestamp: {ts}\nx-postern-signature: {sig}\nContent-Length: {}\nTransfer-Encoding: chunked\n",
                body.len()
            ),
            body,
        ),
    )
    .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        up.seen().len(),
        1,
        "the doubly framed request reached the upstream"
    );
}

// l. Clients that hold a connection without sending a request.

/// The demo gateway in front of `upstream`, with `[gateway]
/// header_read_timeout_secs = 1`.
async fn gateway_with_a_1s_header_timeout(upstream: SocketAddr) -> Demo {
    let dir = demo_dir();
    let path = dir.path().join("postern.toml");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace(
            "url = \"builtin:echo\"",
            &format!("url = \"http://{upstream}\""),
        )
        .replacen(
            "[gateway]\n",
            "[gateway]\nheader_read_timeout_secs = 1\n",
            1,
        );
    assert!(config.contains("header_read_timeout_secs = 1"));
    std::fs::write(&path, config).unwrap();
    Demo::start_in(dir).await
}

/// Read until the gateway closes the connection; what it sent.
async fn until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = within(
        10,
        "the gateway closing the connection",
        s.read_to_end(&mut got),
    )
    .await;
    got
}

#[tokio::test]
async fn slow_headers_and_idle_keep_alive_connections_are_closed_but_slow_upstreams_are_not() {
    let up = Upstream::serve(|r| match r.head.target() {
        "/slow" => ok(b"worth the wait").after(Duration::from_millis(2500)),
        path => ok(path.as_bytes()),
    })
    .await;
    let d = gateway_with_a_1s_header_timeout(up.addr).await;

    // A head that never ends (slowloris): closed after the timeout, and
    // nothing reached the upstream.
    let started = Instant::now();
    let mut tls = within(10, "TLS connect", d.client().connect(Some(&d.alice()))).await;
    tls.write_all(b"GET /private HTTP/1.1\r\nHost: localh")
        .await
        .unwrap();
    let got = until_closed(&mut tls).await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(!String::from_utf8_lossy(&got).contains(" 200 "), "{got:?}");
    assert!(
        up.seen().is_empty(),
        "a partial request reached the upstream"
    );

    // An idle keep-alive connection: one answer, then closed.
    let mut c = keep_alive(&d).await;
    let r = exchange(&mut c, "GET", "/private/1", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/private/1"));
    let rest = until_closed(&mut c.s).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    // The timeout is for request heads only: an upstream slower than it
    // still answers, and a request sent in time is served.
    let mut c = keep_alive(&d).await;
    let r = exchange(&mut c, "GET", "/slow", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "worth the wait"));
    let r = exchange(&mut c, "GET", "/private/2", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/private/2"));
}

// m. One client connection, requests with and without a body. postern
// serves bodyless requests itself and hands the connection to hyper at the
// first request that may have a body (`h1serve`): the answers stay in
// order, and a body is never read as a request.

#[tokio::test]
async fn pipelined_requests_with_and_without_bodies_are_answered_in_order_and_no_body_becomes_a_request(
) {
    let up = Upstream::serve(|r| {
        ok(format!("{} {} {}", r.head.method(), r.head.target(), r.body.len()).as_bytes())
    })
    .await;
    let d = gateway_to(up.addr, None).await;
    let mut c = keep_alive(&d).await;
    let r = exchange(&mut c, "GET", "/private/a", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "GET /private/a 0"));

    // In one write: a GET, a POST whose body is a request, a GET.
    let inner = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let pipelined = format!(
        "GET /private/b HTTP/1.1\r\nHost: localhost\r\n\r\n\
         POST /private/c HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{inner}\
         GET /private/d HTTP/1.1\r\nHost: localhost\r\n\r\n",
        inner.len()
    );
    c.s.write_all(pipelined.as_bytes()).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let r = within(10, "a pipelined answer", c.response(false)).await;
        answers.push((r.status, text(&r)));
    }
    let want = |s: &str| (200u16, s.to_string());
    assert_eq!(
        answers,
        [
            want("GET /private/b 0"),
            want(&format!("POST /private/c {}", inner.len())),
            want("GET /private/d 0"),
        ]
    );
    // The connection goes on serving, and closes when asked to.
    let r = exchange(&mut c, "HEAD", "/private/e", "").await;
    assert_eq!(r.status, 200);
    let r = exchange(&mut c, "GET", "/private/f", "Connection: close\r\n").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "GET /private/f 0"));
    assert_eq!(r.header("connection"), Some("close"));
    let rest = until_closed(&mut c.s).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));

    let seen: Vec<String> = up.seen().iter().map(|r| r.head.line.clone()).collect();
    assert_eq!(
        seen,
        [
            "GET /private/a HTTP/1.1",
            "GET /private/b HTTP/1.1",
            "POST /private/c HTTP/1.1",
            "GET /private/d HTTP/1.1",
            "HEAD /private/e HTTP/1.1",
            "GET /private/f HTTP/1.1",
        ]
    );
    assert_eq!(up.seen()[2].body, inner.as_bytes());
}

#[tokio::test]
async fn the_bodyless_lane_answers_bad_requests_as_before() {
    let up = Upstream::serve(|r| ok(r.head.target().as_bytes())).await;
    let d = gateway_to(up.addr, None).await;
    // A bare `Content-Length: 0` GET, HTTP/1.0, a malformed head and an
    // absolute-form target go to hyper; the answers are hyper's and the
    // gateway's, as they were before the lane.
    let r = alice(
        &d,
        "GET /private/zero HTTP/1.1\nHost: localhost\nContent-Length: 0\n",
        b"",
    )
    .await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/private/zero"));
    let r = alice(&d, "GET /private/old HTTP/1.0\nHost: localhost\n", b"").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/private/old"));
    let r = alice(
        &d,
        "GET /private/x HTTP/1.1\nHost: localhost\nBad Header: x\n",
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    // Identity headers a client sends are stripped in the lane too.
    let r = alice(
        &d,
        "GET /private/who HTTP/1.1\nHost: localhost\nX-Postern-Identity: mallory\nX-Forwarded-User: mallory\n",
        b"",
    )
    .await;
    assert_eq!(r.status, 200);
    let last = up.seen().pop().unwrap();
    assert_eq!(last.head.get("x-postern-identity"), Some("alice"));
    assert_eq!(last.head.get("x-forwarded-user"), None);
}

#[tokio::test]
async fn an_opt_out_answered_on_a_connection_authenticates_nothing_after_it() {
    let up = Upstream::serve(|r| ok(r.head.target().as_bytes())).await;
    let d = gateway_to(up.addr, None).await;
    // No client certificate: only the /healthz opt-out lets anything through.
    let mut c = Wire::new(within(10, "TLS connect", d.client().connect(None)).await);
    let r = exchange(&mut c, "GET", "/healthz", "").await;
    assert_eq!((r.status, text(&r).as_str()), (200, "/healthz"));
    // The next requests on the same connection, one at a time and pipelined
    // behind an opted-out one, are each decided on their own.
    let r = exchange(&mut c, "GET", "/private", "").await;
    assert_eq!(r.status, 401);
    c.s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /private/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await
    .unwrap();
    let first = within(10, "the pipelined /healthz", c.response(false)).await;
    let second = within(10, "the pipelined /private/x", c.response(false)).await;
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 401);
    let seen: Vec<String> = up
        .seen()
        .iter()
        .map(|r| r.head.target().to_string())
        .collect();
    assert_eq!(
        seen,
        ["/healthz", "/healthz"],
        "only the opted-out requests reached the upstream"
    );
}
