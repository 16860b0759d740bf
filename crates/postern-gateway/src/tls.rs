//! The TLS listener's configuration: rustls with the aws-lc-rs provider
//! (post-quantum key exchange preferred), ALPN for HTTP/2 and HTTP/1.1, and
//! optional client-certificate verification against configured anchors.
//!
//! Chain validation is rustls/webpki's job; clients without a certificate are
//! allowed through the handshake (`allow_unauthenticated`) because opt-out
//! routes may serve them. Identity, EKU and grant checks happen per request,
//! where audit records and HTTP answers live.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read `{path}`: {reason}")]
    Read { path: String, reason: String },
    #[error("`{path}` holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("client CA `{path}` is not a usable trust anchor: {reason}")]
    BadAnchor { path: String, reason: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// The one crypto provider postern uses everywhere.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Build the server config. `client_cas` empty: no client certificates requested.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_cas: &[std::path::PathBuf],
) -> Result<ServerConfig, TlsError> {
    server_config_with_crls(cert, key, client_cas, Vec::new())
}

/// As [`server_config`], with certificate revocation lists: a client
/// certificate a CRL lists is refused at the handshake. Certificates from
/// anchors without a CRL keep working (their revocation status is unknown,
/// not revoked); postern's own CA always publishes one.
pub fn server_config_with_crls(
    cert: &Path,
    key: &Path,
    client_cas: &[std::path::PathBuf],
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = if client_cas.is_empty() {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for p in client_cas {
            for c in load_certs(p)? {
                roots.add(c).map_err(|e| TlsError::BadAnchor {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
            }
        }
        let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .allow_unauthenticated();
        if !crls.is_empty() {
            vb = vb
                .with_crls(crls)
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let verifier = vb.build().map_err(|e| TlsError::Config(e.to_string()))?;
        builder.with_client_cert_verifier(verifier)
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The admin console's listener: the gateway's certificate, and a client
/// certificate from one of `client_cas` is **required** (no
/// `allow_unauthenticated`: a client without one fails the handshake), with
/// the CA's CRLs as for the gateway. HTTP/1.1 only. Whether the verified
/// identity may use the console is checked per request.
pub fn console_server_config(
    cert: &Path,
    key: &Path,
    client_cas: &[std::path::PathBuf],
    crls: Vec<rustls_pki_types::CertificateRevocationListDer<'static>>,
) -> Result<ServerConfig, TlsError> {
    if client_cas.is_empty() {
        return Err(TlsError::Config(
            "the admin console needs client CAs ([tls] client_ca) to verify admin certificates"
                .to_string(),
        ));
    }
    let provider = provider();
    let chain = load_certs(cert)?;
    let key = load_key(key)?;
    let mut roots = RootCertStore::empty();
    for p in client_cas {
        for c in load_certs(p)? {
            roots.add(c).map_err(|e| TlsError::BadAnchor {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
        }
    }
    let mut vb = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if !crls.is_empty() {
        vb = vb
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let verifier = vb.build().map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
