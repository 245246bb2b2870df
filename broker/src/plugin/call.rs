//! One hook call's walk of the chain. [`Call::walk`] is the one loop every hook runs:
//! the enabled plugins that export the hook, in order, each asked (or answered from
//! what was kept) until one decides, a failure handed to the plugin's `on_error`. What
//! differs per hook is how a plugin is asked and what its answer means.

use super::answers::{self, Answer, Question};
use super::bindings::weir::plugin::types as wit;
use super::chain::{Chain, PluginChain};
use super::convert;
use super::guests::Client;
use super::instance::{Failure, Plugin};
use super::kept::Kept;
use super::Hook;
use crate::codec::{QoS, ReasonCode};
use crate::config::{AllowDeny, AuthDefault, OnError};
use crate::hooks::{
    listener_rule, Action, AuthOutcome, ClientInfo, ConnectInfo, Decision, RateEvent, RateOutcome,
};
use std::time::Duration;

/// Longest a plugin may throttle a client in one answer; more is an invalid answer.
const MAX_THROTTLE: Duration = Duration::from_secs(3600);

/// What asking one plugin came to.
pub(super) enum Step<T> {
    /// Nothing decided: ask the next plugin.
    Next,
    Done(T),
    Failed(Failure),
}

impl<T> From<Result<Option<T>, Failure>> for Step<T> {
    fn from(r: Result<Option<T>, Failure>) -> Step<T> {
        match r {
            Ok(Some(t)) => Step::Done(t),
            Ok(None) => Step::Next,
            Err(f) => Step::Failed(f),
        }
    }
}

/// One hook call's view of the chain: the plugins as they are now, and what the calling
/// connection kept of their answers, or, for a call with no connection behind it, an
/// empty `Kept` that keeps nothing (it has no plugin slots until `check`).
pub(super) struct Call<'c> {
    chain: &'c PluginChain,
    plugins: arc_swap::Guard<Chain>,
    kept: Option<&'c mut Kept>,
    none: Kept,
    /// The calling connection's client record, converted once for the connection.
    record: Option<&'c Client>,
}

impl<'c> Call<'c> {
    pub(super) fn chain(&self) -> &PluginChain {
        self.chain
    }

    /// The enabled plugin named `name`, if it exports `hook`.
    pub(super) fn find(&self, hook: Hook, name: &str) -> Option<&Plugin> {
        let found = self.plugins.iter().find(|p| &*p.name == name);
        found
            .filter(|p| p.hooks().has(hook) && p.stats.enabled())
            .map(|p| &**p)
    }

