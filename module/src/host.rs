//! A small safe layer over `abi`: a handle on one HTTP stream (`Stream`), one on a filter
//! configuration (`Config`), schedulers, metrics and logging.
//!
//! Buffers Envoy hands over are valid only until the next setter call or the end of the hook,
//! so everything read here is copied before it is returned. A NULL pointer with length 0 is
//! read as empty. Nothing here panics on what Envoy returns.

use crate::abi::{self, EnvoyBuffer, HttpHeader, ModuleBuffer};
use jwtguard::header_map;
use std::ffi::CStr;

/// The callback among `abi::CALLBACKS` that this Envoy does not export, if any.
pub fn missing_callback() -> Option<&'static CStr> {
    // SAFETY: each name is NUL-terminated; RTLD_DEFAULT looks in the process, Envoy included.
    abi::CALLBACKS.iter().copied().find(|name| unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }.is_null())
}

/// True under `envoy --mode validate`, where the module must start no thread and no callout.
/// Main thread only.
pub fn is_validation_mode() -> bool {
    // SAFETY: no arguments.
    unsafe { abi::envoy_dynamic_module_callback_is_validation_mode() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl Level {
    fn abi(self) -> abi::LogLevel {
        match self {
            Level::Trace => abi::LOG_TRACE,
            Level::Debug => abi::LOG_DEBUG,
            Level::Info => abi::LOG_INFO,
            Level::Warn => abi::LOG_WARN,
            Level::Error => abi::LOG_ERROR,
            Level::Critical => abi::LOG_CRITICAL,
        }
    }
}

/// Whether Envoy's `dynamic_modules` log component writes `level`: checked before formatting.
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: a plain integer argument.
    unsafe { abi::envoy_dynamic_module_callback_log_enabled(level.abi()) }
}

/// Writes `message` to Envoy's log as coming from `file:line`. Use `envoy_log!`.
pub fn log(level: Level, message: &str, file: &str, line: u32) {
    // SAFETY: both buffers outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_log_v2(
            level.abi(),
            ModuleBuffer::new(message.as_bytes()),
            ModuleBuffer::new(file.as_bytes()),
            line,
        )
    }
}

/// The `log` facade onto Envoy's log (component `dynamic_modules`), so the core's log lines
/// reach it as the wasm build's do.
pub struct EnvoyLogger;

impl EnvoyLogger {
    fn level(level: log::Level) -> Level {
        match level {
            log::Level::Error => Level::Error,
            log::Level::Warn => Level::Warn,
            log::Level::Info => Level::Info,
            log::Level::Debug => Level::Debug,
            log::Level::Trace => Level::Trace,
        }
    }
}

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        log_enabled(Self::level(metadata.level()))
    }

    fn log(&self, record: &log::Record) {
        let level = Self::level(record.level());
        if log_enabled(level) {
            log(level, &record.args().to_string(), record.file().unwrap_or(""), record.line().unwrap_or(0));
        }
    }

    fn flush(&self) {}
}

/// A counter, gauge or histogram defined in `on_http_filter_config_new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter(pub usize);
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauge(pub usize);
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram(pub usize);

/// Envoy's filter of one HTTP stream (`filter_envoy_ptr`). Valid during the hook it was passed
/// to; hooks of one stream all run on its worker thread, so this is neither `Send` nor `Sync`.
#[derive(Clone, Copy, Debug)]
pub struct Stream(abi::FilterEnvoyPtr);

impl Stream {
    /// # Safety
    /// `ptr` must be the `filter_envoy_ptr` Envoy passed to the running hook.
    pub unsafe fn new(ptr: abi::FilterEnvoyPtr) -> Stream {
        Stream(ptr)
    }

