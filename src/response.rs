//! Denial responses per RFC 6750 §3: status, `WWW-Authenticate` challenge and a JSON body.

use crate::reason::Reason;
use crate::strict_json::quote;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// What a response needs beyond the reason; fixed per filter configuration.
#[derive(Debug, Clone)]
pub struct ResponseStyle {
    pub realm: String,
    pub include_error_description: bool,
    /// `Retry-After` of a 503 when the revocation status is unknown.
    pub retry_after_seconds: u32,
}

/// The RFC 6750 error code of a reason; `None` for a request without credentials, which
/// must get a bare challenge (§3.1).
fn error_code(reason: Reason) -> Option<&'static str> {
    match reason {
        Reason::Missing => None,
        Reason::MultipleTokens => Some("invalid_request"),
        Reason::InsufficientScope => Some("insufficient_scope"),
        _ => Some("invalid_token"),
    }
}

pub fn status(reason: Reason) -> u32 {
    match reason {
        Reason::MultipleTokens => 400,
        Reason::InsufficientScope => 403,
        Reason::RevocationUnavailable | Reason::KeysUnavailable => 503,
        _ => 401,
    }
}

/// Builds the denial. `scope` is the scope a route needs, named in the challenge when known.
pub fn denial(style: &ResponseStyle, reason: Reason, scope: Option<&str>) -> Response {
    // 503 with `Retry-After`: the token may be fine, but what we need to judge it is unavailable.
    if reason.is_unavailable() {
        let retry_after = ("retry-after", style.retry_after_seconds.to_string());
        return json_response(style, 503, retry_after, "temporarily_unavailable", reason);
    }
    let mut challenge = format!("Bearer realm=\"{}\"", style.realm);
    let code = error_code(reason);
    if let Some(code) = code {
        challenge.push_str(&format!(", error=\"{code}\""));
        if style.include_error_description {
            challenge.push_str(&format!(", error_description=\"{}\"", reason.description()));
        }
        if let Some(scope) = scope.filter(|s| s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
            challenge.push_str(&format!(", scope=\"{scope}\""));
        }
    }
    json_response(style, status(reason), ("www-authenticate", challenge), code.unwrap_or("unauthorized"), reason)
}

/// A JSON error body `{"error", "error_description"?}` with `first` as the leading header.
fn json_response(
    style: &ResponseStyle,
    status: u32,
    first: (&'static str, String),
    error: &str,
    reason: Reason,
) -> Response {
    let body = if style.include_error_description {
        format!(r#"{{"error":{},"error_description":{}}}"#, quote(error), quote(reason.description()))
    } else {
        format!(r#"{{"error":{}}}"#, quote(error))
    };
    Response {
        status,
        headers: vec![first, ("content-type", "application/json".into()), ("cache-control", "no-store".into())],
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn style(desc: bool) -> ResponseStyle {
        ResponseStyle { realm: "api".into(), include_error_description: desc, retry_after_seconds: 2 }
    }

    fn header(r: &Response) -> &str {
        &r.headers[0].1
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let r = denial(&style(true), Reason::Missing, None);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r), r#"Bearer realm="api""#);
        assert_eq!(r.body, r#"{"error":"unauthorized","error_description":"bearer token required"}"#);
    }

    #[test]
    fn invalid_token_names_the_reason_unless_turned_off() {
        let r = denial(&style(true), Reason::Expired, None);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r), r#"Bearer realm="api", error="invalid_token", error_description="token expired""#);
        let r = denial(&style(false), Reason::Expired, None);
        assert_eq!(header(&r), r#"Bearer realm="api", error="invalid_token""#);
        assert_eq!(r.body, r#"{"error":"invalid_token"}"#);
    }

    #[test]
    fn revoked_is_401_and_unknown_status_is_503_with_retry_after() {
        let r = denial(&style(true), Reason::Revoked, None);
        assert_eq!(r.status, 401);
        assert_eq!(header(&r), r#"Bearer realm="api", error="invalid_token", error_description="token revoked""#);
        let r = denial(&style(true), Reason::RevocationUnavailable, None);
        assert_eq!(r.status, 503);
        assert_eq!(r.headers[0], ("retry-after", "2".to_string()));
        assert!(r.body.contains("temporarily_unavailable"));
    }

    #[test]
    fn two_methods_is_400_and_scope_is_403() {
        let r = denial(&style(true), Reason::MultipleTokens, None);
        assert_eq!((r.status, r.body.contains("invalid_request")), (400, true));
        let r = denial(&style(false), Reason::InsufficientScope, Some("orders:read"));
        assert_eq!(r.status, 403);
        assert_eq!(header(&r), r#"Bearer realm="api", error="insufficient_scope", scope="orders:read""#);
        let r = denial(&style(false), Reason::InsufficientScope, Some("a\"b"));
        assert!(!header(&r).contains("scope=\""), "unsafe scope values are left out");
    }
}
