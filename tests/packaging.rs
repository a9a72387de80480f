//! Where users run it: the OCI image of the filter (checked with skopeo), the docker-compose
//! file (checked with docker-compose; no Docker engine here to run it), its Envoy config (checked
//! by Envoy itself), and the Istio manifests (checked against the WasmPlugin CRD's fields and the
//! filter's own configuration parser).

mod support;

use jwtguard::config::Config;
use jwtguard_demo::repo_root;
use serde_json::Value;
use std::process::Command;
use support::envoy::{envoy_binary, wasm_file};
use support::scratch_dir;

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

#[test]
fn the_oci_image_holds_the_filter_and_is_reproducible() {
    let dir = scratch_dir("oci");
    let (a, b) = (dir.join("a"), dir.join("b"));
    let first = run(Command::new(repo_root().join("scripts/oci.sh")).arg(&a));
    let second = run(Command::new(repo_root().join("scripts/oci.sh")).arg(&b));
    assert_eq!(first.split_whitespace().nth(1), second.split_whitespace().nth(1), "same .wasm, same digest");

    let reference = format!("oci:{}:jwtguard", a.display());
    let manifest: Value =
        serde_json::from_str(&run(Command::new("skopeo").args(["inspect", "--raw", &reference]))).unwrap();
    assert_eq!(manifest["annotations"]["module.wasm.image/variant"], "compat");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let inspected: Value = serde_json::from_str(&run(Command::new("skopeo").args(["inspect", &reference]))).unwrap();
    assert_eq!(inspected["Os"], "wasip1");

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

#[test]
fn the_compose_file_is_valid() {
    let compose = repo_root().join("envoy/docker-compose.yaml");
    let config = run(Command::new("docker-compose").arg("-f").arg(&compose).arg("config"));
    for service in ["redis:", "revocation:", "jwks:", "upstream:", "envoy:"] {
        assert!(config.contains(service), "{service} missing:\n{config}");
    }
    assert!(config.contains("--appendonly"), "Redis runs with AOF");
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

/// Every YAML document of a manifest file, as JSON (parsed by PyYAML from the project venv).
fn yaml_documents(path: &str) -> Vec<Value> {
    let script = "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))";
    let out = run(Command::new(repo_root().join(".venv/bin/python")).args(["-c", script]).arg(repo_root().join(path)));
    serde_json::from_str(&out).expect("JSON from PyYAML")
}

/// The spec fields of WasmPlugin in extensions.istio.io/v1alpha1 (Istio 1.27's CRD).
const WASMPLUGIN_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "pluginConfig",
    "pluginName",
    "phase",
    "priority",
    "failStrategy",
    "vmConfig",
    "match",
    "type",
];

#[test]
fn the_istio_manifests_use_crd_fields_and_a_config_the_filter_accepts() {
    let docs = yaml_documents("envoy/istio/wasmplugin.yaml");
    let plugin = docs.iter().find(|d| d["kind"] == "WasmPlugin").expect("a WasmPlugin");
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    let spec = plugin["spec"].as_object().unwrap();
    for field in spec.keys() {
        assert!(WASMPLUGIN_FIELDS.contains(&field.as_str()), "spec.{field} is not a WasmPlugin field");
    }
    assert_eq!(spec["phase"], "AUTHN");
    assert_eq!(spec["failStrategy"], "FAIL_CLOSE");
    assert!(spec["url"].as_str().unwrap().starts_with("oci://"));
    let config = serde_json::to_string(&spec["pluginConfig"]).unwrap();
    let parsed = Config::parse(config.as_bytes()).unwrap_or_else(|e| panic!("pluginConfig refused: {e}"));
    let revocation = parsed.revocation.expect("revocation configured");
    assert!(revocation.cluster.starts_with("outbound|8080||"), "Istio cluster naming");
    assert!(parsed.providers[0].remote_jwks.as_ref().unwrap().cluster.starts_with("outbound|"));

    let service = yaml_documents("envoy/istio/revocation.yaml");
    let kinds: Vec<&str> = service.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "Secret", "Deployment", "Service"]);
    let deployment = &service[2];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let svc_port = service[3]["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(revocation.cluster, format!("outbound|{svc_port}||jwtguard-revocation.jwtguard.svc.cluster.local"));
}

/// The shipped Envoy configurations carry exactly the `stats_tags` the tests run with, so the
/// labelled series the documented alerts use (checked in jwks_e2e) are the ones users get.
#[test]
fn shipped_envoy_configs_carry_the_tested_stats_tags() {
    for path in ["envoy/envoy.yaml", "envoy/compose/envoy.yaml"] {
        let docs = yaml_documents(path);
        assert_eq!(docs[0]["stats_config"]["stats_tags"], support::envoy::stats_tags(), "{path}");
    }
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
