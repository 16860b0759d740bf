//! The `postern` binary: check, explain and audit verify, as an operator runs them.

use std::path::Path;

use crate::support::*;

fn write_config(dir: &Path, edit: impl Fn(String) -> String) -> String {
    let path = dir.join("postern.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    path.to_str().unwrap().to_string()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .map(|i| i + 1)
        .unwrap()
}

#[test]
fn check_accepts_the_demo_config() {
    let dir = demo_dir();
    let cfg = dir.path().join("postern.toml");
    let out = postern(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok"));
}

#[test]
fn check_rejects_a_catch_all_opt_out_with_file_and_line() {
    let dir = demo_dir();
    let cfg = write_config(dir.path(), |t| {
        t.replace(r#"paths = ["/healthz"]"#, r#"paths = ["/**"]"#)
    });
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = line_of(&text, r#"paths = ["/**"]"#);
    let out = postern(&["check", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("postern.toml:{line}:")),
        "want line {line}: {err}"
    );
}

#[test]
fn check_rejects_a_missing_expiry_with_file_and_line() {
    let dir = demo_dir();
    let cfg = write_config(dir.path(), |t| {
        // Drop the first opt-out's expiry.
        let i = t.find("expires = ").unwrap();
        let j = i + t[i..].find('\n').unwrap();
        format!("{}{}", &t[..i], &t[j + 1..])
    });
    let text = std::fs::read_to_string(&cfg).unwrap();
    let out = postern(&["check", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("expires"), "{err}");
    // Reported at the opt-out that lacks it.
    let line = line_of(&text, r#"id = "healthz""#);
    let reported: Vec<usize> = err
        .lines()
        .filter(|l| l.contains("expires"))
        .filter_map(|l| l.split(':').nth(1).and_then(|n| n.parse().ok()))
        .collect();
    assert!(
        reported.iter().any(|l| (line - 2..=line + 12).contains(l)),
        "{err} (opt-out at line {line})"
    );
}

#[test]
fn check_rejects_a_bad_cidr_with_file_and_line() {
    let dir = demo_dir();
    let cfg = write_config(dir.path(), |t| {
        t.replace(r#""127.0.0.0/8""#, r#""127.0.0.0/33""#)
    });
    let text = std::fs::read_to_string(&cfg).unwrap();
    let line = line_of(&text, "127.0.0.0/33");
    let out = postern(&["check", "--config", &cfg]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("postern.toml:{line}:")),
        "want line {line}: {err}"
    );
    assert!(err.contains("127.0.0.0/33"), "{err}");
}

#[test]
fn serve_refuses_to_start_on_a_bad_config() {
    let dir = demo_dir();
    let cfg = write_config(dir.path(), |t| {
        t.replace(
            r#"methods = ["GET", "HEAD"]"#,
            r#"methods = ["GET", "HEAD"]
unknown_field = true"#,
        )
    });
    let out = postern(&["serve", "--config", &cfg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown_field"));
}

#[test]
fn explain_names_the_rule_and_the_identity() {
    let dir = demo_dir();
    let cfg = dir.path().join("postern.toml");
    let cfg = cfg.to_str().unwrap();
    let out = postern(&[
        "explain",
        "--config",
        cfg,
        "--method",
        "GET",
        "--url",
        "https://localhost/healthz",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["status"], 200);
    assert_eq!(j["rule"], "healthz");

    let cert = dir.path().join("alice.pem");
    let out = postern(&[
        "explain",
        "--config",
        cfg,
        "--url",
        "/private",
        "--cert",
        cert.to_str().unwrap(),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["status"], 200);
    assert_eq!(j["identity"], "alice");

    let out = postern(&[
        "explain",
        "--config",
        cfg,
        "--url",
        "/healthz",
        "--peer",
        "203.0.113.9",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["status"], 401);
    assert!(j["reasons"].to_string().contains("203.0.113.9"), "{j}");
}

/// A finished demo log to tamper with.
async fn finished_log() -> (tempfile::TempDir, String, String) {
    let mut d = Demo::start().await;
    let c = d.client();
    for _ in 0..4 {
        assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
        assert_eq!(c.get(None, "/private", &[]).await.status, 401);
    }
    d.stop().await;
    let log = d.path("audit.jsonl").to_str().unwrap().to_string();
    let key = d.path("audit.pub").to_str().unwrap().to_string();
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    (dir, log, key)
}

fn verify(log: &str, key: &str) -> (bool, String) {
    let out = postern(&["audit", "verify", log, "--key", key]);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_an_intact_log_and_names_the_first_bad_record() {
    let (_dir, log, key) = finished_log().await;
    let (ok, out) = verify(&log, &key);
    assert!(ok, "{out}");
    let original = lines(Path::new(&log));
    assert!(original.len() >= 10);
    let seq = |l: &str| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
            .as_u64()
            .unwrap()
    };
    let write = |ls: &[String]| std::fs::write(&log, ls.join("\n") + "\n").unwrap();

    // One byte changed in a middle record.
    let mut ls = original.clone();
    let m = ls.len() / 2;
    ls[m] = ls[m].replacen("\"ts\":\"2", "\"ts\":\"3", 1);
    write(&ls);
    let (ok, out) = verify(&log, &key);
    assert!(!ok);
    assert!(
        out.contains(&format!("record {}", seq(&original[m]))),
        "{out}"
    );

    // One record deleted.
    let mut ls = original.clone();
    ls.remove(m);
    write(&ls);
    let (ok, out) = verify(&log, &key);
    assert!(!ok);
    assert!(
        out.contains(&format!("record {}", seq(&original[m + 1])))
            || out.contains(&format!("line {}", m + 1)),
        "{out}"
    );

    // Two records swapped.
    let mut ls = original.clone();
    ls.swap(m, m + 1);
    write(&ls);
    let (ok, out) = verify(&log, &key);
    assert!(!ok);
    assert!(out.contains(&format!("line {}", m + 1)), "{out}");

    // Cut at a line boundary, and mid-line.
    write(&original[..original.len() - 2]);
    let (ok, out) = verify(&log, &key);
    assert!(!ok, "{out}");
    let mut text = original.join("\n");
    text.truncate(text.len() - 20);
    std::fs::write(&log, text).unwrap();
    let (ok, out) = verify(&log, &key);
    assert!(!ok);
    assert!(out.contains("torn"), "{out}");

    // Restored, it passes again.
    write(&original);
    assert!(verify(&log, &key).0);
}

/// `postern serve` (the binary) on a fresh demo directory and port, with
/// `env` added; returns once it listens.
async fn serve_demo(
    env: &[(&str, &str)],
) -> (
    tempfile::TempDir,
    std::net::SocketAddr,
    tokio::process::Child,
) {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    postern::demo::prepare(dir.path(), addr, time::OffsetDateTime::now_utc()).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["serve", "--config"])
        .arg(dir.path().join("postern.toml"))
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "postern serve did not listen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (dir, addr, child)
}

/// `postern serve` as an operator runs it: SIGHUP reloads, an unsigned
/// widening is refused (audited), and the running policy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_on_sighup_and_refuses_an_unsigned_widening() {
    let (dir, addr, mut child) = serve_demo(&[]).await;
    let cfg = dir.path().join("postern.toml");
    let c = Client::new(addr, &dir.path().join("ca.pem"));
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);

    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        r#"methods = ["GET", "HEAD"]"#,
        r#"methods = ["GET", "HEAD", "POST"]"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let refused = async {
        loop {
            let log = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap_or_default();
            if log.lines().any(|l| {
                l.contains("\"kind\":\"policy\"") && l.contains("\"decision\":\"refused\"")
            }) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(15), refused)
        .await
        .expect("the refused reload is audited");
    // Still serving the last good policy: POST /healthz is not opened.
    assert_eq!(
        c.request(None, "POST", "/healthz", &[], b"").await.status,
        401
    );
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    // SIGTERM: a clean stop with a final checkpoint, so the log verifies.
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let out = postern(&[
        "audit",
        "verify",
        dir.path().join("audit.jsonl").to_str().unwrap(),
        "--key",
        dir.path().join("audit.pub").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_reviewer_cannot_approve_a_policy_the_gateway_would_refuse() {
    let dir = demo_dir();
    let cfg = write_config(dir.path(), |t| {
        t.replace(r#""127.0.0.0/8""#, r#""127.0.0.0/33""#)
    });
    let before = std::fs::read_to_string(dir.path().join("postern.toml.approvals")).unwrap();
    let key = dir.path().join("reviewer-1.key");
    let out = postern(&[
        "policy",
        "approve",
        "--config",
        &cfg,
        "--key",
        key.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("127.0.0.0/33") && err.contains("before approving"),
        "{err}"
    );
    let after = std::fs::read_to_string(dir.path().join("postern.toml.approvals")).unwrap();
    assert_eq!(before, after, "nothing was signed");
}

#[test]
fn serve_refuses_a_worker_count_that_is_not_a_number() {
    let dir = demo_dir();
    let cfg = dir.path().join("postern.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("POSTERN_WORKERS", "many")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("POSTERN_WORKERS=`many`"), "{err}");
}

/// `POSTERN_WORKERS=0`: no workers of its own, connections served by tokio's
/// work-stealing scheduler (the default uses one worker per core).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_workers_still_serves() {
    let (dir, addr, _child) = serve_demo(&[("POSTERN_WORKERS", "0")]).await;
    let c = Client::new(addr, &dir.path().join("ca.pem"));
    let creds = Creds::load(&dir.path().join("alice.pem"), &dir.path().join("alice.key"));
    for _ in 0..3 {
        let r = c.get(Some(&creds), "/private", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-postern-identity").as_deref(),
            Some("alice")
        );
    }
    assert_eq!(c.get(None, "/private", &[]).await.status, 401);
}
