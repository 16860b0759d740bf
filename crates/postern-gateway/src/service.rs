//! The request pipeline: refuse the ambiguous, normalize, authenticate,
//! decide, audit, forward.
//!
//! ```text
//! request ─► refuse (400) ─► normalize ─► authenticate ─► decide ─► [verify webhook]
//!         ─► [audit durably, for opt-outs] ─► forward ─► audit result
//! ```
//! Every answer is audited. An opt-out is honoured only after its audit record
//! is on disk; when the record cannot be written, or the webhook signature
//! does not verify, the decision falls back to full authentication.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::Scheme;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use postern_audit::AuditEvent;
use postern_policy::{decide, AuthVia, Condition, Decision, Identity, RequestFacts, Verdict};
use time::OffsetDateTime;

use crate::authn::{CredentialDetails, PeerCert};
use crate::h1serve::ReqBody;
use crate::headers;
use crate::respond;
use crate::session::SessionState;
use crate::upstream::Payload;
use crate::{Body, Shared};

/// What the gateway knows about a connection, fixed at handshake.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `peer`'s address as text and as an `x-forwarded-for` value: formatted
    /// once per connection, not per request.
    peer_ip: String,
    peer_ip_header: Option<HeaderValue>,
    pub cert: PeerCert,
    pub tls_version: &'static str,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, cert: PeerCert, tls_version: &'static str) -> ConnInfo {
        let peer_ip = peer.ip().to_string();
        ConnInfo {
            peer,
            peer_ip_header: HeaderValue::from_str(&peer_ip).ok(),
            peer_ip,
            cert,
            tls_version,
        }
    }
}

/// Per-request context carried into audit records.
struct Ctx {
    request_id: String,
    /// What names the request in each of its audit records.
    named: Named,
    started: Instant,
    /// The last audited `(decision, route)`: the final answer, for metrics.
    outcome: std::sync::Mutex<Option<Outcome>>,
    /// `Set-Cookie` values for the answer, whatever it is (session refresh,
    /// clearing an expired or refused session cookie).
    set_cookies: Vec<HeaderValue>,
    /// The request's risk score and contributions (`[risk]` configured).
    risk: Option<serde_json::Value>,
}

/// A request's final `(decision, route)`, counted in the metrics.
type Outcome = (&'static str, Option<Arc<str>>);

/// The strings that name a request in each of its audit records.
#[derive(Clone, Default)]
struct Named {
    peer: String,
    method: String,
    host: Option<String>,
    path: Option<String>,
    identity: Option<String>,
    auth: Option<String>,
    creds: CredentialDetails,
}

impl Ctx {
    /// An audit record of this request.
    fn event(
        &self,
        now: OffsetDateTime,
        decision: &'static str,
        status: u16,
        d: Option<&Decision>,
        reasons: Vec<String>,
    ) -> AuditEvent {
        let (named, request_id) = (self.named.clone(), self.request_id.clone());
        self.record(named, request_id, now, decision, status, d, reasons)
    }

    /// [`Ctx::event`] for the request's last record: the context's strings,
    /// the request id among them, move into it instead of being copied. Only
    /// the answer's head uses the request id after this, and it holds its own
    /// copy.
    fn take_event(
        &mut self,
        now: OffsetDateTime,
        decision: &'static str,
        status: u16,
        d: Option<&Decision>,
        reasons: Vec<String>,
    ) -> AuditEvent {
        let named = std::mem::take(&mut self.named);
        let request_id = std::mem::take(&mut self.request_id);
        self.record(named, request_id, now, decision, status, d, reasons)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        named: Named,
        request_id: String,
        now: OffsetDateTime,
        decision: &'static str,
        status: u16,
        d: Option<&Decision>,
        reasons: Vec<String>,
    ) -> AuditEvent {
        let mut ev = AuditEvent::new(now, "decision");
        ev.request_id = Some(request_id);
        ev.peer = Some(named.peer);
        ev.method = Some(named.method);
        ev.host = named.host;
        ev.path = named.path;
        ev.identity = named.identity;
        ev.auth = named.auth;
        ev.cert_serial = named.creds.cert_serial;
        ev.cert_fingerprint = named.creds.cert_fingerprint;
        ev.decision = Some(decision.to_string());
        ev.status = Some(status);
        ev.reasons = reasons;
        if let Ok(mut o) = self.outcome.lock() {
            *o = Some((decision, d.and_then(|d| d.route.clone())));
        }
        if let Some(d) = d {
            ev.route = d.route.as_deref().map(str::to_string);
            ev.rule = d.rule.as_deref().map(str::to_string);
            if let Some(g) = &d.grant {
                // Every use of a grant traces to the certificate that carries it.
                ev.extra = Some(serde_json::json!({ "grant": g.as_ref() }));
            }
        }
        if let Some(risk) = &self.risk {
            extra_insert(&mut ev, "risk", risk.clone());
        }
        ev
    }
}

/// Add `key` to a record's `extra` object, keeping what is there.
fn extra_insert(ev: &mut AuditEvent, key: &str, value: serde_json::Value) {
    match &mut ev.extra {
        Some(serde_json::Value::Object(map)) => {
            map.insert(key.to_string(), value);
        }
        Some(other) => {
            let other = other.take();
            ev.extra = Some(serde_json::json!({ "extra": other, key: value }));
        }
        None => ev.extra = Some(serde_json::json!({ key: value })),
    }
}

/// Entry point for every request on a connection.
///
/// It borrows the gateway and the connection: cloning the `Arc<Shared>` for
/// every request would bounce its reference count between the cores.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<ReqBody>,
) -> Result<Response<Body>, Infallible> {
    let _in_flight = crate::workers::InFlight::enter();
    let now = OffsetDateTime::now_utc();
    let mut ctx = Ctx {
        request_id: new_request_id(),
        named: Named {
            peer: conn.peer_ip.clone(),
            method: req.method().as_str().to_string(),
            ..Named::default()
        },
        started: Instant::now(),
        outcome: std::sync::Mutex::new(None),
        set_cookies: Vec::new(),
        risk: None,
    };
    let mut resp = match pipeline(shared, conn, req, now, &mut ctx).await {
        Ok(resp) => resp,
        Err(resp) => resp,
    };
    for c in ctx.set_cookies.drain(..) {
        resp.headers_mut().append(http::header::SET_COOKIE, c);
    }
    if let Ok(mut o) = ctx.outcome.lock() {
        if let Some((decision, route)) = o.take() {
            shared
                .metrics
                .request(decision, route.as_deref().unwrap_or(""));
        }
    }
    Ok(resp)
}

