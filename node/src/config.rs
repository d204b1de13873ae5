//! The node's configuration: defaults, then the TOML file named by `--config` or
//! `CHATMESH_CONFIG`, then `CHATMESH_<SECTION>__<KEY>` environment variables
//! (PROTOCOL.md §4). [`Config::load`] either returns a fully checked config or an
//! error whose one line names the offending key: the node never starts
//! half-configured.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Deserializer, Serialize};

/// A configuration problem, rendered as one line naming the key.
#[derive(Debug, thiserror::Error)]
#[error("config error: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: &str, message: impl Into<String>) -> Self {
        Self {
            key: key.to_owned(),
            message: message.into(),
        }
    }
}

/// Which broker links the nodes: every kind PROTOCOL.md §4 names, built or not.
///
/// Reading one from the config accepts only the kinds this build has
/// ([`crate::brokers::supported`]): a kind the contract names but the binary
/// lacks must stop `--check-config` and the start alike, with the same line as
/// a misspelt one, rather than pass the check and fail later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum BrokerKind {
    Memory,
    Redis,
    Nats,
    Kafka,
    Rabbitmq,
}

impl BrokerKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [BrokerKind; 5] = [
        BrokerKind::Memory,
        BrokerKind::Redis,
        BrokerKind::Nats,
        BrokerKind::Kafka,
        BrokerKind::Rabbitmq,
    ];

    /// The config spelling (`broker.kind`).
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Memory => "memory",
            BrokerKind::Redis => "redis",
            BrokerKind::Nats => "nats",
            BrokerKind::Kafka => "kafka",
            BrokerKind::Rabbitmq => "rabbitmq",
        }
    }
}

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for BrokerKind {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        match BrokerKind::ALL.into_iter().find(|k| k.name() == value) {
            Some(kind) if crate::brokers::supported().contains(&kind) => Ok(kind),
            Some(kind) => Err(crate::brokers::not_built(kind)),
            None => Err(format!(
                "`{value}` is not a broker kind; this build supports {}",
                crate::brokers::supported_names()
            )),
        }
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Jwt,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpConfig {
    pub listen: String,
    /// HTTP worker threads; 0 = one per CPU.
    pub workers: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Empty = host name plus a random suffix.
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BrokerConfig {
    pub kind: BrokerKind,
    pub url: String,
    /// Read only when `kind` is `kafka`.
    pub kafka: KafkaConfig,
    /// Read only when `kind` is `rabbitmq`.
    pub rabbitmq: RabbitConfig,
}

/// `broker.rabbitmq.*`: what only the RabbitMQ broker reads (PROTOCOL.md §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RabbitConfig {
    /// Streams of room messages.
    pub room_streams: u16,
    /// Streams of direct dedupe claims.
    pub user_streams: u16,
    /// Room messages kept per read stream for history and recovery.
    pub tail_records: usize,
    /// Retention of each stream, in bytes.
    pub stream_max_bytes: u64,
    /// The most envelopes the node's own queue holds.
    pub queue_max_messages: u32,
}

/// `broker.kafka.*`: what only the Kafka broker reads (PROTOCOL.md §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KafkaConfig {
    /// Partitions of `<ns>.rooms`.
    pub room_partitions: i32,
    /// Partitions of `<ns>.users`.
    pub user_partitions: i32,
    /// Replicas of the topics the node creates; 0 = 3, or the number of
    /// brokers when fewer.
    pub replication: i32,
    /// The producer's `linger.ms` (0–5).
    pub linger_ms: u32,
    /// The consumer's `fetch.wait.max.ms` (1–500).
    pub fetch_wait_ms: u32,
    /// Room messages kept per read partition for history and recovery.
    pub tail_records: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub namespace: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HS256 secret.
    pub jwt_secret: String,
    /// RS256 public key (PEM); when set, tokens must be RS256 instead of HS256.
    pub jwt_public_key_file: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiConfig {
    #[serde(deserialize_with = "list_or_csv")]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryConfig {
    pub size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceConfig {
    pub ttl_ms: u64,
    /// A room gathers presence changes for this long and sends them as one
    /// `presence_diff`; 0 (the default while it is measured on every broker)
    /// sends one frame per change.
    pub diff_interval_ms: u64,
    /// Above this many present users a room's diffs carry counts, not names.
    pub names_limit: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DedupeConfig {
    pub window_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LimitsConfig {
    pub publish_per_sec: f64,
    pub publish_burst: f64,
    pub outbound_bytes: usize,
    pub max_frame: usize,
    pub max_rooms_per_connection: usize,
    /// WebSocket connections this node accepts; beyond it upgrades get 503.
    pub max_connections: usize,
    /// Upgrades one client address may attempt per second; 0 = no limit.
    pub connections_per_ip_per_sec: f64,
    /// Upgrades one client address may attempt at once before the rate applies.
    pub connections_per_ip_burst: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WsConfig {
    /// How often the node pings each client (sent to clients in `hello`).
    pub heartbeat_ms: u64,
    /// A client silent for this long (no frame, no pong) is closed.
    pub idle_timeout_ms: u64,
    /// Browser origins allowed to upgrade (`https://chat.example.com`); empty =
    /// any. An upgrade without an `Origin` header (not a browser) is allowed.
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SocketIoConfig {
    /// Serve Socket.IO clients at `/socket.io/`.
    pub enabled: bool,
    /// Connection-state recovery: events carry the client's offset, and a
    /// reconnecting client gets what it missed (`socket.recovered`).
    pub recovery: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShutdownConfig {
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `chatmesh=debug`; `RUST_LOG` wins when set.
    pub level: String,
}

/// The whole configuration. Field names are the keys of PROTOCOL.md §4.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub http: HttpConfig,
    pub node: NodeConfig,
    pub broker: BrokerConfig,
    pub cluster: ClusterConfig,
    pub auth: AuthConfig,
    pub api: ApiConfig,
    pub history: HistoryConfig,
    pub presence: PresenceConfig,
    pub dedupe: DedupeConfig,
    pub limits: LimitsConfig,
    pub ws: WsConfig,
    pub socketio: SocketIoConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: HttpConfig {
                listen: "127.0.0.1:8080".into(),
                workers: 0,
            },
            node: NodeConfig { id: String::new() },
            broker: BrokerConfig {
                kind: BrokerKind::Memory,
                url: String::new(),
                kafka: KafkaConfig {
                    room_partitions: 16,
                    user_partitions: 16,
                    replication: 0,
                    linger_ms: 0,
                    fetch_wait_ms: 10,
                    tail_records: 10_000,
                },
                rabbitmq: RabbitConfig {
                    room_streams: 16,
                    user_streams: 16,
                    tail_records: 10_000,
                    stream_max_bytes: 256 << 20,
                    queue_max_messages: 100_000,
                },
            },
            cluster: ClusterConfig {
                namespace: "chatmesh".into(),
            },
            auth: AuthConfig {
                mode: AuthMode::None,
                jwt_secret: String::new(),
                jwt_public_key_file: String::new(),
            },
            api: ApiConfig { keys: Vec::new() },
            history: HistoryConfig { size: 1000 },
            presence: PresenceConfig {
                ttl_ms: 30_000,
                diff_interval_ms: 0,
                names_limit: 1000,
            },
            dedupe: DedupeConfig { window_ms: 300_000 },
            limits: LimitsConfig {
                publish_per_sec: 1000.0,
                publish_burst: 2000.0,
                outbound_bytes: 1 << 20,
                max_frame: 65_536,
                max_rooms_per_connection: 1000,
                max_connections: 100_000,
                connections_per_ip_per_sec: 0.0,
                connections_per_ip_burst: 20.0,
            },
            ws: WsConfig {
                heartbeat_ms: 25_000,
                idle_timeout_ms: 60_000,
                allowed_origins: Vec::new(),
            },
            socketio: SocketIoConfig {
                enabled: true,
                recovery: true,
            },
            shutdown: ShutdownConfig { timeout_ms: 10_000 },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".into(),
            },
        }
    }
}

/// `api.keys` and `ws.allowed_origins` come as a TOML list or, from the
/// environment, as `a,b,c`.
fn list_or_csv<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Either::deserialize(d)? {
        Either::List(v) => v,
        Either::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

impl Config {
    /// Loads and checks the configuration. `file` is `--config` (or
    /// `CHATMESH_CONFIG`, resolved by the caller).
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::from_figment(Self::figment(file))
    }

    /// The layered sources, in precedence order.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        // Every key lives in a section, so only `CHATMESH_<SECTION>__<KEY>` is
        // config; single-word variables (`CHATMESH_CONFIG`, the test suite's
        // `CHATMESH_BIN`) are not.
        fig.merge(
            Env::prefixed("CHATMESH_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        )
    }

    /// Extracts and checks a config from any figment (tests use this directly).
    pub fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        reject_unknown_keys(&fig)?;
        let mut config: Config = fig.extract().map_err(one_line)?;
        config.check()?;
        if config.node.id.is_empty() {
            config.node.id = default_node_id();
        }
        Ok(config)
    }

    /// The address to listen on (checked by [`Config::load`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|_| {
            ConfigError::new(
                "http.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.http.listen
                ),
            )
        })
    }

    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence.ttl_ms)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if self.broker.kind != BrokerKind::Memory && self.broker.url.trim().is_empty() {
            return Err(ConfigError::new(
                "broker.url",
                format!("required when broker.kind is {}", self.broker.kind),
            ));
        }
        let ns = &self.cluster.namespace;
        if ns.is_empty()
            || ns.len() > 64
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ConfigError::new(
                "cluster.namespace",
                "1 to 64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
            ));
        }
        if self.auth.mode == AuthMode::Jwt
            && self.auth.jwt_secret.is_empty()
            && self.auth.jwt_public_key_file.is_empty()
        {
            return Err(ConfigError::new(
                "auth.jwt_secret",
                "required when auth.mode is jwt (or set auth.jwt_public_key_file for RS256)",
            ));
        }
        let positive = [
            ("history.size", self.history.size as f64),
            ("presence.ttl_ms", self.presence.ttl_ms as f64),
            ("dedupe.window_ms", self.dedupe.window_ms as f64),
            ("limits.publish_per_sec", self.limits.publish_per_sec),
            ("limits.publish_burst", self.limits.publish_burst),
            ("limits.outbound_bytes", self.limits.outbound_bytes as f64),
            ("limits.max_frame", self.limits.max_frame as f64),
            (
                "limits.max_rooms_per_connection",
                self.limits.max_rooms_per_connection as f64,
            ),
            ("ws.heartbeat_ms", self.ws.heartbeat_ms as f64),
            ("ws.idle_timeout_ms", self.ws.idle_timeout_ms as f64),
            ("shutdown.timeout_ms", self.shutdown.timeout_ms as f64),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.limits.publish_burst < 1.0 {
            return Err(ConfigError::new(
                "limits.publish_burst",
                "must be at least 1",
            ));
        }
        let per_ip = self.limits.connections_per_ip_per_sec;
        if !(per_ip.is_finite() && per_ip >= 0.0) {
            return Err(ConfigError::new(
                "limits.connections_per_ip_per_sec",
                "must be 0 (no limit) or greater",
            ));
        }
        let burst = self.limits.connections_per_ip_burst;
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(ConfigError::new(
                "limits.connections_per_ip_burst",
                "must be at least 1",
            ));
        }
        for origin in &self.ws.allowed_origins {
            check_origin(origin)?;
        }
        Ok(())
    }

    /// This config as `--check-config` prints it: every secret (the JWT
    /// secret, each API key, the password or token of each broker URL)
    /// replaced by `***`, so the output can be pasted into a ticket.
    pub fn redacted(&self) -> Config {
        use chatmesh_broker::support::{redact_url, REDACTED};
        let mut shown = self.clone();
        if !shown.auth.jwt_secret.is_empty() {
            shown.auth.jwt_secret = REDACTED.into();
        }
        for key in &mut shown.api.keys {
            *key = REDACTED.into();
        }
        shown.broker.url = redact_url(&shown.broker.url);
        shown
    }

    /// Every secret of this config, as text that must never be logged: the
    /// ones [`Config::redacted`] hides, with each broker password also
    /// percent-decoded (see [`crate::redact`]).
    pub fn secrets(&self) -> Vec<String> {
        let mut secrets = chatmesh_broker::support::url_secrets(&self.broker.url);
        secrets.extend(self.api.keys.iter().cloned());
        secrets.push(self.auth.jwt_secret.clone());
        secrets.retain(|s| !s.is_empty());
        secrets
    }

    /// Whether a browser's `Origin` may upgrade (`ws.allowed_origins`).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let list = &self.ws.allowed_origins;
        list.is_empty()
            || list
                .iter()
                .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }
}

