//! Browser sign-in (OIDC) and the fallback that resumes, against a minimal
//! in-test OpenID provider (plain HTTP on loopback, which postern allows
//! only there). The provider checks PKCE (S256) and client authentication
//! like a real one; knobs make it misbehave. The full browser flow against
//! a real provider lives with the Chromium tests.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sha2::Digest;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

const CLIENT_ID: &str = "postern-test";
const SECRET: &str = "s3cret:with/odd&chars";
const HTML: (&str, &str) = ("Accept", "text/html,application/xhtml+xml,*/*;q=0.8");
const MFA: &str = "urn:postern:mfa";
const PWD: &str = "urn:postern:pwd";

fn b64(b: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// How the test provider misbehaves, if at all.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tamper {
    None,
    WrongNonce,
    WrongAudience,
    BadSignature,
}

struct Pending {
    nonce: String,
    challenge: String,
    redirect_uri: String,
    acr_values: Option<String>,
}

struct IdpState {
    sub: String,
    email_verified: bool,
    tamper: Tamper,
    codes: HashMap<String, Pending>,
    /// The query of every authorization request, for assertions.
    authorize_queries: Vec<HashMap<String, String>>,
}

#[derive(Clone)]
struct Idp {
    addr: SocketAddr,
    key: Arc<ed25519_dalek::SigningKey>,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn start() -> Idp {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Idp {
            addr: l.local_addr().unwrap(),
            key: Arc::new(ed25519_dalek::SigningKey::from_bytes(&rand::random())),
            state: Arc::new(Mutex::new(IdpState {
                sub: "alice-sub".into(),
                email_verified: true,
                tamper: Tamper::None,
                codes: HashMap::new(),
                authorize_queries: Vec::new(),
            })),
        };
        let me = idp.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let me = me.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move { Ok::<_, Infallible>(me.serve(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        idp
    }

    fn set(&self, f: impl FnOnce(&mut IdpState)) {
        f(&mut self.state.lock().unwrap());
    }

    async fn serve(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        let basic = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_string());
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let issuer = self.issuer();
        match path.as_str() {
            "/.well-known/openid-configuration" => json(serde_json::json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "jwks_uri": format!("{issuer}/jwks"),
                "end_session_endpoint": format!("{issuer}/logout"),
                "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                "code_challenge_methods_supported": ["S256"],
            })),
            "/jwks" => json(serde_json::json!({"keys": [{
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": "k1",
                "x": b64(self.key.verifying_key().as_bytes()),
            }]})),
            "/authorize" => {
                let q: HashMap<String, String> = postern_gateway::oidc::parse_query(&query)
                    .into_iter()
                    .collect();
                let code = b64(rand::random::<[u8; 16]>());
                let mut st = self.state.lock().unwrap();
                st.authorize_queries.push(q.clone());
                st.codes.insert(
                    code.clone(),
                    Pending {
                        nonce: q["nonce"].clone(),
                        challenge: q["code_challenge"].clone(),
                        redirect_uri: q["redirect_uri"].clone(),
                        acr_values: q.get("acr_values").cloned(),
                    },
                );
                let loc = format!(
                    "{}?code={code}&state={}",
                    q["redirect_uri"],
                    postern_gateway::oidc::enc(&q["state"])
                );
                hyper::Response::builder()
                    .status(302)
                    .header("location", loc)
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            }
            "/token" => self.token(basic, &body),
            _ => hyper::Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        }
    }

