//! `check-config` and the configuration's JSON Schema (docs/config.schema.json, generated from the
//! parser's types) against every filter configuration in the repository, found at test time (each
//! Envoy Wasm filter's `configuration`, each Istio WasmPlugin's `pluginConfig`), and against broken
//! ones: each refused by the schema (a real validator), by the checker, and by Envoy itself
//! loading the built filter, with the very line the checker printed.

mod common;

use common::bin;
use jsonschema::error::ValidationErrorKind;
use jsonwebtoken::Algorithm;
use jwtguard::config::Config;
use jwtguard_demo::envoy::{bootstrap, jwtguard_filter, Envoy, Listener, Target};
use jwtguard_demo::tokens::KeyPair;
use jwtguard_demo::{repo_root, scratch_dir};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const SCHEMA_FILE: &str = "docs/config.schema.json";

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_root().join(SCHEMA_FILE)).expect("read the schema");
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

/// What the schema finds wrong, each as `instance-pointer: message`, with the errors of every
/// branch of a failed `anyOf` or `oneOf` (an optional section, a requirement) after it.
fn schema_errors(validator: &jsonschema::Validator, config: &Value) -> Vec<String> {
    fn add(e: &jsonschema::ValidationError, out: &mut Vec<String>) {
        out.push(format!("{}: {e}", e.instance_path()));
        if let ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } = e.kind() {
            context.iter().flatten().for_each(|inner| add(inner, out));
        }
    }
    let mut out = Vec::new();
    validator.iter_errors(config).for_each(|e| add(&e, &mut out));
    out
}

struct Checked {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `check-config FILE` (or `-`, the configuration on stdin).
fn check_config(file: &str, stdin: &[u8]) -> Checked {
    let mut child = Command::new(bin())
        .args(["check-config", file])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run check-config");
    child.stdin.take().expect("stdin").write_all(stdin).expect("write stdin");
    let out = child.wait_with_output().expect("check-config output");
    Checked {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check_file(dir: &Path, name: &str, config: &str) -> Checked {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, config).expect("write config");
    check_config(file.to_str().expect("path"), b"")
}

// ---- the configurations in the repository ----

/// Files under `dir` whose name ends with `ext`, skipping build output and hidden directories.
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().expect("file type");
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if kind.is_dir() {
            files(&entry.path(), ext, out);
        } else if kind.is_file() && name.ends_with(ext) {
            out.push(entry.path());
        }
    }
}

