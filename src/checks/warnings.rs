//! Config warnings: settings that load and serve, but that an operator most likely did not
//! mean or should know about (a JWT provider that accepts any issuer, a password written
//! inside a Redis URL). They never refuse a config: `moat check` prints them and exits 0,
//! and `run` and every reload log them.
//!
//! Each rule is a small function over the parsed [`Config`]; add new ones to
//! [`warnings`].

use crate::config::error::{index, join, ConfigError, ConfigErrors};
use crate::config::model::{AuthMethod, Balance, Config, ConsumerMap, PluginConfig};
use std::collections::HashMap;

/// Every warning for `cfg`, each with the path of the key it concerns, in file order.
pub fn warnings(cfg: &Config) -> Vec<ConfigError> {
    let mut w = ConfigErrors::default();
    jwt_providers(cfg, &mut w);
    hmac_secrets(cfg, &mut w);
    replay_capacities(cfg, &mut w);
    redis_urls(cfg, &mut w);
    ignored_keys(cfg, &mut w);
    w.sort_by_file_order();
    w.0
}

/// Keys that do nothing where they are written: `server.limits.per_ip_v6_prefix` without
/// `max_connections_per_ip` (the one limit that counts clients by address); an upstream's
/// `hash_key` without `balance: consistent_hash` (the other algorithms do not hash), and
/// its `tls.ca_file` with `verify: false` (nothing is verified against it).
fn ignored_keys(cfg: &Config, w: &mut ConfigErrors) {
    if let Some(l) = &cfg.server.limits {
        if l.per_ip_v6_prefix.is_some() && l.max_connections_per_ip.is_none() {
            w.push(
                "server.limits.per_ip_v6_prefix",
                "ignored: only max_connections_per_ip counts clients by address, and it is not set",
            );
        }
    }
    for (name, u) in &cfg.upstreams {
        let path = join("upstreams", name);
        if u.hash_key.is_some() && u.balance != Balance::ConsistentHash {
            w.push(
                join(&path, "hash_key"),
                "ignored: only balance: consistent_hash hashes requests to targets",
            );
        }
        if u.tls
            .as_ref()
            .is_some_and(|t| !t.verify && t.ca_file.is_some())
        {
            w.push(
                join(&path, "tls.ca_file"),
                "ignored: verify is false, so no certificate is checked against it",
            );
        }
    }
}

/// A provider without `issuer` accepts tokens from whoever holds its keys under any
/// issuer name, and one without `audiences` accepts tokens minted for other services.
fn jwt_providers(cfg: &Config, w: &mut ConfigErrors) {
    for (name, p) in &cfg.jwt_providers {
        let path = join("jwt_providers", name);
        if p.issuer.is_none() {
            w.push(
                &path,
                "no `issuer`: tokens with any `iss` are accepted; set the issuer you trust",
            );
        }
        if p.audiences.is_empty() {
            w.push(
                &path,
                "no `audiences`: tokens minted for any audience are accepted; list this API's",
            );
        }
        if p.consumer_map == ConsumerMap::Consumers {
            mapped_provider(cfg, name, &path, w);
        }
    }
}

/// A provider with `consumer_map: consumers` that no consumer lists in its
/// `jwt_providers` refuses every token.
fn mapped_provider(cfg: &Config, name: &str, path: &str, w: &mut ConfigErrors) {
    if !cfg
        .consumers
        .iter()
        .any(|c| c.jwt_providers.iter().any(|p| p == name))
    {
        w.push(
            join(path, "consumer_map"),
            format!(
                "consumers, but no consumer lists `{name}` in its jwt_providers: every token of this provider is refused"
            ),
        );
    }
}

/// Two HMAC credentials with the same secret: the key id is not signed, so a request
/// signed for one verifies under the other's key id (another consumer's, perhaps).
fn hmac_secrets(cfg: &Config, w: &mut ConfigErrors) {
    let mut first: HashMap<Vec<u8>, (String, String)> = HashMap::new();
    for (i, c) in cfg.consumers.iter().enumerate() {
        for (j, h) in c.hmac.iter().enumerate() {
            let Some(secret) = std::env::var_os(&h.secret_env).filter(|v| !v.is_empty()) else {
                continue; // an error of its own
            };
            let path = index(&join(&index("consumers", i), "hmac"), j);
            match first.get(secret.as_encoded_bytes()) {
                Some((other, key_id)) => w.push(
                    join(&path, "secret_env"),
                    format!(
                        "the same secret as {other} (key id `{key_id}`): a request signed for either verifies under the other's key id; give each credential its own secret (meanwhile they share one replay memory)"
                    ),
                ),
                None => {
                    first.insert(
                        secret.into_encoded_bytes(),
                        (path, h.key_id.clone()),
                    );
                }
            }
        }
    }
}

