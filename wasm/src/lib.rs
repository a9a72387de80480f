//! The proxy-wasm filter: thin glue between Envoy's proxy-wasm host and the pure core
//! (`jwtguard`): the root context (configuration, the tick, key fetches, the revocation feed)
//! and the HTTP context (one request). Built only for wasm32 (`make wasm`).

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
