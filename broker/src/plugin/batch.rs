//! Several PUBLISHes a client sent together (read from its socket at once) through the
//! chain, each plugin asked once for all of them instead of once per message. A hook
//! call costs a few hundred nanoseconds before the plugin does anything, three times
//! per message for a chain that authorizes, limits and transforms; in one call for a
//! batch that cost is shared. What each message comes to is what it would come to
//! alone ([`ClientHooks::publish`](crate::hooks::ClientHooks::publish)): authorized,
//! then rate-limited, then transformed, a refusal at any stage ending it; answers
//! reused and leases taken per message, as for single calls.

use super::answers::{self, Answer, Question};
use super::call::{authorize_on_error, counted, decision, limited, Ask, Call};
use super::instance::{Failure, Plugin};
use super::kept::Kept;
use super::pipeline::{Applied, Stage};
use super::Hook;
use crate::codec::ReasonCode;
use crate::config::{AllowDeny, OnError};
use crate::hooks::{Action, ClientInfo, Decision, PublishOutcome, RateEvent, RateOutcome};
use crate::message::Message;
use std::time::Duration;

/// The most messages one batch call carries: a call's deadline is its plugin's
/// deadline times the messages in it, so this bounds how long a plugin that never
/// answers holds a connection's thread.
pub const MAX_BATCH: usize = 32;

/// Messages asked about in one call, and the answers (or the failure).
type Run<T> = (Vec<usize>, Result<Vec<T>, Failure>);

/// Asks a plugin about `asked` in runs of at most [`MAX_BATCH`]: the answers (one per
/// message) of each run. A run whose call fails is asked again one message at a time,
/// so a message that makes the plugin fail (a trap, the deadline) fails alone, and its
/// plugin's `on_error` applies to it only. Not for limiters: asking again would take
/// their tokens twice.
fn in_runs<T>(
    asked: &[usize],
    mut call: impl FnMut(&[usize]) -> Result<Vec<T>, Failure>,
) -> Vec<Run<T>> {
    let mut ask = |run: &[usize]| call(run).and_then(|list| complete(list, run.len()));
    let mut out = Vec::new();
    for run in asked.chunks(MAX_BATCH) {
        match ask(run) {
            Err(_) if run.len() > 1 => {
                out.extend(run.iter().map(|&k| (vec![k], ask(&[k]))));
            }
            answers => out.push((run.to_vec(), answers)),
        }
    }
    out
}

/// A batch answer with one answer per message asked, or an invalid answer.
fn complete<T>(answers: Vec<T>, asked: usize) -> Result<Vec<T>, Failure> {
    if answers.len() != asked {
        return Err(Failure::Invalid(format!(
            "{} answers for {asked} messages",
            answers.len()
        )));
    }
    Ok(answers)
}

