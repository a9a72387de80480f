//! The CLI's client subcommands: call a running service's API (credential from the environment).

use jwtguard_wire::{FeedResponse, RevokeRequest, RevokeSubjectRequest};
use std::io::Write;
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

/// Sends a signal as the identity provider would: a logout token to the back-channel logout
/// endpoint, or a SET to the SSF push endpoint (with `credential` as the push credential).
/// `token` is the token itself, or `-` to read it from stdin.
pub fn signal(url: &str, credential: Option<&str>, set: bool, token: &str) -> Result<String, String> {
    let token = if token == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| e.to_string())?;
        text.trim().to_string()
    } else {
        token.to_string()
    };
    let (path, content_type, body) = if set {
        ("/v1/ssf/push", "application/secevent+jwt", token)
    } else {
        ("/v1/backchannel-logout", "application/x-www-form-urlencoded", format!("logout_token={token}"))
    };
    let mut request = agent().post(&format!("{url}{path}")).set("content-type", content_type);
    if let Some(c) = credential {
        request = request.set("authorization", &format!("Bearer {c}"));
    }
    match request.send_string(&body) {
        Ok(r) => Ok(format!("{} {}", r.status(), r.into_string().unwrap_or_default()).trim().to_string()),
        Err(ureq::Error::Status(code, r)) => Err(format!("{code}: {}", r.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

/// Prints the feed's events as JSON lines: the live set (or what came after `after`), then with
/// `follow` every new event, long-polling with `wait_ms`. The position reached goes to stderr,
/// so stdout holds events only. While following, a service that is unavailable (503 or no
/// answer) is asked again after a pause; any other refusal ends the run.
pub fn feed(
    url: &str,
    credential: Option<&str>,
    after: Option<String>,
    follow: bool,
    wait_ms: u64,
) -> Result<String, String> {
    let mut position = after;
    let mut caught_up = false;
    let mut pause = Duration::from_millis(100);
    let stdout = std::io::stdout();
    loop {
        let wait = if follow && caught_up { wait_ms } else { 0 };
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_millis(wait) + Duration::from_secs(10)).build();
        let mut request = agent.get(&format!("{url}/v1/feed")).query("wait_ms", &wait.to_string());
        if let Some(p) = &position {
            request = request.query("after", p);
        }
        let answer = send(request, credential, None).and_then(|body| {
            serde_json::from_str::<FeedResponse>(&body).map_err(|e| format!("not a feed answer: {e}"))
        });
        let page = match answer {
            Ok(page) => page,
            Err(e) if follow && (e.starts_with("503") || !e.starts_with(|c: char| c.is_ascii_digit())) => {
                eprintln!("jwtguard-revocation: {e}; asking again in {pause:?}");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => return Err(e),
        };
        pause = Duration::from_millis(100);
        let mut out = stdout.lock();
        for event in &page.events {
            let line = serde_json::to_string(event).map_err(|e| e.to_string())?;
            writeln!(out, "{line}").map_err(|e| e.to_string())?;
        }
        out.flush().map_err(|e| e.to_string())?;
        if position.as_deref() != Some(page.position.as_str()) {
            eprintln!("position {}", page.position);
        }
        position = Some(page.position);
        if !page.more {
            caught_up = true;
            if !follow {
                return Ok(String::new());
            }
        }
    }
}
