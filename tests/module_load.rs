//! The dynamic-module build (`module/`) loaded by a real Envoy 1.40: the ABI matches, the module
//! answers requests, and a bad configuration stops Envoy with jwtguard's own log line; an Envoy
//! 1.39 refuses the module. (What
//! the module does with requests is tested by the end-to-end suites, which `make test` runs
//! against both builds.)
//!
//! Builds nothing. It loads `target/module/libjwtguard_module.so`, which `make` builds.

mod support;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::echo::Echo;
use support::envoy::{bootstrap, envoy_binary, static_cluster, Build, Envoy, Listener};
use support::tokens::KeyPair;
use support::{http, scratch_dir, wait_for};

const ABI_MATCHED: &str = "Dynamic module ABI version v0.2.0 matched.";

fn plugin_config(key: &KeyPair) -> Value {
    json!({"providers": {"main": {
        "issuer": "https://issuer.test",
        "audiences": ["api"],
        "local_jwks": {"inline_string": json!({"keys": [key.jwk()]}).to_string()}
    }}, "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}]})
}

fn envoy_config(plugin_config: &Value, upstream: u16) -> Value {
    bootstrap(
        &[Listener::to_cluster("main", vec![Build::Module.filter("main", plugin_config)], "upstream")],
        &[static_cluster("upstream", upstream)],
    )
}

/// `envoy --mode validate` on `config`: whether Envoy accepted it, and what it printed.
fn validate(dir: &Path, config: &Value) -> (bool, String) {
    let path = dir.join("validate.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let out = Command::new(envoy_binary()).args(["--mode", "validate", "-c"]).arg(&path).output().expect("run envoy");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// The status line of a request whose `Authorization` value is not UTF-8, sent as raw bytes
/// (HTTP allows obs-text, and Envoy passes it through).
fn raw_request_status(port: u16) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    conn.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\nauthorization: Bearer \xff\xfe\r\nconnection: close\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string()
}

#[test]
fn envoy_loads_the_module_and_it_answers() {
    let dir = scratch_dir("module_load");
    let echo = Echo::start("127.0.0.1:0").expect("echo upstream");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let config = envoy_config(&plugin_config(&key), echo.port);

    let (ok, out) = validate(&dir, &config);
    assert!(ok && out.contains(ABI_MATCHED) && out.contains("OK"), "envoy --mode validate:\n{out}");

    let envoy = Envoy::start(&dir, &config);
    wait_for("the ABI line in Envoy's log", Duration::from_secs(10), || {
        envoy.log_text().contains(ABI_MATCHED).then_some(())
    });
    let url = envoy.url("main", "/x");

    let denied = http("GET", &url, &[]);
    assert_eq!(denied.status, 401, "{denied:?}");
    assert_eq!(denied.header("www-authenticate"), Some(r#"Bearer realm="jwtguard""#), "{denied:?}");

    // Read lossily (as the wasm build reads it): never a token. Above all, Envoy is still up to
    // answer the next request.
    assert_eq!(raw_request_status(envoy.ports["main"]), "HTTP/1.1 401 Unauthorized");

    let now = support::tokens::now();
    let token = key.sign(&json!({"iss": "https://issuer.test", "aud": "api", "sub": "alice", "exp": now + 60}));
    let passed = http("GET", &url, &[("authorization", &format!("Bearer {token}"))]);
    assert_eq!(passed.status, 200, "{passed:?}");
    let forged = http("GET", &url, &[("authorization", "Bearer anything")]);
    assert_eq!(forged.status, 401, "{forged:?}");
}

/// Envoy 1.39 (scripts/deps.sh installs it beside the venv's 1.40, for this test alone) lacks
/// a callback the module binds (`log_v2`, new in 1.40): it refuses the module, naming the symbol.
#[test]
fn an_older_envoy_refuses_the_module() {
    let dir = scratch_dir("module_old_envoy");
    let old = jwtguard_demo::repo_root().join(".venv/envoy-1.39.3/envoy/_bin/envoy");
    let version = Command::new(&old)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} (make deps installs it): {e}", old.display()));
    assert!(String::from_utf8_lossy(&version.stdout).contains("/1.39.3/"), "{version:?}");
    let key = KeyPair::generate(&dir, Algorithm::RS256, "k1");
    let path = dir.join("config.json");
    std::fs::write(&path, envoy_config(&plugin_config(&key), 9).to_string()).expect("write config");
    let out = Command::new(&old).args(["--mode", "validate", "-c"]).arg(&path).output().expect("run envoy 1.39");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !out.status.success()
            && text.contains("Failed to load dynamic module")
            && text.contains("undefined symbol: envoy_dynamic_module_callback_log_v2")
            && !text.contains(ABI_MATCHED),
        "Envoy 1.39 did not refuse the module, or did not say why:\n{text}"
    );
}

#[test]
fn a_bad_configuration_stops_envoy_with_jwtguards_error() {
    let dir = scratch_dir("module_bad_config");
    let bad = json!({"providers": {"main": {"issuer": 5, "local_jwks": {"inline_string": "{\"keys\":[]}"}}}});
    let error = jwtguard::config::Config::parse(bad.to_string().as_bytes()).expect_err("an invalid configuration");
    let line = format!("jwtguard: {error}");
    assert!(line.starts_with("jwtguard: invalid configuration at providers.main.issuer"), "{line}");
    let config = envoy_config(&bad, 9);

    let (ok, out) = validate(&dir, &config);
    assert!(!ok && out.contains(&line), "envoy --mode validate accepted it or did not say why:\n{out}");

    let log = Envoy::try_start(&dir, &config).err().expect("Envoy started with an invalid configuration");
    assert!(log.contains(&line), "no `{line}` in Envoy's log:\n{log}");
}
