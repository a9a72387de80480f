//! The filter behind the hooks: the core's `engine` on Envoy's dynamic-module ABI.
//!
//! Threads. Envoy runs a stream's hooks on its worker and the configuration's hooks on the main
//! thread. Each thread gets its own `Engine` per configuration (as each wasm VM has one): the
//! workers' serve requests; the main thread's does the background work (key fetches, the feed's
//! long-poll), because only the main thread can send a callout that belongs to no stream. What
//! the engines share goes through `SHARED_DATA` (key sets, revocation answers: proxy-wasm's
//! shared data, in process) and the `Feed`, one per configuration.
//!
//! Time. HTTP filters have no timer in Envoy 1.40, so a thread of ours (`Ticker`) asks Envoy to
//! run the main engine's tick on the main thread, and a worker's tick on one of its parked
//! streams (a stream waiting for keys, the revocation set or an answer); the main engine wakes
//! the parked streams at once when keys or the feed arrive.

use crate::abi;
use crate::crypto::NativeCrypto;
use crate::host::{self, Scheduler, Stream};
use jwtguard::config::Config;
use jwtguard::engine::{self, Action, Callout, Engine, Feed, MetricKind};
use jwtguard::fast_hash::FastMap;
use jwtguard::host_crypto::{self, HostCrypto};
use jwtguard::metadata;
use log::error;
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A shared-data value and its compare-and-swap version.
type Versioned = (Vec<u8>, u32);

/// proxy-wasm's shared data, for the whole process, by key.
static SHARED_DATA: LazyLock<Mutex<FastMap<String, Versioned>>> = LazyLock::new(Default::default);

/// The live configurations of each namespace (identical configurations share one), by name.
/// The last to go takes the namespace's shared data with it, so that replaced configurations
/// (every edit makes a new namespace) leave nothing behind.
static NAMESPACES: LazyLock<Mutex<FastMap<String, Namespace>>> = LazyLock::new(Default::default);

#[derive(Default)]
struct Namespace {
    users: usize,
    /// Their revocation set: a configuration with the bytes of a live one (a listener update
    /// that leaves jwtguard's configuration as it was, or two listeners with the same one) takes
    /// its set and its place in the feed, as a wasm VM keeps its plugin's, rather than reading
    /// the whole feed again while its requests wait. Weak: a destroyed configuration's engines
    /// on the workers keep the set until they go, but it is never taken up again.
    feed: Weak<Feed>,
}

/// Counts a live configuration of `namespace`, whose revocation set is `feed`.
fn hold_namespace(namespace: &str, feed: Option<&Arc<Feed>>) {
    let mut namespaces = lock(&NAMESPACES);
    let held = namespaces.entry(namespace.to_string()).or_default();
    held.users += 1;
    if let Some(feed) = feed {
        held.feed = Arc::downgrade(feed);
    }
}

fn release_namespace(namespace: &str) {
    let mut namespaces = lock(&NAMESPACES);
    let Some(held) = namespaces.get_mut(namespace) else { return };
    held.users -= 1;
    if held.users == 0 {
        namespaces.remove(namespace);
        let prefix = format!("jwtguard.{namespace}.");
        lock(&SHARED_DATA).retain(|key, _| !key.starts_with(&prefix));
    }
}

/// The revocation set of `namespace`'s live configurations, if one has a set.
fn live_feed(namespace: &str) -> Option<Arc<Feed>> {
    lock(&NAMESPACES).get(namespace)?.feed.upgrade()
}

/// Context ids of streams, unique in the process (the engine names requests by them).
static NEXT_CONTEXT: AtomicU32 = AtomicU32::new(1);

/// A lock is poisoned only by a panic while it is held, and a panic aborts the release build;
/// in test builds the data is taken as it is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A stat the main engine defined: its kind and Envoy's id.
#[derive(Clone, Debug)]
struct Metric {
    name: String,
    kind: MetricKind,
    id: usize,
}

/// Envoy's filter configuration, kept for the main thread's engine.
#[derive(Clone, Copy)]
struct EnvoyConfig(host::ConfigHandle);
// SAFETY: only the main thread's engine uses it (callouts, schedulers and stats outside a
// stream: `HostState::main`), and only while the configuration lives; workers carry it without
// touching it (their counts go through `Counts`, their gauges and histograms through a stream).
unsafe impl Send for EnvoyConfig {}
unsafe impl Sync for EnvoyConfig {}

