//! Authentication at the edge: turns what a request presented (a verified
//! client certificate chain, an `Authorization: Bearer` token) into an
//! [`Identity`] for the pure decision core.
//!
//! Invariants:
//! - An identity comes from a SAN URI or DNS name, never from the subject CN
//!   (see `postern_pki::client_identity`).
//! - A JWT's algorithm is pinned per key (from the JWK or its key type) and
//!   must be on the configured allow-list; the token's `alg` header never
//!   chooses the verifier. `none` and HMAC are refused outright, so a public
//!   key can never be used as an HMAC secret.
//! - A credential that is present but invalid is reported as such, so the
//!   decision core can refuse it even where an opt-out would apply.
//! - When two factors name different principals, both are invalid.

use std::collections::HashMap;
use std::path::Path;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use postern_policy::config::JwtConfig;
use postern_policy::{Factor, Identity, InvalidCredential};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;
use time::OffsetDateTime;

use crate::session::SessionState;

/// Facts about the credentials, for the audit record.
#[derive(Debug, Clone, Default)]
pub struct CredentialDetails {
    pub cert_serial: Option<String>,
    pub cert_fingerprint: Option<String>,
}

/// A client certificate whose chain verified and whose identity parsed.
#[derive(Debug, Clone)]
pub struct VerifiedCert {
    pub identity: postern_pki::ClientIdentity,
    pub extras: crate::certs::CertExtras,
}

/// Result of parsing a connection's client certificate once, at handshake.
#[derive(Debug, Clone)]
pub enum PeerCert {
    None,
    Valid(Box<VerifiedCert>),
    Invalid {
        reason: String,
        serial: Option<String>,
        fingerprint: String,
    },
}

impl PeerCert {
    /// Parse the end-entity certificate rustls verified (chain and validity
    /// already checked at the handshake; identity and EKU checked here).
    pub fn from_chain(
        chain: Option<&[CertificateDer<'_>]>,
        trust_domain: &str,
        now: OffsetDateTime,
    ) -> PeerCert {
        let Some(ee) = chain.and_then(|c| c.first()) else {
            return PeerCert::None;
        };
        let parsed =
            postern_pki::client_identity(ee.as_ref(), trust_domain, now).map_err(|e| e.to_string());
        match parsed.and_then(|identity| {
            crate::certs::CertExtras::from_der(ee.as_ref()).map(|extras| (identity, extras))
        }) {
            Ok((identity, extras)) => PeerCert::Valid(Box::new(VerifiedCert { identity, extras })),
            Err(e) => PeerCert::Invalid {
                reason: e.to_string(),
                serial: None,
                fingerprint: postern_pki::fingerprint_sha256(ee.as_ref()),
            },
        }
    }
}

/// A JWT verifier with keys pinned to algorithms.
pub struct JwtVerifier {
    keys: Vec<PinnedKey>,
    by_kid: HashMap<String, usize>,
    issuer: String,
    audience: String,
    leeway: u64,
}

struct PinnedKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS file `{path}`: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("JWKS `{origin}` is not a valid JSON Web Key Set: {source}")]
    Parse {
        origin: String,
        source: serde_json::Error,
    },
    #[error("JWKS `{origin}` has no usable key for the allowed algorithms ({allowed})")]
    NoUsableKey { origin: String, allowed: String },
    #[error("algorithm `{0}` is not allowed: postern accepts RS256, ES256 and EdDSA only")]
    BadAlgorithm(String),
    #[error("fetching JWKS from `{url}` failed: {reason}")]
    Fetch { url: String, reason: String },
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
}

