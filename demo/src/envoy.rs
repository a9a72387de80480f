//! A real Envoy (from the project venv) with the built filter, on ephemeral ports: the harness
//! of the end-to-end tests and the benchmarks.

use crate::{repo_root, wait_for};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn envoy_binary() -> PathBuf {
    std::env::var_os("JWTGUARD_ENVOY").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

/// Which build of the filter Envoy loads, chosen by `JWTGUARD_BUILD`: `wasm` (the default) or
/// `module`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// The proxy-wasm filter, target/jwtguard.wasm.
    Wasm,
    /// The Envoy dynamic module, target/module/libjwtguard_module.so.
    Module,
}

impl Build {
    /// The build `JWTGUARD_BUILD` names. Any other value panics: a typo must not quietly test
    /// the other build.
    pub fn current() -> Build {
        let Some(value) = std::env::var_os("JWTGUARD_BUILD") else { return Build::Wasm };
        match value.to_str() {
            Some("wasm") => Build::Wasm,
            Some("module") => Build::Module,
            _ => panic!("JWTGUARD_BUILD={value:?}: expected `wasm` (the default) or `module`"),
        }
    }

    /// Where Envoy puts the filter's own stats: proxy-wasm's custom namespace, or the dynamic
    /// modules' default `metrics_namespace`.
    fn stat_namespace(self) -> &'static str {
        match self {
            Build::Wasm => "wasmcustom",
            Build::Module => "dynamicmodulescustom",
        }
    }

    /// How many revocation sets an Envoy with `workers` workers holds, each applying every feed
    /// event once: one per wasm VM — each worker's and the main thread's, which Envoy keeps and
    /// ticks too (its log shows a third "revocation set complete" with two workers) — and one per
    /// process for the module.
    pub fn feed_copies(self, workers: u32) -> u64 {
        match self {
            Build::Wasm => u64::from(workers) + 1,
            Build::Module => 1,
        }
    }

    /// The `/stats` name of the filter's stat `name` (`allowed`, `jwks.idp.stale`...).
    pub fn stat(self, name: &str) -> String {
        format!("{}.jwtguard.{name}", self.stat_namespace())
    }

    /// The `stats_config.stats_tags` that turn the provider and the denial reason in jwtguard's
    /// stat names into Prometheus labels (`jwtguard_jwks_stale{provider="idp"}`,
    /// `jwtguard_denied{reason="expired"}`); the wasm build's are those of envoy/envoy.yaml and
    /// docs/operations.md.
    pub fn stats_tags(self) -> Value {
        let ns = self.stat_namespace();
        json!([
            {"tag_name": "provider", "regex": format!(r"^{ns}\.jwtguard\.jwks\.((.+)\.)(?:fetch_success|fetch_failed|keys_loaded|stale|age_ms|unknown_kid_refetch|requests_waited)$")},
            {"tag_name": "reason", "regex": format!(r"^{ns}\.jwtguard\.(?:denied|would_deny)(\.(.+))$")}
        ])
    }

    /// The HTTP filter entry that loads this build with `plugin_config`. `vm_id` names the wasm
    /// VM (plugins with the same one share it); the module has no VM (Envoy loads the `.so` once
    /// per process), so it ignores `vm_id`.
    pub fn filter(self, vm_id: &str, plugin_config: &Value) -> Value {
        // Both builds read the same JSON, as a StringValue (which reaches the module unwrapped).
        let config =
            json!({"@type": "type.googleapis.com/google.protobuf.StringValue", "value": plugin_config.to_string()});
        match self {
            Build::Wasm => json!({
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "jwtguard",
                        "root_id": "jwtguard",
                        "configuration": config,
                        "vm_config": {"vm_id": vm_id, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": wasm_file()}}}
                    }
                }
            }),
            // do_not_close (RTLD_NODELETE): per-thread state is torn down by code in the .so.
            Build::Module => json!({
                "name": "envoy.filters.http.dynamic_modules",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                    "dynamic_module_config": {"module": {"local": {"filename": module_file()}}, "do_not_close": true},
                    "filter_name": "jwtguard",
                    "filter_config": config
                }
            }),
        }
    }
}

/// The current build's `/stats` name of the filter's stat `name`: `stat("allowed")` is
/// `wasmcustom.jwtguard.allowed` for the wasm build.
pub fn stat(name: &str) -> String {
    Build::current().stat(name)
}

