//! The admin console (issue 5, point 5): one server-rendered page on its own
//! TLS listener, behind mTLS with an admin identity. It shows what the side
//! gates are doing right now — opt-out rules and their time to expiry,
//! recent opt-out uses (newest first, refreshed every few seconds), active
//! grant certificates and consents with revoke buttons, the loaded policy's
//! digest and approvers, and the risk signals that fired most.
//!
//! Invariants:
//! - No certificate, no console: the listener's TLS verifier *requires* a
//!   client certificate chaining to the configured client CAs (unlike the
//!   gateway's, which lets certificate-less clients reach opt-out routes),
//!   with the CA's current CRL.
//! - Per request, the certificate must still be valid and unrevoked, and its
//!   principal must be in `[admin] console_identities`; anything else is 403.
//!   There is no login page: mTLS is the login.
//! - Every state-changing form is a POST carrying a CSRF token bound to the
//!   admin's certificate fingerprint (HMAC under a per-process key), and is
//!   refused when the browser says it comes from another site.
//! - Everything shown is HTML-escaped; the page runs no script
//!   (`Content-Security-Policy: default-src 'none'`).
//! - Admin actions (revocations) are audited.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration as StdDuration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HOST, LOCATION};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use postern_audit::AuditEvent;
use postern_pki::{IssuedRecord, RevocationReason};
use rustls_pki_types::CertificateRevocationListDer;
use sha2::Sha256;
use time::{Duration, OffsetDateTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::authn::PeerCert;
use crate::consent::ConsentStore;
use crate::{Body, Shared};

/// How many recent opt-out uses the console keeps (a ring buffer).
pub const MAX_RECENT_USES: usize = 200;
/// The page refreshes itself this often (seconds): "live" without script.
pub const REFRESH_SECS: u32 = 5;
const HANDSHAKE_TIMEOUT: StdDuration = StdDuration::from_secs(10);
const MAX_FORM_BYTES: usize = 8 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// One honoured opt-out, as the console lists it (recorded once its
/// durable audit record is written).
#[derive(Debug, Clone)]
pub struct OptOutUse {
    pub at: OffsetDateTime,
    pub rule: String,
    pub request_id: String,
    /// Sequence number of the durable audit record.
    pub audit_seq: u64,
    pub identity: Option<String>,
    pub peer: String,
    pub method: String,
    pub path: Option<String>,
    /// The certificate grant it used, if any.
    pub grant: Option<String>,
}

/// The policy serving now, as the console shows it.
#[derive(Debug, Clone, Default)]
pub struct PolicyInfo {
    /// 0: the policy the gateway started with; +1 per reload swapped in.
    pub generation: u64,
    pub loaded_at: Option<OffsetDateTime>,
    pub config: String,
    /// The opt-out digest (`postern policy digest`).
    pub digest: Option<String>,
    /// Reviewers whose approvals of the digest counted.
    pub approvers: Vec<String>,
    /// Approvals needed, when review is enforced.
    pub quorum: Option<usize>,
}

impl PolicyInfo {
    /// What the console shows for `config` as loaded at `now` (digest and
    /// approvers computed here; review problems only leave them out, the
    /// loader has already enforced review).
    pub fn of(config: &postern_policy::Config, generation: u64, now: OffsetDateTime) -> PolicyInfo {
        let (approvers, quorum) = match postern_review::check_config(config) {
            Ok(Some(status)) => (
                status.verification.approvers,
                Some(status.verification.quorum),
            ),
            _ => (Vec::new(), None),
        };
        PolicyInfo {
            generation,
            loaded_at: Some(now),
            config: config.source.path.display().to_string(),
            digest: Some(postern_review::digest(config)),
            approvers,
            quorum,
        }
    }
}

/// The risk module's answer to "which signals fired most": `(signal,
/// scored requests it added points to)`, most first.
pub type TopSignalsFn = dyn Fn() -> Vec<(String, u64)> + Send + Sync;

/// What the console reads that the request path writes, and the hooks other
/// modules fill. Lives in [`Shared`].
pub struct ConsoleState {
    recent: Mutex<VecDeque<OptOutUse>>,
    total_uses: std::sync::atomic::AtomicU64,
    policy: ArcSwap<PolicyInfo>,
    /// Hook: the risk module installs its "fired most" counter here
    /// (`shared.console.top_signals.set(Box::new(move || ...))`).
    pub top_signals: OnceLock<Box<TopSignalsFn>>,
    /// Hook: the consent store, once the gateway has one
    /// (`shared.console.consents.set(store.clone())`): its active consents
    /// are listed with revoke buttons.
    pub consents: OnceLock<Arc<ConsentStore>>,
    csrf_key: [u8; 32],
}

impl ConsoleState {
    pub fn new(policy: PolicyInfo) -> ConsoleState {
        ConsoleState {
            recent: Mutex::new(VecDeque::with_capacity(MAX_RECENT_USES)),
            total_uses: std::sync::atomic::AtomicU64::new(0),
            policy: ArcSwap::from_pointee(policy),
            top_signals: OnceLock::new(),
            consents: OnceLock::new(),
            csrf_key: rand::random(),
        }
    }

    /// Record an honoured opt-out (the newest is kept first; the oldest
    /// beyond [`MAX_RECENT_USES`] is dropped).
    pub fn optout_used(&self, u: OptOutUse) {
        self.total_uses
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut r) = self.recent.lock() {
            if r.len() >= MAX_RECENT_USES {
                r.pop_back();
            }
            r.push_front(u);
        }
    }

    /// Recent opt-out uses, newest first.
    pub fn recent_uses(&self) -> Vec<OptOutUse> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Opt-out uses since the gateway started.
    pub fn total_uses(&self) -> u64 {
        self.total_uses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A policy was swapped in (the reloader calls this).
    pub fn policy_loaded(&self, info: PolicyInfo) {
        self.policy.store(Arc::new(info));
    }

    pub fn policy(&self) -> Arc<PolicyInfo> {
        self.policy.load_full()
    }

    /// The CSRF token for forms shown to the holder of the certificate with
    /// this fingerprint.
    pub fn csrf_token(&self, fingerprint: &str) -> String {
        self.csrf_mac(fingerprint)
            .map(|m| hex::encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    fn csrf_ok(&self, fingerprint: &str, token: &str) -> bool {
        let Ok(bytes) = hex::decode(token) else {
            return false;
        };
        // Constant-time comparison (hmac's verify); an empty token never matches.
        self.csrf_mac(fingerprint)
            .is_some_and(|m| m.verify_slice(&bytes).is_ok())
    }

    fn csrf_mac(&self, fingerprint: &str) -> Option<HmacSha256> {
        let mut m = HmacSha256::new_from_slice(&self.csrf_key).ok()?;
        m.update(b"postern-console-csrf\n");
        m.update(fingerprint.as_bytes());
        Some(m)
    }
}

/// Where the console's TLS material is, and the acceptor built from it with
/// the CRLs current when it was built (rebuilt when they change).
struct ConsoleTls {
    cert: PathBuf,
    key: PathBuf,
    client_cas: Vec<PathBuf>,
    current: Mutex<(Vec<CertificateRevocationListDer<'static>>, TlsAcceptor)>,
}

impl ConsoleTls {
    fn new(
        cert: PathBuf,
        key: PathBuf,
        client_cas: Vec<PathBuf>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<ConsoleTls, crate::tls::TlsError> {
        let cfg = crate::tls::console_server_config(&cert, &key, &client_cas, crls.clone())?;
        Ok(ConsoleTls {
            cert,
            key,
            client_cas,
            current: Mutex::new((crls, TlsAcceptor::from(Arc::new(cfg)))),
        })
    }

    /// The acceptor for a new connection: rebuilt first if the CA's CRL
    /// changed since (a revoked admin certificate fails the handshake).
    fn acceptor(&self, shared: &Shared) -> Option<TlsAcceptor> {
        let crls = shared
            .authn
            .ca
            .as_ref()
            .map(|c| c.crls())
            .unwrap_or_default();
        let mut cur = self.current.lock().ok()?;
        if cur.0 != crls {
            match crate::tls::console_server_config(
                &self.cert,
                &self.key,
                &self.client_cas,
                crls.clone(),
            ) {
                Ok(cfg) => *cur = (crls, TlsAcceptor::from(Arc::new(cfg))),
                Err(e) => {
                    tracing::error!(error = %e, "rebuilding the console's TLS with the new CRL failed; keeping the previous one")
                }
            }
        }
        Some(cur.1.clone())
    }
}

/// Start the console when `[admin] console_listen` is configured: bind,
/// build its TLS (the gateway's certificate; client certificates from
/// `[tls] client_ca` required) and serve until `stop` fires.
pub(crate) async fn start(
    config: &postern_policy::Config,
    shared: &Arc<Shared>,
    stop: watch::Receiver<bool>,
) -> Result<Option<SocketAddr>, crate::GatewayError> {
    let Some(admin) = &config.admin else {
        return Ok(None);
    };
    let Some(listen) = admin.console_listen else {
        return Ok(None);
    };
    if admin.console_identities.is_empty() {
        return Err(crate::GatewayError::Config(
            "[admin] console_listen needs console_identities: the principals whose client certificates open the console".to_string(),
        ));
    }
    let crls = shared
        .authn
        .ca
        .as_ref()
        .map(|c| c.crls())
        .unwrap_or_default();
    let tls = Arc::new(ConsoleTls::new(
        config.resolve(&config.tls.cert),
        config.resolve(&config.tls.key),
        config
            .tls
            .client_ca
            .iter()
            .map(|p| config.resolve(p))
            .collect(),
        crls,
    )?);
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| crate::GatewayError::Bind {
            addr: listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| crate::GatewayError::Bind {
            addr: listen,
            source,
        })?;
    tracing::info!(%addr, identities = %admin.console_identities.join(","), "admin console (mTLS) listening");
    tokio::spawn(serve(
        listener,
        tls,
        shared.clone(),
        Arc::new(admin.console_identities.clone()),
        stop,
    ));
    Ok(Some(addr))
}

/// Serve the console until `stop` fires.
async fn serve(
    listener: TcpListener,
    tls: Arc<ConsoleTls>,
    shared: Arc<Shared>,
    identities: Arc<Vec<String>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "console accept failed");
                    tokio::time::sleep(StdDuration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(acceptor) = tls.acceptor(&shared) else {
            continue;
        };
        let shared = shared.clone();
        let identities = identities.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    refused_handshake(&shared, peer, e.to_string()).await;
                    return;
                }
                Err(_) => return,
            };
            let cert = PeerCert::from_chain(
                stream.get_ref().1.peer_certificates(),
                &shared.trust_domain,
                OffsetDateTime::now_utc(),
            );
            let conn = Arc::new(Conn { peer, cert });
            let svc = service_fn(move |req| {
                handle(shared.clone(), conn.clone(), identities.clone(), req)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(StdDuration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn refused_handshake(shared: &Shared, peer: SocketAddr, reason: String) {
    if reason.contains("unexpected end of file") || reason.contains("connection reset") {
        return;
    }
    let mut ev = AuditEvent::new(OffsetDateTime::now_utc(), "console");
    ev.peer = Some(peer.ip().to_string());
    ev.decision = Some("refused".to_string());
    ev.reasons = vec![format!("admin console TLS handshake refused: {reason}")];
    shared.audit.append(ev).await;
}

struct Conn {
    peer: SocketAddr,
    cert: PeerCert,
}

/// The admin behind a request.
struct Admin {
    principal: String,
    serial: String,
    fingerprint: String,
}

/// Who is asking, if they may: a valid, unrevoked certificate naming one of
/// the console identities.
fn admin(
    shared: &Shared,
    conn: &Conn,
    identities: &[String],
    now: OffsetDateTime,
) -> Result<Admin, String> {
    let vc = match &conn.cert {
        PeerCert::Valid(vc) => vc,
        PeerCert::Invalid { reason, .. } => {
            return Err(format!("the client certificate is not usable: {reason}"))
        }
        PeerCert::None => return Err("a client certificate is required".to_string()),
    };
    let id = &vc.identity;
    if now > id.not_after {
        return Err("the client certificate has expired".to_string());
    }
    if let Some(ca) = &shared.authn.ca {
        if ca.revoked(&id.serial_hex).is_some() {
            return Err(format!(
                "the client certificate {} is revoked",
                id.serial_hex
            ));
        }
    }
    if !identities.iter().any(|i| i == &id.principal) {
        return Err(format!(
            "`{}` is not an admin console identity",
            id.principal
        ));
    }
    Ok(Admin {
        principal: id.principal.clone(),
        serial: id.serial_hex.clone(),
        fingerprint: id.fingerprint_sha256.clone(),
    })
}

async fn handle(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    identities: Arc<Vec<String>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let now = OffsetDateTime::now_utc();
    let admin = match admin(&shared, &conn, &identities, now) {
        Ok(a) => a,
        Err(why) => {
            let mut ev = AuditEvent::new(now, "console");
            ev.peer = Some(conn.peer.ip().to_string());
            ev.method = Some(req.method().as_str().to_string());
            ev.path = Some(req.uri().path().to_string());
            if let PeerCert::Valid(vc) = &conn.cert {
                ev.identity = Some(vc.identity.principal.clone());
                ev.cert_serial = Some(vc.identity.serial_hex.clone());
                ev.cert_fingerprint = Some(vc.identity.fingerprint_sha256.clone());
            }
            ev.decision = Some("forbidden".to_string());
            ev.status = Some(403);
            ev.reasons = vec![why.clone()];
            shared.audit.append(ev).await;
            return Ok(html(
                StatusCode::FORBIDDEN,
                page(
                    "Forbidden",
                    &format!("<h1>Forbidden</h1><p>{}</p>", esc(&why)),
                    false,
                ),
            ));
        }
    };
    let path = req.uri().path().to_string();
    let resp = match (req.method().clone(), path.as_str()) {
        (Method::GET, "/") => {
            let notice = req.uri().query().and_then(notice_of);
            let body = render(&shared, &admin, now, notice.as_deref()).await;
            html(StatusCode::OK, body)
        }
        (Method::POST, "/grants/revoke") => match form(&shared, &admin, req).await {
            Ok(f) => revoke_grant(&shared, &admin, conn.peer, &f, now).await,
            Err(resp) => resp,
        },
        (Method::POST, "/consents/revoke") => match form(&shared, &admin, req).await {
            Ok(f) => revoke_consent(&shared, &admin, conn.peer, &f, now).await,
            Err(resp) => resp,
        },
        (_, "/" | "/grants/revoke" | "/consents/revoke") => html(
            StatusCode::METHOD_NOT_ALLOWED,
            page("Method not allowed", "<h1>Method not allowed</h1>", false),
        ),
        _ => html(
            StatusCode::NOT_FOUND,
            page(
                "Not found",
                "<h1>Not found</h1><p><a href=\"/\">The console</a></p>",
                false,
            ),
        ),
    };
    Ok(resp)
}

type Form = std::collections::HashMap<String, String>;

/// Read a POSTed form, refusing cross-site posts and a missing or wrong
/// CSRF token (403).
async fn form(
    shared: &Shared,
    admin: &Admin,
    req: Request<Incoming>,
) -> Result<Form, Response<Body>> {
    let refuse = |why: &str| {
        html(
            StatusCode::FORBIDDEN,
            page(
                "Refused",
                &format!(
                    "<h1>Refused</h1><p>{}</p><p><a href=\"/\">Back to the console</a></p>",
                    esc(why)
                ),
                false,
            ),
        )
    };
    let (parts, body) = req.into_parts();
    let h = &parts.headers;
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(refuse("cross-site form posts are refused"));
        }
    }
    if let Some(origin) = h.get("origin").and_then(|v| v.to_str().ok()) {
        let host = h.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
        if origin != format!("https://{host}") {
            return Err(refuse("the form comes from another origin"));
        }
    }
    let bytes = match Limited::new(body, MAX_FORM_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(refuse("the form is too large or unreadable")),
    };
    let f = crate::consent::parse_form(&bytes);
    let token = f.get("csrf").map(String::as_str).unwrap_or("");
    if !shared.console.csrf_ok(&admin.fingerprint, token) {
        return Err(refuse(
            "the form's CSRF token is missing or wrong: reload the console and try again",
        ));
    }
    Ok(f)
}

async fn revoke_grant(
    shared: &Shared,
    admin: &Admin,
    peer: SocketAddr,
    f: &Form,
    now: OffsetDateTime,
) -> Response<Body> {
    let Some(ca) = shared.authn.ca.clone() else {
        return html(
            StatusCode::NOT_FOUND,
            page("No CA", "<h1>This gateway has no built-in CA</h1>", false),
        );
    };
    let Ok(serial) =
        postern_pki::normalize_serial(f.get("serial").map(String::as_str).unwrap_or(""))
    else {
        return html(
            StatusCode::BAD_REQUEST,
            page("Bad serial", "<h1>Not a certificate serial</h1>", false),
        );
    };
    let ca2 = ca.clone();
    let serial2 = serial.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(IssuedRecord, bool), String> {
        let store = ca2.store();
        let rec = store
            .issued()
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| r.serial_hex == serial2)
            .ok_or_else(|| format!("certificate {serial2} was not issued by this CA"))?;
        let newly = store
            .revoke(&serial2, RevocationReason::PrivilegeWithdrawn, now)
            .map_err(|e| e.to_string())?;
        // Effective at once here; the watcher rebuilds the TLS layer's CRL.
        ca2.reload()?;
        Ok((rec, newly))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let mut ev = AuditEvent::new(now, "console");
    ev.peer = Some(peer.ip().to_string());
    ev.identity = Some(admin.principal.clone());
    ev.cert_serial = Some(admin.serial.clone());
    ev.cert_fingerprint = Some(admin.fingerprint.clone());
    match result {
        Ok((rec, newly)) => {
            ev.decision = Some("revoked".to_string());
            ev.reasons = vec![format!(
                "admin `{}` revoked certificate {} of `{}` (grants: {}) from the console",
                admin.principal,
                rec.serial_hex,
                rec.identity,
                rec.grants.join(", ")
            )];
            ev.extra = Some(serde_json::json!({
                "action": "revoke_certificate",
                "serial": rec.serial_hex,
                "holder": rec.identity,
                "grants": rec.grants,
                "newly_revoked": newly,
            }));
            if let Err(e) = shared.audit.append_durable(ev).await {
                tracing::error!(error = %e, serial = %serial, "auditing a console revocation failed (the certificate is revoked)");
            }
            see_other(&format!("/?revoked={serial}"))
        }
        Err(why) => {
            ev.decision = Some("failed".to_string());
            ev.reasons = vec![format!("console revocation of {serial} failed: {why}")];
            shared.audit.append(ev).await;
            html(
                StatusCode::BAD_REQUEST,
                page(
                    "Not revoked",
                    &format!(
                        "<h1>Not revoked</h1><p>{}</p><p><a href=\"/\">Back to the console</a></p>",
                        esc(&why)
                    ),
                    false,
                ),
            )
        }
    }
}

async fn revoke_consent(
    shared: &Shared,
    admin: &Admin,
    peer: SocketAddr,
    f: &Form,
    now: OffsetDateTime,
) -> Response<Body> {
    let Some(store) = shared.console.consents.get() else {
        return html(
            StatusCode::NOT_FOUND,
            page(
                "No consents",
                "<h1>This gateway keeps no consents</h1>",
                false,
            ),
        );
    };
    let id = f.get("id").map(String::as_str).unwrap_or("");
    let Some(rec) = store.all_active(now).into_iter().find(|r| r.id == id) else {
        return html(
            StatusCode::NOT_FOUND,
            page(
                "No such consent",
                "<h1>No active consent with that id</h1><p><a href=\"/\">Back</a></p>",
                false,
            ),
        );
    };
    let result = store.revoke(&rec.id, Some(&rec.principal), None, now);
    let mut ev = AuditEvent::new(now, "console");
    ev.peer = Some(peer.ip().to_string());
    ev.identity = Some(admin.principal.clone());
    ev.cert_serial = Some(admin.serial.clone());
    ev.cert_fingerprint = Some(admin.fingerprint.clone());
    ev.extra = Some(serde_json::json!({
        "action": "revoke_consent",
        "consent": rec.id,
        "holder": rec.principal,
        "offer": rec.offer,
    }));
    match result {
        Ok(_) => {
            ev.decision = Some("revoked".to_string());
            ev.reasons = vec![format!(
                "admin `{}` revoked consent {} of `{}` to offer `{}` from the console",
                admin.principal, rec.id, rec.principal, rec.offer
            )];
            if let Err(e) = shared.audit.append_durable(ev).await {
                tracing::error!(error = %e, "auditing a console consent revocation failed (the consent is revoked)");
            }
            see_other("/?consent_revoked=1")
        }
        Err(e) => {
            ev.decision = Some("failed".to_string());
            ev.reasons = vec![format!(
                "console revocation of consent {} failed: {e}",
                rec.id
            )];
            shared.audit.append(ev).await;
            html(
                StatusCode::INTERNAL_SERVER_ERROR,
                page(
                    "Not revoked",
                    &format!("<h1>Not revoked</h1><p>{}</p>", esc(&e.to_string())),
                    false,
                ),
            )
        }
    }
}

/// The notice to show after a redirect (`?revoked=<serial>`): only what
/// the console itself puts there, and escaped anyway.
fn notice_of(query: &str) -> Option<String> {
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("revoked", s))
                if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                return Some(format!(
                    "Certificate {s} revoked: its holder is refused within a second."
                ));
            }
            Some(("consent_revoked", _)) => {
                return Some(
                    "Consent revoked: it stops applying at the holder's next request.".to_string(),
                )
            }
            _ => {}
        }
    }
    None
}

fn see_other(location: &str) -> Response<Body> {
    let mut r = html(StatusCode::SEE_OTHER, String::new());
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(crate::respond::full(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    r
}

/// HTML-escape text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    crate::consent::esc(s)
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1b1b;background:#fafafa}\
header{background:#22303c;color:#fff;padding:.7rem 1.5rem;display:flex;justify-content:space-between;align-items:baseline;flex-wrap:wrap}\
header h1{font-size:1.2rem;margin:0}header span{opacity:.85;font-size:.9rem}\
main{padding:.5rem 1.5rem 2rem;max-width:80rem}\
section{background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:.4rem 1rem .8rem;margin:1rem 0}\
h2{font-size:1.05rem;margin:.6rem 0}table{border-collapse:collapse;width:100%;font-size:.9rem}\
th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #eee;vertical-align:top}th{background:#f3f3f3;font-weight:600}\
code{font-size:.85rem;background:#f3f3f3;padding:0 .2rem;border-radius:3px}.muted{color:#666}\
.ok{color:#1b5e20}.warn{color:#a15c00;font-weight:600}.bad{color:#b71c1c;font-weight:600}\
.notice{background:#e8f5e9;border-left:4px solid #2e7d32;padding:.5rem 1rem;margin-top:1rem}\
dl{display:grid;grid-template-columns:10rem 1fr;gap:.2rem 1rem;margin:.3rem 0}dt{font-weight:600}\
button{font:inherit;font-size:.85rem;padding:.15rem .7rem;border:1px solid #b71c1c;color:#b71c1c;background:#fff;border-radius:4px;cursor:pointer}\
button:hover{background:#fdecea}form{margin:0}td:first-child code{white-space:nowrap}";

fn page(title: &str, body: &str, refresh: bool) -> String {
    let meta = if refresh {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}; url=/\">")
    } else {
        String::new()
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>{meta}<meta name=viewport content=\"width=device-width\"><title>{t} — postern admin</title><style>{STYLE}</style></head><body>{body}</body></html>",
        t = esc(title)
    )
}

fn fmt_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// A duration for people: `29 d 23 h`, `5 h 12 min`, `42 s`.
pub fn human(d: Duration) -> String {
    let s = d.whole_seconds().max(0);
    let (days, hours, mins) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    if days > 0 {
        format!("{days} d {hours} h")
    } else if hours > 0 {
        format!("{hours} h {mins} min")
    } else if mins > 0 {
        format!("{mins} min {} s", s % 60)
    } else {
        format!("{s} s")
    }
}

/// The whole page.
async fn render(
    shared: &Shared,
    admin: &Admin,
    now: OffsetDateTime,
    notice: Option<&str>,
) -> String {
    let csrf = shared.console.csrf_token(&admin.fingerprint);
    let mut b = String::with_capacity(16 * 1024);
    let _ = write!(
        b,
        "<header><h1>postern admin console</h1><span>signed in as <strong>{}</strong> (certificate <code style=\"background:none;color:#fff\">{}</code>) · {} · refreshes every {REFRESH_SECS} s</span></header><main>",
        esc(&admin.principal),
        esc(short(&admin.serial, 16)),
        esc(&fmt_time(now)),
    );
    if let Some(n) = notice {
        let _ = write!(b, "<p class=notice role=status>{}</p>", esc(n));
    }
    policy_section(&mut b, shared);
    rules_section(&mut b, shared, now);
    uses_section(&mut b, shared, now);
    grants_section(&mut b, shared, now, &csrf).await;
    consents_section(&mut b, shared, now, &csrf);
    signals_section(&mut b, shared);
    b.push_str("</main>");
    page("Console", &b, true)
}

fn short(s: &str, n: usize) -> &str {
    s.get(..n).unwrap_or(s)
}

fn policy_section(b: &mut String, shared: &Shared) {
    let p = shared.console.policy();
    b.push_str("<section id=policy><h2>Loaded policy</h2><dl>");
    let _ = write!(
        b,
        "<dt>Generation</dt><dd>{} <span class=muted>(0 = the policy loaded at start)</span></dd>",
        p.generation
    );
    if let Some(t) = p.loaded_at {
        let _ = write!(b, "<dt>Loaded at</dt><dd>{}</dd>", esc(&fmt_time(t)));
    }
    let _ = write!(b, "<dt>Config</dt><dd><code>{}</code></dd>", esc(&p.config));
    match &p.digest {
        Some(d) => {
            let _ = write!(
                b,
                "<dt>Opt-out digest</dt><dd><code id=digest>{}</code></dd>",
                esc(d)
            );
        }
        None => b.push_str("<dt>Opt-out digest</dt><dd class=muted>unknown</dd>"),
    }
    match p.quorum {
        Some(q) => {
            let names = if p.approvers.is_empty() {
                "<span class=bad>none</span>".to_string()
            } else {
                p.approvers
                    .iter()
                    .map(|a| format!("<code>{}</code>", esc(a)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = write!(b, "<dt>Approved by</dt><dd id=approvers>{names} <span class=muted>({} of {q} needed)</span></dd>", p.approvers.len());
        }
        None => b.push_str(
            "<dt>Approved by</dt><dd class=warn>review is not enforced ([review] absent)</dd>",
        ),
    }
    b.push_str("</dl></section>");
}

fn rules_section(b: &mut String, shared: &Shared, now: OffsetDateTime) {
    let runtime = shared.runtime.load_full();
    let mut rules: Vec<_> = runtime.policy.optouts().collect();
    rules.sort_by_key(|r| r.expires());
    let _ = write!(
        b,
        "<section id=rules><h2>Opt-out rules ({})</h2>",
        rules.len()
    );
    if rules.is_empty() {
        b.push_str("<p class=muted>No opt-out rules: every request authenticates.</p></section>");
        return;
    }
    b.push_str("<table><thead><tr><th>Rule</th><th>Where</th><th>Waives</th><th>Narrowed by</th><th>Owner</th><th>Reason</th><th>Expires</th></tr></thead><tbody>");
    for r in rules {
        let left = r.expires() - now;
        let expiry = if left <= Duration::ZERO {
            format!(
                "<span class=bad>expired</span> {}",
                esc(&fmt_time(r.expires()))
            )
        } else {
            let class = if left < Duration::days(1) {
                "bad"
            } else if left < Duration::days(7) {
                "warn"
            } else {
                "ok"
            };
            format!(
                "<span class={class}>in {}</span><br><span class=muted>{}</span>",
                esc(&human(left)),
                esc(&fmt_time(r.expires()))
            )
        };
        let paths = r
            .paths()
            .iter()
            .map(|p| format!("<code>{}</code>", esc(&p.to_string())))
            .collect::<Vec<_>>()
            .join(" ");
        let mut narrow = Vec::new();
        if let Some(c) = r.source_cidrs() {
            narrow.push(format!(
                "from {}",
                esc(&c
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(", "))
            ));
        }
        if let Some(w) = r.time_window() {
            narrow.push(format!("within {}", esc(&w.to_string())));
        }
        if r.webhook().is_some() {
            narrow.push("signed webhook".to_string());
        }
        if r.require_grant() {
            narrow.push("certificate grant".to_string());
        }
        if let Some(m) = r.max_risk() {
            narrow.push(format!("risk ≤ {m}"));
        }
        if let Some(o) = r.offer() {
            narrow.push(format!("user consent (offer <code>{}</code>)", esc(&o.id)));
        }
        if r.allow_upgrade() {
            narrow.push("upgrades allowed".to_string());
        }
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>route <code>{}</code><br>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r.id()),
            esc(r.route()),
            esc(&r.methods().join(" ")),
            paths,
            esc(&r.waived().to_string()),
            if narrow.is_empty() { "<span class=warn>nothing</span>".to_string() } else { narrow.join("<br>") },
            esc(r.owner()),
            esc(r.reason()),
            expiry
        );
    }
    b.push_str("</tbody></table></section>");
}

fn uses_section(b: &mut String, shared: &Shared, now: OffsetDateTime) {
    let uses = shared.console.recent_uses();
    let _ = write!(
        b,
        "<section id=uses><h2>Recent opt-out uses <span class=muted>(newest first; last {} of {} since start)</span></h2>",
        uses.len(),
        shared.console.total_uses()
    );
    if uses.is_empty() {
        b.push_str(
            "<p class=muted>No opt-out has been used since the gateway started.</p></section>",
        );
        return;
    }
    b.push_str("<table><thead><tr><th>When</th><th>Rule</th><th>Request</th><th>Who</th><th>From</th><th>Grant</th><th>Audit record</th></tr></thead><tbody>");
    for u in uses {
        let _ = write!(
            b,
            "<tr><td>{} ago<br><span class=muted>{}</span></td><td><code>{}</code></td><td>{} <code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>#{} <span class=muted>{}</span></td></tr>",
            esc(&human(now - u.at)),
            esc(&fmt_time(u.at)),
            esc(&u.rule),
            esc(&u.method),
            esc(u.path.as_deref().unwrap_or("")),
            u.identity.as_deref().map_or_else(|| "<span class=muted>anonymous</span>".to_string(), esc),
            esc(&u.peer),
            u.grant.as_deref().map_or_else(|| "<span class=muted>—</span>".to_string(), |g| format!("<code>{}</code>", esc(g))),
            u.audit_seq,
            esc(short(&u.request_id, 12)),
        );
    }
    b.push_str("</tbody></table></section>");
}

async fn grants_section(b: &mut String, shared: &Shared, now: OffsetDateTime, csrf: &str) {
    b.push_str("<section id=grants><h2>Active grants</h2>");
    let Some(ca) = shared.authn.ca.clone() else {
        b.push_str("<p class=muted>This gateway has no built-in CA ([ca] absent): grant certificates are not tracked here.</p></section>");
        return;
    };
    let ca2 = ca.clone();
    let issued = tokio::task::spawn_blocking(move || ca2.store().issued())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let issued = match issued {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(
                b,
                "<p class=bad>Cannot read the CA's issuance index: {}</p></section>",
                esc(&e)
            );
            return;
        }
    };
    let mut live: Vec<IssuedRecord> = issued
        .into_iter()
        .filter(|r| {
            !r.grants.is_empty() && r.not_after > now && ca.revoked(&r.serial_hex).is_none()
        })
        .collect();
    live.sort_by_key(|r| r.not_after);
    if live.is_empty() {
        b.push_str(
            "<p class=muted>No unexpired, unrevoked certificate carries a grant.</p></section>",
        );
        return;
    }
    b.push_str("<table><thead><tr><th>Holder</th><th>Grants</th><th>Certificate</th><th>Issued</th><th>Expires</th><th></th></tr></thead><tbody>");
    for r in live {
        let grants = r
            .grants
            .iter()
            .map(|g| format!("<code>{}</code>", esc(g)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            b,
            "<tr><td><code>{holder}</code></td><td>{grants}</td><td><code title=\"{serial}\">{short}</code></td><td>{issued}</td><td>in {left}<br><span class=muted>{exp}</span></td><td><form method=post action=\"/grants/revoke\"><input type=hidden name=csrf value=\"{csrf}\"><input type=hidden name=serial value=\"{serial}\"><button type=submit aria-label=\"Revoke certificate {serial}\">Revoke</button></form></td></tr>",
            holder = esc(&r.identity),
            serial = esc(&r.serial_hex),
            short = esc(short(&r.serial_hex, 16)),
            issued = esc(&fmt_time(r.issued_at)),
            left = esc(&human(r.not_after - now)),
            exp = esc(&fmt_time(r.not_after)),
            csrf = esc(csrf),
        );
    }
    b.push_str("</tbody></table></section>");
}

fn consents_section(b: &mut String, shared: &Shared, now: OffsetDateTime, csrf: &str) {
    b.push_str("<section id=consents><h2>Consents</h2>");
    let Some(store) = shared.console.consents.get() else {
        b.push_str("<p class=muted>This gateway keeps no consent store: no user-chosen opt-outs are offered.</p></section>");
        return;
    };
    let active = store.all_active(now);
    if active.is_empty() {
        b.push_str("<p class=muted>No active consents.</p></section>");
        return;
    }
    b.push_str("<table><thead><tr><th>Who</th><th>Offer</th><th>Disclosure (SHA-256)</th><th>Device</th><th>Given</th><th>Expires</th><th></th></tr></thead><tbody>");
    for c in active {
        let _ = write!(
            b,
            "<tr><td><code>{who}</code></td><td><code>{offer}</code></td><td><code>{sha}</code></td><td><code>{dev}</code></td><td>{given}</td><td>in {left}</td><td><form method=post action=\"/consents/revoke\"><input type=hidden name=csrf value=\"{csrf}\"><input type=hidden name=id value=\"{id}\"><button type=submit>Revoke</button></form></td></tr>",
            who = esc(&c.principal),
            offer = esc(&c.offer),
            sha = esc(short(&c.disclosure_sha256, 16)),
            dev = esc(short(&c.device, 12)),
            given = esc(&fmt_time(c.created)),
            left = esc(&human(c.expires - now)),
            csrf = esc(csrf),
            id = esc(&c.id),
        );
    }
    b.push_str("</tbody></table></section>");
}

fn signals_section(b: &mut String, shared: &Shared) {
    b.push_str("<section id=signals><h2>Risk signals that fired most</h2>");
    let Some(top) = shared.console.top_signals.get() else {
        b.push_str("<p class=muted>No risk scoring on this gateway.</p></section>");
        return;
    };
    let top = top();
    if top.is_empty() {
        b.push_str(
            "<p class=muted>No risk signal has fired since the gateway started.</p></section>",
        );
        return;
    }
    b.push_str("<table><thead><tr><th>Signal</th><th>Scored requests it added points to</th></tr></thead><tbody>");
    for (name, n) in top.iter().take(10) {
        let _ = write!(
            b,
            "<tr><td><code>{}</code></td><td>{n}</td></tr>",
            esc(name)
        );
    }
    b.push_str("</tbody></table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_buffer_keeps_the_newest_first_and_is_bounded() {
        let c = ConsoleState::new(PolicyInfo::default());
        for i in 0..(MAX_RECENT_USES + 50) {
            c.optout_used(OptOutUse {
                at: OffsetDateTime::UNIX_EPOCH,
                rule: format!("r{i}"),
                request_id: String::new(),
                audit_seq: i as u64,
                identity: None,
                peer: "127.0.0.1".to_string(),
                method: "GET".to_string(),
                path: None,
                grant: None,
            });
        }
        let uses = c.recent_uses();
        assert_eq!(uses.len(), MAX_RECENT_USES);
        assert_eq!(uses[0].rule, format!("r{}", MAX_RECENT_USES + 49));
        assert_eq!(c.total_uses(), (MAX_RECENT_USES + 50) as u64);
    }

    #[test]
    fn csrf_tokens_are_bound_to_the_certificate() {
        let c = ConsoleState::new(PolicyInfo::default());
        let t = c.csrf_token("aa");
        assert!(c.csrf_ok("aa", &t));
        assert!(!c.csrf_ok("bb", &t));
        assert!(!c.csrf_ok("aa", ""));
        assert!(!c.csrf_ok("aa", "zz"));
        // Another process (another key) does not accept it.
        assert!(!ConsoleState::new(PolicyInfo::default()).csrf_ok("aa", &t));
    }

    #[test]
    fn notices_carry_only_what_the_console_puts_there() {
        assert!(notice_of("revoked=0a1b").is_some());
        assert!(notice_of("revoked=<script>").is_none());
        assert!(notice_of("x=1").is_none());
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human(Duration::days(29) + Duration::hours(23)), "29 d 23 h");
        assert_eq!(human(Duration::minutes(312)), "5 h 12 min");
        assert_eq!(human(Duration::seconds(42)), "42 s");
        assert_eq!(human(Duration::seconds(-5)), "0 s");
    }
}
