//! The revocation service's wire types: one definition for the service, the filter that calls
//! it and the tests, so the two sides cannot drift apart.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: may this token pass? Named after RFC 7662's `active`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusResponse {
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<InactiveReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InactiveReason {
    /// The token's `jti` was revoked.
    Revoked,
    /// The subject logged out everywhere after this token was issued.
    SubjectRevoked,
    /// Allowlist mode: the token is not a registered, live session.
    NoSession,
    /// The identity provider logged the token's session (`sid`) out.
    SessionRevoked,
}

/// `POST /v1/revoke` as JSON: a raw token, or its `jti` and `exp`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type_hint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// `POST /v1/revoke-subject`: every token of `sub` issued before the cutoff is revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeSubjectRequest {
    pub sub: String,
    /// Limits the cutoff to one issuer; without it the cutoff holds for every issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Seconds since the epoch; default now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<u64>,
}

/// `POST /v1/sessions`: register a login (allowlist mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub jti: String,
    pub sub: String,
    pub exp: u64,
}

/// The answer to a session registration: sessions ended to respect the per-subject limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResponse {
    /// False when `exp` had already passed: nothing was registered.
    pub stored: bool,
    pub ended: Vec<String>,
}

/// The answer to every successful write that has nothing else to say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Whether this call stored something (false: already expired, or nothing to do).
    pub stored: bool,
}

/// An error in the style of RFC 6749 §5.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// `GET /v1/feed?after=POSITION&wait_ms=N`: every write that can refuse a token, in order, from
/// after `position`. A client without a position (or whose position was trimmed away) gets the
/// whole live set, in pages. The set is a join: nothing is ever un-revoked (a `jti` stays revoked
/// until its `exp`, a cutoff only moves forward, an ended session stays ended), so events can be
/// applied in any order and more than once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedResponse {
    /// Where to continue from (opaque to clients; a Redis stream id).
    pub position: String,
    /// More events are ready now: ask again at once. A client that has seen a page with
    /// `more: false` holds the whole live set.
    pub more: bool,
    pub events: Vec<FeedEvent>,
    /// How long before this answer the service last heard from Redis (ms): the answer is
    /// current as of then. A duration, not a time, so no two clocks need agree.
    #[serde(default)]
    pub age_ms: u64,
}

/// One write that can refuse tokens. Each matters until its `until` (seconds since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeedEvent {
    /// The token `jti` is revoked until it expires.
    Revoked { jti: String, until: u64 },
    /// Tokens of `sub` (from `iss`, or from any issuer without it) issued before `before` are
    /// revoked; after `until` no such token is still valid.
    SubjectCutoff {
        sub: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        iss: Option<String>,
        before: u64,
        until: u64,
    },
    /// Allowlist mode: the session of token `jti` ended (logout, or the subject's session limit).
    SessionEnded { jti: String, until: u64 },
    /// The identity provider `iss` logged out its session `sid` (back-channel logout, CAEP
    /// `session-revoked`): every token of `iss` carrying that `sid` claim is revoked.
    SidRevoked { iss: String, sid: String, until: u64 },
}

impl FeedEvent {
    /// Until when the event can refuse a token (seconds since the epoch).
    pub fn until(&self) -> u64 {
        match self {
            FeedEvent::Revoked { until, .. }
            | FeedEvent::SubjectCutoff { until, .. }
            | FeedEvent::SessionEnded { until, .. }
            | FeedEvent::SidRevoked { until, .. } => *until,
        }
    }
}
