//! Signals from identity providers, without I/O: OpenID Connect Back-Channel Logout 1.0 logout
//! tokens and Security Event Tokens (RFC 8417) as the OpenID Shared Signals Framework 1.0 sends
//! them with CAEP 1.0 and RISC 1.0 events. Each is verified with the filter's own JWS core
//! (`jwtguard::jws`, `signature`, `claims`) and turned into what it asks us to revoke; the
//! receivers (`receivers.rs`) fetch the keys, check replay and write.

use jsonwebtoken::Algorithm;
use jwtguard::keys::Key;
use jwtguard::revocation::{id_problem, MAX_ID_CHARS, MAX_ISS_CHARS};
use jwtguard::{claims, jws, signature, strict_json};
use serde_json::{Map, Value};

pub const BACKCHANNEL_LOGOUT: &str = "http://schemas.openid.net/event/backchannel-logout";
const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";

/// What a signal asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Every token of issuer `iss` carrying this `sid` claim.
    Sid { iss: String, sid: String },
    /// Every token of `sub` from `iss` issued before `before` (seconds).
    Subject { iss: String, sub: String, before: u64 },
}

/// What became of one event in a signal, for the metrics (`event` and `outcome` labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The event type's short name (`session-revoked`, …), `other` for one we do not know.
    pub event: &'static str,
    pub action: Option<Action>,
}

/// A verified signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signal {
    pub iss: String,
    pub jti: String,
    /// Until when its `jti` must be remembered: past it the signal is refused as too old anyway.
    pub remember_until: u64,
    pub events: Vec<Handled>,
}

/// Why a signal was refused, as RFC 8935 §2.3 names it (`err`); a back-channel logout answers
/// every one as `invalid_request` (the specification's only error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub err: &'static str,
    pub description: String,
    /// No key of the issuer's set fitted the token's `kid` and `alg`: the caller may refresh
    /// the set once and try again.
    pub unknown_key: bool,
}

fn refuse(err: &'static str, description: impl Into<String>) -> Refusal {
    Refusal { err, description: description.into(), unknown_key: false }
}

fn invalid(description: impl Into<String>) -> Refusal {
    refuse("invalid_request", description)
}

/// A trusted identity provider: who it is, how its signals are verified, whom they may name.
#[derive(Debug, Clone)]
pub struct Trust {
    pub issuer: String,
    /// The `iss` of the tokens its signals are about (default: its own issuer). The first scopes
    /// what a signal names without an issuer (a logout token's `sid`/`sub`, an `opaque`
    /// subject); an `iss_sub` subject must name one of them, so a transmitter can never revoke
    /// the users of an issuer it does not speak for.
    pub subject_issuers: Vec<String>,
    /// Whether the access tokens carry the `sid` claim. Without it, a session's logout is a
    /// logout of its user everywhere (a `sid` alone matches no token).
    pub sid_in_access_tokens: bool,
    /// Ours: a signal must name at least one (`aud`).
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    pub clock_skew_seconds: u64,
    /// The oldest `iat` a logout token may have.
    pub logout_token_max_age_seconds: u64,
    /// The oldest `iat` a SET may have (polled SETs may wait in the transmitter's queue).
    pub set_max_age_seconds: u64,
}

/// The kind of token a receiver takes; each has its own `typ` and rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    LogoutToken,
    SecurityEventToken,
}

/// The `iss` a token claims, read before verification to choose the keys (and refused with
/// `invalid_issuer` unless it is trusted).
pub fn claimed_issuer(token: &str) -> Result<String, Refusal> {
    let parsed = jws::parse(token).map_err(|e| invalid(format!("not a signed JWT (compact JWS): {}", e.0)))?;
    let claims = strict_json::parse_object(&parsed.payload).map_err(|_| invalid("the claims are not a JSON object"))?;
    claims.get("iss").and_then(Value::as_str).map(String::from).ok_or_else(|| invalid("iss is required"))
}

