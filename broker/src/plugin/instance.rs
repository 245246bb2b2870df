//! One loaded plugin: its compiled component, which hooks it exports, a pool of live
//! instances, its limits and its counters.
//!
//! Calls are synchronous, from the connection task that needs the answer. An instance is
//! taken from the pool for one call and put back afterwards; a call that fails (trap,
//! deadline, memory cap) throws its instance away and the next call gets a fresh one, so
//! a plugin never runs on a corrupted instance. The pool never holds more instances than
//! there were calls at once, which is at most the number of runtime worker threads.
//!
//! Whether a plugin can wait for I/O is decided when it is loaded, from its imports
//! (`wasi_io::may_wait`): one that can is called inside `block_in_place`, every other
//! one directly on the connection's thread.

use super::answers::Answers;
use super::bindings::weir::plugin::types as wit;
use super::guests::{Guests, Indices};
use super::host_api::SharedState;
use super::http::HttpPolicy;
use super::runtime::{Runtime, TICK};
use super::stats::Stats;
use super::{wasi_io, Hook, HookSet, PluginError};
use crate::config::{OnError, PluginConfig, PluginsConfig};
use arc_swap::ArcSwapOption;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use wasmtime::component::{InstancePre, ResourceTable};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The bound on instantiating a plugin and running its `init`.
const INIT_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// What a store carries for its instance.
pub struct PluginCtx {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    pub plugin: Arc<str>,
    pub state: Arc<SharedState>,
    /// What the current call granted the broker besides its answer.
    pub grants: Grants,
    http: WasiHttpCtx,
    http_policy: HttpPolicy,
    /// The client and message of the current call, for 0.3.0's handles.
    pub(super) scope: super::context::Scope,
}

/// What a call allowed the broker to do without calling again.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Grants {
    /// `host.reuse-answer`: how long the answer may be reused, in ms.
    pub reuse_ms: Option<u32>,
    /// `host.lease`: events, bytes, ms.
    pub lease: Option<(u32, u64, u32)>,
}

impl PluginCtx {
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiHttpView for PluginCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        // The same table as WASI's: HTTP bodies are streams and pollables of wasi:io.
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_policy,
        }
    }
}

impl WasiView for PluginCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The memory cap, and whether it was hit (so a trap that follows is reported as what
/// it is: the plugin wanted more memory than it may have).
struct Limiter {
    memory: usize,
    hit: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }

    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Why a call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Deadline,
    Memory,
    Fuel,
    Trap(String),
    /// The plugin answered something the broker cannot use.
    Invalid(String),
    /// A fresh instance could not be made (including `init` failing on it).
    Instantiate(String),
    /// Every slot for calls that wait (`max_waiting_calls`) stayed taken until the
    /// call's deadline.
    Busy,
}

impl Failure {
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Deadline => "deadline",
            Failure::Memory => "memory",
            Failure::Fuel => "fuel",
            Failure::Trap(_) => "trap",
            Failure::Invalid(_) => "invalid",
            Failure::Instantiate(_) => "instantiate",
            Failure::Busy => "busy",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Deadline => write!(f, "deadline exceeded"),
            Failure::Memory => write!(f, "memory limit reached"),
            Failure::Fuel => write!(f, "fuel exhausted"),
            Failure::Trap(m) => write!(f, "trap: {m}"),
            Failure::Invalid(m) => write!(f, "invalid result: {m}"),
            Failure::Instantiate(m) => write!(f, "cannot instantiate: {m}"),
            Failure::Busy => write!(f, "too many calls waiting at once"),
        }
    }
}

struct Live {
    store: Store<PluginCtx>,
    guests: Guests,
}

