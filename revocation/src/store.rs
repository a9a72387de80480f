//! Revocation state in Redis, standalone or Cluster.
//!
//! Keys (hash tags keep each request on one shard per identifier):
//! - `P:jti:{JTI}` — a revoked token, expiring with the token (`SET … EXAT`).
//! - `P:cut:{SUB}:ISS` — "log out everywhere": tokens of SUB issued before this time are revoked;
//!   `ISS` empty means every issuer. Only moves forward; expires after the maximum token lifetime.
//! - `P:ses:{SUB}` (zset, registration order), `P:sesexp:{SUB}` (hash jti → exp), `P:seq:{SUB}`
//!   — the allowlist of live sessions; `P:sidx:{JTI}` → SUB, to end a session by `jti`.
//!
//! A status check reads at most two shards (the `jti`'s and the subject's), in parallel. Every
//! write goes to its key's primary in one pipeline with `WAIT` when replicas must acknowledge it.

use jwtguard_wire::{InactiveReason, StatusResponse};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, SingleNodeRoutingInfo, SlotAddr};
use redis::{Pipeline, RedisResult, Value};
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

#[derive(Clone)]
pub struct Store {
    conn: Connection,
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
        let certs = |ca: &Vec<u8>| redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) };
        let conn = if options.cluster {
            let mut builder = ClusterClientBuilder::new(options.urls.clone())
                .retries(options.retries)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .connection_timeout(options.connect_timeout)
                .response_timeout(options.response_timeout);
            if let Some(ca) = &options.ca_pem {
                builder = builder.certs(certs(ca));
            }
            Connection::Cluster(builder.build()?.get_async_connection().await?)
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
                .set_response_timeout(Some(options.response_timeout));
            Connection::Standalone(client.get_connection_manager_with_config(config).await?)
        };
        Ok(Store { conn, options })
    }

    fn key(&self, kind: &str, tag: &str, rest: &str) -> String {
        format!("{}:{kind}:{{{tag}}}{rest}", self.options.prefix)
    }

    pub fn jti_key(&self, jti: &str) -> String {
        self.key("jti", jti, "")
    }

    fn cutoff_key(&self, sub: &str, iss: Option<&str>) -> String {
        self.key("cut", sub, &format!(":{}", iss.unwrap_or("")))
    }

    fn session_keys(&self, sub: &str) -> [String; 3] {
        [self.key("ses", sub, ""), self.key("sesexp", sub, ""), self.key("seq", sub, "")]
    }

    fn session_index_key(&self, jti: &str) -> String {
        self.key("sidx", jti, "")
    }

    /// Runs `pipe` on the primary that owns `key`'s slot (in a cluster) and records its latency.
    async fn run(&self, op: &'static str, key: &str, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let started = Instant::now();
        let result = match self.conn.clone() {
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

    /// A write: `pipe`, then `WAIT` for the configured replicas, all in one round trip to the
    /// key's primary. Answers only once the write is as durable as configured.
    async fn write(&self, op: &'static str, key: &str, mut pipe: Pipeline) -> Result<Vec<Value>, StoreError> {
        let required = self.options.min_replicas_ack;
        if required > 0 {
            pipe.cmd("WAIT").arg(required).arg(self.options.wait_timeout.as_millis() as u64);
        }
        let mut values = self.run(op, key, &pipe).await?;
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
        let key = self.jti_key(jti);
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
        let key = self.cutoff_key(sub, iss);
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
        let index = self.session_index_key(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&index).arg(sub).arg("EXAT").arg(exp).ignore();
        self.write("session_index", &index, pipe).await?;
        let [ses, sesexp, seq] = self.session_keys(sub);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(REGISTER_SCRIPT).arg(3).arg(&ses).arg(&sesexp).arg(&seq);
        pipe.arg(jti).arg(exp).arg(now).arg(limit).arg(ttl.max(1));
        let values = self.write("session_register", &ses, pipe).await?;
        Ok(match values.into_iter().next() {
            Some(Value::Array(items)) => items.into_iter().filter_map(|v| redis::from_redis_value(v).ok()).collect(),
            _ => Vec::new(),
        })
    }

    /// Ends the session `jti`; `false` if there was none.
    pub async fn end_session(&self, jti: &str) -> Result<bool, StoreError> {
        let index = self.session_index_key(jti);
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(&index);
        let sub: Option<String> = match self.run("session_lookup", &index, &pipe).await?.into_iter().next() {
            Some(v) => redis::from_redis_value(v).ok(),
            None => None,
        };
        let Some(sub) = sub else {
            return Ok(false);
        };
        let [ses, sesexp, _] = self.session_keys(&sub);
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL").arg(END_SCRIPT).arg(2).arg(&ses).arg(&sesexp).arg(jti);
        let values = self.write("session_end", &ses, pipe).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(&index).ignore();
        self.write("session_index", &index, pipe).await?;
        Ok(matches!(values.first(), Some(Value::Int(1))))
    }

    /// Whether a token may pass: one round trip per shard touched, the two in parallel.
    pub async fn status(&self, q: &StatusQuery, now: u64) -> Result<StatusResponse, StoreError> {
        let jti_read = |pipe: &mut Pipeline| {
            if let Some(jti) = &q.jti {
                pipe.cmd("EXISTS").arg(self.jti_key(jti));
            }
        };
        let subject_read = |pipe: &mut Pipeline| {
            if let Some(sub) = &q.sub {
                pipe.cmd("MGET").arg(self.cutoff_key(sub, q.iss.as_deref())).arg(self.cutoff_key(sub, None));
                if q.allowlist {
                    pipe.cmd("HGET").arg(&self.session_keys(sub)[1]).arg(q.jti.as_deref().unwrap_or(""));
                }
            }
        };
        // Standalone: every key is on the one server, so one pipeline. Cluster: one per shard
        // touched (the jti's and the subject's), in parallel.
        let mut values = Vec::new();
        let (mut jti_pipe, mut subject_pipe) = (redis::pipe(), redis::pipe());
        jti_read(&mut jti_pipe);
        subject_read(&mut subject_pipe);
        let jti_key = q.jti.as_deref().map(|j| self.jti_key(j)).unwrap_or_default();
        let subject_key = q.sub.as_deref().map(|s| self.cutoff_key(s, None)).unwrap_or_default();
        match &self.conn {
            Connection::Standalone(_) => {
                jti_read(&mut subject_pipe);
                if !subject_pipe.is_empty() {
                    let mut all = self.run("status", &jti_key, &subject_pipe).await?;
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
                            self.run(op, &key, &pipe).await
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

    /// Readiness: Redis answers and accepts a write (on the shard of the probe key).
    pub async fn ready(&self) -> Result<(), StoreError> {
        let key = format!("{}:readyz", self.options.prefix);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(1).arg("PX").arg(5000).ignore();
        self.run("ready", &key, &pipe).await.map(|_| ()).map_err(StoreError::from)
    }
}
