//! Hand-written bindings to the C ABI of Envoy 1.40's dynamic modules (ABI version `v0.2.0`),
//! limited to what jwtguard uses. They are pinned to that one Envoy version.
//!
//! Sources: Envoy's `source/extensions/dynamic_modules/abi/abi.h` at commit 0199da4a. That header
//! still says `v0.1.0`, but Envoy 1.40.0 exports every HTTP and common callback it declares, and
//! every HTTP hook type in the binary matches it. `log_v2` is new in 1.40 and comes from
//! `abi_impl.cc`. A probe module called each callback against the 1.40.0 binary
//! (build 9e558093) before these bindings were written.
//!
//! Layouts are x86_64/aarch64 LP64. `const char*` is `*const u8` here (same ABI). C `bool` is
//! Rust `bool`. C enums are `int`: values Envoy passes in stay plain integers, never Rust enums,
//! so a value added by a newer Envoy cannot be undefined behaviour.

use std::ffi::{c_void, CStr};

/// What `envoy_dynamic_module_on_program_init` returns. Envoy 1.40 compares it with its own
/// and logs "Dynamic module ABI version v0.2.0 matched." (on a mismatch it only warns).
pub const ABI_VERSION: &CStr = c"v0.2.0";

/// `envoy_dynamic_module_type_http_filter_config_envoy_ptr`: Envoy's filter configuration.
pub type FilterConfigEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_config_module_ptr`: ours (a boxed `FilterConfig`).
pub type FilterConfigModulePtr = *const c_void;
/// `envoy_dynamic_module_type_http_filter_envoy_ptr`: Envoy's filter of one HTTP stream.
pub type FilterEnvoyPtr = *mut c_void;
/// `envoy_dynamic_module_type_http_filter_module_ptr`: ours (a boxed `Filter`).
pub type FilterModulePtr = *const c_void;
/// `envoy_dynamic_module_type_http_filter_scheduler_module_ptr` and
/// `envoy_dynamic_module_type_http_filter_config_scheduler_module_ptr` (both `void*`).
pub type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_envoy_buffer`: bytes owned by Envoy. `ptr` may be NULL when
/// `length` is 0.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// `envoy_dynamic_module_type_module_buffer`: bytes owned by the module, read by Envoy during
/// the call only.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// `envoy_dynamic_module_type_envoy_http_header` and `envoy_dynamic_module_type_module_http_header`
/// (the same layout; which side owns the bytes depends on the call).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub type HttpHeaderType = u32;
pub const REQUEST_HEADER: HttpHeaderType = 0;
pub const REQUEST_TRAILER: HttpHeaderType = 1;
pub const RESPONSE_HEADER: HttpHeaderType = 2;
pub const RESPONSE_TRAILER: HttpHeaderType = 3;

/// `envoy_dynamic_module_type_log_level`.
pub type LogLevel = u32;
pub const LOG_TRACE: LogLevel = 0;
pub const LOG_DEBUG: LogLevel = 1;
pub const LOG_INFO: LogLevel = 2;
pub const LOG_WARN: LogLevel = 3;
pub const LOG_ERROR: LogLevel = 4;
pub const LOG_CRITICAL: LogLevel = 5;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_headers_status`.
pub type HeadersStatus = u32;
pub const HEADERS_CONTINUE: HeadersStatus = 0;
pub const HEADERS_STOP_ITERATION: HeadersStatus = 1;
pub const HEADERS_CONTINUE_AND_DONT_END_STREAM: HeadersStatus = 2;
/// What a filter parking a request with a body returns: with `HEADERS_STOP_ITERATION` Envoy
/// forwards the request once the body arrives, before the filter resumes it.
pub const HEADERS_STOP_ALL_ITERATION_AND_BUFFER: HeadersStatus = 3;
pub const HEADERS_STOP_ALL_ITERATION_AND_WATERMARK: HeadersStatus = 4;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_body_status`.
pub type BodyStatus = u32;
pub const BODY_CONTINUE: BodyStatus = 0;
pub const BODY_STOP_ITERATION_AND_BUFFER: BodyStatus = 1;
pub const BODY_STOP_ITERATION_AND_WATERMARK: BodyStatus = 2;
pub const BODY_STOP_ITERATION_NO_BUFFER: BodyStatus = 3;

