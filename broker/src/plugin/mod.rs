//! The WebAssembly plugin host: loads the `[[plugin]]` chain and implements
//! [`Hooks`](crate::hooks::Hooks) and [`ClientHooks`](crate::hooks::ClientHooks) with it.
//!
//! Each hook runs through the plugins that export it, in configuration order, until one
//! decides; a plugin that defers passes the question on, and the end of the chain applies
//! the configured default. `transform` is a pipeline instead: each plugin sees the message
//! as the previous one left it, and a drop ends it. A plugin that fails (trap, deadline,
//! memory cap, nonsense answer) is logged and counted and its `on_error` applies: by
//! default `deny` for authenticate, authorize and rate-limit, and the message is kept.
//!
//! Files: `chain` (the chain and its changes), `call` (one walk of the chain for one
//! hook), `client` (the hooks a connection holds), `instance` (one loaded plugin),
//! `runtime` (the engine), `wasi_io` and `stdio` (what WASI a plugin sees), `host_api`
//! (the `host` interface), `convert` (to and from the WIT types, and checks of answers),
//! `answers` and `kept` (reused answers, shared and per connection), `stats`, `watch`.

mod answers;
mod batch;
pub mod bindings;
mod call;
mod chain;
mod client;
mod context;
/// Public for the fuzz targets (`fuzz/`): what a plugin answers is untrusted input.
pub mod convert;
mod exchange;
mod guests;
mod host_api;
mod http;
mod instance;
mod kept;
mod observe;
mod pipeline;
mod runtime;
mod stats;
mod stdio;
mod subscribe;
mod wasi_io;
mod watch;

pub use chain::PluginChain;
pub use client::PluginClient;
pub use instance::{Failure, Plugin, Shadow};
pub use stats::{Stats, LATENCY_BUCKETS_NS};
pub use watch::watch;

use std::path::PathBuf;

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
    #[error("plugin '{0}' has no shadow")]
    NoShadow(String),
}

/// The hooks of the chain: what a plugin may export besides `init`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Hook {
    Authenticate = 1,
    Authorize = 2,
    Transform = 4,
    RateLimit = 8,
    Subscribe = 16,
    Deliver = 32,
    Observe = 64,
    EnhancedAuth = 128,
}

impl Hook {
    pub const ALL: [Hook; 8] = [
        Hook::Authenticate,
        Hook::Authorize,
        Hook::Transform,
        Hook::RateLimit,
        Hook::Subscribe,
        Hook::Deliver,
        Hook::Observe,
        Hook::EnhancedAuth,
    ];

    /// The name in the WIT package, logs and the admin API.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Authenticate => "authenticate",
            Hook::Authorize => "authorize",
            Hook::Transform => "transform",
            Hook::RateLimit => "rate-limit",
            Hook::Subscribe => "subscribe",
            Hook::Deliver => "deliver",
            Hook::Observe => "observe",
            Hook::EnhancedAuth => "auth-exchange",
        }
    }
}

/// A set of [`Hook`]s, one bit each: which hooks a plugin exports, or which some
/// enabled plugin of the chain does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet(u8);

impl HookSet {
    pub fn with(self, hook: Hook) -> HookSet {
        HookSet(self.0 | hook as u8)
    }

    pub fn has(self, hook: Hook) -> bool {
        self.0 & hook as u8 != 0
    }

    pub fn union(self, other: HookSet) -> HookSet {
        HookSet(self.0 | other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn bits(self) -> u8 {
        self.0
    }

    pub(crate) fn from_bits(bits: u8) -> HookSet {
        HookSet(bits)
    }
}
