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
    /// Named listeners. With none configured: TCP on 127.0.0.1:1883 and WebSocket on
    /// 127.0.0.1:8083.
    pub listener: Vec<ListenerConfig>,
    /// The plugin chain, in the order hooks consult it.
    pub plugin: Vec<PluginConfig>,
    /// Sandbox defaults and end-of-chain decisions for plugins.
    pub plugins: PluginsConfig,
    pub limits: Limits,
    pub storage: Storage,
    pub admin: Admin,
    pub log: Log,
    /// Present: this node is one of several acting as one broker through NATS.
    pub cluster: Option<ClusterConfig>,
    /// Seconds between `$SYS` updates (Mosquitto's name); 0 publishes none. A
    /// top-level key: it goes before the first table.
    pub sys_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listener: vec![
                ListenerConfig::of_kind(ListenerKind::Tcp),
                ListenerConfig::of_kind(ListenerKind::Ws),
            ],
            plugin: Vec::new(),
            plugins: PluginsConfig::default(),
            limits: Limits::default(),
            storage: Storage::default(),
            admin: Admin::default(),
            log: Log::default(),
            cluster: None,
            sys_interval: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    Tcp,
    Tls,
    Ws,
    Wss,
}

impl ListenerKind {
    /// The conventional port of each transport (as Mosquitto and EMQX use them).
    pub fn default_port(self) -> u16 {
        match self {
            ListenerKind::Tcp => 1883,
            ListenerKind::Tls => 8883,
            ListenerKind::Ws => 8083,
            ListenerKind::Wss => 8084,
        }
    }

    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ListenerKind::Tcp => "tcp",
            ListenerKind::Tls => "tls",
            ListenerKind::Ws => "ws",
            ListenerKind::Wss => "wss",
        }
    }
}

/// Whether a TLS listener with a client CA insists on a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    #[default]
    Required,
    Optional,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    /// Unique; defaults to the kind (`tcp`, `tls`, `ws`, `wss`).
    pub name: String,
    pub kind: ListenerKind,
    /// Defaults to 127.0.0.1 on the kind's conventional port.
    pub bind: Option<SocketAddr>,
    /// Clients may connect without credentials that something checked. No
    /// authentication plugin exists yet, so with this off only clients with a verified
    /// TLS client certificate are let in.
    pub allow_anonymous: bool,
    /// Overrides `limits.max_connections` for this listener.
    pub max_connections: Option<usize>,
    /// Overrides `limits.max_packet_size` for this listener.
    pub max_packet_size: Option<u32>,
    /// `tls`/`wss`: PEM certificate chain, server certificate first.
    pub cert: Option<PathBuf>,
    /// `tls`/`wss`: PEM private key of the server certificate.
    pub key: Option<PathBuf>,
    /// `tls`/`wss`: PEM CA certificates that sign client certificates. Setting it turns
    /// on client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` refuses clients without a certificate during the
    /// handshake; `optional` lets them through to authentication.
    pub client_cert: ClientCert,
    /// Use the client certificate's subject CN as the MQTT username.
    pub use_identity_as_username: bool,
    /// `ws`/`wss`: the HTTP path of the WebSocket endpoint; others get 404.
    pub path: String,
    /// `ws`/`wss`: if not empty, only these `Origin` header values may connect (403).
    pub allowed_origins: Vec<String>,
    /// Every connection starts with a PROXY protocol (v1 or v2) header from a load
    /// balancer, naming the client's address; connections without one are closed.
    pub proxy_protocol: bool,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            name: String::new(),
            kind: ListenerKind::Tcp,
            bind: None,
            allow_anonymous: true,
            max_connections: None,
            max_packet_size: None,
            cert: None,
            key: None,
            client_ca: None,
            client_cert: ClientCert::Required,
            use_identity_as_username: false,
            path: "/mqtt".into(),
            allowed_origins: Vec::new(),
            proxy_protocol: false,
        }
    }
}

impl ListenerConfig {
    pub fn of_kind(kind: ListenerKind) -> ListenerConfig {
        ListenerConfig {
            kind,
            ..Default::default()
        }
    }