impl JwtVerifier {
    /// Build from config and the JWKS document's text.
    pub fn new(cfg: &JwtConfig, jwks_text: &str, origin: &str) -> Result<JwtVerifier, JwksError> {
        let mut allowed = Vec::new();
        for a in &cfg.algorithms {
            let alg = match a.get_ref().as_str() {
                "RS256" => Algorithm::RS256,
                "ES256" => Algorithm::ES256,
                "EdDSA" => Algorithm::EdDSA,
                other => return Err(JwksError::BadAlgorithm(other.to_string())),
            };
            allowed.push(alg);
        }
        let set: JwkSet = serde_json::from_str(jwks_text).map_err(|source| JwksError::Parse {
            origin: origin.to_string(),
            source,
        })?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let Some(alg) = pinned_alg(jwk) else { continue };
            if !allowed.contains(&alg) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            keys.push(PinnedKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey {
                origin: origin.to_string(),
                allowed: cfg
                    .algorithms
                    .iter()
                    .map(|a| a.get_ref().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let by_kid = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.kid.clone().map(|kid| (kid, i)))
            .collect();
        Ok(JwtVerifier {
            keys,
            by_kid,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            leeway: cfg.leeway_secs,
        })
    }

    /// Load from the config's `jwks_file` (resolved against the config path).
    pub fn from_file(cfg: &JwtConfig, path: &Path) -> Result<JwtVerifier, JwksError> {
        let text = std::fs::read_to_string(path).map_err(|source| JwksError::Read {
            path: path.display().to_string(),
            source,
        })?;
        JwtVerifier::new(cfg, &text, &path.display().to_string())
    }

    /// Verify a compact JWS and return the subject.
    pub fn verify(&self, token: &str) -> Result<String, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let key = match &header.kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .and_then(|i| self.keys.get(*i))
                .ok_or_else(|| format!("unknown key id `{kid}`"))?,
            None if self.keys.len() == 1 => self.keys.first().ok_or("no key")?,
            None => return Err("token has no `kid` and the key set has several keys".to_string()),
        };
        // The key's pinned algorithm decides; the header must agree with it.
        if header.alg != key.alg {
            return Err(format!(
                "token algorithm {:?} does not match the key's {:?}",
                header.alg, key.alg
            ));
        }
        let mut v = Validation::new(key.alg);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v)
            .map_err(|e| format!("invalid token: {e}"))?;
        match data.claims.sub {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err("token has no subject".to_string()),
        }
    }
}

/// The algorithm a JWK may be used with: from its `alg`, else from its key type.
/// HMAC (`oct`) keys are never usable.
pub(crate) fn pinned_alg(jwk: &Jwk) -> Option<Algorithm> {
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            Algorithm::EdDSA
        }
        _ => return None,
    };
    match jwk.common.key_algorithm {
        None => Some(from_type),
        Some(KeyAlgorithm::RS256) if from_type == Algorithm::RS256 => Some(from_type),
        Some(KeyAlgorithm::ES256) if from_type == Algorithm::ES256 => Some(from_type),
        Some(KeyAlgorithm::EdDSA) if from_type == Algorithm::EdDSA => Some(from_type),
        Some(_) => None,
    }
}

/// Everything needed to authenticate a request.
pub struct Authenticator {
    pub jwt: Option<JwtVerifier>,
    /// The built-in CA, when configured: revocations are checked per request.
    pub ca: Option<std::sync::Arc<crate::certs::CertAuthority>>,
}

impl Authenticator {
    /// Build the identity from the connection's certificate and the request's
    /// `Authorization` header values (all of them: more than one is invalid).
    pub fn authenticate(
        &self,
        cert: &PeerCert,
        authorization: &[&[u8]],
        now: OffsetDateTime,
    ) -> (Identity, CredentialDetails) {
        self.authenticate_with_session(cert, authorization, &SessionState::Absent, now)
    }

