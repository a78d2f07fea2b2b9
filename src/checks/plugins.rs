//! The plugin-settings pass: range and shape rules of built-in plugins' settings. A
//! plugin's `compile` runs its rule here first and then only builds, so the rule has one
//! home and a plugin compiled on its own (its unit tests, an embedding program) is
//! checked the same way as one in a config file.
//!
//! Moved here so far: `auth` (its methods and settings), `compression`, `concurrency`, `cors`,
//! `rate_limit`, `security_headers`. Still inside their own `compile`: `headers` and
//! `ip_filter` (their rules are their parsers': templates, CIDR lists), `hmac` settings
//! (`auth::signed::HmacSettings::compile`) and limiter keys (`ratelimit::KeySource`).

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{
    AuthConfig, AuthMethod, ClusterMode, CompressionConfig, ConcurrencyConfig, CorsConfig,
    LimitScope, RateAlgorithm, RateLimitConfig, SecurityHeadersConfig,
};
use crate::config::units::Rate;
use crate::ratelimit::lease::{DEFAULT_LEASE, MIN_LEASE};
use http::{HeaderName, Method};

/// The compression level used when none is given.
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 6;

/// `compression`: a level of 1-9, known algorithms, media types (never event streams).
pub fn compression(c: &CompressionConfig, path: &str, errs: &mut ConfigErrors) {
    if !(1..=9).contains(&c.level.unwrap_or(DEFAULT_COMPRESSION_LEVEL)) {
        errs.push(join(path, "level"), "must be between 1 and 9");
    }
    for (i, a) in c.algorithms.iter().enumerate() {
        if !matches!(a.as_str(), "gzip" | "br" | "brotli" | "zstd") {
            errs.push(
                index(&join(path, "algorithms"), i),
                format!("`{a}`: expected gzip, br or zstd"),
            );
        }
    }
    for (i, t) in c.content_types.iter().enumerate() {
        let t = t.trim().to_ascii_lowercase();
        if t == "text/event-stream" {
            errs.push(
                index(&join(path, "content_types"), i),
                "event streams are never compressed",
            );
        } else if !t.contains('/') {
            errs.push(
                index(&join(path, "content_types"), i),
                format!("`{t}` is not a media type"),
            );
        }
    }
}

/// `concurrency`: a lease of at least [`MIN_LEASE`], a limit of at least 1.
pub fn concurrency(c: &ConcurrencyConfig, path: &str, errs: &mut ConfigErrors) {
    if c.lease.map_or(DEFAULT_LEASE, |d| d.get()) < MIN_LEASE {
        errs.push(join(path, "lease"), "must be at least 1s");
    }
    if c.max == 0 {
        errs.push(join(path, "max"), "must be at least 1");
    }
}

/// `cors`: origins (`*` not with credentials), methods, header names.
pub fn cors(c: &CorsConfig, path: &str, errs: &mut ConfigErrors) {
    if c.origins.is_empty() {
        errs.push(join(path, "origins"), "list the allowed origins (or \"*\")");
    }
    if c.credentials && c.origins.iter().any(|o| o == "*") {
        errs.push(
            join(path, "origins"),
            "\"*\" cannot be used with credentials: true",
        );
    }
    for (i, o) in c.origins.iter().enumerate() {
        let valid = (o.starts_with("https://") || o.starts_with("http://"))
            && !o.ends_with('/')
            && o.split("://")
                .nth(1)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(['/', '?', '#', '*', ' ']));
        if o != "*" && (o == "null" || !valid) {
            errs.push(
                index(&join(path, "origins"), i),
                format!("`{o}` is not an origin like https://app.example.com"),
            );
        }
    }
    for (i, m) in c.methods.iter().enumerate() {
        let m = m.to_ascii_uppercase();
        if Method::from_bytes(m.as_bytes()).is_err() {
            errs.push(
                index(&join(path, "methods"), i),
                format!("`{m}` is not a method"),
            );
        }
    }
    for (k, names) in [
        ("headers", &c.headers),
        ("expose_headers", &c.expose_headers),
    ] {
        for (i, h) in names.iter().enumerate() {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(
                    index(&join(path, k), i),
                    format!("`{h}` is not a header name"),
                );
            }
        }
    }
}

/// Largest `burst`: fast-mode buckets count tokens in millionths in an `i64`.
pub const MAX_BURST: u64 = 1_000_000_000_000;

/// A `rate_limit`'s algorithm: `burst` without an algorithm means a token bucket (the
/// reference file's form), else a sliding window.
pub fn rate_algorithm(c: &RateLimitConfig) -> RateAlgorithm {
    c.algorithm.unwrap_or(match c.burst {
        Some(_) => RateAlgorithm::TokenBucket,
        None => RateAlgorithm::SlidingWindow,
    })
}

/// The `burst` of rate `r`: with tiers, `burst` scales with each tier's rate
/// (burst / rate × tier rate).
pub fn scaled_burst(c: &RateLimitConfig, r: &Rate) -> Option<u64> {
    c.burst.map(|b| {
        let scaled = (b as u128 * r.count as u128).div_ceil(c.rate.count.max(1) as u128);
        u64::try_from(scaled).unwrap_or(u64::MAX).max(1)
    })
}