    pub fn name(&self) -> &str {
        if self.name.is_empty() {
            self.kind.as_str()
        } else {
            &self.name
        }
    }

    pub fn bind(&self) -> SocketAddr {
        self.bind
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], self.kind.default_port())))
    }

    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let key = |k: &str| format!("listener[{i}].{k}");
        if !names_ok(self.name()) {
            return Err(invalid(key("name"), "use letters, digits, '-' and '_'"));
        }
        if self.max_connections == Some(0) {
            return Err(invalid(key("max_connections"), "must be at least 1"));
        }
        if let Some(s) = self.max_packet_size {
            check_packet_size(&key("max_packet_size"), s)?;
        }
        let kind = self.kind.as_str();
        if self.kind.is_tls() {
            for (k, v) in [("cert", &self.cert), ("key", &self.key)] {
                match v {
                    None => {
                        return Err(invalid(key(k), format!("required for a '{kind}' listener")))
                    }
                    Some(p) if !p.is_file() => {
                        return Err(invalid(
                            key(k),
                            format!("{} is not a readable file", p.display()),
                        ))
                    }
                    _ => {}
                }
            }
            if let Some(p) = &self.client_ca {
                if !p.is_file() {
                    return Err(invalid(
                        key("client_ca"),
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        } else {
            for (k, set) in [
                ("cert", self.cert.is_some()),
                ("key", self.key.is_some()),
                ("client_ca", self.client_ca.is_some()),
                ("use_identity_as_username", self.use_identity_as_username),
            ] {
                if set {
                    return Err(invalid(
                        key(k),
                        format!("only for 'tls' and 'wss' listeners, not '{kind}'"),
                    ));
                }
            }
        }
        if self.kind.is_websocket() {
            if !self.path.starts_with('/') {
                return Err(invalid(key("path"), "must start with '/'"));
            }
        } else if self.path != "/mqtt" || !self.allowed_origins.is_empty() {
            let k = if self.path != "/mqtt" {
                "path"
            } else {
                "allowed_origins"
            };
            return Err(invalid(
                key(k),
                format!("only for 'ws' and 'wss' listeners, not '{kind}'"),
            ));
        }
        Ok(())
    }
}

fn names_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// What a plugin's failure (trap, deadline, memory cap, invalid answer) counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Refuse: deny the connect, publish or subscribe; drop a transformed message.
    Deny,
    /// Let it through: allow; keep a transformed message as it was.
    Allow,
    /// As if the plugin had no opinion: ask the next one; keep the message.
    Defer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    pub name: String,
    /// The component (`.wasm`), relative to the working directory.
    pub path: PathBuf,
    /// Handed to the plugin's `init` as JSON.
    #[serde(default = "empty_table")]
    pub config: toml::Table,
    /// Default: `deny` for authenticate, authorize and rate-limit; messages are kept.
    pub on_error: Option<OnError>,
    /// Overrides `plugins.deadline_ms` for this plugin.
    pub deadline_ms: Option<u64>,
    /// Overrides `plugins.memory_mb` for this plugin.
    pub memory_mb: Option<u64>,
    /// Overrides `plugins.fuel` for this plugin.
    pub fuel: Option<u64>,
    /// Where the plugin may send HTTP requests (`wasi:http`): URL prefixes, each a
    /// scheme, host, port and path (`"http://127.0.0.1:8080/auth"`). Any other request
    /// is refused before a connection is made. Empty: no HTTP at all.
    #[serde(default)]
    pub allow_http: Vec<String>,
    /// The bound on one HTTP request, from connecting to the last byte of the response,
    /// ms; the call's deadline bounds it too. Default: the plugin's deadline.
    pub http_timeout_ms: Option<u64>,
    /// The largest request or response body one HTTP request may carry, bytes.
    pub http_max_bytes: Option<u64>,
    /// Calls that can wait outside the broker (HTTP, timers) running at once; more
    /// wait for a slot, up to the plugin's deadline.
    pub max_waiting_calls: Option<usize>,
    /// Makes this entry a candidate for the named plugin rather than a member of the
    /// chain: asked every question that plugin is asked, with this entry's own `config`
    /// and limits, its answers compared and counted but never applied, until `weir
    /// promote` swaps it in. At most one per plugin.
    pub shadow_of: Option<String>,
}

/// One entry of a plugin's `allow_http`: requests to this scheme, host and port whose
/// path continues this one at a segment boundary are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPrefix {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

impl UrlPrefix {
    pub fn parse(url: &str) -> Result<UrlPrefix, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("'{url}' is not a URL: {e}"))?;
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let Some(default_port) = default_port(&scheme) else {
            return Err(format!("'{url}' must start with http:// or https://"));
        };
        let authority = uri.authority().ok_or(format!("'{url}' names no host"))?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return Err(format!(
                "'{url}' must name a host, without user information"
            ));
        }
        if uri.query().is_some() || !plain_path(uri.path()) {
            let why =
                "must be a plain path prefix (no query, '..', '.' or escaped '/', '.' or '\\')";
            return Err(format!("'{url}' {why}"));
        }
        Ok(UrlPrefix {
            host: authority.host().to_ascii_lowercase(),
            port: authority.port_u16().unwrap_or(default_port),
            path: uri.path().trim_end_matches('/').to_owned(),
            scheme,
        })
    }

    /// Whether a request to `uri` falls under this prefix. A path that a server could
    /// read as another (`..`, escaped separators) never does.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("").to_ascii_lowercase();
        let Some(authority) = uri.authority() else {
            return false;
        };
        let port = authority.port_u16().or(default_port(&scheme));
        let path = uri.path();
        scheme == self.scheme
            && authority.host().eq_ignore_ascii_case(&self.host)
            && port == Some(self.port)
            && !authority.as_str().contains('@')
            && plain_path(path)
            && path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