/// `auth` plugins whose `hmac.replay_capacity` differ: a credential's replay memory is
/// shared by every route, and each request is checked against its own route's figure,
/// so traffic on a route with a larger one can fill it past a smaller one.
fn replay_capacities(cfg: &Config, w: &mut ConfigErrors) {
    let capacities: Vec<(String, u64)> = cfg
        .plugins()
        .filter_map(|(path, p)| match p {
            PluginConfig::Auth(a) if a.methods.contains(&AuthMethod::Hmac) => {
                let capacity = a.hmac.as_ref().and_then(|h| h.replay_capacity);
                let default = crate::auth::replay::REPLAY_CAPACITY as u64;
                Some((join(&path, "auth.hmac"), capacity.unwrap_or(default)))
            }
            _ => None,
        })
        .collect();
    let Some(largest) = capacities.iter().map(|(_, c)| *c).max() else {
        return;
    };
    for (path, capacity) in capacities.iter().filter(|(_, c)| *c < largest) {
        w.push(
            join(path, "replay_capacity"),
            format!(
                "{capacity}, while another route allows {largest}: an HMAC credential's replay memory is shared by every route, so its traffic elsewhere can fill it past {capacity} and this route then answers 503; set one figure on every route"
            ),
        );
    }
}

/// A password inside a Redis URL ends up wherever the config file goes (backups, tickets,
/// version control; `GET /config` redacts it); `password_env` keeps it out of the file.
fn redis_urls(cfg: &Config, w: &mut ConfigErrors) {
    let Some(r) = &cfg.redis else { return };
    let warn = |path: String, w: &mut ConfigErrors| {
        w.push(
            path,
            "the URL holds a password: move it to an environment variable (`password_env`)",
        )
    };
    if r.url.as_deref().is_some_and(url_has_password) {
        warn("redis.url".to_string(), w);
    }
    for (i, u) in r.cluster.iter().flatten().enumerate() {
        if url_has_password(u) {
            warn(format!("redis.cluster[{i}]"), w);
        }
    }
    if r.tls.as_ref().is_some_and(|t| t.verify == Some(false)) {
        w.push(
            "redis.tls.verify",
            "false: Redis servers' certificates are not checked, so anyone on the path can \
             read the password and forge replies",
        );
    }
}

/// The byte range of the password in `url` (`scheme://[user[:password]@]host...`), if any.
fn password_range(url: &str) -> Option<std::ops::Range<usize>> {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, _) = authority.rsplit_once('@')?;
    let colon = userinfo.find(':')?;
    let range = start + colon + 1..start + userinfo.len();
    (!range.is_empty()).then_some(range)
}

/// Whether `url` (`scheme://[user[:password]@]host...`) carries a non-empty password.
pub fn url_has_password(url: &str) -> bool {
    password_range(url).is_some()
}

