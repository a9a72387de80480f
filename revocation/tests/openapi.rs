//! The OpenAPI document is valid and the running service honours it: schemathesis (from the
//! project venv) generates requests for every operation, with every check it has, and fails on
//! any server error or any answer the document does not describe.

use jwtguard_demo::redis::RedisServer;
use jwtguard_demo::service::Service;
use jwtguard_demo::{repo_root, scratch_dir};
use std::path::PathBuf;
use std::process::Command;

#[test]
fn schemathesis_finds_no_server_errors_and_no_undocumented_answers() {
    let dir = scratch_dir("revocation", "openapi");
    let redis = RedisServer::start(&dir, &[]);
    let args: Vec<String> = ["--redis-url", &redis.url(), "--credentials", "cred", "--status-credentials", "cred"]
        .map(String::from)
        .to_vec();
    let svc = Service::start(&PathBuf::from(env!("CARGO_BIN_EXE_jwtguard-revocation")), &dir, &args).expect("service");
    let schemathesis = repo_root().join(".venv/bin/schemathesis");
    assert!(schemathesis.exists(), "run `make deps` to install schemathesis into .venv");
    let out = Command::new(schemathesis)
        .args(["run", &format!("{}/openapi.json", svc.url()), "-H", "Authorization: Bearer cred"])
        .args(["--checks", "all", "--max-examples", "100", "--seed", "1", "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(&dir)
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis failed:\n{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("passed"), "{report}");
}
