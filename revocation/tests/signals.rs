//! The signal receivers (docs/revocation-service.md, "Signals from the identity provider") over
//! real HTTP, with real Redis and the identity-provider stand-in (`jwtguard_demo::idp`):
//! back-channel logout by `sid` and by `sub`, SSF push and poll, every refusal writing nothing,
//! Redis unavailable, a bad `--signals-config`, and the CLI. The validation rules one by one
//! have their unit tests in src/signals.rs; these check what reaches the answer, Redis, the feed
//! and the status endpoint.

mod common;

use common::{args, bin, call, Reply, MAX_LIFETIME, STATUS};
use jwtguard_demo::idp::{self, Idp};
use jwtguard_demo::redis::{free_port, RedisServer};
use jwtguard_demo::service::Service;
use jwtguard_demo::tokens::{self, now};
use jwtguard_demo::{scratch_dir, wait_for};
use jwtguard_wire::{FeedEvent, FeedResponse};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Ours at the identity provider: the client id (back-channel logout), the stream's audience (SSF).
const AUD: &str = "jwtguard";
/// The service's default `--clock-skew-seconds`: sessions and cutoffs last the lifetime + skew.
const SKEW: u64 = 60;
const BCL: &str = "/v1/backchannel-logout";
const PUSH: &str = "/v1/ssf/push";
const FORM: &str = "application/x-www-form-urlencoded";
const SET_TYPE: &str = "application/secevent+jwt";
const FEED_KEY: &str = "jwtguard:{feed}";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";

/// An identity provider with its key in a directory of its own (each generates `idp-1.pem`).
fn start_idp(dir: &Path, name: &str) -> Idp {
    let dir = dir.join(name);
    std::fs::create_dir_all(&dir).expect("idp dir");
    Idp::start(&dir)
}

/// An `issuers` entry trusting `idp` through its JWKS URL, with `extra` members.
fn trusted(idp: &Idp, extra: Value) -> Value {
    let mut issuer = json!({
        "issuer": idp.issuer(),
        "audiences": [AUD],
        "algorithms": ["RS256"],
        "remote_jwks": {"uri": idp.jwks_uri()},
    });
    issuer.as_object_mut().expect("object").extend(extra.as_object().cloned().unwrap_or_default());
    issuer
}

/// Writes `text` as a `--signals-config` file; returns its path.
fn config_file(dir: &Path, text: &str) -> String {
    let path = dir.join(format!("signals-{}.json", free_port()));
    std::fs::write(&path, text).expect("write the signals config");
    path.to_str().expect("path").to_string()
}

/// The service on standalone Redis at `redis_url`, trusting `issuers`.
fn serve(dir: &Path, redis_url: String, issuers: &[Value]) -> Service {
    let config = config_file(dir, &json!({ "issuers": issuers }).to_string());
    Service::start(&bin(), dir, &args(&[redis_url], false, &["--signals-config", &config])).expect("service")
}

fn post(svc: &Service, path: &str, content_type: &str, body: &str, credential: Option<&str>) -> Reply {
    call("POST", &format!("{}{path}", svc.url()), credential, Some(content_type), Some(body))
}

/// A back-channel logout as the identity provider sends it (JWS characters need no escaping).
fn logout(svc: &Service, token: &str) -> Reply {
    post(svc, BCL, FORM, &format!("logout_token={token}"), None)
}

fn push(svc: &Service, set: &str, credential: Option<&str>) -> Reply {
    post(svc, PUSH, SET_TYPE, set, credential)
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `/v1/status` for the token described by `query` (as the filter asks in callout mode).
fn status(svc: &Service, query: &[(&str, &str)]) -> Value {
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", encode(v))).collect();
    let r = call("GET", &format!("{}/v1/status?{}", svc.url(), query.join("&")), Some(STATUS), None, None);
    assert_eq!(r.status, 200, "{query:?}: {}", r.body);
    r.json()
}

fn active() -> Value {
    json!({"active": true})
}

fn inactive(reason: &str) -> Value {
    json!({"active": false, "reason": reason})
}

/// Every event the feed holds, from the start.
fn feed(svc: &Service) -> Vec<FeedEvent> {
    let (mut events, mut query) = (Vec::new(), "wait_ms=0".to_string());
    for _ in 0..100 {
        let r = call("GET", &format!("{}/v1/feed?{query}", svc.url()), Some(STATUS), None, None);
        assert_eq!(r.status, 200, "{}", r.body);
        let page: FeedResponse = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
        events.extend(page.events);
        if !page.more {
            return events;
        }
        query = format!("after={}&wait_ms=0", page.position);
    }
    panic!("no end to the feed's pages");
}

/// The feed once it holds `n` events (the reader takes polled writes in on its own time).
fn feed_of(svc: &Service, n: usize) -> Vec<FeedEvent> {
    wait_for(&format!("{n} events in the feed"), Duration::from_secs(10), || {
        let events = feed(svc);
        (events.len() >= n).then_some(events)
    })
}

/// The keys signals write: sessions logged out, subject cutoffs, signals taken in (sorted).
fn signal_keys(redis: &RedisServer) -> Vec<String> {
    let mut keys: Vec<String> = redis
        .cli(&["KEYS", "jwtguard:*"])
        .lines()
        .filter(|k| ["jwtguard:sid:", "jwtguard:cut:", "jwtguard:seen:"].iter().any(|p| k.starts_with(p)))
        .map(String::from)
        .collect();
    keys.sort();
    keys
}

/// How many signal keys of each kind: (sid, cut, seen).
fn key_counts(redis: &RedisServer) -> (usize, usize, usize) {
    let keys = signal_keys(redis);
    let count = |prefix: &str| keys.iter().filter(|k| k.starts_with(prefix)).count();
    (count("jwtguard:sid:"), count("jwtguard:cut:"), count("jwtguard:seen:"))
}

/// Nothing in the feed (neither the stream in Redis nor the service's pages) and no signal key.
fn assert_nothing_written(svc: &Service, redis: &RedisServer, case: &str) {
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "0", "{case}: the feed stream");
    assert_eq!(feed(svc), vec![], "{case}: the feed");
    assert_eq!(signal_keys(redis), Vec::<String>::new(), "{case}: signal keys");
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a compact JWS");
    serde_json::from_slice(&tokens::decode(payload)).expect("JSON claims")
}