impl std::fmt::Display for UrlPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{}{}/",
            self.scheme, self.host, self.port, self.path
        )
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A path without dot segments or escaped separators and dots, which a server might
/// resolve to a path outside the prefix it seems to be under.
fn plain_path(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    !path.contains('\\')
        && !["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e))
        && path.split('/').all(|seg| seg != "." && seg != "..")
}

impl PluginConfig {
    /// The allow-list, parsed.
    pub fn http_allowed(&self) -> Vec<UrlPrefix> {
        (self.allow_http.iter())
            .filter_map(|u| UrlPrefix::parse(u).ok())
            .collect()
    }

    fn validate_http(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        for (j, url) in self.allow_http.iter().enumerate() {
            UrlPrefix::parse(url).map_err(|why| invalid(key(&format!("allow_http[{j}]")), why))?;
        }
        if self.http_timeout_ms == Some(0) {
            return Err(invalid(key("http_timeout_ms"), "must be at least 1"));
        }
        if self.http_max_bytes == Some(0) {
            return Err(invalid(key("http_max_bytes"), "must be at least 1"));
        }
        if matches!(self.max_waiting_calls, Some(n) if n == 0 || n > 1024) {
            return Err(invalid(
                key("max_waiting_calls"),
                "must be between 1 and 1024",
            ));
        }
        Ok(())
    }
}

fn empty_table() -> toml::Table {
    toml::Table::new()
}

/// What the end of the chain decides when every plugin deferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthDefault {
    /// The listener's `allow_anonymous` rule.
    Listener,
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllowDeny {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Wall-clock budget of one hook call, milliseconds.
    pub deadline_ms: u64,
    /// Linear memory a plugin instance may grow to, MiB.
    pub memory_mb: u64,
    /// Wasm instructions (roughly) per call; 0 turns fuel metering off.
    pub fuel: u64,
    /// Compiled plugins are kept here, keyed by content and engine; default
    /// `<storage.dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Pre-allocate instance slots (faster instantiation after a trap or reload).
    pub pooling: bool,
    /// Reload a plugin when its file changes (checked every `watch_ms`).
    pub watch: bool,
    pub watch_ms: u64,
    /// End of the chain for `authenticate`.
    pub authenticate_default: AuthDefault,
    /// End of the chain for `authorize`.
    pub authorize_default: AllowDeny,
    /// Events waiting for observer plugins, at most; more are lost and counted.
    pub events_queue: usize,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            deadline_ms: 10,
            memory_mb: 64,
            fuel: 0,
            cache_dir: None,
            pooling: true,
            watch: true,
            watch_ms: 250,
            authenticate_default: AuthDefault::Listener,
            authorize_default: AllowDeny::Allow,
            events_queue: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverflowPolicy {
    DropOldest,
    DropNewest,
    /// Hold the publishers instead (as long as the consumer keeps taking messages).
    Block,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_connections: usize,
    /// Clients over `max_connections` told so (CONNACK 0x89) at one time; more are
    /// closed at once, so a flood past the limit costs a bounded number of tasks.
    pub max_refusing: usize,
    /// Connections one client address may hold open, across listeners (0: no limit).
    pub max_connections_per_address: usize,
    /// New connections one client address may open a second (0: no limit).
    pub connect_rate_per_address: u32,
    pub max_packet_size: u32,
    /// Receive Maximum we announce, and the cap on unacknowledged messages we send to
    /// one client.
    pub max_inflight: u16,
    /// Messages waiting for one session (offline, or online but slower than its
    /// publishers) before `overflow` applies.
    pub max_queued: usize,
    /// Messages waiting for a connected session above which the publishers that feed
    /// only it (and sessions like it) are not read until it drains to half; at most
    /// `max_queued` in effect.
    pub queue_high_water: usize,
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
            max_refusing: 64,
            max_connections_per_address: 0,
            connect_rate_per_address: 0,
            max_packet_size: 1024 * 1024,
            max_inflight: 256,
            max_queued: 100_000,
            queue_high_water: 1_000,
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
    /// Disk all sessions together may fill with the overflow of their queues; 0 keeps
    /// every queue in memory.
    pub max_spill_mb: u64,
}

impl Default for Storage {
    fn default() -> Self {
        Storage {
            persistence: true,
            dir: PathBuf::from("weir-data"),
            durability: Durability::Sync,
            flush_interval_ms: 500,
            max_spill_mb: 1024,
        }
    }
}

/// `[cluster]`: the NATS servers (with JetStream) the nodes share, and this node's name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// NATS URLs (`nats://host:port`, `tls://host:port`); any one is enough to join.
    pub servers: Vec<String>,
    /// This node's unique, stable name.
    pub node: String,
    /// JetStream replicas of Weir's streams and buckets: 1, or 3 for a NATS cluster.
    #[serde(default = "one")]
    pub replicas: usize,
    /// How long startup waits for NATS and JetStream before giving up.
    #[serde(default = "thirty")]
    pub connect_timeout_secs: u64,
    /// Seconds without a heartbeat after which the other nodes take this node for dead
    /// and publish the wills of its clients.
    #[serde(default = "ten")]
    pub liveness_secs: u64,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// CA certificate(s) the NATS servers' certificates are checked against.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key, for NATS servers that verify clients.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

fn one() -> usize {
    1
}

fn thirty() -> u64 {
    30
}

fn ten() -> u64 {
    10
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(invalid(
                "cluster.servers",
                "at least one NATS URL is needed",
            ));
        }
        for (i, url) in self.servers.iter().enumerate() {
            check_nats_url(url).map_err(|m| invalid(format!("cluster.servers[{i}]"), m))?;
        }
        if !names_ok(&self.node) {
            return Err(invalid(
                "cluster.node",
                "use letters, digits, '-' and '_' (it names NATS consumers)",
            ));
        }
        if self.replicas != 1 && self.replicas != 3 {
            return Err(invalid("cluster.replicas", "must be 1 or 3"));
        }
        if self.connect_timeout_secs == 0 {
            return Err(invalid(
                "cluster.connect_timeout_secs",
                "must be at least 1",
            ));
        }
        if !(2..=3600).contains(&self.liveness_secs) {
            return Err(invalid(
                "cluster.liveness_secs",
                "must be between 2 and 3600",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid("cluster.password", "user and password go together"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "cluster.tls_key",
                "tls_cert and tls_key go together",
            ));
        }
        for (k, p) in [
            ("credentials", &self.credentials),
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(p) = p.as_ref().filter(|p| !p.is_file()) {
                return Err(invalid(
                    format!("cluster.{k}"),
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
        Ok(())
    }
}

/// `nats://host:port`, `tls://host:port` or `host:port`, the forms NATS clients take.
fn check_nats_url(url: &str) -> Result<(), String> {
    let rest = match url.split_once("://") {
        Some(("nats" | "tls", rest)) => rest,
        Some((scheme, _)) => return Err(format!("'{url}': scheme '{scheme}' is not nats or tls")),
        None => url,
    };
    let host_port = rest.rsplit('@').next().unwrap_or(rest);
    match host_port.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(())
        }
        _ => Err(format!("'{url}' is not host:port")),
    }
}

/// The admin HTTP API: health, metrics, plugin operations, clients.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    pub enabled: bool,
    /// Loopback by default: the API can disconnect clients and swap plugins.
    pub bind: SocketAddr,
    /// If set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// With `key`: the API speaks HTTPS only (PEM chain, reloaded on SIGHUP), so a token
    /// and the dashboard's cookie never cross the network in the clear.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Admin {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.token.as_deref() == Some("") {
            return Err(invalid(
                "admin.token",
                "must not be empty (leave it out for no token on loopback)",
            ));
        }
        match (&self.cert, &self.key) {
            (Some(_), None) => return Err(invalid("admin.key", "is required with admin.cert")),
            (None, Some(_)) => return Err(invalid("admin.cert", "is required with admin.key")),
            _ => {}
        }
        // Anyone who reaches the API can kick clients and swap plugins.
        if self.enabled && self.token.is_none() && !self.bind.ip().is_loopback() {
            return Err(invalid(
                "admin.token",
                format!(
                    "is required when admin.bind ({}) is not a loopback address",
                    self.bind
                ),
            ));
        }
        Ok(())
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 9883)),
            token: None,
            cert: None,
            key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// A tracing filter such as `info` or `weir=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` for people, `json` for log shippers: one object per line.
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    /// `{"timestamp", "level", "target", "message", ...the event's fields}` per line.
    Json,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
            format: LogFormat::Text,
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

    /// Every key checked; the first wrong one named in the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_listeners()?;
        self.validate_plugins()?;
        self.admin.validate()?;
        self.limits.validate()?;
        if let Some(c) = &self.cluster {
            c.validate()?;
        }
        if self.storage.persistence && self.storage.dir.as_os_str().is_empty() {
            return Err(invalid("storage.dir", "must not be empty"));
        }
        if self.sys_interval > 86_400 {
            return Err(invalid(
                "sys_interval",
                "must be at most 86400 seconds (0 turns $SYS off)",
            ));
        }
        if self.storage.flush_interval_ms == 0 {
            return Err(invalid("storage.flush_interval_ms", "must be at least 1"));
        }
        // Targets, levels and commas only: span and field filters compile regular
        // expressions, and a hostile one took libFuzzer's 10 s (found by fuzzing; they
        // remain available through RUST_LOG).
        let plain = |c: char| c.is_ascii_alphanumeric() || "_:,=.-".contains(c);
        if self.log.level.len() > 1024
            || !self.log.level.chars().all(plain)
            || self
                .log
                .level
                .parse::<tracing_subscriber::EnvFilter>()
                .is_err()
        {
            return Err(invalid(
                "log.level",
                format!(
                    "'{}' is not a filter of targets and levels such as \"info,weir::plugin=debug\" (span and field filters go in RUST_LOG)",
                    self.log.level
                ),
            ));
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        if self.listener.is_empty() {
            return Err(invalid("listener", "at least one listener is needed"));
        }
        let mut names = std::collections::HashSet::new();
        let mut binds = std::collections::HashSet::new();
        for (i, l) in self.listener.iter().enumerate() {
            l.validate(i)?;
            if !names.insert(l.name()) {
                return Err(invalid(
                    format!("listener[{i}].name"),
                    format!("duplicate name '{}'", l.name()),
                ));
            }
            if !binds.insert(l.bind()) {
                return Err(invalid(
                    format!("listener[{i}].bind"),
                    format!("{} is used by another listener", l.bind()),
                ));
            }
        }
        Ok(())
    }

    fn validate_plugins(&self) -> Result<(), ConfigError> {
        let mut plugin_names = std::collections::HashSet::new();
        for (i, p) in self.plugin.iter().enumerate() {
            let key = |k: &str| format!("plugin[{i}].{k}");
            if !names_ok(&p.name) {
                return Err(invalid(key("name"), "use letters, digits, '-' and '_'"));
            }
            if !plugin_names.insert(&p.name) {
                return Err(invalid(
                    key("name"),
                    format!("duplicate plugin name '{}'", p.name),
                ));
            }
            if !p.path.is_file() {
                return Err(invalid(
                    key("path"),
                    format!("{} is not a readable file", p.path.display()),
                ));
            }
            if p.deadline_ms == Some(0) {
                return Err(invalid(key("deadline_ms"), "must be at least 1"));
            }
            if p.memory_mb == Some(0) {
                return Err(invalid(key("memory_mb"), "must be at least 1"));
            }
            p.validate_http(&key)?;
        }
        self.validate_shadows()?;
        if self.plugins.watch_ms == 0 {
            return Err(invalid("plugins.watch_ms", "must be at least 1"));
        }
        if self.plugins.deadline_ms == 0 {
            return Err(invalid("plugins.deadline_ms", "must be at least 1"));
        }
        if self.plugins.memory_mb == 0 || self.plugins.memory_mb > 4096 {
            return Err(invalid("plugins.memory_mb", "must be between 1 and 4096"));
        }
        if self.plugins.events_queue == 0 || self.plugins.events_queue > 10_000_000 {
            let why = "must be between 1 and 10000000";
            return Err(invalid("plugins.events_queue", why));
        }
        Ok(())
    }

    /// Each `shadow_of` names a plugin of the chain (not another shadow), once.
    fn validate_shadows(&self) -> Result<(), ConfigError> {
        let mut shadowed = std::collections::HashMap::new();
        for (i, p) in self.plugin.iter().enumerate() {
            let Some(of) = &p.shadow_of else { continue };
            let key = format!("plugin[{i}].shadow_of");
            match self.plugin.iter().find(|q| &q.name == of) {
                None => return Err(invalid(key, format!("no [[plugin]] is named '{of}'"))),
                Some(q) if q.shadow_of.is_some() => {
                    let why = format!("'{of}' is a shadow itself; name a plugin of the chain");
                    return Err(invalid(key, why));
                }
                Some(_) => {}
            }
            if let Some(first) = shadowed.insert(of, i) {
                let why = format!("'{of}' already has a shadow (plugin[{first}])");
                return Err(invalid(key, why));
            }
        }
        Ok(())
    }
}

