//! What the service's test binaries share: its arguments, and one HTTP call to it.
#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::time::Duration;

pub const WRITE: &str = "write-credential";
pub const STATUS: &str = "status-credential";
pub const MAX_LIFETIME: u64 = 3600;

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jwtguard-revocation"))
}

/// The service's arguments for standalone Redis (`redis[0]`) or a cluster (every node).
pub fn args(redis: &[String], cluster: bool, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    if cluster {
        a.extend(["--redis-cluster-node".to_string(), redis.join(",")]);
    } else {
        a.extend(["--redis-url".to_string(), redis[0].clone()]);
    }
    a.extend(["--credentials", WRITE, "--status-credentials", STATUS, "--session-limit", "1"].map(String::from));
    a.extend(["--max-token-lifetime-seconds".to_string(), MAX_LIFETIME.to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

pub struct Reply {
    pub status: u16,
    pub body: String,
    pub retry_after: Option<String>,
    pub cache_control: Option<String>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {} {}", self.status, self.body))
    }
}

/// One request; any status is a reply, only transport failures panic.
pub fn call(
    method: &str,
    url: &str,
    credential: Option<&str>,
    content_type: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(30));
    if let Some(c) = credential {
        req = req.set("authorization", &format!("Bearer {c}"));
    }
    if let Some(t) = content_type {
        req = req.set("content-type", t);
    }
    let result = match body {
        Some(b) => req.send_string(b),
        None => req.call(),
    };
    let resp = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let retry_after = resp.header("retry-after").map(String::from);
    let cache_control = resp.header("cache-control").map(String::from);
    Reply { status, retry_after, cache_control, body: resp.into_string().unwrap_or_default() }
}
