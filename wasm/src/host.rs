//! Every host call the filter makes, through our own imports: the SDK's wrappers panic on any
//! status they do not expect, and its header reader on a header value that is not UTF-8 (one
//! request from any client) — and a panic takes down the VM with every request on it. Here a
//! failed call is an `Err` (or `None`), and header maps are read as bytes (`header_map`).
//! Only `dispatch_http_call` stays the SDK's (it registers the callout for its answer's
//! routing), `define_metric` (at configuration only) and the `log` facade (Envoy's log call
//! returns Ok for every level we use).

use jwtguard::engine::{self, MetricKind};
use jwtguard::header_map;
use jwtguard::host_crypto::{self, HostCrypto};
use proxy_wasm::types::{BufferType, Bytes, MapType, MetricType, Status};
use std::time::Duration;

#[link(wasm_import_module = "env")]
#[allow(clashing_extern_declarations)]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key: *const u8, key_size: usize) -> u32;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_continue_stream(stream_type: u32) -> u32;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        data: *mut *mut u8,
        size: *mut usize,
        cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(key: *const u8, key_size: usize, value: *const u8, value_size: usize, cas: u32) -> u32;
    fn proxy_get_buffer_bytes(buffer_type: u32, start: usize, max: usize, data: *mut *mut u8, size: *mut usize) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_current_time_nanoseconds(time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_len: usize,
        args: *const u8,
        args_len: usize,
        result: *mut *mut u8,
        result_len: *mut usize,
    ) -> u32;
    fn proxy_set_effective_context(context_id: u32) -> u32;
}

/// Envoy's `verify_signature` foreign function.
pub struct EnvoyCrypto;

impl HostCrypto for EnvoyCrypto {
    fn verify_signature(&self, arguments: &[u8]) -> Option<bool> {
        let name = host_crypto::FUNCTION;
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut len: usize = 0;
        // SAFETY: pointers and lengths describe live buffers; on success the host hands us a
        // buffer it allocated through our `proxy_on_memory_allocate`, which we take over.
        let status = unsafe {
            proxy_call_foreign_function(
                name.as_ptr(),
                name.len(),
                arguments.as_ptr(),
                arguments.len(),
                &mut data,
                &mut len,
            )
        };
        if status != 0 || data.is_null() {
            return None;
        }
        let bytes = unsafe { Vec::from_raw_parts(data, len, len) };
        host_crypto::decode_result(&bytes)
    }
}

/// The engine's host: this VM's Envoy.
pub struct WasmHost {
    /// Envoy's `verify_signature`, when it passed the self-test.
    pub crypto: Option<EnvoyCrypto>,
}

impl engine::Host for WasmHost {
    fn now_ms(&self) -> u64 {
        let mut nanos = 0u64;
        // SAFETY: an out-pointer to a local.
        match unsafe { proxy_get_current_time_nanoseconds(&mut nanos) } {
            OK => nanos / 1_000_000,
            _ => 0,
        }
    }

    fn set_effective_context(&self, context_id: u32) -> bool {
        set_effective_context(context_id)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let _ = set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn send_response(&self, status: u32, headers: &[(&str, &str)], body: Option<&[u8]>) {
        let _ = send_http_response(status, headers, body);
    }

    fn resume_request(&self) {
        let _ = resume_http_request();
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        get_shared_data(key).unwrap_or((None, None))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> bool {
        set_shared_data(key, value, cas).is_ok()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        proxy_wasm::hostcalls::define_metric(kind, name).ok()
    }

    fn increment_metric(&self, id: u32, by: u64) {
        // SAFETY: plain integer arguments.
        let _ = unsafe { proxy_increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX)) };
    }

    fn record_metric(&self, id: u32, value: u64) {
        // SAFETY: plain integer arguments.
        let _ = unsafe { proxy_record_metric(id, value) };
    }

    fn counter_flush_ms(&self) -> u64 {
        engine::FLUSH_MS
    }

    fn crypto(&self) -> Option<&dyn HostCrypto> {
        self.crypto.as_ref().map(|c| c as &dyn HostCrypto)
    }

    fn writes_dynamic_metadata(&self) -> bool {
        false
    }

    fn set_payload_metadata(&self, _: &str, _: &jwtguard::metadata::Payload) -> bool {
        false
    }

