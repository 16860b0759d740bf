//! The admin console (issue 5, point 5): its own TLS listener behind mTLS
//! with an admin identity, driven by a raw TLS client (exact requests) and
//! by headless Chromium presenting alice's certificate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_pki::{CaStore, Kind};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// The demo, whose console is on (alice is the admin).
async fn demo_with_console() -> Demo {
    let d = Demo::start().await;
    let text = std::fs::read_to_string(d.path("postern.toml")).unwrap();
    assert!(
        text.contains("console_identities = [\"alice\"]"),
        "the demo's console is on, for alice"
    );
    d
}

fn console_addr(d: &Demo) -> SocketAddr {
    d.gw.as_ref()
        .unwrap()
        .console_addr
        .expect("console listener")
}

fn console(d: &Demo) -> Client {
    Client::new(console_addr(d), &d.path("ca.pem"))
}

fn batch(d: &Demo) -> Creds {
    Creds::load(&d.path("batch.pem"), &d.path("batch.key"))
}

fn serial_of(creds: &Creds) -> String {
    postern_pki::client_identity(
        creds.chain[0].as_ref(),
        "postern.demo",
        OffsetDateTime::now_utc(),
    )
    .unwrap()
    .serial_hex
}

/// A client certificate for `name` from the demo CA, written into the demo dir.
fn issue(d: &Demo, name: &str) -> Creds {
    let store = CaStore::open(d.dir.path()).unwrap();
    let c = store
        .issue_client(
            name,
            Kind::User,
            time::Duration::hours(1),
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    std::fs::write(d.path(&format!("{name}.pem")), &c.cert_pem).unwrap();
    postern_pki::write_private_key(d.path(&format!("{name}.key")), &c.key_pem).unwrap();
    Creds::load(
        &d.path(&format!("{name}.pem")),
        &d.path(&format!("{name}.key")),
    )
}

fn text(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The value of the first `name=<name> value="…"` in the page.
fn form_value(html: &str, name: &str) -> String {
    let needle = format!("name={name} value=\"");
    let start = html
        .find(&needle)
        .unwrap_or_else(|| panic!("no `{name}` field in {html}"))
        + needle.len();
    html[start..].split('"').next().unwrap().to_string()
}

/// POST a form to the console as `creds`.
async fn post(c: &Client, creds: &Creds, path: &str, form: &str, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    headers.extend_from_slice(extra);
    c.request(Some(creds), "POST", path, &headers, form.as_bytes())
        .await
}

fn audit_records(d: &Demo) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.path("audit.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn without_a_client_certificate_the_console_handshake_fails() {
    let d = demo_with_console().await;
    let c = console(&d);
    let cfg = Arc::new(c.tls_config(None, &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(c.addr()).await.unwrap();
    let refused = match tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
    {
        Err(_) => true,
        // TLS 1.3: the server's refusal arrives after the client's Finished.
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let r = tls.read_to_end(&mut buf).await;
            assert!(
                buf.is_empty(),
                "an answer without a client certificate: {}",
                String::from_utf8_lossy(&buf)
            );
            r.is_err()
        }
    };
    assert!(
        refused,
        "the console's handshake must require a client certificate"
    );
    // The gateway's own listener still serves certificate-less clients (opt-outs).
    assert_eq!(d.client().get(None, "/healthz", &[]).await.status, 200);
}

#[tokio::test]
async fn alice_sees_rules_uses_grants_and_the_policy_digest() {
    let d = demo_with_console().await;
    let gw = d.client();
    assert_eq!(gw.get(None, "/healthz", &[]).await.status, 200);
    assert_eq!(
        gw.get(Some(&batch(&d)), "/reports/daily", &[]).await.status,
        200
    );

    let r = console(&d).get(Some(&d.alice()), "/", &[]).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let page = text(&r);
    assert!(
        page.contains("signed in as <strong>alice</strong>"),
        "{page}"
    );
    assert!(
        page.contains("http-equiv=\"refresh\""),
        "live: the page refreshes itself"
    );
    // Rules with owner, reason and time to expiry (30 days out in the demo).
    for needle in [
        "<code>healthz</code>",
        "<code>reports-batch</code>",
        "<code>demo-webhook</code>",
        "platform-team",
        "load-balancer health checks cannot present credentials",
        "in 29 d 23 h",
        "certificate grant",
        "signed webhook",
    ] {
        assert!(page.contains(needle), "`{needle}` missing from the console");
    }
    // Recent uses, newest first: the batch job's grant use, then the health check.
    let uses = page.split("id=uses").nth(1).unwrap();
    let batch_at = uses
        .find("<code>reports-batch</code>")
        .expect("batch use listed");
    let health_at = uses
        .find("<code>healthz</code>")
        .expect("healthz use listed");
    assert!(batch_at < health_at, "newest first");
    assert!(uses.contains("service/batch"));
    assert!(uses.contains("last 2 of 2 since start"), "{uses}");
    // The grant certificate, with a revoke form.
    let grants = page.split("id=grants").nth(1).unwrap();
    assert!(grants.contains(&format!("value=\"{}\"", serial_of(&batch(&d)))));
    assert!(grants.contains("action=\"/grants/revoke\""));
    // The digest and approvers of the policy serving.
    let config = postern_policy::Config::load(&d.path("postern.toml")).unwrap();
    assert!(page.contains(&format!(
        "<code id=digest>{}</code>",
        postern_review::digest(&config)
    )));
    assert!(
        page.contains("<code>reviewer-1</code>, <code>reviewer-2</code>"),
        "{page}"
    );
    assert!(page.contains("(2 of 2 needed)"));
    // Hooks not filled on this gateway say so.
    assert!(page.contains("id=consents"));
    assert!(page.contains("id=signals"));
}

#[tokio::test]
async fn a_non_admin_certificate_gets_403() {
    let d = demo_with_console().await;
    let mallory = issue(&d, "mallory");
    // A perfectly good certificate for the gateway...
    assert_eq!(
        d.client().get(Some(&mallory), "/private", &[]).await.status,
        200
    );
    // ...but not an admin identity.
    let r = console(&d).get(Some(&mallory), "/", &[]).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(text(&r).contains("`mallory` is not an admin console identity"));
    // The batch service is no admin either, and a POST is refused the same way.
    let r = post(&console(&d), &batch(&d), "/grants/revoke", "serial=01", &[]).await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn the_revoke_button_revokes_a_grant_certificate_within_a_second() {
    let d = demo_with_console().await;
    let gw = d.client();
    let batch = batch(&d);
    let mut open = gw.connect(Some(&batch)).await;
    assert_eq!(on_connection(&mut open, "/reports/daily").await.status, 200);

    let c = console(&d);
    let alice = d.alice();
    let page = text(&c.get(Some(&alice), "/", &[]).await);
    let csrf = form_value(&page, "csrf");
    let serial = form_value(&page, "serial");
    assert_eq!(serial, serial_of(&batch));

    let r = post(
        &c,
        &alice,
        "/grants/revoke",
        &format!("csrf={csrf}&serial={serial}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert_eq!(
        r.header("location"),
        Some(format!("/?revoked={serial}").as_str())
    );
    let revoked_at = Instant::now();

    // Within a second, the batch job is refused on its open connection...
    let status = loop {
        let s = on_connection(&mut open, "/reports/daily").await.status;
        if s == 401 || revoked_at.elapsed() > Duration::from_secs(1) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        status, 401,
        "the revoked grant certificate still works after a second"
    );
    // ...and the console no longer lists it, saying what happened.
    let page = text(
        &c.get(Some(&alice), &format!("/?revoked={serial}"), &[])
            .await,
    );
    assert!(
        page.contains(&format!("Certificate {serial} revoked")),
        "{page}"
    );
    assert!(!page
        .split("id=grants")
        .nth(1)
        .unwrap()
        .contains(&format!("value=\"{serial}\"")));
    // The CA says so, and the revocation is audited (durably) as alice's.
    assert!(CaStore::open(d.dir.path())
        .unwrap()
        .is_revoked(&serial)
        .unwrap());
    let rec = audit_records(&d)
        .into_iter()
        .find(|r| r["kind"] == "console" && r["decision"] == "revoked")
        .expect("audit record of the console revocation");
    assert_eq!(rec["identity"], "alice");
    assert_eq!(rec["extra"]["serial"], serial.as_str());
    assert_eq!(rec["extra"]["holder"], "service/batch");
}

#[tokio::test]
async fn a_post_without_the_right_csrf_token_is_refused() {
    let d = demo_with_console().await;
    let c = console(&d);
    let alice = d.alice();
    let page = text(&c.get(Some(&alice), "/", &[]).await);
    let csrf = form_value(&page, "csrf");
    let serial = serial_of(&batch(&d));

    // No token.
    let r = post(
        &c,
        &alice,
        "/grants/revoke",
        &format!("serial={serial}"),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    assert!(text(&r).contains("CSRF"), "{}", text(&r));
    // A made-up token.
    let r = post(
        &c,
        &alice,
        "/grants/revoke",
        &format!("csrf={}&serial={serial}", "00".repeat(32)),
        &[],
    )
    .await;
    assert_eq!(r.status, 403);
    // The token of another admin certificate (alice's second one).
    let alice2 = issue(&d, "alice");
    let r = post(
        &c,
        &alice2,
        "/grants/revoke",
        &format!("csrf={csrf}&serial={serial}"),
        &[],
    )
    .await;
    assert_eq!(
        r.status, 403,
        "a token is bound to the certificate it was shown to"
    );
    // The right token from another site.
    let r = post(
        &c,
        &alice,
        "/grants/revoke",
        &format!("csrf={csrf}&serial={serial}"),
        &[
            ("Sec-Fetch-Site", "cross-site"),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 403);
    // GET does not change anything either.
    let r = c
        .get(
            Some(&alice),
            &format!("/grants/revoke?csrf={csrf}&serial={serial}"),
            &[],
        )
        .await;
    assert_eq!(r.status, 405);

    // Nothing was revoked: the batch job still works.
    assert!(!CaStore::open(d.dir.path())
        .unwrap()
        .is_revoked(&serial)
        .unwrap());
    assert_eq!(
        d.client()
            .get(Some(&batch(&d)), "/reports/daily", &[])
            .await
            .status,
        200
    );
}

/// Chromium, presenting alice's certificate, sees the console and revokes
/// the batch job's grant with the button; without a certificate it gets no
/// page. With `POSTERN_SCREENSHOTS=1` it saves docs/screenshots/admin-console.png.
#[tokio::test]
async fn chromium_with_alices_certificate_uses_the_console() {
    let d = demo_with_risk().await;
    let mut untrusted = d.client();
    untrusted.from = Some("127.0.0.2".parse().unwrap());
    assert_eq!(untrusted.get(None, "/healthz", &[]).await.status, 401);
    let mut unknown = d.client();
    unknown.from = Some("127.0.0.3".parse().unwrap());
    assert_eq!(unknown.get(None, "/healthz", &[]).await.status, 200);
    let now = OffsetDateTime::now_utc();
    consent_store(&d)
        .record(postern_gateway::consent::ConsentRecord {
            id: "c-demo-1".to_string(),
            principal: "carol".to_string(),
            offer: "remember-device-readonly".to_string(),
            disclosure_sha256: "5e".repeat(32),
            device: "d7c1f0a4b2e94f6a".to_string(),
            created: now,
            expires: now + time::Duration::days(30),
            revoked: None,
        })
        .unwrap();
    // Some traffic, so the live sections have something to show.
    let gw = d.client();
    for _ in 0..3 {
        assert_eq!(gw.get(None, "/healthz", &[]).await.status, 200);
    }
    assert_eq!(
        gw.get(Some(&batch(&d)), "/reports/daily", &[]).await.status,
        200
    );
    assert_eq!(
        gw.get(Some(&batch(&d)), "/reports/weekly?format=csv", &[])
            .await
            .status,
        200
    );
    let ts = OffsetDateTime::now_utc().unix_timestamp();
    let body = br#"{"event":"invoice.paid"}"#;
    let sig = sign_webhook(&d.path("webhook.secret"), ts, body);
    let r = gw
        .request(
            None,
            "POST",
            "/webhooks/demo",
            &[
                ("x-postern-timestamp", &ts.to_string()),
                ("x-postern-signature", &sig),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200);

    let run = crate::browser::run_script(
        "console.mjs",
        &[
            (
                "CONSOLE_URL",
                format!("https://localhost:{}/", console_addr(&d).port()),
            ),
            ("ADMIN_CERT", d.path("alice.pem").display().to_string()),
            ("ADMIN_KEY", d.path("alice.key").display().to_string()),
            ("GRANT_SERIAL", serial_of(&batch(&d))),
        ],
        Duration::from_secs(120),
    )
    .await;
    run.assert_passed("console");
    assert!(run.checked("without a client certificate the browser gets no console"));
    assert!(run.checked("the Revoke button revoked the grant certificate"));
    assert!(CaStore::open(d.dir.path())
        .unwrap()
        .is_revoked(&serial_of(&batch(&d)))
        .unwrap());
}

/// The demo (console on) with `[risk]`: 127.0.0.1 trusted, 127.0.0.2
/// untrusted, anything else unknown; the `healthz` opt-out has `max_risk = 40`.
async fn demo_with_risk() -> Demo {
    let dir = tempfile::tempdir().unwrap();
    postern::demo::prepare(
        dir.path(),
        "127.0.0.1:0".parse().unwrap(),
        OffsetDateTime::now_utc(),
    )
    .unwrap();
    let cfg = dir.path().join("postern.toml");
    let config = std::fs::read_to_string(&cfg).unwrap().replacen(
        "id = \"healthz\"\n",
        "id = \"healthz\"\nmax_risk = 40\n",
        1,
    ) + "\n[risk]\ntrusted_cidrs = [\"127.0.0.1/32\"]\nuntrusted_cidrs = [\"127.0.0.2/32\"]\n[risk.weights]\nuntrusted_source = 60\nunknown_source = 20\n";
    std::fs::write(&cfg, config).unwrap();
    crate::browser::reapprove(dir.path());
    Demo::start_in(dir).await
}

/// With `[risk]`, the console lists the signals that fired most.
#[tokio::test]
async fn the_console_lists_the_risk_signals_that_fired_most() {
    let d = demo_with_risk().await;
    let mut untrusted = d.client();
    untrusted.from = Some("127.0.0.2".parse().unwrap());
    assert_eq!(untrusted.get(None, "/healthz", &[]).await.status, 401);
    assert_eq!(untrusted.get(None, "/healthz", &[]).await.status, 401);
    let mut unknown = d.client();
    unknown.from = Some("127.0.0.3".parse().unwrap());
    assert_eq!(unknown.get(None, "/healthz", &[]).await.status, 200);

    let page = text(&console(&d).get(Some(&d.alice()), "/", &[]).await);
    let signals = page.split("id=signals").nth(1).unwrap();
    let untrusted_at = signals
        .find("<code>untrusted_source</code></td><td>2</td>")
        .unwrap_or_else(|| panic!("untrusted_source fired twice: {signals}"));
    let unknown_at = signals
        .find("<code>unknown_source</code></td><td>1</td>")
        .unwrap_or_else(|| panic!("unknown_source fired once: {signals}"));
    assert!(untrusted_at < unknown_at, "most first");
    assert!(page.contains("risk ≤ 40"), "the rule's ceiling is shown");
}

/// The gateway's consent store as the console sees it: the one connected
/// to the console hook, or a fresh one connected here.
fn consent_store(d: &Demo) -> Arc<postern_gateway::consent::ConsentStore> {
    let shared = d.gw.as_ref().unwrap().shared.clone();
    if let Some(s) = shared.console.consents.get() {
        return s.clone();
    }
    let s = Arc::new(
        postern_gateway::consent::ConsentStore::open(
            &d.path("console-consents.jsonl"),
            &d.path("console-consents.key"),
        )
        .unwrap(),
    );
    let _ = shared.console.consents.set(s);
    shared.console.consents.get().unwrap().clone()
}

/// The consents hook: once the gateway's consent store is connected, its
/// active consents are listed, and the Revoke button (CSRF-checked) takes
/// one back, audited as the admin's.
#[tokio::test]
async fn connected_consents_are_listed_and_revocable() {
    use postern_gateway::consent::ConsentRecord;
    let d = demo_with_console().await;
    let store = consent_store(&d);
    let now = OffsetDateTime::now_utc();
    store
        .record(ConsentRecord {
            id: "c-test-1".to_string(),
            principal: "carol".to_string(),
            offer: "remember-device-readonly".to_string(),
            disclosure_sha256: "ab".repeat(32),
            device: "dev-0123456789abcdef".to_string(),
            created: now,
            expires: now + time::Duration::days(30),
            revoked: None,
        })
        .unwrap();

    let c = console(&d);
    let alice = d.alice();
    let page = text(&c.get(Some(&alice), "/", &[]).await);
    let consents = page.split("id=consents").nth(1).unwrap();
    assert!(consents.contains("<code>carol</code>"), "{consents}");
    assert!(consents.contains("<code>remember-device-readonly</code>"));
    let csrf = form_value(&page, "csrf");

    // Without the token: refused, still active.
    let r = post(&c, &alice, "/consents/revoke", "id=c-test-1", &[]).await;
    assert_eq!(r.status, 403);
    assert_eq!(store.all_active(OffsetDateTime::now_utc()).len(), 1);

    let r = post(
        &c,
        &alice,
        "/consents/revoke",
        &format!("csrf={csrf}&id=c-test-1"),
        &[],
    )
    .await;
    assert_eq!(r.status, 303, "{}", text(&r));
    assert!(store.all_active(OffsetDateTime::now_utc()).is_empty());
    let page = text(&c.get(Some(&alice), "/?consent_revoked=1", &[]).await);
    assert!(page.contains("Consent revoked"));
    assert!(!page
        .split("id=consents")
        .nth(1)
        .unwrap()
        .contains("<code>carol</code>"));
    let rec = audit_records(&d)
        .into_iter()
        .find(|r| r["kind"] == "console" && r["extra"]["action"] == "revoke_consent")
        .expect("audit record of the consent revocation");
    assert_eq!(rec["identity"], "alice");
    assert_eq!(rec["extra"]["holder"], "carol");
}
