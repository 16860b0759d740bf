//! User-chosen opt-outs (issue 5, point 4): offers, explicit consent, device
//! binding, and a self-service page to take consents back.
//!
//! Invariants:
//! - A consent is recorded (appended and fsynced to the consent store, and
//!   audited) before the device cookie that uses it is set.
//! - A consent binds the SHA-256 of the exact disclosure text the user saw;
//!   the decision core voids it when the offer's text changes.
//! - Only an eligible user (verified claims from the identity provider) can
//!   consent: the form is not shown to others, and a direct POST is checked
//!   again on the server.
//! - Every form is CSRF-protected (an HMAC token bound to the user and the
//!   device) and refuses cross-site posts.
//! - A consent applies only on the device it was given on (a signed,
//!   `HttpOnly`, `Secure` cookie naming a random device id) and only for the
//!   user who gave it; a revoked consent stops applying at the next request.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use hmac::{Hmac, Mac};
use postern_policy::{ConsentClaim, OfferSpec, OptOutRule, Policy};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use time::{Duration, OffsetDateTime};

/// Does postern itself answer this path (consent and self-service pages)?
pub fn owns(path: &str) -> bool {
    path == CONSENT_PATH || path == MY_OPTOUTS_PATH || path == REVOKE_PATH
}

/// The device cookie (`__Host-`: Secure, Path=/, no Domain).
pub const DEVICE_COOKIE: &str = "__Host-postern_device";
/// Where the consent page, the consent form and the self-service pages live.
pub const CONSENT_PATH: &str = "/_postern/consent";
pub const MY_OPTOUTS_PATH: &str = "/_postern/me/optouts";
pub const REVOKE_PATH: &str = "/_postern/me/optouts/revoke";

type HmacSha256 = Hmac<Sha256>;

/// One consent, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub id: String,
    pub principal: String,
    pub offer: String,
    /// SHA-256 (hex) of the exact disclosure text shown.
    pub disclosure_sha256: String,
    /// The device it binds to (random, from the device cookie).
    pub device: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revoked: Option<OffsetDateTime>,
}

impl ConsentRecord {
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        self.revoked.is_none() && now < self.expires
    }
}

/// A line of the append-only store.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Line {
    Consent(ConsentRecord),
    Revoke {
        id: String,
        #[serde(with = "time::serde::rfc3339")]
        at: OffsetDateTime,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    #[error("consent store `{path}`: {reason}")]
    Store { path: String, reason: String },
    #[error("consent store `{path}` line {line}: {reason}")]
    Corrupt {
        path: String,
        line: usize,
        reason: String,
    },
}

/// The consent store: an append-only JSON-lines file, loaded at start.
pub struct ConsentStore {
    path: PathBuf,
    key: Vec<u8>,
    state: Mutex<State>,
}

struct State {
    file: File,
    records: HashMap<String, ConsentRecord>,
}

