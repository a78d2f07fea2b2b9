//! The named passes ([`PASSES`]) and the ones of process settings, listeners, admin,
//! access log, consumers and key providers, and references from plugins; the upstreams and
//! routes passes are in their own files.

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Config, ConsumerMap, PluginConfig};
use jsonwebtoken::AlgorithmFamily;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

/// A check of a parsed config: it records every problem it finds in `errs`.
pub type Check = fn(&Config, &mut ConfigErrors);

/// The passes over a parsed config, each with its name, in the order they run (before any
/// compile step). Errors are sorted by path afterwards.
pub const PASSES: [(&str, Check); 9] = [
    ("server", server),
    ("listeners", listeners),
    ("admin", admin),
    ("access log", access_log),
    ("upstreams", super::upstreams::upstreams),
    ("consumers", consumers),
    ("key providers", providers),
    ("plugin references", plugin_refs),
    ("routes", super::routes::routes),
];

/// Record every problem of `cfg` the passes find: every pass of [`PASSES`].
pub fn validate(cfg: &Config, errs: &mut ConfigErrors) {
    for (_name, check) in PASSES {
        check(cfg, errs);
    }
}

/// `admin.address`: an address, not a listener's, and protected when not loopback.
fn admin(cfg: &Config, errs: &mut ConfigErrors) {
    let Some(a) = &cfg.admin else {
        return;
    };
    match a.address.parse::<SocketAddr>() {
        Ok(addr)
            if cfg
                .listeners
                .iter()
                .filter_map(|l| l.address.parse::<SocketAddr>().ok())
                .any(|l| clash(&l, &addr)) =>
        {
            errs.push("admin.address", "must differ from every listener's address")
        }
        Ok(addr)
            if !addr.ip().to_canonical().is_loopback()
                && a.token_env.is_none()
                && a.token_file.is_none() =>
        {
            errs.push(
                "admin.address",
                format!(
                    "`{}` is not a loopback address: protect it with admin.token_env or \
                     admin.token_file, or bind it to 127.0.0.1",
                    a.address
                ),
            )
        }
        Ok(_) => {}
        Err(_) => errs.push(
            "admin.address",
            format!("`{}` is not an ip:port address", a.address),
        ),
    }
    // The token itself (variable, file, value) and `allowed_hosts` are checked where
    // they are read: `runtime::admin_access::Access::compile`.
}

/// `access_log.path`: its directory exists.
fn access_log(cfg: &Config, errs: &mut ConfigErrors) {
    if let Some(log) = &cfg.access_log {
        if log.path != "stdout" {
            parent_exists(&log.path, "access_log.path", errs);
        }
    }
}

fn env_set(var: &str, path: &str, errs: &mut ConfigErrors) {
    if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
        errs.push(path, format!("environment variable `{var}` is not set"));
    }
}

fn parent_exists(file: &str, path: &str, errs: &mut ConfigErrors) {
    let parent = Path::new(file)
        .parent()
        .filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        if !dir.is_dir() {
            errs.push(
                path,
                format!("directory `{}` does not exist", dir.display()),
            );
        }
    }
}

fn readable(file: &str, path: &str, errs: &mut ConfigErrors) {
    if let Err(e) = std::fs::File::open(file) {
        errs.push(path, format!("cannot read `{file}`: {e}"));
    }
}

fn server(cfg: &Config, errs: &mut ConfigErrors) {
    let s = &cfg.server;
    if s.threads.is_some_and(|t| t == 0 || t > 1024) {
        errs.push("server.threads", "must be between 1 and 1024");
    }
    for (k, v) in [("pid_file", &s.pid_file), ("upgrade_sock", &s.upgrade_sock)] {
        if let Some(f) = v {
            parent_exists(f, &join("server", k), errs);
        }
    }
    if let Some(l) = &s.limits {
        if l.header_timeout.is_some_and(|d| d.get().as_secs() == 0) {
            errs.push("server.limits.header_timeout", "must be at least 1s");
        }
        if l.max_headers == Some(0) {
            errs.push("server.limits.max_headers", "must be at least 1");
        }
        for (k, v) in [
            ("max_header_bytes", l.max_header_bytes),
            ("max_body", l.max_body),
        ] {
            if v.is_some_and(|s| s.0 == 0) {
                errs.push(format!("server.limits.{k}"), "must be more than 0");
            }
        }
        if l.idle_timeout.is_some_and(|d| d.get().as_secs() == 0) {
            errs.push("server.limits.idle_timeout", "must be at least 1s");
        }
        for (k, v) in [
            ("max_connections_per_ip", l.max_connections_per_ip),
            ("max_connections", l.max_connections),
        ] {
            if v == Some(0) {
                errs.push(format!("server.limits.{k}"), "must be at least 1");
            }
        }
        if l.per_ip_v6_prefix.is_some_and(|p| !(1..=128).contains(&p)) {
            errs.push(
                "server.limits.per_ip_v6_prefix",
                "must be a prefix length between 1 and 128",
            );
        }
    }
}