impl Call<'_> {
    /// What becomes of each of `messages`, in order, into `outcomes`; the transforms
    /// change the messages in place.
    pub(super) fn publish_many(
        &mut self,
        client: &ClientInfo<'_>,
        messages: &mut [Message],
        outcomes: &mut Vec<PublishOutcome>,
    ) {
        outcomes.clear();
        let mut live = Vec::with_capacity(messages.len());
        for (k, d) in self
            .authorize_publishes(client, messages)
            .into_iter()
            .enumerate()
        {
            outcomes.push(match d {
                Decision::Allow => {
                    live.push(k);
                    PublishOutcome::Route { throttle: None }
                }
                Decision::Deny(code) => PublishOutcome::Refuse {
                    code,
                    why: "not authorized",
                },
            });
        }
        if self.chain().any_active(Hook::RateLimit) && !live.is_empty() {
            let answers = self.rate_limit_publishes(client, messages, &live);
            live = (live.into_iter().zip(answers))
                .filter_map(|(k, a)| match a {
                    RateOutcome::Allow => Some(k),
                    RateOutcome::Throttle(d) => {
                        outcomes[k] = PublishOutcome::Route { throttle: Some(d) };
                        Some(k)
                    }
                    RateOutcome::Reject(code) => {
                        let why = "rate limited";
                        outcomes[k] = PublishOutcome::Refuse { code, why };
                        None
                    }
                })
                .collect();
        }
        if self.chain().any_active(Hook::Transform) && !live.is_empty() {
            let dropped = self.transform_publishes(client, messages, &live);
            for (k, code) in live.into_iter().zip(dropped) {
                if let Some(code) = code {
                    let why = "dropped by a transform plugin";
                    outcomes[k] = PublishOutcome::Refuse { code, why };
                }
            }
        }
    }

    /// `authorize` for each message's topic, as a publish.
    fn authorize_publishes(
        &mut self,
        client: &ClientInfo<'_>,
        messages: &[Message],
    ) -> Vec<Decision> {
        let mut decided: Vec<Option<Decision>> = vec![None; messages.len()];
        let mut record = self.client_record();
        let (chain, plugins, kept) = self.parts();
        let question = |m: &Message| Question::Authorize(Action::Publish, m.qos, m.retain);
        for (i, p) in plugins.iter().enumerate() {
            if !p.hooks().has(Hook::Authorize) || !p.stats.enabled() {
                continue;
            }
            let ask = Ask { i, p, client };
            let mut asked = Vec::new();
            for (k, m) in messages.iter().enumerate() {
                if decided[k].is_some() {
                    continue;
                }
                let reused = p
                    .answers
                    .in_use()
                    .then(|| ask.reusable(kept, &m.topic, question(m)));
                if let Some(Some(Answer::Authorize(d))) = reused {
                    p.stats.reused();
                    decided[k] = d.map(|d| counted(p, d));
                    continue;
                }
                asked.push(k);
            }
            let runs = in_runs(&asked, |run| {
                let run_of: Vec<&Message> = run.iter().map(|&k| &messages[k]).collect();
                let c = record.of(client);
                let answer = p.call_for(run.len() as u32, |g, s| g.authorize_each(s, c, &run_of));
                answer.map(|(list, _)| list)
            });
            for (run, answers) in runs {
                let answers = match answers {
                    Ok(list) => list,
                    Err(f) => {
                        let d = authorize_on_error(chain.failed(p, Hook::Authorize, &f));
                        run.iter().for_each(|&k| decided[k] = d);
                        continue;
                    }
                };
                for (&k, (r, grants)) in run.iter().zip(answers) {
                    let m = &messages[k];
                    decided[k] = match decision(r) {
                        Ok(d) => {
                            let d = d.map(|d| counted(p, d));
                            if let Some(ms) = grants.reuse_ms {
                                ask.reuse(kept, &m.topic, question(m), Answer::Authorize(d), ms);
                            }
                            d
                        }
                        Err(f) => authorize_on_error(chain.failed(p, Hook::Authorize, &f)),
                    };
                }
            }
        }
        let default = match chain.defaults.authorize_default {
            AllowDeny::Allow => Decision::Allow,
            AllowDeny::Deny => Decision::Deny(ReasonCode::NotAuthorized),
        };
        decided.into_iter().map(|d| d.unwrap_or(default)).collect()
    }

    /// The rate limit for each message in `live`, one publish of its payload's size.
    fn rate_limit_publishes(
        &mut self,
        client: &ClientInfo<'_>,
        messages: &[Message],
        live: &[usize],
    ) -> Vec<RateOutcome> {
        let size = |k: usize| messages[k].payload.len() as u64;
        let limiters = self.plugins_with(Hook::RateLimit);
        if !limiters.iter().all(|p| p.batches(Hook::RateLimit)) {
            // A limiter that cannot answer for a batch is asked once per publish,
            // each after what its leases covered, as single calls are.
            return live
                .iter()
                .map(|&k| self.rate_limit(client, RateEvent::Publish(size(k))))
                .collect();
        }
        let mut rejected: Vec<Option<ReasonCode>> = vec![None; live.len()];
        let mut throttle = vec![Duration::ZERO; live.len()];
        let mut record = self.client_record();
        let (chain, plugins, kept) = self.parts();
        for (i, p) in plugins.iter().enumerate() {
            if !p.hooks().has(Hook::RateLimit) || !p.stats.enabled() {
                continue;
            }
            let asked = unleased(kept, i, p, live.iter().map(|&k| size(k)), &rejected);
            for chunk in asked.chunks(MAX_BATCH) {
                let sizes: Vec<u64> = chunk.iter().map(|&j| size(live[j])).collect();
                let c = record.of(client);
                let answer = p.call_for(chunk.len() as u32, |g, s| g.rate_limit_many(s, c, &sizes));
                let answers = answer.and_then(|(list, _)| complete(list, chunk.len()));
                let answers = match answers {
                    Ok(list) => list,
                    Err(f) => {
                        if chain.failed(p, Hook::RateLimit, &f) == OnError::Deny {
                            let code = Some(ReasonCode::UnspecifiedError);
                            chunk.iter().for_each(|&j| rejected[j] = code);
                        }
                        continue;
                    }
                };
                for (&j, (r, grants)) in chunk.iter().zip(answers) {
                    match limited(p, r, (kept, i, grants.lease), &mut throttle[j]) {
                        Ok(Some(code)) => rejected[j] = Some(code),
                        Ok(None) => {}
                        Err(f) => {
                            if chain.failed(p, Hook::RateLimit, &f) == OnError::Deny {
                                rejected[j] = Some(ReasonCode::UnspecifiedError);
                            }
                        }
                    }
                }
            }
        }
        (rejected.into_iter().zip(throttle))
            .map(|(code, t)| match code {
                Some(code) => RateOutcome::Reject(code),
                None if t.is_zero() => RateOutcome::Allow,
                None => RateOutcome::Throttle(t),
            })
            .collect()
    }

    /// The transforms of each message in `live`, changing it in place; for each, the
    /// reason code for the publisher if one dropped it.
    fn transform_publishes(
        &mut self,
        client: &ClientInfo<'_>,
        messages: &mut [Message],
        live: &[usize],
    ) -> Vec<Option<ReasonCode>> {
        let max_packet = self.chain().max_packet;
        let mut dropped: Vec<Option<ReasonCode>> = vec![None; live.len()];
        // A reused answer was given for the message as it came: reuse stops at its
        // first change, as for single calls.
        let mut changed = vec![false; live.len()];
        let mut record = self.client_record();
        let (chain, plugins, kept) = self.parts();
        for (i, p) in plugins.iter().enumerate() {
            if !p.hooks().has(Hook::Transform) || !p.stats.enabled() {
                continue;
            }
            let ask = Ask { i, p, client };
            let mut asked = Vec::new();
            for (j, &k) in live.iter().enumerate() {
                if dropped[j].is_some() {
                    continue;
                }
                if !changed[j] && p.answers.in_use() {
                    let m = &mut messages[k];
                    let q = Stage::Transform.question(answers::header(m));
                    let reused = ask.reusable(kept, &m.topic, q);
                    if let Some(replaced) =
                        super::pipeline::reapply(Stage::Transform, reused, m, max_packet)
                    {
                        p.stats.reused();
                        changed[j] |= replaced;
                        continue;
                    }
                }
                asked.push(j);
            }
            let runs = in_runs(&asked, |run| {
                let batch: Vec<&Message> = run.iter().map(|&j| &messages[live[j]]).collect();
                let c = record.of(client);
                let answer = p.call_for(run.len() as u32, |g, s| g.transform_each(s, c, &batch));
                answer.map(|(list, _)| list)
            });
            for (run, answers) in runs {
                let answers = match answers {
                    Ok(list) => list,
                    Err(f) => {
                        if chain.failed(p, Hook::Transform, &f) == OnError::Deny {
                            let code = Some(ReasonCode::ImplementationSpecificError);
                            run.iter().for_each(|&j| dropped[j] = code);
                        }
                        continue;
                    }
                };
                for (&j, (r, grants)) in run.iter().zip(answers) {
                    let reuse = grants.reuse_ms.filter(|_| !changed[j]);
                    let m = &mut messages[live[j]];
                    match Stage::Transform.apply(&ask, kept, m, r, reuse, max_packet) {
                        Ok(Applied::Kept) => {}
                        Ok(Applied::Changed) => changed[j] = true,
                        Ok(Applied::Dropped(code)) => {
                            dropped[j] =
                                Some(code.unwrap_or(ReasonCode::ImplementationSpecificError))
                        }
                        Err(f) => {
                            if chain.failed(p, Hook::Transform, &f) == OnError::Deny {
                                dropped[j] = Some(ReasonCode::ImplementationSpecificError);
                            }
                        }
                    }
                }
            }
        }
        dropped
    }
}

/// The publishes (positions among `sizes`, their payloads' sizes) the plugin at `i` is
/// asked about: not those already rejected, nor those its lease covers, from the first
/// on (the lease it grants when asked replaces the one it had).
fn unleased(
    kept: &mut Kept,
    i: usize,
    p: &Plugin,
    sizes: impl Iterator<Item = u64>,
    rejected: &[Option<ReasonCode>],
) -> Vec<usize> {
    let mut asked = Vec::new();
    for (j, bytes) in sizes.enumerate() {
        if rejected[j].is_some() {
            continue;
        }
        if asked.is_empty() && kept.take_lease(i, bytes) {
            p.stats.reused();
            continue;
        }
        asked.push(j);
    }
    asked
}