impl ConsentStore {
    /// Open (or create) the store and its HMAC key (created 0600 if missing).
    pub fn open(path: &Path, key_path: &Path) -> Result<ConsentStore, ConsentError> {
        let store_err = |p: &Path, e: &dyn std::fmt::Display| ConsentError::Store {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let key = match std::fs::read(key_path) {
            Ok(k) if k.len() >= 32 => k,
            Ok(_) => {
                return Err(store_err(
                    key_path,
                    &"the key file holds fewer than 32 bytes",
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k: [u8; 32] = rand::random();
                write_secret(key_path, &k).map_err(|e| store_err(key_path, &e))?;
                k.to_vec()
            }
            Err(e) => return Err(store_err(key_path, &e)),
        };
        let mut records = HashMap::new();
        match File::open(path) {
            Ok(f) => {
                for (i, line) in BufReader::new(f).lines().enumerate() {
                    let line = line.map_err(|e| store_err(path, &e))?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let parsed: Line =
                        serde_json::from_str(&line).map_err(|e| ConsentError::Corrupt {
                            path: path.display().to_string(),
                            line: i + 1,
                            reason: e.to_string(),
                        })?;
                    match parsed {
                        Line::Consent(r) => {
                            records.insert(r.id.clone(), r);
                        }
                        Line::Revoke { id, at } => {
                            if let Some(r) = records.get_mut(&id) {
                                r.revoked.get_or_insert(at);
                            }
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(store_err(path, &e)),
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| store_err(path, &e))?;
        Ok(ConsentStore {
            path: path.to_path_buf(),
            key,
            state: Mutex::new(State { file, records }),
        })
    }

    fn append(&self, state: &mut State, line: &Line) -> Result<(), ConsentError> {
        let err = |e: &dyn std::fmt::Display| ConsentError::Store {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        };
        let mut text = serde_json::to_string(line).map_err(|e| err(&e))?;
        text.push('\n');
        state.file.write_all(text.as_bytes()).map_err(|e| err(&e))?;
        state.file.sync_data().map_err(|e| err(&e))
    }

    /// Record a consent durably (before its cookie is set).
    pub fn record(&self, rec: ConsentRecord) -> Result<(), ConsentError> {
        let mut st = self.state.lock().map_err(|_| ConsentError::Store {
            path: self.path.display().to_string(),
            reason: "lock poisoned".to_string(),
        })?;
        self.append(&mut st, &Line::Consent(rec.clone()))?;
        st.records.insert(rec.id.clone(), rec);
        Ok(())
    }

    /// Revoke a consent the caller owns (by principal, or by device for a
    /// device-cookie holder). Returns the record if it was active.
    pub fn revoke(
        &self,
        id: &str,
        principal: Option<&str>,
        device: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<Option<ConsentRecord>, ConsentError> {
        let mut st = self.state.lock().map_err(|_| ConsentError::Store {
            path: self.path.display().to_string(),
            reason: "lock poisoned".to_string(),
        })?;
        let owned = match st.records.get(id) {
            Some(r) if r.is_active(now) => {
                principal.is_some_and(|p| p == r.principal) || device.is_some_and(|d| d == r.device)
            }
            _ => false,
        };
        if !owned {
            return Ok(None);
        }
        self.append(
            &mut st,
            &Line::Revoke {
                id: id.to_string(),
                at: now,
            },
        )?;
        Ok(st.records.get_mut(id).map(|r| {
            r.revoked = Some(now);
            r.clone()
        }))
    }

    /// Active consents of `principal` on `device`, for the decision core.
    pub fn claims(&self, principal: &str, device: &str, now: OffsetDateTime) -> Vec<ConsentClaim> {
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        st.records
            .values()
            .filter(|r| r.device == device && r.principal == principal && r.is_active(now))
            .map(|r| ConsentClaim {
                offer: r.offer.clone(),
                disclosure_sha256: r.disclosure_sha256.clone(),
                expires: r.expires,
            })
            .collect()
    }

    /// Active consents a viewer may see: all of a signed-in principal's, or
    /// this device's for a device-cookie holder. Newest first.
    pub fn active(
        &self,
        principal: Option<&str>,
        device: Option<&str>,
        now: OffsetDateTime,
    ) -> Vec<ConsentRecord> {
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        let mut v: Vec<ConsentRecord> = st
            .records
            .values()
            .filter(|r| r.is_active(now))
            .filter(|r| {
                principal.is_some_and(|p| p == r.principal) || device.is_some_and(|d| d == r.device)
            })
            .cloned()
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.created));
        v
    }

    /// Every active consent (for the admin console). Newest first.
    pub fn all_active(&self, now: OffsetDateTime) -> Vec<ConsentRecord> {
        let Ok(st) = self.state.lock() else {
            return Vec::new();
        };
        let mut v: Vec<ConsentRecord> = st
            .records
            .values()
            .filter(|r| r.is_active(now))
            .cloned()
            .collect();
        v.sort_by_key(|r| std::cmp::Reverse(r.created));
        v
    }

    fn mac(&self, parts: &[&str]) -> String {
        let Ok(mut m) = HmacSha256::new_from_slice(&self.key) else {
            return String::new();
        };
        for p in parts {
            m.update(p.as_bytes());
            m.update(b"\n");
        }
        hex::encode(m.finalize().into_bytes())
    }

    /// The device cookie's value for a new device bound to `principal`.
    pub fn new_device_cookie(&self, principal: &str) -> (String, String) {
        let device = hex::encode(rand::random::<[u8; 16]>());
        let value = self.device_cookie_value(&device, principal);
        (device, value)
    }

    /// The cookie value binding an existing `device` to `principal` (for
    /// tests and tools that hold the key; the gateway mints new devices with
    /// [`ConsentStore::new_device_cookie`]).
    pub fn device_cookie_for(&self, device: &str, principal: &str) -> String {
        self.device_cookie_value(device, principal)
    }

    fn device_cookie_value(&self, device: &str, principal: &str) -> String {
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(principal);
        let mac = self.mac(&["device", device, principal]);
        format!("{device}.{p}.{mac}")
    }

    /// Verify a device cookie: `Some((device, principal))` if it is ours and
    /// unaltered. Compared in constant time.
    pub fn parse_device_cookie(&self, value: &str) -> Option<(String, String)> {
        let mut it = value.splitn(3, '.');
        let (device, p, mac) = (it.next()?, it.next()?, it.next()?);
        if device.len() != 32 || !device.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let principal = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()?,
        )
        .ok()?;
        let want = self.mac(&["device", device, &principal]);
        use subtle::ConstantTimeEq;
        if want.as_bytes().ct_eq(mac.as_bytes()).into() {
            Some((device.to_string(), principal))
        } else {
            None
        }
    }

    /// A CSRF token bound to the viewer (principal and/or device) and the action.
    pub fn csrf(&self, principal: Option<&str>, device: Option<&str>, action: &str) -> String {
        self.mac(&[
            "csrf",
            principal.unwrap_or(""),
            device.unwrap_or(""),
            action,
        ])
    }

    pub fn csrf_ok(
        &self,
        token: &str,
        principal: Option<&str>,
        device: Option<&str>,
        action: &str,
    ) -> bool {
        use subtle::ConstantTimeEq;
        let want = self.csrf(principal, device, action);
        !token.is_empty() && want.as_bytes().ct_eq(token.as_bytes()).into()
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The viewer of a consent page: who the session says they are.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub principal: String,
    pub email_verified: bool,
    pub amr: Vec<String>,
}

/// A consent for `offer` by `viewer` on `device`, if they are eligible.
pub fn new_consent(
    offer: &OfferSpec,
    viewer: &Viewer,
    device: &str,
    now: OffsetDateTime,
) -> Result<ConsentRecord, Vec<String>> {
    offer.eligibility(viewer.email_verified, &viewer.amr)?;
    Ok(ConsentRecord {
        id: hex::encode(rand::random::<[u8; 12]>()),
        principal: viewer.principal.clone(),
        offer: offer.id.to_string(),
        disclosure_sha256: offer.disclosure_sha256.clone(),
        device: device.to_string(),
        created: now,
        expires: now + Duration::days(i64::from(offer.duration_days)),
        revoked: None,
    })
}

/// The offer (and its rule) a user could accept for this request, if any.
pub fn offer_covering<'a>(
    policy: &'a Policy,
    host: &str,
    method: &str,
    path: &postern_policy::NormalizedPath,
) -> Option<&'a OptOutRule> {
    let route = policy.find_route(host, path)?;
    policy
        .optout_candidates(route.id(), method, path)
        .into_iter()
        .find(|r| r.offer().is_some())
}

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
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

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:42rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
h1{font-size:1.4rem}dl{display:grid;grid-template-columns:9rem 1fr;gap:.3rem 1rem}dt{font-weight:600}\
.risk{background:#fff4e5;border-left:4px solid #e08a00;padding:.6rem 1rem}.no{background:#fdecea;border-left:4px solid #c62828;padding:.6rem 1rem}\
button{font:inherit;padding:.4rem 1rem}table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\"><title>{t}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        t = esc(title)
    )
}

/// The consent page: states plainly what is skipped, where, for how long
/// and the risk; an unticked checkbox and a confirm button. An ineligible
/// user is told why and gets no form.
pub fn consent_page(
    rule: &OptOutRule,
    offer: &OfferSpec,
    viewer: &Viewer,
    csrf: &str,
    return_to: &str,
) -> String {
    let skipped: Vec<String> = rule
        .waived()
        .iter()
        .map(|f| match f {
            postern_policy::Factor::Oidc => "signing in".to_string(),
            postern_policy::Factor::Mtls => "the client certificate".to_string(),
            postern_policy::Factor::Jwt => "the bearer token".to_string(),
        })
        .collect();
    let paths: Vec<String> = rule.paths().iter().map(|p| p.to_string()).collect();
    let facts = format!(
        "<dl><dt>What is skipped</dt><dd>{}</dd><dt>Where</dt><dd>{} on {}</dd><dt>For how long</dt><dd>{} days on this device, unless you revoke it sooner</dd><dt>Who may use it</dt><dd>anyone using this browser on this device, as {}</dd></dl>",
        esc(&skipped.join(" and ")),
        esc(&rule.methods().join(", ")),
        esc(&paths.join(", ")),
        offer.duration_days,
        esc(&viewer.principal),
    );
    let body = match offer.eligibility(viewer.email_verified, &viewer.amr) {
        Err(why) => format!(
            "<h1>{}</h1><p>{}</p>{facts}<div class=no><p><strong>This choice is not available to you:</strong></p><ul>{}</ul></div><p><a href=\"{}\">Continue</a></p>",
            esc(&offer.title),
            esc(&offer.disclosure),
            why.iter().map(|w| format!("<li>{}</li>", esc(w))).collect::<String>(),
            esc(return_to)
        ),
        Ok(()) => format!(
            "<h1>{t}</h1><p>{d}</p>{facts}<p class=risk><strong>The risk:</strong> if someone else uses this device, they can open these pages as you without signing in. Revoke it any time at <a href=\"{my}\">your opt-outs</a>.</p>\
<form method=post action=\"{action}\"><input type=hidden name=offer value=\"{o}\"><input type=hidden name=csrf value=\"{c}\"><input type=hidden name=return_to value=\"{r}\">\
<p><label><input type=checkbox name=agree value=yes id=agree> I have read this and choose to skip {s} here on this device.</label></p>\
<p><button type=submit id=confirm>Confirm</button> <a href=\"{r}\">Not now</a></p></form>",
            t = esc(&offer.title),
            d = esc(&offer.disclosure),
            my = MY_OPTOUTS_PATH,
            action = CONSENT_PATH,
            o = esc(&offer.id),
            c = esc(csrf),
            r = esc(return_to),
            s = esc(&skipped.join(" and ")),
        ),
    };
    page(&offer.title, &body)
}

/// The self-service page: the viewer's active opt-outs, each with a revoke button.
pub fn my_optouts_page(
    records: &[ConsentRecord],
    csrf: &str,
    titles: &HashMap<String, String>,
) -> String {
    let rows: String = records
        .iter()
        .map(|r| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><form method=post action=\"{REVOKE_PATH}\"><input type=hidden name=id value=\"{}\"><input type=hidden name=csrf value=\"{}\"><button type=submit class=revoke>Revoke</button></form></td></tr>",
                esc(titles.get(&r.offer).map(String::as_str).unwrap_or(&r.offer)),
                esc(&fmt_date(r.created)),
                esc(&fmt_date(r.expires)),
                esc(&r.id),
                esc(csrf)
            )
        })
        .collect();
    let body = if records.is_empty() {
        "<h1>Your opt-outs</h1><p id=none>You have no active opt-outs.</p>".to_string()
    } else {
        format!("<h1>Your opt-outs</h1><p>Each lets this device skip authentication somewhere. Revoking takes effect at your next request.</p><table><tr><th>Opt-out</th><th>Since</th><th>Until</th><th></th></tr>{rows}</table>")
    };
    page("Your opt-outs", &body)
}

fn fmt_date(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parse an `application/x-www-form-urlencoded` body.
pub fn parse_form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in body.split(|b| *b == b'&') {
        let mut kv = pair.splitn(2, |b| *b == b'=');
        let (Some(k), v) = (kv.next(), kv.next()) else {
            continue;
        };
        if let (Some(k), Some(v)) = (form_decode(k), form_decode(v.unwrap_or(b""))) {
            out.entry(k).or_insert(v);
        }
    }
    out
}

fn form_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Cookie values by name from every `Cookie` header.
pub fn cookies(headers: &http::HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(http::header::COOKIE) {
        let Ok(s) = v.to_str() else { continue };
        for part in s.split(';') {
            if let Some((k, v)) = part.trim().split_once('=') {
                out.entry(k.trim().to_string())
                    .or_insert_with(|| v.trim().to_string());
            }
        }
    }
    out
}

/// Only same-origin relative paths, never `//host` or a scheme.
pub fn safe_return_to(r: Option<&str>) -> String {
    match r {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[tls]
cert = "c"
key = "k"
[audit]
path = "a"
signing_key = "s"
[[upstream]]
name = "u"
url = "http://127.0.0.1:1"
[[route]]
id = "docs"
path_prefix = "/docs"
upstream = "u"
require = [["oidc"]]
[[optout]]
id = "remember"
route = "docs"
methods = ["GET"]
paths = ["/docs/**"]
waive = ["oidc"]
owner = "o"
reason = "r"
expires = 2099-01-01T00:00:00Z
[optout.offer]
title = "Remember this device"
disclosure = "Skip sign-in for read-only docs."
duration_days = 30
require_amr_any = ["mfa"]
"#;

    fn store() -> (tempfile::TempDir, ConsentStore) {
        let d = tempfile::tempdir().unwrap();
        let s = ConsentStore::open(
            &d.path().join("consents.jsonl"),
            &d.path().join("consent.key"),
        )
        .unwrap();
        (d, s)
    }

    fn policy() -> Policy {
        let mut c = postern_policy::Config::parse(Path::new("t.toml"), CONFIG).unwrap();
        c.gateway.max_optout_days = 36500;
        Policy::compile(&c, OffsetDateTime::now_utc()).unwrap().0
    }

    fn offer() -> OfferSpec {
        policy()
            .optout("remember")
            .unwrap()
            .offer()
            .unwrap()
            .as_ref()
            .clone()
    }

    fn alice() -> Viewer {
        Viewer {
            principal: "alice".into(),
            email_verified: true,
            amr: vec!["pwd".into(), "mfa".into()],
        }
    }

    #[test]
    fn a_consent_is_durable_and_survives_a_restart_and_revocation_too() {
        let (d, s) = store();
        let now = OffsetDateTime::now_utc();
        let dev = "aa".repeat(16);
        let rec = new_consent(&offer(), &alice(), &dev, now).unwrap();
        s.record(rec.clone()).unwrap();
        assert_eq!(s.claims("alice", &dev, now).len(), 1);
        assert!(
            s.claims("mallory", &dev, now).is_empty(),
            "bound to the user"
        );
        assert!(
            s.claims("alice", &"bb".repeat(16), now).is_empty(),
            "bound to the device"
        );
        drop(s);
        let s = ConsentStore::open(
            &d.path().join("consents.jsonl"),
            &d.path().join("consent.key"),
        )
        .unwrap();
        assert_eq!(s.active(Some("alice"), None, now), vec![rec.clone()]);
        // Someone else cannot revoke it; its owner can.
        assert!(s
            .revoke(&rec.id, Some("mallory"), None, now)
            .unwrap()
            .is_none());
        assert!(s
            .revoke(&rec.id, Some("alice"), None, now)
            .unwrap()
            .is_some());
        assert!(s.claims("alice", &dev, now).is_empty());
        drop(s);
        let s = ConsentStore::open(
            &d.path().join("consents.jsonl"),
            &d.path().join("consent.key"),
        )
        .unwrap();
        assert!(
            s.active(Some("alice"), None, now).is_empty(),
            "the revocation is durable"
        );
    }

    #[test]
    fn an_expired_consent_stops_applying() {
        let (_d, s) = store();
        let now = OffsetDateTime::now_utc();
        let rec = new_consent(&offer(), &alice(), "dev", now).unwrap();
        s.record(rec).unwrap();
        assert!(s
            .claims("alice", "dev", now + Duration::days(31))
            .is_empty());
    }

    #[test]
    fn an_ineligible_user_cannot_consent() {
        let now = OffsetDateTime::now_utc();
        let mut bob = alice();
        bob.email_verified = false;
        assert!(new_consent(&offer(), &bob, "x", now).is_err());
        let mut weak = alice();
        weak.amr = vec!["pwd".into()];
        let why = new_consent(&offer(), &weak, "x", now).unwrap_err();
        assert!(why[0].contains("mfa"));
    }

    #[test]
    fn forged_or_altered_device_cookies_are_refused() {
        let (_d, s) = store();
        let (device, value) = s.new_device_cookie("alice");
        assert_eq!(
            s.parse_device_cookie(&value),
            Some((device.clone(), "alice".to_string()))
        );
        // Another principal under the same device id and MAC.
        let parts: Vec<&str> = value.split('.').collect();
        let mallory = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("mallory");
        assert_eq!(
            s.parse_device_cookie(&format!("{}.{}.{}", parts[0], mallory, parts[2])),
            None
        );
        assert_eq!(s.parse_device_cookie(&format!("{value}0")), None);
        assert_eq!(s.parse_device_cookie("garbage"), None);
        // Another store's key.
        let (_d2, other) = store();
        assert_eq!(other.parse_device_cookie(&value), None);
    }

    #[test]
    fn csrf_tokens_bind_viewer_and_action() {
        let (_d, s) = store();
        let t = s.csrf(Some("alice"), Some("dev"), "consent");
        assert!(s.csrf_ok(&t, Some("alice"), Some("dev"), "consent"));
        assert!(!s.csrf_ok(&t, Some("mallory"), Some("dev"), "consent"));
        assert!(!s.csrf_ok(&t, Some("alice"), Some("dev"), "revoke"));
        assert!(!s.csrf_ok("", Some("alice"), Some("dev"), "consent"));
    }

    #[test]
    fn the_consent_page_states_the_facts_with_an_unticked_box_and_escapes() {
        let p = policy();
        let rule = p.optout("remember").unwrap();
        let html = consent_page(rule, &offer(), &alice(), "tok<>", "/docs/a?b=\"c\"");
        assert!(html.contains("type=checkbox name=agree value=yes id=agree>"));
        assert!(!html.contains("checked"), "the box starts unticked");
        assert!(html.contains("30 days"));
        assert!(html.contains("GET on /docs/**"));
        assert!(html.contains("The risk:"));
        assert!(html.contains("tok&lt;&gt;") && !html.contains("tok<>"));
        assert!(html.contains("&quot;c&quot;"));
        // An ineligible user sees why, and no form.
        let mut weak = alice();
        weak.amr.clear();
        let html = consent_page(rule, &offer(), &weak, "t", "/docs");
        assert!(html.contains("not available to you") && !html.contains("<form"));
    }

    #[test]
    fn return_to_is_never_an_open_redirect() {
        assert_eq!(safe_return_to(Some("/docs?x=1")), "/docs?x=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "evil",
            "",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad}");
        }
    }

    #[test]
    fn forms_decode_plus_and_percent() {
        let f = parse_form(b"a=1+2&b=%2Fx%3F&agree=yes&a=ignored");
        assert_eq!(f["a"], "1 2");
        assert_eq!(f["b"], "/x?");
        assert_eq!(f["agree"], "yes");
    }
}