/// Streams parked on each worker, by context id: the ticker and the main engine reach a
/// worker's engine through one of them.
#[derive(Default)]
struct Parked(Mutex<Vec<FastMap<u32, Scheduler>>>);

impl Parked {
    /// Runs the `scheduled` hook of one parked stream on every worker that has one.
    fn wake(&self) {
        for worker in lock(&self.0).iter() {
            if let Some(scheduler) = worker.values().next() {
                scheduler.commit(0);
            }
        }
    }

    fn insert(&self, worker: u32, context_id: u32, scheduler: Scheduler) {
        let mut workers = lock(&self.0);
        let index = worker as usize;
        if workers.len() <= index {
            workers.resize_with(index + 1, FastMap::default);
        }
        if let Some(parked) = workers.get_mut(index) {
            parked.insert(context_id, scheduler);
        }
    }

    fn remove(&self, worker: u32, context_id: u32) {
        // The scheduler is deleted under the lock, so no commit races its deletion.
        if let Some(parked) = lock(&self.0).get_mut(worker as usize) {
            parked.remove(&context_id);
        }
    }
}

/// Counts of the configuration's counters (by the engine's metric id) not yet handed to Envoy.
/// The workers add here; the main thread's tick hands them over (about every `stats::FLUSH_MS`,
/// as the wasm build does). A call into Envoy per counter per request cost a cache hit ≈ 35 ns
/// each (perf, 2026-12-02), an atomic add a few. Workers share these cache lines as they share
/// Envoy's own counters.
struct Counts(Vec<AtomicU64>);

impl Counts {
    fn new(metrics: usize) -> Counts {
        Counts((0..metrics).map(|_| AtomicU64::new(0)).collect())
    }

    fn add(&self, id: u32, by: u64) {
        if let Some(count) = self.0.get(id as usize) {
            count.fetch_add(by, Relaxed);
        }
    }

    /// Hands the counts to Envoy; only on the main thread, while the configuration lives.
    fn flush(&self, metrics: &[Metric], envoy: host::ConfigHandle) {
        for (count, metric) in self.0.iter().zip(metrics) {
            if metric.kind == MetricKind::Counter && count.load(Relaxed) > 0 {
                envoy.increment(host::Counter(metric.id), &[], count.swap(0, Relaxed));
            }
        }
    }
}

/// What every thread's engine of one configuration shares.
struct Shared {
    json: Vec<u8>,
    /// The request headers the filter reads (`request_headers`).
    request_headers: Vec<String>,
    envoy: EnvoyConfig,
    metrics: Vec<Metric>,
    counts: Counts,
    feed: Option<Arc<Feed>>,
    parked: Parked,
    /// Whether native crypto passed the main thread's self-test.
    crypto: bool,
    /// Set when Envoy destroys the configuration.
    destroyed: AtomicBool,
}

/// One thread's state for one configuration: what the engine's host reads and writes.
struct HostState {
    /// Set once the main engine has defined the stats (at once on workers).
    shared: OnceCell<Arc<Shared>>,
    envoy: EnvoyConfig,
    /// The main thread's: it defines the stats and sends callouts that belong to no stream.
    main: bool,
    /// The stats: defined by the main engine, looked up by name by the others.
    metrics: RefCell<Vec<Metric>>,
    /// The request the engine's calls act on (context id and stream).
    current: Cell<Option<(u32, Stream)>>,
    /// The request whose hook runs, and this thread's waiting ones (parked, or with a callout in
    /// flight): the requests the engine can make current. A request that never waits is never
    /// in the map, which keeps a cache hit free of its upkeep.
    foreground: Cell<Option<(u32, Stream)>>,
    waiting: RefCell<FastMap<u32, Stream>>,
    /// The request that got the last local reply: a paused request that did not is waiting.
    answered: Cell<u32>,
    /// Native RS*/ES* verification, once it passed the self-test (RustCrypto otherwise).
    crypto: Option<NativeCrypto>,
    /// Callouts in flight: Envoy's (context id, callout id) → our token → (request, why).
    tokens: RefCell<FastMap<(u32, u64), u32>>,
    callouts: RefCell<FastMap<u32, (u32, Callout)>>,
    next_token: Cell<u32>,
}

