//! The listener: accept TCP, complete TLS (with a handshake deadline), serve
//! HTTP/1.1 or HTTP/2 by ALPN, and drain in-flight requests on shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use postern_audit::{AuditEvent, AuditLog, AuditOptions};
use postern_policy::{Config, Policy};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::authn::{Authenticator, JwtVerifier, PeerCert};
use crate::h1serve::ReqBody;
use crate::service::{handle, ConnInfo};
use crate::{Runtime, Shared, Upstream};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Jwks(#[from] crate::authn::JwksError),
    #[error("audit log: {0}")]
    Audit(String),
    #[error("upstream `{name}`: {reason}")]
    Upstream { name: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Config(String),
}

/// A gateway that is serving. Dropping it does not stop it; call [`RunningGateway::shutdown`].
pub struct RunningGateway {
    pub local_addr: SocketAddr,
    /// The admin (metrics) listener, when `[admin]` is configured.
    pub admin_addr: Option<SocketAddr>,
    /// The admin console (mTLS), when `[admin] console_listen` is configured.
    pub console_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningGateway {
    /// Stop accepting, drain in-flight requests (bounded), close the audit log
    /// with a final checkpoint.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if let Err(e) = self.shared.audit.close().await {
            tracing::error!(error = %e, "closing the audit log failed");
        }
    }
}

/// Build the upstream table; `builtin:echo` starts an in-process echo server.
async fn upstreams(config: &Config) -> Result<HashMap<String, Upstream>, GatewayError> {
    let mut map = HashMap::new();
    for u in &config.upstreams {
        let u = u.get_ref();
        let url = if u.url == "builtin:echo" {
            let addr = crate::echo::spawn_echo()
                .await
                .map_err(|e| GatewayError::Upstream {
                    name: u.name.clone(),
                    reason: e.to_string(),
                })?;
            format!("http://{addr}")
        } else {
            u.url.clone()
        };
        let uri: http::Uri = url.parse().map_err(|e| GatewayError::Upstream {
            name: u.name.clone(),
            reason: format!("bad url `{url}`: {e}"),
        })?;
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            return Err(GatewayError::Upstream {
                name: u.name.clone(),
                reason: format!("url `{url}` needs scheme and host"),
            });
        };
        map.insert(u.name.clone(), Upstream::new(scheme, authority));
    }
    Ok(map)
}

fn upstream_client() -> Result<crate::UpstreamClient, GatewayError> {
    // System roots for https upstreams; an empty store only means https
    // upstreams fail verification (502), never that verification is skipped.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| GatewayError::Config(format!("upstream TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector),
    )
}

/// Where the listener's certificate, key and client trust anchors live
/// (re-read when the TLS configuration is rebuilt with a new CRL).
struct TlsFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_cas: Vec<std::path::PathBuf>,
}