    fn token(&self, basic: Option<String>, body: &[u8]) -> hyper::Response<Full<Bytes>> {
        let form: HashMap<String, String> =
            postern_gateway::oidc::form_decode(std::str::from_utf8(body).unwrap())
                .unwrap()
                .into_iter()
                .collect();
        let refuse = |e: &str| {
            hyper::Response::builder()
                .status(400)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    serde_json::json!({"error": e}).to_string(),
                )))
                .unwrap()
        };
        // client_secret_basic: both parts form-encoded (RFC 6749 2.3.1).
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                postern_gateway::oidc::enc(CLIENT_ID),
                postern_gateway::oidc::enc(SECRET)
            ))
        );
        if basic.as_deref() != Some(&expected) {
            return refuse("invalid_client");
        }
        let mut st = self.state.lock().unwrap();
        let Some(p) = st.codes.remove(&form["code"]) else {
            return refuse("invalid_grant");
        };
        if form.get("redirect_uri") != Some(&p.redirect_uri) {
            return refuse("invalid_grant");
        }
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        if b64(sha2::Sha256::digest(verifier.as_bytes())) != p.challenge {
            return refuse("invalid_grant");
        }
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let acr = if p.acr_values.as_deref() == Some(MFA) {
            MFA
        } else {
            PWD
        };
        let mut claims = serde_json::json!({
            "iss": self.issuer(), "aud": CLIENT_ID, "sub": st.sub, "email": "alice@example.test",
            "email_verified": st.email_verified, "nonce": p.nonce, "iat": now, "exp": now + 300,
            "auth_time": now, "acr": acr, "amr": if acr == MFA { vec!["pwd", "otp"] } else { vec!["pwd"] },
        });
        match st.tamper {
            Tamper::WrongNonce => claims["nonce"] = "not-the-nonce".into(),
            Tamper::WrongAudience => claims["aud"] = "someone-else".into(),
            _ => {}
        }
        let der = self.key.to_pkcs8_der().unwrap();
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        h.kid = Some("k1".into());
        let mut token = jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        if st.tamper == Tamper::BadSignature {
            let other = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
            let der = other.to_pkcs8_der().unwrap();
            token = jsonwebtoken::encode(
                &h,
                &claims,
                &jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes()),
            )
            .unwrap();
        }
        json(serde_json::json!({"access_token": "at", "token_type": "Bearer", "id_token": token}))
    }

    /// Follow the gateway's redirect to `/authorize`: the provider signs the
    /// user in at once and answers with the callback URL (path and query).
    async fn authorize(&self, location: &str) -> String {
        let path = location
            .strip_prefix(&self.issuer())
            .unwrap_or_else(|| panic!("not a redirect to the provider: {location}"));
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.addr
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let r = read_response(&mut s).await;
        assert_eq!(r.status, 302);
        let cb = r.header("location").unwrap();
        let i = cb.find("/_postern/").unwrap();
        cb[i..].to_string()
    }

    fn last_authorize(&self) -> HashMap<String, String> {
        self.state
            .lock()
            .unwrap()
            .authorize_queries
            .last()
            .unwrap()
            .clone()
    }
}

fn json(v: serde_json::Value) -> hyper::Response<Full<Bytes>> {
    hyper::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

/// The demo, with `oidc` accepted on the app route, a step-up route at
/// `/admin`, and `[oidc]` pointing at `idp` (re-approved by both reviewers).
async fn demo_with_oidc(idp: &Idp) -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    postern::demo::prepare(dir.path(), "127.0.0.1:0".parse().unwrap(), now).unwrap();
    std::fs::write(dir.path().join("oidc.secret"), format!("{SECRET}\n")).unwrap();
    let cfg = dir.path().join("postern.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replacen(
        "require = [[\"mtls\"], [\"jwt\"]]",
        "require = [[\"mtls\"], [\"jwt\"], [\"oidc\"]]",
        1,
    );
    let text = format!(
        "{text}\n[[route]]\nid = \"admin\"\npath_prefix = \"/admin\"\nupstream = \"echo\"\nrequire = [[\"oidc\"]]\nstep_up_acr = [\"{MFA}\"]\n\n[oidc]\nissuer = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret_file = \"oidc.secret\"\ncookie_key_file = \"cookie.key\"\npost_logout_redirect_path = \"/signed-out\"\n",
        idp.issuer()
    );
    std::fs::write(&cfg, text).unwrap();
    let digest = postern_review::digest(&postern_policy::Config::load(&cfg).unwrap());
    for reviewer in ["reviewer-1", "reviewer-2"] {
        let key = postern_review::reviewers::read_signing_key(
            &dir.path().join(format!("{reviewer}.key")),
        )
        .unwrap();
        let a = postern_review::Approval::sign(&key, reviewer, &digest, now);
        postern_review::approvals::append_approval(&postern_review::approvals_path(&cfg), &a)
            .unwrap();
    }
    Demo::start_in(dir).await
}

