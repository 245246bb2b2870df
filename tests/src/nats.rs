//! NATS servers with JetStream for the cluster tests, started by the tests themselves
//! on loopback with free ports (`.ci/setup` installs the pinned `nats-server`).

use crate::{free_port, wait_timeout};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The `nats-server` binary: `$NATS_SERVER`, or the one on `PATH`.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(p);
    }
    let found = Command::new("sh")
        .args(["-c", "command -v nats-server"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    PathBuf::from(found.expect("nats-server is not installed: run `bash .ci/setup`"))
}

/// One NATS server of a [`NatsCluster`].
pub struct NatsServer {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    cluster_port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl NatsServer {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(&self.log).expect("nats log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning nats-server");
        self.child = Some(child);
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again with the same ports and store. A port can be held for a moment by
    /// another test's outgoing connection (ports from the same ephemeral range), so a
    /// server that exits at once is started again.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        for _ in 0..10 {
            if self.spawn_and_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "nats-server {} did not start again; log:\n{}",
            self.name,
            self.log()
        );
    }

    /// Spawns the server and waits until it accepts connections. False if it exited first
    /// (its port was taken, say) or never listened.
    fn spawn_and_wait(&mut self) -> bool {
        self.spawn();
        self.wait_started()
    }

    /// Waits until the spawned server accepts connections; false (and no process) if it
    /// exited first or never listened.
    fn wait_started(&mut self) -> bool {
        crate::wait_listening(&mut self.child, self.port, Duration::from_secs(30))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = wait_timeout(&mut c, Duration::from_secs(5));
        }
    }
}

/// `n` NATS servers with JetStream, routed to one another as one NATS cluster (a single
/// server when `n` is 1).
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Free ports are picked before the servers bind them, so another test can take one
    /// in between: the whole cluster is then started again on new ports.
    pub fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut last_logs = String::new();
        for attempt in 0..5 {
            let attempt_dir = dir.path().join(format!("start{attempt}"));
            std::fs::create_dir_all(&attempt_dir).expect("nats dir");
            let mut servers = Self::configure(n, &attempt_dir);
            for s in &mut servers {
                s.spawn();
            }
            if servers.iter_mut().all(|s| s.wait_started()) {
                return NatsCluster { servers, _dir: dir };
            }
            last_logs = servers
                .iter()
                .map(|s| format!("--- {}\n{}", s.name, s.log()))
                .collect();
        }
        panic!("nats-server did not start; logs:\n{last_logs}");
    }

    /// Picks ports for `n` servers and writes their configuration files.
    fn configure(n: usize, dir: &std::path::Path) -> Vec<NatsServer> {
        let servers: Vec<NatsServer> = (0..n)
            .map(|i| NatsServer {
                child: None,
                name: format!("n{}", i + 1),
                port: free_port(),
                cluster_port: free_port(),
                config: dir.join(format!("n{}.conf", i + 1)),
                log: dir.join(format!("n{}.log", i + 1)),
            })
            .collect();
        let routes: Vec<String> = servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.cluster_port))
            .collect();
        for s in &servers {
            let store = dir.join(&s.name);
            let mut conf = format!(
                "server_name: {}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {:?}, max_mem_store: 256MB, max_file_store: 2GB }}\n",
                s.name, s.port, store
            );
            if n > 1 {
                conf += &format!(
                    "cluster {{ name: weir-test, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    s.cluster_port,
                    routes.join(", ")
                );
            }
            std::fs::write(&s.config, conf).expect("nats config");
        }
        servers
    }

    /// The `servers` value of a `[cluster]` table naming every server.
    pub fn urls_toml(&self) -> String {
        let urls: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("{:?}", s.url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("--- {}\n{}", s.name, s.log()))
            .collect()
    }
}
