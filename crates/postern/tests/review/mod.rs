//! Invariant 6 end to end: signed M-of-N review of opt-out changes, hot
//! reload with last-good fallback, on the demo gateway over real TLS.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern_gateway::reload::{spawn_reloader, ReloadHandle, ReloadOptions, ReloadOutcome};
use postern_review::reviewers::read_signing_key;
use postern_review::{approvals_path, Approval};

use crate::support::{demo_dir, postern, Client, Creds, Demo};

const NARROW: &str = "methods = [\"GET\", \"HEAD\"]";
const WIDE: &str = "methods = [\"GET\", \"HEAD\", \"POST\"]";

fn config(demo: &Demo) -> String {
    std::fs::read_to_string(demo.path("postern.toml")).unwrap()
}

/// Replace the config atomically (as an editor or `git checkout` does).
fn write_config(demo: &Demo, text: &str) {
    let tmp = demo.path("postern.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, demo.path("postern.toml")).unwrap();
}

/// `reviewer` signs the config's current opt-out digest.
fn approve(demo: &Demo, reviewer: &str) {
    let key = read_signing_key(&demo.path(&format!("{reviewer}.key"))).unwrap();
    let cfg = postern_policy::Config::load(&demo.path("postern.toml")).unwrap();
    let a = Approval::sign(
        &key,
        reviewer,
        &postern_review::digest(&cfg),
        time::OffsetDateTime::now_utc(),
    );
    postern_review::approvals::append_approval(&approvals_path(&demo.path("postern.toml")), &a)
        .unwrap();
}

fn reloader(demo: &Demo, poll: Duration) -> ReloadHandle {
    spawn_reloader(
        demo.gw.as_ref().unwrap().shared.clone(),
        demo.path("postern.toml"),
        ReloadOptions {
            poll,
            sighup: false,
        },
    )
}

/// Trigger a reload and wait for its outcome.
async fn reload(h: &ReloadHandle) -> ReloadOutcome {
    let mut rx = h.status();
    rx.borrow_and_update();
    h.reload_now();
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("no reload outcome within 20 s")
        .unwrap();
    let outcome = rx.borrow().clone();
    outcome
}

async fn post_healthz(c: &Client) -> u16 {
    c.request(None, "POST", "/healthz", &[], b"x").await.status
}

fn audit_policy_records(demo: &Demo) -> Vec<serde_json::Value> {
    crate::support::lines(&demo.path("audit.jsonl"))
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let ev = v.get("event").cloned().unwrap_or(v);
            (ev["kind"] == "policy").then_some(ev)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_widening_is_refused_at_reload_while_the_old_policy_serves_under_load() {
    let mut demo = Demo::start().await;
    let h = reloader(&demo, Duration::from_millis(100));
    // Let the reloader take its first look at the files.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Continuous load over real TLS: health checks (the opt-out) and alice's
    // authenticated requests, each on a fresh connection.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..2 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let client = demo.client();
        let alice = Creds::load(&demo.path("alice.pem"), &demo.path("alice.key"));
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = if (i + worker).is_multiple_of(2) {
                    client.get(None, "/healthz", &[]).await
                } else {
                    client.get(Some(&alice), "/private", &[]).await
                };
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }

    // An unsigned widening (POST without credentials), picked up by the
    // file watcher (no SIGHUP, no explicit trigger).
    let mut rx = h.status();
    rx.borrow_and_update();
    let old = config(&demo);
    assert!(old.contains(NARROW));
    write_config(&demo, &old.replacen(NARROW, WIDE, 1));
    tokio::time::timeout(Duration::from_secs(20), rx.changed())
        .await
        .expect("the file watcher did not reload")
        .unwrap();
    let outcome = rx.borrow_and_update().clone();
    assert!(!outcome.loaded, "{outcome:?}");
    assert_eq!(outcome.generation, 0);
    assert!(
        outcome.audit_seq.is_some(),
        "the refusal is audited: {outcome:?}"
    );
    let digest = outcome.digest.clone().unwrap();
    assert!(
        outcome.reasons[0].contains(&digest) && outcome.reasons[0].contains("0 of 2"),
        "{outcome:?}"
    );
    // Keep the load going a little after the refusal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = demo.client();
    assert_eq!(
        post_healthz(&client).await,
        401,
        "the widening must not apply"
    );

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests ({ok} ok)");
    assert!(ok >= 10, "too little load: {ok}");

    // Both reviewers sign: the watcher sees the approvals file and loads it.
    approve(&demo, "reviewer-1");
    approve(&demo, "reviewer-2");
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            rx.changed().await.unwrap();
            if rx.borrow_and_update().loaded {
                break;
            }
        }
    })
    .await
    .expect("the signed policy did not load");
    assert_eq!(rx.borrow().generation, 1);
    assert_eq!(
        demo.gw.as_ref().unwrap().shared.metrics.policy_generation(),
        1
    );
    assert_eq!(rx.borrow().approvers, ["reviewer-1", "reviewer-2"]);
    assert_eq!(
        post_healthz(&client).await,
        200,
        "the approved widening applies"
    );

    h.stop().await;
    demo.stop().await;
    let records = audit_policy_records(&demo);
    let refused = records
        .iter()
        .find(|r| r["decision"] == "refused")
        .expect("no audit record of the refusal");
    assert_eq!(refused["extra"]["digest"], digest.as_str());
    assert!(refused["reasons"][0].as_str().unwrap().contains("0 of 2"));
    let loaded: Vec<_> = records
        .iter()
        .filter(|r| r["decision"] == "loaded")
        .collect();
    assert_eq!(loaded.len(), 2, "start and reload: {records:?}");
    assert_eq!(
        loaded[1]["extra"]["approvers"],
        serde_json::json!(["reviewer-1", "reviewer-2"])
    );
}

