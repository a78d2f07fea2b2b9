//! Finding credentials in a request and removing them from what goes upstream: query
//! parameters (percent-decoded), cookies, and `Authorization` schemes. Every lookup
//! reports how many times the credential appears, so a repeated credential can be
//! refused rather than guessed at. Header values are borrowed from the request, not
//! copied (a JWT is ~700 bytes).

use crate::util::head::UpstreamHead;
use http::header::AsHeaderName;
use http::HeaderMap;
use pingora_http::RequestHeader;
use std::borrow::Cow;

/// How often a credential appeared, with the first value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<T = String> {
    /// Not present.
    None,
    /// Present once.
    One(T),
    /// Present more than once (ambiguous).
    Many,
}

impl<T> Found<T> {
    fn push(&mut self, v: T) {
        *self = match self {
            Found::None => Found::One(v),
            _ => Found::Many,
        };
    }
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decode (and `+` as space); invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The query parameter `name` of `req`.
pub fn query_param(req: &RequestHeader, name: &str) -> Found {
    let mut f = Found::None;
    if let Some(q) = req.uri.query() {
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k) == name {
                f.push(percent_decode(v));
            }
        }
    }
    f
}

/// The cookie `name` across every `Cookie` header of `req`.
pub fn cookie(req: &RequestHeader, name: &str) -> Found {
    let mut f = Found::None;
    for h in req.headers.get_all(http::header::COOKIE) {
        let Ok(h) = h.to_str() else { continue };
        for c in h.split(';') {
            if let Some((k, v)) = c.trim().split_once('=') {
                if k.trim() == name {
                    f.push(v.trim().trim_matches('"').to_string());
                }
            }
        }
    }
    f
}

/// The values of header `name`, trimmed, borrowed from `req` (copied only when a value is
/// not UTF-8: then its invalid bytes become U+FFFD).
pub fn header(req: &RequestHeader, name: impl AsHeaderName) -> Found<Cow<'_, str>> {
    let mut f = Found::None;
    for v in req.headers.get_all(name) {
        let v = v.as_bytes();
        f.push(match std::str::from_utf8(v) {
            Ok(s) => Cow::Borrowed(s.trim()),
            Err(_) => Cow::Owned(String::from_utf8_lossy(v).trim().to_string()),
        });
    }
    f
}

/// Split `Authorization` into (scheme, rest).
pub fn scheme(value: &str) -> (&str, &str) {
    match value.split_once(' ') {
        Some((s, r)) => (s, r.trim()),
        None => (value, ""),
    }
}

/// `path?query` with the parameters in `names` removed (`None` when nothing changed).
/// It works on the raw bytes, so other parameters (even ones that are not UTF-8) are
/// forwarded exactly as the client sent them.
pub fn strip_query(target: &[u8], names: &[String]) -> Option<Vec<u8>> {
    let at = target.iter().position(|&b| b == b'?')?;
    let (path, q) = (&target[..at], &target[at + 1..]);
    let is_cred = |p: &&[u8]| {
        let k = p.split(|&b| b == b'=').next().unwrap_or(p);
        let k = percent_decode(&String::from_utf8_lossy(k));
        names.contains(&k)
    };
    let total = q.split(|&b| b == b'&').count();
    let kept: Vec<&[u8]> = q.split(|&b| b == b'&').filter(|p| !is_cred(p)).collect();
    if kept.len() == total {
        return None;
    }
    let mut out = path.to_vec();
    if !kept.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&kept.join(&b'&'));
    }
    Some(out)
}

/// Remove the cookies in `names` from every `Cookie` header of `headers`.
pub fn strip_cookies(headers: &mut HeaderMap, names: &[String]) {
    if names.is_empty() {
        return;
    }
    let mut kept = Vec::new();
    let mut changed = false;
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(h) = h.to_str() else {
            changed = true;
            continue;
        };
        for c in h.split(';') {
            let c = c.trim();
            let k = c.split_once('=').map(|(k, _)| k.trim()).unwrap_or(c);
            if names.iter().any(|n| n == k) {
                changed = true;
            } else if !c.is_empty() {
                kept.push(c.to_string());
            }
        }
    }
    if !changed {
        return;
    }
    headers.remove(http::header::COOKIE);
    if let Ok(v) = http::HeaderValue::from_str(&kept.join("; ")) {
        if !v.is_empty() {
            headers.insert(http::header::COOKIE, v);
        }
    }
}

