//! `postern demo`: one command makes a working gateway in one directory.
//!
//! The directory is reused when present: the CA, the JWT issuer key, the
//! webhook secret and the audit key (and so the audit chain) carry over;
//! short-lived credentials (alice's certificate and token, the server
//! certificate) and `postern.toml` are made afresh each run.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use postern_pki::{CaInitOptions, CaStore, ClientCertRequest, Grant, KeyAlg, Kind};
use time::{Duration, OffsetDateTime};

pub const TRUST_DOMAIN: &str = "postern.demo";
pub const ISSUER: &str = "https://issuer.postern.demo";
pub const AUDIENCE: &str = "postern-demo";

/// An OpenID provider for the demo's browser sign-in (`postern demo --oidc`).
#[derive(Debug, Clone)]
pub struct DemoOidc {
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret; none: a public client (PKCE only).
    pub client_secret_file: Option<std::path::PathBuf>,
    /// Extra trust anchor (PEM) for the provider's TLS certificate.
    pub extra_ca: Option<std::path::PathBuf>,
}

pub async fn run(dir: &Path, listen: SocketAddr, oidc: Option<DemoOidc>) -> Result<()> {
    let now = OffsetDateTime::now_utc();
    prepare_with(dir, listen, now, oidc.as_ref())?;
    let config_path = dir.join("postern.toml");
    let (config, policy) = crate::load_policy(&config_path)?;
    let gw = postern_gateway::start(&config, policy)
        .await
        .with_context(|| format!("starting the demo gateway on {listen} (is the port free? try --listen 127.0.0.1:0)"))?;
    let reloader = postern_gateway::reload::spawn_reloader(
        gw.shared.clone(),
        config_path.clone(),
        postern_gateway::reload::ReloadOptions::default(),
    );
    print_guide(dir, gw.local_addr);
    if let Some(admin) = gw.admin_addr {
        println!("# Prometheus metrics (opt-out uses, decisions, latencies, expiries):");
        println!("curl -s http://{admin}/metrics");
        println!();
    }
    if let Some(console) = gw.console_addr {
        let d = dir.display();
        println!("# The admin console (mTLS: alice's certificate; rules, live opt-out uses, grants with revoke buttons):");
        println!(
            "curl -s --cacert {d}/ca.pem --cert {d}/alice.pem --key {d}/alice.key https://localhost:{}/",
            console.port()
        );
        println!("# in a browser: import alice's certificate (openssl pkcs12 -export -in {d}/alice.pem -inkey {d}/alice.key -out alice.p12) and open https://localhost:{}/", console.port());
        println!();
    }
    println!(
        "postern demo ready on https://localhost:{} (Ctrl-C to stop)",
        gw.local_addr.port()
    );
    crate::shutdown_signal().await;
    reloader.stop().await;
    gw.shutdown().await;
    Ok(())
}

/// Write every file the demo needs into `dir` (without browser sign-in).
pub fn prepare(dir: &Path, listen: SocketAddr, now: OffsetDateTime) -> Result<()> {
    prepare_with(dir, listen, now, None)
}

