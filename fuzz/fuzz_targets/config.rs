//! Any bytes as the plugin configuration: parsing must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = jwtguard::config::Config::parse(data);
});
