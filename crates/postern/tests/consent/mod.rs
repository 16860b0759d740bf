//! User-chosen opt-outs in a real browser against a real OpenID provider:
//! sign in, consent, use the opt-out without signing in, revoke it, be asked
//! to sign in again; an ineligible user cannot consent, not even by posting
//! the form directly.

use std::time::Duration;

use crate::browser::*;
use crate::support::*;

const OFFER: &str = r#"
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
reason = "users may choose not to sign in again for read-only docs on a trusted device"
expires = EXPIRES

[optout.offer]
title = "Remember this device for the docs"
disclosure = "On this device, postern will let you read the documentation without signing in again for 30 days. Writing anything still needs you to sign in."
duration_days = 30
require_email_verified = true
require_amr_any = ["mfa"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_consents_uses_and_revokes_an_opt_out_in_a_real_browser() {
    ensure_tools().await;
    let dir = tempfile::tempdir().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let now = time::OffsetDateTime::now_utc();
    postern::demo::prepare(dir.path(), addr, now).unwrap();
    let provider = Provider::start(dir.path(), addr).await;
    let cfg = dir.path().join("postern.toml");
    let expires = (now + time::Duration::days(30))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&oidc_section(&provider));
    text.push_str(&OFFER.replace("EXPIRES", &expires));
    std::fs::write(&cfg, text).unwrap();
    reapprove(dir.path());
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
