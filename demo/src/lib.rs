//! Helpers for the demo and the end-to-end tests: an echo upstream and token minting.

pub mod echo;
pub mod tokens;
