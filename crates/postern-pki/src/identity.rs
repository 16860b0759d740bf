//! The identity step: what a verified client certificate says about who is calling.
//!
//! Chain building and signature checks belong to rustls/webpki at the handshake (the
//! linkerd `creds/verify.rs` split); this module only decides which name, if any, the
//! end-entity certificate vouches for, and re-checks validity per request because a TLS
//! connection can outlive the certificate it was opened with.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::IdentityError;
use crate::spiffe::{self, SpiffeError};

/// What the gateway learns from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// Who is calling: `<name>` for `spiffe://<td>/user/<name>`, `service/<name>` for
    /// `spiffe://<td>/service/<name>`, or the first SAN DNS name (lowercased) when the
    /// certificate has no SPIFFE ID. Never the subject CN.
    pub principal: String,
    /// `Some("user")` or `Some("service")` from the SPIFFE ID; `None` for a DNS identity.
    pub kind: Option<String>,
    /// The serial number, lowercase hex without separators or leading zero bytes (the form
    /// used by revocation lists and the issuance index).
    pub serial_hex: String,
    /// SHA-256 over the certificate DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The issuer's distinguished name, RFC 4514 style (`CN=postern CA`).
    pub issuer_dn: String,
}

/// Extracts the identity a client certificate (end-entity DER) vouches for at `now`.
///
/// Checks, in order: the DER is exactly one certificate; it is not a CA; its
/// extendedKeyUsage includes clientAuth; `not_before <= now <= not_after`; then identity:
/// a SAN URI with scheme `spiffe` must be a well-formed postern SPIFFE ID of `trust_domain`
/// (URIs of other schemes are ignored); failing a SPIFFE ID, the first SAN DNS name is the
/// principal; the subject CN never is.
pub fn client_identity(
    cert_der: &[u8],
    trust_domain: &str,
    now: OffsetDateTime,
) -> Result<ClientIdentity, IdentityError> {
    let unparsable = |e: &dyn std::fmt::Display| IdentityError::Unparsable(e.to_string());
    let (rest, cert) = X509Certificate::from_der(cert_der).map_err(|e| unparsable(&e))?;
    if !rest.is_empty() {
        return Err(IdentityError::Unparsable(
            "trailing bytes after the certificate".into(),
        ));
    }

    let is_ca = cert
        .basic_constraints()
        .map_err(|e| unparsable(&e))?
        .is_some_and(|bc| bc.value.ca);
    if is_ca {
        return Err(IdentityError::CaCertificate);
    }

    let client_auth = cert
        .extended_key_usage()
        .map_err(|e| unparsable(&e))?
        .is_some_and(|eku| eku.value.client_auth);
    if !client_auth {
        return Err(IdentityError::NotClientAuth);
    }

    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if now < not_before {
        return Err(IdentityError::NotYetValid { not_before, now });
    }
    if now > not_after {
        return Err(IdentityError::Expired { not_after, now });
    }

    let (principal, kind) = principal(&cert, trust_domain)?;
    Ok(ClientIdentity {
        principal,
        kind,
        serial_hex: normalize_serial_bytes(cert.raw_serial()),
        fingerprint_sha256: fingerprint_sha256(cert_der),
        not_before,
        not_after,
        issuer_dn: cert.issuer().to_string(),
    })
}

fn principal(
    cert: &X509Certificate<'_>,
    trust_domain: &str,
) -> Result<(String, Option<String>), IdentityError> {
    let sans = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let names = sans
        .map(|ext| ext.value.general_names.as_slice())
        .unwrap_or_default();

    let mut spiffe_uri = None;
    let mut first_dns = None;
    for name in names {
        match name {
            GeneralName::URI(uri) if spiffe::is_spiffe_uri(uri) => {
                // An X509-SVID has exactly one SPIFFE ID; choosing among several would make
                // identity depend on SAN order.
                let previous = spiffe_uri.replace(*uri);
                if previous.is_some() {
                    return Err(IdentityError::AmbiguousSpiffeId);
                }
            }
            GeneralName::DNSName(dns) if first_dns.is_none() => first_dns = Some(*dns),
            _ => {}
        }
    }

    if let Some(uri) = spiffe_uri {
        let id = spiffe::parse(uri, trust_domain).map_err(|e| match e {
            SpiffeError::Malformed(reason) => IdentityError::MalformedSpiffeId {
                uri: uri.to_owned(),
                reason,
            },
            SpiffeError::ForeignTrustDomain(found) => IdentityError::ForeignTrustDomain {
                uri: uri.to_owned(),
                found: found.to_owned(),
                expected: trust_domain.to_owned(),
            },
        })?;
        let principal = match id.kind {
            crate::Kind::User => id.name.to_owned(),
            crate::Kind::Service => format!("service/{}", id.name),
        };
        return Ok((principal, Some(id.kind.segment().to_owned())));
    }

    if let Some(dns) = first_dns {
        if !is_plain_dns_name(dns) {
            return Err(IdentityError::MalformedDnsName(dns.to_owned()));
        }
        return Ok((dns.to_ascii_lowercase(), None));
    }

    if cert.subject().iter_common_name().next().is_some() {
        return Err(IdentityError::IdentityOnlyInCn);
    }
    Err(IdentityError::NoIdentity)
}

