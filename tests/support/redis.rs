//! Real Redis for the cluster tests: a `redis-server`, or a Redis Cluster of
//! three masters, of the test's own on loopback ports, killed on drop. A
//! test may kill one and start it again, empty, on the same port.
//!
//! A server is ready when it answers on its port *and* is the process this
//! test started (`INFO server`'s `process_id`): another test's Redis that
//! won the race for the port must not pass for ours.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::files::TempDir;
use super::process::{Process, on_free_ports};
use super::wait::POLL;

/// What to say when `redis-server` is missing.
const REDIS_SERVER: &str = "redis-server (the cluster tests need a real Redis, 7.0 or newer for \
                            a Redis Cluster: `apt-get install redis-server`, as .ci/run does)";

/// A `redis-server` of this test's own, without persistence.
pub struct Redis {
    pub port: u16,
    process: Option<Process>,
}

impl Redis {
    pub async fn start() -> Redis {
        on_free_ports(1, "redis-server", async |ports: &[u16]| {
            Redis::start_on(ports[0]).await
        })
        .await
    }

    /// A Redis on `port`; `Err` with its log when it could not have the port.
    pub async fn start_on(port: u16) -> Result<Redis, String> {
        let mut redis = Redis {
            port,
            process: None,
        };
        redis.spawn().await.map(|()| redis)
    }

