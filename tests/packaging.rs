//! Where users run it: the OCI image of the filter (checked with skopeo), the Istio manifests of
//! envoy/istio (checked against the schemas of named Kubernetes, Istio and Gateway API releases,
//! the filter's own configuration parser, and each other: every cluster a pluginConfig names
//! exists for the proxy that calls it; their stats_tags override run by a real Envoy set up as
//! Istio sets it up), and the compose stack (checked against the compose
//! specification's schema and by docker-compose, its Envoy configuration by Envoy, its
//! healthchecks against the real programs). Nothing here runs Kubernetes or a Docker engine:
//! this machine has neither (docs/deployment.md says what that leaves unchecked).

mod support;

use jwtguard::config::Config;
use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::repo_root;
use jwtguard_demo::service::{self, Service};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::envoy::{bootstrap, envoy_binary, wasm_file, Build, Envoy, Listener, Target};
use support::{scratch_dir, wait_for};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (make deps installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A tool scripts/deps.sh installs into the project venv.
fn venv(tool: &str) -> PathBuf {
    repo_root().join(".venv/bin").join(tool)
}

/// `scripts/oci.sh DIR`: the image's reference and its manifest's digest (`sha256:HEX`).
fn build_oci(dir: &Path) -> (String, String) {
    let printed = run(Command::new(repo_root().join("scripts/oci.sh")).arg(dir));
    let mut words = printed.split_whitespace();
    (words.next().unwrap().to_string(), words.next().unwrap().to_string())
}

#[test]
fn the_oci_image_holds_the_filter_and_is_reproducible() {
    let dir = scratch_dir("oci");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let (reference, digest) = build_oci(&a);
    assert_eq!(digest, build_oci(&b).1, "same .wasm, same digest");

    let raw = run(Command::new("skopeo").args(["inspect", "--raw", &reference]));
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(manifest["annotations"]["module.wasm.image/variant"], "compat");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let inspected: Value = serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &reference]))).unwrap();
    assert_eq!(inspected["Os"], "wasip1");
    assert_eq!(inspected["Digest"], digest.as_str(), "the printed digest is the manifest's");

    // Copy it out as a registry would serve it and find our exact module in the layer.
    let copied = dir.join("copied");
    run(Command::new("skopeo").args(["copy", &reference, &format!("dir:{}", copied.display())]));
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let listing = run(Command::new("tar").arg("-tzf").arg(copied.join(layer)));
    assert_eq!(listing.trim(), "plugin.wasm");
    let extracted = dir.join("x");
    std::fs::create_dir_all(&extracted).unwrap();
    run(Command::new("tar").arg("-xzf").arg(copied.join(layer)).arg("-C").arg(&extracted));
    assert_eq!(std::fs::read(extracted.join("plugin.wasm")).unwrap(), std::fs::read(wasm_file()).unwrap());
}

/// Every YAML document of a repository file, as JSON (parsed by PyYAML from the project venv).
fn yaml_documents(path: &str) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = run(Command::new(venv("python")).args(["-c", script]).arg(repo_root().join(path)));
    serde_json::from_str(&out).expect("JSON from PyYAML")
}

// ---------------------------------------------------------------------------------------------
// Istio

/// The Kubernetes release whose schemas (bundled by kubernetes-validate) the core kinds are
/// checked against; the Istio (1.29.2) and Gateway API (v1.5) releases are those of the npm
/// packages envoy/istio/schema-check/package.json pins.
const KUBERNETES_VERSION: &str = "1.34";
const SHAPES: [&str; 3] = ["envoy/istio/wasmplugin.yaml", "envoy/istio/gateway.yaml", "envoy/istio/waypoint.yaml"];
const SHARED: [&str; 2] = ["envoy/istio/revocation.yaml", "envoy/istio/identity-provider.yaml"];
const SIDECAR_EGRESS: &str = "envoy/istio/optional-sidecar-egress.yaml";
const REGISTRY_CREDENTIALS: &str = "envoy/istio/optional-registry-credentials.yaml";
const AUTHORIZATION_POLICY: &str = "envoy/istio/optional-authorization-policy.yaml";
const OPTIONAL: [&str; 3] = [SIDECAR_EGRESS, REGISTRY_CREDENTIALS, AUTHORIZATION_POLICY];

fn is_crd(doc: &Value) -> bool {
    let api = doc["apiVersion"].as_str().unwrap_or("");
    api.contains(".istio.io/") || api.starts_with("gateway.networking.k8s.io/")
}

/// What the schema validators say of each of `docs` (empty: valid). Core kinds go to
/// kubernetes-validate (strict: an unknown field is an error), Istio and Gateway API kinds to
/// envoy/istio/schema-check; a document neither reports as valid is a problem, so a kind
/// without a schema never passes unchecked.
fn schema_problems(name: &str, docs: &[Value]) -> Vec<String> {
    let dir = scratch_dir(&format!("schemas-{name}"));
    let paths: Vec<PathBuf> = (0..docs.len()).map(|i| dir.join(format!("{i:02}.json"))).collect();
    let (mut core, mut crds) = (Vec::new(), Vec::new());
    for (doc, path) in docs.iter().zip(&paths) {
        std::fs::write(path, serde_json::to_vec(doc).unwrap()).unwrap();
        if is_crd(doc) { &mut crds } else { &mut core }.push(path);
    }
    let output = |cmd: &mut Command| {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (make deps installs it)"));
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    };
    let mut report = String::new();
    if !core.is_empty() {
        report +=
            &output(Command::new(venv("kubernetes-validate")).args(["--strict", "-k", KUBERNETES_VERSION]).args(&core));
    }
    if !crds.is_empty() {
        let check = repo_root().join("envoy/istio/schema-check/check.mjs");
        let modules = repo_root().join(".venv/schema-check/node_modules");
        report += &output(Command::new("node").arg(check).arg(modules).args(&crds));
    }
    paths
        .iter()
        .map(|path| {
            let path = path.to_str().unwrap();
            let lines: Vec<&str> = report.lines().filter(|l| l.contains(path)).collect();
            let passed = lines.iter().any(|l| l.contains(" passed for resource ") || l.ends_with(": ok"));
            if passed {
                String::new()
            } else if lines.is_empty() {
                format!("{path}: not checked\n{report}")
            } else {
                lines.join("\n")
            }
        })
        .collect()
}

fn check_schemas(name: &str, docs: &[Value]) -> Result<(), String> {
    let problems: Vec<String> = schema_problems(name, docs).into_iter().filter(|p| !p.is_empty()).collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// The documents of every file of envoy/istio, and the Deployment overlays of the gateway and
/// waypoint shapes (strategic merge patches Istio applies to the Deployment it makes) completed
/// into Deployments, so that the schema checks the fields they set.
fn istio_documents() -> Vec<(String, Value)> {
    let mut files = Vec::new();
    for path in SHARED.iter().chain(&SHAPES).chain(&OPTIONAL) {
        for doc in yaml_documents(path) {
            if let Some(overlay) = doc["data"]["deployment"].as_str() {
                let mut deployment = yaml_value(overlay);
                deployment["apiVersion"] = json!("apps/v1");
                deployment["kind"] = json!("Deployment");
                deployment["metadata"] = json!({"name": "overlay"});
                deployment["spec"]["selector"] = json!({"matchLabels": {"app": "overlay"}});
                files.push((format!("{path}, the overlay of ConfigMap {}", doc["metadata"]["name"]), deployment));
            }
            files.push((path.to_string(), doc));
        }
    }
    files
}

/// One YAML document given as text, as JSON.
fn yaml_value(text: &str) -> Value {
    use std::io::Write;
    let script = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))";
    let mut child = Command::new(venv("python"))
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the venv's python (make deps)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not YAML:\n{text}");
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

