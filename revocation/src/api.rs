//! The HTTP API: each handler parses and validates its input, checks the caller's credential,
//! calls the store, and answers with the shared wire types. See `openapi.json`.

use crate::auth::Credentials;
use crate::feed::Feed;
use crate::receivers::{self, Receiver};
use crate::store::{StatusQuery, Store, StoreError};
use crate::{feed, form, token, validate};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jwtguard::keys::Key;
use jwtguard::strict_json;
use jwtguard_wire::{Ack, ErrorBody, RevokeSubjectRequest, SessionRequest, SessionResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const OPENAPI: &str = include_str!("../openapi.json");

pub struct AppState {
    pub store: Store,
    /// Who may write. Empty only in the explicit development mode.
    pub writers: Credentials,
    /// Who may read status; `None` leaves the status endpoint open.
    pub readers: Option<Credentials>,
    pub insecure_dev: bool,
    /// With keys, raw tokens are revoked only if their signature verifies.
    pub keys: Option<Vec<Key>>,
    pub clock_skew: u64,
    pub max_lifetime: u64,
    pub session_limit: u32,
    pub store_timeout: Duration,
    pub prometheus: PrometheusHandle,
    pub feed: Feed,
    /// Longest a feed poll is held (`--feed-max-wait-ms`), below the document's 60 s.
    pub feed_max_wait: Duration,
    /// The signal receivers, with `--signals-config`.
    pub signals: Option<Receiver>,
}

/// The document's bound on `wait_ms`.
const MAX_WAIT_MS: u64 = 60_000;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        // 404 without --signals-config (the handlers say so).
        .route("/v1/backchannel-logout", post(backchannel_logout))
        .route("/v1/ssf/push", post(ssf_push))
        .route("/v1/revoke", post(revoke))
        .route("/v1/revoke-subject", post(revoke_subject))
        .route("/v1/sessions", post(register_session))
        .route("/v1/sessions/{jti}", delete(end_session))
        .route("/v1/status", get(status))
        .route("/v1/feed", get(feed_poll))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|State(s): State<Arc<AppState>>| async move { s.prometheus.render() }))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .layer(DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(record))
        .with_state(state)
}