/// Verifies `token` as `kind` from `trust` with `keys` at `now` (seconds).
pub fn verify(kind: Kind, token: &str, trust: &Trust, keys: &[Key], now: u64) -> Result<Signal, Refusal> {
    let parsed = jws::parse(token).map_err(|e| invalid(format!("not a signed JWT (compact JWS): {}", e.0)))?;
    check_typ(kind, parsed.typ.as_deref())?;
    if !parsed.alg.parse::<Algorithm>().is_ok_and(|alg| trust.algorithms.contains(&alg)) {
        return Err(refuse("invalid_key", format!("alg {:?} is not allowed for this issuer", parsed.alg)));
    }
    let verdict = signature::verify(keys, &parsed, None);
    if !verdict.valid {
        let unknown_key = verdict.backend.is_none();
        let what = if unknown_key { "no key of the issuer fits kid and alg" } else { "the signature does not verify" };
        return Err(Refusal { err: "invalid_key", description: what.into(), unknown_key });
    }
    let claims = strict_json::parse_object(&parsed.payload).map_err(|_| invalid("the claims are not a JSON object"))?;
    if claims.get("iss").and_then(Value::as_str) != Some(trust.issuer.as_str()) {
        return Err(refuse("invalid_issuer", "iss is not the trusted issuer"));
    }
    check_audience(&claims, &trust.audiences)?;
    let date =
        |name: &str| claims::numeric_date(&claims, name).map_err(|_| invalid(format!("{name} is not a NumericDate")));
    let skew = trust.clock_skew_seconds;
    let iat = date("iat")?.ok_or_else(|| invalid("iat is required"))?;
    let max_age = match kind {
        Kind::LogoutToken => trust.logout_token_max_age_seconds,
        Kind::SecurityEventToken => trust.set_max_age_seconds,
    };
    if iat > now + skew {
        return Err(invalid("iat is in the future"));
    }
    if iat + max_age + skew < now {
        return Err(invalid(format!("iat is more than {max_age} s old")));
    }
    // Back-Channel Logout 1.0 final requires `exp`, but providers that predate it (Keycloak
    // before 22.0.x, Ory Hydra 2.2, …) omit it: the `iat` window bounds the age either way.
    let exp = date("exp")?;
    if exp.is_some_and(|exp| exp + skew <= now) {
        return Err(invalid("the token has expired"));
    }
    let jti = text(&claims, "jti", MAX_ID_CHARS)?.ok_or_else(|| invalid("jti is required"))?;
    let events = claims.get("events").and_then(Value::as_object).ok_or_else(|| invalid("events must be an object"))?;
    if let Some((name, _)) = events.iter().find(|(_, payload)| !payload.is_object()) {
        return Err(invalid(format!("the event {name} must be an object")));
    }
    // Remembered as long as it could be accepted: until its iat is too old or it expires.
    // (The second after the last it could be accepted in: `EXAT` ends a key at that second.)
    let remember_until = (iat + max_age).min(exp.unwrap_or(u64::MAX)) + skew + 1;
    let latest = now + skew;
    let events = match kind {
        Kind::LogoutToken => vec![logout(&claims, events, trust, iat, latest)?],
        Kind::SecurityEventToken => security_events(&claims, events, trust, iat, latest)?,
    };
    Ok(Signal { iss: trust.issuer.clone(), jti, remember_until, events })
}

/// Logout tokens are `logout+jwt` (§2.4, against cross-JWT confusion); issuers that predate
/// explicit typing send `JWT` or nothing. SETs must be `secevent+jwt` (SSF 1.0 §4.1.3): the
/// type is what keeps an access or ID token from passing as a signal. `application/` may
/// prefix either (RFC 7515 §4.1.9).
fn check_typ(kind: Kind, typ: Option<&str>) -> Result<(), Refusal> {
    let typ = typ.map(|t| t.to_ascii_lowercase());
    let typ = typ.as_deref().map(|t| t.strip_prefix("application/").unwrap_or(t));
    let ok = match kind {
        Kind::LogoutToken => matches!(typ, None | Some("jwt" | "logout+jwt")),
        Kind::SecurityEventToken => typ == Some("secevent+jwt"),
    };
    if ok {
        Ok(())
    } else {
        let wanted = if kind == Kind::LogoutToken { "logout+jwt" } else { "secevent+jwt" };
        Err(invalid(format!("typ must be {wanted}")))
    }
}

