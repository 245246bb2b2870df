//! The hooks a live instance exports, whichever version of `weir:plugin` it was built
//! against. 0.2.0 and 0.3.0 kept every type of the version before, so a hook whose
//! signature did not change is called the same way in every version; the hooks that
//! take a client or a message changed in 0.3.0 to take handles, and are called with
//! the record (0.1.0, 0.2.0) or the handles (0.3.0) here, so the callers do not care.

use super::bindings::exports::weir::plugin as v3;
use super::bindings::v0_1::exports::weir::plugin as v1;
use super::bindings::v0_2::exports::weir::plugin as v2;
use super::bindings::weir::plugin::types as wit;
use super::context;
use super::convert;
use super::instance::{Grants, PluginCtx};
use super::{Hook, HookSet};
use crate::message::Message;
use std::cell::OnceCell;
use std::sync::Arc;
use wasmtime::component::{Instance, InstancePre};
use wasmtime::Store;

/// A hook there since 0.1.0, from whichever version a component was built against.
pub enum Since01<A, B, C> {
    V1(A),
    V2(B),
    V3(C),
}

/// A hook there since 0.2.0.
pub enum Since02<B, C> {
    V2(B),
    V3(C),
}

/// Looks an interface up under its 0.3.0 name, then its older ones.
macro_rules! index01 {
    ($pre:expr, $iface:ident) => {
        v3::$iface::GuestIndices::new($pre)
            .map(Since01::V3)
            .or_else(|_| v2::$iface::GuestIndices::new($pre).map(Since01::V2))
            .or_else(|_| v1::$iface::GuestIndices::new($pre).map(Since01::V1))
            .ok()
    };
}

macro_rules! index02 {
    ($pre:expr, $iface:ident) => {
        v3::$iface::GuestIndices::new($pre)
            .map(Since02::V3)
            .or_else(|_| v2::$iface::GuestIndices::new($pre).map(Since02::V2))
            .ok()
    };
}

/// Runs the same expression on whichever version `$hook` is.
macro_rules! each {
    ($hook:expr, $g:ident => $e:expr) => {
        match $hook {
            Since01::V1($g) => $e.map(Since01::V1),
            Since01::V2($g) => $e.map(Since01::V2),
            Since01::V3($g) => $e.map(Since01::V3),
        }
    };
}

macro_rules! each02 {
    ($hook:expr, $g:ident => $e:expr) => {
        match $hook {
            Since02::V2($g) => $e.map(Since02::V2),
            Since02::V3($g) => $e.map(Since02::V3),
        }
    };
}

/// Calls a function whose signature every version shares.
macro_rules! same {
    ($hook:expr, $g:ident => $e:expr) => {
        match $hook {
            Since01::V1($g) => $e,
            Since01::V2($g) => $e,
            Since01::V3($g) => $e,
        }
    };
}

macro_rules! same02 {
    ($hook:expr, $g:ident => $e:expr) => {
        match $hook {
            Since02::V2($g) => $e,
            Since02::V3($g) => $e,
        }
    };
}

/// Where each interface a plugin may export is in its component, if it exports it.
pub struct Indices {
    lifecycle: Option<
        Since01<
            v1::lifecycle::GuestIndices,
            v2::lifecycle::GuestIndices,
            v3::lifecycle::GuestIndices,
        >,
    >,
    authn:
        Option<Since01<v1::authn::GuestIndices, v2::authn::GuestIndices, v3::authn::GuestIndices>>,
    authz:
        Option<Since01<v1::authz::GuestIndices, v2::authz::GuestIndices, v3::authz::GuestIndices>>,
    transformer: Option<
        Since01<
            v1::transformer::GuestIndices,
            v2::transformer::GuestIndices,
            v3::transformer::GuestIndices,
        >,
    >,
    limiter: Option<
        Since01<v1::limiter::GuestIndices, v2::limiter::GuestIndices, v3::limiter::GuestIndices>,
    >,
    subscriber: Option<Since02<v2::subscriber::GuestIndices, v3::subscriber::GuestIndices>>,
    deliverer: Option<Since02<v2::deliverer::GuestIndices, v3::deliverer::GuestIndices>>,
    observer: Option<Since02<v2::observer::GuestIndices, v3::observer::GuestIndices>>,
    authenticator:
        Option<Since02<v2::authenticator::GuestIndices, v3::authenticator::GuestIndices>>,
    authz_many: Option<v3::authz_many::GuestIndices>,
    limiter_many: Option<v3::limiter_many::GuestIndices>,
    transformer_many: Option<v3::transformer_many::GuestIndices>,
}

