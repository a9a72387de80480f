//! End-to-end revocation with `source: status` (a callout per token, cached): the filter in
//! real Envoys, the real service, real Redis (standalone and a 6-node cluster), and stand-in
//! services for failures the real one cannot produce. The feed source: tests/feed_e2e.rs.

mod support;

use jsonwebtoken::Algorithm;
use jwtguard_demo::redis::RedisCluster;
use jwtguard_demo::service::{self, Service};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::echo::Echo;
use support::envoy::stat;
use support::revocation::{self, assert_revoked, envoy, get, post, service_args, token, world, TTL_MS, WRITE};
use support::tokens::{now, KeyPair};
use support::{http, scratch_dir, wait_for};

/// The status source, which these tests are about, over `support::revocation::plugin`.
fn plugin(key: &KeyPair, revocation: Value, extra_rules: Value) -> Value {
    let mut config = revocation::plugin(key, revocation, extra_rules);
    config["revocation"]["source"] = json!("status");
    config
}

#[test]
fn logout_at_the_proxy_is_refused_here_at_once_and_on_another_envoy_within_the_bound() {
    let w = world("logout", &[]);
    let config = plugin(&w.key, json!({}), json!([]));
    let a = envoy(&w.dir, "a", &[("main", config.clone())], w.service.port, &w.echo);
    let b = envoy(&w.dir, "b", &[("main", config)], w.service.port, &w.echo);
    let t = token(&w.key, "alice", "jti-logout", now());
    assert_eq!(get(&a, "main", &t).status, 200);
    let ok = get(&b, "main", &t);
    assert_eq!((ok.status, ok.echoed()["x-jwt-sub"].clone()), (200, json!("alice")));
    assert_eq!(get(&b, "main", &t).status, 200);
    assert!(b.counter(&stat("revocation.check.ok")) >= 1);
    assert!(b.counter(&stat("revocation.cache_hit")) >= 1, "second request answered from the cache");

    assert_eq!(http("POST", &a.url("main", "/logout"), &[]).status, 401, "logout needs a token");
    let logout = post(&a, "main", "/logout", &t);
    assert_eq!(logout.status, 204, "{logout:?}");
    let logged_out_at = Instant::now();
    assert_revoked(&get(&a, "main", &t));
    let refused_after = wait_for("the second Envoy to refuse the token", Duration::from_secs(5), || {
        (get(&b, "main", &t).status == 401).then(|| logged_out_at.elapsed())
    });
    eprintln!("second Envoy refused the revoked token after {refused_after:?} (cache_ttl_ms {TTL_MS})");
    assert!(refused_after <= Duration::from_millis(TTL_MS + 500), "took {refused_after:?}");
    assert_revoked(&get(&b, "main", &t));
    assert_eq!(a.counter(&stat("logout.ok")), 1);
    assert!(a.counter(&stat("denied.revoked")) >= 1);
}

#[test]
fn log_out_everywhere_refuses_older_tokens_and_accepts_newer_ones() {
    let w = world("logout-all", &[]);
    let e = envoy(&w.dir, "e", &[("main", plugin(&w.key, json!({}), json!([])))], w.service.port, &w.echo);
    let t0 = now();
    let (first, second) = (token(&w.key, "bob", "b1", t0 - 20), token(&w.key, "bob", "b2", t0 - 10));
    let other_user = token(&w.key, "carol", "c1", t0 - 10);
    for t in [&first, &second, &other_user] {
        assert_eq!(get(&e, "main", t).status, 200);
    }
    let r = post(&e, "main", "/logout-all", &first);
    assert_eq!(r.status, 204, "{r:?}");
    let done = Instant::now();
    assert_revoked(&get(&e, "main", &first));
    wait_for("bob's other token to be refused", Duration::from_secs(5), || {
        (get(&e, "main", &second).status == 401).then_some(())
    });
    assert!(done.elapsed() <= Duration::from_millis(TTL_MS + 500));
    assert_eq!(get(&e, "main", &other_user).status, 200, "other subjects are untouched");
    // A login after the cutoff second is accepted.
    wait_for("the next second", Duration::from_secs(3), || (now() > t0 + 1).then_some(()));
    let fresh = token(&w.key, "bob", "b3", now());
    assert_eq!(get(&e, "main", &fresh).status, 200);
}

