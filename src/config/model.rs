//! The config file's shape, mirrored one-to-one from `conf/reference.yaml` (the contract's
//! reference file and moat's documented additions).
//!
//! These structs are the external schema only: every key the contract names is accepted
//! here (with `deny_unknown_fields`), and `validate` decides what is correct. The request path never reads them; `runtime::compile` turns them
//! into the runtime model.

use super::units::{Dur, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The whole config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Process-level settings; changing them needs a graceful upgrade.
    #[serde(default)]
    pub server: ServerConfig,
    /// Public listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener (health, metrics, status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// Where the JSON access log goes; absent = no access log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_log: Option<AccessLogConfig>,
    /// Shared state for cluster-wide limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// Reload the config when the file changes on disk (addition to the reference file).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
    /// Named upstream pools.
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Identities that credentials resolve to.
    #[serde(default)]
    pub consumers: Vec<ConsumerConfig>,
    /// Named JWT issuers.
    #[serde(default)]
    pub jwt_providers: BTreeMap<String, JwtProviderConfig>,
    /// Plugins run on every route before the route's own.
    #[serde(default)]
    pub global_plugins: Vec<PluginConfig>,
    /// The route table.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

impl Config {
    /// Every plugin entry, global ones first, with its path (`global_plugins[0]`,
    /// `routes[1].plugins[2]`).
    pub fn plugins(&self) -> impl Iterator<Item = (String, &PluginConfig)> {
        use super::error::{index, join};
        let global = self
            .global_plugins
            .iter()
            .enumerate()
            .map(|(i, p)| (index("global_plugins", i), p));
        let routes = self.routes.iter().enumerate().flat_map(|(i, r)| {
            r.plugins
                .iter()
                .enumerate()
                .map(move |(j, p)| (index(&join(&index("routes", i), "plugins"), j), p))
        });
        global.chain(routes)
    }
}

/// `server:` — maps onto Pingora's `ServerConf`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub threads: Option<usize>,
    pub pid_file: Option<String>,
    pub upgrade_sock: Option<String>,
    pub grace_period: Option<Dur>,
    pub shutdown_timeout: Option<Dur>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub limits: Option<LimitsConfig>,
}

/// `server.limits:` — request size and time limits.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_header_bytes: Option<Size>,
    pub max_headers: Option<usize>,
    pub header_timeout: Option<Dur>,
    pub max_body: Option<Size>,
    pub idle_timeout: Option<Dur>,
    /// Open downstream connections per client address; more are closed at accept
    /// (addition to the reference file; peers in `trusted_proxies` are exempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_ip: Option<u32>,
    /// The IPv6 prefix length counted as one client address by `max_connections_per_ip`
    /// (addition to the reference file; default 64: a client holds a whole /64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_ip_v6_prefix: Option<u8>,
    /// Open downstream connections in the whole process (addition to the reference file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
}

/// One public listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    pub address: String,
    pub redirect_https: Option<u16>,
    pub http2: Option<bool>,
    pub tls: Option<ListenerTlsConfig>,
}

/// TLS termination settings of a listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsConfig {
    pub min_version: Option<String>,
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
}

/// One certificate and its key, chosen by SNI.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert_file: String,
    pub key_file: String,
}

/// `admin:` — the separate admin listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub address: String,
    /// Environment variable holding the Bearer token (its value is taken at start and on
    /// every reload; the environment itself is the one the process started with).
    pub token_env: Option<String>,
    /// File holding the Bearer token, read at start and on every reload (addition to the
    /// reference file: how a token is rotated without a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
    /// `Host` values admitted besides loopback names and addresses: host names, IP
    /// addresses or CIDR networks (addition to the reference file; DNS rebinding).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

/// `access_log:`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// `stdout` or a file path.
    #[serde(default = "default_log_path")]
    pub path: String,
    #[serde(default)]
    pub format: LogFormat,
}

fn default_log_path() -> String {
    "stdout".to_string()
}

/// Access log formats.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
}

/// `redis:`: exactly one of `url` (one server), `cluster` (seed nodes of a Redis Cluster)
/// or `sentinel` (a master found through Redis Sentinel). `url`, `cluster`, `sentinel`,
/// `password_env` and `tls` are checked by `redis::config`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) `[user[:password]@]host[:port][/db]`.
    pub url: Option<String>,
    /// Seed URLs of a Redis Cluster (all `redis://` or all `rediss://`).
    pub cluster: Option<Vec<String>>,
    /// Redis Sentinel (addition).
    pub sentinel: Option<SentinelConfig>,
    /// Environment variable holding the password (addition); wins over one in a URL.
    pub password_env: Option<String>,
    /// TLS settings (addition): with `rediss://` URLs, or for `sentinel` (then TLS to the
    /// sentinels and the master).
    pub tls: Option<RedisTlsConfig>,
    pub timeout: Option<Dur>,
    pub key_prefix: Option<String>,
}