    /// Starts the server on its port; `Err` with its log when it exited
    /// (the port was taken).
    async fn spawn(&mut self) -> Result<(), String> {
        let dir = std::env::temp_dir().display().to_string();
        let mut process = Process::spawn(
            REDIS_SERVER,
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--dir", &dir]),
        );
        let ready = ready(&mut process, self.port).await;
        self.process = Some(process);
        ready
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no goodbye to the clients, like a crashed or unplugged server.
    pub fn kill(&mut self) {
        self.process = None;
    }

    /// Starts it again, empty, on the same port (the nodes know no other).
    pub async fn restart_empty(&mut self) {
        self.kill();
        if let Err(log) = self.spawn().await {
            panic!(
                "redis-server could not start again on port {}, taken meanwhile: {log}",
                self.port
            );
        }
    }
}

/// Waits until `process` serves on `port`; `Err` with its output if it
/// exits first.
async fn ready(process: &mut Process, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = process.exited() {
            return Err(format!(
                "exited ({status}) on port {port}\n{}",
                process.tail()
            ));
        }
        if served_by(port).await == Some(process.id()) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on port {port} answers within 5 s\n{}",
            process.tail()
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The process id of the Redis answering on `port`, if one answers.
async fn served_by(port: u16) -> Option<u32> {
    let limit = Duration::from_millis(200);
    let mut stream = tokio::time::timeout(limit, TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()?;
    stream.write_all(b"INFO server\r\n").await.ok()?;
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    let mut info = Vec::new();
    let mut whole = None;
    let mut buf = [0_u8; 4096];
    while whole.is_none_or(|len| info.len() < len) {
        let n = tokio::time::timeout(limit, stream.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        info.extend_from_slice(&buf[..n]);
        if whole.is_none()
            && let Some(end) = info.windows(2).position(|w| w == b"\r\n")
        {
            let len: usize = std::str::from_utf8(info.get(1..end)?).ok()?.parse().ok()?;
            whole = Some(end + 2 + len);
        }
    }
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:")?.trim().parse().ok())
}

/// Runs `redis-cli -p port args…` and returns what it printed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run redis-cli ({e}): the Redis Cluster tests need it. Install it with \
                 `apt-get install redis-server` (it brings redis-tools, hence redis-cli)"
            )
        });
    assert!(
        out.status.success(),
        "redis-cli -p {port} {args:?} works: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A Redis Cluster of this test's own: three masters, no replicas, on
/// loopback ports (each with its own cluster bus port), in a temp
/// directory of their own.
pub struct ShardedRedis {
    /// Client port of each master, in creation order.
    pub ports: Vec<u16>,
    /// Cluster bus port of each master.
    bus: Vec<u16>,
    processes: Vec<Option<Process>>,
    dir: TempDir,
    /// The slot ranges each master serves, as the cluster reports them.
    pub slots: Vec<Vec<(u16, u16)>>,
}

impl ShardedRedis {
    pub async fn start() -> ShardedRedis {
        let mut redis = on_free_ports(6, "a Redis Cluster", async |ports: &[u16]| {
            let mut redis = ShardedRedis {
                ports: ports[..3].to_vec(),
                bus: ports[3..].to_vec(),
                processes: (0..3).map(|_| None).collect(),
                dir: TempDir::new("redis-cluster"),
                slots: Vec::new(),
            };
            for i in 0..3 {
                redis.spawn(i).await?;
            }
            Ok(redis)
        })
        .await;
        let seeds: Vec<String> = redis
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(seeds.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(redis.ports[0], &create);
        for i in 0..3 {
            redis.wait_for_state_ok(i).await;
        }
        redis.slots = redis.read_slots();
        redis
    }

    /// Starts master `i`, in cluster mode; `Err` with its log when it
    /// exited (a port was taken). `cluster-require-full-coverage no`: the
    /// other shards keep serving while one is down.
    async fn spawn(&mut self, i: usize) -> Result<(), String> {
        let port = self.ports[i].to_string();
        let conf: PathBuf = self.dir.join(&format!("nodes-{port}.conf"));
        let mut process = Process::spawn(
            REDIS_SERVER,
            Command::new("redis-server")
                .args(["--port", &port, "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &self.bus[i].to_string()])
                .args(["--cluster-config-file", &conf.display().to_string()])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--dir", &self.dir.path().display().to_string()]),
        );
        let ready = ready(&mut process, self.ports[i]).await;
        self.processes[i] = Some(process);
        ready
    }

    async fn wait_for_state_ok(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let info = redis_cli(self.ports[i], &["cluster", "info"]);
            if info.contains("cluster_state:ok") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "master {i} says cluster_state:ok within 8 s: {info}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// The slot ranges of each master, from `CLUSTER NODES`.
    fn read_slots(&self) -> Vec<Vec<(u16, u16)>> {
        let nodes = redis_cli(self.ports[0], &["cluster", "nodes"]);
        self.ports
            .iter()
            .map(|port| {
                let me = format!("127.0.0.1:{port}@");
                let line = nodes
                    .lines()
                    .find(|l| l.split(' ').nth(1).is_some_and(|a| a.starts_with(&me)))
                    .unwrap_or_else(|| panic!("master {port} in CLUSTER NODES: {nodes}"));
                line.split(' ')
                    .skip(8)
                    .filter_map(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        Some((a.parse().ok()?, b.parse().ok()?))
                    })
                    .collect()
            })
            .collect()
    }

    pub fn keyslot(&self, key: &str) -> u16 {
        redis_cli(self.ports[0], &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot number")
    }

    /// The master serving `key`.
    pub fn owner(&self, key: &str) -> usize {
        let slot = self.keyslot(key);
        self.slots
            .iter()
            .position(|ranges| ranges.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
            .unwrap_or_else(|| panic!("slot {slot} is served: {:?}", self.slots))
    }

    /// A site name, `prefix-N`, whose keys (hash tag `{digue:<name>}`)
    /// live on master `i`.
    pub fn site_on(&self, i: usize, prefix: &str) -> String {
        (0..200)
            .map(|n| format!("{prefix}-{n}"))
            .find(|name| self.owner(&format!("{{digue:{name}}}:issued")) == i)
            .unwrap_or_else(|| panic!("a {prefix} site on master {i}"))
    }

    /// The keys held by master `i` (KEYS answers for its own slots only).
    pub fn keys_on(&self, i: usize) -> Vec<String> {
        redis_cli(self.ports[i], &["keys", "*"])
            .lines()
            .map(str::to_owned)
            .filter(|k| !k.is_empty())
            .collect()
    }

    pub fn url(&self, i: usize) -> String {
        format!("redis://127.0.0.1:{}", self.ports[i])
    }

    /// `redis_urls = [...]` naming every master, for `[cluster]`.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = (0..3).map(|i| format!("\"{}\"", self.url(i))).collect();
        format!("redis_urls = [{}]", urls.join(", "))
    }

    /// SIGKILL master `i`: its shard is gone, the others stay.
    pub fn kill(&mut self, i: usize) {
        self.processes[i] = None;
    }

    /// Starts master `i` again: empty, but with its cluster config, so it
    /// takes its slots back.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        if let Err(log) = self.spawn(i).await {
            panic!("master {i} could not start again on its ports, taken meanwhile: {log}");
        }
        self.wait_for_state_ok(i).await;
    }
}