/// Write every file the demo needs into `dir`; with `oidc`, browsers sign
/// in at that provider and may choose to remember this device for the docs.
pub fn prepare_with(
    dir: &Path,
    listen: SocketAddr,
    now: OffsetDateTime,
    oidc: Option<&DemoOidc>,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating `{}`", dir.display()))?;

    // The CA persists across runs (postern's CA directory layout, in `dir`);
    // everything it issues here is short-lived.
    let store = if dir.join("ca.toml").exists() {
        CaStore::open(dir).context("opening the demo CA")?
    } else if dir.join("ca.pem").exists() {
        anyhow::bail!(
            "`{}` holds a CA from an older demo without ca.toml; remove the directory and run the demo again",
            dir.display()
        );
    } else {
        let mut opts = CaInitOptions::new("postern demo CA", TRUST_DOMAIN);
        opts.alg = KeyAlg::EcdsaP256;
        CaStore::init(dir, &opts, now).context("making the demo CA")?
    };
    let server = store
        .issue_server(
            &["localhost"],
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            Duration::hours(24),
            now,
        )
        .context("issuing the server certificate")?;
    write(&dir.join("server.pem"), &server.cert_pem)?;
    postern_pki::write_private_key(dir.join("server.key"), &server.key_pem)
        .context("writing server.key")?;
    let alice = store
        .issue_client("alice", Kind::User, Duration::hours(8), now)
        .context("issuing alice's certificate")?;
    write(&dir.join("alice.pem"), &alice.cert_pem)?;
    postern_pki::write_private_key(dir.join("alice.key"), &alice.key_pem)
        .context("writing alice.key")?;
    // The nightly batch job: a service certificate carrying a signed grant
    // that waives the JWT factor on the reports route, and nothing else.
    let grant = Grant {
        id: "reports-batch".to_string(),
        rules: vec!["reports-batch".to_string()],
        waives: vec!["jwt".to_string()],
        not_after: now + Duration::hours(8),
        reason: "nightly reports export runs without a user token".to_string(),
        approved_by: "platform-team".to_string(),
    };
    let batch = store
        .issue_client_with(
            &ClientCertRequest::new("batch", Kind::Service, Duration::hours(8))
                .with_grants(vec![grant]),
            now,
        )
        .context("issuing the batch certificate")?;
    write(&dir.join("batch.pem"), &batch.cert_pem)?;
    postern_pki::write_private_key(dir.join("batch.key"), &batch.key_pem)
        .context("writing batch.key")?;

    // The demo's own JWT issuer: an Ed25519 key, its JWKS, a token for alice.
    let jwt_key_path = dir.join("jwt-issuer.key");
    let jwt_key = if jwt_key_path.exists() {
        ed25519_dalek::SigningKey::from_pkcs8_pem(&read(&jwt_key_path)?)
            .context("reading jwt-issuer.key")?
    } else {
        let k = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = k
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .context("encoding the JWT issuer key")?;
        postern_pki::write_private_key(&jwt_key_path, pem.as_str())
            .context("writing jwt-issuer.key")?;
        k
    };
    let kid = "demo-ed25519-1";
    let x =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jwt_key.verifying_key().as_bytes());
    let jwks = serde_json::json!({ "keys": [ { "kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig" } ] });
    write(
        &dir.join("jwks.json"),
        &serde_json::to_string_pretty(&jwks)?,
    )?;
    let token = mint_jwt(&jwt_key, kid, "alice", now, Duration::hours(8))?;
    write(&dir.join("alice.jwt"), &token)?;

    // Webhook secret and audit key persist (so the chain continues).
    let secret_path = dir.join("webhook.secret");
    if !secret_path.exists() {
        let bytes: [u8; 32] = rand::random();
        postern_pki::write_private_key(&secret_path, &hex::encode(bytes))
            .context("writing webhook.secret")?;
    }
    let audit_key_path = dir.join("audit.key");
    let audit_key = if audit_key_path.exists() {
        postern_audit::read_signing_key(&audit_key_path).context("reading audit.key")?
    } else {
        let k = postern_audit::generate_signing_key();
        postern_audit::write_signing_key(&audit_key_path, &k).context("writing audit.key")?;
        k
    };
    let audit_pub = dir.join("audit.pub");
    if !audit_pub.exists() {
        postern_audit::write_verifying_key(&audit_pub, &audit_key.verifying_key())
            .context("writing audit.pub")?;
    }

    let mut config = config_text(listen, now);
    if let Some(o) = oidc {
        config = with_oidc(&config, o, now);
    }
    write(&dir.join("postern.toml"), &config)?;
    sign_demo_policy(dir, now)?;
    Ok(())
}

/// The demo's two reviewers (keys persist across runs), `reviewers.toml`
/// with quorum 2, and an approvals file in which both sign the current
/// opt-out digest, so the demo policy loads.
fn sign_demo_policy(dir: &Path, now: OffsetDateTime) -> Result<()> {
    use postern_review::reviewers::{read_signing_key, write_keypair};
    let mut reviewers = String::from(
        "# Who must approve opt-out changes (postern policy approve), and how many.\nquorum = 2\n",
    );
    let mut keys = Vec::new();
    for (id, name) in [
        ("reviewer-1", "Demo Reviewer One"),
        ("reviewer-2", "Demo Reviewer Two"),
    ] {
        let key_path = dir.join(format!("{id}.key"));
        let key = if key_path.exists() {
            read_signing_key(&key_path)?
        } else {
            let k = postern_review::reviewers::generate_key();
            write_keypair(&dir.join(id), &k)?;
            k
        };
        reviewers.push_str(&format!(
            "\n[[reviewer]]\nid = \"{id}\"\nname = \"{name}\"\npublic_key = \"{}\"\n",
            hex::encode(key.verifying_key().to_bytes())
        ));
        keys.push((id, key));
    }
    write(&dir.join("reviewers.toml"), &reviewers)?;
    let config_path = dir.join("postern.toml");
    let config = postern_policy::Config::load(&config_path).map_err(|d| {
        crate::print_diagnostics(&d);
        anyhow::anyhow!("the demo config does not parse")
    })?;
    let digest = postern_review::digest(&config);
    let approvals: String = keys
        .iter()
        .map(|(id, key)| postern_review::Approval::sign(key, id, &digest, now).to_line() + "\n")
        .collect();
    write(&postern_review::approvals_path(&config_path), &approvals)
}

