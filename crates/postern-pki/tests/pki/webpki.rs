//! The gateway's real verifier: rustls' `WebPkiClientVerifier` (webpki) must accept what
//! this CA issues, including certificates carrying postern's private extensions, and must
//! refuse edited grants, revoked certificates and broken chains. This is the handshake half
//! of the split whose request half is `client_identity` / `grants_from_cert`.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::sync::Arc;

use postern_pki::{
    certs_from_pem, client_identity, crls_from_pem, grants_from_cert, CaInitOptions, CaStore,
    ClientCertRequest, Grant, Kind, RevocationReason,
};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use time::{Duration, OffsetDateTime};

fn verifier(
    root_pem: &str,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Arc<dyn ClientCertVerifier> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(root_pem).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .with_crls(crls)
        .build()
        .unwrap()
}

fn at(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap(),
    ))
}

fn grant(now: OffsetDateTime) -> Grant {
    Grant {
        id: "CHG-11".into(),
        rules: vec!["health".into()],
        waives: vec!["jwt".into()],
        not_after: now + Duration::hours(1),
        reason: "jwt issuer outage".into(),
        approved_by: "carol".into(),
    }
}

#[test]
fn webpki_accepts_grant_certificates_and_refuses_edited_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let store = CaStore::init(
        tmp.path(),
        &CaInitOptions::new("postern CA", "example.org"),
        now,
    )
    .unwrap();
    let req = ClientCertRequest::new("alice", Kind::User, Duration::hours(8))
        .with_grants(vec![grant(now)]);
    let client = store.issue_client_with(&req, now).unwrap();
    let v = verifier(store.ca().cert_pem(), Vec::new());

    let ee = CertificateDer::from(client.cert_der.clone());
    v.verify_client_cert(&ee, &[], at(now)).unwrap();
    assert_eq!(grants_from_cert(&client.cert_der).unwrap()[0].id, "CHG-11");

    let mut edited = client.cert_der.clone();
    let needle = br#""waives":["jwt"]"#;
    let i = edited
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    edited[i..i + needle.len()].copy_from_slice(br#""waives":["mtl"]"#);
    let err = v
        .verify_client_cert(&CertificateDer::from(edited), &[], at(now))
        .unwrap_err();
    assert!(format!("{err:?}").contains("BadSignature"), "{err:?}");
}

#[test]
fn webpki_refuses_a_certificate_on_the_store_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let store = CaStore::init(
        tmp.path(),
        &CaInitOptions::new("postern CA", "example.org"),
        now,
    )
    .unwrap();
    let alice = store
        .issue_client("alice", Kind::User, Duration::hours(1), now)
        .unwrap();
    let bob = store
        .issue_client("bob", Kind::User, Duration::hours(1), now)
        .unwrap();
    store
        .revoke_identity("bob", RevocationReason::KeyCompromise, now)
        .unwrap();
    let crl_pem = std::fs::read_to_string(store.crl_path()).unwrap();
    let v = verifier(store.ca().cert_pem(), crls_from_pem(&crl_pem).unwrap());

    v.verify_client_cert(&CertificateDer::from(alice.cert_der), &[], at(now))
        .unwrap();
    let err = v
        .verify_client_cert(&CertificateDer::from(bob.cert_der), &[], at(now))
        .unwrap_err();
    assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
}

#[test]
fn webpki_builds_the_path_through_an_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let root = CaStore::init(
        tmp.path().join("root"),
        &CaInitOptions::new("postern root", "example.org"),
        now,
    )
    .unwrap();
    let mut opts = CaInitOptions::new("postern issuing", "example.org");
    opts.parent = Some((
        root.ca().cert_pem().to_owned(),
        root.ca().key_pem().to_owned(),
    ));
    let issuing = CaStore::init(tmp.path().join("issuing"), &opts, now).unwrap();
    let req = ClientCertRequest::new("deploy-bot", Kind::Service, Duration::hours(1))
        .with_grants(vec![grant(now)]);
    let client = issuing.issue_client_with(&req, now).unwrap();
    let chain = certs_from_pem(issuing.chain_pem()).unwrap();
    let v = verifier(root.ca().cert_pem(), Vec::new());

    let ee = CertificateDer::from(client.cert_der.clone());
    v.verify_client_cert(&ee, &chain[..1], at(now)).unwrap();
    assert!(v.verify_client_cert(&ee, &[], at(now)).is_err());
    let id = client_identity(&client.cert_der, "example.org", now).unwrap();
    assert_eq!(id.principal, "service/deploy-bot");
}
