//! The signal receivers: OpenID Connect Back-Channel Logout 1.0 (`POST /v1/backchannel-logout`),
//! SSF push delivery (RFC 8935, `POST /v1/ssf/push`) and SSF poll delivery (RFC 8936, a task per
//! issuer with `ssf_poll`). All three take a signal in the same way (`Receiver::take_in`):
//! verify it (`signals`), refuse a `jti` already taken in, write what it asks for (through the
//! feed, like every revocation), then remember the `jti`.

use crate::issuers::{read_limited, Issuer, Issuers, PollConfig, Refresh};
use crate::signals::{self, Action, Kind, Refusal};
use crate::store::{Claim, Store, StoreError};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a signal was not taken in.
#[derive(Debug)]
pub enum Problem {
    Refused(Refusal),
    /// Its `jti` was taken in before: nothing is written again.
    Duplicate,
    /// It cannot be taken in now (Redis, or the issuer's keys): the sender may try again.
    Unavailable(String),
}

impl From<Refusal> for Problem {
    fn from(r: Refusal) -> Problem {
        Problem::Refused(r)
    }
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Problem {
        Problem::Unavailable(e.to_string())
    }
}

/// Counts a signal's outcome by receiver (every delivery, refused before verification too).
fn count(receiver: &'static str, result: &Result<(), Problem>) {
    let outcome = match result {
        Ok(()) => "accepted",
        Err(Problem::Refused(_)) => "refused",
        Err(Problem::Duplicate) => "duplicate",
        Err(Problem::Unavailable(_)) => "unavailable",
    };
    metrics::counter!("jwtguard_revocation_signals_total", "receiver" => receiver, "outcome" => outcome).increment(1);
    match result {
        Err(Problem::Refused(r)) => {
            tracing::warn!(receiver, err = r.err, description = %r.description, "signal refused")
        }
        Err(Problem::Unavailable(e)) => tracing::warn!(receiver, error = %e, "signal not taken in now"),
        _ => {}
    }
}

/// A value no other delivery's claim has (the process, a counter, the time).
fn claim_token() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{}-{n}-{}", crate::store::CLAIMED, std::process::id(), crate::feed::now_ms())
}

#[derive(Clone)]
pub struct Receiver {
    pub store: Store,
    pub issuers: Arc<Issuers>,
    /// How long a logged-out session's tokens can live: `--max-token-lifetime-seconds` + skew.
    pub token_ttl: u64,
    pub store_timeout: Duration,
}

