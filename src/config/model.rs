//! The config file's shape, mirrored one-to-one from `conf/reference.yaml` (the contract's
//! reference file and moat's documented additions).
//!
//! These structs are the external schema only: every key the contract names is accepted
//! here (with `deny_unknown_fields`), and `validate` decides what is correct. The request path never reads them; `runtime::compile` turns them
//! into the runtime model.

use super::units::{Dur, Rate, Size};
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

fn yes() -> bool {
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

/// The built-in plugins, one line each: variant, name in the config, settings type. This
/// table is the one place a built-in plugin is listed: it generates [`PluginConfig`]'s
/// variants, [`PLUGIN_NAMES`], the deserializer's arms and [`PluginConfig::name`] here,
/// and the compile arms in `plugin` (each settings type implements
/// `plugin::CompilePlugin` in its plugin's file). Call it with the name of a macro taking
/// `$($variant:ident $name:tt $settings:ty),*` ($name: a string literal).
macro_rules! builtin_plugins {
    ($then:ident) => {
        $then! {
            RequestId "request_id" RequestIdConfig,
            Headers "headers" HeadersConfig,
            Auth "auth" AuthConfig,
            RateLimit "rate_limit" RateLimitConfig,
            Quota "quota" QuotaConfig,
            Concurrency "concurrency" ConcurrencyConfig,
            IpFilter "ip_filter" IpFilterConfig,
            Cors "cors" CorsConfig,
            SecurityHeaders "security_headers" SecurityHeadersConfig,
            Compression "compression" CompressionConfig
        }
    };
}
pub(crate) use builtin_plugins;

/// The closed plugin registry's config side, from the table in [`builtin_plugins`].
macro_rules! plugin_config {
    ($($variant:ident $name:tt $settings:ty),*) => {
        /// The closed plugin registry: one variant per plugin, each with its typed
        /// settings, written as a one-key mapping (`- rate_limit: { ... }`).
        #[derive(Debug, Clone, Serialize)]
        pub enum PluginConfig {
            $(
                #[doc = concat!("`", $name, "`.")]
                #[serde(rename = $name)]
                $variant($settings),
            )*
            /// A plugin registered by a custom build (see `plugins/`); its settings are
            /// checked by its factory when the config is compiled, so a name nobody
            /// registered is still an error at load time.
            #[serde(untagged)]
            External(ExternalPluginConfig),
        }

        /// Every plugin name, for error messages.
        pub const PLUGIN_NAMES: &[&str] = &[$($name),*];

        impl PluginConfig {
            /// The plugin's name as written in the config.
            pub fn name(&self) -> &str {
                match self {
                    $(PluginConfig::$variant(_) => $name,)*
                    PluginConfig::External(e) => &e.name,
                }
            }

            /// The built-in plugin called `name`, its settings read from `m`'s next value;
            /// `None` when no built-in plugin has that name.
            fn next_builtin<'de, A: serde::de::MapAccess<'de>>(
                name: &str,
                m: &mut A,
            ) -> Result<Option<PluginConfig>, A::Error> {
                Ok(Some(match name {
                    $($name => PluginConfig::$variant(m.next_value()?),)*
                    _ => return Ok(None),
                }))
            }
        }
    };
}
builtin_plugins!(plugin_config);

/// A plugin outside the built-in registry: its name and its settings, unparsed.
#[derive(Debug, Clone)]
pub struct ExternalPluginConfig {
    /// The name it is registered under.
    pub name: String,
    /// Its settings, decoded by its factory.
    pub settings: serde_yaml::Value,
}

impl Serialize for ExternalPluginConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(&self.name, &self.settings)?;
        m.end()
    }
}

// serde_yaml 0.9 reads externally tagged enums only from `!tags`; plugins are written as
// one-key mappings, so they are decoded by hand.
impl<'de> Deserialize<'de> for PluginConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = PluginConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a plugin: a mapping with one key naming the plugin")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> Result<PluginConfig, A::Error> {
                use serde::de::Error;
                let name: String = m
                    .next_key()?
                    .ok_or_else(|| A::Error::custom("empty plugin: name one of the plugins"))?;
                let p = match PluginConfig::next_builtin(&name, &mut m)? {
                    Some(p) => p,
                    None => PluginConfig::External(ExternalPluginConfig {
                        name,
                        settings: m.next_value()?,
                    }),
                };
                if m.next_key::<String>()?.is_some() {
                    return Err(A::Error::custom(
                        "one plugin per list item: write each plugin as its own `- name: {...}`",
                    ));
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}

/// `request_id`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdConfig {
    /// Whose well-formed `X-Request-ID` is kept (default: nobody's).
    #[serde(default)]
    pub trust_incoming: TrustIncoming,
}

/// `request_id.trust_incoming`: whose `X-Request-ID` is kept, written `false`, `true` or
/// `any`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrustIncoming {
    /// `false`: nobody's; every request gets a new id.
    #[default]
    Nobody,
    /// `true`: a direct peer's in `server.trusted_proxies` only (the proxy in front of
    /// moat, which made or checked the id); any other client's is replaced.
    TrustedProxies,
    /// `any`: any client's, whoever it is (an id a client chooses then reaches upstream
    /// logs and deduplication: for moat behind something that sets the id itself).
    Any,
}