/// An entry of `ws.allowed_origins` is an origin as browsers send it:
/// `scheme://host[:port]`, nothing after it (a trailing `/` is tolerated).
fn check_origin(origin: &str) -> Result<(), ConfigError> {
    let ok = origin.split_once("://").is_some_and(|(scheme, host)| {
        let host = host.strip_suffix('/').unwrap_or(host);
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            && !host.is_empty()
            && !host.contains(['/', '?', '#', '@'])
            && !host.chars().any(char::is_whitespace)
    });
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "ws.allowed_origins",
            format!("`{origin}` is not an origin like https://chat.example.com"),
        ))
    }
}

/// A misspelt key (`CHATMESH_BROKER__KND`) would otherwise be ignored and the
/// node would start with a default the operator did not want.
fn reject_unknown_keys(fig: &Figment) -> Result<(), ConfigError> {
    use figment::value::{Dict, Value};
    use figment::Provider;
    fn walk(given: &Dict, known: &Dict, prefix: &str) -> Result<(), String> {
        for (key, value) in given {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match (known.get(key), value) {
                (None, _) => return Err(path),
                (Some(Value::Dict(_, k)), Value::Dict(_, g)) => walk(g, k, &path)?,
                _ => {}
            }
        }
        Ok(())
    }
    let known = Figment::from(Serialized::defaults(Config::default()))
        .data()
        .ok()
        .and_then(|mut d| d.remove(&figment::Profile::Default))
        .unwrap_or_default();
    let given = fig
        .data()
        .map_err(one_line)?
        .remove(&figment::Profile::Default)
        .unwrap_or_default();
    walk(&given, &known, "").map_err(|path| {
        let source = fig
            .find_metadata(&path)
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        ConfigError::new(&path, format!("unknown configuration key{source}"))
    })
}

