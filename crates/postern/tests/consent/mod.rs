//! User-chosen opt-outs in a real browser against a real OpenID provider:
//! sign in, consent, use the opt-out without signing in, revoke it, be asked
//! to sign in again; an ineligible user cannot consent, not even by posting
//! the form directly.

use std::time::Duration;

use crate::browser::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_consents_uses_and_revokes_an_opt_out_in_a_real_browser() {
    ensure_tools().await;
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let now = time::OffsetDateTime::now_utc();
    postern::demo::prepare(dir.path(), addr, now).unwrap();
    let provider = Provider::start(dir.path(), addr).await;
    // The demo's own browser sign-in config, as `postern demo --oidc` writes it.
    let oidc = postern::demo::DemoOidc {
        issuer: provider.issuer.clone(),
        client_id: provider.client_id.clone(),
        client_secret_file: Some(dir.path().join("oidc-client.secret")),
        extra_ca: Some(dir.path().join("ca.pem")),
    };
    postern::demo::prepare_with(dir.path(), addr, now, Some(&oidc)).unwrap();
    let mut demo = Demo::start_in(dir).await;
    // bob's CSRF token for the consent form, from the gateway's consent key.
    let store = postern_gateway::consent::ConsentStore::open(
        &demo.path("consents.jsonl"),
        &demo.path("consent.key"),
    )
    .unwrap();
    let bob_csrf = store.csrf(Some("bob"), None, "consent:remember-device-readonly");
    drop(store);

    let run = run_script(
        "consent.mjs",
        &[
            (
                "POSTERN_URL",
                format!("https://localhost:{}", demo.addr.port()),
            ),
            ("OIDC_ISSUER", provider.issuer.clone()),
            ("BOB_CSRF", bob_csrf),
        ],
        Duration::from_secs(120),
    )
    .await;
    run.assert_passed("consent");
    run.assert_passed("consent-ineligible");

    // Consent, use and revocation are audited; the refusal too.
    demo.stop().await;
    let log = std::fs::read_to_string(demo.path("audit.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let consent = |d: &str| {
        recs.iter()
            .any(|r| r["kind"] == "consent" && r["decision"] == d)
    };
    assert!(consent("consented"), "the consent is audited");
    assert!(consent("revoked"), "the revocation is audited");
    assert!(consent("refused"), "bob's direct POST is audited");
    let consented = recs
        .iter()
        .find(|r| r["kind"] == "consent" && r["decision"] == "consented")
        .unwrap();
    assert!(
        consented["reasons"]
            .to_string()
            .contains("disclosure sha256"),
        "{consented}"
    );
    assert!(recs.iter().any(|r| r["decision"] == "optout"
        && r["rule"] == "remember-device-readonly"
        && r["identity"] == "alice"));
    // The store holds the record and its revocation.
    let store = std::fs::read_to_string(demo.path("consents.jsonl")).unwrap();
    assert!(
        store.contains("\"op\":\"consent\"") && store.contains("\"op\":\"revoke\""),
        "{store}"
    );
}

/// The demo with a docs route and a remember-device offer (no OpenID
/// provider needed: consents attach from the device cookie alone).
fn demo_with_offer(dir: &std::path::Path, disclosure: &str) {
    let now = time::OffsetDateTime::now_utc();
    postern::demo::prepare(dir, "127.0.0.1:0".parse().unwrap(), now).unwrap();
    let expires = (now + time::Duration::days(30))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let cfg = dir.join("postern.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        r#"
[[route]]
id = "docs"
host = "*"
path_prefix = "/docs"
upstream = "echo"
require = [["mtls"], ["jwt"], ["oidc"]]

[[optout]]
id = "remember-device-readonly"
route = "docs"
methods = ["GET", "HEAD"]
paths = ["/docs/**"]
waive = ["oidc"]
owner = "identity-team"
reason = "users may choose not to sign in again for read-only docs"
expires = {expires}

[optout.offer]
title = "Remember this device"
disclosure = "{disclosure}"
duration_days = 30
"#
    ));
    std::fs::write(&cfg, text).unwrap();
    reapprove(dir);
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn forged_void_expired_or_revoked_consent_cookies_never_open_the_side_gate() {
    use postern_gateway::consent::{ConsentRecord, ConsentStore, DEVICE_COOKIE};
    const TEXT: &str = "Skip sign-in for the docs on this device.";
    let dir = tempfile::tempdir().unwrap();
    demo_with_offer(dir.path(), TEXT);
    let now = time::OffsetDateTime::now_utc();
    let store = ConsentStore::open(
        &dir.path().join("consents.jsonl"),
        &dir.path().join("consent.key"),
    )
    .unwrap();
    let consent = |device: &str, disclosure: &str, expires: time::OffsetDateTime| ConsentRecord {
        id: format!("c-{device}"),
        principal: "alice".into(),
        offer: "remember-device-readonly".into(),
        disclosure_sha256: sha256_hex(disclosure),
        device: device.into(),
        created: now - time::Duration::days(1),
        expires,
        revoked: None,
    };
    let (good, old, stale) = ("a".repeat(32), "b".repeat(32), "c".repeat(32));
    store
        .record(consent(&good, TEXT, now + time::Duration::days(29)))
        .unwrap();
    store
        .record(consent(
            &old,
            "an earlier disclosure",
            now + time::Duration::days(29),
        ))
        .unwrap();
    store
        .record(consent(&stale, TEXT, now - time::Duration::minutes(1)))
        .unwrap();
    // Cookies as the gateway would have set them (same key), and forgeries.
    let alice_good = device_cookie(&store, &good, "alice");
    let csrf = store.csrf(Some("alice"), Some(&good), "revoke");
    drop(store);

    let mut d = Demo::start_in(dir).await;
    let c = d.client();
    let get = |cookie: String| {
        let c = &c;
        async move {
            c.get(
                None,
                "/docs/guide",
                &[("Cookie", &format!("{DEVICE_COOKIE}={cookie}"))],
            )
            .await
        }
    };
    let r = get(alice_good.clone()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("x-postern-auth").as_deref(),
        Some("optout:remember-device-readonly")
    );
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice")
    );
    assert!(
        r.upstream_header("cookie")
            .is_none_or(|v| !v.contains(DEVICE_COOKIE)),
        "postern's cookies never reach the upstream"
    );
    // The device cookie names alice only through her own offer: another
    // opt-out (the health check) does not arrive "as alice".
    let r = c
        .get(
            None,
            "/healthz",
            &[("Cookie", &format!("{DEVICE_COOKIE}={alice_good}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-postern-auth").as_deref(),
        Some("optout:healthz")
    );
    assert_eq!(
        r.upstream_header("x-postern-identity"),
        None,
        "a device cookie is no authentication"
    );
    // Only read-only methods on the offer's paths.
    let post = c
        .request(
            None,
            "POST",
            "/docs/guide",
            &[("Cookie", &format!("{DEVICE_COOKIE}={alice_good}"))],
            b"x",
        )
        .await;
    assert_eq!(post.status, 401);

    // Forged: another principal under alice's MAC, an altered MAC, garbage.
    let parts: Vec<&str> = alice_good.split('.').collect();
    let mallory = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("mallory")
    };
    for forged in [
        format!("{}.{}.{}", parts[0], mallory, parts[2]),
        format!("{}.{}.{}0", parts[0], parts[1], &parts[2][1..]),
        "garbage".to_string(),
    ] {
        assert_eq!(get(forged.clone()).await.status, 401, "{forged}");
    }
    // Genuine cookies whose consent is void (earlier disclosure) or expired.
    let store = ConsentStore::open(&d.path("consents.jsonl"), &d.path("consent.key")).unwrap();
    assert_eq!(get(device_cookie(&store, &old, "alice")).await.status, 401);
    assert_eq!(
        get(device_cookie(&store, &stale, "alice")).await.status,
        401
    );
    // bob's genuine cookie on alice's device carries nothing of hers.
    assert_eq!(get(device_cookie(&store, &good, "bob")).await.status, 401);

    // Revoked on the self-service page: the same cookie, replayed, no longer works.
    let form = format!("id=c-{good}&csrf={csrf}");
    let r = c
        .request(
            None,
            "POST",
            "/_postern/me/optouts/revoke",
            &[
                ("Cookie", &format!("{DEVICE_COOKIE}={alice_good}")),
                ("Content-Type", "application/x-www-form-urlencoded"),
            ],
            form.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 303, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        get(alice_good).await.status,
        401,
        "a revoked consent stops at the next request"
    );
    d.stop().await;
}

/// A genuine device cookie binding `device` to `who` (made with the store's key).
fn device_cookie(
    store: &postern_gateway::consent::ConsentStore,
    device: &str,
    who: &str,
) -> String {
    store.device_cookie_for(device, who)
}