type Answer = Result<Response<Body>, Response<Body>>;

async fn pipeline(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    req: Request<ReqBody>,
    now: OffsetDateTime,
    ctx: &mut Ctx,
) -> Answer {
    let (parts, body) = req.into_parts();
    // 1. Refuse what is ambiguous before anything else looks at it.
    if let Err(why) = refuse_ambiguous(&parts) {
        return Err(bad_request(shared, ctx, now, why).await);
    }
    let host = match request_host(&parts) {
        Ok(h) => h,
        Err(why) => return Err(bad_request(shared, ctx, now, why).await),
    };
    ctx.named.host = Some(host.clone());
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("");
    let (path, query) = match postern_policy::split_target(target) {
        Ok((p, q)) => (p, q.map(str::to_string)),
        Err(e) => return Err(bad_request(shared, ctx, now, format!("ambiguous path: {e}")).await),
    };
    ctx.named.path = Some(path.as_str().to_string());

    // 2. Who is the client, who does it claim to be.
    let runtime = shared.runtime.load_full();
    let (client_ip, xff_chain) = headers::client_address(
        conn.peer.ip(),
        &parts.headers,
        runtime.policy.trusted_proxies(),
    );
    if client_ip != conn.peer.ip() {
        ctx.named.peer = client_ip.to_string();
    }
    // No chain from a trusted proxy: the chain is the peer alone.
    let xff = match xff_chain {
        Some(chain) => HeaderValue::from_str(&chain).ok(),
        None => conn.peer_ip_header.clone(),
    };
    let authz: Vec<&[u8]> = parts
        .headers
        .get_all(AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    // Browser sign-in: postern's own endpoints, then the session cookie.
    if let Some(oidc) = shared.oidc.as_deref() {
        if oidc.owns(path.as_str()) {
            let authority = crate::oidc::request_authority(&parts).unwrap_or_else(|| host.clone());
            let req = crate::oidc::EndpointRequest {
                method: &parts.method,
                path: path.as_str(),
                query: query.as_deref(),
                headers: &parts.headers,
                authority: &authority,
                request_id: &ctx.request_id,
                peer: &ctx.named.peer,
                host: &host,
            };
            let resp = Box::pin(oidc.endpoint(&req, &shared.audit, now)).await;
            return Err(offer_after_sign_in(
                shared,
                &runtime.policy,
                &host,
                &parts.headers,
                resp,
                now,
            ));
        }
    }
    let session = match shared.oidc.as_deref() {
        Some(oidc) => oidc.read_session(&parts.headers, now),
        None => SessionState::Absent,
    };
    match (&session, shared.oidc.as_deref()) {
        (
            SessionState::Valid {
                session: s,
                refresh: true,
            },
            Some(oidc),
        ) => {
            if let Ok(c) = oidc.sessions.refreshed(s, now) {
                ctx.set_cookies.push(c);
            }
        }
        (SessionState::Expired { .. }, _) => {
            ctx.set_cookies
                .push(crate::session::clear_cookie(crate::session::SESSION_COOKIE));
        }
        (SessionState::Invalid { reason }, _) => {
            ctx.set_cookies
                .push(crate::session::clear_cookie(crate::session::SESSION_COOKIE));
            let ev = crate::oidc::session_refused_event(
                now,
                &ctx.request_id,
                &ctx.named.peer,
                ctx.named.host.as_deref(),
                ctx.named.path.as_deref(),
                reason,
            );
            shared.audit.append(ev).await;
        }
        _ => {}
    }
    let (mut identity, creds) = shared
        .authn
        .authenticate_with_session(&conn.cert, &authz, &session, now);
    // User-chosen opt-outs: the consents this user gave on this device.
    let device = shared.consents.as_deref().and_then(|store| {
        crate::consent::cookies(&parts.headers)
            .get(crate::consent::DEVICE_COOKIE)
            .and_then(|v| store.parse_device_cookie(v))
    });
    // Set when the only thing naming the user is the device cookie: that name
    // may reach the upstream only through one of the user's own offers.
    let mut principal_from_device = false;
    if let (Some(store), Some((dev, who))) = (shared.consents.as_deref(), &device) {
        // Never across users: a device cookie of bob's does nothing for alice.
        if identity.principal.as_deref().is_none_or(|p| p == who) && identity.invalid.is_empty() {
            identity.consents = store.claims(who, dev, now);
            if identity.principal.is_none() && !identity.consents.is_empty() {
                identity.principal = Some(who.clone());
                principal_from_device = true;
            }
        }
    }
    ctx.named.creds = creds;
    ctx.named.identity = identity.principal.clone();
    if let Some(store) = shared.consents.clone() {
        if crate::consent::owns(path.as_str()) {
            let viewer = session.session().map(|s| crate::consent::Viewer {
                principal: s.principal.clone(),
                email_verified: s.email_verified,
                amr: s.amr.clone(),
            });
            let device = device.as_ref().map(|(d, who)| (d.as_str(), who.as_str()));
            return Err(Box::pin(consent_endpoint(
                shared,
                &store,
                &runtime.policy,
                &parts,
                body,
                query.as_deref(),
                &path,
                viewer,
                device,
                now,
                ctx,
            ))
            .await);
        }
    }
    let upgrade = parts.headers.contains_key(UPGRADE);

    // Certificate renewal is the gateway's own endpoint, never an upstream's.
    if path.as_str() == crate::certs::RENEW_PATH {
        if let Some(ca) = shared.authn.ca.clone() {
            return Err(
                Box::pin(renew(shared, conn, &ca, &parts, body, &identity, now, ctx)).await,
            );
        }
    }

    // 3. Decide (pure), with the request's risk score.
    let risk = assess_risk(
        shared,
        conn,
        &runtime.policy,
        &parts,
        &host,
        &path,
        client_ip,
        &identity,
        now,
        ctx,
    );
    let facts = RequestFacts {
        method: parts.method.as_str(),
        host: &host,
        path: &path,
        peer: client_ip,
        upgrade,
        risk,
    };
    let decide_started = Instant::now();
    let mut decision = decide(&runtime.policy, &facts, &identity, now);
    shared
        .metrics
        .decision_duration
        .observe(decide_started.elapsed());
    if principal_from_device {
        // A device cookie is no authentication: unless the user's own offer
        // let this request through, do not name them to the upstream (a
        // health-check or webhook opt-out must not arrive "as alice").
        let by_offer = decision.is_optout()
            && decision
                .rule
                .as_deref()
                .and_then(|r| runtime.policy.optout(r))
                .is_some_and(|r| r.offer().is_some());
        if !by_offer {
            identity.principal = None;
            ctx.named.identity = None;
        }
    }

    // 4. Conditions the core cannot check: the webhook signature over the body.
    let body = if let Some(Condition::WebhookSignature(spec)) = decision.condition.clone() {
        let limit = shared.max_body;
        match Limited::new(body, limit).collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let ts = header_str(&parts, &spec.timestamp_header);
                let sig = header_str(&parts, &spec.signature_header);
                match postern_policy::webhook::verify(&spec, ts, sig, &bytes, now) {
                    Ok(()) => {
                        decision.reasons.push(format!(
                            "webhook signature verified for rule `{}`",
                            spec.rule
                        ));
                        decision.condition = None;
                    }
                    Err(e) => {
                        decision = decision.fall_back(&format!("webhook signature refused: {e}"))
                    }
                }
                ForwardBody::Buffered(bytes)
            }
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                let (status, msg) = if too_large {
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("body larger than {limit} bytes cannot be verified"),
                    )
                } else {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("reading the body failed: {e}"),
                    )
                };
                let ev = ctx.event(
                    now,
                    "bad_request",
                    status.as_u16(),
                    Some(&decision),
                    vec![msg.clone()],
                );
                shared.audit.append(ev).await;
                return Err(respond::error(status, &ctx.request_id, &msg));
            }
        }
    } else {
        ForwardBody::Streaming(body)
    };

    // 5. An opt-out stands only once its audit record is durable (invariant 3).
    if decision.is_optout() {
        let rule = decision.rule.as_deref().unwrap_or("").to_string();
        ctx.named.auth = Some(format!("optout:{rule}"));
        let ev = ctx.event(now, "optout", 0, Some(&decision), decision.reasons.clone());
        let mut ev = ev;
        ev.status = None;
        let write_started = Instant::now();
        let written = shared.audit.append_durable(ev).await;
        shared
            .metrics
            .audit_write_duration
            .observe(write_started.elapsed());
        if let Ok(seq) = written {
            shared.metrics.optout_used(&rule);
            if let Some(model) = runtime.policy.risk() {
                shared.risk.optout_used(model, &rule, now);
            }
            shared.alerts.optout_used(
                &rule,
                &ctx.request_id,
                seq,
                ctx.named.identity.as_deref(),
                &ctx.named.peer,
                ctx.named.path.as_deref(),
            );
            shared.console.optout_used(crate::console::OptOutUse {
                at: now,
                rule: rule.clone(),
                request_id: ctx.request_id.clone(),
                audit_seq: seq,
                identity: ctx.named.identity.clone(),
                peer: ctx.named.peer.clone(),
                method: ctx.named.method.clone(),
                path: ctx.named.path.clone(),
                grant: decision.grant.as_deref().map(str::to_string),
            });
        }
        if let Err(e) = written {
            shared.metrics.audit_failure();
            shared
                .alerts
                .audit_failure(&rule, &ctx.request_id, &ctx.named.peer, &e.to_string());
            tracing::error!(rule = %rule, error = %e, "audit sink failed: opt-out not honoured, falling back to authentication");
            decision = decision.fall_back(&format!("audit unavailable, opt-out not honoured: {e}"));
            ctx.named.auth = None;
        }
    }

    // 6. Act on the verdict.
    match &decision.verdict {
        Verdict::NoRoute => {
            let ev = ctx.event(
                now,
                "not_found",
                404,
                Some(&decision),
                decision.reasons.clone(),
            );
            shared.audit.append(ev).await;
            Err(respond::error(
                StatusCode::NOT_FOUND,
                &ctx.request_id,
                "no route",
            ))
        }
        Verdict::StepUp { acr_values } => {
            // A browser re-authenticates at the provider and comes back to
            // the request, keeping its session; an API client gets RFC 9470.
            let resp = match shared
                .oidc
                .as_deref()
                .filter(|_| crate::oidc::is_browser(&parts.headers))
            {
                Some(oidc) => {
                    let target = return_target(&path, query.as_deref());
                    Box::pin(async {
                        let resume = hold_body(&parts, body).await;
                        oidc.begin_sign_in(&parts, &target, resume, Some(acr_values.clone()), now)
                            .await
                    })
                    .await
                }
                None => respond::step_up(&ctx.request_id, acr_values),
            };
            let ev = ctx.event(
                now,
                "step_up",
                resp.status().as_u16(),
                Some(&decision),
                decision.reasons.clone(),
            );
            shared.audit.append(ev).await;
            Err(resp)
        }
        Verdict::Forbidden => {
            let ev = ctx.event(
                now,
                "forbidden",
                403,
                Some(&decision),
                decision.reasons.clone(),
            );
            shared.audit.append(ev).await;
            Err(respond::error(
                StatusCode::FORBIDDEN,
                &ctx.request_id,
                "forbidden",
            ))
        }
        Verdict::Challenge { accepted } => {
            // A browser that a sign-in would let through goes to sign in and
            // comes back (invariant 7); everyone else gets 401 naming the ways.
            let resp = match shared
                .oidc
                .as_deref()
                .filter(|o| o.sign_in_helps(&parts.headers, accepted, &identity))
            {
                Some(oidc) => {
                    let target = return_target(&path, query.as_deref());
                    Box::pin(async {
                        let resume = hold_body(&parts, body).await;
                        oidc.begin_sign_in(&parts, &target, resume, None, now).await
                    })
                    .await
                }
                None => respond::challenge_with_sign_in(
                    &ctx.request_id,
                    accepted,
                    &identity.invalid,
                    shared.oidc.as_ref().map(|_| crate::oidc::LOGIN_PATH),
                ),
            };
            let ev = ctx.event(
                now,
                "challenge",
                resp.status().as_u16(),
                Some(&decision),
                decision.reasons.clone(),
            );
            shared.audit.append(ev).await;
            if !identity.invalid.is_empty() {
                if let Some(model) = runtime.policy.risk() {
                    shared.risk.auth_failure(model, client_ip, now);
                }
                shared.alerts.credential_refused(
                    Some(&ctx.request_id),
                    &ctx.named.peer,
                    ctx.named.identity.as_deref(),
                    identity
                        .invalid
                        .iter()
                        .map(|c| format!("{} credential invalid: {}", c.factor, c.reason))
                        .collect(),
                );
            }
            Err(resp)
        }
        Verdict::Allow { via } => {
            let via = via.clone();
            if ctx.named.auth.is_none() {
                ctx.named.auth = Some(auth_label(&via));
            }
            // The last record of the request takes the reasons: moved, not copied.
            let reasons = std::mem::take(&mut decision.reasons);
            forward(
                shared,
                &runtime,
                parts,
                body,
                &path,
                query.as_deref(),
                &decision,
                reasons,
                &identity,
                &via,
                xff,
                &host,
                now,
                ctx,
            )
            .await
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &Arc<Shared>,
    runtime: &crate::Runtime,
    mut parts: http::request::Parts,
    body: ForwardBody,
    path: &postern_policy::NormalizedPath,
    query: Option<&str>,
    decision: &Decision,
    // `decision`'s reasons, taken out of it: they go into the request's last
    // record, and the error records before that name only the failure.
    mut reasons: Vec<String>,
    identity: &Identity,
    via: &AuthVia,
    xff: Option<HeaderValue>,
    host: &str,
    now: OffsetDateTime,
    ctx: &mut Ctx,
) -> Answer {
    let label = if decision.is_optout() {
        "optout"
    } else {
        "allow"
    };
    let upstream_name = decision.upstream.as_deref().unwrap_or("");
    let Some(upstream) = runtime.upstreams.get(upstream_name) else {
        let msg = format!("route names unknown upstream `{upstream_name}`");
        let ev = ctx.event(
            now,
            "upstream_error",
            502,
            Some(decision),
            vec![msg.clone()],
        );
        shared.audit.append(ev).await;
        return Err(respond::error(
            StatusCode::BAD_GATEWAY,
            &ctx.request_id,
            "bad gateway",
        ));
    };

    // The path that matched is the path that is forwarded.
    let mut pq = String::with_capacity(path.as_str().len() + query.map_or(0, |q| q.len() + 1));
    pq.push_str(path.as_str());
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    // Plain-http upstreams go through postern's own pool (origin-form
    // target, `Host` set here); https upstreams and upgrades through hyper-util.
    let wants_upgrade = decision.upgrade_allowed && parts.headers.contains_key(UPGRADE);
    let pooled = upstream.scheme == Scheme::HTTP && !wants_upgrade;
    let uri = if pooled {
        Uri::try_from(pq).map_err(http::Error::from)
    } else {
        Uri::builder()
            .scheme(upstream.scheme.clone())
            .authority(upstream.authority.clone())
            .path_and_query(pq)
            .build()
    };
    let uri = match uri {
        Ok(u) => u,
        Err(e) => {
            return Err(
                bad_request(shared, ctx, now, format!("cannot build upstream URI: {e}")).await,
            )
        }
    };

    let client_upgrade = if decision.upgrade_allowed {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    headers::sanitize_request(&mut parts.headers, decision.upgrade_allowed);
    crate::session::strip_request_cookies(&mut parts.headers);
    parts.headers.remove(HOST);
    // postern's own headers. The client's headers of these names are gone
    // (sanitize_request strips them as identity headers, Host just above),
    // so they are added, not replaced: into the map for the hyper-util
    // client, written after the map by the pool's own (which also skips any
    // map header of the same name).
    let mut own: Vec<(HeaderName, HeaderValue)> = Vec::with_capacity(7);
    if pooled {
        if let Some(v) = upstream.host.clone() {
            own.push((HOST, v));
        }
    }
    if let Some(v) = xff {
        own.push((crate::headers::X_FORWARDED_FOR, v));
    }
    own.push((
        crate::headers::X_FORWARDED_PROTO,
        HeaderValue::from_static("https"),
    ));
    if let Ok(v) = HeaderValue::from_str(host) {
        own.push((crate::headers::X_FORWARDED_HOST, v));
    }
    // One value for the request and the answer (a clone shares its bytes).
    let request_id = HeaderValue::from_str(&ctx.request_id).ok();
    if let Some(v) = request_id.clone() {
        own.push((crate::headers::X_POSTERN_REQUEST_ID, v));
    }
    if let Some(p) = &identity.principal {
        if let Ok(v) = HeaderValue::from_str(p) {
            own.push((crate::headers::X_POSTERN_IDENTITY, v));
        }
    }
    if let Some(v) = auth_header(via) {
        own.push((crate::headers::X_POSTERN_AUTH, v));
    }
    parts.uri = uri;
    parts.version = http::Version::HTTP_11;

    let sent = if pooled {
        // The pool writes the framing itself, from the payload.
        let payload = match body {
            ForwardBody::Buffered(bytes) => Payload::Full(bytes),
            ForwardBody::Streaming(b) if http_body::Body::is_end_stream(&b) => Payload::Empty,
            ForwardBody::Streaming(b) => {
                Payload::Stream(b.map_err(|e| Box::new(e) as crate::BoxError).boxed())
            }
        };
        crate::workers::yield_if_busy().await;
        let req = shared
            .pool
            .request(&upstream.authority, parts, own, payload);
        match tokio::time::timeout(shared.upstream_timeout, req).await {
            Err(_) => Sent::TimedOut,
            Ok(Err(e)) => Sent::Failed(e.to_string()),
            // Nothing asked to upgrade: a 101 is refused below.
            Ok(Ok(r)) if r.status() == StatusCode::SWITCHING_PROTOCOLS => Sent::BadSwitch,
            Ok(Ok(r)) => Sent::Answered(r),
        }
    } else {
        let h = &mut parts.headers;
        h.reserve(own.len());
        for (name, value) in own {
            h.insert(name, value);
        }
        let body: Body = match body {
            ForwardBody::Buffered(bytes) => {
                parts
                    .headers
                    .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                respond::full(bytes)
            }
            ForwardBody::Streaming(b) => b.map_err(|e| Box::new(e) as crate::BoxError).boxed(),
        };
        let req = shared.client.request(Request::from_parts(parts, body));
        match tokio::time::timeout(shared.upstream_timeout, req).await {
            Err(_) => Sent::TimedOut,
            Ok(Err(e)) => Sent::Failed(e.to_string()),
            Ok(Ok(r)) => tunnel(r, client_upgrade),
        }
    };
    let (status, msg, answer) = match &sent {
        Sent::Answered(r) => (r.status(), String::new(), ""),
        Sent::TimedOut => (
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "upstream `{upstream_name}` did not answer within {:?}",
                shared.upstream_timeout
            ),
            "upstream timed out",
        ),
        Sent::Failed(e) => (
            StatusCode::BAD_GATEWAY,
            format!("upstream `{upstream_name}` failed: {e}"),
            "bad gateway",
        ),
        Sent::BadSwitch => (
            StatusCode::BAD_GATEWAY,
            "upstream switched protocols on a request that may not upgrade".to_string(),
            "bad gateway",
        ),
    };
    let Sent::Answered(resp) = sent else {
        let ev = ctx.event(
            now,
            "upstream_error",
            status.as_u16(),
            Some(decision),
            vec![msg],
        );
        shared.audit.append(ev).await;
        return Err(respond::error(status, &ctx.request_id, answer));
    };
    let status = resp.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let (mut rparts, rbody) = resp.into_parts();
    headers::sanitize_response(&mut rparts.headers, switching);
    crate::session::strip_response_cookies(&mut rparts.headers);
    if let Some(v) = request_id {
        rparts
            .headers
            .insert(crate::headers::X_POSTERN_REQUEST_ID, v);
    }
    // Built by hand: one allocation, no formatting machinery.
    let mut digits = itoa::Buffer::new();
    let micros = digits.format(ctx.started.elapsed().as_micros());
    let mut forwarded = String::with_capacity(upstream_name.len() + micros.len() + 24);
    for part in ["forwarded to `", upstream_name, "` in ", micros, " µs"] {
        forwarded.push_str(part);
    }
    reasons.push(forwarded);
    // The last record of this request: it takes the context's strings.
    let mut ev = ctx.take_event(now, label, status.as_u16(), Some(decision), reasons);
    if decision.is_optout() {
        // The durable record came first; this one carries the outcome.
        ev.kind = "result";
    }
    shared.audit.append(ev).await;
    Ok(Response::from_parts(rparts, rbody))
}

/// What became of a request sent upstream.
enum Sent {
    Answered(Response<Body>),
    TimedOut,
    Failed(String),
    /// The upstream answered 101 where policy allows no upgrade.
    BadSwitch,
}

/// A response from the hyper-util client; a 101 is tunnelled, but only
/// after the upstream agreed and only where policy allows the upgrade.
fn tunnel(mut resp: Response<Incoming>, client_upgrade: Option<hyper::upgrade::OnUpgrade>) -> Sent {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_up) = client_upgrade else {
            return Sent::BadSwitch;
        };
        let upstream_up = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let (Ok(c), Ok(u)) = (client_up.await, upstream_up.await) {
                let mut c = hyper_util::rt::TokioIo::new(c);
                let mut u = hyper_util::rt::TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            }
        });
    }
    Sent::Answered(resp.map(|b| b.map_err(|e| Box::new(e) as crate::BoxError).boxed()))
}

