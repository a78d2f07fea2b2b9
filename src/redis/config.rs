//! `redis:` → what the client needs, checked with every error at its path (used by
//! the runtime when it builds the client, hence by `moat check`, `run` and reload):
//! - exactly one of `url` (one server), `cluster` (seed URLs of a Redis Cluster, database 0
//!   only, one scheme for all) or `sentinel` (`master`, `nodes: [host:port]`);
//! - URLs are `redis://` or `rediss://` (TLS) `[user[:password]@]host[:port][/db]`, parsed
//!   by the `redis` crate; parse errors never repeat the URL (it may hold a password);
//! - `password_env` (and `sentinel.password_env`) name environment variables that must be
//!   set; the password is never inline nor logged. `password_env` wins over a password in
//!   a URL (which `moat check` warns about, see `checks::warnings`);
//! - `tls` (`ca_file`, `cert_file` + `key_file`, `verify` [true]) goes with `rediss://`
//!   URLs, or turns TLS on for `sentinel` (the sentinels and the master alike). The files
//!   are read and parsed here, so a bad one is a config error, never a run-time one.

use super::node::Endpoint;
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{RedisConfig, RedisTlsConfig, SentinelConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo};
use std::sync::Arc;
use std::time::Duration;

/// `redis.timeout` unless configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
/// The sentinels' port unless given.
pub const SENTINEL_PORT: u16 = 26379;
const URL_FORM: &str = "expected redis:// or rediss://[user[:password]@]host[:port][/db]";

/// Where the servers are.
pub enum Mode {
    /// One server.
    Single(Endpoint),
    /// Seed nodes of a Redis Cluster.
    Cluster(Vec<Endpoint>),
    /// Sentinels to ask for `master`, which is reached with `login`.
    Sentinel {
        master: String,
        sentinels: Vec<Endpoint>,
        login: RedisConnectionInfo,
    },
}

/// A checked `redis:` section.
pub struct Settings {
    pub mode: Mode,
    /// The TLS connector of every connection, when TLS is on.
    pub tls: Option<Arc<tokio_native_tls::TlsConnector>>,
    pub timeout: Duration,
    pub prefix: String,
    /// Hash of the section and of the TLS files' contents: a reload keeps the client (its
    /// connections and breakers) while it is unchanged, and picks up rotated certificates.
    pub fingerprint: [u8; 32],
}

impl Settings {
    /// Check `c`, reading its environment variables and files.
    pub fn parse(c: &RedisConfig) -> Result<Settings, ConfigErrors> {
        let mut errs = ConfigErrors::default();
        let password = c
            .password_env
            .as_deref()
            .and_then(|v| env(v, "redis.password_env", &mut errs));
        let pw = password.as_deref();
        let (mode, tls_on) = match (&c.url, &c.cluster, &c.sentinel) {
            (Some(url), None, None) => match endpoint(url, pw, "redis.url", &mut errs) {
                Some((e, tls)) => (Some(Mode::Single(e)), tls),
                None => (None, false),
            },
            (None, Some(urls), None) => {
                let (seeds, tls) = cluster(urls, pw, &mut errs);
                (Some(Mode::Cluster(seeds)), tls)
            }
            (None, None, Some(s)) => (Some(sentinel(s, pw, &mut errs)), c.tls.is_some()),
            (None, None, None) => {
                errs.push(
                    "redis",
                    "give url (one server), cluster (seed nodes) or sentinel",
                );
                (None, false)
            }
            _ => {
                errs.push("redis", "give only one of url, cluster and sentinel");
                (None, false)
            }
        };
        if c.timeout.is_some_and(|t| t.get().is_zero()) {
            errs.push(
                "redis.timeout",
                "must be more than 0ms (every call would time out)",
            );
        }
        let mut files = Vec::new();
        let tls = match (&c.tls, tls_on) {
            (Some(_), false) if c.sentinel.is_none() && mode.is_some() => {
                errs.push(
                    "redis.tls",
                    "TLS settings need rediss:// URLs (redis:// is plain text)",
                );
                None
            }
            (t, true) => connector(t.as_ref(), &mut files, &mut errs),
            _ => None,
        };
        let fingerprint = {
            let mut data = serde_json::to_vec(c).unwrap_or_default();
            for f in &files {
                data.extend_from_slice(f);
            }
            crate::util::sha256(&data)
        };
        match mode {
            Some(mode) if errs.is_empty() => Ok(Settings {
                mode,
                tls,
                timeout: c.timeout.map(|d| d.get()).unwrap_or(DEFAULT_TIMEOUT),
                prefix: c.key_prefix.clone().unwrap_or_else(|| "moat:".into()),
                fingerprint,
            }),
            _ => Err(errs),
        }
    }
}

