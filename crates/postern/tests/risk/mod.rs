//! Risk-gated opt-outs over real TLS: the demo's `healthz` opt-out gets
//! `max_risk = 40`, and stops applying when the source turns untrusted,
//! the rate spikes or credentials keep failing, then applies again when the
//! signals calm. Every audit record carries the score and what each signal
//! added; `postern explain` shows the same.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsConnector;

use crate::support::*;

const MAX_RISK: u64 = 40;

/// The demo with `max_risk` on the `healthz` opt-out and `risk` (a `[risk]`
/// section) appended, re-approved by both demo reviewers (the demo policy
/// loads only with two approvals of its current opt-out digest).
fn prepare(risk: &str) -> tempfile::TempDir {
    let dir = demo_dir();
    let cfg = dir.path().join("postern.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let healthz = "id = \"healthz\"\n";
    let at = text.find(healthz).expect("the demo has a healthz opt-out");
    let mut text = format!(
        "{}{healthz}max_risk = {MAX_RISK}\n{}",
        &text[..at],
        &text[at + healthz.len()..]
    );
    text.push_str(risk);
    std::fs::write(&cfg, text).unwrap();
    for reviewer in ["reviewer-1", "reviewer-2"] {
        let out = postern(&[
            "policy",
            "approve",
            "--config",
            cfg.to_str().unwrap(),
            "--key",
            dir.path().join(format!("{reviewer}.key")).to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "approve as {reviewer}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

async fn demo(risk: &str) -> Demo {
    Demo::start_in(prepare(risk)).await
}

fn client_from(d: &Demo, ip: &str) -> Client {
    let mut c = d.client();
    c.from = Some(ip.parse().unwrap());
    c
}

/// Every audit record, after the gateway has stopped (buffered records
/// flushed, final checkpoint written).
fn records(d: &Demo) -> Vec<serde_json::Value> {
    lines(&d.path("audit.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The decision records of one request (by its `x-postern-request-id`).
fn of<'a>(records: &'a [serde_json::Value], r: &Resp) -> Vec<&'a serde_json::Value> {
    let id = r.header("x-postern-request-id").expect("request id");
    records
        .iter()
        .filter(|rec| rec["request_id"] == id)
        .collect()
}

fn risk_of(record: &serde_json::Value) -> &serde_json::Value {
    &record["extra"]["risk"]
}

/// `GET /healthz` over a TLS 1.2-only client.
async fn healthz_tls12(d: &Demo) -> Resp {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_file_iter(d.path("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let mut tls = TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut tls).await
}

const SOURCES: &str = r#"
[risk]
trusted_cidrs = ["127.0.0.1/32"]
untrusted_cidrs = ["127.0.0.2/32"]
[risk.weights]
untrusted_source = 60
unknown_source = 20
old_tls = 10
"#;

#[tokio::test]
async fn max_risk_optout_stops_for_an_untrusted_source_and_applies_again_from_a_trusted_one() {
    let mut d = demo(SOURCES).await;
    let trusted = client_from(&d, "127.0.0.1");
    let untrusted = client_from(&d, "127.0.0.2");
    let unknown = client_from(&d, "127.0.0.3");

    let calm = trusted.get(None, "/healthz", &[]).await;
    assert_eq!(calm.status, 200, "trusted source, score 0");
    let refused = untrusted.get(None, "/healthz", &[]).await;
    assert_eq!(refused.status, 401, "untrusted source scores 60 > 40");
    assert!(refused.header("www-authenticate").is_some());
    // The way back is open: the same source authenticates.
    let authed = untrusted.get(Some(&d.alice()), "/healthz", &[]).await;
    assert_eq!(authed.status, 200);
    let unknown_ok = unknown.get(None, "/healthz", &[]).await;
    assert_eq!(unknown_ok.status, 200, "unknown source scores 20 <= 40");
    let again = trusted.get(None, "/healthz", &[]).await;
    assert_eq!(again.status, 200, "the opt-out applies again");
    let old = healthz_tls12(&d).await;
    assert_eq!(old.status, 200, "TLS 1.2 scores 10 <= 40");

    d.stop().await;
    let recs = records(&d);

    let r = of(&recs, &calm);
    assert_eq!(r[0]["decision"], "optout");
    assert_eq!(risk_of(r[0])["total"], 0);
    assert_eq!(risk_of(r[0])["signals"], serde_json::json!({}));

    let r = of(&recs, &refused);
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0]["decision"], "challenge");
    assert_eq!(r[0]["peer"], "127.0.0.2");
    let risk = risk_of(r[0]);
    assert_eq!(risk["total"], 60);
    assert_eq!(risk["signals"], serde_json::json!({"untrusted_source": 60}));
    assert_eq!(risk["observed"]["source_requests"], 1, "{risk}");
    // The earlier use of the rule shows as its velocity (below threshold).
    assert_eq!(risk["observed"]["optout_uses"], 1, "{risk}");
    let reasons = r[0]["reasons"].to_string();
    assert!(
        reasons.contains("risk score 60") && reasons.contains("max_risk 40"),
        "{reasons}"
    );

    let r = of(&recs, &authed);
    assert_eq!(r[0]["decision"], "allow");
    assert_eq!(r[0]["identity"], "alice");
    assert_eq!(risk_of(r[0])["signals"]["untrusted_source"], 60);

    let r = of(&recs, &unknown_ok);
    assert_eq!(r[0]["decision"], "optout");
    assert_eq!(
        risk_of(r[0])["signals"],
        serde_json::json!({"unknown_source": 20})
    );

    let r = of(&recs, &again);
    assert_eq!(r[0]["decision"], "optout");
    assert_eq!(risk_of(r[0])["total"], 0);

    let r = of(&recs, &old);
    assert_eq!(r[0]["decision"], "optout");
    assert_eq!(risk_of(r[0])["signals"], serde_json::json!({"old_tls": 10}));

    // The records with their risk are part of the verified chain.
    let key = postern_audit::read_verifying_key(d.path("audit.pub").to_str().unwrap()).unwrap();
    let report = postern_audit::verify_file(&d.path("audit.jsonl"), &key).unwrap();
    assert_eq!(report.records as usize, recs.len());
}

const RATE: &str = r#"
[risk]
trusted_cidrs = ["127.0.0.0/8"]
rate_window_secs = 1
rate_threshold = 5
auth_failure_threshold = 2
[risk.weights]
rate_per_source = 80
auth_failures = 50
"#;

/// Wait until the 1-second counting window has passed twice.
async fn calm_down() {
    tokio::time::sleep(Duration::from_millis(2100)).await;
}

#[tokio::test]
async fn max_risk_optout_stops_during_a_burst_and_applies_again_when_it_calms() {
    let mut d = demo(RATE).await;
    let c = d.client();
    // A burst: more than 5 requests a second from one source. The score
    // rises 16 points per request above 5; above 40 the opt-out stops.
    let mut burst = Vec::new();
    let refused = loop {
        let r = c.get(None, "/healthz", &[]).await;
        let status = r.status;
        burst.push(r);
        if status == 401 {
            break burst.len() - 1;
        }
        assert!(burst.len() < 40, "no refusal within 40 requests");
    };
    assert!(refused >= 5, "the first 5 requests are normal: {refused}");
    assert!(burst[..refused].iter().all(|r| r.status == 200));
    // Another source is not affected by this one's burst.
    let other = client_from(&d, "127.0.0.9")
        .get(None, "/healthz", &[])
        .await;
    assert_eq!(other.status, 200);

    // The admin console lists the signal among those that fired most.
    let console = d.gw.as_ref().unwrap().console_addr.expect("demo console");
    let page = Client::new(console, &d.path("ca.pem"))
        .get(Some(&d.alice()), "/", &[])
        .await;
    assert_eq!(page.status, 200);
    let page = String::from_utf8_lossy(&page.body).into_owned();
    assert!(page.contains("<code>rate_per_source</code>"), "{page}");

    calm_down().await;
    let calm = c.get(None, "/healthz", &[]).await;
    assert_eq!(
        calm.status, 200,
        "the burst is over: the opt-out applies again"
    );

    d.stop().await;
    let recs = records(&d);
    let r = of(&recs, &burst[refused]);
    assert_eq!(r[0]["decision"], "challenge");
    let risk = risk_of(r[0]);
    let points = risk["signals"]["rate_per_source"].as_u64().unwrap();
    assert!(points > MAX_RISK && points <= 80, "{risk}");
    assert_eq!(risk["total"].as_u64(), Some(points));
    assert!(
        risk["observed"]["source_requests"].as_u64().unwrap() > 5,
        "{risk}"
    );
    assert!(r[0]["reasons"].to_string().contains("above max_risk 40"));
    let r = of(&recs, &calm);
    assert_eq!(r[0]["decision"], "optout");
    assert_eq!(risk_of(r[0])["total"], 0);
}

#[tokio::test]
async fn max_risk_optout_stops_after_failed_credentials_from_the_source() {
    let mut d = demo(RATE).await;
    let c = d.client();
    // Four failures (twice the threshold), so the count stays at or above it
    // even when a window boundary falls between them and the next request.
    for _ in 0..4 {
        let r = c
            .get(None, "/private", &[("Authorization", "Bearer not.a.token")])
            .await;
        assert_eq!(r.status, 401);
    }
    let refused = c.get(None, "/healthz", &[]).await;
    assert_eq!(refused.status, 401, "failures score 50 > 40");
    calm_down().await;
    let calm = c.get(None, "/healthz", &[]).await;
    assert_eq!(calm.status, 200);

    d.stop().await;
    let recs = records(&d);
    let r = of(&recs, &refused);
    assert_eq!(
        risk_of(r[0])["signals"],
        serde_json::json!({"auth_failures": 50})
    );
    assert!(risk_of(r[0])["observed"]["auth_failures"].as_u64().unwrap() >= 2);
    assert_eq!(risk_of(of(&recs, &calm)[0])["total"], 0);
}

#[tokio::test]
async fn explain_shows_the_score_and_each_contribution() {
    let dir = prepare(SOURCES);
    let cfg = dir.path().join("postern.toml");
    let explain = |peer: &str, tls: &str, json: bool| {
        let mut args = vec![
            "explain",
            "--config",
            cfg.to_str().unwrap(),
            "--url",
            "/healthz",
            "--peer",
            peer,
            "--tls-version",
            tls,
        ];
        if json {
            args.push("--json");
        }
        let out = postern(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = explain("127.0.0.2", "1.2", false);
    assert!(text.contains("→ 401"), "{text}");
    assert!(text.contains("risk:      70 of 100"), "{text}");
    assert!(text.contains("+  60 untrusted_source"), "{text}");
    assert!(text.contains("+  10 old_tls"), "{text}");
    assert!(text.contains("above max_risk 40"), "{text}");

    let v: serde_json::Value = serde_json::from_str(&explain("127.0.0.1", "1.3", true)).unwrap();
    assert_eq!(v["status"], 200);
    assert_eq!(v["risk"]["total"], 0);
    let v: serde_json::Value = serde_json::from_str(&explain("127.0.0.3", "1.3", true)).unwrap();
    assert_eq!(
        v["risk"]["signals"],
        serde_json::json!({"unknown_source": 20})
    );
}
