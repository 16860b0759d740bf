//! `postern ca …` as an operator runs it: the binary against a real CA directory, checked
//! with OpenSSL; `ca renew` against a stub of the gateway's renewal endpoint (same
//! protocol: POST /v1/certs/renew over mTLS, PKCS#10 in, PEM or JSON error out).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use postern_pki::{CaStore, ClientCertRequest, Kind};
use time::{Duration, OffsetDateTime};

const OPENSSL: &str = "/usr/bin/openssl";

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = std::process::Command::new(OPENSSL)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL} (required for this test): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `postern` in `dir` (relative paths), returning (exit code, stdout, stderr).
fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(dir, args);
    assert_eq!(
        code, 0,
        "postern {args:?}\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

fn serial_of(dir: &Path, cert: &str) -> String {
    openssl(&["x509", "-in", cert, "-noout", "-serial"], dir)
        .trim()
        .trim_start_matches("serial=")
        .to_string()
}

fn pubkey_of_cert(dir: &Path, cert: &str) -> String {
    openssl(&["x509", "-in", cert, "-noout", "-pubkey"], dir)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn init_ca(dir: &Path) {
    ok(dir, &["ca", "init", "--dir", "ca"]);
}

#[test]
fn init_writes_a_ca_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = ok(
        dir,
        &["ca", "init", "--dir", "ca", "--trust-domain", "example.org"],
    );
    assert!(out.contains("root CA"), "{out}");
    assert!(out.contains("ca/ca.key"), "{out}");
    assert!(out.contains("example.org"), "{out}");
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("ca/ca.key")), 0o600);
    let text = openssl(&["x509", "-in", "ca/ca.pem", "-noout", "-text"], dir);
    assert!(text.contains("CA:TRUE"), "{text}");

    let before = std::fs::read(dir.join("ca/ca.pem")).unwrap();
    let key_before = std::fs::read(dir.join("ca/ca.key")).unwrap();
    let (code, _, err) = run(dir, &["ca", "init", "--dir", "ca", "--key-type", "ed25519"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("already exists") && err.contains("refusing to overwrite"),
        "{err}"
    );
    assert_eq!(std::fs::read(dir.join("ca/ca.pem")).unwrap(), before);
    assert_eq!(std::fs::read(dir.join("ca/ca.key")).unwrap(), key_before);

    let (code, _, err) = run(dir, &["ca", "init", "--dir", "other", "--max-ttl", "8d"]);
    assert_eq!(code, 2);
    assert!(err.contains("--max-ttl"), "{err}");
    assert!(!dir.join("other").exists());
}

#[test]
fn issue_with_a_grant_is_read_and_verified_by_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    let out = ok(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--identity",
            "batch",
            "--kind",
            "service",
            "--ttl",
            "2h",
            "--grant",
            "id=reports-batch,rules=reports-batch+other,waives=jwt,ttl=1h,reason=nightly batch,approved_by=alice",
            "--out",
            "batch",
        ],
    );
    assert!(
        out.contains("spiffe://postern.local/service/batch"),
        "{out}"
    );
    assert!(out.contains("reports-batch"), "{out}");
    assert!(out.contains("approved by alice"), "{out}");
    let serial = serial_of(dir, "batch.pem").to_lowercase();
    assert!(
        out.contains(serial.trim_start_matches('0')),
        "{out} / {serial}"
    );
    #[cfg(unix)]
    assert_eq!(mode(&dir.join("batch.key")), 0o600);

    let text = openssl(&["x509", "-in", "batch.pem", "-noout", "-text"], dir);
    assert!(text.contains(postern_pki::GRANTS_OID), "{text}");
    assert!(text.contains("\"id\":\"reports-batch\""), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        text.contains("URI:spiffe://postern.local/service/batch"),
        "{text}"
    );
    let verified = openssl(&["verify", "-CAfile", "ca/ca.pem", "batch.pem"], dir);
    assert!(verified.contains("batch.pem: OK"), "{verified}");
    // The key belongs to the certificate.
    assert_eq!(
        pubkey_of_cert(dir, "batch.pem"),
        openssl(&["pkey", "-in", "batch.key", "-pubout"], dir)
    );
}

