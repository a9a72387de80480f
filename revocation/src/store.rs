//! Revocation state in Redis, standalone or Cluster.
//!
//! Keys (built in `keys`, hash tags keep each request on one shard per identifier):
//! - `jti` — a revoked token, expiring with the token (`SET … EXAT`).
//! - `cut` — "log out everywhere": tokens of a subject issued before this time are revoked, for
//!   one issuer or every issuer. Only moves forward; expires after the maximum token lifetime.
//! - `ses` (zset, registration order), `sesexp` (hash jti → exp), `seq` — the allowlist of a
//!   subject's live sessions; `sidx` (jti → subject), to end a session by `jti`.
//!
//! - `{feed}` — the revocation feed: a stream with one entry per event that can refuse a token
//!   (see `feed`), trimmed by age. Each write appends its event BEFORE the state change it
//!   reports: a failure between the two leaves an event without state (proxies refuse a token
//!   the status endpoint still calls active: fail-safe, and the caller's retry completes it),
//!   never state without an event (proxies holding the set would accept a revoked token).
//!
//! A status check reads at most two shards (the `jti`'s and the subject's), in parallel. Every
//! write goes to its key's primary in one pipeline with `WAIT` when replicas must acknowledge it,
//! on connections of their own so that reads never wait behind a WAIT.

use crate::feed::StreamId;
use crate::keys::Keys;
use jwtguard_wire::{FeedEvent, InactiveReason, StatusResponse};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Pipeline, RedisResult, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the service reaches Redis, with explicit bounds on every call: the crate's defaults retry
/// for many seconds, far too long for an authentication path.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// One URL for standalone Redis, or every cluster node's URL (`redis://` or `rediss://`,
    /// with `user:password@` for ACLs).
    pub urls: Vec<String>,
    pub cluster: bool,
    pub prefix: String,
    pub min_replicas_ack: u32,
    pub wait_timeout: Duration,
    pub response_timeout: Duration,
    pub connect_timeout: Duration,
    pub retries: u32,
    /// PEM CA certificates to trust for `rediss://` instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
    /// How long feed entries are kept: past it every event's `until`, and the grace the feed
    /// sends it for after that (`feed::UNTIL_GRACE_SECONDS`), have passed.
    pub feed_retention: Duration,
}

#[derive(Debug)]
pub enum StoreError {
    /// Redis did not answer, or answered with an error.
    Unavailable(String),
    /// The write reached the primary but fewer replicas than required confirmed it.
    NotDurable { acked: i64, required: u32 },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "redis unavailable: {e}"),
            StoreError::NotDurable { acked, required } => {
                write!(f, "write confirmed by {acked} replicas, {required} required")
            }
        }
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

#[derive(Clone)]
enum Connection {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Connections for writes: WAIT blocks the connection it is sent on until the replicas answer or
/// the wait times out, so writes have their own, a few so concurrent writes do not queue behind
/// one another's waits. Any other blocking command belongs there too, never on `reads`.
const WRITE_CONNECTIONS: usize = 4;

#[derive(Clone)]
pub struct Store {
    /// Status reads and everything else that never blocks.
    reads: Connection,
    writes: Arc<Vec<Connection>>,
    next_write: Arc<AtomicUsize>,
    keys: Keys,
    options: RedisOptions,
    /// The newest feed entry this instance appended: its polls wait for their reader to pass
    /// it, so a poll after a write's answer carries the write.
    appended: Arc<std::sync::Mutex<StreamId>>,
}

/// A signal's replay record: claimed while its writes are under way, then done.
/// The prefix of a claim's value (each delivery's claim is its own value).
pub const CLAIMED: &str = "claimed:";
const DONE: &str = "done";

/// Deletes a claim only if it is still this delivery's: a late failing delivery must not erase
/// another's claim or the record of a signal taken in.
const FORGET_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// What claiming a signal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Ours now: write what it asks for.
    Claimed,
    /// Another delivery of it is being taken in (or could not finish and its claim has not
    /// lapsed yet).
    InProgress,
    /// Taken in before.
    Done,
}