#[test]
fn allowlist_with_one_session_per_subject_ends_the_first_login() {
    let w = world("allowlist", &["--session-limit", "1"]);
    let e = envoy(
        &w.dir,
        "e",
        &[("main", plugin(&w.key, json!({"mode": "allowlist"}), json!([])))],
        w.service.port,
        &w.echo,
    );
    let register = |jti: &str| {
        let body = json!({"jti": jti, "sub": "dana", "exp": now() + 600}).to_string();
        ureq::post(&format!("{}/v1/sessions", w.service.url()))
            .set("authorization", &format!("Bearer {WRITE}"))
            .set("content-type", "application/json")
            .send_string(&body)
            .map(|r| serde_json::from_str::<Value>(&r.into_string().unwrap()).unwrap())
            .expect("register session")
    };
    let (first, second) = (token(&w.key, "dana", "d1", now()), token(&w.key, "dana", "d2", now()));
    assert_revoked(&get(&e, "main", &first)); // not registered: no session
    register("d1");
    wait_for("the first session to be accepted", Duration::from_secs(5), || {
        (get(&e, "main", &first).status == 200).then_some(())
    });
    assert_eq!(register("d2")["ended"], json!(["d1"]));
    let second_login = Instant::now();
    wait_for("the first session to end", Duration::from_secs(5), || {
        (get(&e, "main", &first).status == 401).then_some(())
    });
    assert!(second_login.elapsed() <= Duration::from_millis(TTL_MS + 500));
    assert_eq!(get(&e, "main", &second).status, 200);
}

/// A stand-in revocation service: answers every request with `response` after `delay`, and
/// counts requests. `None` holds the connection open without answering.
fn fake_service(response: Option<&'static str>, delay: Duration) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    match response {
                        Some(r) => {
                            if stream.write_all(r.as_bytes()).is_err() {
                                return;
                            }
                        }
                        None => std::thread::sleep(Duration::from_secs(30)),
                    }
                }
            });
        }
    });
    (port, count)
}

fn http_response(status: &str, body: &str) -> &'static str {
    Box::leak(
        format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len())
            .into_boxed_str(),
    )
}