fn mint_jwt(
    key: &ed25519_dalek::SigningKey,
    kid: &str,
    sub: &str,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<String> {
    let der = key.to_pkcs8_der().context("encoding the JWT issuer key")?;
    let enc = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(kid.to_string());
    let claims = serde_json::json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "iat": now.unix_timestamp(),
        "nbf": now.unix_timestamp() - 60,
        "exp": (now + ttl).unix_timestamp(),
    });
    jsonwebtoken::encode(&header, &claims, &enc).context("signing the demo JWT")
}

/// The demo's policy. Opt-out expiries are 30 days out: within the 90-day
/// maximum `postern check` enforces.
pub fn config_text(listen: SocketAddr, now: OffsetDateTime) -> String {
    let expires = (now + Duration::days(30))
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2000-01-01T00:00:00Z".to_string());
    format!(
        r#"# postern demo configuration (rewritten by each `postern demo` run).
# Serve it yourself with: postern serve --config postern.toml

[gateway]
listen = "{listen}"

# Prometheus metrics (plain HTTP, loopback only): GET /metrics.
# The admin console: HTTPS that requires a client certificate naming one of
# console_identities (alice's opens it; any other certificate gets 403).
# Port 0 picks a free port; the demo prints the URLs.
[admin]
listen = "127.0.0.1:0"
console_listen = "127.0.0.1:0"
console_identities = ["alice"]

[tls]
cert = "server.pem"
key = "server.key"
client_ca = ["ca.pem"]
trust_domain = "{TRUST_DOMAIN}"

[jwt]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_file = "jwks.json"
algorithms = ["EdDSA"]
leeway_secs = 30

[audit]
path = "audit.jsonl"
signing_key = "audit.key"
checkpoint_every = 1000

# Opt-out changes load only with 2 of the reviewers' signatures over the
# opt-out digest (postern.toml.approvals). Try: postern policy verify --config postern.toml
[review]
reviewers = "reviewers.toml"

# The built-in CA (this directory): revocations (postern ca revoke) take
# effect within a second; certificates renew at POST /v1/certs/renew.
[ca]
dir = "."

[[upstream]]
name = "echo"
url = "builtin:echo"

# Reports need both a certificate and a user token...
[[route]]
id = "reports"
host = "*"
path_prefix = "/reports"
upstream = "echo"
require = [["mtls", "jwt"]]

[[route]]
id = "app"
host = "*"
path_prefix = "/"
upstream = "echo"
require = [["mtls"], ["jwt"]]

# Load balancers probe /healthz from loopback without credentials.
[[optout]]
id = "healthz"
route = "app"
methods = ["GET", "HEAD"]
paths = ["/healthz"]
waive = "all"
owner = "platform-team"
reason = "load-balancer health checks cannot present credentials"
expires = {expires}
source_cidrs = ["127.0.0.0/8", "::1/128"]

# ...except for the batch job, whose certificate carries a signed grant for
# this rule: it may skip the JWT (never the certificate) when it fetches the
# daily and weekly exports.
[[optout]]
id = "reports-batch"
route = "reports"
methods = ["GET"]
paths = ["/reports/daily", "/reports/weekly"]
waive = ["jwt"]
require_grant = true
owner = "data-team"
reason = "the nightly export is a service without a user token"
expires = {expires}

# A third party posts signed webhooks: HMAC-SHA256 over "<timestamp>.<body>".
[[optout]]
id = "demo-webhook"
route = "app"
methods = ["POST"]
paths = ["/webhooks/demo"]
waive = "all"
owner = "payments-team"
reason = "the webhook sender signs with a shared secret instead of mTLS"
expires = {expires}

[optout.webhook]
secret_file = "webhook.secret"
signature_header = "x-postern-signature"
timestamp_header = "x-postern-timestamp"
tolerance_secs = 300
"#
    )
}