/// What the filter asks about one token.
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    pub jti: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub iat: Option<u64>,
    pub sid: Option<String>,
    pub allowlist: bool,
}

/// Moves a subject's cutoff forward only; returns the cutoff in force.
const CUTOFF_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return wanted
end
return current";

/// Registers a session: drops expired ones, adds this one, ends the oldest beyond the limit.
/// KEYS: ses, sesexp, seq, sesend. ARGV: jti, exp, now, limit (0 = none), ttl.
/// Returns {the jtis this call ended, {jti, exp, …} of every ended session whose feed event is
/// not confirmed yet}. The ended ones wait in `sesend` until their event is in the feed: a call
/// whose append failed is retried, and the retry would otherwise find them gone and say nothing.
const REGISTER_SCRIPT: &str = r"
local now = tonumber(ARGV[3])
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= now then
    redis.call('HDEL', KEYS[2], all[i])
    redis.call('ZREM', KEYS[1], all[i])
  end
end
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ended = {}
local limit = tonumber(ARGV[4])
local count = redis.call('ZCARD', KEYS[1])
if limit > 0 and count > limit then
  ended = redis.call('ZRANGE', KEYS[1], 0, count - limit - 1)
  for _, jti in ipairs(ended) do
    local exp = redis.call('HGET', KEYS[2], jti)
    if exp then redis.call('HSET', KEYS[4], jti, exp) end
    redis.call('ZREM', KEYS[1], jti)
    redis.call('HDEL', KEYS[2], jti)
  end
end
local unsent = {}
local pending = redis.call('HGETALL', KEYS[4])
for i = 1, #pending, 2 do
  if tonumber(pending[i + 1]) > now then
    table.insert(unsent, pending[i])
    table.insert(unsent, pending[i + 1])
  else
    redis.call('HDEL', KEYS[4], pending[i])
  end
end
for i = 1, 4 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return {ended, unsent}";