    pub(super) fn new(
        chain: &'c PluginChain,
        plugins: arc_swap::Guard<Chain>,
        kept: Option<&'c mut Kept>,
    ) -> Call<'c> {
        Call {
            chain,
            plugins,
            kept,
            none: Kept::default(),
            record: None,
        }
    }

    /// The call is on behalf of the connection whose client record this is.
    pub(super) fn for_record(mut self, record: &'c Client) -> Call<'c> {
        self.record = Some(record);
        self
    }

    /// What plugins are handed as the client: the connection's record, or one made
    /// for this call (kept in `own` for the next plugin).
    pub(super) fn client_record(&self) -> Record<'c> {
        Record {
            pre: self.record,
            own: None,
        }
    }

    /// What a batch walks: the chain, its plugins as this call sees them, and what the
    /// connection kept.
    pub(super) fn parts(&mut self) -> (&'c PluginChain, &[std::sync::Arc<Plugin>], &mut Kept) {
        let kept = self.kept.as_deref_mut().unwrap_or(&mut self.none);
        (self.chain, &self.plugins[..], kept)
    }

    /// The enabled plugins that export `hook`, in order.
    pub(super) fn plugins_with(&self, hook: Hook) -> Vec<&Plugin> {
        let with = |p: &&std::sync::Arc<Plugin>| p.hooks().has(hook) && p.stats.enabled();
        self.plugins.iter().filter(with).map(|p| &**p).collect()
    }

    /// Asks each enabled plugin exporting `hook`, in order, until `ask` decides. A
    /// plugin that fails is logged and counted, and `on_failure` says what its
    /// `on_error` policy decides (`None`: ask the next one). `None` if nobody decided.
    pub(super) fn walk<T>(
        &mut self,
        hook: Hook,
        mut ask: impl FnMut(&mut Kept, usize, &Plugin) -> Step<T>,
        on_failure: impl Fn(&Plugin, OnError) -> Option<T>,
    ) -> Option<T> {
        let kept = self.kept.as_deref_mut().unwrap_or(&mut self.none);
        for (i, p) in self.plugins.iter().enumerate() {
            if !p.hooks().has(hook) || !p.stats.enabled() {
                continue;
            }
            match ask(kept, i, p) {
                Step::Next => {}
                Step::Done(t) => return Some(t),
                Step::Failed(f) => {
                    if let Some(t) = on_failure(p, self.chain.failed(p, hook, &f)) {
                        return Some(t);
                    }
                }
            }
        }
        None
    }

    pub(super) fn authenticate(&mut self, info: &ConnectInfo<'_>) -> AuthOutcome {
        let mut arg = None;
        let decided = self.walk(
            Hook::Authenticate,
            |_, _, p| {
                let arg = arg.get_or_insert_with(|| convert::connect_info(info));
                let answer = p.call(|g, s| match &g.authn {
                    Some(h) => h.call_authenticate(s, arg),
                    None => Ok(wit::AuthResult::Defer),
                });
                answer.and_then(|r| admission(p, r)).into()
            },
            |p, policy| match policy {
                OnError::Deny => Some(AuthOutcome::Deny {
                    code: ReasonCode::NotAuthorized,
                    reason: format!("authentication plugin '{}' failed", p.name),
                }),
                OnError::Allow => Some(AuthOutcome::Allow {
                    username: None,
                    attributes: Vec::new(),
                }),
                OnError::Defer => None,
            },
        );
        decided.unwrap_or_else(|| match self.chain.defaults.authenticate_default {
            AuthDefault::Listener => listener_rule(info),
            AuthDefault::Allow => AuthOutcome::Allow {
                username: None,
                attributes: Vec::new(),
            },
            AuthDefault::Deny => AuthOutcome::Deny {
                code: ReasonCode::NotAuthorized,
                reason: "no plugin admitted this client".into(),
            },
        })
    }

    pub(super) fn authorize(
        &mut self,
        client: &ClientInfo<'_>,
        action: Action,
        topic: &str,
        qos: QoS,
        retain: bool,
    ) -> Decision {
        let q = Question::Authorize(action, qos, retain);
        let mut args = None;
        let mut record = self.client_record();
        let decided = self.walk(
            Hook::Authorize,
            |kept, i, p| {
                let ask = Ask { i, p, client };
                // Nothing is kept for a plugin that never allowed reuse.
                let reused = p.answers.in_use().then(|| ask.reusable(kept, topic, q));
                if let Some(Some(Answer::Authorize(d))) = reused {
                    p.stats.reused();
                    return d.map_or(Step::Next, |d| Step::Done(counted(p, d)));
                }
                let a = args.get_or_insert_with(|| convert::access(action, topic, qos, retain));
                let c = record.of(client);
                let answer = p.call_reusable(|g, s| match &g.authz {
                    Some(h) => h.call_authorize(s, c, a),
                    None => Ok(wit::Decision::Defer),
                });
                let decided = answer.and_then(|(r, grants)| {
                    let d = decision(r)?.map(|d| counted(p, d));
                    if let Some(ms) = grants.reuse_ms {
                        ask.reuse(kept, topic, q, Answer::Authorize(d), ms);
                    }
                    Ok(d)
                });
                decided.into()
            },
            |_, policy| authorize_on_error(policy),
        );
        decided.unwrap_or(match self.chain.defaults.authorize_default {
            AllowDeny::Allow => Decision::Allow,
            AllowDeny::Deny => Decision::Deny(ReasonCode::NotAuthorized),
        })
    }

    pub(super) fn rate_limit(&mut self, client: &ClientInfo<'_>, event: RateEvent) -> RateOutcome {
        let mut throttle = Duration::ZERO;
        let mut record = self.client_record();
        let rejected = self.walk(
            Hook::RateLimit,
            |kept, i, p| {
                if let RateEvent::Publish(bytes) = event {
                    if kept.take_lease(i, bytes) {
                        p.stats.reused();
                        return Step::Next;
                    }
                }
                let c = record.of(client);
                let e = convert::event(event);
                let answer = p.call_reusable(|g, s| match &g.limiter {
                    Some(h) => h.call_rate_limit(s, c, e),
                    None => Ok(wit::RateResult::Allow),
                });
                let publish = matches!(event, RateEvent::Publish(_));
                let decided = answer.and_then(|(r, grants)| {
                    let lease = grants.lease.filter(|_| publish);
                    limited(p, r, (kept, i, lease), &mut throttle)
                });
                decided.into()
            },
            |_, policy| (policy == OnError::Deny).then_some(ReasonCode::UnspecifiedError),
        );
        match rejected {
            Some(code) => RateOutcome::Reject(code),
            None if throttle.is_zero() => RateOutcome::Allow,
            None => RateOutcome::Throttle(throttle),
        }
    }
}

