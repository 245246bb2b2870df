//! The broker configuration, read from TOML.
//!
//! Every table rejects unknown keys, and `validate` names the key of any bad value, so a
//! typo stops startup instead of silently running with a default.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Named listeners. With none configured, one TCP listener on 127.0.0.1:1883.
    pub listener: Vec<ListenerConfig>,
    pub limits: Limits,
    pub storage: Storage,
    pub log: Log,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listener: vec![ListenerConfig::default()],
            limits: Limits::default(),
            storage: Storage::default(),
            log: Log::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub name: String,
    pub kind: ListenerKind,
    pub bind: SocketAddr,
    /// Clients without a username may connect. No authentication plugin exists yet,
    /// so with this off every client is refused.
    pub allow_anonymous: bool,
    /// Overrides `limits.max_connections` for this listener.
    pub max_connections: Option<usize>,
    /// Overrides `limits.max_packet_size` for this listener.
    pub max_packet_size: Option<u32>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: "tcp".into(),
            kind: ListenerKind::Tcp,
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            allow_anonymous: true,
            max_connections: None,
            max_packet_size: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    DropOldest,
    DropNewest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    pub max_packet_size: u32,
    /// Receive Maximum we announce, and the cap on unacknowledged messages we send to
    /// one client.
    pub max_inflight: u16,
    /// Messages waiting for one session (offline, or online but slower than its
    /// publishers) before `overflow` applies.
    pub max_queued: usize,
    pub overflow: OverflowPolicy,
    /// Queue QoS 0 messages for offline persistent sessions too.
    pub queue_qos0_offline: bool,
    pub max_topic_length: usize,
    pub max_topic_levels: usize,
    /// Seconds a new socket may take to send CONNECT.
    pub connect_timeout_secs: u64,
    /// Upper bound on a client's keep alive; 5.0 clients are told via Server Keep Alive.
    /// 0: accept whatever the client asks for.
    pub max_keep_alive: u16,
    /// Topic aliases a 5.0 client may use towards us.
    pub topic_alias_maximum: u16,
    /// Upper bound on a 5.0 client's Session Expiry Interval, seconds.
    pub max_session_expiry_secs: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 100_000,
            max_packet_size: 1024 * 1024,
            max_inflight: 256,
            max_queued: 10_000,
            overflow: OverflowPolicy::DropOldest,
            queue_qos0_offline: false,
            max_topic_length: 65_535,
            max_topic_levels: 128,
            connect_timeout_secs: 10,
            max_keep_alive: 0,
            topic_alias_maximum: 64,
            max_session_expiry_secs: u32::MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledgements that promise durability wait for a disk sync (group commit).
    Sync,
    /// Acknowledge at once; the store syncs every `flush_interval_ms`.
    Periodic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Keep sessions and retained messages on disk. Off: everything is in memory.
    pub persistence: bool,
    pub dir: PathBuf,
    pub durability: Durability,
    /// For `periodic` durability: how often the store syncs.
    pub flush_interval_ms: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            persistence: true,
            dir: PathBuf::from("weir-data"),
            durability: Durability::Sync,
            flush_interval_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter such as `info` or `weir=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::new(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listener.is_empty() {
            return Err(invalid("listener", "at least one listener is needed"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.listener.iter().enumerate() {
            if l.name.is_empty() {
                return Err(invalid(format!("listener[{i}].name"), "must not be empty"));
            }
            if !names.insert(&l.name) {
                return Err(invalid(
                    format!("listener[{i}].name"),
                    format!("duplicate name '{}'", l.name),
                ));
            }
            if l.max_connections == Some(0) {
                return Err(invalid(
                    format!("listener[{i}].max_connections"),
                    "must be at least 1",
                ));
            }
            if let Some(s) = l.max_packet_size {
                check_packet_size(&format!("listener[{i}].max_packet_size"), s)?;
            }
        }
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        check_packet_size("limits.max_packet_size", l.max_packet_size)?;
        if l.max_inflight == 0 {
            return Err(invalid("limits.max_inflight", "must be at least 1"));
        }
        if l.max_queued == 0 {
            return Err(invalid("limits.max_queued", "must be at least 1"));
        }
        if l.max_topic_length == 0 || l.max_topic_length > 65_535 {
            return Err(invalid(
                "limits.max_topic_length",
                "must be between 1 and 65535",
            ));
        }
        if l.max_topic_levels == 0 {
            return Err(invalid("limits.max_topic_levels", "must be at least 1"));
        }
        if l.connect_timeout_secs == 0 {
            return Err(invalid("limits.connect_timeout_secs", "must be at least 1"));
        }
        if self.storage.persistence && self.storage.dir.as_os_str().is_empty() {
            return Err(invalid("storage.dir", "must not be empty"));
        }
        if self.storage.flush_interval_ms == 0 {
            return Err(invalid("storage.flush_interval_ms", "must be at least 1"));
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid(
                "log.level",
                format!("'{}' is not a valid filter", self.log.level),
            ));
        }
        Ok(())
    }
}

fn check_packet_size(key: &str, size: u32) -> Result<(), ConfigError> {
    // 268_435_460 is the largest packet MQTT can frame (4-byte remaining length + header).
    if !(64..=268_435_460).contains(&size) {
        return Err(invalid(key, "must be between 64 and 268435460 bytes"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_the_default() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.listener.len(), 1);
        assert_eq!(c.listener[0].bind.to_string(), "127.0.0.1:1883");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[limits]\nmax_conections = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn bad_value_is_named() {
        let e = Config::from_toml("[limits]\nmax_inflight = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_inflight"), "{e}");
        let e = Config::from_toml("[storage]\ndurability = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("durability"), "{e}");
        let e = Config::from_toml("[[listener]]\nname = \"a\"\nbind = \"nope\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bind"), "{e}");
    }
}