/// Ends one session. KEYS: ses, sesexp. ARGV: jti. Returns its exp, or nil if it had none.
const END_SCRIPT: &str = r"
local exp = redis.call('HGET', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return exp";

impl Store {
    pub async fn connect(options: RedisOptions) -> Result<Store, StoreError> {
        // A write that waits is answered only after WAIT returns: allow for the wait on top of the
        // ordinary bound, or every slow acknowledgement would look like a dead Redis.
        let write_timeout = if options.min_replicas_ack > 0 {
            options.response_timeout + options.wait_timeout
        } else {
            options.response_timeout
        };
        let reads = Self::open(&options, options.response_timeout).await?;
        let mut writes = Vec::with_capacity(WRITE_CONNECTIONS);
        for _ in 0..WRITE_CONNECTIONS {
            writes.push(Self::open(&options, write_timeout).await?);
        }
        let keys = Keys::new(&options.prefix);
        Ok(Store {
            reads,
            writes: Arc::new(writes),
            next_write: Arc::new(AtomicUsize::new(0)),
            keys,
            options,
            appended: Arc::default(),
        })
    }

    /// One connection (per node, in a cluster) of its own: redis-rs multiplexes every command
    /// given to a connection onto one socket, so sharing it would share its waits.
    async fn open(options: &RedisOptions, response_timeout: Duration) -> Result<Connection, StoreError> {
        let certs = |ca: &Vec<u8>| redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
        if options.cluster {
            let mut builder = ClusterClientBuilder::new(options.urls.clone())
                .retries(options.retries)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .connection_timeout(options.connect_timeout)
                .response_timeout(response_timeout);
            if let Some(ca) = &options.ca_pem {
                builder = builder.certs(certs(ca));
            }
            Ok(Connection::Cluster(builder.build()?.get_async_connection().await?))
        } else {
            let url = options.urls.first().ok_or_else(|| StoreError::Unavailable("no Redis URL".into()))?;
            let client = match &options.ca_pem {
                Some(ca) => redis::Client::build_with_tls(url.as_str(), certs(ca))?,
                None => redis::Client::open(url.as_str())?,
            };
            let config = ConnectionManagerConfig::new()
                .set_number_of_retries(options.retries as usize)
                .set_max_delay(Duration::from_millis(200))
                .set_connection_timeout(Some(options.connect_timeout))
                .set_response_timeout(Some(response_timeout));
            Ok(Connection::Standalone(client.get_connection_manager_with_config(config).await?))
        }
    }

    /// The next write connection, in turn: concurrent writes wait side by side, not in a queue.
    fn write_connection(&self) -> &Connection {
        &self.writes[self.next_write.fetch_add(1, Ordering::Relaxed) % self.writes.len()]
    }

    /// Runs `pipe` on `conn`, on the primary that owns `key`'s slot (in a cluster), and records
    /// its latency.
    async fn run(&self, conn: &Connection, op: &'static str, key: &str, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let started = Instant::now();
        let result = match conn.clone() {
            Connection::Standalone(mut c) => pipe.query_async(&mut c).await,
            Connection::Cluster(mut c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(key, SlotAddr::Master));
                c.route_pipeline(pipe.clone(), 0, pipe.len(), route).await
            }
        };
        metrics::histogram!("jwtguard_revocation_redis_seconds", "op" => op).record(started.elapsed().as_secs_f64());
        if result.is_err() {
            metrics::counter!("jwtguard_revocation_redis_errors_total", "op" => op).increment(1);
        }
        result
    }

    /// A read on the request path: never behind a write's WAIT.
    async fn read(&self, op: &'static str, key: &str, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        self.run(&self.reads, op, key, pipe).await
    }

    /// A write: `pipe`, then `WAIT` for the configured replicas, all in one round trip to the
    /// key's primary, on a write connection (WAIT blocks the connection it is sent on). Answers
    /// only once the write is as durable as configured.
    async fn write(&self, op: &'static str, key: &str, mut pipe: Pipeline) -> Result<Vec<Value>, StoreError> {
        let required = self.options.min_replicas_ack;
        if required > 0 {
            pipe.cmd("WAIT").arg(required).arg(self.options.wait_timeout.as_millis() as u64);
        }
        let mut values = self.run(self.write_connection(), op, key, &pipe).await?;
        if required > 0 {
            let acked = match values.pop() {
                Some(Value::Int(n)) => n,
                _ => 0,
            };
            if acked < i64::from(required) {
                return Err(StoreError::NotDurable { acked, required });
            }
        }
        Ok(values)
    }

    /// Tells the feed, then revokes `jti` until `until` (seconds since the epoch). Idempotent:
    /// a retry after a failure appends again and stores the same.
    pub async fn revoke_jti(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        self.append(&[FeedEvent::Revoked { jti: jti.to_string(), until }]).await?;
        let key = self.keys.jti(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("EXAT").arg(until).ignore();
        self.write("revoke", &key, pipe).await?;
        Ok(())
    }

    /// Tells the feed the requested cutoff, then moves the subject's cutoff to `issued_before`
    /// unless it is already later; returns the cutoff in force. The event carries the requested
    /// cutoff even when a later one is in force: proxies keep the latest cutoff they have seen,
    /// and the later one had its own event. It lasts `ttl` past the cutoff, as long as a token
    /// issued before it can live.
    pub async fn revoke_subject(
        &self,
        sub: &str,
        iss: Option<&str>,
        issued_before: u64,
        ttl: u64,
    ) -> Result<u64, StoreError> {
        let event = FeedEvent::SubjectCutoff {
            sub: sub.to_string(),
            iss: iss.map(String::from),
            before: issued_before,
            until: issued_before.saturating_add(ttl),
        };
        self.append(&[event]).await?;
        let key = self.keys.cutoff(sub, iss);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(CUTOFF_SCRIPT).arg(1).arg(&key).arg(issued_before).arg(ttl.max(1));
        let values = self.write("revoke_subject", &key, pipe).await?;
        Ok(match values.first() {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(issued_before),
            _ => issued_before,
        })
    }

    /// Tells the feed, then revokes issuer `iss`'s session `sid` until `until`.
    pub async fn revoke_sid(&self, iss: &str, sid: &str, until: u64) -> Result<(), StoreError> {
        self.append(&[FeedEvent::SidRevoked { iss: iss.to_string(), sid: sid.to_string(), until }]).await?;
        let key = self.keys.sid(iss, sid);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("EXAT").arg(until).ignore();
        self.write("revoke_sid", &key, pipe).await?;
        Ok(())
    }

    /// Claims the signal `jti` of `iss` for `seconds`, atomically (`SET NX GET`): replay
    /// protection that two deliveries at once cannot both pass.
    pub async fn claim_seen(&self, iss: &str, jti: &str, claim: &str, seconds: u64) -> Result<Claim, StoreError> {
        let key = self.keys.seen(iss, jti);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(claim).arg("NX").arg("GET").arg("EX").arg(seconds.max(1));
        let values = self.write("claim_seen", &key, pipe).await?;
        let previous: Option<String> =
            values.into_iter().next().and_then(|v| redis::from_redis_value(v).ok()).flatten();
        Ok(match previous {
            None => Claim::Claimed,
            Some(p) if p.starts_with(CLAIMED) => Claim::InProgress,
            Some(_) => Claim::Done,
        })
    }

    /// Remembers the signal `jti` of `iss` until `until`, once what it asked for is written.
    pub async fn mark_seen(&self, iss: &str, jti: &str, until: u64) -> Result<(), StoreError> {
        let key = self.keys.seen(iss, jti);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(DONE).arg("EXAT").arg(until).ignore();
        self.write("mark_seen", &key, pipe).await?;
        Ok(())
    }

    /// Gives up this delivery's `claim` (and nothing else) when its writes failed, so that the
    /// signal can be taken in on a retry.
    pub async fn forget_seen(&self, iss: &str, jti: &str, claim: &str) -> Result<(), StoreError> {
        let key = self.keys.seen(iss, jti);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(FORGET_SCRIPT).arg(1).arg(&key).arg(claim).ignore();
        self.write("forget_seen", &key, pipe).await?;
        Ok(())
    }

    /// Registers a live session; returns the sessions ended to keep within `limit`.
    pub async fn register_session(
        &self,
        jti: &str,
        sub: &str,
        exp: u64,
        now: u64,
        limit: u32,
        ttl: u64,
    ) -> Result<Vec<String>, StoreError> {
        // The index first: a session whose index is missing could not be ended by jti.
        let index = self.keys.session_index(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&index).arg(sub).arg("EXAT").arg(exp).ignore();
        self.write("session_index", &index, pipe).await?;
        let s = self.keys.sessions(sub);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(REGISTER_SCRIPT).arg(4).arg(&s.order).arg(&s.expiry).arg(&s.seq).arg(&s.ended);
        pipe.arg(jti).arg(exp).arg(now).arg(limit).arg(ttl.max(1));
        let values = self.write("session_register", &s.order, pipe).await?;
        let mut parts = match values.into_iter().next() {
            Some(Value::Array(parts)) => parts.into_iter(),
            _ => Vec::new().into_iter(),
        };
        let ended: Vec<String> = parts.next().and_then(|v| redis::from_redis_value(v).ok()).unwrap_or_default();
        let unsent: Vec<(String, u64)> = parts.next().and_then(|v| redis::from_redis_value(v).ok()).unwrap_or_default();
        if !unsent.is_empty() {
            let events: Vec<FeedEvent> =
                unsent.iter().map(|(jti, exp)| FeedEvent::SessionEnded { jti: jti.clone(), until: *exp }).collect();
            self.append(&events).await?;
            // In the feed now; if this is lost the next registration only sends them again.
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL").arg(&s.ended).arg(unsent.iter().map(|(jti, _)| jti).collect::<Vec<_>>()).ignore();
            if let Err(e) = self.run(self.write_connection(), "session_sent", &s.ended, &pipe).await {
                tracing::warn!(error = %e, "ended sessions stay pending; the next registration sends them again");
            }
        }
        Ok(ended)
    }

    /// Tells the feed, then ends the session `jti`; `false` if there was none. The session's
    /// exp (the event's `until`) is read first; nothing changes until the event is in the feed.
    /// The index goes last: a retry after any failure finds it, and with it the session's exp
    /// (its expiry, should the session itself be ended already).
    pub async fn end_session(&self, jti: &str) -> Result<bool, StoreError> {
        let index = self.keys.session_index(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&index).cmd("PTTL").arg(&index);
        let mut values = self.read("session_lookup", &index, &pipe).await?.into_iter();
        let sub: Option<String> = values.next().and_then(|v| redis::from_redis_value(v).ok());
        let pttl: i64 = values.next().and_then(|v| redis::from_redis_value(v).ok()).unwrap_or(-2);
        let Some(sub) = sub else {
            return Ok(false);
        };
        let s = self.keys.sessions(&sub);
        let mut pipe = redis::pipe();
        pipe.cmd("HGET").arg(&s.expiry).arg(jti);
        let values = self.read("session_lookup", &s.expiry, &pipe).await?;
        let exp: Option<u64> = values.into_iter().next().and_then(|v| redis::from_redis_value(v).ok());
        // The index expires at the session's exp (`SET … EXAT exp`).
        let index_exp = u64::try_from(pttl).ok().map(|ms| (crate::feed::now_ms().saturating_add(ms)).div_ceil(1000));
        let until = exp.or(index_exp);
        if let Some(until) = until {
            self.append(&[FeedEvent::SessionEnded { jti: jti.to_string(), until }]).await?;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(END_SCRIPT).arg(2).arg(&s.order).arg(&s.expiry).arg(jti);
        let values = self.write("session_end", &s.order, pipe).await?;
        let ended: Option<u64> = values.into_iter().next().and_then(|v| redis::from_redis_value(v).ok());
        if let Some(ended) = ended.filter(|e| until.is_none_or(|u| *e > u)) {
            // Registered again, with a later exp, between the read and the end: the event must
            // last as long (rare; a failure here is a 503 and the retry appends it first).
            self.append(&[FeedEvent::SessionEnded { jti: jti.to_string(), until: ended }]).await?;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&index).ignore();
        self.write("session_index", &index, pipe).await?;
        Ok(ended.is_some())
    }

    /// Appends `events` to the feed, each its own entry, and trims entries older than the
    /// retention: one pipeline to the stream's primary, on a write connection, with `WAIT` when
    /// replicas must confirm. Answers only once the entries are as durable as configured.
    async fn append(&self, events: &[FeedEvent]) -> Result<(), StoreError> {
        let key = self.keys.feed();
        let min_id = crate::feed::now_ms().saturating_sub(self.options.feed_retention.as_millis() as u64);
        let mut pipe = redis::pipe();
        for event in events {
            let json = serde_json::to_string(event).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            pipe.cmd("XADD").arg(&key).arg("MINID").arg("~").arg(min_id).arg("*").arg(FEED_FIELD).arg(json);
        }
        let ids = self.write("feed_append", &key, pipe).await?;
        let newest =
            ids.into_iter().filter_map(|id| redis::from_redis_value::<String>(id).ok()?.parse::<StreamId>().ok()).max();
        if let Some(newest) = newest {
            let mut appended = self.appended.lock().unwrap_or_else(|e| e.into_inner());
            *appended = newest.max(*appended);
        }
        for event in events {
            let kind = match event {
                FeedEvent::Revoked { .. } => "revoked",
                FeedEvent::SubjectCutoff { .. } => "subject_cutoff",
                FeedEvent::SessionEnded { .. } => "session_ended",
                FeedEvent::SidRevoked { .. } => "sid_revoked",
            };
            metrics::counter!("jwtguard_revocation_feed_events_appended_total", "type" => kind).increment(1);
        }
        Ok(())
    }

    /// The newest feed entry this instance appended.
    pub fn appended(&self) -> StreamId {
        *self.appended.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feed entries after `after`, oldest first, at most `count` (`XRANGE key (after + COUNT n`),
    /// on the read connection.
    pub async fn feed_range(&self, after: StreamId, count: usize) -> Result<Vec<FeedEntry>, StoreError> {
        let key = self.keys.feed();
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE").arg(&key).arg(format!("({after}")).arg("+").arg("COUNT").arg(count);
        let values = self.read("feed_range", &key, &pipe).await?;
        Ok(values.into_iter().next().map(entries).unwrap_or_default())
    }

    /// Whether the stream holds an entry with this id, on the read connection.
    pub async fn feed_has(&self, id: StreamId) -> Result<bool, StoreError> {
        let key = self.keys.feed();
        let mut pipe = redis::pipe();
        pipe.cmd("XRANGE").arg(&key).arg(id.to_string()).arg(id.to_string()).arg("COUNT").arg(1);
        let values = self.read("feed_has", &key, &pipe).await?;
        Ok(!values.into_iter().next().map(entries).unwrap_or_default().is_empty())
    }

    /// The id of the stream's newest entry (`None`: no entry), on the read connection.
    pub async fn feed_last(&self) -> Result<Option<StreamId>, StoreError> {
        let key = self.keys.feed();
        let mut pipe = redis::pipe();
        pipe.cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1);
        let values = self.read("feed_last", &key, &pipe).await?;
        Ok(values.into_iter().next().map(entries).unwrap_or_default().last().map(|e| e.id))
    }

    /// A connection for the feed's reader alone: its XREAD blocks for up to `block`, and a
    /// blocked connection must never be one a request or a write waits on.
    pub async fn feed_reader(&self, block: Duration) -> Result<FeedReader, StoreError> {
        let conn = Self::open(&self.options, block + self.options.response_timeout).await?;
        Ok(FeedReader { conn, key: self.keys.feed(), block })
    }

    /// Whether a token may pass: one round trip per shard touched, the two in parallel.
    pub async fn status(&self, q: &StatusQuery, now: u64) -> Result<StatusResponse, StoreError> {
        // One read per shard touched: the jti's, the session's (`sid` with `iss`), the subject's.
        let mut jti_pipe = redis::pipe();
        if let Some(jti) = &q.jti {
            jti_pipe.cmd("EXISTS").arg(self.keys.jti(jti));
        }
        let sid_key = match (&q.iss, &q.sid) {
            (Some(iss), Some(sid)) => self.keys.sid(iss, sid),
            _ => String::new(),
        };
        let mut sid_pipe = redis::pipe();
        if !sid_key.is_empty() {
            sid_pipe.cmd("EXISTS").arg(&sid_key);
        }
        let mut subject_pipe = redis::pipe();
        if let Some(sub) = &q.sub {
            subject_pipe.cmd("MGET").arg(self.keys.cutoff(sub, q.iss.as_deref())).arg(self.keys.cutoff(sub, None));
            if q.allowlist {
                subject_pipe.cmd("HGET").arg(self.keys.sessions(sub).expiry).arg(q.jti.as_deref().unwrap_or(""));
            }
        }
        let groups = [
            ("status_jti", q.jti.as_deref().map(|j| self.keys.jti(j)).unwrap_or_default(), jti_pipe),
            ("status_sid", sid_key, sid_pipe),
            ("status_subject", q.sub.as_deref().map(|s| self.keys.cutoff(s, None)).unwrap_or_default(), subject_pipe),
        ];
        let mut answers: [Vec<Value>; 3] = Default::default();
        match &self.reads {
            // Standalone: every key is on the one server, so one pipeline.
            Connection::Standalone(_) => {
                let mut all = redis::pipe();
                let mut counts = [0; 3];
                for (i, (_, _, pipe)) in groups.iter().enumerate() {
                    counts[i] = pipe.cmd_iter().count();
                    for cmd in pipe.cmd_iter() {
                        all.add_command(cmd.clone());
                    }
                }
                if !all.is_empty() {
                    let mut values = self.read("status", &groups[0].1, &all).await?.into_iter();
                    for (answer, count) in answers.iter_mut().zip(counts) {
                        answer.extend(values.by_ref().take(count));
                    }
                }
            }
            // Cluster: the groups in parallel, each to its shard.
            Connection::Cluster(_) => {
                let [a, b, c] = &groups;
                let (a, b, c) = tokio::join!(self.read_some(a), self.read_some(b), self.read_some(c));
                answers = [a?, b?, c?];
            }
        }
        let [jti_values, sid_values, subject_values] = answers;
        let exists = |values: Vec<Value>| matches!(values.first(), Some(Value::Int(n)) if *n > 0);
        let revoked = exists(jti_values);
        let session_revoked = exists(sid_values);
        let mut values = subject_values.into_iter();
        let (cutoff, session_exp) = if q.sub.is_some() {
            let cutoffs: Vec<Option<u64>> =
                values.next().and_then(|v| redis::from_redis_value(v).ok()).unwrap_or_default();
            let session_exp: Option<u64> = values.next().and_then(|v| redis::from_redis_value(v).ok()).flatten();
            (cutoffs.into_iter().flatten().max(), session_exp)
        } else {
            (None, None)
        };
        let reason = if revoked {
            Some(InactiveReason::Revoked)
        } else if session_revoked {
            Some(InactiveReason::SessionRevoked)
        } else if cutoff.is_some_and(|c| q.iat.is_none_or(|iat| iat < c)) {
            // A token without iat cannot show it came after the cutoff.
            Some(InactiveReason::SubjectRevoked)
        } else if q.allowlist && session_exp.is_none_or(|exp| exp <= now) {
            Some(InactiveReason::NoSession)
        } else {
            None
        };
        Ok(StatusResponse { active: reason.is_none(), reason })
    }

    /// One status group's read; none when it has no command.
    async fn read_some(&self, (op, key, pipe): &(&'static str, String, Pipeline)) -> RedisResult<Vec<Value>> {
        if pipe.is_empty() {
            Ok(Vec::new())
        } else {
            self.read(op, key, pipe).await
        }
    }

    /// Readiness: Redis answers and accepts a write (on the shard of the probe key), and the
    /// feed accepts an append (`XADD` to a probe stream with the feed's hash tag, so on the
    /// feed's shard, on a write connection: the connections and the permission every write's
    /// event needs). Neither waits for replicas: a replica outage must not make the service
    /// unready for the reads it can still answer. Both in parallel.
    pub async fn ready(&self) -> Result<(), StoreError> {
        let key = self.keys.ready();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("PX").arg(5000).ignore();
        let probe = self.keys.feed_probe();
        let mut feed_pipe = redis::pipe();
        feed_pipe.cmd("XADD").arg(&probe).arg("MAXLEN").arg(1).arg("*").arg("k").arg("v").ignore();
        feed_pipe.cmd("PEXPIRE").arg(&probe).arg(5000).ignore();
        let (state, feed) = tokio::join!(
            self.read("ready", &key, &pipe),
            self.run(self.write_connection(), "ready_feed", &probe, &feed_pipe)
        );
        state?;
        feed?;
        Ok(())
    }
}

/// The one field of a feed entry: the event as the feed sends it (`jwtguard_wire::FeedEvent`).
pub const FEED_FIELD: &str = "event";

/// One entry of the feed stream; `event` is `None` for an entry this service cannot read (it is
/// skipped, but still counts as a position).
#[derive(Debug, Clone, PartialEq)]
pub struct FeedEntry {
    pub id: StreamId,
    pub event: Option<FeedEvent>,
}

/// The feed reader's own connection (see `Store::feed_reader`).
pub struct FeedReader {
    conn: Connection,
    key: String,
    block: Duration,
}

impl FeedReader {
    /// `XREAD COUNT n BLOCK ms STREAMS key after`: entries after `after`, or none once the block
    /// has passed.
    pub async fn read(&mut self, after: StreamId, count: usize) -> RedisResult<Vec<FeedEntry>> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count).arg("BLOCK").arg(self.block.as_millis() as u64);
        cmd.arg("STREAMS").arg(&self.key).arg(after.to_string());
        let reply = self.query(&cmd).await?;
        // RESP2: [[key, entries]]; RESP3: {key: entries}; nil when the block passed.
        let per_stream = match reply {
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|s| match s {
                    Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                    _ => None,
                })
                .collect(),
            Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
            _ => Vec::new(),
        };
        Ok(per_stream.into_iter().flat_map(entries).collect())
    }

    /// The stream's newest entry id, on this connection (`None`: no entry).
    pub async fn last(&mut self) -> RedisResult<Option<StreamId>> {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(&self.key).arg("+").arg("-").arg("COUNT").arg(1);
        Ok(entries(self.query(&cmd).await?).last().map(|e| e.id))
    }

    /// Not timed into `jwtguard_revocation_redis_seconds`: an idle XREAD takes the whole block.
    async fn query(&mut self, cmd: &redis::Cmd) -> RedisResult<Value> {
        match &mut self.conn {
            Connection::Standalone(c) => cmd.query_async(c).await,
            Connection::Cluster(c) => {
                let route = SingleNodeRoutingInfo::SpecificNode(Route::with_key(&self.key, SlotAddr::Master));
                c.route_command(cmd.clone(), RoutingInfo::SingleNode(route)).await
            }
        }
    }
}

/// Stream entries from an XRANGE/XREVRANGE/XREAD reply: `[[id, [field, value, …]], …]`. An
/// entry without a readable id is dropped; one without a readable event keeps its id.
fn entries(reply: Value) -> Vec<FeedEntry> {
    let Value::Array(items) = reply else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|item| {
            let Value::Array(mut pair) = item else { return None };
            if pair.len() != 2 {
                return None;
            }
            let fields = pair.pop()?;
            let id: String = redis::from_redis_value(pair.pop()?).ok()?;
            let id = id.parse::<StreamId>().ok()?;
            let fields: Vec<(Value, Value)> = match fields {
                Value::Array(flat) => {
                    let mut flat = flat.into_iter();
                    std::iter::from_fn(|| Some((flat.next()?, flat.next()?))).collect()
                }
                Value::Map(map) => map,
                _ => Vec::new(),
            };
            let event = fields.into_iter().find_map(|(name, value)| {
                let name: String = redis::from_redis_value(name).ok()?;
                if name != FEED_FIELD {
                    return None;
                }
                let json: Vec<u8> = redis::from_redis_value(value).ok()?;
                serde_json::from_slice::<FeedEvent>(&json).ok()
            });
            Some(FeedEntry { id, event })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_stream_entries_and_keeps_the_ids_of_unreadable_ones() {
        let event = r#"{"type":"revoked","jti":"j","until":9}"#;
        let reply = Value::Array(vec![
            Value::Array(vec![bulk("5-1"), Value::Array(vec![bulk("event"), bulk(event)])]),
            Value::Array(vec![bulk("6-0"), Value::Array(vec![bulk("event"), bulk("{not json")])]),
            Value::Array(vec![bulk("7-0"), Value::Array(vec![bulk("other"), bulk(event)])]),
            Value::Array(vec![bulk("not-an-id"), Value::Array(vec![])]),
            Value::Nil,
        ]);
        let got = entries(reply);
        let ids: Vec<String> = got.iter().map(|e| e.id.to_string()).collect();
        assert_eq!(ids, ["5-1", "6-0", "7-0"]);
        assert_eq!(got[0].event, Some(FeedEvent::Revoked { jti: "j".into(), until: 9 }));
        assert_eq!((got[1].event.is_none(), got[2].event.is_none()), (true, true));
        assert!(entries(Value::Nil).is_empty());
    }
}
