//! A local identity provider for the tests and the demo: a fresh RS256 key (kid `idp-1`), logout
//! tokens (OpenID Connect Back-Channel Logout 1.0 §2.4) and Security Event Tokens (RFC 8417 as the
//! Shared Signals Framework 1.0 profiles it, with CAEP 1.0 and RISC 1.0 events) signed the way
//! the specifications show them, its JWKS at `/jwks`, and an RFC 8936 poll endpoint at
//! `/ssf/poll` serving the SETs queued on it. Panics on failure: a development tool.

use crate::echo::{self, Reply, Request};
use crate::tokens::{self, KeyPair};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Map, Value};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Back-Channel Logout 1.0 §2.4: the event a logout token's `events` claim must carry.
pub const BACKCHANNEL_LOGOUT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// CAEP 1.0 §3.1.
pub const CAEP_SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
/// CAEP 1.0 §3.3 (required members: `credential_type`, `change_type`).
pub const CAEP_CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
/// RISC 1.0 "Account Disabled" (optional member: `reason`).
pub const RISC_ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
/// RISC 1.0 "Account Purged".
pub const RISC_ACCOUNT_PURGED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-purged";
/// RISC 1.0 "Sessions Revoked": deprecated by RISC 1.0 in favour of CAEP session-revoked, still sent
/// by existing transmitters.
pub const RISC_SESSIONS_REVOKED: &str = "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked";

/// The bearer credential the poll endpoint requires (RFC 8936 leaves the HTTP scheme to the parties).
pub const POLL_CREDENTIAL: &str = "idp-poll-secret";

const KID: &str = "idp-1";
/// Back-Channel Logout 1.0 §4 recommends logout tokens expire at most two minutes after issue.
const LOGOUT_TOKEN_TTL: u64 = 120;

/// RFC 9493 §3.2.3 `iss_sub` (issuer and subject) subject identifier.
pub fn iss_sub(iss: &str, sub: &str) -> Value {
    json!({"format": "iss_sub", "iss": iss, "sub": sub})
}

/// RFC 9493 §3.2.4 `opaque` subject identifier.
pub fn opaque(id: &str) -> Value {
    json!({"format": "opaque", "id": id})
}

/// An SSF 1.0 complex subject for one session of `user`, as CAEP 1.0's session-revoked example
/// shows it: `{"format": "complex", "user": ..., "session": {"format": "opaque", "id": ...}}`.
pub fn user_session(user: Value, session_id: &str) -> Value {
    json!({"format": "complex", "user": user, "session": opaque(session_id)})
}

#[derive(Default)]
struct State {
    /// (jti, SET), oldest first: queued and neither acknowledged nor reported as an error.
    queue: Vec<(String, String)>,
    acknowledged: Vec<String>,
    set_errors: Map<String, Value>,
    polls: usize,
}

/// A logout token as Back-Channel Logout 1.0 §2.4 shows it, explicitly typed `logout+jwt`,
/// with `sub` and/or `sid` as given (neither, for negative tests), signed RS256 with `key`.
pub fn logout_token(
    key: &EncodingKey,
    kid: &str,
    iss: &str,
    aud: &str,
    sub: Option<&str>,
    sid: Option<&str>,
) -> String {
    let now = tokens::now();
    let mut claims = json!({
        "iss": iss,
        "aud": aud,
        "iat": now,
        "exp": now + LOGOUT_TOKEN_TTL,
        "jti": random_id(),
        "events": {BACKCHANNEL_LOGOUT: {}},
    });
    if let Some(sub) = sub {
        claims["sub"] = json!(sub);
    }
    if let Some(sid) = sid {
        claims["sid"] = json!(sid);
    }
    let header = json!({"alg": "RS256", "kid": kid, "typ": "logout+jwt"});
    tokens::sign_raw(&header.to_string(), &claims.to_string(), key, Algorithm::RS256)
}

pub struct Idp {
    pub port: u16,
    key: EncodingKey,
    jwks: Value,
    state: Arc<Mutex<State>>,
}

