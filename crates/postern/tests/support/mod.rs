//! Test support: start the demo gateway in a temporary directory and talk
//! to it with a raw TLS client (exact request bytes, so path tricks reach
//! the gateway unaltered by a client library).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use postern_gateway::RunningGateway;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

pub struct Demo {
    pub dir: tempfile::TempDir,
    pub gw: Option<RunningGateway>,
    pub addr: SocketAddr,
}

/// A fresh directory holding everything `postern demo` writes, made now.
pub fn demo_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    postern::demo::prepare(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        time::OffsetDateTime::now_utc(),
    )
    .unwrap();
    dir
}

impl Demo {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Start the demo's gateway (files from `postern demo`) in a fresh directory.
    pub async fn start() -> Demo {
        Demo::start_in(demo_dir()).await
    }

    /// Start the demo with everything made as if at `now` (e.g. a CA created
    /// hours ago, so it can issue certificates that have already expired).
    pub async fn start_made_at(now: time::OffsetDateTime) -> Demo {
        let dir = tempfile::tempdir().unwrap();
        postern::demo::prepare(dir.path(), "127.0.0.1:0".parse().unwrap(), now).unwrap();
        Demo::start_in(dir).await
    }

    /// Start a gateway on the config already in `dir`.
    pub async fn start_in(dir: tempfile::TempDir) -> Demo {
        let (config, policy) = postern::load_policy(&dir.path().join("postern.toml")).unwrap();
        let gw = postern_gateway::start(&config, policy).await.unwrap();
        let addr = gw.local_addr;
        Demo {
            dir,
            gw: Some(gw),
            addr,
        }
    }

    /// Stop the gateway (final checkpoint written), keep the directory.
    pub async fn stop(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }

    pub fn alice(&self) -> Creds {
        Creds::load(&self.path("alice.pem"), &self.path("alice.key"))
    }

    pub fn jwt(&self) -> String {
        std::fs::read_to_string(self.path("alice.jwt"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn client(&self) -> Client {
        Client::new(self.addr, &self.path("ca.pem"))
    }
}

pub struct Creds {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Creds {
    pub fn load(cert: &Path, key: &Path) -> Creds {
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        Creds { chain, key }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
    /// The header the echo upstream received, if the request got there.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_string)
    }
}

pub struct Client {
    addr: SocketAddr,
    roots: Arc<rustls::RootCertStore>,
    /// Local address to connect from (e.g. 127.0.0.2), if any.
    pub from: Option<std::net::IpAddr>,
}

impl Client {
    pub fn new(addr: SocketAddr, ca: &Path) -> Client {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        Client {
            addr,
            roots: Arc::new(roots),
            from: None,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn tls_config(&self, creds: Option<&Creds>, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let b = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(self.roots.clone());
        let mut cfg = match creds {
            Some(c) => b
                .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
                .unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        cfg
    }

    async fn tcp(&self) -> TcpStream {
        match self.from {
            None => TcpStream::connect(self.addr).await.unwrap(),
            Some(ip) => {
                let s = TcpSocket::new_v4().unwrap();
                s.bind(SocketAddr::new(ip, 0)).unwrap();
                s.connect(self.addr).await.unwrap()
            }
        }
    }

    /// Open a TLS connection (HTTP/1.1 by ALPN).
    pub async fn connect(
        &self,
        creds: Option<&Creds>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let connector = TlsConnector::from(Arc::new(self.tls_config(creds, &[b"http/1.1"])));
        connector
            .connect(ServerName::try_from("localhost").unwrap(), self.tcp().await)
            .await
            .unwrap()
    }

    /// Send exactly `head` (request line + headers, without the final blank
    /// line) and `body`; `Connection: close` and `Content-Length` are added.
    pub async fn raw(&self, creds: Option<&Creds>, head: &str, body: &[u8]) -> Resp {
        let mut tls = self.connect(creds).await;
        let mut req = head.trim_end().replace('\n', "\r\n").into_bytes();
        req.extend_from_slice(b"\r\nConnection: close\r\n");
        let framed = head.to_ascii_lowercase().contains("content-length:")
            || head.to_ascii_lowercase().contains("transfer-encoding:");
        if !framed && (!body.is_empty() || head.starts_with("POST") || head.starts_with("PUT")) {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        tls.write_all(&req).await.unwrap();
        read_response(&mut tls).await
    }

    /// `GET path` with `Host: localhost`.
    pub async fn get(
        &self,
        creds: Option<&Creds>,
        path: &str,
        extra_headers: &[(&str, &str)],
    ) -> Resp {
        self.request(creds, "GET", path, extra_headers, b"").await
    }

    pub async fn request(
        &self,
        creds: Option<&Creds>,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let mut head = format!("{method} {path} HTTP/1.1\nHost: localhost\n");
        for (n, v) in extra {
            head.push_str(&format!("{n}: {v}\n"));
        }
        self.raw(creds, &head, body).await
    }
}

pub async fn read_response<S: AsyncReadExt + Unpin>(s: &mut S) -> Resp {
    let mut buf = Vec::new();
    // A peer that closes without close_notify is fine here.
    let _ = s.read_to_end(&mut buf).await;
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Resp {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(buf)));
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let raw_body = &buf[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[i + 2..i + 2 + size]);
        b = &b[i + 2 + size + 2..];
    }
}

/// Sign a demo webhook body the way a sender does.
pub fn sign_webhook(secret_file: &Path, ts: i64, body: &[u8]) -> String {
    let secret = std::fs::read_to_string(secret_file).unwrap();
    postern_policy::webhook::sign(secret.trim().as_bytes(), ts, body)
}

/// Run the `postern` binary.
pub fn postern(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .output()
        .unwrap()
}

pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Send one request on a kept-open connection and read one response (by Content-Length).
pub async fn on_connection<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    tls: &mut S,
    path: &str,
) -> Resp {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    let head = parse_response(&buf);
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tls.read_exact(&mut body).await.unwrap();
    Resp { body, ..head }
}
