//! The WebAssembly plugin host: loads the `[[plugin]]` chain and implements
//! [`Hooks`](crate::hooks::Hooks) with it.
//!
//! Each hook runs through the plugins that export it, in configuration order, until one
//! decides; a plugin that defers passes the question on, and the end of the chain applies
//! the configured default. `transform` is a pipeline instead: each plugin sees the message
//! as the previous one left it, and a drop ends it. A plugin that fails (trap, deadline,
//! memory cap, nonsense answer) is logged and counted and its `on_error` applies: by
//! default `deny` for authenticate, authorize and rate-limit, and the message is kept.

mod answers;
pub mod bindings;
mod convert;
mod host_api;
mod instance;
mod kept;
mod runtime;
mod stats;
mod stdio;
mod watch;

pub use watch::watch;

pub use instance::{Failure, Plugin};
pub use stats::{Stats, LATENCY_BUCKETS_NS};

use crate::codec::{reason, QoS};
use crate::config::{AllowDeny, AuthDefault, Config, OnError, PluginConfig, PluginsConfig};
use crate::hooks::{
    listener_rule, Action, AuthOutcome, ClientInfo, ConnectInfo, Decision, Hooks, Memo,
    PublishOutcome, RateEvent, RateOutcome,
};
use crate::message::Message;
use answers::{Answer, Question, Replacement};
use arc_swap::ArcSwap;
use bindings::weir::plugin::types as wit;
use host_api::SharedState;
use kept::Kept;
use runtime::Runtime;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("plugin engine: {0}")]
    Engine(String),
    #[error("plugin cache directory {dir}: {source}")]
    Cache {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin '{plugin}': cannot read {path}: {source}")]
    Read {
        plugin: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin '{plugin}' rejected: {message}")]
    Invalid { plugin: String, message: String },
    #[error("plugin '{plugin}' rejected: {message}")]
    Init { plugin: String, message: String },
    #[error("no plugin named '{0}'")]
    Unknown(String),
}

/// Bits of `PluginChain::active`.
struct Active;

impl Active {
    const AUTHORIZE: u8 = 1;
    const TRANSFORM: u8 = 2;
    const RATE_LIMIT: u8 = 4;
}

/// The plugins in configuration order, as one call sees them.
type Chain = Arc<Vec<Arc<Plugin>>>;

/// Longest a plugin may throttle a client in one answer; more is an invalid answer.
const MAX_THROTTLE: Duration = Duration::from_secs(3600);

pub struct PluginChain {
    runtime: Runtime,
    /// The chain as calls see it. A call takes a snapshot (an `Arc` clone), so a swap
    /// never disturbs a call in progress, and a replaced version is freed when the last
    /// call holding it ends.
    /// Read for every hook call from every worker: an `ArcSwap` load touches no cache
    /// line shared between threads, where a lock or a reference count would bounce one
    /// between cores several times per message.
    plugins: ArcSwap<Vec<Arc<Plugin>>>,
    /// Which hooks some enabled plugin implements ([`Active`] bits), asked for every
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
    defaults: PluginsConfig,
    max_packet: usize,
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
        let mut loaded = Vec::new();
        for p in &config.plugin {
            loaded.push(Arc::new(chain.load_one(p)?));
        }
        chain.plugins.store(Arc::new(loaded));
        chain.refresh_active();
        Ok(chain)
    }

    fn load_one(&self, cfg: &PluginConfig) -> Result<Plugin, PluginError> {
        let state = self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cfg.name.clone())
            .or_default()
            .clone();
        let stats = self
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(cfg.name.clone())
            .or_default()
            .clone();
        let plugin = Plugin::load(&self.runtime, cfg, &self.defaults, state, stats)?;
        tracing::info!(plugin = %plugin.name, hooks = ?plugin.hooks(), sha256 = %plugin.hash, "plugin loaded");
        Ok(plugin)
    }

    /// The chain as it is now, disabled plugins included.
    pub fn plugins(&self) -> Arc<Vec<Arc<Plugin>>> {
        self.plugins.load_full()
    }

    /// The chain for one hook call.
    fn current(&self) -> arc_swap::Guard<Chain> {
        self.plugins.load()
    }

    /// Loads the plugin's file again and, if the new version compiles, links and
    /// `init`s, swaps it in; otherwise the current version keeps serving and the
    /// rejection is recorded. Runs on the caller's thread, never on a connection's.
    pub fn reload(&self, name: &str) -> Result<Arc<Plugin>, PluginError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let cfg = {
            let configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
            configs
                .iter()
                .find(|c| c.name == name)
                .cloned()
                .ok_or_else(|| PluginError::Unknown(name.into()))?
        };
        let stats = self.stats_of(name);
        match self.load_one(&cfg) {
            Ok(p) => {
                let fresh = Arc::new(p);
                let mut list: Vec<Arc<Plugin>> = self.plugins().iter().cloned().collect();
                for slot in list.iter_mut().filter(|p| &*p.name == name) {
                    *slot = fresh.clone();
                }
                self.plugins.store(Arc::new(list));
                self.refresh_active();
                stats
                    .reloads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(plugin = name, sha256 = %fresh.hash, "plugin reloaded");
                Ok(fresh)
            }
            Err(e) => {
                stats
                    .rejections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                *stats
                    .last_rejection
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                tracing::warn!(
                    plugin = name,
                    "new version rejected; the previous one keeps serving: {e}"
                );
                Err(e)
            }
        }
    }

    /// Switches a plugin in or out of the chain without unloading it.
    pub fn set_enabled(&self, name: &str, on: bool) -> Result<(), PluginError> {
        if !self.plugins().iter().any(|p| &*p.name == name) {
            return Err(PluginError::Unknown(name.into()));
        }
        self.stats_of(name)
            .enabled
            .store(on, std::sync::atomic::Ordering::Relaxed);
        self.refresh_active();
        tracing::info!(plugin = name, enabled = on, "plugin switched");
        Ok(())
    }

    /// Loads a whole new chain (SIGHUP with a changed configuration); if any plugin
    /// fails, nothing changes.
    pub fn reconfigure(&self, configs: &[PluginConfig]) -> Result<(), PluginError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = Vec::new();
        for c in configs {
            list.push(Arc::new(self.load_one(c)?));
        }
        *self.configs.lock().unwrap_or_else(|e| e.into_inner()) = configs.to_vec();
        self.plugins.store(Arc::new(list));
        self.refresh_active();
        tracing::info!(plugins = configs.len(), "plugin chain reconfigured");
        Ok(())
    }

    /// The files the chain was loaded from, by plugin name (for the file watcher).
    pub fn sources(&self) -> Vec<(String, PathBuf)> {
        let configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        configs
            .iter()
            .map(|c| (c.name.clone(), c.path.clone()))
            .collect()
    }

    pub fn stats_of(&self, name: &str) -> Arc<Stats> {
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    fn refresh_active(&self) {
        let _one = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        let mut mask = 0;
        for p in self.current().iter().filter(|p| p.stats.enabled()) {
            mask |= (p.has_authz() as u8 * Active::AUTHORIZE)
                | (p.has_transformer() as u8 * Active::TRANSFORM)
                | (p.has_limiter() as u8 * Active::RATE_LIMIT);
        }
        self.active.store(mask, Ordering::Relaxed);
        // Unique across chains too, so a memo handed to another chain is never
        // mistaken for one of its own.
        static GENERATIONS: AtomicU64 = AtomicU64::new(0);
        let next = GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1;
        self.generation.store(next, Ordering::Release);
    }

    /// The chain for one hook call, and what this connection kept of its answers. The
    /// generation is read first: a change stores the new chain before it advances the
    /// generation, so answers of a replaced version are never kept as the new one's.
    fn call<'c>(&'c self, memo: &'c mut Memo) -> Call<'c> {
        let generation = self.generation.load(Ordering::Acquire);
        let plugins = self.current();
        let mut kept = memo.get_or_insert_with(Kept::default);
        if let Some(k) = kept.as_deref_mut() {
            k.check(generation, plugins.len());
        }
        Call {
            chain: self,
            plugins,
            kept,
            none: Kept::default(),
        }
    }

    /// The transforms alone, changing `message` in place; the reason code if one dropped
    /// it. The broker runs them through [`Hooks::publish`]; this is for measuring them.
    pub fn transform(
        &self,
        memo: &mut Memo,
        client: &ClientInfo<'_>,
        message: &mut Message,
    ) -> Option<u8> {
        self.call(memo).transform(client, message)
    }

    /// Whether some plugin taking part in the chain now implements the hook.
    fn any_active(&self, hook: u8) -> bool {
        self.active.load(Ordering::Relaxed) & hook != 0
    }

    fn failed(&self, p: &Plugin, hook: &str, f: &Failure) -> OnError {
        if matches!(f, Failure::Invalid(_)) {
            p.stats.failed(f);
        }
        let policy = p.on_error.unwrap_or(if hook == "transform" {
            OnError::Allow
        } else {
            OnError::Deny
        });
        tracing::warn!(plugin = %p.name, hook, kind = %f.kind(), policy = ?policy, "plugin failed: {f}");
        policy
    }
}

