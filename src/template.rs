//! `{{...}}` templates in header values, bodies, redirect targets and hash keys.
//! Parsed once at config load into literal and variable parts; rendering appends bytes to a
//! caller-owned buffer and never fails (a missing value renders as nothing).
//!
//! Variables: `client_ip`, `request_id`, `route`, `method`, `host`, `path`, `query`
//! (without `?`), `uri` (path plus `?query` when there is one), `header.NAME`,
//! `consumer.id`, `consumer.tier`, `claims.NAME`.
//!
//! [`Template::render_in`] escapes each interpolated value for the [`Context`] the output
//! goes to (a JSON or HTML body, a URL); see `escape`.

mod escape;

pub use escape::Context;

use crate::identity::Identity;
use crate::util::http::{request_host, valid_token};
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// The request facts a template can read.
pub struct Facts<'a> {
    /// The client's request as received (before rewrite).
    pub req: &'a RequestHeader,
    /// The resolved client address.
    pub client_ip: Option<IpAddr>,
    /// This request's id.
    pub request_id: &'a str,
    /// The matched route's name, or empty.
    pub route: &'a str,
    /// The authenticated identity, if any.
    pub identity: Option<&'a Identity>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    ClientIp,
    RequestId,
    Route,
    Method,
    Host,
    Path,
    Query,
    Uri,
    Header(String),
    ConsumerId,
    ConsumerTier,
    Claim(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(Vec<u8>),
    Var(Var),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parse `text`; an unknown variable or an unclosed `{{` is an error.
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest.as_bytes()[..start].to_vec()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("unclosed `{{{{` in template `{text}`"))?;
            parts.push(Part::Var(parse_var(after[..end].trim())?));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.as_bytes().to_vec()));
        }
        Ok(Template { parts })
    }

    /// The text when the template has no variables.
    pub fn as_static(&self) -> Option<&[u8]> {
        match self.parts.as_slice() {
            [] => Some(b""),
            [Part::Lit(l)] => Some(l),
            _ => None,
        }
    }

    /// Whether the template reads the authenticated identity.
    pub fn uses_identity(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::Var(Var::ConsumerId | Var::ConsumerTier | Var::Claim(_))
            )
        })
    }

    /// Append the rendered template to `out`.
    pub fn render(&self, f: &Facts, out: &mut Vec<u8>) {
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Var(v) => render_var(v, f, out),
            }
        }
    }

    /// Append the rendered template to `out`, each variable's value escaped for `ctx`
    /// (literal text as is), without a buffer of its own. `false`: a value cannot stand
    /// in this context (a `host` that is not a host name or IP address, in a URL), and
    /// `out` holds a partial rendering.
    pub fn render_in(&self, f: &Facts, out: &mut Vec<u8>, ctx: Context) -> bool {
        if ctx == Context::Raw {
            self.render(f, out);
            return true;
        }
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.extend_from_slice(l),
                Part::Var(v) => {
                    if ctx == Context::Url
                        && *v == Var::Host
                        && !escape::url_host(request_host(f.req).as_bytes())
                    {
                        return false;
                    }
                    let url_syntax = matches!(v, Var::Path | Var::Query | Var::Uri | Var::Host);
                    render_var(
                        v,
                        f,
                        &mut Escaped {
                            ctx,
                            url_syntax,
                            out,
                        },
                    );
                }
            }
        }
        true
    }

    /// Render into a new buffer.
    pub fn render_to_vec(&self, f: &Facts) -> Vec<u8> {
        let mut out = Vec::new();
        self.render(f, &mut out);
        out
    }
}

fn parse_var(name: &str) -> Result<Var, String> {
    Ok(match name {
        "client_ip" => Var::ClientIp,
        "request_id" => Var::RequestId,
        "route" => Var::Route,
        "method" => Var::Method,
        "host" => Var::Host,
        "path" => Var::Path,
        "query" => Var::Query,
        "uri" => Var::Uri,
        "consumer.id" => Var::ConsumerId,
        "consumer.tier" => Var::ConsumerTier,
        _ => {
            if let Some(h) = name.strip_prefix("header.").filter(|h| valid_token(h)) {
                Var::Header(h.to_ascii_lowercase())
            } else if let Some(c) = name.strip_prefix("claims.").filter(|c| !c.is_empty()) {
                Var::Claim(c.to_string())
            } else {
                return Err(format!(
                    "unknown template variable `{{{{{name}}}}}` (known: client_ip, request_id, \
                     route, method, host, path, query, uri, header.NAME, consumer.id, \
                     consumer.tier, claims.NAME)"
                ));
            }
        }
    })
}

