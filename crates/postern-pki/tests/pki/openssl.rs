//! Interoperability: the certificates this CA writes must be read and verified by OpenSSL,
//! the reference most operators will reach for. These tests fail (never skip) when
//! `/usr/bin/openssl` is missing, because silently skipping would hide a broken CA.

// Test helpers outside `#[test]` functions: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use postern_pki::{Ca, KeyAlg, Kind};
use time::{Duration, OffsetDateTime};

const OPENSSL: &str = "/usr/bin/openssl";

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new(OPENSSL)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL} (it is required for this test): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    stdout
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).unwrap();
}

#[test]
fn openssl_reads_and_verifies_client_and_server_certificates() {
    for alg in [KeyAlg::EcdsaP256, KeyAlg::Ed25519] {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate_root("postern test CA", "example.org", alg, now).unwrap();
        let client = ca
            .issue_client("alice", Kind::User, Duration::hours(8), now)
            .unwrap();
        let server = ca
            .issue_server(
                &["gateway.example.org", "localhost"],
                &["127.0.0.1".parse().unwrap()],
                Duration::hours(24),
                now,
            )
            .unwrap();
        write(dir.path(), "ca.pem", ca.cert_pem());
        write(dir.path(), "client.pem", &client.cert_pem);
        write(dir.path(), "server.pem", &server.cert_pem);
        postern_pki::write_private_key(dir.path().join("client.key"), &client.key_pem).unwrap();

        let ca_text = openssl(&["x509", "-in", "ca.pem", "-noout", "-text"], dir.path());
        assert!(ca_text.contains("CA:TRUE"), "{ca_text}");
        assert!(ca_text.contains("Certificate Sign, CRL Sign"), "{ca_text}");

        let text = openssl(
            &["x509", "-in", "client.pem", "-noout", "-text"],
            dir.path(),
        );
        assert!(
            text.contains("URI:spiffe://example.org/user/alice"),
            "{text}"
        );
        assert!(text.contains("TLS Web Client Authentication"), "{text}");
        assert!(!text.contains("TLS Web Server Authentication"), "{text}");
        assert!(text.contains("CA:FALSE"), "{text}");

        let verified = openssl(
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslclient",
                "client.pem",
            ],
            dir.path(),
        );
        assert!(verified.contains("client.pem: OK"), "{verified}");
        let verified = openssl(
            &[
                "verify",
                "-CAfile",
                "ca.pem",
                "-purpose",
                "sslserver",
                "server.pem",
            ],
            dir.path(),
        );
        assert!(verified.contains("server.pem: OK"), "{verified}");

        // The private key written 0600 is the key of the certificate.
        let cert_pub = openssl(
            &["x509", "-in", "client.pem", "-noout", "-pubkey"],
            dir.path(),
        );
        let key_pub = openssl(&["pkey", "-in", "client.key", "-pubout"], dir.path());
        assert_eq!(cert_pub, key_pub);
    }
}

#[test]
fn openssl_refuses_a_client_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate_root("ours", "example.org", KeyAlg::EcdsaP256, now).unwrap();
    let other = Ca::generate_root("theirs", "example.org", KeyAlg::EcdsaP256, now).unwrap();
    let client = other
        .issue_client("alice", Kind::User, Duration::hours(1), now)
        .unwrap();
    write(dir.path(), "ca.pem", ca.cert_pem());
    write(dir.path(), "client.pem", &client.cert_pem);
    let out = Command::new(OPENSSL)
        .args(["verify", "-CAfile", "ca.pem", "client.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL}: {e}"));
    assert!(!out.status.success());
}

#[test]
fn openssl_accepts_grant_certificates_and_refuses_edited_ones() {
    use postern_pki::{ClientCertRequest, Grant, GRANTS_OID, SESSION_OID};
    let dir = tempfile::tempdir().unwrap();
    let now = OffsetDateTime::now_utc();
    let ca = Ca::generate_root("postern test CA", "example.org", KeyAlg::EcdsaP256, now).unwrap();
    let grant = Grant {
        id: "CHG-7".into(),
        rules: vec!["health".into()],
        waives: vec!["jwt".into()],
        not_after: now + Duration::hours(1),
        reason: "maintenance".into(),
        approved_by: "carol".into(),
    };
    let req =
        ClientCertRequest::new("alice", Kind::User, Duration::hours(8)).with_grants(vec![grant]);
    let client = ca.issue_client_with(&req, now).unwrap();
    write(dir.path(), "ca.pem", ca.cert_pem());
    write(dir.path(), "client.pem", &client.cert_pem);

    let text = openssl(
        &["x509", "-in", "client.pem", "-noout", "-text"],
        dir.path(),
    );
    // OpenSSL prints unknown extensions by dotted OID; "critical" would follow the OID.
    assert!(text.contains(&format!("{GRANTS_OID}: \n")), "{text}");
    assert!(text.contains(&format!("{SESSION_OID}: \n")), "{text}");
    let verified = openssl(
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-purpose",
            "sslclient",
            "client.pem",
        ],
        dir.path(),
    );
    assert!(verified.contains("client.pem: OK"), "{verified}");

    let mut der = client.cert_der.clone();
    let needle = br#""rules":["health"]"#;
    let at = der.windows(needle.len()).position(|w| w == needle).unwrap();
    der[at..at + needle.len()].copy_from_slice(br#""rules":["admin1"]"#);
    std::fs::write(dir.path().join("edited.der"), &der).unwrap();
    openssl(
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "edited.der",
            "-out",
            "edited.pem",
        ],
        dir.path(),
    );
    let out = Command::new(OPENSSL)
        .args(["verify", "-CAfile", "ca.pem", "edited.pem"])
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL}: {e}"));
    let report = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "openssl accepted an edited grant: {report}"
    );
    assert!(report.contains("certificate signature failure"), "{report}");
}