/// `redis.sentinel` (addition).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SentinelConfig {
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// Sentinels, `host:port` (port 26379 by default).
    pub nodes: Vec<String>,
    /// Environment variable holding the sentinels' own password (`requirepass` on them).
    pub password_env: Option<String>,
    /// The master's database number [0].
    pub db: Option<u32>,
    /// ACL user of the master (its password: `redis.password_env`).
    pub username: Option<String>,
}

/// `redis.tls` (addition).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// PEM CA certificate(s) the servers' certificates must chain to; replaces the system
    /// trust store.
    pub ca_file: Option<String>,
    /// PEM client certificate (chain), for servers that require one (`tls-auth-clients`).
    pub cert_file: Option<String>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<String>,
    /// Check the server's certificate and name [true].
    pub verify: Option<bool>,
}

/// One upstream pool.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub targets: Vec<TargetConfig>,
    #[serde(default)]
    pub balance: Balance,
    pub hash_key: Option<String>,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier: Option<OutlierConfig>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub retries: Option<u32>,
    pub tls: Option<UpstreamTlsConfig>,
    /// Speak HTTP/2 to the targets (an addition to the contract): h2 by ALPN over TLS
    /// (HTTP/1.1 when the target does not offer h2), h2c with prior knowledge without TLS.
    pub http2: Option<bool>,
}

/// A target: `"host:port"` or `{ address, weight }`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Hash)]
pub struct TargetConfig {
    pub address: String,
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetMap {
    address: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for TargetConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = TargetConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"host:port\" or { address, weight }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TargetConfig, E> {
                Ok(TargetConfig {
                    address: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<TargetConfig, A::Error> {
                let t = TargetMap::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(TargetConfig {
                    address: t.address,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Load-balancing algorithms.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Ketama consistent hashing on `hash_key`.
    ConsistentHash,
    /// Power of two choices on in-flight requests.
    LeastRequests,
}

/// Active health checks.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    pub http: Option<HttpCheckConfig>,
    pub tcp: Option<TcpCheckConfig>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub unhealthy_after: Option<u32>,
    pub healthy_after: Option<u32>,
}

/// An HTTP probe.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct HttpCheckConfig {
    #[serde(default = "root_path")]
    pub path: String,
    pub expect_status: Option<u16>,
    pub host: Option<String>,
}

fn root_path() -> String {
    "/".to_string()
}

/// A TCP connect probe (no settings).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct TcpCheckConfig {}

/// Passive outlier ejection.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub eject_for: Dur,
}

/// TLS to the upstream.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    pub sni: Option<String>,
    #[serde(default = "yes")]
    pub verify: bool,
    pub ca_file: Option<String>,
}

pub(super) fn yes() -> bool {
    true
}

/// An identity.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    pub id: String,
    pub tier: Option<String>,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub hmac: Vec<HmacCredentialConfig>,
    /// JWT providers (with `consumer_map: consumers`) whose tokens may name this consumer
    /// [none: no token can].
    #[serde(default)]
    pub jwt_providers: Vec<String>,
}

/// An API key, stored as the SHA-256 of the key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub sha256: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub expires: Option<String>,
}

/// An HMAC credential.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HmacCredentialConfig {
    pub key_id: String,
    pub secret_env: String,
}

/// A JWT issuer and where its keys come from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProviderConfig {
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<String>,
    pub public_key_file: Option<String>,
    pub secret_env: Option<String>,
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub leeway: Option<Dur>,
    pub jwks_refresh: Option<Dur>,
    pub jwks_cooldown: Option<Dur>,
    pub consumer_claim: Option<String>,
    pub scopes_claim: Option<String>,
    /// What the `consumer_claim` names [namespaced].
    #[serde(default)]
    pub consumer_map: ConsumerMap,
    /// Accept an `http://` `jwks_url` on a host that is not loopback [false].
    #[serde(default)]
    pub allow_insecure_jwks: bool,
}

/// What a JWT provider's `consumer_claim` names.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerMap {
    /// A consumer of the provider's own: `PROVIDER:VALUE` (`corp:alice`).
    #[default]
    Namespaced,
    /// One of `consumers:`, by id; a token naming none is refused.
    Consumers,
}

/// One route.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matcher: MatchConfig,
    pub priority: Option<i32>,
    pub upstream: Option<String>,
    pub respond: Option<RespondConfig>,
    pub redirect: Option<RedirectConfig>,
    pub rewrite: Option<RewriteConfig>,
    pub max_body: Option<Size>,
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
}

/// What a route matches.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// A response moat makes itself.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RespondConfig {
    #[serde(default = "ok_status")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ok_status() -> u16 {
    200
}

/// A redirect.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    pub to: String,
    pub status: Option<u16>,
}

/// Path rewriting before the request goes upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
}

pub use super::plugins::*;