impl Idp {
    /// Serves on 127.0.0.1:0 from background threads; generates an RS256 key pair (kid `idp-1`)
    /// in `dir`.
    pub fn start(dir: &Path) -> Idp {
        let pair = KeyPair::generate(dir, Algorithm::RS256, KID);
        let mut jwk = pair.jwk();
        jwk["use"] = json!("sig");
        let jwks = json!({"keys": [jwk]});
        let state = Arc::<Mutex<State>>::default();
        let (served_jwks, served_state) = (jwks.clone(), state.clone());
        let port = echo::serve("127.0.0.1:0", move |request| route(request, &served_jwks, &served_state))
            .expect("serve the identity provider");
        Idp { port, key: pair.encoding_key(), jwks, state }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    pub fn poll_uri(&self) -> String {
        format!("{}/ssf/poll", self.issuer())
    }

    /// The JWKS served at `jwks_uri`: the public key with `kid`, `alg` and `use: "sig"`.
    pub fn jwks(&self) -> Value {
        self.jwks.clone()
    }

    /// A logout token as Back-Channel Logout 1.0 §2.4 shows it (see `logout_token`).
    pub fn logout_token(&self, aud: &str, sub: Option<&str>, sid: Option<&str>) -> String {
        logout_token(&self.key, KID, &self.issuer(), aud, sub, sid)
    }

    /// A Security Event Token as RFC 8417 and SSF 1.0 show it: explicitly typed `secevent+jwt`,
    /// the subject in the top-level `sub_id`, one event, no `sub` and no `exp` (SSF forbids
    /// both), and a `txn` (SSF: transmitters SHOULD set it; unique per underlying event).
    pub fn set(&self, aud: &str, event_type: &str, sub_id: Value, payload: Value) -> String {
        let claims = json!({
            "iss": self.issuer(),
            "aud": aud,
            "iat": tokens::now(),
            "jti": random_id(),
            "txn": random_id(),
            "sub_id": sub_id,
            "events": {event_type: payload},
        });
        self.sign(&json!({"alg": "RS256", "kid": KID, "typ": "secevent+jwt"}), &claims)
    }

    /// Exactly `header` and `claims`, signed RS256 with the IdP's key (for negative tests).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        tokens::sign_raw(&header.to_string(), &claims.to_string(), &self.key, Algorithm::RS256)
    }

    /// Queues `set` for the poll endpoint under its `jti`.
    pub fn queue(&self, set: &str) {
        let claims = claims_of(set);
        let jti = claims["jti"].as_str().expect("the SET has a string jti");
        self.state().queue.push((jti.to_string(), set.to_string()));
    }

    /// The jtis the receiver acknowledged, in the order it sent them.
    pub fn acknowledged(&self) -> Vec<String> {
        self.state().acknowledged.clone()
    }

    /// The errors the receiver reported: jti -> {"err", "description"}.
    pub fn set_errors(&self) -> Map<String, Value> {
        self.state().set_errors.clone()
    }

    /// SETs queued and neither acknowledged nor reported as errors.
    pub fn pending(&self) -> usize {
        self.state().queue.len()
    }

    /// Requests that reached the poll endpoint, counted once each has been fully handled (refused
    /// ones included).
    pub fn polls(&self) -> usize {
        self.state().polls
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("idp state")
    }
}

/// The claims of a compact JWS, unverified.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&tokens::decode(payload)).expect("JSON claims")
}

/// 128 random bits, base64url: a `jti` (RFC 7519 §4.1.7) no other token shares. Read from the
/// kernel: the harness runs on Linux (openssl, Envoy) and this needs no RNG crate.
fn random_id() -> String {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("read /dev/urandom");
    tokens::encode(&bytes)
}

fn route(request: &Request, jwks: &Value, state: &Mutex<State>) -> Reply {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/jwks") => Reply::json(200, jwks),
        ("POST", "/ssf/poll") => poll(request, &mut state.lock().expect("idp state")),
        _ => Reply::empty(404),
    }
}

