//! Test harness: a real Envoy running the built `.wasm`, an echo upstream, and token minting.
//! Every process binds 127.0.0.1 on an ephemeral port and is killed when its handle drops.
#![allow(dead_code, unused_imports)] // each test binary uses a different part of the harness

pub use jwtguard_demo::{echo, envoy, tokens, wait_for};

pub mod monitoring;
pub mod revocation;

use std::time::Duration;

/// A fresh directory under `target/e2e/` for one test's files.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    jwtguard_demo::scratch_dir("e2e", name)
}

/// A response reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The echo upstream's view of the request headers it received.
    pub fn echoed(&self) -> serde_json::Map<String, serde_json::Value> {
        let v: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not an echo: {} {}", self.status, self.body));
        v["headers"].as_object().cloned().unwrap_or_default()
    }
}

/// One HTTP request with ureq; any status is a reply, only transport failures panic.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)]) -> Reply {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let resp = match req.call() {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers =
        resp.headers_names().iter().filter_map(|n| resp.header(n).map(|v| (n.clone(), v.to_string()))).collect();
    let body = resp.into_string().unwrap_or_default();
    Reply { status, headers, body }
}
