//! Authenticates clients that send a JSON Web Token as their MQTT password, and then
//! authorizes them by the topics the token's claims allow.
//!
//! Accepted: HS256 (shared secret) and RS256 (RSA public key, PEM), each only if
//! configured. `exp` and `nbf` are checked with a leeway. The claim named by
//! `topics_claim` (default `weir`) may hold `{"pub": [filters], "sub": [filters]}`; a
//! client whose token has it may publish only to topics those filters match and
//! subscribe only to filters within them. `%c` and `%u` in them stand for the client id
//! and username.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::RsaPublicKey;
use serde::Deserialize;
use serde_json::Value;
use sha2::Sha256;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    attribute, filter_within, now_ms, parse_config, substitute, topic_matches, Access, Action,
    Admission, AuthResult, Authenticate, Authorize, Client, ConnectInfo, Decision, Denial, Init,
    Pair, ReasonCode,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    hs256_secret: Option<String>,
    /// PEM "PUBLIC KEY" (SubjectPublicKeyInfo).
    rs256_public_key: Option<String>,
    #[serde(default = "leeway")]
    leeway_secs: u64,
    /// The claim whose value becomes the MQTT username (unset: keep the client's).
    username_claim: Option<String>,
    #[serde(default = "topics_claim")]
    topics_claim: String,
    /// A token without the topics claim: "defer" (default: other plugins decide
    /// authorization) or "deny".
    #[serde(default)]
    without_topics: Without,
}

fn leeway() -> u64 {
    30
}

fn topics_claim() -> String {
    "weir".into()
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Without {
    #[default]
    Defer,
    Deny,
}

struct State {
    config: Config,
    rsa: Option<VerifyingKey<Sha256>>,
}

static STATE: OnceLock<State> = OnceLock::new();

/// Client attribute names this plugin sets.
const PUB: &str = "jwt.pub";
const SUB: &str = "jwt.sub";

struct Jwt;

impl Init for Jwt {
    fn init(config: String) -> Result<(), String> {
        let config: Config = parse_config(&config)?;
        if config.hs256_secret.is_none() && config.rs256_public_key.is_none() {
            return Err("configure hs256_secret, rs256_public_key or both".into());
        }
        let rsa = match &config.rs256_public_key {
            Some(pem) => Some(VerifyingKey::new(
                RsaPublicKey::from_public_key_pem(pem)
                    .map_err(|e| format!("rs256_public_key: {e}"))?,
            )),
            None => None,
        };
        let _ = STATE.set(State { config, rsa });
        Ok(())
    }
}

fn verify(state: &State, token: &str) -> Result<serde_json::Map<String, Value>, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT".into());
    };
    let decode = |x: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(x)
            .map_err(|_| format!("bad base64 in the {what}"))
    };
    let header: Value =
        serde_json::from_slice(&decode(h, "header")?).map_err(|_| "bad header".to_string())?;
    let signature = decode(s, "signature")?;
    let signed = &token[..h.len() + 1 + p.len()];
    match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => {
            let secret = state
                .config
                .hs256_secret
                .as_ref()
                .ok_or("HS256 is not accepted")?;
            let mut mac =
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
            mac.update(signed.as_bytes());
            mac.verify_slice(&signature)
                .map_err(|_| "bad signature".to_string())?;
        }
        Some("RS256") => {
            let key = state.rsa.as_ref().ok_or("RS256 is not accepted")?;
            let sig = Signature::try_from(signature.as_slice())
                .map_err(|_| "bad signature".to_string())?;
            key.verify(signed.as_bytes(), &sig)
                .map_err(|_| "bad signature".to_string())?;
        }
        Some(other) => return Err(format!("algorithm {other} is not accepted")),
        None => return Err("no algorithm".into()),
    }
    let claims: Value =
        serde_json::from_slice(&decode(p, "payload")?).map_err(|_| "bad payload".to_string())?;
    let Value::Object(claims) = claims else {
        return Err("claims are not an object".into());
    };
    let now = (now_ms() / 1000) as i64;
    let leeway = state.config.leeway_secs as i64;
    let time = |name: &str| {
        claims
            .get(name)
            .map(|v| v.as_i64().ok_or(format!("{name} is not a number")))
    };
    if let Some(exp) = time("exp").transpose()? {
        if now > exp + leeway {
            return Err("token expired".into());
        }
    }
    if let Some(nbf) = time("nbf").transpose()? {
        if now + leeway < nbf {
            return Err("token not yet valid".into());
        }
    }
    Ok(claims)
}

impl Authenticate for Jwt {
    fn authenticate(info: ConnectInfo) -> AuthResult {
        let Some(state) = STATE.get() else {
            return AuthResult::Defer;
        };
        let Some(token) = info.password.and_then(|p| String::from_utf8(p).ok()) else {
            return AuthResult::Defer;
        };
        // Not shaped like a JWT: some other plugin's password.
        if token.split('.').count() != 3 {
            return AuthResult::Defer;
        }
        let claims = match verify(state, &token) {
            Ok(c) => c,
            Err(reason) => {
                return AuthResult::Deny(Denial {
                    reason_code: ReasonCode::BadUserNameOrPassword.into(),
                    reason,
                })
            }
        };
        let username = match &state.config.username_claim {
            Some(claim) => match claims.get(claim).and_then(Value::as_str) {
                Some(u) => Some(u.to_owned()),
                None => {
                    return AuthResult::Deny(Denial {
                        reason_code: ReasonCode::BadUserNameOrPassword.into(),
                        reason: format!("no {claim} claim"),
                    });
                }
            },
            None => None,
        };
        let mut attributes = Vec::new();
        if let Some(Value::Object(topics)) = claims.get(&state.config.topics_claim) {
            for (key, name) in [("pub", PUB), ("sub", SUB)] {
                let list = topics.get(key).cloned().unwrap_or(Value::Array(vec![]));
                attributes.push(Pair {
                    name: name.into(),
                    value: list.to_string(),
                });
            }
        }
        AuthResult::Allow(Admission {
            username,
            attributes,
        })
    }
}

impl Authorize for Jwt {
    fn authorize(client: &Client, access: Access) -> Decision {
        let Some(state) = STATE.get() else {
            return Decision::Defer;
        };
        let name = match access.action {
            Action::Publish => PUB,
            Action::Subscribe => SUB,
        };
        let Some(list) = attribute(client, name) else {
            return match state.config.without_topics {
                Without::Defer => Decision::Defer,
                Without::Deny => Decision::Deny(ReasonCode::NotAuthorized.into()),
            };
        };
        let filters: Vec<String> = serde_json::from_str(&list).unwrap_or_default();
        let allowed = filters
            .iter()
            .filter_map(|f| substitute(f, client))
            .any(|f| match access.action {
                Action::Publish => topic_matches(&f, &access.topic),
                Action::Subscribe => filter_within(&access.topic, &f),
            });
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny(ReasonCode::NotAuthorized.into())
        }
    }
}

weir_plugin_sdk::export_plugin!(Jwt: init, authenticate, authorize);
