//! Why a request was refused: one value that travels from the check to the response and the stats.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token where the route requires one.
    Missing,
    /// The token was sent by more than one method (RFC 6750 §2).
    MultipleTokens,
    /// Not a well-formed compact JWS or claim set.
    Malformed,
    /// No configured key fits, the algorithm is not allowed, or the signature does not verify.
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// Missing `exp` where required, a lifetime above `max_lifetime_seconds`, or a wrong `typ`.
    InvalidClaims,
    /// A claim requirement of the route is not met.
    InsufficientScope,
    /// The revocation service says the token was revoked (or, in allowlist mode, is no session).
    Revoked,
    /// The revocation status is unknown and the failure mode is closed: 503, try again.
    RevocationUnavailable,
    /// A remote JWKS provider has no key with the token's `kid` (after any refetch).
    UnknownKey,
    /// A remote JWKS provider has no usable keys (never fetched, or stale for too long): 503.
    KeysUnavailable,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::Missing,
        Reason::MultipleTokens,
        Reason::Malformed,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::InvalidClaims,
        Reason::InsufficientScope,
        Reason::Revoked,
        Reason::RevocationUnavailable,
        Reason::UnknownKey,
        Reason::KeysUnavailable,
    ];

    /// Whether the answer is 503 "try again" rather than a verdict on the token.
    pub fn is_unavailable(self) -> bool {
        matches!(self, Reason::RevocationUnavailable | Reason::KeysUnavailable)
    }

    /// The name used in stats (`jwtguard.denied.<name>`) and logs.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::MultipleTokens => "multiple_tokens",
            Reason::Malformed => "malformed",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::InvalidClaims => "invalid_claims",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::Revoked => "revoked",
            Reason::RevocationUnavailable => "revocation_unavailable",
            Reason::UnknownKey => "unknown_key",
            Reason::KeysUnavailable => "keys_unavailable",
        }
    }

    /// The `error_description` a client sees (RFC 6750 §3).
    pub fn description(self) -> &'static str {
        match self {
            Reason::Missing => "bearer token required",
            Reason::MultipleTokens => "token sent by more than one method",
            Reason::Malformed => "token is malformed",
            Reason::BadSignature => "token signature is invalid",
            Reason::Expired => "token expired",
            Reason::NotYetValid => "token not yet valid",
            Reason::WrongIssuer => "token issuer is not accepted",
            Reason::WrongAudience => "token audience is not accepted",
            Reason::InvalidClaims => "token claims are invalid",
            Reason::InsufficientScope => "token lacks a required claim",
            Reason::Revoked => "token revoked",
            Reason::RevocationUnavailable => "revocation status unavailable, retry",
            Reason::UnknownKey => "no key for this token",
            Reason::KeysUnavailable => "verification keys unavailable, retry",
        }
    }

    /// When several providers fail, the response names the most telling failure: a token that
    /// was present but bad says more than "missing".
    pub fn severity(self) -> u8 {
        match self {
            Reason::Missing => 0,
            Reason::WrongIssuer => 1,
            _ => 2,
        }
    }
}
