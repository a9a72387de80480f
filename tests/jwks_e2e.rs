//! Remote JWKS on a real Envoy against a JWKS server the tests control: rotation, an identity
//! provider down at start or after a good fetch, floods of unknown kids, hostile documents, and
//! OIDC discovery.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::echo::Echo;
use support::envoy::{bootstrap, jwtguard_filter, stat, static_cluster, Envoy, Listener};
use support::tokens::{now, KeyPair};
use support::{http, scratch_dir, wait_for, Reply};

const ISSUER: &str = "https://idp.test";

/// What the JWKS server does with the next request.
#[derive(Clone)]
enum Mode {
    Serve(String),
    /// Serve, but only after this long: a slow identity provider.
    ServeAfter(Duration, String),
    /// Close the connection without answering: to Envoy the identity provider is down.
    Down,
}

struct JwksServer {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    /// Requests for the JWKS itself (discovery documents are not counted).
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(mode: Mode) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, fetches) = (Arc::new(Mutex::new(mode)), Arc::new(AtomicUsize::new(0)));
        let (m, f) = (mode.clone(), fetches.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (m, f) = (m.clone(), f.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                                break;
                            }
                        }
                        let body = if path == "/.well-known/openid-configuration" {
                            json!({"issuer": ISSUER, "jwks_uri": "http://jwks.test/discovered/keys"}).to_string()
                        } else {
                            f.fetch_add(1, Ordering::SeqCst);
                            let mode = m.lock().unwrap().clone();
                            match mode {
                                Mode::Serve(b) => b,
                                Mode::ServeAfter(delay, b) => {
                                    std::thread::sleep(delay);
                                    b
                                }
                                Mode::Down => return,
                            }
                        };
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if out.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        JwksServer { port, mode, fetches }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

fn jwks(keys: &[&KeyPair]) -> Mode {
    Mode::Serve(json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string())
}

fn setup(name: &str, server: &JwksServer, remote: Value) -> (Envoy, Echo) {
    setup_providers(name, &[("idp", ISSUER, server, remote)])
}

