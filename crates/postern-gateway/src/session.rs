//! Browser sessions after an OpenID Connect sign-in: an encrypted,
//! authenticated cookie (AES-256-GCM, a random 96-bit nonce per cookie),
//! with idle and absolute timeouts enforced on every read.
//!
//! Cookie value: `v1.` + base64url(nonce ‖ ciphertext ‖ tag). The cookie's
//! *name* is the additional authenticated data, so a value sealed for one
//! cookie (say a sign-in-in-progress cookie) never opens as another (the
//! session). Keys are derived with HKDF-SHA256 from `cookie_key_file`, one per
//! purpose.
//!
//! What a read can find, and what it means:
//! - no cookie: absent (anonymous);
//! - a cookie that does not open (forged, tampered, wrong key), is malformed,
//!   comes twice, claims a future time, or was signed out: **invalid** — a
//!   present-but-invalid credential, never anonymous, so it can never fall
//!   into an opt-out;
//! - a genuine cookie past its idle or absolute timeout: **expired**, which
//!   for a browser simply means "sign in again" (treated as absent, with a
//!   reason).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::hkdf;
use base64::Engine;
use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The session cookie (the `__Host-` prefix: Secure, Path=/, no Domain).
pub const SESSION_COOKIE: &str = "__Host-postern_session";
/// A sign-in in progress: `__Host-postern_login_<state>`, ten minutes.
pub const LOGIN_COOKIE_PREFIX: &str = "__Host-postern_login_";
/// Every cookie postern sets starts with this; they never reach an upstream,
/// and an upstream can never set one.
pub const POSTERN_COOKIE_PREFIX: &str = "__Host-postern_";

/// A session is refreshed (cookie re-issued with a new `last_seen`) at most
/// this often.
pub const REFRESH_EVERY_SECS: i64 = 60;
/// Timestamps this far ahead of the gateway's clock are refused.
const FUTURE_SKEW_SECS: i64 = 300;
/// Signed-out sessions remembered (until their idle timeout runs out).
const MAX_SIGNED_OUT: usize = 100_000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a cookie is for; each purpose has its own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Session,
    Login,
    /// For other engineers' cookies (e.g. device binding), so they do not
    /// share a key with the session.
    Other(&'static str),
}

impl Purpose {
    fn label(self) -> &'static str {
        match self {
            Purpose::Session => "postern session v1",
            Purpose::Login => "postern login v1",
            Purpose::Other(l) => l,
        }
    }
}

/// The cookie keys, derived from the secret in `cookie_key_file`.
pub struct CookieKeys {
    secret: Vec<u8>,
    session: LessSafeKey,
    login: LessSafeKey,
}

impl std::fmt::Debug for CookieKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieKeys(..)")
    }
}

fn derive(secret: &[u8], label: &str) -> Result<LessSafeKey, String> {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"postern cookie keys").extract(secret);
    let info = [label.as_bytes()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| "cookie key derivation failed".to_string())?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

impl CookieKeys {
    /// Keys from a secret of at least 32 bytes.
    pub fn from_secret(secret: &[u8]) -> Result<CookieKeys, String> {
        if secret.len() < 32 {
            return Err(format!(
                "the cookie key must be at least 32 bytes (it has {})",
                secret.len()
            ));
        }
        Ok(CookieKeys {
            secret: secret.to_vec(),
            session: derive(secret, Purpose::Session.label())?,
            login: derive(secret, Purpose::Login.label())?,
        })
    }

