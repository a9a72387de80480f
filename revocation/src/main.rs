//! `jwtguard-revocation`: the revocation service (`serve`) and a small client for operators.
//! `main` only wires: options → store → router → server, and the client subcommands.

mod api;
mod auth;
mod check_config;
mod client;
mod feed;
mod form;
mod issuers;
mod keys;
mod receivers;
mod signals;
mod store;
mod telemetry;
mod token;
mod validate;

use clap::{Parser, Subcommand, ValueEnum};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "jwtguard-revocation", version, about = "Records JWT logouts in Redis for the jwtguard filter")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Revoke a token (by the raw token, or by jti and exp).
    Revoke {
        #[arg(long, env = "JWTGUARD_REVOCATION_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "JWTGUARD_REVOCATION_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        #[arg(long, conflicts_with_all = ["jti", "exp"])]
        token: Option<String>,
        #[arg(long, requires = "exp")]
        jti: Option<String>,
        #[arg(long)]
        exp: Option<u64>,
    },
    /// Log a subject out everywhere: revoke every token issued before now (or --issued-before).
    RevokeSubject {
        #[arg(long, env = "JWTGUARD_REVOCATION_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "JWTGUARD_REVOCATION_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        #[arg(long)]
        sub: String,
        #[arg(long)]
        iss: Option<String>,
        #[arg(long)]
        issued_before: Option<u64>,
    },
    /// Send a signal as the identity provider would (to try the receivers): a back-channel
    /// logout token, or with --set a Security Event Token pushed as SSF does.
    Signal {
        #[arg(long, env = "JWTGUARD_REVOCATION_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// The issuer's push credential (SSF push only).
        #[arg(long, env = "JWTGUARD_PUSH_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        /// The token is a SET for /v1/ssf/push (default: a logout token for /v1/backchannel-logout).
        #[arg(long)]
        set: bool,
        /// The signed token, or - to read it from stdin.
        token: String,
    },
    /// Ask whether a token may pass.
    Status {
        #[arg(long, env = "JWTGUARD_REVOCATION_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "JWTGUARD_STATUS_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        #[arg(long)]
        jti: Option<String>,
        #[arg(long)]
        sub: Option<String>,
        #[arg(long)]
        iss: Option<String>,
        #[arg(long)]
        iat: Option<u64>,
        #[arg(long)]
        sid: Option<String>,
        #[arg(long)]
        allowlist: bool,
    },
    /// Print the live revocation set as JSON lines (one event a line), then with --follow every
    /// new event as it comes. The position to continue from goes to stderr.
    Feed {
        #[arg(long, env = "JWTGUARD_REVOCATION_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        #[arg(long, env = "JWTGUARD_STATUS_CREDENTIAL", hide_env_values = true)]
        credential: Option<String>,
        /// Only events after this position (as printed by an earlier run).
        #[arg(long)]
        after: Option<String>,
        /// Keep long-polling for new events.
        #[arg(long)]
        follow: bool,
        /// How long the service may hold each poll when following.
        #[arg(long, default_value_t = 30_000)]
        wait_ms: u64,
    },
    /// Check a filter configuration with the filter's own parser: on a refusal, print the line
    /// Envoy would log and exit 1.
    CheckConfig {
        /// The filter's JSON (Envoy's `configuration` value, Istio's `pluginConfig` as JSON); `-`
        /// reads stdin.
        #[arg(required_unless_present = "schema")]
        file: Option<std::path::PathBuf>,
        /// Print the configuration's JSON Schema (generated from the parser's types) instead.
        #[arg(long, conflicts_with = "file")]
        schema: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(clap::Args)]