/// `url` with its password replaced by `mask`, when it holds one.
pub fn redact_url_password(url: &str, mask: &str) -> Option<String> {
    let r = password_range(url)?;
    Some(format!("{}{mask}{}", &url[..r.start], &url[r.end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::parse;

    fn paths(text: &str) -> Vec<String> {
        let cfg = parse(text).expect("parses");
        warnings(&cfg)
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn a_v6_prefix_without_a_per_ip_limit_is_warned_about() {
        let alone = "server:\n  limits: { max_connections: 10, per_ip_v6_prefix: 56 }\n";
        assert_eq!(
            paths(alone),
            ["server.limits.per_ip_v6_prefix: ignored: only max_connections_per_ip counts clients by address, and it is not set"]
        );
        let used = "server:\n  limits: { max_connections_per_ip: 10, per_ip_v6_prefix: 56 }\n";
        assert!(paths(used).is_empty());
    }

    #[test]
    fn a_hash_key_without_consistent_hash_is_warned_about() {
        let p = paths(
            "upstreams:\n  a: { targets: [\"127.0.0.1:1\"], hash_key: \"{{client_ip}}\" }\n  b: { targets: [\"127.0.0.1:1\"], balance: consistent_hash, hash_key: \"{{client_ip}}\" }\n",
        );
        assert_eq!(
            p,
            ["upstreams.a.hash_key: ignored: only balance: consistent_hash hashes requests to targets"]
        );
    }

    #[test]
    fn a_ca_file_without_verify_is_warned_about() {
        let p = paths(
            "upstreams:\n  a: { targets: [\"127.0.0.1:1\"], tls: { sni: x, verify: false, ca_file: x.pem } }\n  b: { targets: [\"127.0.0.1:1\"], tls: { sni: x, ca_file: x.pem } }\n",
        );
        assert_eq!(
            p,
            ["upstreams.a.tls.ca_file: ignored: verify is false, so no certificate is checked against it"]
        );
    }

    #[test]
    fn passwords_in_urls_are_found() {
        assert!(url_has_password("redis://:secret@127.0.0.1:6379/0"));
        assert!(url_has_password("rediss://user:secret@cache:6380"));
        assert!(!url_has_password("rediss://user@cache:6380/0"));
        assert!(!url_has_password("redis://127.0.0.1:6379/0"));
        assert!(!url_has_password("redis://user:@host"));
        // An `@` in the path is not a userinfo.
        assert!(!url_has_password("redis://host:1/a:b@c"));
        assert_eq!(
            redact_url_password("redis://u:p@ss@h:1/0?x=y:z@w", "*").as_deref(),
            Some("redis://u:*@h:1/0?x=y:z@w")
        );
        assert_eq!(redact_url_password("redis://u@h", "*"), None);
    }

    #[test]
    fn a_provider_without_issuer_or_audiences_is_warned_about() {
        let got = paths("jwt_providers:\n  corp:\n    secret_env: X\n    algorithms: [HS256]\n");
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("jwt_providers.corp: no `issuer`"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("jwt_providers.corp: no `audiences`"),
            "{got:?}"
        );
        let quiet = paths(
            "jwt_providers:\n  corp:\n    issuer: https://i\n    audiences: [api]\n    secret_env: X\n    algorithms: [HS256]\n",
        );
        assert!(quiet.is_empty(), "{quiet:?}");
    }

    #[test]
    fn redis_passwords_are_warned_about_with_their_path() {
        let got = paths("redis:\n  cluster: [redis://a:1, 'redis://:pw@b:2']\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("redis.cluster[1]: the URL holds a password"));
        let got = paths("redis:\n  url: 'redis://u:pw@a:1/0'\n");
        assert!(got[0].starts_with("redis.url: "), "{got:?}");
        let got = paths("redis:\n  url: 'rediss://a:1'\n  tls: { verify: false }\n");
        assert!(got[0].starts_with("redis.tls.verify: false: "), "{got:?}");
    }

    #[test]
    fn a_mapped_provider_no_consumer_lists_is_warned_about() {
        let provider = "jwt_providers:\n  p:\n    issuer: https://i\n    audiences: [api]\n    secret_env: X\n    algorithms: [HS256]\n    consumer_map: consumers\n";
        let got = paths(provider);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0]
                .starts_with("jwt_providers.p.consumer_map: consumers, but no consumer lists `p`"),
            "{got:?}"
        );
        let listed = paths(&format!(
            "{provider}consumers:\n  - {{ id: acme, jwt_providers: [p] }}\n"
        ));
        assert!(listed.is_empty(), "{listed:?}");
    }

    #[test]
    fn shared_hmac_secrets_are_warned_about() {
        std::env::set_var("MOAT_WARN_SECRET_A", "same-secret");
        std::env::set_var("MOAT_WARN_SECRET_B", "same-secret");
        std::env::set_var("MOAT_WARN_SECRET_C", "another-secret");
        let got = paths("consumers:\n  - id: a\n    hmac: [{ key_id: a1, secret_env: MOAT_WARN_SECRET_A }, { key_id: a2, secret_env: MOAT_WARN_SECRET_C }]\n  - id: b\n    hmac: [{ key_id: b1, secret_env: MOAT_WARN_SECRET_B }]\n");
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(
            got[0].starts_with(
                "consumers[1].hmac[0].secret_env: the same secret as consumers[0].hmac[0] (key id `a1`)"
            ),
            "{got:?}"
        );
        assert!(!got[0].contains("same-secret"), "never the secret itself");
    }

    #[test]
    fn different_replay_capacities_are_warned_about() {
        let routes = |hooks: &str| {
            format!(
                "routes:\n  - name: hooks\n    match: {{ path_prefix: /hooks }}\n    respond: {{ status: 200 }}\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ {hooks} }} }}\n  - name: bulk\n    match: {{ path_prefix: /bulk }}\n    respond: {{ status: 200 }}\n    plugins:\n      - auth: {{ methods: [hmac, api_key] }}\n  - name: keys\n    match: {{ path_prefix: /keys }}\n    respond: {{ status: 200 }}\n    plugins:\n      - auth: {{ methods: [api_key], hmac: {{ replay_capacity: 5 }} }}\n"
            )
        };
        let got = paths(&routes("replay_capacity: 1000"));
        assert_eq!(
            got,
            ["routes[0].plugins[0].auth.hmac.replay_capacity: 1000, while another route allows 100000: an HMAC credential's replay memory is shared by every route, so its traffic elsewhere can fill it past 1000 and this route then answers 503; set one figure on every route"]
        );
        assert!(paths(&routes("replay_capacity: 100000")).is_empty());
    }
}