    /// Read `path` (surrounding whitespace ignored), or create it with 32
    /// random bytes (hex) and mode 0600 when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<CookieKeys, String> {
        let shown = path.display();
        for _ in 0..2 {
            match std::fs::read(path) {
                Ok(bytes) => {
                    warn_if_readable_by_others(path);
                    let trimmed = bytes.trim_ascii();
                    return CookieKeys::from_secret(trimmed)
                        .map_err(|e| format!("cookie key file `{shown}`: {e}"));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut secret = [0u8; 32];
                    aws_lc_rs::rand::fill(&mut secret)
                        .map_err(|_| "no randomness for the cookie key".to_string())?;
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create_new(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::OpenOptionsExt;
                        opts.mode(0o600);
                    }
                    match opts.open(path) {
                        Ok(mut f) => {
                            f.write_all(format!("{}\n", hex::encode(secret)).as_bytes())
                                .and_then(|()| f.sync_all())
                                .map_err(|e| format!("writing cookie key file `{shown}`: {e}"))?;
                            tracing::info!(path = %shown, "created a new session cookie key");
                        }
                        // Someone else created it meanwhile: read theirs.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(format!("creating cookie key file `{shown}`: {e}")),
                    }
                }
                Err(e) => return Err(format!("reading cookie key file `{shown}`: {e}")),
            }
        }
        Err(format!("cookie key file `{shown}` could not be read"))
    }

    fn with_key<R>(
        &self,
        purpose: Purpose,
        f: impl FnOnce(&LessSafeKey) -> R,
    ) -> Result<R, String> {
        match purpose {
            Purpose::Session => Ok(f(&self.session)),
            Purpose::Login => Ok(f(&self.login)),
            Purpose::Other(label) => derive(&self.secret, label).map(|k| f(&k)),
        }
    }

    /// Encrypt `plaintext` as the value of cookie `name`.
    pub fn seal(&self, purpose: Purpose, name: &str, plaintext: &[u8]) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for a nonce".to_string())?;
        let mut buf = plaintext.to_vec();
        self.with_key(purpose, |key| {
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut buf,
            )
        })?
        .map_err(|_| "sealing the cookie failed".to_string())?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!("v1.{}", B64.encode(out)))
    }

    /// Decrypt and authenticate the value of cookie `name`.
    pub fn open(&self, purpose: Purpose, name: &str, value: &str) -> Result<Vec<u8>, String> {
        let b64 = value
            .strip_prefix("v1.")
            .ok_or("the cookie is not in postern's format")?;
        let mut raw = B64
            .decode(b64)
            .map_err(|_| "the cookie is not base64url".to_string())?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err("the cookie is too short".to_string());
        }
        let mut ct = raw.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&raw)
            .map_err(|_| "the cookie's nonce is malformed".to_string())?;
        self.with_key(purpose, |key| {
            key.open_in_place(nonce, Aad::from(name.as_bytes()), &mut ct)
                .map(|p| p.to_vec())
        })?
        .map_err(|_| {
            "the cookie does not verify (forged, tampered with, or sealed with another key)"
                .to_string()
        })
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the cookie key file is readable by group or others; chmod 600 it");
        }
    }
}
#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

/// What the session cookie carries (inside the encryption).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random id: ties audit records together and lets sign-out refuse replays.
    pub sid: String,
    /// The issuer that signed the user in.
    pub iss: String,
    /// The principal (the `sub`, or the verified `email`).
    pub principal: String,
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acr: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// Unix seconds of the sign-in (the absolute timeout counts from here).
    pub issued_at: i64,
    /// Unix seconds of the last request that used the session (the idle
    /// timeout counts from here), refreshed at most once a minute.
    pub last_seen: i64,
}

/// The outcome of reading the session cookie of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    Absent,
    /// Valid; `refresh` asks for the cookie to be re-issued (sliding idle timeout).
    Valid {
        session: Session,
        refresh: bool,
    },
    /// Genuine but over: sign in again (treated as absent).
    Expired {
        reason: String,
    },
    /// Present but not acceptable: an invalid credential.
    Invalid {
        reason: String,
    },
}

impl SessionState {
    pub fn session(&self) -> Option<&Session> {
        match self {
            SessionState::Valid { session, .. } => Some(session),
            _ => None,
        }
    }
}

/// Issues and reads session cookies.
pub struct Sessions {
    pub keys: CookieKeys,
    issuer: String,
    idle_secs: i64,
    absolute_secs: i64,
    /// Signed-out session ids, until their idle timeout would end them anyway.
    signed_out: Mutex<HashMap<String, i64>>,
}

