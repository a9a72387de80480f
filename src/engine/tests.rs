//! The engine against a recording host: what reaches each request (headers, responses,
//! resumes), the callouts it sends and the stats it counts, without Envoy.

use super::*;
use crate::config::Config;
use jsonwebtoken::{Algorithm, EncodingKey};
use jwtguard_demo::tokens::{sign_raw, KeyPair};
use serde_json::json;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

const SECRET: &str = "secret-of-the-test-provider-32-bytes-at-least";

/// What the host was asked to do, by request (context id).
#[derive(Default)]
struct Log {
    now_ms: u64,
    current: u32,
    /// Requests the engine may act on: the one in its call, and those that wait (returned
    /// `Pause` unanswered), as the dynamic module's host allows; one that is gone lost its client.
    live: HashSet<u32>,
    headers: HashMap<u32, Vec<(String, Option<String>)>>,
    responses: HashMap<u32, u32>,
    resumed: Vec<u32>,
    /// (token, cluster, :path) of each callout sent.
    callouts: Vec<(u32, String, String)>,
    shared: HashMap<String, (Vec<u8>, u32)>,
    metric_names: Vec<String>,
    counts: HashMap<String, u64>,
    wakes: u32,
    /// Payloads published as dynamic metadata: (request, key, payload).
    metadata: Vec<(u32, String, crate::metadata::Payload)>,
    /// Whether the host refuses them (too deep for Envoy), or cannot write metadata at all.
    metadata_refused: bool,
    no_metadata: bool,
    /// Callouts the engine recorded and that were not answered yet: (token, request, why).
    pending: Vec<(u32, u32, Callout)>,
}

#[derive(Clone, Default)]
struct FakeHost(Rc<RefCell<Log>>);

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.0.borrow().now_ms
    }
    fn set_effective_context(&self, context_id: u32) -> bool {
        let mut log = self.0.borrow_mut();
        log.current = context_id;
        log.live.contains(&context_id)
    }
    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let mut log = self.0.borrow_mut();
        let current = log.current;
        log.headers.entry(current).or_default().push((name.to_string(), value.map(str::to_string)));
    }
    fn send_response(&self, status: u32, _headers: &[(&str, &str)], _body: Option<&[u8]>) {
        let mut log = self.0.borrow_mut();
        let current = log.current;
        log.responses.insert(current, status);
    }
    fn resume_request(&self) {
        let mut log = self.0.borrow_mut();
        let current = log.current;
        log.resumed.push(current);
    }
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.0.borrow().shared.get(key).map_or((None, None), |(v, cas)| (Some(v.clone()), Some(*cas)))
    }
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut log = self.0.borrow_mut();
        let version = log.shared.get(key).map_or(0, |(_, v)| *v);
        if cas.is_some_and(|c| c != version) {
            return false;
        }
        log.shared.insert(key.to_string(), (value.to_vec(), version + 1));
        true
    }
    fn define_metric(&self, _kind: MetricKind, name: &str) -> Option<u32> {
        let mut log = self.0.borrow_mut();
        log.metric_names.push(name.to_string());
        Some(log.metric_names.len() as u32 - 1)
    }
    fn increment_metric(&self, id: u32, by: u64) {
        let mut log = self.0.borrow_mut();
        let name = log.metric_names[id as usize].clone();
        *log.counts.entry(name).or_default() += by;
    }
    fn record_metric(&self, _id: u32, _value: u64) {}
    fn counter_flush_ms(&self) -> u64 {
        0
    }
    fn crypto(&self) -> Option<&dyn HostCrypto> {
        None
    }
    fn writes_dynamic_metadata(&self) -> bool {
        !self.0.borrow().no_metadata
    }
    fn set_payload_metadata(&self, key: &str, payload: &crate::metadata::Payload) -> bool {
        let mut log = self.0.borrow_mut();
        let current = log.current;
        log.metadata.push((current, key.to_string(), payload.clone()));
        !log.metadata_refused
    }
    fn wake_parked(&self) {
        self.0.borrow_mut().wakes += 1;
    }
}

impl FakeHost {
    fn log(&self) -> std::cell::RefMut<'_, Log> {
        self.0.borrow_mut()
    }
    fn count(&self, name: &str) -> u64 {
        self.0.borrow().counts.get(&format!("jwtguard.{name}")).copied().unwrap_or(0)
    }
}

