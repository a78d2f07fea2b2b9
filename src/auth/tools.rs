//! The logic of `moat keygen` (a new API key and the hash to put in the config) and
//! `moat sign` (the reference HMAC signer: the headers a client must send).

use super::hmac::{self, HmacAlg};
use crate::util::sha256;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;

/// Random bytes in a generated key.
pub const KEY_BYTES: usize = 32;

/// A new API key (`prefix` + base64url of 32 random bytes) and its SHA-256 hex.
pub fn keygen(prefix: &str) -> (String, String) {
    let mut bytes = [0u8; KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let key = format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hex::encode(sha256(key.as_bytes()));
    (key, hash)
}

/// What to sign.
pub struct SignRequest<'a> {
    /// The credential's key id.
    pub key_id: &'a str,
    /// The shared secret.
    pub secret: &'a [u8],
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub algorithm: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Full URL or a path (`/api?x=1`): the path and query are signed, and the URL's
    /// host (with its port, as written) as `host`.
    pub url: &'a str,
    /// Extra headers to send and sign, as `Name: value`; a `Host` here replaces the URL's
    /// (and is needed when `url` is a path).
    pub headers: &'a [String],
    /// The body, when any (adds a signed `Digest`).
    pub body: Option<&'a [u8]>,
    /// UNIX seconds for the `Date` header.
    pub now: i64,
}

/// The headers to send, in order, as `(name, value)`: `Host`, `Date`, `Digest` (with a
/// body), the extra headers, `Authorization`. The signed list is `date request-line host`,
/// then `digest`, then the extra headers: what moat's defaults require (`host` is in
/// `enforce_headers`, a body needs a signed `Digest`).
pub fn sign(r: &SignRequest) -> Result<Vec<(String, String)>, String> {
    let alg = HmacAlg::parse(r.algorithm)
        .ok_or("algorithm must be hmac-sha256, hmac-sha384 or hmac-sha512")?;
    let (url_host, target) = split_url(r.url)?;
    let target = target.split('#').next().unwrap_or("/");
    let method = r.method.to_ascii_uppercase();
    let (header_host, extra) = extra_headers(r.headers)?;
    let host = header_host.or(url_host);
    let host = host.ok_or(
        "the host is signed: give a full URL (http://host/path) or -H 'Host: NAME' with a path",
    )?;
    let mut out: Vec<(String, String)> = vec![
        ("Host".into(), host),
        ("Date".into(), super::dates::format_http_date(r.now)),
    ];
    let mut names = vec![
        "date".to_string(),
        "request-line".to_string(),
        "host".into(),
    ];
    if let Some(b) = r.body {
        out.push(("Digest".into(), hmac::digest_header(b)));
        names.push("digest".into());
    }
    for (n, v) in extra {
        names.push(n.to_ascii_lowercase());
        out.push((n, v));
    }
    let line = format!("{method} {target} HTTP/1.1");
    let sstr = hmac::signing_string(&names, &line, |n| {
        out.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .ok_or(hmac::HmacError::Malformed)
    })
    .map_err(|_| "cannot build the signing string".to_string())?;
    let sig = hmac::compute(alg, r.secret, sstr.as_bytes()).map_err(|_| "HMAC failed")?;
    out.push((
        "Authorization".into(),
        format!(
            "hmac username=\"{}\", algorithm=\"{}\", headers=\"{}\", signature=\"{}\"",
            r.key_id,
            alg.name(),
            names.join(" "),
            STANDARD.encode(sig)
        ),
    ));
    Ok(out)
}

/// Header names and values, in order.
type Headers = Vec<(String, String)>;

/// The host (when the URL names one) and the request target of `url`:
/// `http(s)://host/path?query` or `/path?query`.
fn split_url(url: &str) -> Result<(Option<String>, String), String> {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = &rest[..end];
            let host = authority.rsplit('@').next().unwrap_or(authority);
            let target = match &rest[end..] {
                t if t.starts_with('/') => t.to_string(),
                t => format!("/{t}"),
            };
            Ok((Some(host.to_string()).filter(|h| !h.is_empty()), target))
        }
        None if url.starts_with('/') => Ok((None, url.to_string())),
        None => Err("URL must be http(s)://host/path or /path".into()),
    }
}

