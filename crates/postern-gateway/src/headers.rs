//! Header hygiene between the client and the upstream.
//!
//! Learned from proxies' advisories:
//! - identity headers a client sends are stripped in every spelling a backend
//!   might fold together (case, `_` for `-`), so `X_Postern_Identity: mallory`
//!   never reaches a backend that treats it as `x-postern-identity`;
//! - hop-by-hop headers, and every header the client's `Connection` lists, are
//!   dropped *before* postern sets its own, so a client cannot name
//!   `x-postern-identity` in `Connection` to make postern drop what it set;
//! - `x-forwarded-for` is believed only from configured trusted proxies, and
//!   then the rightmost untrusted hop is the client.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

/// Headers that carry identity to backends, in canonical (lower-case, dashed) form.
const IDENTITY_HEADERS: &[&str] = &[
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-preferred-username",
    "x-forwarded-groups",
    "x-forwarded-access-token",
    "x-remote-user",
    "x-remote-email",
    "x-remote-group",
    "remote-user",
    "x-user",
    "x-email",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-forwarded-prefix",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-proto",
    "x-forwarded-for",
    "x-real-ip",
    "forwarded",
    "x-client-cert",
    "x-ssl-client-cert",
    "x-ssl-client-dn",
    "x-ssl-client-verify",
    "ssl-client-cert",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus legacy ones.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// One of [`HOP_BY_HOP`]? Header names are lower-case, so this is a plain
/// comparison; scanning the (few) headers once is cheaper than removing
/// each hop-by-hop name, which parses and hashes it every time.
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Headers postern sets toward upstreams (parsed once, at compile time).
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_POSTERN_REQUEST_ID: HeaderName = HeaderName::from_static("x-postern-request-id");
pub const X_POSTERN_IDENTITY: HeaderName = HeaderName::from_static("x-postern-identity");
pub const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
pub const X_POSTERN_AUTH: HeaderName = HeaderName::from_static("x-postern-auth");

/// Is this a header postern owns or a backend may trust as identity, in any
/// spelling (`X_Forwarded_User`, `x-forwarded-user`)? No allocation: this
/// runs for every header of every request.
pub fn is_identity_header(name: &str) -> bool {
    // Compare as a backend might fold: case-insensitive, `_` same as `-`.
    fn fold(b: u8) -> u8 {
        if b == b'_' {
            b'-'
        } else {
            b.to_ascii_lowercase()
        }
    }
    let n = name.as_bytes();
    let starts =
        |canon: &str| n.len() >= canon.len() && canon.bytes().zip(n).all(|(c, b)| c == fold(*b));
    starts("x-postern-")
        || IDENTITY_HEADERS
            .iter()
            .any(|h| h.len() == n.len() && starts(h))
}

/// Remove hop-by-hop headers, headers named by `Connection`, and identity
/// headers from a request's headers. `keep_upgrade`: keep `Upgrade` and a
/// `Connection: upgrade` (for a tunnel the policy allows).
pub fn sanitize_request(headers: &mut HeaderMap, keep_upgrade: bool) {
    sanitize(headers, keep_upgrade, |n| {
        is_hop_by_hop(n) || is_identity_header(n.as_str())
    });
}

/// Remove hop-by-hop headers from an upstream response.
pub fn sanitize_response(headers: &mut HeaderMap, keep_upgrade: bool) {
    sanitize(headers, keep_upgrade, is_hop_by_hop);
}

/// Remove the headers named by `Connection` and those `doomed` picks (one
/// scan of the map), keeping an upgrade when asked.
fn sanitize(headers: &mut HeaderMap, keep_upgrade: bool, doomed: impl Fn(&HeaderName) -> bool) {
    let upgrade = if keep_upgrade {
        headers.get(http::header::UPGRADE).cloned()
    } else {
        None
    };
    remove_connection_listed(headers);
    let names: Vec<HeaderName> = headers.keys().filter(|n| doomed(n)).cloned().collect();
    for n in names {
        headers.remove(&n);
    }
    if let Some(u) = upgrade {
        headers.insert(http::header::UPGRADE, u);
        headers.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("upgrade"),
        );
    }
}