/// Two addresses that cannot both be bound: same port, and the same IP or a wildcard.
fn clash(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn listeners(cfg: &Config, errs: &mut ConfigErrors) {
    if cfg.listeners.is_empty() {
        errs.push("listeners", "at least one listener is required");
    }
    let mut names = HashSet::new();
    let mut addrs = HashSet::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let p = index("listeners", i);
        if l.name.is_empty() || !names.insert(l.name.as_str()) {
            errs.push(
                join(&p, "name"),
                format!("listener names must be unique and non-empty (`{}`)", l.name),
            );
        }
        match l.address.parse::<SocketAddr>() {
            Ok(a) if addrs.iter().any(|b| clash(&a, b)) => errs.push(
                join(&p, "address"),
                format!("`{}` overlaps another listener's address", l.address),
            ),
            Ok(a) => {
                addrs.insert(a);
            }
            Err(_) => errs.push(
                join(&p, "address"),
                format!("`{}` is not an ip:port address", l.address),
            ),
        }

        match l.redirect_https {
            Some(0) => errs.push(join(&p, "redirect_https"), "must be a port (1-65535)"),
            Some(_) if l.tls.is_some() => errs.push(
                join(&p, "redirect_https"),
                "only for plain listeners: this one already speaks TLS",
            ),
            _ => {}
        }
    }
}

fn consumers(cfg: &Config, errs: &mut ConfigErrors) {
    if cfg.consumers.is_empty() {
        return;
    }
    let mut ids = HashSet::new();
    let mut hashes = HashSet::new();
    let mut key_ids = HashSet::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        let p = index("consumers", i);
        if c.id.is_empty() || !ids.insert(c.id.as_str()) {
            errs.push(
                join(&p, "id"),
                format!("consumer ids must be unique and non-empty (`{}`)", c.id),
            );
        }
        if http::HeaderValue::from_str(&c.id).is_err() {
            errs.push(
                join(&p, "id"),
                format!(
                    "{:?} holds a control character: it could not be sent as X-Consumer-ID",
                    c.id
                ),
            );
        }
        for (j, name) in c.jwt_providers.iter().enumerate() {
            let msg = match cfg.jwt_providers.get(name) {
                None => format!("unknown jwt provider `{name}`"),
                Some(pr) if pr.consumer_map == ConsumerMap::Namespaced => format!(
                    "jwt provider `{name}` does not set consumer_map: consumers (its tokens' consumers are `{name}:VALUE`, never this one)"
                ),
                Some(_) => continue,
            };
            errs.push(index(&join(&p, "jwt_providers"), j), msg);
        }
        // `corp:alice` is what a token of provider `corp` becomes: a configured consumer
        // may not take it over.
        if let Some((ns, _)) = c.id.split_once(':') {
            if cfg
                .jwt_providers
                .get(ns)
                .is_some_and(|p| p.consumer_map == ConsumerMap::Namespaced)
            {
                errs.push(
                    join(&p, "id"),
                    format!(
                        "`{}` is in the namespace of jwt provider `{ns}` (its tokens' consumers are `{ns}:VALUE`): rename the consumer, or set jwt_providers.{ns}.consumer_map: consumers",
                        c.id
                    ),
                );
            }
        }
        for (j, k) in c.api_keys.iter().enumerate() {
            let kp = index(&join(&p, "api_keys"), j);
            let h = k.sha256.to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                errs.push(
                    join(&kp, "sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                );
            } else if !hashes.insert(h) {
                errs.push(join(&kp, "sha256"), "the same key hash appears twice");
            }
        }
        for (j, h) in c.hmac.iter().enumerate() {
            let hp = index(&join(&p, "hmac"), j);
            if !key_ids.insert(h.key_id.as_str()) {
                errs.push(
                    join(&hp, "key_id"),
                    format!("duplicate key_id `{}`", h.key_id),
                );
            }
            env_set(&h.secret_env, &join(&hp, "secret_env"), errs);
        }
    }
}

