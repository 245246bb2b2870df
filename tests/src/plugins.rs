//! Builds the plugins from source once per test process — the Rust ones for
//! `wasm32-wasip2` with cargo, the Python one with componentize-py — and compiles them
//! into a compile cache shared by every test broker (`weir --check` loads them all), so
//! tests do not each spend seconds compiling an 18 MB Python component.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("plugins")
}

/// The shared compile cache, for `[plugins] cache_dir`.
pub fn cache_dir() -> PathBuf {
    root().join("target").join("cwasm-cache")
}

/// Path of a built plugin: `acl`, `auth-password`, `auth-jwt`, `rate-limit`, `tenant`,
/// `transform`, `misbehave`, `python-redact` (a `weir:plugin@0.1.0` component).
pub fn wasm(name: &str) -> PathBuf {
    build();
    wasm_path(name)
}

fn wasm_path(name: &str) -> PathBuf {
    if name == "python-redact" {
        return root().join("target").join("python-redact.wasm");
    }
    if name == "js-limiter" {
        return root().join("target").join("js-limiter.wasm");
    }
    if name == "tagger-b" {
        return root().join("target/tagger-b/wasm32-wasip2/release/tagger.wasm");
    }
    root()
        .join("target/wasm32-wasip2/release")
        .join(format!("{}.wasm", name.replace('-', "_")))
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (run .ci/setup)"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn newer(a: &Path, than: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (m(a), m(than)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

pub fn build() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let root = root();
        run(
            crate::cargo(&root).args(["build", "-q", "--release", "--target", "wasm32-wasip2"]),
            "building the Rust plugins (needs `rustup target add wasm32-wasip2`)",
        );
        // The second version of the tagger, for the hot-reload tests.
        run(
            crate::cargo(&root)
                .args([
                    "build",
                    "-q",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "-p",
                    "tagger",
                    "--features",
                    "b",
                ])
                .args(["--target-dir", "target/tagger-b"]),
            "building the tagger plugin, version b",
        );
        // The Python plugin is built against the frozen 0.1.0 interface: the tests that
        // use it show that components of 0.1.0 keep loading and working.
        let py_out = root.join("target/python-redact.wasm");
        let py_src = root.join("python-redact/app.py");
        let wit = root.join("../wit/v0.1.0/weir-plugin.wit");
        if newer(&py_src, &py_out) || newer(&wit, &py_out) {
            run(
                Command::new("componentize-py")
                    .args([
                        "-d",
                        "../../wit/v0.1.0",
                        "-w",
                        "transformer-with-config",
                        "componentize",
                        "app",
                        "-o",
                    ])
                    .arg(&py_out)
                    .current_dir(root.join("python-redact")),
                "building the Python plugin (needs `pip install componentize-py`)",
            );
        }
        build_js(&root);
        warm_cache();
    });
}

/// The JavaScript plugin, with componentize-js from its lock file (`npm ci` once).
fn build_js(root: &Path) {
    let dir = root.join("js-limiter");
    let out = root.join("target/js-limiter.wasm");
    let installed = dir.join("node_modules/.package-lock.json");
    if newer(&dir.join("package-lock.json"), &installed) {
        run(
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir),
            "installing componentize-js (npm ci in plugins/js-limiter)",
        );
    }
    // Built against 0.2.0, as a plugin of the version before is: the broker loads both.
    let wit = root.join("../wit/v0.2.0/weir-plugin.wit");
    if newer(&dir.join("plugin.js"), &out) || newer(&wit, &out) {
        run(
            Command::new("npm")
                .args(["run", "-s", "build"])
                .current_dir(&dir),
            "building the JavaScript plugin (componentize-js)",
        );
    }
}

/// Loads every plugin once through the real broker, which compiles them into the cache.
fn warm_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("warm.toml");
    let mut text = format!(
        "[storage]\ndir = {:?}\n[plugins]\ncache_dir = {:?}\n",
        dir.path().join("data"),
        cache_dir()
    );
    let configs = [
        ("acl", "rules = []"),
        ("auth-password", "users = []"),
        ("auth-jwt", "hs256_secret = \"x\""),
        ("rate-limit", ""),
        ("transform", ""),
        ("misbehave", "mode = \"none\""),
        ("python-redact", ""),
        ("tagger", ""),
        ("tagger-b", ""),
    ];
    for (name, cfg) in configs {
        let path = wasm_path(name);
        text += &format!("[[plugin]]\nname = {name:?}\npath = {path:?}\n[plugin.config]\n{cfg}\n");
    }
    std::fs::write(&config, text).unwrap();
    run(
        Command::new(crate::weir_bin())
            .arg("--config")
            .arg(&config)
            .arg("--check"),
        "loading every plugin once",
    );
}