/// The seeds of `redis.cluster` and whether they use TLS (the first one's scheme, which
/// every other must share).
fn cluster(
    urls: &[String],
    password: Option<&str>,
    errs: &mut ConfigErrors,
) -> (Vec<Endpoint>, bool) {
    if urls.is_empty() {
        errs.push("redis.cluster", "list at least one node");
    }
    let mut seeds: Vec<Endpoint> = Vec::new();
    let mut tls_on = false;
    for (i, url) in urls.iter().enumerate() {
        let path = index("redis.cluster", i);
        let Some((e, tls)) = endpoint(url, password, &path, errs) else {
            continue;
        };
        if e.login.db() != 0 {
            errs.push(&path, "Redis Cluster has database 0 only");
        } else if !seeds.is_empty() && tls != tls_on {
            errs.push(
                &path,
                "every seed must use the first one's scheme (redis:// or rediss://)",
            );
        }
        if seeds.is_empty() {
            tls_on = tls;
        }
        seeds.push(e);
    }
    (seeds, tls_on)
}

/// `redis.sentinel`: the sentinels (logging in with `sentinel.password_env`) and how to
/// log in to the master (`password`, `sentinel.username`, `sentinel.db`).
fn sentinel(s: &SentinelConfig, password: Option<&str>, errs: &mut ConfigErrors) -> Mode {
    let path = "redis.sentinel";
    if s.master.is_empty() {
        errs.push(join(path, "master"), "name the master to ask for");
    }
    if s.nodes.is_empty() {
        errs.push(join(path, "nodes"), "list at least one sentinel");
    }
    let mut sentinel_login = RedisConnectionInfo::default().set_skip_set_lib_name();
    let own = s.password_env.as_deref();
    if let Some(p) = own.and_then(|v| env(v, &join(path, "password_env"), errs)) {
        sentinel_login = sentinel_login.set_password(p);
    }
    let mut sentinels = Vec::new();
    for (i, n) in s.nodes.iter().enumerate() {
        match host_port(n, SENTINEL_PORT) {
            Some((host, port)) => sentinels.push(Endpoint {
                host,
                port,
                login: sentinel_login.clone(),
            }),
            None => errs.push(index(&join(path, "nodes"), i), "expected host:port"),
        }
    }
    let mut login = named(RedisConnectionInfo::default().set_db(s.db.unwrap_or(0).into()));
    if let Some(u) = &s.username {
        login = login.set_username(u);
    }
    if let Some(p) = password {
        login = login.set_password(p);
    }
    Mode::Sentinel {
        master: s.master.clone(),
        sentinels,
        login,
    }
}

/// moat's name in `CLIENT LIST` (`CLIENT SETINFO`, ignored by servers before 7.2).
fn named(login: RedisConnectionInfo) -> RedisConnectionInfo {
    login.set_lib_name("moat", env!("CARGO_PKG_VERSION"))
}

/// The value of environment variable `var`, or an error at `path`.
fn env(var: &str, path: &str, errs: &mut ConfigErrors) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            errs.push(path, format!("environment variable `{var}` is not set"));
            None
        }
    }
}

/// The endpoint of `url` (written at `path`) and whether it asks for TLS; `password`
/// replaces the URL's.
fn endpoint(
    url: &str,
    password: Option<&str>,
    path: &str,
    errs: &mut ConfigErrors,
) -> Option<(Endpoint, bool)> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        errs.push(path, URL_FORM);
        return None;
    }
    // The crate's messages never repeat the URL.
    let info = match url.into_connection_info() {
        Ok(i) => i,
        Err(e) => {
            let why = e.detail().unwrap_or_else(|| e.category()).to_string();
            errs.push(path, format!("{URL_FORM}: {why}"));
            return None;
        }
    };
    let (host, port, tls) = match info.addr() {
        ConnectionAddr::Tcp(h, p) => (h.clone(), *p, false),
        ConnectionAddr::TcpTls { insecure: true, .. } => {
            errs.push(path, "for `#insecure`, write `tls: { verify: false }`");
            return None;
        }
        ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port, true),
        _ => {
            errs.push(path, URL_FORM);
            return None;
        }
    };
    let mut login = named(info.redis_settings().clone());
    if let Some(p) = password {
        login = login.set_password(p);
    }
    Some((Endpoint { host, port, login }, tls))
}

/// `host[:port]` (`[v6]:port` for IPv6), `default` when the port is left out.
fn host_port(s: &str, default: u16) -> Option<(String, u16)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']')?;
            match rest.strip_prefix(':') {
                Some(p) => (h, p.parse().ok()?),
                None if rest.is_empty() => (h, default),
                None => return None,
            }
        }
        None => match s.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (s, default),
        },
    };
    (!host.is_empty() && !host.contains(['/', '@', ' '])).then(|| (host.to_string(), port))
}

