//! The plugins' side of the config file: the table of built-in plugins
//! ([`builtin_plugins`]), [`PluginConfig`] generated from it, and each plugin's settings.
//! A built-in plugin is its line in the table and its settings here, and its runtime in
//! `src/plugin/NAME.rs` (see docs/architecture.md). Re-exported by `config::model`.

use super::model::yes;
use super::units::{Dur, Rate, Size};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