/// Where a variable's value goes: the output as is, or through an escaper. Values arrive
/// in pieces, each whole UTF-8 when the value is (a header value, a claim's text, the
/// pieces `Display` writes).
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Each piece escaped for its context on the way into `out`.
struct Escaped<'a> {
    ctx: Context,
    url_syntax: bool,
    out: &'a mut Vec<u8>,
}

impl Sink for Escaped<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.ctx.write(bytes, self.url_syntax, self.out);
    }
}

/// `Display` output into a [`Sink`], piece by piece (no buffer).
struct Pieces<'a, S: Sink>(&'a mut S);

impl<S: Sink> std::fmt::Write for Pieces<'_, S> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put(s.as_bytes());
        Ok(())
    }
}

fn render_var(v: &Var, f: &Facts, out: &mut impl Sink) {
    use std::fmt::Write;
    match v {
        Var::ClientIp => {
            if let Some(ip) = f.client_ip {
                let _ = write!(Pieces(out), "{ip}");
            }
        }
        Var::RequestId => out.put(f.request_id.as_bytes()),
        Var::Route => out.put(f.route.as_bytes()),
        Var::Method => out.put(f.req.method.as_str().as_bytes()),
        Var::Host => {
            // Lower case, through a small stack buffer.
            for chunk in request_host(f.req).as_bytes().chunks(64) {
                let mut buf = [0u8; 64];
                let lower = &mut buf[..chunk.len()];
                lower.copy_from_slice(chunk);
                lower.make_ascii_lowercase();
                out.put(lower);
            }
        }
        Var::Path => out.put(f.req.uri.path().as_bytes()),
        Var::Query => out.put(f.req.uri.query().unwrap_or("").as_bytes()),
        Var::Uri => {
            out.put(f.req.uri.path().as_bytes());
            if let Some(q) = f.req.uri.query() {
                out.put(b"?");
                out.put(q.as_bytes());
            }
        }
        Var::Header(name) => {
            for (i, value) in f.req.headers.get_all(name.as_str()).iter().enumerate() {
                if i > 0 {
                    out.put(b", ");
                }
                out.put(value.as_bytes());
            }
        }
        Var::ConsumerId => {
            if let Some(id) = f.identity {
                out.put(id.consumer_id.as_bytes());
            }
        }
        Var::ConsumerTier => {
            if let Some(t) = f.identity.and_then(|i| i.tier.as_deref()) {
                out.put(t.as_bytes());
            }
        }
        Var::Claim(name) => {
            let claim = f
                .identity
                .and_then(|i| i.claims.as_ref())
                .and_then(|c| c.get(name.as_str()));
            match claim {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => out.put(s.as_bytes()),
                Some(serde_json::Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.put(b" ");
                        }
                        match item {
                            serde_json::Value::String(s) => out.put(s.as_bytes()),
                            other => {
                                let _ = write!(Pieces(out), "{other}");
                            }
                        }
                    }
                }
                Some(other) => {
                    let _ = write!(Pieces(out), "{other}");
                }
            }
        }
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn req() -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/a/b?x=1&y=2", None).unwrap();
        r.insert_header("Host", "api.example.com:8080").unwrap();
        r.append_header("X-Tag", "one").unwrap();
        r.append_header("X-Tag", "two").unwrap();
        r
    }

    #[test]
    fn renders_every_variable() {
        let r = req();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "u-1".into());
        claims.insert("n".into(), 7.into());
        claims.insert("roles".into(), serde_json::json!(["a", "b"]));
        let id = Identity {
            consumer_id: Arc::from("acme"),
            consumer_header: http::HeaderValue::from_static("acme"),
            tier: Some(Arc::from("gold")),
            method: "jwt",
            claims: Some(Arc::new(claims)),
        };
        let f = Facts {
            req: &r,
            client_ip: Some("10.1.2.3".parse().unwrap()),
            request_id: "rid",
            route: "users",
            identity: Some(&id),
        };
        let t = Template::parse(
            "{{client_ip}}|{{request_id}}|{{route}}|{{method}}|{{host}}|{{path}}|{{query}}|{{uri}}|{{header.x-tag}}|{{ consumer.id }}|{{consumer.tier}}|{{claims.sub}}|{{claims.n}}|{{claims.roles}}|{{claims.none}}|{{header.absent}}",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(t.render_to_vec(&f)).unwrap(),
            "10.1.2.3|rid|users|GET|api.example.com|/a/b|x=1&y=2|/a/b?x=1&y=2|one, two|acme|gold|u-1|7|a b||"
        );
        assert!(t.uses_identity());
    }

    #[test]
    fn escaping_piece_by_piece_equals_escaping_the_whole_value() {
        let mut r = RequestHeader::build("GET", b"/a/%41/b?x=%221%22&y=a/b", None).unwrap();
        r.insert_header("Host", "API.example.com:8080").unwrap();
        r.append_header("X-Tag", "o'ne \"1\"").unwrap();
        r.append_header("X-Tag", "tw\u{f6}".as_bytes()).unwrap();
        let mut claims = serde_json::Map::new();
        claims.insert(
            "obj".into(),
            serde_json::json!({"k": "v\"<\u{e9}>", "n": [1, 2]}),
        );
        claims.insert("mix".into(), serde_json::json!(["a'", {"b": "</c>"}, 3.5]));
        claims.insert("f".into(), serde_json::json!(-1.25e-7));
        let id = Identity {
            consumer_id: Arc::from("ac<me>"),
            consumer_header: http::HeaderValue::from_static("ac<me>"),
            tier: Some(Arc::from("g&ld")),
            method: "jwt",
            claims: Some(Arc::new(claims)),
        };
        let f = Facts {
            req: &r,
            client_ip: Some("2001:db8::1".parse().unwrap()),
            request_id: "r\"id",
            route: "ro'ute",
            identity: Some(&id),
        };
        for var in [
            "client_ip",
            "request_id",
            "route",
            "method",
            "host",
            "path",
            "query",
            "uri",
            "header.x-tag",
            "consumer.id",
            "consumer.tier",
            "claims.obj",
            "claims.mix",
            "claims.f",
        ] {
            let t = Template::parse(&format!("[{{{{{var}}}}}]")).unwrap();
            let whole = t.render_to_vec(&f);
            let value = &whole[1..whole.len() - 1];
            let url_syntax = ["host", "path", "query", "uri"].contains(&var);
            for ctx in [Context::Json, Context::Markup, Context::Url] {
                let mut want = b"[".to_vec();
                ctx.write(value, url_syntax, &mut want);
                want.push(b']');
                let mut got = Vec::new();
                assert!(t.render_in(&f, &mut got, ctx), "{var} {ctx:?}");
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{var} {ctx:?}"
                );
            }
        }
        // A host that is not one cannot go into a URL (elsewhere it is escaped).
        let mut evil = r.clone();
        evil.insert_header("Host", "evil.example#.good.example")
            .unwrap();
        let f = Facts { req: &evil, ..f };
        let t = Template::parse("https://{{host}}/").unwrap();
        assert!(!t.render_in(&f, &mut Vec::new(), Context::Url));
        let mut out = Vec::new();
        assert!(t.render_in(&f, &mut out, Context::Markup));
        assert_eq!(out, b"https://evil.example#.good.example/");
    }

    #[test]
    fn missing_identity_renders_empty() {
        let r = req();
        let f = Facts {
            req: &r,
            client_ip: None,
            request_id: "",
            route: "",
            identity: None,
        };
        let t = Template::parse("[{{consumer.id}}{{claims.sub}}{{client_ip}}]").unwrap();
        assert_eq!(t.render_to_vec(&f), b"[]");
    }

    #[test]
    fn parse_errors_and_static() {
        assert!(Template::parse("{{nope}}").is_err());
        assert!(Template::parse("{{header.}}").is_err());
        assert!(Template::parse("{{header.a b}}").is_err());
        assert!(Template::parse("x {{path").is_err());
        assert_eq!(
            Template::parse("plain").unwrap().as_static(),
            Some(&b"plain"[..])
        );
        assert_eq!(Template::parse("").unwrap().as_static(), Some(&b""[..]));
        assert_eq!(Template::parse("{{path}}").unwrap().as_static(), None);
    }
}