/// A browser: a cookie jar over the test client.
struct Browser {
    c: Client,
    jar: Vec<(String, String)>,
}

impl Browser {
    fn new(d: &Demo) -> Browser {
        Browser {
            c: d.client(),
            jar: Vec::new(),
        }
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.jar
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: &str, value: &str) {
        self.jar.retain(|(n, _)| n != name);
        self.jar.push((name.to_string(), value.to_string()));
    }

    fn take_cookies(&mut self, r: &Resp) {
        for (n, v) in &r.headers {
            if n != "set-cookie" {
                continue;
            }
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (name, value) = pair.split_once('=').unwrap();
            self.jar.retain(|(n, _)| n != name);
            if !attrs.contains("Max-Age=0") {
                self.jar.push((name.to_string(), value.to_string()));
            }
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Resp {
        let cookie = self
            .jar
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        let mut h: Vec<(&str, &str)> = vec![HTML];
        if !cookie.is_empty() {
            h.push(("Cookie", &cookie));
        }
        h.extend_from_slice(extra);
        let r = self.c.request(None, method, path, &h, body).await;
        self.take_cookies(&r);
        r
    }

    async fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, &[], b"").await
    }

    /// From a redirect to the provider, through the provider, to the
    /// gateway's callback; returns the callback's answer.
    async fn sign_in(&mut self, idp: &Idp, to_provider: &Resp) -> Resp {
        assert!(
            matches!(to_provider.status, 302 | 303),
            "expected a redirect to sign in, got {} {}",
            to_provider.status,
            String::from_utf8_lossy(&to_provider.body)
        );
        let cb = idp.authorize(to_provider.header("location").unwrap()).await;
        self.get(&cb).await
    }
}

fn set_cookie<'a>(r: &'a Resp, prefix: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(n, v)| n == "set-cookie" && v.starts_with(prefix))
        .map(|(_, v)| v.as_str())
}

/// The `session` audit records, once `ready` holds for them (records are
/// buffered: wait up to 5 s for them to reach the file).
async fn session_records(
    d: &Demo,
    ready: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recs: Vec<serde_json::Value> = lines(&d.path("audit.jsonl"))
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "session")
            .collect();
        if ready(&recs) || std::time::Instant::now() > deadline {
            return recs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn count(recs: &[serde_json::Value], decision: &str) -> usize {
    recs.iter().filter(|v| v["decision"] == decision).count()
}

#[tokio::test]
async fn a_browser_signs_in_and_lands_back_on_the_url_with_its_query() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;
    let mut b = Browser::new(&d);

    let r = b.get("/private/page?x=1&y=two").await;
    assert_eq!(r.status, 302, "{}", String::from_utf8_lossy(&r.body));
    let loc = r.header("location").unwrap();
    assert!(
        loc.starts_with(&format!("{}/authorize?", idp.issuer())),
        "{loc}"
    );
    let login = set_cookie(&r, "__Host-postern_login_").expect("login cookie");
    for attr in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(login.contains(attr), "{login}");
    }

    let cb = b.sign_in(&idp, &r).await;
    let q = idp.last_authorize();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["client_id"], CLIENT_ID);
    assert_eq!(q["scope"], "openid email profile");
    assert_eq!(
        q["redirect_uri"],
        "https://localhost/_postern/oidc/callback"
    );
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43 && q["code_challenge"].len() == 43);
    assert!(!q.contains_key("acr_values"));

    assert_eq!(cb.status, 302, "{}", String::from_utf8_lossy(&cb.body));
    assert_eq!(cb.header("location"), Some("/private/page?x=1&y=two"));
    let sc = set_cookie(&cb, "__Host-postern_session=").expect("session cookie");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Lax", "Max-Age="] {
        assert!(sc.contains(attr), "{sc}");
    }
    assert!(b.cookie("__Host-postern_session").is_some());
    assert!(
        b.jar
            .iter()
            .all(|(n, _)| !n.starts_with("__Host-postern_login_")),
        "the login cookie is cleared"
    );

    b.set("app", "kept");
    let r = b.get("/private/page?x=1&y=two").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice-sub")
    );
    assert_eq!(r.upstream_header("x-postern-auth").as_deref(), Some("oidc"));
    assert_eq!(r.json()["query"], "x=1&y=two");
    // The upstream never sees the session cookie; its own cookies pass.
    assert_eq!(r.upstream_header("cookie").as_deref(), Some("app=kept"));

    let recs = session_records(&d, |r| count(r, "login") >= 1).await;
    let login = recs
        .iter()
        .find(|v| v["decision"] == "login")
        .expect("login audited");
    assert_eq!(login["identity"], "alice-sub");
    assert_eq!(login["extra"]["acr"], PWD);
}

