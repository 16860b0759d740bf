//! hsload: one request per new TCP + TLS connection, for handshake rates.
//!
//! Why not oha: oha (rustls) always resumes TLS sessions when the server offers it, and postern's
//! rustls server does (stateful cache, two TLS 1.3 tickets per handshake). Postern's config can't
//! be changed by the bench, so oha can't force full handshakes against postern. This client
//! uses the same rustls client config as oha 1.16 (aws-lc-rs provider, default key-exchange
//! preference, no ALPN, client certificate) with `resumption` **disabled** by default, so every
//! connection is a full handshake against any server. `--resume` keeps rustls' default
//! resumption (as oha does) for cross-checks; `--x25519` offers only the X25519 key exchange
//! (rustls prefers the post-quantum hybrid X25519MLKEM768, which postern accepts and nginx
//! with OpenSSL 3.0 does not).
//!
//! It accepts the subset of oha's arguments bench/load.sh passes, and prints the subset of oha's
//! JSON the script reads (`summary.requestsPerSec`, `latencyPercentiles.p50/p99` in seconds,
//! `statusCodeDistribution`, `errorDistribution`), plus `tls`: how many handshakes were full or
//! resumed and which key-exchange groups were negotiated (as rustls reports them).
//!
//!   hsload -z 10s -c 16 [--connect-to localhost:9443:127.0.0.1:9443] --cacert ca.pem
//!          --cert alice.pem --key alice.key [--resume] https://localhost:9443/private
//!
//! Latency of one request: from before `connect()` to the last byte of the response (TCP +
//! handshake + request + response), as oha measures with --disable-keepalive. Requests still
//! in flight at the deadline are dropped and counted under "aborted due to deadline".
//! Only HTTP/1.1 with a Content-Length body is understood (enough for the bench's `ok`).

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls::{ClientConfig, HandshakeKind, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Args {
    conns: usize,
    dur: Duration,
    connect_to: Option<(String, u16, String, u16)>,
    cacert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    resume: bool,
    x25519_only: bool,
    url: String,
}

fn die(msg: &str) -> ! {
    eprintln!("hsload: {msg}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        conns: 16,
        dur: Duration::from_secs(10),
        connect_to: None,
        cacert: None,
        cert: None,
        key: None,
        resume: false,
        x25519_only: false,
        url: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "-c" => {
                a.conns = val("-c")
                    .parse()
                    .unwrap_or_else(|_| die("-c: not a number"))
            }
            "-z" => {
                let v = val("-z");
                let s = v.strip_suffix('s').unwrap_or(&v);
                let secs: f64 = s
                    .parse()
                    .unwrap_or_else(|_| die("-z: want SECONDSs, e.g. 10s"));
                a.dur = Duration::from_secs_f64(secs);
            }
            "--connect-to" => {
                let v = val("--connect-to");
                let p: Vec<&str> = v.split(':').collect();
                if p.len() != 4 {
                    die("--connect-to: want host:port:ip:port");
                }
                let port = |s: &str| {
                    s.parse::<u16>()
                        .unwrap_or_else(|_| die("--connect-to: bad port"))
                };
                a.connect_to = Some((p[0].into(), port(p[1]), p[2].into(), port(p[3])));
            }
            "--cacert" => a.cacert = Some(val("--cacert")),
            "--cert" => a.cert = Some(val("--cert")),
            "--key" => a.key = Some(val("--key")),
            "--resume" => a.resume = true,
            "--x25519" => a.x25519_only = true,
            // accepted for oha compatibility: hsload never uses keep-alive and always prints JSON
            "--no-tui" | "--disable-keepalive" => {}
            "--output-format" => {
                if val("--output-format") != "json" {
                    die("only --output-format json")
                }
            }
            s if s.starts_with("https://") => a.url = s.to_string(),
            s => die(&format!("unknown argument {s} (only https:// URLs)")),
        }
    }
    if a.url.is_empty() {
        die("no https:// URL");
    }
    if a.conns == 0 {
        die("-c must be > 0");
    }
    a
}

fn tls_config(a: &Args) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    if let Some(f) = &a.cacert {
        for c in CertificateDer::pem_file_iter(f).unwrap_or_else(|e| die(&format!("{f}: {e}"))) {
            roots
                .add(c.unwrap_or_else(|e| die(&format!("{f}: {e}"))))
                .unwrap_or_else(|e| die(&format!("{f}: {e}")));
        }
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if a.x25519_only {
        // offer classical X25519 only (no post-quantum hybrid), as OpenSSL 3.0 (nginx) negotiates
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let b = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| die(&format!("TLS versions: {e}")))
        .with_root_certificates(roots);
    let mut cfg = match (&a.cert, &a.key) {
        (Some(c), Some(k)) => {
            let certs: Vec<_> = CertificateDer::pem_file_iter(c)
                .unwrap_or_else(|e| die(&format!("{c}: {e}")))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| die(&format!("{c}: {e}")));
            let key = PrivateKeyDer::from_pem_file(k).unwrap_or_else(|e| die(&format!("{k}: {e}")));
            b.with_client_auth_cert(certs, key)
                .unwrap_or_else(|e| die(&format!("client cert: {e}")))
        }
        (None, None) => b.with_no_client_auth(),
        _ => die("--cert and --key go together"),
    };
    cfg.alpn_protocols = vec![]; // as oha for HTTP/1.1
    if !a.resume {
        cfg.resumption = Resumption::disabled();
    }
    cfg
}