impl Indices {
    pub fn of(pre: &InstancePre<PluginCtx>) -> Indices {
        Indices {
            lifecycle: index01!(pre, lifecycle),
            authn: index01!(pre, authn),
            authz: index01!(pre, authz),
            transformer: index01!(pre, transformer),
            limiter: index01!(pre, limiter),
            subscriber: index02!(pre, subscriber),
            deliverer: index02!(pre, deliverer),
            observer: index02!(pre, observer),
            authenticator: index02!(pre, authenticator),
            authz_many: v3::authz_many::GuestIndices::new(pre).ok(),
            limiter_many: v3::limiter_many::GuestIndices::new(pre).ok(),
            transformer_many: v3::transformer_many::GuestIndices::new(pre).ok(),
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

    /// Whether the plugin exports the batch form of `hook` (0.3.0's `*-many`).
    pub fn batches(&self, hook: Hook) -> bool {
        match hook {
            Hook::Authorize => self.authz_many.is_some(),
            Hook::RateLimit => self.limiter_many.is_some(),
            Hook::Transform => self.transformer_many.is_some(),
            _ => false,
        }
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
        let s = store;
        Ok(Guests {
            authn: (self.authn.as_ref())
                .map(|i| each!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            authz: (self.authz.as_ref())
                .map(|i| each!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            transformer: (self.transformer.as_ref())
                .map(|i| each!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            limiter: (self.limiter.as_ref())
                .map(|i| each!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            subscriber: (self.subscriber.as_ref())
                .map(|i| each02!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            deliverer: (self.deliverer.as_ref())
                .map(|i| each02!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            observer: (self.observer.as_ref())
                .map(|i| each02!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            authenticator: (self.authenticator.as_ref())
                .map(|i| each02!(i, i => i.load(&mut *s, instance)))
                .transpose()?,
            authz_many: (self.authz_many.as_ref())
                .map(|i| i.load(&mut *s, instance))
                .transpose()?,
            limiter_many: (self.limiter_many.as_ref())
                .map(|i| i.load(&mut *s, instance))
                .transpose()?,
            transformer_many: (self.transformer_many.as_ref())
                .map(|i| i.load(&mut *s, instance))
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
            Some(i) => same!(i, i => i.load(&mut *store, instance)?.call_init(store, config)),
        }
    }
}

/// The hooks a live instance exports.
pub struct Guests {
    pub authn: Option<Since01<v1::authn::Guest, v2::authn::Guest, v3::authn::Guest>>,
    pub authz: Option<Since01<v1::authz::Guest, v2::authz::Guest, v3::authz::Guest>>,
    pub transformer:
        Option<Since01<v1::transformer::Guest, v2::transformer::Guest, v3::transformer::Guest>>,
    pub limiter: Option<Since01<v1::limiter::Guest, v2::limiter::Guest, v3::limiter::Guest>>,
    pub subscriber: Option<Since02<v2::subscriber::Guest, v3::subscriber::Guest>>,
    pub deliverer: Option<Since02<v2::deliverer::Guest, v3::deliverer::Guest>>,
    pub observer: Option<Since02<v2::observer::Guest, v3::observer::Guest>>,
    pub authenticator: Option<Since02<v2::authenticator::Guest, v3::authenticator::Guest>>,
    /// 0.3.0's batch forms, where the plugin exports them.
    pub authz_many: Option<v3::authz_many::Guest>,
    pub limiter_many: Option<v3::limiter_many::Guest>,
    pub transformer_many: Option<v3::transformer_many::Guest>,
}

type S<'a> = &'a mut Store<PluginCtx>;

/// The client a hook call is about: a record for 0.1.0 and 0.2.0 guests, the same
/// record behind a handle for 0.3.0 ones.
pub type Client = Arc<wit::Client>;

/// What one plugin made of a message it was asked to transform or deliver.
#[derive(Debug)]
pub enum Reshaped {
    Keep,
    Drop(Option<u8>),
    /// 0.1.0 and 0.2.0: a whole new message.
    Replace(wit::Message),
    /// 0.3.0: the message as the plugin's edits left it.
    Edited(Message),
    /// 0.3.0: an edit that could not be made, and why.
    Invalid(String),
}

/// Compared for a shadow: a 0.2.0 replacement and a 0.3.0 edit that make the same
/// message agree, so a plugin can be shadowed by its port to the next version.
impl PartialEq for Reshaped {
    fn eq(&self, other: &Reshaped) -> bool {
        use Reshaped::*;
        match (self, other) {
            (Keep, Keep) => true,
            (Drop(a), Drop(b)) => a == b,
            (Replace(a), Replace(b)) => a == b,
            (Edited(a), Edited(b)) => a == b,
            (Replace(r), Edited(m)) | (Edited(m), Replace(r)) => convert::message(m) == *r,
            (Invalid(a), Invalid(b)) => a == b,
            _ => false,
        }
    }
}

/// A message for a reshaping hook: the broker's, and its record for 0.1.0 and 0.2.0
/// guests, made the first time one is asked.
pub struct Reshaping<'m> {
    pub message: &'m Message,
    pub record: OnceCell<wit::Message>,
}

impl<'m> Reshaping<'m> {
    pub fn new(message: &'m Message) -> Reshaping<'m> {
        Reshaping {
            message,
            record: OnceCell::new(),
        }
    }

    fn record(&self) -> &wit::Message {
        self.record.get_or_init(|| convert::message(self.message))
    }
}

impl Since01<v1::authn::Guest, v2::authn::Guest, v3::authn::Guest> {
    pub fn call_authenticate(
        &self,
        s: S<'_>,
        info: &wit::ConnectInfo,
    ) -> wasmtime::Result<wit::AuthResult> {
        same!(self, g => g.call_authenticate(s, info))
    }
}

impl Since01<v1::authz::Guest, v2::authz::Guest, v3::authz::Guest> {
    pub fn call_authorize(
        &self,
        s: S<'_>,
        client: &Client,
        access: &wit::Access,
    ) -> wasmtime::Result<wit::Decision> {
        match self {
            Since01::V1(g) => g.call_authorize(s, client, access),
            Since01::V2(g) => g.call_authorize(s, client, access),
            Since01::V3(g) => {
                let c = s.data_mut().scope.enter(client);
                g.call_authorize(s, c, access)
            }
        }
    }
}

impl Since01<v1::transformer::Guest, v2::transformer::Guest, v3::transformer::Guest> {
    pub fn call_transform(
        &self,
        s: S<'_>,
        client: &Client,
        message: &Reshaping<'_>,
    ) -> wasmtime::Result<Reshaped> {
        let legacy = |r| match r {
            wit::TransformResult::Keep => Reshaped::Keep,
            wit::TransformResult::Drop(code) => Reshaped::Drop(Some(code)),
            wit::TransformResult::Replace(m) => Reshaped::Replace(m),
        };
        match self {
            Since01::V1(g) => g.call_transform(s, client, message.record()).map(legacy),
            Since01::V2(g) => g.call_transform(s, client, message.record()).map(legacy),
            Since01::V3(g) => {
                let scope = &mut s.data_mut().scope;
                let (c, m) = (scope.enter(client), scope.enter_message(message.message));
                let header = context::header(message.message);
                let outcome = g.call_transform(&mut *s, c, m, &header);
                applied(
                    s,
                    outcome.map(|o| match o {
                        wit::TransformOutcome::Keep => Some(Reshaped::Keep),
                        wit::TransformOutcome::Drop(code) => Some(Reshaped::Drop(Some(code))),
                        wit::TransformOutcome::Apply => None,
                    }),
                )
            }
        }
    }
}

/// A 0.3.0 answer (`None`: `apply`) with the call's edits in it if it applies them;
/// the edits forgotten otherwise.
fn applied(s: S<'_>, answer: wasmtime::Result<Option<Reshaped>>) -> wasmtime::Result<Reshaped> {
    let scope = &mut s.data_mut().scope;
    let answer = match answer {
        Ok(None) => Ok(match scope.edited(0) {
            Ok(m) => Reshaped::Edited(m),
            Err(why) => Reshaped::Invalid(why),
        }),
        other => other.map(|r| r.unwrap_or(Reshaped::Keep)),
    };
    scope.leave_messages();
    answer
}

impl Since01<v1::limiter::Guest, v2::limiter::Guest, v3::limiter::Guest> {
    pub fn call_rate_limit(
        &self,
        s: S<'_>,
        client: &Client,
        event: wit::Event,
    ) -> wasmtime::Result<wit::RateResult> {
        match self {
            Since01::V1(g) => g.call_rate_limit(s, client, event),
            Since01::V2(g) => g.call_rate_limit(s, client, event),
            Since01::V3(g) => {
                let c = s.data_mut().scope.enter(client);
                g.call_rate_limit(s, c, event)
            }
        }
    }
}

impl Since02<v2::subscriber::Guest, v3::subscriber::Guest> {
    pub fn call_subscribe(
        &self,
        s: S<'_>,
        client: &Client,
        subscription: &wit::Subscription,
    ) -> wasmtime::Result<wit::SubscribeResult> {
        match self {
            Since02::V2(g) => g.call_subscribe(s, client, subscription),
            Since02::V3(g) => {
                let c = s.data_mut().scope.enter(client);
                g.call_subscribe(s, c, subscription)
            }
        }
    }
}

impl Since02<v2::deliverer::Guest, v3::deliverer::Guest> {
    pub fn call_deliver(
        &self,
        s: S<'_>,
        client: &Client,
        message: &Reshaping<'_>,
    ) -> wasmtime::Result<Reshaped> {
        match self {
            Since02::V2(g) => {
                let answer = g.call_deliver(s, client, message.record());
                answer.map(|r| match r {
                    wit::DeliverResult::Keep => Reshaped::Keep,
                    wit::DeliverResult::Drop => Reshaped::Drop(None),
                    wit::DeliverResult::Replace(m) => Reshaped::Replace(m),
                })
            }
            Since02::V3(g) => {
                let scope = &mut s.data_mut().scope;
                let (c, m) = (scope.enter(client), scope.enter_message(message.message));
                let header = context::header(message.message);
                let outcome = g.call_deliver(&mut *s, c, m, &header);
                applied(
                    s,
                    outcome.map(|o| match o {
                        wit::DeliverOutcome::Keep => Some(Reshaped::Keep),
                        wit::DeliverOutcome::Drop => Some(Reshaped::Drop(None)),
                        wit::DeliverOutcome::Apply => None,
                    }),
                )
            }
        }
    }
}

impl Since02<v2::observer::Guest, v3::observer::Guest> {
    pub fn call_observe(&self, s: S<'_>, events: &[wit::TimedEvent]) -> wasmtime::Result<()> {
        same02!(self, g => g.call_observe(s, events))
    }
}

impl Since02<v2::authenticator::Guest, v3::authenticator::Guest> {
    pub fn call_auth_start(
        &self,
        s: S<'_>,
        request: &wit::AuthRequest,
    ) -> wasmtime::Result<wit::AuthStep> {
        same02!(self, g => g.call_auth_start(s, request))
    }

    pub fn call_auth_continue(
        &self,
        s: S<'_>,
        response: &wit::AuthResponse,
    ) -> wasmtime::Result<wit::AuthStep> {
        same02!(self, g => g.call_auth_continue(s, response))
    }
}

/// What a batch call's answer granted, as a single call's grants.
fn grants(g: &wit::Grants) -> Grants {
    Grants {
        reuse_ms: g.reuse_ms,
        lease: g.lease.as_ref().map(|l| (l.events, l.bytes, l.ttl_ms)),
    }
}

/// The batch forms: one call for several messages, through 0.3.0's `*-many` exports
/// where the plugin has them, else the single hook once per message within the same
/// call. Each answer comes with what it granted.
impl Guests {
    pub fn authorize_each(
        &self,
        s: S<'_>,
        client: &Client,
        messages: &[&Message],
    ) -> wasmtime::Result<Vec<(wit::Decision, Grants)>> {
        if let Some(g) = &self.authz_many {
            let c = s.data_mut().scope.enter(client);
            let answers = g.call_authorize_many(s, c, &convert::publishes(messages))?;
            return Ok(answers.into_iter().map(|(d, g)| (d, grants(&g))).collect());
        }
        let each = |m: &&Message| {
            let a = convert::access(crate::hooks::Action::Publish, &m.topic, m.qos, m.retain);
            let d = match &self.authz {
                Some(h) => h.call_authorize(s, client, &a)?,
                None => wit::Decision::Defer,
            };
            Ok((d, std::mem::take(&mut s.data_mut().grants)))
        };
        messages.iter().map(each).collect()
    }

    /// `rate-limit-many`. The chain asks a limiter without it once per publish, each
    /// after what its leases covered; this asks it about each in turn only for a
    /// shadow, whose tokens are its own.
    pub fn rate_limit_many(
        &self,
        s: S<'_>,
        client: &Client,
        sizes: &[u64],
    ) -> wasmtime::Result<Vec<(wit::RateResult, Grants)>> {
        let Some(g) = &self.limiter_many else {
            let each = |bytes: &u64| {
                let r = match &self.limiter {
                    Some(h) => h.call_rate_limit(s, client, wit::Event::Publish(*bytes))?,
                    None => wit::RateResult::Allow,
                };
                Ok((r, std::mem::take(&mut s.data_mut().grants)))
            };
            return sizes.iter().map(each).collect();
        };
        let c = s.data_mut().scope.enter(client);
        let answers = g.call_rate_limit_many(s, c, sizes)?;
        Ok(answers.into_iter().map(|(r, g)| (r, grants(&g))).collect())
    }

    pub fn transform_each(
        &self,
        s: S<'_>,
        client: &Client,
        messages: &[&Message],
    ) -> wasmtime::Result<Vec<(Reshaped, Grants)>> {
        let Some(g) = &self.transformer_many else {
            let each = |m: &&Message| {
                let r = match &self.transformer {
                    Some(h) => h.call_transform(s, client, &Reshaping::new(m))?,
                    None => Reshaped::Keep,
                };
                Ok((r, std::mem::take(&mut s.data_mut().grants)))
            };
            return messages.iter().map(each).collect();
        };
        let scope = &mut s.data_mut().scope;
        let c = scope.enter(client);
        let run = scope.enter_run(messages.iter().copied());
        let answers = g.call_transform_many(&mut *s, c, run, &convert::message_run(messages));
        let scope = &mut s.data_mut().scope;
        let answers = answers.map(|list| edited_as_answered(scope, list));
        scope.leave_messages();
        answers
    }
}

/// A `transform-many` answer made: each message edited as its answer says. The edits of
/// a message a later answer repeats (`same-as`) are kept to be made again, with its
/// properties before and after them (shared by the messages whose sets were the same).
fn edited_as_answered(
    scope: &mut context::Scope,
    list: Vec<(wit::EditedOutcome, wit::Grants)>,
) -> Vec<(Reshaped, Grants)> {
    use wit::EditedOutcome as O;
    let repeated: Vec<u32> = list
        .iter()
        .filter_map(|(o, _)| match o {
            O::SameAs(n) => Some(*n),
            _ => None,
        })
        .collect();
    let mut kept: Vec<Repeated> = Vec::new();
    let made = |m: Result<Message, String>| match m {
        Ok(m) => Reshaped::Edited(m),
        Err(why) => Reshaped::Invalid(why),
    };
    let each = |(i, (o, g))| {
        let r = match o {
            O::Keep => Reshaped::Keep,
            O::Drop(code) => Reshaped::Drop(Some(code)),
            O::Apply(edits) if repeated.contains(&(i as u32)) => {
                let before = scope.properties_of(i).unwrap_or_default();
                let r = made(scope.edited_by(i, edits.clone()));
                let after = match &r {
                    Reshaped::Edited(m) => Some(m.properties.clone()),
                    _ => None,
                };
                kept.push(Repeated {
                    at: i,
                    edits,
                    before,
                    after,
                });
                r
            }
            O::Apply(edits) => made(scope.edited_by(i, edits)),
            O::SameAs(n) => match kept.iter().find(|k| k.at == n as usize) {
                Some(k) => made(scope.edited_like(i, &k.edits, (&k.before, k.after.as_ref()))),
                None => Reshaped::Invalid(format!(
                    "answered same-as({n}): message {n} is not an earlier one answered apply"
                )),
            },
        };
        (r, grants(&g))
    };
    list.into_iter().enumerate().map(each).collect()
}

/// An `apply` answer a later `same-as` repeats.
struct Repeated {
    at: usize,
    edits: Vec<wit::Edit>,
    before: crate::codec::Properties,
    after: Option<crate::codec::Properties>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::QoS;

    fn message(topic: &str) -> Message {
        Message {
            topic: Arc::from(topic),
            payload: bytes::Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: Default::default(),
            expires_at: None,
            publisher: None,
            origin: None,
            received: None,
        }
    }

    fn no_grants() -> wit::Grants {
        wit::Grants {
            reuse_ms: None,
            lease: None,
        }
    }

    fn tags(r: &Reshaped) -> Vec<(String, String)> {
        match r {
            Reshaped::Edited(m) => m.properties.user_properties.clone(),
            _ => panic!("not edited"),
        }
    }

    #[test]
    fn same_as_repeats_an_earlier_apply_and_nothing_else() {
        let mut run: Vec<Message> = ["a", "b", "c", "d", "e"].into_iter().map(message).collect();
        run[2]
            .properties
            .user_properties
            .push(("own".into(), "1".into()));
        let mut scope = context::Scope::default();
        let _ = scope.enter_run(run.iter());
        let tag = wit::Edit::AddUserProperty(wit::Pair {
            name: "checked".into(),
            value: "yes".into(),
        });
        let answers = vec![
            (
                wit::EditedOutcome::Apply(vec![tag, wit::Edit::Qos(0)]),
                no_grants(),
            ),
            (wit::EditedOutcome::SameAs(0), no_grants()),
            (wit::EditedOutcome::SameAs(0), no_grants()),
            (wit::EditedOutcome::SameAs(4), no_grants()),
            (wit::EditedOutcome::Keep, no_grants()),
        ];
        let made = edited_as_answered(&mut scope, answers);
        let checked = ("checked".to_string(), "yes".to_string());
        assert_eq!(tags(&made[0].0), vec![checked.clone()]);
        assert_eq!(tags(&made[1].0), vec![checked.clone()]);
        let (Reshaped::Edited(first), Reshaped::Edited(second)) = (&made[0].0, &made[1].0) else {
            panic!("not edited");
        };
        // Alike before, so one set after; the other edits are made to each.
        assert!(first.properties.shares(&second.properties));
        assert_eq!((first.qos, second.qos), (QoS::AtMostOnce, QoS::AtMostOnce));
        // Its own properties kept, the tag added to them.
        let own = ("own".to_string(), "1".to_string());
        assert_eq!(tags(&made[2].0), vec![own, checked]);
        assert!(matches!(&made[3].0, Reshaped::Invalid(why) if why.contains("same-as(4)")));
        assert!(matches!(made[4].0, Reshaped::Keep));
    }
}