/// Every YAML document of every file, through PyYAML from the project venv (as tests/packaging.rs).
fn yaml_documents(texts: &BTreeMap<String, String>) -> BTreeMap<String, Vec<Value>> {
    let script = "import json, sys, yaml\n\
                  texts = json.load(sys.stdin)\n\
                  print(json.dumps({p: list(yaml.safe_load_all(t)) for p, t in texts.items()}, default=str))";
    let mut child = Command::new(repo_root().join(".venv/bin/python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the venv's python (make deps)");
    child.stdin.take().expect("stdin").write_all(&serde_json::to_vec(texts).expect("JSON")).expect("write stdin");
    let out = child.wait_with_output().expect("python output");
    assert!(out.status.success(), "PyYAML: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

/// scripts/demo.sh fills envoy/envoy.yaml's placeholders before Envoy reads it; so does this, with
/// a real public key.
fn fill_placeholders(text: &str, jwks: &str) -> String {
    text.replace("@JWKS@", &serde_json::to_string(jwks).expect("JSON"))
        .replace("@STATUS_CREDENTIAL@", "0123456789abcdef0123456789abcdef")
        .replace("@WRITE_CREDENTIAL@", "fedcba9876543210fedcba9876543210")
}

/// An `@NAME@` placeholder this test does not fill.
fn has_placeholder(text: &str) -> bool {
    let parts: Vec<&str> = text.split('@').collect();
    let between = parts.get(1..parts.len().saturating_sub(1)).unwrap_or_default();
    between.iter().any(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'))
}

/// The filter configurations in a YAML document, as the filter receives them (JSON text).
fn collect(node: &Value, found: &mut Vec<String>) {
    match node {
        Value::Array(items) => items.iter().for_each(|i| collect(i, found)),
        Value::Object(o) => {
            // Istio hands pluginConfig to the plugin as JSON.
            if o.get("kind").and_then(Value::as_str) == Some("WasmPlugin") {
                let config = o.get("spec").and_then(|s| s.get("pluginConfig"));
                let config =
                    config.unwrap_or_else(|| panic!("WasmPlugin {} has no pluginConfig", o["metadata"]["name"]));
                found.push(config.to_string());
            }
            // An Envoy Wasm plugin (every one in this repository is jwtguard): the filter's JSON
            // is the string in `configuration`.
            if let (Some(_), Some(c)) = (o.get("vm_config"), o.get("configuration")) {
                assert_eq!(c["@type"], "type.googleapis.com/google.protobuf.StringValue", "{c}");
                found.push(c["value"].as_str().expect("configuration.value is a string").to_string());
            }
            o.values().for_each(|v| collect(v, found));
        }
        _ => {}
    }
}

/// Every filter configuration in the repository's YAML, labelled with its file and document.
fn repository_configs(dir: &Path) -> Vec<(String, String)> {
    let root = repo_root();
    let jwks = json!({"keys": [KeyPair::generate(dir, Algorithm::RS256, "demo").jwk()]}).to_string();
    let mut paths = Vec::new();
    files(&root, ".yaml", &mut paths);
    files(&root, ".yml", &mut paths);
    let texts: BTreeMap<String, String> = paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).expect("read YAML");
            (p.strip_prefix(&root).expect("in the repo").display().to_string(), fill_placeholders(&text, &jwks))
        })
        .collect();
    let mut configs = Vec::new();
    for (path, docs) in yaml_documents(&texts) {
        for (i, doc) in docs.iter().enumerate() {
            let mut found = Vec::new();
            collect(doc, &mut found);
            for (j, config) in found.into_iter().enumerate() {
                let label = format!("{path} (document {}, configuration {})", i + 1, j + 1);
                assert!(!has_placeholder(&config), "{label}: a placeholder this test does not fill:\n{config}");
                configs.push((label, config));
            }
        }
    }
    configs
}

/// The ```json blocks of the Markdown files that are whole configurations (a top-level
/// `providers`).
fn documented_configs() -> Vec<(String, Value)> {
    let root = repo_root();
    let mut paths = Vec::new();
    files(&root, ".md", &mut paths);
    let mut configs = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read Markdown");
        for (i, block) in text.split("```json\n").skip(1).enumerate() {
            let json = block.split("\n```").next().unwrap_or_default();
            if let Ok(config @ Value::Object(_)) = serde_json::from_str::<Value>(json) {
                if config.get("providers").is_some() {
                    let label =
                        format!("{} (JSON block {})", path.strip_prefix(&root).expect("in the repo").display(), i + 1);
                    configs.push((label, config));
                }
            }
        }
    }
    configs
}

#[test]
fn every_configuration_in_the_repository_passes_the_schema_and_the_checker() {
    let dir = scratch_dir("check-config", "repository");
    let validator = validator();
    let configs = repository_configs(&dir);
    for (label, text) in &configs {
        let checked = check_file(&dir, "config", text);
        assert!(checked.ok, "{label}: check-config refused it:\n{}{}", checked.stderr, checked.stdout);
        assert!(checked.stdout.starts_with("OK: providers "), "{label}: {}", checked.stdout);
        let config: Value = serde_json::from_str(text).expect("JSON the checker accepted");
        let errors = schema_errors(&validator, &config);
        assert!(errors.is_empty(), "{label}: the schema refused it:\n{}", errors.join("\n"));
    }
    let labels: Vec<&str> = configs.iter().map(|(l, _)| l.as_str()).collect();
    for place in ["envoy/envoy.yaml", "envoy/compose/envoy.yaml", "envoy/istio/"] {
        assert!(labels.iter().any(|l| l.starts_with(place)), "no filter configuration found in {place}: {labels:#?}");
    }
    // The documentation's examples elide key material ("n": "…"): their shape is checked.
    let documented = documented_configs();
    assert!(documented.iter().any(|(l, _)| l.starts_with("docs/configuration.md")), "{documented:?}");
    for (label, config) in &documented {
        let errors = schema_errors(&validator, config);
        assert!(errors.is_empty(), "{label}: the schema refused it:\n{}", errors.join("\n"));
    }
}