/// The plugin at position `i` of the chain, asked on behalf of `client`.
struct Ask<'a> {
    i: usize,
    p: &'a Plugin,
    client: &'a ClientInfo<'a>,
}

impl Ask<'_> {
    /// The answer to `q` on `topic` the plugin allows to be reused: the connection's own
    /// copy, or else the shared cache's, which the connection then keeps.
    fn reusable(&self, kept: &mut Kept, topic: &str, q: Question) -> Option<Answer> {
        if let Some(a) = kept.get(self.i, topic, q) {
            return Some(a.clone());
        }
        let (a, until) = self.p.answers.get(self.client, topic, q)?;
        kept.put(self.i, topic, q, a.clone(), until);
        Some(a)
    }

    /// Keeps an answer the plugin allowed to be reused for `ms`, in the shared cache and
    /// in the connection's.
    fn reuse(&self, kept: &mut Kept, topic: &str, q: Question, answer: Answer, ms: u32) {
        if let Some(until) = self
            .p
            .answers
            .put(self.client, topic, q, answer.clone(), ms)
        {
            kept.put(self.i, topic, q, answer, until);
        }
    }
}

fn attributes(a: Vec<wit::Pair>) -> Vec<(String, String)> {
    a.into_iter().map(|p| (p.name, p.value)).collect()
}

