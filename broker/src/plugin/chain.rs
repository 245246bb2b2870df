//! The chain of loaded plugins, in configuration order, and everything that changes it:
//! load, reload (file watcher, admin API), reconfiguration (SIGHUP), enable/disable.
//! Every change swaps in a new list at once, so a call in progress never sees half of it.

use super::call::Call;
use super::host_api::SharedState;
use super::instance::{Failure, Plugin, Shadow};
use super::kept::Kept;
use super::runtime::Runtime;
use super::{Hook, HookSet, PluginError, Stats};
use crate::codec::ReasonCode;
use crate::config::{Config, OnError, PluginConfig, PluginsConfig};
use crate::hooks::ClientInfo;
use crate::message::Message;
use crate::sync::lock;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// The plugins in configuration order, as one call sees them.
pub(super) type Chain = Arc<Vec<Arc<Plugin>>>;

pub struct PluginChain {
    runtime: Runtime,
    /// The chain as calls see it. A call takes a snapshot (an `Arc` clone), so a swap
    /// never disturbs a call in progress, and a replaced version is freed when the last
    /// call holding it ends.
    /// Read for every hook call from every worker: an `ArcSwap` load touches no cache
    /// line shared between threads, where a lock or a reference count would bounce one
    /// between cores several times per message.
    plugins: ArcSwap<Vec<Arc<Plugin>>>,
    /// Which hooks some enabled plugin implements (a [`HookSet`]), asked for every
    /// message; kept up to date by whatever changes the chain or switches a plugin.
    active: AtomicU8,
    /// Changed whenever the chain or a plugin's part in it changes, after the change:
    /// a connection that sees a new value forgets the answers it kept (`kept`).
    generation: AtomicU64,
    /// Serialises recomputing `active`, so a stale mask never overwrites a newer one.
    refreshing: Mutex<()>,
    /// What each plugin was loaded from, to load it again.
    configs: Mutex<Vec<PluginConfig>>,
    /// One reload at a time (file watcher, admin API, SIGHUP).
    reloading: Mutex<()>,
    /// By plugin name: host-side state and counters outlive any one loaded version.
    states: Mutex<HashMap<String, Arc<SharedState>>>,
    stats: Mutex<HashMap<String, Arc<Stats>>>,
    pub(super) defaults: PluginsConfig,
    pub(super) max_packet: usize,
}

impl PluginChain {
    /// Loads every configured plugin; any that fails to compile, link or `init` stops
    /// startup with an error naming it.
    pub fn load(config: &Config) -> Result<PluginChain, PluginError> {
        let cache_dir = config
            .plugins
            .cache_dir
            .clone()
            .unwrap_or_else(|| config.storage.dir.join("plugin-cache"));
        let fuel =
            config.plugins.fuel > 0 || config.plugin.iter().any(|p| p.fuel.is_some_and(|f| f > 0));
        let max_memory = config
            .plugin
            .iter()
            .map(|p| p.memory_mb.unwrap_or(config.plugins.memory_mb))
            .max();
        let runtime = Runtime::new(
            &config.plugins,
            cache_dir,
            fuel,
            max_memory.unwrap_or(config.plugins.memory_mb),
        )?;
        let chain = PluginChain {
            runtime,
            plugins: ArcSwap::from_pointee(Vec::new()),
            active: AtomicU8::new(0),
            generation: AtomicU64::new(0),
            refreshing: Mutex::new(()),
            configs: Mutex::new(config.plugin.clone()),
            reloading: Mutex::new(()),
            states: Mutex::default(),
            stats: Mutex::default(),
            defaults: config.plugins.clone(),
            max_packet: config.limits.max_packet_size as usize,
        };
        chain
            .plugins
            .store(Arc::new(chain.load_all(&config.plugin)?));
        chain.refresh_active();
        Ok(chain)
    }

    /// The chain `configs` describe: its members in order, each entry with `shadow_of`
    /// loaded as the shadow of the member it names. Any that fails fails it all.
    fn load_all(&self, configs: &[PluginConfig]) -> Result<Vec<Arc<Plugin>>, PluginError> {
        let mut list = Vec::new();
        for c in configs.iter().filter(|c| c.shadow_of.is_none()) {
            list.push(Arc::new(self.load_one(c)?));
        }
        for c in configs {
            let Some(of) = &c.shadow_of else { continue };
            let target = list.iter().find(|p| &*p.name == of);
            let target = target.ok_or_else(|| PluginError::Unknown(of.clone()))?;
            target.set_shadow(Some(self.load_shadow(c)?));
        }
        Ok(list)
    }

