//! PEM helpers: turn the PEM files postern writes into the DER types rustls consumes.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::error::PkiError;

/// PEM-encodes `der` under `label` (RFC 7468: base64 in 64-character lines).
pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Every `CERTIFICATE` block in `pem`, in file order (leaf first in a chain file).
///
/// Errors if a block is malformed or if there is no certificate at all: an empty chain is
/// never what a caller meant, and passing one to rustls yields a far less clear error.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: "certificate",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what: "certificate",
            reason: "no `CERTIFICATE` block found".into(),
        });
    }
    Ok(certs)
}

/// The first `CERTIFICATE` block in `pem`, as DER bytes.
pub fn cert_der_from_pem(pem: &str) -> Result<Vec<u8>, PkiError> {
    let mut certs = certs_from_pem(pem)?;
    // `certs_from_pem` never returns an empty vector.
    Ok(certs.swap_remove(0).to_vec())
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub fn private_key_from_pem(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what: "private key",
        reason: e.to_string(),
    })
}

/// Every `X509 CRL` block in `pem`, for `WebPkiClientVerifier::with_crls`.
pub fn crls_from_pem(pem: &str) -> Result<Vec<CertificateRevocationListDer<'static>>, PkiError> {
    CertificateRevocationListDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what: "crl",
            reason: e.to_string(),
        })
}