impl HostState {
    fn new(envoy: EnvoyConfig, shared: Option<Arc<Shared>>) -> HostState {
        HostState {
            metrics: RefCell::new(shared.as_ref().map(|s| s.metrics.clone()).unwrap_or_default()),
            main: shared.is_none(),
            crypto: shared.as_ref().map_or_else(native_crypto, |s| s.crypto.then_some(NativeCrypto)),
            shared: shared.map(OnceCell::from).unwrap_or_default(),
            envoy,
            current: Cell::new(None),
            foreground: Cell::new(None),
            waiting: RefCell::default(),
            answered: Cell::new(0),
            tokens: RefCell::default(),
            callouts: RefCell::default(),
            next_token: Cell::new(1),
        }
    }

    /// Sends a callout from the current request's stream; on the main thread, from the
    /// configuration. Its answer comes to that stream's (or the configuration's) hook.
    fn dispatch(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, String> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let body = body.unwrap_or_default();
        let (context_id, sent) = match self.current.get() {
            Some((context_id, stream)) => (context_id, stream.callout(cluster, &headers, body, timeout_ms)),
            None if self.main => (0, self.envoy.0.callout(cluster, &headers, body, timeout_ms)),
            None => return Err("the request is gone".into()),
        };
        let id = sent.map_err(|code| {
            let why = match code {
                abi::CALLOUT_INIT_MISSING_REQUIRED_HEADERS => "missing required headers",
                abi::CALLOUT_INIT_CLUSTER_NOT_FOUND => "no such cluster",
                abi::CALLOUT_INIT_DUPLICATE_CALLOUT_ID => "duplicate callout id",
                _ => "cannot create the request (no healthy host?)",
            };
            format!("Envoy refused the callout: {why} (code {code})")
        })?;
        let token = self.next_token.get();
        self.next_token.set(token.wrapping_add(1).max(1));
        self.tokens.borrow_mut().insert((context_id, id), token);
        Ok(token)
    }

    fn record(&self, token: u32, context_id: u32, callout: Callout) {
        self.callouts.borrow_mut().insert(token, (context_id, callout));
    }

    /// The callout an answer from `context_id`'s stream (0: the configuration) with Envoy's `id` is for.
    fn take_callout(&self, context_id: u32, id: u64) -> Option<(u32, Callout)> {
        let token = self.tokens.borrow_mut().remove(&(context_id, id))?;
        self.callouts.borrow_mut().remove(&token)
    }

    /// The stream of request `context_id`, if the engine may act on it.
    fn stream(&self, context_id: u32) -> Option<Stream> {
        match self.foreground.get() {
            Some((id, stream)) if id == context_id => Some(stream),
            _ => self.waiting.borrow().get(&context_id).copied(),
        }
    }

    fn metric(&self, id: u32) -> Option<(MetricKind, usize)> {
        self.metrics.borrow().get(id as usize).map(|m| (m.kind, m.id))
    }
}

/// The engine's host on one thread.
struct ModuleHost(Rc<HostState>);

