//! Test harness: builds and starts the real `weir` binary on a free loopback port with
//! its own data directory, and gives tests independent MQTT clients to talk to it.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod auth_service;
pub mod clients;
pub mod grafana;
pub mod http;
pub mod nats;
pub mod pki;
pub mod plugins;
pub mod raw;
pub mod tokens;

/// A cargo command without the per-package variables `cargo test` sets for this
/// process: passed on, they change build fingerprints and make every test binary
/// rebuild what it builds. The caller's own cargo settings (`CARGO_INCREMENTAL=0` in
/// CI, profiles, the target directory) pass: without them the build differs from the
/// one being tested, and takes disk of its own.
pub fn cargo(dir: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(dir);
    const SETTINGS: [&str; 6] = ["BUILD_", "PROFILE_", "NET_", "TERM_", "HTTP_", "REGISTR"];
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        let Some(rest) = k.strip_prefix("CARGO_") else {
            continue;
        };
        let setting = matches!(rest, "HOME" | "TARGET_DIR" | "INCREMENTAL")
            || SETTINGS.iter().any(|s| rest.starts_with(s));
        if !setting {
            c.env_remove(&*k);
        }
    }
    c
}

/// Builds one binary of the workspace (debug) and returns its path.
fn built(package: &str, bin: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let status = cargo(&root)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    target.join("debug").join(bin)
}

/// `weir ARGS` against the admin API on `admin_port`: whether it succeeded, and what
/// it printed (stdout, then stderr).
pub fn weir_cli(admin_port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new(weir_bin())
        .arg("--admin")
        .arg(format!("127.0.0.1:{admin_port}"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Path of the `weir` binary, built once per test process (or `WEIR_BIN`).
pub fn weir_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var("WEIR_BIN") {
        // The broker runs in its own temp directory, so a relative path must be resolved now.
        Ok(p) => std::fs::canonicalize(&p).unwrap_or_else(|e| panic!("WEIR_BIN={p}: {e}")),
        Err(_) => built("weir", "weir"),
    })
    .clone()
}

/// Path of the bench load generator, built once per test process.
pub fn load_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built("weir-bench", "load")).clone()
}

/// Path of the bench connection-scale generator, built once per test process.
pub fn conns_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built("weir-bench", "conns")).clone()
}

