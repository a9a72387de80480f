//! Redis servers for tests and the demo: standalone or a 6-node cluster (3 primaries, 3
//! replicas), each on its own free 127.0.0.1 port, stopped by PID when dropped.

use crate::wait_for;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli (make deps)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    pub dir: PathBuf,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts `redis-server` with AOF on and `extra` arguments; waits until it answers PING.
    pub fn start(dir: &Path, extra: &[&str]) -> RedisServer {
        let port = free_port();
        let dir = dir.join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut server = RedisServer { port, child: None, dir, extra: extra.iter().map(|s| s.to_string()).collect() };
        server.restart();
        server
    }

    /// Starts the server again on the same port and directory (as a restarted pod would).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--appendonly", "yes", "--save", ""])
            .args([
                "--dir",
                self.dir.to_str().expect("path"),
                "--logfile",
                "redis.log",
                "--enable-debug-command",
                "local",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (make deps)");
        self.child = Some(child);
        let port = self.port;
        // With ACLs the default user may be off: NOAUTH means it is up all the same.
        wait_for("redis PING", Duration::from_secs(20), || {
            let reply = cli(port, &["PING"]);
            (reply == "PONG" || reply.contains("NOAUTH")).then_some(())
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// A replica of `primary` (`--replicaof`); waits until its link to the primary is up.
    pub fn start_replica(dir: &Path, primary: &RedisServer) -> RedisServer {
        let port = primary.port.to_string();
        let replica = RedisServer::start(dir, &["--replicaof", "127.0.0.1", &port]);
        wait_for("the replica's link to its primary", Duration::from_secs(20), || {
            replica.cli(&["INFO", "replication"]).contains("master_link_status:up").then_some(())
        });
        replica
    }

    /// Freezes the process (SIGSTOP): it holds its connections but answers nothing, as a hung
    /// node would. `resume` (SIGCONT) lets it go on.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running server");
        let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("run kill");
        assert!(status.success(), "kill {signal} {}", child.id());
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    /// The slot ranges each node owned as primary when the cluster was created.
    pub original_slots: Vec<Vec<(u16, u16)>>,
}

impl RedisCluster {
    /// Six nodes with `cluster-node-timeout 1000`, created with `redis-cli --cluster create`; waits
    /// until the cluster is ok and every replica's link to its primary is up.
    pub fn start(dir: &Path) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let conf = format!("nodes-{}.conf", free_port());
                RedisServer::start(
                    dir,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf, "--cluster-node-timeout", "1000"],
                )
            })
            .collect();
        let addresses: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let mut cluster = RedisCluster { nodes, original_slots: Vec::new() };
        cluster.wait_healthy(Duration::from_secs(30));
        let owners = cluster.primaries();
        cluster.original_slots = cluster
            .nodes
            .iter()
            .map(|n| owners.iter().find(|(p, _)| *p == n.port).map(|(_, r)| r.clone()).unwrap_or_default())
            .collect();
        cluster
    }

    /// Live primaries as (port, slot ranges), from `CLUSTER NODES`.
    fn primaries(&self) -> Vec<(u16, Vec<(u16, u16)>)> {
        let live = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        live.cli(&["CLUSTER", "NODES"])
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                    return None;
                }
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                let ranges = f[8..]
                    .iter()
                    .filter_map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect();
                Some((port, ranges))
            })
            .collect()
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Waits until every live node reports `cluster_state:ok` and every replica is linked.
    pub fn wait_healthy(&self, timeout: Duration) {
        wait_for("a healthy cluster", timeout, || {
            let live: Vec<&RedisServer> = self.nodes.iter().filter(|n| n.child.is_some()).collect();
            let ok = live.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"));
            let linked = live.iter().all(|n| {
                let info = n.cli(&["INFO", "replication"]);
                !info.contains("role:slave") || info.contains("master_link_status:up")
            });
            (ok && linked).then_some(())
        });
    }

    /// The index of a replica of the node at `primary` (from `CLUSTER NODES`).
    pub fn replica_of(&self, primary: usize) -> usize {
        let live = self.nodes.iter().find(|n| n.child.is_some()).expect("a live node");
        let nodes = live.cli(&["CLUSTER", "NODES"]);
        let port_of =
            |f: &[&str]| f.get(1).and_then(|a| a.split(['@', ':']).nth(1)).and_then(|p| p.parse::<u16>().ok());
        let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split_whitespace().collect()).collect();
        let primary_id = lines
            .iter()
            .find(|f| port_of(f) == Some(self.nodes[primary].port))
            .map(|f| f[0])
            .expect("the primary in CLUSTER NODES");
        let port = lines
            .iter()
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == primary_id)
            .and_then(|f| port_of(f))
            .expect("a replica of the primary");
        self.nodes.iter().position(|n| n.port == port).expect("a node of ours")
    }

    /// The index of the node that is primary for `key` now.
    pub fn primary_for(&self, key: &str) -> usize {
        self.try_primary_for(key).unwrap_or_else(|| panic!("no primary for slot {}", key_slot(key)))
    }

    /// The index of the node that is primary for `key` now; `None` while none is (between a
    /// primary's failure and its replica's promotion).
    pub fn try_primary_for(&self, key: &str) -> Option<usize> {
        let slot = key_slot(key);
        let owner =
            self.primaries().into_iter().find(|(_, ranges)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)));
        owner.and_then(|(port, _)| self.nodes.iter().position(|n| n.port == port))
    }
}

/// The cluster slot of `key`: CRC16 (XMODEM) of its hash tag, or of the whole key, mod 16384.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        bytes[open + 1..]
            .iter()
            .position(|b| *b == b'}')
            .filter(|len| *len > 0)
            .map(|len| &bytes[open + 1..open + 1 + len])
    });
    let crc = tagged.unwrap_or(bytes).iter().fold(0u16, |mut crc, byte| {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
        crc
    });
    crc % 16384
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_slots_match_redis() {
        // Values from `redis-cli CLUSTER KEYSLOT`.
        assert_eq!(super::key_slot("foo"), 12182);
        assert_eq!(super::key_slot("{user1000}.following"), super::key_slot("user1000"));
        assert_eq!(super::key_slot("foo{}{bar}"), super::key_slot("foo{}{bar}"));
        assert_eq!(super::key_slot("123456789"), 12739);
    }
}
