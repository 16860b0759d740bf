//! Certificate signing requests: the requester proves it holds a key; the CA decides
//! everything else.

use rcgen::{CertificateSigningRequestParams, PublicKey, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

use crate::error::PkiError;

/// The public key of a PKCS#10 request (PEM) whose self-signature verifies.
///
/// Refused: unparsable or badly signed requests, keys other than ECDSA P-256 / Ed25519, and
/// any request whose SubjectPublicKeyInfo would not be copied into the certificate byte for
/// byte (so the certificate is always for exactly the key that signed the request).
pub(crate) fn verified_public_key(csr_pem: &str) -> Result<PublicKey, PkiError> {
    let invalid = |e: &dyn std::fmt::Display| PkiError::InvalidCsr(e.to_string());
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| invalid(&e))?;
    // rcgen verifies the self-signature (proof of possession) while parsing.
    let params = CertificateSigningRequestParams::from_der(&der).map_err(|e| invalid(&e))?;
    let key = params.public_key;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 && key.algorithm() != &rcgen::PKCS_ED25519
    {
        return Err(PkiError::InvalidCsr(
            "the key must be ecdsa p-256 (signed with sha-256) or ed25519".into(),
        ));
    }
    let (rest, csr) = X509CertificationRequest::from_der(&der).map_err(|e| invalid(&e))?;
    if !rest.is_empty() {
        return Err(PkiError::InvalidCsr(
            "trailing bytes after the request".into(),
        ));
    }
    if csr.certification_request_info.subject_pki.raw != key.subject_public_key_info().as_slice() {
        return Err(PkiError::InvalidCsr(
            "the request's public key does not match its signature algorithm".into(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use crate::{client_identity, Ca, ClientCertRequest, KeyAlg, Kind, PkiError};
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, PublicKeyData, SanType,
    };
    use time::macros::datetime;
    use time::{Duration, OffsetDateTime};
    use x509_parser::prelude::parse_x509_certificate;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn greedy_csr(key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, "admin");
        params.subject_alt_names = vec![
            SanType::URI("spiffe://example.org/user/admin".try_into().unwrap()),
            SanType::DnsName("gateway.example.org".try_into().unwrap()),
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    #[test]
    fn csr_names_are_ignored_and_the_key_is_kept() {
        let ca = Ca::generate_root("ca", "example.org", KeyAlg::EcdsaP256, NOW).unwrap();
        let key = KeyPair::generate().unwrap();
        let req = ClientCertRequest::new("alice", Kind::User, Duration::hours(1));
        let issued = ca.sign_client_csr(&greedy_csr(&key), &req, NOW).unwrap();

        let id = client_identity(&issued.cert_der, "example.org", NOW).unwrap();
        assert_eq!(id.principal, "alice");
        assert_eq!(id.serial_hex, issued.serial_hex);
        let (_, cert) = parse_x509_certificate(&issued.cert_der).unwrap();
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let sans = cert.subject_alternative_name().unwrap().unwrap().value;
        assert_eq!(sans.general_names.len(), 1);
        assert!(cert.subject().to_string().contains("alice"));
    }

    #[test]
    fn ed25519_csr_is_accepted() {
        let ca = Ca::generate_root("ca", "example.org", KeyAlg::EcdsaP256, NOW).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let req = ClientCertRequest::new("bob", Kind::Service, Duration::hours(1));
        let issued = ca.sign_client_csr(&greedy_csr(&key), &req, NOW).unwrap();
        let id = client_identity(&issued.cert_der, "example.org", NOW).unwrap();
        assert_eq!(id.principal, "service/bob");
    }

    #[test]
    fn csr_with_a_bad_signature_is_refused() {
        let ca = Ca::generate_root("ca", "example.org", KeyAlg::EcdsaP256, NOW).unwrap();
        let key = KeyPair::generate().unwrap();
        let pem = greedy_csr(&key);
        let mut der = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
            .map(|d: rustls_pki_types::CertificateSigningRequestDer<'static>| d.to_vec())
            .unwrap();
        // The signature BIT STRING is at the end: flip a bit in it.
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let tampered = crate::pem::encode_pem("CERTIFICATE REQUEST", &der);
        let req = ClientCertRequest::new("alice", Kind::User, Duration::hours(1));
        assert!(matches!(
            ca.sign_client_csr(&tampered, &req, NOW),
            Err(PkiError::InvalidCsr(_))
        ));
    }

    #[test]
    fn csr_with_an_unsupported_key_is_refused() {
        let ca = Ca::generate_root("ca", "example.org", KeyAlg::EcdsaP256, NOW).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let req = ClientCertRequest::new("alice", Kind::User, Duration::hours(1));
        assert!(matches!(
            ca.sign_client_csr(&greedy_csr(&key), &req, NOW),
            Err(PkiError::InvalidCsr(_))
        ));
        assert!(matches!(
            ca.sign_client_csr("not a csr", &req, NOW),
            Err(PkiError::InvalidCsr(_))
        ));
    }
}