fn engine(revocation: serde_json::Value, host: &FakeHost, background: bool, feed: Option<Arc<Feed>>) -> Engine {
    let config = json!({
        "providers": {"p": {"issuer": "iss", "hmac_secrets": [{"secret": SECRET}],
                            "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}]}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}],
        "revocation": revocation,
    });
    let mut config = config;
    if config["revocation"].is_null() {
        config.as_object_mut().unwrap().remove("revocation");
    }
    let config = Config::parse(config.to_string().as_bytes()).unwrap();
    host.log().now_ms = 1_700_000_000_000;
    Engine::new(config, Box::new(host.clone()), background, feed).unwrap()
}

fn token(jti: &str) -> String {
    let claims = json!({"iss": "iss", "sub": "alice", "jti": jti, "exp": 1_700_000_600});
    sign_raw(r#"{"alg":"HS256"}"#, &claims.to_string(), &EncodingKey::from_secret(SECRET.as_bytes()), Algorithm::HS256)
}

/// Starts request `id` carrying `token` (none: no credentials).
fn request(engine: &Engine, host: &FakeHost, id: u32, token: Option<&str>) -> Action {
    host.log().live.insert(id);
    host.log().current = id;
    let mut headers = vec![(":method".to_string(), "GET".to_string()), (":path".to_string(), "/api".to_string())];
    if let Some(t) = token {
        headers.push(("authorization".to_string(), format!("Bearer {t}")));
    }
    let (action, callout) = engine.handle(id, false, &headers, None, &|c, h, _, _| dispatch(host, c, &h));
    if let Some((t, c)) = callout {
        host.log().pending.push((t, id, c));
    }
    let mut log = host.log();
    if action == Action::Continue || log.responses.contains_key(&id) {
        log.live.remove(&id); // done: it does not wait for anything
    }
    action
}

fn dispatch(host: &FakeHost, cluster: &str, headers: &[(&str, &str)]) -> Result<u32, String> {
    let path = headers.iter().find(|(k, _)| *k == ":path").map_or("", |(_, v)| v).to_string();
    let mut log = host.log();
    let token = log.callouts.len() as u32 + 1;
    log.callouts.push((token, cluster.to_string(), path));
    Ok(token)
}

/// Answers every callout started so far with `status` and `body`.
fn answer_all(engine: &Engine, host: &FakeHost, status: u16, body: &str) {
    let pending = std::mem::take(&mut host.log().pending);
    for (_, request, callout) in pending {
        let mut started = Vec::new();
        engine.on_callout(
            callout,
            request,
            Some(status),
            Some(body.as_bytes()),
            &|c, h, _, _| dispatch(host, c, &h),
            &mut |t, r, c| started.push((t, r, c)),
        );
        host.log().pending.extend(started);
    }
}

/// A tick of `engine`, the callouts it starts left pending.
fn tick(engine: &Engine, host: &FakeHost) {
    let mut started = Vec::new();
    engine.tick(&|c, h, _, _| dispatch(host, c, &h), &mut |t, r, c| started.push((t, r, c)));
    host.log().pending.extend(started);
}

/// The main thread's engine and a worker's, of one configuration, on one host.
fn main_and_worker(config: &Value, host: &FakeHost) -> (Engine, Engine) {
    host.log().now_ms = 1_700_000_000_000;
    let new = |background| {
        let config = Config::parse(config.to_string().as_bytes()).unwrap();
        Engine::new(config, Box::new(host.clone()), background, None).unwrap()
    };
    (new(true), new(false))
}

const STATUS_REVOCATION: &str = r#"{"cluster": "rev", "authority": "rev", "failure_mode": "open", "source": "status"}"#;

#[test]
fn a_valid_token_goes_on_with_its_claim_headers_and_a_missing_one_is_refused() {
    let host = FakeHost::default();
    let engine = engine(serde_json::Value::Null, &host, true, None);
    assert_eq!(request(&engine, &host, 1, Some(&token("a"))), Action::Continue);
    assert!(host.log().headers[&1].contains(&("x-jwt-sub".into(), Some("alice".into()))));
    assert_eq!(request(&engine, &host, 2, None), Action::Pause);
    assert_eq!(host.log().responses[&2], 401);
    engine.flush_stats();
    assert_eq!((host.count("allowed"), host.count("denied.missing")), (1, 1));
}

#[test]
fn requests_with_one_token_share_one_status_callout_and_a_gone_client_is_skipped() {
    let host = FakeHost::default();
    let engine = engine(serde_json::from_str(STATUS_REVOCATION).unwrap(), &host, true, None);
    let t = token("shared");
    for id in 1..=3 {
        assert_eq!(request(&engine, &host, id, Some(&t)), Action::Pause);
    }
    assert_eq!(host.log().callouts.len(), 1, "one callout for three requests");
    engine.flush_stats();
    assert_eq!(host.count("revocation.coalesced"), 2);
    host.log().live.remove(&2);
    answer_all(&engine, &host, 200, r#"{"active": true}"#);
    assert_eq!(host.log().resumed, vec![1, 3], "the request whose client left is not resumed");
    // The answer is cached: the next request with the token asks nobody.
    assert_eq!(request(&engine, &host, 4, Some(&t)), Action::Continue);
    assert_eq!(host.log().callouts.len(), 1);
}

#[test]
fn a_lost_status_callout_ends_in_the_failure_mode_at_the_next_tick() {
    let host = FakeHost::default();
    let engine = engine(serde_json::from_str(STATUS_REVOCATION).unwrap(), &host, true, None);
    assert_eq!(request(&engine, &host, 1, Some(&token("lost"))), Action::Pause);
    host.log().pending.clear(); // its answer never comes
    let timeout = engine.revocation.as_ref().unwrap().timeout_ms;
    host.log().now_ms += timeout + 501;
    engine.tick(&|c, h, _, _| dispatch(&host, c, &h), &mut |_, _, _| {});
    let log = host.log();
    assert_eq!(log.resumed, vec![1]);
    assert!(log.headers[&1].contains(&(config::UNCHECKED_HEADER.into(), Some("unchecked".into()))));
    drop(log);
    engine.flush_stats();
    assert_eq!(host.count("revocation.check.timeout"), 1);
}

/// The request whose stream sent a status check goes (a client reset it): its answer is lost with
/// it (the module's Envoy cancels the callout; the wasm SDK drops the answer), and the next tick
/// sends it again for the requests still waiting.
/// They must get the service's answer, never the failure mode: otherwise a client could reset
/// its own request to have a revoked token let through with `failure_mode: open`.
#[test]
fn a_status_check_whose_sender_went_is_sent_again_for_the_others() {
    let host = FakeHost::default();
    let engine = engine(serde_json::from_str(STATUS_REVOCATION).unwrap(), &host, true, None);
    let t = token("reset");
    for id in 1..=3 {
        assert_eq!(request(&engine, &host, id, Some(&t)), Action::Pause);
    }
    host.log().live.remove(&1);
    host.log().pending.clear(); // cancelled with request 1's stream
    engine.request_gone(1);
    tick(&engine, &host);
    assert_eq!(host.log().callouts.len(), 2, "sent again");
    assert_eq!(
        host.log().pending.iter().map(|(_, r, _)| *r).collect::<Vec<_>>(),
        vec![2],
        "from a request still there"
    );
    // Its sender is there now: a later tick within the timeout sends nothing more.
    host.log().now_ms += engine.revocation.as_ref().unwrap().timeout_ms;
    tick(&engine, &host);
    assert_eq!(host.log().callouts.len(), 2, "one check at a time");
    answer_all(&engine, &host, 200, r#"{"active": false}"#);
    let log = host.log();
    assert_eq!((log.responses.get(&2), log.responses.get(&3)), (Some(&401), Some(&401)));
    assert!(log.resumed.is_empty(), "nobody let through unchecked");
    drop(log);
    // The last waiter gone with its check: nothing is left to send.
    assert_eq!(request(&engine, &host, 4, Some(&token("alone"))), Action::Pause);
    host.log().live.remove(&4);
    host.log().pending.clear();
    engine.request_gone(4);
    tick(&engine, &host);
    assert_eq!(host.log().callouts.len(), 3);
    assert!(engine.inflight.borrow().is_empty());
}

/// A kid that a refetch made elsewhere brought, but this engine has not loaded yet (a worker
/// syncs keys on its tick), makes the request wait for that sync, not a 401: the refetch is
/// over and rate-limited, so asking again brings nothing.
#[test]
fn an_unknown_kid_waits_for_a_key_set_another_engine_fetched() {
    let dir = jwtguard_demo::scratch_dir("engine", "kid-sync");
    let (k1, k2) = (KeyPair::generate(&dir, Algorithm::RS256, "k1"), KeyPair::generate(&dir, Algorithm::RS256, "k2"));
    let config = json!({
        "providers": {"p": {"issuer": "iss", "remote_jwks": {"cluster": "keys", "uri": "http://keys.test/jwks",
                                                             "unknown_kid_min_interval_seconds": 60, "wait_for_keys_ms": 5000}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]
    });
    let host = FakeHost::default();
    let (main, worker) = main_and_worker(&config, &host);
    let fetch = |keys: Vec<Value>| {
        tick(&main, &host);
        let body = json!({"keys": keys}).to_string();
        answer_all(&main, &host, 200, &body);
    };
    fetch(vec![k1.jwk()]);
    tick(&worker, &host);
    let claims = json!({"iss": "iss", "sub": "alice", "exp": 1_700_000_600});
    let (old, new_kid) = (k1.sign(&claims), k2.sign(&claims));
    assert_eq!(request(&worker, &host, 1, Some(&old)), Action::Continue);
    assert_eq!(request(&worker, &host, 2, Some(&new_kid)), Action::Pause, "asks for a refetch and waits");
    host.log().now_ms += 1_000;
    fetch(vec![k1.jwk(), k2.jwk()]);
    assert_eq!(request(&worker, &host, 3, Some(&new_kid)), Action::Pause, "waits for the fetched set");
    let refused = host.log().responses.contains_key(&3);
    assert!(!refused, "refused from the older set");
    host.log().now_ms += 10; // the fetch ended before it parks
    let bogus = KeyPair::generate(&dir, Algorithm::RS256, "k3").sign(&claims);
    assert_eq!(request(&worker, &host, 4, Some(&bogus)), Action::Pause, "the new set may hold it too");
    tick(&worker, &host);
    assert_eq!(host.log().resumed, vec![2, 3]);
    assert_eq!(host.log().responses.get(&4), Some(&401), "refused at the sync, not at its deadline");
    assert_eq!(request(&worker, &host, 5, Some(&bogus)), Action::Pause);
    assert_eq!(host.log().responses.get(&5), Some(&401), "the newest set synced: refused at once");
}

/// A dynamic module's engines share one feed: the main thread's polls it, a worker's requests
/// wait for its first complete set and go on at the worker's next tick, without a poll of
/// their own.
#[test]
fn a_worker_waiting_for_a_shared_feed_goes_on_once_the_background_engine_completes_it() {
    let revocation = json!({"cluster": "rev", "authority": "rev", "failure_mode": "closed", "source": "feed",
                            "feed": {"wait_for_set_ms": 5000}});
    let (main_host, worker_host) = (FakeHost::default(), FakeHost::default());
    let main = engine(revocation.clone(), &main_host, true, None);
    let worker = engine(revocation, &worker_host, false, main.feed.clone());
    assert_eq!(request(&worker, &worker_host, 7, Some(&token("w"))), Action::Pause, "no set yet: it waits");
    worker.tick(&|c, h, _, _| dispatch(&worker_host, c, &h), &mut |_, _, _| {});
    assert!(worker_host.log().callouts.is_empty(), "a worker never polls");
    assert!(worker_host.log().resumed.is_empty());

    let mut started = Vec::new();
    main.tick(&|c, h, _, _| dispatch(&main_host, c, &h), &mut |t, r, c| started.push((t, r, c)));
    main_host.log().pending.extend(started);
    assert_eq!(main_host.log().callouts.len(), 1, "the background engine polls");
    answer_all(&main, &main_host, 200, r#"{"position": "1-0", "more": false, "events": []}"#);
    assert!(main_host.log().wakes >= 1, "parked requests elsewhere are woken");

    worker.tick(&|c, h, _, _| dispatch(&worker_host, c, &h), &mut |_, _, _| {});
    assert_eq!(worker_host.log().resumed, vec![7]);
    assert!(worker_host.log().responses.is_empty());
}

/// A provider with `payload_in_metadata` publishes each verified payload for its request; a
/// payload the host cannot write refuses the request (a policy must never find it missing).
#[test]
fn payloads_go_to_metadata_and_one_that_cannot_refuses_the_request() {
    let host = FakeHost::default();
    let config = json!({
        "providers": {"p": {"issuer": "iss", "hmac_secrets": [{"secret": SECRET}], "payload_in_metadata": "jwt_payload"}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}],
    });
    let config = Config::parse(config.to_string().as_bytes()).unwrap();
    let engine = Engine::new(config, Box::new(host.clone()), true, None).unwrap();
    assert_eq!(request(&engine, &host, 1, Some(&token("m"))), Action::Continue);
    {
        let log = host.log();
        let (request, key, payload) = &log.metadata[0];
        assert_eq!((*request, key.as_str(), &payload["sub"]), (1, "jwt_payload", &json!("alice")));
    }
    host.log().metadata_refused = true;
    assert_eq!(request(&engine, &host, 2, Some(&token("n"))), Action::Pause);
    assert_eq!(host.log().responses[&2], 401);
}

/// A host that cannot write dynamic metadata (proxy-wasm) refuses the field at start, naming it.
#[test]
fn payload_in_metadata_needs_a_host_that_writes_metadata() {
    let host = FakeHost::default();
    host.log().no_metadata = true;
    let config = json!({"providers": {"p": {"issuer": "iss", "hmac_secrets": [{"secret": SECRET}], "payload_in_metadata": "k"}}});
    let config = Config::parse(config.to_string().as_bytes()).unwrap();
    let error = Engine::new(config, Box::new(host), true, None).err().unwrap();
    assert_eq!(error, "providers.p.payload_in_metadata: proxy-wasm cannot write dynamic metadata");
}

#[test]
fn a_log_line_that_could_come_with_every_request_is_written_at_most_once_a_second() {
    let limit = LogLimit::default();
    assert!(limit.allows(5), "the first");
    assert!(!limit.allows(5) && !limit.allows(1_004));
    assert!(limit.allows(1_005));
    assert!(!limit.allows(2_004));
}

thread_local! {
    /// The log lines written on this thread (each test runs on a thread of its own).
    static LINES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

struct ThreadLines;

impl log::Log for ThreadLines {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        LINES.with(|lines| lines.borrow_mut().push(record.args().to_string()));
    }
    fn flush(&self) {}
}

/// The lines this thread has logged since the last call.
fn take_lines() -> Vec<String> {
    if log::set_logger(&ThreadLines).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    LINES.with(|lines| std::mem::take(&mut *lines.borrow_mut()))
}

/// A key set another engine stored that this one cannot use is parsed and logged once, not at
/// every key sync (ten a second), and each provider's is.
#[test]
fn a_stored_key_set_that_stays_unusable_is_logged_once_per_provider() {
    let dir = jwtguard_demo::scratch_dir("engine", "unusable-keys");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let config = json!({
        "providers": {"p": {"issuer": "iss", "remote_jwks": {"cluster": "keys", "uri": "http://keys.test/jwks"}},
                      "q": {"issuer": "iss2", "remote_jwks": {"cluster": "keys", "uri": "http://keys.test/jwks2"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "p"}}]
    });
    let host = FakeHost::default();
    let (main, worker) = main_and_worker(&config, &host);
    tick(&main, &host);
    answer_all(&main, &host, 200, &json!({"keys": [key.jwk()]}).to_string());
    // A newer set whose document is not one (corrupt shared data, a clash of namespaces).
    let now = host.log().now_ms;
    for (name, (value, _)) in host.log().shared.iter_mut() {
        if name.ends_with(".doc") {
            *value = b"not a JWKS".to_vec();
        } else if name.ends_with(".state") {
            let state = crate::jwks::FetchState::decode(value).unwrap();
            *value = crate::jwks::FetchState { fetched_ms: now + 1, ..state }.encode();
        }
    }
    take_lines();
    for _ in 0..30 {
        host.log().now_ms += 100;
        worker.sync_keys_if_due();
    }
    let lines = take_lines();
    let unusable: Vec<&String> = lines.iter().filter(|l| l.contains("stored JWKS unusable")).collect();
    assert_eq!(unusable.len(), 2, "three seconds of key syncs: {lines:?}");
    assert!(unusable[0].contains("provider p:") && unusable[1].contains("provider q:"), "{unusable:?}");
}