fn check_audience(claims: &Map<String, Value>, ours: &[String]) -> Result<(), Refusal> {
    let named: Vec<&str> = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if named.iter().any(|a| ours.iter().any(|o| o == a)) {
        Ok(())
    } else {
        Err(refuse("invalid_audience", "aud does not name this receiver"))
    }
}

/// A string member that must be a storable identifier when present.
fn text(object: &Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, Refusal> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(v)) => match id_problem(name, v, max) {
            Some(problem) => Err(invalid(problem)),
            None => Ok(Some(v.clone())),
        },
        Some(_) => Err(invalid(format!("{name} must be a string"))),
    }
}

/// Back-Channel Logout 1.0 §2.6: the back-channel-logout event, `sid` and/or `sub`, no `nonce`.
/// With `sid` that session is logged out; with `sub` alone (or when access tokens carry no
/// `sid`) every session of the subject, by a cutoff at the logout token's `iat`.
fn logout(
    claims: &Map<String, Value>,
    events: &Map<String, Value>,
    trust: &Trust,
    iat: u64,
    latest: u64,
) -> Result<Handled, Refusal> {
    if !events.contains_key(BACKCHANNEL_LOGOUT) {
        return Err(invalid(format!("events must hold {BACKCHANNEL_LOGOUT}")));
    }
    if claims.contains_key("nonce") {
        return Err(invalid("a logout token must not hold nonce"));
    }
    let sid = text(claims, "sid", MAX_ID_CHARS)?;
    let sub = text(claims, "sub", MAX_ID_CHARS)?;
    if sid.is_none() && sub.is_none() {
        return Err(invalid("a logout token must hold sid or sub"));
    }
    let scope = trust.scope();
    let action = match (sid, sub) {
        (Some(sid), _) if trust.sid_in_access_tokens => Some(Action::Sid { iss: scope.to_string(), sid }),
        (_, Some(sub)) => Some(Action::Subject { iss: scope.to_string(), sub, before: cutoff(iat, latest) }),
        // A session whose tokens cannot be told apart, of a user not named: nothing to act on.
        (_, None) => None,
    };
    Ok(Handled { event: "backchannel-logout", action })
}

/// A subject cutoff at an event's time `at`, never later than `latest` (now + skew): inclusive,
/// as `/v1/revoke-subject`'s default, so a token issued in the event's second is refused too.
fn cutoff(at: u64, latest: u64) -> u64 {
    at.min(latest).saturating_add(1)
}

/// The CAEP and RISC events we act on, and what each asks for.
fn event_name(uri: &str) -> Option<&'static str> {
    const KNOWN: &[(&str, &str)] = &[
        (CAEP, "session-revoked"),
        (CAEP, "credential-change"),
        (RISC, "account-disabled"),
        (RISC, "account-purged"),
        (RISC, "sessions-revoked"),
        (RISC, "credential-compromise"),
    ];
    let (base, name) = uri.split_at(uri.rfind('/')? + 1);
    KNOWN.iter().find(|(b, n)| *b == base && *n == name).map(|(_, n)| *n)
}