fn jti_of(token: &str) -> String {
    claims_of(token)["jti"].as_str().expect("jti").to_string()
}

fn iat_of(token: &str) -> u64 {
    claims_of(token)["iat"].as_u64().expect("iat")
}

/// `base` with `changes` applied: each member set, or removed where it is null.
fn with(base: &Value, changes: Value) -> Value {
    let mut claims = base.clone();
    for (name, value) in changes.as_object().expect("object") {
        match value {
            Value::Null => drop(claims.as_object_mut().expect("object").remove(name)),
            v => claims[name] = v.clone(),
        }
    }
    claims
}

/// The value of an unlabelled or exactly labelled sample in the service's /metrics.
fn metric(svc: &Service, sample: &str) -> f64 {
    let text = call("GET", &format!("{}/metrics", svc.url()), None, None, None).body;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_backchannel_logout_by_sid_logs_out_that_session_of_that_issuer_only() {
    let dir = scratch_dir("revocation", "signals-sid");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let svc = serve(&dir, redis.url(), &[trusted(&idp, json!({}))]);
    let iss = idp.issuer();

    let before = now();
    let r = logout(&svc, &idp.logout_token(AUD, Some("alice"), Some("sess-1")));
    let after = now();
    assert_eq!((r.status, r.body.as_str(), r.cache_control.as_deref()), (200, "", Some("no-store")), "{}", r.body);

    let of = |iss: &str, sid: &str| status(&svc, &[("iss", iss), ("sid", sid), ("sub", "alice")]);
    assert_eq!(of(&iss, "sess-1"), inactive("session_revoked"));
    assert_eq!(of(&iss, "sess-2"), active(), "another session of the same issuer");
    assert_eq!(of("https://other.example", "sess-1"), active(), "the same sid from another issuer");
    // With sid the logout is of that session, not of the subject: alice's older tokens pass.
    let older = (before - 100).to_string();
    assert_eq!(status(&svc, &[("iss", &iss), ("sid", "sess-2"), ("sub", "alice"), ("iat", &older)]), active());

    match feed(&svc).as_slice() {
        [FeedEvent::SidRevoked { iss: event_iss, sid, until }] => {
            assert_eq!((event_iss.as_str(), sid.as_str()), (iss.as_str(), "sess-1"));
            let lasts = MAX_LIFETIME + SKEW;
            assert!((before + lasts..=after + lasts).contains(until), "until {until}, now {before}..{after}");
        }
        other => panic!("one sid_revoked event expected: {other:?}"),
    }
    assert_eq!(key_counts(&redis), (1, 0, 1), "{:?}", signal_keys(&redis));
}

#[test]
fn a_backchannel_logout_by_sub_cuts_off_that_subjects_older_tokens_of_that_issuer() {
    let dir = scratch_dir("revocation", "signals-sub");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let svc = serve(&dir, redis.url(), &[trusted(&idp, json!({}))]);
    let iss = idp.issuer();

    let token = idp.logout_token(AUD, Some("bob"), None);
    let iat = iat_of(&token);
    // As many HTTP clients label a form: the media type's parameters do not matter; nor do form
    // parameters the specification does not define (ignored, as OAuth endpoints do).
    let body = format!("logout_token={token}&state=x");
    let r = post(&svc, BCL, "application/x-www-form-urlencoded; charset=UTF-8", &body, None);
    assert_eq!((r.status, r.body.as_str(), r.cache_control.as_deref()), (200, "", Some("no-store")), "{}", r.body);

    let issued = |iss: &str, at: u64| status(&svc, &[("iss", iss), ("sub", "bob"), ("iat", &at.to_string())]);
    assert_eq!(issued(&iss, iat - 1), inactive("subject_revoked"), "issued before the logout");
    assert_eq!(issued(&iss, iat), inactive("subject_revoked"), "issued in the logout's second (inclusive)");
    assert_eq!(issued(&iss, iat + 1), active(), "issued after the logout");
    assert_eq!(issued("https://other.example", iat - 1), active(), "bob of another issuer");
    let alice = status(&svc, &[("iss", &iss), ("sub", "alice"), ("iat", &(iat - 1).to_string())]);
    assert_eq!(alice, active(), "another subject");

    let expected = FeedEvent::SubjectCutoff {
        sub: "bob".into(),
        iss: Some(iss),
        before: iat + 1,
        until: iat + 1 + MAX_LIFETIME + SKEW,
    };
    assert_eq!(feed(&svc), vec![expected]);
    assert_eq!(key_counts(&redis), (0, 1, 1), "{:?}", signal_keys(&redis));
}

/// A request the receivers must refuse: where it goes, what it carries, what it must get.
struct Refused {
    case: &'static str,
    path: &'static str,
    content_type: &'static str,
    body: String,
    status: u16,
    /// `error` (back-channel logout) or `err` (push); none for 413.
    err: Option<&'static str>,
    /// Words the description must hold: refused for this reason, not another.
    words: &'static str,
}

/// Every refusal over HTTP: the documented status and body, and nothing written — then a
/// replayed `jti` on each receiver, refused after its first delivery wrote exactly once.
#[test]
fn every_refused_signal_answers_as_documented_and_writes_nothing() {
    let dir = scratch_dir("revocation", "signals-refused");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    // Its key has the same kid as idp's: a forgery that names a key idp has.
    let forger = start_idp(&dir, "forger");
    let svc = serve(&dir, redis.url(), &[trusted(&idp, json!({}))]);
    let iss = idp.issuer();
    let kid = idp.jwks()["keys"][0]["kid"].as_str().expect("kid").to_string();
    let t = now();

    let logout_header = json!({"alg": "RS256", "kid": kid, "typ": "logout+jwt"});
    let set_header = json!({"alg": "RS256", "kid": kid, "typ": "secevent+jwt"});
    // Each token below is valid but for its one defect; fresh jtis, so none is refused as a replay.
    let mut n = 0;
    let mut jti = || {
        n += 1;
        format!("refused-{n}")
    };
    let logout_claims = |jti: String| {
        json!({"iss": iss, "aud": AUD, "iat": t, "exp": t + 120, "jti": jti,
               "events": {idp::BACKCHANNEL_LOGOUT: {}}, "sid": "sess-x", "sub": "alice"})
    };
    let set_claims = |jti: String| {
        json!({"iss": iss, "aud": AUD, "iat": t, "jti": jti, "sub_id": idp::iss_sub(&iss, "alice"),
               "events": {idp::RISC_ACCOUNT_DISABLED: {}}})
    };
    let lt = |changes: Value, jti: String| idp.sign(&logout_header, &with(&logout_claims(jti), changes));
    let set = |changes: Value, jti: String| idp.sign(&set_header, &with(&set_claims(jti), changes));
    let bcl = |case, token: String, words| Refused {
        case,
        path: BCL,
        content_type: FORM,
        body: format!("logout_token={token}"),
        status: 400,
        err: Some("invalid_request"),
        words,
    };
    let pushed = |case, token: String, err, words| Refused {
        case,
        path: PUSH,
        content_type: SET_TYPE,
        body: token,
        status: 400,
        err: Some(err),
        words,
    };
    let other_kid = json!({"alg": "RS256", "kid": "idp-2", "typ": "logout+jwt"});
    let other_alg = |typ| json!({"alg": "RS384", "kid": kid, "typ": typ});
    let padding = " ".repeat(16 * 1024);
    let cases = vec![
        bcl("forged signature", forger.sign(&logout_header, &logout_claims(jti())), "signature does not verify"),
        bcl("a kid the issuer does not have", forger.sign(&other_kid, &logout_claims(jti())), "no key"),
        bcl("alg not allowed", idp.sign(&other_alg("logout+jwt"), &logout_claims(jti())), "not allowed"),
        bcl("wrong aud", lt(json!({"aud": "someone-else"}), jti()), "aud"),
        bcl("unknown issuer", forger.logout_token(AUD, Some("alice"), Some("sess-x")), "not trusted"),
        bcl("missing events", lt(json!({"events": null}), jti()), "events"),
        bcl(
            "events without the logout event",
            lt(json!({"events": {idp::RISC_ACCOUNT_DISABLED: {}}}), jti()),
            "events",
        ),
        bcl("nonce present", lt(json!({"nonce": "n-1"}), jti()), "nonce"),
        bcl("expired", lt(json!({"iat": t - 200, "exp": t - 120}), jti()), "expired"),
        bcl("iat too old", lt(json!({"iat": t - 400}), jti()), "old"),
        bcl("iat in the future", lt(json!({"iat": t + 300}), jti()), "future"),
        bcl("neither sid nor sub", lt(json!({"sid": null, "sub": null}), jti()), "sid or sub"),
        bcl("no jti", lt(json!({"jti": null}), jti()), "jti"),
        bcl(
            "a SET as a logout token",
            idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "alice"), json!({})),
            "typ",
        ),
        Refused {
            content_type: "application/json",
            body: format!("logout_token={}", lt(json!({}), jti())),
            ..bcl("wrong content type", String::new(), "Content-Type")
        },
        Refused {
            body: {
                let token = lt(json!({}), jti());
                format!("logout_token={token}&logout_token={token}")
            },
            ..bcl("logout_token twice", String::new(), "repeated")
        },
        Refused { body: String::new(), ..bcl("no logout_token", String::new(), "logout_token is required") },
        // Empty pairs are skipped: without the limit, this one would be taken in.
        Refused {
            body: format!("logout_token={}{}", lt(json!({}), jti()), "&".repeat(16 * 1024)),
            status: 413,
            err: None,
            ..bcl("oversized", String::new(), "")
        },
        pushed(
            "forged signature",
            forger.sign(&set_header, &set_claims(jti())),
            "invalid_key",
            "signature does not verify",
        ),
        pushed(
            "alg not allowed",
            idp.sign(&other_alg("secevent+jwt"), &set_claims(jti())),
            "invalid_key",
            "not allowed",
        ),
        pushed("wrong aud", set(json!({"aud": "someone-else"}), jti()), "invalid_audience", "aud"),
        pushed(
            "unknown issuer",
            forger.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "alice"), json!({})),
            "invalid_issuer",
            "not trusted",
        ),
        pushed("missing events", set(json!({"events": null}), jti()), "invalid_request", "events"),
        pushed("expired", set(json!({"exp": t - 120}), jti()), "invalid_request", "expired"),
        pushed("iat too old", set(json!({"iat": t - 86_400 - 120}), jti()), "invalid_request", "old"),
        pushed("no sub_id", set(json!({"sub_id": null}), jti()), "invalid_request", "sub_id"),
        // A transmitter may name subjects of its own token issuers only (subject_issuers).
        pushed(
            "a subject of another issuer",
            set(json!({"sub_id": idp::iss_sub("https://victim.example", "alice")}), jti()),
            "invalid_request",
            "may not name subjects of",
        ),
        pushed(
            "wrong typ",
            idp.sign(&json!({"alg": "RS256", "kid": kid, "typ": "JWT"}), &set_claims(jti())),
            "invalid_request",
            "typ",
        ),
        pushed("a logout token pushed", idp.logout_token(AUD, Some("alice"), Some("sess-x")), "invalid_request", "typ"),
        Refused {
            content_type: "application/jwt",
            ..pushed("wrong content type", set(json!({}), jti()), "invalid_request", "Content-Type")
        },
        // The body is trimmed: without the limit, this one would be taken in.
        Refused {
            status: 413,
            err: None,
            ..pushed("oversized", format!("{}{padding}", set(json!({}), jti())), "", "")
        },
    ];
    let fetches = r#"jwtguard_revocation_signal_jwks_fetches_total{outcome="ok"}"#;
    for c in &cases {
        let r = post(&svc, c.path, c.content_type, &c.body, None);
        let case = format!("{} {}", c.path, c.case);
        assert_eq!(r.status, c.status, "{case}: {}", r.body);
        match (c.err, c.path) {
            (None, _) => {}
            (Some(err), BCL) => {
                let body = r.json();
                assert_eq!(body["error"], err, "{case}: {body}");
                let description = body["error_description"].as_str().unwrap_or_default();
                assert!(description.contains(c.words), "{case}: {:?} not in {body}", c.words);
                assert_eq!(r.cache_control.as_deref(), Some("no-store"), "{case}");
            }
            (Some(err), _) => {
                let body = r.json();
                assert_eq!(body["err"], err, "{case}: {body}");
                let description = body["description"].as_str().unwrap_or_default();
                assert!(description.contains(c.words), "{case}: {:?} not in {body}", c.words);
            }
        }
        assert_nothing_written(&svc, &redis, &case);
    }
    // The key set was fetched when first needed, and once more for the kid it lacked. Another
    // unknown kid is judged by a set fetched after it came too (at most one such fetch every
    // 2 s: it waits for its turn, so forged kids cannot keep a rotated-in key out).
    assert_eq!(metric(&svc, fetches), 2.0);
    let unknown = forger.sign(&other_kid, &logout_claims(jti()));
    let r = logout(&svc, &unknown);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_request")), "{}", r.body);
    assert_eq!(metric(&svc, fetches), 3.0);
    assert_nothing_written(&svc, &redis, "a second unknown kid");

    // A replayed jti: the first delivery writes once, the second is refused and writes nothing.
    let token = idp.logout_token(AUD, None, Some("sess-replay"));
    assert_eq!(logout(&svc, &token).status, 200);
    let r = logout(&svc, &token);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_request")), "{}", r.body);
    assert!(r.body.contains("received before"), "{}", r.body);
    assert_eq!(r.cache_control.as_deref(), Some("no-store"));
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "1");
    assert_eq!(key_counts(&redis), (1, 0, 1), "{:?}", signal_keys(&redis));

    // A pushed SET again (a retry after a lost answer): 202, nothing written again.
    let set = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "carol"), json!({}));
    assert_eq!(push(&svc, &set, None).status, 202);
    let r = push(&svc, &set, None);
    assert_eq!((r.status, r.body.as_str()), (202, ""), "{}", r.body);
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "2");
    assert_eq!(key_counts(&redis), (1, 1, 2), "{:?}", signal_keys(&redis));
    assert_eq!(feed_of(&svc, 2).len(), 2);
}