/// Where a route's credentials travel, to remove them from the upstream request.
#[derive(Debug, Clone, Default)]
pub struct Carriers {
    /// The API-key header.
    pub header: Option<http::HeaderName>,
    /// Query parameters carrying a token or key.
    pub params: Vec<String>,
    /// Cookies carrying a token.
    pub cookies: Vec<String>,
}

impl Carriers {
    /// Remove every credential from `up`: an `Authorization` with a scheme moat
    /// authenticates (Bearer, ApiKey, hmac), the API-key header, parameters and cookies.
    pub fn hide(&self, up: &mut UpstreamHead) {
        let is_cred = up
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let (s, _) = scheme(v);
                ["bearer", "apikey", "hmac"]
                    .iter()
                    .any(|x| s.eq_ignore_ascii_case(x))
            });
        if is_cred {
            up.headers.remove(http::header::AUTHORIZATION);
        }
        if let Some(h) = &self.header {
            up.headers.remove(h);
        }
        strip_cookies(&mut up.headers, &self.cookies);
        if !self.params.is_empty() {
            if let Some(t) = strip_query(up.target(), &self.params) {
                up.set_target(t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn finds_once_or_many() {
        let r = req(
            "/x?access_token=a%2Eb&x=1&k=1&k=2",
            &[("cookie", "a=1; tok=t1"), ("cookie", "tok=t2")],
        );
        assert_eq!(query_param(&r, "access_token"), Found::One("a.b".into()));
        assert_eq!(query_param(&r, "k"), Found::Many);
        assert_eq!(query_param(&r, "nope"), Found::None);
        assert_eq!(cookie(&r, "a"), Found::One("1".into()));
        assert_eq!(cookie(&r, "tok"), Found::Many);
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
    }

    #[test]
    fn header_values_are_borrowed_and_trimmed() {
        let r = req("/", &[("authorization", " Bearer abc ")]);
        match header(&r, http::header::AUTHORIZATION) {
            Found::One(Cow::Borrowed(v)) => assert_eq!(v, "Bearer abc"),
            other => panic!("{other:?}"),
        }
        let mut r = req("/", &[("x-k", "a")]);
        r.append_header("x-k", "b").unwrap();
        assert_eq!(header(&r, "x-k"), Found::Many);
        let mut r = req("/", &[]);
        r.append_header("x-k", http::HeaderValue::from_bytes(b"k\xffy").unwrap())
            .unwrap();
        assert_eq!(
            header(&r, "x-k"),
            Found::One(Cow::Owned("k\u{fffd}y".into()))
        );
        assert_eq!(header(&r, "x-none"), Found::None);
    }

    #[test]
    fn strips() {
        let names = vec!["access_token".to_string()];
        assert_eq!(
            strip_query(b"/p?a=1&access_token=x&b=2", &names).as_deref(),
            Some(&b"/p?a=1&b=2"[..])
        );
        assert_eq!(
            strip_query(b"/p?access_token=x", &names).as_deref(),
            Some(&b"/p"[..])
        );
        assert_eq!(strip_query(b"/p?a=1", &names), None);
        // Percent-encoded name, and repeated: every copy goes.
        assert_eq!(
            strip_query(b"/p?access%5Ftoken=x&c=3&access_token=y", &names).as_deref(),
            Some(&b"/p?c=3"[..])
        );
        // Regression: the target went through a lossy UTF-8 conversion, so hiding the
        // credential rewrote other parameters' non-UTF-8 bytes to U+FFFD.
        assert_eq!(
            strip_query(b"/p?n=\xff\xfe&access_token=x&m=%FF", &names).as_deref(),
            Some(&b"/p?n=\xff\xfe&m=%FF"[..])
        );
        let r = RequestHeader::build("GET", &b"/p?n=\xff&access_token=x"[..], None).unwrap();
        let mut h = UpstreamHead::from(r);
        Carriers {
            params: names.clone(),
            ..Carriers::default()
        }
        .hide(&mut h);
        assert_eq!(h.into_request().unwrap().raw_path(), b"/p?n=\xff");
        let mut r = http::HeaderMap::new();
        r.append("cookie", "a=1; access_token=x; b=2".parse().unwrap());
        strip_cookies(&mut r, &names);
        assert_eq!(r["cookie"], "a=1; b=2");
        let mut r = http::HeaderMap::new();
        r.append("cookie", "access_token=x".parse().unwrap());
        strip_cookies(&mut r, &names);
        assert!(r.get("cookie").is_none());
    }
}