/// The file `var` names, else `default` under the repository, as an absolute path (so the
/// envoy.json a test leaves behind also runs by hand elsewhere); panics naming the make target
/// that builds it.
fn built_file(var: &str, default: &str, make_target: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| repo_root().join(default));
    assert!(path.exists(), "{} is missing: build it with `make {make_target}`", path.display());
    std::path::absolute(&path).unwrap_or(path)
}

/// The wasm build: target/jwtguard.wasm, or the file `JWTGUARD_WASM` names.
pub fn wasm_file() -> PathBuf {
    built_file("JWTGUARD_WASM", "target/jwtguard.wasm", "wasm")
}

/// The module build: target/module/libjwtguard_module.so, or the file `JWTGUARD_MODULE` names.
pub fn module_file() -> PathBuf {
    built_file("JWTGUARD_MODULE", "target/module/libjwtguard_module.so", "module")
}

/// The current build's filter entry that loads jwtguard with `plugin_config` (see
/// `Build::filter`: `vm_id` only means something to the wasm build).
pub fn jwtguard_filter(vm_id: &str, plugin_config: &Value) -> Value {
    Build::current().filter(vm_id, plugin_config)
}

/// One listener: its HTTP filters (the router is appended) and where its routes go.
pub struct Listener {
    pub name: String,
    pub filters: Vec<Value>,
    pub target: Target,
}

pub enum Target {
    /// Every route goes to this cluster.
    Cluster(String),
    /// Envoy answers 200 itself, so only the filters' cost is measured.
    DirectResponse,
}

impl Listener {
    pub fn to_cluster(name: &str, filters: Vec<Value>, cluster: &str) -> Listener {
        Listener { name: name.into(), filters, target: Target::Cluster(cluster.into()) }
    }
}

pub fn static_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        ]}]}
    })
}

pub fn bootstrap(listeners: &[Listener], clusters: &[Value]) -> Value {
    let listeners: Vec<Value> = listeners
        .iter()
        .map(|l| {
            let route = match &l.target {
                Target::Cluster(c) => json!({"match": {"prefix": "/"}, "route": {"cluster": c}}),
                Target::DirectResponse => json!({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}),
            };
            let mut filters = l.filters.clone();
            filters.push(json!({"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}));
            json!({
                "name": l.name,
                // Listener stats under the name (`listener.main.…`), not the address Envoy binds.
                "stat_prefix": l.name,
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": l.name,
                        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
                        "http_filters": filters
                    }
                }]}]
            })
        })
        .collect();
    let mut config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "stats_config": {"stats_tags": stats_tags()},
        "static_resources": {"listeners": listeners, "clusters": clusters}
    });
    if Build::current() == Build::Module {
        // Prometheus then names the module's stats as the wasm build's (`jwtguard_allowed`, not
        // `envoy_dynamicmodulescustom_jwtguard_allowed`); off by default in Envoy 1.40.
        config["layered_runtime"] = json!({"layers": [{"name": "static", "static_layer": {
            "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix": true
        }}]});
    }
    config
}

/// Listeners served from a file Envoy watches (LDS from the file system): `publish` moves a new
/// version in, which Envoy takes as a listener update, as from a control plane.
pub struct ListenerFile(PathBuf);

impl ListenerFile {
    /// Moves the static listeners of `config` (a bootstrap as `bootstrap` makes) into a file in
    /// `dir` that `config` then loads them from.
    pub fn serve(dir: &Path, config: &mut Value) -> ListenerFile {
        let file = ListenerFile(dir.join("lds.json"));
        file.publish(config);
        config["static_resources"]["listeners"] = json!([]);
        config["dynamic_resources"] =
            json!({"lds_config": {"path_config_source": {"path": file.0}, "resource_api_version": "V3"}});
        config["node"] = json!({"id": "jwtguard-test", "cluster": "jwtguard-test"}); // LDS needs one
        file
    }

    /// Publishes the static listeners of `config` as the new version.
    pub fn publish(&self, config: &Value) {
        let mut listeners = config["static_resources"]["listeners"].as_array().cloned().unwrap_or_default();
        for listener in &mut listeners {
            listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
        }
        let next = self.0.with_extension("next");
        std::fs::write(&next, json!({"resources": listeners}).to_string()).expect("write the listeners");
        std::fs::rename(&next, &self.0).expect("move the listeners in");
    }
}

/// The current build's `stats_tags` (see `Build::stats_tags`).
pub fn stats_tags() -> Value {
    Build::current().stats_tags()
}

