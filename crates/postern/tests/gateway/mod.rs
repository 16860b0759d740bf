//! The gateway's promises, each driven over real TLS against the demo.

use crate::support::*;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[tokio::test]
async fn private_without_credentials_is_401_with_a_challenge() {
    let d = Demo::start().await;
    let r = d.client().get(None, "/private", &[]).await;
    assert_eq!(r.status, 401);
    let www = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(www.contains("realm=\"postern\""), "{www}");
    let j = r.json();
    assert_eq!(j["error"], "authentication required");
    assert!(j["request_id"].as_str().is_some_and(|s| s.len() == 32));
    assert!(j["how_to_authenticate"]
        .as_array()
        .is_some_and(|a| a.len() == 2));
}

#[tokio::test]
async fn alice_certificate_reaches_upstream_as_alice() {
    let d = Demo::start().await;
    let r = d.client().get(Some(&d.alice()), "/private?x=1", &[]).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header("x-postern-auth").as_deref(), Some("mtls"));
    assert_eq!(r.json()["path"], "/private");
    assert_eq!(r.json()["query"], "x=1");
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn alice_jwt_reaches_upstream_as_alice_and_an_altered_token_is_401() {
    let d = Demo::start().await;
    let c = d.client();
    let jwt = d.jwt();
    let r = c
        .get(
            None,
            "/private",
            &[("Authorization", &format!("Bearer {jwt}"))],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header("x-postern-auth").as_deref(), Some("jwt"));

    // Alter one character of the signature, then of the payload.
    for pos in [jwt.len() - 5, jwt.find('.').unwrap() + 3] {
        let mut t = jwt.clone().into_bytes();
        t[pos] = if t[pos] == b'A' { b'B' } else { b'A' };
        let t = String::from_utf8(t).unwrap();
        let r = c
            .get(
                None,
                "/private",
                &[("Authorization", &format!("Bearer {t}"))],
            )
            .await;
        assert_eq!(r.status, 401, "altered at {pos}");
        assert!(r
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token"));
    }
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let d = Demo::start().await;
    let c = d.client();
    let spoof = [
        ("x-postern-identity", "mallory"),
        ("X-Forwarded-User", "mallory"),
        ("X_Postern_Identity", "mallory"),
        ("x_forwarded_user", "mallory"),
        ("X-Remote-User", "mallory"),
        ("x-original-url", "/healthz"),
        ("x-postern-auth", "optout:healthz"),
    ];
    // Authenticated as alice: the upstream sees alice and nothing of mallory.
    let r = c.get(Some(&d.alice()), "/private", &spoof).await;
    assert_eq!(r.status, 200);
    let upstream_headers = r.json()["headers"].clone();
    let text = upstream_headers.to_string();
    assert!(!text.contains("mallory"), "{text}");
    assert!(
        !text.contains("x_postern") && !text.contains("x_forwarded"),
        "{text}"
    );
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice")
    );
    // Through the health-check opt-out: no identity at all, and no spoofed one.
    let r = c.get(None, "/healthz", &spoof).await;
    assert_eq!(r.status, 200);
    assert!(!r.json()["headers"].to_string().contains("mallory"));
    assert_eq!(r.upstream_header("x-postern-identity"), None);
    assert_eq!(
        r.upstream_header("x-postern-auth").as_deref(),
        Some("optout:healthz")
    );
}

#[tokio::test]
async fn a_connection_header_cannot_make_postern_drop_its_own_headers() {
    let d = Demo::start().await;
    let r = d
        .client()
        .get(
            Some(&d.alice()),
            "/private",
            &[(
                "Connection",
                "x-postern-identity, x-postern-auth, x-forwarded-for",
            )],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("alice")
    );
    assert_eq!(r.upstream_header("x-postern-auth").as_deref(), Some("mtls"));
    assert!(r.upstream_header("x-forwarded-for").is_some());
}

#[tokio::test]
async fn healthz_opt_out_covers_get_and_head_only() {
    let d = Demo::start().await;
    let c = d.client();
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    let head = c
        .raw(None, "HEAD /healthz HTTP/1.1\nHost: localhost", b"")
        .await;
    assert_eq!(head.status, 200);
    for m in ["POST", "PUT", "DELETE", "OPTIONS", "get"] {
        let r = c.request(None, m, "/healthz", &[], b"").await;
        assert!(
            r.status == 401 || r.status == 400,
            "{m} /healthz answered {}",
            r.status
        );
    }
    // Nothing under /healthz is covered: the rule names an exact path.
    assert_eq!(c.get(None, "/healthz/deep", &[]).await.status, 401);
    assert_eq!(c.get(None, "/healthz/", &[]).await.status, 401);
}