    /// A candidate with host state and counters of its own: it takes no tokens from the
    /// buckets of the plugin it shadows.
    fn load_shadow(&self, cfg: &PluginConfig) -> Result<Arc<Shadow>, PluginError> {
        let candidate = Plugin::load(
            &self.runtime,
            cfg,
            &self.defaults,
            Arc::default(),
            Arc::default(),
        )?;
        tracing::info!(plugin = cfg.shadow_of.as_deref().unwrap_or(&cfg.name), candidate = %candidate.hash,
            path = %cfg.path.display(), "candidate shadowing the plugin");
        Ok(Arc::new(Shadow::new(candidate, cfg.clone())))
    }

    fn load_one(&self, cfg: &PluginConfig) -> Result<Plugin, PluginError> {
        let state = lock(&self.states)
            .entry(cfg.name.clone())
            .or_default()
            .clone();
        let stats = lock(&self.stats)
            .entry(cfg.name.clone())
            .or_default()
            .clone();
        let plugin = Plugin::load(&self.runtime, cfg, &self.defaults, state, stats)?;
        tracing::info!(plugin = %plugin.name, hooks = ?plugin.hook_names(), sha256 = %plugin.hash,
            blocking = plugin.may_wait(), "plugin loaded");
        Ok(plugin)
    }

    /// The chain as it is now, disabled plugins included.
    pub fn plugins(&self) -> Arc<Vec<Arc<Plugin>>> {
        self.plugins.load_full()
    }

    /// The chain for one hook call.
    pub(super) fn current(&self) -> arc_swap::Guard<Chain> {
        self.plugins.load()
    }

    /// Loads the plugin's file again and, if the new version compiles, links and
    /// `init`s, swaps it in; otherwise the current version keeps serving and the
    /// rejection is recorded. Runs on the caller's thread, never on a connection's.
    /// For a `shadow_of` entry, loads the candidate again; the answer is the plugin it
    /// shadows.
    pub fn reload(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        let _one = lock(&self.reloading);
        let cfg = self.config_of(name)?;
        match &cfg.shadow_of {
            None => {
                let fresh = self.swap_in(cfg)?;
                self.reattach_configured_shadow(&fresh);
                Ok(fresh)
            }
            Some(of) => {
                let target = self.active(of)?;
                let loaded = self.load_shadow(&cfg).inspect_err(|e| {
                    tracing::warn!(
                        plugin = of,
                        shadow = name,
                        "new candidate rejected; the shadow before it stays: {e}"
                    );
                })?;
                target.set_shadow(Some(loaded));
                Ok(target)
            }
        }
    }

    /// Loads `cfg` and, if it loads, puts it in the place of the plugin of its name,
    /// both in the chain and among the configurations; the caller holds `reloading`.
    fn swap_in(&self, cfg: PluginConfig) -> Result<Arc<Plugin>, PluginError> {
        let name = cfg.name.clone();
        let stats = self.stats_of(&name);
        match self.load_one(&cfg) {
            Ok(p) => {
                let fresh = Arc::new(p);
                let mut list: Vec<Arc<Plugin>> = self.plugins().iter().cloned().collect();
                for slot in list.iter_mut().filter(|p| *p.name == name) {
                    *slot = fresh.clone();
                }
                self.plugins.store(Arc::new(list));
                self.refresh_active();
                for c in lock(&self.configs).iter_mut().filter(|c| c.name == name) {
                    *c = cfg.clone();
                }
                stats.reloaded();
                tracing::info!(plugin = name, sha256 = %fresh.hash, "plugin reloaded");
                Ok(fresh)
            }
            Err(e) => {
                stats.rejected(e.to_string());
                tracing::warn!(
                    plugin = name,
                    "new version rejected; the previous one keeps serving: {e}"
                );
                Err(e)
            }
        }
    }

