//! One case's call, through the plugin chain the broker uses, and its answer in the
//! terms of the cases file. The chain holds only the plugin under test, with its
//! failures deferred and both defaults `deny`: a defer is then a denial the plugin's
//! denial counter did not count, and a failure one its error counters did.

use super::cases::{ActionKind, Case, ClientSpec, Got, HookKind, RateKind};
use crate::codec::{QoS, SubscriptionOptions, Version};
use crate::events::{Event, Timed};
use crate::hooks::{
    Action, AuthOutcome, AuthRequest, AuthStep, ClientHooks, ConnectInfo, Decision, DeliverOutcome,
    Hooks, Identity, PeerIdentity, RateEvent, RateOutcome, SubscribeOutcome,
};
use crate::message::Message;
use crate::plugin::{PluginChain, PluginClient, Stats};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// Asks the chain what `case` asks; `Err` names an input the case lacks or got wrong.
pub fn ask(
    chain: &Arc<PluginChain>,
    stats: &Stats,
    case: &Case,
    base: &ClientSpec,
) -> Result<Got, String> {
    let client = case.client(base);
    let errors = stats.errors();
    let denials = stats.denials.load(Relaxed);
    let denied = || stats.denials.load(Relaxed) > denials;
    let got = match case.hook {
        HookKind::Authenticate => authenticate(chain, case, &client, denied)?,
        HookKind::AuthStart => auth_start(chain, case, &client)?,
        HookKind::Authorize => authorize(chain, case, &client, denied)?,
        HookKind::Transform => transform(chain, case, &client)?,
        HookKind::Deliver => deliver(chain, case, &client)?,
        HookKind::Subscribe => subscribe(chain, case, &client)?,
        HookKind::RateLimit => rate_limit(chain, case, &client)?,
        HookKind::Observe => observe(chain, case, &client)?,
    };
    let failed = (stats.errors().iter().zip(errors))
        .find(|((_, now), (_, before))| now > before)
        .map(|((kind, _), _)| *kind);
    Ok(match failed {
        Some(kind) => Got::new("failed").detailed(kind),
        None => got,
    })
}

fn identity(c: &ClientSpec) -> Arc<Identity> {
    Arc::new(Identity {
        client_id: c.client_id.clone(),
        username: c.username.clone(),
        peer: c.peer.clone(),
        listener: c.listener.clone(),
        attributes: pairs(&c.attributes),
    })
}

fn connection(chain: &Arc<PluginChain>, c: &ClientSpec) -> PluginClient {
    PluginClient::new(chain.clone(), identity(c))
}

fn pairs(m: &BTreeMap<String, String>) -> Vec<(String, String)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn json(pairs: &[(String, String)]) -> String {
    let m: BTreeMap<&str, &str> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    serde_json::to_string(&m).unwrap_or_default()
}

fn qos(case: &Case) -> Result<QoS, String> {
    QoS::from_u8(case.qos).ok_or(format!("qos {} is not 0, 1 or 2", case.qos))
}

fn needs<'a>(value: &'a Option<String>, what: &str, case: &Case) -> Result<&'a str, String> {
    let hook = case.hook.name();
    value.as_deref().ok_or(format!("{hook} needs `{what}`"))
}

/// The CONNECT of `c` and `case`, and what it borrows.
struct Connect {
    password: Option<Bytes>,
    certificate: Option<PeerIdentity>,
    properties: Vec<(String, String)>,
    peer: std::net::SocketAddr,
}

impl Connect {
    fn of(case: &Case, c: &ClientSpec) -> Result<Connect, String> {
        Ok(Connect {
            password: case.password.clone().map(Bytes::from),
            certificate: case.certificate_cn.clone().map(|cn| PeerIdentity {
                common_name: Some(cn),
                sans: Vec::new(),
            }),
            properties: pairs(&case.user_properties),
            peer: (c.peer.parse()).map_err(|_| format!("peer {:?} is not address:port", c.peer))?,
        })
    }

    fn info<'a>(&'a self, c: &'a ClientSpec) -> ConnectInfo<'a> {
        ConnectInfo {
            client_id: &c.client_id,
            username: c.username.as_deref(),
            password: self.password.as_ref(),
            version: Version::V5,
            peer: self.peer,
            listener: &c.listener,
            allow_anonymous: false,
            user_properties: &self.properties,
            certificate: self.certificate.as_ref(),
        }
    }
}

fn admitted(
    username: Option<String>,
    attributes: &[(String, String)],
    c: &ClientSpec,
) -> Vec<(&'static str, String)> {
    let username = username.or(c.username.clone()).unwrap_or_default();
    vec![("username", username), ("attributes", json(attributes))]
}

fn authenticate(
    chain: &Arc<PluginChain>,
    case: &Case,
    c: &ClientSpec,
    denied: impl Fn() -> bool,
) -> Result<Got, String> {
    let connect = Connect::of(case, c)?;
    Ok(match chain.authenticate(&connect.info(c)) {
        AuthOutcome::Allow {
            username,
            attributes,
        } => {
            let fields = admitted(username, &attributes, c);
            fields
                .into_iter()
                .fold(Got::new("allow"), |g, (k, v)| g.with(k, v))
        }
        AuthOutcome::Deny { code, reason } if denied() => {
            Got::coded("deny", code as u8).detailed(reason)
        }
        AuthOutcome::Deny { .. } => Got::new("defer"),
    })
}