#[tokio::test]
async fn a_present_but_invalid_credential_never_falls_into_an_opt_out() {
    let d = Demo::start().await;
    let c = d.client();
    let r = c
        .get(None, "/healthz", &[("Authorization", "Bearer not.a.token")])
        .await;
    assert_eq!(r.status, 401);
    let r = c
        .get(None, "/healthz", &[("Authorization", "Basic YWxpY2U6cHc=")])
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn healthz_opt_out_needs_a_loopback_source_and_ignores_forwarded_for() {
    let d = Demo::start().await;
    let c = d.client();
    // The client claims to be elsewhere: postern trusts no proxy, so the TCP peer counts.
    let r = c
        .get(None, "/healthz", &[("X-Forwarded-For", "203.0.113.7")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

#[tokio::test]
async fn webhook_needs_a_valid_fresh_signature() {
    let d = Demo::start().await;
    let c = d.client();
    let body = br#"{"event":"paid","amount":42}"#;
    let secret = d.path("webhook.secret");
    let ts = now();
    let good = sign_webhook(&secret, ts, body);
    let ts_s = ts.to_string();

    let ok = c
        .request(
            None,
            "POST",
            "/webhooks/demo",
            &[
                ("x-postern-timestamp", &ts_s),
                ("x-postern-signature", &good),
            ],
            body,
        )
        .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(
        ok.upstream_header("x-postern-auth").as_deref(),
        Some("optout:demo-webhook")
    );

    let missing = c.request(None, "POST", "/webhooks/demo", &[], body).await;
    assert_eq!(missing.status, 401);
    let wrong = sign_webhook(&secret, ts, b"another body");
    let r = c
        .request(
            None,
            "POST",
            "/webhooks/demo",
            &[
                ("x-postern-timestamp", &ts_s),
                ("x-postern-signature", &wrong),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 401);
    let stale_ts = ts - 3600;
    let stale = sign_webhook(&secret, stale_ts, body);
    let r = c
        .request(
            None,
            "POST",
            "/webhooks/demo",
            &[
                ("x-postern-timestamp", &stale_ts.to_string()),
                ("x-postern-signature", &stale),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 401);
    // A valid signature for one body does not carry another body.
    let r = c
        .request(
            None,
            "POST",
            "/webhooks/demo",
            &[
                ("x-postern-timestamp", &ts_s),
                ("x-postern-signature", &good),
            ],
            b"{}",
        )
        .await;
    assert_eq!(r.status, 401);
    // The opt-out names POST: a signed GET is not covered.
    let r = c
        .request(
            None,
            "GET",
            "/webhooks/demo",
            &[
                ("x-postern-timestamp", &ts_s),
                ("x-postern-signature", &good),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn path_tricks_never_reach_the_upstream_unauthenticated() {
    let d = Demo::start().await;
    let c = d.client();
    let tricks = [
        "/healthz/../private",
        "/%2e%2e/private",
        "//private",
        "/healthz%2f..%2fprivate",
        "/healthz%252f..%252fprivate",
        "/healthz;x/../private",
        "/HEALTHZ",
        "/private?x=/healthz",
        "/private#/healthz",
        "/healthz/..%5cprivate",
        "/healthz/..\\private",
        "/healthz/%2e%2e/private",
        "/healthz/..;/private",
        "/./healthz/../private",
        "/healthz%00",
        "/healthz%3b",
        "/%68ealthz/../private",
        "/../healthz",
        "/healthz/.%2e/private",
    ];
    for t in tricks {
        let r = c.get(None, t, &[]).await;
        assert!(
            r.status == 400 || r.status == 401,
            "{t} answered {} (body {})",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
    }
    // Decoding unreserved characters is fine and lands on the real opt-out path.
    assert_eq!(c.get(None, "/%68ealthz", &[]).await.status, 200);
    // The path that matched is the path forwarded.
    let r = c.get(None, "/x/..//healthz", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/healthz");
}

#[tokio::test]
async fn ambiguous_requests_are_refused() {
    let d = Demo::start().await;
    let c = d.client();
    let a = d.alice();
    let jwt = d.jwt();
    let auth = format!("Bearer {jwt}");
    // Two Authorization headers.
    let r = c
        .get(
            Some(&a),
            "/private",
            &[("Authorization", &auth), ("Authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 400);
    // Content-Length and Transfer-Encoding together: hyper's parser drops the
    // Content-Length (RFC 9112 §6.3) before postern sees the request, and
    // postern re-frames the body upstream, so the upstream never sees both.
    for head in [
        "POST /private HTTP/1.1\nHost: localhost\nTransfer-Encoding: chunked\nContent-Length: 4",
        "POST /private HTTP/1.1\nHost: localhost\nContent-Length: 4\nTransfer-Encoding: chunked",
    ] {
        let r = c.raw(Some(&a), head, b"0\r\n\r\n").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream_header("content-length"), None, "{head}");
    }
    // Two different Content-Lengths: refused by the parser.
    let r = c
        .raw(
            Some(&a),
            "POST /private HTTP/1.1\nHost: localhost\nContent-Length: 1\nContent-Length: 2",
            b"ab",
        )
        .await;
    assert_eq!(r.status, 400);
    // h2c upgrade.
    let r = c
        .get(
            Some(&a),
            "/private",
            &[
                ("Upgrade", "h2c"),
                ("Connection", "Upgrade, HTTP2-Settings"),
                ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    // Two Host headers, or Host disagreeing with an absolute target.
    let r = c
        .raw(
            Some(&a),
            "GET /private HTTP/1.1\nHost: localhost\nHost: evil.example",
            b"",
        )
        .await;
    assert_eq!(r.status, 400);
    let r = c
        .raw(
            Some(&a),
            "GET https://evil.example/private HTTP/1.1\nHost: localhost",
            b"",
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn upgrade_is_refused_where_the_rule_does_not_allow_it() {
    let d = Demo::start().await;
    let r = d
        .client()
        .get(
            Some(&d.alice()),
            "/private",
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn http2_by_alpn_serves_alice() {
    use http_body_util::{BodyExt, Empty};
    let d = Demo::start().await;
    let c = d.client();
    let cfg = c.tls_config(Some(&d.alice()), &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("https://localhost:{}/private", d.addr.port()))
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let j: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(j["headers"]["x-postern-identity"], "alice");
}

#[tokio::test]
async fn audit_log_records_every_answer_and_verifies() {
    let mut d = Demo::start().await;
    let c = d.client();
    assert_eq!(c.get(None, "/private", &[]).await.status, 401);
    assert_eq!(c.get(Some(&d.alice()), "/private", &[]).await.status, 200);
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    assert_eq!(
        c.get(None, "/healthz%2f..%2fprivate", &[]).await.status,
        400
    );
    d.stop().await;
    let log = std::fs::read_to_string(d.path("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions: Vec<&str> = records
        .iter()
        .filter_map(|r| r["decision"].as_str())
        .collect();
    for want in ["challenge", "allow", "optout", "bad_request"] {
        assert!(
            decisions.contains(&want),
            "no `{want}` record in {decisions:?}"
        );
    }
    let optout = records.iter().find(|r| r["decision"] == "optout").unwrap();
    assert_eq!(optout["rule"], "healthz");
    assert_eq!(optout["path"], "/healthz");
    assert_eq!(optout["peer"], "127.0.0.1");
    assert!(
        optout["ts"].as_str().unwrap().contains('.'),
        "sub-second timestamp"
    );
    let allow = records.iter().find(|r| r["decision"] == "allow").unwrap();
    assert_eq!(allow["identity"], "alice");
    assert_eq!(allow["auth"], "mtls");
    assert!(allow["cert_serial"].as_str().is_some());
    assert_eq!(allow["status"], 200);
    let key = postern_audit::read_verifying_key(d.path("audit.pub").to_str().unwrap()).unwrap();
    let report = postern_audit::verify_file(&d.path("audit.jsonl"), &key).unwrap();
    assert_eq!(report.records as usize, records.len());
}

#[tokio::test]
async fn unwritable_audit_log_closes_the_side_gate() {
    use std::os::unix::fs::PermissionsExt;
    let d = Demo::start().await;
    let c = d.client();
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
    let log = d.path("audit.jsonl");
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o444)).unwrap();
    let r = c.get(None, "/healthz", &[]).await;
    assert_eq!(
        r.status, 401,
        "the opt-out must not be honoured without its audit record"
    );
    // Authenticated requests still work (their records wait in memory, bounded).
    assert_eq!(c.get(Some(&d.alice()), "/private", &[]).await.status, 200);
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(c.get(None, "/healthz", &[]).await.status, 200);
}

#[tokio::test]
async fn restart_continues_the_audit_chain() {
    let mut d = Demo::start().await;
    assert_eq!(d.client().get(None, "/healthz", &[]).await.status, 200);
    d.stop().await;
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let mut d2 = Demo::start_in(dir).await;
    assert_eq!(d2.client().get(None, "/healthz", &[]).await.status, 200);
    d2.stop().await;
    let key = postern_audit::read_verifying_key(d2.path("audit.pub").to_str().unwrap()).unwrap();
    let report = postern_audit::verify_file(&d2.path("audit.jsonl"), &key).unwrap();
    assert!(report.checkpoints >= 2, "{report:?}");
}

#[tokio::test]
async fn curl_as_a_real_client_gets_through_with_alices_certificate() {
    let d = Demo::start().await;
    let url = format!("https://localhost:{}/private", d.addr.port());
    let out = tokio::process::Command::new("curl")
        .args(["-s", "--cacert"])
        .arg(d.path("ca.pem"))
        .arg("--cert")
        .arg(d.path("alice.pem"))
        .arg("--key")
        .arg(d.path("alice.key"))
        .arg(&url)
        .output()
        .await
        .expect("curl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["headers"]["x-postern-identity"], "alice");
}

#[tokio::test]
async fn upgrade_is_tunnelled_only_after_the_upstream_agrees_where_the_route_allows_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut d = Demo::start().await;
    d.stop().await;
    let cfg = d.path("postern.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "require = [[\"mtls\"], [\"jwt\"]]",
        "require = [[\"mtls\"], [\"jwt\"]]\nallow_upgrade = true",
    );
    std::fs::write(&cfg, text).unwrap();
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let d = Demo::start_in(dir).await;
    let c = d.client();

    // Anonymous: no tunnel, a challenge.
    let r = c
        .get(
            None,
            "/ws",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
        )
        .await;
    assert_eq!(r.status, 401);
    // The health-check opt-out does not allow upgrades.
    let r = c
        .get(
            None,
            "/healthz",
            &[("Upgrade", "websocket"), ("Connection", "Upgrade")],
        )
        .await;
    assert_eq!(r.status, 403);

    // Alice on a route that allows it: 101, then bytes flow both ways.
    let mut tls = c.connect(Some(&d.alice())).await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping through the tunnel").await.unwrap();
    let mut buf = [0u8; 23];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping through the tunnel");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_at_the_handshake_and_audited() {
    let mut d = Demo::start().await;
    let now = time::OffsetDateTime::now_utc();
    let other = postern_pki::Ca::generate_root(
        "other CA",
        "postern.demo",
        postern_pki::KeyAlg::EcdsaP256,
        now,
    )
    .unwrap();
    let mallory = other
        .issue_client(
            "alice",
            postern_pki::Kind::User,
            time::Duration::hours(1),
            now,
        )
        .unwrap();
    std::fs::write(d.path("mallory.pem"), &mallory.cert_pem).unwrap();
    std::fs::write(d.path("mallory.key"), &mallory.key_pem).unwrap();
    let creds = Creds::load(&d.path("mallory.pem"), &d.path("mallory.key"));
    let c = d.client();
    let cfg = std::sync::Arc::new(c.tls_config(Some(&creds), &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let res = tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    // TLS 1.3: the client may learn of the refusal only on its first read.
    if let Ok(mut tls) = res {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls
            .write_all(b"GET /private HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let r = tls.read_to_end(&mut buf).await;
        assert!(
            r.is_err() || buf.is_empty(),
            "a foreign certificate got an answer: {}",
            String::from_utf8_lossy(&buf)
        );
    }
    d.stop().await;
    let log = std::fs::read_to_string(d.path("audit.jsonl")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("\"kind\":\"handshake\"") && l.contains("refused")),
        "{log}"
    );
}

/// An upstream that answers after `delay`.
async fn slow_upstream(delay: std::time::Duration) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"slow")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let mut d = Demo::start().await;
    d.stop().await;
    let up = slow_upstream(std::time::Duration::from_millis(600)).await;
    let cfg = d.path("postern.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("builtin:echo", &format!("http://{up}"));
    std::fs::write(&cfg, text).unwrap();
    let dir = std::mem::replace(&mut d.dir, tempfile::tempdir().unwrap());
    let mut d = Demo::start_in(dir).await;
    let c = std::sync::Arc::new(d.client());
    let alice = std::sync::Arc::new(d.alice());
    let in_flight = {
        let (c, alice) = (c.clone(), alice.clone());
        tokio::spawn(async move { c.get(Some(&alice), "/slow", &[]).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let addr = d.addr;
    d.stop().await;
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status, 200,
        "the in-flight request completed during shutdown"
    );
    assert_eq!(r.body, b"slow");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections after shutdown"
    );
}