/// Each event of a SET: acted on (a known event about a subject we can name), or taken in
/// and counted (`action: None`): RFC 8935 asks the receiver to acknowledge what it does not act on.
fn security_events(
    claims: &Map<String, Value>,
    events: &Map<String, Value>,
    trust: &Trust,
    iat: u64,
    latest: u64,
) -> Result<Vec<Handled>, Refusal> {
    if events.is_empty() {
        return Err(invalid("events must hold at least one event"));
    }
    let mut handled = Vec::new();
    for (uri, payload) in events {
        let Some(event) = event_name(uri) else {
            handled.push(Handled { event: "other", action: None });
            continue;
        };
        // SSF 1.0 puts the subject in `sub_id`; CAEP's and RISC's earlier drafts in the event.
        let subject = claims.get("sub_id").or_else(|| payload.get("subject"));
        let Some(subject) = subject else {
            return Err(invalid(format!("{event}: sub_id is required")));
        };
        let at = match payload.get("event_timestamp") {
            None => iat,
            // A JSON number (CAEP 1.0): whole seconds of a fractional one.
            Some(t) => match t.as_f64() {
                Some(t) if (0.0..9.007_199_254_740_992e15).contains(&t) => t as u64,
                _ => return Err(invalid("event_timestamp must be a NumericDate")),
            },
        };
        let subject = read_subject(subject, trust)?;
        // CAEP 1.0: a session-revoked event about a simple opaque subject names the session.
        let session = match (&subject.session, &subject.opaque) {
            (Some(session), _) => Some(session.clone()),
            (None, Some(id)) if event == "session-revoked" => Some((trust.scope().to_string(), id.clone())),
            _ => None,
        };
        // A new credential (CAEP credential-change `create`, e.g. an enrolled second factor)
        // does not make the tokens already issued suspect.
        let created =
            event == "credential-change" && payload.get("change_type").and_then(Value::as_str) == Some("create");
        let action = match (event, session, subject.user) {
            _ if created => None,
            ("session-revoked", Some((iss, sid)), _) if trust.sid_in_access_tokens => Some(Action::Sid { iss, sid }),
            (_, _, Some((iss, sub))) => Some(Action::Subject { iss, sub, before: cutoff(at, latest) }),
            // A subject in a format we cannot match to tokens (email, phone number…), or a
            // session whose tokens cannot be told apart.
            _ => None,
        };
        handled.push(Handled { event, action });
    }
    Ok(handled)
}

/// What a subject identifier names (RFC 9493, and SSF 1.0's complex subject with `user` and
/// `session`): the user as (issuer, `sub`), the session as (issuer, `sid`), and, for a simple
/// `opaque` subject, its id (a user, or for CAEP session-revoked a session).
#[derive(Default)]
struct Subject {
    user: Option<(String, String)>,
    session: Option<(String, String)>,
    opaque: Option<String>,
}

fn read_subject(subject: &Value, trust: &Trust) -> Result<Subject, Refusal> {
    let object = subject.as_object().ok_or_else(|| invalid("the subject must be an object"))?;
    match object.get("format").and_then(Value::as_str) {
        Some("iss_sub") => {
            let iss = text(object, "iss", MAX_ISS_CHARS)?.ok_or_else(|| invalid("iss_sub: iss is required"))?;
            let sub = text(object, "sub", MAX_ID_CHARS)?.ok_or_else(|| invalid("iss_sub: sub is required"))?;
            if !trust.subject_issuers.contains(&iss) {
                return Err(invalid(format!("iss_sub: this transmitter may not name subjects of {iss:?}")));
            }
            Ok(Subject { user: Some((iss, sub)), ..Subject::default() })
        }
        Some("opaque") => {
            let id = text(object, "id", MAX_ID_CHARS)?.ok_or_else(|| invalid("opaque: id is required"))?;
            Ok(Subject { user: Some((trust.scope().to_string(), id.clone())), opaque: Some(id), session: None })
        }
        Some("complex") | None if object.contains_key("user") || object.contains_key("session") => {
            let user = match object.get("user") {
                Some(user) => read_subject(user, trust)?.user,
                None => None,
            };
            let session = match object.get("session") {
                Some(session) => {
                    let session = session.as_object().ok_or_else(|| invalid("session must be an object"))?;
                    match session.get("format").and_then(Value::as_str) {
                        // The session belongs to the user's issuer.
                        Some("opaque") => text(session, "id", MAX_ID_CHARS)?.map(|sid| {
                            let iss = user.as_ref().map_or(trust.scope(), |(iss, _)| iss.as_str());
                            (iss.to_string(), sid)
                        }),
                        _ => None,
                    }
                }
                None => None,
            };
            Ok(Subject { user, session, opaque: None })
        }
        // RFC 9493 aliases: one subject under several identifiers; the first we can match.
        Some("aliases") => {
            let identifiers = object.get("identifiers").and_then(Value::as_array);
            let identifiers = identifiers.ok_or_else(|| invalid("aliases: identifiers must be a list"))?;
            let mut found = Subject::default();
            for identifier in identifiers {
                let subject = read_subject(identifier, trust)?;
                if found.user.is_none() {
                    found = subject;
                }
            }
            Ok(found)
        }
        Some(_) => Ok(Subject::default()),
        None => Err(invalid("the subject has no format")),
    }
}