#[test]
fn ssf_push_maps_caep_and_risc_events_and_takes_in_what_it_does_not_act_on() {
    let dir = scratch_dir("revocation", "signals-push");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let guarded = start_idp(&dir, "guarded");
    let credentials = json!({"push_credentials": ["push-secret"]});
    let svc = serve(&dir, redis.url(), &[trusted(&idp, json!({})), trusted(&guarded, credentials)]);
    let iss = idp.issuer();
    let lasts = MAX_LIFETIME + SKEW;
    let accepted = |set: &str, credential| {
        let r = push(&svc, set, credential);
        assert_eq!((r.status, r.body.as_str()), (202, ""), "{}", r.body);
    };

    // CAEP session-revoked for one session of a user: that session.
    let session = idp::user_session(idp::iss_sub(&iss, "alice"), "sess-7");
    let before = now();
    accepted(&idp.set(AUD, idp::CAEP_SESSION_REVOKED, session, json!({"initiating_entity": "policy"})), None);
    let after = now();
    assert_eq!(status(&svc, &[("iss", &iss), ("sid", "sess-7"), ("sub", "alice")]), inactive("session_revoked"));
    assert_eq!(status(&svc, &[("iss", &iss), ("sid", "sess-8"), ("sub", "alice")]), active());

    // RISC account-disabled (iss_sub), account-purged (opaque: the transmitter's own sub), CAEP
    // credential-change (its event_timestamp is the cutoff): subject cutoffs at the event's time.
    let disabled = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "bob"), json!({"reason": "hijacking"}));
    accepted(&disabled, None);
    let purged = idp.set(AUD, idp::RISC_ACCOUNT_PURGED, idp::opaque("carol"), json!({}));
    accepted(&purged, None);
    let changed_at = now() - 30;
    let change = json!({"credential_type": "password", "change_type": "update", "event_timestamp": changed_at});
    accepted(&idp.set(AUD, idp::CAEP_CREDENTIAL_CHANGE, idp::iss_sub(&iss, "dave"), change), None);
    for (sub, at) in [("bob", iat_of(&disabled)), ("carol", iat_of(&purged)), ("dave", changed_at)] {
        let issued = |at: u64| status(&svc, &[("iss", &iss), ("sub", sub), ("iat", &at.to_string())]);
        assert_eq!(issued(at), inactive("subject_revoked"), "{sub}: issued in the event's second");
        assert_eq!(issued(at + 1), active(), "{sub}");
    }

    let events = feed_of(&svc, 4);
    let cutoff = |sub: &str, before: u64| FeedEvent::SubjectCutoff {
        sub: sub.into(),
        iss: Some(iss.clone()),
        before,
        until: before + lasts,
    };
    assert_eq!(
        events[1..],
        [cutoff("bob", iat_of(&disabled) + 1), cutoff("carol", iat_of(&purged) + 1), cutoff("dave", changed_at + 1)]
    );
    match &events[0] {
        FeedEvent::SidRevoked { iss: event_iss, sid, until } => {
            assert_eq!((event_iss.as_str(), sid.as_str()), (iss.as_str(), "sess-7"));
            assert!((before + lasts..=after + lasts).contains(until), "until {until}");
        }
        other => panic!("sid_revoked expected: {other:?}"),
    }
    assert_eq!(key_counts(&redis), (1, 3, 4), "{:?}", signal_keys(&redis));

    // Taken in and not acted on: an event we do not know, a subject we cannot match to tokens.
    accepted(&idp.set(AUD, VERIFICATION, idp::opaque("stream-1"), json!({"state": "s-1"})), None);
    let email = json!({"format": "email", "email": "erin@example.com"});
    accepted(&idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, email, json!({})), None);
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "4");
    assert_eq!(key_counts(&redis), (1, 3, 6), "only remembered: {:?}", signal_keys(&redis));
    let ignored = r#"jwtguard_revocation_signal_events_total{event="other",outcome="ignored"}"#;
    assert_eq!(metric(&svc, ignored), 1.0);

    // An issuer with push credentials: its transmitter must present one.
    let guarded_set =
        || guarded.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&guarded.issuer(), "fay"), json!({}));
    for credential in [None, Some("wrong-secret")] {
        let r = push(&svc, &guarded_set(), credential);
        assert_eq!((r.status, r.json()["err"].as_str()), (401, Some("authentication_failed")), "{credential:?}");
    }
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "4", "refused pushes write nothing");
    assert_eq!(key_counts(&redis), (1, 3, 6));
    accepted(&guarded_set(), Some("push-secret"));
    assert_eq!(key_counts(&redis), (1, 4, 7));

    // The 401 carries its challenge (RFC 9110 §11.6.1, RFC 6750 §3), as the API's own 401s do.
    let refused = ureq::post(&format!("{}{PUSH}", svc.url())).set("content-type", SET_TYPE).send_string(&guarded_set());
    let Err(ureq::Error::Status(401, response)) = refused else { panic!("401 expected: {refused:?}") };
    let challenge = response.header("www-authenticate").map(String::from);
    assert!(
        challenge.as_deref().is_some_and(|c| c.starts_with("Bearer")),
        "401 without a Bearer challenge: {challenge:?}"
    );
}