#[tokio::test]
async fn api_clients_get_401_naming_the_ways_and_browsers_get_a_redirect() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;
    let c = d.client();
    let r = c
        .get(None, "/private", &[("Accept", "application/json")])
        .await;
    assert_eq!(r.status, 401);
    let j = r.json();
    let how = j["how_to_authenticate"].as_array().unwrap();
    assert_eq!(how.len(), 3, "{j}");
    assert!(
        how.iter().any(|h| h.as_str().unwrap().contains("sign in")),
        "{j}"
    );
    assert_eq!(j["sign_in"], "/_postern/oidc/login");
    let www: Vec<&str> = r
        .headers
        .iter()
        .filter(|(n, _)| n == "www-authenticate")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(www.iter().any(|w| w.starts_with("Bearer")), "{www:?}");
    assert!(
        www.iter().any(|w| w.starts_with("OpenIDConnect")),
        "{www:?}"
    );
    // Without Accept at all: an API client.
    assert_eq!(c.get(None, "/private", &[]).await.status, 401);
    // A browser is redirected; the route that accepts no session is not.
    assert_eq!(c.get(None, "/private", &[HTML]).await.status, 302);
    assert_eq!(c.get(None, "/reports/x", &[HTML]).await.status, 401);
}

#[tokio::test]
async fn state_nonce_and_pkce_mismatches_are_refused() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;

    // A callback whose state no sign-in in this browser started.
    let mut b = Browser::new(&d);
    let r = b.get("/private").await;
    let cb = idp.authorize(r.header("location").unwrap()).await;
    let mut other = Browser::new(&d);
    let r2 = other.get(&cb).await;
    assert_eq!(r2.status, 400, "another browser cannot complete it");
    assert!(set_cookie(&r2, "__Host-postern_session=v1").is_none());

    // The right browser, but its login cookie altered.
    let name = b
        .jar
        .iter()
        .find(|(n, _)| n.starts_with("__Host-postern_login_"))
        .unwrap()
        .0
        .clone();
    let good = b.cookie(&name).unwrap().to_string();
    let mut bad = good.clone().into_bytes();
    let i = bad.len() - 3;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    b.set(&name, std::str::from_utf8(&bad).unwrap());
    assert_eq!(b.get(&cb).await.status, 400);

    // An intact sign-in completes once; replaying its callback (with a copy
    // of its login cookie) is refused.
    let mut a = Browser::new(&d);
    let ra = a.get("/private").await;
    let cb_a = idp.authorize(ra.header("location").unwrap()).await;
    assert_eq!(a.get(&cb_a).await.status, 302);
    let mut replay = Browser::new(&d);
    let (pair, _) = set_cookie(&ra, "__Host-postern_login_")
        .unwrap()
        .split_once(';')
        .unwrap();
    let (n, v) = pair.split_once('=').unwrap();
    replay.set(n, v);
    let r = replay.get(&cb_a).await;
    assert_eq!(r.status, 400, "a replayed callback is refused");
    assert!(replay.cookie("__Host-postern_session").is_none());

    // PKCE: sign-in C's code injected into sign-in B (its state and cookie):
    // B's verifier does not match C's challenge, so the provider refuses it.
    let mut c = Browser::new(&d);
    let rc = c.get("/private").await;
    let cb_c = idp.authorize(rc.header("location").unwrap()).await;
    let mut bb = Browser::new(&d);
    let rb = bb.get("/private").await;
    let cb_b = idp.authorize(rb.header("location").unwrap()).await;
    let code_c = cb_c
        .split("code=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let state_b = cb_b
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let injected = format!("/_postern/oidc/callback?code={code_c}&state={state_b}");
    let r = bb.get(&injected).await;
    assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
    assert!(bb.cookie("__Host-postern_session").is_none());

    // Wrong nonce, wrong audience, bad signature: no session.
    for t in [
        Tamper::WrongNonce,
        Tamper::WrongAudience,
        Tamper::BadSignature,
    ] {
        idp.set(|s| s.tamper = t);
        let mut b = Browser::new(&d);
        let r = b.get("/private").await;
        let r = b.sign_in(&idp, &r).await;
        assert_eq!(r.status, 401, "{t:?}: {}", String::from_utf8_lossy(&r.body));
        assert!(b.cookie("__Host-postern_session").is_none(), "{t:?}");
    }
    let recs = session_records(&d, |r| count(r, "login_failed") >= 7).await;
    let failed: Vec<String> = recs
        .iter()
        .filter(|v| v["decision"] == "login_failed")
        .map(|v| v["reasons"][0].as_str().unwrap().to_string())
        .collect();
    assert!(failed.iter().any(|r| r.contains("nonce")), "{failed:?}");
    assert!(
        failed.iter().any(|r| r.contains("InvalidAudience")),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|r| r.contains("already used")),
        "{failed:?}"
    );
    assert!(
        failed.iter().any(|r| r.contains("invalid_grant")),
        "{failed:?}"
    );
}