#[test]
fn issue_from_a_csr_signs_the_requesters_key_and_writes_no_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    openssl(
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=x",
            "-keyout",
            "mine.key",
            "-out",
            "mine.csr",
        ],
        dir,
    );
    let out = ok(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--identity",
            "carol",
            "--csr",
            "mine.csr",
            "--out",
            "carol",
        ],
    );
    assert!(out.contains("spiffe://postern.local/user/carol"), "{out}");
    assert!(dir.join("carol.pem").is_file());
    assert!(
        !dir.join("carol.key").exists(),
        "no key is written for a csr"
    );
    assert_eq!(
        pubkey_of_cert(dir, "carol.pem"),
        openssl(&["pkey", "-in", "mine.key", "-pubout"], dir)
    );
    let text = openssl(&["x509", "-in", "carol.pem", "-noout", "-subject"], dir);
    assert!(text.contains("carol") && !text.contains("CN = x"), "{text}");
    openssl(&["verify", "-CAfile", "ca/ca.pem", "carol.pem"], dir);

    // A file that is not a CSR is named in the error.
    let (code, _, err) = run(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--identity",
            "carol",
            "--csr",
            "carol.pem",
            "--out",
            "x",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("carol.pem") && err.contains("signing request"),
        "{err}"
    );
}

#[test]
fn issue_refuses_what_the_ca_must_not_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    let issue = |extra: &[&str]| {
        let mut args = vec![
            "ca",
            "issue",
            "--dir",
            "ca",
            "--identity",
            "alice",
            "--out",
            "a",
        ];
        args.extend_from_slice(extra);
        run(dir, &args)
    };
    // Above the CA's max_ttl (24h by default).
    let (code, _, err) = issue(&["--ttl", "25h"]);
    assert_eq!(code, 2);
    assert!(err.contains("--ttl") && err.contains("maximum"), "{err}");
    // Durations need a unit.
    let (code, _, err) = issue(&["--ttl", "8"]);
    assert_eq!(code, 2);
    assert!(err.contains("--ttl") && err.contains("unit"), "{err}");
    // Unknown grant keys, missing approval, a grant outliving its certificate.
    let (code, _, err) = issue(&["--grant", "id=g,rules=r,reason=x,approved_by=b,colour=red"]);
    assert_eq!(code, 2);
    assert!(err.contains("--grant") && err.contains("colour"), "{err}");
    let (code, _, err) = issue(&["--grant", "id=g,rules=r,reason=x"]);
    assert_eq!(code, 2);
    assert!(err.contains("approved_by"), "{err}");
    let (code, _, err) = issue(&[
        "--ttl",
        "1h",
        "--grant",
        "id=g,rules=r,ttl=2h,reason=x,approved_by=b",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("outlive"), "{err}");
    // Not a SPIFFE path segment.
    let (code, _, err) = run(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--identity",
            "a/b",
            "--out",
            "a",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("--identity"), "{err}");
    // Nothing was written by any refusal.
    assert!(!dir.join("a.pem").exists() && !dir.join("a.key").exists());
    // Not a CA directory.
    let (code, _, err) = run(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "nope",
            "--identity",
            "alice",
            "--out",
            "a",
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("nope") && err.contains("--dir"), "{err}");
}

