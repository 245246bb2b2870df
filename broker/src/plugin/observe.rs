//! The `observer` hook (0.2.0): batches of events, from the event thread
//! ([`crate::events`]), to every enabled plugin that exports it. Observers decide
//! nothing: a failure is logged and counted, and the next observer still gets the batch.

use super::call::{Call, Step};
use super::convert;
use super::Hook;
use crate::events::Timed;

impl Call<'_> {
    pub(super) fn observe(&mut self, events: &[Timed]) {
        let mut list = None;
        self.walk::<()>(
            Hook::Observe,
            |_, _, p| {
                let list = list.get_or_insert_with(|| convert::events(events));
                let answer = p.call(|g, s| match &g.observer {
                    Some(h) => h.call_observe(s, list),
                    None => Ok(()),
                });
                match answer {
                    Ok(()) => Step::Next,
                    Err(f) => Step::Failed(f),
                }
            },
            |_, _| None,
        );
    }
}