impl Receiver {
    /// Takes in one signal of `kind` from `issuer` (already chosen by the token's `iss`),
    /// received by `receiver` (the logs' label).
    /// `arrived`: when the signal reached us (a poll answer's SETs all arrived with it).
    pub async fn take_in(
        &self,
        kind: Kind,
        token: &str,
        issuer: &Issuer,
        receiver: &'static str,
        arrived: Instant,
        now: u64,
    ) -> Result<(), Problem> {
        let mut verified = signals::verify(kind, token, &issuer.trust, &issuer.keys().await, now);
        if let Err(Refusal { unknown_key: true, .. }) = &verified {
            match issuer.refresh_for_unknown_key(arrived).await {
                Refresh::Fetched => verified = signals::verify(kind, token, &issuer.trust, &issuer.keys().await, now),
                Refresh::Fixed => {}
                // The provider's JWKS is unreachable: the signal cannot be judged now, so it is
                // not refused for good (503, not acknowledged) and the provider may send it again.
                Refresh::NotNow => {
                    return Err(Problem::Unavailable(
                        "the issuer's key set lacks the token's kid and cannot be fetched now".into(),
                    ))
                }
            }
        }
        let signal = verified?;
        // Claimed before anything is written, atomically, so that two deliveries at once write
        // once; released if the writes fail, so that a retry is taken in. A claim left by a
        // delivery that could not finish (Redis stopped mid-way) lapses after CLAIM_SECONDS.
        let claim = claim_token();
        let lapse = self.claim_seconds(signal.events.len());
        match self.bounded(self.store.claim_seen(&signal.iss, &signal.jti, &claim, lapse)).await? {
            Claim::Claimed => {}
            Claim::Done => return Err(Problem::Duplicate),
            Claim::InProgress => {
                return Err(Problem::Unavailable("this signal is being taken in; send it again later".into()))
            }
        }
        let written = self.apply(&signal, receiver, now).await;
        let remembered = match written {
            Ok(()) => self.bounded(self.store.mark_seen(&signal.iss, &signal.jti, signal.remember_until)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = remembered {
            let _ = self.bounded(self.store.forget_seen(&signal.iss, &signal.jti, &claim)).await;
            return Err(e.into());
        }
        Ok(())
    }

    /// Writes what the signal's events ask for (through the feed, like every revocation).
    async fn apply(&self, signal: &signals::Signal, receiver: &'static str, now: u64) -> Result<(), StoreError> {
        for handled in &signal.events {
            let outcome = match &handled.action {
                None => "ignored",
                Some(Action::Sid { iss, sid }) => {
                    self.bounded(self.store.revoke_sid(iss, sid, now + self.token_ttl)).await?;
                    tracing::info!(
                        receiver,
                        event = handled.event,
                        iss,
                        sid,
                        "session logged out at the identity provider"
                    );
                    "applied"
                }
                Some(Action::Subject { iss, sub, before }) => {
                    self.bounded(self.store.revoke_subject(sub, Some(iss), *before, self.token_ttl)).await?;
                    tracing::info!(
                        receiver,
                        event = handled.event,
                        iss,
                        sub,
                        before,
                        "subject revoked by the identity provider"
                    );
                    "applied"
                }
            };
            metrics::counter!("jwtguard_revocation_signal_events_total", "event" => handled.event, "outcome" => outcome)
                .increment(1);
        }
        Ok(())
    }

    /// How long a claim outlives its delivery's writes (the claim, one per event, the record;
    /// each bounded by the request timeout): a delivery that could not finish leaves the signal
    /// for a retry after this.
    fn claim_seconds(&self, events: usize) -> u64 {
        let writes = events as u64 + 2;
        (self.store_timeout.as_secs() + 1).saturating_mul(writes).max(10)
    }

    /// The trusted issuer the token claims to come from.
    pub fn issuer_of(&self, token: &str) -> Result<&Arc<Issuer>, Refusal> {
        let iss = signals::claimed_issuer(token)?;
        self.issuers.find(&iss).ok_or_else(|| Refusal {
            err: "invalid_issuer",
            description: "the issuer is not trusted".into(),
            unknown_key: false,
        })
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.store_timeout, call)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(format!("no answer within {:?}", self.store_timeout))))
    }
}