#[test]
fn ssf_poll_takes_in_acknowledges_reports_errors_and_skips_duplicates() {
    let dir = scratch_dir("revocation", "signals-poll");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let forger = start_idp(&dir, "forger");
    let bearer = format!("Bearer {}", idp::POLL_CREDENTIAL);
    let poll = json!({"ssf_poll": {"endpoint": idp.poll_uri(), "authorization": bearer, "interval_ms": 100}});
    let svc = serve(&dir, redis.url(), &[trusted(&idp, poll)]);
    let iss = idp.issuer();

    let revoked =
        idp.set(AUD, idp::CAEP_SESSION_REVOKED, idp::user_session(idp::iss_sub(&iss, "alice"), "sess-p"), json!({}));
    let disabled = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "bob"), json!({}));
    let kid = idp.jwks()["keys"][0]["kid"].clone();
    let forged_claims = json!({"iss": iss, "aud": AUD, "iat": now(), "jti": "forged-1",
                               "sub_id": idp::iss_sub(&iss, "alice"), "events": {idp::RISC_ACCOUNT_DISABLED: {}}});
    let forged = forger.sign(&json!({"alg": "RS256", "kid": kid, "typ": "secevent+jwt"}), &forged_claims);
    for set in [&revoked, &forged, &disabled] {
        idp.queue(set);
    }
    let good = [jti_of(&revoked), jti_of(&disabled)];
    wait_for("the good SETs acknowledged, the forged one reported", Duration::from_secs(10), || {
        let acked = idp.acknowledged();
        (good.iter().all(|j| acked.contains(j)) && idp.set_errors().contains_key("forged-1")).then_some(())
    });
    let mut acked = idp.acknowledged();
    acked.sort();
    let mut expected = good.to_vec();
    expected.sort();
    assert_eq!(acked, expected);
    let errors = idp.set_errors();
    assert_eq!((errors.len(), errors["forged-1"]["err"].as_str()), (1, Some("invalid_key")), "{errors:?}");
    assert_eq!(idp.pending(), 0);

    let events = feed_of(&svc, 2);
    let lasts = MAX_LIFETIME + SKEW;
    assert!(
        events.iter().any(|e| matches!(e, FeedEvent::SidRevoked { iss: i, sid, .. } if *i == iss && sid == "sess-p")),
        "{events:?}"
    );
    let bob = FeedEvent::SubjectCutoff {
        sub: "bob".into(),
        iss: Some(iss.clone()),
        before: iat_of(&disabled) + 1,
        until: iat_of(&disabled) + 1 + lasts,
    };
    assert!(events.contains(&bob), "{events:?}");
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(status(&svc, &[("iss", &iss), ("sid", "sess-p"), ("sub", "alice")]), inactive("session_revoked"));
    let older = (iat_of(&disabled) - 1).to_string();
    assert_eq!(status(&svc, &[("iss", &iss), ("sub", "bob"), ("iat", &older)]), inactive("subject_revoked"));

    // The same SET again (same jti): acknowledged again, nothing written.
    idp.queue(&revoked);
    wait_for("the duplicate acknowledged", Duration::from_secs(10), || (idp.acknowledged().len() == 3).then_some(()));
    assert_eq!(idp.acknowledged()[2], good[0]);
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "2", "a duplicate writes nothing");
    assert_eq!(key_counts(&redis), (1, 1, 2), "{:?}", signal_keys(&redis));
    let polled = r#"jwtguard_revocation_signals_total{receiver="ssf_poll",outcome="duplicate"}"#;
    assert_eq!(metric(&svc, polled), 1.0);
}