    fn config_of(&self, name: &str) -> Result<PluginConfig, PluginError> {
        let configs = lock(&self.configs);
        let found = configs.iter().find(|c| c.name == name).cloned();
        found.ok_or_else(|| PluginError::Unknown(name.into()))
    }

    fn active(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        let found = self.plugins().iter().find(|p| &*p.name == name).cloned();
        found.ok_or_else(|| PluginError::Unknown(name.into()))
    }

    /// A configured shadow outlives reloads of its plugin: loaded again beside the new
    /// version and counted afresh against it. (One set by `weir shadow` ends with the
    /// version it was compared with.)
    fn reattach_configured_shadow(&self, plugin: &Plugin) {
        let configs = lock(&self.configs);
        let entry = configs
            .iter()
            .find(|c| c.shadow_of.as_deref() == Some(&*plugin.name));
        let Some(entry) = entry.cloned() else { return };
        drop(configs);
        match self.load_shadow(&entry) {
            Ok(shadow) => plugin.set_shadow(Some(shadow)),
            Err(e) => tracing::warn!(plugin = %plugin.name, shadow = entry.name,
                "the configured shadow does not load beside the new version; none runs: {e}"),
        }
    }

    /// Forgets the configured shadow of `name` (a `shadow_of` entry), so the file
    /// watcher no longer brings it back; the configuration file still names it.
    fn forget_shadow_entry(&self, name: &str) {
        lock(&self.configs).retain(|c| c.shadow_of.as_deref() != Some(name));
    }

    /// Loads the component at `path` with the plugin's configuration and lets it shadow
    /// the plugin: asked every question the plugin is asked, its answers compared and
    /// counted, never used. It replaces an earlier shadow.
    pub fn shadow(&self, name: &str, path: &Path) -> Result<Arc<Shadow>, PluginError> {
        let _one = lock(&self.reloading);
        let active = self.active(name)?;
        let mut cfg = self.config_of(name)?;
        cfg.path = path.to_path_buf();
        let shadow = self.load_shadow(&cfg)?;
        active.set_shadow(Some(shadow.clone()));
        self.forget_shadow_entry(name);
        Ok(shadow)
    }

    /// Stops the plugin's shadow.
    pub fn unshadow(&self, name: &str) -> Result<(), PluginError> {
        let _one = lock(&self.reloading);
        let active = self.active(name)?;
        if active.shadow().is_none() {
            return Err(PluginError::NoShadow(name.into()));
        }
        active.set_shadow(None);
        self.forget_shadow_entry(name);
        tracing::info!(plugin = name, "shadow stopped");
        Ok(())
    }

    /// Loads the shadow's file, with the configuration it shadows with, as the plugin's
    /// and swaps it in as a reload does: at once for every call that starts after, the
    /// old version serving the calls in progress. The shadow stops.
    pub fn promote(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        let _one = lock(&self.reloading);
        let shadow = (self.active(name)?.shadow()).ok_or(PluginError::NoShadow(name.into()))?;
        let cfg = PluginConfig {
            name: name.to_owned(),
            shadow_of: None,
            ..shadow.config.clone()
        };
        let promoted = self.swap_in(cfg)?;
        self.forget_shadow_entry(name);
        tracing::info!(plugin = name, sha256 = %promoted.hash, agreed = shadow.agreed.load(Relaxed),
            disagreed = shadow.disagreed.load(Relaxed), failed = shadow.failed.load(Relaxed),
            "shadow promoted");
        Ok(promoted)
    }

    /// Switches a plugin in or out of the chain without unloading it.
    pub fn set_enabled(&self, name: &str, on: bool) -> Result<(), PluginError> {
        if !self.plugins().iter().any(|p| &*p.name == name) {
            return Err(PluginError::Unknown(name.into()));
        }
        self.stats_of(name).set_enabled(on);
        self.refresh_active();
        tracing::info!(plugin = name, enabled = on, "plugin switched");
        Ok(())
    }

    /// Loads a whole new chain (SIGHUP with a changed configuration); if any plugin
    /// fails, nothing changes.
    pub fn reconfigure(&self, configs: &[PluginConfig]) -> Result<(), PluginError> {
        let _one = lock(&self.reloading);
        let list = self.load_all(configs)?;
        *lock(&self.configs) = configs.to_vec();
        self.plugins.store(Arc::new(list));
        self.refresh_active();
        tracing::info!(plugins = configs.len(), "plugin chain reconfigured");
        Ok(())
    }