pub struct Plugin {
    pub name: Arc<str>,
    /// The plugin imports what can wait outside the broker (timers, sockets, files):
    /// waiting needs tokio's `block_on`, which a runtime worker thread may only do
    /// inside `block_in_place`. Such plugins are called that way; the others directly.
    may_wait: bool,
    /// The hooks it exports, besides `init`.
    hooks: HookSet,
    /// SHA-256 of the `.wasm` file.
    pub hash: String,
    pub loaded_at: std::time::SystemTime,
    pub on_error: Option<OnError>,
    pub stats: Arc<Stats>,
    /// Answers this version allowed to be reused; a new version starts empty.
    pub answers: Answers,
    indices: Indices,
    pre: InstancePre<PluginCtx>,
    /// Boxed: a `Live` is a few hundred bytes, moved out and back on every call.
    #[allow(clippy::vec_box)]
    pool: Mutex<Vec<Box<Live>>>,
    config_json: String,
    deadline_ticks: u64,
    memory: usize,
    fuel: Option<u64>,
    state: Arc<SharedState>,
    http: HttpPolicy,
    /// Bounds the calls of a plugin that may wait, each holding an instance (and, on
    /// the blocking path, a thread) while it waits.
    slots: Slots,
    /// A candidate version asked what this one is asked (`weir shadow`).
    shadow: ArcSwapOption<Shadow>,
    /// Whether `shadow` is set: one relaxed load on every call rather than an
    /// `ArcSwap` load, for the plugins (almost all) that have none.
    shadowed: AtomicBool,
}

/// A candidate version of a plugin, asked the same questions right after the plugin it
/// shadows, with the same inputs. Its answers are compared and counted, never used;
/// its failures are counted and change nothing. Its host state (key-value store, token
/// buckets) is its own, so it takes nothing from the active version's.
pub struct Shadow {
    pub candidate: Plugin,
    /// What it was loaded with: the plugin's own configuration with another file
    /// (`weir shadow`), or a `shadow_of` entry's. Promotion loads this.
    pub config: PluginConfig,
    pub agreed: AtomicU64,
    pub disagreed: AtomicU64,
    pub failed: AtomicU64,
}

/// An answer a shadow's is compared with: one answer, or a batch's, answer by answer.
pub trait Compared: std::fmt::Debug {
    /// How many of these answers agree with `other`'s, and how many do not.
    fn agreement(&self, other: &Self) -> (u64, u64);
}

macro_rules! compared_whole {
    ($($t:ty),+) => {$(
        impl Compared for $t {
            fn agreement(&self, other: &Self) -> (u64, u64) {
                if self == other { (1, 0) } else { (0, 1) }
            }
        }
    )+};
}

compared_whole!(
    (),
    wit::AuthResult,
    wit::AuthStep,
    wit::Decision,
    wit::RateResult,
    wit::SubscribeResult,
    super::guests::Reshaped
);

/// A batch's answers, each compared with its counterpart; what it granted is not.
impl<T: PartialEq + std::fmt::Debug> Compared for Vec<(T, Grants)> {
    fn agreement(&self, other: &Self) -> (u64, u64) {
        if self.len() != other.len() {
            return (0, self.len().max(other.len()) as u64);
        }
        let agreed = self.iter().zip(other).filter(|(a, b)| a.0 == b.0).count();
        (agreed as u64, (self.len() - agreed) as u64)
    }
}

/// Disagreements and failures logged, at most, before only every thousandth is.
const SHADOW_LOGGED: u64 = 20;

