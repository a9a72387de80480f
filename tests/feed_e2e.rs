//! End-to-end revocation with the feed (the default source): every Envoy worker holds the live
//! set, kept current by a long-poll to the real service over real Redis. Propagation to every
//! worker of two Envoys, the wait for the first set, Redis stopped under load, the set's bound,
//! allowlist sessions, and a Redis Cluster failover.

mod support;

use jsonwebtoken::Algorithm;
use jwtguard_demo::redis::RedisCluster;
use jwtguard_demo::service::{self, Service};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use support::envoy::{bootstrap, jwtguard_filter, stat, static_cluster, Build, Envoy, Listener, ListenerFile};
use support::revocation::{
    assert_revoked, envoy, envoy_with_workers, get, plugin, post, service_args, token, world, WRITE,
};
use support::tokens::{now, KeyPair};
use support::{scratch_dir, wait_for};

const EVENTS: &str = "revocation.feed.events";

/// POSTs `body` to the service's `path` with the write credential; the status code.
fn write(service: &Service, path: &str, body: Value) -> u16 {
    let r = ureq::post(&format!("{}{path}", service.url()))
        .set("authorization", &format!("Bearer {WRITE}"))
        .set("content-type", "application/json")
        .send_string(&body.to_string());
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(_) => 0,
    }
}