/// Score the request (when `[risk]` is configured) and keep the score and
/// its contributions for the audit records. Counts the request against its
/// source and identity; the device is the verified client certificate.
#[allow(clippy::too_many_arguments)]
fn assess_risk(
    shared: &Shared,
    conn: &ConnInfo,
    policy: &postern_policy::Policy,
    parts: &http::request::Parts,
    host: &str,
    path: &postern_policy::NormalizedPath,
    client_ip: std::net::IpAddr,
    identity: &Identity,
    now: OffsetDateTime,
    ctx: &mut Ctx,
) -> u8 {
    let Some(model) = policy.risk() else { return 0 };
    let rules = crate::risk::candidate_rules(policy, host, parts.method.as_str(), path);
    let device = if identity.verified.contains(postern_policy::Factor::Mtls) {
        ctx.named.creds.cert_fingerprint.as_deref()
    } else {
        None
    };
    let obs = crate::risk::Observation {
        source: client_ip,
        identity: identity.principal.as_deref(),
        device,
        tls_version: conn.tls_version,
        rules: &rules,
    };
    let (signals, score) = shared.risk.assess(model, &obs, now);
    ctx.risk = Some(crate::risk::audit_json(&signals, &score));
    score.total
}

fn auth_label(via: &AuthVia) -> String {
    let mut s = String::with_capacity(24);
    match via {
        AuthVia::Authenticated(set) => set.push_to(&mut s),
        AuthVia::OptOut { rule, .. } => {
            s.push_str("optout:");
            s.push_str(rule);
        }
    }
    s
}

