//! jwtguard as an Envoy dynamic module: the `envoy.filters.http.dynamic_modules` HTTP filter,
//! for Envoy 1.40 only (dynamic modules ABI `v0.2.0`, see `abi`).
//!
//! This file holds the hooks Envoy calls. They unwrap Envoy's pointers and hand over to
//! `filter`. Envoy 1.40 requires the 20 `on_http_filter_*` hooks without `config` in their name,
//! plus `on_program_init`. It resolves `on_http_filter_config_scheduled` and
//! `on_http_filter_config_http_callout_done` only when they are present.
//!
//! Panics: unwinding out of an `extern "C"` function aborts the process (Envoy with it).
//! Release builds use `panic = "abort"` (a workspace-wide profile setting), so nothing on a
//! hook's path may panic. Every hook that runs code still goes through `guard`: in builds that
//! unwind (dev and test profiles), a panic is logged and the hook fails closed.

pub mod abi;
pub mod crypto;
pub mod filter;
pub mod host;
mod rsa;

use abi::{EnvoyBuffer, FilterConfigEnvoyPtr, FilterConfigModulePtr, FilterEnvoyPtr, FilterModulePtr, HttpHeader};
use filter::{Filter, FilterConfig};
use host::Stream;
use std::ffi::c_char;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null;

/// Runs a hook's `body`. If it panics (possible only where panics unwind), logs the panic and
/// returns `fallback()` instead of unwinding into Envoy.
fn guard<T>(hook: &str, fallback: impl FnOnce() -> T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        log::error!("jwtguard: panic in {hook}");
        fallback()
    })
}

/// The module's object behind a pointer we handed Envoy; `None` for NULL.
///
/// # Safety
/// `ptr` must be NULL or come from `Box::into_raw(Box<T>)` and not be destroyed yet.
unsafe fn module_ref<'a, T>(ptr: *const std::ffi::c_void) -> Option<&'a T> {
    ptr.cast::<T>().as_ref()
}

/// Destroys the object behind a pointer we handed Envoy.
///
/// # Safety
/// As `module_ref`, and the object is not used afterwards.
unsafe fn destroy<T>(ptr: *const std::ffi::c_void) {
    if !ptr.is_null() {
        drop(Box::from_raw(ptr.cast::<T>().cast_mut()));
    }
}

