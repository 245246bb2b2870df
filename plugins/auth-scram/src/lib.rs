//! MQTT 5 enhanced authentication with SCRAM-SHA-256 (RFC 5802, RFC 7677): the client
//! proves it knows the password without sending it, and the broker proves it knows the
//! client's keys in the CONNACK's Authentication Data.
//!
//! ```text
//! CONNECT  method SCRAM-SHA-256, data "n,,n=alice,r=<client nonce>"
//! AUTH 18  data "r=<client nonce><server nonce>,s=<salt>,i=<iterations>"
//! AUTH 18  data "c=biws,r=<nonce>,p=<client proof>"
//! CONNACK  data "v=<server signature>"
//! ```
//!
//! Users come from the config, each with a plain `password` or, better, a `scram`
//! verifier as PostgreSQL stores it: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
//! (base64). The exchange's state travels through the broker (`auth-challenge.state`),
//! so any instance of the plugin can finish what another started. An unknown user gets
//! a challenge like a known one and fails at the proof, so usernames cannot be probed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::collections::HashMap;
use weir_plugin_sdk::{
    parse_config, Admission, AuthChallenge, AuthRequest, AuthResponse, AuthStep, AuthSuccess,
    Authenticator, Denial, Init, ReasonCode,
};

const METHOD: &str = "SCRAM-SHA-256";
/// Iterations for users given with a plain password.
const ITERATIONS: u32 = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    users: Vec<UserConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    username: String,
    password: Option<String>,
    scram: Option<String>,
}