#[tokio::test]
async fn forged_expired_and_replayed_sessions() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;
    let c = d.client();
    let forged = format!("__Host-postern_session=v1.{}", b64([7u8; 80]));

    // Forged: an invalid credential. An API client gets 401 naming it; a
    // browser is sent to sign in with the cookie cleared; never an opt-out.
    let r = c.get(None, "/private", &[("Cookie", &forged)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["invalid"][0]["factor"], "oidc", "{}", r.json());
    let r = c.get(None, "/private", &[("Cookie", &forged), HTML]).await;
    assert_eq!(r.status, 302);
    assert!(set_cookie(&r, "__Host-postern_session=;").is_some_and(|v| v.contains("Max-Age=0")));
    let r = c.get(None, "/healthz", &[("Cookie", &forged)]).await;
    assert_eq!(
        r.status, 401,
        "a forged session never falls into the healthz opt-out"
    );
    assert!(
        count(
            &session_records(&d, |r| count(r, "refused") >= 1).await,
            "refused"
        ) >= 1
    );

    // Expired (genuine, but idle too long): sign in again, not "invalid".
    let keys = postern_gateway::session::CookieKeys::load_or_create(&d.path("cookie.key")).unwrap();
    let sessions = postern_gateway::session::Sessions::new(keys, &idp.issuer(), 30, 12);
    let now = time::OffsetDateTime::now_utc();
    let old = postern_gateway::session::Session {
        sid: "old".into(),
        iss: idp.issuer(),
        principal: "alice-sub".into(),
        sub: "alice-sub".into(),
        email: None,
        email_verified: true,
        acr: Some(PWD.into()),
        amr: vec![],
        issued_at: (now - time::Duration::hours(1)).unix_timestamp(),
        last_seen: (now - time::Duration::minutes(31)).unix_timestamp(),
    };
    let v = sessions.issue(&old, now).unwrap();
    let cookie = v.to_str().unwrap().split(';').next().unwrap().to_string();
    let r = c.get(None, "/private", &[("Cookie", &cookie)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["error"],
        "authentication required",
        "expired is absent, not invalid"
    );
    assert_eq!(
        c.get(None, "/private", &[("Cookie", &cookie), HTML])
            .await
            .status,
        302
    );
    // The same session, fresh: accepted (the test minted it with the key).
    let fresh = postern_gateway::session::Session {
        last_seen: now.unix_timestamp(),
        ..old.clone()
    };
    let v = sessions.issue(&fresh, now).unwrap();
    let cookie = v.to_str().unwrap().split(';').next().unwrap().to_string();
    assert_eq!(
        c.get(None, "/private", &[("Cookie", &cookie)]).await.status,
        200
    );

    // Replayed after sign-out: refused.
    let mut b = Browser::new(&d);
    let r = b.get("/private").await;
    b.sign_in(&idp, &r).await;
    let copy = b.cookie("__Host-postern_session").unwrap().to_string();
    let r = b.get("/_postern/oidc/logout").await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(
            format!(
                "{}/logout?client_id={CLIENT_ID}&post_logout_redirect_uri=https%3A%2F%2Flocalhost%2Fsigned-out",
                idp.issuer()
            )
            .as_str()
        )
    );
    assert!(
        b.cookie("__Host-postern_session").is_none(),
        "sign-out clears the cookie"
    );
    let r = c
        .get(
            None,
            "/private",
            &[("Cookie", &format!("__Host-postern_session={copy}"))],
        )
        .await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["invalid"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("signed out"),
        "{}",
        r.json()
    );
    assert!(session_records(&d, |r| count(r, "logout") >= 1)
        .await
        .iter()
        .any(|v| v["decision"] == "logout" && v["identity"] == "alice-sub"));
}