impl<'de> Deserialize<'de> for TrustIncoming {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = TrustIncoming;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true (from server.trusted_proxies), false or any")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<TrustIncoming, E> {
                Ok(if v {
                    TrustIncoming::TrustedProxies
                } else {
                    TrustIncoming::Nobody
                })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TrustIncoming, E> {
                match v {
                    "any" => Ok(TrustIncoming::Any),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for TrustIncoming {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TrustIncoming::Nobody => s.serialize_bool(false),
            TrustIncoming::TrustedProxies => s.serialize_bool(true),
            TrustIncoming::Any => s.serialize_str("any"),
        }
    }
}

/// `headers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    pub request: Option<HeaderOpsConfig>,
    pub response: Option<HeaderOpsConfig>,
}

/// Header operations, applied in the order remove, set, add.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOpsConfig {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `auth`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub methods: Vec<AuthMethod>,
    pub jwt: Option<JwtAuthConfig>,
    pub api_key: Option<ApiKeyAuthConfig>,
    pub hmac: Option<HmacAuthConfig>,
    pub require: Option<RequireConfig>,
    /// Remove the credential from what goes upstream [true].
    #[serde(default = "yes")]
    pub hide_credentials: bool,
}

/// Credential kinds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    Jwt,
    ApiKey,
    Hmac,
}

/// JWT settings of an `auth` plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    pub provider: String,
    /// `header`, `query:NAME` or `cookie:NAME`.
    #[serde(default)]
    pub token_from: Vec<String>,
}

/// API-key settings of an `auth` plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuthConfig {
    pub header: Option<String>,
    pub query: Option<String>,
}

/// HMAC settings of an `auth` plugin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HmacAuthConfig {
    pub clock_skew: Option<Dur>,
    /// A request with a body must carry a signed `Digest` [true].
    #[serde(default = "yes")]
    pub require_digest: bool,
    /// A signature is accepted once within this window [clock_skew]; `0s` turns it off.
    pub replay_window: Option<Dur>,
    /// Headers that must be among the signed ones (Kong's name) [`[host]`].
    pub enforce_headers: Option<Vec<String>>,
    /// Live signatures remembered per credential; past it, 503 [100000].
    pub replay_capacity: Option<u64>,
    /// What to do when Redis cannot answer the replay check [local].
    #[serde(default)]
    pub replay_on_redis_error: ReplayOnRedisError,
}

/// `hmac.replay_on_redis_error`: deciding a replay check without Redis.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOnRedisError {
    /// This instance's own memory decides (a replay sent to another instance meanwhile is
    /// not caught).
    #[default]
    Local,
    /// 503: no signed request is accepted without Redis.
    Deny,
}

/// Authorization rules.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequireConfig {
    #[serde(default)]
    pub any_scope: Vec<String>,
    #[serde(default)]
    pub all_scopes: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// Where a limiter keeps its counters.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Local,
    Cluster,
}

/// What a cluster limiter does when Redis fails.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    Allow,
    Deny,
    Local,
}

/// Rate-limit algorithms.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RateAlgorithm {
    SlidingWindow,
    TokenBucket,
    FixedWindow,
}

/// Cluster limiter modes.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    Exact,
    Fast,
}

/// `rate_limit`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub key: String,
    pub rate: Rate,
    pub burst: Option<u64>,
    pub algorithm: Option<RateAlgorithm>,
    #[serde(default)]
    pub tiers: BTreeMap<String, Rate>,
    #[serde(default)]
    pub scope: LimitScope,
    pub on_redis_error: Option<OnRedisError>,
    pub mode: Option<ClusterMode>,
    pub sync_interval: Option<Dur>,
    /// Keys tracked at most (addition to the reference file; default 1,000,000).
    pub max_keys: Option<usize>,
}

/// `quota`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub key: String,
    pub limit: Rate,
    #[serde(default)]
    pub tiers: BTreeMap<String, Rate>,
    /// Keys tracked at most (addition to the reference file; default 1,000,000).
    pub max_keys: Option<usize>,
    /// Where the counters live (addition to the reference file; default local).
    #[serde(default)]
    pub scope: LimitScope,
    /// Cluster scope: what to do when Redis fails (addition; default local).
    pub on_redis_error: Option<OnRedisError>,
}

/// `concurrency`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    pub key: String,
    pub max: u32,
    /// Where the slots are counted (addition to the reference file; default local).
    #[serde(default)]
    pub scope: LimitScope,
    /// Cluster scope: what to do when Redis fails (addition; default local).
    pub on_redis_error: Option<OnRedisError>,
    /// Cluster scope: how long a slot outlives an instance that stopped renewing it
    /// (addition; default 10s, at least 1s).
    pub lease: Option<Dur>,
}

/// `ip_filter`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}

/// `cors`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    #[serde(default)]
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub credentials: bool,
    pub max_age: Option<Dur>,
}

/// `security_headers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    pub hsts: Option<u64>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `compression`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionConfig {
    #[serde(default)]
    pub algorithms: Vec<String>,
    pub level: Option<u32>,
    #[serde(default)]
    pub content_types: Vec<String>,
    pub min_size: Option<Size>,
}
