//! End-to-end revocation from the identity provider itself: a back-channel logout, a CAEP
//! `session-revoked` pushed over SSF and a RISC `account-disabled` polled over SSF reach the
//! real service, go through Redis into the feed, and are refused on every Envoy — exactly the
//! tokens they name, nothing else. The identity provider is the stand-in of `jwtguard_demo::idp`:
//! it issues the access tokens too, so the filter and the service trust the same issuer and keys.

mod support;

use jwtguard_demo::idp::{self, Idp};
use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::service::{self, Service};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::echo::Echo;
use support::envoy::Envoy;
use support::revocation::{assert_revoked, envoy, get, service_args};
use support::tokens::{now, KeyPair};
use support::{scratch_dir, wait_for};

/// Our audience at the identity provider (the client id the logout tokens name).
const AUDIENCE: &str = "jwtguard";

struct World {
    idp: Idp,
    service: Service,
    /// Two in feed mode, one asking `/v1/status` (callout mode).
    envoys: [Envoy; 3],
    _redis: RedisServer,
    _echo: Echo,
}

/// Redis, the service trusting the identity provider (its remote JWKS, its SSF poll endpoint
/// every 100 ms), and three Envoys whose filter trusts the same provider: two in feed mode, one
/// in callout mode.
fn world(name: &str) -> World {
    let dir = scratch_dir(name);
    let idp = Idp::start(&dir);
    let signals = json!({"issuers": [{
        "issuer": idp.issuer(), "audiences": [AUDIENCE], "algorithms": ["RS256"],
        "remote_jwks": {"uri": idp.jwks_uri()},
        "ssf_poll": {"endpoint": idp.poll_uri(), "authorization": format!("Bearer {}", idp::POLL_CREDENTIAL),
                     "interval_ms": 100}
    }]});
    let config = dir.join("signals.json");
    std::fs::write(&config, signals.to_string()).unwrap();
    let redis = RedisServer::start(&dir, &[]);
    let args = service_args(&[redis.url()], false, &["--signals-config", config.to_str().unwrap()]);
    let service = Service::start(&service::binary(), &dir, &args).expect("service");
    let echo = Echo::start("127.0.0.1:0").expect("echo");
    let key = KeyPair::generate(&dir, jsonwebtoken::Algorithm::ES256, "unused");
    let mut plugin = support::revocation::plugin(&key, json!({}), json!([]));
    plugin["providers"]["main"]["issuer"] = json!(idp.issuer());
    plugin["providers"]["main"]["local_jwks"] = json!({"inline_string": idp.jwks().to_string()});
    let mut callouts = plugin.clone();
    callouts["revocation"]["source"] = json!("status");
    let envoys = [
        envoy(&dir, "a", &[("main", plugin.clone())], service.port, &echo),
        envoy(&dir, "b", &[("main", plugin)], service.port, &echo),
        envoy(&dir, "c", &[("main", callouts)], service.port, &echo),
    ];
    World { idp, service, envoys, _redis: redis, _echo: echo }
}

impl World {
    /// An access token of the identity provider for `sub` in session `sid`, issued at `iat`.
    fn token(&self, sub: &str, sid: &str, iat: u64) -> String {
        let claims = json!({"iss": self.idp.issuer(), "aud": AUDIENCE, "sub": sub, "sid": sid,
                            "jti": format!("{sub}-{sid}-{iat}"), "iat": iat, "exp": now() + 600});
        self.idp.sign(&json!({"alg": "RS256", "kid": "idp-1", "typ": "JWT"}), &claims)
    }

    fn accepted_everywhere(&self, token: &str) -> bool {
        self.envoys.iter().all(|e| get(e, "main", token).status == 200)
    }

    /// Waits until `token` is refused on every Envoy; how long that took.
    fn refused_everywhere(&self, token: &str, since: Instant) -> Duration {
        wait_for("the token refused on every Envoy", Duration::from_secs(5), || {
            self.envoys.iter().all(|e| get(e, "main", token).status == 401).then(|| since.elapsed())
        });
        for e in &self.envoys {
            assert_revoked(&get(e, "main", token));
        }
        since.elapsed()
    }

    fn backchannel_logout(&self, logout_token: &str) -> (u16, String) {
        self.send(
            "/v1/backchannel-logout",
            "application/x-www-form-urlencoded",
            &format!("logout_token={logout_token}"),
        )
    }

    fn push(&self, set: &str) -> (u16, String) {
        self.send("/v1/ssf/push", "application/secevent+jwt", set)
    }

    fn send(&self, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let r =
            ureq::post(&format!("{}{path}", self.service.url())).set("content-type", content_type).send_string(body);
        match r {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{path}: {e}"),
        }
    }

    /// Waits until every Envoy holds the first revocation set (a 503 says it is still coming).
    fn ready(&self, token: &str) {
        for e in &self.envoys {
            wait_for("the first revocation set", Duration::from_secs(10), || {
                (get(e, "main", token).status == 200).then_some(())
            });
        }
    }
}