/// A whole-number setting of a bench run from the environment, or its default; a value
/// that is not a number stops the run with its name rather than measuring something else.
pub fn setting(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a whole number, not {v:?}")),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("binding a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the process in `child` accepts connections on `port`: true, or false with
/// no process left if it exited first (its port was taken, say) or did not listen
/// `within` (then it is killed).
pub fn wait_listening(child: &mut Option<Child>, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if let Some(Ok(Some(_))) = child.as_mut().map(|c| c.try_wait()) {
            *child = None;
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    false
}

/// Extra configuration for a test broker, as TOML lines per table.
#[derive(Default, Clone)]
pub struct Opts {
    /// Extra lines for the TCP listener named `tcp`.
    pub listener: String,
    /// More listeners, each on its own free port.
    pub listeners: Vec<Listener>,
    pub limits: String,
    pub storage: String,
    /// Lines for the `[plugins]` table (the cache is the tests' shared one and the deadline
    /// a second unless set here).
    pub plugins: String,
    /// Appended as is: `[[plugin]]` entries.
    pub extra: String,
    /// Lines for the `[admin]` table (its port is always a free one).
    pub admin: String,
    /// Lines for the `[log]` table besides `level = "info"`.
    pub log: String,
    /// Top-level keys (`sys_interval = 1`), written before the first table.
    pub top: String,
}

/// A listener besides the default TCP one: name, kind, and extra TOML lines.
#[derive(Clone)]
pub struct Listener {
    pub name: String,
    pub kind: String,
    pub lines: String,
}

impl Listener {
    pub fn new(name: &str, kind: &str, lines: &str) -> Listener {
        Listener {
            name: name.into(),
            kind: kind.into(),
            lines: lines.into(),
        }
    }
}

impl Opts {
    pub fn limits(s: &str) -> Opts {
        Opts {
            limits: s.into(),
            ..Default::default()
        }
    }
}

/// A running broker. Dropping it kills the process.
pub struct Weir {
    child: Option<Child>,
    pub port: u16,
    /// Ports of the extra listeners, by name.
    pub ports: std::collections::HashMap<String, u16>,
    /// The admin API's port.
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    opts: Opts,
}

impl Weir {
    pub fn start() -> Weir {
        Weir::with(Opts::default())
    }

    pub fn with(opts: Opts) -> Weir {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut w = Weir {
            child: None,
            port: 0,
            ports: Default::default(),
            admin_port: 0,
            dir,
            opts,
        };
        for _ in 0..5 {
            w.port = free_port();
            w.admin_port = free_port();
            w.ports = w
                .opts
                .listeners
                .iter()
                .map(|l| (l.name.clone(), free_port()))
                .collect();
            if w.spawn() {
                return w;
            }
        }
        panic!("broker did not start; log:\n{}", w.log());
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("weir.toml")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("weir.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn port_of(&self, listener: &str) -> u16 {
        self.ports[listener]
    }

    fn write_config(&self) {
        let data = self.dir.path().join("data");
        let mut text = format!("{}\n", self.opts.top);
        for l in &self.opts.listeners {
            text += &format!(
                "[[listener]]\nname = {:?}\nkind = {:?}\nbind = \"127.0.0.1:{}\"\n{}\n\n",
                l.name, l.kind, self.ports[&l.name], l.lines
            );
        }
        text += &format!(
            "[[listener]]\nname = \"tcp\"\nbind = \"127.0.0.1:{}\"\n{}\n\n[limits]\n{}\n\n[storage]\ndir = {:?}\n{}\n\n[log]\nlevel = \"info\"\n{}\n",
            self.port, self.opts.listener, self.opts.limits, data, self.opts.storage, self.opts.log
        );
        // The tests share one compile cache unless a test picks its own.
        let mut table = if self.opts.plugins.contains("cache_dir") {
            String::new()
        } else {
            format!("cache_dir = {:?}\n", plugins::cache_dir())
        };
        // The deadline is wall time: on a machine busy with parallel tests a thread can
        // lose 10 ms (the default) while it waits for a core. Tests that are about the
        // deadline set their own.
        if !self.opts.plugins.contains("deadline_ms") {
            table += "deadline_ms = 1000\n";
        }
        text += &format!(
            "\n[admin]\nbind = \"127.0.0.1:{}\"\n{}\n\n[plugins]\n{table}{}\n\n{}\n",
            self.admin_port, self.opts.admin, self.opts.plugins, self.opts.extra
        );
        std::fs::write(self.config_path(), text).expect("writing config");
    }

    /// Starts the process and waits until it accepts connections. False if it exited
    /// first (the port was taken, say).
    fn spawn(&mut self) -> bool {
        self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        let child = Command::new(weir_bin())
            .arg("--config")
            .arg(self.config_path())
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning weir");
        self.child = Some(child);
        // A broker listens once its plugins are compiled (a JavaScript component takes
        // tens of seconds on a busy 2-core machine the first time; killing it then would
        // throw the compile away and start it again) and, as a cluster node, once NATS
        // and its JetStream answer. One that cannot start exits, and is seen at once.
        wait_listening(&mut self.child, self.port, Duration::from_secs(180))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("broker running").id()
    }

    /// A sample's value from `/metrics`, by its name with labels as printed
    /// (`weir_dropped_messages_total{cause="queue_full"}`).
    pub fn metric(&self, name: &str) -> u64 {
        let (status, body) = http::request(self.admin_port, "GET", "/metrics", None);
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }

    /// The broker's resident memory in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    /// Sends SIGHUP and waits until the log shows `text` once more than before: the
    /// reload it triggers has been carried out (or refused).
    pub fn sighup_until(&self, text: &str) {
        let before = self.log().matches(text).count();
        signal(self.pid(), "HUP");
        assert!(
            eventually(Duration::from_secs(10), || self.log().matches(text).count()
                > before),
            "no {text:?} after SIGHUP; log:\n{}",
            self.log()
        );
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("broker running");
        signal(c.id(), "TERM");
        wait_timeout(&mut c, Duration::from_secs(15))
            .expect("broker did not exit within 15 s of SIGTERM")
    }

    /// Starts the broker again on the same port and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        assert!(self.spawn(), "broker did not restart; log:\n{}", self.log());
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

pub fn wait_timeout(c: &mut Child, d: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    None
}

/// Waits until `f` holds, polling; false on timeout.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}