struct ServeArgs {
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Standalone Redis URL (redis:// or rediss://, user:password@ for ACLs).
    #[arg(long, env = "JWTGUARD_REDIS_URL", required_unless_present = "redis_cluster_node")]
    redis_url: Option<String>,
    /// A Redis Cluster node URL; give every node (repeat the flag or separate with commas).
    #[arg(long, env = "JWTGUARD_REDIS_CLUSTER_NODES", value_delimiter = ',', conflicts_with = "redis_url")]
    redis_cluster_node: Vec<String>,
    /// File with the write credentials, one per line.
    #[arg(long)]
    credentials_file: Option<std::path::PathBuf>,
    /// Write credentials, comma-separated (prefer the file).
    #[arg(long, env = "JWTGUARD_REVOCATION_CREDENTIALS", hide_env_values = true)]
    credentials: Option<String>,
    /// Credentials the status endpoint requires (the filter's); without them it is open.
    #[arg(long, env = "JWTGUARD_STATUS_CREDENTIALS", hide_env_values = true)]
    status_credentials: Option<String>,
    /// Development only: accept writes without credentials.
    #[arg(long)]
    insecure_dev_no_credentials: bool,
    /// Trusted identity providers whose back-channel logouts and Shared Signals (SSF push and
    /// poll) revoke sessions and subjects (JSON; docs/revocation-service.md).
    #[arg(long, env = "JWTGUARD_SIGNALS_CONFIG")]
    signals_config: Option<std::path::PathBuf>,
    /// A JWKS file: raw tokens are revoked only if their signature verifies with it.
    #[arg(long)]
    jwks_file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 60)]
    clock_skew_seconds: u64,
    /// The longest token lifetime: bounds every entry's TTL and the subject cutoffs'.
    #[arg(long, default_value_t = 86_400)]
    max_token_lifetime_seconds: u64,
    /// Live sessions allowed per subject in allowlist mode; 0 means no limit, 1 one login per user.
    #[arg(long, default_value_t = 0)]
    session_limit: u32,
    /// Acknowledge a write only once this many replicas have it (WAIT); 503 otherwise.
    #[arg(long, default_value_t = 0)]
    min_replicas_ack: u32,
    #[arg(long, default_value_t = 200)]
    wait_timeout_ms: u64,
    #[arg(long, default_value_t = 500)]
    redis_timeout_ms: u64,
    #[arg(long, default_value_t = 1000)]
    redis_connect_timeout_ms: u64,
    #[arg(long, default_value_t = 1)]
    redis_retries: u32,
    /// Upper bound on any one request's Redis work.
    #[arg(long, default_value_t = 1500)]
    request_timeout_ms: u64,
    #[arg(long, default_value = "jwtguard")]
    key_prefix: String,
    /// PEM file of CA certificates to trust for rediss:// (default: the system's).
    #[arg(long)]
    redis_ca_file: Option<std::path::PathBuf>,
    /// Longest a feed poll is held (the API allows up to 60000).
    #[arg(long, default_value_t = 60_000)]
    feed_max_wait_ms: u64,
    /// Threads serving requests (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    #[arg(long, value_enum, default_value = "json")]
    log_format: LogFormat,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Revoke { url, credential, token, jti, exp } => {
            let request = jwtguard_wire::RevokeRequest { token, jti, exp, ..Default::default() };
            client::revoke(&url, credential.as_deref(), request)
        }
        Command::RevokeSubject { url, credential, sub, iss, issued_before } => client::revoke_subject(
            &url,
            credential.as_deref(),
            jwtguard_wire::RevokeSubjectRequest { sub, iss, issued_before },
        ),
        Command::Signal { url, credential, set, token } => client::signal(&url, credential.as_deref(), set, &token),
        Command::Status { url, credential, jti, sub, iss, iat, sid, allowlist } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            for (k, v) in [("jti", jti), ("sub", sub), ("iss", iss), ("sid", sid), ("iat", iat.map(|i| i.to_string()))]
            {
                if let Some(v) = v {
                    query.push((k, v));
                }
            }
            if allowlist {
                query.push(("mode", "allowlist".into()));
            }
            client::status(&url, credential.as_deref(), &query)
        }
        Command::Feed { url, credential, after, follow, wait_ms } => {
            client::feed(&url, credential.as_deref(), after, follow, wait_ms)
        }
        // clap lets through a file or --schema, never both.
        Command::CheckConfig { file: Some(file), .. } => check_config::check(&file),
        Command::CheckConfig { file: None, .. } => check_config::schema(),
    };
    match result {
        Ok(out) if out.is_empty() => {}
        Ok(out) => println!("{out}"),
        Err(e) => {
            eprintln!("jwtguard-revocation: {e}");
            std::process::exit(1);
        }
    }
}