/// Back-channel logout by `sid` ends exactly that session on both Envoys; by `sub` alone every
/// older token of the subject, while a token issued after the logout still passes.
#[test]
fn a_backchannel_logout_refuses_that_session_or_that_subject_on_every_envoy() {
    let w = world("signals-backchannel");
    let t = now() - 10;
    let (session_1, session_2, other_user) =
        (w.token("alice", "s1", t), w.token("alice", "s2", t), w.token("bob", "s3", t));
    w.ready(&session_1);
    for token in [&session_1, &session_2, &other_user] {
        assert!(w.accepted_everywhere(token));
    }

    let sent = Instant::now();
    assert_eq!(w.backchannel_logout(&w.idp.logout_token(AUDIENCE, Some("alice"), Some("s1"))).0, 200);
    let took = w.refused_everywhere(&session_1, sent);
    eprintln!("back-channel logout by sid: refused on all three Envoys {took:?} after the logout was sent");
    assert!(w.accepted_everywhere(&session_2), "another session of the same user");
    assert!(w.accepted_everywhere(&other_user));

    // By subject: every token of alice issued before the logout, whatever its session.
    let sent = Instant::now();
    assert_eq!(w.backchannel_logout(&w.idp.logout_token(AUDIENCE, Some("alice"), None)).0, 200);
    w.refused_everywhere(&session_2, sent);
    assert!(w.accepted_everywhere(&other_user));
    let after = w.token("alice", "s4", now() + 1);
    assert!(w.accepted_everywhere(&after), "a login after the logout");

    // A forged or replayed logout changes nothing.
    let logout = w.idp.logout_token(AUDIENCE, None, Some("s3"));
    let forged = format!("{}x", &logout[..logout.len() - 1]);
    assert_eq!(w.backchannel_logout(&forged).0, 400);
    assert!(w.accepted_everywhere(&other_user), "forged");
}

/// CAEP `session-revoked` with a complex subject ends that session, RISC `account-disabled`
/// revokes every older token of the account — each pushed (RFC 8935) and polled (RFC 8936).
#[test]
fn caep_and_risc_signals_pushed_and_polled_refuse_on_every_envoy() {
    let w = world("signals-ssf");
    let t = now() - 10;
    let (carol_1, carol_2, dave) = (w.token("carol", "c1", t), w.token("carol", "c2", t), w.token("dave", "d1", t));
    w.ready(&carol_1);
    for token in [&carol_1, &carol_2, &dave] {
        assert!(w.accepted_everywhere(token));
    }

    let subject = idp::user_session(idp::iss_sub(&w.idp.issuer(), "carol"), "c1");
    let set = w.idp.set(AUDIENCE, idp::CAEP_SESSION_REVOKED, subject, json!({"event_timestamp": now()}));
    let sent = Instant::now();
    assert_eq!(w.push(&set), (202, String::new()));
    let took = w.refused_everywhere(&carol_1, sent);
    eprintln!("CAEP session-revoked pushed: refused on all three Envoys after {took:?}");
    assert!(w.accepted_everywhere(&carol_2), "the other session");
    assert_eq!(w.push(&set), (202, String::new()), "the same SET again: taken in before, nothing written");

    let disabled = w.idp.set(AUDIENCE, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&w.idp.issuer(), "dave"), json!({}));
    let jti = claim(&disabled, "jti");
    let queued = Instant::now();
    w.idp.queue(&disabled);
    let took = w.refused_everywhere(&dave, queued);
    eprintln!("RISC account-disabled polled (every 100 ms): refused on all three Envoys after {took:?}");
    wait_for("the SET acknowledged", Duration::from_secs(5), || w.idp.acknowledged().contains(&jti).then_some(()));
    assert!(w.accepted_everywhere(&carol_2));
    assert_eq!(w.idp.pending(), 0);

    // And the other way round: RISC pushed, CAEP polled.
    let erin = w.token("erin", "e1", t);
    assert!(w.accepted_everywhere(&erin));
    let disabled = w.idp.set(AUDIENCE, idp::RISC_ACCOUNT_DISABLED, idp::iss_sub(&w.idp.issuer(), "erin"), json!({}));
    let sent = Instant::now();
    assert_eq!(w.push(&disabled), (202, String::new()));
    w.refused_everywhere(&erin, sent);
    let subject = idp::user_session(idp::iss_sub(&w.idp.issuer(), "carol"), "c2");
    let queued = Instant::now();
    w.idp.queue(&w.idp.set(AUDIENCE, idp::CAEP_SESSION_REVOKED, subject, json!({"event_timestamp": now()})));
    w.refused_everywhere(&carol_2, queued);
    assert!(w.accepted_everywhere(&w.token("carol", "c3", t)), "her other sessions stay");
}

/// A claim of a compact JWT, read without verification (the test's own tokens).
fn claim(token: &str, name: &str) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&support::tokens::decode(payload)).unwrap();
    claims[name].as_str().unwrap().to_string()
}
