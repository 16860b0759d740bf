//! SPIFFE ID grammar, shared by issuance and identity extraction so that postern never
//! issues an ID that its own gateway would refuse.
//!
//! postern's IDs are `spiffe://<trust-domain>/<kind>/<name>` with `<kind>` one of `user` or
//! `service` (SPIFFE ID spec, <https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>):
//! the scheme is lowercase `spiffe`; the trust domain uses lowercase letters, digits, `.`,
//! `-`, `_`; path segments use letters, digits, `.`, `-`, `_`, are never `.` or `..`, and
//! percent-encoding, query and fragment are not allowed.

use crate::ca::Kind;

/// Longest trust domain accepted (SPIFFE: 255 bytes).
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// Longest name accepted; a SPIFFE ID is at most 2048 bytes, postern keeps names short.
const MAX_NAME_LEN: usize = 128;

/// The scheme prefix of every SPIFFE ID.
pub(crate) const SCHEME_PREFIX: &str = "spiffe://";

/// Checks a trust domain against the SPIFFE grammar; returns the rule broken.
pub(crate) fn check_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty() {
        return Err("it is empty");
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err("it is longer than 255 bytes");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("only lowercase letters, digits, `.`, `-` and `_` are allowed");
    }
    Ok(())
}

/// Checks a user or service name as one SPIFFE path segment; returns the rule broken.
pub(crate) fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("it is longer than 128 bytes");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("only letters, digits, `.`, `-` and `_` are allowed");
    }
    Ok(())
}

/// The SPIFFE ID postern issues for `name` of `kind` in `trust_domain` (inputs pre-checked).
pub(crate) fn spiffe_id(trust_domain: &str, kind: Kind, name: &str) -> String {
    format!("{SCHEME_PREFIX}{trust_domain}/{}/{name}", kind.segment())
}

/// Whether a URI's scheme is `spiffe` in any letter case: such a URI must be a well-formed
/// SPIFFE ID or the certificate is refused (it is never silently skipped, so a mis-cased
/// ID cannot make identity fall through to a DNS name).
pub(crate) fn is_spiffe_uri(uri: &str) -> bool {
    uri.split_once(':')
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("spiffe"))
}

/// A parsed postern SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SpiffeId<'a> {
    pub(crate) trust_domain: &'a str,
    pub(crate) kind: Kind,
    pub(crate) name: &'a str,
}

/// Why a SPIFFE URI was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SpiffeError<'a> {
    Malformed(&'static str),
    /// Well-formed trust domain, but not ours; reported before the path is examined so the
    /// operator sees the more useful reason.
    ForeignTrustDomain(&'a str),
}

/// Parses `uri` as a postern SPIFFE ID of `expected_td`.
pub(crate) fn parse<'a>(uri: &'a str, expected_td: &str) -> Result<SpiffeId<'a>, SpiffeError<'a>> {
    let rest = uri
        .strip_prefix(SCHEME_PREFIX)
        .ok_or(SpiffeError::Malformed(
            "the scheme must be lowercase `spiffe` followed by `://`",
        ))?;
    let (td, path) = rest
        .split_once('/')
        .ok_or(SpiffeError::Malformed("it has no path"))?;
    check_trust_domain(td).map_err(SpiffeError::Malformed)?;
    if td != expected_td {
        return Err(SpiffeError::ForeignTrustDomain(td));
    }
    let mut segments = path.split('/');
    let (Some(kind), Some(name), None) = (segments.next(), segments.next(), segments.next()) else {
        return Err(SpiffeError::Malformed(
            "the path must be `/user/<name>` or `/service/<name>`",
        ));
    };
    let kind = match kind {
        "user" => Kind::User,
        "service" => Kind::Service,
        _ => {
            return Err(SpiffeError::Malformed(
                "the path must start with `/user/` or `/service/`",
            ))
        }
    };
    check_name(name).map_err(SpiffeError::Malformed)?;
    Ok(SpiffeId {
        trust_domain: td,
        kind,
        name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_user_and_service_ids() {
        let id = parse("spiffe://example.org/user/alice", "example.org").unwrap();
        assert_eq!((id.kind, id.name), (Kind::User, "alice"));
        let id = parse("spiffe://example.org/service/billing-api", "example.org").unwrap();
        assert_eq!((id.kind, id.name), (Kind::Service, "billing-api"));
    }

    #[test]
    fn foreign_trust_domain_is_reported_as_such() {
        assert_eq!(
            parse("spiffe://evil.org/user/alice", "example.org"),
            Err(SpiffeError::ForeignTrustDomain("evil.org"))
        );
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for uri in [
            "SPIFFE://example.org/user/alice",
            "spiffe:example.org/user/alice",
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe://example.org/user",
            "spiffe://example.org/user/",
            "spiffe://example.org/user/alice/extra",
            "spiffe://example.org/admin/alice",
            "spiffe://example.org/user/..",
            "spiffe://example.org/user/al%69ce",
            "spiffe://example.org/user/alice?x=1",
            "spiffe://example.org/user/alice#frag",
            "spiffe://Example.org/user/alice",
            "spiffe://example.org:443/user/alice",
            "spiffe://bob@example.org/user/alice",
            "spiffe:///user/alice",
        ] {
            assert!(
                matches!(parse(uri, "example.org"), Err(SpiffeError::Malformed(_))),
                "{uri} should be malformed"
            );
        }
    }

    #[test]
    fn spiffe_scheme_detection_ignores_case() {
        assert!(is_spiffe_uri("SPIFFE://x/user/a"));
        assert!(is_spiffe_uri("spiffe:x"));
        assert!(!is_spiffe_uri("https://x/user/a"));
        assert!(!is_spiffe_uri("no-scheme"));
    }
}