#[test]
fn service_down_closed_open_and_stale_behave_as_configured_and_never_hang() {
    let mut w = world("failure", &[]);
    let rules = json!([
        {"match": {"prefix": "/health"}, "requires": {"provider_name": "main"}, "revocation": {"disabled": true}},
        {"match": {"prefix": "/admin"}, "requires": {"provider_name": "main"}, "revocation": {"failure_mode": "closed"}}
    ]);
    let short = |mode: &str| {
        plugin(&w.key, json!({"failure_mode": mode, "cache_ttl_ms": 200, "stale_ms": 30000}), rules.clone())
    };
    let e = envoy(
        &w.dir,
        "e",
        &[("closed", short("closed")), ("open", short("open")), ("stale", short("stale"))],
        w.service.port,
        &w.echo,
    );
    let t = token(&w.key, "erin", "e1", now());
    for l in ["closed", "open", "stale"] {
        assert_eq!(get(&e, l, &t).status, 200, "{l} with the service up");
    }
    w.service.stop();
    let started = Instant::now();
    let closed = wait_for("closed to refuse", Duration::from_secs(5), || {
        let r = get(&e, "closed", &t);
        (r.status == 503).then_some(r)
    });
    assert_eq!(closed.header("retry-after"), Some("1"), "{closed:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let open_before = e.counter(&stat("revocation.failure_mode.open"));
    let open = get(&e, "open", &t);
    assert_eq!(open.status, 200, "{open:?}");
    assert_eq!(open.echoed()["x-jwtguard-revocation"], "unchecked", "marked upstream");
    assert!(e.counter(&stat("revocation.failure_mode.open")) > open_before);
    assert_eq!(
        http("GET", &e.url("open", "/admin"), &[("authorization", &format!("Bearer {t}"))]).status,
        503,
        "rule override: closed"
    );
    let stale = get(&e, "stale", &t);
    assert_eq!(stale.status, 200, "the last answer is younger than stale_ms");
    assert_eq!(stale.echoed()["x-jwtguard-revocation"], "stale");
    let unseen = token(&w.key, "erin", "e2", now());
    assert_eq!(get(&e, "stale", &unseen).status, 503, "no answer to fall back on");
    assert_eq!(
        http("GET", &e.url("closed", "/health"), &[("authorization", &format!("Bearer {t}"))]).status,
        200,
        "revocation disabled"
    );
    // A spoofed mark never passes.
    let spoof = http(
        "GET",
        &e.url("closed", "/health"),
        &[("authorization", &format!("Bearer {t}")), ("x-jwtguard-revocation", "x")],
    );
    assert!(spoof.echoed().get("x-jwtguard-revocation").is_none());
    assert!(e.counter(&stat("revocation.check.unavailable")) >= 1);
}

#[test]
fn timeouts_garbage_and_errors_from_the_service_count_as_unavailable() {
    let dir = scratch_dir("bad-service");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let t = token(&key, "frank", "f1", now());
    let cases = [
        ("silent", fake_service(None, Duration::ZERO).0, "revocation.check.timeout"),
        (
            "garbage",
            fake_service(Some(http_response("200 OK", "<html>hi</html>")), Duration::ZERO).0,
            "revocation.check.unavailable",
        ),
        (
            "error",
            fake_service(Some(http_response("500 Internal Server Error", r#"{"active":true}"#)), Duration::ZERO).0,
            "revocation.check.unavailable",
        ),
    ];
    for (name, port, counter) in cases {
        let e = envoy(&dir, name, &[("main", plugin(&key, json!({}), json!([])))], port, &echo);
        let started = Instant::now();
        let r = get(&e, "main", &t);
        let took = started.elapsed();
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{name}: {r:?}");
        assert!(took < Duration::from_millis(200 + 400), "{name}: answered after {took:?} (timeout_ms 200)");
        assert_eq!(e.counter(&stat(counter)), 1, "{name}");
    }
}

/// A revocation cluster this Envoy does not have (a typo, or a cluster a control plane has not
/// pushed yet): every request is refused at once as unavailable, a logout too, and the log says
/// so at most once a second per worker, however many requests come.
#[test]
fn a_missing_revocation_cluster_refuses_at_once_and_logs_once_a_second() {
    let dir = scratch_dir("no-cluster");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let config = plugin(&key, json!({"cluster": "nowhere"}), json!([]));
    let e = envoy(&dir, "e", &[("main", config)], echo.port, &echo);
    let t = token(&key, "nora", "n1", now());
    let started = Instant::now();
    for _ in 0..40 {
        let r = get(&e, "main", &t);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")), "{r:?}");
    }
    assert_eq!(post(&e, "main", "/logout", &t).status, 503);
    let seconds = started.elapsed().as_secs();
    assert_eq!(e.counter(&stat("revocation.check.unavailable")), 40);
    assert_eq!(e.counter(&stat("logout.failed")), 1);
    let log = e.log_text();
    let lines = log.matches("cluster \"nowhere\" failed").count() as u64;
    assert!((1..=seconds + 1).contains(&lines), "{lines} log lines in {seconds} s:\n{log}");
}

#[test]
fn concurrent_requests_with_one_token_share_one_callout() {
    let dir = scratch_dir("coalesce");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let (port, calls) = fake_service(Some(http_response("200 OK", r#"{"active":true}"#)), Duration::from_millis(150));
    let e = envoy(&dir, "e", &[("main", plugin(&key, json!({"timeout_ms": 1000}), json!([])))], port, &echo);
    let t = token(&key, "gina", "g1", now());
    let url = e.url("main", "/api");
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let (url, t) = (url.clone(), t.clone());
            std::thread::spawn(move || http("GET", &url, &[("authorization", &format!("Bearer {t}"))]).status)
        })
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one callout for all");
    assert!(e.counter(&stat("revocation.coalesced")) >= 1);
}

/// A client that resets the request whose stream sent a status check must not turn the check of
/// the other requests with that token into the failure mode. The check's answer is lost with the
/// request (the module's Envoy cancels the callout; the wasm SDK drops the answer); the filter
/// then asks again for the requests still waiting. Before, they waited out the
/// timeout and `failure_mode: open` let the revoked token through, marked unchecked.
#[test]
fn resetting_the_request_that_sent_the_check_does_not_let_a_revoked_token_through() {
    let dir = scratch_dir("reset-sender");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    // The first answer comes 5 s after the check is read: time enough, on a loaded machine, for
    // the second request to join it and the first to go before it does.
    let (port, calls) = fake_service(Some(http_response("200 OK", r#"{"active":false}"#)), Duration::from_secs(5));
    let config = plugin(&key, json!({"failure_mode": "open", "timeout_ms": 10000}), json!([]));
    let e = envoy(&dir, "e", &[("main", config)], port, &echo);
    let t = token(&key, "ivan", "reset-1", now());
    let url = e.url("main", "/api");
    let address = url.trim_start_matches("http://").split('/').next().unwrap_or_default().to_string();
    let mut sender = std::net::TcpStream::connect(&address).unwrap();
    write!(sender, "GET /api HTTP/1.1\r\nhost: e\r\nauthorization: Bearer {t}\r\n\r\n").unwrap();
    wait_for("the check to be sent", Duration::from_secs(5), || (calls.load(Ordering::SeqCst) >= 1).then_some(()));
    let other = std::thread::spawn(move || http("GET", &url, &[("authorization", &format!("Bearer {t}"))]));
    wait_for("the second request to wait on that check", Duration::from_secs(4), || {
        (e.counter(&stat("revocation.coalesced")) >= 1).then_some(())
    });
    drop(sender); // the client goes, and the answer to its check with it
    let reply = other.join().unwrap();
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "asked again for the request still waiting");
}

#[test]
fn a_cluster_primary_killed_during_traffic_never_lets_a_revoked_token_through() {
    let dir = scratch_dir("cluster-kill");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let mut cluster = RedisCluster::start(&dir);
    // A replica's acknowledgement has taken over the default 200 ms on this 2-core machine under
    // the whole suite's load (a 503 for the first revocation); this test is about what follows
    // an acknowledged write, not its latency.
    let extra = ["--min-replicas-ack", "1", "--wait-timeout-ms", "2000"];
    let svc = Service::start(&service::binary(), &dir, &service_args(&cluster.urls(), true, &extra)).expect("service");
    let e = envoy(&dir, "e", &[("main", plugin(&key, json!({"cache_ttl_ms": 200}), json!([])))], svc.port, &echo);
    let revoked = token(&key, "hal", "h-revoked", now());
    let active = token(&key, "ivy", "i-active", now());
    assert_eq!(get(&e, "main", &active).status, 200);
    let r = ureq::post(&format!("{}/v1/revoke", svc.url()))
        .set("authorization", &format!("Bearer {WRITE}"))
        .set("content-type", "application/json")
        .send_string(&json!({"jti": "h-revoked", "exp": now() + 600}).to_string())
        .expect("revoke");
    assert_eq!(r.status(), 200);
    // The service's key for a jti: the identifier base64url-encoded in the hash tag.
    let victim = cluster.primary_for(&format!("jwtguard:jti:{{~{}}}", support::tokens::encode(b"h-revoked")));
    cluster.nodes[victim].kill();
    let killed = Instant::now();
    let mut recovered = None;
    let mut statuses = std::collections::BTreeMap::new();
    while killed.elapsed() < Duration::from_secs(20) {
        let r = get(&e, "main", &revoked);
        assert_ne!(r.status, 200, "a revoked token was accepted {:?} after the kill", killed.elapsed());
        *statuses.entry(r.status).or_insert(0) += 1;
        if r.status == 401 && get(&e, "main", &active).status == 200 {
            recovered = Some(killed.elapsed());
            break;
        }
    }
    let recovered = recovered.expect("the filter never recovered");
    eprintln!("primary killed: revoked token answers {statuses:?}; filter answering again after {recovered:?}");
    assert!(recovered < Duration::from_secs(10));
}

/// A request whose body is larger than Envoy's per-connection buffer (1 MiB), held while its
/// token's status is asked, reaches the upstream whole once the answer comes: the filter holds it
/// with flow control, not by buffering it (the module's first version got Envoy's 413 here).
#[test]
fn a_large_body_waits_for_the_revocation_answer_and_arrives_whole() {
    let dir = scratch_dir("large-body");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let (port, calls) = fake_service(Some(http_response("200 OK", r#"{"active":true}"#)), Duration::from_millis(300));
    let e = envoy(&dir, "e", &[("main", plugin(&key, json!({"timeout_ms": 2000}), json!([])))], port, &echo);
    let t = token(&key, "hana", "h1", now());
    let body = vec![b'x'; 3_000_000];
    let reply = ureq::post(&e.url("main", "/upload"))
        .set("authorization", &format!("Bearer {t}"))
        .send_bytes(&body)
        .map_err(|err| format!("{err}"))
        .and_then(|r| r.into_string().map_err(|err| format!("{err}")));
    let reply = reply.unwrap_or_else(|err| panic!("the upload failed: {err}"));
    let echoed: serde_json::Value = serde_json::from_str(&reply).unwrap_or_else(|_| panic!("not an echo: {reply}"));
    assert_eq!(echoed["headers"]["content-length"], "3000000", "{reply}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "it waited for the status answer");
}