/// figment errors name the key as a path; keep the first one, on one line.
fn one_line(err: figment::Error) -> ConfigError {
    let key = err.path.join(".");
    let mut message = err.kind.to_string();
    if let Some(source) = err.metadata.as_ref().map(|m| m.name.to_string()) {
        message = format!("{message} (from {source})");
    }
    ConfigError::new(
        if key.is_empty() { "config" } else { &key },
        message.replace('\n', " "),
    )
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{:04x}", rand::random::<u16>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure type.
    fn load_with(vars: &[(&str, &str)], toml: Option<&str>) -> Result<Config, ConfigError> {
        let mut result = None;
        figment::Jail::expect_with(|jail| {
            for (k, v) in vars {
                jail.set_env(k, v);
            }
            let file = toml.map(|t| {
                jail.create_file("chatmesh.toml", t).expect("write toml");
                std::path::PathBuf::from("chatmesh.toml")
            });
            result = Some(Config::load(file.as_deref()));
            Ok(())
        });
        result.expect("jail ran")
    }

    #[test]
    fn defaults_match_the_protocol() {
        let c = load_with(&[], None).expect("defaults load");
        assert_eq!(c.http.listen, "127.0.0.1:8080");
        assert_eq!(c.broker.kind, BrokerKind::Memory);
        assert_eq!(c.cluster.namespace, "chatmesh");
        assert_eq!(c.history.size, 1000);
        assert_eq!(c.presence.ttl_ms, 30_000);
        assert_eq!(c.limits.outbound_bytes, 1_048_576);
        assert_eq!(c.limits.max_frame, 65_536);
        assert_eq!(c.shutdown.timeout_ms, 10_000);
        assert!(c.api.keys.is_empty());
        assert!(!c.node.id.is_empty());
    }

    #[test]
    fn env_overrides_file_overrides_defaults() {
        let c = load_with(
            &[
                ("CHATMESH_HISTORY__SIZE", "7"),
                ("CHATMESH_API__KEYS", "k1, k2"),
                ("CHATMESH_CONFIG", "ignored"),
                ("CHATMESH_BIN", "ignored"),
            ],
            Some("[history]\nsize = 5\n[cluster]\nnamespace = \"prod\"\n"),
        )
        .expect("loads");
        assert_eq!(c.history.size, 7);
        assert_eq!(c.cluster.namespace, "prod");
        assert_eq!(c.api.keys, ["k1", "k2"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("CHATMESH_BROKER__KIND", "bogus")], "broker.kind"),
            (&[("CHATMESH_BROKER__KIND", "kafka")], "broker.kind"),
            (&[("CHATMESH_BROKER__KIND", "rabbitmq")], "broker.url"),
            (&[("CHATMESH_HTTP__LISTEN", "nope")], "http.listen"),
            (&[("CHATMESH_BROKER__KIND", "redis")], "broker.url"),
            (&[("CHATMESH_AUTH__MODE", "jwt")], "auth.jwt_secret"),
            (&[("CHATMESH_HISTORY__SIZE", "lots")], "history.size"),
            (&[("CHATMESH_LIMITS__MAX_FRAME", "0")], "limits.max_frame"),
            (
                &[("CHATMESH_CLUSTER__NAMESPACE", "a b")],
                "cluster.namespace",
            ),
            (
                &[("CHATMESH_LIMITS__CONNECTIONS_PER_IP_PER_SEC", "-1")],
                "limits.connections_per_ip_per_sec",
            ),
            (
                &[("CHATMESH_LIMITS__CONNECTIONS_PER_IP_BURST", "0.5")],
                "limits.connections_per_ip_burst",
            ),
            (
                &[("CHATMESH_WS__ALLOWED_ORIGINS", "https://a.example/path")],
                "ws.allowed_origins",
            ),
            (
                &[("CHATMESH_WS__ALLOWED_ORIGINS", "chat.example.com")],
                "ws.allowed_origins",
            ),
        ];
        for (vars, key) in cases {
            let err = load_with(vars, None).expect_err("must fail");
            let line = err.to_string();
            assert!(line.contains(key), "{line:?} does not name {key}");
            assert!(!line.contains('\n'), "{line:?} is not one line");
        }
    }

    #[test]
    fn origins_come_as_a_list_and_compare_without_case_or_trailing_slash() {
        let c = load_with(&[], None).expect("defaults");
        assert!(c.ws.allowed_origins.is_empty());
        assert!(c.origin_allowed("https://anything.example"));
        let c = load_with(
            &[(
                "CHATMESH_WS__ALLOWED_ORIGINS",
                "https://chat.example.com/, http://localhost:8080",
            )],
            None,
        )
        .expect("loads");
        assert!(c.origin_allowed("https://chat.example.com"));
        assert!(c.origin_allowed("HTTPS://Chat.Example.com"));
        assert!(c.origin_allowed("http://localhost:8080"));
        assert!(!c.origin_allowed("http://localhost:8081"));
        assert!(!c.origin_allowed("https://chat.example.com.evil.example"));
        assert!(!c.origin_allowed("null"));
    }

    #[test]
    fn the_redacted_config_shows_no_secret() {
        let c = load_with(
            &[
                ("CHATMESH_AUTH__MODE", "jwt"),
                ("CHATMESH_AUTH__JWT_SECRET", "jwt-s3cret"),
                ("CHATMESH_API__KEYS", "key-one,key-two"),
                ("CHATMESH_BROKER__KIND", "redis"),
                (
                    "CHATMESH_BROKER__URL",
                    "redis://u:redis-pw@h:1,redis://:pw2@h:2",
                ),
            ],
            None,
        )
        .expect("loads");
        let shown = serde_json::to_string(&c.redacted()).expect("serializes");
        for secret in ["jwt-s3cret", "key-one", "key-two", "redis-pw", "pw2"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("redis://u:***@h:1,redis://:***@h:2"),
            "{shown}"
        );
        // The config itself keeps them.
        assert_eq!(c.auth.jwt_secret, "jwt-s3cret");
        let mut secrets = c.secrets();
        secrets.sort();
        assert_eq!(
            secrets,
            ["jwt-s3cret", "key-one", "key-two", "pw2", "redis-pw"]
        );
    }

    #[test]
    fn an_unbuilt_or_unknown_broker_kind_lists_what_this_build_supports() {
        let supported = crate::brokers::supported_names();
        assert!(supported.starts_with("memory"), "{supported}");
        // Kafka and RabbitMQ are there when their features are.
        assert_eq!(supported.contains("kafka"), cfg!(feature = "kafka"));
        assert_eq!(supported.contains("rabbitmq"), cfg!(feature = "rabbitmq"));
        let mut unbuilt = vec![("bogus", "`bogus` is not a broker kind")];
        if !cfg!(feature = "kafka") {
            unbuilt.push(("kafka", "`kafka` is not built into this binary"));
        }
        if !cfg!(feature = "rabbitmq") {
            unbuilt.push(("rabbitmq", "`rabbitmq` is not built into this binary"));
        }
        for (kind, says) in unbuilt {
            let line = load_with(&[("CHATMESH_BROKER__KIND", kind)], None)
                .expect_err("must fail")
                .to_string();
            assert!(line.starts_with("config error: broker.kind: "), "{line}");
            assert!(line.contains(says), "{line}");
            assert!(
                line.contains(&format!("this build supports {supported}")),
                "{line}"
            );
        }
        for kind in crate::brokers::supported() {
            let toml = format!("[broker]\nkind = \"{kind}\"\nurl = \"x://h:1\"\n");
            let c = load_with(&[], Some(&toml)).expect("a built kind loads");
            assert_eq!(c.broker.kind, kind);
        }
    }
}