#[derive(Default)]
struct Tally {
    lat: Vec<f64>,
    codes: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
    kinds: BTreeMap<&'static str, u64>,
    kx: BTreeMap<String, u64>,
}

struct Done {
    status: u16,
    kind: &'static str,
    kx: String,
}

async fn one(
    addr: SocketAddr,
    conn: &TlsConnector,
    name: &ServerName<'static>,
    req: &[u8],
) -> Result<Done, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut tls = conn
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (kind, kx) = {
        let (_, c) = tls.get_ref();
        let kind = match c.handshake_kind() {
            Some(HandshakeKind::Full) => "full",
            Some(HandshakeKind::FullWithHelloRetryRequest) => "full_hrr",
            Some(HandshakeKind::Resumed) => "resumed",
            None => "unknown",
        };
        let kx = c
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_else(|| "none".into());
        (kind, kx)
    };
    tls.write_all(req)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = tls
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the whole response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..h])
                .map_err(|_| "non-UTF-8 response head".to_string())?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| "bad status line".to_string())?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .ok_or_else(|| "no Content-Length".to_string())?;
            while buf.len() < h + 4 + len {
                let n = tls
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("read body: {e}"))?;
                if n == 0 {
                    return Err("connection closed in the body".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(Done { status, kind, kx });
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn json_map<K: std::fmt::Display, V: std::fmt::Display>(m: &BTreeMap<K, V>) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| {
            format!(
                "\"{}\":{}",
                k.to_string().replace('\\', "\\\\").replace('"', "'"),
                v
            )
        })
        .collect();
    format!("{{{}}}", items.join(","))
}

fn main() {
    let a = parse_args();
    let rest = a.url.strip_prefix("https://").unwrap();
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>().unwrap_or_else(|_| die("bad port in URL")),
        ),
        None => (authority.to_string(), 443),
    };
    let (dial_host, dial_port) = match &a.connect_to {
        Some((h, p, ih, ip)) if *h == host && *p == port => (ih.clone(), *ip),
        _ => (host.clone(), port),
    };
    let addr = (dial_host.as_str(), dial_port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut i| i.next())
        .unwrap_or_else(|| die("cannot resolve the target"));
    let name = ServerName::try_from(host.clone()).unwrap_or_else(|_| die("bad server name"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: hsload\r\naccept: */*\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    let conn = TlsConnector::from(Arc::new(tls_config(&a)));
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap();
    let (tally, aborted, elapsed) = rt.block_on(async {
        let start = Instant::now();
        let deadline = tokio::time::Instant::from_std(start + a.dur);
        let mut tasks = Vec::new();
        for _ in 0..a.conns {
            let (conn, name, req) = (conn.clone(), name.clone(), req.clone());
            tasks.push(tokio::spawn(async move {
                let mut t = Tally::default();
                let mut aborted = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let t0 = Instant::now();
                    match tokio::time::timeout_at(deadline, one(addr, &conn, &name, &req)).await {
                        Ok(Ok(d)) => {
                            t.lat.push(t0.elapsed().as_secs_f64());
                            *t.codes.entry(d.status).or_default() += 1;
                            *t.kinds.entry(d.kind).or_default() += 1;
                            *t.kx.entry(d.kx).or_default() += 1;
                        }
                        Ok(Err(e)) => *t.errors.entry(e).or_default() += 1,
                        Err(_) => aborted += 1,
                    }
                }
                (t, aborted)
            }));
        }
        let mut all = Tally::default();
        let mut aborted = 0;
        for h in tasks {
            let (t, ab) = h.await.unwrap();
            all.lat.extend(t.lat);
            for (k, v) in t.codes {
                *all.codes.entry(k).or_default() += v;
            }
            for (k, v) in t.errors {
                *all.errors.entry(k).or_default() += v;
            }
            for (k, v) in t.kinds {
                *all.kinds.entry(k).or_default() += v;
            }
            for (k, v) in t.kx {
                *all.kx.entry(k).or_default() += v;
            }
            aborted += ab;
        }
        (all, aborted, start.elapsed().as_secs_f64())
    });
    let mut lat = tally.lat;
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let n = lat.len() as f64;
    let mut errors = tally.errors;
    if aborted > 0 {
        errors.insert("aborted due to deadline".into(), aborted);
    }
    let mean = if lat.is_empty() {
        0.0
    } else {
        lat.iter().sum::<f64>() / n
    };
    println!(
        "{{\"summary\":{{\"total\":{elapsed:.6},\"requestsPerSec\":{:.3},\"average\":{mean:.9}}},\
\"latencyPercentiles\":{{\"p50\":{:.9},\"p90\":{:.9},\"p99\":{:.9},\"p99.9\":{:.9}}},\
\"statusCodeDistribution\":{},\"errorDistribution\":{},\
\"tls\":{{\"resumption\":\"{}\",\"handshakes\":{},\"kx\":{}}}}}",
        n / a.dur.as_secs_f64(),
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        pct(&lat, 99.9),
        json_map(&tally.codes),
        json_map(&errors),
        if a.resume { "allowed" } else { "disabled" },
        json_map(&tally.kinds),
        json_map(&tally.kx),
    );
}