#[test]
fn the_istio_manifests_pass_the_kubernetes_istio_and_gateway_api_schemas() {
    let files = istio_documents();
    let docs: Vec<Value> = files.iter().map(|(_, d)| d.clone()).collect();
    for ((path, doc), problem) in files.iter().zip(schema_problems("istio", &docs)) {
        assert!(problem.is_empty(), "{path}, {} {}:\n{problem}", doc["kind"], doc["metadata"]["name"]);
    }
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

/// The validators are not vacuous: each deliberate mistake in a copy of a shipped manifest,
/// of a kind the issue met (a misspelt or misplaced field, a wrong type or value), is refused.
#[test]
fn the_schema_validators_refuse_broken_manifests() {
    let plugin = find(&yaml_documents("envoy/istio/wasmplugin.yaml"), "WasmPlugin").clone();
    let idp = yaml_documents("envoy/istio/identity-provider.yaml");
    let service = yaml_documents("envoy/istio/revocation.yaml");
    let rule = find(&idp, "DestinationRule").clone();
    let deployment = find(&service, "Deployment").clone();
    let edit = |doc: &Value, f: &dyn Fn(&mut Value)| {
        let mut d = doc.clone();
        f(&mut d);
        d
    };
    let broken = [
        ("a misspelt field", edit(&plugin, &|d| d["spec"]["imagePullSecrets"] = json!(["x"])), "imagePullSecrets"),
        ("a wrong type", edit(&plugin, &|d| d["spec"]["priority"] = json!("high")), "priority"),
        (
            "a value off its enum",
            edit(&rule, &|d| d["spec"]["trafficPolicy"]["portLevelSettings"][0]["tls"]["mode"] = json!("SIMPEL")),
            "SIMPEL",
        ),
        ("a field one level off", edit(&rule, &|d| d["spec"]["trafficPolicy"]["tlsMode"] = json!("SIMPLE")), "tlsMode"),
        (
            "selector and targetRefs mixed up",
            edit(&plugin, &|d| d["spec"]["selector"] = json!({"app": "orders-api"})),
            "app",
        ),
        ("an unknown kind", edit(&rule, &|d| d["kind"] = json!("DestinationRules")), "no schema"),
        (
            "a misspelt securityContext field",
            edit(&deployment, &|d| {
                d["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = json!(true)
            }),
            "runAsNonroot",
        ),
        ("a wrong type in a core kind", edit(&deployment, &|d| d["spec"]["replicas"] = json!("two")), "replicas"),
    ];
    let docs: Vec<Value> = broken.iter().map(|(_, doc, _)| doc.clone()).collect();
    for ((what, _, mentioned), problem) in broken.iter().zip(schema_problems("broken", &docs)) {
        assert!(!problem.is_empty(), "{what} passed");
        assert!(problem.contains(mentioned), "{what}: the error does not name {mentioned}:\n{problem}");
    }
}

fn plugin_of(path: &str) -> Value {
    find(&yaml_documents(path), "WasmPlugin").clone()
}

fn parse_plugin_config(plugin: &Value) -> Config {
    let config = serde_json::to_string(&plugin["spec"]["pluginConfig"]).unwrap();
    Config::parse(config.as_bytes()).unwrap_or_else(|e| panic!("pluginConfig refused: {e}"))
}

/// The identity provider's logout signals, which the gateway routes to the revocation service.
const SIGNALS: [&str; 2] = ["/v1/backchannel-logout", "/v1/ssf/push"];

#[test]
fn every_shape_has_a_fail_closed_authn_plugin_whose_config_the_filter_accepts() {
    let plugins: Vec<Value> = SHAPES.iter().map(|p| plugin_of(p)).collect();
    for (path, plugin) in SHAPES.iter().zip(&plugins) {
        let spec = &plugin["spec"];
        assert_eq!(spec["phase"], "AUTHN", "{path}");
        assert_eq!(spec["failStrategy"], "FAIL_CLOSE", "{path}");
        assert!(spec["url"].as_str().unwrap().starts_with("oci://"), "{path}");
        assert!(spec["imagePullSecret"].is_string(), "{path}");
        parse_plugin_config(plugin);
        // The shapes differ only in their proxies, and the gateway in the public routes of the
        // identity provider's signals, first so that they match first.
        let mut config = spec["pluginConfig"].clone();
        if *path == "envoy/istio/gateway.yaml" {
            let public: Vec<Value> = config["rules"].as_array_mut().unwrap().drain(..SIGNALS.len()).collect();
            assert_eq!(public, SIGNALS.map(|p| json!({"match": {"path": p, "methods": ["POST"]}})), "{path}");
        }
        assert_eq!(config, plugins[0]["spec"]["pluginConfig"], "{path}: the shapes differ only in their proxies");
    }
}

/// `outbound|PORT||HOST` as (host, port).
fn istio_cluster(name: &str) -> (String, u64) {
    let rest = name.strip_prefix("outbound|").unwrap_or_else(|| panic!("{name} is not an Istio outbound cluster"));
    let (port, host) = rest.split_once("||").unwrap_or_else(|| panic!("{name}: not outbound|PORT||HOST"));
    (host.to_string(), port.parse().unwrap_or_else(|_| panic!("{name}: port")))
}

/// A host the mesh knows: a Service (`name.namespace.svc.cluster.local`) or a ServiceEntry host.
struct MeshHost {
    namespace: String,
    host: String,
    ports: Vec<u64>,
}

fn mesh_hosts(docs: &[Value]) -> Vec<MeshHost> {
    let mut hosts = Vec::new();
    for doc in docs {
        let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("").to_string();
        let ports = |list: &Value, key: &str| {
            list.as_array().unwrap().iter().map(|p| p[key].as_u64().unwrap()).collect::<Vec<_>>()
        };
        match doc["kind"].as_str() {
            Some("Service") => hosts.push(MeshHost {
                host: format!("{}.{namespace}.svc.cluster.local", doc["metadata"]["name"].as_str().unwrap()),
                ports: ports(&doc["spec"]["ports"], "port"),
                namespace,
            }),
            Some("ServiceEntry") => {
                for host in doc["spec"]["hosts"].as_array().unwrap() {
                    let host = host.as_str().unwrap().to_string();
                    hosts.push(MeshHost {
                        host,
                        ports: ports(&doc["spec"]["ports"], "number"),
                        namespace: namespace.clone(),
                    });
                }
            }
            _ => {}
        }
    }
    hosts
}

/// Whether a DestinationRule makes Envoy originate TLS to `host` on `port`.
fn originates_tls(docs: &[Value], host: &str, port: u64) -> bool {
    docs.iter().filter(|d| d["kind"] == "DestinationRule" && d["spec"]["host"] == host).any(|d| {
        let policy = &d["spec"]["trafficPolicy"];
        let port_level =
            policy["portLevelSettings"].as_array().into_iter().flatten().find(|s| s["port"]["number"] == port);
        port_level.map_or(&policy["tls"], |s| &s["tls"])["mode"] == "SIMPLE"
    })
}

/// Every cluster a shape's pluginConfig calls exists for the proxy that calls it, under that
/// name: a Service or ServiceEntry with that host and port, TLS originated where the URL is
/// https, and visible to the proxy (the optional Sidecar that restricts the sidecars' egress
/// lists it; a waypoint, or a gateway that filters its clusters, has it in
/// meshConfig.extensionProviders). The manifests of issue 11 failed this: a ServiceEntry-less
/// cluster for the identity provider, no TLS.
#[test]
fn every_cluster_a_plugin_calls_exists_for_its_proxy() {
    let shared: Vec<Value> = SHARED.iter().flat_map(|p| yaml_documents(p)).collect();
    let hosts = mesh_hosts(&shared);
    let providers: Vec<(String, u64)> = yaml_documents("envoy/istio/istiod-values.yaml")[0]["meshConfig"]
        ["extensionProviders"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p.as_object().unwrap().values().filter(|v| v.is_object()))
        .map(|v| (v["service"].as_str().unwrap().to_string(), v["port"].as_u64().unwrap()))
        .collect();
    let sidecar = find(&yaml_documents(SIDECAR_EGRESS), "Sidecar").clone();
    for path in SHAPES {
        let docs = yaml_documents(path);
        let plugin = find(&docs, "WasmPlugin");
        let config = parse_plugin_config(plugin);
        let revocation = config.revocation.as_ref().expect("revocation configured");
        // (cluster, the :authority the filter sends there if known, whether the URL is https)
        let mut callouts = vec![(revocation.cluster.clone(), Some(revocation.authority.clone()), false)];
        for provider in &config.providers {
            let Some(jwks) = &provider.remote_jwks else { continue };
            let raw = &plugin["spec"]["pluginConfig"]["providers"][&provider.name];
            // The key set's uri, or with oidc_discovery the issuer's discovery document.
            let url = raw["remote_jwks"]["uri"].as_str().or(raw["issuer"].as_str()).expect("uri or issuer");
            let https = url.starts_with("https://");
            callouts.push((jwks.cluster.clone(), Some(jwks.authority.clone()), https));
            if jwks.jwks_cluster != jwks.cluster {
                // The jwks_uri the discovery document names, on its own host.
                callouts.push((jwks.jwks_cluster.clone(), None, https));
            }
        }
        let selected = plugin["spec"]["selector"].is_object();
        for (cluster, authority, https) in callouts {
            let (host, port) = istio_cluster(&cluster);
            let known = hosts.iter().find(|h| h.host == host && h.ports.contains(&port));
            let known = known.unwrap_or_else(|| panic!("{path}: no Service or ServiceEntry for {cluster}"));
            if let Some(authority) = authority {
                assert_eq!(authority, host, "{path}: {authority} is not the host of {cluster}");
            }
            if https {
                assert!(originates_tls(&shared, &host, port), "{path}: no DestinationRule originates TLS on {cluster}");
            }
            if selected {
                assert_eq!(sidecar["metadata"]["namespace"], plugin["metadata"]["namespace"], "{SIDECAR_EGRESS}");
                let listed = format!("{}/{host}", known.namespace);
                let egress = &sidecar["spec"]["egress"][0]["hosts"];
                assert!(egress.as_array().unwrap().contains(&json!(listed)), "{SIDECAR_EGRESS} hides {cluster}");
            }
            if plugin["spec"]["targetRefs"].is_array() {
                assert!(providers.contains(&(host.clone(), port)), "{path}: {cluster} is not in istiod-values.yaml");
            }
        }
    }
}

/// The proxy identity (SPIFFE principal) and namespace that make a shape's callouts.
fn proxy_of(path: &str) -> (String, String) {
    let docs = yaml_documents(path);
    let plugin = find(&docs, "WasmPlugin");
    let namespace = plugin["metadata"]["namespace"].as_str().unwrap().to_string();
    let account = match plugin["spec"]["targetRefs"].as_array() {
        // A sidecar runs as its pod's ServiceAccount, here named after the app.
        None => plugin["spec"]["selector"]["matchLabels"]["app"].as_str().unwrap().to_string(),
        Some(refs) => {
            assert!(plugin["spec"]["selector"].is_null(), "{path}: selector and targetRefs");
            assert_eq!(refs.len(), 1, "{path}");
            assert_eq!(refs[0]["kind"], "Gateway", "{path}");
            let gateway = docs
                .iter()
                .find(|d| d["kind"] == "Gateway" && d["metadata"]["name"] == refs[0]["name"])
                .unwrap_or_else(|| panic!("{path}: the targeted Gateway"));
            assert_eq!(gateway["metadata"]["namespace"], namespace.as_str(), "{path}: targetRefs are namespace-local");
            // Istio's Deployment for a Gateway: <name>-<class>, for a waypoint: <name>.
            let (name, class) =
                (gateway["metadata"]["name"].as_str().unwrap(), gateway["spec"]["gatewayClassName"].as_str().unwrap());
            if class == "istio-waypoint" {
                name.to_string()
            } else {
                format!("{name}-{class}")
            }
        }
    };
    (format!("cluster.local/ns/{namespace}/sa/{account}"), namespace)
}

#[test]
fn the_waypoint_and_gateway_plugins_bind_by_target_refs() {
    for (path, class) in [("envoy/istio/gateway.yaml", "istio"), ("envoy/istio/waypoint.yaml", "istio-waypoint")] {
        let docs = yaml_documents(path);
        let plugin = find(&docs, "WasmPlugin");
        assert!(plugin["spec"]["selector"].is_null(), "{path}: a waypoint ignores selector");
        let target = &plugin["spec"]["targetRefs"][0];
        assert_eq!(target["group"], "gateway.networking.k8s.io", "{path}");
        assert_eq!(find(&docs, "Gateway")["spec"]["gatewayClassName"], class, "{path}");
        proxy_of(path);
    }
    let waypoint = yaml_documents("envoy/istio/waypoint.yaml");
    let labels = &find(&waypoint, "Namespace")["metadata"]["labels"];
    assert_eq!(labels["istio.io/dataplane-mode"], "ambient");
    assert_eq!(labels["istio.io/use-waypoint"], find(&waypoint, "Gateway")["metadata"]["name"]);
}

/// Whether an Istio ALLOW policy lets `principal` (from `namespace`) make this request.
fn allowed(policy: &Value, principal: &str, namespace: &str, method: &str, path: &str) -> bool {
    let listed = |list: &Value, value: &str, matches: &dyn Fn(&str, &str) -> bool| {
        list.as_array().is_none_or(|l| l.iter().any(|p| matches(p.as_str().unwrap(), value)))
    };
    let exact = |a: &str, b: &str| a == b;
    let path_matches = |pattern: &str, path: &str| match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    };
    assert_eq!(policy["spec"]["action"], "ALLOW");
    policy["spec"]["rules"].as_array().unwrap().iter().any(|rule| {
        let from = rule["from"].as_array().is_none_or(|f| {
            f.iter().any(|s| {
                let s = &s["source"];
                listed(&s["principals"], principal, &exact) && listed(&s["namespaces"], namespace, &exact)
            })
        });
        let to = rule["to"].as_array().is_none_or(|t| {
            t.iter().any(|o| {
                let o = &o["operation"];
                listed(&o["methods"], method, &exact) && listed(&o["paths"], path, &path_matches)
            })
        });
        from && to
    })
}

/// The service's routes, as (method, path), read from the router in revocation/src/api.rs.
fn service_routes() -> Vec<(String, String)> {
    let source = std::fs::read_to_string(repo_root().join("revocation/src/api.rs")).unwrap();
    let routes: Vec<(String, String)> = source
        .split(".route(\"")
        .skip(1)
        .map(|r| {
            let (path, rest) = r.split_once('"').unwrap();
            let method = rest.trim_start_matches([',', ' ']).split('(').next().unwrap().to_uppercase();
            (method, path.replace("{jti}", "some-jti"))
        })
        .collect();
    assert!(routes.len() >= 10, "{routes:?}");
    routes
}

/// The service runs with the restricted Pod Security profile, keeps a replica through voluntary
/// disruptions, and answers the feed and status only to the proxies and writes only to them
/// (the logout routes' revokes) and the operators. The manifests of issue 11 had none of it.
#[test]
fn the_revocation_service_is_restricted_and_only_its_callers_reach_it() {
    let docs = yaml_documents("envoy/istio/revocation.yaml");
    let deployment = find(&docs, "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert!(pod["imagePullSecrets"][0]["name"].is_string());
    for container in pod["containers"].as_array().unwrap() {
        let sc = &container["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert!(sc["privileged"].is_null() && sc["capabilities"]["add"].is_null());
    }
    let selects = |doc: &Value, selector: &str| {
        assert_eq!(&doc["spec"][selector]["matchLabels"], labels, "{} selects the pods", doc["kind"]);
    };
    let budget = find(&docs, "PodDisruptionBudget");
    selects(budget, "selector");
    assert!(budget["spec"]["minAvailable"].as_u64().unwrap() < deployment["spec"]["replicas"].as_u64().unwrap());

    let policy = find(&docs, "AuthorizationPolicy");
    selects(policy, "selector");
    let operator = "cluster.local/ns/jwtguard/sa/jwtguard-operator";
    let stranger = "cluster.local/ns/orders/sa/someone-else";
    let proxies: Vec<(String, String)> = SHAPES.iter().map(|p| proxy_of(p)).collect();
    for (method, path) in service_routes().into_iter().filter(|(_, p)| p.starts_with("/v1/")) {
        let read = path == "/v1/status" || path == "/v1/feed";
        let logout = path == "/v1/revoke" || path == "/v1/revoke-subject";
        // The identity provider's signed logout signals come in through the ingress gateway.
        let signal = path == "/v1/backchannel-logout" || path == "/v1/ssf/push";
        for (path_of_shape, (proxy, namespace)) in SHAPES.iter().zip(&proxies) {
            let ingress = *path_of_shape == "envoy/istio/gateway.yaml";
            let expected = read || logout || (signal && ingress);
            assert_eq!(allowed(policy, proxy, namespace, &method, &path), expected, "{proxy}: {method} {path}");
        }
        let write = !read && !signal;
        assert_eq!(allowed(policy, operator, "jwtguard", &method, &path), write, "operator: {method} {path}");
        assert!(!allowed(policy, stranger, "orders", &method, &path), "{method} {path} is open");
    }

    let network = find(&docs, "NetworkPolicy");
    selects(network, "podSelector");
    let port = pod["containers"][0]["ports"][0]["containerPort"].clone();
    for (_, namespace) in &proxies {
        let admitted = network["spec"]["ingress"].as_array().unwrap().iter().any(|rule| {
            let from = rule["from"].as_array().unwrap().iter().any(|f| {
                let s = &f["namespaceSelector"];
                s["matchLabels"]["kubernetes.io/metadata.name"] == namespace.as_str()
                    || s["matchExpressions"].as_array().into_iter().flatten().any(|e| {
                        e["key"] == "kubernetes.io/metadata.name"
                            && e["operator"] == "In"
                            && e["values"].as_array().unwrap().contains(&json!(namespace))
                    })
            });
            from && rule["ports"].as_array().unwrap().iter().any(|p| p["port"] == port)
        });
        assert!(admitted, "the NetworkPolicy keeps {namespace} out");
    }

    // Prometheus scrapes the sidecar agent (15020), which fetches the service's /metrics over
    // localhost and merges it with the sidecar's stats: the pod names the port and path, and
    // the NetworkPolicy lets the agent's port in. Issue 11's Deployment named none.
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], json!(port.to_string()), "the container port");
    let metrics_path = annotations["prometheus.io/path"].as_str().unwrap().to_string();
    assert!(service_routes().contains(&("GET".to_string(), metrics_path.clone())), "{metrics_path} is not a route");
    let scraped = network["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .any(|rule| rule["ports"].as_array().unwrap().iter().any(|p| p["port"] == 15020));
    assert!(scraped, "the NetworkPolicy keeps Prometheus from the sidecar agent's merged metrics");
}

/// The identity provider's logout signals get from outside the mesh through the shipped
/// gateway to the service: a route admitted by the Gateway's listener sends exactly those two
/// POSTs to the service's port, and the filter's own rule matching lets exactly them through
/// without a user token (a POST elsewhere and any other method still need one). Issue 11's
/// gateway admitted routes from `orders` only, and its catch-all rule required a token.
#[test]
fn the_gateway_routes_the_identity_providers_signals_to_the_service_without_a_user_token() {
    let docs = yaml_documents("envoy/istio/gateway.yaml");
    let services = yaml_documents("envoy/istio/revocation.yaml");
    let service = find(&services, "Service");
    let (name, namespace) = (&service["metadata"]["name"], &service["metadata"]["namespace"]);
    let gateway = find(&docs, "Gateway");
    let to_service = docs
        .iter()
        .find(|d| d["kind"] == "HTTPRoute" && d["metadata"]["namespace"] == *namespace)
        .expect("an HTTPRoute in the service's namespace");
    let parent = &to_service["spec"]["parentRefs"][0];
    assert_eq!(
        (&parent["name"], &parent["namespace"]),
        (&gateway["metadata"]["name"], &gateway["metadata"]["namespace"])
    );
    let rules = to_service["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    let backend = &rules[0]["backendRefs"][0];
    assert_eq!(&backend["name"], name);
    assert!(service["spec"]["ports"].as_array().unwrap().iter().any(|p| p["port"] == backend["port"]));
    let matches: Vec<Value> = rules[0]["matches"].as_array().unwrap().clone();
    let expected: Vec<Value> =
        SIGNALS.iter().map(|p| json!({"method": "POST", "path": {"type": "Exact", "value": p}})).collect();
    assert_eq!(matches, expected, "exactly the two signals");
    for (method, path) in SIGNALS.map(|p| ("POST".to_string(), p.to_string())) {
        assert!(service_routes().contains(&(method, path.clone())), "{path} is not a route of the service");
    }

    // The listener admits both routes' namespaces.
    let admits = |ns: &str| {
        gateway["spec"]["listeners"].as_array().unwrap().iter().any(|l| {
            let from = &l["allowedRoutes"]["namespaces"];
            match from["from"].as_str() {
                Some("All") => true,
                Some("Same") | None => gateway["metadata"]["namespace"] == ns,
                Some("Selector") => {
                    let s = &from["selector"];
                    s["matchLabels"]["kubernetes.io/metadata.name"] == ns
                        || s["matchExpressions"].as_array().into_iter().flatten().any(|e| {
                            e["key"] == "kubernetes.io/metadata.name"
                                && e["operator"] == "In"
                                && e["values"].as_array().unwrap().contains(&json!(ns))
                        })
                }
                Some(other) => panic!("allowedRoutes from {other}"),
            }
        })
    };
    for route in docs.iter().filter(|d| d["kind"] == "HTTPRoute") {
        let ns = route["metadata"]["namespace"].as_str().unwrap();
        assert!(admits(ns), "the Gateway does not admit routes from {ns}");
    }

    // The filter decides by its first matching rule: public (no `requires`) for exactly these.
    let config = parse_plugin_config(find(&docs, "WasmPlugin"));
    let public = |method: &str, path: &str| {
        let rule = config.rules.iter().find(|r| r.matcher.matches(method, path));
        rule.is_some_and(|r| r.requires.is_none())
    };
    for path in SIGNALS {
        assert!(public("POST", path), "POST {path} needs a user token");
        assert!(!public("GET", path), "GET {path} is public");
        assert!(!public("POST", &format!("{path}/more")), "{path}/more is public");
    }
    for path in ["/", "/v1/revoke", "/v1/status", "/orders", "/logout"] {
        assert!(!public("POST", path) && !public("GET", path), "{path} is public");
    }
}

/// The pull credentials are placeholders in one optional file, one Secret per namespace that
/// pulls with them, not in the manifests (which would replace a real Secret when applied again).
#[test]
fn the_registry_credentials_are_an_optional_file_of_their_own() {
    let secrets = yaml_documents(REGISTRY_CREDENTIALS);
    let mut pulls = Vec::new();
    for path in SHARED.iter().chain(&SHAPES) {
        for doc in yaml_documents(path) {
            let namespace = doc["metadata"]["namespace"].as_str().unwrap_or("").to_string();
            assert!(
                !(doc["kind"] == "Secret" && doc["type"] == "kubernetes.io/dockerconfigjson"),
                "{path} holds pull credentials"
            );
            if let Some(name) = doc["spec"]["imagePullSecret"].as_str() {
                pulls.push((namespace.clone(), name.to_string()));
            }
            for s in doc["spec"]["template"]["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
                pulls.push((namespace.clone(), s["name"].as_str().unwrap().to_string()));
            }
        }
    }
    assert!(pulls.len() >= 4, "{pulls:?}");
    for (namespace, name) in pulls {
        let found = secrets.iter().any(|s| {
            s["kind"] == "Secret"
                && s["type"] == "kubernetes.io/dockerconfigjson"
                && s["metadata"]["namespace"] == namespace.as_str()
                && s["metadata"]["name"] == name.as_str()
        });
        assert!(found, "{REGISTRY_CREDENTIALS} has no {namespace}/{name}");
    }
}

/// Istio's WasmPlugin `sha256` is compared with the pulled image's manifest digest, as hex
/// without its algorithm: the hex `make oci` prints after "sha256:" passes the CRD's pattern,
/// the whole printed digest does not.
#[test]
fn the_wasmplugin_pins_the_hex_digest_make_oci_prints() {
    let (_, digest) = build_oci(&scratch_dir("oci-pin").join("image"));
    let hex = digest.strip_prefix("sha256:").expect("oci.sh prints sha256:HEX");
    let mut plugin = plugin_of("envoy/istio/wasmplugin.yaml");
    plugin["spec"]["sha256"] = json!(hex);
    check_schemas("pin", &[plugin.clone()]).expect("the hex digest is a valid sha256");
    plugin["spec"]["sha256"] = json!(digest);
    assert!(check_schemas("pin-prefixed", &[plugin]).unwrap_err().contains("sha256"));
}

// ---------------------------------------------------------------------------------------------
// Compose

const COMPOSE: &str = "envoy/docker-compose.yaml";
/// The same stack with the dynamic-module build in Envoy (docs/builds.md).
const COMPOSE_MODULE: &str = "envoy/docker-compose.module.yaml";

#[test]
fn the_compose_files_pass_the_compose_specification_and_docker_compose() {
    let spec = |path: &Path| {
        Command::new(venv("check-jsonschema"))
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(path)
            .output()
            .unwrap()
    };
    for file in [COMPOSE, COMPOSE_MODULE] {
        let compose = repo_root().join(file);
        let checked = spec(&compose);
        assert!(checked.status.success(), "{file}: {}", String::from_utf8_lossy(&checked.stdout));
        let config = run(Command::new("docker-compose").arg("-f").arg(&compose).arg("config"));
        for service in ["redis:", "revocation:", "jwks:", "upstream:", "envoy:"] {
            assert!(config.contains(service), "{file}: {service} missing:\n{config}");
        }
        assert!(config.contains("--appendonly"), "{file}: Redis runs with AOF");
    }

    // Not vacuous: a condition the specification does not have is refused.
    let broken = scratch_dir("compose-broken").join("docker-compose.yaml");
    let text = std::fs::read_to_string(repo_root().join(COMPOSE)).unwrap();
    std::fs::write(&broken, text.replacen("condition: service_healthy", "condition: healthy", 1)).unwrap();
    let refused = spec(&broken);
    assert!(!refused.status.success(), "a broken compose file passed");
    assert!(String::from_utf8_lossy(&refused.stdout).contains("healthy"));
}

/// Starts on a fresh host: every container has a healthcheck and a restart policy, starts only
/// once what it depends on is healthy, and every image is pinned. The compose file of issue 11
/// had none of the healthchecks and conditions, and redis:7.0.
#[test]
fn the_compose_services_wait_for_healthy_dependencies_and_restart() {
    let compose = &yaml_documents(COMPOSE)[0];
    let services = compose["services"].as_object().unwrap();
    for (name, service) in services {
        assert!(service["healthcheck"]["test"].is_array(), "{name}: no healthcheck");
        assert_eq!(service["restart"], "unless-stopped", "{name}");
        let image = service["image"].as_str().unwrap();
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or_else(|| panic!("{name}: {image} has no tag"));
        assert_ne!(tag, "latest", "{name}");
        for (dependency, condition) in service["depends_on"].as_object().into_iter().flatten() {
            assert_eq!(condition["condition"], "service_healthy", "{name} -> {dependency}");
        }
    }
    assert_eq!(services["redis"]["image"], "redis:7.4");
    let mut envoy_depends: Vec<&String> = services["envoy"]["depends_on"].as_object().unwrap().keys().collect();
    envoy_depends.sort();
    assert_eq!(envoy_depends, ["jwks", "revocation", "upstream"]);
    assert_eq!(services["revocation"]["depends_on"]["redis"]["condition"], "service_healthy");
}

/// The JWKS container (non-root) writes its key pair into a named volume: the image must create
/// the mount point owned by the user it runs as, since Docker gives a new volume that owner.
/// The compose file of issue 11 mounted /keys, which the image did not have (root-owned volume).
#[test]
fn the_jwks_volume_is_owned_by_the_user_the_image_runs_as() {
    let compose = &yaml_documents(COMPOSE)[0];
    let jwks = &compose["services"]["jwks"];
    let (volume, mount) = jwks["volumes"][0].as_str().unwrap().split_once(':').unwrap();
    assert!(compose["volumes"][volume].is_object(), "{volume} is a named volume");
    assert!(jwks["command"].as_array().unwrap().contains(&json!(mount)), "serve-jwks uses {mount}");
    let dockerfile = std::fs::read_to_string(repo_root().join("revocation/Dockerfile")).unwrap();
    let user = dockerfile.lines().rev().find_map(|l| l.strip_prefix("USER ")).expect("USER").trim();
    let prepared = dockerfile.lines().any(|l| {
        l.starts_with("RUN ")
            && l.contains(&format!("mkdir -p {mount}"))
            && l.contains(&format!("chown {user} {mount}"))
    });
    assert!(prepared, "the image does not create {mount} owned by {user}");
}

/// The build context docker-compose would send (computed by docker-py, whose rules it uses)
/// leaves out the build output, the venv and the history, and keeps what the build reads.
#[test]
fn the_docker_build_context_leaves_out_target_venv_and_git() {
    let script = "import json, sys\nfrom docker.utils.build import exclude_paths\n\
        patterns = [l.strip() for l in open('.dockerignore') if l.strip() and not l.startswith('#')]\n\
        print(json.dumps(sorted(exclude_paths('.', patterns))))";
    let listed = run(Command::new("/usr/bin/python3").args(["-c", script]).current_dir(repo_root()));
    let files: Vec<String> = serde_json::from_str(&listed).unwrap();
    for left_out in ["target/", ".venv/", ".git/"] {
        assert!(!files.iter().any(|f| f.starts_with(left_out)), "{left_out} is in the build context");
    }
    // envoy/module.Dockerfile builds the module from the same context.
    for needed in
        ["Cargo.lock", "revocation/openapi.json", "envoy/compose/http-ok", "demo/Cargo.toml", "module/Cargo.toml"]
    {
        assert!(files.iter().any(|f| f == needed), "{needed} is not in the build context");
    }
}

#[test]
fn the_compose_envoy_config_is_accepted_by_envoy_with_the_filter() {
    let dir = scratch_dir("compose-envoy");
    let text = std::fs::read_to_string(repo_root().join("envoy/compose/envoy.yaml")).unwrap();
    let local = dir.join("envoy.yaml");
    std::fs::write(&local, text.replace("/etc/envoy/jwtguard.wasm", wasm_file().to_str().unwrap())).unwrap();
    let out = run(Command::new(envoy_binary()).args(["--mode", "validate", "--disable-hot-restart", "-c"]).arg(&local));
    assert!(out.contains("OK"), "{out}");
}

/// The compose healthchecks probe the port each program listens on, and the probe works
/// against the real programs: the revocation service's /readyz, the demo's JWKS and echo
/// servers, Envoy's admin /ready (200), and fails on an error status or a closed port. Bash
/// runs the probe, where the image and Envoy's mount put it: its executable bit does not matter
/// (issue 11's review: a checkout without it failed every healthcheck).
#[test]
fn the_compose_healthchecks_probe_the_real_programs() {
    const HTTP_OK: &str = "/usr/local/bin/http-ok";
    let compose = &yaml_documents(COMPOSE)[0];
    let services = &compose["services"];
    let probe = |service: &str| -> (String, String) {
        let test = services[service]["healthcheck"]["test"].as_array().unwrap();
        assert_eq!(test[..3], [json!("CMD"), json!("bash"), json!(HTTP_OK)], "{service}");
        (test[3].as_str().unwrap().to_string(), test[4].as_str().unwrap().to_string())
    };
    let dockerfile = std::fs::read_to_string(repo_root().join("revocation/Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("COPY envoy/compose/http-ok {HTTP_OK}\n")), "the image's http-ok");
    let mount = format!("./compose/http-ok:{HTTP_OK}:ro");
    assert!(services["envoy"]["volumes"].as_array().unwrap().contains(&json!(mount)), "Envoy's http-ok");
    for service in ["revocation", "jwks", "upstream"] {
        let (port, _) = probe(service);
        let command = services[service]["command"].as_array().unwrap();
        assert!(command.contains(&json!(format!("0.0.0.0:{port}"))), "{service} does not listen on {port}");
    }
    let envoy_config = &yaml_documents("envoy/compose/envoy.yaml")[0];
    assert_eq!(
        json!(probe("envoy").0.parse::<u64>().unwrap()),
        envoy_config["admin"]["address"]["socket_address"]["port_value"]
    );
    assert_eq!(services["redis"]["healthcheck"]["test"], json!(["CMD", "redis-cli", "ping"]));

    let http_ok = |port: u16, path: &str| {
        Command::new("bash")
            .arg(repo_root().join("envoy/compose/http-ok"))
            .arg(port.to_string())
            .arg(path)
            .status()
            .unwrap()
            .success()
    };
    let dir = scratch_dir("compose-healthchecks");
    let redis = RedisServer::start(&dir, &[]);
    assert_eq!(redis.cli(&["ping"]), "PONG");
    let args = support::revocation::service_args(&[redis.url()], false, &[]);
    let revocation = Service::start(&service::binary(), &dir, &args).expect("service");
    let jwks = jwtguard_demo::echo::start_static("127.0.0.1:0", r#"{"keys":[]}"#.into()).unwrap();
    let upstream = jwtguard_demo::echo::Echo::start("127.0.0.1:0").unwrap();
    let listener = Listener { name: "probe".into(), filters: Vec::new(), target: Target::DirectResponse };
    let envoy = Envoy::start(&dir, &bootstrap(&[listener], &[]));
    // Ready once it has written to Redis and read the feed back: poll, as Docker does.
    let readyz = probe("revocation").1;
    wait_for("the service's healthcheck", Duration::from_secs(20), || http_ok(revocation.port, &readyz).then_some(()));
    assert!(http_ok(jwks, &probe("jwks").1));
    assert!(http_ok(upstream.port, &probe("upstream").1));
    assert!(http_ok(envoy.admin, &probe("envoy").1));
    assert!(!http_ok(revocation.port, "/no-such-path"), "a 404 passed");
    // A server that closes every connection unanswered (held by the test: a free port could be
    // taken meanwhile by another test's server).
    let closing = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closing.local_addr().expect("port").port();
    std::thread::spawn(move || closing.incoming().for_each(drop));
    assert!(!http_ok(port, "/"), "a connection closed unanswered passed");
}

// ---------------------------------------------------------------------------------------------

/// The shipped Envoy configurations carry exactly the `stats_tags` the tests run with, so the
/// labelled series the documented alerts use (checked in jwks_e2e) are the ones users get: each
/// those of the build it loads, whichever build the tests run.
#[test]
fn shipped_envoy_configs_carry_the_tested_stats_tags() {
    for (path, build) in [
        ("envoy/envoy.yaml", Build::Wasm),
        ("envoy/compose/envoy.yaml", Build::Wasm),
        ("envoy/envoy-module.yaml", Build::Module),
        ("envoy/compose/envoy-module.yaml", Build::Module),
    ] {
        let docs = yaml_documents(path);
        assert_eq!(docs[0]["stats_config"]["stats_tags"], build.stats_tags(), "{path}");
    }
}

// ---------------------------------------------------------------------------------------------
// The filter's stats under Istio

/// The bootstrap override the shapes ship: the JSON of a ConfigMap's `custom_bootstrap.json`.
fn bootstrap_override(docs: &[Value], namespace: &Value) -> String {
    let map = docs
        .iter()
        .find(|d| {
            d["kind"] == "ConfigMap" && d["metadata"]["name"] == STATS_TAGS && d["metadata"]["namespace"] == *namespace
        })
        .unwrap_or_else(|| panic!("no ConfigMap {namespace}/{STATS_TAGS}"));
    map["data"]["custom_bootstrap.json"].as_str().expect("custom_bootstrap.json").to_string()
}

const STATS_TAGS: &str = "jwtguard-stats-tags";
/// The keys of a Gateway's parametersRef ConfigMap that Istio's deployment controller applies
/// (any other refuses the whole overlay): istio/istio pilot/pkg/config/kube/gateway/
/// deploymentcontroller.go, `supportedOverlays`.
const ISTIO_OVERLAYS: [&str; 5] =
    ["deployment", "service", "serviceAccount", "horizontalPodAutoscaler", "podDisruptionBudget"];

/// Under Istio the bootstrap is Istio's, so the filter's provider and reason labels come as a
/// bootstrap override: each shape ships a ConfigMap with exactly the tested stats_tags in its
/// proxies' namespace, and the gateway and waypoint shapes mount it into the proxy of the
/// Deployment Istio makes (their Gateway's parametersRef names a ConfigMap whose `deployment`
/// overlay sets ISTIO_BOOTSTRAP_OVERRIDE to the mounted file). Sidecars get it through their
/// pods' annotation (the application's pods: not shipped). Issue 11's manifests had none of it.
#[test]
fn every_istio_shape_ships_the_stats_tags_as_a_bootstrap_override() {
    for path in SHAPES {
        let docs = yaml_documents(path);
        let plugin = find(&docs, "WasmPlugin");
        let text = bootstrap_override(&docs, &plugin["metadata"]["namespace"]);
        let tags: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(tags, json!({"stats_config": {"stats_tags": Build::Wasm.stats_tags()}}), "{path}");
        if plugin["spec"]["targetRefs"].is_null() {
            continue;
        }
        let gateway = find(&docs, "Gateway");
        let params = &gateway["spec"]["infrastructure"]["parametersRef"];
        assert_eq!((&params["group"], &params["kind"]), (&json!(""), &json!("ConfigMap")), "{path}");
        let options = docs
            .iter()
            .find(|d| {
                d["kind"] == "ConfigMap"
                    && d["metadata"] == json!({"name": params["name"], "namespace": gateway["metadata"]["namespace"]})
            })
            .unwrap_or_else(|| panic!("{path}: no ConfigMap {}", params["name"]));
        for key in options["data"].as_object().unwrap().keys() {
            assert!(ISTIO_OVERLAYS.contains(&key.as_str()), "{path}: Istio refuses the overlay {key}");
        }
        let overlay = yaml_value(options["data"]["deployment"].as_str().expect("a deployment overlay"));
        let pod = &overlay["spec"]["template"]["spec"];
        let proxy =
            pod["containers"].as_array().unwrap().iter().find(|c| c["name"] == "istio-proxy").expect("istio-proxy");
        let file =
            proxy["env"].as_array().unwrap().iter().find(|e| e["name"] == "ISTIO_BOOTSTRAP_OVERRIDE").expect("env")
                ["value"]
                .as_str()
                .unwrap()
                .to_string();
        let mounted = proxy["volumeMounts"].as_array().unwrap().iter().any(|m| {
            let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == m["name"]);
            file == format!("{}/custom_bootstrap.json", m["mountPath"].as_str().unwrap())
                && volume.is_some_and(|v| v["configMap"]["name"] == STATS_TAGS)
        });
        assert!(mounted, "{path}: {file} is not the mounted {STATS_TAGS}");
    }
}

/// Envoy started as Istio's agent starts it with a bootstrap override (istio/istio
/// pkg/envoy/proxy.go): `-c` the bootstrap it generated, `--config-yaml` the override file's
/// text. Killed on drop.
struct IstioProxy {
    child: std::process::Child,
    admin: u16,
    log: PathBuf,
}

impl Drop for IstioProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl IstioProxy {
    fn start(dir: &Path, config: &Value, bootstrap_override: Option<&str>) -> IstioProxy {
        std::fs::create_dir_all(dir).unwrap();
        let (config_path, admin_path, log) = (dir.join("envoy.json"), dir.join("admin.txt"), dir.join("envoy.log"));
        std::fs::write(&config_path, serde_json::to_vec(config).unwrap()).unwrap();
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c").arg(&config_path).args(["--concurrency", "1", "--disable-hot-restart"]);
        cmd.args(["--file-flush-interval-msec", "50"]);
        cmd.arg("--admin-address-path").arg(&admin_path).arg("--log-path").arg(&log);
        if let Some(text) = bootstrap_override {
            cmd.args(["--config-yaml", text]);
        }
        let child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        let mut proxy = IstioProxy { child, admin: 0, log };
        proxy.admin = wait_for("the admin address", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&admin_path).ok()?;
            text.trim().rsplit(':').next()?.parse().ok()
        });
        // Live once the listener, and so the plugin's configuration (which logs this line, then
        // defines the stats, on the main thread that also answers the admin requests), is in.
        wait_for("Envoy live with the plugin configured", Duration::from_secs(60), || {
            assert!(proxy.child.try_wait().unwrap().is_none(), "envoy exited:\n{}", proxy.log_text());
            let live = proxy.admin_get("/ready").is_some_and(|r| r.trim() == "LIVE");
            (live && proxy.log_text().contains("jwtguard: providers")).then_some(())
        });
        proxy
    }

    fn admin_get(&self, path: &str) -> Option<String> {
        ureq::get(&format!("http://127.0.0.1:{}{path}", self.admin)).call().ok()?.into_string().ok()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Istio's stats settings in the bootstrap it generates (tools/packaging/common/
/// envoy_bootstrap.json with pkg/bootstrap/config.go, Istio 1.29): no Envoy default tags, some
/// of Istio's own (those that match anywhere in a name), and stats made only for an inclusion
/// list, of these prefixes by default.
fn istio_stats_config(prefixes: &[&str]) -> Value {
    json!({
        "use_all_default_tags": false,
        "stats_tags": [
            {"tag_name": "cache", "regex": "(cache\\.(.+?)\\.)"},
            {"tag_name": "component", "regex": "(component\\.(.+?)\\.)"},
            {"tag_name": "tag", "regex": "(tag\\.(.+?);\\.)"},
            {"tag_name": "wasm_filter", "regex": "(wasm_filter\\.(.+?)\\.)"}
        ],
        "stats_matcher": {"inclusion_list": {"patterns": prefixes.iter().map(|p| json!({"prefix": p})).collect::<Vec<_>>()}}
    })
}

/// Istio's default inclusion prefixes (pkg/bootstrap/config.go
/// `requiredEnvoyStatsMatcherInclusionPrefixes`, with the template's own): `wasm`, there since
/// istio/istio#22639, is a prefix of `wasmcustom.`, the filter's stats.
const ISTIO_STATS_PREFIXES: [&str; 8] =
    ["reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc", "wasm", "component", "istio"];

/// With Istio's stats settings, the filter's stats are exported without further configuration
/// (Istio includes `wasm…` stats by default), but without the provider and reason labels the
/// alerts and the dashboard need; with the shipped bootstrap override passed as Istio's agent
/// passes it, they have them. And not vacuously: without the `wasm` prefix none are exported.
#[test]
fn the_bootstrap_override_labels_the_filters_stats_in_an_istio_bootstrap() {
    let docs = yaml_documents("envoy/istio/wasmplugin.yaml");
    let text = bootstrap_override(&docs, &find(&docs, "WasmPlugin")["metadata"]["namespace"]);
    let plugin = json!({
        "providers": {"idp": {"issuer": "https://idp.example.com", "remote_jwks": {"cluster": "jwks", "uri": "http://jwks.test/keys"}}},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]
    });
    Config::parse(plugin.to_string().as_bytes()).expect("the plugin configuration");
    let listener = Listener {
        name: "in".into(),
        // Istio runs the wasm build (a WasmPlugin), whichever build the tests run.
        filters: vec![Build::Wasm.filter("istio", &plugin)],
        target: Target::DirectResponse,
    };
    let jwks = support::envoy::static_cluster("jwks", jwtguard_demo::redis::free_port());
    let config = |prefixes: &[&str]| {
        let mut c = bootstrap(std::slice::from_ref(&listener), std::slice::from_ref(&jwks));
        c["stats_config"] = istio_stats_config(prefixes);
        c
    };
    let dir = scratch_dir("istio-stats");
    let prometheus = |name: &str, prefixes: &[&str], bootstrap_override: Option<&str>| {
        let proxy = IstioProxy::start(&dir.join(name), &config(prefixes), bootstrap_override);
        let text = proxy.admin_get("/stats/prometheus").unwrap();
        std::fs::write(dir.join(format!("{name}.prom")), &text).unwrap();
        text
    };

    let plain = prometheus("istio-defaults", &ISTIO_STATS_PREFIXES, None);
    assert!(plain.contains("jwtguard_allowed"), "Istio's inclusion list drops the filter's stats:\n{plain}");
    assert!(plain.contains("jwtguard_jwks_idp_age_ms"), "{plain}");
    assert!(!plain.contains("provider=") && !plain.contains("reason="), "{plain}");

    let tagged = prometheus("with-override", &ISTIO_STATS_PREFIXES, Some(&text));
    for series in [
        r#"jwtguard_jwks_age_ms{provider="idp"}"#,
        r#"jwtguard_jwks_stale{provider="idp"}"#,
        r#"jwtguard_denied{reason="expired"}"#,
    ] {
        assert!(tagged.contains(series), "no {series}:\n{tagged}");
    }
    assert!(!tagged.contains("jwtguard_jwks_idp_"), "{tagged}");

    let without_wasm: Vec<&str> = ISTIO_STATS_PREFIXES.iter().copied().filter(|p| *p != "wasm").collect();
    let dropped = prometheus("without-wasm-prefix", &without_wasm, Some(&text));
    assert!(!dropped.contains("jwtguard_"), "{dropped}");
}

/// `make test` passes in a plain clone with nothing beside it: no tracked file but prose reads
/// the workplace's shared folder above the repository (tests/wycheproof.rs once did; its
/// vectors are now in tests/vectors with their licence).
#[test]
fn nothing_tracked_reaches_outside_the_clone() {
    let files = run(Command::new("git").arg("-C").arg(repo_root()).arg("ls-files"));
    // Built at run time so this file does not match itself.
    let needles = [format!("../{}", "shared"), format!("{}/testvectors", "shared"), format!("{}/research", "shared")];
    for file in files.lines().filter(|f| !f.ends_with(".md")) {
        let Ok(text) = std::fs::read_to_string(repo_root().join(file)) else { continue };
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "{file} refers to {needle}, outside the clone");
        }
    }
    assert!(repo_root().join("tests/vectors/wycheproof/LICENSE").exists());
}

// ---------------------------------------------------------------------------------------------
// The dynamic-module build (docs/builds.md): jwtguard as Envoy 1.40's dynamic_modules HTTP
// filter, target/module/libjwtguard_module.so (`make module`), in the demo, compose and Envoy
// Gateway shapes.

/// The name the shipped configurations load the module by: Envoy opens
/// `${ENVOY_DYNAMIC_MODULES_SEARCH_PATH}/libjwtguard_module.so`.
const MODULE_NAME: &str = "jwtguard_module";
const MODULE_DOCKERFILE: &str = "envoy/module.Dockerfile";
const ABI_MATCHED: &str = "Dynamic module ABI version v0.2.0 matched.";
const STRIP_PREFIX_FLAG: &str = "envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix";

/// What a shipped wasm configuration is for the module build: its wasm filter replaced by the
/// dynamic-module filter with the same configuration, the module's stat names in stats_tags, and
/// the runtime flag that gives its stats the wasm build's Prometheus names.
fn as_module_config(wasm: &Value) -> Value {
    let mut config = wasm.clone();
    let mut replaced = 0;
    for listener in config["static_resources"]["listeners"].as_array_mut().unwrap() {
        for chain in listener["filter_chains"].as_array_mut().unwrap() {
            for network in chain["filters"].as_array_mut().unwrap() {
                for http in network["typed_config"]["http_filters"].as_array_mut().into_iter().flatten() {
                    if http["name"] != "envoy.filters.http.wasm" {
                        continue;
                    }
                    *http = json!({
                        "name": "envoy.filters.http.dynamic_modules",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                            "dynamic_module_config": {"name": MODULE_NAME, "do_not_close": true},
                            "filter_name": "jwtguard",
                            "filter_config": http["typed_config"]["config"]["configuration"].clone()
                        }
                    });
                    replaced += 1;
                }
            }
        }
    }
    assert_eq!(replaced, 1, "one wasm filter");
    config["stats_config"]["stats_tags"] = Build::Module.stats_tags();
    config["layered_runtime"] = json!({"layers": [
        {"name": "static", "static_layer": {STRIP_PREFIX_FLAG: true}},
        {"name": "admin", "admin_layer": {}}
    ]});
    config
}

/// The module configurations are the wasm ones but for the build: the same plugin
/// configuration (text for text), listener and clusters.
#[test]
fn the_module_configs_are_the_wasm_ones_with_the_module_filter() {
    for (wasm, module) in [
        ("envoy/envoy.yaml", "envoy/envoy-module.yaml"),
        ("envoy/compose/envoy.yaml", "envoy/compose/envoy-module.yaml"),
    ] {
        assert_eq!(yaml_documents(module)[0], as_module_config(&yaml_documents(wasm)[0]), "{module} against {wasm}");
    }
}

/// A directory in which the built module has the file name its configured name makes.
fn module_search_path(dir: &Path) -> PathBuf {
    let path = dir.join("modules");
    std::fs::create_dir_all(&path).unwrap();
    std::os::unix::fs::symlink(support::envoy::module_file(), path.join(format!("lib{MODULE_NAME}.so"))).unwrap();
    path
}

/// `envoy --mode validate` on the configuration `text`, run in `dir` with the module search path
/// `search_path` (none: Envoy's default, its working directory and the library paths): whether
/// Envoy accepted it, and what it printed. Validation loads the module and runs its
/// configuration hook, so a configuration the module refuses fails too.
fn validate_with_module(dir: &Path, text: &str, search_path: Option<&Path>) -> (bool, String) {
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(envoy_binary());
    cmd.args(["--mode", "validate", "--disable-hot-restart", "-c"]).arg(&path).current_dir(dir);
    // cargo test puts target/debug (where a debug build of the module may be) in LD_LIBRARY_PATH,
    // which Envoy's last resort, dlopen by bare file name, searches.
    cmd.env_remove("ENVOY_DYNAMIC_MODULES_SEARCH_PATH").env_remove("LD_LIBRARY_PATH");
    if let Some(search_path) = search_path {
        cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", search_path);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (make deps installs it)"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Envoy 1.40 loads the built module by the name the shipped configurations give it, from
/// ENVOY_DYNAMIC_MODULES_SEARCH_PATH (the demo's placeholders filled in as scripts/demo.sh fills
/// envoy/envoy.yaml's), and the module accepts their configuration; without the search path Envoy
/// does not find it.
#[test]
fn envoy_loads_the_module_by_name_with_the_shipped_configs() {
    let dir = scratch_dir("module-configs");
    let modules = module_search_path(&dir);
    let key = support::tokens::KeyPair::generate(&dir, jsonwebtoken::Algorithm::RS256, "demo");
    let jwks = json!({"keys": [key.jwk()]}).to_string();
    let demo = std::fs::read_to_string(repo_root().join("envoy/envoy-module.yaml"))
        .unwrap()
        .replace("@JWKS@", &serde_json::to_string(&jwks).unwrap())
        .replace("@STATUS_CREDENTIAL@", "status-credential")
        .replace("@WRITE_CREDENTIAL@", "write-credential");
    let compose = std::fs::read_to_string(repo_root().join("envoy/compose/envoy-module.yaml")).unwrap();
    for (path, text) in [("envoy/envoy-module.yaml", &demo), ("envoy/compose/envoy-module.yaml", &compose)] {
        let (ok, out) = validate_with_module(&dir, text, Some(&modules));
        assert!(ok && out.contains("' OK") && out.contains(ABI_MATCHED), "{path}: envoy --mode validate:\n{out}");
        assert!(out.contains("jwtguard: providers demo"), "{path}: the module did not take its configuration:\n{out}");
    }
    let (ok, out) = validate_with_module(&dir, &demo, None);
    assert!(!ok && out.contains(&format!("lib{MODULE_NAME}.so not found")), "found without the search path:\n{out}");
}

/// The glibc of Ubuntu 22.04, the official Envoy image's base (`BUILD_TAG=22.04` in the revisions
/// of envoyproxy/envoy distribution/docker/Dockerfile-envoy read for docs/builds.md).
const IMAGE_GLIBC: (u32, u32) = (2, 35);

/// The module loads in the official Envoy image: it names only libraries that glibc and
/// libgcc_s provide (Ubuntu has both; the distroless images only glibc, as docs/builds.md says),
/// and asks for no glibc symbol version newer than the image's. Read with readelf (binutils:
/// rustc links with it on Linux, so a machine that builds the module has it).
#[test]
fn the_module_needs_no_more_than_the_official_envoy_image_has() {
    let so = support::envoy::module_file();
    let dynamic = run(Command::new("readelf").args(["-d", "-W"]).arg(&so));
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next())
        .collect();
    let system = ["libc.so.6", "libgcc_s.so.1", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1"];
    for library in &needed {
        assert!(system.contains(library) || library.starts_with("ld-linux"), "the module needs {library}:\n{dynamic}");
    }
    assert!(needed.contains(&"libgcc_s.so.1"), "docs/builds.md says the module needs libgcc_s: {needed:?}");
    let versions = run(Command::new("readelf").args(["-V", "-W"]).arg(&so));
    let glibc: Vec<(u32, u32)> = versions
        .split_whitespace()
        .filter_map(|w| w.trim_matches(|c| c == '(' || c == ')').strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.');
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect();
    let newest = glibc.iter().max().unwrap_or_else(|| panic!("no glibc versions read:\n{versions}"));
    assert!(*newest <= IMAGE_GLIBC, "the module asks for GLIBC_{}.{}, newer than the image's", newest.0, newest.1);
}

/// The instructions of a Dockerfile (comments and blank lines left out).
fn dockerfile(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect()
}

/// The directory envoy/module.Dockerfile puts the module in, checked to be the search path it sets.
fn module_image_dir() -> String {
    let lines = dockerfile(MODULE_DOCKERFILE);
    let copied = lines
        .iter()
        .find_map(|l| l.strip_prefix("COPY --from=build /src/target/module/libjwtguard_module.so "))
        .expect("the module copied from the build stage");
    let dir = copied.trim_end_matches('/').to_string();
    let env = format!("ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH={dir}");
    assert!(lines.contains(&env), "{MODULE_DOCKERFILE}: no {env}");
    dir
}

/// The module image is the official Envoy image the wasm compose runs, with the module built by
/// the toolchain of the service's image (revocation/Dockerfile), at its search path; the compose
/// variant is the wasm one but for Envoy's image and configuration, service for service (so the
/// checks of the wasm compose file above hold for it too).
#[test]
fn the_module_compose_is_the_wasm_one_with_the_module_image() {
    let lines = dockerfile(MODULE_DOCKERFILE);
    let from: Vec<&String> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(from.len(), 2, "{from:?}");
    assert_eq!(Some(from[0]), dockerfile("revocation/Dockerfile").iter().find(|l| l.starts_with("FROM ")));
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    let recipe = makefile.split("\nmodule:").nth(1).and_then(|r| r.lines().nth(1)).expect("make module").trim();
    assert!(lines.contains(&format!("RUN {recipe} --locked")), "{MODULE_DOCKERFILE} does not build as `make module`");
    module_image_dir();

    let (wasm, module) = (&yaml_documents(COMPOSE)[0], &yaml_documents(COMPOSE_MODULE)[0]);
    let mut envoy = module["services"]["envoy"].clone();
    assert_eq!(from[1].strip_prefix("FROM ").unwrap(), wasm["services"]["envoy"]["image"], "the official image");
    assert_eq!(envoy["build"], json!({"context": "..", "dockerfile": MODULE_DOCKERFILE}));
    let image = envoy["image"].as_str().unwrap();
    assert!(image.rsplit_once(':').is_some_and(|(_, tag)| tag != "latest"), "{image}: a tag");
    assert_eq!(
        envoy["volumes"],
        json!(["./compose/envoy-module.yaml:/etc/envoy/envoy.yaml:ro", "./compose/http-ok:/usr/local/bin/http-ok:ro"]),
        "the configuration and the healthcheck, nothing built on the host"
    );
    let mut wasm_envoy = wasm["services"]["envoy"].clone();
    for field in ["build", "image", "volumes"] {
        envoy.as_object_mut().unwrap().remove(field);
        wasm_envoy.as_object_mut().unwrap().remove(field);
    }
    assert_eq!(envoy, wasm_envoy, "Envoy's command, ports, restart, dependencies and healthcheck");
    let (mut services, mut wasm_services) = (module["services"].clone(), wasm["services"].clone());
    services.as_object_mut().unwrap().remove("envoy");
    wasm_services.as_object_mut().unwrap().remove("envoy");
    assert_eq!(services, wasm_services, "the other services");
    assert_eq!(module["volumes"], wasm["volumes"]);
}

// Envoy Gateway (envoy/gateway/): no schema of its kinds is installed here, so these check their
// structure against the Envoy Gateway API cited in the files, and what Envoy itself can check.

const EG_PROXY: &str = "envoy/gateway/envoy-proxy.yaml";
const EG_POLICY: &str = "envoy/gateway/envoy-extension-policy.yaml";
const EG_API: &str = "gateway.envoyproxy.io/v1alpha1";
/// The CA bundle the identity provider's clusters trust: the image's (Ubuntu's ca-certificates).
const IMAGE_CA: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The Envoy Gateway example's EnvoyProxy, its bootstrap addition (parsed), and the policy.
fn envoy_gateway_example() -> (Value, Value, Value) {
    let proxy = find(&yaml_documents(EG_PROXY), "EnvoyProxy").clone();
    let bootstrap = yaml_value(proxy["spec"]["bootstrap"]["value"].as_str().expect("a bootstrap value"));
    let policy = find(&yaml_documents(EG_POLICY), "EnvoyExtensionPolicy").clone();
    (proxy, bootstrap, policy)
}

fn static_cluster_of<'a>(bootstrap: &'a Value, name: &str) -> &'a Value {
    let clusters = bootstrap["static_resources"]["clusters"].as_array().expect("static clusters");
    clusters.iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{EG_PROXY}: no cluster {name}"))
}

/// A Kubernetes name of Envoy Gateway's dynamic modules: `^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$`, at
/// most 253 characters (api/v1alpha1/dynamic_module_types.go).
fn is_module_name(name: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.starts_with(edge)
        && name.ends_with(edge)
        && name.chars().all(|c| edge(c) || c == '.' || c == '-')
}

/// The example holds together: the Gateway uses the EnvoyProxy, the policy targets the Gateway
/// and loads a module the EnvoyProxy registers, from where the image puts it (so the image must be
/// envoy/module.Dockerfile's, not Envoy Gateway's distroless default); the bootstrap carries the
/// module's stats_tags and the runtime flag; the configuration is the filter's (its own parser
/// accepts it), wasmplugin.yaml's but for the clusters' names, and every cluster it calls is a
/// static one of the bootstrap to the same host, over TLS where the URL is https. The Namespace
/// and Gateway pass the Kubernetes and Gateway API schemas.
#[test]
fn the_envoy_gateway_example_loads_the_registered_module_with_the_filters_configuration() {
    let (proxy, bootstrap, policy) = envoy_gateway_example();
    let proxy_docs = yaml_documents(EG_PROXY);
    let gateway = find(&proxy_docs, "Gateway");
    assert_eq!((&proxy["apiVersion"], &policy["apiVersion"]), (&json!(EG_API), &json!(EG_API)));
    let namespace = &gateway["metadata"]["namespace"];
    assert_eq!((&proxy["metadata"]["namespace"], &policy["metadata"]["namespace"]), (namespace, namespace));
    assert_eq!(
        gateway["spec"]["infrastructure"]["parametersRef"],
        json!({"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": proxy["metadata"]["name"]})
    );
    assert_eq!(
        policy["spec"]["targetRefs"],
        json!([{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway["metadata"]["name"]}])
    );
    let schema_checked: Vec<Value> =
        proxy_docs.iter().filter(|d| d["kind"] == "Namespace" || d["kind"] == "Gateway").cloned().collect();
    check_schemas("envoy-gateway", &schema_checked).unwrap_or_else(|e| panic!("{EG_PROXY}: {e}"));

    let modules = policy["spec"]["dynamicModule"].as_array().expect("dynamicModule");
    assert_eq!(modules.len(), 1);
    let module = &modules[0];
    let registered = proxy["spec"]["dynamicModules"].as_array().expect("dynamicModules");
    let entry = registered.iter().find(|m| m["name"] == module["name"]).expect("the policy's module is registered");
    assert!(is_module_name(entry["name"].as_str().unwrap()), "{}", entry["name"]);
    assert_eq!(entry["source"]["type"], "Local");
    assert_eq!(entry["source"]["local"]["path"], format!("{}/lib{MODULE_NAME}.so", module_image_dir()));
    assert_eq!(entry["doNotClose"], true, "the module's thread may outlive a configuration");
    let image =
        proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["image"].as_str().expect("image");
    assert!(
        !image.starts_with("envoyproxy/") && !image.starts_with("docker.io/envoyproxy/"),
        "{image}: lacks the module"
    );
    assert_eq!(proxy["spec"]["bootstrap"]["type"], "Merge");
    assert_eq!(bootstrap["stats_config"]["stats_tags"], Build::Module.stats_tags());
    let layers = bootstrap["layered_runtime"]["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["name"] != "global_config"), "Envoy Gateway's own layer name");
    assert!(layers.iter().any(|l| l["static_layer"][STRIP_PREFIX_FLAG] == true), "{layers:?}");

    let config =
        Config::parse(module["config"].to_string().as_bytes()).unwrap_or_else(|e| panic!("config refused: {e}"));
    let canonical = plugin_of("envoy/istio/wasmplugin.yaml")["spec"]["pluginConfig"].clone();
    let mut renamed = module["config"].clone();
    let pointers =
        ["/revocation/cluster", "/providers/idp/remote_jwks/cluster", "/providers/idp/remote_jwks/jwks_cluster"];
    let mut called: Vec<String> = config.revocation.iter().map(|r| r.cluster.clone()).collect();
    for provider in &config.providers {
        if let Some(jwks) = &provider.remote_jwks {
            called.extend([jwks.cluster.clone(), jwks.jwks_cluster.clone()]);
        }
    }
    called.sort();
    let mut named: Vec<String> =
        pointers.iter().map(|p| renamed.pointer(p).unwrap().as_str().unwrap().to_string()).collect();
    named.sort();
    assert_eq!(called, named, "the clusters the filter calls");
    for pointer in pointers {
        let istio = canonical.pointer(pointer).unwrap().as_str().unwrap().to_string();
        let (host, istio_port) = istio_cluster(&istio);
        let cluster = static_cluster_of(&bootstrap, renamed.pointer(pointer).unwrap().as_str().unwrap());
        let address =
            &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"];
        assert_eq!(address["address"], host.as_str(), "{pointer}");
        // The identity provider's hosts over TLS (Istio: port 80 originating TLS to 443), the
        // service in plain HTTP on its port.
        let tls = &cluster["transport_socket"]["typed_config"];
        if pointer.starts_with("/providers/") {
            assert_eq!(address["port_value"], 443, "{pointer}");
            assert_eq!(tls["sni"], host.as_str(), "{pointer}");
            let validation = &tls["common_tls_context"]["validation_context"];
            assert_eq!(validation["trusted_ca"]["filename"], IMAGE_CA, "{pointer}");
            assert_eq!(
                validation["match_typed_subject_alt_names"],
                json!([{"san_type": "DNS", "matcher": {"exact": host}}])
            );
        } else {
            assert_eq!(address["port_value"], istio_port, "{pointer}");
            assert!(tls.is_null(), "{pointer}");
        }
        *renamed.pointer_mut(pointer).unwrap() = json!(istio);
    }
    assert_eq!(renamed, canonical, "{EG_POLICY}: wasmplugin.yaml's pluginConfig but for the clusters");
}

/// A self-signed certificate, standing in for the image's CA bundle.
fn self_signed_certificate(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("ca.key"), dir.join("ca.pem"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=jwtguard test CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert));
    cert
}

/// Envoy 1.40 accepts the example's bootstrap addition (its clusters, TLS settings, stats_tags and
/// runtime layer) with the filter Envoy Gateway makes of the policy (internal/xds/translator/
/// dynamicmodule.go: the registered file, the policy's filterName, its config as a StringValue of
/// JSON), and the module accepts that configuration. The CA bundle's path is the image's; here a
/// certificate of our own stands in for it.
#[test]
fn envoy_accepts_the_envoy_gateway_bootstrap_and_the_policys_module_filter() {
    let (proxy, _, policy) = envoy_gateway_example();
    let dir = scratch_dir("envoy-gateway");
    let ca = self_signed_certificate(&dir);
    let text = proxy["spec"]["bootstrap"]["value"].as_str().unwrap().replace(IMAGE_CA, ca.to_str().unwrap());
    let mut config = yaml_value(&text);
    let module = &policy["spec"]["dynamicModule"][0];
    let entry = &proxy["spec"]["dynamicModules"][0];
    let filter = json!({
        "name": "envoy.filters.http.dynamic_modules",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"do_not_close": entry["doNotClose"], "module": {"local": {"filename": support::envoy::module_file()}}},
            "filter_name": module["filterName"],
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": module["config"].to_string()}
        }
    });
    let listener = Listener { name: "gateway".into(), filters: vec![filter], target: Target::DirectResponse };
    let harness = bootstrap(&[listener], &[]);
    config["admin"] = harness["admin"].clone();
    config["static_resources"]["listeners"] = harness["static_resources"]["listeners"].clone();
    let (ok, out) = validate_with_module(&dir, &config.to_string(), None);
    assert!(ok && out.contains("' OK") && out.contains(ABI_MATCHED), "envoy --mode validate:\n{out}");
    assert!(out.contains("jwtguard: providers idp"), "the module did not take the policy's configuration:\n{out}");
}