/// Redis paused: 503 with Retry-After, and the same token is taken in once Redis is back. Then
/// the property that makes a retry possible, with a write that fails after the replay check
/// (the service's ACL user loses the session keys): the failed delivery is not remembered, so
/// the provider's retry is taken in, not refused as a replay; a polled SET that could not be
/// written is neither acknowledged nor reported, and is taken in once the write succeeds.
#[test]
fn with_redis_unavailable_a_signal_is_not_taken_in_and_its_retry_is() {
    let dir = scratch_dir("revocation", "signals-redis-down");
    let acl = ["--user", "svc", "on", ">svc-secret", "~jwtguard:*", "+@all"];
    let redis = RedisServer::start(&dir, &acl);
    let url = format!("redis://svc:svc-secret@127.0.0.1:{}", redis.port);
    let idp = start_idp(&dir, "idp");
    let bearer = format!("Bearer {}", idp::POLL_CREDENTIAL);
    let poll = json!({"ssf_poll": {"endpoint": idp.poll_uri(), "authorization": bearer, "interval_ms": 100}});
    let svc = serve(&dir, url, &[trusted(&idp, poll)]);
    let iss = idp.issuer();
    let revoked = |sid: &str| status(&svc, &[("iss", &iss), ("sid", sid), ("sub", "alice")]);

    // Paused: the logout is not done.
    let token = idp.logout_token(AUD, Some("alice"), Some("sess-a"));
    let set = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "bob"), json!({}));
    assert_eq!(call("GET", &format!("{}/readyz", svc.url()), None, None, None).status, 200);
    redis.pause();
    let r = logout(&svc, &token);
    let r_push = push(&svc, &set, None);
    redis.resume();
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("1")), "{}", r.body);
    assert_eq!(
        (r.json()["error"].as_str(), r.cache_control.as_deref()),
        (Some("temporarily_unavailable"), Some("no-store"))
    );
    assert_eq!((r_push.status, r_push.retry_after.as_deref()), (503, Some("1")), "{}", r_push.body);
    wait_for("the service ready again", Duration::from_secs(15), || {
        (call("GET", &format!("{}/readyz", svc.url()), None, None, None).status == 200).then_some(())
    });
    // The paused delivery's claim reached Redis when it woke: a retry may hear "being taken in"
    // (503) until that claim lapses (10 s), never "received before".
    let r = wait_for("the logout taken in once Redis is back", Duration::from_secs(15), || {
        let r = logout(&svc, &token);
        (r.status != 503).then_some(r)
    });
    assert_eq!(r.status, 200, "the same logout token once Redis is back: {}", r.body);
    let r = wait_for("the SET taken in once Redis is back", Duration::from_secs(15), || {
        let r = push(&svc, &set, None);
        (r.status != 503).then_some(r)
    });
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(revoked("sess-a"), inactive("session_revoked"));

    // The service may write the feed and signals taken in, not sessions or cutoffs.
    let restrict = ["ACL", "SETUSER", "svc", "resetkeys", "~jwtguard:{feed}*", "~jwtguard:seen:*", "~jwtguard:readyz"];
    assert_eq!(redis.cli(&restrict), "OK");
    let token = idp.logout_token(AUD, Some("alice"), Some("sess-b"));
    let r = logout(&svc, &token);
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("1")), "{}", r.body);
    let caep =
        idp.set(AUD, idp::CAEP_SESSION_REVOKED, idp::user_session(idp::iss_sub(&iss, "alice"), "sess-c"), json!({}));
    let polls = idp.polls();
    idp.queue(&caep);
    wait_for("the poller to try the SET a few times", Duration::from_secs(10), || {
        (idp.polls() >= polls + 3).then_some(())
    });
    assert_eq!((idp.pending(), idp.acknowledged().len(), idp.set_errors().len()), (1, 0, 0), "left for a retry");
    // Only sess-a's session and bob's cutoff, and the two signals taken in (status cannot read now).
    assert_eq!(key_counts(&redis), (1, 1, 2), "{:?}", signal_keys(&redis));

    assert_eq!(redis.cli(&["ACL", "SETUSER", "svc", "~jwtguard:*"]), "OK");
    let r = logout(&svc, &token);
    assert_eq!(r.status, 200, "a retry of a delivery that failed is no replay: {}", r.body);
    assert_eq!(revoked("sess-b"), inactive("session_revoked"));
    wait_for("the polled SET acknowledged", Duration::from_secs(10), || {
        (idp.acknowledged() == [jti_of(&caep)]).then_some(())
    });
    assert_eq!(revoked("sess-c"), inactive("session_revoked"));
    assert_eq!(idp.set_errors().len(), 0);
}

