//! The hooks a live instance exports, whichever version of `weir:plugin` it was built
//! against. A hook of 0.1.0 and its 0.2.0 twin take and give the same values (0.2.0
//! changed none of 0.1.0's types), so each hook is one type here whose calls do not
//! care which it is; hooks new in 0.2.0 exist only there.

use super::bindings::exports::weir::plugin as v2;
use super::bindings::v0_1::exports::weir::plugin as v1;
use super::bindings::weir::plugin::types as wit;
use super::instance::PluginCtx;
use super::{Hook, HookSet};
use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

/// A hook's function in an instance, from either version.
pub enum Either<A, B> {
    V1(A),
    V2(B),
}

/// Where a hook's interface is in a component, from either version.
enum Index<A, B> {
    V1(A),
    V2(B),
}

/// Looks an interface up under its 0.2.0 name, then its 0.1.0 one.
macro_rules! index_of {
    ($pre:expr, $iface:ident) => {
        v2::$iface::GuestIndices::new($pre)
            .map(Index::V2)
            .or_else(|_| v1::$iface::GuestIndices::new($pre).map(Index::V1))
            .ok()
    };
}

/// Loads a hook's functions from an instance by its index.
macro_rules! load {
    ($index:expr, $store:expr, $instance:expr) => {
        $index
            .as_ref()
            .map(|i| match i {
                Index::V1(i) => i.load(&mut *$store, $instance).map(Either::V1),
                Index::V2(i) => i.load(&mut *$store, $instance).map(Either::V2),
            })
            .transpose()?
    };
}

/// Where each interface a plugin may export is in its component, if it exports it.
pub struct Indices {
    lifecycle: Option<Index<v1::lifecycle::GuestIndices, v2::lifecycle::GuestIndices>>,
    authn: Option<Index<v1::authn::GuestIndices, v2::authn::GuestIndices>>,
    authz: Option<Index<v1::authz::GuestIndices, v2::authz::GuestIndices>>,
    transformer: Option<Index<v1::transformer::GuestIndices, v2::transformer::GuestIndices>>,
    limiter: Option<Index<v1::limiter::GuestIndices, v2::limiter::GuestIndices>>,
    subscriber: Option<v2::subscriber::GuestIndices>,
    deliverer: Option<v2::deliverer::GuestIndices>,
    observer: Option<v2::observer::GuestIndices>,
    authenticator: Option<v2::authenticator::GuestIndices>,
}

impl Indices {
    pub fn of(pre: &InstancePre<PluginCtx>) -> Indices {
        Indices {
            lifecycle: index_of!(pre, lifecycle),
            authn: index_of!(pre, authn),
            authz: index_of!(pre, authz),
            transformer: index_of!(pre, transformer),
            limiter: index_of!(pre, limiter),
            subscriber: v2::subscriber::GuestIndices::new(pre).ok(),
            deliverer: v2::deliverer::GuestIndices::new(pre).ok(),
            observer: v2::observer::GuestIndices::new(pre).ok(),
            authenticator: v2::authenticator::GuestIndices::new(pre).ok(),
        }
    }

    /// The hooks of the chain among them.
    pub fn hooks(&self) -> HookSet {
        [
            (self.authn.is_some(), Hook::Authenticate),
            (self.authz.is_some(), Hook::Authorize),
            (self.transformer.is_some(), Hook::Transform),
            (self.limiter.is_some(), Hook::RateLimit),
            (self.subscriber.is_some(), Hook::Subscribe),
            (self.deliverer.is_some(), Hook::Deliver),
            (self.observer.is_some(), Hook::Observe),
            (self.authenticator.is_some(), Hook::EnhancedAuth),
        ]
        .into_iter()
        .filter(|(has, _)| *has)
        .fold(HookSet::default(), |set, (_, h)| set.with(h))
    }

    pub fn has_init(&self) -> bool {
        self.lifecycle.is_some()
    }

    /// The hooks' functions in a fresh instance.
    pub fn load(
        &self,
        store: &mut Store<PluginCtx>,
        instance: &Instance,
    ) -> wasmtime::Result<Guests> {
        Ok(Guests {
            authn: load!(self.authn, store, instance),
            authz: load!(self.authz, store, instance),
            transformer: load!(self.transformer, store, instance),
            limiter: load!(self.limiter, store, instance),
            subscriber: (self.subscriber.as_ref())
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            deliverer: (self.deliverer.as_ref())
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            observer: (self.observer.as_ref())
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
            authenticator: (self.authenticator.as_ref())
                .map(|i| i.load(&mut *store, instance))
                .transpose()?,
        })
    }

    /// Runs `init` in a fresh instance, if the plugin exports it.
    pub fn init(
        &self,
        store: &mut Store<PluginCtx>,
        instance: &Instance,
        config: &str,
    ) -> wasmtime::Result<Result<(), String>> {
        match &self.lifecycle {
            None => Ok(Ok(())),
            Some(Index::V1(i)) => i.load(&mut *store, instance)?.call_init(store, config),
            Some(Index::V2(i)) => i.load(&mut *store, instance)?.call_init(store, config),
        }
    }
}

/// The hooks a live instance exports.
pub struct Guests {
    pub authn: Option<Either<v1::authn::Guest, v2::authn::Guest>>,
    pub authz: Option<Either<v1::authz::Guest, v2::authz::Guest>>,
    pub transformer: Option<Either<v1::transformer::Guest, v2::transformer::Guest>>,
    pub limiter: Option<Either<v1::limiter::Guest, v2::limiter::Guest>>,
    pub subscriber: Option<v2::subscriber::Guest>,
    pub deliverer: Option<v2::deliverer::Guest>,
    pub observer: Option<v2::observer::Guest>,
    pub authenticator: Option<v2::authenticator::Guest>,
}

type S<'a> = &'a mut Store<PluginCtx>;

impl Either<v1::authn::Guest, v2::authn::Guest> {
    pub fn call_authenticate(
        &self,
        s: S<'_>,
        info: &wit::ConnectInfo,
    ) -> wasmtime::Result<wit::AuthResult> {
        match self {
            Either::V1(g) => g.call_authenticate(s, info),
            Either::V2(g) => g.call_authenticate(s, info),
        }
    }
}

impl Either<v1::authz::Guest, v2::authz::Guest> {
    pub fn call_authorize(
        &self,
        s: S<'_>,
        client: &wit::Client,
        access: &wit::Access,
    ) -> wasmtime::Result<wit::Decision> {
        match self {
            Either::V1(g) => g.call_authorize(s, client, access),
            Either::V2(g) => g.call_authorize(s, client, access),
        }
    }
}

impl Either<v1::transformer::Guest, v2::transformer::Guest> {
    pub fn call_transform(
        &self,
        s: S<'_>,
        client: &wit::Client,
        message: &wit::Message,
    ) -> wasmtime::Result<wit::TransformResult> {
        match self {
            Either::V1(g) => g.call_transform(s, client, message),
            Either::V2(g) => g.call_transform(s, client, message),
        }
    }
}

impl Either<v1::limiter::Guest, v2::limiter::Guest> {
    pub fn call_rate_limit(
        &self,
        s: S<'_>,
        client: &wit::Client,
        event: wit::Event,
    ) -> wasmtime::Result<wit::RateResult> {
        match self {
            Either::V1(g) => g.call_rate_limit(s, client, event),
            Either::V2(g) => g.call_rate_limit(s, client, event),
        }
    }
}