// ---- broken configurations ----

/// A configuration both accept, each broken case one edit away from it.
fn base() -> Value {
    json!({
        "providers": {"main": {
            "issuer": "https://idp.example",
            "algorithms": ["HS256"],
            "hmac_secrets": [{"secret": "0123456789abcdef0123456789abcdef"}]
        }},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "main"}}],
        "revocation": {"cluster": "revocation", "authority": "revocation", "failure_mode": "closed"}
    })
}

/// Sets (or with `None` removes) the member at a JSON pointer.
fn edit(mut config: Value, pointer: &str, value: Option<Value>) -> Value {
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    let target = config.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}"));
    match (target, value) {
        (Value::Object(o), Some(v)) => {
            o.insert(key.to_string(), v);
        }
        (Value::Object(o), None) => {
            o.remove(key).unwrap_or_else(|| panic!("no {pointer}"));
        }
        (Value::Array(a), Some(v)) => a[key.parse::<usize>().expect("an index")] = v,
        (other, _) => panic!("cannot edit {pointer} in {other}"),
    }
    config
}

struct Broken {
    /// The edit to the base: a JSON pointer and the new value (`None`: removed).
    at: &'static str,
    value: Option<Value>,
    /// The field the checker (and Envoy) name.
    field: &'static str,
    /// The schema's error, as `instance-pointer: message` contains it; `None` where only the
    /// parser can tell (values, keys, references between fields).
    schema: Option<&'static str>,
}

fn broken_cases() -> Vec<Broken> {
    let case = |at, value: Option<Value>, field, schema| Broken { at, value, field, schema };
    vec![
        case(
            "/providers/main/isuer",
            Some(json!("x")),
            "providers.main.isuer",
            Some("/providers/main: Additional properties are not allowed ('isuer'"),
        ),
        case("/providers/main/issuer", Some(json!(5)), "providers.main.issuer", Some("/providers/main/issuer: 5 ")),
        case(
            "/providers/main/algorithms",
            Some(json!(["HS257"])),
            "providers.main.algorithms",
            Some("/providers/main/algorithms/0: \"HS257\""),
        ),
        case(
            "/providers/main/hmac_secrets/0/alg",
            Some(json!("none")),
            "providers.main.hmac_secrets[0]",
            Some("/providers/main/hmac_secrets/0/alg: \"none\" is not one of"),
        ),
        case("/providers", None, "providers", Some(": \"providers\" is a required property")),
        case(
            "/revocation/cluster",
            None,
            "revocation.cluster",
            Some("/revocation: \"cluster\" is a required property"),
        ),
        case(
            "/revocation/failure_mode",
            Some(json!("maybe")),
            "revocation.failure_mode",
            Some("/revocation/failure_mode: \"maybe\""),
        ),
        case(
            "/revocation/cache_max_entries",
            Some(json!(5_000_000_000u64)),
            "revocation.cache_max_entries",
            Some("/revocation/cache_max_entries: 5000000000"),
        ),
        case(
            "/rules/0/requires",
            Some(json!({"provider": "main"})),
            "rules[0].requires.provider",
            Some("/rules/0/requires: Additional properties are not allowed ('provider'"),
        ),
        case("/rules/0/match", Some(json!("/")), "rules[0].match", Some("/rules/0/match: \"/\"")),
        // Beyond the shape: the schema accepts these, the parser does not.
        case("/revocation/cluster", Some(json!("")), "revocation.cluster", None),
        case("/revocation/timeout_ms", Some(json!(0)), "revocation.timeout_ms", None),
        case("/rules/0/requires/provider_name", Some(json!("nope")), "rules[0].requires.provider_name", None),
        case("/providers/main/hmac_secrets/0/secret", Some(json!("short")), "providers.main.hmac_secrets[0]", None),
    ]
}

/// Envoy's log after it refused to start with the built filter configured with `config`.
fn envoy_refusal(dir: &Path, config: &Value) -> String {
    std::fs::create_dir_all(dir).expect("scratch dir");
    let filters = vec![jwtguard_filter("check", config)];
    let listener = Listener { name: "main".into(), filters, target: Target::DirectResponse };
    match Envoy::try_start(dir, &bootstrap(&[listener], &[])) {
        Err(log) => log,
        Ok(envoy) => panic!("Envoy accepted {config}:\n{}", envoy.log_text()),
    }
}