impl Shadow {
    pub fn new(candidate: Plugin, config: PluginConfig) -> Shadow {
        Shadow {
            candidate,
            config,
            agreed: AtomicU64::new(0),
            disagreed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// Asks the candidate what `f` asked, and compares its answer with `answer`.
    fn compare<R, F>(&self, active: &str, f: &F, answer: &R, items: u32)
    where
        R: Compared,
        F: Fn(&Guests, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
    {
        let sampled = |n: u64| n <= SHADOW_LOGGED || n.is_multiple_of(1000);
        let answered = self.candidate.answer(f, items).map(|(r, _)| r);
        let (agreed, disagreed) = match &answered {
            Ok(r) => r.agreement(answer),
            Err(_) => (0, 0),
        };
        self.agreed.fetch_add(agreed, Relaxed);
        match answered {
            Ok(_) if disagreed == 0 => {}
            Ok(r) => {
                let n = self.disagreed.fetch_add(disagreed, Relaxed) + disagreed;
                if sampled(n) {
                    tracing::warn!(plugin = active, candidate = %self.candidate.hash, disagreements = n,
                        "shadow disagrees: the plugin answered {answer:?}, the candidate {r:?}");
                }
            }
            Err(e) => {
                let n = self.failed.fetch_add(items as u64, Relaxed) + items as u64;
                if sampled(n) {
                    tracing::warn!(plugin = active, candidate = %self.candidate.hash, failures = n,
                        "shadow failed where the plugin answered {answer:?}: {e}");
                }
            }
        }
    }
}

impl Plugin {
    /// Compiles (or loads from the cache), links, checks the exports and makes a first
    /// instance, running `init`: a plugin that fails any of it is not loaded.
    pub fn load(
        runtime: &Runtime,
        cfg: &PluginConfig,
        defaults: &PluginsConfig,
        state: Arc<SharedState>,
        stats: Arc<Stats>,
    ) -> Result<Plugin, PluginError> {
        let name: Arc<str> = Arc::from(cfg.name.as_str());
        let (component, hash) = runtime.compile(&cfg.name, &cfg.path)?;
        let invalid = |message: String| PluginError::Invalid {
            plugin: cfg.name.clone(),
            message,
        };
        let pre = runtime.linker.instantiate_pre(&component).map_err(|e| {
            invalid(format!(
                "its imports cannot be satisfied (built for another interface?): {e:#}"
            ))
        })?;
        let indices = Indices::of(&pre);
        let hooks = indices.hooks();
        if hooks.is_empty() {
            return Err(invalid(
                "it exports no Weir hook (authn, authz, transformer, limiter of weir:plugin@0.1.0, 0.2.0 or 0.3.0, or authenticator, subscriber, deliverer, observer of 0.2.0 or 0.3.0); is it built against another version of the interface?".into(),
            ));
        }
        let config_json = serde_json::to_string(&cfg.config)
            .map_err(|e| invalid(format!("config cannot be passed on: {e}")))?;
        let deadline_ms = cfg.deadline_ms.unwrap_or(defaults.deadline_ms);
        let fuel = cfg
            .fuel
            .or((defaults.fuel > 0).then_some(defaults.fuel))
            .filter(|f| *f > 0);
        let may_wait = wasi_io::may_wait(&runtime.engine, &component);
        let deadline = std::time::Duration::from_millis(deadline_ms);
        let plugin = Plugin {
            name,
            may_wait,
            hooks,
            hash,
            loaded_at: std::time::SystemTime::now(),
            on_error: cfg.on_error,
            stats: stats.clone(),
            answers: Answers::default(),
            indices,
            pre,
            pool: Mutex::new(Vec::new()),
            config_json,
            deadline_ticks: (deadline_ms * 1000)
                .div_ceil(TICK.as_micros() as u64)
                .max(1),
            memory: (cfg.memory_mb.unwrap_or(defaults.memory_mb) as usize) << 20,
            fuel: if runtime.fuel {
                Some(fuel.unwrap_or(u64::MAX))
            } else {
                None
            },
            http: HttpPolicy::new(cfg, deadline, stats.clone()),
            slots: Slots::new(cfg.max_waiting_calls.unwrap_or(DEFAULT_WAITING_CALLS)),
            state,
            shadow: ArcSwapOption::empty(),
            shadowed: AtomicBool::new(false),
        };
        let first = plugin.fresh().map_err(|f| PluginError::Init {
            plugin: cfg.name.clone(),
            message: match f {
                Failure::Instantiate(m) => m,
                other => other.to_string(),
            },
        })?;
        plugin.pool().push(first);
        Ok(plugin)
    }

    /// The hooks it exports, besides `init`.
    pub fn hooks(&self) -> HookSet {
        self.hooks
    }

    /// Every function it exports, `init` included, by name.
    pub fn hook_names(&self) -> Vec<&'static str> {
        let init = self.indices.has_init().then_some("init");
        init.into_iter()
            .chain(
                Hook::ALL
                    .into_iter()
                    .filter(|h| self.hooks.has(*h))
                    .map(Hook::name),
            )
            .collect()
    }

    /// Whether it is called on the blocking path (see [`wasi_io::may_wait`]).
    /// Whether it answers for several messages in one call of `hook` (0.3.0's
    /// `authz-many`, `limiter-many`, `transformer-many`).
    pub fn batches(&self, hook: super::Hook) -> bool {
        self.indices.batches(hook)
    }

    pub fn may_wait(&self) -> bool {
        self.may_wait
    }

    #[allow(clippy::vec_box)] // as `pool`
    fn pool(&self) -> MutexGuard<'_, Vec<Box<Live>>> {
        crate::sync::lock(&self.pool)
    }

    /// Sets the deadline and fuel of a call about `items` things.
    fn arm(&self, store: &mut Store<PluginCtx>, items: u32) {
        store.set_epoch_deadline(self.deadline_ticks * items.max(1) as u64);
        store.data_mut().limiter.hit = false;
        if let Some(f) = self.fuel {
            let _ = store.set_fuel(f.saturating_mul(items.max(1) as u64));
        }
    }

    fn instantiate(&self) -> Result<Live, Failure> {
        let mut wasi = WasiCtx::builder();
        let out = super::stdio::GuestOutput::new(self.name.clone(), "stdout");
        let err = super::stdio::GuestOutput::new(self.name.clone(), "stderr");
        wasi.stdout(out).stderr(err);
        let ctx = PluginCtx {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: Limiter {
                memory: self.memory,
                hit: false,
            },
            plugin: self.name.clone(),
            state: self.state.clone(),
            grants: Grants::default(),
            http: WasiHttpCtx::new(),
            http_policy: self.http.clone(),
            scope: Default::default(),
        };
        let mut store = Store::new(self.pre.engine(), ctx);
        store.limiter(|c| &mut c.limiter);
        store.epoch_deadline_trap();
        self.arm(&mut store, 1);
        // Instantiating (a Python component copies megabytes of pre-initialized heap)
        // and `init` are not hook calls: they get their own, longer bound.
        store.set_epoch_deadline(INIT_DEADLINE.as_millis() as u64 * 1000 / TICK.as_micros() as u64);
        let fail = |e: wasmtime::Error, store: &Store<PluginCtx>| match classify(&e, store) {
            Failure::Trap(m) => Failure::Instantiate(m),
            other => other,
        };
        let instance = match self.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(e, &store)),
        };
        let guests = match self.indices.load(&mut store, &instance) {
            Ok(g) => g,
            Err(e) => return Err(fail(e, &store)),
        };
        match self.indices.init(&mut store, &instance, &self.config_json) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => {
                return Err(Failure::Instantiate(format!(
                    "init refused the configuration: {message}"
                )))
            }
            Err(e) => return Err(fail(e, &store)),
        }
        Ok(Live { store, guests })
    }

    /// Makes a fresh instance. Rare (startup, after a failure), so it always takes the
    /// path on which waiting works: `init` may print, or sleep.
    fn fresh(&self) -> Result<Box<Live>, Failure> {
        let until = Instant::now() + INIT_DEADLINE;
        blocking(|| wasi_io::waiting_until(until, || self.instantiate().map(Box::new)))
    }

    /// Calls into the plugin with a pooled instance, on this thread, or inside
    /// `block_in_place` for a plugin that may wait. On failure the instance is dropped
    /// (the pooling allocator reclaims its slot) and the failure counted.
    pub fn call<R: Compared>(
        &self,
        f: impl Fn(&Guests, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
    ) -> Result<R, Failure> {
        self.call_reusable(f).map(|(r, _)| r)
    }

    /// [`Plugin::call`], also returning what the plugin allowed the broker to do without
    /// calling it again (`host.reuse-answer`, `host.lease`).
    pub fn call_reusable<R: Compared>(
        &self,
        f: impl Fn(&Guests, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
    ) -> Result<(R, Grants), Failure> {
        self.call_for(1, f)
    }

    /// A call that asks the plugin about `items` things at once (a batch of messages):
    /// counted as that many calls, with that many times a call's deadline and fuel.
    pub fn call_for<R: Compared>(
        &self,
        items: u32,
        f: impl Fn(&Guests, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
    ) -> Result<(R, Grants), Failure> {
        let answered = self.answer(&f, items);
        if let (Ok((answer, _)), true) = (&answered, self.shadowed.load(Relaxed)) {
            if let Some(shadow) = &*self.shadow.load() {
                shadow.compare(&self.name, &f, answer, items);
            }
        }
        answered
    }

    /// One call of this version alone (no shadow asked).
    fn answer<R, F>(&self, f: &F, items: u32) -> Result<(R, Grants), Failure>
    where
        F: Fn(&Guests, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
    {
        if !self.may_wait {
            return self.call_here(f, false, items);
        }
        blocking(|| {
            let Some(_slot) = self.slots.take(self.deadline()) else {
                self.stats.failed(&Failure::Busy);
                return Err(Failure::Busy);
            };
            self.call_here(f, true, items)
        })
    }

    /// Lets `shadow` be asked what this version is asked (`None`: no longer).
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) {
        self.shadowed.store(shadow.is_some(), Relaxed);
        self.shadow.store(shadow);
    }

    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.load_full()
    }

    fn deadline(&self) -> std::time::Duration {
        TICK * self.deadline_ticks as u32
    }

    /// One call on this thread; `waiting`: on the blocking path, where what the
    /// plugin waits for is bounded by the call's deadline.
    fn call_here<R>(
        &self,
        f: &impl Fn(&Guests, &mut Store<PluginCtx>) -> wasmtime::Result<R>,
        waiting: bool,
        items: u32,
    ) -> Result<(R, Grants), Failure> {
        let pooled = self.pool().pop();
        let mut live = match pooled {
            Some(l) => l,
            None => self.fresh().inspect_err(|e| self.stats.failed(e))?,
        };
        self.arm(&mut live.store, items);
        live.store.data_mut().grants = Grants::default();
        // Reading the clock twice was a tenth of an empty call: only a sample of calls
        // is timed, and those that wait, whose deadline needs the start.
        let started = (waiting || super::stats::sampled()).then(Instant::now);
        // A host function that panics (it should not) fails this call, not the broker.
        let live_ = &mut *live;
        let mut run = || catch_unwind(AssertUnwindSafe(|| f(&live_.guests, &mut live_.store)));
        let outcome = match (waiting, started) {
            (true, Some(t)) => wasi_io::waiting_until(t + self.deadline() * items, run),
            _ => run(),
        };
        self.stats
            .called(items, started.map(|t| t.elapsed() / items.max(1)));
        let failure = match outcome {
            Ok(Ok(v)) => {
                let grants = std::mem::take(&mut live.store.data_mut().grants);
                self.pool().push(live);
                return Ok((v, grants));
            }
            Ok(Err(e)) => classify(&e, &live.store),
            Err(panic) => Failure::Trap(format!(
                "host panicked during the call: {}",
                panic_message(&panic)
            )),
        };
        self.stats.failed(&failure);
        Err(failure)
    }
}

/// The default of `max_waiting_calls`.
const DEFAULT_WAITING_CALLS: usize = 64;

/// A counting semaphore for threads that may block (the calls that take a slot run on
/// the blocking path already).
struct Slots {
    free: Mutex<usize>,
    freed: std::sync::Condvar,
}

struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            free: Mutex::new(n),
            freed: std::sync::Condvar::new(),
        }
    }

    /// A slot, waiting for one up to `within`.
    fn take(&self, within: std::time::Duration) -> Option<Slot<'_>> {
        let free = crate::sync::lock(&self.free);
        let (mut free, _) = self
            .freed
            .wait_timeout_while(free, within, |n| *n == 0)
            .unwrap_or_else(|p| p.into_inner());
        if *free == 0 {
            return None;
        }
        *free -= 1;
        Some(Slot(self))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *crate::sync::lock(&self.0.free) += 1;
        self.0.freed.notify_one();
    }
}

/// Runs `f` where a tokio `block_on` is allowed: in `block_in_place` on a multi-thread
/// runtime worker, directly elsewhere (startup, benchmarks).
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    let f = || wasi_io::allowing_blocking(f);
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn classify(e: &wasmtime::Error, store: &Store<PluginCtx>) -> Failure {
    if store.data().limiter.hit {
        return Failure::Memory;
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Failure::Deadline,
        Some(Trap::OutOfFuel) => Failure::Fuel,
        Some(t) => Failure::Trap(t.to_string()),
        None => Failure::Trap(format!("{e:#}")),
    }
}