#[tokio::test]
async fn open_redirects_are_refused() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;
    let c = d.client();
    for bad in [
        "//evil.test/x",
        "https://evil.test/",
        "%2F%2Fevil.test",
        "/\\evil.test",
        "javascript:alert(1)",
    ] {
        let r = c
            .get(
                None,
                &format!(
                    "/_postern/oidc/login?return_to={}",
                    postern_gateway::oidc::enc(bad)
                ),
                &[HTML],
            )
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.header("location").is_none(), "{bad}");
    }
    let mut b = Browser::new(&d);
    let r = b
        .get("/_postern/oidc/login?return_to=%2Fdeep%2Fpage%3Fa%3D1")
        .await;
    assert_eq!(r.status, 302);
    let cb = b.sign_in(&idp, &r).await;
    assert_eq!(cb.header("location"), Some("/deep/page?a=1"));
}

#[tokio::test]
async fn a_form_post_is_held_and_resubmitted_and_others_get_an_explanation() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;
    let origin = ("Origin", "https://localhost");
    let form = ("Content-Type", "application/x-www-form-urlencoded");

    // Same-origin form POST: held, then re-submitted by an auto-submitting form.
    let mut b = Browser::new(&d);
    let r = b
        .send(
            "POST",
            "/private/save?draft=1",
            &[origin, form],
            b"title=Hello+world&submit=%3Cok%3E",
        )
        .await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    let page = b.sign_in(&idp, &r).await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8_lossy(&page.body).to_string();
    assert!(html.contains("action=\"/private/save?draft=1\""), "{html}");
    assert!(
        html.contains("name=\"title\" value=\"Hello world\""),
        "{html}"
    );
    assert!(
        html.contains("name=\"submit\" value=\"&lt;ok&gt;\""),
        "{html}"
    );
    let csp = page.header("content-security-policy").unwrap();
    assert!(csp.contains("script-src 'nonce-"), "{csp}");
    assert!(html.contains("<script nonce="), "{html}");
    // The browser submits it, now with the session.
    let r = b
        .send(
            "POST",
            "/private/save?draft=1",
            &[origin, form],
            b"title=Hello+world&submit=%3Cok%3E",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "POST");
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice-sub")
    );

    // A cross-site form, a JSON body, a large form, a PUT: explained, not replayed.
    let big = vec![b'a'; 70 * 1024];
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a [u8], &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            vec![("Origin", "https://evil.test"), form],
            b"a=1",
            "did not come from a page of this site",
        ),
        (
            "POST",
            vec![origin, ("Content-Type", "application/json")],
            b"{}",
            "application/json",
        ),
        ("POST", vec![origin, form], &big[..], "larger than 64 KiB"),
        (
            "PUT",
            vec![origin, form],
            b"a=1",
            "PUT request cannot be re-sent",
        ),
    ];
    for (method, headers, body, why) in cases {
        let mut b = Browser::new(&d);
        let r = b.send(method, "/private/thing", &headers, body).await;
        assert_eq!(r.status, 303, "{why}");
        let page = b.sign_in(&idp, &r).await;
        assert_eq!(page.status, 200, "{why}");
        let html = String::from_utf8_lossy(&page.body).to_string();
        assert!(html.contains(why), "{why}: {html}");
        assert!(!html.contains("<form"), "{why}: nothing is re-submitted");
        assert!(
            html.contains("href=\"/private/thing\""),
            "{why}: offers to retry"
        );
    }
}