#[test]
fn broken_configurations_are_refused_naming_the_field_as_envoy_does() {
    let dir = scratch_dir("check-config", "broken");
    let validator = validator();
    let base = base();
    assert!(check_file(&dir, "base", &base.to_string()).ok, "the base is accepted");
    assert_eq!(schema_errors(&validator, &base), Vec::<String>::new());
    let mut refusals = Vec::new();
    for (i, b) in broken_cases().into_iter().enumerate() {
        let config = edit(base.clone(), b.at, b.value);
        // The exact text the filter gets, so the error's line and column are the same.
        let text = config.to_string();
        let checked = check_file(&dir, &format!("broken-{i}"), &text);
        let expected = Config::parse(text.as_bytes()).expect_err("the parser refuses it");
        assert_eq!(expected.field, b.field, "{text}");
        assert!(!checked.ok, "check-config accepted {text}");
        assert_eq!(checked.stderr, format!("jwtguard: {expected}\n"), "the filter's line, exactly");
        assert_eq!(checked.stdout, "");
        let errors = schema_errors(&validator, &config);
        match b.schema {
            Some(wanted) => assert!(
                errors.iter().any(|e| e.starts_with(wanted)),
                "{text}\nwanted a schema error starting {wanted:?}, got {errors:#?}"
            ),
            None => assert!(errors.is_empty(), "{text}: the schema refused it: {errors:#?}"),
        }
        refusals.push((config, checked.stderr.trim_end().to_string()));
    }
    // Stdin reads the same.
    let (config, line) = &refusals[0];
    let from_stdin = check_config("-", config.to_string().as_bytes());
    assert_eq!((from_stdin.ok, from_stdin.stderr.trim_end()), (false, line.as_str()));

    // Envoy, loading the built filter with each, logs the line the checker printed.
    std::thread::scope(|s| {
        for (i, (config, line)) in refusals.iter().enumerate() {
            let dir = &dir;
            s.spawn(move || {
                let log = envoy_refusal(&dir.join(format!("envoy-{i}")), config);
                assert!(log.contains(line.as_str()), "Envoy did not log {line:?}:\n{log}");
            });
        }
    });
}

/// `usize` fields are 32 bits in the filter (wasm32): Envoy refuses 2^32 and so does the schema.
/// The checker runs natively, where `usize` is 64 bits, and accepts it (docs/configuration.md).
#[test]
fn the_schema_bounds_integers_as_the_wasm_filter_does() {
    let dir = scratch_dir("check-config", "wasm32");
    let config = edit(base(), "/max_token_bytes", Some(json!(1u64 << 32)));
    let errors = schema_errors(&validator(), &config);
    assert!(errors.iter().any(|e| e.starts_with("/max_token_bytes: 4294967296 is greater than")), "{errors:#?}");
    let log = envoy_refusal(&dir, &config);
    assert!(
        log.contains("jwtguard: invalid configuration at max_token_bytes: invalid value: integer `4294967296`"),
        "{log}"
    );
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let out = Command::new(bin()).args(["check-config", "--schema"]).output().expect("run check-config --schema");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    let committed = std::fs::read_to_string(repo_root().join(SCHEMA_FILE)).expect("read the schema");
    assert!(
        committed == generated,
        "{SCHEMA_FILE} is stale: regenerate it with\n  cargo run -p jwtguard-revocation -- check-config --schema > {SCHEMA_FILE}"
    );
    // Unknown fields are refused everywhere, as the parser refuses them.
    fn strict(node: &Value, at: &str) {
        match node {
            Value::Object(o) => {
                if o.contains_key("properties") {
                    assert_eq!(o.get("additionalProperties"), Some(&Value::Bool(false)), "{at}");
                }
                o.iter().for_each(|(k, v)| strict(v, &format!("{at}/{k}")));
            }
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| strict(v, &format!("{at}/{i}"))),
            _ => {}
        }
    }
    strict(&serde_json::from_str(&generated).expect("JSON"), "");
}