/// One hook call's view of the chain: the plugins as they are now, and what the calling
/// connection kept of their answers, or, for a call with no connection behind it, an
/// empty `Kept` that keeps nothing (it has no plugin slots until `check`).
struct Call<'c> {
    chain: &'c PluginChain,
    plugins: arc_swap::Guard<Chain>,
    kept: Option<&'c mut Kept>,
    none: Kept,
}

impl Call<'_> {
    fn authorize(
        &mut self,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision {
        let plugins = &self.plugins;
        let kept = self.kept.as_deref_mut().unwrap_or(&mut self.none);
        let mut args = None;
        for (i, p) in plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| p.has_authz() && p.stats.enabled())
        {
            let q = Question::Authorize(action, qos, retain);
            let ask = Ask { i, p, client };
            if let Some(Answer::Authorize(d)) = ask.reusable(kept, topic, q) {
                p.stats.reused();
                match d {
                    Some(d @ Decision::Deny(_)) => {
                        p.stats.denied();
                        return d;
                    }
                    Some(d) => return d,
                    None => continue,
                }
            }
            let (c, a) = args.get_or_insert_with(|| {
                (
                    convert::client(client),
                    convert::access(action, topic, qos, retain),
                )
            });
            let answer = p.call_reusable(|g, s| match &g.authz {
                Some(h) => h.call_authorize(s, c, a),
                None => Ok(wit::Decision::Defer),
            });
            let decided = answer.and_then(|(r, grants)| {
                let d = match r {
                    wit::Decision::Allow => Some(Decision::Allow),
                    wit::Decision::Deny(code) => {
                        let code = convert::failure_code(code, "deny")?;
                        p.stats.denied();
                        Some(Decision::Deny(code))
                    }
                    wit::Decision::Defer => None,
                };
                if let Some(ms) = grants.reuse_ms {
                    ask.reuse(kept, topic, q, Answer::Authorize(d), ms);
                }
                Ok(d)
            });
            match decided {
                Ok(Some(d)) => return d,
                Ok(None) => {}
                Err(f) => match self.chain.failed(p, "authorize", &f) {
                    OnError::Deny => return Decision::Deny(reason::NOT_AUTHORIZED),
                    OnError::Allow => return Decision::Allow,
                    OnError::Defer => {}
                },
            }
        }
        match self.chain.defaults.authorize_default {
            AllowDeny::Allow => Decision::Allow,
            AllowDeny::Deny => Decision::Deny(reason::NOT_AUTHORIZED),
        }
    }

    /// The transforms, each seeing the message as the one before left it, changing it in
    /// place; the reason code if one dropped it.
    fn transform(&mut self, client: &ClientInfo<'_>, message: &mut Message) -> Option<u8> {
        let plugins = &self.plugins;
        let kept = self.kept.as_deref_mut().unwrap_or(&mut self.none);
        let max_packet = self.chain.max_packet;
        // A reused answer was given for the message as published, not for what an
        // earlier plugin made of it: reuse stops at the first change.
        let mut changed = false;
        let mut c = None;
        let mut header = None;
        let mut question =
            |m: &Message| Question::Transform(*header.get_or_insert_with(|| answers::header(m)));
        for (i, p) in plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| p.has_transformer() && p.stats.enabled())
        {
            let original = !changed;
            let ask = Ask { i, p, client };
            // Nothing is kept for a plugin that never allowed reuse.
            if original && p.answers.in_use() {
                match ask.reusable(kept, &message.topic, question(message)) {
                    Some(Answer::Keep) => {
                        p.stats.reused();
                        continue;
                    }
                    Some(Answer::Replace(r)) if r.apply(message, max_packet) => {
                        p.stats.reused();
                        changed = true;
                        continue;
                    }
                    _ => {}
                }
            }
            let c = c.get_or_insert_with(|| convert::client(client));
            let m = convert::message(message);
            let answer = p.call_reusable(|g, s| match &g.transformer {
                Some(h) => h.call_transform(s, c, &m),
                None => Ok(wit::TransformResult::Keep),
            });
            let decided = answer.and_then(|(r, grants)| match r {
                wit::TransformResult::Keep => {
                    if let Some(ms) = grants.reuse_ms.filter(|_| original) {
                        let q = question(message);
                        ask.reuse(kept, &message.topic, q, Answer::Keep, ms);
                    }
                    Ok(None)
                }
                wit::TransformResult::Drop(code) => {
                    let code = convert::failure_code(code, "drop")?;
                    p.stats.denied();
                    Ok(Some(code))
                }
                wit::TransformResult::Replace(m) => {
                    let m = convert::replacement(m, message, max_packet)?;
                    if let Some(ms) = grants.reuse_ms.filter(|_| original) {
                        if let Some(r) = Replacement::of(&m, message) {
                            let q = question(message);
                            let answer = Answer::Replace(Arc::new(r));
                            ask.reuse(kept, &message.topic, q, answer, ms);
                        }
                    }
                    *message = m;
                    changed = true;
                    Ok(None)
                }
            });
            match decided {
                Ok(Some(code)) => return Some(code),
                Ok(None) => {}
                Err(f) => {
                    if self.chain.failed(p, "transform", &f) == OnError::Deny {
                        return Some(reason::IMPLEMENTATION_SPECIFIC);
                    }
                }
            }
        }
        None
    }

    fn rate_limit(&mut self, client: &ClientInfo<'_>, event: RateEvent) -> RateOutcome {
        let plugins = &self.plugins;
        let kept = self.kept.as_deref_mut().unwrap_or(&mut self.none);
        let mut throttle = Duration::ZERO;
        let mut c = None;
        for (i, p) in plugins
            .iter()
            .enumerate()
            .filter(|(_, p)| p.has_limiter() && p.stats.enabled())
        {
            if let RateEvent::Publish(bytes) = event {
                if kept.take_lease(i, bytes) {
                    p.stats.reused();
                    continue;
                }
            }
            let c = c.get_or_insert_with(|| convert::client(client));
            let e = convert::event(event);
            let answer = p.call_reusable(|g, s| match &g.limiter {
                Some(h) => h.call_rate_limit(s, c, e),
                None => Ok(wit::RateResult::Allow),
            });
            let decided = answer.and_then(|(r, grants)| match r {
                wit::RateResult::Allow => {
                    // Kept by the connection only: a lease is a budget, and one copy
                    // of it is what bounds the client. A call with no connection
                    // behind it lets the lease go unused, which costs only tokens.
                    if let (RateEvent::Publish(_), Some((events, bytes, ms))) =
                        (event, grants.lease)
                    {
                        if let Some(until) = answers::until(ms) {
                            kept.lease(i, events, bytes, until);
                        }
                    }
                    Ok(None)
                }
                wit::RateResult::Reject(code) => {
                    let code = convert::failure_code(code, "reject")?;
                    p.stats.denied();
                    Ok(Some(code))
                }
                wit::RateResult::Throttle(ms) => {
                    let d = Duration::from_millis(ms);
                    if d > MAX_THROTTLE {
                        return Err(Failure::Invalid(format!(
                            "throttle of {ms} ms is over an hour"
                        )));
                    }
                    throttle = throttle.max(d);
                    Ok(None)
                }
            });
            match decided {
                Ok(Some(code)) => return RateOutcome::Reject(code),
                Ok(None) => {}
                Err(f) => match self.chain.failed(p, "rate-limit", &f) {
                    OnError::Deny => return RateOutcome::Reject(reason::UNSPECIFIED_ERROR),
                    OnError::Allow | OnError::Defer => {}
                },
            }
        }
        if throttle.is_zero() {
            RateOutcome::Allow
        } else {
            RateOutcome::Throttle(throttle)
        }
    }
}