impl Sessions {
    pub fn new(keys: CookieKeys, issuer: &str, idle_minutes: u64, absolute_hours: u64) -> Sessions {
        let idle_secs = i64::try_from(idle_minutes.saturating_mul(60)).unwrap_or(i64::MAX);
        let absolute_secs = i64::try_from(absolute_hours.saturating_mul(3600)).unwrap_or(i64::MAX);
        Sessions {
            keys,
            issuer: issuer.to_string(),
            idle_secs,
            absolute_secs,
            signed_out: Mutex::new(HashMap::new()),
        }
    }

    pub fn idle_secs(&self) -> i64 {
        self.idle_secs
    }

    /// Read the request's session cookie.
    pub fn read(&self, headers: &HeaderMap, now: OffsetDateTime) -> SessionState {
        let values: Vec<&str> = cookies(headers)
            .filter(|(n, _)| *n == SESSION_COOKIE)
            .map(|(_, v)| v)
            .collect();
        let value = match values.as_slice() {
            [] => return SessionState::Absent,
            [one] => *one,
            _ => {
                return SessionState::Invalid {
                    reason: "more than one session cookie".to_string(),
                }
            }
        };
        self.decode(value, now)
    }

    /// Judge one session cookie value.
    pub fn decode(&self, value: &str, now: OffsetDateTime) -> SessionState {
        let invalid = |reason: String| SessionState::Invalid { reason };
        let plain = match self.keys.open(Purpose::Session, SESSION_COOKIE, value) {
            Ok(p) => p,
            Err(e) => return invalid(format!("session cookie refused: {e}")),
        };
        let s: Session = match serde_json::from_slice(&plain) {
            Ok(s) => s,
            Err(e) => return invalid(format!("session cookie content is malformed: {e}")),
        };
        let now_s = now.unix_timestamp();
        if s.issued_at > now_s + FUTURE_SKEW_SECS || s.last_seen > now_s + FUTURE_SKEW_SECS {
            return invalid("session cookie is dated in the future".to_string());
        }
        if s.principal.is_empty() {
            return invalid("session cookie names no principal".to_string());
        }
        if self.is_signed_out(&s.sid, now_s) {
            return invalid(format!(
                "session {} was signed out; its cookie was replayed",
                s.sid
            ));
        }
        if s.iss != self.issuer {
            return SessionState::Expired {
                reason: format!(
                    "the session is from issuer `{}`, no longer configured",
                    s.iss
                ),
            };
        }
        if now_s.saturating_sub(s.issued_at) >= self.absolute_secs {
            return SessionState::Expired {
                reason: format!(
                    "the session is older than its absolute limit of {} hours",
                    self.absolute_secs / 3600
                ),
            };
        }
        if now_s.saturating_sub(s.last_seen) >= self.idle_secs {
            return SessionState::Expired {
                reason: format!(
                    "the session was unused for more than {} minutes",
                    self.idle_secs / 60
                ),
            };
        }
        let refresh = now_s.saturating_sub(s.last_seen) >= REFRESH_EVERY_SECS;
        SessionState::Valid {
            session: s,
            refresh,
        }
    }

    /// `Set-Cookie` for `s` (expires with the absolute timeout).
    pub fn issue(&self, s: &Session, now: OffsetDateTime) -> Result<HeaderValue, String> {
        let json = serde_json::to_vec(s).map_err(|e| e.to_string())?;
        let value = self.keys.seal(Purpose::Session, SESSION_COOKIE, &json)?;
        let max_age = (s.issued_at + self.absolute_secs - now.unix_timestamp()).max(0);
        set_cookie(SESSION_COOKIE, &value, Some(max_age))
    }

    /// The same session, seen now (sliding idle timeout).
    pub fn refreshed(&self, s: &Session, now: OffsetDateTime) -> Result<HeaderValue, String> {
        let mut s = s.clone();
        s.last_seen = now.unix_timestamp();
        self.issue(&s, now)
    }

