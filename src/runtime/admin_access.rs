//! Who may use the admin listener, compiled with every config generation (so a reload
//! takes a new token or host list):
//! - the Bearer token, from `admin.token_env` (the variable's value in this process's
//!   environment) or `admin.token_file` (read again on every reload: rotating a token is
//!   writing the file, then a reload);
//! - the `Host` names it answers: loopback names and addresses, the admin listener's own
//!   address, and `admin.allowed_hosts`. A browser page whose name an attacker re-points at
//!   127.0.0.1 (DNS rebinding) sends its own name as `Host`, so it is refused. A request
//!   without `Host` (an HTTP/1.0 health probe) is answered: browsers always send one;
//! - `POST` needs `Content-Type: application/json`, which a browser never sends cross-site
//!   without a CORS preflight (that the admin listener never grants).

use crate::config::error::{index, ConfigErrors};
use crate::config::model::Config;
use crate::net::{canonical, Cidr};
use http::HeaderValue;
use std::net::{IpAddr, SocketAddr};

/// Tokens shorter than this get a config warning.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin listener's access rules of one config generation.
#[derive(Default)]
pub struct Access {
    /// The Bearer token; `None`: no token needed.
    token: Option<Box<str>>,
    /// `allowed_hosts` names, lower case, without a trailing dot.
    names: Vec<String>,
    /// `allowed_hosts` addresses and networks.
    networks: Vec<Cidr>,
    /// The admin listener's own address, when it binds a specific one.
    own: Option<IpAddr>,
}

impl Access {
    /// The rules of `cfg.admin` (open when there is none), reading the token from its
    /// variable or file. Problems go to `errs` with their paths; a token shorter than
    /// [`MIN_TOKEN_LEN`] is served but goes to `warnings`.
    pub fn compile(cfg: &Config, errs: &mut ConfigErrors, warnings: &mut ConfigErrors) -> Access {
        let Some(a) = &cfg.admin else {
            return Access::default();
        };
        if a.token_env.is_some() && a.token_file.is_some() {
            errs.push("admin", "give token_env or token_file, not both");
        }
        let from_env = a.token_env.as_deref().and_then(|var| {
            let v = std::env::var(var).ok().filter(|v| !v.is_empty());
            if v.is_none() {
                errs.push(
                    "admin.token_env",
                    format!("environment variable `{var}` is not set"),
                );
            }
            usable_token(v?, "admin.token_env", errs)
        });
        let from_file =
            a.token_file
                .as_deref()
                .and_then(|file| match std::fs::read_to_string(file) {
                    Ok(v) => usable_token(v.trim().to_string(), "admin.token_file", errs),
                    Err(e) => {
                        errs.push("admin.token_file", format!("cannot read `{file}`: {e}"));
                        None
                    }
                });
        let token = from_env.or(from_file);
        if let Some(t) = token.as_deref().filter(|t| t.len() < MIN_TOKEN_LEN) {
            let path = if a.token_env.is_some() {
                "admin.token_env"
            } else {
                "admin.token_file"
            };
            warnings.push(
                path,
                format!(
                    "the token is {} characters long: anyone who can reach the admin address \
                     can guess a short one; use at least {MIN_TOKEN_LEN} random characters \
                     (`moat keygen` prints one)",
                    t.len()
                ),
            );
        }
        let mut names = Vec::new();
        let mut networks = Vec::new();
        for (i, h) in a.allowed_hosts.iter().enumerate() {
            let path = index("admin.allowed_hosts", i);
            let ip_part = h.split_once('/').map_or(h.as_str(), |(ip, _)| ip);
            if ip_part.parse::<IpAddr>().is_ok() {
                match Cidr::parse(h) {
                    Ok(c) => networks.push(c),
                    Err(e) => errs.push(path, e),
                }
            } else if is_host_name(h) {
                names.push(h.trim_end_matches('.').to_ascii_lowercase());
            } else {
                errs.push(
                    path,
                    format!(
                        "`{h}` is not a host name, IP address or CIDR network (no scheme, no port)"
                    ),
                );
            }
        }
        let own = a
            .address
            .parse::<SocketAddr>()
            .ok()
            .map(|s| canonical(s.ip()))
            .filter(|ip| !ip.is_unspecified());
        Access {
            token,
            names,
            networks,
            own,
        }
    }

    /// Whether both generations ask for the same token (a reload that changed only the
    /// token file's content is a change).
    pub fn same_token(&self, other: &Access) -> bool {
        self.token == other.token
    }

    /// Whether the request's `Authorization` carries the token (always, without one).
    /// The comparison takes the same time wherever the first difference is.
    pub fn authorized(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let given = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .unwrap_or("");
        constant_time_eq(given.as_bytes(), token.as_bytes())
    }

    /// Whether `host` (the `Host` header without its port; empty when absent) names this
    /// listener: `localhost` or a name under `.localhost`, a loopback address, the admin
    /// listener's own address, or an entry of `allowed_hosts`. No `Host` at all is
    /// admitted: DNS rebinding needs a browser, and browsers always send one (HTTP/1.0
    /// health probes, HAProxy's `option httpchk` among them, do not).
    pub fn host_allowed(&self, host: &str) -> bool {
        if host.is_empty() {
            return true;
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return false;
        }
        let ip = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).ok(),
            None => host.parse::<std::net::Ipv4Addr>().map(IpAddr::V4).ok(),
        };
        if let Some(ip) = ip {
            let ip = canonical(ip);
            return ip.is_loopback()
                || self.own == Some(ip)
                || self.networks.iter().any(|n| n.contains(ip));
        }
        let lower = host.to_ascii_lowercase();
        lower == "localhost" || lower.ends_with(".localhost") || self.names.contains(&lower)
    }
}