impl Hooks for PluginChain {
    fn authenticate(&self, info: &ConnectInfo<'_>) -> AuthOutcome {
        let plugins = self.current();
        let mut arg = None;
        for p in plugins
            .iter()
            .filter(|p| p.has_authn() && p.stats.enabled())
        {
            let arg = arg.get_or_insert_with(|| convert::connect_info(info));
            let answer = p.call(|g, s| match &g.authn {
                Some(h) => h.call_authenticate(s, arg),
                None => Ok(wit::AuthResult::Defer),
            });
            let decided = answer.and_then(|r| match r {
                wit::AuthResult::Allow(a) => Ok(Some(AuthOutcome::Allow {
                    username: a.username,
                    attributes: attributes(a.attributes),
                })),
                wit::AuthResult::Deny(d) => {
                    let code = convert::failure_code(d.reason_code, "deny")?;
                    p.stats.denied();
                    Ok(Some(AuthOutcome::Deny {
                        code,
                        reason: d.reason,
                    }))
                }
                wit::AuthResult::Defer => Ok(None),
            });
            match decided {
                Ok(Some(outcome)) => return outcome,
                Ok(None) => {}
                Err(f) => match self.failed(p, "authenticate", &f) {
                    OnError::Deny => {
                        let reason = format!("authentication plugin '{}' failed", p.name);
                        return AuthOutcome::Deny {
                            code: reason::NOT_AUTHORIZED,
                            reason,
                        };
                    }
                    OnError::Allow => {
                        return AuthOutcome::Allow {
                            username: None,
                            attributes: Vec::new(),
                        }
                    }
                    OnError::Defer => {}
                },
            }
        }
        match self.defaults.authenticate_default {
            AuthDefault::Listener => listener_rule(info),
            AuthDefault::Allow => AuthOutcome::Allow {
                username: None,
                attributes: Vec::new(),
            },
            AuthDefault::Deny => AuthOutcome::Deny {
                code: reason::NOT_AUTHORIZED,
                reason: "no plugin admitted this client".into(),
            },
        }
    }