    /// Remember that `sid` signed out, so a copy of its cookie is refused.
    /// A signed-out cookie cannot be refreshed, so it dies by its idle
    /// timeout at the latest: the entry is needed until then.
    pub fn sign_out(&self, sid: &str, now: OffsetDateTime) {
        let now_s = now.unix_timestamp();
        let until = now_s.saturating_add(self.idle_secs);
        let Ok(mut m) = self.signed_out.lock() else {
            return;
        };
        if m.len() >= MAX_SIGNED_OUT {
            m.retain(|_, u| *u > now_s);
        }
        if m.len() >= MAX_SIGNED_OUT {
            // Still full of live entries: forget the one that ends first.
            if let Some(k) = m.iter().min_by_key(|(_, u)| **u).map(|(k, _)| k.clone()) {
                m.remove(&k);
            }
        }
        m.insert(sid.to_string(), until);
    }

    fn is_signed_out(&self, sid: &str, now_s: i64) -> bool {
        self.signed_out
            .lock()
            .map(|m| m.get(sid).is_some_and(|u| *u > now_s))
            .unwrap_or(true)
    }
}

/// A random, URL-safe token of 32 bytes (43 characters).
pub fn random_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| "no randomness".to_string())?;
    Ok(B64.encode(b))
}

/// Every `name=value` pair of the request's `Cookie` header(s).
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (n, v) = pair.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((n.trim(), v))
        })
}

/// `Set-Cookie: name=value; Path=/; Secure; HttpOnly; SameSite=Lax[; Max-Age=n]`.
pub fn set_cookie(name: &str, value: &str, max_age: Option<i64>) -> Result<HeaderValue, String> {
    let mut s = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax");
    if let Some(age) = max_age {
        s.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&s).map_err(|e| format!("cookie header: {e}"))
}

/// `Set-Cookie` that removes cookie `name`.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", Some(0)).unwrap_or_else(|_| {
        HeaderValue::from_static(
            "__Host-postern_session=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
        )
    })
}

/// Remove postern's own cookies from a request going upstream (an upstream
/// must never hold a user's session), merging what is left into one header.
pub fn strip_request_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(COOKIE) {
        return;
    }
    let mut kept: Vec<String> = Vec::new();
    let mut removed = false;
    for v in headers.get_all(COOKIE).iter() {
        let Ok(s) = v.to_str() else {
            // Not text: keep it as it is only if nothing else changes.
            kept.push(String::from_utf8_lossy(v.as_bytes()).into_owned());
            continue;
        };
        for pair in s.split(';') {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
            if is_postern_cookie(name) {
                removed = true;
            } else if !pair.trim().is_empty() {
                kept.push(pair.trim().to_string());
            }
        }
    }
    if !removed && headers.get_all(COOKIE).iter().count() == 1 {
        return;
    }
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}

