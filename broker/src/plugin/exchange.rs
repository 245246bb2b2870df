//! The `authenticator` hook (0.2.0): MQTT 5 enhanced authentication. At `auth-start` the
//! plugins that export it are asked in order until one takes the method (does not
//! defer); the rest of the exchange goes to that plugin, by name, with the state it
//! asked to be handed back, so any of its instances (or a reloaded version) carries it on.

use super::bindings::weir::plugin::types as wit;
use super::call::{Call, Step};
use super::convert;
use super::instance::{Failure, Plugin};
use super::Hook;
use crate::codec::ReasonCode;
use crate::config::OnError;
use crate::hooks::{AuthRequest, AuthState, AuthStep};

impl Call<'_> {
    pub(super) fn auth_start(&mut self, request: &AuthRequest<'_>) -> AuthStep {
        let mut arg = None;
        let decided = self.walk(
            Hook::EnhancedAuth,
            |_, _, p| {
                let arg = arg.get_or_insert_with(|| wit::AuthRequest {
                    info: convert::connect_info(request.info),
                    method: request.method.to_owned(),
                    data: request.data.map(<[u8]>::to_vec),
                    reauth: request.reauth,
                });
                let answer = p.call(|g, s| match &g.authenticator {
                    Some(h) => h.call_auth_start(s, arg),
                    None => Ok(wit::AuthStep::Defer),
                });
                Step::from(answer.and_then(|r| step(p, r)))
            },
            failed,
        );
        decided.unwrap_or_else(|| AuthStep::Failure {
            code: ReasonCode::BadAuthenticationMethod,
            reason: format!("no plugin takes authentication method {:?}", request.method),
        })
    }

    pub(super) fn auth_continue(
        &mut self,
        request: &AuthRequest<'_>,
        state: &AuthState,
    ) -> AuthStep {
        let Some(p) = self.find(Hook::EnhancedAuth, &state.handler) else {
            return AuthStep::Failure {
                code: ReasonCode::NotAuthorized,
                reason: format!("authentication plugin '{}' is gone", state.handler),
            };
        };
        let arg = wit::AuthResponse {
            info: convert::connect_info(request.info),
            method: request.method.to_owned(),
            data: request.data.map(<[u8]>::to_vec),
            reauth: request.reauth,
            state: state.data.clone(),
        };
        let answer = p.call(|g, s| match &g.authenticator {
            Some(h) => h.call_auth_continue(s, &arg),
            None => Ok(wit::AuthStep::Defer),
        });
        let stepped = answer.and_then(|r| step(p, r)).and_then(|s| {
            s.ok_or_else(|| Failure::Invalid("defer in the middle of an exchange".into()))
        });
        match stepped {
            Ok(s) => s,
            Err(f) => {
                let policy = self.chain().failed(p, Hook::EnhancedAuth, &f);
                failed(p, policy).unwrap_or_else(|| refused(p))
            }
        }
    }
}

/// What a plugin's step means; `None` defers.
fn step(p: &Plugin, r: wit::AuthStep) -> Result<Option<AuthStep>, Failure> {
    Ok(Some(match r {
        wit::AuthStep::Continue(c) => AuthStep::Continue {
            data: c.data,
            state: AuthState {
                handler: p.name.clone(),
                data: c.state,
            },
        },
        wit::AuthStep::Success(s) => AuthStep::Success {
            username: s.admission.username,
            attributes: (s.admission.attributes.into_iter())
                .map(|p| (p.name, p.value))
                .collect(),
            data: s.data,
        },
        wit::AuthStep::Failure(d) => {
            let code = convert::failure_code(d.reason_code, "failure")?;
            p.stats.denied();
            AuthStep::Failure {
                code,
                reason: d.reason,
            }
        }
        wit::AuthStep::Defer => return Ok(None),
    }))
}

/// A plugin that failed mid-exchange: its `on_error`, as for `authenticate`.
fn failed(p: &Plugin, policy: OnError) -> Option<AuthStep> {
    match policy {
        OnError::Deny => Some(refused(p)),
        OnError::Allow => Some(AuthStep::Success {
            username: None,
            attributes: Vec::new(),
            data: None,
        }),
        OnError::Defer => None,
    }
}

fn refused(p: &Plugin) -> AuthStep {
    AuthStep::Failure {
        code: ReasonCode::NotAuthorized,
        reason: format!("authentication plugin '{}' failed", p.name),
    }
}