/// An error answer in the style of RFC 6749 §5.2.
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl ApiError {
    fn bad_request(description: impl Into<String>) -> ApiError {
        ApiError { status: StatusCode::BAD_REQUEST, error: "invalid_request", description: description.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody { error: self.error.into(), error_description: Some(self.description) });
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::warn!(error = %e, "store call failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: e.to_string(),
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The `endpoint` label of each API route: a fixed set, whatever path a request has.
const ENDPOINTS: [(&str, &str); 8] = [
    ("/v1/backchannel-logout", "backchannel_logout"),
    ("/v1/ssf/push", "ssf_push"),
    ("/v1/revoke", "revoke"),
    ("/v1/revoke-subject", "revoke_subject"),
    ("/v1/sessions", "register_session"),
    ("/v1/sessions/{jti}", "end_session"),
    ("/v1/status", "status"),
    ("/v1/feed", "feed"),
];

/// Counts and times every API request (`/v1/…`; probes, /metrics and /openapi.json aside) by
/// endpoint and status code, from its arrival (its body read included) to its answer: those
/// refused before a handler runs too (404, 405, 413). The endpoint is the matched route's, and
/// `other` for a path no route has.
async fn record(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if !request.uri().path().starts_with("/v1/") {
        return next.run(request).await;
    }
    let route = request.extensions().get::<axum::extract::MatchedPath>();
    let endpoint =
        route.and_then(|r| ENDPOINTS.iter().find(|(path, _)| *path == r.as_str())).map_or("other", |(_, e)| *e);
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let code = response.status().as_u16().to_string();
    metrics::histogram!("jwtguard_revocation_request_duration_seconds", "endpoint" => endpoint, "code" => code.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("jwtguard_revocation_requests_total", "endpoint" => endpoint, "code" => code).increment(1);
    response
}

impl AppState {
    fn authorize_write(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        if self.insecure_dev && self.writers.is_empty() {
            return Ok(());
        }
        self.check(&self.writers, headers)
    }

    fn check(&self, credentials: &Credentials, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if credentials.allows(presented) {
            Ok(())
        } else {
            Err(ApiError {
                status: StatusCode::UNAUTHORIZED,
                error: "invalid_client",
                description: "a valid bearer credential is required".into(),
            })
        }
    }

    /// Runs a store call within the configured bound.
    async fn bounded<T>(&self, call: impl std::future::Future<Output = Result<T, StoreError>>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.store_timeout, call).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(StoreError::Unavailable(format!("no answer within {:?}", self.store_timeout)).into()),
        }
    }

    async fn revoke_facts(&self, jti: &str, exp: u64) -> Result<Ack, ApiError> {
        validate::jti(jti).map_err(ApiError::bad_request)?;
        let now = now();
        let Some(until) = validate::revocation_expiry(exp, now, self.clock_skew, self.max_lifetime) else {
            return Ok(Ack { stored: false }); // already expired everywhere: nothing to remember
        };
        self.bounded(self.store.revoke_jti(jti, until)).await?;
        tracing::info!(jti, until, "token revoked");
        Ok(Ack { stored: true })
    }
}

/// `POST /v1/revoke`: RFC 7009 form (`token`, `token_type_hint`) or JSON.
async fn revoke(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    revoke_inner(&s, &headers, &body).await.map(Json).into_response()
}

/// The JSON body with a raw token (the document's `RevokeByToken`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeByToken {
    token: String,
    #[serde(default)]
    #[allow(dead_code)] // accepted as RFC 7009 allows; every token is looked up the same way
    token_type_hint: Option<String>,
}

/// The JSON body with a token's facts (the document's `RevokeById`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeById {
    jti: String,
    exp: u64,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

async fn revoke_inner(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Ack, ApiError> {
    s.authorize_write(headers)?;
    let raw = match media_type(headers).as_str() {
        // RFC 7009 §2.1: the form carries the token, never its facts.
        "application/x-www-form-urlencoded" => {
            let mut fields = form::parse(body, &["token", "token_type_hint"])
                .map_err(|e| ApiError::bad_request(format!("form: {e}")))?;
            fields.remove("token").ok_or_else(|| ApiError::bad_request("form: token is required"))?
        }
        "application/json" => {
            let object = json_object(body)?;
            // A `token` member (even null) selects the token shape, whose members alone are allowed.
            if object.contains_key("token") {
                let request: RevokeByToken = from_object(object)?;
                request.token
            } else {
                let request: RevokeById = from_object(object)?;
                if let Some(iss) = &request.iss {
                    validate::iss(iss).map_err(ApiError::bad_request)?;
                }
                if let Some(sub) = &request.sub {
                    validate::sub(sub).map_err(ApiError::bad_request)?;
                }
                return s.revoke_facts(&request.jti, request.exp).await;
            }
        }
        _ => {
            return Err(ApiError::bad_request(
                "Content-Type must be application/x-www-form-urlencoded or application/json",
            ))
        }
    };
    // RFC 7009 §2.2: an invalid or unknown token is answered 200 all the same.
    let Some(identity) = token::read(&raw, s.keys.as_deref()) else {
        return Ok(Ack { stored: false });
    };
    let (Some(jti), Some(exp)) = (identity.jti, identity.exp) else {
        return Err(ApiError::bad_request("the token has no jti or exp; revoke its subject instead"));
    };
    s.revoke_facts(&jti, exp).await
}

/// `POST /v1/revoke-subject`: log out everywhere.
async fn revoke_subject(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    revoke_subject_inner(&s, &headers, &body).await.into_response()
}

async fn revoke_subject_inner(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response, ApiError> {
    s.authorize_write(headers)?;
    let request: RevokeSubjectRequest = json_body(headers, body)?;
    validate::sub(&request.sub).map_err(ApiError::bad_request)?;
    if let Some(iss) = &request.iss {
        validate::iss(iss).map_err(ApiError::bad_request)?;
    }
    let now = now();
    // Default cutoff: everything issued up to and including this second.
    let cutoff = request.issued_before.unwrap_or(now + 1).min(now + 1);
    let ttl = s.max_lifetime + s.clock_skew;
    let in_force = s.bounded(s.store.revoke_subject(&request.sub, request.iss.as_deref(), cutoff, ttl)).await?;
    tracing::info!(sub = %request.sub, iss = ?request.iss, cutoff = in_force, "subject revoked");
    Ok(Json(serde_json::json!({"stored": true, "issued_before": in_force})).into_response())
}

/// `POST /v1/sessions`: register a login for allowlist mode.
async fn register_session(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    register_session_inner(&s, &headers, &body).await.map(Json).into_response()
}

async fn register_session_inner(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<SessionResponse, ApiError> {
    s.authorize_write(headers)?;
    let request: SessionRequest = json_body(headers, body)?;
    validate::jti(&request.jti).map_err(ApiError::bad_request)?;
    validate::sub(&request.sub).map_err(ApiError::bad_request)?;
    let now = now();
    let Some(exp) = validate::revocation_expiry(request.exp, now, 0, s.max_lifetime) else {
        return Ok(SessionResponse { stored: false, ended: Vec::new() }); // already over
    };
    let ttl = s.max_lifetime + s.clock_skew;
    let ended = s.bounded(s.store.register_session(&request.jti, &request.sub, exp, now, s.session_limit, ttl)).await?;
    tracing::info!(jti = %request.jti, sub = %request.sub, ended = ?ended, "session registered");
    Ok(SessionResponse { stored: true, ended })
}

/// `DELETE /v1/sessions/{jti}`: end a session (idempotent).
async fn end_session(State(s): State<Arc<AppState>>, headers: HeaderMap, Path(jti): Path<String>) -> Response {
    end_session_inner(&s, &headers, &jti).await.map(Json).into_response()
}

async fn end_session_inner(s: &AppState, headers: &HeaderMap, jti: &str) -> Result<Ack, ApiError> {
    s.authorize_write(headers)?;
    validate::jti(jti).map_err(ApiError::bad_request)?;
    let existed = s.bounded(s.store.end_session(jti)).await?;
    Ok(Ack { stored: existed })
}

/// `POST /v1/backchannel-logout`: see `receivers::backchannel_logout`. Authenticated by the
/// logout token's signature, not a credential (the identity provider has none of ours).
async fn backchannel_logout(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    match &s.signals {
        Some(r) => receivers::backchannel_logout(r, &headers, &body, now()).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `POST /v1/ssf/push`: see `receivers::ssf_push`.
async fn ssf_push(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    match &s.signals {
        Some(r) => receivers::ssf_push(r, &headers, &body, now()).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `GET /v1/status`: may this token pass?
async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    status_inner(&s, &headers, query.as_deref().unwrap_or("")).await.map(Json).into_response()
}

async fn status_inner(
    s: &AppState,
    headers: &HeaderMap,
    query: &str,
) -> Result<jwtguard_wire::StatusResponse, ApiError> {
    if let Some(readers) = &s.readers {
        s.check(readers, headers)?;
    }
    // Unknown names are refused too: a misspelt `jti` must not be answered "active".
    let mut p = form::parse(query.as_bytes(), &["jti", "sub", "iss", "sid", "iat", "mode"])
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let allowlist = match p.get("mode").map(String::as_str) {
        None | Some("denylist") => false,
        Some("allowlist") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown mode {other:?}"))),
    };
    for (name, check) in [
        ("jti", validate::jti as fn(&str) -> Result<&str, String>),
        ("sub", validate::sub),
        ("iss", validate::iss),
        ("sid", validate::sid),
    ] {
        if let Some(v) = p.get(name) {
            check(v).map_err(ApiError::bad_request)?;
        }
    }
    let iat = match p.get("iat") {
        None => None,
        Some(v) => Some(unsigned(v).ok_or_else(|| ApiError::bad_request("iat must be seconds since the epoch"))?),
    };
    let query = StatusQuery {
        jti: p.remove("jti"),
        sub: p.remove("sub"),
        iss: p.remove("iss"),
        sid: p.remove("sid"),
        iat,
        allowlist,
    };
    s.bounded(s.store.status(&query, now())).await
}

/// `GET /v1/feed?after=POSITION&wait_ms=N`: the events after a position, held until there is
/// one or `wait_ms` passes. Authenticated and parsed as strictly as the status endpoint.
async fn feed_poll(State(s): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    feed_inner(&s, &headers, query.as_deref().unwrap_or("")).await.into_response()
}

async fn feed_inner(s: &AppState, headers: &HeaderMap, query: &str) -> Result<Response, ApiError> {
    if let Some(readers) = &s.readers {
        s.check(readers, headers)?;
    }
    let p = form::parse(query.as_bytes(), &["after", "wait_ms"])
        .map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let after = match p.get("after") {
        None => None,
        Some(a) => {
            Some(feed::parse_after(a).ok_or_else(|| ApiError::bad_request("after must be a feed position (MS-SEQ)"))?)
        }
    };
    let wait_ms = match p.get("wait_ms") {
        None => 0,
        Some(w) => unsigned(w)
            .filter(|w| *w <= MAX_WAIT_MS)
            .ok_or_else(|| ApiError::bad_request(format!("wait_ms must be an integer from 0 to {MAX_WAIT_MS}")))?,
    };
    let wait = Duration::from_millis(wait_ms).min(s.feed_max_wait);
    let page = s.feed.poll(after, wait, s.store_timeout).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], page.body(s.feed.age_ms())).into_response())
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    match s.bounded(s.store.ready()).await {
        Ok(()) => "ready".into_response(),
        Err(e) => e.into_response(),
    }
}

/// A non-negative integer as the document has it: decimal digits only (`str::parse` would also take "+5").
fn unsigned(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The request's media type, lowercase, without parameters (`; charset=…`).
fn media_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// A JSON-only request body (`application/json`) as the wire type `T`.
fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    if media_type(headers) != "application/json" {
        return Err(ApiError::bad_request("Content-Type must be application/json"));
    }
    from_object(json_object(body)?)
}

/// Every JSON request body is read here: the document describes each as an object, so exactly
/// one object, with no member named twice at any depth. Arrays must not get as far as serde,
/// whose derived structs also read a sequence (`["alice"]` as `{"sub": "alice"}`).
fn json_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    strict_json::parse_object(body).map_err(|e| ApiError::bad_request(format!("JSON: {e}")))
}

/// An object from `json_object` as the wire type `T`, which refuses unknown members.
fn from_object<T: DeserializeOwned>(object: Map<String, Value>) -> Result<T, ApiError> {
    serde_json::from_value(Value::Object(object)).map_err(|e| ApiError::bad_request(format!("JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json; charset=utf-8"));
        headers
    }

    #[test]
    fn json_bodies_are_exactly_one_object() {
        let h = json_headers();
        let subject: RevokeSubjectRequest = json_body(&h, br#"{"sub":"alice","issued_before":5}"#).ok().unwrap();
        assert_eq!((subject.sub.as_str(), subject.issued_before), ("alice", Some(5)));
        let session: SessionRequest = json_body(&h, br#"{"jti":"j1","sub":"bob","exp":9}"#).ok().unwrap();
        assert_eq!((session.jti.as_str(), session.exp), ("j1", 9));
        for bad in [
            &br#"["alice"]"#[..],
            br#"["alice","https://issuer",5]"#,
            br#"{"sub":"alice","sub":"bob"}"#,
            br#""alice""#,
            b"5",
            b"null",
            b"",
            br#"{"sub":"alice"} {}"#,
            br#"{"sub":"alice","x":1}"#,
        ] {
            assert!(json_body::<RevokeSubjectRequest>(&h, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        for bad in [&br#"["j1","bob",9999999999]"#[..], br#"{"jti":"j1","jti":"j2","sub":"bob","exp":9}"#, b"true"] {
            assert!(json_body::<SessionRequest>(&h, bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        // /v1/revoke reads its JSON through the same two steps.
        assert!(json_object(br#"["t"]"#).is_err());
        assert!(json_object(br#"{"token":"a","token":"b"}"#).is_err());
        assert!(from_object::<RevokeByToken>(json_object(br#"{"token":"t"}"#).ok().unwrap()).is_ok());
        assert!(json_body::<SessionRequest>(&HeaderMap::new(), br#"{"jti":"j1","sub":"bob","exp":9}"#).is_err());
    }

    #[test]
    fn integers_are_digits_only() {
        assert_eq!(unsigned("0"), Some(0));
        assert_eq!(unsigned("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "+5", "-1", " 1", "1.5", "1e3", "18446744073709551616"] {
            assert_eq!(unsigned(bad), None, "{bad:?}");
        }
    }
}