/// `x-postern-auth`: [`auth_label`]; a single factor without an allocation.
fn auth_header(via: &AuthVia) -> Option<HeaderValue> {
    if let AuthVia::Authenticated(set) = via {
        let mut factors = set.iter();
        if let (Some(only), None) = (factors.next(), factors.next()) {
            return Some(HeaderValue::from_static(only.as_str()));
        }
    }
    HeaderValue::from_str(&auth_label(via)).ok()
}

async fn bad_request(
    shared: &Shared,
    ctx: &Ctx,
    now: OffsetDateTime,
    why: String,
) -> Response<Body> {
    let ev = ctx.event(now, "bad_request", 400, None, vec![why.clone()]);
    shared.audit.append(ev).await;
    respond::error(StatusCode::BAD_REQUEST, &ctx.request_id, &why)
}

/// Requests whose meaning could differ between postern and an upstream.
fn refuse_ambiguous(req: &http::request::Parts) -> Result<(), String> {
    let h = &req.headers;
    if req.method == Method::CONNECT {
        return Err("CONNECT is not proxied".to_string());
    }
    if h.get_all(AUTHORIZATION).iter().count() > 1 {
        return Err("more than one Authorization header".to_string());
    }
    if h.contains_key(CONTENT_LENGTH) && h.contains_key(TRANSFER_ENCODING) {
        return Err("both Content-Length and Transfer-Encoding (request smuggling)".to_string());
    }
    if h.get_all(CONTENT_LENGTH).iter().count() > 1 {
        return Err("more than one Content-Length".to_string());
    }
    if h.contains_key(&headers::HTTP2_SETTINGS)
        || h.get_all(UPGRADE)
            .iter()
            .any(|v| contains_token(v.as_bytes(), "h2c"))
    {
        return Err("h2c upgrades are refused".to_string());
    }
    Ok(())
}