/// Runs `serve` with `config` as `--signals-config`: it must exit at once, non-zero, with one
/// line on stderr. Returns that line.
fn start_refused(dir: &Path, config: &str) -> String {
    let path = config_file(dir, config);
    // No Redis: the file is read before any connection is made.
    let service_args = args(&["redis://127.0.0.1:1".into()], false, &["--signals-config", &path]);
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(&service_args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the service");
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait for the service") {
            break exit;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the service did not stop with {config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).expect("read stderr");
    assert!(!exit.success(), "{config}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    let prefix = format!("jwtguard-revocation: --signals-config {path}: ");
    assert!(lines[0].starts_with(&prefix), "{stderr}");
    lines[0].to_string()
}

#[test]
fn a_bad_signals_config_stops_the_service_naming_the_field() {
    let dir = scratch_dir("revocation", "signals-bad-config");
    let issuer = json!({"issuer": "https://idp.example", "audiences": [AUD], "algorithms": ["RS256"],
                        "remote_jwks": {"uri": "https://idp.example/jwks"}});
    let line = start_refused(&dir, &json!({"issuers": [with(&issuer, json!({"surprise": 1}))]}).to_string());
    assert!(line.contains("unknown field `surprise`"), "{line}");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).expect("write");
    let both = with(&issuer, json!({"local_jwks": {"filename": jwks}}));
    let line = start_refused(&dir, &json!({"issuers": [both]}).to_string());
    assert!(line.contains("issuers[0]: exactly one of remote_jwks and local_jwks"), "{line}");
}

#[test]
fn without_signals_config_the_receivers_are_not_there() {
    let dir = scratch_dir("revocation", "signals-none");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    assert_eq!(logout(&svc, &idp.logout_token(AUD, None, Some("s"))).status, 404);
    let set = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::opaque("u"), json!({}));
    assert_eq!(push(&svc, &set, None).status, 404);
    assert_eq!(signal_keys(&redis), Vec::<String>::new());
}