/// Remove every header a `Connection` value names (case-insensitively; a
/// token that is no header name names nothing). The values are cloned (a
/// reference count) rather than each token parsed into an owned name:
/// `Connection: keep-alive` is on nearly every upstream answer.
fn remove_connection_listed(headers: &mut HeaderMap) {
    let listed: Vec<HeaderValue> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .cloned()
        .collect();
    for v in &listed {
        if v.to_str().is_ok() {
            remove_named_by(headers, v.as_bytes());
        }
    }
}

/// Remove every header one `Connection` value names: its comma-separated
/// tokens, in any case; a token that is no header name names nothing.
///
/// `keep-alive`, on nearly every upstream answer, is skipped: a header of
/// that name is hop-by-hop and goes in any case, and parsing the token would
/// allocate a name for nothing.
pub(crate) fn remove_named_by(headers: &mut HeaderMap, connection: &[u8]) {
    for token in connection.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.eq_ignore_ascii_case(b"keep-alive") {
            continue;
        }
        if let Ok(name) = HeaderName::from_bytes(token) {
            headers.remove(&name);
        }
    }
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy,
/// in which case the rightmost `x-forwarded-for` hop that is not itself a
/// trusted proxy (a client can prepend anything to the left).
/// Returns the client address and the `x-forwarded-for` chain to send on;
/// `None` when that chain is the peer alone (the common case, which the
/// caller formats once per connection).
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> (IpAddr, Option<String>) {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return (peer, None);
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else {
            // Unparsable chain from a trusted proxy: believe only the peer.
            return (peer, None);
        };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return (peer, None),
            }
        }
    }
    hops.push(peer);
    let chain = hops
        .iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let client = hops
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or(hops.first())
        .copied()
        .unwrap_or(peer);
    (client, Some(chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers_are_recognised_in_every_spelling() {
        for n in [
            "x-postern-identity",
            "X-Postern-Auth",
            "x_postern_identity",
            "X_FORWARDED_USER",
            "x-forwarded-user",
            "Remote_User",
        ] {
            assert!(is_identity_header(n), "{n}");
        }
        assert!(!is_identity_header("x-request-id"));
        assert!(!is_identity_header("accept"));
    }

    #[test]
    fn connection_listed_headers_are_dropped_before_postern_sets_its_own() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("x-keep-me, close"));
        h.insert("x-keep-me", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        sanitize_request(&mut h, false);
        assert!(h.get("x-keep-me").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.get("x-other").map(|v| v.as_bytes()), Some(&b"2"[..]));

        // Any case, several Connection lines, a token that is no header name.
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static(" X-Keep-Me ,, bad token"),
        );
        h.append("connection", HeaderValue::from_static("X-SECOND"));
        h.insert("x-keep-me", HeaderValue::from_static("1"));
        h.insert("x-second", HeaderValue::from_static("1"));
        h.insert("x-other", HeaderValue::from_static("2"));
        sanitize_response(&mut h, false);
        assert!(h.get("x-keep-me").is_none());
        assert!(h.get("x-second").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("127.0.0.1"));
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let (client, chain) = client_address(peer, &h, &[]);
        assert_eq!(client, peer);
        assert_eq!(chain, None, "the chain is the peer alone");
    }

    #[test]
    fn forwarded_for_from_trusted_proxy_takes_rightmost_untrusted_hop() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        // The client prepended a spoofed loopback; the proxy appended the real client.
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("127.0.0.1, 198.51.100.7, 10.1.1.1"),
        );
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let (client, chain) = client_address(peer, &h, &trusted);
        assert_eq!(client, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            chain.as_deref(),
            Some("127.0.0.1, 198.51.100.7, 10.1.1.1, 10.0.0.2")
        );
    }

    #[test]
    fn garbage_forwarded_for_from_trusted_proxy_falls_back_to_peer() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(client_address(peer, &h, &trusted), (peer, None));
    }
}
