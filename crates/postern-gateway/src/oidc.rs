//! OpenID Connect sign-in for browsers, and the fallback that resumes.
//!
//! - Discovery from `<issuer>/.well-known/openid-configuration`, cached; the
//!   JWKS is re-fetched when an ID token names an unknown `kid` (at most once
//!   every 30 s).
//! - Authorization code flow with PKCE (S256), `state` and `nonce`. What the
//!   callback needs (PKCE verifier, nonce, where to go back, the step-up
//!   request) travels in an encrypted, ten-minute cookie named after the
//!   state (`__Host-postern_login_<state>`), so several tabs can sign in at
//!   once and the gateway keeps no per-login state except held bodies.
//! - The callback exchanges the code (client_secret_basic or _post, as the
//!   provider supports; a public client sends only PKCE), verifies the ID
//!   token (algorithm pinned per JWK, `iss`, `aud`, `exp`, `nonce`, `azp`,
//!   `iat`, and `auth_time` after a step-up) and issues the session cookie.
//! - A browser request that needs authentication is redirected to the
//!   provider and comes back to its URL with its query; a same-origin
//!   `application/x-www-form-urlencoded` POST (≤ 64 KiB) is held (≤ 1,000,
//!   ≤ 10 minutes, bound to the state) and re-submitted by an auto-submitting
//!   form after sign-in; anything else gets a page that explains and offers
//!   to retry. Return URLs are only ever same-origin paths.
//!
//! Endpoints (see docs/oidc.md): `GET /_postern/oidc/login?return_to=/path`,
//! `GET <redirect_path>` (default `/_postern/oidc/callback`),
//! `GET|POST /_postern/oidc/logout`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, LOCATION, ORIGIN,
    REFERER, SET_COOKIE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use postern_audit::{AuditEvent, AuditLog};
use postern_policy::config::{Config, OidcConfig};
use postern_policy::{Factor, FactorSet, Identity};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::respond;
use crate::session::{
    self, random_token, CookieKeys, Purpose, Session, SessionState, Sessions, LOGIN_COOKIE_PREFIX,
    SESSION_COOKIE,
};
use crate::{Body, UpstreamClient};

/// Every path under this prefix is postern's own.
pub const PREFIX: &str = "/_postern/oidc/";
pub const LOGIN_PATH: &str = "/_postern/oidc/login";
pub const LOGOUT_PATH: &str = "/_postern/oidc/logout";
/// Bodies above this are not held for re-submission.
pub const MAX_HELD_BODY: usize = 64 * 1024;
/// At most this many held requests at once.
pub const MAX_HELD: usize = 1000;
/// A held request waits at most this long for its sign-in.
pub const HELD_TTL: Duration = Duration::from_secs(600);
/// A sign-in must complete within this many seconds.
const LOGIN_TTL_SECS: i64 = 600;
/// Clock skew allowed on ID token times.
const LEEWAY_SECS: i64 = 60;
/// An ID token issued longer ago than this is not fresh from this exchange.
const MAX_ID_TOKEN_AGE_SECS: i64 = 600;
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
const JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
const DISCOVERY_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);
const MAX_USED_STATES: usize = 10_000;
const MAX_RETURN_TO: usize = 4096;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The provider's metadata (the fields postern uses).
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    end_session_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

struct PinnedKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

struct Provider {
    meta: Discovery,
    keys: Vec<PinnedKey>,
    fetched: Instant,
}

#[derive(Default)]
struct Refresh {
    last_discovery_attempt: Option<Instant>,
    last_jwks_fetch: Option<Instant>,
    last_error: String,
}

/// A request held across a sign-in, to be re-submitted after it.
#[derive(Debug, Clone)]
pub struct HeldRequest {
    /// Path and query (same-origin, validated).
    pub target: String,
    /// The form fields, decoded, in order.
    pub fields: Vec<(String, String)>,
    expires: Instant,
}

/// The bounded, time-limited store of held requests, keyed by login state.
pub struct HeldStore {
    max: usize,
    ttl: Duration,
    map: Mutex<HashMap<String, HeldRequest>>,
}

impl HeldStore {
    pub fn new(max: usize, ttl: Duration) -> HeldStore {
        HeldStore {
            max,
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Hold `fields` for `target` under `state`; refused when full.
    pub fn put(
        &self,
        state: &str,
        target: &str,
        fields: Vec<(String, String)>,
    ) -> Result<(), String> {
        let Ok(mut m) = self.map.lock() else {
            return Err("the held-request store is unavailable".to_string());
        };
        let now = Instant::now();
        if m.len() >= self.max {
            m.retain(|_, h| h.expires > now);
        }
        if m.len() >= self.max {
            return Err(format!(
                "{} requests are already waiting for a sign-in",
                self.max
            ));
        }
        m.insert(
            state.to_string(),
            HeldRequest {
                target: target.to_string(),
                fields,
                expires: now + self.ttl,
            },
        );
        Ok(())
    }

    /// Take the request held under `state` (once), if it has not expired.
    pub fn take(&self, state: &str) -> Option<HeldRequest> {
        let mut m = self.map.lock().ok()?;
        let h = m.remove(state)?;
        (h.expires > Instant::now()).then_some(h)
    }

    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What happened to a request's body when its sign-in began.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "k", rename_all = "snake_case")]
enum HeldMark {
    /// Nothing to hold (GET/HEAD).
    None,
    /// Held under the login's state.
    Held { method: String },
    /// Not held, and why (shown on the page after sign-in).
    NotHeld {
        method: String,
        why: String,
        #[serde(default)]
        back: Option<String>,
    },
}

/// What the login cookie carries (encrypted).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LoginState {
    state: String,
    verifier: String,
    nonce: String,
    redirect_uri: String,
    return_to: String,
    #[serde(default)]
    acr_values: Option<Vec<String>>,
    held: HeldMark,
    created: i64,
}

/// The body of the request that needs a sign-in, as far as it was read.
#[derive(Debug)]
pub enum Resume {
    /// A safe method: coming back to the URL is enough.
    Url,
    /// A body that may be held.
    Body(Bytes),
    /// A body that was not read (too large, unreadable), and why.
    Unheld(String),
}

/// The facts of a request to one of postern's OIDC endpoints.
pub struct EndpointRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The authority the browser used (`host[:port]`).
    pub authority: &'a str,
    pub request_id: &'a str,
    pub peer: &'a str,
    pub host: &'a str,
}

/// The ID token claims postern reads.
#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
    #[serde(default)]
    acr: Option<String>,
    #[serde(default)]
    amr: Option<Vec<String>>,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    azp: Option<String>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    auth_time: Option<f64>,
}