fn contains_token(v: &[u8], token: &str) -> bool {
    std::str::from_utf8(v)
        .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        .unwrap_or(true)
}

/// The host the request is for: the URI authority (HTTP/2, absolute-form)
/// or the `Host` header; both present and different, or several `Host`
/// headers, is ambiguous.
fn request_host(req: &http::request::Parts) -> Result<String, String> {
    let mut hosts = req.headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header".to_string());
    }
    let from_header = match header {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| "Host header is not ASCII".to_string())?
                .parse::<http::uri::Authority>()
                .map_err(|_| "Host header is not a valid authority".to_string())?,
        ),
        None => None,
    };
    let from_uri = req.uri.authority().cloned();
    let auth = match (from_uri, from_header) {
        (Some(u), Some(h)) if !u.host().eq_ignore_ascii_case(h.host()) => {
            return Err("Host header and request target name different hosts".to_string())
        }
        (Some(u), _) => u,
        (None, Some(h)) => h,
        (None, None) => return Err("no Host".to_string()),
    };
    if auth.as_str().contains('@') {
        return Err("userinfo in the authority".to_string());
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    Ok(host.to_ascii_lowercase())
}

fn header_str<'a>(req: &'a http::request::Parts, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// 128 random bits as 32 lower-case hex digits.
fn new_request_id() -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut id = String::with_capacity(32);
    for i in (0..32).rev() {
        id.push(char::from(HEX[((n >> (i * 4)) & 0xf) as usize]));
    }
    id
}