#[test]
fn openssl_reads_the_crl_and_refuses_a_revoked_certificate() {
    use postern_pki::{client_identity, CaInitOptions, CaStore, RevocationReason};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = OffsetDateTime::now_utc();
    let store = CaStore::init(
        dir.join("ca"),
        &CaInitOptions::new("postern test CA", "example.org"),
        now,
    )
    .unwrap();
    let revoked = store
        .issue_client("mallory", Kind::User, Duration::hours(1), now)
        .unwrap();
    let kept = store
        .issue_client("alice", Kind::User, Duration::hours(1), now)
        .unwrap();
    let serial = client_identity(&revoked.cert_der, "example.org", now)
        .unwrap()
        .serial_hex;
    store
        .revoke_identity("mallory", RevocationReason::KeyCompromise, now)
        .unwrap();

    std::fs::write(dir.join("crl.der"), store.crl_der(now).unwrap()).unwrap();
    write(dir, "crl.pem", &store.crl_pem(now).unwrap());
    write(dir, "ca.pem", store.ca().cert_pem());
    write(dir, "revoked.pem", &revoked.cert_pem);
    write(dir, "kept.pem", &kept.cert_pem);

    let text = openssl(
        &["crl", "-inform", "DER", "-in", "crl.der", "-noout", "-text"],
        dir,
    );
    assert!(text.contains("Certificate Revocation List (CRL)"), "{text}");
    assert!(text.contains("Version 2"), "{text}");
    assert!(text.contains("X509v3 CRL Number"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(
        text.contains(&format!("Serial Number: {}", serial.to_uppercase())),
        "{text}"
    );
    assert!(text.contains("Key Compromise"), "{text}");
    let verified = openssl(
        &["crl", "-in", "crl.pem", "-CAfile", "ca.pem", "-noout"],
        dir,
    );
    let _ = verified; // success is the assertion (openssl exits non-zero on a bad signature)
                      // The CRL written into the CA directory is the same list.
    let on_disk = openssl(&["crl", "-in", "ca/crl.pem", "-noout", "-text"], dir);
    assert!(on_disk.contains(&serial.to_uppercase()), "{on_disk}");

    let ok = openssl(
        &[
            "verify",
            "-crl_check",
            "-CAfile",
            "ca.pem",
            "-CRLfile",
            "crl.pem",
            "kept.pem",
        ],
        dir,
    );
    assert!(ok.contains("kept.pem: OK"), "{ok}");
    let out = Command::new(OPENSSL)
        .args([
            "verify",
            "-crl_check",
            "-CAfile",
            "ca.pem",
            "-CRLfile",
            "crl.pem",
            "revoked.pem",
        ])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL}: {e}"));
    let report = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{report}");
    assert!(report.contains("certificate revoked"), "{report}");
}

#[test]
fn openssl_verifies_a_client_under_an_intermediate() {
    use postern_pki::{CaInitOptions, CaStore};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let now = OffsetDateTime::now_utc();
    let root = CaStore::init(
        dir.join("root"),
        &CaInitOptions::new("postern root", "example.org"),
        now,
    )
    .unwrap();
    let mut opts = CaInitOptions::new("postern issuing", "example.org");
    opts.parent = Some((
        root.ca().cert_pem().to_owned(),
        root.ca().key_pem().to_owned(),
    ));
    let issuing = CaStore::init(dir.join("issuing"), &opts, now).unwrap();
    let client = issuing
        .issue_client("alice", Kind::User, Duration::hours(1), now)
        .unwrap();
    write(dir, "client.pem", &client.cert_pem);

    let text = openssl(&["x509", "-in", "issuing/ca.pem", "-noout", "-text"], dir);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    let ok = openssl(
        &[
            "verify",
            "-CAfile",
            "root/ca.pem",
            "-untrusted",
            "issuing/chain.pem",
            "-purpose",
            "sslclient",
            "client.pem",
        ],
        dir,
    );
    assert!(ok.contains("client.pem: OK"), "{ok}");
    // Without the intermediate the path cannot be built.
    let out = Command::new(OPENSSL)
        .args(["verify", "-CAfile", "root/ca.pem", "client.pem"])
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL}: {e}"));
    assert!(!out.status.success());
}