impl Trust {
    /// The issuer what a signal names without one belongs to.
    pub fn scope(&self) -> &str {
        self.subject_issuers.first().map_or(self.issuer.as_str(), String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const SECRET: [u8; 32] = [7; 32];

    fn trust() -> Trust {
        Trust {
            issuer: "https://idp".into(),
            audiences: vec!["rp".into()],
            algorithms: vec![Algorithm::HS256],
            clock_skew_seconds: 60,
            logout_token_max_age_seconds: 300,
            set_max_age_seconds: 86_400,
            subject_issuers: vec!["https://idp".into(), "https://other".into()],
            sid_in_access_tokens: true,
        }
    }

    fn keys() -> Vec<Key> {
        vec![jwtguard::keys::from_secret(&SECRET, Some("k1".into()), None, &[Algorithm::HS256]).unwrap()]
    }

    fn sign(header: Value, claims: Value) -> String {
        use hmac::Mac;
        let input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&SECRET).unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn logout_claims() -> Value {
        json!({"iss": "https://idp", "aud": "rp", "iat": NOW, "exp": NOW + 120, "jti": "l1",
               "events": {BACKCHANNEL_LOGOUT: {}}, "sid": "s1", "sub": "alice"})
    }

    fn logout_token(claims: Value) -> String {
        sign(json!({"alg": "HS256", "kid": "k1", "typ": "logout+jwt"}), claims)
    }

    fn check_logout(token: &str) -> Result<Signal, Refusal> {
        verify(Kind::LogoutToken, token, &trust(), &keys(), NOW)
    }

    #[test]
    fn a_logout_token_by_sid_or_by_sub() {
        let signal = check_logout(&logout_token(logout_claims())).unwrap();
        assert_eq!((signal.iss.as_str(), signal.jti.as_str()), ("https://idp", "l1"));
        assert_eq!(signal.remember_until, NOW + 120 + 60 + 1, "until it expires (before its iat is too old)");
        assert_eq!(
            signal.events,
            vec![Handled {
                event: "backchannel-logout",
                action: Some(Action::Sid { iss: "https://idp".into(), sid: "s1".into() })
            }]
        );
        let mut by_sub = logout_claims();
        by_sub.as_object_mut().unwrap().remove("sid");
        by_sub["aud"] = json!(["other", "rp"]);
        let signal = check_logout(&logout_token(by_sub)).unwrap();
        assert_eq!(
            signal.events[0].action,
            Some(Action::Subject { iss: "https://idp".into(), sub: "alice".into(), before: NOW + 1 }),
            "inclusive of the logout's second"
        );
        // Access tokens without sid: a session's logout logs its user out everywhere.
        let coarse = Trust { sid_in_access_tokens: false, ..trust() };
        let both = verify(Kind::LogoutToken, &logout_token(logout_claims()), &coarse, &keys(), NOW).unwrap();
        assert_eq!(
            both.events[0].action,
            Some(Action::Subject { iss: "https://idp".into(), sub: "alice".into(), before: NOW + 1 })
        );
        let mut sid_only = logout_claims();
        sid_only.as_object_mut().unwrap().remove("sub");
        let nothing = verify(Kind::LogoutToken, &logout_token(sid_only), &coarse, &keys(), NOW).unwrap();
        assert_eq!(nothing.events[0].action, None, "a session whose tokens cannot be told apart");
        // What a provider's tokens carry as iss may differ from its own: the first subject issuer.
        let elsewhere = Trust { subject_issuers: vec!["https://tokens".into()], ..trust() };
        let scoped = verify(Kind::LogoutToken, &logout_token(logout_claims()), &elsewhere, &keys(), NOW).unwrap();
        assert_eq!(scoped.events[0].action, Some(Action::Sid { iss: "https://tokens".into(), sid: "s1".into() }));
        // exp is checked when present; providers that predate BCL 1.0 final omit it.
        let mut no_exp = logout_claims();
        no_exp.as_object_mut().unwrap().remove("exp");
        let signal = check_logout(&logout_token(no_exp)).unwrap();
        assert_eq!(signal.remember_until, NOW + 300 + 60 + 1, "until its iat is too old");
        for typ in [json!("JWT"), json!("application/logout+jwt"), json!("Logout+JWT")] {
            let token = sign(json!({"alg": "HS256", "kid": "k1", "typ": typ}), logout_claims());
            assert!(check_logout(&token).is_ok(), "{typ}");
        }
        let untyped = sign(json!({"alg": "HS256", "kid": "k1"}), logout_claims());
        assert!(check_logout(&untyped).is_ok());
    }

    /// Every rule of Back-Channel Logout 1.0 §2.6, each refused on its own.
    #[test]
    fn every_logout_token_rule_refuses() {
        let with = |change: &dyn Fn(&mut Map<String, Value>)| {
            let mut claims = logout_claims();
            change(claims.as_object_mut().unwrap());
            logout_token(claims)
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (with(&|c| drop(c.insert("aud".into(), json!("other")))), "invalid_audience", "aud"),
            (with(&|c| drop(c.insert("aud".into(), json!(["a", 5])))), "invalid_audience", "aud"),
            (with(&|c| drop(c.remove("aud"))), "invalid_audience", "aud"),
            (with(&|c| drop(c.insert("iss".into(), json!("https://evil")))), "invalid_issuer", "iss"),
            (with(&|c| drop(c.remove("iat"))), "invalid_request", "iat is required"),
            (with(&|c| drop(c.insert("iat".into(), json!(NOW - 361)))), "invalid_request", "old"),
            (with(&|c| drop(c.insert("iat".into(), json!(NOW + 61)))), "invalid_request", "future"),
            (with(&|c| drop(c.insert("iat".into(), json!("now")))), "invalid_request", "NumericDate"),
            (with(&|c| drop(c.insert("exp".into(), json!(NOW - 60)))), "invalid_request", "expired"),
            (with(&|c| drop(c.remove("jti"))), "invalid_request", "jti"),
            (with(&|c| drop(c.insert("jti".into(), json!("")))), "invalid_request", "jti"),
            (with(&|c| drop(c.remove("events"))), "invalid_request", "events"),
            (with(&|c| drop(c.insert("events".into(), json!({})))), "invalid_request", "events must hold"),
            (with(&|c| drop(c.insert("events".into(), json!({BACKCHANNEL_LOGOUT: "x"})))), "invalid_request", "object"),
            (with(&|c| drop(c.insert("events".into(), json!([BACKCHANNEL_LOGOUT])))), "invalid_request", "events"),
            (with(&|c| drop(c.insert("nonce".into(), json!("n")))), "invalid_request", "nonce"),
            (
                with(&|c| {
                    c.remove("sid");
                    c.remove("sub");
                }),
                "invalid_request",
                "sid or sub",
            ),
            (with(&|c| drop(c.insert("sid".into(), json!(7)))), "invalid_request", "sid must be a string"),
            (with(&|c| drop(c.insert("sid".into(), json!("a\nb")))), "invalid_request", "control"),
            (with(&|c| drop(c.insert("sub".into(), json!("x".repeat(257))))), "invalid_request", "sub"),
            (
                sign(json!({"alg": "HS256", "kid": "k1", "typ": "secevent+jwt"}), logout_claims()),
                "invalid_request",
                "typ",
            ),
            (sign(json!({"alg": "HS256", "kid": "k1", "typ": "at+jwt"}), logout_claims()), "invalid_request", "typ"),
            (sign(json!({"alg": "HS384", "kid": "k1"}), logout_claims()), "invalid_key", "alg"),
            (sign(json!({"alg": "none", "kid": "k1"}), logout_claims()), "invalid_request", "none"),
            (sign(json!({"alg": "HS256", "kid": "k2"}), logout_claims()), "invalid_key", "no key"),
            (format!("{}x", logout_token(logout_claims())), "invalid_key", "signature"),
            ("a.b".into(), "invalid_request", "compact JWS"),
            ("a.b.c.d.e".into(), "invalid_request", "compact JWS"),
        ];
        for (token, err, words) in cases {
            let refusal = check_logout(&token).expect_err(&token);
            assert_eq!(refusal.err, err, "{token}: {refusal:?}");
            assert!(refusal.description.contains(words), "{words:?} not in {refusal:?}");
        }
        let unknown = check_logout(&sign(json!({"alg": "HS256", "kid": "k2"}), logout_claims())).unwrap_err();
        assert!(unknown.unknown_key, "an unknown kid may refresh the keys");
        let forged = check_logout(&format!("{}x", logout_token(logout_claims()))).unwrap_err();
        assert!(!forged.unknown_key, "a bad signature with a known key does not");
    }

    fn set(events: Value, sub_id: Option<Value>) -> String {
        let mut claims = json!({"iss": "https://idp", "aud": "rp", "iat": NOW - 3_600, "jti": "e1", "events": events});
        if let Some(sub_id) = sub_id {
            claims["sub_id"] = sub_id;
        }
        sign(json!({"alg": "HS256", "kid": "k1", "typ": "secevent+jwt"}), claims)
    }

    fn check_set(token: &str) -> Result<Signal, Refusal> {
        verify(Kind::SecurityEventToken, token, &trust(), &keys(), NOW)
    }

    #[test]
    fn caep_and_risc_events_map_to_revocations() {
        let iss_sub = json!({"format": "iss_sub", "iss": "https://idp", "sub": "alice"});
        let subject =
            |at: u64| Some(Action::Subject { iss: "https://idp".into(), sub: "alice".into(), before: at + 1 });
        let session = Some(Action::Sid { iss: "https://idp".into(), sid: "s9".into() });
        let complex = json!({"user": iss_sub, "session": {"format": "opaque", "id": "s9"}});
        let at = NOW - 4_000;
        for (uri, sub_id, payload, expected) in [
            (format!("{CAEP}session-revoked"), complex.clone(), json!({"event_timestamp": at}), session.clone()),
            (format!("{CAEP}session-revoked"), iss_sub.clone(), json!({"event_timestamp": at}), subject(at)),
            (
                format!("{CAEP}credential-change"),
                iss_sub.clone(),
                json!({"change_type": "update"}),
                subject(NOW - 3_600),
            ),
            (format!("{RISC}account-disabled"), iss_sub.clone(), json!({}), subject(NOW - 3_600)),
            (
                format!("{RISC}account-purged"),
                json!({"format": "opaque", "id": "alice"}),
                json!({}),
                subject(NOW - 3_600),
            ),
            (format!("{RISC}sessions-revoked"), complex.clone(), json!({}), subject(NOW - 3_600)),
            (format!("{RISC}credential-compromise"), iss_sub.clone(), json!({}), subject(NOW - 3_600)),
            (format!("{RISC}account-disabled"), json!({"format": "email", "email": "a@b"}), json!({}), None),
            (
                format!("{RISC}account-disabled"),
                json!({"format": "aliases", "identifiers": [{"format": "email", "email": "a@b"}, iss_sub]}),
                json!({}),
                subject(NOW - 3_600),
            ),
        ] {
            let signal = check_set(&set(json!({&uri: payload}), Some(sub_id.clone())))
                .unwrap_or_else(|e| panic!("{uri}: {e:?}"));
            assert_eq!(signal.events.len(), 1);
            assert_eq!(signal.events[0].action, expected, "{uri} {sub_id}");
        }
        // The subject inside the event, as CAEP's drafts put it.
        let inside = set(json!({format!("{RISC}account-disabled"): {"subject": iss_sub}}), None);
        assert_eq!(check_set(&inside).unwrap().events[0].action, subject(NOW - 3_600));
        // Events we do not act on are taken in and counted, never an error.
        let other =
            check_set(&set(json!({"https://schemas.openid.net/secevent/ssf/event-type/verification": {}}), None));
        assert_eq!(other.unwrap().events, vec![Handled { event: "other", action: None }]);
        let future = set(json!({format!("{CAEP}session-revoked"): {"event_timestamp": NOW + 9_999}}), Some(iss_sub));
        assert_eq!(check_set(&future).unwrap().events[0].action, subject(NOW + 60), "never past now + skew");
        let fractional = set(
            json!({format!("{CAEP}credential-change"): {"event_timestamp": 1_700_000_000.5}}),
            Some(json!({"format": "iss_sub", "iss": "https://idp", "sub": "alice"})),
        );
        assert_eq!(check_set(&fractional).unwrap().events[0].action, subject(1_700_000_000));
    }

    #[test]
    fn every_set_rule_refuses() {
        let disabled = json!({format!("{RISC}account-disabled"): {}});
        let iss_sub = json!({"format": "iss_sub", "iss": "https://idp", "sub": "alice"});
        let claims =
            json!({"iss": "https://idp", "aud": "rp", "iat": NOW, "jti": "e1", "events": disabled, "sub_id": iss_sub});
        let with = |change: &dyn Fn(&mut Map<String, Value>)| {
            let mut c = claims.clone();
            change(c.as_object_mut().unwrap());
            sign(json!({"alg": "HS256", "kid": "k1", "typ": "secevent+jwt"}), c)
        };
        let cases: Vec<(String, &str, &str)> = vec![
            (sign(json!({"alg": "HS256", "kid": "k1"}), claims.clone()), "invalid_request", "typ"),
            (sign(json!({"alg": "HS256", "kid": "k1", "typ": "logout+jwt"}), claims.clone()), "invalid_request", "typ"),
            (with(&|c| drop(c.insert("aud".into(), json!("x")))), "invalid_audience", "aud"),
            (with(&|c| drop(c.insert("iss".into(), json!("x")))), "invalid_issuer", "iss"),
            (with(&|c| drop(c.insert("iat".into(), json!(NOW - 86_461)))), "invalid_request", "old"),
            (with(&|c| drop(c.insert("exp".into(), json!(NOW - 61)))), "invalid_request", "expired"),
            (with(&|c| drop(c.remove("jti"))), "invalid_request", "jti"),
            (with(&|c| drop(c.remove("events"))), "invalid_request", "events"),
            (with(&|c| drop(c.insert("events".into(), json!({})))), "invalid_request", "at least one"),
            (with(&|c| drop(c.remove("sub_id"))), "invalid_request", "sub_id"),
            (with(&|c| drop(c.insert("sub_id".into(), json!("alice")))), "invalid_request", "object"),
            (with(&|c| drop(c.insert("sub_id".into(), json!({"sub": "alice"})))), "invalid_request", "format"),
            (
                with(&|c| drop(c.insert("sub_id".into(), json!({"format": "iss_sub", "iss": "i"})))),
                "invalid_request",
                "sub",
            ),
            (
                with(&|c| drop(c.insert("sub_id".into(), json!({"format": "opaque", "id": ""})))),
                "invalid_request",
                "id",
            ),
        ];
        for (token, err, words) in cases {
            let refusal = check_set(&token).expect_err(&token);
            assert_eq!(refusal.err, err, "{refusal:?}");
            assert!(refusal.description.contains(words), "{words:?} not in {refusal:?}");
        }
    }

    #[test]
    fn the_claimed_issuer_is_read_before_verification() {
        assert_eq!(claimed_issuer(&logout_token(logout_claims())).unwrap(), "https://idp");
        assert!(claimed_issuer("x.y.z").is_err());
        let no_iss = logout_token(json!({"sub": "a"}));
        assert!(claimed_issuer(&no_iss).unwrap_err().description.contains("iss"));
    }
}