    /// Every value of each request header in `names` (lower case, as Envoy keeps names), copied
    /// into `out` (replacing what it held), in the request's order, a repeated header as one pair per value; none if Envoy has no request headers for
    /// this stream. A value that is not UTF-8 (HTTP allows obs-text) is decoded lossily, as the
    /// wasm build does (`header_map::text`): never dropped, so a client-sent identity header is
    /// still seen and stripped, and never a valid token. All headers in two calls, then matched
    /// here: a lookup by name costs Envoy a lower-cased copy of the name, ≈ 0.2 µs a header.
    pub fn headers_named(&self, names: &[String], out: &mut Vec<(String, String)>) {
        // SAFETY: a live stream.
        let count = unsafe { abi::envoy_dynamic_module_callback_http_get_headers_size(self.0, abi::REQUEST_HEADER) };
        // A request's few headers fit on the stack; more go to the heap.
        let (mut stack, mut heap) = ([HttpHeader::EMPTY; 32], Vec::new());
        let all = match stack.get_mut(..count) {
            Some(all) => all,
            None => {
                heap.resize(count, HttpHeader::EMPTY);
                &mut heap[..]
            }
        };
        // SAFETY: a live stream; `all` has room for the `count` headers Envoy writes (nothing
        // runs on this stream between the two calls).
        if count == 0
            || !unsafe {
                abi::envoy_dynamic_module_callback_http_get_headers(self.0, abi::REQUEST_HEADER, all.as_mut_ptr())
            }
        {
            out.clear();
            return;
        }
        // `out`'s strings are reused: their room stays from one request to the next.
        let mut used = 0;
        for header in all.iter() {
            // SAFETY: Envoy's buffers, valid until a setter runs or the hook returns; the wanted
            // ones are copied here, before either.
            let (name, value) = unsafe { header.as_bytes() };
            let Some(wanted) = names.iter().find(|n| n.as_bytes() == name) else { continue };
            if out.len() == used {
                out.push(Default::default());
            }
            if let Some((n, v)) = out.get_mut(used) {
                n.clear();
                n.push_str(wanted);
                v.clear();
                header_map::push_text(v, value);
                used += 1;
            }
        }
        out.truncate(used);
    }

    /// Replaces every value of request header `name` with `value`; `None` removes the header.
    /// False if Envoy has no request headers for this stream any more.
    pub fn set_header(&self, name: &str, value: Option<&str>) -> bool {
        let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::new(v.as_bytes()));
        // SAFETY: a live stream; both buffers outlive the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::REQUEST_HEADER,
                ModuleBuffer::new(name.as_bytes()),
                value,
            )
        }
    }

    /// Answers the request locally. `details` (no spaces) is `%RESPONSE_CODE_DETAILS%` in access
    /// logs.
    pub fn send_response(&self, status: u32, headers: &[(&str, &str)], body: &[u8], details: &str) {
        let mut headers = module_headers(headers);
        // SAFETY: a live stream; `headers`, `body` and `details` outlive the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                headers.as_mut_ptr(),
                headers.len(),
                ModuleBuffer::new(body),
                ModuleBuffer::new(details.as_bytes()),
            )
        }
    }

    /// Resumes a request stopped in `on_http_filter_request_headers`. Runs later filters, and
    /// possibly this filter's response hooks, before it returns.
    pub fn continue_decoding(&self) {
        // SAFETY: a live stream.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.0) }
    }

    /// Starts an HTTP request to `cluster`; `headers` must include `:method`, `:path` and `host`.
    /// The answer arrives in `on_http_filter_http_callout_done` with the returned id; `Err` is
    /// Envoy's `abi::CALLOUT_INIT_*` reason.
    pub fn callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, abi::CalloutInitResult> {
        // SAFETY: a live stream; the arguments outlive the call and `id` is written at most once.
        callout(
            |id, cluster, headers, n, body| unsafe {
                abi::envoy_dynamic_module_callback_http_filter_http_callout(
                    self.0, id, cluster, headers, n, body, timeout_ms,
                )
            },
            cluster,
            headers,
            body,
        )
    }

    /// A scheduler whose commits run `on_http_filter_scheduled` on this stream's worker. Commits
    /// to it after the stream has ended do nothing.
    pub fn scheduler(&self) -> Scheduler {
        Scheduler {
            // SAFETY: a live stream.
            ptr: unsafe { abi::envoy_dynamic_module_callback_http_filter_scheduler_new(self.0) },
            commit: abi::envoy_dynamic_module_callback_http_filter_scheduler_commit,
            delete: abi::envoy_dynamic_module_callback_http_filter_scheduler_delete,
        }
    }

    /// Merges a serialized `google.protobuf.Struct` into the stream's dynamic metadata `ns`.
    pub fn set_metadata_struct(&self, ns: &str, serialized: &[u8]) {
        // SAFETY: a live stream; both buffers outlive the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_dynamic_metadata_struct(
                self.0,
                ModuleBuffer::new(ns.as_bytes()),
                ModuleBuffer::new(serialized),
            )
        }
    }

    /// Which worker runs this stream: 0 to concurrency - 1.
    pub fn worker_index(&self) -> u32 {
        // SAFETY: a live stream.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_get_worker_index(self.0) }
    }

    /// Sets `gauge` with one value per label it was defined with; false if Envoy refused
    /// (unknown metric, wrong number of labels).
    pub fn set_gauge(&self, gauge: Gauge, labels: &[&str], value: u64) -> bool {
        // SAFETY: a live stream; the label buffers outlive the call.
        metric(labels, |values, n| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_set_gauge(self.0, gauge.0, values, n, value)
        })
    }

    pub fn record(&self, histogram: Histogram, labels: &[&str], value: u64) -> bool {
        // SAFETY: as `set_gauge`.
        metric(labels, |values, n| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(self.0, histogram.0, values, n, value)
        })
    }
}