impl Limits {
    fn validate(&self) -> Result<(), ConfigError> {
        let l = self;
        if l.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if l.max_refusing == 0 {
            return Err(invalid("limits.max_refusing", "must be at least 1"));
        }
        check_packet_size("limits.max_packet_size", l.max_packet_size)?;
        if l.max_inflight == 0 {
            return Err(invalid("limits.max_inflight", "must be at least 1"));
        }
        if l.max_queued == 0 {
            return Err(invalid("limits.max_queued", "must be at least 1"));
        }
        if l.queue_high_water < 2 {
            return Err(invalid("limits.queue_high_water", "must be at least 2"));
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
        let l: Vec<String> = c
            .listener
            .iter()
            .map(|l| format!("{} {}", l.name(), l.bind()))
            .collect();
        assert_eq!(l, vec!["tcp 127.0.0.1:1883", "ws 127.0.0.1:8083"]);
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

    #[test]
    fn the_admin_api_off_loopback_needs_a_token() {
        let e = Config::from_toml("[admin]\nbind = \"0.0.0.0:9883\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin.token") && e.contains("0.0.0.0:9883"),
            "{e}"
        );
        let ok = "[admin]\nbind = \"0.0.0.0:9883\"\ntoken = \"s3cret\"\n";
        assert!(Config::from_toml(ok).is_ok());
        assert!(Config::from_toml("[admin]\nbind = \"[::1]:9883\"\n").is_ok());
        let half = Config::from_toml("[admin]\ncert = \"a.pem\"\n").unwrap_err();
        assert!(half.to_string().contains("admin.key"), "{half}");
        let off = "[admin]\nenabled = false\nbind = \"0.0.0.0:9883\"\n";
        assert!(Config::from_toml(off).is_ok());
    }

    /// Found by fuzzing (fuzz/regressions/config/): a span filter in `log.level` took
    /// more than 10 s to compile.
    #[test]
    fn a_log_level_with_span_filters_is_refused_at_once() {
        let t0 = std::time::Instant::now();
        let e = Config::from_toml("[log]\nlevel = \"a[{[=__....Lga}g<e[[{[CCCCCCCC\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("log.level"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(1));
        assert!(Config::from_toml("[log]\nlevel = \"info,weir::plugin=debug\"\n").is_ok());
    }

    #[test]
    fn an_allow_list_entry_covers_its_path_on_segment_boundaries() {
        let p = UrlPrefix::parse("http://Auth.Example:8080/auth").unwrap();
        let allows = |u: &str| p.allows(&u.parse().unwrap());
        assert!(allows("http://auth.example:8080/auth"));
        assert!(allows("http://auth.example:8080/auth/"));
        assert!(allows("http://auth.example:8080/auth/users?id=1"));
        assert!(allows("HTTP://AUTH.EXAMPLE:8080/auth"));
        assert!(!allows("http://auth.example:8080/authz"));
        assert!(!allows("http://auth.example:8080/"));
        assert!(!allows("http://auth.example:8080/auth/../admin"));
        assert!(!allows("http://auth.example:8080/auth/%2e%2e/admin"));
        assert!(!allows("http://auth.example:8080/auth%2Fx"));
        assert!(!allows("http://auth.example:8081/auth"));
        assert!(!allows("http://auth.example/auth"));
        assert!(!allows("https://auth.example:8080/auth"));
        assert!(!allows("http://other.example:8080/auth"));
        assert!(!allows("http://auth.example.evil:8080/auth"));
        let default_port = UrlPrefix::parse("https://id.example/").unwrap();
        assert!(default_port.allows(&"https://id.example:443/x".parse().unwrap()));
        assert!(default_port.allows(&"https://id.example/".parse().unwrap()));
        assert!(!default_port.allows(&"http://id.example/".parse().unwrap()));
    }

    #[test]
    fn a_shadow_names_one_plugin_of_the_chain() {
        let entry = |name: &str, of: Option<&str>| {
            let of = of
                .map(|o| format!("shadow_of = {o:?}\n"))
                .unwrap_or_default();
            format!("[[plugin]]\nname = {name:?}\npath = \"Cargo.toml\"\n{of}")
        };
        let ok = entry("acl", None) + &entry("acl-next", Some("acl"));
        let c = Config::from_toml(&ok).unwrap();
        assert_eq!(c.plugin[1].shadow_of.as_deref(), Some("acl"));
        for (bad, why) in [
            (
                entry("acl", None) + &entry("next", Some("acll")),
                "no [[plugin]] is named 'acll'",
            ),
            (
                entry("acl", None) + &entry("next", Some("next")),
                "is a shadow itself",
            ),
            (
                entry("acl", None) + &entry("a", Some("acl")) + &entry("b", Some("acl")),
                "already has a shadow (plugin[1])",
            ),
        ] {
            let e = Config::from_toml(&bad).unwrap_err().to_string();
            assert!(e.contains("shadow_of") && e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_allow_list_entry_is_named() {
        for bad in [
            "ftp://h/x",
            "127.0.0.1:8080/auth",
            "/auth",
            "http://u:p@h/auth",
            "http://h/a?b=c",
            "http://h/a/../b",
        ] {
            let toml = format!(
                "[[plugin]]\nname = \"p\"\npath = \"Cargo.toml\"\nallow_http = [\"http://ok/\", {bad:?}]\n"
            );
            let e = Config::from_toml(&toml).unwrap_err().to_string();
            assert!(e.contains("plugin[0].allow_http[1]"), "{bad}: {e}");
        }
    }
}
