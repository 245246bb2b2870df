//! `weir plugin test`: a plugin's hooks run against a file of cases, without a broker,
//! through the same plugin host, sandbox and limits the broker uses. Plugin authors put
//! it in their own CI; `weir plugin new` makes a project that uses it.

mod ask;
pub mod cases;

use crate::config::{Config, OnError, PluginConfig};
use crate::plugin::{PluginChain, PluginError};
use cases::CaseFile;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("{0}")]
    Config(String),
}

/// The limits a call gets, as a `[[plugin]]` table would set them.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    pub deadline_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub fuel: Option<u64>,
    pub allow_http: Vec<String>,
}

/// The plugin at `wasm` with its `config` table (a TOML file, or empty), loaded as the
/// broker would load it.
pub fn load(
    wasm: &Path,
    config: Option<&Path>,
    limits: &Limits,
) -> Result<Arc<PluginChain>, TestkitError> {
    let table = match config {
        Some(path) => {
            toml::from_str::<toml::Table>(&read(path)?).map_err(|e| TestkitError::Parse {
                path: path.into(),
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    let mut c = Config::default();
    c.plugins.cache_dir = Some(std::env::temp_dir().join("weir-plugin-test-cache"));
    c.plugins.watch = false;
    c.plugins.authenticate_default = crate::config::AuthDefault::Deny;
    c.plugins.authorize_default = crate::config::AllowDeny::Deny;
    c.plugin.push(PluginConfig {
        name: "under-test".into(),
        path: wasm.into(),
        config: table,
        // A failure is told apart by the plugin's error counters, not by its effect.
        on_error: Some(OnError::Defer),
        deadline_ms: limits.deadline_ms,
        memory_mb: limits.memory_mb,
        fuel: limits.fuel,
        allow_http: limits.allow_http.clone(),
        http_timeout_ms: None,
        http_max_bytes: None,
        max_waiting_calls: None,
        shadow_of: None,
    });
    c.validate()
        .map_err(|e| TestkitError::Config(e.to_string()))?;
    Ok(Arc::new(PluginChain::load(&c)?))
}

pub fn read_cases(path: &Path) -> Result<CaseFile, TestkitError> {
    toml::from_str(&read(path)?).map_err(|e| TestkitError::Parse {
        path: path.into(),
        message: e.to_string(),
    })
}

fn read(path: &Path) -> Result<String, TestkitError> {
    std::fs::read_to_string(path).map_err(|e| TestkitError::Read {
        path: path.into(),
        source: e,
    })
}

/// How a run went.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
}

/// Runs every case in order, one line each on `out`: pass or fail, the answer, and the
/// call's time.
pub fn run(chain: &Arc<PluginChain>, file: &CaseFile, out: &mut impl Write) -> Summary {
    let stats = chain.stats_of("under-test");
    let mut summary = Summary::default();
    for (i, case) in file.cases.iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", i + 1));
        let started = Instant::now();
        let answered = ask::ask(chain, &stats, case, &file.client);
        let took = started.elapsed();
        let verdict = answered.and_then(|got| got.check(case).map(|_| got));
        let hook = case.hook.name();
        let _ = match &verdict {
            Ok(got) => writeln!(out, "ok    {name}: {hook} -> {got} ({took:.1?})"),
            Err(why) => writeln!(out, "FAIL  {name}: {hook}: {why} ({took:.1?})"),
        };
        match verdict {
            Ok(_) => summary.passed += 1,
            Err(_) => summary.failed += 1,
        }
    }
    let _ = writeln!(out, "{} passed, {} failed", summary.passed, summary.failed);
    summary
}