/// Start serving `config` with the compiled `policy`.
pub async fn start(config: &Config, policy: Policy) -> Result<RunningGateway, GatewayError> {
    let ca = match &config.ca {
        None => None,
        Some(c) => Some(Arc::new(
            crate::certs::CertAuthority::open(
                &config.resolve(&c.dir),
                time::Duration::hours(
                    i64::try_from(c.max_session_age_hours).unwrap_or(i64::MAX / 3600),
                ),
                c.renewal,
            )
            .map_err(GatewayError::Config)?,
        )),
    };
    let tls_files = Arc::new(TlsFiles {
        cert: config.resolve(&config.tls.cert),
        key: config.resolve(&config.tls.key),
        client_cas: config
            .tls
            .client_ca
            .iter()
            .map(|p| config.resolve(p))
            .collect(),
    });
    let crls = ca.as_ref().map(|c| c.crls()).unwrap_or_default();
    let tls_cfg = crate::tls::server_config_with_crls(
        &tls_files.cert,
        &tls_files.key,
        &tls_files.client_cas,
        crls,
    )?;
    let acceptor = Arc::new(ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(tls_cfg))));
    let jwt = match &config.jwt {
        None => None,
        Some(j) => match (&j.jwks_file, &j.jwks_url) {
            (Some(f), _) => Some(JwtVerifier::from_file(j, &config.resolve(f))?),
            (None, Some(url)) => Some(fetch_jwks(j, url).await?),
            (None, None) => {
                return Err(GatewayError::Config(
                    "[jwt] needs jwks_file or jwks_url".to_string(),
                ))
            }
        },
    };
    let key_path = config.resolve(&config.audit.signing_key);
    let key = postern_audit::read_signing_key(&key_path)
        .map_err(|e| GatewayError::Audit(format!("signing key `{}`: {e}", key_path.display())))?;
    let opts = AuditOptions {
        checkpoint_every: config.audit.checkpoint_every,
        ..AuditOptions::default()
    };
    let audit = AuditLog::open(&config.resolve(&config.audit.path), key, opts)
        .map_err(|e| GatewayError::Audit(e.to_string()))?;
    let upstreams = upstreams(config).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    metrics.set_server_cert(&config.resolve(&config.tls.cert));
    metrics.policy_loaded(0, OffsetDateTime::now_utc());
    let alerts = crate::alerts::Alerts::start(&config.alerts, upstream_client()?, metrics.clone())
        .map_err(GatewayError::Config)?;
    let oidc = match &config.oidc {
        None => None,
        Some(o) => {
            let o = Arc::new(crate::oidc::Oidc::new(o, config).map_err(GatewayError::Config)?);
            o.prefetch();
            Some(o)
        }
    };
    let consents = if config.consent.is_some() || policy.optouts().any(|r| r.offer().is_some()) {
        let c = config.consent.clone().unwrap_or_default();
        Some(Arc::new(
            crate::consent::ConsentStore::open(
                &config.resolve(&c.store),
                &config.resolve(&c.key_file),
            )
            .map_err(|e| GatewayError::Config(e.to_string()))?,
        ))
    } else {
        None
    };
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(Runtime { policy, upstreams }),
        authn: Authenticator { jwt, ca },
        audit,
        client: upstream_client()?,
        pool: crate::upstream::Pool::new(),
        trust_domain: config
            .tls
            .trust_domain
            .clone()
            .unwrap_or_else(|| "postern.local".to_string()),
        max_body: config.gateway.max_buffered_body_bytes,
        upstream_timeout: Duration::from_secs(config.gateway.upstream_timeout_secs),
        metrics,
        alerts,
        oidc,
        consents,
        risk: crate::risk::RiskState::default(),
        console: crate::console::ConsoleState::new(crate::console::PolicyInfo::of(
            config,
            0,
            OffsetDateTime::now_utc(),
        )),
    });
    if let Some(store) = &shared.consents {
        // The admin console lists consents and can revoke them.
        let _ = shared.console.consents.set(store.clone());
    }
    if config.risk.is_some() {
        // The console's "risk signals that fired most". Weak: the hook lives
        // in `Shared` and must not keep it alive.
        let weak = Arc::downgrade(&shared);
        let _ = shared.console.top_signals.set(Box::new(move || {
            weak.upgrade()
                .map(|s| {
                    s.risk
                        .fired()
                        .into_iter()
                        .map(|(name, n)| (name.to_string(), n))
                        .collect()
                })
                .unwrap_or_default()
        }));
    }
    let listener = TcpListener::bind(config.gateway.listen)
        .await
        .map_err(|source| GatewayError::Bind {
            addr: config.gateway.listen,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| GatewayError::Bind {
        addr: config.gateway.listen,
        source,
    })?;
    let (stop, stop_rx) = watch::channel(false);
    if !config.alerts.is_empty() {
        tokio::spawn(crate::alerts::expiry_task(
            Arc::downgrade(&shared),
            stop_rx.clone(),
        ));
    }
    let admin_addr = match &config.admin {
        None => None,
        Some(admin) => {
            let (l, addr) = crate::metrics::bind_admin(admin.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: admin.listen,
                    source,
                })?;
            tokio::spawn(crate::metrics::serve_admin(
                l,
                shared.clone(),
                stop_rx.clone(),
            ));
            Some(addr)
        }
    };
    let console_addr = crate::console::start(config, &shared, stop_rx.clone()).await?;
    if let Some(ca) = shared.authn.ca.clone() {
        // A new CRL reaches new handshakes at once; open connections are
        // re-checked per request by the authenticator. Each revocation the
        // gateway learns of (from `postern ca revoke`, another process) is
        // an audit record.
        let (acc, files, weak) = (acceptor.clone(), tls_files.clone(), Arc::downgrade(&shared));
        ca.spawn_watcher(move |added| {
            let Some(shared) = weak.upgrade() else { return };
            let Some(ca) = shared.authn.ca.as_ref() else { return };
            match crate::tls::server_config_with_crls(&files.cert, &files.key, &files.client_cas, ca.crls()) {
                Ok(cfg) => acc.store(Arc::new(TlsAcceptor::from(Arc::new(cfg)))),
                Err(e) => tracing::error!(error = %e, "rebuilding TLS with the new CRL failed; keeping the previous one"),
            }
            for r in added {
                let mut ev = AuditEvent::new(OffsetDateTime::now_utc(), "revocation");
                ev.decision = Some("revoked".to_string());
                ev.identity = r.identity.clone();
                ev.cert_serial = Some(r.serial_hex.clone());
                ev.reasons = vec![format!(
                    "certificate {} revoked at {} ({:?}); refused from now on, at new handshakes and on open connections",
                    r.serial_hex,
                    crate::authn::fmt_time(r.revoked_at),
                    r.reason
                )];
                let shared = shared.clone();
                tokio::spawn(async move { shared.audit.append(ev).await });
            }
        });
    }
    let workers = crate::workers::Workers::per_core(config.gateway.placement)
        .map_err(|e| GatewayError::Config(format!("starting connection workers: {e}")))?;
    let header_read_timeout = Duration::from_secs(config.gateway.header_read_timeout_secs.get());
    let task = tokio::spawn(accept_loop(
        workers,
        listener,
        acceptor,
        shared.clone(),
        stop_rx,
        header_read_timeout,
    ));
    Ok(RunningGateway {
        local_addr,
        admin_addr,
        console_addr,
        shared,
        stop,
        task,
    })
}

