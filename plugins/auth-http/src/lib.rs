//! Asks an HTTP service whether a client may connect, publish and subscribe, as
//! EMQX's HTTP authentication and mosquitto-go-auth's HTTP backend do.
//!
//! Each question is a `POST` of a JSON object to the configured URL; the service answers
//! `2xx` with `{"result": "allow" | "deny" | "ignore"}` (`ignore` leaves the decision to
//! the next plugin), and for a connect may add `"username"` and `"attributes"`
//! (`{"name": "value", ...}`, for the ACL plugins after this one). Answers are reused
//! for `cache_ms`: authentication answers in the broker's key-value store (keyed by a
//! hash of client id, username, password, address and listener), authorization answers
//! through the broker's answer reuse. When the service cannot be asked (unreachable,
//! slower than `timeout_ms`, a non-2xx status, an answer that is not JSON) the plugin
//! applies `on_failure`: `deny` (fail closed, the default), `allow` (fail open) or
//! `ignore`.
//!
//! The broker sends the requests only to URLs under the plugin's `allow_http`, and
//! bounds each by the plugin's `deadline_ms`: give it one that covers the service's
//! slowest answer, and a `timeout_ms` below it so that `on_failure` decides in time.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;
use weir_plugin_sdk::{
    kv, log, parse_config, reuse_answer, Access, Action, Admission, AuthResult, Authenticate,
    Authorize, Client, ConnectInfo, Decision, Denial, Init, Pair, ReasonCode,
};
use wstd::http::{Body, Client as HttpClient, Request};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Where connects are asked about; none: the plugin does not authenticate.
    authenticate_url: Option<String>,
    /// Where publishes and subscribes are asked about; none: it does not authorize.
    authorize_url: Option<String>,
    /// How long an answer is reused (0: ask every time).
    #[serde(default = "minute")]
    cache_ms: u32,
    /// The bound on one request, ms (the broker's `deadline_ms` bounds it too).
    #[serde(default = "second")]
    timeout_ms: u64,
    #[serde(default)]
    on_failure: Verdict,
}

fn minute() -> u32 {
    60_000
}

fn second() -> u64 {
    1_000
}

#[derive(Deserialize, Serialize, Default, Clone, Copy, PartialEq, Debug)]
#[serde(rename_all = "lowercase")]
enum Verdict {
    Allow,
    #[default]
    Deny,
    Ignore,
}

/// What the service answers.
#[derive(Deserialize, Serialize)]
struct Answer {
    result: Verdict,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    attributes: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct ConnectQuestion<'a> {
    client_id: &'a str,
    username: Option<&'a str>,
    /// UTF-8 when it is; otherwise `password_base64` carries it.
    password: Option<String>,
    password_base64: Option<String>,
    peer: &'a str,
    listener: &'a str,
    certificate_cn: Option<&'a str>,
}

#[derive(Serialize)]
struct AccessQuestion<'a> {
    client_id: &'a str,
    username: Option<&'a str>,
    peer: &'a str,
    listener: &'a str,
    action: &'static str,
    topic: &'a str,
    qos: u8,
    retain: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// POSTs `question` and reads the answer; `Err` says why the service could not be asked.
fn ask<Q: Serialize>(url: &str, question: &Q, timeout: Duration) -> Result<Answer, String> {
    wstd::runtime::block_on(async {
        let mut client = HttpClient::new();
        client.set_connect_timeout(timeout);
        client.set_first_byte_timeout(timeout);
        client.set_between_bytes_timeout(timeout);
        let body = Body::from_json(question).map_err(|e| e.to_string())?;
        let request = Request::post(url)
            .header("content-type", "application/json")
            .body(body)
            .map_err(|e| e.to_string())?;
        let mut response = client.send(request).await.map_err(|e| format!("{e:#}"))?;
        if !response.status().is_success() {
            return Err(format!("the service answered {}", response.status()));
        }
        let body = response
            .body_mut()
            .contents()
            .await
            .map_err(|e| format!("{e:#}"))?;
        serde_json::from_slice(body).map_err(|e| format!("the answer is not understood: {e}"))
    })
}

/// The service's answer, or `on_failure` (logged) when it could not be asked.
fn answer<Q: Serialize>(c: &Config, url: &str, question: &Q) -> (Answer, bool) {
    match ask(url, question, Duration::from_millis(c.timeout_ms)) {
        Ok(a) => (a, true),
        Err(why) => {
            log::warn(&format!(
                "{url}: {why}; applying on_failure ({:?})",
                c.on_failure
            ));
            let a = Answer {
                result: c.on_failure,
                username: None,
                attributes: BTreeMap::new(),
            };
            (a, false)
        }
    }
}