#[test]
fn revoke_by_serial_and_by_identity_then_the_crl_lists_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    for (who, out) in [("alice", "alice1"), ("alice", "alice2"), ("bob", "bob")] {
        ok(
            dir,
            &[
                "ca",
                "issue",
                "--dir",
                "ca",
                "--identity",
                who,
                "--out",
                out,
            ],
        );
    }
    let bob = serial_of(dir, "bob.pem");
    let alice1 = serial_of(dir, "alice1.pem");
    let alice2 = serial_of(dir, "alice2.pem");

    // By serial, in OpenSSL's uppercase form.
    let out = ok(
        dir,
        &[
            "ca",
            "revoke",
            "--dir",
            "ca",
            "--serial",
            &bob,
            "--reason",
            "key-compromise",
        ],
    );
    assert!(out.contains("revoked") && out.contains("(bob,"), "{out}");
    // Again: reported, not an error.
    let out = ok(dir, &["ca", "revoke", "--dir", "ca", "--serial", &bob]);
    assert!(out.contains("already revoked"), "{out}");
    // A serial this CA never issued is refused (a typo must not pass for a revocation).
    let (code, _, err) = run(dir, &["ca", "revoke", "--dir", "ca", "--serial", "0abc"]);
    assert_eq!(code, 2);
    assert!(err.contains("--allow-unknown-serial"), "{err}");
    // By identity: every live certificate alice holds.
    let out = ok(
        dir,
        &[
            "ca",
            "revoke",
            "--dir",
            "ca",
            "--identity",
            "alice",
            "--reason",
            "affiliation-changed",
        ],
    );
    assert_eq!(out.matches("revoked ").count(), 2, "{out}");
    // An identity never issued to is an error, not a silent no-op.
    let (code, _, err) = run(
        dir,
        &["ca", "revoke", "--dir", "ca", "--identity", "mallory"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("mallory"), "{err}");
    // One of --serial / --identity is required.
    let (code, _, _) = run(dir, &["ca", "revoke", "--dir", "ca"]);
    assert_eq!(code, 2);

    let out = ok(dir, &["ca", "crl", "--dir", "ca", "--out", "revoked"]);
    assert!(out.contains("3 revoked"), "{out}");
    let text = openssl(
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            "revoked.crl",
            "-noout",
            "-text",
        ],
        dir,
    );
    for serial in [&bob, &alice1, &alice2] {
        assert!(
            text.contains(&format!("Serial Number: {serial}")),
            "{serial} not in {text}"
        );
    }
    assert!(text.contains("Key Compromise"), "{text}");
    assert!(text.contains("Affiliation Changed"), "{text}");
    // The PEM form carries the same CRL, signed by the CA.
    openssl(
        &[
            "crl",
            "-in",
            "revoked.crl.pem",
            "-noout",
            "-CAfile",
            "ca/ca.pem",
        ],
        dir,
    );
    let (code, _, err) = run(dir, &["ca", "crl", "--dir", "ca", "--out", "revoked.crl"]);
    assert_eq!(code, 2);
    assert!(err.contains("prefix"), "{err}");
}

#[test]
fn an_intermediate_ca_hands_out_its_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_ca(dir);
    let out = ok(
        dir,
        &[
            "ca",
            "init",
            "--dir",
            "ica",
            "--parent-cert",
            "ca/ca.pem",
            "--parent-key",
            "ca/ca.key",
            "--key-type",
            "ed25519",
        ],
    );
    assert!(out.contains("intermediate CA"), "{out}");
    assert!(
        !std::fs::read_to_string(dir.join("ica/ca.key"))
            .unwrap()
            .contains(&std::fs::read_to_string(dir.join("ca/ca.key")).unwrap()),
        "the root key is not copied"
    );
    ok(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "ica",
            "--identity",
            "dave",
            "--out",
            "dave",
        ],
    );
    let pem = std::fs::read_to_string(dir.join("dave.pem")).unwrap();
    assert_eq!(
        pem.matches("BEGIN CERTIFICATE").count(),
        3,
        "leaf + intermediate + root"
    );
    openssl(
        &[
            "verify",
            "-CAfile",
            "ca/ca.pem",
            "-untrusted",
            "ica/ca.pem",
            "dave.pem",
        ],
        dir,
    );
    // --parent-cert without --parent-key is a usage error.
    let (code, _, err) = run(
        dir,
        &["ca", "init", "--dir", "x", "--parent-cert", "ca/ca.pem"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("--parent-key"), "{err}");
}

