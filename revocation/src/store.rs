//! Revocation state in Redis, standalone or Cluster.
//!
//! Keys (built in `keys`, hash tags keep each request on one shard per identifier):
//! - `jti` — a revoked token, expiring with the token (`SET … EXAT`).
//! - `cut` — "log out everywhere": tokens of a subject issued before this time are revoked, for
//!   one issuer or every issuer. Only moves forward; expires after the maximum token lifetime.
//! - `ses` (zset, registration order), `sesexp` (hash jti → exp), `seq` — the allowlist of a
//!   subject's live sessions; `sidx` (jti → subject), to end a session by `jti`.
//!
//! A status check reads at most two shards (the `jti`'s and the subject's), in parallel. Every
//! write goes to its key's primary in one pipeline with `WAIT` when replicas must acknowledge it,
//! on connections of their own so that reads never wait behind a WAIT.

use crate::keys::Keys;
use jwtguard_wire::{InactiveReason, StatusResponse};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
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
}

/// What the filter asks about one token.
#[derive(Debug, Clone, Default)]
pub struct StatusQuery {
    pub jti: Option<String>,
    pub sub: Option<String>,
    pub iss: Option<String>,
    pub iat: Option<u64>,
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
/// KEYS: ses, sesexp, seq. ARGV: jti, exp, now, limit (0 = none), ttl. Returns the ended jtis.
const REGISTER_SCRIPT: &str = r"
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) <= tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[2], all[i])
    redis.call('ZREM', KEYS[1], all[i])
  end
end
redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local ended = {}
local limit = tonumber(ARGV[4])
local count = redis.call('ZCARD', KEYS[1])
if limit > 0 and count > limit then
  ended = redis.call('ZRANGE', KEYS[1], 0, count - limit - 1)
  for _, jti in ipairs(ended) do
    redis.call('ZREM', KEYS[1], jti)
    redis.call('HDEL', KEYS[2], jti)
  end
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return ended";

/// Ends one session. KEYS: ses, sesexp. ARGV: jti. Returns 1 if it existed.
const END_SCRIPT: &str = r"
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('HDEL', KEYS[2], ARGV[1])";

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
        Ok(Store { reads, writes: Arc::new(writes), next_write: Arc::new(AtomicUsize::new(0)), keys, options })
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

    /// Revokes `jti` until `until` (seconds since the epoch). Idempotent.
    pub async fn revoke_jti(&self, jti: &str, until: u64) -> Result<(), StoreError> {
        let key = self.keys.jti(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("EXAT").arg(until).ignore();
        self.write("revoke", &key, pipe).await.map(|_| ())
    }

    /// Moves the subject's cutoff to `issued_before` unless it is already later; returns the
    /// cutoff in force.
    pub async fn revoke_subject(
        &self,
        sub: &str,
        iss: Option<&str>,
        issued_before: u64,
        ttl: u64,
    ) -> Result<u64, StoreError> {
        let key = self.keys.cutoff(sub, iss);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(CUTOFF_SCRIPT).arg(1).arg(&key).arg(issued_before).arg(ttl.max(1));
        let values = self.write("revoke_subject", &key, pipe).await?;
        Ok(match values.first() {
            Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(issued_before),
            _ => issued_before,
        })
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
        pipe.cmd("EVAL").arg(REGISTER_SCRIPT).arg(3).arg(&s.order).arg(&s.expiry).arg(&s.seq);
        pipe.arg(jti).arg(exp).arg(now).arg(limit).arg(ttl.max(1));
        let values = self.write("session_register", &s.order, pipe).await?;
        Ok(match values.into_iter().next() {
            Some(Value::Array(items)) => items.into_iter().filter_map(|v| redis::from_redis_value(v).ok()).collect(),
            _ => Vec::new(),
        })
    }

    /// Ends the session `jti`; `false` if there was none.
    pub async fn end_session(&self, jti: &str) -> Result<bool, StoreError> {
        let index = self.keys.session_index(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&index);
        let sub: Option<String> = match self.read("session_lookup", &index, &pipe).await?.into_iter().next() {
            Some(v) => redis::from_redis_value(v).ok(),
            None => None,
        };
        let Some(sub) = sub else {
            return Ok(false);
        };
        let s = self.keys.sessions(&sub);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(END_SCRIPT).arg(2).arg(&s.order).arg(&s.expiry).arg(jti);
        let values = self.write("session_end", &s.order, pipe).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&index).ignore();
        self.write("session_index", &index, pipe).await?;
        Ok(matches!(values.first(), Some(Value::Int(1))))
    }

    /// Whether a token may pass: one round trip per shard touched, the two in parallel.
    pub async fn status(&self, q: &StatusQuery, now: u64) -> Result<StatusResponse, StoreError> {
        let jti_read = |pipe: &mut Pipeline| {
            if let Some(jti) = &q.jti {
                pipe.cmd("EXISTS").arg(self.keys.jti(jti));
            }
        };
        let subject_read = |pipe: &mut Pipeline| {
            if let Some(sub) = &q.sub {
                pipe.cmd("MGET").arg(self.keys.cutoff(sub, q.iss.as_deref())).arg(self.keys.cutoff(sub, None));
                if q.allowlist {
                    pipe.cmd("HGET").arg(self.keys.sessions(sub).expiry).arg(q.jti.as_deref().unwrap_or(""));
                }
            }
        };
        // Standalone: every key is on the one server, so one pipeline. Cluster: one per shard
        // touched (the jti's and the subject's), in parallel.
        let mut values = Vec::new();
        let (mut jti_pipe, mut subject_pipe) = (redis::pipe(), redis::pipe());
        jti_read(&mut jti_pipe);
        subject_read(&mut subject_pipe);
        let jti_key = q.jti.as_deref().map(|j| self.keys.jti(j)).unwrap_or_default();
        let subject_key = q.sub.as_deref().map(|s| self.keys.cutoff(s, None)).unwrap_or_default();
        match &self.reads {
            Connection::Standalone(_) => {
                jti_read(&mut subject_pipe);
                if !subject_pipe.is_empty() {
                    let mut all = self.read("status", &jti_key, &subject_pipe).await?;
                    // Put the jti's answer first, as in the cluster case.
                    if q.jti.is_some() {
                        let jti_value = all.pop();
                        values.extend(jti_value);
                    }
                    values.extend(all);
                }
            }
            Connection::Cluster(_) => {
                let run = |op, key: &str, pipe: &Pipeline| {
                    let key = key.to_string();
                    let pipe = pipe.clone();
                    async move {
                        if pipe.is_empty() {
                            Ok(Vec::new())
                        } else {
                            self.read(op, &key, &pipe).await
                        }
                    }
                };
                let (a, b) = tokio::join!(
                    run("status_jti", &jti_key, &jti_pipe),
                    run("status_subject", &subject_key, &subject_pipe)
                );
                values.extend(a?);
                values.extend(b?);
            }
        }
        let mut values = values.into_iter();
        let revoked = q.jti.is_some() && matches!(values.next(), Some(Value::Int(n)) if n > 0);
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

    /// Readiness: Redis answers and accepts a write (on the shard of the probe key). On the read
    /// connection: it does not wait for replicas, and a replica outage must not make the service
    /// unready for the reads it can still answer.
    pub async fn ready(&self) -> Result<(), StoreError> {
        let key = self.keys.ready();
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("PX").arg(5000).ignore();
        self.read("ready", &key, &pipe).await.map(|_| ()).map_err(StoreError::from)
    }
}