/// The CLI's `signal`, against a service that reads the issuer's keys from a file (`local_jwks`).
#[test]
fn the_cli_sends_a_logout_token_and_a_set() {
    let dir = scratch_dir("revocation", "signals-cli");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let jwks = dir.join("idp-jwks.json");
    std::fs::write(&jwks, idp.jwks().to_string()).expect("write the JWKS");
    let issuer = json!({"issuer": idp.issuer(), "audiences": [AUD], "algorithms": ["RS256"],
                        "local_jwks": {"filename": jwks}});
    let svc = serve(&dir, redis.url(), &[issuer]);
    let iss = idp.issuer();
    let cli = |args: &[&str]| {
        let out =
            Command::new(bin()).arg("signal").args(["--url", &svc.url()]).args(args).output().expect("run the CLI");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let token = idp.logout_token(AUD, Some("alice"), Some("sess-cli"));
    assert_eq!(cli(&[&token]), (true, "200".to_string(), String::new()));
    assert_eq!(status(&svc, &[("iss", &iss), ("sid", "sess-cli")]), inactive("session_revoked"));
    let (ok, _, stderr) = cli(&[&token]);
    assert!(!ok && stderr.contains("400") && stderr.contains("invalid_request"), "a replay: {stderr}");

    let set = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&iss, "bob"), json!({}));
    assert_eq!(cli(&["--set", &set]), (true, "202".to_string(), String::new()));
    let older = (iat_of(&set) - 1).to_string();
    assert_eq!(status(&svc, &[("iss", &iss), ("sub", "bob"), ("iat", &older)]), inactive("subject_revoked"));
    assert_eq!(feed_of(&svc, 2).len(), 2);
}

/// The same logout token delivered eight times at once is taken in once: one 200, the others
/// "received before" (400) or "being taken in" (503), and one feed event.
#[test]
fn concurrent_deliveries_of_one_signal_write_once() {
    let dir = scratch_dir("revocation", "signals-concurrent");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let svc = serve(&dir, redis.url(), &[trusted(&idp, json!({}))]);
    // The key set is fetched first, so the deliveries race on the claim alone.
    assert_eq!(logout(&svc, &idp.logout_token(AUD, None, Some("warm-up"))).status, 200);
    let token = idp.logout_token(AUD, Some("alice"), Some("sess-race"));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| logout(&svc, &token).status)).collect();
        handles.into_iter().map(|h| h.join().expect("delivery")).collect()
    });
    assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| [200, 400, 503].contains(s)), "{statuses:?}");
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "2", "the warm-up's event and this one's");
}