/// Where a browser returns after signing in: the matched path and the query.
fn return_target(path: &postern_policy::NormalizedPath, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{}?{q}", path.as_str()),
        None => path.as_str().to_string(),
    }
}

/// Read a body that may be held across a sign-in (at most 64 KiB, within
/// 10 s); safe methods need none.
async fn hold_body(parts: &http::request::Parts, body: ForwardBody) -> crate::oidc::Resume {
    use crate::oidc::{Resume, MAX_HELD_BODY};
    if parts.method == Method::GET || parts.method == Method::HEAD {
        return Resume::Url;
    }
    let too_large = || Resume::Unheld(format!("it was larger than {} KiB", MAX_HELD_BODY / 1024));
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    match body {
        ForwardBody::Buffered(b) if b.len() <= MAX_HELD_BODY => Resume::Body(b),
        ForwardBody::Buffered(_) => too_large(),
        ForwardBody::Streaming(b) if declared.is_some_and(|n| n > MAX_HELD_BODY) => {
            // Read and drop it (bounded), so the browser sees the redirect
            // rather than a connection reset.
            drain(b, 1 << 20).await;
            too_large()
        }
        ForwardBody::Streaming(b) => {
            let read = Limited::new(b, MAX_HELD_BODY).collect();
            match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
                Ok(Ok(c)) => Resume::Body(c.to_bytes()),
                Ok(Err(e))
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some() =>
                {
                    too_large()
                }
                Ok(Err(_)) => Resume::Unheld("its body could not be read".to_string()),
                Err(_) => Resume::Unheld("its body took too long to arrive".to_string()),
            }
        }
    }
}

/// Discard up to `limit` bytes of a body within 10 s.
async fn drain(mut body: ReqBody, limit: usize) {
    let mut seen = 0usize;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while seen <= limit {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => seen += f.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

/// The request body on its way upstream: streamed, or buffered because it
/// had to be verified before it was forwarded.
enum ForwardBody {
    Streaming(ReqBody),
    Buffered(Bytes),
}

/// `POST /v1/certs/renew`: mTLS with the current, valid, unrevoked
/// certificate, body a PKCS#10 CSR (PEM) for a new key; answers the new
/// certificate (PEM, chain appended for an intermediate CA). Audited.
#[allow(clippy::too_many_arguments)]
async fn renew(
    shared: &Arc<Shared>,
    conn: &ConnInfo,
    ca: &crate::certs::CertAuthority,
    parts: &http::request::Parts,
    body: ReqBody,
    identity: &Identity,
    now: OffsetDateTime,
    ctx: &mut Ctx,
) -> Response<Body> {
    use crate::certs::RenewError;
    let refuse = |status: StatusCode, msg: String| (status, msg);
    let result: Result<postern_pki::IssuedCertificate, (StatusCode, String)> = async {
        if parts.method != Method::POST {
            return Err(refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "renewal is POST".to_string(),
            ));
        }
        let crate::authn::PeerCert::Valid(vc) = &conn.cert else {
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                RenewError::NoCertificate.to_string(),
            ));
        };
        if !identity.verified.contains(postern_policy::Factor::Mtls) {
            // Expired or revoked since the handshake, or disagreeing factors.
            let why = identity
                .invalid
                .iter()
                .map(|i| i.reason.clone())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(refuse(
                StatusCode::UNAUTHORIZED,
                format!("the client certificate is not valid now: {why}"),
            ));
        }
        let csr = Limited::new(body, 16 * 1024)
            .collect()
            .await
            .map_err(|e| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    format!("reading the CSR failed: {e}"),
                )
            })?
            .to_bytes();
        let csr = std::str::from_utf8(&csr).map_err(|_| {
            refuse(
                StatusCode::BAD_REQUEST,
                "the CSR is not PEM text".to_string(),
            )
        })?;
        ca.renew(
            &vc.identity.principal,
            &vc.identity.serial_hex,
            &vc.extras,
            csr,
            now,
        )
        .map_err(|e| {
            let status = match e {
                RenewError::BadCsr(_) => StatusCode::BAD_REQUEST,
                RenewError::Disabled => StatusCode::NOT_FOUND,
                _ => StatusCode::FORBIDDEN,
            };
            (status, e.to_string())
        })
    }
    .await;
    match result {
        Ok(issued) => {
            let mut ev = ctx.event(
                now,
                "renewed",
                200,
                None,
                vec![format!(
                    "renewed certificate {} as {} (valid until {})",
                    issued.serial_hex,
                    identity.principal.as_deref().unwrap_or("-"),
                    crate::authn::fmt_time(issued.not_after)
                )],
            );
            ev.kind = "renewal";
            ev.extra = Some(serde_json::json!({ "new_serial": issued.serial_hex }));
            shared.audit.append(ev).await;
            if let Some(principal) = &identity.principal {
                // The renewed certificate continues this device.
                let fp = postern_pki::fingerprint_sha256(&issued.cert_der);
                shared.risk.device_seen(principal, &fp);
            }
            let mut pem = issued.cert_pem;
            pem.push_str(ca.chain_pem());
            let mut resp = Response::new(respond::full(pem));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-pem-file"),
            );
            resp
        }
        Err((status, msg)) => {
            let mut ev = ctx.event(now, "refused", status.as_u16(), None, vec![msg.clone()]);
            ev.kind = "renewal";
            shared.audit.append(ev).await;
            respond::error(status, &ctx.request_id, &msg)
        }
    }
}