/// One Envoy with a provider per entry (name, issuer, its JWKS server, its `remote_jwks`
/// settings over the defaults); `requires_any` of them all on every path.
fn setup_providers(name: &str, providers: &[(&str, &str, &JwksServer, Value)]) -> (Envoy, Echo) {
    let dir = scratch_dir(name);
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let mut config_providers = serde_json::Map::new();
    let mut clusters = vec![static_cluster("upstream", echo.port)];
    for (provider, issuer, server, remote) in providers {
        let cluster = format!("jwks-{provider}");
        let mut r = json!({"cluster": cluster, "uri": "http://jwks.test/keys", "failed_refetch_seconds": 1, "unknown_kid_min_interval_seconds": 1});
        if let (Some(r), Some(o)) = (r.as_object_mut(), remote.as_object()) {
            for (k, v) in o {
                r.insert(k.clone(), v.clone());
            }
        }
        config_providers.insert(
            provider.to_string(),
            json!({"issuer": issuer, "remote_jwks": r, "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}]}),
        );
        clusters.push(static_cluster(&cluster, server.port));
    }
    let any: Vec<Value> = providers.iter().map(|(p, ..)| json!({"provider_name": p})).collect();
    let config = json!({
        "providers": config_providers,
        "rules": [{"match": {"prefix": "/"}, "requires": {"requires_any": {"requirements": any}}}]
    });
    let listeners = [Listener::to_cluster("main", vec![jwtguard_filter("main", &config)], "upstream")];
    let envoy = Envoy::start(&dir, &bootstrap(&listeners, &clusters));
    (envoy, echo)
}

/// Waits until the first key set is in and `token` passes.
fn first_keys(envoy: &Envoy, token: &str) {
    wait_for("the first key set", Duration::from_secs(5), || (get(envoy, token).status == 200).then_some(()));
}

fn token(key: &KeyPair) -> String {
    key.sign(&json!({"iss": ISSUER, "sub": "alice", "exp": now() + 600}))
}

fn get(envoy: &Envoy, token: &str) -> Reply {
    http("GET", &envoy.url("main", "/api"), &[("authorization", &format!("Bearer {token}"))])
}

fn keys(dir: &str) -> (KeyPair, KeyPair) {
    let d = scratch_dir(dir);
    (KeyPair::generate(&d, Algorithm::RS256, "k1"), KeyPair::generate(&d, Algorithm::RS256, "k2"))
}

#[test]
fn a_rotated_key_is_accepted_without_restarting_envoy() {
    let (k1, k2) = keys("jwks-rotation-keys");
    let server = JwksServer::start(jwks(&[&k1]));
    let (e, _echo) = setup("jwks-rotation", &server, json!({}));
    first_keys(&e, &token(&k1));
    assert_eq!(get(&e, &token(&k1)).echoed()["x-jwt-sub"], "alice");
    server.set(jwks(&[&k1, &k2]));
    let rotated = get(&e, &token(&k2));
    assert_eq!(rotated.status, 200, "the new kid triggered a refetch and the request waited for it: {rotated:?}");
    assert_eq!(get(&e, &token(&k1)).status, 200, "the old key works while still published");
    assert!(e.counter(&stat("jwks.idp.unknown_kid_refetch")) >= 1);
    assert!(e.counter(&stat("jwks.idp.fetch_success")) >= 2);
}

#[test]
fn identity_provider_down_at_start_gives_503_then_success_never_401() {
    let (k1, _) = keys("jwks-down-start-keys");
    let server = JwksServer::start(Mode::Down);
    let (e, _echo) = setup("jwks-down-start", &server, json!({"wait_for_keys_ms": 300}));
    let t = token(&k1);
    let early = get(&e, &t);
    assert_eq!((early.status, early.header("retry-after")), (503, Some("1")), "{early:?}");
    server.set(jwks(&[&k1]));
    let up = Instant::now();
    let mut seen = Vec::new();
    wait_for("keys after the provider came back", Duration::from_secs(10), || {
        let r = get(&e, &t);
        seen.push(r.status);
        (r.status == 200).then_some(())
    });
    assert!(seen.iter().all(|s| *s == 503 || *s == 200), "no 401 storm: {seen:?}");
    eprintln!("provider back: tokens accepted after {:?} (backoff from failed_refetch_seconds 1)", up.elapsed());
    assert!(e.counter(&stat("jwks.idp.fetch_failed")) >= 1);
}

#[test]
fn a_request_arriving_before_the_first_keys_waits_for_them() {
    let (k1, _) = keys("jwks-wait-keys");
    let server = JwksServer::start(Mode::Down);
    let (e, _echo) = setup("jwks-wait", &server, json!({"wait_for_keys_ms": 5000}));
    let t = token(&k1);
    let url = e.url("main", "/api");
    let waiting = std::thread::spawn(move || http("GET", &url, &[("authorization", &format!("Bearer {t}"))]));
    wait_for("the request to be parked", Duration::from_secs(5), || {
        (e.counter(&stat("jwks.idp.requests_waited")) >= 1).then_some(())
    });
    server.set(jwks(&[&k1]));
    let r = waiting.join().unwrap();
    assert_eq!(r.status, 200, "verified once the keys arrived: {r:?}");
}

#[test]
fn after_a_good_fetch_an_outage_is_served_stale_then_fails_closed() {
    let (k1, _) = keys("jwks-stale-keys");
    let server = JwksServer::start(jwks(&[&k1]));
    let (e, _echo) = setup(
        "jwks-stale",
        &server,
        json!({"cache_duration_seconds": 2, "max_stale_seconds": 3, "wait_for_keys_ms": 0}),
    );
    let t = token(&k1);
    first_keys(&e, &t);
    let fetched = Instant::now();
    server.set(Mode::Down);
    // Past cache_duration: refreshes fail, the last good keys are still served.
    wait_for("the key set to go stale", Duration::from_secs(6), || {
        (e.stat_now(&stat("jwks.idp.stale")) == 1).then_some(())
    });
    assert_eq!(get(&e, &t).status, 200, "stale keys still serve");
    let closed = wait_for("the stale period to end", Duration::from_secs(10), || {
        let r = get(&e, &t);
        assert_ne!(r.status, 401, "fails closed with 503, not 401");
        (r.status == 503).then_some(r)
    });
    let after = fetched.elapsed();
    eprintln!("stale keys served until {after:?} after the last good fetch (cache 2 s + stale 3 s)");
    assert!(after >= Duration::from_secs(4), "stopped serving too early: {after:?}");
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert!(e.counter(&stat("jwks.idp.fetch_failed")) >= 1);
}

#[test]
fn a_flood_of_unknown_kids_causes_at_most_one_refetch_per_interval() {
    let (k1, _) = keys("jwks-flood-keys");
    let d = scratch_dir("jwks-flood-more");
    let stranger = KeyPair::generate(&d, Algorithm::RS256, "other");
    let server = JwksServer::start(jwks(&[&k1]));
    let (e, _echo) =
        setup("jwks-flood", &server, json!({"unknown_kid_min_interval_seconds": 30, "wait_for_keys_ms": 200}));
    first_keys(&e, &token(&k1));
    let before = server.fetches();
    let started = Instant::now();
    for i in 0..150 {
        let forged =
            stranger.sign_with_kid(&json!({"iss": ISSUER, "sub": "x", "exp": now() + 60}), &format!("random-{i}"));
        let r = get(&e, &forged);
        assert_eq!(r.status, 401, "{r:?}");
    }
    let extra = server.fetches() - before;
    eprintln!("150 random kids in {:?} caused {extra} JWKS fetches", started.elapsed());
    assert!(extra <= 1, "{extra} fetches");
    assert_eq!(get(&e, &token(&k1)).status, 200);
}

#[test]
fn hostile_documents_never_replace_the_good_key_set() {
    let (k1, k2) = keys("jwks-hostile-keys");
    let server = JwksServer::start(jwks(&[&k1]));
    let (e, _echo) = setup(
        "jwks-hostile",
        &server,
        json!({"unknown_kid_min_interval_seconds": 1, "wait_for_keys_ms": 1500, "max_keys": 10}),
    );
    let good = token(&k1);
    first_keys(&e, &good);
    let mut enc_only = k2.jwk();
    enc_only["use"] = json!("enc");
    let hostile = [
        "<html>not json</html>".to_string(),
        json!({"keys": "nope"}).to_string(),
        json!({"keys": [k2.jwk()], "padding": "x".repeat(70_000)}).to_string(),
        json!({"keys": vec![k2.jwk(); 11]}).to_string(),
        json!({"keys": [enc_only]}).to_string(),
        json!({"keys": [{"kty": "RSA", "kid": "k2", "n": "AQAB", "e": "AQAB"}]}).to_string(),
    ];
    let mut last_ask: Option<Instant> = None;
    for (i, doc) in hostile.iter().enumerate() {
        let failed = e.counter(&stat("jwks.idp.fetch_failed"));
        server.set(Mode::Serve(doc.clone()));
        // One unknown-kid refetch per unknown_kid_min_interval_seconds (1 s here).
        if let Some(t) = last_ask {
            wait_for("the refetch interval", Duration::from_secs(3), || {
                (t.elapsed() >= Duration::from_millis(1050)).then_some(())
            });
        }
        last_ask = Some(Instant::now());
        // A token with the new kid asks for a refetch, which brings the hostile document.
        let r = get(&e, &token(&k2));
        assert_eq!(r.status, 401, "document {i} must not install k2: {r:?}");
        wait_for("the hostile fetch to be refused", Duration::from_secs(5), || {
            (e.counter(&stat("jwks.idp.fetch_failed")) > failed).then_some(())
        });
        assert_eq!(get(&e, &good).status, 200, "document {i} replaced the good key set");
    }
}

#[test]
fn oidc_discovery_finds_the_jwks() {
    let (k1, _) = keys("jwks-oidc-keys");
    let server = JwksServer::start(jwks(&[&k1]));
    let (e, _echo) = setup(
        "jwks-oidc",
        &server,
        json!({"uri": "http://jwks.test/.well-known/openid-configuration", "oidc_discovery": true}),
    );
    let r = wait_for("keys through discovery", Duration::from_secs(5), || {
        let r = get(&e, &token(&k1));
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.echoed()["x-jwt-sub"], "alice");
    assert!(server.fetches() >= 1);
}

/// A discovered jwks_uri on another host than the issuer (as with Okta's or Entra ID's key
/// hosts): fetched through `jwks_cluster`, not the issuer's cluster — which here serves no keys.
#[test]
fn a_discovered_jwks_uri_on_another_host_goes_through_its_own_cluster() {
    let (k1, _) = keys("jwks-other-host-keys");
    let issuer_host = JwksServer::start(Mode::Down);
    let key_host = JwksServer::start(jwks(&[&k1]));
    let dir = scratch_dir("jwks-other-host");
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let remote = json!({"cluster": "issuer", "jwks_cluster": "keys", "oidc_discovery": true,
                        "uri": "http://jwks.test/.well-known/openid-configuration", "failed_refetch_seconds": 1});
    let config = json!({
        "providers": {"idp": {"issuer": ISSUER, "remote_jwks": remote}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
    });
    let listeners = [Listener::to_cluster("main", vec![jwtguard_filter("main", &config)], "upstream")];
    let clusters = [
        static_cluster("upstream", echo.port),
        static_cluster("issuer", issuer_host.port),
        static_cluster("keys", key_host.port),
    ];
    let e = Envoy::start(&dir, &bootstrap(&listeners, &clusters));
    first_keys(&e, &token(&k1));
    assert!(key_host.fetches() >= 1);
    assert_eq!(issuer_host.fetches(), 0, "the keys were not asked of the issuer's host");
}

fn token_for(key: &KeyPair, issuer: &str) -> String {
    key.sign(&json!({"iss": issuer, "sub": "alice", "exp": now() + 600}))
}

/// A JWKS document is public: a secret (`oct`) key in it never verifies anything, whether it
/// comes beside public keys or alone.
#[test]
fn a_fetched_key_set_never_yields_a_secret() {
    let (k1, _) = keys("jwks-secret-keys");
    let secret = b"a-secret-published-in-a-public-document!";
    let oct = json!({"kty": "oct", "kid": "s1", "k": support::tokens::encode(secret)});
    let mut both = match jwks(&[&k1]) {
        Mode::Serve(doc) => serde_json::from_str::<Value>(&doc).unwrap(),
        _ => unreachable!(),
    };
    both["keys"].as_array_mut().unwrap().push(oct.clone());
    let server = JwksServer::start(Mode::Serve(both.to_string()));
    let (e, _echo) = setup("jwks-secret", &server, json!({"wait_for_keys_ms": 1500}));
    first_keys(&e, &token(&k1));
    let hs = support::tokens::sign_raw(
        r#"{"alg":"HS256","kid":"s1"}"#,
        &json!({"iss": ISSUER, "sub": "mallory", "exp": now() + 600}).to_string(),
        &jsonwebtoken::EncodingKey::from_secret(secret),
        Algorithm::HS256,
    );
    let asked = Instant::now();
    assert_eq!(get(&e, &hs).status, 401, "HS256 with the published secret");
    // A document holding only the secret does not replace the public keys.
    server.set(Mode::Serve(json!({"keys": [oct]}).to_string()));
    wait_for("the unknown-kid interval (1 s)", Duration::from_secs(3), || {
        (asked.elapsed() >= Duration::from_millis(1050)).then_some(())
    });
    let failed = e.counter(&stat("jwks.idp.fetch_failed"));
    assert_eq!(get(&e, &hs).status, 401, "its unknown kid asks for a refetch, which brings the secret alone");
    wait_for("the secret-only document to be refused", Duration::from_secs(5), || {
        (e.counter(&stat("jwks.idp.fetch_failed")) > failed).then_some(())
    });
    assert_eq!(get(&e, &token(&k1)).status, 200, "the public keys stay");
}

const ISSUER_B: &str = "https://idp-b.test";

/// Each provider waits its own `wait_for_keys_ms`: a request for a provider whose identity
/// provider is down is answered after that provider's wait, not the longest of all.
#[test]
fn each_provider_waits_only_its_own_time() {
    let (ka, _) = keys("jwks-iso-wait-a");
    let (kb, _) = keys("jwks-iso-wait-b");
    let (sa, sb) = (JwksServer::start(jwks(&[&ka])), JwksServer::start(Mode::Down));
    let (e, _echo) = setup_providers(
        "jwks-iso-wait",
        &[
            ("a", ISSUER, &sa, json!({"wait_for_keys_ms": 4000})),
            ("b", ISSUER_B, &sb, json!({"wait_for_keys_ms": 300})),
        ],
    );
    first_keys(&e, &token(&ka));
    let started = Instant::now();
    let r = get(&e, &token_for(&kb, ISSUER_B));
    let waited = started.elapsed();
    eprintln!("provider b (wait 300 ms) answered {} after {waited:?}", r.status);
    assert_eq!(r.status, 503);
    assert!(waited < Duration::from_millis(2000), "waited {waited:?}: another provider's wait");
    assert!(waited >= Duration::from_millis(250), "did not wait: {waited:?}");
}

/// Unknown kids at one provider refetch that provider only: the other's JWKS is not fetched
/// and its own unknown-kid allowance is intact, so its rotation right after is seen at once.
#[test]
fn unknown_kids_at_one_provider_never_touch_another() {
    let (ka, _) = keys("jwks-iso-kid-a");
    let (kb1, kb2) = keys("jwks-iso-kid-b");
    let stranger = KeyPair::generate(&scratch_dir("jwks-iso-kid-x"), Algorithm::RS256, "x");
    let (sa, sb) = (JwksServer::start(jwks(&[&ka])), JwksServer::start(jwks(&[&kb1])));
    let slow_kid = json!({"unknown_kid_min_interval_seconds": 30, "wait_for_keys_ms": 1500});
    let (e, _echo) =
        setup_providers("jwks-iso-kid", &[("a", ISSUER, &sa, slow_kid.clone()), ("b", ISSUER_B, &sb, slow_kid)]);
    first_keys(&e, &token(&ka));
    first_keys(&e, &token_for(&kb1, ISSUER_B));
    let (a_before, b_before) = (sa.fetches(), sb.fetches());
    for i in 0..50 {
        let forged = stranger.sign_with_kid(&json!({"iss": ISSUER, "sub": "x", "exp": now() + 60}), &format!("r-{i}"));
        assert_eq!(get(&e, &forged).status, 401);
    }
    let (a_extra, b_extra) = (sa.fetches() - a_before, sb.fetches() - b_before);
    eprintln!("50 unknown kids at a: {a_extra} fetches at a, {b_extra} at b");
    assert!(a_extra <= 1, "{a_extra} fetches at a");
    assert_eq!(b_extra, 0, "b's JWKS fetched for a's unknown kids");
    assert_eq!(e.counter(&stat("jwks.b.unknown_kid_refetch")), 0);
    // b rotates: its first token with the new kid gets its refetch (b's allowance is unused).
    sb.set(jwks(&[&kb1, &kb2]));
    assert_eq!(get(&e, &token_for(&kb2, ISSUER_B)).status, 200, "b's new key refused without a fetch");
}

/// A request waiting for its provider's refetch is not answered when another provider's fetch
/// ends first: here b refreshes every second while a's identity provider answers slowly.
#[test]
fn a_rotation_waits_for_its_own_provider_refetch() {
    let d = scratch_dir("jwks-iso-rot");
    let (kb, _) = keys("jwks-iso-rot-b");
    let first = KeyPair::generate(&d, Algorithm::RS256, "a0");
    let sa = JwksServer::start(jwks(&[&first]));
    let sb = JwksServer::start(jwks(&[&kb]));
    let (e, _echo) = setup_providers(
        "jwks-iso-rot",
        &[
            ("a", ISSUER, &sa, json!({"unknown_kid_min_interval_seconds": 1, "wait_for_keys_ms": 3000})),
            ("b", ISSUER_B, &sb, json!({"cache_duration_seconds": 1})),
        ],
    );
    first_keys(&e, &token(&first));
    first_keys(&e, &token_for(&kb, ISSUER_B));
    let mut published = vec![first];
    for round in 1..=6 {
        let next = KeyPair::generate(&d, Algorithm::RS256, &format!("a{round}"));
        published.push(next);
        let refs: Vec<&KeyPair> = published.iter().collect();
        let doc = match jwks(&refs) {
            Mode::Serve(doc) => doc,
            _ => unreachable!(),
        };
        sa.set(Mode::ServeAfter(Duration::from_millis(400), doc));
        // Past a's unknown-kid interval, so each round may ask for a refetch.
        std::thread::sleep(Duration::from_millis(1100));
        let asked = Instant::now();
        let r = get(&e, &token(published.last().unwrap()));
        eprintln!("round {round}: {} after {:?}, b fetches so far {}", r.status, asked.elapsed(), sb.fetches());
        // On failure, what provider a's fetches did (Envoy's log), to tell a refetch that ended
        // early from a key that did not load.
        let log = || e.log_text().lines().filter(|l| l.contains("provider a")).collect::<Vec<_>>().join("\n");
        assert_eq!(r.status, 200, "round {round}: the new kid was refused before a's refetch: {r:?}\n{}", log());
    }
    assert!(sb.fetches() >= 3, "b refreshed meanwhile ({} fetches)", sb.fetches());
}

/// The gauges describe each provider alone: b stale beside a healthy a reads 1 and a reads 0,
/// and b stays stale once its keys expire and its tokens get 503 — in /stats and as the
/// labelled Prometheus series the documented alerts use.
#[test]
fn gauges_are_per_provider_and_stay_true_after_expiry() {
    let (ka, _) = keys("jwks-gauge-a");
    let (kb, _) = keys("jwks-gauge-b");
    let (sa, sb) = (JwksServer::start(jwks(&[&ka])), JwksServer::start(jwks(&[&kb])));
    let (e, _echo) = setup_providers(
        "jwks-gauge",
        &[
            ("a", ISSUER, &sa, json!({})),
            ("b", ISSUER_B, &sb, json!({"cache_duration_seconds": 2, "max_stale_seconds": 2, "wait_for_keys_ms": 0})),
        ],
    );
    first_keys(&e, &token(&ka));
    first_keys(&e, &token_for(&kb, ISSUER_B));
    assert!(e.stat_now(&stat("jwks.a.keys_loaded")) >= 1);
    sb.set(Mode::Down);
    wait_for("b to go stale", Duration::from_secs(6), || (e.stat_now(&stat("jwks.b.stale")) == 1).then_some(()));
    assert_eq!(e.stat_now(&stat("jwks.a.stale")), 0, "a is healthy");
    wait_for("b's keys to expire", Duration::from_secs(8), || {
        (get(&e, &token_for(&kb, ISSUER_B)).status == 503).then_some(())
    });
    assert_eq!(e.stat_now(&stat("jwks.b.stale")), 1, "stale must not clear when the 503s begin");
    assert_eq!(e.stat_now(&stat("jwks.b.keys_loaded")), 0);
    assert_eq!(e.stat_now(&stat("jwks.a.stale")), 0);
    assert_eq!(get(&e, &token(&ka)).status, 200);
    // The alerts of docs/operations.md, on the Prometheus series Envoy serves.
    let prom = e.prometheus();
    let series = |line: &str| prom.lines().any(|l| l.trim() == line);
    assert!(series(r#"jwtguard_jwks_stale{provider="b"} 1"#), "JWKSStale would not fire:\n{prom}");
    assert!(series(r#"jwtguard_jwks_keys_loaded{provider="b"} 0"#), "JWKSNoKeys would not fire");
    assert!(series(r#"jwtguard_jwks_stale{provider="a"} 0"#), "JWKSStale would fire for a");
}

/// Two plugins in one VM (the same `vm_id`, as envoy/envoy.yaml's fixed `jwtguard` invites), each
/// with a provider named `idp` at a different identity provider: each plugin keeps its own key
/// set in Envoy's shared data, so a token signed by the other provider's key is refused.
#[test]
fn plugins_sharing_a_vm_never_share_key_sets() {
    let dir = scratch_dir("jwks-shared-vm");
    let (ka, _) = keys("jwks-shared-vm-a");
    let kb = KeyPair::generate(&scratch_dir("jwks-shared-vm-b"), Algorithm::RS256, "k1");
    let (sa, sb) = (JwksServer::start(jwks(&[&ka])), JwksServer::start(jwks(&[&kb])));
    let echo = Echo::start("127.0.0.1:0").unwrap();
    let config = |cluster: &str| {
        json!({
            "providers": {"idp": {"issuer": ISSUER, "remote_jwks": {"cluster": cluster, "uri": "http://jwks.test/keys",
                                   "unknown_kid_min_interval_seconds": 1, "wait_for_keys_ms": 1500}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
        })
    };
    let listeners = [
        Listener::to_cluster("a", vec![jwtguard_filter("shared", &config("jwks-a"))], "upstream"),
        Listener::to_cluster("b", vec![jwtguard_filter("shared", &config("jwks-b"))], "upstream"),
    ];
    let clusters =
        [static_cluster("upstream", echo.port), static_cluster("jwks-a", sa.port), static_cluster("jwks-b", sb.port)];
    let e = Envoy::start(&dir, &bootstrap(&listeners, &clusters));
    let at = |listener: &str, t: &str| http("GET", &e.url(listener, "/"), &[("authorization", &format!("Bearer {t}"))]);
    let (ta, tb) = (token(&ka), token(&kb));
    wait_for("a's keys", Duration::from_secs(5), || (at("a", &ta).status == 200).then_some(()));
    wait_for("b's keys", Duration::from_secs(5), || (at("b", &tb).status == 200).then_some(()));
    for _ in 0..3 {
        assert_eq!(at("a", &tb).status, 401, "plugin a accepted a key of plugin b's provider");
        assert_eq!(at("b", &ta).status, 401, "plugin b accepted a key of plugin a's provider");
    }
    assert_eq!((at("a", &ta).status, at("b", &tb).status), (200, 200));
}
