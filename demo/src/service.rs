//! The revocation service as a child process on an ephemeral port, stopped when dropped.

use crate::wait_for;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The service the end-to-end suites run: `JWTGUARD_REVOCATION_BIN`, else the release build.
/// `make test` builds it first; a plain `cargo test` runs whatever build is there.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("JWTGUARD_REVOCATION_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target/release/jwtguard-revocation"));
    assert!(path.exists(), "{} is missing: build it with `make build` (`make test` does)", path.display());
    path
}

pub struct Service {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Service {
    /// Starts `jwtguard-revocation serve --listen 127.0.0.1:0 ARGS…` and waits for its address
    /// (read from its first log lines) and for `/healthz`.
    pub fn start(bin: &Path, dir: &Path, args: &[String]) -> Result<Service, String> {
        let log = dir.join(format!("revocation-{}.log", crate::redis::free_port()));
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let (tx, rx) = mpsc::channel();
        let mut file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(Err(line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(port) = listening_port(&line) {
                    let _ = tx.send(Ok(port));
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(port)) => port,
            Ok(Err(message)) => {
                let _ = child.kill();
                return Err(message);
            }
            Err(_) => {
                let _ = child.kill();
                return Err("the service printed no address".into());
            }
        };
        let service = Service { child, port, log };
        wait_for("revocation /healthz", Duration::from_secs(10), || {
            ureq::get(&format!("{}/healthz", service.url())).call().ok().map(|_| ())
        });
        Ok(service)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process id, to read its CPU time and memory from /proc.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

fn listening_port(line: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v["fields"]["message"] != "jwtguard-revocation listening" {
        return None;
    }
    v["fields"]["address"].as_str()?.rsplit(':').next()?.parse().ok()
}
