//! Helpers for the demo, the end-to-end tests and the benchmarks: an echo upstream, token
//! minting, a real Envoy running the built filter, Redis servers and the revocation service.

pub mod echo;
pub mod envoy;
pub mod idp;
pub mod redis;
pub mod service;
pub mod tokens;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    let demo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    demo.parent().map(PathBuf::from).unwrap_or(demo)
}

/// A fresh directory under `target/<kind>/` for one run's files.
pub fn scratch_dir(kind: &str, name: &str) -> PathBuf {
    let dir = repo_root().join("target").join(kind).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
