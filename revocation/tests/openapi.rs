//! The OpenAPI document is valid and the running service honours it both ways: schemathesis
//! (from the project venv) generates requests for every operation that follow the document and
//! requests that violate it (`--mode all`), with every check it has. It fails on any server
//! error, any answer the document does not describe, any valid request refused and any invalid
//! request accepted; the report is then read again here, so a refused-input regression cannot
//! hide behind a check that did not run.

use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::service::Service;
use jwtguard_demo::{repo_root, scratch_dir, wait_for};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Operations that take input, and so must be fed (and refuse) inputs the document forbids.
const WITH_INPUT: [&str; 6] = [
    "POST /v1/revoke",
    "POST /v1/revoke-subject",
    "POST /v1/sessions",
    "DELETE /v1/sessions/{jti}",
    "GET /v1/status",
    "GET /v1/feed",
];

#[test]
fn schemathesis_finds_the_service_and_its_document_in_agreement() {
    let dir = scratch_dir("revocation", "openapi");
    let redis = RedisServer::start(&dir, &[]);
    // Feed polls that ask to wait are held 50 ms at most, so hundreds of them keep the run short.
    let args: Vec<String> = [
        "--redis-url",
        &redis.url(),
        "--credentials",
        "cred",
        "--status-credentials",
        "cred",
        "--feed-max-wait-ms",
        "50",
    ]
    .map(String::from)
    .to_vec();
    let svc = Service::start(&PathBuf::from(env!("CARGO_BIN_EXE_jwtguard-revocation")), &dir, &args).expect("service");
    let schemathesis = repo_root().join(".venv/bin/schemathesis");
    assert!(schemathesis.exists(), "run `make deps` to install schemathesis into .venv");
    let reports = dir.join("schemathesis");
    let stdout = std::fs::File::create(dir.join("schemathesis.log")).unwrap();
    let mut child = Command::new(schemathesis)
        .args(["run", &format!("{}/openapi.json", svc.url()), "-H", "Authorization: Bearer cred"])
        .args(["--mode", "all", "--phases", "examples,coverage,fuzzing", "--checks", "all"])
        .args(["--max-examples", "100", "--seed", "1", "--request-timeout", "5", "--no-color"])
        // The signal receivers accept only tokens signed by a trusted identity provider, which
        // no generated request is: tests/signals.rs covers them (each rule, and what they write).
        .args(["--exclude-path-regex", "^/v1/(backchannel-logout|ssf/push)$"])
        .args(["--report", "ndjson", "--report-dir", reports.to_str().unwrap()])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&dir)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .expect("run schemathesis");
    // About 10 s here; the bound keeps a stuck run from holding the suite.
    let status = wait_for("schemathesis to finish", Duration::from_secs(60), || child.try_wait().ok().flatten());
    let log = std::fs::read_to_string(dir.join("schemathesis.log")).unwrap_or_default();
    assert!(status.success(), "schemathesis failed:\n{log}");
    assert!(log.contains("No issues found"), "{log}");

    // Every case with forbidden input, by operation: refused with a 4xx, never stored (2xx),
    // never a 5xx.
    let ndjson = std::fs::read_dir(&reports)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().extension().is_some_and(|x| x == "ndjson"));
    let ndjson = std::fs::read_to_string(ndjson.expect("an ndjson report").path()).unwrap();
    let mut negative: BTreeMap<String, usize> = BTreeMap::new();
    for line in ndjson.lines() {
        let event: Value = serde_json::from_str(line).expect("ndjson");
        let recorder = &event["ScenarioFinished"]["recorder"];
        let Some(cases) = recorder["cases"].as_object() else { continue };
        let label = recorder["label"].as_str().unwrap_or("").to_string();
        for (id, case) in cases {
            // Forbidden input: a body, query or path that violates the document. (A negative
            // header alone, e.g. a Content-Type on a GET, is not something the document forbids.)
            let components = &case["value"]["meta"]["components"];
            if !["body", "query", "path"].iter().any(|c| components[c]["mode"] == "negative") {
                continue;
            }
            if sends_nothing_forbidden(&case["value"], &label) {
                continue;
            }
            let Some(status) = recorder["interactions"][id]["response"]["status_code"].as_u64() else { continue };
            let request = &recorder["interactions"][id]["request"];
            assert!((400..500).contains(&status), "{label}: a request the document forbids got {status}: {request}");
            *negative.entry(label.clone()).or_default() += 1;
        }
    }
    for operation in WITH_INPUT {
        let n = negative.get(operation).copied().unwrap_or(0);
        assert!(n >= 20, "only {n} negative cases for {operation}: {negative:?}");
    }
}

/// A case whose only violation is an undocumented query member holding an empty array: such a
/// member is sent as nothing, so the request that went out is one the document allows.
fn sends_nothing_forbidden(case: &Value, label: &str) -> bool {
    let components = &case["meta"]["components"];
    if ["body", "path"].iter().any(|c| components[c]["mode"] == "negative") {
        return false;
    }
    let mutations = case["meta"]["phase"]["data"]["mutations"].as_array().cloned().unwrap_or_default();
    let only_extra_members =
        !mutations.is_empty() && mutations.iter().all(|m| m["keywords"] == serde_json::json!(["additionalProperties"]));
    let Some((method, path)) = label.split_once(' ') else { return false };
    let document: Value = serde_json::from_str(include_str!("../openapi.json")).expect("the document");
    let parameters = document["paths"][path][method.to_ascii_lowercase()]["parameters"].as_array().cloned();
    let documented: Vec<String> =
        parameters.unwrap_or_default().iter().filter_map(|p| p["name"].as_str().map(String::from)).collect();
    let Some(query) = case["query"].as_object() else { return false };
    only_extra_members
        && query
            .iter()
            .filter(|(name, _)| !documented.contains(name))
            .all(|(_, value)| value.as_array().is_some_and(|a| a.is_empty()))
}