/// Envoy's filter configuration (`filter_config_envoy_ptr`). Valid during the config hook it
/// was passed to. Those run on the main thread, the only thread allowed to use it.
#[derive(Clone, Copy, Debug)]
pub struct ConfigHandle(abi::FilterConfigEnvoyPtr);

impl ConfigHandle {
    /// # Safety
    /// `ptr` must be the `filter_config_envoy_ptr` Envoy passed to the running config hook.
    pub unsafe fn new(ptr: abi::FilterConfigEnvoyPtr) -> ConfigHandle {
        ConfigHandle(ptr)
    }

    /// Defines a counter named `name` (`<metrics_namespace>.<name>` in Envoy's stats) with these
    /// label names. Only inside `on_http_filter_config_new`: later, Envoy answers
    /// `abi::METRICS_FROZEN`.
    pub fn define_counter(&self, name: &str, labels: &[&str]) -> Result<Counter, abi::MetricsResult> {
        // SAFETY: a live config; the buffers outlive the call and `id` is a valid out-pointer.
        define(name, labels, |name, labels, n, id| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(self.0, name, labels, n, id)
        })
        .map(Counter)
    }

    pub fn define_gauge(&self, name: &str, labels: &[&str]) -> Result<Gauge, abi::MetricsResult> {
        // SAFETY: as `define_counter`.
        define(name, labels, |name, labels, n, id| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_gauge(self.0, name, labels, n, id)
        })
        .map(Gauge)
    }

    pub fn define_histogram(&self, name: &str, labels: &[&str]) -> Result<Histogram, abi::MetricsResult> {
        // SAFETY: as `define_counter`.
        define(name, labels, |name, labels, n, id| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_histogram(self.0, name, labels, n, id)
        })
        .map(Histogram)
    }

    /// Adds `by` to `counter` with one value per label it was defined with; false if Envoy
    /// refused (unknown metric, wrong number of labels).
    pub fn increment(&self, counter: Counter, labels: &[&str], by: u64) -> bool {
        // SAFETY: a live config; the label buffers outlive the call.
        metric(labels, |values, n| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(self.0, counter.0, values, n, by)
        })
    }

    /// As `Stream::set_gauge`, outside any stream.
    pub fn set_gauge(&self, gauge: Gauge, labels: &[&str], value: u64) -> bool {
        // SAFETY: as `increment`.
        metric(labels, |values, n| unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_set_gauge(self.0, gauge.0, values, n, value)
        })
    }

    /// As `Stream::callout`; the answer arrives in `on_http_filter_config_http_callout_done` on
    /// the main thread.
    pub fn callout(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u64, abi::CalloutInitResult> {
        // SAFETY: a live config; the arguments outlive the call and `id` is written at most once.
        callout(
            |id, cluster, headers, n, body| unsafe {
                abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                    self.0, id, cluster, headers, n, body, timeout_ms,
                )
            },
            cluster,
            headers,
            body,
        )
    }

    /// A scheduler whose commits run `on_http_filter_config_scheduled` on the main thread: how a
    /// thread of the module gets work done there (HTTP filters have no timer in Envoy 1.40).
    pub fn scheduler(&self) -> Scheduler {
        Scheduler {
            // SAFETY: a live config.
            ptr: unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) },
            commit: abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit,
            delete: abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete,
        }
    }
}

/// A stream's or a config's scheduler, deleted on drop. `commit` is safe from any thread, and a
/// no-op once the stream or config has gone. A thread that commits must stop before the config
/// it belongs to is destroyed (and the module unloaded).
#[derive(Debug)]
pub struct Scheduler {
    ptr: abi::SchedulerPtr,
    commit: unsafe extern "C" fn(abi::SchedulerPtr, u64),
    delete: unsafe extern "C" fn(abi::SchedulerPtr),
}

