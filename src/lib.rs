//! jwtguard's core: everything a JWT filter decides — configuration, token extraction, JWS
//! parsing and verification, claims, rules, key sets, responses, revocation (cache policy, the
//! feed client, the revocation set) and the request state machine that carries decisions out
//! (`engine`, through a `Host` trait) — in plain Rust with no host calls and no proxy-wasm,
//! tested natively. The proxy-wasm filter (`wasm/`) and the Envoy dynamic module (`module/`)
//! are thin glue around it, and the revocation service (`revocation/`) shares it.

pub mod authenticator;
pub mod cache;
pub mod canonical;
pub mod claims;
pub mod config;
pub mod der;
pub mod engine;
pub mod extract;
pub mod fast_hash;
pub mod feed;
pub mod fnv;
pub mod header_map;
pub mod host_crypto;
pub mod jwks;
pub mod jws;
pub mod keys;
pub mod metadata;
pub mod reason;
pub mod response;
pub mod revocation;
pub mod revocation_set;
pub mod rules;
pub mod signature;
pub mod strict_json;
