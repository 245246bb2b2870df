//! The `subscribe` hook (0.2.0): each filter of a SUBSCRIBE through the plugins that
//! export it, a pipeline like `transform`: each sees the filter and QoS as the one
//! before left them, may rewrite them (the QoS only lower) or deny the filter, and a
//! deny ends it.

use super::bindings::weir::plugin::types as wit;
use super::call::{Call, Step};
use super::convert;
use super::instance::Failure;
use super::Hook;
use crate::codec::{QoS, ReasonCode, SubscriptionOptions};
use crate::config::OnError;
use crate::hooks::{ClientInfo, SubscribeOutcome};

impl Call<'_> {
    pub(super) fn subscribe(
        &mut self,
        client: &ClientInfo<'_>,
        filter: &str,
        options: SubscriptionOptions,
    ) -> SubscribeOutcome {
        let mut now = (filter.to_owned(), options.qos);
        let mut changed = false;
        let mut record = self.client_record();
        let denied = self.walk(
            Hook::Subscribe,
            |_, _, p| {
                let c = record.of(client);
                let s = convert::subscription(&now.0, now.1, options);
                let answer = p.call(|g, st| match &g.subscriber {
                    Some(h) => h.call_subscribe(st, c, &s),
                    None => Ok(wit::SubscribeResult::Allow),
                });
                let decided = answer.and_then(|r| match r {
                    wit::SubscribeResult::Allow => Ok(None),
                    wit::SubscribeResult::Deny(code) => {
                        let code = convert::failure_code(code, "deny")?;
                        p.stats.denied();
                        Ok(Some(code))
                    }
                    wit::SubscribeResult::Rewrite(r) => {
                        now = rewritten(r, now.1)?;
                        changed = true;
                        Ok(None)
                    }
                });
                Step::from(decided)
            },
            |_, policy| (policy == OnError::Deny).then_some(ReasonCode::UnspecifiedError),
        );
        match denied {
            Some(code) => SubscribeOutcome::Deny(code),
            None if changed => SubscribeOutcome::Rewrite {
                filter: now.0,
                qos: now.1,
            },
            None => SubscribeOutcome::AsAsked,
        }
    }
}

/// A rewrite checked: a valid filter (a shared subscription's too), at no higher a QoS
/// than asked.
fn rewritten(r: wit::Rewrite, asked: QoS) -> Result<(String, QoS), Failure> {
    let bad = |why: String| Err(Failure::Invalid(format!("rewritten subscription {why}")));
    let valid = match crate::topic::parse_shared(&r.filter) {
        Ok(Some(_)) => true,
        Ok(None) => crate::topic::validate_filter(&r.filter).is_ok(),
        Err(_) => false,
    };
    if !valid {
        return bad(format!("has an invalid filter {:?}", r.filter));
    }
    match QoS::from_u8(r.qos) {
        Some(q) if q <= asked => Ok((r.filter, q)),
        _ => bad(format!("has QoS {} where {} was asked", r.qos, asked as u8)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(filter: &str, qos: u8) -> wit::Rewrite {
        wit::Rewrite {
            filter: filter.into(),
            qos,
        }
    }

    #[test]
    fn a_rewrite_must_be_a_valid_filter_at_no_higher_a_qos() {
        let ok = rewritten(rewrite("t/a/#", 1), QoS::ExactlyOnce).unwrap();
        assert_eq!(ok, ("t/a/#".to_string(), QoS::AtLeastOnce));
        assert!(rewritten(rewrite("$share/g/t/+", 0), QoS::AtMostOnce).is_ok());
        for (filter, qos) in [("t/#/a", 0), ("", 0), ("$share/g", 0), ("t", 2), ("t", 3)] {
            assert!(
                matches!(
                    rewritten(rewrite(filter, qos), QoS::AtLeastOnce),
                    Err(Failure::Invalid(_))
                ),
                "{filter:?} at {qos}"
            );
        }
    }
}