    /// As [`Authenticator::authenticate`], with the request's browser
    /// session (read by [`crate::session::Sessions::read`]): a valid session
    /// is the `oidc` factor with its `acr`/`amr`; a forged, tampered or
    /// replayed one is an invalid credential; an expired one is absent (the
    /// browser signs in again).
    pub fn authenticate_with_session(
        &self,
        cert: &PeerCert,
        authorization: &[&[u8]],
        session: &SessionState,
        now: OffsetDateTime,
    ) -> (Identity, CredentialDetails) {
        let mut id = Identity::anonymous();
        let mut details = CredentialDetails::default();
        // Who each verified factor names, in the order mTLS, JWT, session:
        // at most one each, so a fixed array (no allocation per request).
        let mut principals: [(Factor, Option<String>); 3] = [
            (Factor::Mtls, None),
            (Factor::Jwt, None),
            (Factor::Oidc, None),
        ];
        let mut grants: Option<&Vec<postern_pki::Grant>> = None;

        match cert {
            PeerCert::None => {}
            PeerCert::Valid(vc) => {
                let ci = &vc.identity;
                details.cert_serial = Some(ci.serial_hex.clone());
                details.cert_fingerprint = Some(ci.fingerprint_sha256.clone());
                let revoked = self.ca.as_ref().and_then(|ca| ca.revoked(&ci.serial_hex));
                // Connections outlive certificates: re-check the window and
                // revocation per request.
                if let Some(r) = revoked {
                    id.invalid.push(InvalidCredential {
                        factor: Factor::Mtls,
                        reason: format!(
                            "client certificate {} was revoked at {} ({:?})",
                            ci.serial_hex,
                            fmt_time(r.revoked_at),
                            r.reason
                        ),
                    });
                } else if now >= ci.not_after {
                    id.invalid.push(InvalidCredential {
                        factor: Factor::Mtls,
                        reason: format!("client certificate expired at {}", fmt_time(ci.not_after)),
                    });
                } else if now < ci.not_before {
                    id.invalid.push(InvalidCredential {
                        factor: Factor::Mtls,
                        reason: "client certificate is not yet valid".to_string(),
                    });
                } else {
                    principals[0].1 = Some(ci.principal.clone());
                    grants = Some(&vc.extras.grants);
                }
            }
            PeerCert::Invalid {
                reason,
                serial,
                fingerprint,
            } => {
                details.cert_serial = serial.clone();
                details.cert_fingerprint = Some(fingerprint.clone());
                id.invalid.push(InvalidCredential {
                    factor: Factor::Mtls,
                    reason: reason.clone(),
                });
            }
        }

        match authorization {
            [] => {}
            [one] => match bearer_token(one) {
                Err(reason) => id.invalid.push(InvalidCredential {
                    factor: Factor::Jwt,
                    reason,
                }),
                Ok(token) => match &self.jwt {
                    None => id.invalid.push(InvalidCredential {
                        factor: Factor::Jwt,
                        reason: "bearer tokens are not accepted here (no [jwt] configured)"
                            .to_string(),
                    }),
                    Some(v) => match v.verify(token) {
                        Ok(sub) => principals[1].1 = Some(sub),
                        Err(reason) => id.invalid.push(InvalidCredential {
                            factor: Factor::Jwt,
                            reason,
                        }),
                    },
                },
            },
            _ => id.invalid.push(InvalidCredential {
                factor: Factor::Jwt,
                reason: "more than one Authorization header".to_string(),
            }),
        }

        match session {
            SessionState::Absent | SessionState::Expired { .. } => {}
            SessionState::Valid { session, .. } => {
                principals[2].1 = Some(session.principal.clone());
            }
            SessionState::Invalid { reason } => id.invalid.push(InvalidCredential {
                factor: Factor::Oidc,
                reason: reason.clone(),
            }),
        }

        // Factors that disagree on who this is prove nothing.
        let named = || {
            principals
                .iter()
                .filter_map(|(f, p)| p.as_ref().map(|p| (*f, p)))
        };
        let Some((_, first)) = named().next() else {
            return (id, details);
        };
        if named().any(|(_, p)| p != first) {
            let names: Vec<String> = named().map(|(f, p)| format!("{f}={p}")).collect();
            for (f, _) in named() {
                id.invalid.push(InvalidCredential {
                    factor: f,
                    reason: format!(
                        "credentials name different identities ({})",
                        names.join(", ")
                    ),
                });
            }
            return (id, details);
        }
        for (f, _) in named() {
            id.verified.insert(f);
        }
        if let Some(gs) = grants {
            id.grants = gs.iter().filter_map(grant_claim).collect();
        }
        if let Some(s) = session.session() {
            id.acr = s.acr.clone();
            id.amr = s.amr.clone();
        }
        // Every named factor agrees: the principal moves out, not copied.
        id.principal = principals.into_iter().find_map(|(_, p)| p);
        (id, details)
    }
}