/// Remove `Set-Cookie` headers by which an upstream would set one of
/// postern's cookies (session fixation through the upstream).
pub fn strip_response_cookies(headers: &mut HeaderMap) {
    if !headers.contains_key(SET_COOKIE) {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(SET_COOKIE)
        .iter()
        .filter(|v| {
            let s = String::from_utf8_lossy(v.as_bytes());
            let name = s.split_once('=').map_or(&*s, |(n, _)| n).trim();
            !is_postern_cookie(name)
        })
        .cloned()
        .collect();
    headers.remove(SET_COOKIE);
    for v in kept {
        headers.append(SET_COOKIE, v);
    }
}

fn is_postern_cookie(name: &str) -> bool {
    name.len() >= POSTERN_COOKIE_PREFIX.len()
        && name
            .get(..POSTERN_COOKIE_PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(POSTERN_COOKIE_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions() -> Sessions {
        Sessions::new(
            CookieKeys::from_secret(&[9u8; 32]).unwrap(),
            "https://idp.test",
            30,
            12,
        )
    }

    fn session(now: i64) -> Session {
        Session {
            sid: "s1".into(),
            iss: "https://idp.test".into(),
            principal: "alice".into(),
            sub: "alice".into(),
            email: Some("alice@example.test".into()),
            email_verified: true,
            acr: Some("urn:mfa".into()),
            amr: vec!["pwd".into(), "otp".into()],
            issued_at: now,
            last_seen: now,
        }
    }

    fn cookie_value(h: &HeaderValue) -> String {
        let s = h.to_str().unwrap();
        let (_, rest) = s.split_once('=').unwrap();
        rest.split(';').next().unwrap().to_string()
    }

    #[test]
    fn a_session_round_trips_and_refreshes_after_a_minute() {
        let s = sessions();
        let now = OffsetDateTime::now_utc();
        let c = cookie_value(&s.issue(&session(now.unix_timestamp()), now).unwrap());
        match s.decode(&c, now) {
            SessionState::Valid {
                session: got,
                refresh,
            } => {
                assert_eq!(got, session(now.unix_timestamp()));
                assert!(!refresh);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.decode(&c, now + time::Duration::seconds(61)),
            SessionState::Valid { refresh: true, .. }
        ));
    }

    #[test]
    fn tampered_forged_and_other_purpose_cookies_are_invalid() {
        let s = sessions();
        let now = OffsetDateTime::now_utc();
        let c = cookie_value(&s.issue(&session(now.unix_timestamp()), now).unwrap());
        for i in [4, c.len() / 2, c.len() - 2] {
            let mut b = c.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(b).unwrap();
            assert!(
                matches!(s.decode(&t, now), SessionState::Invalid { .. }),
                "{i}"
            );
        }
        let other = Sessions::new(
            CookieKeys::from_secret(&[8u8; 32]).unwrap(),
            "https://idp.test",
            30,
            12,
        );
        let forged = cookie_value(&other.issue(&session(now.unix_timestamp()), now).unwrap());
        assert!(matches!(
            s.decode(&forged, now),
            SessionState::Invalid { .. }
        ));
        // A value sealed for a login cookie does not open as a session.
        let json = serde_json::to_vec(&session(now.unix_timestamp())).unwrap();
        let login = s.keys.seal(Purpose::Login, SESSION_COOKIE, &json).unwrap();
        assert!(matches!(
            s.decode(&login, now),
            SessionState::Invalid { .. }
        ));
        assert!(matches!(s.decode("", now), SessionState::Invalid { .. }));
    }

    #[test]
    fn idle_and_absolute_timeouts_expire_and_signed_out_is_invalid() {
        let s = sessions();
        let now = OffsetDateTime::now_utc();
        let c = cookie_value(&s.issue(&session(now.unix_timestamp()), now).unwrap());
        assert!(matches!(
            s.decode(&c, now + time::Duration::minutes(31)),
            SessionState::Expired { .. }
        ));
        let mut old = session((now - time::Duration::hours(13)).unix_timestamp());
        old.last_seen = now.unix_timestamp();
        let c2 = cookie_value(&s.issue(&old, now).unwrap());
        assert!(matches!(s.decode(&c2, now), SessionState::Expired { .. }));
        s.sign_out("s1", now);
        assert!(matches!(s.decode(&c, now), SessionState::Invalid { .. }));
    }

    #[test]
    fn postern_cookies_are_stripped_both_ways() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; __Host-postern_session=x"),
        );
        h.append(
            COOKIE,
            HeaderValue::from_static("__host-POSTERN_login_q=y; b=2"),
        );
        strip_request_cookies(&mut h);
        assert_eq!(h.get_all(COOKIE).iter().count(), 1);
        assert_eq!(h.get(COOKIE).unwrap(), "a=1; b=2");
        let mut r = HeaderMap::new();
        r.append(
            SET_COOKIE,
            HeaderValue::from_static("__Host-postern_session=evil; Path=/"),
        );
        r.append(SET_COOKIE, HeaderValue::from_static("app=1"));
        strip_response_cookies(&mut r);
        assert_eq!(r.get_all(SET_COOKIE).iter().count(), 1);
        assert_eq!(r.get(SET_COOKIE).unwrap(), "app=1");
    }

    #[test]
    fn the_key_file_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cookie.key");
        let a = CookieKeys::load_or_create(&p).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let b = CookieKeys::load_or_create(&p).unwrap();
        let v = a.seal(Purpose::Session, "n", b"hello").unwrap();
        assert_eq!(b.open(Purpose::Session, "n", &v).unwrap(), b"hello");
        std::fs::write(&p, b"short").unwrap();
        assert!(CookieKeys::load_or_create(&p).is_err());
    }
}