/// The consent and self-service endpoints (`/_postern/consent`,
/// `/_postern/me/optouts`, `/_postern/me/optouts/revoke`).
#[allow(clippy::too_many_arguments)]
async fn consent_endpoint(
    shared: &Arc<Shared>,
    store: &crate::consent::ConsentStore,
    policy: &postern_policy::Policy,
    parts: &http::request::Parts,
    body: ReqBody,
    query: Option<&str>,
    path: &postern_policy::NormalizedPath,
    viewer: Option<crate::consent::Viewer>,
    device: Option<(&str, &str)>,
    now: OffsetDateTime,
    ctx: &mut Ctx,
) -> Response<Body> {
    use crate::consent::{self as c, ConsentRecord};
    let html = |status: StatusCode, text: String| {
        let mut r = Response::new(respond::full(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        r.headers_mut()
            .insert("x-frame-options", HeaderValue::from_static("DENY"));
        r
    };
    let redirect = |to: &str| {
        let mut r = Response::new(respond::full(bytes::Bytes::new()));
        *r.status_mut() = StatusCode::SEE_OTHER;
        if let Ok(v) = HeaderValue::from_str(to) {
            r.headers_mut().insert(http::header::LOCATION, v);
        }
        r
    };
    let sign_in = |return_to: &str| {
        redirect(&format!(
            "{}?return_to={}",
            crate::oidc::LOGIN_PATH,
            url_encode(return_to)
        ))
    };
    let here = match query {
        Some(q) => format!("{}?{q}", path.as_str()),
        None => path.as_str().to_string(),
    };
    let q = c::parse_form(query.unwrap_or("").as_bytes());
    // A device-cookie holder sees this device's consents; a signed-in user all of theirs.
    let principal = viewer.as_ref().map(|v| v.principal.as_str());
    let device_id = device
        .filter(|(_, who)| principal.is_none_or(|p| p == *who))
        .map(|(d, _)| d);
    let device_owner = device.map(|(_, who)| who);
    let post = parts.method == Method::POST;
    if post {
        // Cross-site form posts are refused outright (CSRF defence in depth).
        let cross_site = parts
            .headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == "cross-site");
        let foreign_origin = parts
            .headers
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|o| {
                let host = ctx.named.host.as_deref().unwrap_or("");
                o.strip_prefix("https://")
                    .is_none_or(|rest| rest.split(':').next() != Some(host))
            });
        if cross_site || foreign_origin {
            return html(
                StatusCode::FORBIDDEN,
                "<!doctype html><p>Cross-site form posts are refused.</p>".to_string(),
            );
        }
    }
    let form = if post {
        match Limited::new(body, 16 * 1024).collect().await {
            Ok(b) => c::parse_form(&b.to_bytes()),
            Err(_) => {
                return html(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "<!doctype html><p>The form is too large.</p>".to_string(),
                )
            }
        }
    } else {
        Default::default()
    };
    let audit = |decision: &'static str, status: u16, offer: Option<&str>, reasons: Vec<String>| {
        let mut ev = ctx.event(now, decision, status, None, reasons);
        ev.kind = "consent";
        ev.rule = offer.map(str::to_string);
        ev
    };
    match (path.as_str(), post) {
        (c::CONSENT_PATH, false) => {
            let Some(viewer) = viewer else {
                return sign_in(&here);
            };
            let offer_id = q.get("offer").map(String::as_str).unwrap_or("");
            let Some((rule, offer)) = policy
                .optout(offer_id)
                .and_then(|r| r.offer().map(|o| (r, o)))
            else {
                return html(
                    StatusCode::NOT_FOUND,
                    "<!doctype html><p>No such offer.</p>".to_string(),
                );
            };
            let return_to = c::safe_return_to(q.get("return_to").map(String::as_str));
            let csrf = store.csrf(
                Some(&viewer.principal),
                device_id,
                &format!("consent:{offer_id}"),
            );
            html(
                StatusCode::OK,
                c::consent_page(rule, offer, &viewer, &csrf, &return_to),
            )
        }
        (c::CONSENT_PATH, true) => {
            let Some(viewer) = viewer else {
                return html(
                    StatusCode::UNAUTHORIZED,
                    "<!doctype html><p>Sign in first: consent needs a signed-in user.</p>"
                        .to_string(),
                );
            };
            let offer_id = form.get("offer").map(String::as_str).unwrap_or("");
            let Some(offer) = policy.optout(offer_id).and_then(|r| r.offer()) else {
                return html(
                    StatusCode::NOT_FOUND,
                    "<!doctype html><p>No such offer.</p>".to_string(),
                );
            };
            if !store.csrf_ok(
                form.get("csrf").map(String::as_str).unwrap_or(""),
                Some(&viewer.principal),
                device_id,
                &format!("consent:{offer_id}"),
            ) {
                shared
                    .audit
                    .append(audit(
                        "refused",
                        403,
                        Some(offer_id),
                        vec!["consent form without a valid CSRF token".into()],
                    ))
                    .await;
                return html(StatusCode::FORBIDDEN, "<!doctype html><p>This form expired or did not come from postern. Open the consent page again.</p>".to_string());
            }
            let return_to = c::safe_return_to(form.get("return_to").map(String::as_str));
            if form.get("agree").map(String::as_str) != Some("yes") {
                return redirect(&format!(
                    "{}?offer={}&return_to={}",
                    c::CONSENT_PATH,
                    url_encode(offer_id),
                    url_encode(&return_to)
                ));
            }
            // The device: this browser's, if it already is this user's; else a new one.
            let (dev, cookie) = match device.filter(|(_, who)| *who == viewer.principal) {
                Some((d, _)) => (d.to_string(), None),
                None => {
                    let (d, v) = store.new_device_cookie(&viewer.principal);
                    (d, Some(v))
                }
            };
            let rec: ConsentRecord = match c::new_consent(offer, &viewer, &dev, now) {
                Ok(r) => r,
                Err(why) => {
                    // Also when the form was posted directly, past the page.
                    shared
                        .audit
                        .append(audit("refused", 403, Some(offer_id), why.clone()))
                        .await;
                    return html(
                        StatusCode::FORBIDDEN,
                        format!(
                            "<!doctype html><p>You cannot choose this: {}</p>",
                            c::esc(&why.join("; "))
                        ),
                    );
                }
            };
            // Audited and stored durably before the cookie that uses it is set.
            let ev = audit("consented", 303, Some(offer_id), vec![format!(
                "{} consented to offer `{offer_id}` (disclosure sha256 {}) on device {} until {}",
                viewer.principal, rec.disclosure_sha256, rec.device, crate::authn::fmt_time(rec.expires)
            )]);
            if let Err(e) = shared.audit.append_durable(ev).await {
                return html(StatusCode::SERVICE_UNAVAILABLE, format!("<!doctype html><p>Your choice could not be recorded ({}); nothing was changed.</p>", c::esc(&e.to_string())));
            }
            if let Err(e) = store.record(rec) {
                return html(StatusCode::SERVICE_UNAVAILABLE, format!("<!doctype html><p>Your choice could not be recorded ({}); nothing was changed.</p>", c::esc(&e.to_string())));
            }
            let mut r = redirect(&return_to);
            if let Some(v) = cookie {
                let max_age = i64::from(offer.duration_days) * 86_400;
                if let Ok(h) = HeaderValue::from_str(&format!(
                    "{}={v}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
                    c::DEVICE_COOKIE
                )) {
                    r.headers_mut().append(http::header::SET_COOKIE, h);
                }
            }
            r
        }
        (c::MY_OPTOUTS_PATH, false) => {
            if principal.is_none() && device_id.is_none() {
                return sign_in(&here);
            }
            let owner = principal.or(device_owner);
            let records = store.active(principal, device_id, now);
            let titles = policy
                .optouts()
                .filter_map(|r| r.offer().map(|o| (r.id().to_string(), o.title.clone())))
                .collect();
            let csrf = store.csrf(owner, device_id, "revoke");
            html(StatusCode::OK, c::my_optouts_page(&records, &csrf, &titles))
        }
        (c::REVOKE_PATH, true) => {
            let owner = principal.or(device_owner);
            if owner.is_none()
                || !store.csrf_ok(
                    form.get("csrf").map(String::as_str).unwrap_or(""),
                    owner,
                    device_id,
                    "revoke",
                )
            {
                return html(
                    StatusCode::FORBIDDEN,
                    "<!doctype html><p>This form expired or did not come from postern.</p>"
                        .to_string(),
                );
            }
            let id = form.get("id").map(String::as_str).unwrap_or("");
            match store.revoke(id, principal, device_id, now) {
                Ok(Some(rec)) => {
                    let ev = audit(
                        "revoked",
                        303,
                        Some(&rec.offer),
                        vec![format!(
                            "{} revoked consent {} to offer `{}`",
                            rec.principal, rec.id, rec.offer
                        )],
                    );
                    shared.audit.append(ev).await;
                    redirect(c::MY_OPTOUTS_PATH)
                }
                Ok(None) => html(
                    StatusCode::NOT_FOUND,
                    "<!doctype html><p>No such active opt-out of yours.</p>".to_string(),
                ),
                Err(e) => html(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("<!doctype html><p>{}</p>", c::esc(&e.to_string())),
                ),
            }
        }
        _ => html(
            StatusCode::METHOD_NOT_ALLOWED,
            "<!doctype html><p>Method not allowed.</p>".to_string(),
        ),
    }
}