/// Loads the module, unless this Envoy lacks a callback the module uses. Then it returns NULL
/// and Envoy refuses the module ("envoy_dynamic_module_on_program_init returned null").
///
/// A Rust cdylib is linked with BIND_NOW, so in practice dlopen already fails on such an Envoy
/// with "undefined symbol: <name>". The check covers builds linked for lazy binding, where the
/// first call would otherwise kill Envoy.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    guard("on_program_init", null, || match host::missing_callback() {
        None => {
            // Envoy filters by level itself (`log_enabled`); a second logger cannot be set.
            let _ = log::set_logger(&host::EnvoyLogger);
            log::set_max_level(log::LevelFilter::Trace);
            abi::ABI_VERSION.as_ptr()
        }
        Some(name) => {
            // stderr, not Envoy's log: the logging callback may be what is missing.
            let _ = writeln!(
                std::io::stderr(),
                "jwtguard: this Envoy does not export {}; the module needs Envoy 1.40 (dynamic modules ABI {})",
                name.to_string_lossy(),
                abi::ABI_VERSION.to_string_lossy()
            );
            null()
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: FilterConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> FilterConfigModulePtr {
    guard("on_http_filter_config_new", null, || {
        // SAFETY: Envoy's config pointer and buffer, valid during this call.
        let (envoy, config) = unsafe { (host::ConfigHandle::new(envoy), config.as_bytes()) };
        match FilterConfig::new(envoy, config) {
            Some(config) => Box::into_raw(Box::new(config)).cast(),
            None => null(),
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: FilterConfigModulePtr) {
    // SAFETY: a pointer from config_new, destroyed once, after all its filters.
    guard("on_http_filter_config_destroy", || (), || unsafe { destroy::<FilterConfig>(config) })
}

/// A commit to the configuration's scheduler (the ticker), on the main thread.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: FilterConfigEnvoyPtr,
    config: FilterConfigModulePtr,
    _event_id: u64,
) {
    guard(
        "on_http_filter_config_scheduled",
        || (),
        || {
            // SAFETY: a pointer from config_new, alive until config_destroy.
            if let Some(config) = unsafe { module_ref::<FilterConfig>(config) } {
                config.on_scheduled();
            }
        },
    )
}

/// The answer to a callout the main thread's engine sent (key fetches, the feed's poll).
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: FilterConfigEnvoyPtr,
    config: FilterConfigModulePtr,
    callout_id: u64,
    result: abi::CalloutResult,
    headers: *mut HttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard(
        "on_http_filter_config_http_callout_done",
        || (),
        || {
            // SAFETY: Envoy's arrays for this hook; a pointer from config_new.
            let (status, body) =
                unsafe { host::callout_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
            if let Some(config) = unsafe { module_ref::<FilterConfig>(config) } {
                config.on_callout_done(callout_id, status, body.as_deref());
            }
        },
    )
}

/// A stream's `Filter`. NULL (Envoy then fails the stream) only without a configuration.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: FilterConfigModulePtr,
    envoy: FilterEnvoyPtr,
) -> FilterModulePtr {
    guard("on_http_filter_new", null, || {
        // SAFETY: a pointer from config_new, alive while it has filters; the stream Envoy
        // creates this filter for, which lives until filter_destroy.
        let (config, stream) = unsafe { (module_ref::<FilterConfig>(config), Stream::new(envoy)) };
        match config.and_then(|c| c.new_filter(stream)) {
            Some(filter) => Box::into_raw(Box::new(filter)).cast(),
            None => null(),
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: FilterModulePtr) {
    // SAFETY: a pointer from filter_new, destroyed once.
    guard("on_http_filter_destroy", || (), || unsafe { destroy::<Filter>(filter) })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    end_of_stream: bool,
) -> abi::HeadersStatus {
    // SAFETY: the stream Envoy runs this hook for.
    let stream = unsafe { Stream::new(envoy) };
    // An authentication filter fails closed.
    let deny = || {
        stream.send_response(500, &[], b"", "jwtguard_internal_error");
        abi::HEADERS_STOP_ITERATION
    };
    guard("on_http_filter_request_headers", deny, || {
        // SAFETY: a pointer from filter_new, alive until filter_destroy.
        match unsafe { module_ref::<Filter>(filter) } {
            Some(filter) => filter.on_request_headers(end_of_stream).unwrap_or_else(deny),
            None => deny(),
        }
    })
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _end_of_stream: bool,
) -> abi::BodyStatus {
    abi::BODY_CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> abi::TrailersStatus {
    abi::TRAILERS_CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _end_of_stream: bool,
) -> abi::HeadersStatus {
    abi::HEADERS_CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _end_of_stream: bool,
) -> abi::BodyStatus {
    abi::BODY_CONTINUE
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) -> abi::TrailersStatus {
    abi::TRAILERS_CONTINUE
}

/// Before `filter_destroy` and the access logs.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(_envoy: FilterEnvoyPtr, _filter: FilterModulePtr) {}

/// The answer to `Stream::callout`. `headers` and `body_chunks` may be NULL on failure and are
/// valid only during the hook.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    callout_id: u64,
    result: abi::CalloutResult,
    headers: *mut HttpHeader,
    headers_size: usize,
    body_chunks: *mut EnvoyBuffer,
    body_chunks_size: usize,
) {
    guard(
        "on_http_filter_http_callout_done",
        || (),
        || {
            // SAFETY: Envoy's arrays for this hook; a pointer from filter_new.
            let (status, body) =
                unsafe { host::callout_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
            if let Some(filter) = unsafe { module_ref::<Filter>(filter) } {
                filter.on_callout_done(callout_id, status, body.as_deref());
            }
        },
    )
}

/// A commit to a `Stream::scheduler` (the ticker, or a wake), on the stream's worker.
#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _envoy: FilterEnvoyPtr,
    filter: FilterModulePtr,
    _event_id: u64,
) {
    guard(
        "on_http_filter_scheduled",
        || (),
        || {
            // SAFETY: a pointer from filter_new, alive until filter_destroy.
            if let Some(filter) = unsafe { module_ref::<Filter>(filter) } {
                filter.on_scheduled();
            }
        },
    )
}

// Streamed callouts (`http_filter_start_http_stream`), which jwtguard does not start.

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _headers: *mut HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _trailers: *mut HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
    _stream_id: u64,
    _reason: abi::StreamResetReason,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _envoy: FilterEnvoyPtr,
    _filter: FilterModulePtr,
) {
}

#[cfg(test)]
mod tests {
    /// Outside Envoy 1.40 (here a test process, which exports none of its callbacks) the check
    /// `on_program_init` makes finds the first callback missing, so the module refuses to load
    /// with a line naming it. (The hook itself calls into Envoy, so a test binary cannot link
    /// it; `tests/module_load.rs` loads the module in a real Envoy.)
    #[test]
    fn a_process_without_our_callbacks_is_refused() {
        assert_eq!(super::host::missing_callback(), Some(super::abi::CALLBACKS[0]));
    }
}
