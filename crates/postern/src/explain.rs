//! `postern explain`: what the gateway would decide for a request, and why.
//! A thin shell over the same authenticators and the same pure `decide()`
//! the gateway runs.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use postern_gateway::authn::{Authenticator, JwtVerifier, PeerCert};
use postern_policy::{decide, AuthVia, Condition, RequestFacts, Verdict};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::json;
use time::OffsetDateTime;

#[derive(Args)]
pub struct ExplainArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long, default_value = "GET")]
    method: String,
    /// `https://host[:port]/path?query`, or just `/path?query` (host `localhost`).
    #[arg(long)]
    url: String,
    /// The client address.
    #[arg(long, default_value = "127.0.0.1")]
    peer: IpAddr,
    /// Client certificate (PEM; chain after the leaf is allowed).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Bearer token.
    #[arg(long)]
    jwt: Option<String>,
    /// TLS version the client negotiated (`1.2` scores `old_tls`).
    #[arg(long, default_value = "1.3", value_parser = ["1.2", "1.3"])]
    tls_version: String,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

pub async fn run(a: ExplainArgs) -> Result<ExitCode> {
    let (config, policy) = crate::load_policy(&a.config)?;
    let now = OffsetDateTime::now_utc();

    let (host, target) = split_url(&a.url)?;
    let (path, _query) = postern_policy::split_target(&target)
        .map_err(|e| anyhow::anyhow!("400 bad request: ambiguous path `{target}`: {e}"))?;

    let trust_domain = config
        .tls
        .trust_domain
        .clone()
        .unwrap_or_else(|| "postern.local".to_string());
    let cert = match &a.cert {
        None => PeerCert::None,
        Some(p) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                .with_context(|| format!("reading `{}`", p.display()))?
                .collect::<Result<_, _>>()
                .with_context(|| format!("parsing `{}`", p.display()))?;
            match verify_chain(&config, &chain) {
                Ok(()) => PeerCert::from_chain(Some(&chain), &trust_domain, now),
                Err(reason) => PeerCert::Invalid {
                    reason: format!("the TLS handshake would refuse this certificate: {reason}"),
                    serial: None,
                    fingerprint: chain
                        .first()
                        .map(|c| postern_pki::fingerprint_sha256(c.as_ref()))
                        .unwrap_or_default(),
                },
            }
        }
    };
    let jwt = match &config.jwt {
        Some(j) => match &j.jwks_file {
            Some(f) => Some(JwtVerifier::from_file(j, &config.resolve(f))?),
            None => None,
        },
        None => None,
    };
    let ca = match &config.ca {
        None => None,
        Some(c) => Some(Arc::new(
            postern_gateway::certs::CertAuthority::open(
                &config.resolve(&c.dir),
                time::Duration::hours(
                    i64::try_from(c.max_session_age_hours).unwrap_or(i64::MAX / 3600),
                ),
                c.renewal,
            )
            .map_err(|e| anyhow::anyhow!(e))?,
        )),
    };
    let authn = Authenticator { jwt, ca };
    let header = a.jwt.as_ref().map(|t| format!("Bearer {t}"));
    let authz: Vec<&[u8]> = header.iter().map(|h| h.as_bytes()).collect();
    let (identity, creds) = authn.authenticate(&cert, &authz, now);

    // The risk score as a freshly started gateway would compute it for this
    // request: source lists, TLS version and time windows are known here;
    // recent rates, failures, opt-out uses and seen devices are not (an
    // empty state: the certificate is a new device, the request is the
    // first one counted).
    let risk = policy.risk().map(|model| {
        let state = postern_gateway::risk::RiskState::new(16);
        let rules = postern_gateway::risk::candidate_rules(&policy, &host, &a.method, &path);
        let device = if identity.verified.contains(postern_policy::Factor::Mtls) {
            creds.cert_fingerprint.as_deref()
        } else {
            None
        };
        let tls_version = format!("TLSv{}", a.tls_version);
        let obs = postern_gateway::risk::Observation {
            source: a.peer,
            identity: identity.principal.as_deref(),
            device,
            tls_version: &tls_version,
            rules: &rules,
        };
        state.assess(model, &obs, now)
    });
    let facts = RequestFacts {
        method: &a.method,
        host: &host,
        path: &path,
        peer: a.peer,
        upgrade: false,
        risk: risk.as_ref().map_or(0, |(_, score)| score.total),
    };
    let d = decide(&policy, &facts, &identity, now);
    let (status, verdict) = match &d.verdict {
        Verdict::Allow {
            via: AuthVia::Authenticated(f),
        } => (200, format!("allow (authenticated: {f})")),
        Verdict::Allow {
            via: AuthVia::OptOut { rule, waived, .. },
        } => (
            200,
            format!("allow through opt-out `{rule}` (waives {waived})"),
        ),
        Verdict::Challenge { accepted } => (
            401,
            format!(
                "challenge: authenticate with {}",
                accepted
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        ),
        Verdict::StepUp { acr_values } => (
            401,
            format!(
                "step up: sign in again with acr {}",
                acr_values.join(" or ")
            ),
        ),
        Verdict::Forbidden => (403, "forbidden".to_string()),
        Verdict::NoRoute => (404, "no route".to_string()),
    };
    let condition = d.condition.as_ref().map(|c| match c {
        Condition::WebhookSignature(spec) => format!(
            "only if the body carries a valid HMAC-SHA256 signature in `{}` (timestamp in `{}`)",
            spec.signature_header, spec.timestamp_header
        ),
    });
    let invalid: Vec<String> = identity
        .invalid
        .iter()
        .map(|i| format!("{}: {}", i.factor, i.reason))
        .collect();
    if a.json {
        let out = json!({
            "status": status,
            "verdict": verdict,
            "route": d.route.as_deref(),
            "rule": d.rule.as_deref(),
            "grant": d.grant.as_deref(),
            "normalized_path": path.as_str(),
            "identity": identity.principal,
            "verified_factors": identity.verified.to_string(),
            "invalid_credentials": invalid,
            "cert_serial": creds.cert_serial,
            "condition": condition,
            "fallback_if_audit_or_condition_fails": d.fallback.as_ref().map(|f| format!("{:?}", f.verdict)),
            "risk": risk.as_ref().map(|(signals, score)| postern_gateway::risk::audit_json(signals, score)),
            "reasons": d.reasons,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{} {} → {status} {verdict}", a.method, path);
        println!("  route:     {}", d.route.as_deref().unwrap_or("-"));
        println!("  rule:      {}", d.rule.as_deref().unwrap_or("-"));
        if let Some(g) = &d.grant {
            println!("  grant:     {g} (signed into the client certificate)");
        }
        println!(
            "  identity:  {} (verified: {})",
            identity.principal.as_deref().unwrap_or("-"),
            identity.verified
        );
        for i in &invalid {
            println!("  invalid:   {i}");
        }
        if let Some(c) = &condition {
            println!("  condition: {c}");
        }
        if let Some(f) = &d.fallback {
            println!(
                "  fallback:  {:?} (if the audit record cannot be written or the condition fails)",
                f.verdict
            );
        }
        if let Some((_, score)) = &risk {
            println!(
                "  risk:      {} of 100 (from an empty signal state)",
                score.total
            );
            for (signal, points) in &score.contributions {
                println!("    + {points:>3} {signal}");
            }
        }
        println!("  why:");
        for r in &d.reasons {
            println!("    - {r}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn split_url(url: &str) -> Result<(String, String)> {
    if url.starts_with('/') {
        return Ok(("localhost".to_string(), url.to_string()));
    }
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        bail!("--url must be `https://host/path` or `/path`");
    };
    let (authority, target) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let auth: http::uri::Authority = authority
        .parse()
        .with_context(|| format!("bad host in `{url}`"))?;
    Ok((
        auth.host()
            .trim_matches(|c| c == '[' || c == ']')
            .to_ascii_lowercase(),
        target,
    ))
}

/// The same chain check the TLS handshake makes.
fn verify_chain(
    config: &postern_policy::Config,
    chain: &[CertificateDer<'static>],
) -> std::result::Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("no certificate in the file".to_string());
    };
    let mut roots = rustls::RootCertStore::empty();
    for p in &config.tls.client_ca {
        let certs =
            postern_gateway::tls::load_certs(&config.resolve(p)).map_err(|e| e.to_string())?;
        for c in certs {
            roots.add(c).map_err(|e| e.to_string())?;
        }
    }
    if roots.is_empty() {
        return Err("mTLS is not configured ([tls] client_ca is empty)".to_string());
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        postern_gateway::tls::provider(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
