//! The CLI's client subcommands: call a running service's API (credential from the environment).

use jwtguard_wire::{RevokeRequest, RevokeSubjectRequest};
use std::time::Duration;

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build()
}

fn send(request: ureq::Request, credential: Option<&str>, body: Option<serde_json::Value>) -> Result<String, String> {
    let request = match credential {
        Some(c) => request.set("authorization", &format!("Bearer {c}")),
        None => request,
    };
    let result = match body {
        Some(b) => request.send_json(b),
        None => request.call(),
    };
    match result {
        Ok(r) => r.into_string().map_err(|e| e.to_string()),
        Err(ureq::Error::Status(code, r)) => Err(format!("{code}: {}", r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn revoke(url: &str, credential: Option<&str>, request: RevokeRequest) -> Result<String, String> {
    let body = serde_json::to_value(request).map_err(|e| e.to_string())?;
    send(agent().post(&format!("{url}/v1/revoke")), credential, Some(body))
}

pub fn revoke_subject(url: &str, credential: Option<&str>, request: RevokeSubjectRequest) -> Result<String, String> {
    let body = serde_json::to_value(request).map_err(|e| e.to_string())?;
    send(agent().post(&format!("{url}/v1/revoke-subject")), credential, Some(body))
}

pub fn status(url: &str, credential: Option<&str>, query: &[(&str, String)]) -> Result<String, String> {
    let mut request = agent().get(&format!("{url}/v1/status"));
    for (k, v) in query {
        request = request.query(k, v);
    }
    send(request, credential, None)
}