fn print_guide(dir: &Path, addr: SocketAddr) {
    let d = dir.display();
    let base = format!("https://localhost:{}", addr.port());
    println!("postern demo: files in {d}");
    println!();
    println!("# 401 without credentials:");
    println!("curl -si --cacert {d}/ca.pem {base}/private");
    println!("# 200 as alice with her client certificate (mTLS):");
    println!("curl -s --cacert {d}/ca.pem --cert {d}/alice.pem --key {d}/alice.key {base}/private");
    println!("# 200 as alice with her bearer token (JWT):");
    println!("curl -s --cacert {d}/ca.pem -H \"Authorization: Bearer $(cat {d}/alice.jwt)\" {base}/private");
    println!("# 200 without credentials: the health-check opt-out (GET/HEAD, loopback only):");
    println!("curl -si --cacert {d}/ca.pem {base}/healthz");
    println!("# 200 for a correctly signed webhook, 401 for a wrong or stale signature:");
    println!(
        "ts=$(date +%s); body='{{\"event\":\"demo\"}}'; sig=$(printf '%s.%s' \"$ts\" \"$body\" | openssl dgst -sha256 -hmac \"$(cat {d}/webhook.secret)\" -r | cut -d' ' -f1); curl -si --cacert {d}/ca.pem -X POST -H \"x-postern-timestamp: $ts\" -H \"x-postern-signature: sha256=$sig\" --data \"$body\" {base}/webhooks/demo"
    );
    println!("# 200 for the batch job: its certificate carries the `reports-batch` grant (alice's does not: 401):");
    println!(
        "curl -s --cacert {d}/ca.pem --cert {d}/batch.pem --key {d}/batch.key {base}/reports/daily"
    );
    println!("# revoke alice's certificates; within a second her requests get 401:");
    println!(
        "cargo run --release -q -- ca revoke --dir {d} --identity alice --reason key-compromise"
    );
    println!("# verify the tamper-evident audit log:");
    println!("cargo run --release -q -- audit verify {d}/audit.jsonl --key {d}/audit.pub");
    println!();
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).with_context(|| format!("reading `{}`", p.display()))
}

fn write(p: &Path, text: &str) -> Result<()> {
    // Write-then-rename so a crash never leaves a half-written file.
    let tmp = p.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("writing `{}`", tmp.display()))?;
    fs::rename(&tmp, p).with_context(|| format!("writing `{}`", p.display()))
}

/// The demo config with browser sign-in: the `[oidc]` section, `oidc` as a
/// third way onto the app route, and a docs route whose users may choose to
/// remember their device for read-only pages (a user-chosen opt-out).
fn with_oidc(config: &str, o: &DemoOidc, now: OffsetDateTime) -> String {
    let expires = (now + Duration::days(30))
        .replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "2000-01-01T00:00:00Z".to_string());
    // Values go into TOML basic strings: escape backslashes and quotes.
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let quote = |p: &Path| esc(&p.display().to_string());
    let mut text = config.replace(
        "require = [[\"mtls\"], [\"jwt\"]]\n",
        "require = [[\"mtls\"], [\"jwt\"], [\"oidc\"]]\n",
    );
    text.push_str(&format!(
        "\n# Browsers sign in at this OpenID provider (authorization code + PKCE).\n[oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\ncookie_key_file = \"oidc-cookie.key\"\npost_logout_redirect_path = \"/\"\n",
        esc(&o.issuer),
        esc(&o.client_id)
    ));
    if let Some(f) = &o.client_secret_file {
        text.push_str(&format!("client_secret_file = \"{}\"\n", quote(f)));
    }
    if let Some(ca) = &o.extra_ca {
        text.push_str(&format!("extra_ca = \"{}\"\n", quote(ca)));
    }
    text.push_str(&format!(
        r#"
# Read-only docs: a signed-in user with MFA may choose to skip signing in
# again on this device for 30 days (consent page, revocable at
# /_postern/me/optouts).
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
expires = {expires}

[optout.offer]
title = "Remember this device for the docs"
disclosure = "On this device, postern will let you read the documentation without signing in again for 30 days. Writing anything still needs you to sign in."
duration_days = 30
require_email_verified = true
require_amr_any = ["mfa", "otp", "hwk"]
"#
    ));
    text
}