#[tokio::test]
async fn step_up_re_authenticates_keeping_the_session_and_the_request() {
    let idp = Idp::start().await;
    let d = demo_with_oidc(&idp).await;
    let mut b = Browser::new(&d);
    let r = b.get("/private").await;
    b.sign_in(&idp, &r).await;
    let first = session_records(&d, |r| count(r, "login") >= 1)
        .await
        .into_iter()
        .find(|v| v["decision"] == "login")
        .unwrap();

    // An API client with the weak session: RFC 9470.
    let cookie = format!(
        "__Host-postern_session={}",
        b.cookie("__Host-postern_session").unwrap()
    );
    let r = d
        .client()
        .get(None, "/admin/keys?x=1", &[("Cookie", &cookie)])
        .await;
    assert_eq!(r.status, 401);
    assert!(r
        .header("www-authenticate")
        .unwrap()
        .contains("insufficient_user_authentication"));

    // A browser is sent back to the provider asking for the stronger acr.
    let r = b.get("/admin/keys?x=1").await;
    assert_eq!(r.status, 302);
    let cb = b.sign_in(&idp, &r).await;
    let q = idp.last_authorize();
    assert_eq!(q["acr_values"], MFA);
    assert_eq!(q["prompt"], "login");
    assert_eq!(q["max_age"], "0");
    assert_eq!(cb.header("location"), Some("/admin/keys?x=1"));
    let r = b.get("/admin/keys?x=1").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["query"], "x=1");

    let recs = session_records(&d, |r| count(r, "login") >= 2).await;
    let upgraded = recs
        .iter()
        .rev()
        .find(|v| v["decision"] == "login")
        .unwrap();
    assert_eq!(upgraded["extra"]["acr"], MFA);
    assert_eq!(
        upgraded["extra"]["sid"], first["extra"]["sid"],
        "the step-up keeps the session"
    );
}

#[test]
fn held_requests_are_bounded_in_number_and_time() {
    use postern_gateway::oidc::HeldStore;
    let s = HeldStore::new(3, std::time::Duration::from_millis(100));
    for i in 0..3 {
        s.put(&format!("s{i}"), "/x", vec![("a".into(), "1".into())])
            .unwrap();
    }
    assert!(
        s.put("s3", "/x", vec![]).is_err(),
        "a full store holds no more"
    );
    assert!(s.take("s0").is_some());
    assert!(s.take("s0").is_none(), "a held request is replayed once");
    std::thread::sleep(std::time::Duration::from_millis(120));
    assert!(s.take("s1").is_none(), "an expired one is gone");
    assert!(
        s.put("s4", "/x", vec![]).is_ok(),
        "expired entries make room"
    );
    assert_eq!(postern_gateway::oidc::MAX_HELD, 1000);
    assert_eq!(postern_gateway::oidc::MAX_HELD_BODY, 64 * 1024);
}