pub struct Envoy {
    child: Child,
    pub admin: u16,
    pub ports: HashMap<String, u16>,
    pub log: PathBuf,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Envoy {
    /// Starts Envoy and waits until it is live with every listener bound.
    pub fn start(dir: &Path, config: &Value) -> Envoy {
        Self::try_start(dir, config).unwrap_or_else(|log| panic!("envoy did not start:\n{log}"))
    }

    /// Like `start`, but returns Envoy's log if it exits before becoming ready.
    pub fn try_start(dir: &Path, config: &Value) -> Result<Envoy, String> {
        Self::try_start_with(dir, config, 1)
    }

    /// Starts Envoy with `concurrency` workers; the log components of both builds (`wasm`,
    /// `dynamic_modules`) are at debug.
    pub fn try_start_with(dir: &Path, config: &Value, concurrency: u32) -> Result<Envoy, String> {
        let config_path = dir.join("envoy.json");
        let admin_path = dir.join("admin.txt");
        let log = dir.join("envoy.log");
        let _ = std::fs::remove_file(&admin_path);
        std::fs::write(&config_path, serde_json::to_vec_pretty(config).expect("serialize")).expect("write config");
        let mut child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .args([
                "--disable-hot-restart",
                "--component-log-level",
                "wasm:debug,dynamic_modules:debug",
                "--file-flush-interval-msec",
                "50",
                // A listener update drains the old filter chain (and destroys its filter
                // configuration) within a second, not Envoy's default ten minutes.
                "--drain-time-s",
                "1",
            ])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy (run `make deps` first)");
        let admin = wait_for("envoy admin address", Duration::from_secs(60), || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(Err(std::fs::read_to_string(&log).unwrap_or_default()));
            }
            let text = std::fs::read_to_string(&admin_path).ok()?;
            text.trim().rsplit(':').next()?.parse::<u16>().ok().map(Ok)
        })?;
        let envoy_log = log.clone();
        let mut envoy = Envoy { child, admin, ports: HashMap::new(), log };
        let ports = wait_for("envoy listeners", Duration::from_secs(60), || {
            if let Ok(Some(_)) = envoy.child.try_wait() {
                return Some(Err(std::fs::read_to_string(&envoy_log).unwrap_or_default()));
            }
            envoy.listener_ports().map(Ok)
        })?;
        envoy.ports = ports;
        Ok(envoy)
    }

    fn admin_get(&self, path: &str) -> Option<String> {
        let url = format!("http://127.0.0.1:{}{path}", self.admin);
        ureq::get(&url).timeout(Duration::from_secs(5)).call().ok()?.into_string().ok()
    }

    fn listener_ports(&self) -> Option<HashMap<String, u16>> {
        if self.admin_get("/ready")?.trim() != "LIVE" {
            return None;
        }
        let v: Value = serde_json::from_str(&self.admin_get("/listeners?format=json")?).ok()?;
        let mut ports = HashMap::new();
        for l in v["listener_statuses"].as_array()? {
            let port = l["local_address"]["socket_address"]["port_value"].as_u64()?;
            ports.insert(l["name"].as_str()?.to_string(), u16::try_from(port).ok()?);
        }
        Some(ports)
    }

    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[listener])
    }

    /// A stat's value as Envoy shows it now (gauges are set at once), 0 if Envoy does not know it yet.
    pub fn stat_now(&self, name: &str) -> u64 {
        let text = self.admin_get(&format!("/stats?filter=^{name}$")).unwrap_or_default();
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    }

    /// Waits until Envoy has made its `updates`-th in-place listener update (a new filter chain
    /// on the same listener and port) and removed the old filter chain, drained (for a second:
    /// `--drain-time-s`). `meanwhile` runs while it drains, both configurations live. The old
    /// one's filter configurations are then destroyed.
    pub fn await_listener_update(&self, updates: u64, meanwhile: impl FnOnce()) {
        let draining = || self.stat_now("listener_manager.total_filter_chains_draining");
        wait_for("the old filter chain to drain", Duration::from_secs(20), || (draining() == 1).then_some(()));
        meanwhile();
        wait_for("the old filter chain to go", Duration::from_secs(20), || (draining() == 0).then_some(()));
        assert_eq!(self.stat_now("listener_manager.listener_in_place_updated"), updates, "an update in place");
    }

    /// A counter's settled value: the filter hands counts to Envoy every 100 ms, so this polls
    /// until the value has not moved for well over one flush interval.
    pub fn counter(&self, name: &str) -> u64 {
        let mut value = self.stat_now(name);
        let mut since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(10);
        while since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.stat_now(name);
            if now != value {
                (value, since) = (now, Instant::now());
            }
        }
        value
    }

    pub fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus").unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