async fn fetch_jwks(
    cfg: &postern_policy::config::JwtConfig,
    url: &str,
) -> Result<JwtVerifier, GatewayError> {
    use http_body_util::BodyExt;
    let fail = |reason: String| {
        GatewayError::Jwks(crate::authn::JwksError::Fetch {
            url: url.to_string(),
            reason,
        })
    };
    let uri: http::Uri = url.parse().map_err(|e| fail(format!("{e}")))?;
    let client = upstream_client()?;
    let req = http::Request::get(uri)
        .body(crate::respond::full(bytes::Bytes::new()))
        .map_err(|e| fail(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| fail("timed out".to_string()))?
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("status {}", resp.status())));
    }
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| fail(e.to_string()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    Ok(JwtVerifier::new(cfg, &text, url)?)
}

async fn accept_loop(
    workers: crate::workers::Workers,
    listener: TcpListener,
    acceptor: Arc<ArcSwap<TlsAcceptor>>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    header_read_timeout: Duration,
) {
    // Each connection holds a clone of `live`; the drain below ends when the
    // last one is dropped.
    let (live, mut drained) = tokio::sync::mpsc::channel::<()>(1);
    // An HTTP/1.1 client gets `header_read_timeout` to send each request
    // head, counted from when the connection starts waiting for it: a
    // slow-header client, or an idle keep-alive connection, is closed then
    // (nginx: client_header_timeout, keepalive_timeout). hyper arms one
    // timer per request head for it.
    let mut auto = auto::Builder::new(TokioExecutor::new());
    auto.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    auto.http2().timer(TokioTimer::new());
    let auto = Arc::new(auto);
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let http1 = Arc::new(http1);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.load_full();
        let shared = shared.clone();
        let (auto, http1) = (auto.clone(), http1.clone());
        let (live, mut stop) = (live.clone(), stop.clone());
        // The worker registers the socket with its own reactor.
        let tcp = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handing a connection to a worker failed");
                continue;
            }
        };
        workers.spawn(async move {
            let _live = live;
            let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
                return;
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    handshake_refused(&shared, peer, e.to_string()).await;
                    return;
                }
                Err(_) => return,
            };
            let (_, session) = tls.get_ref();
            let now = OffsetDateTime::now_utc();
            let cert = PeerCert::from_chain(session.peer_certificates(), &shared.trust_domain, now);
            let tls_version = match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            };
            let h2 = session.alpn_protocol() == Some(b"h2");
            let conn = Arc::new(ConnInfo::new(peer, cert, tls_version));
            if h2 {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (shared, conn) = (shared.clone(), conn.clone());
                    async move { handle(&shared, &conn, req.map(ReqBody::Hyper)).await }
                });
                let fut = auto.serve_connection_with_upgrades(TokioIo::new(tls), svc);
                tokio::pin!(fut);
                tokio::select! {
                    _ = fut.as_mut() => return,
                    _ = stop.changed() => fut.as_mut().graceful_shutdown(),
                }
                let _ = fut.await;
            } else {
                // HTTP/1.1 (ALPN said so, or said nothing: h2 over TLS needs
                // ALPN, RFC 9113 §3.2): bodyless requests in postern's own
                // lane, the rest of the connection from the first other
                // request by hyper (`h1serve`).
                let svc = Connection { shared, conn };
                crate::h1serve::serve(tls, svc, http1, header_read_timeout, stop).await;
            }
        });
    }
    drop(listener);
    drop(live);
    if tokio::time::timeout(DRAIN_TIMEOUT, drained.recv())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not drain within {DRAIN_TIMEOUT:?}");
    }
}

/// One HTTP/1.1 connection's requests, answered by the gateway.
struct Connection {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
}

impl crate::h1serve::Handler for Connection {
    fn call(
        &self,
        req: Request<ReqBody>,
    ) -> impl std::future::Future<
        Output = Result<http::Response<crate::Body>, std::convert::Infallible>,
    > + Send
           + '_ {
        handle(&self.shared, &self.conn, req)
    }
}

/// A handshake the TLS layer refused (bad client chain, expired certificate,
/// wrong CA): audited, so refused credentials leave a trace.
async fn handshake_refused(shared: &Shared, peer: SocketAddr, reason: String) {
    // Plain port scans and clients that hang up are not worth a record.
    if reason.contains("unexpected end of file") || reason.contains("connection reset") {
        return;
    }
    let mut ev = AuditEvent::new(OffsetDateTime::now_utc(), "handshake");
    ev.peer = Some(peer.ip().to_string());
    ev.decision = Some("refused".to_string());
    ev.reasons = vec![format!("TLS handshake refused: {reason}")];
    shared.audit.append(ev).await;
    // A refused client certificate is a failed authentication from this source.
    if let Some(model) = shared.runtime.load().policy.risk() {
        shared
            .risk
            .auth_failure(model, peer.ip(), OffsetDateTime::now_utc());
    }
    crate::alerts::handshake_refused(shared, peer, &reason);
}