    fn wake_parked(&self) {}
}

/// Makes `context_id` the context later host calls act on; `false` if it no longer exists
/// (its client went away while it waited).
fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: a plain integer argument.
    unsafe { proxy_set_effective_context(context_id) == 0 }
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

fn status(code: u32) -> Status {
    match code {
        NOT_FOUND => Status::NotFound,
        CAS_MISMATCH => Status::CasMismatch,
        _ => Status::InternalFailure,
    }
}

/// Takes over a buffer the host allocated for us (through the SDK's `proxy_on_memory_allocate`).
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host returned `data` allocated by our allocator with exactly `size` bytes.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Every pair of a header map, values read as bytes (see `header_map::decode`).
pub fn get_map(map: MapType) -> Result<Vec<(String, String)>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: out-pointers to locals.
    match unsafe { proxy_get_header_map_pairs(map as u32, &mut data, &mut size) } {
        OK => Ok(header_map::decode(&take(data, size))),
        code => Err(status(code)),
    }
}

/// One header's value, as bytes.
pub fn get_map_value_bytes(map: MapType, key: &str) -> Result<Option<Bytes>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: `key` is a live buffer; out-pointers to locals.
    match unsafe { proxy_get_header_map_value(map as u32, key.as_ptr(), key.len(), &mut data, &mut size) } {
        OK => Ok(Some(take(data, size))),
        NOT_FOUND => Ok(None),
        code => Err(status(code)),
    }
}

/// Sets (replaces) or, with `None`, removes a header.
fn set_map_value(map: MapType, key: &str, value: Option<&str>) -> Result<(), Status> {
    // SAFETY: live buffers with their lengths.
    let code = unsafe {
        match value {
            Some(v) => proxy_replace_header_map_value(map as u32, key.as_ptr(), key.len(), v.as_ptr(), v.len()),
            None => proxy_remove_header_map_value(map as u32, key.as_ptr(), key.len()),
        }
    };
    if code == OK {
        Ok(())
    } else {
        Err(status(code))
    }
}

fn send_http_response(status_code: u32, headers: &[(&str, &str)], body: Option<&[u8]>) -> Result<(), Status> {
    let headers = header_map::encode(headers);
    let body = body.unwrap_or_default();
    // SAFETY: live buffers with their lengths; no details; -1: not gRPC.
    let code = unsafe {
        proxy_send_local_response(
            status_code,
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    if code == OK {
        Ok(())
    } else {
        Err(status(code))
    }
}

/// Resumes the current request (stream type 0: the HTTP request).
fn resume_http_request() -> Result<(), Status> {
    // SAFETY: a plain integer argument.
    match unsafe { proxy_continue_stream(0) } {
        OK => Ok(()),
        code => Err(status(code)),
    }
}

/// A shared-data value and its CAS; `(None, None)` when the key has none.
fn get_shared_data(key: &str) -> Result<(Option<Bytes>, Option<u32>), Status> {
    let (mut data, mut size, mut cas) = (std::ptr::null_mut(), 0, 0u32);
    // SAFETY: `key` is a live buffer; out-pointers to locals.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) } {
        OK => Ok(((!data.is_null()).then(|| take(data, size)), (cas > 0).then_some(cas))),
        NOT_FOUND => Ok((None, None)),
        code => Err(status(code)),
    }
}

/// Sets a shared-data value; with `cas`, only if it is still that version (`CasMismatch`).
fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: live buffers with their lengths.
    let code = unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas.unwrap_or(0)) };
    if code == OK {
        Ok(())
    } else {
        Err(status(code))
    }
}

pub fn get_buffer(buffer: BufferType, start: usize, max: usize) -> Result<Option<Bytes>, Status> {
    let (mut data, mut size) = (std::ptr::null_mut(), 0);
    // SAFETY: out-pointers to locals.
    match unsafe { proxy_get_buffer_bytes(buffer as u32, start, max, &mut data, &mut size) } {
        OK if data.is_null() => Ok(None),
        OK => Ok(Some(take(data, size))),
        NOT_FOUND => Ok(None),
        code => Err(status(code)),
    }
}

pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
    // SAFETY: a plain integer argument.
    match unsafe { proxy_set_tick_period_milliseconds(ms) } {
        OK => Ok(()),
        code => Err(status(code)),
    }
}