/// `POST /v1/backchannel-logout` (Back-Channel Logout 1.0 §2.5, §2.8): a form with
/// `logout_token`; 200 when the logout is done, 400 `invalid_request` otherwise (a `jti` seen
/// before included), both `Cache-Control: no-store`. 503 with `Retry-After` when it cannot be
/// done now (Redis, the issuer's keys): the provider may send it again.
pub async fn backchannel_logout(receiver: &Receiver, headers: &HeaderMap, body: &[u8], now: u64) -> Response {
    let arrived = Instant::now();
    let result = async {
        if media_type(headers) != "application/x-www-form-urlencoded" {
            return Err(Problem::Refused(invalid("Content-Type must be application/x-www-form-urlencoded")));
        }
        // Only logout_token is defined (§2.5); other parameters are ignored, as OAuth does
        // (RFC 6749 §3.1): a provider that adds one must not have every logout refused.
        let mut form = crate::form::parse_known(body, &["logout_token"]).map_err(|e| invalid(format!("form: {e}")))?;
        let token = form.remove("logout_token").ok_or_else(|| invalid("logout_token is required"))?;
        let issuer = receiver.issuer_of(&token)?;
        receiver.take_in(Kind::LogoutToken, &token, issuer, "backchannel_logout", arrived, now).await
    }
    .await;
    count("backchannel_logout", &result);
    let (status, body) = match result {
        Ok(()) => (StatusCode::OK, None),
        Err(Problem::Refused(r)) => (StatusCode::BAD_REQUEST, Some(oauth_error("invalid_request", &r.description))),
        Err(Problem::Duplicate) => {
            (StatusCode::BAD_REQUEST, Some(oauth_error("invalid_request", "this logout token was received before")))
        }
        Err(Problem::Unavailable(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Some(oauth_error("temporarily_unavailable", &e)))
        }
    };
    let mut response = match body {
        Some(body) => (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response(),
        None => status.into_response(),
    };
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// `POST /v1/ssf/push` (RFC 8935 §2): one SET as `application/secevent+jwt`; 202 when taken in
/// — or taken in before (a retry after a lost answer), writing nothing again — and 400 with
/// `{"err", "description"}` (§2.3) otherwise. An issuer with `push_credentials` must present one
/// (401 `authentication_failed`). 503 with `Retry-After` when it cannot be taken in now.
pub async fn ssf_push(receiver: &Receiver, headers: &HeaderMap, body: &[u8], now: u64) -> Response {
    let arrived = Instant::now();
    let result = async {
        if media_type(headers) != "application/secevent+jwt" {
            return Err(Problem::Refused(invalid("Content-Type must be application/secevent+jwt")));
        }
        let token = std::str::from_utf8(body).map_err(|_| invalid("the body is not UTF-8"))?.trim();
        let issuer = receiver.issuer_of(token)?;
        if !issuer.push_credentials.is_empty() {
            let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if !issuer.push_credentials.allows(presented) {
                return Err(Problem::Refused(Refusal {
                    err: "authentication_failed",
                    description: "a valid bearer credential for this issuer is required".into(),
                    unknown_key: false,
                }));
            }
        }
        receiver.take_in(Kind::SecurityEventToken, token, issuer, "ssf_push", arrived, now).await
    }
    .await;
    count("ssf_push", &result);
    match result {
        Ok(()) | Err(Problem::Duplicate) => StatusCode::ACCEPTED.into_response(),
        Err(Problem::Refused(r)) if r.err == "authentication_failed" => {
            let mut response = set_error(StatusCode::UNAUTHORIZED, r.err, &r.description);
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Err(Problem::Refused(r)) => set_error(StatusCode::BAD_REQUEST, r.err, &r.description),
        Err(Problem::Unavailable(e)) => {
            let mut response = set_error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", &e);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

fn invalid(description: impl Into<String>) -> Refusal {
    Refusal { err: "invalid_request", description: description.into(), unknown_key: false }
}

fn oauth_error(error: &str, description: &str) -> Value {
    json!({"error": error, "error_description": description})
}

fn set_error(status: StatusCode, err: &str, description: &str) -> Response {
    let body = json!({"err": err, "description": description}).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn media_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// Polls one issuer's SSF transmitter forever (RFC 8936 §2.4): acknowledges what was taken in
/// (or was a duplicate), reports what was refused in `setErrs` (a SET from another issuer too:
/// a stream carries its own transmitter's SETs only), and leaves what could not be taken in now
/// for the transmitter to send again. Asks again at once while SETs keep coming in; otherwise
/// after `interval_ms`, doubling (to at most a minute) while polls fail or bring nothing new.
pub async fn poll_forever(receiver: Receiver, issuer: Arc<Issuer>, config: PollConfig) {
    let mut ack: Vec<String> = Vec::new();
    let mut errors = Map::new();
    let interval = Duration::from_millis(config.interval_ms);
    let mut pause = interval;
    loop {
        let mut request = json!({"ack": ack, "maxEvents": config.max_events, "returnImmediately": true});
        if !errors.is_empty() {
            request["setErrs"] = Value::Object(errors.clone());
        }
        let answer = poll_once(&config, request).await;
        let arrived = Instant::now();
        let (sets, more) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(issuer = %issuer.trust.issuer, %error, "SSF poll failed; retrying");
                metrics::counter!("jwtguard_revocation_ssf_polls_total", "outcome" => "error").increment(1);
                pause = backoff(pause, interval);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        metrics::counter!("jwtguard_revocation_ssf_polls_total", "outcome" => "ok").increment(1);
        ack.clear();
        errors.clear();
        let mut tally = PollTally { more, ..PollTally::default() };
        for (jti, set) in sets {
            let result = match set.as_str() {
                None => Err(Problem::Refused(invalid("the SET is not a string"))),
                Some(set) => match receiver.issuer_of(set) {
                    Ok(from) if from.trust.issuer != issuer.trust.issuer => Err(Problem::Refused(Refusal {
                        err: "invalid_issuer",
                        description: "the SET's issuer is not this stream's transmitter".into(),
                        unknown_key: false,
                    })),
                    Ok(_) => {
                        let now = now_seconds();
                        receiver.take_in(Kind::SecurityEventToken, set, &issuer, "ssf_poll", arrived, now).await
                    }
                    Err(refusal) => Err(Problem::Refused(refusal)),
                },
            };
            count("ssf_poll", &result);
            match result {
                Ok(()) => {
                    tally.taken_in += 1;
                    ack.push(jti);
                }
                Err(Problem::Duplicate) => {
                    tally.old += 1;
                    ack.push(jti);
                }
                Err(Problem::Refused(r)) => {
                    tally.old += 1;
                    errors.insert(jti, json!({"err": r.err, "description": r.description}));
                }
                Err(Problem::Unavailable(_)) => tally.unavailable += 1,
            }
        }
        match next_pause(tally, pause, interval) {
            None => pause = interval,
            Some(next) => {
                pause = next;
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// What one poll brought.
#[derive(Debug, Default, Clone, Copy)]
struct PollTally {
    taken_in: usize,
    /// Refused, or taken in before.
    old: usize,
    /// Could not be taken in now (Redis, the issuer's keys): the transmitter sends them again.
    unavailable: usize,
    more: bool,
}

/// After a poll: `None` to ask again at once — SETs were taken in, so acknowledge them now and
/// take the next — else how long to pause: `interval` when idle or when SETs could not be taken
/// in now (a retry soon), doubling up to `MAX_POLL_PAUSE` (or the interval, if longer) when the
/// transmitter sends only what we refuse or already have, or says "more" with nothing: it cannot
/// make us spin.
fn next_pause(t: PollTally, pause: Duration, interval: Duration) -> Option<Duration> {
    if t.taken_in > 0 {
        return None;
    }
    let nothing_new = t.unavailable == 0 && (t.old > 0 || t.more);
    Some(if nothing_new { backoff(pause, interval) } else { interval })
}

fn backoff(pause: Duration, interval: Duration) -> Duration {
    (pause * 2).min(MAX_POLL_PAUSE.max(interval)).max(interval)
}

/// The longest pause between polls that fail or bring nothing new (unless the interval is longer).
const MAX_POLL_PAUSE: Duration = Duration::from_secs(60);

fn now_seconds() -> u64 {
    crate::feed::now_ms() / 1000
}

/// One poll request: the `sets` (jti → SET) and `moreAvailable` of the answer.
async fn poll_once(config: &PollConfig, request: Value) -> Result<(Map<String, Value>, bool), String> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_millis(config.timeout_ms.max(1))).build();
        let mut call = agent.post(&config.endpoint).set("Accept", "application/json");
        if let Some(authorization) = &config.authorization {
            call = call.set("Authorization", authorization);
        }
        let response = call.send_json(request).map_err(|e| e.to_string())?;
        let text = read_limited(response)?;
        let answer: Value = serde_json::from_str(&text).map_err(|e| format!("the answer is not JSON: {e}"))?;
        let sets = answer.get("sets").and_then(Value::as_object).cloned().ok_or("the answer has no sets object")?;
        let more = answer.get("moreAvailable").and_then(Value::as_bool).unwrap_or(false);
        Ok((sets, more))
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);

    #[test]
    fn polls_pace_themselves() {
        let tally = |taken_in, old, unavailable, more| PollTally { taken_in, old, unavailable, more };
        assert_eq!(next_pause(tally(1, 0, 0, false), I, I), None, "acknowledge at once");
        assert_eq!(next_pause(tally(1, 3, 1, true), I * 8, I), None);
        assert_eq!(next_pause(tally(0, 0, 0, false), I * 8, I), Some(I), "idle: the interval");
        assert_eq!(next_pause(tally(0, 0, 2, false), I * 8, I), Some(I), "Redis down: retry soon");
        assert_eq!(next_pause(tally(0, 2, 0, false), I, I), Some(I * 2), "only old SETs: back off");
        assert_eq!(next_pause(tally(0, 0, 0, true), I * 2, I), Some(I * 4), "more with nothing");
        assert_eq!(next_pause(tally(0, 1, 0, false), MAX_POLL_PAUSE, I), Some(MAX_POLL_PAUSE), "capped");
        // An interval above the cap (it once made clamp panic and the poller stop for good).
        let long = Duration::from_secs(90);
        assert_eq!(next_pause(tally(0, 1, 0, true), long, long), Some(long));
        assert_eq!(backoff(long, long), long);
    }
}
