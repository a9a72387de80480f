//! Any bytes as a callout body, shared data, a header map or native-crypto arguments, through
//! every reader the filter has for them (`tests/hostile_bodies.rs`, whose mutation test runs the
//! same readers in `make test`).
#![no_main]

#[path = "../../tests/hostile_bodies.rs"]
mod hostile_bodies;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hostile_bodies::read_all(data));