#[tokio::test]
async fn m_minus_one_is_refused_and_the_same_reviewer_twice_counts_once() {
    let mut demo = Demo::start().await;
    let h = reloader(&demo, Duration::ZERO);
    write_config(&demo, &config(&demo).replacen(NARROW, WIDE, 1));

    approve(&demo, "reviewer-1");
    let o = reload(&h).await;
    assert!(!o.loaded, "{o:?}");
    assert_eq!(o.approvers, ["reviewer-1"]);
    assert!(o.reasons[0].contains("1 of 2"), "{o:?}");

    approve(&demo, "reviewer-1");
    let o = reload(&h).await;
    assert!(!o.loaded, "the same reviewer twice must count once: {o:?}");
    assert_eq!(o.approvers, ["reviewer-1"]);
    assert!(
        o.reasons.iter().any(|r| r.contains("already counted")),
        "{o:?}"
    );
    assert_eq!(post_healthz(&demo.client()).await, 401);

    approve(&demo, "reviewer-2");
    let o = reload(&h).await;
    assert!(o.loaded, "{o:?}");
    assert_eq!(post_healthz(&demo.client()).await, 200);
    h.stop().await;
    demo.stop().await;
}

#[tokio::test]
async fn reformatting_and_upstream_only_changes_need_no_new_approval() {
    let mut demo = Demo::start().await;
    let h = reloader(&demo, Duration::ZERO);
    let original = config(&demo);
    let digest =
        postern_review::digest(&postern_policy::Config::load(&demo.path("postern.toml")).unwrap());

    // Reformat: reordered list, comments, whitespace.
    let reformatted = original
        .replacen(NARROW, "methods = [ \"HEAD\",   \"GET\" ]  # reordered", 1)
        .replace("[[route]]", "# the only route\n[[route]]\n")
        .replace(
            "source_cidrs = [\"127.0.0.0/8\", \"::1/128\"]",
            "source_cidrs = [\"::1\", \"127.0.0.0/8\"]",
        );
    assert_ne!(reformatted, original);
    write_config(&demo, &reformatted);
    let o = reload(&h).await;
    assert!(o.loaded, "{o:?}");
    assert_eq!(o.digest.as_deref(), Some(digest.as_str()));

    // Upstream only: point `echo` at the running echo server's address.
    let echo = demo.gw.as_ref().unwrap().shared.policy().upstreams["echo"]
        .authority
        .to_string();
    write_config(
        &demo,
        &reformatted.replace(
            "url = \"builtin:echo\"",
            &format!("url = \"http://{echo}\""),
        ),
    );
    let o = reload(&h).await;
    assert!(o.loaded, "{o:?}");
    assert_eq!(o.digest.as_deref(), Some(digest.as_str()));
    let c = demo.client();
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    assert_eq!(
        c.get(Some(&demo.alice()), "/private", &[]).await.status,
        200
    );

    // Widening a rule does need approvals.
    write_config(
        &demo,
        &reformatted.replace(
            "paths = [\"/healthz\"]",
            "paths = [\"/healthz\", \"/private\"]",
        ),
    );
    let o = reload(&h).await;
    assert!(!o.loaded, "{o:?}");
    assert_ne!(o.digest.as_deref(), Some(digest.as_str()));
    assert_eq!(c.get(None, "/private", &[]).await.status, 401);
    h.stop().await;
    demo.stop().await;
}