/// After a successful sign-in whose return URL an offer covers, show the
/// offer's consent page first (once: only to an eligible user without a
/// consent on this device), then continue to the URL.
fn offer_after_sign_in(
    shared: &Shared,
    policy: &postern_policy::Policy,
    host: &str,
    headers: &http::HeaderMap,
    mut resp: Response<Body>,
    now: OffsetDateTime,
) -> Response<Body> {
    let (Some(store), Some(oidc)) = (shared.consents.as_deref(), shared.oidc.as_deref()) else {
        return resp;
    };
    if !resp.status().is_redirection() {
        return resp;
    }
    let Some(location) = resp
        .headers()
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
    else {
        return resp;
    };
    if !location.starts_with('/') || location.starts_with("//") {
        return resp;
    }
    // The session this callback just issued.
    let session = resp
        .headers()
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.strip_prefix(&format!("{}=", crate::session::SESSION_COOKIE))
                .map(|rest| rest.split(';').next().unwrap_or("").to_string())
        })
        .and_then(|value| oidc.sessions.decode(&value, now).session().cloned());
    let Some(session) = session else { return resp };
    let Ok((path, _)) = postern_policy::split_target(&location) else {
        return resp;
    };
    let Some(rule) = crate::consent::offer_covering(policy, host, "GET", &path) else {
        return resp;
    };
    let Some(offer) = rule.offer() else {
        return resp;
    };
    if offer
        .eligibility(session.email_verified, &session.amr)
        .is_err()
    {
        return resp;
    }
    let device = crate::consent::cookies(headers)
        .get(crate::consent::DEVICE_COOKIE)
        .and_then(|v| store.parse_device_cookie(v));
    if let Some((dev, who)) = device {
        if who == session.principal
            && store
                .claims(&who, &dev, now)
                .iter()
                .any(|c| *c.offer == *rule.id())
        {
            return resp;
        }
    }
    let to = format!(
        "{}?offer={}&return_to={}",
        crate::consent::CONSENT_PATH,
        url_encode(rule.id()),
        url_encode(&location)
    );
    if let Ok(v) = HeaderValue::from_str(&to) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "tests panic on unexpected failures by design"
)]
mod tests {
    use super::*;
    use postern_policy::{Factor, FactorSet};

    #[test]
    fn request_ids_are_32_lower_hex_digits_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_ne!(a, b);
    }

    #[test]
    fn the_auth_header_says_what_the_audit_record_says() {
        let one = AuthVia::Authenticated(FactorSet::EMPTY.with(Factor::Mtls));
        let two = AuthVia::Authenticated(FactorSet::EMPTY.with(Factor::Mtls).with(Factor::Jwt));
        let optout = AuthVia::OptOut {
            rule: Arc::from("healthz"),
            waived: FactorSet::EMPTY.with(Factor::Mtls),
            verified: FactorSet::EMPTY,
        };
        for (via, label) in [(one, "mtls"), (two, "mtls+jwt"), (optout, "optout:healthz")] {
            assert_eq!(auth_label(&via), label);
            assert_eq!(auth_header(&via).unwrap(), label);
        }
    }
}