impl engine::Host for ModuleHost {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        let stream = self.0.stream(context_id);
        self.0.current.set(stream.map(|s| (context_id, s)));
        stream.is_some()
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        if let Some((_, stream)) = self.0.current.get() {
            stream.set_header(name, value);
        }
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) {
        if let Some((context_id, stream)) = self.0.current.get() {
            self.0.answered.set(context_id);
            stream.send_response(status, headers, body.unwrap_or_default(), "jwtguard");
        }
    }

    fn resume_request(&self) {
        if let Some((_, stream)) = self.0.current.get() {
            stream.continue_decoding();
        }
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match lock(&SHARED_DATA).get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        let mut data = lock(&SHARED_DATA);
        let version = data.get(key).map_or(0, |(_, v)| *v);
        if cas.is_some_and(|c| c != version) {
            return false;
        }
        data.insert(key.to_string(), (value.to_vec(), version.wrapping_add(1).max(1)));
        true
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut metrics = self.0.metrics.borrow_mut();
        if !self.0.main {
            return metrics.iter().position(|m| m.name == name && m.kind == kind).map(|i| i as u32);
        }
        let envoy = self.0.envoy.0;
        let id = match kind {
            MetricKind::Counter => envoy.define_counter(name, &[]).map(|c| c.0),
            MetricKind::Gauge => envoy.define_gauge(name, &[]).map(|g| g.0),
            MetricKind::Histogram => envoy.define_histogram(name, &[]).map(|h| h.0),
        };
        match id {
            Ok(id) => {
                metrics.push(Metric { name: name.to_string(), kind, id });
                u32::try_from(metrics.len() - 1).ok()
            }
            Err(code) => {
                error!("jwtguard: Envoy refused to define the stat {name} (code {code})");
                None
            }
        }
    }

    /// A worker's counts (every request's) add up in `Counts`; the main engine's (rare: fetches,
    /// feed events) go to Envoy at once, so that `add_metric_now` means now.
    fn increment_metric(&self, id: u32, by: u64) {
        if self.0.main {
            if let Some((MetricKind::Counter, envoy_id)) = self.0.metric(id) {
                self.0.envoy.0.increment(host::Counter(envoy_id), &[], by);
            }
        } else if let Some(shared) = self.0.shared.get() {
            shared.counts.add(id, by);
        }
    }

    fn record_metric(&self, id: u32, value: u64) {
        let Some((kind, id)) = self.0.metric(id) else { return };
        // The one histogram (revocation.callout_ms) is recorded on the stream it timed.
        match (kind, self.0.current.get()) {
            (MetricKind::Histogram, Some((_, stream))) => stream.record(host::Histogram(id), &[], value),
            (MetricKind::Histogram, None) => false,
            (_, Some((_, stream))) => stream.set_gauge(host::Gauge(id), &[], value),
            (_, None) if self.0.main => self.0.envoy.0.set_gauge(host::Gauge(id), &[], value),
            (_, None) => false,
        };
    }

    /// Counts leave the engine at once (see `increment_metric`).
    fn counter_flush_ms(&self) -> u64 {
        0
    }

    fn crypto(&self) -> Option<&dyn HostCrypto> {
        self.0.crypto.as_ref().map(|c| c as &dyn HostCrypto)
    }

    fn writes_dynamic_metadata(&self) -> bool {
        true
    }

    fn set_payload_metadata(&self, key: &str, payload: &jwtguard::metadata::Payload) -> bool {
        let (Some((_, stream)), Some(bytes)) = (self.0.current.get(), metadata::payload_struct(key, payload)) else {
            return false;
        };
        stream.set_metadata_struct(metadata::JWT_AUTHN_NAMESPACE, &bytes);
        true
    }

    fn wake_parked(&self) {
        if let Some(shared) = self.0.shared.get() {
            shared.parked.wake();
        }
    }
}

/// One thread's engine for one configuration, and its host's state.
struct Local {
    engine: Engine,
    state: Rc<HostState>,
    /// The request headers the core reads, filled anew for each request in place: after the
    /// first requests, reading them allocates nothing.
    headers: RefCell<Vec<(String, String)>>,
}

impl Local {
    /// `shared`: `None` for the main thread's engine. `feed`: the revocation set to use, `None`
    /// to make one (when the configuration has a feed).
    fn new(
        config: Config,
        envoy: EnvoyConfig,
        shared: Option<Arc<Shared>>,
        feed: Option<Arc<Feed>>,
    ) -> Result<Local, String> {
        let background = shared.is_none();
        let state = Rc::new(HostState::new(envoy, shared));
        let engine = Engine::new(config, Box::new(ModuleHost(state.clone())), background, feed)?;
        Ok(Local { engine, state, headers: RefCell::default() })
    }

    /// Makes the hook's request current: `hook` is its context id and stream, `None` on the
    /// main thread (the configuration's hooks).
    fn enter(&self, hook: Option<(u32, Stream)>) {
        self.state.foreground.set(hook);
        self.state.current.set(hook);
    }