/// RFC 8936: drop the SETs the request acknowledges or reports as errors, record them,
/// and return the oldest still pending, up to `maxEvents` (0: acknowledge only). A long poll
/// (`returnImmediately` false) is answered at once too: tests queue before the receiver polls.
fn poll(request: &Request, state: &mut State) -> Reply {
    state.polls += 1;
    let credential = request.header("authorization").and_then(|value| value.split_once(' '));
    match credential {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && token == POLL_CREDENTIAL => {}
        // RFC 6750 §3: no error code when no credential was sent.
        None => return Reply::empty(401).with_header("www-authenticate", "Bearer"),
        Some(_) => return Reply::empty(401).with_header("www-authenticate", "Bearer error=\"invalid_token\""),
    }
    let (ack, set_errs, max_events) = match parse_poll(&request.body) {
        Ok(parsed) => parsed,
        // RFC 8936 answers errors with RFC 8935 §2.3's body.
        Err(description) => return Reply::json(400, &json!({"err": "invalid_request", "description": description})),
    };
    state.queue.retain(|(jti, _)| !ack.contains(jti) && !set_errs.contains_key(jti));
    state.acknowledged.extend(ack);
    state.set_errors.extend(set_errs);
    let count = max_events.unwrap_or(usize::MAX).min(state.queue.len());
    let sets: Map<String, Value> = state.queue[..count].iter().map(|(jti, set)| (jti.clone(), json!(set))).collect();
    Reply::json(200, &json!({"sets": sets, "moreAvailable": state.queue.len() > count}))
}

type PollRequest = (Vec<String>, Map<String, Value>, Option<usize>);

