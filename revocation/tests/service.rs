//! The revocation service against real Redis (standalone and a 6-node cluster) that the tests
//! start on free ports: every endpoint and error path, TTLs, credentials, and failover.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{args, bin, call, Reply, MAX_LIFETIME, STATUS, WRITE};
use jsonwebtoken::Algorithm;
use jwtguard::claims::ClaimPolicy;
use jwtguard::revocation::{status_path, Identity, Mode};
use jwtguard_demo::redis::{key_slot, RedisCluster, RedisServer};
use jwtguard_demo::service::Service;
use jwtguard_demo::tokens::{now, KeyPair};
use jwtguard_demo::{scratch_dir, wait_for};
use jwtguard_wire::{FeedEvent, FeedResponse};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A key as the service names it (docs/revocation-service.md): each part `~` + base64url.
fn redis_key(kind: &str, id: &str) -> String {
    format!("jwtguard:{kind}:{{~{}}}", URL_SAFE_NO_PAD.encode(id))
}

fn post_json(svc: &Service, path: &str, credential: Option<&str>, body: &Value) -> Reply {
    call("POST", &format!("{}{path}", svc.url()), credential, Some("application/json"), Some(&body.to_string()))
}

fn status(svc: &Service, query: &str) -> Value {
    let r = call("GET", &format!("{}/v1/status?{query}", svc.url()), Some(STATUS), None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// The status request the filter sends for a token with `claims` (its own identity reader and
/// query encoding), and the answer.
fn filter_status(svc: &Service, claims: Value, mode: Mode) -> Value {
    let identity = Identity::from_claims(claims.as_object().expect("claims"));
    let r =
        call("GET", &format!("{}{}", svc.url(), status_path("/v1/status", &identity, mode)), Some(STATUS), None, None);
    assert_eq!(r.status, 200, "{claims}: {}", r.body);
    r.json()
}

fn utf8_percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Reads a key's TTL from whichever node holds it.
type TtlOf<'a> = &'a dyn Fn(&str) -> i64;

/// The whole API, run against standalone Redis and against the cluster.
fn exercise_every_endpoint(svc: &Service, keys_dir: &Path, ttl_of: TtlOf) {
    let url = svc.url();
    let t = now();
    assert_eq!(call("GET", &format!("{url}/healthz"), None, None, None).status, 200);
    assert_eq!(call("GET", &format!("{url}/readyz"), None, None, None).status, 200);
    let spec: Value =
        serde_json::from_str(&call("GET", &format!("{url}/openapi.json"), None, None, None).body).unwrap();
    assert_eq!(spec["openapi"], "3.0.3");

    // Credentials: nothing is written without the right one.
    let revoke = json!({"jti": "cred-test", "exp": t + 600});
    assert_eq!(post_json(svc, "/v1/revoke", None, &revoke).status, 401);
    assert_eq!(post_json(svc, "/v1/revoke", Some("wrong"), &revoke).status, 401);
    assert_eq!(post_json(svc, "/v1/revoke", Some(STATUS), &revoke).status, 401, "the status credential cannot write");
    assert_eq!(status(svc, "jti=cred-test")["active"], true);
    assert_eq!(call("GET", &format!("{url}/v1/status?jti=x"), None, None, None).status, 401);
    assert_eq!(call("GET", &format!("{url}/v1/status?jti=x"), Some(WRITE), None, None).status, 401);

    // Revoke by jti: the key expires with the token (exp + 60 s skew).
    let r = post_json(svc, "/v1/revoke", Some(WRITE), &json!({"jti": "j-1", "exp": t + 600, "sub": "alice"}));
    assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(true)), "{}", r.body);
    assert_eq!(status(svc, "jti=j-1&sub=alice"), json!({"active": false, "reason": "revoked"}));
    let ttl = ttl_of(&redis_key("jti", "j-1"));
    assert!((655..=660).contains(&ttl), "TTL {ttl} should be ~660");
    assert_eq!(
        post_json(svc, "/v1/revoke", Some(WRITE), &json!({"jti": "j-1", "exp": t + 600})).status,
        200,
        "idempotent"
    );
    // exp in the past: nothing to store; far future: clamped to the maximum lifetime.
    let r = post_json(svc, "/v1/revoke", Some(WRITE), &json!({"jti": "old", "exp": t - 3600}));
    assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(false)));
    assert_eq!(ttl_of(&redis_key("jti", "old")), -2);
    post_json(svc, "/v1/revoke", Some(WRITE), &json!({"jti": "far", "exp": t + 10 * MAX_LIFETIME}));
    assert!(ttl_of(&redis_key("jti", "far")) <= (MAX_LIFETIME + 60) as i64);

    // RFC 7009 form with a raw token; invalid tokens are answered 200 and store nothing.
    let key = KeyPair::load_or_generate(keys_dir, Algorithm::RS256, "svc");
    let token = key.sign(&json!({"jti": "raw-1", "sub": "bob", "iat": t, "exp": t + 300}));
    let form = format!("token={token}&token_type_hint=access_token");
    let r =
        call("POST", &format!("{url}/v1/revoke"), Some(WRITE), Some("application/x-www-form-urlencoded"), Some(&form));
    assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(true)), "{}", r.body);
    assert_eq!(status(svc, "jti=raw-1")["reason"], "revoked");
    let r = call(
        "POST",
        &format!("{url}/v1/revoke"),
        Some(WRITE),
        Some("application/x-www-form-urlencoded"),
        Some("token=not-a-jwt"),
    );
    assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(false)));
    let r = post_json(svc, "/v1/revoke", Some(WRITE), &json!({"token": token}));
    assert_eq!(r.status, 200, "JSON form of the raw token");

    // Bad input never reaches Redis.
    for (body, ct) in [
        ("{not json", "application/json"),
        (r#"{"jti": "has\u0001control", "exp": 1}"#, "application/json"),
        (r#"{"jti": "x"}"#, "application/json"),
        (r#"{"jti": "x", "exp": 1, "extra": 1}"#, "application/json"),
        (r#"{"jti": "x", "exp": "soon"}"#, "application/json"),
        (r#"{"jti": "x", "exp": 1, "token": "t"}"#, "application/json"),
        ("jti=x", "text/plain"),
        ("nothing=here", "application/x-www-form-urlencoded"),
    ] {
        let r = call("POST", &format!("{url}/v1/revoke"), Some(WRITE), Some(ct), Some(body));
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_request");
    }
    let huge = json!({"jti": "x".repeat(20_000), "exp": 1}).to_string();
    assert_eq!(
        call("POST", &format!("{url}/v1/revoke"), Some(WRITE), Some("application/json"), Some(&huge)).status,
        413
    );
    let long_jti = json!({"jti": "x".repeat(300), "exp": t + 10});
    assert_eq!(post_json(svc, "/v1/revoke", Some(WRITE), &long_jti).status, 400);
    for q in ["iat=x&jti=a", "iat=&jti=a", "jti=a&jti=b", "jti=a&mode=other", "jti=a%01b", "sub=%01", "iss="] {
        let r = call("GET", &format!("{url}/v1/status?{q}"), Some(STATUS), None, None);
        assert_eq!(r.status, 400, "{q}: {}", r.body);
    }

    // Log out everywhere: tokens issued before the cutoff refused, later ones not; per issuer too.
    let r = post_json(svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": "carol", "issued_before": t}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(svc, &format!("jti=c1&sub=carol&iat={}", t - 5))["reason"], "subject_revoked");
    assert_eq!(status(svc, &format!("jti=c2&sub=carol&iat={t}"))["active"], true);
    assert_eq!(status(svc, "jti=c3&sub=carol")["reason"], "subject_revoked", "no iat: cannot show it is newer");
    let r = post_json(svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": "carol", "issued_before": t - 100}));
    assert_eq!(r.json()["issued_before"], t, "the cutoff never moves back");
    post_json(svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": "dave", "iss": "https://a", "issued_before": t}));
    assert_eq!(status(svc, &format!("jti=d1&sub=dave&iss=https://a&iat={}", t - 1))["reason"], "subject_revoked");
    assert_eq!(status(svc, &format!("jti=d2&sub=dave&iss=https://b&iat={}", t - 1))["active"], true);
    let cut_ttl = ttl_of(&redis_key("cut", "carol"));
    assert!(cut_ttl > 0 && cut_ttl <= (MAX_LIFETIME + 60) as i64, "cutoff TTL {cut_ttl}");
    assert_eq!(post_json(svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": ""})).status, 400);

    // Sessions with one login per subject: a second login ends the first.
    let session =
        |jti: &str| post_json(svc, "/v1/sessions", Some(WRITE), &json!({"jti": jti, "sub": "erin", "exp": t + 600}));
    assert_eq!(session("s1").json()["ended"], json!([]));
    assert_eq!(status(svc, "jti=s1&sub=erin&mode=allowlist")["active"], true);
    assert_eq!(session("s2").json()["ended"], json!(["s1"]));
    assert_eq!(status(svc, "jti=s1&sub=erin&mode=allowlist")["reason"], "no_session");
    assert_eq!(status(svc, "jti=s2&sub=erin&mode=allowlist")["active"], true);
    assert_eq!(status(svc, "jti=s1&sub=erin")["active"], true, "denylist mode ignores sessions");
    let r = call("DELETE", &format!("{url}/v1/sessions/s2"), Some(WRITE), None, None);
    assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(true)));
    assert_eq!(status(svc, "jti=s2&sub=erin&mode=allowlist")["reason"], "no_session");
    assert_eq!(call("DELETE", &format!("{url}/v1/sessions/s2"), Some(WRITE), None, None).json()["stored"], false);
    assert_eq!(call("DELETE", &format!("{url}/v1/sessions/s2"), None, None, None).status, 401);
    let expired = post_json(svc, "/v1/sessions", Some(WRITE), &json!({"jti": "s3", "sub": "erin", "exp": t - 1}));
    assert_eq!((expired.status, expired.json()["stored"].clone()), (200, json!(false)));

    // Identifiers holding key syntax reach their own keys only, and a subject's keys stay on one
    // shard (a raw `}` once cut the hash tag short: the session script then failed CROSSSLOT).
    let asked = |claims: Value| filter_status(svc, claims, Mode::Denylist);
    for (i, sub) in ["}x", "{}", "{a}", "x}:{y"].into_iter().enumerate() {
        let jti = format!("brace }}{{ {i} é");
        let r = post_json(svc, "/v1/sessions", Some(WRITE), &json!({"jti": jti, "sub": sub, "exp": t + 600}));
        assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(true)), "{sub}: {}", r.body);
        let claims = json!({"jti": jti, "sub": sub});
        assert_eq!(filter_status(svc, claims.clone(), Mode::Allowlist)["active"], true, "{sub}");
        let path = format!("{url}/v1/sessions/{}", utf8_percent_encode(&jti));
        assert_eq!(call("DELETE", &path, Some(WRITE), None, None).json()["stored"], true, "{sub}");
        assert_eq!(filter_status(svc, claims.clone(), Mode::Allowlist)["reason"], "no_session", "{sub}");
        let r = post_json(svc, "/v1/revoke", Some(WRITE), &json!({"jti": jti, "exp": t + 600}));
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(asked(claims)["reason"], "revoked", "{sub}");
    }

    // Each of those writes is in the feed (tests/feed.rs checks the feed itself in detail).
    let r = call("GET", &format!("{url}/v1/feed?wait_ms=0"), Some(STATUS), None, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let feed: FeedResponse = serde_json::from_str(&r.body).unwrap();
    assert!(!feed.more, "a few dozen events fit one page");
    for expected in [
        FeedEvent::Revoked { jti: "j-1".into(), until: t + 600 + 60 },
        FeedEvent::SubjectCutoff { sub: "carol".into(), iss: None, before: t, until: t + MAX_LIFETIME + 60 },
        FeedEvent::SubjectCutoff {
            sub: "dave".into(),
            iss: Some("https://a".into()),
            before: t,
            until: t + MAX_LIFETIME + 60,
        },
        FeedEvent::SessionEnded { jti: "s1".into(), until: t + 600 },
        FeedEvent::SessionEnded { jti: "s2".into(), until: t + 600 },
    ] {
        assert!(feed.events.contains(&expected), "{expected:?} not in {:?}", feed.events);
    }
    assert!(feed.events.iter().any(|e| matches!(e, FeedEvent::Revoked { jti, .. } if jti == "raw-1")));
    assert!(!feed.events.iter().any(|e| matches!(e, FeedEvent::Revoked { jti, .. } if jti == "old")), "expired");
    assert!(!feed.events.iter().any(|e| matches!(e, FeedEvent::Revoked { jti, .. } if jti == "cred-test")));

    let metrics = call("GET", &format!("{url}/metrics"), None, None, None).body;
    assert!(metrics.contains("jwtguard_revocation_requests_total{endpoint=\"revoke\",code=\"200\"}"), "{metrics}");
    assert!(metrics.contains("jwtguard_revocation_request_duration_seconds_bucket{endpoint=\"revoke\",code=\"200\","));
    assert!(metrics.contains("jwtguard_revocation_redis_seconds"));
    for name in [
        "jwtguard_revocation_feed_events_appended_total{type=\"revoked\"}",
        "jwtguard_revocation_feed_events_sent_total",
        "jwtguard_revocation_feed_reader_healthy 1",
        "jwtguard_revocation_feed_held_polls 0",
    ] {
        assert!(metrics.contains(name), "{name} not in {metrics}");
    }
}

#[test]
fn every_endpoint_on_standalone_redis() {
    let dir = scratch_dir("revocation", "standalone");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    exercise_every_endpoint(&svc, &dir, &|key| redis.cli(&["TTL", key]).parse().unwrap_or(-99));
}

#[test]
fn every_endpoint_on_a_redis_cluster() {
    let dir = scratch_dir("revocation", "cluster");
    let cluster = RedisCluster::start(&dir);
    // Every write must be acknowledged here: a bound well above the default 200 ms, which a
    // replica under the whole suite's load on a 2-core machine has exceeded.
    let extra = ["--min-replicas-ack", "1", "--wait-timeout-ms", "2000"];
    let svc = Service::start(&bin(), &dir, &args(&cluster.urls(), true, &extra)).expect("service");
    let ttl_of = |key: &str| cluster.nodes[cluster.primary_for(key)].cli(&["TTL", key]).parse().unwrap_or(-99);
    exercise_every_endpoint(&svc, &dir, &ttl_of);
}

#[test]
fn the_operator_cli_revokes_and_asks() {
    let dir = scratch_dir("revocation", "cli");
    let redis = RedisServer::start(&dir, &[]);
    // Also the one-worker runtime the status benchmark uses.
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &["--worker-threads", "1"])).expect("service");
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("JWTGUARD_REVOCATION_URL", svc.url())
            .env("JWTGUARD_REVOCATION_CREDENTIAL", WRITE)
            .env("JWTGUARD_STATUS_CREDENTIAL", STATUS)
            .output()
            .expect("run the CLI");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let exp = (now() + 600).to_string();
    let (ok, out) = cli(&["revoke", "--jti", "cli-1", "--exp", &exp]);
    assert!(ok && out.contains(r#""stored":true"#), "{out}");
    let (ok, out) = cli(&["status", "--jti", "cli-1"]);
    assert!(ok && out.contains(r#""reason":"revoked""#), "{out}");
    let (ok, out) = cli(&["revoke-subject", "--sub", "zed"]);
    assert!(ok && out.contains("issued_before"), "{out}");
    let (ok, out) = cli(&["status", "--sub", "zed", "--iat", "1"]);
    assert!(ok && out.contains("subject_revoked"), "{out}");
    let out = std::process::Command::new(bin())
        .args(["revoke", "--jti", "x", "--exp", &exp])
        .env("JWTGUARD_REVOCATION_URL", svc.url())
        .env("JWTGUARD_REVOCATION_CREDENTIAL", "wrong")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a refused call exits non-zero");
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}

#[test]
fn redis_acl_credentials_in_the_url_are_used() {
    let dir = scratch_dir("revocation", "acl");
    let acl = ["--user", "jwtguard", "on", ">s3cret", "~jwtguard:*", "+@all", "--user", "default", "off"];
    let redis = RedisServer::start(&dir, &acl);
    let url = format!("redis://jwtguard:s3cret@127.0.0.1:{}", redis.port);
    let svc = Service::start(&bin(), &dir, &args(&[url], false, &[])).expect("service");
    let r = post_json(&svc, "/v1/revoke", Some(WRITE), &json!({"jti": "acl-1", "exp": now() + 60}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(&svc, "jti=acl-1")["reason"], "revoked");
}

/// `rediss://` with a CA of our own: trusted with --redis-ca-file, refused without it.
#[test]
fn tls_to_redis_with_a_private_ca() {
    let dir = scratch_dir("revocation", "tls");
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(&dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let tls_port = jwtguard_demo::redis::free_port().to_string();
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let (cert, key, ca) = (path("server.pem"), path("server.key"), path("ca.pem"));
    let tls = [
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca,
        "--tls-auth-clients",
        "no",
    ];
    let _redis = RedisServer::start(&dir, &tls);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let refused = Service::start(&bin(), &dir, &args(std::slice::from_ref(&url), false, &[]))
        .err()
        .expect("an untrusted certificate must be refused");
    assert!(refused.to_lowercase().contains("certificate") || refused.contains("invalid"), "{refused}");
    let svc = Service::start(&bin(), &dir, &args(&[url], false, &["--redis-ca-file", &ca])).expect("service over TLS");
    let r = post_json(&svc, "/v1/revoke", Some(WRITE), &json!({"jti": "tls-1", "exp": now() + 60}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(status(&svc, "jti=tls-1")["reason"], "revoked");
}

#[test]
fn refuses_to_start_without_credentials_unless_told_it_is_development() {
    let dir = scratch_dir("revocation", "nocreds");
    let redis = RedisServer::start(&dir, &[]);
    let err = Service::start(&bin(), &dir, &["--redis-url".into(), redis.url()]).err().expect("must refuse");
    assert!(err.contains("no write credentials"), "{err}");
    let dev =
        Service::start(&bin(), &dir, &["--redis-url".into(), redis.url(), "--insecure-dev-no-credentials".into()])
            .expect("dev mode");
    let log = std::fs::read_to_string(&dev.log).unwrap();
    assert!(log.contains("INSECURE DEVELOPMENT MODE"), "{log}");
    let r = post_json(&dev, "/v1/revoke", None, &json!({"jti": "dev", "exp": now() + 60}));
    assert_eq!(r.status, 200);
}

/// Without `--status-credentials` the status endpoint and the feed (every revoked jti, every
/// subject that logged out) are open: the service says so at start, naming the flag, except in
/// the development mode that already warns it is insecure.
#[test]
fn an_open_status_endpoint_and_feed_are_warned_about_at_start() {
    let dir = scratch_dir("revocation", "openstatus");
    let redis = RedisServer::start(&dir, &[]);
    let log = |svc: &Service| std::fs::read_to_string(&svc.log).unwrap();
    let warns = |log: &str| log.contains("--status-credentials") && log.contains("/v1/feed");
    let open = Service::start(&bin(), &dir, &["--redis-url".into(), redis.url(), "--credentials".into(), WRITE.into()])
        .expect("service");
    let open_log = log(&open);
    assert!(warns(&open_log), "{open_log}");
    let line = open_log.lines().find(|l| l.contains("--status-credentials")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(line).unwrap()["level"], "WARN", "{line}");
    assert_eq!(call("GET", &format!("{}/v1/feed?wait_ms=0", open.url()), None, None, None).status, 200, "open indeed");
    let closed = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    assert!(!warns(&log(&closed)), "{}", log(&closed));
    let dev =
        Service::start(&bin(), &dir, &["--redis-url".into(), redis.url(), "--insecure-dev-no-credentials".into()])
            .expect("dev mode");
    let dev_log = log(&dev);
    assert!(dev_log.contains("INSECURE DEVELOPMENT MODE") && !warns(&dev_log), "{dev_log}");
}

/// Every write appends its feed event before it changes the state the event reports. So a
/// write whose event cannot be appended (here an ACL user without XADD) answers 503 and changes
/// nothing: the status endpoint and the feed still agree. A failure after the append leaves the
/// event alone (fail-safe: proxies refuse a token the status endpoint calls active) until the
/// retry completes it. /readyz probes an append on the feed's shard, so it is red for such a
/// user. And the normal path stores both.
#[test]
fn a_write_whose_feed_event_cannot_be_appended_changes_nothing_and_readyz_is_red() {
    let dir = scratch_dir("revocation", "noxadd");
    let redis = RedisServer::start(&dir, &[]);
    for (user, without) in [("noxadd", "-xadd"), ("noset", "-set")] {
        let reply = redis.cli(&["ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", without]);
        assert_eq!(reply, "OK", "{user}");
    }
    let as_user = |user: &str| {
        let url = format!("redis://{user}:pw@127.0.0.1:{}", redis.port);
        Service::start(&bin(), &dir, &args(&[url], false, &[])).expect("service")
    };
    let readyz = |svc: &Service| call("GET", &format!("{}/readyz", svc.url()), None, None, None).status;
    let delete =
        |svc: &Service, jti: &str| call("DELETE", &format!("{}/v1/sessions/{jti}", svc.url()), Some(WRITE), None, None);
    let feed_events = |svc: &Service| {
        let r = call("GET", &format!("{}/v1/feed?wait_ms=0", svc.url()), Some(STATUS), None, None);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<FeedResponse>(&r.body).unwrap().events
    };
    // The instance's reader takes the entries in a moment after the append.
    let feed_reaches = |svc: &Service, expected: &[FeedEvent]| {
        let mut last = Vec::new();
        let reached = Instant::now() + Duration::from_secs(10);
        while Instant::now() < reached {
            last = feed_events(svc);
            if last == expected {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the feed holds {last:?}, not {expected:?}");
    };
    let t = now();
    let (revoke, subject) = (json!({"jti": "nx-1", "exp": t + 600}), json!({"sub": "nx-sub", "issued_before": t}));
    let session = json!({"jti": "nx-s", "sub": "nx-user", "exp": t + 600});
    let subject_query = format!("sub=nx-sub&iat={}", t - 5);
    let session_query = "jti=nx-s&sub=nx-user&mode=allowlist";

    // No XADD: every write that reports an event is refused, and nothing is stored.
    let noxadd = as_user("noxadd");
    assert_eq!(readyz(&noxadd), 503, "the feed cannot be appended to");
    let r = post_json(&noxadd, "/v1/revoke", Some(WRITE), &revoke);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(status(&noxadd, "jti=nx-1")["active"], true, "nothing stored");
    let r = post_json(&noxadd, "/v1/revoke-subject", Some(WRITE), &subject);
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(status(&noxadd, &subject_query)["active"], true, "nothing stored");
    let r = post_json(&noxadd, "/v1/sessions", Some(WRITE), &session);
    assert_eq!(r.status, 200, "a registration ending nothing appends nothing: {}", r.body);
    assert_eq!(status(&noxadd, session_query)["active"], true);
    let r = delete(&noxadd, "nx-s");
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(status(&noxadd, session_query)["active"], true, "the session goes on");
    assert_eq!(redis.cli(&["XLEN", "jwtguard:{feed}"]), "0");
    assert_eq!(feed_events(&noxadd), vec![]);

    // No SET: the event is appended, then the state write fails: 503, and only the event is
    // there (proxies refuse the token; the status endpoint does not yet).
    let noset = as_user("noset");
    assert_eq!(readyz(&noset), 503);
    let r = post_json(&noset, "/v1/revoke", Some(WRITE), &json!({"jti": "ns-1", "exp": t + 600}));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(status(&noset, "jti=ns-1")["active"], true);
    let half = vec![FeedEvent::Revoked { jti: "ns-1".into(), until: t + 660 }];
    feed_reaches(&noset, &half); // the event went first

    // The normal path: the retries store both the state and the events.
    let full = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    assert_eq!(readyz(&full), 200);
    for (path, body) in [
        ("/v1/revoke", &revoke),
        ("/v1/revoke-subject", &subject),
        ("/v1/revoke", &json!({"jti": "ns-1", "exp": t + 600})),
    ] {
        let r = post_json(&full, path, Some(WRITE), body);
        assert_eq!(r.status, 200, "{path} {body}: {}", r.body);
    }
    let r = delete(&full, "nx-s");
    assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(true)), "{}", r.body);
    assert_eq!(status(&full, "jti=nx-1")["reason"], "revoked");
    assert_eq!(status(&full, "jti=ns-1")["reason"], "revoked");
    assert_eq!(status(&full, &subject_query)["reason"], "subject_revoked");
    assert_eq!(status(&full, session_query)["reason"], "no_session");
    let mut expected = half.clone();
    expected.extend([
        FeedEvent::Revoked { jti: "nx-1".into(), until: t + 660 },
        FeedEvent::SubjectCutoff { sub: "nx-sub".into(), iss: None, before: t, until: t + MAX_LIFETIME + 60 },
        FeedEvent::Revoked { jti: "ns-1".into(), until: t + 660 },
        FeedEvent::SessionEnded { jti: "nx-s".into(), until: t + 600 },
    ]);
    feed_reaches(&full, &expected);
    feed_reaches(&noxadd, &expected); // reading needs no XADD
}

#[test]
fn without_enough_replicas_a_revocation_is_not_acknowledged() {
    let dir = scratch_dir("revocation", "noreplica");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(
        &bin(),
        &dir,
        &args(&[redis.url()], false, &["--min-replicas-ack", "1", "--wait-timeout-ms", "50"]),
    )
    .expect("service");
    let r = post_json(&svc, "/v1/revoke", Some(WRITE), &json!({"jti": "lonely", "exp": now() + 60}));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
}

#[test]
fn redis_down_gives_503_within_the_bound_and_recovers() {
    let dir = scratch_dir("revocation", "redisdown");
    let mut redis = RedisServer::start(&dir, &[]);
    let port = redis.port;
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    assert_eq!(status(&svc, "jti=a")["active"], true);
    redis.kill();
    let started = Instant::now();
    let r = call("GET", &format!("{}/v1/status?jti=a", svc.url()), Some(STATUS), None, None);
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("1")), "{}", r.body);
    assert!(started.elapsed() < Duration::from_millis(2000), "took {:?}", started.elapsed());
    assert_eq!(call("GET", &format!("{}/readyz", svc.url()), None, None, None).status, 503);
    // Same port again: the connection manager reconnects by itself.
    let dir2 = dir.join("again");
    std::fs::create_dir_all(&dir2).unwrap();
    let _again = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            dir2.to_str().unwrap(),
            "--daemonize",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .map(ChildGuard)
        .unwrap();
    wait_for("the service to reach Redis again", Duration::from_secs(15), || {
        (call("GET", &format!("{}/readyz", svc.url()), None, None, None).status == 200).then_some(())
    });
}

struct ChildGuard(std::process::Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With `--min-replicas-ack 1`, a primary killed while revocations stream in loses none that were
/// answered 200. Measured: how long until the promoted replica serves status reads, and until
/// the shard accepts acknowledged writes again once the old primary is back as its replica.
#[test]
fn acknowledged_revocations_survive_a_primary_failover() {
    let dir = scratch_dir("revocation", "failover");
    let mut cluster = RedisCluster::start(&dir);
    let svc = Service::start(
        &bin(),
        &dir,
        &args(&cluster.urls(), true, &["--min-replicas-ack", "1", "--wait-timeout-ms", "100"]),
    )
    .expect("service");
    let jti_key = |jti: &str| redis_key("jti", jti);
    let victim = cluster.primary_for(&jti_key("f-0"));
    let victim_slot = key_slot(&jti_key("f-0"));
    let victim_ranges = cluster.original_slots[victim].clone();
    let on_victim = |jti: &str| victim_ranges.iter().any(|(a, b)| (*a..=*b).contains(&key_slot(&jti_key(jti))));
    let exp = now() + 600;
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    let (mut killed_at, mut reads_back, mut writes_back) = (None::<Instant>, None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    while Instant::now() < deadline && !(writes_back.is_some() && acknowledged.len() > 300) {
        let jti = format!("f-{i}");
        i += 1;
        let r = post_json(&svc, "/v1/revoke", Some(WRITE), &json!({"jti": jti, "exp": exp}));
        match r.status {
            200 => acknowledged.push(jti.clone()),
            503 => refused += 1,
            other => panic!("{other}: {}", r.body),
        }
        let Some(t) = killed_at else {
            if i == 100 {
                cluster.nodes[victim].kill();
                killed_at = Some(Instant::now());
            }
            continue;
        };
        if reads_back.is_none() {
            let probe = call("GET", &format!("{}/v1/status?jti=f-0", svc.url()), Some(STATUS), None, None);
            if probe.status == 200 {
                assert_eq!(probe.json()["reason"], "revoked");
                reads_back = Some(t.elapsed());
                // The old primary comes back (as a restarted pod would) and joins as a replica.
                cluster.nodes[victim].restart();
            }
        } else if writes_back.is_none() && r.status == 200 && on_victim(&jti) {
            writes_back = Some(t.elapsed());
        }
    }
    let reads_back = reads_back.expect("the failed shard never served reads again");
    let writes_back = writes_back.expect("the failed shard never acknowledged a write again");
    eprintln!(
        "failover: {} acknowledged, {refused} answered 503; slot {victim_slot} readable after {reads_back:?}, \
         acknowledged writes again after {writes_back:?} (old primary restarted as replica)",
        acknowledged.len()
    );
    assert!(reads_back < Duration::from_secs(10), "promotion took {reads_back:?}");
    cluster.wait_healthy(Duration::from_secs(30));
    for jti in &acknowledged {
        assert_eq!(status(&svc, &format!("jti={jti}"))["reason"], "revoked", "{jti} was acknowledged and lost");
    }
}

/// `P:cut:{SUB}:ISS` with raw parts meant both "X}:evil, every issuer" and "X, issuer evil}:":
/// logging the first out logged the second out too.
#[test]
fn a_subject_holding_key_syntax_reaches_no_other_subject() {
    let dir = scratch_dir("revocation", "keysyntax");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    let t = now();
    let r = post_json(&svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": "X}:evil", "issued_before": t}));
    assert_eq!(r.status, 200, "{}", r.body);
    let asked = |claims: Value| filter_status(&svc, claims, Mode::Denylist);
    assert_eq!(asked(json!({"sub": "X}:evil", "iat": t - 5}))["reason"], "subject_revoked");
    assert_eq!(asked(json!({"sub": "X", "iss": "evil}:", "iat": t - 5}))["active"], true, "another subject's cutoff");
    assert_eq!(redis.cli(&["EXISTS", &redis_key("cut", "X}:evil")]), "1", "the documented key name");
    let r =
        post_json(&svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": "X", "iss": "evil}:", "issued_before": t}));
    assert_eq!(r.status, 200, "{}", r.body);
    let cutoffs = redis.cli(&["KEYS", "jwtguard:cut:*"]);
    assert_eq!(cutoffs.lines().count(), 2, "two subjects, two cutoffs: {cutoffs}");
}

/// Whatever the filter accepts can be revoked by token (RFC 7009 form and the CLI) and is then
/// refused: fractional NumericDates (RFC 7519 §2 allows them), identifiers with spaces, unicode
/// and key syntax. The status request is the one the filter builds from the same claims.
#[test]
fn a_token_the_filter_accepts_is_revocable_by_token() {
    let dir = scratch_dir("revocation", "accepted");
    let redis = RedisServer::start(&dir, &[]);
    let signer = KeyPair::load_or_generate(&dir, Algorithm::ES256, "accepted");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [signer.jwk()]}).to_string()).unwrap();
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &["--jwks-file", jwks.to_str().unwrap()]))
        .expect("service");
    let t = now();
    let accepted = |claims: &Value| {
        let policy = ClaimPolicy { require_expiration: true, clock_skew_seconds: 60, ..Default::default() };
        let verdict = jwtguard::claims::check(claims.as_object().unwrap(), Some("JWT"), &policy, t);
        assert!(verdict.is_ok(), "the filter refuses {claims}: {verdict:?}");
    };
    let exp = (t + 300) as f64 + 0.5;
    for jti in ["frac-form", "with space", "ünï}:{code"] {
        let claims = json!({"jti": jti, "sub": "fiona", "iat": t as f64 - 10.25, "exp": exp});
        accepted(&claims);
        let form = format!("token={}&token_type_hint=access_token", signer.sign(&claims));
        let url = format!("{}/v1/revoke", svc.url());
        let r = call("POST", &url, Some(WRITE), Some("application/x-www-form-urlencoded"), Some(&form));
        assert_eq!((r.status, r.json()["stored"].clone()), (200, json!(true)), "{jti}: {}", r.body);
        assert_eq!(filter_status(&svc, claims, Mode::Denylist)["reason"], "revoked", "{jti}");
    }

    let claims = json!({"jti": "frac-cli", "exp": exp});
    accepted(&claims);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(bin())
            .args(args)
            .env("JWTGUARD_REVOCATION_URL", svc.url())
            .env("JWTGUARD_REVOCATION_CREDENTIAL", WRITE)
            .env("JWTGUARD_STATUS_CREDENTIAL", STATUS)
            .output()
            .expect("run the CLI");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, out) = cli(&["revoke", "--token", &signer.sign(&claims)]);
    assert!(ok && out.contains(r#""stored":true"#), "{out}");
    let (ok, out) = cli(&["status", "--jti", "frac-cli"]);
    assert!(ok && out.contains(r#""reason":"revoked""#), "{out}");

    // A cutoff against fractional iat: compared as the filter reads it (whole seconds).
    let r = post_json(&svc, "/v1/revoke-subject", Some(WRITE), &json!({"sub": "gina", "issued_before": t}));
    assert_eq!(r.json()["issued_before"], t, "{}", r.body);
    let before = json!({"jti": "g-1", "sub": "gina", "iat": t as f64 - 0.75, "exp": exp});
    let after = json!({"jti": "g-2", "sub": "gina", "iat": t as f64 + 0.5, "exp": exp});
    accepted(&before);
    accepted(&after);
    assert_eq!(filter_status(&svc, before, Mode::Denylist)["reason"], "subject_revoked");
    assert_eq!(filter_status(&svc, after, Mode::Denylist)["active"], true, "issued in the cutoff's second");
}

/// `--jwks-file` obeys the rules the filter's configured key sets obey (`keys::check_set`): no
/// `kid` twice, no HMAC secret beside public keys; and, as for the filter's `local_jwks`, a key
/// it cannot use or a set with no key stops the start instead of being skipped.
#[test]
fn a_jwks_file_breaking_the_key_set_rules_stops_the_start() {
    let dir = scratch_dir("revocation", "badjwks");
    let redis = RedisServer::start(&dir, &[]);
    let signer = KeyPair::load_or_generate(&dir, Algorithm::ES256, "jwks-a");
    let other = KeyPair::load_or_generate(&dir, Algorithm::ES256, "jwks-b");
    let mut same_kid = other.jwk();
    same_kid["kid"] = json!(signer.kid);
    let secret = json!({"kty": "oct", "kid": "hmac", "k": URL_SAFE_NO_PAD.encode([7u8; 32])});
    let off_curve = json!({"kty": "EC", "crv": "P-256", "kid": "bad", "x": "AAAA", "y": "AAAA"});
    let cases = [
        ("duplicate-kid", json!({"keys": [signer.jwk(), same_kid]}), "duplicate kid"),
        ("same-key-twice", json!({"keys": [signer.jwk(), signer.jwk()]}), "duplicate kid"),
        ("secret-beside-public", json!({"keys": [signer.jwk(), secret]}), "cannot mix"),
        ("malformed-key", json!({"keys": [signer.jwk(), off_curve]}), "JWK bad"),
        ("unknown-kty", json!({"keys": [signer.jwk(), {"kty": "XYZ"}]}), "unsupported kty"),
        ("no-key", json!({"keys": []}), "no key"),
    ];
    for (name, jwks, reason) in cases {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, jwks.to_string()).unwrap();
        let started =
            Service::start(&bin(), &dir, &args(&[redis.url()], false, &["--jwks-file", path.to_str().unwrap()]));
        let err = started.err().unwrap_or_else(|| panic!("{name}: the service started with {jwks}"));
        assert!(err.contains("--jwks-file") && err.contains(reason), "{name}: {err}");
    }
    // Secrets alone are a valid set, as they are for a filter provider.
    let path = dir.join("secrets.json");
    let secrets = json!({"keys": [{"kty": "oct", "kid": "h1", "k": URL_SAFE_NO_PAD.encode([1u8; 32])},
                                  {"kty": "oct", "kid": "h2", "k": URL_SAFE_NO_PAD.encode([2u8; 32])}]});
    std::fs::write(&path, secrets.to_string()).unwrap();
    Service::start(&bin(), &dir, &args(&[redis.url()], false, &["--jwks-file", path.to_str().unwrap()]))
        .expect("a set of secrets alone");
}

/// The server refuses every input `openapi.json` forbids, on every endpoint, with the documented
/// 400 `invalid_request`, and none of them leaves anything in Redis (schemathesis generates
/// more in tests/openapi.rs; these are the ones that were accepted before).
#[test]
fn every_input_the_document_forbids_is_refused_and_stores_nothing() {
    let dir = scratch_dir("revocation", "forbidden");
    let redis = RedisServer::start(&dir, &[]);
    let svc = Service::start(&bin(), &dir, &args(&[redis.url()], false, &[])).expect("service");
    let exp = now() + 600;
    let form = "application/x-www-form-urlencoded";
    let jsn = "application/json";
    let revoke: Vec<(String, &str)> = vec![
        // RFC 7009 form: `token` required, `token_type_hint` the only other member.
        (format!("jti=x&exp={exp}"), form),
        (format!("token=t&jti=x&exp={exp}"), form),
        ("token=t&extra=1".into(), form),
        ("token_type_hint=access_token".into(), form),
        (String::new(), form),
        ("token=a&token=b".into(), form),
        ("token=%FF".into(), form),
        ("token=%zz".into(), form),
        // JSON: a raw token alone, or jti and exp (+ iss, sub) alone.
        (format!(r#"{{"token": "t", "exp": {exp}}}"#), jsn),
        (r#"{"token": "t", "jti": "x"}"#.into(), jsn),
        (r#"{"token": "t", "jti": null}"#.into(), jsn),
        (r#"{"token": null}"#.into(), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}, "token_type_hint": "access_token"}}"#), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}, "token": null}}"#), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}, "unknown": 1}}"#), jsn),
        (format!(r#"{{"jti": null, "exp": {exp}}}"#), jsn),
        (format!(r#"{{"jti": "x", "jti": "y", "exp": {exp}}}"#), jsn),
        (format!(r#"{{"jti": "", "exp": {exp}}}"#), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}, "sub": ""}}"#), jsn),
        (r#"{"jti": "x", "exp": -1}"#.into(), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}.5}}"#), jsn),
        (r#"{"jti": "x", "exp": 18446744073709551616}"#.into(), jsn),
        (r#"{"jti": "x", "exp": "1"}"#.into(), jsn),
        ("[]".into(), jsn),
        // Exactly one JSON object: never an array (serde would read a struct from one), a
        // scalar, or an object naming a member twice.
        (format!(r#"["x", {exp}]"#), jsn),
        (format!(r#"[{{"jti": "x", "exp": {exp}}}]"#), jsn),
        (r#"["t"]"#.into(), jsn),
        (r#"{"token": "a", "token": "b"}"#.into(), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}, "exp": {exp}}}"#), jsn),
        (r#""t""#.into(), jsn),
        ("1".into(), jsn),
        ("null".into(), jsn),
        ("true".into(), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}}} {{}}"#), jsn),
        (format!(r#"{{"jti": "x", "exp": {exp}}}"#), "application/jsonp"),
        (format!(r#"{{"jti": "x", "exp": {exp}}}"#), "text/plain"),
    ];
    let subject = [
        r#"{"sub": "a", "unknown": 1}"#.to_string(),
        r#"{"sub": "a", "issued_before": -1}"#.to_string(),
        r#"{"sub": "a", "issued_before": "1"}"#.to_string(),
        r#"{"sub": "a", "iss": ""}"#.to_string(),
        r#"{"sub": null}"#.to_string(),
        r#"{}"#.to_string(),
        // Exactly one JSON object, as for /v1/revoke.
        r#"["alice"]"#.to_string(),
        format!(r#"["alice", "https://issuer", {exp}]"#),
        r#"[{"sub": "alice"}]"#.to_string(),
        "[]".to_string(),
        r#"{"sub": "alice", "sub": "bob"}"#.to_string(),
        r#"{"sub": "alice", "iss": "i", "iss": "j"}"#.to_string(),
        r#""alice""#.to_string(),
        "7".to_string(),
        "null".to_string(),
        "false".to_string(),
        r#"{"sub": "alice"} []"#.to_string(),
    ];
    let sessions = [
        format!(r#"{{"jti": "s", "sub": "a", "exp": {exp}, "unknown": 1}}"#),
        r#"{"jti": "s", "sub": "a"}"#.to_string(),
        r#"{"jti": "s", "sub": "a", "exp": null}"#.to_string(),
        format!(r#"{{"jti": "s", "sub": "a\u0007", "exp": {exp}}}"#),
        // Exactly one JSON object, as for /v1/revoke.
        format!(r#"["j1", "bob", {exp}]"#),
        format!(r#"[{{"jti": "j1", "sub": "bob", "exp": {exp}}}]"#),
        "[]".to_string(),
        format!(r#"{{"jti": "j1", "jti": "j2", "sub": "bob", "exp": {exp}}}"#),
        format!(r#"{{"jti": "j1", "sub": "bob", "exp": {exp}, "exp": {exp}}}"#),
        r#""j1""#.to_string(),
        exp.to_string(),
        "null".to_string(),
        "true".to_string(),
    ];
    let mut requests: Vec<(String, String, Option<String>, &str)> = Vec::new();
    for (body, ct) in &revoke {
        requests.push(("POST".into(), "/v1/revoke".into(), Some(body.clone()), ct));
    }
    for body in subject {
        requests.push(("POST".into(), "/v1/revoke-subject".into(), Some(body), jsn));
    }
    for body in sessions {
        requests.push(("POST".into(), "/v1/sessions".into(), Some(body), jsn));
    }
    requests.push((
        "POST".into(),
        "/v1/sessions".into(),
        Some(format!(r#"{{"jti":"s","sub":"a","exp":{exp}}}"#)),
        form,
    ));
    requests.push(("DELETE".into(), "/v1/sessions/a%01b".into(), None, jsn));
    for q in [
        "jti=a&unknown=1",
        "jti=a&jti=b",
        "iat=%2B5&sub=a",
        "iat=-1&sub=a",
        "iat=1.5&sub=a",
        "mode=",
        "sub=%FF",
        "jti=%",
    ] {
        requests.push(("GET".into(), format!("/v1/status?{q}"), None, jsn));
    }
    for (method, path, body, ct) in &requests {
        let credential = if method == "GET" { STATUS } else { WRITE };
        let r = call(method, &format!("{}{path}", svc.url()), Some(credential), Some(ct), body.as_deref());
        assert_eq!(r.status, 400, "{method} {path} {ct} {body:?}: {}", r.body);
        assert_eq!(r.json()["error"], "invalid_request", "{path} {body:?}");
    }
    assert_eq!(redis.cli(&["DBSIZE"]), "0", "a refused request stored something: {:?}", redis.cli(&["KEYS", "*"]));
}

/// Times 20 status reads while writes keep waiting for a replica that does not answer (SIGSTOP):
/// WAIT blocks the connection it is sent on, so a read sharing that connection would wait with
/// it. Every read must be answered, quickly.
fn reads_do_not_wait_behind_writes(
    svc: &Service,
    primary: &RedisServer,
    replica: &RedisServer,
    write: &str,
    write_body: &(dyn Fn(usize) -> Value + Sync),
    read: &str,
) {
    let r = post_json(svc, write, Some(WRITE), &write_body(0));
    assert_eq!(r.status, 200, "acknowledged while the replica answers: {}", r.body);
    replica.pause();
    let stop = AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (writes, reads) = std::thread::scope(|scope| {
        // Stops the writers however this scope ends, so a failed wait cannot leave them looping.
        let _stop = StopOnDrop(&stop);
        let writers: Vec<_> = (0..3)
            .map(|w| {
                let stop = &stop;
                scope.spawn(move || {
                    let mut statuses = Vec::new();
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        statuses.push(post_json(svc, write, Some(WRITE), &write_body(w * 1000 + statuses.len() + 1)));
                    }
                    statuses
                })
            })
            .collect();
        // WAIT is under way once the primary counts a blocked client.
        wait_for("a write waiting for its replica", Duration::from_secs(10), || {
            let info = primary.cli(&["INFO", "clients"]);
            info.lines().any(|l| l.strip_prefix("blocked_clients:").is_some_and(|n| n != "0")).then_some(())
        });
        let reads: Vec<(Duration, Reply)> = (0..20)
            .map(|_| {
                let started = Instant::now();
                let r = call("GET", &format!("{}{read}", svc.url()), Some(STATUS), None, None);
                (started.elapsed(), r)
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        let writes: Vec<Reply> = writers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect();
        (writes, reads)
    });
    replica.resume();
    for w in &writes {
        assert_eq!(w.status, 503, "not durable without the replica: {}", w.body);
    }
    let max = reads.iter().map(|(took, _)| *took).max().unwrap_or_default();
    eprintln!("status reads while {} writes waited for a stopped replica: max {max:?}", writes.len());
    for (took, r) in &reads {
        assert_eq!(r.status, 200, "a read failed after {took:?} while writes waited: {}", r.body);
    }
    assert!(max < Duration::from_millis(250), "a status read took {max:?}");
}

struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn waiting_args() -> [&'static str; 6] {
    ["--min-replicas-ack", "1", "--wait-timeout-ms", "2000", "--request-timeout-ms", "5000"]
}

#[test]
fn status_reads_never_wait_behind_a_durability_wait() {
    let dir = scratch_dir("revocation", "waitreads");
    let primary = RedisServer::start(&dir, &[]);
    let replica = RedisServer::start_replica(&dir, &primary);
    let svc = Service::start(&bin(), &dir, &args(&[primary.url()], false, &waiting_args())).expect("service");
    let exp = now() + 600;
    let body = |i: usize| json!({"jti": format!("w-{i}"), "exp": exp});
    reads_do_not_wait_behind_writes(&svc, &primary, &replica, "/v1/revoke", &body, "/v1/status?jti=w-0&sub=someone");
}

/// The same in a cluster: the writes and the reads go to one shard (one subject's keys), whose
/// replica is stopped.
#[test]
fn status_reads_never_wait_behind_a_durability_wait_in_a_cluster() {
    let dir = scratch_dir("revocation", "waitreadscluster");
    let cluster = RedisCluster::start(&dir);
    let svc = Service::start(&bin(), &dir, &args(&cluster.urls(), true, &waiting_args())).expect("service");
    let primary = cluster.primary_for(&redis_key("cut", "walter"));
    let replica = cluster.replica_of(primary);
    // One issuer per write: a cutoff that does not move writes nothing, and WAIT returns at once.
    let body = |i: usize| json!({"sub": "walter", "iss": format!("i-{i}")});
    let read = format!("/v1/status?sub=walter&iss=i-0&iat={}", now() + 5);
    reads_do_not_wait_behind_writes(
        &svc,
        &cluster.nodes[primary],
        &cluster.nodes[replica],
        "/v1/revoke-subject",
        &body,
        &read,
    );
}