#[tokio::test]
async fn a_live_gateway_cannot_take_new_reviewers_or_drop_review() {
    let mut demo = Demo::start().await;
    let h = reloader(&demo, Duration::ZERO);
    let original = config(&demo);

    // Dropping [review] would switch enforcement off.
    write_config(
        &demo,
        &original.replace("[review]\nreviewers = \"reviewers.toml\"\n", ""),
    );
    let o = reload(&h).await;
    assert!(!o.loaded, "{o:?}");
    assert!(
        o.reasons[0].contains("[review] section was removed"),
        "{o:?}"
    );

    // A self-appointed reviewer with quorum 1 signs a widening.
    let (mallory_key, mallory_pub) = {
        let k = postern_review::reviewers::generate_key();
        let p = hex::encode(k.verifying_key().to_bytes());
        (k, p)
    };
    std::fs::write(
        demo.path("evil-reviewers.toml"),
        format!("quorum = 1\n[[reviewer]]\nid = \"mallory\"\npublic_key = \"{mallory_pub}\"\n"),
    )
    .unwrap();
    let evil = original
        .replace(
            "reviewers = \"reviewers.toml\"",
            "reviewers = \"evil-reviewers.toml\"",
        )
        .replacen(NARROW, WIDE, 1);
    write_config(&demo, &evil);
    let cfg = postern_policy::Config::load(&demo.path("postern.toml")).unwrap();
    let a = Approval::sign(
        &mallory_key,
        "mallory",
        &postern_review::digest(&cfg),
        time::OffsetDateTime::now_utc(),
    );
    postern_review::approvals::append_approval(&approvals_path(&demo.path("postern.toml")), &a)
        .unwrap();
    let o = reload(&h).await;
    assert!(!o.loaded, "{o:?}");
    assert!(o.reasons[0].contains("restart the gateway"), "{o:?}");
    assert_eq!(post_healthz(&demo.client()).await, 401);
    h.stop().await;
    demo.stop().await;
}

#[tokio::test]
async fn an_unsigned_widening_is_refused_at_start() {
    let dir = demo_dir();
    let path = dir.path().join("postern.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen(NARROW, WIDE, 1)).unwrap();
    let err = postern::load_policy(&path).unwrap_err().to_string();
    let digest = postern_review::digest(&postern_policy::Config::load(&path).unwrap());
    assert!(err.contains(&digest), "{err}");
    assert!(err.contains("0 of 2 required (nobody)"), "{err}");
    assert!(
        err.contains("signed another digest"),
        "names the stale approvals: {err}"
    );

    // The CLI agrees: verify exits 1 and diff explains the widening.
    let p = path.to_str().unwrap();
    let out = postern(&["policy", "verify", "--config", p]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("quorum NOT met"));
    let old = dir.path().join("old.toml");
    std::fs::write(&old, &text).unwrap();
    let out = postern(&["policy", "diff", old.to_str().unwrap(), p]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("WIDENED   optout `healthz`: new method POST"),
        "{stdout}"
    );
    assert!(stdout.contains("needs new approvals: yes"), "{stdout}");

    // Both demo reviewers approve through the CLI: it loads.
    for r in ["reviewer-1", "reviewer-2"] {
        let key = dir.path().join(format!("{r}.key"));
        let out = postern(&[
            "policy",
            "approve",
            "--config",
            p,
            "--key",
            key.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = postern(&["policy", "verify", "--config", p]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    postern::load_policy(&path).unwrap();
}
