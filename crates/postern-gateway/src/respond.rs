//! Every answer postern gives on its own (not the upstream's), in one place:
//! 400, 401 (with `WWW-Authenticate` and a JSON body naming the ways to
//! authenticate), 403, 404, 413, 502, 504.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use postern_policy::{Factor, FactorSet, InvalidCredential};
use serde_json::json;

use crate::Body;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn json(status: StatusCode, request_id: &str, value: serde_json::Value) -> Response<Body> {
    let body = serde_json::to_vec(&value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        resp.headers_mut()
            .insert(crate::headers::X_POSTERN_REQUEST_ID, v);
    }
    resp
}

pub fn error(status: StatusCode, request_id: &str, message: &str) -> Response<Body> {
    json(
        status,
        request_id,
        json!({ "error": message, "request_id": request_id }),
    )
}

/// How to satisfy one alternative, in words a client developer can act on.
fn describe(set: FactorSet) -> String {
    let parts: Vec<&str> = set
        .iter()
        .map(|f| match f {
            Factor::Mtls => "a client certificate issued by the postern CA (mTLS)",
            Factor::Jwt => "an `Authorization: Bearer <JWT>` header from the configured issuer",
            Factor::Oidc => "a browser session: sign in with the configured OpenID provider",
        })
        .collect();
    if parts.is_empty() {
        "nothing more".to_string()
    } else {
        parts.join(" and ")
    }
}

/// 401 with `WWW-Authenticate` for every scheme an alternative accepts.
pub fn challenge(
    request_id: &str,
    accepted: &[FactorSet],
    invalid: &[InvalidCredential],
) -> Response<Body> {
    challenge_with_sign_in(request_id, accepted, invalid, None)
}

/// [`challenge`], naming the browser sign-in URL when OIDC is configured
/// and an alternative accepts a session.
pub fn challenge_with_sign_in(
    request_id: &str,
    accepted: &[FactorSet],
    invalid: &[InvalidCredential],
    sign_in: Option<&str>,
) -> Response<Body> {
    let how: Vec<String> = accepted.iter().map(|s| describe(*s)).collect();
    let jwt_invalid = invalid.iter().any(|i| i.factor == Factor::Jwt);
    let mut body = json!({
        "error": if invalid.is_empty() { "authentication required" } else { "invalid credentials" },
        "request_id": request_id,
        "how_to_authenticate": how,
    });
    if !invalid.is_empty() {
        body["invalid"] = invalid
            .iter()
            .map(|i| json!({ "factor": i.factor.as_str(), "reason": i.reason }))
            .collect();
    }
    let wants_oidc = accepted.iter().any(|s| s.contains(Factor::Oidc));
    let sign_in = sign_in.filter(|_| wants_oidc);
    if let Some(url) = sign_in {
        body["sign_in"] = json!(url);
    }
    let mut resp = json(StatusCode::UNAUTHORIZED, request_id, body);
    let wants_jwt = accepted.iter().any(|s| s.contains(Factor::Jwt));
    let wants_mtls = accepted.iter().any(|s| s.contains(Factor::Mtls)) || accepted.is_empty();
    let h = resp.headers_mut();
    if let Some(url) = sign_in {
        // No registered scheme names a browser sign-in; this one says where.
        if let Ok(v) = HeaderValue::from_str(&format!(
            r#"OpenIDConnect realm="postern", sign_in="{url}""#
        )) {
            h.append(WWW_AUTHENTICATE, v);
        }
    }
    if wants_jwt {
        let v = if jwt_invalid {
            r#"Bearer realm="postern", error="invalid_token""#
        } else {
            r#"Bearer realm="postern""#
        };
        h.append(WWW_AUTHENTICATE, HeaderValue::from_static(v));
    }
    if wants_mtls || !(wants_jwt || sign_in.is_some()) {
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"ClientCertificate realm="postern""#),
        );
    }
    resp
}

/// 401 asking a session to re-authenticate more strongly (RFC 9470:
/// `insufficient_user_authentication` with the acceptable `acr_values`).
pub fn step_up(request_id: &str, acr_values: &[String]) -> Response<Body> {
    let body = json!({
        "error": "stronger authentication required",
        "request_id": request_id,
        "acr_values": acr_values,
        "how_to_authenticate": ["sign in again with the configured OpenID provider, using one of the acr_values"],
    });
    let mut resp = json(StatusCode::UNAUTHORIZED, request_id, body);
    // acr values are config-supplied tokens; keep only safe characters.
    let acr: String = acr_values
        .join(" ")
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\' || *c == ' ')
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!(
        r#"Bearer realm="postern", error="insufficient_user_authentication", acr_values="{acr}""#
    )) {
        resp.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    resp
}