/// A verified sign-in.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub principal: String,
    pub sub: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub acr: Option<String>,
    pub amr: Vec<String>,
}

/// A sign-in that failed: what the user is told, what the audit log keeps.
struct Failure {
    status: StatusCode,
    message: String,
    reason: String,
    retry: Option<String>,
}

impl Failure {
    fn new(status: StatusCode, message: &str, reason: impl Into<String>) -> Failure {
        Failure {
            status,
            message: message.to_string(),
            reason: reason.into(),
            retry: None,
        }
    }
    fn retry(mut self, return_to: &str) -> Failure {
        self.retry = Some(return_to.to_string());
        self
    }
}

/// Browser sign-in with an OpenID provider.
pub struct Oidc {
    issuer: String,
    client_id: String,
    client_secret: Option<String>,
    redirect_path: String,
    scopes: String,
    principal_email: bool,
    post_logout_path: Option<String>,
    pub sessions: Sessions,
    client: UpstreamClient,
    provider: Mutex<Option<Arc<Provider>>>,
    refresh: tokio::sync::Mutex<Refresh>,
    pub held: HeldStore,
    used_states: Mutex<HashMap<String, i64>>,
}

impl Oidc {
    /// Build from `[oidc]` (paths resolved against the config file). Reads
    /// or creates the cookie key; does not contact the provider.
    pub fn new(cfg: &OidcConfig, config: &Config) -> Result<Oidc, String> {
        check_url(&cfg.issuer).map_err(|e| format!("[oidc] issuer: {e}"))?;
        if cfg.client_id.is_empty() {
            return Err("[oidc] client_id is empty".to_string());
        }
        let client_secret = match (&cfg.client_secret_file, &cfg.client_secret_env) {
            (Some(_), Some(_)) => {
                return Err(
                    "[oidc] give client_secret_file or client_secret_env, not both".to_string(),
                )
            }
            (Some(f), None) => {
                let p = config.resolve(f);
                let s = std::fs::read_to_string(&p)
                    .map_err(|e| format!("[oidc] client_secret_file `{}`: {e}", p.display()))?;
                Some(s.trim().to_string())
            }
            (None, Some(v)) => Some(
                std::env::var(v)
                    .map_err(|_| format!("[oidc] client_secret_env: `{v}` is not set"))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        if client_secret.as_deref() == Some("") {
            return Err("[oidc] the client secret is empty".to_string());
        }
        let rp = &cfg.redirect_path;
        if !rp.starts_with('/') || rp.starts_with("//") || rp.contains(['?', '#', '\\']) {
            return Err(format!(
                "[oidc] redirect_path `{rp}` must be a path such as /_postern/oidc/callback"
            ));
        }
        if !cfg.scopes.iter().any(|s| s == "openid") {
            return Err("[oidc] scopes must include `openid`".to_string());
        }
        if cfg
            .scopes
            .iter()
            .any(|s| s.is_empty() || !s.chars().all(|c| c.is_ascii_graphic() && c != '"'))
        {
            return Err(
                "[oidc] a scope is empty or has characters a scope cannot have".to_string(),
            );
        }
        let principal_email = match cfg.principal_claim.as_str() {
            "sub" => false,
            "email" => true,
            other => {
                return Err(format!(
                    "[oidc] principal_claim `{other}`: use `sub` or `email`"
                ))
            }
        };
        if let Some(p) = &cfg.post_logout_redirect_path {
            if safe_return_to(p).is_none() || p.contains(['?', '#']) {
                return Err(format!(
                    "[oidc] post_logout_redirect_path `{p}` must be a path such as /"
                ));
            }
        }
        if cfg.session_idle_minutes == 0 || cfg.session_absolute_hours == 0 {
            return Err(
                "[oidc] session_idle_minutes and session_absolute_hours must be above 0"
                    .to_string(),
            );
        }
        let keys = CookieKeys::load_or_create(&config.resolve(&cfg.cookie_key_file))?;
        let extra_ca = cfg.extra_ca.as_ref().map(|p| config.resolve(p));
        Ok(Oidc {
            issuer: cfg.issuer.clone(),
            client_id: cfg.client_id.clone(),
            client_secret,
            redirect_path: cfg.redirect_path.clone(),
            scopes: cfg.scopes.join(" "),
            principal_email,
            post_logout_path: cfg.post_logout_redirect_path.clone(),
            sessions: Sessions::new(
                keys,
                &cfg.issuer,
                cfg.session_idle_minutes,
                cfg.session_absolute_hours,
            ),
            client: provider_client(extra_ca.as_deref())?,
            provider: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(Refresh::default()),
            held: HeldStore::new(MAX_HELD, HELD_TTL),
            used_states: Mutex::new(HashMap::new()),
        })
    }

    /// Fetch discovery and keys in the background, so the first sign-in is
    /// quick; a provider that is down now is tried again on demand.
    pub fn prefetch(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.provider().await {
                tracing::warn!(error = %e, "OpenID provider discovery failed; retried at the next sign-in");
            }
        });
    }

    pub fn redirect_path(&self) -> &str {
        &self.redirect_path
    }

    /// Is `path` one of postern's OIDC endpoints?
    pub fn owns(&self, path: &str) -> bool {
        path == self.redirect_path || path.starts_with(PREFIX) || path == "/_postern/oidc"
    }

    /// Read the request's session cookie.
    pub fn read_session(&self, headers: &HeaderMap, now: OffsetDateTime) -> SessionState {
        self.sessions.read(headers, now)
    }

    /// Would signing in let this request through? Only when the client is
    /// a browser, some accepted alternative needs nothing but a session
    /// beyond what the request already proved, and no credential other
    /// than the session was invalid (signing in cannot fix a bad certificate).
    pub fn sign_in_helps(
        &self,
        headers: &HeaderMap,
        accepted: &[FactorSet],
        identity: &Identity,
    ) -> bool {
        let oidc = FactorSet::EMPTY.with(Factor::Oidc);
        is_browser(headers)
            && identity.invalid.iter().all(|i| i.factor == Factor::Oidc)
            && accepted.iter().any(|alt| {
                alt.contains(Factor::Oidc) && alt.minus(oidc).minus(identity.verified).is_empty()
            })
    }