/// Waits until `envoy`'s listener answers `token` with something other than the 503 of a set
/// still coming (the first set is in).
fn first_set(envoy: &Envoy, listener: &str, token: &str) {
    wait_for("the first revocation set", Duration::from_secs(10), || {
        (get(envoy, listener, token).status != 503).then_some(())
    });
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// From the service's acknowledgement to the event applied to every set of both Envoys (one per
/// wasm VM, the main thread's included; one per process in the module; each counts the events it
/// applies, at once), then refused there: p50 and p99 over 100
/// revocations by jti and 100 subject cutoffs. No status callout is made meanwhile.
#[test]
fn revocations_reach_every_worker_of_two_envoys_within_milliseconds() {
    const WORKERS: u64 = 2;
    let w = world("feed-propagation", &[]);
    let config = plugin(&w.key, json!({}), json!([]));
    let envoys = [
        envoy_with_workers(&w.dir, "a", &[("main", config.clone())], w.service.port, &w.echo, WORKERS as u32),
        envoy_with_workers(&w.dir, "b", &[("main", config)], w.service.port, &w.echo, WORKERS as u32),
    ];
    let probe = token(&w.key, "probe", "probe", now());
    for e in &envoys {
        first_set(e, "main", &probe);
        // Every worker has polled once (fresh connections spread over the workers).
        wait_for("every worker to hold the set", Duration::from_secs(10), || {
            (0..8).all(|_| get(e, "main", &probe).status == 200).then_some(())
        });
    }
    let mut by_kind = Vec::new();
    for kind in ["jti", "subject"] {
        let mut latencies = Vec::new();
        for i in 0..100 {
            let (sub, jti) = (format!("{kind}-user-{i}"), format!("{kind}-{i}"));
            let t = token(&w.key, &sub, &jti, now() - 5);
            let before: Vec<u64> = envoys.iter().map(|e| e.stat_now(&stat(EVENTS))).collect();
            let status = match kind {
                "jti" => write(&w.service, "/v1/revoke", json!({"jti": jti, "exp": now() + 600})),
                _ => write(&w.service, "/v1/revoke-subject", json!({"sub": sub})),
            };
            assert_eq!(status, 200);
            let acked = Instant::now();
            let applied = wait_for("every worker to apply the event", Duration::from_secs(5), || {
                let copies = Build::current().feed_copies(WORKERS as u32);
                let done = envoys.iter().zip(&before).all(|(e, b)| e.stat_now(&stat(EVENTS)) >= b + copies);
                done.then(|| acked.elapsed())
            });
            latencies.push(applied);
            for e in &envoys {
                for _ in 0..4 {
                    assert_revoked(&get(e, "main", &t));
                }
            }
        }
        latencies.sort();
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        eprintln!("{kind}: acknowledged → applied on all {} workers: p50 {p50:?}, p99 {p99:?}", 2 * WORKERS);
        assert!(p99 <= Duration::from_millis(1000), "{kind}: p99 {p99:?}");
        by_kind.push((kind, p50, p99));
    }
    for e in &envoys {
        for outcome in ["ok", "revoked", "unavailable", "timeout"] {
            assert_eq!(e.counter(&stat(&format!("revocation.check.{outcome}"))), 0, "a status callout");
        }
        assert_eq!(get(e, "main", &probe).status, 200);
    }
}

/// A stand-in feed: the first poll is answered after `first_delay` with an empty, complete set;
/// later polls are held a second and answered with the same (a heartbeat). `None`: never answers.
fn fake_feed(first_delay: Option<Duration>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut first = true;
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let Some(delay) = first_delay else {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    };
                    std::thread::sleep(if first { delay } else { Duration::from_secs(1) });
                    first = false;
                    let body = r#"{"position":"1-0","more":false,"events":[]}"#;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Before the first complete set a request waits (up to `wait_for_set_ms`) and is then decided
/// on the set; past the wait, the failure mode decides.
#[test]
fn requests_wait_for_the_first_set_then_the_failure_mode_decides() {
    let dir = scratch_dir("feed-first-set");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let echo = support::echo::Echo::start("127.0.0.1:0").unwrap();
    let t = token(&key, "erin", "e1", now());
    let slow = envoy(
        &dir,
        "slow",
        &[("main", plugin(&key, json!({"feed": {"wait_for_set_ms": 3000}}), json!([])))],
        fake_feed(Some(Duration::from_millis(600))),
        &echo,
    );
    let started = Instant::now();
    let r = get(&slow, "main", &t);
    let waited = started.elapsed();
    eprintln!("first request answered {} after {waited:?} (the first set came after ~600 ms)", r.status);
    assert_eq!(r.status, 200, "{r:?}");

    for (mode, expected) in [("closed", 503), ("open", 200)] {
        let never = envoy(
            &dir,
            &format!("never-{mode}"),
            &[("main", plugin(&key, json!({"failure_mode": mode, "feed": {"wait_for_set_ms": 300}}), json!([])))],
            fake_feed(None),
            &echo,
        );
        let started = Instant::now();
        let r = get(&never, "main", &t);
        let waited = started.elapsed();
        assert_eq!(r.status, expected, "{mode}: {r:?}");
        assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(3), "{mode}: {waited:?}");
        if mode == "open" {
            assert_eq!(r.echoed()["x-jwtguard-revocation"], "unchecked");
        }
    }
}

/// Redis stopped for 10 s under load: with `max_staleness_ms` 30 s nothing fails and the revoked
/// token stays refused; with 5 s the failure mode (closed: 503) takes over 5 s (± 1 s) after
/// Redis stopped, and the revoked token is still never accepted.
#[test]
fn redis_stopped_keeps_the_set_in_force_until_max_staleness() {
    let w = world("feed-redis-down", &[]);
    let listeners = [
        ("long", plugin(&w.key, json!({"failure_mode": "closed", "feed": {"max_staleness_ms": 30000}}), json!([]))),
        ("short", plugin(&w.key, json!({"failure_mode": "closed", "feed": {"max_staleness_ms": 5000}}), json!([]))),
    ];
    let e = envoy(&w.dir, "e", &listeners, w.service.port, &w.echo);
    let (good, bad) = (token(&w.key, "fred", "f-good", now()), token(&w.key, "gina", "g-bad", now()));
    for l in ["long", "short"] {
        first_set(&e, l, &good);
    }
    assert_eq!(write(&w.service, "/v1/revoke", json!({"jti": "g-bad", "exp": now() + 600})), 200);
    for l in ["long", "short"] {
        wait_for("the revocation", Duration::from_secs(5), || (get(&e, l, &bad).status == 401).then_some(()));
    }
    w.redis.pause();
    let paused = Instant::now();
    let mut short_failed_at = None;
    let mut requests = 0;
    while paused.elapsed() < Duration::from_secs(10) {
        assert_eq!(get(&e, "long", &good).status, 200, "long: failed {:?} after Redis stopped", paused.elapsed());
        assert_revoked(&get(&e, "long", &bad));
        let short = get(&e, "short", &good).status;
        match (short, short_failed_at) {
            (200, None) => {}
            (503, None) => short_failed_at = Some(paused.elapsed()),
            (503, Some(_)) => {}
            (other, at) => panic!("short: {other} after failing at {at:?}"),
        }
        assert_ne!(get(&e, "short", &bad).status, 200, "a revoked token accepted");
        requests += 4;
    }
    w.redis.resume();
    let failed_at = short_failed_at.expect("the short listener never fell to its failure mode");
    eprintln!("{requests} requests in 10 s with Redis stopped; max_staleness 5 s fell to closed after {failed_at:?}");
    assert!(failed_at >= Duration::from_secs(4) && failed_at <= Duration::from_secs(6), "{failed_at:?}");
    wait_for("the feed to come back", Duration::from_secs(10), || {
        (get(&e, "short", &good).status == 200).then_some(())
    });
}

/// Logout at the proxy refuses the token at once where it was made, and on another Envoy as
/// soon as the feed brings it.
#[test]
fn logout_at_the_proxy_reaches_another_envoy_through_the_feed() {
    let w = world("feed-logout", &[]);
    let config = plugin(&w.key, json!({}), json!([]));
    let a = envoy(&w.dir, "a", &[("main", config.clone())], w.service.port, &w.echo);
    let b = envoy(&w.dir, "b", &[("main", config)], w.service.port, &w.echo);
    let t = token(&w.key, "hugo", "h1", now() - 5);
    let later = token(&w.key, "hugo", "h2", now() - 5);
    first_set(&a, "main", &t);
    first_set(&b, "main", &t);
    assert_eq!(post(&a, "main", "/logout", &t).status, 204);
    let done = Instant::now();
    assert_revoked(&get(&a, "main", &t));
    let refused = wait_for("the other Envoy", Duration::from_secs(5), || {
        (get(&b, "main", &t).status == 401).then(|| done.elapsed())
    });
    eprintln!("logout at Envoy a refused at Envoy b after {refused:?}");
    assert_eq!(post(&b, "main", "/logout-all", &later).status, 204);
    wait_for("log out everywhere to reach a", Duration::from_secs(5), || {
        (get(&a, "main", &later).status == 401).then_some(())
    });
}

/// Allowlist mode: a token the set knows nothing about is looked up once; its session ending
/// reaches the filter through the feed, with no further callout.
#[test]
fn allowlist_sessions_are_looked_up_once_and_end_through_the_feed() {
    let w = world("feed-allowlist", &[]);
    let e = envoy(
        &w.dir,
        "e",
        &[("main", plugin(&w.key, json!({"mode": "allowlist"}), json!([])))],
        w.service.port,
        &w.echo,
    );
    let t = token(&w.key, "ivan", "i1", now());
    let unknown = token(&w.key, "ivan", "i-unregistered", now());
    assert_eq!(write(&w.service, "/v1/sessions", json!({"jti": "i1", "sub": "ivan", "exp": now() + 600})), 200);
    first_set(&e, "main", &t);
    for _ in 0..20 {
        assert_eq!(get(&e, "main", &t).status, 200);
    }
    assert_eq!(e.counter(&stat("revocation.check.ok")), 1, "one lookup for a registered session");
    assert_revoked(&get(&e, "main", &unknown));
    let ended = ureq::delete(&format!("{}/v1/sessions/i1", w.service.url()))
        .set("authorization", &format!("Bearer {WRITE}"))
        .call()
        .map(|r| r.status())
        .expect("end the session");
    assert_eq!(ended, 200);
    let at = Instant::now();
    let refused = wait_for("the ended session", Duration::from_secs(5), || {
        (get(&e, "main", &t).status == 401).then(|| at.elapsed())
    });
    eprintln!("ended session refused after {refused:?}");
    assert!(refused < Duration::from_millis(900), "waited for a cache, not the feed: {refused:?}");
}

/// At its bound the set says it is incomplete: what it holds is still refused, everything else
/// gets the failure mode, and the gauge shows it.
#[test]
fn at_max_entries_the_failure_mode_decides() {
    let w = world("feed-bound", &[]);
    let config = plugin(&w.key, json!({"failure_mode": "closed", "feed": {"max_entries": 2}}), json!([]));
    let e = envoy(&w.dir, "e", &[("main", config)], w.service.port, &w.echo);
    let good = token(&w.key, "judy", "j-good", now());
    first_set(&e, "main", &good);
    assert_eq!(get(&e, "main", &good).status, 200);
    // A token whose identity the service could not store could never be revoked: refused.
    let unrevocable = get(&e, "main", &token(&w.key, "judy", &"x".repeat(300), now()));
    assert_eq!(unrevocable.status, 401, "{unrevocable:?}");
    assert!(unrevocable.header("www-authenticate").unwrap_or("").contains("invalid_token"));
    let revoked: Vec<String> = (0..3).map(|i| token(&w.key, "judy", &format!("j{i}"), now())).collect();
    for i in 0..3 {
        assert_eq!(write(&w.service, "/v1/revoke", json!({"jti": format!("j{i}"), "exp": now() + 600})), 200);
    }
    let r = wait_for("the set to overflow", Duration::from_secs(5), || {
        let r = get(&e, "main", &good);
        (r.status == 503).then_some(r)
    });
    assert!(r.header("retry-after").is_some());
    for t in &revoked[..2] {
        assert_revoked(&get(&e, "main", t));
    }
    wait_for("the overflow gauge", Duration::from_secs(3), || {
        (e.stat_now(&stat("revocation.feed.overflowed")) == 1).then_some(())
    });
}

/// Redis Cluster: the primary holding the feed dies while revocations stream in; afterwards every
/// revocation the service acknowledged is refused by the Envoy.
#[test]
fn a_feed_primary_killed_mid_stream_loses_no_acknowledged_revocation() {
    let dir = scratch_dir("feed-failover");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let mut cluster = RedisCluster::start(&dir);
    cluster.wait_healthy(Duration::from_secs(20));
    let svc = Service::start(
        &service::binary(),
        &dir,
        &service_args(&cluster.urls(), true, &["--min-replicas-ack", "1", "--wait-timeout-ms", "500"]),
    )
    .expect("service");
    let echo = support::echo::Echo::start("127.0.0.1:0").unwrap();
    let e = envoy(&dir, "e", &[("main", plugin(&key, json!({}), json!([])))], svc.port, &echo);
    let tokens: Vec<String> = (0..60).map(|i| token(&key, &format!("u{i}"), &format!("fo-{i}"), now())).collect();
    first_set(&e, "main", &tokens[0]);
    let victim = cluster.primary_for(&feed_key());
    let mut acked = Vec::new();
    for i in 0..60 {
        if i == 20 {
            cluster.nodes[victim].kill();
        }
        if write(&svc, "/v1/revoke", json!({"jti": format!("fo-{i}"), "exp": now() + 600})) == 200 {
            acked.push(i);
        }
        std::thread::sleep(Duration::from_millis(50)); // a steady stream, not a burst
    }
    eprintln!("{} of 60 revocations acknowledged across the failover", acked.len());
    assert!(acked.len() >= 20, "too few acknowledged: {acked:?}");
    for &i in &acked {
        wait_for("an acknowledged revocation", Duration::from_secs(15), || {
            (get(&e, "main", &tokens[i]).status == 401).then_some(())
        });
    }
}

/// The service's Redis key of the feed stream (revocation/src/keys.rs).
fn feed_key() -> String {
    "jwtguard:{feed}".to_string()
}

/// An overflowed set recovers: once entries expire and there is room, the worker reads the feed
/// from the start again; meanwhile (and afterwards) the revocation it could not hold is never
/// accepted.
#[test]
fn an_overflowed_set_recovers_by_replaying_the_feed() {
    let w = world("feed-overflow-recovery", &["--clock-skew-seconds", "0"]);
    let mut config = plugin(&w.key, json!({"failure_mode": "closed", "feed": {"max_entries": 2}}), json!([]));
    config["providers"]["main"]["clock_skew_seconds"] = json!(0);
    let e = envoy(&w.dir, "e", &[("main", config)], w.service.port, &w.echo);
    let good = token(&w.key, "kim", "k-good", now());
    let kept_out = token(&w.key, "kim", "k-late", now());
    first_set(&e, "main", &good);
    for jti in ["k-short-1", "k-short-2"] {
        assert_eq!(write(&w.service, "/v1/revoke", json!({"jti": jti, "exp": now() + 3})), 200);
    }
    assert_eq!(write(&w.service, "/v1/revoke", json!({"jti": "k-late", "exp": now() + 600})), 200);
    wait_for("the set to overflow", Duration::from_secs(5), || (get(&e, "main", &good).status == 503).then_some(()));
    wait_for("the replay after the short revocations expired", Duration::from_secs(30), || {
        assert_ne!(get(&e, "main", &kept_out).status, 200, "a revocation the full set could not hold was accepted");
        (get(&e, "main", &good).status == 200).then_some(())
    });
    for _ in 0..5 {
        assert_revoked(&get(&e, "main", &kept_out));
    }
    assert_eq!(e.stat_now(&stat("revocation.feed.overflowed")), 0);
}

/// `failure_mode: stale` with the feed: once the service is gone, a token never seen active is
/// not let through as "stale" (allowlist), and the set is not trusted past `stale_ms`.
#[test]
fn stale_mode_never_vouches_for_what_the_set_never_knew() {
    let mut w = world("feed-stale", &[]);
    let stale = json!({"failure_mode": "stale", "stale_ms": 1000, "feed": {"max_staleness_ms": 1000}});
    let mut allowlist = stale.clone();
    allowlist["mode"] = json!("allowlist");
    let listeners = [("deny", plugin(&w.key, stale, json!([]))), ("allow", plugin(&w.key, allowlist, json!([])))];
    let e = envoy(&w.dir, "e", &listeners, w.service.port, &w.echo);
    let t = token(&w.key, "lee", "l1", now());
    first_set(&e, "deny", &t);
    assert_eq!(get(&e, "deny", &t).status, 200);
    assert_revoked(&get(&e, "allow", &t)); // never registered
    w.service.stop();
    let stopped = Instant::now();
    let mut deny_503_at = None;
    while stopped.elapsed() < Duration::from_secs(4) {
        assert_ne!(get(&e, "allow", &t).status, 200, "an unregistered token passed as stale");
        let status = get(&e, "deny", &t).status;
        if status == 503 && deny_503_at.is_none() {
            deny_503_at = Some(stopped.elapsed());
        }
        assert!(deny_503_at.is_none() || status == 503, "stale answers came back");
    }
    let at = deny_503_at.expect("the set was trusted for ever");
    eprintln!("denylist, stale: the set was used as the last answer until {at:?} after the service stopped");
    assert!(at <= Duration::from_millis(3500), "{at:?}: past max_staleness_ms + stale_ms");
}

/// A listener update that leaves jwtguard's configuration as it was (a control plane pushes one
/// whenever anything else in the listener changes) keeps the revocation set: no replay of the
/// feed and no wait for it, the set stays in force, and the new configuration keeps polling once
/// the old one, whose long-poll was in flight, is gone.
#[test]
fn a_listener_update_keeps_the_revocation_set() {
    let w = world("feed-listener-update", &[]);
    let config = plugin(&w.key, json!({}), json!([]));
    let bootstrap_with = |version: &str| {
        let filter = jwtguard_filter("main", &config);
        let listeners = [Listener::to_cluster("main", vec![filter], "upstream")];
        let clusters = [static_cluster("upstream", w.echo.port), static_cluster("revocation", w.service.port)];
        let mut b = bootstrap(&listeners, &clusters);
        let hcm = &mut b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        hcm["route_config"]["response_headers_to_add"] = json!([{"header": {"key": "x-version", "value": version}}]);
        b
    };
    let mut bootstrap_v1 = bootstrap_with("1");
    let listeners = ListenerFile::serve(&w.dir, &mut bootstrap_v1);
    let e = Envoy::try_start_with(&w.dir, &bootstrap_v1, 2).unwrap_or_else(|log| panic!("envoy did not start:\n{log}"));
    let (probe, revoked) = (token(&w.key, "pia", "p1", now() - 5), token(&w.key, "rex", "r1", now() - 5));
    first_set(&e, "main", &probe);
    wait_for("every worker to hold the set", Duration::from_secs(10), || {
        (0..8).all(|_| get(&e, "main", &probe).status == 200).then_some(())
    });
    assert_eq!(write(&w.service, "/v1/revoke", json!({"jti": "r1", "exp": now() + 600})), 200);
    wait_for("the revocation", Duration::from_secs(5), || (get(&e, "main", &revoked).status == 401).then_some(()));
    let completions = || e.log_text().matches("revocation set complete").count();
    let (complete, events) = (completions(), e.counter(&stat(EVENTS)));

    listeners.publish(&bootstrap_with("2"));
    e.await_listener_update(1, || {});
    if Build::current() == Build::Module {
        wait_for("the old configuration to be destroyed", Duration::from_secs(10), || {
            e.log_text()
                .lines()
                .any(|l| l.contains("jwtguard: configuration ") && l.ends_with(" destroyed"))
                .then_some(())
        });
    }
    let reply = get(&e, "main", &probe);
    assert_eq!((reply.status, reply.header("x-version")), (200, Some("2")), "the new chain, with no wait");
    assert_revoked(&get(&e, "main", &revoked));
    assert_eq!(completions(), complete, "no set was read from the start again");
    assert_eq!(e.counter(&stat(EVENTS)), events, "no event was applied again");

    // The feed goes on through the new configuration.
    let later = token(&w.key, "lou", "l1", now() - 5);
    assert_eq!(write(&w.service, "/v1/revoke", json!({"jti": "l1", "exp": now() + 600})), 200);
    wait_for("a revocation after the update", Duration::from_secs(5), || {
        (get(&e, "main", &later).status == 401).then_some(())
    });
}
