//! The few host calls we make through our own imports, because the SDK's wrappers panic on
//! statuses they do not expect, and a panic would take down the VM with every request on it.

use crate::host_crypto::{self, HostCrypto};

#[link(wasm_import_module = "env")]
#[allow(clashing_extern_declarations)]
extern "C" {
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

/// Makes `context_id` the context later host calls act on; `false` if it no longer exists
/// (its client went away while it waited).
pub fn set_effective_context(context_id: u32) -> bool {
    // SAFETY: a plain integer argument.
    unsafe { proxy_set_effective_context(context_id) == 0 }
}
