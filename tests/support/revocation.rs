//! What the revocation tests share: the plugin configuration, tokens, the service's arguments,
//! Envoys pointed at a service, and a world of Redis + service + echo upstream.

use super::echo::Echo;
use super::envoy::{bootstrap, jwtguard_filter, static_cluster, Envoy, Listener};
use super::tokens::{now, KeyPair};
use super::{http, scratch_dir, Reply};
use jsonwebtoken::Algorithm;
use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::service::{self, Service};
use serde_json::{json, Value};

pub const ISSUER: &str = "https://issuer.test";
pub const WRITE: &str = "write-credential";
pub const STATUS: &str = "status-credential";
pub const TTL_MS: u64 = 1000;

pub fn plugin(key: &KeyPair, revocation: Value, extra_rules: Value) -> Value {
    let mut rules = extra_rules.as_array().cloned().unwrap_or_default();
    rules.push(json!({"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}));
    let mut rev = json!({
        "cluster": "revocation", "authority": "revocation", "timeout_ms": 200,
        "credential": STATUS, "revoke_credential": WRITE, "cache_ttl_ms": TTL_MS,
        "logout_path": "/logout", "logout_all_path": "/logout-all"
    });
    if let (Some(r), Some(o)) = (rev.as_object_mut(), revocation.as_object()) {
        for (k, v) in o {
            r.insert(k.clone(), v.clone());
        }
    }
    json!({
        "providers": {"main": {"issuer": ISSUER, "local_jwks": {"inline_string": json!({"keys": [key.jwk()]}).to_string()},
                               "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}]}},
        "rules": rules,
        "revocation": rev
    })
}

pub fn token(key: &KeyPair, sub: &str, jti: &str, iat: u64) -> String {
    key.sign(&json!({"iss": ISSUER, "sub": sub, "jti": jti, "iat": iat, "exp": now() + 600}))
}

pub fn get(envoy: &Envoy, listener: &str, token: &str) -> Reply {
    http("GET", &envoy.url(listener, "/api"), &[("authorization", &format!("Bearer {token}"))])
}

pub fn post(envoy: &Envoy, listener: &str, path: &str, token: &str) -> Reply {
    http("POST", &envoy.url(listener, path), &[("authorization", &format!("Bearer {token}"))])
}

pub fn service_args(redis: &[String], cluster: bool, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = if cluster {
        vec!["--redis-cluster-node".into(), redis.join(",")]
    } else {
        vec!["--redis-url".into(), redis[0].clone()]
    };
    a.extend(["--credentials", WRITE, "--status-credentials", STATUS].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Envoy with one listener per (name, plugin config), its revocation cluster at `service_port`.
pub fn envoy(dir: &std::path::Path, name: &str, listeners: &[(&str, Value)], service_port: u16, echo: &Echo) -> Envoy {
    envoy_with_workers(dir, name, listeners, service_port, echo, 1)
}

/// `envoy` with `workers` worker threads (`--concurrency`).
pub fn envoy_with_workers(
    dir: &std::path::Path,
    name: &str,
    listeners: &[(&str, Value)],
    service_port: u16,
    echo: &Echo,
    workers: u32,
) -> Envoy {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let listeners: Vec<Listener> = listeners
        .iter()
        .map(|(l, c)| Listener::to_cluster(l, vec![jwtguard_filter(&format!("{name}-{l}"), c)], "upstream"))
        .collect();
    let clusters = [static_cluster("upstream", echo.port), static_cluster("revocation", service_port)];
    Envoy::try_start_with(&sub, &bootstrap(&listeners, &clusters), workers)
        .unwrap_or_else(|log| panic!("envoy did not start:\n{log}"))
}

pub fn assert_revoked(reply: &Reply) {
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(reply.header("www-authenticate").unwrap_or("").contains("token revoked"), "{reply:?}");
}

pub struct World {
    pub dir: std::path::PathBuf,
    pub key: KeyPair,
    pub echo: Echo,
    pub redis: RedisServer,
    pub service: Service,
}

pub fn world(name: &str, service_extra: &[&str]) -> World {
    let dir = scratch_dir(name);
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let redis = RedisServer::start(&dir, &[]);
    let service =
        Service::start(&service::binary(), &dir, &service_args(&[redis.url()], false, service_extra)).expect("service");
    World { key, echo: Echo::start("127.0.0.1:0").expect("echo"), redis, service, dir }
}
