//! Checks username and password against salted hashes in the plugin's configuration.
//!
//! Hashes are PBKDF2-HMAC-SHA256 in the form `pbkdf2-sha256$<iterations>$<salt>$<hash>`
//! with salt and hash in standard base64, as this Python line makes them:
//!
//! ```text
//! python3 -c 'import hashlib,base64,os,sys; s=os.urandom(16); print("pbkdf2-sha256$%d$%s$%s" % (10000, base64.b64encode(s).decode(), base64.b64encode(hashlib.pbkdf2_hmac("sha256", sys.argv[1].encode(), s, 10000)).decode()))' 'the password'
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::OnceLock;
use weir_plugin_sdk::{
    parse_config, Admission, AuthResult, Authenticate, ConnectInfo, Denial, Init, ReasonCode,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    users: Vec<User>,
    /// A username this plugin does not know: "defer" (default: let the next plugin
    /// decide) or "deny".
    #[serde(default)]
    unknown_user: Unknown,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct User {
    username: String,
    password_hash: String,
}

#[derive(Deserialize, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Unknown {
    #[default]
    Defer,
    Deny,
}

struct Hash {
    iterations: u32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

struct State {
    users: HashMap<String, Hash>,
    unknown: Unknown,
}

static STATE: OnceLock<State> = OnceLock::new();

fn parse_hash(s: &str) -> Result<Hash, String> {
    let parts: Vec<&str> = s.split('$').collect();
    let [scheme, iterations, salt, hash] = parts[..] else {
        return Err("expected pbkdf2-sha256$<iterations>$<salt>$<hash>".into());
    };
    if scheme != "pbkdf2-sha256" {
        return Err(format!("unknown scheme '{scheme}'"));
    }
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| "iterations is not a number".to_string())?;
    if iterations == 0 {
        return Err("iterations must be at least 1".into());
    }
    let salt = STANDARD.decode(salt).map_err(|e| format!("salt: {e}"))?;
    let hash = STANDARD.decode(hash).map_err(|e| format!("hash: {e}"))?;
    if hash.is_empty() {
        return Err("empty hash".into());
    }
    Ok(Hash {
        iterations,
        salt,
        hash,
    })
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct PasswordAuth;

impl Init for PasswordAuth {
    fn init(config: String) -> Result<(), String> {
        let c: Config = parse_config(&config)?;
        let mut users = HashMap::new();
        for u in c.users {
            let h = parse_hash(&u.password_hash)
                .map_err(|e| format!("user '{}': password_hash: {e}", u.username))?;
            users.insert(u.username, h);
        }
        let _ = STATE.set(State {
            users,
            unknown: c.unknown_user,
        });
        Ok(())
    }
}

impl Authenticate for PasswordAuth {
    fn authenticate(info: ConnectInfo) -> AuthResult {
        let Some(state) = STATE.get() else {
            return AuthResult::Defer;
        };
        let Some(username) = info.username else {
            return AuthResult::Defer;
        };
        let bad = |reason: &str| {
            AuthResult::Deny(Denial {
                reason_code: ReasonCode::BadUserNameOrPassword.into(),
                reason: reason.into(),
            })
        };
        let Some(user) = state.users.get(&username) else {
            return match state.unknown {
                Unknown::Defer => AuthResult::Defer,
                Unknown::Deny => bad("unknown user"),
            };
        };
        let Some(password) = info.password else {
            return bad("no password");
        };
        let mut derived = vec![0u8; user.hash.len()];
        pbkdf2::pbkdf2_hmac::<sha2::Sha256>(&password, &user.salt, user.iterations, &mut derived);
        if same(&derived, &user.hash) {
            AuthResult::Allow(Admission {
                username: None,
                attributes: vec![],
            })
        } else {
            bad("wrong password")
        }
    }
}

weir_plugin_sdk::export_plugin!(PasswordAuth: init, authenticate);