/// The TLS connector of `tls` (all defaults when absent), its files' contents pushed on
/// `files`.
fn connector(
    tls: Option<&RedisTlsConfig>,
    files: &mut Vec<Vec<u8>>,
    errs: &mut ConfigErrors,
) -> Option<Arc<tokio_native_tls::TlsConnector>> {
    let mut b = native_tls::TlsConnector::builder();
    b.min_protocol_version(Some(native_tls::Protocol::Tlsv12));
    let Some(t) = tls else {
        return build(&b, errs);
    };
    let mut read = |file: &String, key: &str| match std::fs::read(file) {
        Ok(bytes) => {
            files.push(bytes.clone());
            Some(bytes)
        }
        Err(e) => {
            errs.push(join("redis.tls", key), format!("cannot read {file}: {e}"));
            None
        }
    };
    let ca = t.ca_file.as_ref().and_then(|f| read(f, "ca_file"));
    let cert = t.cert_file.as_ref().and_then(|f| read(f, "cert_file"));
    let key = t.key_file.as_ref().and_then(|f| read(f, "key_file"));
    if let Some(pem) = ca {
        match native_tls::Certificate::stack_from_pem(&pem) {
            Ok(certs) if !certs.is_empty() => {
                // Only this CA: the system's trust store is not consulted.
                b.disable_built_in_roots(true);
                for c in certs {
                    b.add_root_certificate(c);
                }
            }
            _ => errs.push("redis.tls.ca_file", "no PEM certificate in the file"),
        }
    }
    match (t.cert_file.is_some(), t.key_file.is_some()) {
        (true, false) | (false, true) => {
            errs.push("redis.tls", "give cert_file and key_file together")
        }
        _ => {}
    }
    if let (Some(cert), Some(key)) = (cert, key) {
        // native-tls wants PKCS#8; accept the traditional RSA/EC PEM forms too.
        let pkcs8 = openssl::pkey::PKey::private_key_from_pem(&key)
            .and_then(|k| k.private_key_to_pem_pkcs8());
        match pkcs8.map(|k| native_tls::Identity::from_pkcs8(&cert, &k)) {
            Ok(Ok(id)) => {
                b.identity(id);
            }
            Ok(Err(_)) => errs.push(
                "redis.tls.cert_file",
                "not a PEM certificate matching key_file",
            ),
            Err(_) => errs.push("redis.tls.key_file", "not a PEM private key"),
        }
    }
    if t.verify == Some(false) {
        b.danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true);
    }
    build(&b, errs)
}

