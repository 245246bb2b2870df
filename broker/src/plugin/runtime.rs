//! The wasmtime engine every plugin shares: epoch-based deadlines, the pooling
//! allocator, the linker with WASI (nothing granted) and the `host` interface, and the
//! on-disk cache of compiled components. The thread that ticks the deadlines also
//! advances the clock reused answers expire by.

use super::bindings::weir::plugin::{host, types};
use super::instance::PluginCtx;
use super::PluginError;
use crate::config::PluginsConfig;
use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// One epoch tick; deadlines are counted in these.
pub const TICK: Duration = Duration::from_millis(1);

pub struct Runtime {
    pub engine: Engine,
    pub linker: Linker<PluginCtx>,
    cache_dir: PathBuf,
    stop: Arc<AtomicBool>,
    pub fuel: bool,
}

impl Runtime {
    pub fn new(
        cfg: &PluginsConfig,
        cache_dir: PathBuf,
        fuel: bool,
        max_memory_mb: u64,
    ) -> Result<Runtime, PluginError> {
        let engine = match engine(cfg.pooling, fuel, max_memory_mb) {
            Ok(e) => e,
            Err(e) if cfg.pooling => {
                tracing::warn!(error = %e, "pooling allocator unavailable here; allocating plugin instances on demand");
                engine(false, fuel, max_memory_mb)
                    .map_err(|e| PluginError::Engine(e.to_string()))?
            }
            Err(e) => return Err(PluginError::Engine(e.to_string())),
        };
        let mut linker = Linker::new(&engine);
        // Rust guests import a dozen WASI interfaces even when unused; the context built
        // per instance grants nothing (no files, environment, network or arguments).
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        super::wasi_io::add_to_linker(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        // wasi:http's own interfaces only; its streams and pollables are wasi:io's above.
        // Whether a request may go anywhere is each plugin's allow-list.
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        host::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |c| c)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        types::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(&mut linker, |c| c)
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        super::bindings::weir::plugin::context::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(
            &mut linker,
            |c| c,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;
        // The same host for components built against 0.1.0 and 0.2.0.
        super::bindings::v0_1::weir::plugin::host::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(
            &mut linker,
            |c| c,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;
        super::bindings::v0_2::weir::plugin::host::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(
            &mut linker,
            |c| c,
        )
        .map_err(|e| PluginError::Engine(e.to_string()))?;

        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("weir-plugin-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(TICK);
                        engine.increment_epoch();
                        super::answers::tick();
                    }
                })
                .map_err(|e| PluginError::Engine(format!("cannot start the epoch thread: {e}")))?;
        }
        std::fs::create_dir_all(&cache_dir).map_err(|e| PluginError::Cache {
            dir: cache_dir.clone(),
            source: e,
        })?;
        Ok(Runtime {
            engine,
            linker,
            cache_dir,
            stop,
            fuel,
        })
    }

    /// Compiles a component, or loads it from the cache when this exact file was
    /// compiled before by this exact engine. Returns it with its SHA-256.
    pub fn compile(&self, name: &str, path: &Path) -> Result<(Component, String), PluginError> {
        let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
            plugin: name.into(),
            path: path.into(),
            source: e,
        })?;
        let hash = crate::hex(&Sha256::digest(&bytes));
        let mut h = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        let cached = self
            .cache_dir
            .join(format!("{hash}-{:016x}.cwasm", h.finish()));
        if cached.is_file() {
            // SAFETY: the cache directory holds only what `precompile_component` below
            // wrote, for an engine with this compatibility hash (it is in the name).
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(c) => return Ok((c, hash)),
                Err(e) => {
                    tracing::warn!(plugin = name, error = %e, "ignoring unreadable cached compilation")
                }
            }
        }
        tracing::info!(
            plugin = name,
            bytes = bytes.len(),
            "compiling plugin (not in the cache yet)"
        );
        let compiled =
            self.engine
                .precompile_component(&bytes)
                .map_err(|e| PluginError::Invalid {
                    plugin: name.into(),
                    message: format!(
                        "{} is not a valid WebAssembly component: {e:#}",
                        path.display()
                    ),
                })?;
        // Several brokers may share a cache directory (and compile the same plugin at
        // once): each writes its own temporary file and renames it into place.
        let tmp = cached.with_extension(format!(
            "{}.{:?}.tmp",
            std::process::id(),
            std::thread::current().id()
        ));
        if let Err(e) = std::fs::write(&tmp, &compiled).and_then(|_| std::fs::rename(&tmp, &cached))
        {
            tracing::warn!(plugin = name, error = %e, "cannot cache the compiled plugin; it will be compiled again next time");
        }
        // SAFETY: `compiled` was produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| PluginError::Engine(e.to_string()))?;
        Ok((component, hash))
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn engine(pooling: bool, fuel: bool, max_memory_mb: u64) -> wasmtime::Result<Engine> {
    let mut c = Config::new();
    c.wasm_component_model(true);
    // Hooks are plain synchronous calls from the connection task; without the state
    // for concurrent guests a call costs a fraction (0.2-0.45 us here vs 1.2-1.8 us).
    c.concurrency_support(false);
    c.epoch_interruption(true);
    c.consume_fuel(fuel);
    // For profiling plugins: `perf` then names the guests' functions (/tmp/perf-PID.map).
    if std::env::var_os("WEIR_PERFMAP").is_some() {
        c.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let mut p = PoolingAllocationConfig::default();
        // Instances are long-lived and few (one per plugin per worker thread, plus
        // replacements after a trap or reload); Python components bring many core
        // instances and large tables.
        p.total_component_instances(256);
        p.total_core_instances(2048);
        p.total_memories(512);
        p.total_tables(1024);
        p.max_core_instances_per_component(64);
        p.max_memories_per_component(16);
        p.max_tables_per_component(32);
        p.table_elements(200_000);
        p.max_memory_size((max_memory_mb as usize) << 20);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    Engine::new(&c)
}