/// The members of an RFC 8936 poll request: `ack`, `setErrs` (each error with the `err` and
/// `description` strings of RFC 8935 §2.3), `maxEvents`; `returnImmediately` is only type-checked.
fn parse_poll(body: &[u8]) -> Result<PollRequest, String> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body is not a JSON object".into());
    };
    let ack = match body.get("ack") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| item.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or("ack is not an array of strings")?,
        Some(_) => return Err("ack is not an array of strings".into()),
    };
    let set_errs = match body.get("setErrs") {
        None => Map::new(),
        Some(Value::Object(errs)) if errs.values().all(|e| e["err"].is_string() && e["description"].is_string()) => {
            errs.clone()
        }
        Some(_) => return Err("setErrs does not map each jti to {\"err\", \"description\"} strings".into()),
    };
    let max_events = match body.get("maxEvents") {
        None => None,
        Some(n) => Some(n.as_u64().ok_or("maxEvents is not a non-negative integer")? as usize),
    };
    if body.get("returnImmediately").is_some_and(|v| !v.is_boolean()) {
        return Err("returnImmediately is not a boolean".into());
    }
    Ok((ack, set_errs, max_events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{DecodingKey, Validation};
    use std::collections::HashSet;
    use std::time::Duration;

    fn idp(name: &str) -> Idp {
        Idp::start(&crate::scratch_dir("idp", name))
    }

    /// Verifies `token` with the served JWKS (issuer and audience checked) and returns its header
    /// and claims as sent.
    fn verify(idp: &Idp, token: &str, aud: &str) -> (Value, Value) {
        let jwks: Value = serde_json::from_str(&ureq::get(&idp.jwks_uri()).call().unwrap().into_string().unwrap())
            .expect("JSON JWKS");
        let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).expect("a JWK");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[idp.issuer()]);
        validation.set_audience(&[aud]);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).expect("verifies");
        let header = token.split('.').next().unwrap();
        (serde_json::from_slice(&tokens::decode(header)).unwrap(), claims_of(token))
    }

    /// The member names of a JSON object, sorted.
    fn members(value: &Value) -> Vec<&str> {
        let mut names: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn jwks_serves_the_public_signing_key() {
        let idp = idp("jwks");
        let served: Value = serde_json::from_str(&ureq::get(&idp.jwks_uri()).call().unwrap().into_string().unwrap())
            .expect("JSON JWKS");
        assert_eq!(served, idp.jwks());
        let key = &served["keys"][0];
        assert_eq!(served["keys"].as_array().unwrap().len(), 1);
        assert_eq!(members(key), ["alg", "e", "kid", "kty", "n", "use"]);
        assert_eq!(
            (key["kid"].as_str(), key["alg"].as_str(), key["use"].as_str()),
            (Some("idp-1"), Some("RS256"), Some("sig"))
        );
    }

    #[test]
    fn logout_tokens_carry_exactly_the_specified_members() {
        let idp = idp("logout");
        let before = tokens::now();
        let token = idp.logout_token("client-1", Some("alice"), Some("sess-1"));
        let (header, claims) = verify(&idp, &token, "client-1");
        assert_eq!(header, json!({"alg": "RS256", "kid": "idp-1", "typ": "logout+jwt"}));
        assert_eq!(members(&claims), ["aud", "events", "exp", "iat", "iss", "jti", "sid", "sub"]);
        assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some(idp.issuer().as_str()), Some("client-1")));
        assert_eq!((claims["sub"].as_str(), claims["sid"].as_str()), (Some("alice"), Some("sess-1")));
        assert_eq!(claims["events"], json!({BACKCHANNEL_LOGOUT: {}}));
        let iat = claims["iat"].as_u64().unwrap();
        assert!((before..=tokens::now()).contains(&iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 120));

        let by_sid = claims_of(&idp.logout_token("client-1", None, Some("sess-2")));
        assert_eq!((by_sid.get("sub"), by_sid["sid"].as_str()), (None, Some("sess-2")));
        let by_sub = claims_of(&idp.logout_token("client-1", Some("bob"), None));
        assert_eq!((by_sub["sub"].as_str(), by_sub.get("sid")), (Some("bob"), None));
        let neither = claims_of(&idp.logout_token("client-1", None, None));
        assert!(neither.get("sub").is_none() && neither.get("sid").is_none());
    }

    #[test]
    fn sets_carry_exactly_the_specified_members() {
        let idp = idp("set");
        let subject = user_session(iss_sub(&idp.issuer(), "alice"), "sess-1");
        let payload = json!({"initiating_entity": "admin", "event_timestamp": 1_700_000_000});
        let set = idp.set("receiver-1", CAEP_SESSION_REVOKED, subject.clone(), payload.clone());
        let (header, claims) = verify(&idp, &set, "receiver-1");
        assert_eq!(header, json!({"alg": "RS256", "kid": "idp-1", "typ": "secevent+jwt"}));
        assert_eq!(members(&claims), ["aud", "events", "iat", "iss", "jti", "sub_id", "txn"]);
        assert_eq!(claims["events"], json!({CAEP_SESSION_REVOKED: payload}));
        assert_eq!(
            claims["sub_id"],
            json!({
                "format": "complex",
                "user": {"format": "iss_sub", "iss": idp.issuer(), "sub": "alice"},
                "session": {"format": "opaque", "id": "sess-1"},
            })
        );
        assert_eq!(opaque("x"), json!({"format": "opaque", "id": "x"}));
    }

    #[test]
    fn jtis_are_unique_and_sign_keeps_header_and_claims_as_given() {
        let idp = idp("jti");
        let tokens: Vec<String> = (0..20)
            .flat_map(|_| {
                [
                    idp.logout_token("client-1", Some("alice"), None),
                    idp.set("receiver-1", RISC_ACCOUNT_DISABLED, iss_sub("i", "alice"), json!({})),
                ]
            })
            .collect();
        let jtis: HashSet<String> = tokens.iter().map(|t| claims_of(t)["jti"].as_str().unwrap().to_string()).collect();
        assert_eq!(jtis.len(), tokens.len());

        let header = json!({"alg": "RS256", "kid": "idp-1", "typ": "JWT"});
        let claims = json!({"iss": idp.issuer(), "aud": "client-1", "nonce": "n-1"});
        let (signed_header, signed_claims) = verify(&idp, &idp.sign(&header, &claims), "client-1");
        assert_eq!((signed_header, signed_claims), (header, claims));
    }

    /// POSTs `body` to the poll endpoint with `authorization` (if any): status and JSON body.
    fn poll(idp: &Idp, authorization: Option<&str>, body: &str) -> (u16, Value) {
        let mut request =
            ureq::post(&idp.poll_uri()).timeout(Duration::from_secs(5)).set("content-type", "application/json");
        if let Some(value) = authorization {
            request = request.set("authorization", value);
        }
        let response = match request.send_string(body) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("poll: {e}"),
        };
        let status = response.status();
        let text = response.into_string().unwrap();
        (status, if text.is_empty() { Value::Null } else { serde_json::from_str(&text).expect("JSON reply") })
    }

    #[test]
    fn poll_endpoint_delivers_until_acknowledged() {
        let idp = idp("poll");
        let bearer = format!("Bearer {POLL_CREDENTIAL}");
        let auth = Some(bearer.as_str());
        let subject = iss_sub(&idp.issuer(), "alice");
        let first = idp.set("receiver-1", RISC_ACCOUNT_DISABLED, subject.clone(), json!({"reason": "hijacking"}));
        let second = idp.set(
            "receiver-1",
            CAEP_CREDENTIAL_CHANGE,
            subject,
            json!({"credential_type": "password", "change_type": "update"}),
        );
        let jti = |set: &str| claims_of(set)["jti"].as_str().unwrap().to_string();
        let (first_jti, second_jti) = (jti(&first), jti(&second));
        idp.queue(&first);
        idp.queue(&second);
        assert_eq!(idp.pending(), 2);

        let one = r#"{"maxEvents": 1, "returnImmediately": true}"#;
        let (status, reply) = poll(&idp, auth, one);
        assert_eq!(status, 200);
        assert_eq!(reply, json!({"sets": {first_jti.clone(): first}, "moreAvailable": true}));
        // Not acknowledged: delivered again.
        assert_eq!(poll(&idp, auth, one).1["sets"], json!({first_jti.clone(): first}));

        let (status, reply) = poll(&idp, auth, &json!({"ack": [first_jti], "maxEvents": 1}).to_string());
        assert_eq!(status, 200);
        assert_eq!(reply, json!({"sets": {second_jti.clone(): second}, "moreAvailable": false}));
        assert_eq!((idp.acknowledged(), idp.pending()), (vec![first_jti.clone()], 1));

        let error = json!({"err": "invalid_issuer", "description": "unknown issuer"});
        let body = json!({"setErrs": {second_jti.clone(): error}, "maxEvents": 0, "returnImmediately": false});
        let (status, reply) = poll(&idp, auth, &body.to_string());
        assert_eq!(status, 200);
        assert_eq!(reply, json!({"sets": {}, "moreAvailable": false}));
        assert_eq!(idp.set_errors(), json!({second_jti: error}).as_object().unwrap().clone());
        assert_eq!((idp.acknowledged(), idp.pending()), (vec![first_jti], 0));
        assert_eq!(idp.polls(), 4);
    }

    #[test]
    fn poll_endpoint_refuses_bad_credentials_and_malformed_requests() {
        let idp = idp("poll-refusals");
        idp.queue(&idp.set("receiver-1", RISC_ACCOUNT_PURGED, opaque("u-1"), json!({})));
        let (status, reply) = poll(&idp, Some("Bearer wrong-secret"), "{}");
        assert_eq!((status, reply), (401, Value::Null));
        assert_eq!(poll(&idp, None, "{}").0, 401);
        assert_eq!(poll(&idp, Some(&format!("Basic {POLL_CREDENTIAL}")), "{}").0, 401);

        let bearer = format!("Bearer {POLL_CREDENTIAL}");
        for body in [
            "",
            "not json",
            "[]",
            r#"{"ack": "x"}"#,
            r#"{"ack": [1]}"#,
            r#"{"maxEvents": -1}"#,
            r#"{"returnImmediately": "yes"}"#,
            r#"{"setErrs": {"x": {"err": "invalid_key"}}}"#,
        ] {
            let (status, reply) = poll(&idp, Some(&bearer), body);
            assert_eq!((status, reply["err"].as_str()), (400, Some("invalid_request")), "body {body:?}");
        }
        assert_eq!((idp.pending(), idp.acknowledged().len(), idp.set_errors().len()), (1, 0, 0));
        assert_eq!(idp.polls(), 11);
        // Without maxEvents, everything pending; an unknown path is 404.
        assert_eq!(poll(&idp, Some(&bearer), "{}").1["sets"].as_object().unwrap().len(), 1);
        assert!(matches!(ureq::get(&format!("{}/nothing", idp.issuer())).call(), Err(ureq::Error::Status(404, _))));
    }
}