/// A DNS name usable as a principal: non-empty, at most 253 bytes, letters, digits, `.`,
/// `-`, `_`, no empty labels. Wildcards are refused: `*.example.com` names a set of hosts,
/// not a caller.
fn is_plain_dns_name(dns: &str) -> bool {
    !dns.is_empty()
        && dns.len() <= 253
        && dns.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
        })
}

/// SHA-256 over `der`, lowercase hex: the certificate's fingerprint as `openssl x509
/// -fingerprint -sha256` shows it (without colons).
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Lowercase hex of a DER INTEGER's content bytes without leading zero bytes (one zero
/// byte is kept for the value 0). This is the one serial form used across the crate.
pub(crate) fn normalize_serial_bytes(bytes: &[u8]) -> String {
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    hex::encode(bytes.get(first..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Ca, KeyAlg, Kind};
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
    use time::{macros::datetime, Duration};

    const TD: &str = "example.org";
    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn ca() -> Ca {
        Ca::generate_root("postern test CA", TD, KeyAlg::EcdsaP256, NOW).unwrap()
    }

    /// A certificate built with rcgen directly, signed by `ca`, with clientAuth EKU.
    fn custom_client(ca: &Ca, edit: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.not_before = NOW - Duration::minutes(1);
        params.not_after = NOW + Duration::hours(1);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        edit(&mut params);
        params.signed_by(&key, ca.issuer()).unwrap().der().to_vec()
    }

    #[test]
    fn issued_user_certificate_reads_back_as_its_name() {
        let ca = ca();
        let issued = ca
            .issue_client("alice", Kind::User, Duration::hours(8), NOW)
            .unwrap();
        let id = client_identity(&issued.cert_der, TD, NOW).unwrap();
        assert_eq!(id.principal, "alice");
        assert_eq!(id.kind.as_deref(), Some("user"));
        assert_eq!(id.serial_hex.len(), 32);
        assert_eq!(id.fingerprint_sha256, fingerprint_sha256(&issued.cert_der));
        assert_eq!(id.not_before, NOW - Duration::seconds(60));
        assert_eq!(id.not_after, NOW + Duration::hours(8));
        assert_eq!(id.issuer_dn, "CN=postern test CA");
    }

    #[test]
    fn service_principal_is_prefixed_so_it_cannot_pose_as_a_user() {
        let ca = ca();
        let issued = ca
            .issue_client("alice", Kind::Service, Duration::hours(1), NOW)
            .unwrap();
        let id = client_identity(&issued.cert_der, TD, NOW).unwrap();
        assert_eq!(id.principal, "service/alice");
        assert_eq!(id.kind.as_deref(), Some("service"));
    }

    #[test]
    fn server_certificate_is_not_a_client_identity() {
        let ca = ca();
        let server = ca
            .issue_server(&["gw.example.org"], &[], Duration::hours(1), NOW)
            .unwrap();
        assert_eq!(
            client_identity(&server.cert_der, TD, NOW),
            Err(IdentityError::NotClientAuth)
        );
    }

    #[test]
    fn certificate_without_eku_is_not_a_client_identity() {
        let ca = ca();
        let der = custom_client(&ca, |p| {
            p.extended_key_usages.clear();
            p.subject_alt_names = vec![SanType::URI(
                "spiffe://example.org/user/a".try_into().unwrap(),
            )];
        });
        assert_eq!(
            client_identity(&der, TD, NOW),
            Err(IdentityError::NotClientAuth)
        );
    }

    #[test]
    fn ca_certificate_is_not_a_client_identity() {
        let ca = ca();
        assert_eq!(
            client_identity(ca.cert_der(), TD, NOW),
            Err(IdentityError::CaCertificate)
        );
    }

    #[test]
    fn identity_only_in_cn_is_refused() {
        let ca = ca();
        let der = custom_client(&ca, |p| {
            p.distinguished_name.push(DnType::CommonName, "alice");
        });
        let err = client_identity(&der, TD, NOW).unwrap_err();
        assert_eq!(err, IdentityError::IdentityOnlyInCn);
        assert_eq!(
            err.to_string(),
            "the certificate names its identity only in the subject CN; postern requires a SAN URI or DNS name"
        );
    }

    #[test]
    fn no_name_at_all_is_refused() {
        let ca = ca();
        let der = custom_client(&ca, |_| {});
        assert_eq!(
            client_identity(&der, TD, NOW),
            Err(IdentityError::NoIdentity)
        );
    }

    #[test]
    fn other_trust_domain_is_refused() {
        let other = Ca::generate_root("other", "evil.org", KeyAlg::EcdsaP256, NOW).unwrap();
        let issued = other
            .issue_client("alice", Kind::User, Duration::hours(1), NOW)
            .unwrap();
        assert!(matches!(
            client_identity(&issued.cert_der, TD, NOW),
            Err(IdentityError::ForeignTrustDomain { found, .. }) if found == "evil.org"
        ));
    }

    #[test]
    fn malformed_spiffe_id_is_refused_even_with_a_dns_fallback() {
        let ca = ca();
        let der = custom_client(&ca, |p| {
            p.subject_alt_names = vec![
                SanType::URI("spiffe://example.org/admin/alice".try_into().unwrap()),
                SanType::DnsName("alice.example.org".try_into().unwrap()),
            ];
        });
        assert!(matches!(
            client_identity(&der, TD, NOW),
            Err(IdentityError::MalformedSpiffeId { .. })
        ));
    }

    #[test]
    fn two_spiffe_ids_are_ambiguous() {
        let ca = ca();
        let der = custom_client(&ca, |p| {
            p.subject_alt_names = vec![
                SanType::URI("spiffe://example.org/user/alice".try_into().unwrap()),
                SanType::URI("spiffe://example.org/user/bob".try_into().unwrap()),
            ];
        });
        assert_eq!(
            client_identity(&der, TD, NOW),
            Err(IdentityError::AmbiguousSpiffeId)
        );
    }

    #[test]
    fn dns_name_is_the_fallback_and_other_uri_schemes_are_ignored() {
        let ca = ca();
        let der = custom_client(&ca, |p| {
            p.distinguished_name.push(DnType::CommonName, "mallory");
            p.subject_alt_names = vec![
                SanType::URI("https://example.org/user/mallory".try_into().unwrap()),
                SanType::DnsName("Build-Agent.example.org".try_into().unwrap()),
                SanType::DnsName("second.example.org".try_into().unwrap()),
            ];
        });
        let id = client_identity(&der, TD, NOW).unwrap();
        assert_eq!(id.principal, "build-agent.example.org");
        assert_eq!(id.kind, None);
    }

    #[test]
    fn wildcard_dns_name_is_not_a_principal() {
        let ca = ca();
        let der = custom_client(&ca, |p| {
            p.subject_alt_names = vec![SanType::DnsName("*.example.org".try_into().unwrap())];
        });
        assert!(matches!(
            client_identity(&der, TD, NOW),
            Err(IdentityError::MalformedDnsName(_))
        ));
    }

    #[test]
    fn expired_and_not_yet_valid_are_refused_at_request_time() {
        let ca = ca();
        let issued = ca
            .issue_client("alice", Kind::User, Duration::hours(1), NOW)
            .unwrap();
        assert!(client_identity(&issued.cert_der, TD, NOW + Duration::hours(1)).is_ok());
        assert!(matches!(
            client_identity(
                &issued.cert_der,
                TD,
                NOW + Duration::hours(1) + Duration::seconds(1)
            ),
            Err(IdentityError::Expired { .. })
        ));
        assert!(matches!(
            client_identity(&issued.cert_der, TD, NOW - Duration::minutes(2)),
            Err(IdentityError::NotYetValid { .. })
        ));
    }

    #[test]
    fn garbage_and_trailing_bytes_are_unparsable() {
        assert!(matches!(
            client_identity(b"not a certificate", TD, NOW),
            Err(IdentityError::Unparsable(_))
        ));
        let ca = ca();
        let mut der = ca
            .issue_client("alice", Kind::User, Duration::hours(1), NOW)
            .unwrap()
            .cert_der;
        der.push(0);
        assert!(matches!(
            client_identity(&der, TD, NOW),
            Err(IdentityError::Unparsable(_))
        ));
    }

    #[test]
    fn ed25519_ca_issues_usable_client_certificates() {
        let ca = Ca::generate_root("ed CA", TD, KeyAlg::Ed25519, NOW).unwrap();
        let issued = ca
            .issue_client("bob", Kind::User, Duration::hours(1), NOW)
            .unwrap();
        assert_eq!(
            client_identity(&issued.cert_der, TD, NOW)
                .unwrap()
                .principal,
            "bob"
        );
    }

    #[test]
    fn serial_normalization_strips_sign_bytes() {
        assert_eq!(normalize_serial_bytes(&[0x00, 0x80, 0x01]), "8001");
        assert_eq!(normalize_serial_bytes(&[0x00]), "00");
        assert_eq!(normalize_serial_bytes(&[0x7f]), "7f");
    }
}