/// A certificate grant as the decision core sees it. A grant naming a factor
/// postern does not know is dropped (never widened to "whatever the rule waives").
fn grant_claim(g: &postern_pki::Grant) -> Option<postern_policy::GrantClaim> {
    let mut waives = postern_policy::FactorSet::EMPTY;
    for w in &g.waives {
        waives.insert(Factor::parse(w)?);
    }
    Some(postern_policy::GrantClaim {
        id: g.id.clone(),
        rules: g.rules.clone(),
        waives,
        not_after: g.not_after,
    })
}

fn bearer_token(value: &[u8]) -> Result<&str, String> {
    let s = std::str::from_utf8(value)
        .map_err(|_| "Authorization header is not valid UTF-8".to_string())?;
    let (scheme, rest) = s
        .split_once(' ')
        .ok_or("Authorization header is not `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(format!("unsupported Authorization scheme `{scheme}`"));
    }
    let token = rest.trim();
    if token.is_empty() {
        return Err("empty bearer token".to_string());
    }
    Ok(token)
}

pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{EncodingKey, Header};

    const ISS: &str = "https://issuer.test";
    const AUD: &str = "postern-test";

    struct Issuer {
        key: ed25519_dalek::SigningKey,
        jwks: String,
    }

    fn issuer() -> Issuer {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let x =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes());
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]}).to_string();
        Issuer { key, jwks }
    }

    fn config(algs: &[&str]) -> JwtConfig {
        let algs = algs
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        toml::from_str(&format!("issuer = \"{ISS}\"\naudience = \"{AUD}\"\njwks_file = \"x\"\nalgorithms = [{algs}]\nleeway_secs = 5\n")).unwrap()
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        serde_json::json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now + exp_offset, "nbf": now - 60})
    }

    fn sign(i: &Issuer, claims: &serde_json::Value, kid: Option<&str>) -> String {
        let der = i.key.to_pkcs8_der().unwrap();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn a_valid_token_yields_its_subject() {
        let i = issuer();
        let v = JwtVerifier::new(&config(&["EdDSA"]), &i.jwks, "test").unwrap();
        assert_eq!(
            v.verify(&sign(&i, &claims(300), Some("k1"))).unwrap(),
            "alice"
        );
    }

    #[test]
    fn expired_wrong_audience_and_wrong_issuer_tokens_are_refused() {
        let i = issuer();
        let v = JwtVerifier::new(&config(&["EdDSA"]), &i.jwks, "test").unwrap();
        assert!(v.verify(&sign(&i, &claims(-120), Some("k1"))).is_err());
        let mut c = claims(300);
        c["aud"] = "someone-else".into();
        assert!(v.verify(&sign(&i, &c, Some("k1"))).is_err());
        let mut c = claims(300);
        c["iss"] = "https://evil.test".into();
        assert!(v.verify(&sign(&i, &c, Some("k1"))).is_err());
        let mut c = claims(300);
        c.as_object_mut().unwrap().remove("exp");
        assert!(
            v.verify(&sign(&i, &c, Some("k1"))).is_err(),
            "exp is required"
        );
    }

    #[test]
    fn alg_none_is_refused() {
        let i = issuer();
        let v = JwtVerifier::new(&config(&["EdDSA"]), &i.jwks, "test").unwrap();
        let token = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "kid": "k1"})),
            b64(&claims(300))
        );
        assert!(v.verify(&token).is_err());
    }

    #[test]
    fn hmac_signed_with_the_public_key_is_refused() {
        // The classic confusion: sign HS256 with the issuer's *public* key bytes.
        let i = issuer();
        let v = JwtVerifier::new(&config(&["EdDSA"]), &i.jwks, "test").unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let public = i.key.verifying_key().to_bytes();
        let token =
            jsonwebtoken::encode(&h, &claims(300), &EncodingKey::from_secret(&public)).unwrap();
        let err = v.verify(&token).unwrap_err();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn hmac_and_none_are_not_configurable() {
        let i = issuer();
        assert!(matches!(
            JwtVerifier::new(&config(&["HS256"]), &i.jwks, "t"),
            Err(JwksError::BadAlgorithm(_))
        ));
        assert!(matches!(
            JwtVerifier::new(&config(&["none"]), &i.jwks, "t"),
            Err(JwksError::BadAlgorithm(_))
        ));
    }

    #[test]
    fn a_key_whose_algorithm_is_not_allowed_is_not_used() {
        let i = issuer();
        // Only RS256 allowed: the Ed25519 key is unusable, so the set is refused.
        assert!(matches!(
            JwtVerifier::new(&config(&["RS256"]), &i.jwks, "t"),
            Err(JwksError::NoUsableKey { .. })
        ));
    }

    #[test]
    fn an_unknown_kid_is_refused() {
        let i = issuer();
        let v = JwtVerifier::new(&config(&["EdDSA"]), &i.jwks, "test").unwrap();
        assert!(v.verify(&sign(&i, &claims(300), Some("other"))).is_err());
    }

    #[test]
    fn two_authorization_values_and_disagreeing_factors_are_invalid() {
        let i = issuer();
        let a = Authenticator {
            ca: None,
            jwt: Some(JwtVerifier::new(&config(&["EdDSA"]), &i.jwks, "test").unwrap()),
        };
        let now = OffsetDateTime::now_utc();
        let token = format!("Bearer {}", sign(&i, &claims(300), Some("k1")));
        let (id, _) = a.authenticate(&PeerCert::None, &[token.as_bytes()], now);
        assert_eq!(id.principal.as_deref(), Some("alice"));
        assert!(id.verified.contains(Factor::Jwt));
        let (id, _) = a.authenticate(&PeerCert::None, &[token.as_bytes(), token.as_bytes()], now);
        assert!(id.principal.is_none());
        assert_eq!(id.invalid.len(), 1);

        let mut c = claims(300);
        c["sub"] = "mallory".into();
        let other = format!("Bearer {}", sign(&i, &c, Some("k1")));
        let ca = postern_pki::Ca::generate_root(
            "t",
            "postern.test",
            postern_pki::KeyAlg::EcdsaP256,
            now,
        )
        .unwrap();
        let alice = ca
            .issue_client(
                "alice",
                postern_pki::Kind::User,
                time::Duration::hours(1),
                now,
            )
            .unwrap();
        let cert = PeerCert::from_chain(
            Some(&[rustls_pki_types::CertificateDer::from(
                alice.cert_der.clone(),
            )]),
            "postern.test",
            now,
        );
        assert!(matches!(cert, PeerCert::Valid(_)));
        let (id, _) = a.authenticate(&cert, &[other.as_bytes()], now);
        assert!(
            id.principal.is_none(),
            "mTLS alice + JWT mallory proves nothing"
        );
        assert!(id.verified.is_empty());
        assert_eq!(id.invalid.len(), 2);
        assert_eq!(
            (id.invalid[0].factor, id.invalid[1].factor),
            (Factor::Mtls, Factor::Jwt)
        );
        assert!(
            id.invalid[0].reason.contains("(mtls=alice, jwt=mallory)"),
            "{}",
            id.invalid[0].reason
        );
        let (id, _) = a.authenticate(&cert, &[token.as_bytes()], now);
        assert_eq!(id.principal.as_deref(), Some("alice"));
        assert!(id.verified.contains(Factor::Mtls) && id.verified.contains(Factor::Jwt));
    }

    #[test]
    fn a_certificate_that_expired_during_the_connection_is_invalid() {
        let now = OffsetDateTime::now_utc();
        let ca = postern_pki::Ca::generate_root(
            "t",
            "postern.test",
            postern_pki::KeyAlg::EcdsaP256,
            now,
        )
        .unwrap();
        let alice = ca
            .issue_client(
                "alice",
                postern_pki::Kind::User,
                time::Duration::hours(1),
                now,
            )
            .unwrap();
        let cert = PeerCert::from_chain(
            Some(&[rustls_pki_types::CertificateDer::from(
                alice.cert_der.clone(),
            )]),
            "postern.test",
            now,
        );
        assert!(matches!(cert, PeerCert::Valid(_)));
        let a = Authenticator {
            jwt: None,
            ca: None,
        };
        let (id, _) = a.authenticate(&cert, &[], now + time::Duration::hours(2));
        assert!(id.principal.is_none());
        assert_eq!(id.invalid.len(), 1);
        assert!(id.invalid[0].reason.contains("expired"));
    }
}