fn auth_start(chain: &Arc<PluginChain>, case: &Case, c: &ClientSpec) -> Result<Got, String> {
    let connect = Connect::of(case, c)?;
    let info = connect.info(c);
    let request = AuthRequest {
        info: &info,
        method: needs(&case.method, "method", case)?,
        data: case.data.as_deref().map(str::as_bytes),
        reauth: false,
    };
    Ok(match chain.auth_start(&request) {
        AuthStep::Continue { data, .. } => {
            Got::new("continue").with("data", String::from_utf8_lossy(&data))
        }
        AuthStep::Success {
            username,
            attributes,
            data,
        } => {
            let fields = admitted(username, &attributes, c);
            let got = fields
                .into_iter()
                .fold(Got::new("success"), |g, (k, v)| g.with(k, v));
            got.with("data", String::from_utf8_lossy(&data.unwrap_or_default()))
        }
        AuthStep::Failure { code, reason } => Got::coded("failure", code as u8).detailed(reason),
    })
}

fn authorize(
    chain: &Arc<PluginChain>,
    case: &Case,
    c: &ClientSpec,
    denied: impl Fn() -> bool,
) -> Result<Got, String> {
    let action = match case
        .action
        .ok_or("authorize needs `action` (publish or subscribe)")?
    {
        ActionKind::Publish => Action::Publish,
        ActionKind::Subscribe => Action::Subscribe,
    };
    let topic = case.topic.as_deref().or(case.filter.as_deref());
    let topic = topic.ok_or("authorize needs `topic`")?;
    let mut conn = connection(chain, c);
    Ok(
        match conn.authorize(action, topic, qos(case)?, case.retain) {
            Decision::Allow => Got::new("allow"),
            Decision::Deny(code) if denied() => Got::coded("deny", code as u8),
            Decision::Deny(_) => Got::new("defer"),
        },
    )
}

fn message(case: &Case) -> Result<Message, String> {
    let mut m = Message {
        topic: needs(&case.topic, "topic", case)?.into(),
        payload: Bytes::from(case.payload.clone()),
        qos: qos(case)?,
        retain: case.retain,
        properties: Default::default(),
        expires_at: None,
        publisher: None,
        origin: None,
        received: None,
    };
    m.properties.user_properties = pairs(&case.user_properties);
    Ok(m)
}

/// A message's fields as the cases file names them.
fn replaced(m: &Message) -> Got {
    Got::new("replace")
        .with("topic", &*m.topic)
        .with("payload", String::from_utf8_lossy(&m.payload))
        .with("qos", (m.qos as u8).to_string())
        .with("user_properties", json(&m.properties.user_properties))
}

fn transform(chain: &Arc<PluginChain>, case: &Case, c: &ClientSpec) -> Result<Got, String> {
    let before = message(case)?;
    let mut m = before.clone();
    let id = identity(c);
    Ok(match chain.transform(&id.info(), &mut m) {
        Some(code) => Got::coded("drop", code as u8),
        None if m == before => Got::new("keep"),
        None => replaced(&m),
    })
}

fn deliver(chain: &Arc<PluginChain>, case: &Case, c: &ClientSpec) -> Result<Got, String> {
    let m = message(case)?;
    Ok(match connection(chain, c).deliver(&m, m.qos, m.retain) {
        DeliverOutcome::Keep => Got::new("keep"),
        DeliverOutcome::Drop => Got::new("drop"),
        DeliverOutcome::Replace(m) => replaced(&m),
    })
}

fn subscribe(chain: &Arc<PluginChain>, case: &Case, c: &ClientSpec) -> Result<Got, String> {
    let filter = case.filter.as_ref().or(case.topic.as_ref());
    let filter = filter.ok_or("subscribe needs `filter`")?;
    let options = SubscriptionOptions {
        qos: qos(case)?,
        ..Default::default()
    };
    Ok(match connection(chain, c).subscribe(filter, options) {
        SubscribeOutcome::AsAsked => Got::new("allow"),
        SubscribeOutcome::Deny(code) => Got::coded("deny", code as u8),
        SubscribeOutcome::Rewrite { filter, qos } => Got::new("rewrite")
            .with("filter", filter)
            .with("qos", (qos as u8).to_string()),
    })
}

fn rate_limit(chain: &Arc<PluginChain>, case: &Case, c: &ClientSpec) -> Result<Got, String> {
    let event = match case
        .event
        .ok_or("rate-limit needs `event` (connect, publish or subscribe)")?
    {
        RateKind::Connect => RateEvent::Connect,
        RateKind::Publish => RateEvent::Publish(case.bytes),
        RateKind::Subscribe => RateEvent::Subscribe,
    };
    Ok(match connection(chain, c).rate_limit(event) {
        RateOutcome::Allow => Got::new("allow"),
        RateOutcome::Reject(code) => Got::coded("reject", code as u8),
        RateOutcome::Throttle(d) => Got::new("throttle").detailed(format!("{} ms", d.as_millis())),
    })
}

fn observe(chain: &Arc<PluginChain>, case: &Case, c: &ClientSpec) -> Result<Got, String> {
    let id: Arc<str> = Arc::from(c.client_id.as_str());
    let events = (case.events.iter())
        .map(|name| {
            let event = match name.as_str() {
                "connected" => Event::Connected(identity(c)),
                "disconnected" => Event::Disconnected {
                    client_id: id.clone(),
                    reason_code: 0,
                    reason: "normal disconnection".into(),
                },
                "subscribed" => Event::Subscribed {
                    client_id: id.clone(),
                    filter: case.filter.clone().unwrap_or("#".into()),
                    qos: case.qos,
                },
                "unsubscribed" => Event::Unsubscribed {
                    client_id: id.clone(),
                    filter: case.filter.clone().unwrap_or("#".into()),
                },
                "session-expired" => Event::SessionExpired(id.clone()),
                other => return Err(format!("observe: unknown event {other:?}")),
            };
            Ok(Timed {
                at_ms: crate::message::now_secs() * 1000,
                event,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    chain.observe(&events);
    Ok(Got::new("ok"))
}
