//! Opt-out grants carried inside client certificates ("the certificate wraps the opt-out",
//! DESIGN invariant 5).
//!
//! A grant lives in the certificate's signed TBS, in the non-critical extension
//! [`GRANTS_OID`](crate::GRANTS_OID), so editing it breaks the CA signature: a grant can only
//! be trusted from a certificate whose chain rustls/webpki has verified. The gateway reads it
//! with [`grants_from_cert`] after the handshake, like the identity.
//!
//! Encoding: the extnValue is a DER UTF8String whose content is the *canonical* JSON of
//! `Vec<Grant>`: fields in declaration order, no whitespace, times RFC 3339 in UTC with whole
//! seconds. Decoding refuses unknown fields and any payload that does not re-encode to the
//! same bytes, so one meaning has exactly one encoding.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::whole_seconds;
use crate::error::PkiError;
use crate::extension::{self, PosternExt};

/// Largest grants payload accepted, in bytes: the certificate travels in every handshake.
pub const MAX_GRANTS_PAYLOAD: usize = 8 * 1024;

/// One signed opt-out grant.
///
/// Invariants (checked at issuance by the CA and again by [`grants_from_cert`]): `id`,
/// `reason` and `approved_by` are non-empty; the grant names at least one opt-out rule or
/// waived factor; identifiers use letters, digits, `.`, `-`, `_`, `:`, `/`; `not_after` is
/// whole seconds UTC and never later than the certificate's not-after (a grant cannot
/// outlive the certificate that carries it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Stable identifier of the approval (ticket, change id), for audit records.
    pub id: String,
    /// Ids of the opt-out rules this grant lets the holder use.
    pub rules: Vec<String>,
    /// Authentication factors waived for the holder (e.g. `jwt`).
    pub waives: Vec<String>,
    /// When the grant ends; at most the certificate's not-after.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Why it was granted (free text, for the audit log).
    pub reason: String,
    /// Who approved it.
    pub approved_by: String,
}

const MAX_ID_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 1024;

impl Grant {
    /// Checks the invariants that do not depend on the certificate.
    pub fn validate(&self) -> Result<(), PkiError> {
        let bad = |msg: String| Err(PkiError::InvalidGrant(msg));
        check_id("grant id", &self.id)?;
        for rule in &self.rules {
            check_id("rule id", rule)?;
        }
        for factor in &self.waives {
            check_id("factor name", factor)?;
        }
        if self.rules.is_empty() && self.waives.is_empty() {
            return bad(format!(
                "grant `{}` names no opt-out rule and waives no factor",
                self.id
            ));
        }
        check_text("reason", &self.id, &self.reason)?;
        check_text("approved_by", &self.id, &self.approved_by)?;
        if self.not_after != whole_seconds(self.not_after) || !self.not_after.offset().is_utc() {
            return bad(format!(
                "grant `{}` not_after must be whole seconds in utc",
                self.id
            ));
        }
        Ok(())
    }
}

fn check_id(what: &str, id: &str) -> Result<(), PkiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::InvalidGrant(format!(
            "{what} `{id}` must be 1-128 letters, digits, `.`, `-`, `_`, `:` or `/`"
        )))
    }
}

fn check_text(what: &str, grant: &str, text: &str) -> Result<(), PkiError> {
    if text.trim().is_empty() || text.len() > MAX_TEXT_LEN || text.chars().any(char::is_control) {
        return Err(PkiError::InvalidGrant(format!(
            "grant `{grant}` {what} must be 1-1024 characters without control characters"
        )));
    }
    Ok(())
}

