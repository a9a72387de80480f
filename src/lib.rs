//! jwtguard: a proxy-wasm filter that verifies JWTs inline in Envoy.
//!
//! Everything but `filter` is plain Rust with no host calls, tested natively; `filter` is the
//! proxy-wasm glue and is only built for wasm.

pub mod authenticator;
pub mod cache;
pub mod canonical;
pub mod claims;
pub mod config;
pub mod der;
pub mod extract;
pub mod feed;
pub mod fnv;
pub mod header_map;
pub mod host_crypto;
pub mod jwks;
pub mod jws;
pub mod keys;
pub mod reason;
pub mod response;
pub mod revocation;
pub mod revocation_set;
pub mod rules;
pub mod signature;
pub mod strict_json;

#[cfg(target_arch = "wasm32")]
mod fetch;
#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod metrics;
#[cfg(target_arch = "wasm32")]
mod poll;
#[cfg(target_arch = "wasm32")]
mod shared;