/// `envoy_dynamic_module_type_on_http_filter_{request,response}_trailers_status`.
pub type TrailersStatus = u32;
pub const TRAILERS_CONTINUE: TrailersStatus = 0;
pub const TRAILERS_STOP_ITERATION: TrailersStatus = 1;

/// `envoy_dynamic_module_type_http_callout_init_result`.
pub type CalloutInitResult = u32;
pub const CALLOUT_INIT_SUCCESS: CalloutInitResult = 0;
/// `:method`, `:path` and `host` (or `:authority`) are required.
pub const CALLOUT_INIT_MISSING_REQUIRED_HEADERS: CalloutInitResult = 1;
pub const CALLOUT_INIT_CLUSTER_NOT_FOUND: CalloutInitResult = 2;
pub const CALLOUT_INIT_DUPLICATE_CALLOUT_ID: CalloutInitResult = 3;
pub const CALLOUT_INIT_CANNOT_CREATE_REQUEST: CalloutInitResult = 4;

/// `envoy_dynamic_module_type_http_callout_result`. An HTTP error status is still `SUCCESS`
/// (the status is the `:status` header).
pub type CalloutResult = u32;
pub const CALLOUT_SUCCESS: CalloutResult = 0;
pub const CALLOUT_RESET: CalloutResult = 1;
pub const CALLOUT_EXCEED_RESPONSE_BUFFER_LIMIT: CalloutResult = 2;

/// `envoy_dynamic_module_type_http_stream_reset_reason` (an argument of a hook we do not use).
pub type StreamResetReason = u32;

/// `envoy_dynamic_module_type_metrics_result`.
pub type MetricsResult = u32;
pub const METRICS_SUCCESS: MetricsResult = 0;
pub const METRICS_NOT_FOUND: MetricsResult = 1;
pub const METRICS_INVALID_LABELS: MetricsResult = 2;
/// Defining a metric after `on_http_filter_config_new` has returned.
pub const METRICS_FROZEN: MetricsResult = 3;

