//! The proxy-wasm filter: thin glue between Envoy's proxy-wasm host and the pure core
//! (`jwtguard`, whose `engine` does the work): the root context (configuration, the tick,
//! callouts) and the HTTP context (one request). Built only for wasm32 (`make wasm`).

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;