/// `rate_limit`: `sync_interval` only with `mode: fast`, `burst` only for a token bucket
/// and in range, and the bucket each rate really gets (scaled per tier, or the rate's
/// count without `burst`) bounded like `burst` itself.
pub fn rate_limit(c: &RateLimitConfig, path: &str, errs: &mut ConfigErrors) {
    let fast = c.mode == Some(ClusterMode::Fast);
    if c.sync_interval.is_some() && !fast && c.scope == LimitScope::Cluster {
        errs.push(join(path, "sync_interval"), "only applies with mode: fast");
    }
    let bucket = rate_algorithm(c) == RateAlgorithm::TokenBucket;
    match c.burst {
        Some(_) if !bucket => errs.push(
            join(path, "burst"),
            "burst applies to algorithm: token_bucket only",
        ),
        Some(0) => errs.push(join(path, "burst"), "must be at least 1"),
        Some(b) if b > MAX_BURST => {
            errs.push(join(path, "burst"), format!("must be at most {MAX_BURST}"))
        }
        _ => {}
    }
    if bucket {
        let rates = std::iter::once(("rate".to_string(), &c.rate))
            .chain(c.tiers.iter().map(|(k, r)| (format!("tiers.{k}"), r)));
        for (at, r) in rates {
            let effective = scaled_burst(c, r).unwrap_or(r.count);
            if effective > MAX_BURST {
                errs.push(
                    join(path, &at),
                    format!("gives a token bucket of {effective}: at most {MAX_BURST}"),
                );
            }
        }
    }
}

/// Where a JWT may be found: one entry of `auth.jwt.token_from`.
pub enum TokenSource<'a> {
    /// `Authorization: Bearer`.
    Header,
    /// `query:NAME`.
    Query(&'a str),
    /// `cookie:NAME`.
    Cookie(&'a str),
}

/// `header`, `query:NAME` or `cookie:NAME`; `None` for anything else.
pub fn token_source(s: &str) -> Option<TokenSource<'_>> {
    match (s, s.split_once(':')) {
        ("header", _) => Some(TokenSource::Header),
        (_, Some(("query", n))) if !n.is_empty() => Some(TokenSource::Query(n)),
        (_, Some(("cookie", n))) if !n.is_empty() => Some(TokenSource::Cookie(n)),
        _ => None,
    }
}

/// The header an `api_key` method reads (`x-api-key` unless set); `None` when it is not a
/// header name or is `Authorization`.
pub fn api_key_header(c: &AuthConfig) -> Option<HeaderName> {
    let name = c
        .api_key
        .as_ref()
        .and_then(|a| a.header.as_deref())
        .unwrap_or("x-api-key");
    HeaderName::from_bytes(name.as_bytes())
        .ok()
        .filter(|h| *h != http::header::AUTHORIZATION)
}

/// `auth`: settings for each listed method and none for others, token sources, the API
/// key header.
pub fn auth(c: &AuthConfig, path: &str, errs: &mut ConfigErrors) {
    let has = |m| c.methods.contains(&m);
    match (&c.jwt, has(AuthMethod::Jwt)) {
        (None, true) => errs.push(join(path, "jwt"), "methods lists jwt: give jwt.provider"),
        (Some(_), false) => errs.push(
            join(path, "jwt"),
            "jwt settings given but `jwt` is not in methods",
        ),
        (Some(j), true) => {
            for (i, s) in j.token_from.iter().enumerate() {
                if token_source(s).is_none() {
                    errs.push(
                        format!("{}[{i}]", join(path, "jwt.token_from")),
                        format!("`{s}`: expected header, query:NAME or cookie:NAME"),
                    );
                }
            }
        }
        (None, false) => {}
    }
    if has(AuthMethod::ApiKey) {
        if api_key_header(c).is_none() {
            let name = c
                .api_key
                .as_ref()
                .and_then(|a| a.header.as_deref())
                .unwrap_or("x-api-key");
            errs.push(
                join(path, "api_key.header"),
                format!("`{name}` is not a usable header name"),
            );
        }
    } else if c.api_key.is_some() {
        errs.push(
            join(path, "api_key"),
            "api_key settings given but `api_key` is not in methods",
        );
    }
    if !has(AuthMethod::Hmac) && c.hmac.is_some() {
        errs.push(
            join(path, "hmac"),
            "hmac settings given but `hmac` is not in methods",
        );
    }
}

/// `security_headers`: header names and values, an HSTS age over 0.
pub fn security_headers(c: &SecurityHeadersConfig, path: &str, errs: &mut ConfigErrors) {
    for (i, n) in c.remove.iter().enumerate() {
        if HeaderName::from_bytes(n.as_bytes()).is_err() {
            errs.push(
                index(&join(path, "remove"), i),
                format!("`{n}` is not a header name"),
            );
        }
    }
    for (name, value) in &c.set {
        let here = join(&join(path, "set"), name);
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(here, format!("`{name}` is not a header name"));
        } else if super::bad_header_value(value) {
            errs.push(here, "value contains characters not allowed in a header");
        }
    }
    if c.hsts == Some(0) {
        errs.push(
            join(path, "hsts"),
            "must be more than 0 seconds (omit it to send no HSTS)",
        );
    }
}