    /// Runs the engine's tick in `hook`'s hook (see `enter`).
    fn tick(&self, hook: Option<(u32, Stream)>) {
        let state = &self.state;
        self.enter(hook);
        let dispatch = |c: &str, h: Vec<(&str, &str)>, b: Option<&[u8]>, t| state.dispatch(c, h, b, t);
        self.engine.tick(&dispatch, &mut |token, ctx, callout| state.record(token, ctx, callout));
        self.engine.flush_stats();
    }

    /// An answer to a callout sent from `hook`'s stream (`None`: the configuration).
    fn on_callout_done(&self, hook: Option<(u32, Stream)>, id: u64, status: Option<u16>, body: Option<&[u8]>) {
        let state = &self.state;
        self.enter(hook);
        let Some((request, callout)) = state.take_callout(hook.map_or(0, |(context_id, _)| context_id), id) else {
            return;
        };
        let dispatch = |c: &str, h: Vec<(&str, &str)>, b: Option<&[u8]>, t| state.dispatch(c, h, b, t);
        self.engine.on_callout(callout, request, status, body, &dispatch, &mut |token, ctx, callout| {
            state.record(token, ctx, callout)
        });
        self.engine.flush_stats();
    }
}

/// The configuration, its namespace (the prefix of its shared data) made from the SHA-256 of
/// its bytes. The core names it with FNV-1a, which the .wasm's size budget keeps; in one Envoy
/// process, where tenants may write their own configurations (Envoy Gateway), that is no barrier
/// to one made to share another's key sets and revocation answers.
fn parse_config(json: &[u8]) -> Result<Config, jwtguard::config::ConfigError> {
    let mut config = Config::parse(json)?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, json);
    config.namespace = digest.as_ref().iter().take(16).map(|b| format!("{b:02x}")).collect();
    Ok(config)
}

/// Native crypto if it verifies the known answer right (as Envoy's is checked in wasm).
fn native_crypto() -> Option<NativeCrypto> {
    let passed = host_crypto::self_test(&NativeCrypto);
    if !passed {
        log::warn!("jwtguard: native crypto failed its self-test; RS*/ES* verify in RustCrypto (slower)");
    }
    passed.then_some(NativeCrypto)
}