/// The `-H 'Name: value'` headers: a `Host` one (it overrides the URL's), and the others
/// to sign, in order; the ones the signer sets are refused.
fn extra_headers(headers: &[String]) -> Result<(Option<String>, Headers), String> {
    let mut host = None;
    let mut extra = Vec::new();
    for h in headers {
        let (n, v) = h
            .split_once(':')
            .ok_or_else(|| format!("header `{h}` is not `Name: value`"))?;
        let n = n.trim();
        if n.is_empty() || n.contains(char::is_whitespace) {
            return Err(format!("header `{h}` has no valid name"));
        }
        let lower = n.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "date" | "digest" | "authorization" | "request-line"
        ) {
            return Err(format!("`{n}` is set by the signer"));
        }
        if lower == "host" {
            host = Some(v.trim().to_string());
        } else {
            extra.push((n.to_string(), v.trim().to_string()));
        }
    }
    Ok((host, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_shape() {
        let (k, h) = keygen("mk_live_");
        assert!(k.starts_with("mk_live_"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&k[8..]).unwrap().len(), 32);
        assert_eq!(h, hex::encode(sha256(k.as_bytes())));
        assert_ne!(keygen("").0, keygen("").0);
    }

    #[test]
    fn sign_signs_the_host() {
        let base = SignRequest {
            key_id: "k",
            secret: b"s",
            algorithm: "hmac-sha256",
            method: "GET",
            url: "/x",
            headers: &[],
            body: None,
            now: 0,
        };
        let host = |r: &SignRequest| {
            sign(r).map(|out| {
                let h = out.iter().find(|(k, _)| k == "Host").unwrap().1.clone();
                let a = out.iter().find(|(k, _)| k == "Authorization").unwrap();
                assert!(a.1.contains("headers=\"date request-line host\""), "{a:?}");
                h
            })
        };
        // A path alone does not say which host: refused.
        assert!(host(&base).unwrap_err().contains("Host"));
        let with = vec!["Host: api.example.com:8443".to_string()];
        assert_eq!(
            host(&SignRequest {
                headers: &with,
                ..base
            })
            .unwrap(),
            "api.example.com:8443"
        );
        for (url, want) in [
            ("http://u:p@h.example:8080/a?b=1", "h.example:8080"),
            ("https://h.example?x=1", "h.example"),
            ("http://[::1]:9/p", "[::1]:9"),
        ] {
            assert_eq!(host(&SignRequest { url, ..base }).unwrap(), want, "{url}");
        }
        // An explicit Host wins over the URL's.
        assert_eq!(
            host(&SignRequest {
                url: "http://127.0.0.1:8080/p",
                headers: &with,
                ..base
            })
            .unwrap(),
            "api.example.com:8443"
        );
    }

    #[test]
    fn sign_known_answer() {
        // Same inputs as tests/fixtures/hmac_reference.py.
        let headers = vec!["X-Tenant: blue".to_string()];
        let out = sign(&SignRequest {
            key_id: "acme-svc",
            secret: b"s3cr3t-for-tests-only",
            algorithm: "hmac-sha256",
            method: "post",
            url: "http://api.example.com/api/users?limit=10&q=a%20b",
            headers: &headers,
            body: Some(b"{\"name\":\"moat\"}"),
            now: 1_732_345_200,
        })
        .unwrap();
        let get = |n: &str| out.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(get("Date"), "Sat, 23 Nov 2024 07:00:00 GMT");
        assert_eq!(get("Host"), "api.example.com");
        assert!(get("Authorization").contains("headers=\"date request-line host digest x-tenant\""));
        let expected = include_str!("../../tests/fixtures/hmac_reference.expected");
        let want_sig = expected
            .lines()
            .find_map(|l| l.strip_prefix("signature: "))
            .unwrap();
        assert!(get("Authorization").contains(&format!("signature=\"{want_sig}\"")));
        assert!(expected.contains(&format!("digest: {}", get("Digest"))));
        assert!(sign(&SignRequest {
            algorithm: "hmac-sha1",
            ..SignRequest {
                key_id: "k",
                secret: b"s",
                algorithm: "",
                method: "GET",
                url: "/",
                headers: &[],
                body: None,
                now: 0
            }
        })
        .is_err());
    }
}