fn build(
    b: &native_tls::TlsConnectorBuilder,
    errs: &mut ConfigErrors,
) -> Option<Arc<tokio_native_tls::TlsConnector>> {
    match b.build() {
        Ok(c) => Some(Arc::new(c.into())),
        Err(e) => {
            errs.push("redis.tls", format!("TLS setup failed: {e}"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(redis: &str) -> Vec<String> {
        let cfg = crate::config::load::parse(&format!("redis: {redis}\n")).unwrap();
        match Settings::parse(cfg.redis.as_ref().unwrap()) {
            Ok(_) => Vec::new(),
            Err(e) => {
                e.0.iter()
                    .map(|e| format!("{}: {}", e.path, e.message))
                    .collect()
            }
        }
    }

    fn settings(redis: &str) -> Settings {
        let cfg = crate::config::load::parse(&format!("redis: {redis}\n")).unwrap();
        Settings::parse(cfg.redis.as_ref().unwrap()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn one_server_cluster_or_sentinel() {
        assert_eq!(errors("{ url: \"redis://h:1/2\" }"), Vec::<String>::new());
        let s = settings("{ url: \"redis://u:pw@h:7/3\", timeout: 20ms, key_prefix: \"x:\" }");
        let Mode::Single(e) = &s.mode else { panic!() };
        assert_eq!((e.addr().as_str(), e.login.db()), ("h:7", 3));
        assert_eq!(
            (e.login.username(), e.login.password()),
            (Some("u"), Some("pw"))
        );
        assert_eq!(
            (s.timeout, s.prefix.as_str()),
            (Duration::from_millis(20), "x:")
        );
        assert!(s.tls.is_none());
        assert_eq!(
            errors("{ cluster: [\"redis://:pw@h:7000\", \"redis://h:7001/0\"] }"),
            Vec::<String>::new()
        );
        assert_eq!(
            errors("{ url: \"redis://h\", cluster: [\"redis://h:7000\"] }"),
            ["redis: give only one of url, cluster and sentinel"]
        );
        assert_eq!(
            errors("{ timeout: 1s }"),
            ["redis: give url (one server), cluster (seed nodes) or sentinel"]
        );
        assert_eq!(
            errors("{ cluster: [] }"),
            ["redis.cluster: list at least one node"]
        );
        assert_eq!(
            errors("{ url: \"redis://h\", timeout: 0ms }"),
            ["redis.timeout: must be more than 0ms (every call would time out)"]
        );
        let e = errors("{ cluster: [\"redis://h:7000\", \"h:7001\", \"redis://h:7002/1\", \"rediss://h:7003\"] }");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("redis.cluster[1]: expected redis://"),
            "{e:?}"
        );
        assert_eq!(e[1], "redis.cluster[2]: Redis Cluster has database 0 only");
        assert!(
            e[2].starts_with("redis.cluster[3]: every seed must use"),
            "{e:?}"
        );
        let e = errors("{ url: \"redis://:s3cret@h/x\" }");
        assert!(e[0].starts_with("redis.url: expected redis://"), "{e:?}");
        assert!(!e[0].contains("s3cret"), "{e:?}");
        assert_eq!(errors("{ url: \"http://h\" }").len(), 1);
        let s =
            settings("{ sentinel: { master: mymaster, nodes: [\"10.0.0.1\", \"[::1]:26380\"] } }");
        let Mode::Sentinel {
            master, sentinels, ..
        } = &s.mode
        else {
            panic!()
        };
        assert_eq!(master, "mymaster");
        let addrs: Vec<String> = sentinels.iter().map(Endpoint::addr).collect();
        assert_eq!(addrs, ["10.0.0.1:26379", "[::1]:26380"]);
        assert_eq!(
            errors("{ sentinel: { master: \"\", nodes: [\"h:x\"] } }"),
            [
                "redis.sentinel.master: name the master to ask for",
                "redis.sentinel.nodes[0]: expected host:port"
            ]
        );
    }

    #[test]
    fn passwords_come_from_the_environment() {
        std::env::set_var("MOAT_UNIT_REDIS_PW", "from-env");
        let s = settings("{ url: \"redis://u:inline@h\", password_env: MOAT_UNIT_REDIS_PW }");
        let Mode::Single(e) = &s.mode else { panic!() };
        assert_eq!(
            (e.login.username(), e.login.password()),
            (Some("u"), Some("from-env"))
        );
        assert_eq!(
            errors("{ url: \"redis://h\", password_env: MOAT_UNIT_REDIS_UNSET }"),
            ["redis.password_env: environment variable `MOAT_UNIT_REDIS_UNSET` is not set"]
        );
        assert_eq!(
            errors("{ sentinel: { master: m, nodes: [h], password_env: MOAT_UNIT_REDIS_UNSET } }"),
            ["redis.sentinel.password_env: environment variable `MOAT_UNIT_REDIS_UNSET` is not set"]
        );
    }

    #[test]
    fn tls_settings_are_checked() {
        assert!(settings("{ url: \"rediss://h:6380\" }").tls.is_some());
        assert_eq!(
            errors("{ url: \"rediss://h#insecure\" }"),
            ["redis.url: for `#insecure`, write `tls: { verify: false }`"]
        );
        assert!(settings("{ sentinel: { master: m, nodes: [h] }, tls: {} }")
            .tls
            .is_some());
        assert!(settings("{ sentinel: { master: m, nodes: [h] } }")
            .tls
            .is_none());
        assert_eq!(
            errors("{ url: \"redis://h\", tls: { verify: false } }"),
            ["redis.tls: TLS settings need rediss:// URLs (redis:// is plain text)"]
        );
        let e = errors("{ url: \"rediss://h\", tls: { ca_file: /nonexistent/ca.pem, cert_file: /nonexistent/c.pem } }");
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("redis.tls.ca_file: cannot read /nonexistent/ca.pem"));
        assert!(e[1].starts_with("redis.tls.cert_file: cannot read"));
        assert_eq!(e[2], "redis.tls: give cert_file and key_file together");
        let dir = std::env::temp_dir().join(format!("moat-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let e = errors(&format!(
            "{{ url: \"rediss://h\", tls: {{ ca_file: {} }} }}",
            junk.display()
        ));
        assert_eq!(e, ["redis.tls.ca_file: no PEM certificate in the file"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_ports() {
        assert_eq!(host_port("h", 1), Some(("h".into(), 1)));
        assert_eq!(host_port("h:2", 1), Some(("h".into(), 2)));
        assert_eq!(host_port("[::1]:2", 1), Some(("::1".into(), 2)));
        assert_eq!(host_port("[::1]", 1), Some(("::1".into(), 1)));
        for bad in ["", ":1", "h:x", "[::1]x", "redis://h:1", "u@h:1"] {
            assert_eq!(host_port(bad, 1), None, "{bad}");
        }
    }
}