/// What a limiter's answer means: a rejection's code, or `None` with any throttle added
/// to `throttle` and, with an `allow`, the lease it granted kept for the plugin at `i`
/// (by the connection only: a lease is a budget, and one copy of it is what bounds the
/// client; a call with no connection behind it lets the lease go unused, which costs
/// only tokens).
pub(super) fn limited(
    p: &Plugin,
    r: wit::RateResult,
    (kept, i, lease): (&mut Kept, usize, Option<(u32, u64, u32)>),
    throttle: &mut Duration,
) -> Result<Option<ReasonCode>, Failure> {
    match r {
        wit::RateResult::Allow => {
            if let Some((events, bytes, until)) =
                lease.and_then(|(e, b, ms)| Some((e, b, answers::until(ms)?)))
            {
                kept.lease(i, events, bytes, until);
            }
            Ok(None)
        }
        wit::RateResult::Reject(code) => {
            let code = convert::failure_code(code, "reject")?;
            p.stats.denied();
            Ok(Some(code))
        }
        wit::RateResult::Throttle(ms) => {
            *throttle = (*throttle).max(throttle_of(ms)?);
            Ok(None)
        }
    }
}

/// What an authentication plugin's answer means; `None` defers.
fn admission(p: &Plugin, r: wit::AuthResult) -> Result<Option<AuthOutcome>, Failure> {
    Ok(match r {
        wit::AuthResult::Allow(a) => Some(AuthOutcome::Allow {
            username: a.username,
            attributes: a
                .attributes
                .into_iter()
                .map(|p| (p.name, p.value))
                .collect(),
        }),
        wit::AuthResult::Deny(d) => {
            let code = convert::failure_code(d.reason_code, "deny")?;
            p.stats.denied();
            Some(AuthOutcome::Deny {
                code,
                reason: d.reason,
            })
        }
        wit::AuthResult::Defer => None,
    })
}

/// What an authorization plugin's `on_error` decides; `None` asks the next plugin.
pub(super) fn authorize_on_error(policy: OnError) -> Option<Decision> {
    match policy {
        OnError::Deny => Some(Decision::Deny(ReasonCode::NotAuthorized)),
        OnError::Allow => Some(Decision::Allow),
        OnError::Defer => None,
    }
}

/// What an authorization plugin's answer means; `None` defers.
pub(super) fn decision(r: wit::Decision) -> Result<Option<Decision>, Failure> {
    Ok(match r {
        wit::Decision::Allow => Some(Decision::Allow),
        wit::Decision::Deny(code) => Some(Decision::Deny(convert::failure_code(code, "deny")?)),
        wit::Decision::Defer => None,
    })
}

/// Counts a denial, given or reused.
pub(super) fn counted(p: &Plugin, d: Decision) -> Decision {
    if matches!(d, Decision::Deny(_)) {
        p.stats.denied();
    }
    d
}

fn throttle_of(ms: u64) -> Result<Duration, Failure> {
    let d = Duration::from_millis(ms);
    if d > MAX_THROTTLE {
        return Err(Failure::Invalid(format!(
            "throttle of {ms} ms is over an hour"
        )));
    }
    Ok(d)
}

/// The client record plugins are handed in one call.
pub(super) struct Record<'c> {
    pre: Option<&'c Client>,
    own: Option<Client>,
}

impl Record<'_> {
    pub fn of(&mut self, client: &ClientInfo<'_>) -> &Client {
        match self.pre {
            Some(r) => r,
            None => (self.own).get_or_insert_with(|| Client::new(convert::client(client))),
        }
    }
}

/// The plugin at position `i` of the chain, asked on behalf of `client`.
pub(super) struct Ask<'a> {
    pub i: usize,
    pub p: &'a Plugin,
    pub client: &'a ClientInfo<'a>,
}

impl Ask<'_> {
    /// The answer to `q` on `topic` the plugin allows to be reused: the connection's own
    /// copy, or else the shared cache's, which the connection then keeps.
    pub fn reusable(&self, kept: &mut Kept, topic: &str, q: Question) -> Option<Answer> {
        if let Some(a) = kept.get(self.i, topic, q) {
            return Some(a.clone());
        }
        let (a, until) = self.p.answers.get(self.client, topic, q)?;
        kept.put(self.i, topic, q, a.clone(), until);
        Some(a)
    }

    /// Keeps an answer the plugin allowed to be reused for `ms`, in the shared cache and
    /// in the connection's.
    pub fn reuse(&self, kept: &mut Kept, topic: &str, q: Question, answer: Answer, ms: u32) {
        if let Some(until) = self
            .p
            .answers
            .put(self.client, topic, q, answer.clone(), ms)
        {
            kept.put(self.i, topic, q, answer, until);
        }
    }
}