#[derive(Clone)]
struct Keys {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

thread_local! {
    static USERS: RefCell<HashMap<String, Keys>> = RefCell::new(HashMap::new());
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// The keys of a plain password, with a salt of its own per username (the same in every
/// instance, as the exchange may end on another instance than it began).
fn keys_of_password(username: &str, password: &str) -> Keys {
    let salt = Sha256::digest(format!("weir-scram-salt:{username}"))[..16].to_vec();
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, ITERATIONS, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    Keys {
        salt,
        iterations: ITERATIONS,
        stored_key: Sha256::digest(client_key).into(),
        server_key: hmac(&salted, b"Server Key"),
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
fn keys_of_verifier(v: &str) -> Result<Keys, String> {
    let bad = || {
        format!(
            "scram verifier {v:?} is not SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        )
    };
    let rest = v.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
    let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
    let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
    let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
    let key = |s: &str| -> Result<[u8; 32], String> {
        B64.decode(s)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(bad)
    };
    Ok(Keys {
        salt: B64.decode(salt).map_err(|_| bad())?,
        iterations: iterations.parse().map_err(|_| bad())?,
        stored_key: key(stored)?,
        server_key: key(server)?,
    })
}

/// Keys for a username nobody has: the challenge looks like a real one, the proof fails.
fn decoy(username: &str) -> Keys {
    Keys {
        salt: Sha256::digest(format!("weir-scram-salt:{username}"))[..16].to_vec(),
        iterations: ITERATIONS,
        stored_key: [0; 32],
        server_key: [0; 32],
    }
}

fn deny(code: ReasonCode, reason: &str) -> AuthStep {
    AuthStep::Failure(Denial {
        reason_code: code.into(),
        reason: reason.into(),
    })
}

/// The attributes of a SCRAM message (`a=value,b=value`), in order.
fn attributes(msg: &str) -> Vec<(char, &str)> {
    msg.split(',')
        .filter_map(|a| {
            let (k, v) = a.split_once('=')?;
            let mut k = k.chars();
            match (k.next(), k.next()) {
                (Some(c), None) => Some((c, v)),
                _ => None,
            }
        })
        .collect()
}

fn attr<'a>(attrs: &[(char, &'a str)], key: char) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// A SCRAM username (`=2C` is `,`, `=3D` is `=`).
fn saslname(s: &str) -> String {
    s.replace("=2C", ",").replace("=3D", "=")
}

struct Scram;

impl Init for Scram {
    fn init(config: String) -> Result<(), String> {
        let config: Config = parse_config(&config)?;
        let mut users = HashMap::new();
        for u in config.users {
            let keys = match (&u.password, &u.scram) {
                (Some(p), None) => keys_of_password(&u.username, p),
                (None, Some(v)) => keys_of_verifier(v)?,
                _ => {
                    return Err(format!(
                        "user {:?}: give exactly one of password and scram",
                        u.username
                    ))
                }
            };
            users.insert(u.username, keys);
        }
        USERS.with(|u| *u.borrow_mut() = users);
        Ok(())
    }
}

impl Authenticator for Scram {
    fn auth_start(start: AuthRequest) -> AuthStep {
        if start.method != METHOD {
            return AuthStep::Defer;
        }
        let data = start.data.unwrap_or_default();
        let Ok(first) = std::str::from_utf8(&data) else {
            return deny(
                ReasonCode::MalformedPacket,
                "client-first-message is not UTF-8",
            );
        };
        // gs2 header: no channel binding ("n,,"), or "y,," (the client could but we
        // do not); "p=..." asks for channel binding, which MQTT has none of.
        let Some(bare) = first.strip_prefix("n,,").or(first.strip_prefix("y,,")) else {
            return deny(
                ReasonCode::BadAuthenticationMethod,
                "channel binding is not offered",
            );
        };
        let attrs = attributes(bare);
        let (Some(user), Some(cnonce)) = (attr(&attrs, 'n'), attr(&attrs, 'r')) else {
            return deny(
                ReasonCode::MalformedPacket,
                "client-first-message lacks n= or r=",
            );
        };
        let user = saslname(user);
        let keys = USERS
            .with(|u| u.borrow().get(&user).cloned())
            .unwrap_or_else(|| decoy(&user));
        let mut snonce = [0u8; 18];
        if getrandom::fill(&mut snonce).is_err() {
            return deny(ReasonCode::UnspecifiedError, "no randomness for a nonce");
        }
        let server_first = format!(
            "r={cnonce}{},s={},i={}",
            B64.encode(snonce),
            B64.encode(&keys.salt),
            keys.iterations
        );
        let state = format!("{}\n{bare}\n{server_first}", &first[..3]);
        AuthStep::Continue(AuthChallenge {
            data: server_first.into_bytes(),
            state: state.into_bytes(),
        })
    }

    fn auth_continue(answer: AuthResponse) -> AuthStep {
        let state = String::from_utf8(answer.state).unwrap_or_default();
        let mut parts = state.splitn(3, '\n');
        let (Some(gs2), Some(bare), Some(server_first)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return deny(ReasonCode::UnspecifiedError, "exchange state lost");
        };
        let data = answer.data.unwrap_or_default();
        let Ok(last) = std::str::from_utf8(&data) else {
            return deny(
                ReasonCode::MalformedPacket,
                "client-final-message is not UTF-8",
            );
        };
        let Some((without_proof, proof)) = last.rsplit_once(",p=") else {
            return deny(ReasonCode::MalformedPacket, "client-final-message lacks p=");
        };
        let attrs = attributes(without_proof);
        let server_attrs = attributes(server_first);
        let binding_ok = attr(&attrs, 'c') == Some(&B64.encode(gs2)[..]);
        if !binding_ok || attr(&attrs, 'r') != attr(&server_attrs, 'r') {
            return deny(
                ReasonCode::NotAuthorized,
                "nonce or channel binding does not match",
            );
        }
        let user = saslname(attr(&attributes(bare), 'n').unwrap_or_default());
        let Some(keys) = USERS.with(|u| u.borrow().get(&user).cloned()) else {
            return deny(
                ReasonCode::BadUserNameOrPassword,
                "unknown user or wrong password",
            );
        };
        let auth_message = format!("{bare},{server_first},{without_proof}");
        let client_signature = hmac(&keys.stored_key, auth_message.as_bytes());
        let Ok(proof) = B64.decode(proof) else {
            return deny(ReasonCode::MalformedPacket, "client proof is not base64");
        };
        if proof.len() != 32 {
            return deny(
                ReasonCode::BadUserNameOrPassword,
                "unknown user or wrong password",
            );
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let stored: [u8; 32] = Sha256::digest(&client_key).into();
        // Compared whole, not stopping at the first difference.
        if stored
            .iter()
            .zip(keys.stored_key)
            .fold(0, |d, (a, b)| d | (a ^ b))
            != 0
        {
            return deny(
                ReasonCode::BadUserNameOrPassword,
                "unknown user or wrong password",
            );
        }
        let server_signature = hmac(&keys.server_key, auth_message.as_bytes());
        AuthStep::Success(AuthSuccess {
            admission: Admission {
                username: Some(user),
                attributes: Vec::new(),
            },
            data: Some(format!("v={}", B64.encode(server_signature)).into_bytes()),
        })
    }
}

weir_plugin_sdk::export_plugin!(Scram: init, authenticator);