/// JOSE signature algorithms (RFC 7518, RFC 8812, RFC 9864) that `jsonwebtoken`, moat's
/// JWT library, does not implement.
const NOT_IMPLEMENTED: &[&str] = &["ES512", "ES256K", "Ed25519", "Ed448"];

/// Why `name` cannot be in a provider's `algorithms`.
fn refused_algorithm(name: &str) -> String {
    if NOT_IMPLEMENTED.contains(&name) {
        let all: Vec<String> = crate::auth::jwk::ALGORITHMS
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        format!(
            "`{name}` is not supported: moat's JWT library (jsonwebtoken) does not implement it; use one of {}",
            all.join(", ")
        )
    } else {
        format!("unknown or refused algorithm `{name}`")
    }
}

fn providers(cfg: &Config, errs: &mut ConfigErrors) {
    for (name, p) in &cfg.jwt_providers {
        let path = join("jwt_providers", name);
        if name.contains(':') {
            errs.push(
                path.clone(),
                "a provider name cannot hold `:`, which separates it from the claim in its consumers' ids (NAME:VALUE)",
            );
        }
        let sources = [
            p.jwks_url.is_some(),
            p.jwks_file.is_some(),
            p.public_key_file.is_some(),
            p.secret_env.is_some(),
        ];
        if sources.iter().filter(|x| **x).count() != 1 {
            errs.push(
                path.clone(),
                "give exactly one of jwks_url, jwks_file, public_key_file, secret_env",
            );
        }
        if let Some(u) = &p.jwks_url {
            if !p.allow_insecure_jwks && crate::auth::fetch::insecure_remote(u) {
                errs.push(
                    join(&path, "jwks_url"),
                    "an http:// URL lets anyone on the way replace the keys: use https://, or set allow_insecure_jwks: true (loopback addresses need neither)",
                );
            }
        }
        if p.jwks_cooldown
            .is_some_and(|d| d.get() < std::time::Duration::from_secs(1))
        {
            errs.push(
                join(&path, "jwks_cooldown"),
                "must be at least 1s (it bounds how often tokens can make moat fetch the JWKS)",
            );
        }
        if let Some(f) = &p.jwks_file {
            readable(f, &join(&path, "jwks_file"), errs);
        }
        if let Some(f) = &p.public_key_file {
            readable(f, &join(&path, "public_key_file"), errs);
        }
        if let Some(v) = &p.secret_env {
            env_set(v, &join(&path, "secret_env"), errs);
        }
        if p.algorithms.is_empty() {
            errs.push(join(&path, "algorithms"), "list the accepted algorithms");
        }
        let mut sym = false;
        let mut asym = false;
        for (i, a) in p.algorithms.iter().enumerate() {
            match crate::auth::jwk::parse_alg(a) {
                Some(alg) if alg.family() == AlgorithmFamily::Hmac => sym = true,
                Some(_) => asym = true,
                None => errs.push(index(&join(&path, "algorithms"), i), refused_algorithm(a)),
            }
        }
        if sym && asym {
            errs.push(
                join(&path, "algorithms"),
                "HS* algorithms cannot be mixed with RS/PS/ES/EdDSA",
            );
        } else if sym && p.secret_env.is_none() || p.secret_env.is_some() && asym {
            errs.push(
                join(&path, "algorithms"),
                "HS* algorithms need secret_env; RS/PS/ES/EdDSA need jwks_url, jwks_file or public_key_file",
            );
        }
    }
}

/// What plugins name elsewhere in the config (a JWT provider), and what `auth` needs.
fn plugin_refs(cfg: &Config, errs: &mut ConfigErrors) {
    for (path, p) in cfg.plugins() {
        plugin_ref(cfg, &join(&path, p.name()), p, errs);
    }
}

fn plugin_ref(cfg: &Config, path: &str, p: &PluginConfig, errs: &mut ConfigErrors) {
    if let PluginConfig::Auth(a) = p {
        if a.methods.is_empty() {
            errs.push(join(path, "methods"), "list at least one method");
        }
        if let Some(j) = &a.jwt {
            if !cfg.jwt_providers.contains_key(&j.provider) {
                errs.push(
                    join(path, "jwt.provider"),
                    format!("unknown jwt provider `{}`", j.provider),
                );
            }
        }
    }
}
