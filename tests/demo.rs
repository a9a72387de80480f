//! The README's demo command runs the whole story on this machine: it starts Redis, the
//! revocation service, Envoy with the filter and the upstream, walks through accept → logout →
//! refuse → log out everywhere → new login, and stops everything it started.

use jwtguard_demo::repo_root;
use std::process::Command;

#[test]
fn the_demo_tells_the_whole_story_and_cleans_up() {
    for bin in ["target/release/jwtguard-demo", "target/release/jwtguard-revocation", "target/jwtguard.wasm"] {
        assert!(repo_root().join(bin).exists(), "{bin} missing: `make test` builds it (make build)");
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/demo.sh"))
        .env("JWTGUARD_DEMO_NO_WAIT", "1")
        .output()
        .expect("run the demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    // The story, in order.
    let expected = [
        "a valid token: 200",
        "HTTP/1.1 200 OK",
        "\"x-jwt-sub\":\"alice\"",
        "no token: 401",
        "HTTP/1.1 401 Unauthorized",
        "log out at the proxy",
        "HTTP/1.1 204 No Content",
        "the same token now",
        "error_description=\"token revoked\"",
        "bob logs out everywhere",
        "HTTP/1.1 204 No Content",
        "his phone's token",
        "error_description=\"token revoked\"",
        "a new login afterwards: 200",
        "HTTP/1.1 200 OK",
    ];
    let mut rest = text.as_ref();
    for line in expected {
        let at = rest.find(line).unwrap_or_else(|| panic!("{line:?} missing (in order) from:\n{text}"));
        rest = &rest[at + line.len()..];
    }
    // Everything it started is gone: the ports are free again.
    for port in [6390, 8080, 8081, 10000] {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still in use");
    }
}