    /// The files the chain and its configured shadows were loaded from, by entry name
    /// (for the file watcher).
    pub fn sources(&self) -> Vec<(String, PathBuf)> {
        let configs = lock(&self.configs);
        configs
            .iter()
            .map(|c| (c.name.clone(), c.path.clone()))
            .collect()
    }

    /// The SHA-256 of what runs for the entry `name`: the plugin, or for a `shadow_of`
    /// entry the candidate shadowing its plugin.
    pub fn running_hash(&self, name: &str) -> Option<String> {
        let of = lock(&self.configs)
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.shadow_of.clone());
        let plugin = self.active(of.as_deref().unwrap_or(name)).ok()?;
        match of {
            None => Some(plugin.hash.clone()),
            Some(_) => plugin.shadow().map(|s| s.candidate.hash.clone()),
        }
    }

    pub fn stats_of(&self, name: &str) -> Arc<Stats> {
        lock(&self.stats)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn refresh_active(&self) {
        let _one = lock(&self.refreshing);
        let active = self
            .current()
            .iter()
            .filter(|p| p.stats.enabled())
            .fold(HookSet::default(), |set, p| set.union(p.hooks()));
        self.active.store(active.bits(), Ordering::Relaxed);
        // Unique across chains too, so what a connection kept of one chain is never
        // mistaken for another's.
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        let next = GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1;
        self.generation.store(next, Ordering::Release);
    }

    /// The chain for one hook call, and what the calling connection kept of its
    /// answers (none for a call with no connection behind it). The generation is read
    /// first: a change stores the new chain before it advances the generation, so
    /// answers of a replaced version are never kept as the new one's.
    pub(super) fn call<'c>(&'c self, kept: Option<&'c mut Kept>) -> Call<'c> {
        let generation = self.generation.load(Ordering::Acquire);
        let plugins = self.current();
        let mut kept = kept;
        if let Some(k) = kept.as_deref_mut() {
            k.check(generation, plugins.len());
        }
        Call::new(self, plugins, kept)
    }

    /// The transforms alone, changing `message` in place; the reason code if one dropped
    /// it. The broker runs them through [`ClientHooks::publish`]; this is for measuring
    /// them.
    ///
    /// [`ClientHooks::publish`]: crate::hooks::ClientHooks::publish
    pub fn transform(&self, client: &ClientInfo<'_>, message: &mut Message) -> Option<ReasonCode> {
        self.call(None).transform(client, message)
    }

    /// Whether some plugin taking part in the chain now implements the hook.
    pub(super) fn any_active(&self, hook: Hook) -> bool {
        HookSet::from_bits(self.active.load(Ordering::Relaxed)).has(hook)
    }

    /// Whether some enabled plugin implementing the hook may wait outside the broker.
    pub(super) fn any_waits(&self, hook: Hook) -> bool {
        (self.current().iter()).any(|p| p.stats.enabled() && p.may_wait() && p.hooks().has(hook))
    }

    /// Logs and counts a failed call; the policy that applies.
    pub(super) fn failed(&self, p: &Plugin, hook: Hook, f: &Failure) -> OnError {
        if matches!(f, Failure::Invalid(_)) {
            p.stats.failed(f);
        }
        let policy = p.on_error.unwrap_or(match hook {
            Hook::Transform | Hook::Deliver | Hook::Observe => OnError::Allow,
            _ => OnError::Deny,
        });
        tracing::warn!(plugin = %p.name, hook = hook.name(), kind = %f.kind(), policy = ?policy, "plugin failed: {f}");
        policy
    }
}

impl Drop for PluginChain {
    /// The totals, so a run's plugin behaviour is on record even without the metrics
    /// endpoint.
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        for p in self.plugins().iter() {
            let s = &p.stats;
            let errors: Vec<String> = s
                .errors()
                .iter()
                .filter(|(_, n)| *n > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            tracing::info!(
                plugin = %p.name,
                calls = s.calls.load(),
                denials = s.denials.load(Relaxed),
                errors = %errors.join(","),
                "plugin totals"
            );
        }
    }
}