/// While the provider's JWKS cannot be fetched, a valid signal is not refused for good: 503 for
/// a delivery, and a polled SET is neither acknowledged nor reported: the transmitter keeps it.
#[test]
fn an_unreachable_key_set_leaves_signals_for_a_retry() {
    let dir = scratch_dir("revocation", "signals-no-keys");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    // A port held by this test, whose every connection is closed unanswered: a free port could
    // be taken meanwhile by another test's server (one of them once served a key set here).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = format!("http://127.0.0.1:{}/jwks", listener.local_addr().expect("port").port());
    std::thread::spawn(move || listener.incoming().for_each(drop));
    let bearer = format!("Bearer {}", idp::POLL_CREDENTIAL);
    let poll = json!({"ssf_poll": {"endpoint": idp.poll_uri(), "authorization": bearer, "interval_ms": 100},
                      "remote_jwks": {"uri": closed, "timeout_ms": 500}});
    let svc = serve(&dir, redis.url(), &[trusted(&idp, poll)]);
    let r = logout(&svc, &idp.logout_token(AUD, Some("alice"), Some("sess-k")));
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("1")), "{}", r.body);
    let set = idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&idp.issuer(), "bob"), json!({}));
    let r = push(&svc, &set, None);
    assert_eq!(r.status, 503, "{}", r.body);
    let polls = idp.polls();
    idp.queue(&idp.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&idp.issuer(), "carol"), json!({})));
    wait_for("a few polls", Duration::from_secs(10), || (idp.polls() >= polls + 3).then_some(()));
    assert_eq!((idp.pending(), idp.acknowledged().len(), idp.set_errors().len()), (1, 0, 0), "kept by the transmitter");
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "0");

    // Signals arriving together while the key set is unreachable are answered by the one fetch
    // that failed after they came, not by one fetch each, 2 s apart (a queue would grow without
    // bound): six at once all have their 503 well within two such slots.
    let started = Instant::now();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|i| {
                let token = idp.logout_token(AUD, Some("alice"), Some(&format!("queued-{i}")));
                let svc = &svc;
                scope.spawn(move || logout(svc, &token).status)
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("delivery")).collect()
    });
    assert_eq!(statuses, vec![503; 6]);
    assert!(started.elapsed() < Duration::from_secs(4), "{:?} for six signals", started.elapsed());
}

/// A remote key set as providers publish it — a signing key beside an encryption key, a key of
/// another algorithm, and (wrongly) a secret — is used for its public signing keys alone: a
/// logout signed with the secret everyone can read is refused.
#[test]
fn a_remote_key_set_is_used_for_its_public_signing_keys_only() {
    use base64::Engine;
    let dir = scratch_dir("revocation", "signals-jwks-mix");
    let redis = RedisServer::start(&dir, &[]);
    let idp = start_idp(&dir, "idp");
    let mut keys = idp.jwks()["keys"].as_array().cloned().expect("keys");
    let mut encryption = keys[0].clone();
    encryption["kid"] = json!("enc-1");
    encryption["use"] = json!("enc");
    encryption["alg"] = json!("RSA-OAEP");
    let mut other_alg = keys[0].clone();
    other_alg["kid"] = json!("ps-1");
    other_alg["alg"] = json!("PS256");
    let secret = [9u8; 32];
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    keys.extend([encryption, other_alg, json!({"kty": "oct", "kid": "hs-1", "k": k})]);
    let port = jwtguard_demo::echo::start_static("127.0.0.1:0", json!({ "keys": keys }).to_string()).expect("jwks");
    let remote =
        json!({"remote_jwks": {"uri": format!("http://127.0.0.1:{port}/jwks")}, "algorithms": ["RS256", "HS256"]});
    let svc = serve(&dir, redis.url(), &[trusted(&idp, remote)]);

    assert_eq!(logout(&svc, &idp.logout_token(AUD, Some("alice"), Some("s-1"))).status, 200, "the signing key");
    let mut claims = claims_of(&idp.logout_token(AUD, Some("alice"), Some("s-2")));
    claims["jti"] = json!("forged-with-the-published-secret");
    let header = json!({"alg": "HS256", "kid": "hs-1", "typ": "logout+jwt"});
    let forged = tokens::sign_raw(
        &header.to_string(),
        &claims.to_string(),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
        jsonwebtoken::Algorithm::HS256,
    );
    let r = logout(&svc, &forged);
    assert_eq!((r.status, r.json()["error"].as_str()), (400, Some("invalid_request")), "{}", r.body);
    assert_eq!(key_counts(&redis), (1, 0, 1), "only the genuine logout: {:?}", signal_keys(&redis));
}

/// A poll stream carries its own transmitter's SETs: one signed by another trusted issuer is
/// reported (invalid_issuer) and not acted on.
#[test]
fn a_poll_stream_takes_in_its_own_transmitters_sets_only() {
    let dir = scratch_dir("revocation", "signals-poll-issuer");
    let redis = RedisServer::start(&dir, &[]);
    let (idp, other) = (start_idp(&dir, "idp"), start_idp(&dir, "other"));
    let bearer = format!("Bearer {}", idp::POLL_CREDENTIAL);
    let poll = json!({"ssf_poll": {"endpoint": idp.poll_uri(), "authorization": bearer, "interval_ms": 100}});
    let _svc = serve(&dir, redis.url(), &[trusted(&idp, poll), trusted(&other, json!({}))]);
    let foreign = other.set(AUD, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&other.issuer(), "bob"), json!({}));
    let jti = jti_of(&foreign);
    idp.queue(&foreign);
    let errors = wait_for("the foreign SET reported", Duration::from_secs(10), || {
        let errors = idp.set_errors();
        errors.contains_key(&jti).then_some(errors)
    });
    assert_eq!(errors[&jti]["err"], "invalid_issuer", "{errors:?}");
    assert_eq!(redis.cli(&["XLEN", FEED_KEY]), "0");
}
