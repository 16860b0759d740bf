//! Certificates that die young (invariant 5): grants signed into
//! certificates, revocation that takes effect now, renewal, and every way a
//! client certificate can be wrong. Real certificates, real TLS.

use std::sync::Arc;

use postern_pki::{CaStore, ClientCertRequest, Grant, Kind, RevocationReason};
use time::{Duration, OffsetDateTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

fn store(d: &Demo) -> CaStore {
    CaStore::open(d.dir.path()).unwrap()
}

/// Write a certificate + key pair into the demo dir and load them as creds.
fn creds(d: &Demo, name: &str, cert_pem: &str, key_pem: &str) -> Creds {
    std::fs::write(d.path(&format!("{name}.pem")), cert_pem).unwrap();
    std::fs::write(d.path(&format!("{name}.key")), key_pem).unwrap();
    Creds::load(
        &d.path(&format!("{name}.pem")),
        &d.path(&format!("{name}.key")),
    )
}

fn grant(rule: &str, not_after: OffsetDateTime) -> Grant {
    Grant {
        id: format!("grant-for-{rule}"),
        rules: vec![rule.to_string()],
        waives: vec!["jwt".to_string()],
        not_after,
        reason: "test".to_string(),
        approved_by: "tester".to_string(),
    }
}

/// Audit records, after the gateway stopped.
async fn records(d: &mut Demo) -> Vec<serde_json::Value> {
    d.stop().await;
    std::fs::read_to_string(d.path("audit.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Does the handshake (or the first read after it, in TLS 1.3) fail?
async fn handshake_refused(c: &Client, creds: &Creds) -> bool {
    let cfg = Arc::new(c.tls_config(Some(creds), &[b"http/1.1"]));
    let tcp = tokio::net::TcpStream::connect(c.addr()).await.unwrap();
    match tokio_rustls::TlsConnector::from(cfg)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
    {
        Err(_) => true,
        Ok(mut tls) => {
            let _ = tls
                .write_all(b"GET /private HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            let r = tls.read_to_end(&mut buf).await;
            r.is_err() || buf.is_empty()
        }
    }
}

fn handshake_reason(recs: &[serde_json::Value], needle: &str) -> bool {
    let found = recs
        .iter()
        .any(|r| r["kind"] == "handshake" && r["reasons"].to_string().contains(needle));
    if !found {
        let seen: Vec<String> = recs
            .iter()
            .filter(|r| r["kind"] == "handshake")
            .map(|r| r["reasons"].to_string())
            .collect();
        eprintln!("no handshake record contains `{needle}`; handshake records: {seen:?}");
    }
    found
}

#[tokio::test]
async fn a_grant_in_the_batch_certificate_opens_only_its_rule() {
    let mut d = Demo::start().await;
    let c = d.client();
    let batch = Creds::load(&d.path("batch.pem"), &d.path("batch.key"));
    let r = c.get(Some(&batch), "/reports/daily", &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("x-postern-auth").as_deref(),
        Some("optout:reports-batch")
    );
    assert_eq!(
        r.upstream_header("x-postern-identity").as_deref(),
        Some("service/batch")
    );
    // The rule names GET on the daily and weekly exports only.
    assert_eq!(
        c.request(Some(&batch), "POST", "/reports/daily", &[], b"")
            .await
            .status,
        401
    );
    assert_eq!(
        c.get(Some(&batch), "/reports/payroll", &[]).await.status,
        401
    );
    // Alice's certificate carries no grant: reports need her token too.
    assert_eq!(
        c.get(Some(&d.alice()), "/reports/daily", &[]).await.status,
        401
    );
    let auth = format!("Bearer {}", d.jwt());
    let r = c
        .get(
            Some(&d.alice()),
            "/reports/daily",
            &[("Authorization", &auth)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-postern-auth").as_deref(),
        Some("mtls+jwt")
    );
    // Every use is audited with the grant, the certificate serial and fingerprint.
    let recs = records(&mut d).await;
    let used = recs
        .iter()
        .find(|r| r["decision"] == "optout" && r["rule"] == "reports-batch")
        .expect("an opt-out record for the grant");
    assert_eq!(used["extra"]["grant"], "reports-batch");
    assert!(used["cert_serial"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(used["cert_fingerprint"]
        .as_str()
        .is_some_and(|s| s.len() == 64));
}

#[tokio::test]
async fn a_grant_for_another_rule_or_an_expired_grant_is_refused_and_audited() {
    let mut d = Demo::start_made_at(OffsetDateTime::now_utc() - Duration::hours(4)).await;
    let now = OffsetDateTime::now_utc();
    let s = store(&d);
    let other = s
        .issue_client_with(
            &ClientCertRequest::new("batch2", Kind::Service, Duration::hours(1))
                .with_grants(vec![grant("healthz", now + Duration::hours(1))]),
            now,
        )
        .unwrap();
    // Issued two hours ago for eight hours, its grant lapsed an hour ago.
    let then = now - Duration::hours(2);
    let stale = s
        .issue_client_with(
            &ClientCertRequest::new("batch3", Kind::Service, Duration::hours(8))
                .with_grants(vec![grant("reports-batch", then + Duration::hours(1))]),
            then,
        )
        .unwrap();
    let c = d.client();
    let other = creds(&d, "other", &other.cert_pem, &other.key_pem);
    let stale = creds(&d, "stale", &stale.cert_pem, &stale.key_pem);
    assert_eq!(c.get(Some(&other), "/reports/daily", &[]).await.status, 401);
    assert_eq!(c.get(Some(&stale), "/reports/daily", &[]).await.status, 401);
    let recs = records(&mut d).await;
    let refused: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["decision"] == "challenge" && r["path"] == "/reports/daily")
        .collect();
    assert_eq!(refused.len(), 2);
    assert!(
        refused[0]["reasons"].to_string().contains("carries none"),
        "{}",
        refused[0]
    );
    assert!(
        refused[1]["reasons"].to_string().contains("expired"),
        "{}",
        refused[1]
    );
}

#[tokio::test]
async fn a_tampered_grant_extension_breaks_the_signature_and_the_handshake() {
    let mut d = Demo::start().await;
    let der =
        postern_pki::cert_der_from_pem(&std::fs::read_to_string(d.path("batch.pem")).unwrap())
            .unwrap();
    // Widen the grant to another rule by editing one byte of its payload.
    let needle = b"reports-batch";
    let at = der
        .windows(needle.len())
        .rposition(|w| w == needle)
        .expect("grant payload in the DER");
    let mut forged = der.clone();
    forged[at + needle.len() - 1] = b'X';
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64_lines(&forged)
    );
    let key = std::fs::read_to_string(d.path("batch.key")).unwrap();
    let forged = creds(&d, "forged", &pem, &key);
    assert!(handshake_refused(&d.client(), &forged).await);
    let recs = records(&mut d).await;
    assert!(
        handshake_reason(&recs, "BadSignature"),
        "no handshake record naming the signature"
    );
}

fn base64_lines(der: &[u8]) -> String {
    use base64::Engine;
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    b.as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn expired_not_yet_valid_and_wrong_eku_certificates_are_refused_at_the_handshake_and_audited()
{
    let mut d = Demo::start_made_at(OffsetDateTime::now_utc() - Duration::hours(12)).await;
    let now = OffsetDateTime::now_utc();
    let s = store(&d);
    let c = d.client();
    let expired = s
        .issue_client(
            "old",
            Kind::User,
            Duration::hours(1),
            now - Duration::hours(11),
        )
        .unwrap();
    let expired = creds(&d, "expired", &expired.cert_pem, &expired.key_pem);
    assert!(handshake_refused(&c, &expired).await);
    let future = s
        .issue_client(
            "future",
            Kind::User,
            Duration::hours(1),
            now + Duration::hours(3),
        )
        .unwrap();
    let future = creds(&d, "future", &future.cert_pem, &future.key_pem);
    assert!(handshake_refused(&c, &future).await);
    // The server's own certificate presented as a client certificate.
    let server = Creds::load(&d.path("server.pem"), &d.path("server.key"));
    assert!(handshake_refused(&c, &server).await);
    let recs = records(&mut d).await;
    let hs: Vec<String> = recs
        .iter()
        .filter(|r| r["kind"] == "handshake")
        .map(|r| r["reasons"].to_string())
        .collect();
    assert!(
        handshake_reason(&recs, "certificate expired"),
        "expired not audited: {hs:?}"
    );
    assert!(
        handshake_reason(&recs, "not valid yet"),
        "not-yet-valid not audited"
    );
    assert!(
        handshake_reason(
            &recs,
            "does not allow extended key usage for client authentication"
        ),
        "wrong EKU not audited"
    );
}

#[tokio::test]
async fn an_identity_only_in_the_subject_cn_is_refused_and_audited() {
    let mut d = Demo::start().await;
    let ca_pem = std::fs::read_to_string(d.path("ca.pem")).unwrap();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(d.path("ca.key")).unwrap()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "alice");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(1);
    params.not_after = now + Duration::hours(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cn_only = creds(&d, "cn-only", &cert.pem(), &key.serialize_pem());
    let r = d.client().get(Some(&cn_only), "/private", &[]).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["invalid"].to_string().contains("CN"),
        "{}",
        r.json()
    );
    // Not even the health-check opt-out: a present but invalid credential.
    assert_eq!(
        d.client().get(Some(&cn_only), "/healthz", &[]).await.status,
        401
    );
    let recs = records(&mut d).await;
    assert!(recs
        .iter()
        .any(|r| r["decision"] == "challenge" && r["reasons"].to_string().contains("subject CN")));
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_within_a_second_even_on_an_open_connection() {
    let mut d = Demo::start().await;
    let c = d.client();
    let alice = d.alice();
    let mut open = c.connect(Some(&alice)).await;
    assert_eq!(on_connection(&mut open, "/private").await.status, 200);

    let serial = postern_pki::client_identity(
        alice.chain[0].as_ref(),
        "postern.demo",
        OffsetDateTime::now_utc(),
    )
    .unwrap()
    .serial_hex;
    store(&d)
        .revoke(
            &serial,
            RevocationReason::KeyCompromise,
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;

    // The connection opened before the revocation: refused per request.
    let r = on_connection(&mut open, "/private").await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["invalid"].to_string().contains("revoked"),
        "{}",
        r.json()
    );
    // Not even an opt-out path: the credential is present and invalid.
    assert_eq!(on_connection(&mut open, "/healthz").await.status, 401);
    // A new handshake: refused by the CRL the TLS layer now carries.
    assert!(handshake_refused(&c, &alice).await);
    let recs = records(&mut d).await;
    assert!(recs
        .iter()
        .any(|r| r["decision"] == "challenge" && r["reasons"].to_string().contains("revoked")));
    assert!(
        handshake_reason(&recs, "Revoked"),
        "the refused handshake is audited"
    );
    // The revocation itself (made by another process, the CA tools) is audited.
    assert!(
        recs.iter().any(|r| r["kind"] == "revocation"
            && r["cert_serial"] == serial.as_str()
            && r["identity"] == "alice"),
        "the gateway audits the revocation it picked up"
    );
}

fn csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap();
    (csr.pem().unwrap(), key.serialize_pem())
}

#[tokio::test]
async fn renewal_keeps_identity_and_grants_and_refuses_revoked_and_old_sessions() {
    let mut d = Demo::start().await;
    let c = d.client();
    let batch = Creds::load(&d.path("batch.pem"), &d.path("batch.key"));
    let (csr_pem, key_pem) = csr();
    let r = c
        .request(
            Some(&batch),
            "POST",
            "/v1/certs/renew",
            &[("Content-Type", "application/pkcs10")],
            csr_pem.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let renewed_pem = String::from_utf8(r.body.clone()).unwrap();
    let renewed = creds(&d, "batch-renewed", &renewed_pem, &key_pem);
    let der = renewed.chain[0].as_ref();
    let now = OffsetDateTime::now_utc();
    let id = postern_pki::client_identity(der, "postern.demo", now).unwrap();
    assert_eq!(id.principal, "service/batch");
    let grants = postern_pki::grants_from_cert(der).unwrap();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].id, "reports-batch");
    // The renewed certificate (new key) works, grant included.
    let r = c.get(Some(&renewed), "/reports/daily", &[]).await;
    assert_eq!(r.status, 200);

    // A session older than the maximum (7 days) is not renewed.
    let s = store(&d);
    let old = s
        .issue_client_with(
            &ClientCertRequest::new("carol", Kind::User, Duration::hours(8))
                .continuing_session(now - Duration::days(8)),
            now,
        )
        .unwrap();
    let old = creds(&d, "carol", &old.cert_pem, &old.key_pem);
    let (csr_pem, _) = csr();
    let r = c
        .request(
            Some(&old),
            "POST",
            "/v1/certs/renew",
            &[],
            csr_pem.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("session"));

    // A revoked certificate is not renewed (on a connection opened before the revocation).
    let alice = d.alice();
    let mut open = c.connect(Some(&alice)).await;
    assert_eq!(on_connection(&mut open, "/private").await.status, 200);
    s.revoke_identity("alice", RevocationReason::KeyCompromise, now)
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let (csr_pem, _) = csr();
    open.write_all(
        format!("POST /v1/certs/renew HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{csr_pem}", csr_pem.len()).as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = open.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("revoked"), "{text}");

    let recs = records(&mut d).await;
    let renewals: Vec<&serde_json::Value> =
        recs.iter().filter(|r| r["kind"] == "renewal").collect();
    assert_eq!(renewals.len(), 3, "every renewal and refusal is audited");
}