    /// Redirect a browser to sign in, coming back to `target` (path and
    /// query) afterwards; hold a form body for re-submission. `acr_values`
    /// asks for a step-up (re-authentication with one of them).
    pub async fn begin_sign_in(
        &self,
        parts: &http::request::Parts,
        target: &str,
        resume: Resume,
        acr_values: Option<Vec<String>>,
        now: OffsetDateTime,
    ) -> Response<Body> {
        let Some(authority) = request_authority(parts) else {
            return page(
                StatusCode::BAD_REQUEST,
                "Cannot sign in",
                "<p>The request names no host.</p>",
                None,
            );
        };
        let return_to = safe_return_to(target).unwrap_or_else(|| "/".to_string());
        let method = parts.method.as_str().to_string();
        let held = match resume {
            Resume::Url => None,
            Resume::Unheld(why) => Some(Err(why)),
            Resume::Body(bytes) => Some(holdable(parts, &authority, &bytes)),
        };
        let back = referer_path(&parts.headers, &authority);
        let status = if parts.method == Method::GET || parts.method == Method::HEAD {
            StatusCode::FOUND
        } else {
            StatusCode::SEE_OTHER
        };
        match self
            .start_login(
                &authority, return_to, method, held, back, acr_values, status, now,
            )
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::error!(error = %e, "cannot start an OpenID sign-in");
                page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Sign-in is unavailable",
                    "<p>The identity provider cannot be reached right now. Please try again in a moment.</p>",
                    None,
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_login(
        &self,
        authority: &str,
        return_to: String,
        method: String,
        held: Option<Result<Vec<(String, String)>, String>>,
        back: Option<String>,
        acr_values: Option<Vec<String>>,
        status: StatusCode,
        now: OffsetDateTime,
    ) -> Result<Response<Body>, String> {
        let provider = self.provider().await?;
        let state = random_token()?;
        let verifier = random_token()?;
        let nonce = random_token()?;
        let challenge = B64.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let redirect_uri = format!("https://{authority}{}", self.redirect_path);
        let held = match held {
            None => HeldMark::None,
            Some(Ok(fields)) => match self.held.put(&state, &return_to, fields) {
                Ok(()) => HeldMark::Held {
                    method: method.clone(),
                },
                Err(why) => HeldMark::NotHeld { method, why, back },
            },
            Some(Err(why)) => HeldMark::NotHeld { method, why, back },
        };
        let login = LoginState {
            state: state.clone(),
            verifier,
            nonce: nonce.clone(),
            redirect_uri: redirect_uri.clone(),
            return_to,
            acr_values: acr_values.clone(),
            held,
            created: now.unix_timestamp(),
        };
        let name = format!("{LOGIN_COOKIE_PREFIX}{state}");
        let json = serde_json::to_vec(&login).map_err(|e| e.to_string())?;
        let value = self.sessions.keys.seal(Purpose::Login, &name, &json)?;
        let cookie = session::set_cookie(&name, &value, Some(LOGIN_TTL_SECS))?;

        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &self.client_id),
            ("redirect_uri", &redirect_uri),
            ("scope", &self.scopes),
            ("state", &state),
            ("nonce", &nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ];
        let acr_joined = acr_values.as_ref().map(|a| a.join(" "));
        if let Some(acr) = &acr_joined {
            params.push(("acr_values", acr));
            params.push(("prompt", "login"));
            params.push(("max_age", "0"));
        }
        let sep = if provider.meta.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let location = format!(
            "{}{sep}{}",
            provider.meta.authorization_endpoint,
            form_encode(&params)
        );
        let mut resp = page(
            status,
            "Signing in",
            "<p>Redirecting to your identity provider…</p>",
            None,
        );
        let h = resp.headers_mut();
        h.insert(
            LOCATION,
            HeaderValue::from_str(&location).map_err(|e| format!("authorization URL: {e}"))?,
        );
        h.append(SET_COOKIE, cookie);
        Ok(resp)
    }