/// Whether a `Content-Type` is `application/json` (any parameters, any case): a type a
/// browser only sends cross-site after a CORS preflight.
pub fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
}

/// Compare without leaking where the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `token` when it can be one, else its problem goes to `errs` at `path`.
fn usable_token(token: String, path: &str, errs: &mut ConfigErrors) -> Option<Box<str>> {
    match token_problem(&token) {
        Some(p) => {
            errs.push(path, p);
            None
        }
        None => Some(token.into_boxed_str()),
    }
}

/// Why a token cannot be one (it is compared with what follows `Bearer `).
fn token_problem(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        Some("the token is empty")
    } else if !token.bytes().all(|b| b.is_ascii_graphic()) {
        Some("the token must be visible ASCII without spaces")
    } else {
        None
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, an optional
/// trailing dot.
fn is_host_name(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(admin: &str) -> (Access, ConfigErrors) {
        let (a, errs, _) = access_warned(admin);
        (a, errs)
    }

    fn access_warned(admin: &str) -> (Access, ConfigErrors, ConfigErrors) {
        let cfg = crate::config::load::parse(&format!("admin:\n{admin}")).unwrap();
        let (mut errs, mut warnings) = (ConfigErrors::default(), ConfigErrors::default());
        (
            Access::compile(&cfg, &mut errs, &mut warnings),
            errs,
            warnings,
        )
    }

    /// A token file holding `token` (and a newline), in a directory of its own.
    fn token_file(token: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "moat-access-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("admin.token");
        std::fs::write(&file, format!("{token}\n")).unwrap();
        file
    }

    #[test]
    fn hosts() {
        let (a, errs) = access(
            "  address: 192.0.2.1:9901\n  allowed_hosts: [Admin.Internal., \"10.0.0.0/8\", \"::ffff:192.0.2.9\"]\n",
        );
        assert!(errs.0.is_empty(), "{errs}");
        for ok in [
            "",
            "localhost",
            "LocalHost.",
            "a.localhost",
            "127.0.0.1",
            "[::1]",
            "192.0.2.1",
            "admin.internal",
            "ADMIN.INTERNAL.",
            "10.255.0.1",
            "192.0.2.9",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            ".",
            "evil.example",
            "localhost.evil.example",
            "x.admin.internal",
            "192.0.2.2",
            "[::2]",
            "[127.0.0.1]",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        // An unspecified address is not one a client names.
        let file = token_file("0123456789abcdef");
        let (a, _) = access(&format!(
            "  address: 0.0.0.0:9901\n  token_file: {}\n",
            file.display()
        ));
        assert!(!a.host_allowed("0.0.0.0"));
    }

    #[test]
    fn tokens_and_content_types() {
        let (open, _) = access("  address: 127.0.0.1:9901\n");
        assert!(open.authorized(None));
        let token = "s3cret-._~+/=0123456789";
        let file = token_file(token);
        let (a, errs) = access(&format!(
            "  address: 127.0.0.1:9901\n  token_file: {}\n",
            file.display()
        ));
        assert!(errs.0.is_empty(), "{errs}");
        let h = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(a.authorized(Some(&h(&format!("Bearer {token}")))));
        assert!(a.authorized(Some(&h(&format!("bearer  {token} ")))));
        assert!(!a.authorized(Some(&h(&format!("Basic {token}")))));
        assert!(!a.authorized(Some(&h(&format!("Bearer {token}x")))));
        assert!(!a.authorized(None));
        assert!(!a.same_token(&open));
        for (ct, json) in [
            ("application/json", true),
            ("Application/JSON ; charset=utf-8", true),
            ("application/jsonx", false),
            ("text/plain", false),
            ("text/plain; application/json", false),
        ] {
            assert_eq!(is_json(Some(&h(ct))), json, "{ct}");
        }
        assert!(!is_json(None));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn token_values_must_be_usable() {
        assert_eq!(token_problem(""), Some("the token is empty"));
        assert!(token_problem("a b").is_some());
        assert!(token_problem("tøken").is_some());
        assert_eq!(token_problem("s3cret-._~+/="), None);
        // Short tokens work, with a warning.
        let short = token_file("s3cret");
        let (a, errs, warnings) = access_warned(&format!(
            "  address: 127.0.0.1:9901\n  token_file: {}\n",
            short.display()
        ));
        assert!(errs.0.is_empty(), "{errs}");
        assert!(a.authorized(Some(&HeaderValue::from_static("Bearer s3cret"))));
        assert_eq!(warnings.0.len(), 1, "{warnings}");
        assert_eq!(warnings.0[0].path, "admin.token_file");
        assert!(warnings.0[0]
            .message
            .starts_with("the token is 6 characters long"));
        let long = token_file(&"x".repeat(MIN_TOKEN_LEN));
        let (_, _, warnings) = access_warned(&format!(
            "  address: 127.0.0.1:9901\n  token_file: {}\n",
            long.display()
        ));
        assert!(warnings.0.is_empty(), "{warnings}");
        assert!(is_host_name("a-b.c_d.example."));
        for bad in ["", "a..b", "a:1", "http://a", "a/b", "*.a"] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }
}