/// The request headers the core reads: the pseudo-headers of the path and method (rules,
/// logout), every provider's token sources (`cookie` for cookie sources), and every header the
/// filter writes (a client's copy is removed). Nothing else decides anything.
fn request_headers(config: &Config) -> Vec<String> {
    let mut names = vec![":method".to_string(), ":path".to_string()];
    for p in &config.providers {
        names.extend(p.sources.headers.iter().map(|h| h.name.clone()));
        if !p.sources.cookies.is_empty() {
            names.push("cookie".into());
        }
    }
    names.extend(config.output_headers.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

thread_local! {
    /// This thread's engines, one per configuration.
    static LOCALS: RefCell<Vec<(Arc<Shared>, Rc<Local>)>> = const { RefCell::new(Vec::new()) };
}

/// This thread's engine for `shared`, made on first use. Making one drops this thread's engines
/// of configurations Envoy has destroyed (replaced by a listener update): their streams are gone,
/// and each holds its caches and key sets.
fn local_for(shared: &Arc<Shared>) -> Option<Rc<Local>> {
    LOCALS.with(|locals| {
        let mut locals = locals.borrow_mut();
        if let Some((_, local)) = locals.iter().find(|(s, _)| Arc::ptr_eq(s, shared)) {
            return Some(local.clone());
        }
        locals.retain(|(s, _)| !s.destroyed.load(Relaxed));
        // The main thread parsed the same bytes before; it cannot fail here.
        let config = parse_config(&shared.json).ok()?;
        let local = Rc::new(Local::new(config, shared.envoy, Some(shared.clone()), shared.feed.clone()).ok()?);
        locals.push((shared.clone(), local.clone()));
        Some(local)
    })
}

/// One `filter_config` of the `envoy.filters.http.dynamic_modules` filter.
pub struct FilterConfig {
    shared: Arc<Shared>,
    /// The main thread's engine (background work); only touched on the main thread.
    main: Rc<Local>,
    ticker: Option<Ticker>,
    /// The main thread, which made it and is the only one that may destroy it (the main engine is
    /// that thread's, and the ticker's scheduler is deleted there).
    made_on: std::thread::ThreadId,
}

// SAFETY: `main` is used only in the configuration's hooks, which Envoy runs on the main thread;
// workers use `shared`, which is `Sync`.
unsafe impl Send for FilterConfig {}
unsafe impl Sync for FilterConfig {}

impl FilterConfig {
    /// Parses `json`, the same configuration as the wasm build's plugin configuration. `None`
    /// (Envoy then refuses the configuration) after logging why.
    pub fn new(envoy: host::ConfigHandle, json: &[u8]) -> Option<FilterConfig> {
        let config = match parse_config(json) {
            Ok(config) => config,
            Err(e) => {
                error!("jwtguard: {e}");
                return None;
            }
        };
        log::info!("jwtguard: {}", config.summary());
        let request_headers = request_headers(&config);
        let envoy = EnvoyConfig(envoy);
        let namespace = config.namespace.clone();
        let main = match Local::new(config, envoy, None, live_feed(&namespace)) {
            Ok(main) => main,
            Err(e) => {
                error!("jwtguard: {e}");
                return None;
            }
        };
        let shared = Arc::new(Shared {
            json: json.to_vec(),
            request_headers,
            envoy,
            metrics: main.state.metrics.borrow().clone(),
            counts: Counts::new(main.state.metrics.borrow().len()),
            feed: main.engine.feed.clone(),
            parked: Parked::default(),
            crypto: main.state.crypto.is_some(),
            destroyed: AtomicBool::new(false),
        });
        let _ = main.state.shared.set(shared.clone());
        // `envoy --mode validate` loads the configuration only: no thread, no callout.
        let ticker = match host::is_validation_mode() {
            true => None,
            false => Some(Ticker::start(&shared, envoy.0.scheduler(), main.engine.tick_ms())?),
        };
        hold_namespace(&namespace, main.engine.feed.as_ref());
        let main = Rc::new(main);
        Some(FilterConfig { shared, main, ticker, made_on: std::thread::current().id() })
    }

    /// The filter of the stream `stream`, which lives until the filter is destroyed.
    pub fn new_filter(&self, stream: Stream) -> Option<Filter> {
        let local = local_for(&self.shared)?;
        let context_id = NEXT_CONTEXT.fetch_add(1, Relaxed).max(1);
        Some(Filter { local, context_id, stream, parked: Cell::new(None) })
    }

    /// The ticker's turn on the main thread.
    pub fn on_scheduled(&self) {
        self.main.tick(None);
        self.shared.counts.flush(&self.shared.metrics, self.shared.envoy.0);
    }

    pub fn on_callout_done(&self, id: u64, status: Option<u16>, body: Option<&[u8]>) {
        self.main.on_callout_done(None, id, status, body);
    }
}

impl Drop for FilterConfig {
    fn drop(&mut self) {
        if std::thread::current().id() != self.made_on {
            error!("jwtguard: Envoy destroyed a configuration off the main thread, which this module assumes it never does");
        }
        // The ticker stops before the schedulers it commits to are deleted.
        if let Some(ticker) = self.ticker.take() {
            ticker.stop();
        }
        lock(&self.shared.parked.0).clear();
        // Envoy cancels this configuration's callouts without an answer: a feed poll among them
        // must not keep a configuration that shares the set from polling.
        let polling = self.main.state.callouts.borrow().values().any(|(_, c)| matches!(c, Callout::Feed { .. }));
        if let (true, Some(feed)) = (polling, &self.shared.feed) {
            feed.abandon_poll();
        }
        // Envoy destroys the configuration after its streams and before its stats.
        self.shared.counts.flush(&self.shared.metrics, self.shared.envoy.0);
        self.shared.destroyed.store(true, Relaxed);
        release_namespace(&self.main.engine.namespace);
        log::debug!("jwtguard: configuration {} destroyed", self.main.engine.namespace);
    }
}

/// One HTTP stream.
pub struct Filter {
    local: Rc<Local>,
    context_id: u32,
    stream: Stream,
    /// The worker it is parked on in `Shared::parked` (and `waiting` in its `HostState`), if it
    /// is.
    parked: Cell<Option<u32>>,
}

impl Filter {
    fn shared(&self) -> Option<&Arc<Shared>> {
        self.local.state.shared.get()
    }

    /// `None` when the request cannot be judged at all (the caller answers 500).
    pub fn on_request_headers(&self, end_of_stream: bool) -> Option<abi::HeadersStatus> {
        let stream = self.stream;
        self.local.enter(Some((self.context_id, stream)));
        let state = &self.local.state;
        let dispatch = |c: &str, h: Vec<(&str, &str)>, b: Option<&[u8]>, t| state.dispatch(c, h, b, t);
        let engine = &self.local.engine;
        engine.sync_keys_if_due();
        state.answered.set(0);
        // Only this hook fills it; settling other requests inside it runs no request-headers hook
        // of this configuration. Were it ever re-entered, the inner request gets the 500.
        let mut headers = self.local.headers.try_borrow_mut().ok()?;
        match self.shared() {
            Some(shared) => stream.headers_named(&shared.request_headers, &mut headers),
            None => headers.clear(),
        }
        if headers.is_empty() {
            // No path, no method: nothing can be judged. Refused, as the wasm build refuses a
            // request whose headers it cannot read, rather than let through unchecked.
            engine.deny(jwtguard::reason::Reason::Malformed, None);
            self.local.engine.flush_stats();
            return Some(abi::HEADERS_STOP_ITERATION);
        }
        let (action, callout) = engine.handle(self.context_id, false, &headers, None, &dispatch);
        drop(headers);
        if let Some((token, callout)) = callout {
            state.record(token, self.context_id, callout);
        }
        self.local.engine.flush_stats();
        Some(match action {
            Action::Continue => abi::HEADERS_CONTINUE,
            Action::Pause if state.answered.get() == self.context_id => abi::HEADERS_STOP_ITERATION,
            Action::Pause => {
                // A request with a body must be held whole: with plain StopIteration Envoy
                // forwards the body (and with it the request) before the answer comes. With
                // flow control, not buffering: a buffered body over the connection's buffer
                // limit would get Envoy's 413 while it waits.
                self.park();
                if end_of_stream {
                    abi::HEADERS_STOP_ITERATION
                } else {
                    abi::HEADERS_STOP_ALL_ITERATION_AND_WATERMARK
                }
            }
        })
    }

    /// Makes the waiting stream reachable by the engine, the ticker and wakes.
    fn park(&self) {
        if let Some(shared) = self.shared() {
            if self.parked.get().is_none() {
                let worker = self.stream.worker_index();
                self.parked.set(Some(worker));
                self.local.state.waiting.borrow_mut().insert(self.context_id, self.stream);
                shared.parked.insert(worker, self.context_id, self.stream.scheduler());
            }
        }
    }

    /// The answer to a callout this stream sent. `status` is `None` when the callout failed.
    pub fn on_callout_done(&self, id: u64, status: Option<u16>, body: Option<&[u8]>) {
        self.local.on_callout_done(Some((self.context_id, self.stream)), id, status, body);
    }

    /// The ticker's or a wake's turn on this worker.
    pub fn on_scheduled(&self) {
        self.local.tick(Some((self.context_id, self.stream)));
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        let state = &self.local.state;
        // Envoy cancels the stream's callouts: their answers never come, so neither does the
        // hook that would take their records. Only a parked stream has any: a request that
        // sends a callout waits for its answer.
        if self.parked.get().is_some() {
            let mut callouts = state.callouts.borrow_mut();
            state.tokens.borrow_mut().retain(|(context_id, _), token| {
                let mine = *context_id == self.context_id;
                if mine {
                    callouts.remove(token);
                }
                !mine
            });
        }
        for slot in [&state.current, &state.foreground] {
            if slot.get().is_some_and(|(id, _)| id == self.context_id) {
                slot.set(None);
            }
        }
        if let Some(worker) = self.parked.get() {
            self.local.engine.request_gone(self.context_id);
            state.waiting.borrow_mut().remove(&self.context_id);
            if let Some(shared) = self.shared() {
                shared.parked.remove(worker, self.context_id);
            }
        }
    }
}

/// A thread that runs the engines' ticks: the main engine's through the configuration's
/// scheduler, each worker's through one of its parked streams.
struct Ticker {
    stop: Arc<AtomicBool>,
    /// Gives the configuration's scheduler back, to be deleted on the main thread.
    thread: JoinHandle<Scheduler>,
}

impl Ticker {
    /// None if the thread cannot be made (the error is logged).
    fn start(shared: &Arc<Shared>, main: Scheduler, period_ms: u64) -> Option<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, shared) = (stop.clone(), shared.clone());
        let thread = std::thread::Builder::new().name("jwtguard-ticker".into()).spawn(move || {
            while !flag.load(Relaxed) {
                std::thread::park_timeout(Duration::from_millis(period_ms));
                if flag.load(Relaxed) {
                    break;
                }
                main.commit(0);
                shared.parked.wake();
            }
            main
        });
        match thread {
            Ok(thread) => Some(Ticker { stop, thread }),
            Err(e) => {
                error!("jwtguard: cannot start the module's ticker thread: {e}");
                None
            }
        }
    }

    fn stop(self) {
        self.stop.store(true, Relaxed);
        self.thread.thread().unpark();
        drop(self.thread.join());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_namespace_is_the_configurations_sha256() {
        let json = br#"{"providers": {"p": {"hmac_secrets": [{"secret": "0123456789abcdef0123456789abcdef"}]}}}"#;
        let config = parse_config(json).expect("config");
        // The first 16 octets, as `printf '%s' "$json" | sha256sum` prints them.
        assert_eq!(config.namespace, "906ab610c09e59ac0ff357a756db985b");
        assert_ne!(Config::parse(json).expect("config").namespace, config.namespace, "the core's is FNV-1a");
    }

    #[test]
    fn the_last_configuration_of_a_namespace_takes_its_shared_data() {
        let put = |key: &str| lock(&SHARED_DATA).insert(key.to_string(), (vec![1], 1));
        let has = |key: &str| lock(&SHARED_DATA).contains_key(key);
        hold_namespace("t1", None);
        hold_namespace("t1", None);
        hold_namespace("t10", None);
        for key in ["jwtguard.t1.jwks.p", "jwtguard.t1.rev.7", "jwtguard.t10.jwks.p"] {
            put(key);
        }
        release_namespace("t1");
        assert!(has("jwtguard.t1.jwks.p"), "an identical configuration still uses it");
        release_namespace("t1");
        assert!(!has("jwtguard.t1.jwks.p") && !has("jwtguard.t1.rev.7"));
        assert!(has("jwtguard.t10.jwks.p"), "another namespace's data stays, though its name starts alike");
        release_namespace("t1"); // no users left: nothing to do
        release_namespace("t10");
        assert!(!has("jwtguard.t10.jwks.p"));
    }

    /// A configuration made while another with its bytes lives takes its revocation set; once
    /// the last one is destroyed, the set is not taken up again, though workers' engines of the
    /// destroyed configuration may still hold it.
    #[test]
    fn only_a_live_configuration_shares_its_revocation_set() {
        let feed = |ns: &str| {
            let cfg = jwtguard::feed::FeedConfig {
                path: "/v1/feed".into(),
                max_staleness_ms: 30_000,
                wait_for_set_ms: 2_000,
                max_entries: 10,
            };
            Arc::new(Feed::new(cfg, ns, 0))
        };
        let (first, other) = (feed("t2"), feed("t3"));
        hold_namespace("t2", Some(&first));
        hold_namespace("t3", Some(&other));
        assert!(live_feed("t2").is_some_and(|f| Arc::ptr_eq(&f, &first)));
        hold_namespace("t2", Some(&first)); // a listener update with the same bytes
        release_namespace("t2"); // the old configuration goes
        assert!(live_feed("t2").is_some_and(|f| Arc::ptr_eq(&f, &first)), "the update keeps it");
        release_namespace("t2");
        let _held_by_a_worker = first.clone();
        assert!(live_feed("t2").is_none(), "the listener was removed: a new one starts afresh");
        assert!(live_feed("t3").is_some_and(|f| Arc::ptr_eq(&f, &other)));
        release_namespace("t3");
    }
}