/// The cache key of a connect: a hash, so the store holds no password. The address
/// without its port, which changes with every connection.
fn connect_key(info: &ConnectInfo) -> String {
    let address = info
        .peer
        .rsplit_once(':')
        .map_or(info.peer.as_str(), |(a, _)| a);
    let mut h = Sha256::new();
    for part in [
        info.client_id.as_bytes(),
        info.username.as_deref().unwrap_or("\0").as_bytes(),
        info.password.as_deref().unwrap_or(b"\0"),
        address.as_bytes(),
        info.listener.as_bytes(),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    format!("connect/{}", STANDARD.encode(h.finalize()))
}

fn connect_question(info: &ConnectInfo) -> ConnectQuestion<'_> {
    let text = info.password.as_ref().map(|p| std::str::from_utf8(p).ok());
    ConnectQuestion {
        client_id: &info.client_id,
        username: info.username.as_deref(),
        password: text.flatten().map(str::to_owned),
        password_base64: match text {
            Some(None) => info.password.as_ref().map(|p| STANDARD.encode(p)),
            _ => None,
        },
        peer: &info.peer,
        listener: &info.listener,
        certificate_cn: (info.certificate.as_ref()).and_then(|c| c.common_name.as_deref()),
    }
}

struct HttpAuth;

impl Init for HttpAuth {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        for url in [&c.authenticate_url, &c.authorize_url]
            .into_iter()
            .flatten()
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("'{url}' is not an http:// or https:// URL"));
            }
        }
        if c.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        let _ = CONFIG.set(c);
        Ok(())
    }
}

impl Authenticate for HttpAuth {
    fn authenticate(info: ConnectInfo) -> AuthResult {
        let Some(c) = CONFIG.get() else {
            return AuthResult::Defer;
        };
        let Some(url) = &c.authenticate_url else {
            return AuthResult::Defer;
        };
        let key = connect_key(&info);
        let cached = kv::get(&key).and_then(|v| serde_json::from_slice::<Answer>(&v).ok());
        let answer = match cached {
            Some(a) => a,
            None => {
                let (a, asked) = answer(c, url, &connect_question(&info));
                if asked && c.cache_ms > 0 {
                    if let Ok(v) = serde_json::to_vec(&a) {
                        kv::set(&key, &v, Some(Duration::from_millis(c.cache_ms.into())));
                    }
                }
                a
            }
        };
        match answer.result {
            Verdict::Allow => AuthResult::Allow(Admission {
                username: answer.username,
                attributes: (answer.attributes.into_iter())
                    .map(|(name, value)| Pair { name, value })
                    .collect(),
            }),
            Verdict::Deny => AuthResult::Deny(Denial {
                reason_code: ReasonCode::NotAuthorized.into(),
                reason: "the authentication service refused".into(),
            }),
            Verdict::Ignore => AuthResult::Defer,
        }
    }
}

impl Authorize for HttpAuth {
    fn authorize(client: &Client, access: Access) -> Decision {
        let Some(c) = CONFIG.get() else {
            return Decision::Defer;
        };
        let Some(url) = &c.authorize_url else {
            // Nothing to ask, ever: the broker need not call again for this topic.
            reuse_answer(Duration::from_secs(600));
            return Decision::Defer;
        };
        let (client_id, username) = (client.client_id(), client.username());
        let (peer, listener) = (client.peer(), client.listener());
        let question = AccessQuestion {
            client_id: &client_id,
            username: username.as_deref(),
            peer: &peer,
            listener: &listener,
            action: match access.action {
                Action::Publish => "publish",
                Action::Subscribe => "subscribe",
            },
            topic: &access.topic,
            qos: access.qos,
            retain: access.retain,
        };
        let (answer, asked) = answer(c, url, &question);
        // A failure is not reused: the next message asks again.
        if asked && c.cache_ms > 0 {
            reuse_answer(Duration::from_millis(c.cache_ms.into()));
        }
        match answer.result {
            Verdict::Allow => Decision::Allow,
            Verdict::Deny => Decision::Deny(ReasonCode::NotAuthorized.into()),
            Verdict::Ignore => Decision::Defer,
        }
    }
}

weir_plugin_sdk::export_plugin!(HttpAuth: init, authenticate, authorize);