    /// Serve one of postern's OIDC endpoints (audited).
    pub async fn endpoint(
        &self,
        req: &EndpointRequest<'_>,
        audit: &AuditLog,
        now: OffsetDateTime,
    ) -> Response<Body> {
        if req.path == self.redirect_path {
            if req.method != Method::GET {
                return method_not_allowed("GET");
            }
            return self.callback(req, audit, now).await;
        }
        match req.path {
            LOGIN_PATH => {
                if req.method != Method::GET && req.method != Method::HEAD {
                    return method_not_allowed("GET");
                }
                let q = parse_query(req.query.unwrap_or(""));
                let return_to = match q.iter().find(|(k, _)| k == "return_to") {
                    None => "/".to_string(),
                    Some((_, v)) => match safe_return_to(v) {
                        Some(r) => r,
                        None => {
                            let ev = self.audit_event(
                                req,
                                now,
                                "refused",
                                400,
                                None,
                                vec![format!(
                                    "return_to `{}` is not a same-origin path (open redirect refused)",
                                    truncate(v, 200)
                                )],
                            );
                            audit.append(ev).await;
                            return page(
                                StatusCode::BAD_REQUEST,
                                "Cannot sign in",
                                "<p>The address to return to after sign-in must be a path on this site.</p>",
                                None,
                            );
                        }
                    },
                };
                if let SessionState::Valid { .. } = self.read_session(req.headers, now) {
                    return redirect(StatusCode::FOUND, &return_to);
                }
                match self
                    .start_login(
                        req.authority,
                        return_to,
                        req.method.as_str().to_string(),
                        None,
                        None,
                        None,
                        StatusCode::FOUND,
                        now,
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start an OpenID sign-in");
                        page(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Sign-in is unavailable",
                            "<p>The identity provider cannot be reached right now. Please try again in a moment.</p>",
                            None,
                        )
                    }
                }
            }
            LOGOUT_PATH => {
                if req.method != Method::GET && req.method != Method::POST {
                    return method_not_allowed("GET, POST");
                }
                self.logout(req, audit, now).await
            }
            _ => respond::error(StatusCode::NOT_FOUND, req.request_id, "no such endpoint"),
        }
    }

    async fn logout(
        &self,
        req: &EndpointRequest<'_>,
        audit: &AuditLog,
        now: OffsetDateTime,
    ) -> Response<Body> {
        let state = self.read_session(req.headers, now);
        let (who, reasons) = match &state {
            SessionState::Valid { session, .. } => {
                self.sessions.sign_out(&session.sid, now);
                (
                    Some(session.principal.clone()),
                    vec![format!("session {} signed out", session.sid)],
                )
            }
            SessionState::Absent => (None, vec!["no session to sign out".to_string()]),
            SessionState::Expired { reason } | SessionState::Invalid { reason } => {
                (None, vec![format!("cookie cleared: {reason}")])
            }
        };
        let mut ev = self.audit_event(req, now, "logout", 0, who.as_deref(), reasons);
        // The provider's end-session endpoint, when known (never waits for it).
        let end_session = self
            .cached_provider()
            .and_then(|p| p.meta.end_session_endpoint.clone());
        let mut resp = match end_session {
            Some(url) => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let back = self
                    .post_logout_path
                    .as_ref()
                    .map(|p| format!("https://{}{p}", req.authority));
                let mut params = vec![("client_id", self.client_id.as_str())];
                if let Some(b) = &back {
                    params.push(("post_logout_redirect_uri", b));
                }
                let loc = format!("{url}{sep}{}", form_encode(&params));
                let mut r = redirect(StatusCode::SEE_OTHER, "/");
                match HeaderValue::from_str(&loc) {
                    Ok(v) => {
                        r.headers_mut().insert(LOCATION, v);
                        r
                    }
                    Err(_) => signed_out_page(),
                }
            }
            None => signed_out_page(),
        };
        ev.status = Some(resp.status().as_u16());
        audit.append(ev).await;
        resp.headers_mut()
            .append(SET_COOKIE, session::clear_cookie(SESSION_COOKIE));
        resp
    }

    async fn callback(
        &self,
        req: &EndpointRequest<'_>,
        audit: &AuditLog,
        now: OffsetDateTime,
    ) -> Response<Body> {
        let q = parse_query(req.query.unwrap_or(""));
        let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let state = param("state").unwrap_or("");
        let state_ok = !state.is_empty()
            && state.len() <= 128
            && state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let login_cookie = state_ok.then(|| format!("{LOGIN_COOKIE_PREFIX}{state}"));
        let result = self.finish_login(req, &q, state, state_ok, now).await;
        let mut resp = match result {
            Ok((login, signed_in, session, step_up_missed)) => {
                let mut reasons = vec![format!(
                    "signed in as `{}` (sub `{}`), session {}",
                    signed_in.principal, signed_in.sub, session.sid
                )];
                if let Some(acr) = &login.acr_values {
                    reasons.push(format!("step-up requested: acr {}", acr.join(" or ")));
                }
                if let Some(why) = &step_up_missed {
                    reasons.push(why.clone());
                }
                let mut ev = self.audit_event(
                    req,
                    now,
                    if step_up_missed.is_some() {
                        "step_up_failed"
                    } else {
                        "login"
                    },
                    0,
                    Some(&signed_in.principal),
                    reasons,
                );
                ev.auth = Some("oidc".to_string());
                ev.extra = Some(serde_json::json!({
                    "sid": session.sid,
                    "acr": signed_in.acr,
                    "amr": signed_in.amr,
                    "email_verified": signed_in.email_verified,
                }));
                let mut resp = match &step_up_missed {
                    Some(_) => {
                        let retry = format!(
                            "{LOGIN_PATH}?{}",
                            form_encode(&[("return_to", &login.return_to)])
                        );
                        page(
                            StatusCode::FORBIDDEN,
                            "Stronger sign-in needed",
                            &format!(
                                "<p>You are signed in, but <code>{0}</code> needs a stronger sign-in than the one just completed.</p><p><a href=\"{1}\">Sign in again</a> · <a href=\"/\">Home</a></p>",
                                html(&login.return_to),
                                html(&retry)
                            ),
                            None,
                        )
                    }
                    None => self.after_sign_in(&login, &signed_in),
                };
                match self.sessions.issue(&session, now) {
                    Ok(c) => {
                        resp.headers_mut().append(SET_COOKIE, c);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot issue a session cookie");
                        resp = page(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Sign-in failed",
                            "<p>The session could not be created.</p>",
                            None,
                        );
                    }
                }
                ev.status = Some(resp.status().as_u16());
                audit.append(ev).await;
                resp
            }
            Err(f) => {
                let ev = self.audit_event(
                    req,
                    now,
                    "login_failed",
                    f.status.as_u16(),
                    None,
                    vec![f.reason.clone()],
                );
                audit.append(ev).await;
                let mut body = format!("<p>{}</p>", html(&f.message));
                if let Some(r) = &f.retry {
                    let again = format!("{LOGIN_PATH}?{}", form_encode(&[("return_to", r)]));
                    body.push_str(&format!(
                        "<p><a href=\"{}\">Sign in again</a></p>",
                        html(&again)
                    ));
                }
                page(f.status, "Sign-in failed", &body, None)
            }
        };
        if let Some(name) = login_cookie {
            resp.headers_mut()
                .append(SET_COOKIE, session::clear_cookie(&name));
        }
        resp
    }

    async fn finish_login(
        &self,
        req: &EndpointRequest<'_>,
        q: &[(String, String)],
        state: &str,
        state_ok: bool,
        now: OffsetDateTime,
    ) -> Result<(LoginState, SignedIn, Session, Option<String>), Failure> {
        let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if !state_ok {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "The sign-in answer has no valid state.",
                "callback without a valid state parameter",
            ));
        }
        let name = format!("{LOGIN_COOKIE_PREFIX}{state}");
        let values: Vec<&str> = session::cookies(req.headers)
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v)
            .collect();
        let [value] = values.as_slice() else {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "This sign-in was not started in this browser, or it took longer than 10 minutes. Please start again.",
                "callback state matches no sign-in started in this browser (expired, another browser, or a forged callback)",
            ));
        };
        let login: LoginState = self
            .sessions
            .keys
            .open(Purpose::Login, &name, value)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    "This sign-in cannot be completed. Please start again.",
                    "the sign-in cookie does not verify (tampered or forged)",
                )
            })?;
        if !ct_eq(&login.state, state) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "This sign-in cannot be completed. Please start again.",
                "state mismatch between the callback and the sign-in cookie",
            ));
        }
        let age = now.unix_timestamp().saturating_sub(login.created);
        if !(-LEEWAY_SECS..=LOGIN_TTL_SECS).contains(&age) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "The sign-in took longer than 10 minutes. Please start again.",
                "the sign-in expired",
            )
            .retry(&login.return_to));
        }
        if !self.first_use_of_state(state, now) {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "This sign-in was already completed.",
                "callback replayed: the state was already used",
            )
            .retry(&login.return_to));
        }
        if let Some(err) = param("error") {
            let desc = param("error_description").unwrap_or("");
            return Err(Failure::new(
                StatusCode::UNAUTHORIZED,
                &format!(
                    "The identity provider did not sign you in ({}{}{}).",
                    truncate(err, 100),
                    if desc.is_empty() { "" } else { ": " },
                    truncate(desc, 300)
                ),
                format!(
                    "the provider answered `{}` {}",
                    truncate(err, 100),
                    truncate(desc, 300)
                ),
            )
            .retry(&login.return_to));
        }
        let Some(code) = param("code").filter(|c| !c.is_empty()) else {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "The sign-in answer has no authorization code.",
                "callback without a code",
            )
            .retry(&login.return_to));
        };
        let bad_gateway = |reason: String| {
            Failure::new(
                StatusCode::BAD_GATEWAY,
                "The identity provider's answer could not be used. Please try again.",
                reason,
            )
            .retry(&login.return_to)
        };
        let provider = self.provider().await.map_err(bad_gateway)?;
        let id_token = self
            .exchange(&provider, code, &login)
            .await
            .map_err(bad_gateway)?;
        let signed_in = self
            .verify_id_token(&id_token, &login, now)
            .await
            .map_err(|reason| {
                Failure::new(
                    StatusCode::UNAUTHORIZED,
                    "The identity provider's answer did not verify. Please try again.",
                    format!("ID token refused: {reason}"),
                )
                .retry(&login.return_to)
            })?;
        let step_up_missed = match &login.acr_values {
            Some(wanted) if !signed_in.acr.as_ref().is_some_and(|a| wanted.contains(a)) => {
                Some(format!(
                    "step-up not reached: the provider returned acr {}, wanted {}",
                    signed_in.acr.as_deref().unwrap_or("(none)"),
                    wanted.join(" or ")
                ))
            }
            _ => None,
        };
        // The session continues through a step-up by the same user.
        let sid = match self.read_session(req.headers, now) {
            SessionState::Valid { session, .. } if session.principal == signed_in.principal => {
                session.sid
            }
            _ => random_token().map_err(|e| {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "Sign-in failed.", e)
            })?,
        };
        let session = Session {
            sid,
            iss: self.issuer.clone(),
            principal: signed_in.principal.clone(),
            sub: signed_in.sub.clone(),
            email: signed_in.email.clone(),
            email_verified: signed_in.email_verified,
            acr: signed_in.acr.clone(),
            amr: signed_in.amr.clone(),
            issued_at: now.unix_timestamp(),
            last_seen: now.unix_timestamp(),
        };
        Ok((login, signed_in, session, step_up_missed))
    }

    /// Where the browser goes once signed in: back to the URL, or a page
    /// that re-submits (or explains) the held request.
    fn after_sign_in(&self, login: &LoginState, who: &SignedIn) -> Response<Body> {
        let who = html(&who.principal);
        match &login.held {
            HeldMark::None => redirect(StatusCode::FOUND, &login.return_to),
            HeldMark::Held { method } => match self.held.take(&login.state) {
                Some(h) => resubmit_page(&h, &who),
                None => explain_page(
                    &who,
                    method,
                    &login.return_to,
                    "it was kept for at most 10 minutes while you signed in, and that time has passed",
                    None,
                ),
            },
            HeldMark::NotHeld { method, why, back } => {
                explain_page(&who, method, &login.return_to, why, back.as_deref())
            }
        }
    }

    fn first_use_of_state(&self, state: &str, now: OffsetDateTime) -> bool {
        let now_s = now.unix_timestamp();
        let Ok(mut m) = self.used_states.lock() else {
            return false;
        };
        if m.get(state).is_some_and(|until| *until > now_s) {
            return false;
        }
        if m.len() >= MAX_USED_STATES {
            m.retain(|_, until| *until > now_s);
        }
        if m.len() >= MAX_USED_STATES {
            if let Some(k) = m.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone()) {
                m.remove(&k);
            }
        }
        m.insert(state.to_string(), now_s + LOGIN_TTL_SECS + LEEWAY_SECS);
        true
    }

    /// Exchange the authorization code for an ID token.
    async fn exchange(
        &self,
        provider: &Provider,
        code: &str,
        login: &LoginState,
    ) -> Result<String, String> {
        let uri = check_url(&provider.meta.token_endpoint)?;
        let mut form: Vec<(&str, &str)> = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &login.redirect_uri),
            ("code_verifier", &login.verifier),
        ];
        let mut basic = None;
        match &self.client_secret {
            None => form.push(("client_id", &self.client_id)),
            Some(secret) => {
                let methods = provider
                    .meta
                    .token_endpoint_auth_methods_supported
                    .clone()
                    .unwrap_or_else(|| vec!["client_secret_basic".to_string()]);
                if methods.iter().any(|m| m == "client_secret_basic") {
                    let pair = format!("{}:{}", enc(&self.client_id), enc(secret));
                    basic = Some(format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(pair)
                    ));
                } else if methods.iter().any(|m| m == "client_secret_post") {
                    form.push(("client_id", &self.client_id));
                    form.push(("client_secret", secret));
                } else {
                    return Err(format!(
                        "the token endpoint supports neither client_secret_basic nor client_secret_post ({})",
                        methods.join(", ")
                    ));
                }
            }
        }
        let mut b = Request::post(uri)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if let Some(v) = basic {
            b = b.header(AUTHORIZATION, v);
        }
        let req = b
            .body(respond::full(form_encode(&form)))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.send(req).await?;
        #[derive(Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            id_token: Option<String>,
            #[serde(default)]
            error: Option<String>,
            #[serde(default)]
            error_description: Option<String>,
        }
        let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            format!("the token endpoint answered {status} with a body that is not JSON")
        })?;
        if !status.is_success() {
            return Err(format!(
                "the token endpoint refused the code ({status}): {} {}",
                t.error.as_deref().unwrap_or(""),
                truncate(t.error_description.as_deref().unwrap_or(""), 300)
            ));
        }
        t.id_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "the token response has no id_token".to_string())
    }

    /// Verify an ID token for the login in progress.
    async fn verify_id_token(
        &self,
        token: &str,
        login: &LoginState,
        now: OffsetDateTime,
    ) -> Result<SignedIn, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| format!("malformed: {e}"))?;
        let (provider, index) = self.key_for(header.kid.as_deref(), header.alg).await?;
        let key = provider.keys.get(index).ok_or("key vanished")?;
        // The key's pinned algorithm decides; the header must agree with it.
        if header.alg != key.alg {
            return Err(format!(
                "token algorithm {:?} does not match the key's {:?}",
                header.alg, key.alg
            ));
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.client_id]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = LEEWAY_SECS.unsigned_abs();
        v.validate_nbf = true;
        let c = jsonwebtoken::decode::<IdClaims>(token, &key.key, &v)
            .map_err(|e| format!("{e}"))?
            .claims;
        match &c.nonce {
            Some(n) if ct_eq(n, &login.nonce) => {}
            Some(_) => return Err("nonce does not match the sign-in".to_string()),
            None => return Err("no nonce".to_string()),
        }
        let several_audiences = matches!(&c.aud, Some(serde_json::Value::Array(a)) if a.len() > 1);
        match &c.azp {
            Some(azp) if azp != &self.client_id => {
                return Err(format!("azp `{azp}` is not this client"))
            }
            None if several_audiences => return Err("several audiences and no azp".to_string()),
            _ => {}
        }
        let now_s = now.unix_timestamp() as f64;
        let iat = c.iat.ok_or("no iat")?;
        if iat > now_s + LEEWAY_SECS as f64 {
            return Err("issued in the future (iat)".to_string());
        }
        if iat < now_s - MAX_ID_TOKEN_AGE_SECS as f64 {
            return Err("issued too long ago (iat) to be fresh from this sign-in".to_string());
        }
        if login.acr_values.is_some() {
            // max_age=0 was asked: the provider must have authenticated anew.
            let at = c
                .auth_time
                .ok_or("no auth_time after a step-up (max_age=0)")?;
            if at < (login.created - LEEWAY_SECS) as f64 {
                return Err(
                    "the provider did not authenticate again for the step-up (auth_time)"
                        .to_string(),
                );
            }
        }
        if c.sub.is_empty() {
            return Err("empty sub".to_string());
        }
        let email_verified = match &c.email_verified {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s == "true",
            _ => false,
        };
        let principal = if self.principal_email {
            match (&c.email, email_verified) {
                (Some(e), true) if !e.is_empty() => e.clone(),
                (Some(_), false) => {
                    return Err("the email is not verified, and it names the principal".to_string())
                }
                _ => return Err("no email claim, and it names the principal".to_string()),
            }
        } else {
            c.sub.clone()
        };
        if principal.len() > 256 || principal.chars().any(char::is_control) {
            return Err("the principal is too long or has control characters".to_string());
        }
        Ok(SignedIn {
            principal,
            sub: c.sub,
            email: c.email,
            email_verified,
            acr: c.acr,
            amr: c.amr.unwrap_or_default(),
        })
    }

    fn cached_provider(&self) -> Option<Arc<Provider>> {
        self.provider.lock().ok().and_then(|p| p.clone())
    }

    fn store_provider(&self, p: Arc<Provider>) {
        if let Ok(mut slot) = self.provider.lock() {
            *slot = Some(p);
        }
    }

    /// The provider's metadata and keys: cached, refreshed daily, fetched
    /// at most once per few seconds while it fails.
    async fn provider(&self) -> Result<Arc<Provider>, String> {
        let fresh = |p: &Arc<Provider>| p.fetched.elapsed() < DISCOVERY_MAX_AGE;
        if let Some(p) = self.cached_provider().filter(fresh) {
            return Ok(p);
        }
        let mut r = self.refresh.lock().await;
        let cached = self.cached_provider();
        if let Some(p) = cached.clone().filter(fresh) {
            return Ok(p);
        }
        if r.last_discovery_attempt
            .is_some_and(|t| t.elapsed() < DISCOVERY_RETRY)
        {
            return cached.ok_or_else(|| r.last_error.clone());
        }
        r.last_discovery_attempt = Some(Instant::now());
        match self.fetch_provider().await {
            Ok(p) => {
                let p = Arc::new(p);
                r.last_jwks_fetch = Some(Instant::now());
                self.store_provider(p.clone());
                Ok(p)
            }
            Err(e) => {
                r.last_error = e.clone();
                cached.ok_or(e)
            }
        }
    }

    async fn fetch_provider(&self) -> Result<Provider, String> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let meta: Discovery = self.get_json(&url).await?;
        if meta.issuer != self.issuer {
            return Err(format!(
                "discovery names issuer `{}`, not the configured `{}`",
                meta.issuer, self.issuer
            ));
        }
        for (what, u) in [
            ("authorization_endpoint", &meta.authorization_endpoint),
            ("token_endpoint", &meta.token_endpoint),
            ("jwks_uri", &meta.jwks_uri),
        ] {
            check_url(u).map_err(|e| format!("discovery {what}: {e}"))?;
        }
        if let Some(u) = &meta.end_session_endpoint {
            check_url(u).map_err(|e| format!("discovery end_session_endpoint: {e}"))?;
        }
        let keys = self.fetch_keys(&meta.jwks_uri).await?;
        Ok(Provider {
            meta,
            keys,
            fetched: Instant::now(),
        })
    }

    async fn fetch_keys(&self, url: &str) -> Result<Vec<PinnedKey>, String> {
        let set: JwkSet = self.get_json(url).await?;
        let keys: Vec<PinnedKey> = set
            .keys
            .iter()
            .filter(|j| !matches!(j.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter_map(|j| {
                let alg = crate::authn::pinned_alg(j)?;
                let key = DecodingKey::from_jwk(j).ok()?;
                Some(PinnedKey {
                    kid: j.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "the JWKS at `{url}` has no usable signing key (RS256, ES256 or EdDSA)"
            ));
        }
        Ok(keys)
    }

    /// The key for a token header: by `kid` (re-fetching the JWKS, bounded,
    /// when it is unknown), or the only key of the header's algorithm.
    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(Arc<Provider>, usize), String> {
        let find = |p: &Provider| -> Option<usize> {
            match kid {
                Some(k) => p.keys.iter().position(|x| x.kid.as_deref() == Some(k)),
                None => {
                    let mut it = p
                        .keys
                        .iter()
                        .enumerate()
                        .filter(|(_, x)| x.alg == alg)
                        .map(|(i, _)| i);
                    match (it.next(), it.next()) {
                        (Some(i), None) => Some(i),
                        _ => None,
                    }
                }
            }
        };
        let p = self.provider().await?;
        if let Some(i) = find(&p) {
            return Ok((p, i));
        }
        let mut r = self.refresh.lock().await;
        // Someone may have refreshed while we waited.
        if let Some(p) = self.cached_provider() {
            if let Some(i) = find(&p) {
                return Ok((p, i));
            }
        }
        if r.last_jwks_fetch
            .is_some_and(|t| t.elapsed() < JWKS_MIN_REFRESH)
        {
            return Err(format!(
                "no key `{}` in the provider's JWKS",
                kid.unwrap_or("(none)")
            ));
        }
        r.last_jwks_fetch = Some(Instant::now());
        let keys = self.fetch_keys(&p.meta.jwks_uri).await?;
        let np = Arc::new(Provider {
            meta: p.meta.clone(),
            keys,
            fetched: p.fetched,
        });
        self.store_provider(np.clone());
        match find(&np) {
            Some(i) => Ok((np, i)),
            None => Err(format!(
                "no key `{}` in the provider's JWKS",
                kid.unwrap_or("(none)")
            )),
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let uri = check_url(url)?;
        let req = Request::get(uri)
            .header(ACCEPT, "application/json")
            .body(respond::full(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            return Err(format!("`{url}` answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("`{url}` is not the expected JSON: {e}"))
    }

    async fn send(&self, req: Request<Body>) -> Result<(StatusCode, Bytes), String> {
        let uri = req.uri().to_string();
        let resp = tokio::time::timeout(HTTP_TIMEOUT, self.client.request(req))
            .await
            .map_err(|_| format!("`{uri}` did not answer within {HTTP_TIMEOUT:?}"))?
            .map_err(|e| format!("`{uri}`: {e}"))?;
        let status = resp.status();
        let body = tokio::time::timeout(
            HTTP_TIMEOUT,
            Limited::new(resp.into_body(), 1 << 20).collect(),
        )
        .await
        .map_err(|_| format!("`{uri}` did not finish its answer within {HTTP_TIMEOUT:?}"))?
        .map_err(|e| format!("`{uri}`: {e}"))?
        .to_bytes();
        Ok((status, body))
    }

    fn audit_event(
        &self,
        req: &EndpointRequest<'_>,
        now: OffsetDateTime,
        decision: &str,
        status: u16,
        identity: Option<&str>,
        reasons: Vec<String>,
    ) -> AuditEvent {
        let mut ev = AuditEvent::new(now, "session");
        ev.request_id = Some(req.request_id.to_string());
        ev.peer = Some(req.peer.to_string());
        ev.method = Some(req.method.as_str().to_string());
        ev.host = Some(req.host.to_string());
        ev.path = Some(req.path.to_string());
        ev.identity = identity.map(str::to_string);
        ev.decision = Some(decision.to_string());
        ev.status = (status != 0).then_some(status);
        ev.reasons = reasons;
        ev
    }
}

/// The audit record of a session cookie that was refused (tampered,
/// forged, replayed after sign-out).
pub fn session_refused_event(
    now: OffsetDateTime,
    request_id: &str,
    peer: &str,
    host: Option<&str>,
    path: Option<&str>,
    reason: &str,
) -> AuditEvent {
    let mut ev = AuditEvent::new(now, "session");
    ev.request_id = Some(request_id.to_string());
    ev.peer = Some(peer.to_string());
    ev.host = host.map(str::to_string);
    ev.path = path.map(str::to_string);
    ev.decision = Some("refused".to_string());
    ev.reasons = vec![reason.to_string()];
    ev
}

/// The client wants HTML: an `Accept` with `text/html` (not at q=0).
pub fn is_browser(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim();
            media.eq_ignore_ascii_case("text/html")
                && !parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        })
}

/// A return URL postern will redirect to: a same-origin path, never a
/// scheme, never `//host` (protocol-relative), never a backslash (browsers
/// read `/\host` as `//host`), no control characters.
pub fn safe_return_to(s: &str) -> Option<String> {
    let ok = s.starts_with('/')
        && !s.starts_with("//")
        && !s.contains('\\')
        && s.len() <= MAX_RETURN_TO
        && !s.chars().any(|c| c.is_control() || c == ' ');
    ok.then(|| s.to_string())
}

/// The authority (`host[:port]`) the request was sent to.
pub fn request_authority(parts: &http::request::Parts) -> Option<String> {
    let a = match parts.uri.authority() {
        Some(a) => a.as_str().to_string(),
        None => parts
            .headers
            .get(http::header::HOST)?
            .to_str()
            .ok()?
            .parse::<http::uri::Authority>()
            .ok()?
            .as_str()
            .to_string(),
    };
    (!a.contains('@') && !a.is_empty()).then_some(a)
}

fn origin_of(authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    let a = a.strip_suffix(":443").unwrap_or(&a);
    format!("https://{a}")
}

/// Was the request sent by a page of this very origin? (Only such a request
/// may be re-submitted automatically: a cross-site form must never be
/// replayed with the user's fresh session.)
fn same_origin(headers: &HeaderMap, authority: &str) -> bool {
    match headers.get(ORIGIN).and_then(|v| v.to_str().ok()) {
        Some(o) => {
            let o = o.to_ascii_lowercase();
            let o = o.strip_suffix(":443").unwrap_or(&o);
            o == origin_of(authority)
        }
        None => headers
            .get("sec-fetch-site")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("same-origin")),
    }
}

/// The same-origin page the request came from, as a path.
fn referer_path(headers: &HeaderMap, authority: &str) -> Option<String> {
    let r = headers.get(REFERER)?.to_str().ok()?;
    let rest = r.strip_prefix(&origin_of(authority)).or_else(|| {
        let lower = r.to_ascii_lowercase();
        let o = origin_of(authority);
        lower.starts_with(&o).then(|| r.get(o.len()..)).flatten()
    })?;
    let rest = if rest.is_empty() { "/" } else { rest };
    safe_return_to(rest)
}

/// Can this body be re-submitted by a page? A same-origin
/// `application/x-www-form-urlencoded` POST of UTF-8 form fields, ≤ 64 KiB.
fn holdable(
    parts: &http::request::Parts,
    authority: &str,
    body: &Bytes,
) -> Result<Vec<(String, String)>, String> {
    if parts.method != Method::POST {
        return Err(format!(
            "a {} request cannot be re-sent from a web page",
            parts.method
        ));
    }
    let ct = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ct.split(';').next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(format!(
            "its content ({}) cannot be re-sent from a web page",
            if media.is_empty() { "no type" } else { media }
        ));
    }
    if body.len() > MAX_HELD_BODY {
        return Err(format!("it was larger than {} KiB", MAX_HELD_BODY / 1024));
    }
    if !same_origin(&parts.headers, authority) {
        return Err(
            "it did not come from a page of this site, so it is not sent again on your behalf"
                .to_string(),
        );
    }
    let text =
        std::str::from_utf8(body).map_err(|_| "its content is not UTF-8 text".to_string())?;
    form_decode(text).ok_or_else(|| "its content is not valid form data".to_string())
}

/// The HTTP client for the provider: system roots plus `extra_ca`.
fn provider_client(extra_ca: Option<&std::path::Path>) -> Result<UpstreamClient, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = extra_ca {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("[oidc] extra_ca `{}`: {e}", p.display()))?;
        let mut n = 0;
        for c in certs {
            let c = c.map_err(|e| format!("[oidc] extra_ca `{}`: {e}", p.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("[oidc] extra_ca `{}`: {e}", p.display()))?;
            n += 1;
        }
        if n == 0 {
            return Err(format!(
                "[oidc] extra_ca `{}` holds no certificate",
                p.display()
            ));
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("[oidc] TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(HTTP_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector),
    )
}

/// `https://…`, or `http://…` on a loopback host only.
fn check_url(url: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(format!(
            "`{url}`: plain http is allowed only for a loopback provider"
        )),
        _ => Err(format!("`{url}` is not an https URL")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn ct_eq(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Percent-encode everything but RFC 3986 unreserved characters.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Decode `application/x-www-form-urlencoded` (`+` is a space); `None` when
/// a value is not UTF-8 or an escape is broken.
pub fn form_decode(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.push((pct_decode(k)?, pct_decode(v)?));
    }
    Some(out)
}

/// Query parameters; undecodable pairs are dropped.
pub fn parse_query(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((pct_decode(k)?, pct_decode(v)?))
        })
        .collect()
}

fn pct_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i)? {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(*c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Escape text for HTML content and attribute values.
pub fn html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// One of postern's own small pages: no caching, no framing, no referrer,
/// scripts only with this page's nonce.
fn page(
    status: StatusCode,
    title: &str,
    body_html: &str,
    script: Option<(&str, &str)>,
) -> Response<Body> {
    let (script_tag, csp_script) = match script {
        Some((nonce, js)) => (
            format!("<script nonce=\"{nonce}\">{js}</script>"),
            format!("script-src 'nonce-{nonce}'"),
        ),
        None => (String::new(), "script-src 'none'".to_string()),
    };
    let text = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{t}</title>\
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#222}}button{{font:inherit;padding:.4em 1.2em}}code{{background:#f3f3f3;padding:0 .2em}}</style>\
</head><body><h1>{t}</h1>\n{body_html}\n{script_tag}</body></html>\n",
        t = html(title)
    );
    let mut resp = Response::new(respond::full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "default-src 'none'; {csp_script}; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )) {
        h.insert("content-security-policy", v);
    }
    resp
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    let mut r = page(
        status,
        "Redirecting",
        &format!("<p><a href=\"{0}\">Continue</a></p>", html(location)),
        None,
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = page(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        "<p>This address does not take that method.</p>",
        None,
    );
    r.headers_mut()
        .insert(http::header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn signed_out_page() -> Response<Body> {
    page(
        StatusCode::OK,
        "Signed out",
        "<p>You are signed out of this site.</p><p><a href=\"/\">Home</a></p>",
        None,
    )
}

/// The page that re-submits a held form after sign-in.
fn resubmit_page(h: &HeldRequest, who: &str) -> Response<Body> {
    let nonce = random_token().unwrap_or_else(|_| "n".to_string());
    let mut fields = String::new();
    for (k, v) in &h.fields {
        fields.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            html(k),
            html(v)
        ));
    }
    let body = format!(
        "<form id=\"resume\" method=\"post\" action=\"{action}\" accept-charset=\"utf-8\">{fields}\
<p>You are signed in as <strong>{who}</strong>. Sending the form you submitted to <code>{action}</code> again…</p>\
<noscript><p><button type=\"submit\">Send it again</button></p></noscript></form>",
        action = html(&h.target)
    );
    // `HTMLFormElement.prototype.submit`: a field named "submit" cannot shadow it.
    let js = "HTMLFormElement.prototype.submit.call(document.getElementById('resume'));";
    page(StatusCode::OK, "Resuming", &body, Some((&nonce, js)))
}

/// The page for a request that was not held (or no longer is).
fn explain_page(
    who: &str,
    method: &str,
    target: &str,
    why: &str,
    back: Option<&str>,
) -> Response<Body> {
    let mut body = format!(
        "<p>You are signed in as <strong>{who}</strong>.</p>\
<p>Your earlier <code>{m}</code> request to <code>{t}</code> was <strong>not</strong> sent, because {why}.</p>\
<p>Nothing was changed. To try again, go back and submit it once more:</p><ul>",
        m = html(method),
        t = html(target),
        why = html(why),
    );
    if let Some(b) = back {
        body.push_str(&format!(
            "<li><a href=\"{0}\">Return to the page you were on</a></li>",
            html(b)
        ));
    }
    body.push_str(&format!(
        "<li><a href=\"{0}\">Open <code>{0}</code></a></li></ul>",
        html(target)
    ));
    page(StatusCode::OK, "Please submit again", &body, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_are_same_origin_paths_only() {
        for ok in ["/", "/a?b=c", "/a/b#x", "/%2F%2Fevil"] {
            assert!(safe_return_to(ok).is_some(), "{ok}");
        }
        for bad in [
            "//evil.test",
            "/\\evil.test",
            "https://evil.test/",
            "evil",
            "",
            "/a\nb",
            "javascript:alert(1)",
            "\\\\evil",
        ] {
            assert!(safe_return_to(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn forms_round_trip_and_escape() {
        let f = form_decode("a=1&b=x+y%21&c=%E2%9C%93&d").unwrap();
        assert_eq!(
            f,
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y!".into()),
                ("c".into(), "✓".into()),
                ("d".into(), "".into())
            ]
        );
        assert!(form_decode("a=%FF").is_none());
        assert!(form_decode("a=%4").is_none());
        assert_eq!(form_encode(&[("a b", "c&d=é")]), "a%20b=c%26d%3D%C3%A9");
        assert_eq!(
            html("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
    }

    #[test]
    fn browsers_are_told_apart_by_accept() {
        let mut h = HeaderMap::new();
        assert!(!is_browser(&h));
        h.insert(ACCEPT, HeaderValue::from_static("application/json"));
        assert!(!is_browser(&h));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        );
        assert!(is_browser(&h));
        h.insert(ACCEPT, HeaderValue::from_static("text/html;q=0, */*"));
        assert!(!is_browser(&h));
    }

    #[test]
    fn http_issuers_only_on_loopback() {
        assert!(check_url("https://idp.example").is_ok());
        assert!(check_url("http://127.0.0.1:9000").is_ok());
        assert!(check_url("http://localhost:9000/x").is_ok());
        assert!(check_url("http://[::1]:9000").is_ok());
        assert!(check_url("http://idp.example").is_err());
        assert!(check_url("http://10.0.0.1").is_err());
        assert!(check_url("ftp://idp.example").is_err());
    }

    #[test]
    fn the_held_store_is_bounded_in_count_and_time() {
        let s = HeldStore::new(2, Duration::from_millis(50));
        assert!(s.put("a", "/x", vec![]).is_ok());
        assert!(s.put("b", "/x", vec![]).is_ok());
        assert!(s.put("c", "/x", vec![]).is_err(), "full");
        assert!(s.take("a").is_some());
        assert!(s.take("a").is_none(), "taken once");
        std::thread::sleep(Duration::from_millis(60));
        assert!(s.take("b").is_none(), "expired");
        assert!(s.put("c", "/x", vec![]).is_ok());
    }
}