// SAFETY: Envoy's commit posts to the owner's dispatcher and may be called from any thread;
// delete runs once, from whichever thread drops the last owner, never during a commit.
unsafe impl Send for Scheduler {}
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// Asks Envoy to run the owner's `scheduled` hook with `event_id`.
    pub fn commit(&self, event_id: u64) {
        if !self.ptr.is_null() {
            // SAFETY: a scheduler Envoy created and that is not deleted yet.
            unsafe { (self.commit)(self.ptr, event_id) }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // SAFETY: as `commit`; it is deleted once.
            unsafe { (self.delete)(self.ptr) }
        }
    }
}

fn module_headers(headers: &[(&str, &str)]) -> Vec<HttpHeader> {
    headers.iter().map(|(name, value)| HttpHeader::new(name.as_bytes(), value.as_bytes())).collect()
}

/// Calls `f` with `values` as Envoy's buffers (NULL when there are none).
fn with_buffers<T>(values: &[&str], f: impl FnOnce(*mut ModuleBuffer, usize) -> T) -> T {
    let mut buffers: Vec<ModuleBuffer> = values.iter().map(|v| ModuleBuffer::new(v.as_bytes())).collect();
    let ptr = if buffers.is_empty() { std::ptr::null_mut() } else { buffers.as_mut_ptr() };
    f(ptr, buffers.len())
}

/// Runs a metric update; true if Envoy took it.
fn metric(labels: &[&str], update: impl FnOnce(*mut ModuleBuffer, usize) -> abi::MetricsResult) -> bool {
    with_buffers(labels, update) == abi::METRICS_SUCCESS
}

/// Runs a metric definition; the metric's id, or why Envoy refused it.
fn define(
    name: &str,
    labels: &[&str],
    define: impl FnOnce(ModuleBuffer, *mut ModuleBuffer, usize, *mut usize) -> abi::MetricsResult,
) -> Result<usize, abi::MetricsResult> {
    let mut id = 0;
    match with_buffers(labels, |labels, n| define(ModuleBuffer::new(name.as_bytes()), labels, n, &mut id)) {
        abi::METRICS_SUCCESS => Ok(id),
        failed => Err(failed),
    }
}

/// Starts a callout; its id, or why Envoy refused it.
fn callout(
    start: impl FnOnce(*mut u64, ModuleBuffer, *mut HttpHeader, usize, ModuleBuffer) -> abi::CalloutInitResult,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<u64, abi::CalloutInitResult> {
    let mut headers = module_headers(headers);
    let mut id = 0;
    let cluster = ModuleBuffer::new(cluster.as_bytes());
    match start(&mut id, cluster, headers.as_mut_ptr(), headers.len(), ModuleBuffer::new(body)) {
        abi::CALLOUT_INIT_SUCCESS => Ok(id),
        failed => Err(failed),
    }
}

/// The largest callout answer body read (a key set, a feed page): the wasm build's bound.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// The `:status` and body of a callout's answer, copied; `(None, None)` when the callout failed
/// (reset, or an answer over Envoy's buffer limit).
///
/// # Safety
/// `headers` and `body_chunks` must be the arrays (or NULL) Envoy passed to the running
/// `*_http_callout_done` hook, with their lengths.
pub unsafe fn callout_answer(
    result: abi::CalloutResult,
    headers: *mut HttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) -> (Option<u16>, Option<Vec<u8>>) {
    if result != abi::CALLOUT_SUCCESS {
        return (None, None);
    }
    let headers: &[HttpHeader] =
        if headers.is_null() { &[] } else { std::slice::from_raw_parts(headers, headers_size) };
    let status = headers.iter().find_map(|h| {
        let (name, value) = h.as_bytes();
        (name == b":status").then(|| std::str::from_utf8(value).ok()?.parse().ok()).flatten()
    });
    let chunks: &[EnvoyBuffer] =
        if body_chunks.is_null() { &[] } else { std::slice::from_raw_parts(body_chunks, body_chunks_size) };
    let mut body = Vec::new();
    for chunk in chunks {
        let bytes = chunk.as_bytes();
        body.extend_from_slice(&bytes[..bytes.len().min(MAX_ANSWER_BYTES.saturating_sub(body.len()))]);
        if body.len() == MAX_ANSWER_BYTES {
            break;
        }
    }
    (status, Some(body))
}
