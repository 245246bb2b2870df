//! The cases file of `weir plugin test`: each case is one hook call, its input, and the
//! answer expected of it.
//!
//! ```toml
//! [client]                      # who the cases are about, unless a case says otherwise
//! username = "alice"
//!
//! [[case]]
//! name = "alice may publish under her home"
//! hook = "authorize"
//! action = "publish"
//! topic = "home/alice/temp"
//! expect = "allow"              # or "deny", "deny 0x87", "defer", "failed", "failed deadline"
//! ```

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    #[serde(default)]
    pub client: ClientSpec,
    #[serde(rename = "case", default)]
    pub cases: Vec<Case>,
}

/// A client as the hooks see it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientSpec {
    pub client_id: String,
    pub username: Option<String>,
    /// `address:port`.
    pub peer: String,
    pub listener: String,
    pub attributes: BTreeMap<String, String>,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            client_id: "test-client".into(),
            username: None,
            peer: "127.0.0.1:50000".into(),
            listener: "tcp".into(),
            attributes: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    Authenticate,
    AuthStart,
    Authorize,
    Transform,
    RateLimit,
    Subscribe,
    Deliver,
    Observe,
}

impl HookKind {
    pub fn name(self) -> &'static str {
        match self {
            HookKind::Authenticate => "authenticate",
            HookKind::AuthStart => "auth-start",
            HookKind::Authorize => "authorize",
            HookKind::Transform => "transform",
            HookKind::RateLimit => "rate-limit",
            HookKind::Subscribe => "subscribe",
            HookKind::Deliver => "deliver",
            HookKind::Observe => "observe",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionKind {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateKind {
    Connect,
    Publish,
    Subscribe,
}

/// One call and what it should answer. Which inputs a hook reads: authenticate and
/// auth-start the client, `password`, `certificate_cn`, `user_properties` (and
/// `method`, `data`); authorize `action`, `topic`, `qos`, `retain`; transform and
/// deliver the message (`topic`, `payload`, `qos`, `retain`, `user_properties`);
/// subscribe `filter` and `qos`; rate-limit `event` (and `bytes`); observe `events`
/// (`connected`, `disconnected`, `subscribed`, `unsubscribed`, `session-expired`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub name: Option<String>,
    pub hook: HookKind,
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub peer: Option<String>,
    pub listener: Option<String>,
    pub attributes: Option<BTreeMap<String, String>>,
    pub password: Option<String>,
    pub certificate_cn: Option<String>,
    pub method: Option<String>,
    pub data: Option<String>,
    pub action: Option<ActionKind>,
    pub topic: Option<String>,
    pub filter: Option<String>,
    #[serde(default)]
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub user_properties: BTreeMap<String, String>,
    pub event: Option<RateKind>,
    #[serde(default)]
    pub bytes: u64,
    #[serde(default)]
    pub events: Vec<String>,
    /// The answer: its kind (`allow`, `deny`, `defer`, `keep`, `drop`, `replace`,
    /// `rewrite`, `reject`, `throttle`, `continue`, `success`, `failure`, `ok`,
    /// `failed`), optionally followed by a reason code (`deny 0x87`) or, after
    /// `failed`, the kind of failure (`failed deadline`).
    pub expect: String,
    pub expect_topic: Option<String>,
    pub expect_payload: Option<String>,
    pub expect_filter: Option<String>,
    pub expect_qos: Option<u8>,
    pub expect_username: Option<String>,
    pub expect_attributes: Option<BTreeMap<String, String>>,
    pub expect_user_properties: Option<BTreeMap<String, String>>,
    pub expect_data: Option<String>,
}

impl Case {
    /// The file's client with this case's overrides.
    pub fn client(&self, base: &ClientSpec) -> ClientSpec {
        ClientSpec {
            client_id: self.client_id.clone().unwrap_or(base.client_id.clone()),
            username: self.username.clone().or(base.username.clone()),
            peer: self.peer.clone().unwrap_or(base.peer.clone()),
            listener: self.listener.clone().unwrap_or(base.listener.clone()),
            attributes: self.attributes.clone().unwrap_or(base.attributes.clone()),
        }
    }

    /// What the expected fields say, by the name [`Got::fields`] uses.
    pub fn expected_fields(&self) -> Vec<(&'static str, String)> {
        let json = |m: &BTreeMap<String, String>| serde_json::to_string(m).unwrap_or_default();
        [
            ("topic", self.expect_topic.clone()),
            ("payload", self.expect_payload.clone()),
            ("filter", self.expect_filter.clone()),
            ("qos", self.expect_qos.map(|q| q.to_string())),
            ("username", self.expect_username.clone()),
            ("attributes", self.expect_attributes.as_ref().map(json)),
            (
                "user_properties",
                self.expect_user_properties.as_ref().map(json),
            ),
            ("data", self.expect_data.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// What a call answered, in the terms of [`Case::expect`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Got {
    pub kind: &'static str,
    pub code: Option<u8>,
    /// The failure's kind, a throttle's duration, a denial's reason.
    pub detail: String,
    pub fields: BTreeMap<&'static str, String>,
}

impl Got {
    pub fn new(kind: &'static str) -> Got {
        Got {
            kind,
            ..Default::default()
        }
    }

    pub fn coded(kind: &'static str, code: u8) -> Got {
        Got {
            kind,
            code: Some(code),
            ..Default::default()
        }
    }

    pub fn with(mut self, field: &'static str, value: impl Into<String>) -> Got {
        self.fields.insert(field, value.into());
        self
    }

    pub fn detailed(mut self, detail: impl Into<String>) -> Got {
        self.detail = detail.into();
        self
    }

    /// Whether this is the answer `case` expects; if not, why.
    pub fn check(&self, case: &Case) -> Result<(), String> {
        let mut words = case.expect.split_whitespace();
        let kind = words.next().unwrap_or("");
        let more = words.next();
        if kind != self.kind {
            return Err(format!("expected {}, got {self}", case.expect));
        }
        match (kind, more) {
            (_, None) => {}
            ("failed" | "throttle", Some(detail)) if self.detail.starts_with(detail) => {}
            (_, Some(code)) if parse_code(code).is_some() => {
                if parse_code(code) != self.code {
                    return Err(format!("expected {}, got {self}", case.expect));
                }
            }
            _ => return Err(format!("expected {}, got {self}", case.expect)),
        }
        for (field, want) in case.expected_fields() {
            let got = self
                .fields
                .get(field)
                .map(String::as_str)
                .unwrap_or("(none)");
            if got != want {
                return Err(format!("expected {field} {want:?}, got {got:?}"));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(c) = self.code {
            write!(f, " 0x{c:02x}")?;
        }
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        for (k, v) in &self.fields {
            write!(f, " {k}={v:?}")?;
        }
        Ok(())
    }
}

/// `0x87` or `135`.
fn parse_code(s: &str) -> Option<u8> {
    match s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expect: &str) -> Case {
        let text = format!("hook = \"authorize\"\nexpect = {expect:?}\nexpect_topic = \"t\"\n");
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn an_answer_matches_its_kind_code_detail_and_fields() {
        let deny = Got::coded("deny", 0x87).with("topic", "t");
        assert!(deny.check(&case("deny")).is_ok());
        assert!(deny.check(&case("deny 0x87")).is_ok());
        assert!(deny.check(&case("deny 135")).is_ok());
        assert!(deny.check(&case("deny 0x80")).is_err());
        assert!(deny.check(&case("allow")).is_err());
        assert!(
            Got::coded("deny", 0x87).check(&case("deny")).is_err(),
            "topic missing"
        );
        let failed = Got::new("failed").detailed("deadline").with("topic", "t");
        assert!(failed.check(&case("failed deadline")).is_ok());
        assert!(failed.check(&case("failed trap")).is_err());
    }
}