/// Declares the callbacks and lists their names in `CALLBACKS`, so the list `on_program_init`
/// checks is always the one the module links against.
macro_rules! callbacks {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?;)*) => {
        extern "C" {
            $($(#[$doc])* pub fn $name($($arg: $ty),*) $(-> $ret)?;)*
        }

        /// The name of every callback above.
        pub const CALLBACKS: &[&CStr] = &[$(symbol(concat!(stringify!($name), "\0"))),*];
    };
}

const fn symbol(name: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(name.as_bytes()) {
        Ok(name) => name,
        Err(_) => panic!("a symbol name with a NUL inside"), // compile time only: CALLBACKS is a const
    }
}

callbacks! {
    // Process. `log_v2` is new in Envoy 1.40. Importing it makes an older Envoy refuse the
    // module at dlopen with "undefined symbol" (Rust cdylibs link with BIND_NOW).
    /// Logs at `source_file:source_line` in Envoy's `dynamic_modules` component.
    fn envoy_dynamic_module_callback_log_v2(
        level: LogLevel,
        message: ModuleBuffer,
        source_file: ModuleBuffer,
        source_line: u32,
    );
    fn envoy_dynamic_module_callback_log_enabled(level: LogLevel) -> bool;
    /// Main thread only; true under `envoy --mode validate`.
    fn envoy_dynamic_module_callback_is_validation_mode() -> bool;

    // Headers of the stream. Returned buffers are valid until the next setter or the hook's end.
    /// How many headers of `header_type` the stream has (a repeated name counts once a value).
    fn envoy_dynamic_module_callback_http_get_headers_size(
        filter_envoy_ptr: FilterEnvoyPtr,
        header_type: HttpHeaderType,
    ) -> usize;
    /// Writes every header of `header_type`, in order, into `result_headers`, which must have
    /// room for `get_headers_size` of them; false if the stream has no such headers.
    fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: FilterEnvoyPtr,
        header_type: HttpHeaderType,
        result_headers: *mut HttpHeader,
    ) -> bool;
    /// Replaces every value of `key`; a `value` with a NULL `ptr` removes the header.
    fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: FilterEnvoyPtr,
        header_type: HttpHeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    // Answering and resuming.
    /// A local reply; `details` becomes `%RESPONSE_CODE_DETAILS%`.
    fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: FilterEnvoyPtr,
        status_code: u32,
        headers_vector: *mut HttpHeader,
        headers_vector_size: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );
    fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter_envoy_ptr: FilterEnvoyPtr);

    // HTTP callouts. The answer comes to `on_http_filter[_config]_http_callout_done` with the
    // id Envoy writes to `callout_id_out`.
    fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter_envoy_ptr: FilterEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> CalloutInitResult;
    /// Main thread only (config hooks).
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: ModuleBuffer,
        headers: *mut HttpHeader,
        headers_size: usize,
        body: ModuleBuffer,
        timeout_milliseconds: u64,
    ) -> CalloutInitResult;

    // Schedulers. A commit is safe from any thread, and a no-op once the owner is gone. It runs
    // `on_http_filter_scheduled` on the stream's worker, or `on_http_filter_config_scheduled` on
    // the main thread.
    fn envoy_dynamic_module_callback_http_filter_scheduler_new(filter_envoy_ptr: FilterEnvoyPtr) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_scheduler_commit(scheduler: SchedulerPtr, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_scheduler_delete(scheduler: SchedulerPtr);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
    ) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: SchedulerPtr, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);

    // Metrics. They can be defined only inside `on_http_filter_config_new` (later: FROZEN).
    // Ids are opaque.
    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *mut ModuleBuffer,
        label_names_length: usize,
        histogram_id_ptr: *mut usize,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter_envoy_ptr: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;
    fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter_envoy_ptr: FilterEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;
    /// Outside any stream (main thread).
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;
    /// Outside any stream (main thread).
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        filter_config_envoy_ptr: FilterConfigEnvoyPtr,
        id: usize,
        label_values: *mut ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    // Miscellaneous.
    /// 0 to concurrency - 1.
    fn envoy_dynamic_module_callback_http_filter_get_worker_index(filter_envoy_ptr: FilterEnvoyPtr) -> u32;
    /// Merges `serialized` (a `google.protobuf.Struct`) into dynamic metadata namespace `ns`,
    /// field by field; an unparsable one is logged by Envoy and ignored. Not in the stored
    /// header: established from the 1.40 binary (five argument registers, no result) and by a
    /// probe whose metadata RBAC matched as it matches `jwt_authn`'s (docs/policy.md).
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_struct(
        filter_envoy_ptr: FilterEnvoyPtr,
        ns: ModuleBuffer,
        serialized: ModuleBuffer,
    );
}

impl ModuleBuffer {
    /// Borrows `bytes` for one call.
    pub fn new(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// `{NULL, 0}`: "no value" (`http_set_header` removes the header).
    pub const NULL: ModuleBuffer = ModuleBuffer { ptr: std::ptr::null(), length: 0 };
}

impl EnvoyBuffer {
    /// The bytes, empty when `ptr` is NULL or `length` is 0.
    ///
    /// # Safety
    /// Unless NULL, `ptr` must point to `length` bytes that stay valid and unchanged for `'a`.
    pub unsafe fn as_bytes<'a>(&self) -> &'a [u8] {
        bytes(self.ptr, self.length)
    }
}

impl HttpHeader {
    pub const EMPTY: HttpHeader =
        HttpHeader { key_ptr: std::ptr::null(), key_length: 0, value_ptr: std::ptr::null(), value_length: 0 };

    /// Name and value borrowed for one call.
    pub fn new(key: &[u8], value: &[u8]) -> HttpHeader {
        HttpHeader {
            key_ptr: key.as_ptr(),
            key_length: key.len(),
            value_ptr: value.as_ptr(),
            value_length: value.len(),
        }
    }

    /// The name and the value, each empty when its pointer is NULL or its length 0.
    ///
    /// # Safety
    /// As `EnvoyBuffer::as_bytes`, for both buffers.
    pub unsafe fn as_bytes<'a>(&self) -> (&'a [u8], &'a [u8]) {
        (bytes(self.key_ptr, self.key_length), bytes(self.value_ptr, self.value_length))
    }
}

/// # Safety
/// Unless NULL, `ptr` must point to `length` bytes valid for `'a`.
unsafe fn bytes<'a>(ptr: *const u8, length: usize) -> &'a [u8] {
    if ptr.is_null() || length == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, length)
    }
}
