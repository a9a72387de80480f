//! The README's demo command runs the whole story on this machine: it starts Redis, the
//! revocation service, Envoy with the filter and the upstream, walks through accept → logout →
//! refuse → log out everywhere → new login → log out at the identity provider (back-channel
//! logout) → that session refused, the other accepted, and stops everything it started.

use jwtguard_demo::repo_root;
use std::process::Command;

#[test]
fn the_demo_tells_the_whole_story_and_cleans_up() {
    // The harness's build: JWTGUARD_BUILD reaches the script as it is.
    let filter = match jwtguard_demo::envoy::Build::current() {
        jwtguard_demo::envoy::Build::Wasm => "target/jwtguard.wasm",
        jwtguard_demo::envoy::Build::Module => "target/module/libjwtguard_module.so",
    };
    for bin in ["target/release/jwtguard-demo", "target/release/jwtguard-revocation", filter] {
        assert!(repo_root().join(bin).exists(), "{bin} missing: `make test` builds it (make build)");
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/demo.sh"))
        .env("JWTGUARD_DEMO_NO_WAIT", "1")
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The story, in order: each step's title and what its answer must hold (in that step alone,
    // so a later step's answer cannot stand in for an earlier one's).
    let expected: &[(&str, &[&str])] = &[
        ("a valid token: 200", &["HTTP/1.1 200 OK", "\"x-jwt-sub\":\"alice\""]),
        ("no token: 401", &["HTTP/1.1 401 Unauthorized"]),
        ("log out at the proxy", &["HTTP/1.1 204 No Content"]),
        ("the same token now", &["error_description=\"token revoked\""]),
        ("bob is logged in on his phone", &["HTTP/1.1 200 OK"]),
        ("bob logs out everywhere", &["HTTP/1.1 204 No Content"]),
        ("his phone's token", &["error_description=\"token revoked\""]),
        ("a new login afterwards: 200", &["HTTP/1.1 200 OK"]),
        ("carol, logged in at the identity provider", &["HTTP/1.1 200 OK", "\"x-jwt-sub\":\"carol\""]),
        ("back-channel logout to the service: 200", &["HTTP/1.1 200 OK", "cache-control: no-store"]),
        ("that session's token, at the proxy", &["error_description=\"token revoked\""]),
        ("her other session: 200", &["HTTP/1.1 200 OK"]),
    ];
    let steps: Vec<&str> = text.split("\n== ").skip(1).collect();
    let mut at = 0;
    for (title, answer) in expected {
        let i = (at..steps.len())
            .find(|&i| steps[i].starts_with(title) || steps[i].lines().next().is_some_and(|l| l.contains(title)))
            .unwrap_or_else(|| panic!("the step {title:?} is missing (in order) from:\n{text}"));
        for part in *answer {
            assert!(steps[i].contains(part), "the step {title:?} does not show {part:?}:\n{}", steps[i]);
        }
        at = i + 1;
    }
    // Everything it started is gone: the ports are free again.
    for port in [6390, 8080, 8081, 10000] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still in use");
    }
}