/// Prepares grants for a certificate that expires at `cert_not_after`, issued at `now`:
/// normalizes times to whole seconds UTC, clamps each `not_after` to the certificate's
/// (narrowing a grant is always safe; a grant outliving its carrier would be a lie in the
/// audit log), refuses grants already expired at `now`, duplicate ids, and invalid grants.
pub(crate) fn prepare(
    grants: &[Grant],
    cert_not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> Result<Vec<Grant>, PkiError> {
    let mut out: Vec<Grant> = Vec::with_capacity(grants.len());
    for grant in grants {
        let mut grant = grant.clone();
        grant.not_after = whole_seconds(grant.not_after).min(cert_not_after);
        grant.validate()?;
        if grant.not_after <= now {
            return Err(PkiError::InvalidGrant(format!(
                "grant `{}` has already expired",
                grant.id
            )));
        }
        if out.iter().any(|g| g.id == grant.id) {
            return Err(PkiError::InvalidGrant(format!(
                "grant id `{}` appears twice",
                grant.id
            )));
        }
        out.push(grant);
    }
    Ok(out)
}

/// The extnValue for the grants extension: DER UTF8String of the canonical JSON.
pub(crate) fn encode(grants: &[Grant]) -> Result<Vec<u8>, PkiError> {
    let json = serde_json::to_vec(grants)
        .map_err(|e| PkiError::InvalidGrant(format!("cannot encode grants: {e}")))?;
    if json.len() > MAX_GRANTS_PAYLOAD {
        return Err(PkiError::InvalidGrant(format!(
            "the grants take {} bytes; the limit is {MAX_GRANTS_PAYLOAD}",
            json.len()
        )));
    }
    Ok(extension::tlv(0x0c, &json))
}

fn decode(value: &[u8]) -> Result<Vec<Grant>, PkiError> {
    let bad = |msg: &str| PkiError::InvalidGrant(msg.to_owned());
    let (t, rest) =
        extension::read_tlv(value).ok_or_else(|| bad("the grants extension is not der"))?;
    if t.tag != 0x0c || !rest.is_empty() {
        return Err(bad("the grants extension is not one utf8string"));
    }
    if t.content.len() > MAX_GRANTS_PAYLOAD {
        return Err(bad("the grants extension is too large"));
    }
    let grants: Vec<Grant> = serde_json::from_slice(t.content)
        .map_err(|e| PkiError::InvalidGrant(format!("the grants json is invalid: {e}")))?;
    let canonical = serde_json::to_vec(&grants)
        .map_err(|e| PkiError::InvalidGrant(format!("cannot re-encode grants: {e}")))?;
    if canonical != t.content {
        return Err(bad("the grants json is not in canonical form"));
    }
    Ok(grants)
}

/// The grants carried by a certificate (DER); empty when it carries none.
///
/// This does **not** verify the certificate's signature: call it only on a certificate
/// whose chain was verified (at the handshake, by rustls/webpki), exactly like
/// [`client_identity`](crate::client_identity). It does check every grant's invariants,
/// including `not_after <= certificate not-after`, and refuses a duplicated extension.
pub fn grants_from_cert(cert_der: &[u8]) -> Result<Vec<Grant>, PkiError> {
    let cert = parse(cert_der)?;
    let Some(value) = unique_extension(&cert, PosternExt::Grants)? else {
        return Ok(Vec::new());
    };
    let grants = decode(value)?;
    let cert_not_after = cert.validity().not_after.to_datetime();
    for (i, grant) in grants.iter().enumerate() {
        grant.validate()?;
        if grant.not_after > cert_not_after {
            return Err(PkiError::InvalidGrant(format!(
                "grant `{}` outlives its certificate",
                grant.id
            )));
        }
        if grants.iter().take(i).any(|g| g.id == grant.id) {
            return Err(PkiError::InvalidGrant(format!(
                "grant id `{}` appears twice",
                grant.id
            )));
        }
    }
    Ok(grants)
}

/// When the session this certificate belongs to started: the issuance time of the first
/// certificate in a chain of renewals. `None` for certificates without the session extension
/// (server certificates, certificates from other CAs). Renewal uses it to enforce a maximum
/// session age; like [`grants_from_cert`], trust it only from a verified certificate.
pub fn session_started_at(cert_der: &[u8]) -> Result<Option<OffsetDateTime>, PkiError> {
    let cert = parse(cert_der)?;
    unique_extension(&cert, PosternExt::Session)?
        .map(|value| {
            extension::parse_generalized_time(value).ok_or_else(|| PkiError::Certificate {
                what: "session extension",
                reason: "expected one der generalizedtime `YYYYMMDDHHMMSSZ`".into(),
            })
        })
        .transpose()
}

fn parse(cert_der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(cert_der).map_err(|e| PkiError::Certificate {
        what: "certificate",
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate {
            what: "certificate",
            reason: "trailing bytes after the certificate".into(),
        });
    }
    Ok(cert)
}

fn unique_extension<'a>(
    cert: &X509Certificate<'a>,
    ext: PosternExt,
) -> Result<Option<&'a [u8]>, PkiError> {
    let oid = ext.oid_der();
    let mut found = cert
        .iter_extensions()
        .filter(|e| e.oid.as_bytes() == oid.as_slice());
    let first = found.next();
    if found.next().is_some() {
        return Err(PkiError::Certificate {
            what: "certificate",
            reason: "a postern extension appears twice".into(),
        });
    }
    Ok(first.map(|e| e.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{client_identity, Ca, ClientCertRequest, KeyAlg, Kind};
    use time::macros::datetime;
    use time::Duration;
    use x509_parser::prelude::parse_x509_certificate;

    const TD: &str = "example.org";
    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn grant(id: &str, not_after: OffsetDateTime) -> Grant {
        Grant {
            id: id.into(),
            rules: vec!["health".into()],
            waives: vec!["jwt".into()],
            not_after,
            reason: "incident INC-42: jwt issuer down".into(),
            approved_by: "carol".into(),
        }
    }

    fn ca() -> Ca {
        Ca::generate_root("postern test CA", TD, KeyAlg::EcdsaP256, NOW).unwrap()
    }

    fn issue(ca: &Ca, grants: Vec<Grant>) -> Result<Vec<u8>, PkiError> {
        let req =
            ClientCertRequest::new("alice", Kind::User, Duration::hours(8)).with_grants(grants);
        Ok(ca.issue_client_with(&req, NOW)?.cert_der)
    }

    #[test]
    fn grants_round_trip_through_the_certificate() {
        let ca = ca();
        let g = grant("CHG-1", NOW + Duration::hours(2));
        let der = issue(&ca, vec![g.clone()]).unwrap();
        assert_eq!(grants_from_cert(&der).unwrap(), vec![g]);
        // The certificate is still an ordinary client certificate.
        assert_eq!(client_identity(&der, TD, NOW).unwrap().principal, "alice");
    }

    #[test]
    fn grants_extension_is_non_critical_under_postern_oid() {
        let ca = ca();
        let der = issue(&ca, vec![grant("CHG-1", NOW + Duration::hours(2))]).unwrap();
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        let ours: Vec<_> = cert
            .iter_extensions()
            .filter(|e| {
                e.oid.as_bytes() == PosternExt::Grants.oid_der().as_slice()
                    || e.oid.as_bytes() == PosternExt::Session.oid_der().as_slice()
            })
            .collect();
        assert_eq!(ours.len(), 2);
        assert!(ours.iter().all(|e| !e.critical));
    }

    #[test]
    fn certificate_without_grants_has_none_and_a_session_start() {
        let ca = ca();
        let der = issue(&ca, Vec::new()).unwrap();
        assert!(grants_from_cert(&der).unwrap().is_empty());
        assert_eq!(session_started_at(&der).unwrap(), Some(NOW));
        let server = ca
            .issue_server(&["gw.example.org"], &[], Duration::hours(1), NOW)
            .unwrap();
        assert_eq!(session_started_at(&server.cert_der).unwrap(), None);
    }

    #[test]
    fn grant_never_outlives_its_certificate() {
        let ca = ca();
        let der = issue(&ca, vec![grant("CHG-1", NOW + Duration::days(30))]).unwrap();
        let grants = grants_from_cert(&der).unwrap();
        assert_eq!(grants[0].not_after, NOW + Duration::hours(8));
    }

    #[test]
    fn expired_duplicate_and_empty_grants_are_refused() {
        let ca = ca();
        assert!(matches!(
            issue(&ca, vec![grant("CHG-1", NOW)]),
            Err(PkiError::InvalidGrant(_))
        ));
        let g = grant("CHG-1", NOW + Duration::hours(1));
        assert!(matches!(
            issue(&ca, vec![g.clone(), g.clone()]),
            Err(PkiError::InvalidGrant(_))
        ));
        let mut empty = g.clone();
        empty.rules.clear();
        empty.waives.clear();
        assert!(matches!(
            issue(&ca, vec![empty]),
            Err(PkiError::InvalidGrant(_))
        ));
        let mut anonymous = g;
        anonymous.approved_by = " ".into();
        assert!(matches!(
            issue(&ca, vec![anonymous]),
            Err(PkiError::InvalidGrant(_))
        ));
    }

    #[test]
    fn oversized_grants_are_refused() {
        let ca = ca();
        let mut g = grant("CHG-1", NOW + Duration::hours(1));
        g.rules = (0..1000).map(|i| format!("rule-number-{i:04}")).collect();
        assert!(matches!(
            issue(&ca, vec![g]),
            Err(PkiError::InvalidGrant(_))
        ));
    }

    #[test]
    fn edited_grant_breaks_the_ca_signature() {
        let ca = ca();
        let der = issue(&ca, vec![grant("CHG-1", NOW + Duration::hours(2))]).unwrap();
        let (_, ca_cert) = parse_x509_certificate(ca.cert_der()).unwrap();
        let (_, cert) = parse_x509_certificate(&der).unwrap();
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();

        // Widen the grant to another rule by editing bytes in place (same length, so the
        // DER still parses): the holder's dream, the verifier's job to refuse.
        let needle = br#""rules":["health"]"#;
        let at = der.windows(needle.len()).position(|w| w == needle).unwrap();
        let mut edited = der.clone();
        edited[at..at + needle.len()].copy_from_slice(br#""rules":["admin1"]"#);

        let (_, tampered) = parse_x509_certificate(&edited).unwrap();
        assert!(tampered
            .verify_signature(Some(ca_cert.public_key()))
            .is_err());
        // The payload itself still decodes: only the signature protects it, which is why
        // grants are read only from certificates whose chain webpki verified.
        assert_eq!(grants_from_cert(&edited).unwrap()[0].rules, vec!["admin1"]);
    }

    #[test]
    fn renewal_keeps_the_original_session_start() {
        let ca = ca();
        let started = NOW - Duration::hours(20);
        let req = ClientCertRequest::new("alice", Kind::User, Duration::hours(8))
            .continuing_session(started);
        let der = ca.issue_client_with(&req, NOW).unwrap().cert_der;
        assert_eq!(session_started_at(&der).unwrap(), Some(started));
        let future = ClientCertRequest::new("alice", Kind::User, Duration::hours(8))
            .continuing_session(NOW + Duration::minutes(5));
        assert!(matches!(
            ca.issue_client_with(&future, NOW),
            Err(PkiError::InvalidSessionStart(_))
        ));
    }

    #[test]
    fn payload_encoding_is_canonical_and_strict() {
        let g = grant("CHG-1", NOW + Duration::hours(1));
        let enc = encode(std::slice::from_ref(&g)).unwrap();
        let json = std::str::from_utf8(extension::read_tlv(&enc).unwrap().0.content).unwrap();
        assert_eq!(
            json,
            r#"[{"id":"CHG-1","rules":["health"],"waives":["jwt"],"not_after":"2026-03-01T13:00:00Z","reason":"incident INC-42: jwt issuer down","approved_by":"carol"}]"#
        );
        assert_eq!(decode(&enc).unwrap(), vec![g]);
        let spaced = json.replace(",", ", ");
        assert!(decode(&extension::tlv(0x0c, spaced.as_bytes())).is_err());
        let extra = json.replace(r#""id""#, r#""admin":true,"id""#);
        assert!(decode(&extension::tlv(0x0c, extra.as_bytes())).is_err());
        assert!(decode(&extension::tlv(0x04, json.as_bytes())).is_err());
    }
}