// --------------------------------------------------------------------------------------
// renew, against a stub of the gateway's endpoint
// --------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Mode {
    /// Sign the CSR for the caller's identity with this lifetime, keeping grants and session.
    Sign { ttl: Duration },
    /// Answer 403 with the gateway's JSON error body.
    Refuse,
    /// Trust another CA for client certificates: the handshake refuses the client.
    ForeignClientCa,
}

struct Stub {
    addr: SocketAddr,
    renewals: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn stub(ca_dir: &Path, mode: Mode) -> Stub {
    use rustls::server::WebPkiClientVerifier;
    let store = Arc::new(CaStore::open(ca_dir).unwrap());
    let now = OffsetDateTime::now_utc();
    let server = store
        .issue_server(&["localhost"], &[], Duration::hours(1), now)
        .unwrap();
    let provider = postern_gateway::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    let anchor = match mode {
        Mode::ForeignClientCa => {
            postern_pki::Ca::generate_root("other", "other.org", Default::default(), now)
                .unwrap()
                .cert_der()
                .to_vec()
        }
        _ => store.ca().cert_der().to_vec(),
    };
    roots.add(anchor.into()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            postern_pki::certs_from_pem(&server.cert_pem).unwrap(),
            postern_pki::private_key_from_pem(&server.key_pem).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let renewals = Arc::new(AtomicUsize::new(0));
    let count = renewals.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let store = store.clone();
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                let svc = hyper::service::service_fn(move |req| {
                    let (store, peer, count) = (store.clone(), peer.clone(), count.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            answer(&store, &peer, mode, &count, req).await,
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Stub {
        addr,
        renewals,
        task,
    }
}

async fn answer(
    store: &CaStore,
    peer: &[u8],
    mode: Mode,
    count: &AtomicUsize,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    assert_eq!(req.method(), hyper::Method::POST);
    assert_eq!(req.uri().path(), "/v1/certs/renew");
    assert_eq!(req.headers()["content-type"], "application/pkcs10");
    let csr = req.into_body().collect().await.unwrap().to_bytes();
    let csr = String::from_utf8(csr.to_vec()).unwrap();
    assert!(csr.contains("BEGIN CERTIFICATE REQUEST"), "{csr}");
    let ttl = match mode {
        Mode::Refuse => {
            return hyper::Response::builder()
                .status(403)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":"the certificate is revoked","request_id":"req-4711"}"#,
                )))
                .unwrap();
        }
        Mode::Sign { ttl } => ttl,
        Mode::ForeignClientCa => unreachable!("the handshake refuses the client"),
    };
    let now = OffsetDateTime::now_utc();
    let id = postern_pki::client_identity(peer, store.ca().trust_domain(), now).unwrap();
    let (kind, name) = match id.principal.strip_prefix("service/") {
        Some(name) => (Kind::Service, name.to_string()),
        None => (Kind::User, id.principal.clone()),
    };
    let mut request = ClientCertRequest::new(name, kind, ttl)
        .with_grants(postern_pki::grants_from_cert(peer).unwrap());
    if let Some(start) = postern_pki::session_started_at(peer).unwrap() {
        request = request.continuing_session(start);
    }
    let issued = store.sign_client_csr(&csr, &request, now).unwrap();
    count.fetch_add(1, Ordering::SeqCst);
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/pem-certificate-chain")
        .body(Full::new(Bytes::from(format!(
            "{}{}",
            issued.cert_pem,
            store.chain_pem()
        ))))
        .unwrap()
}

/// A CA in `dir/ca` and a client directory `dir/client` holding alice.pem/.key (with a
/// grant) and the CA certificate as ca.pem, the layout `--ca` defaults to.
fn client_dir(dir: &Path, ttl: &str) -> PathBuf {
    init_ca(dir);
    let client = dir.join("client");
    std::fs::create_dir(&client).unwrap();
    ok(
        dir,
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--identity",
            "alice",
            "--ttl",
            ttl,
            "--grant",
            "id=reports-batch,rules=reports-batch,reason=nightly,approved_by=bob",
            "--out",
            "client/alice",
        ],
    );
    std::fs::copy(dir.join("ca/ca.pem"), client.join("ca.pem")).unwrap();
    client
}

async fn renew_cmd(client: &Path, stub: &Stub, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern"));
    cmd.current_dir(client)
        .args([
            "ca",
            "renew",
            "--cert",
            "alice.pem",
            "--key",
            "alice.key",
            "--gateway",
            &format!("https://localhost:{}", stub.addr.port()),
        ])
        .args(extra)
        .kill_on_drop(true);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_replaces_certificate_and_key_keeping_identity_and_grants() {
    let tmp = tempfile::tempdir().unwrap();
    let client = client_dir(tmp.path(), "8h");
    let stub = stub(
        &tmp.path().join("ca"),
        Mode::Sign {
            ttl: Duration::hours(8),
        },
    )
    .await;
    let old_serial = serial_of(&client, "alice.pem");
    let old_key = std::fs::read(client.join("alice.key")).unwrap();

    let out = renew_cmd(&client, &stub, &[]).await.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(stub.renewals.load(Ordering::SeqCst), 1);

    let new_serial = serial_of(&client, "alice.pem");
    assert_ne!(new_serial, old_serial);
    assert!(
        stdout.contains(&format!(
            "renewed {}",
            new_serial.to_lowercase().trim_start_matches("00")
        )) && stdout.contains("valid until"),
        "{stdout}"
    );
    assert_ne!(std::fs::read(client.join("alice.key")).unwrap(), old_key);
    #[cfg(unix)]
    assert_eq!(mode(&client.join("alice.key")), 0o600);
    assert_eq!(
        pubkey_of_cert(&client, "alice.pem"),
        openssl(&["pkey", "-in", "alice.key", "-pubout"], &client)
    );
    let text = openssl(&["x509", "-in", "alice.pem", "-noout", "-text"], &client);
    assert!(
        text.contains("URI:spiffe://postern.local/user/alice"),
        "{text}"
    );
    assert!(text.contains("\"id\":\"reports-batch\""), "{text}");
    openssl(&["verify", "-CAfile", "ca.pem", "alice.pem"], &client);
    // Nothing but the files themselves is left in the directory (no temporaries).
    let mut names: Vec<String> = std::fs::read_dir(&client)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["alice.key", "alice.pem", "ca.pem"]);

    // The renewed certificate renews again (it is what the client presents now).
    let out = renew_cmd(&client, &stub, &[]).await.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stub.renewals.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_renewal_prints_the_gateways_error_and_keeps_the_files() {
    let tmp = tempfile::tempdir().unwrap();
    let client = client_dir(tmp.path(), "8h");
    let stub = stub(&tmp.path().join("ca"), Mode::Refuse).await;
    let cert = std::fs::read(client.join("alice.pem")).unwrap();
    let key = std::fs::read(client.join("alice.key")).unwrap();

    let out = renew_cmd(&client, &stub, &[]).await.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the certificate is revoked"), "{stderr}");
    assert!(stderr.contains("req-4711"), "{stderr}");
    assert!(stderr.contains("403"), "{stderr}");
    assert_eq!(std::fs::read(client.join("alice.pem")).unwrap(), cert);
    assert_eq!(std::fs::read(client.join("alice.key")).unwrap(), key);

    // A gateway that does not accept the client's certificate: refused at the handshake.
    let foreign = self::stub(&tmp.path().join("ca"), Mode::ForeignClientCa).await;
    let out = renew_cmd(&client, &foreign, &[])
        .await
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused the client certificate at the tls handshake"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(client.join("alice.pem")).unwrap(), cert);

    // A gateway that is not trusted by --ca: the handshake fails, files untouched.
    let other = tempfile::tempdir().unwrap();
    init_ca(other.path());
    let out = renew_cmd(
        &client,
        &stub,
        &["--ca", other.path().join("ca/ca.pem").to_str().unwrap()],
    )
    .await
    .output()
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls handshake"), "{stderr}");
    assert_eq!(std::fs::read(client.join("alice.pem")).unwrap(), cert);

    // Plain http is refused before any connection.
    let out = renew_cmd(&client, &stub, &["--gateway", "http://localhost:1"])
        .await
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr.contains("--gateway"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_renews_at_two_thirds_of_the_lifetime_again_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    // With the 60 s not-before backdating, 2/3 of a 30 s certificate's lifetime is already
    // past: the first renewal is due at once, and so is every next one.
    let client = client_dir(tmp.path(), "30s");
    let stub = stub(
        &tmp.path().join("ca"),
        Mode::Sign {
            ttl: Duration::seconds(30),
        },
    )
    .await;
    let first = serial_of(&client, "alice.pem");
    let mut child = renew_cmd(&client, &stub, &["--watch"])
        .await
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stub.renewals.load(Ordering::SeqCst) < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "watch did not renew twice"
        );
        assert!(child.try_wait().unwrap().is_none(), "watch exited early");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
    assert_ne!(serial_of(&client, "alice.pem"), first);
    openssl(&["verify", "-CAfile", "ca.pem", "alice.pem"], &client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retries_then_exits_1_when_the_certificate_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let client = client_dir(tmp.path(), "6s");
    let stub = stub(&tmp.path().join("ca"), Mode::Refuse).await;
    let started = std::time::Instant::now();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        renew_cmd(&client, &stub, &["--watch"]).await.output(),
    )
    .await
    .expect("watch must give up when the certificate expires")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(
        stderr.contains("retrying in 1s") && stderr.contains("retrying in 2s"),
        "{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

// --------------------------------------------------------------------------------------
// renew, against the real gateway (the demo)
// --------------------------------------------------------------------------------------

async fn renew_at(demo: &crate::support::Demo, cert: &str, key: &str) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .current_dir(demo.dir.path())
        .args(["ca", "renew", "--cert", cert, "--key", key])
        .args([
            "--gateway",
            &format!("https://localhost:{}", demo.addr.port()),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_at_the_gateway_then_refused_once_revoked() {
    let demo = crate::support::Demo::start().await;
    let dir = demo.dir.path();
    let first = serial_of(dir, "batch.pem");
    let (code, stdout, stderr) = renew_at(&demo, "batch.pem", "batch.key").await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("renewed "), "{stdout}");
    let renewed = serial_of(dir, "batch.pem");
    assert_ne!(renewed, first);
    // Same identity, same grant, and the new certificate opens the gateway.
    let text = openssl(&["x509", "-in", "batch.pem", "-noout", "-text"], dir);
    assert!(text.contains("\"id\":\"reports-batch\""), "{text}");
    openssl(&["verify", "-CAfile", "ca.pem", "batch.pem"], dir);

    ok(dir, &["ca", "revoke", "--dir", ".", "--serial", &renewed]);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (code, stdout, stderr) = renew_at(&demo, "batch.pem", "batch.key").await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.to_lowercase().contains("revoked"), "{stderr}");
    assert_eq!(serial_of(dir, "batch.pem"), renewed, "files kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_at_the_gateway_is_refused_past_the_maximum_session_age() {
    let demo = crate::support::Demo::start().await;
    let dir = demo.dir.path();
    let store = CaStore::open(dir).unwrap();
    let now = OffsetDateTime::now_utc();
    let req = ClientCertRequest::new("alice", Kind::User, Duration::hours(1))
        .continuing_session(now - Duration::days(8));
    let old = store.issue_client_with(&req, now).unwrap();
    std::fs::write(dir.join("old.pem"), &old.cert_pem).unwrap();
    postern_pki::write_private_key(dir.join("old.key"), &old.key_pem).unwrap();

    let (code, stdout, stderr) = renew_at(&demo, "old.pem", "old.key").await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("HTTP 403") && stderr.contains("session"),
        "{stderr}"
    );
    assert!(stderr.contains("request_id"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("old.pem")).unwrap(),
        old.cert_pem
    );
}
