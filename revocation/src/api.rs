//! The HTTP API: each handler parses and validates its input, checks the caller's credential,
//! calls the store, and answers with the shared wire types. See `openapi.json`.

use crate::auth::Credentials;
use crate::store::{StatusQuery, Store, StoreError};
use crate::{token, validate};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use jwtguard::keys::Key;
use jwtguard_wire::{Ack, ErrorBody, RevokeRequest, RevokeSubjectRequest, SessionRequest, SessionResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use std::collections::HashMap;
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
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/revoke", post(revoke))
        .route("/v1/revoke-subject", post(revoke_subject))
        .route("/v1/sessions", post(register_session))
        .route("/v1/sessions/{jti}", delete(end_session))
        .route("/v1/status", get(status))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(|State(s): State<Arc<AppState>>| async move { s.prometheus.render() }))
        .route("/openapi.json", get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }))
        .layer(DefaultBodyLimit::max(validate::MAX_BODY_BYTES))
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

/// Counts the request by endpoint and outcome (the status code).
fn counted<T: IntoResponse>(endpoint: &'static str, result: Result<T, ApiError>) -> Response {
    let response = result.into_response();
    let outcome = response.status().as_u16().to_string();
    metrics::counter!("jwtguard_revocation_requests_total", "endpoint" => endpoint, "outcome" => outcome).increment(1);
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
    counted("revoke", revoke_inner(&s, &headers, &body).await.map(Json))
}

async fn revoke_inner(s: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<Ack, ApiError> {
    s.authorize_write(headers)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let request: RevokeRequest = if content_type.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body).map_err(|e| ApiError::bad_request(format!("form: {e}")))?
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("JSON: {e}")))?
    } else {
        return Err(ApiError::bad_request(
            "Content-Type must be application/x-www-form-urlencoded or application/json",
        ));
    };
    match (&request.token, &request.jti) {
        (Some(raw), None) => {
            // RFC 7009 §2.2: an invalid or unknown token is answered 200 all the same.
            let Some(identity) = token::read(raw, s.keys.as_deref()) else {
                return Ok(Ack { stored: false });
            };
            let (Some(jti), Some(exp)) = (identity.jti, identity.exp) else {
                return Err(ApiError::bad_request("the token has no jti or exp; revoke its subject instead"));
            };
            s.revoke_facts(&jti, exp).await
        }
        (None, Some(jti)) => {
            let exp = request.exp.ok_or_else(|| ApiError::bad_request("exp is required with jti"))?;
            if let Some(iss) = &request.iss {
                validate::iss(iss).map_err(ApiError::bad_request)?;
            }
            if let Some(sub) = &request.sub {
                validate::sub(sub).map_err(ApiError::bad_request)?;
            }
            s.revoke_facts(jti, exp).await
        }
        _ => Err(ApiError::bad_request("give exactly one of token and jti")),
    }
}

/// `POST /v1/revoke-subject`: log out everywhere.
async fn revoke_subject(State(s): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    counted("revoke_subject", revoke_subject_inner(&s, &headers, &body).await)
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
    counted("register_session", register_session_inner(&s, &headers, &body).await.map(Json))
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
    counted("end_session", end_session_inner(&s, &headers, &jti).await.map(Json))
}

async fn end_session_inner(s: &AppState, headers: &HeaderMap, jti: &str) -> Result<Ack, ApiError> {
    s.authorize_write(headers)?;
    validate::jti(jti).map_err(ApiError::bad_request)?;
    let existed = s.bounded(s.store.end_session(jti)).await?;
    Ok(Ack { stored: existed })
}

#[derive(Deserialize)]
struct StatusParams {
    jti: Option<String>,
    sub: Option<String>,
    iss: Option<String>,
    iat: Option<String>,
    mode: Option<String>,
}

/// `GET /v1/status`: may this token pass?
async fn status(State(s): State<Arc<AppState>>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    counted("status", status_inner(&s, &headers, query.as_deref().unwrap_or("")).await.map(Json))
}

async fn status_inner(
    s: &AppState,
    headers: &HeaderMap,
    query: &str,
) -> Result<jwtguard_wire::StatusResponse, ApiError> {
    if let Some(readers) = &s.readers {
        s.check(readers, headers)?;
    }
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| ApiError::bad_request(format!("query: {e}")))?;
    let mut raw = HashMap::new();
    for (name, value) in pairs {
        if raw.insert(name.clone(), value).is_some() {
            return Err(ApiError::bad_request(format!("parameter {name:?} is repeated")));
        }
    }
    let get = |k: &str| raw.get(k).cloned();
    let p = StatusParams { jti: get("jti"), sub: get("sub"), iss: get("iss"), iat: get("iat"), mode: get("mode") };
    let allowlist = match p.mode.as_deref() {
        None | Some("denylist") => false,
        Some("allowlist") => true,
        Some(other) => return Err(ApiError::bad_request(format!("unknown mode {other:?}"))),
    };
    for (check, value) in
        [(validate::jti as fn(&str) -> Result<&str, String>, &p.jti), (validate::sub, &p.sub), (validate::iss, &p.iss)]
    {
        if let Some(v) = value {
            check(v).map_err(ApiError::bad_request)?;
        }
    }
    let iat = match p.iat.as_deref() {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| ApiError::bad_request("iat must be seconds since the epoch"))?),
    };
    let query = StatusQuery { jti: p.jti, sub: p.sub, iss: p.iss, iat, allowlist };
    s.bounded(s.store.status(&query, now())).await
}

async fn ready(State(s): State<Arc<AppState>>) -> Response {
    match s.bounded(s.store.ready()).await {
        Ok(()) => "ready".into_response(),
        Err(e) => e.into_response(),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(ApiError::bad_request("Content-Type must be application/json"));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("JSON: {e}")))
}