fn serve(args: ServeArgs) -> Result<String, String> {
    match args.log_format {
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(env_filter()).init(),
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(env_filter()).init(),
    }
    if !args.key_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-:".contains(&b)) || args.key_prefix.is_empty()
    {
        return Err("--key-prefix may hold only letters, digits, '_', '-' and ':'".into());
    }
    let mut writers = auth::Credentials::parse(args.credentials.as_deref().unwrap_or(""));
    if let Some(path) = &args.credentials_file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("--credentials-file {}: {e}", path.display()))?;
        writers = auth::Credentials::parse(&format!("{text}\n{}", args.credentials.as_deref().unwrap_or("")));
    }
    if writers.is_empty() && !args.insecure_dev_no_credentials {
        return Err("no write credentials: give --credentials-file or JWTGUARD_REVOCATION_CREDENTIALS \
                    (or --insecure-dev-no-credentials, for development only)"
            .into());
    }
    if writers.is_empty() {
        tracing::warn!("INSECURE DEVELOPMENT MODE: anyone who can reach this service can revoke tokens and sessions");
    }
    let readers = args.status_credentials.as_deref().map(auth::Credentials::parse).filter(|c| !c.is_empty());
    if readers.is_none() && !args.insecure_dev_no_credentials {
        tracing::warn!(
            "UNAUTHENTICATED STATUS AND FEED: without --status-credentials (JWTGUARD_STATUS_CREDENTIALS) anyone \
             who can reach this service can read /v1/status and /v1/feed, which lists every revoked jti and every \
             subject that logged out, and hold feed polls open; give the filter's credential"
        );
    }
    let keys = match &args.jwks_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("--jwks-file {}: {e}", path.display()))?;
            Some(
                token::keys_from_jwks(&text, jwtguard::config::ALL_ALGORITHMS)
                    .map_err(|e| format!("--jwks-file {}: {e}", path.display()))?,
            )
        }
    };
    let issuers = match &args.signals_config {
        Some(path) => Some(Arc::new(issuers::Issuers::load(path)?)),
        None => None,
    };
    let (cluster, urls) = match args.redis_url {
        Some(url) => (false, vec![url]),
        None => (true, args.redis_cluster_node),
    };
    let options = store::RedisOptions {
        urls,
        cluster,
        prefix: args.key_prefix,
        min_replicas_ack: args.min_replicas_ack,
        wait_timeout: Duration::from_millis(args.wait_timeout_ms),
        response_timeout: Duration::from_millis(args.redis_timeout_ms),
        connect_timeout: Duration::from_millis(args.redis_connect_timeout_ms),
        retries: args.redis_retries,
        ca_pem: match &args.redis_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| format!("--redis-ca-file {}: {e}", path.display()))?),
            None => None,
        },
        // Every event's `until` is at most a token lifetime plus the skew past its write, and
        // the feed sends it for a grace period after that (feed::UNTIL_GRACE_SECONDS); a minute
        // more absorbs clock differences between the service and Redis.
        feed_retention: Duration::from_secs(
            args.max_token_lifetime_seconds
                .saturating_add(args.clock_skew_seconds)
                .saturating_add(feed::UNTIL_GRACE_SECONDS)
                .saturating_add(60),
        ),
    };
    let open_files = raise_open_files_limit();
    let prometheus = telemetry::install()?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n);
    }
    let runtime = runtime.enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let upkeep = prometheus.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        let store = store::Store::connect(options).await.map_err(|e| e.to_string())?;
        let feed = feed::Feed::start(store.clone()).await.map_err(|e| format!("feed: {e}"))?;
        let token_ttl = args.max_token_lifetime_seconds + args.clock_skew_seconds;
        let store_timeout = Duration::from_millis(args.request_timeout_ms);
        let signals = issuers.map(|issuers| receivers::Receiver { store: store.clone(), issuers, token_ttl, store_timeout });
        if let Some(r) = &signals {
            for issuer in r.issuers.all() {
                if let Some(poll) = issuer.poll.clone() {
                    tokio::spawn(receivers::poll_forever(r.clone(), issuer.clone(), poll));
                }
            }
        }
        let state = Arc::new(api::AppState {
            signals,
            store,
            insecure_dev: writers.is_empty(),
            writers,
            readers,
            keys,
            clock_skew: args.clock_skew_seconds,
            max_lifetime: args.max_token_lifetime_seconds,
            session_limit: args.session_limit,
            store_timeout: Duration::from_millis(args.request_timeout_ms),
            prometheus,
            feed: feed.clone(),
            feed_max_wait: Duration::from_millis(args.feed_max_wait_ms),
        });
        let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("{}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%address, cluster, write_credentials = state.writers.len(), status_credentials = state.readers.as_ref().map_or(0, |r| r.len()), open_files, "jwtguard-revocation listening");
        // Held feed polls answer at once on shutdown rather than keep it waiting up to wait_ms.
        let shutdown = async move {
            shutdown_signal().await;
            feed.close();
        };
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|e| e.to_string())?;
        Ok("stopped".to_string())
    })
}

/// Every held feed poll is an open socket: the soft limit on open files (often 1024) would cap
/// them far below what a service holds idle at almost no cost, so raise it to the hard limit.
/// Returns the limit in force.
fn raise_open_files_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed, which outlives the calls.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Ctrl-C or SIGTERM (what Kubernetes sends) stops accepting and finishes requests in flight.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("JWTGUARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}
