//! Invariant 8, visible: metrics on the admin listener (checked by
//! `promtool`) and alerts delivered to a real HTTP receiver.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support::*;

/// Start the demo with `extra` appended to its config.
async fn demo_with(extra: &str) -> Demo {
    let dir = demo_dir();
    let cfg = dir.path().join("postern.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(extra);
    std::fs::write(&cfg, text).unwrap();
    Demo::start_in(dir).await
}

/// A webhook receiver: every POSTed JSON body arrives on the channel.
async fn receiver() -> (SocketAddr, mpsc::UnboundedReceiver<serde_json::Value>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let _ = tx.send(v);
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// Wait for the next alert whose `event` is `event`.
async fn next_alert(
    rx: &mut mpsc::UnboundedReceiver<serde_json::Value>,
    event: &str,
) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let v = rx.recv().await.expect("receiver closed");
            if v["event"] == event {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no `{event}` alert within 10 s"))
}

/// `GET /metrics` on the admin listener over plain HTTP.
async fn scrape(d: &Demo) -> String {
    let addr = d.gw.as_ref().unwrap().admin_addr.expect("admin listener");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let r = parse_response(&buf);
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    String::from_utf8(r.body).unwrap()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_show_every_series_and_promtool_accepts_them() {
    let d = Demo::start().await;
    let c = d.client();
    assert_eq!(c.get(None, "/private", &[]).await.status, 401);
    assert_eq!(c.get(Some(&d.alice()), "/private", &[]).await.status, 200);
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    let text = scrape(&d).await;

    assert_eq!(
        value(
            &text,
            "postern_requests_total{decision=\"challenge\",route=\"app\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "postern_requests_total{decision=\"allow\",route=\"app\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "postern_requests_total{decision=\"optout\",route=\"app\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "postern_optout_uses_total{rule=\"healthz\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "postern_decision_duration_seconds_count"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "postern_audit_write_duration_seconds_count"),
        Some(2.0),
        "{text}"
    );
    assert!(text.contains("postern_audit_write_duration_seconds_bucket{le=\"+Inf\"} 2\n"));
    assert_eq!(value(&text, "postern_audit_failures_total"), Some(0.0));
    assert_eq!(value(&text, "postern_policy_generation"), Some(0.0));
    let now = time::OffsetDateTime::now_utc().unix_timestamp() as f64;
    let loaded = value(&text, "postern_policy_load_timestamp_seconds").unwrap();
    assert!((now - loaded).abs() < 120.0, "{loaded}");
    // The demo's rules expire in 30 days.
    for rule in ["healthz", "demo-webhook"] {
        let left = value(
            &text,
            &format!("postern_optout_rule_expiry_seconds{{rule=\"{rule}\"}}"),
        )
        .unwrap_or_else(|| panic!("expiry of {rule}: {text}"));
        assert!((29.0 * 86400.0..=30.0 * 86400.0).contains(&left), "{left}");
    }
    let cert = value(&text, "postern_server_certificate_expiry_seconds").expect("cert expiry");
    assert!(cert > 0.0, "{cert}");
    for c in [
        "postern_alerts_sent_total",
        "postern_alerts_dropped_total",
        "postern_alerts_failed_total",
    ] {
        assert_eq!(value(&text, c), Some(0.0), "{c}: {text}");
    }

    // promtool is the reference parser; missing it is a failure, not a skip.
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn admin_listener_answers_only_metrics() {
    let d = Demo::start().await;
    let addr = d.gw.as_ref().unwrap().admin_addr.unwrap();
    assert!(addr.ip().is_loopback());
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /private HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert_eq!(parse_response(&buf).status, 404);
}

#[tokio::test]
async fn optout_use_alerts_with_the_audit_sequence_of_its_record() {
    let (addr, mut rx) = receiver().await;
    let d = demo_with(&format!(
        "\n[[alert]]\nurl = \"http://{addr}/hook\"\nevents = [\"optout\", \"credential_refused\"]\n"
    ))
    .await;
    let c = d.client();
    let r = c.get(None, "/healthz", &[]).await;
    assert_eq!(r.status, 200);
    let request_id = r.header("x-postern-request-id").unwrap().to_string();

    let a = next_alert(&mut rx, "optout").await;
    assert_eq!(a["rule"], "healthz");
    assert_eq!(a["request_id"], request_id.as_str());
    assert_eq!(a["peer"], "127.0.0.1");
    assert!(a["text"].as_str().unwrap().contains("healthz"), "{a}");
    assert!(a["time"].as_str().is_some());
    let seq = a["audit_seq"].as_u64().expect("audit_seq");
    // The alert leads to the durable decision record.
    let record = lines(&d.path("audit.jsonl"))
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["seq"].as_u64() == Some(seq))
        .unwrap_or_else(|| panic!("no audit record #{seq}"));
    assert_eq!(record["request_id"], request_id.as_str(), "{record}");
    assert_eq!(record["decision"], "optout", "{record}");
    assert_eq!(record["rule"], "healthz", "{record}");

    // A forged token is a refused credential.
    let r = c
        .get(None, "/private", &[("Authorization", "Bearer not.a.jwt")])
        .await;
    assert_eq!(r.status, 401);
    let a = next_alert(&mut rx, "credential_refused").await;
    assert_eq!(
        a["request_id"],
        r.header("x-postern-request-id").unwrap_or_default()
    );
    assert!(a["text"].as_str().unwrap().contains("jwt"), "{a}");

    let text = scrape(&d).await;
    assert!(
        value(&text, "postern_alerts_sent_total").unwrap() >= 2.0,
        "{text}"
    );
}

#[tokio::test]
async fn first_per_window_mode_alerts_once() {
    let (addr, mut rx) = receiver().await;
    let d = demo_with(&format!(
        "\n[[alert]]\nurl = \"http://{addr}/\"\nevents = [\"optout\"]\n[alert.rule.healthz]\noptout_mode = \"first_per_window\"\nwindow_secs = 3600\n"
    ))
    .await;
    let c = d.client();
    for _ in 0..3 {
        assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    }
    next_alert(&mut rx, "optout").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rx.try_recv().is_err(), "only the first use alerts");
}

#[tokio::test]
async fn a_dead_receiver_neither_slows_requests_nor_goes_uncounted() {
    // A closed port: deliveries fail fast and are counted as failed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    // A receiver that accepts and never answers: the queue fills, alerts drop.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let d = demo_with(&format!(
        "\n[[alert]]\nurl = \"http://{closed}/\"\nmax_attempts = 2\nbackoff_ms = 10\n\
         \n[[alert]]\nurl = \"http://{silent_addr}/\"\ntimeout_ms = 60000\nqueue_size = 2\n"
    ))
    .await;
    let c = d.client();
    for i in 0..20 {
        let started = Instant::now();
        let r = c.get(None, "/healthz", &[]).await;
        assert_eq!(r.status, 200);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "request {i} took {took:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(&d).await;
        let failed = value(&text, "postern_alerts_failed_total").unwrap();
        let dropped = value(&text, "postern_alerts_dropped_total").unwrap();
        if failed >= 1.0 && dropped >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed {failed}, dropped {dropped}: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_audit_failure_falls_back_and_alerts() {
    let (addr, mut rx) = receiver().await;
    let d = demo_with(&format!(
        "\n[[alert]]\nurl = \"http://{addr}/\"\nevents = [\"audit_failure\"]\n"
    ))
    .await;
    // The operator makes the log read-only: opt-outs must not be honoured.
    use std::os::unix::fs::PermissionsExt;
    let log = d.path("audit.jsonl");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = d.client().get(None, "/healthz", &[]).await;
    assert_eq!(r.status, 401, "the opt-out falls back to authentication");
    let a = next_alert(&mut rx, "audit_failure").await;
    assert_eq!(a["rule"], "healthz");
    assert_eq!(
        a["request_id"],
        r.header("x-postern-request-id").unwrap_or_default()
    );
    let text = scrape(&d).await;
    assert!(
        value(&text, "postern_audit_failures_total").unwrap() >= 1.0,
        "{text}"
    );
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
}

#[tokio::test]
async fn a_rule_near_expiry_alerts_once() {
    let (addr, mut rx) = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    postern::demo::prepare(dir.path(), "127.0.0.1:0".parse().unwrap(), now).unwrap();
    let cfg = dir.path().join("postern.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // The healthz rule expires in 3 days: inside the 7-day warning.
    let soon = (now + time::Duration::days(3))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (head, tail) = text.split_once("id = \"healthz\"").unwrap();
    let (before, after) = tail.split_once("expires = ").unwrap();
    let after = after.split_once('\n').unwrap().1;
    let text = format!(
        "{head}id = \"healthz\"{before}expires = {soon}\n{after}\n[[alert]]\nurl = \"http://{addr}/\"\nevents = [\"rule_expiry\"]\n"
    );
    std::fs::write(&cfg, text).unwrap();
    // A changed expiry is an opt-out change: both demo reviewers sign it.
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
    let d = Demo::start_in(dir).await;
    let a = next_alert(&mut rx, "rule_expiry").await;
    assert_eq!(a["rule"], "healthz", "{a}");
    assert!(a["text"].as_str().unwrap().contains("7 days"), "{a}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "one warning, not one per rule check"
    );
    drop(d);
}

#[tokio::test]
async fn a_refused_policy_alerts_and_the_old_policy_keeps_serving() {
    use postern_gateway::reload::{spawn_reloader, ReloadOptions};
    let (addr, mut rx) = receiver().await;
    let d = demo_with(&format!(
        "\n[[alert]]\nurl = \"http://{addr}/hook\"\nevents = [\"policy\"]\n"
    ))
    .await;
    let h = spawn_reloader(
        d.gw.as_ref().unwrap().shared.clone(),
        d.path("postern.toml"),
        ReloadOptions {
            poll: Duration::from_millis(0),
            sighup: false,
        },
    );
    // An unsigned widening: POST on /healthz.
    let cfg = d.path("postern.toml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#"methods = ["GET", "HEAD"]"#,
        r#"methods = ["GET", "HEAD", "POST"]"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let mut status = h.status();
    status.borrow_and_update();
    h.reload_now();
    tokio::time::timeout(Duration::from_secs(20), status.changed())
        .await
        .unwrap()
        .unwrap();
    let alert = next_alert(&mut rx, "policy").await;
    let text = alert["text"].as_str().unwrap();
    assert!(text.contains("REFUSED"), "{alert}");
    assert!(
        alert["audit_seq"].as_u64().is_some(),
        "the alert leads to its audit record: {alert}"
    );
    // The last good policy keeps answering.
    let c = d.client();
    assert_eq!(
        c.request(None, "POST", "/healthz", &[], b"").await.status,
        401
    );
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    h.stop().await;
}