    fn authorize(
        &self,
        memo: &mut Memo,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision {
        self.call(memo)
            .authorize(client, action, topic, qos, retain)
    }

    fn publish(
        &self,
        memo: &mut Memo,
        client: &ClientInfo<'_>,
        message: &mut Message,
    ) -> PublishOutcome {
        let mut call = self.call(memo);
        let (topic, qos, retain) = (&message.topic, message.qos, message.retain);
        if let Decision::Deny(code) = call.authorize(client, Action::Publish, topic, qos, retain) {
            let why = "not authorized";
            return PublishOutcome::Refuse { code, why };
        }
        let mut throttle = None;
        if self.any_active(Active::RATE_LIMIT) {
            match call.rate_limit(client, RateEvent::Publish(message.payload.len() as u64)) {
                RateOutcome::Allow => {}
                RateOutcome::Reject(code) => {
                    let why = "rate limited";
                    return PublishOutcome::Refuse { code, why };
                }
                // The message itself goes through; reading pauses after it.
                RateOutcome::Throttle(d) => throttle = Some(d),
            }
        }
        if self.any_active(Active::TRANSFORM) {
            if let Some(code) = call.transform(client, message) {
                let why = "dropped by a transform plugin";
                return PublishOutcome::Refuse { code, why };
            }
        }
        PublishOutcome::Route { throttle }
    }

    fn rate_limit(
        &self,
        memo: &mut Memo,
        client: &ClientInfo<'_>,
        event: RateEvent,
    ) -> RateOutcome {
        self.call(memo).rate_limit(client, event)
    }

    fn authorizes(&self) -> bool {
        self.defaults.authorize_default == AllowDeny::Deny || self.any_active(Active::AUTHORIZE)
    }

    fn limits_rate(&self) -> bool {
        self.any_active(Active::RATE_LIMIT)
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
