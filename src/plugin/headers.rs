//! `headers`: remove, set and add request headers (sent upstream) and response headers
//! (sent downstream), values templated. Order: remove, then set (replacing any existing
//! value), then add (appending). A templated value that renders empty is not emitted (a
//! `set` still removes the client's copy); one that would contain CR, LF, NUL or another
//! control character is never emitted.

use super::{Phases, Plugin, ResponseHead, UpstreamHead};
use crate::config::error::{join, ConfigErrors};
use crate::config::model::{HeaderOpsConfig, HeadersConfig};
use crate::ctx::RequestCtx;
use crate::template::{Facts, Template};
use crate::util::http::safe_header_value;
use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue};
use pingora_http::RequestHeader;

/// Headers that frame the message or the connection: moat owns them.
pub const FORBIDDEN: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];

/// One value to emit.
struct Value {
    name: HeaderName,
    /// Pre-built when the template is static.
    fixed: Option<HeaderValue>,
    template: Template,
}

/// Operations on one direction.
#[derive(Default)]
struct Ops {
    remove: Vec<HeaderName>,
    set: Vec<Value>,
    add: Vec<Value>,
}

/// The compiled plugin.
pub struct Headers {
    request: Ops,
    response: Ops,
}

impl Headers {
    /// Compile, recording every bad name or template under `path`.
    pub fn compile(c: &HeadersConfig, path: &str, errs: &mut ConfigErrors) -> Option<Headers> {
        let before = errs.checkpoint();
        let request = c
            .request
            .as_ref()
            .map(|o| compile_ops(o, &join(path, "request"), errs))
            .unwrap_or_default();
        let response = c
            .response
            .as_ref()
            .map(|o| compile_ops(o, &join(path, "response"), errs))
            .unwrap_or_default();
        (errs.clean_since(before)).then_some(Headers { request, response })
    }
}

fn header_name(name: &str, path: &str, errs: &mut ConfigErrors) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.as_bytes()) {
        Ok(n) if FORBIDDEN.contains(&n.as_str()) => {
            errs.push(
                path,
                format!("`{name}` is managed by moat and cannot be changed"),
            );
            None
        }
        Ok(n) => Some(n),
        Err(_) => {
            errs.push(path, format!("`{name}` is not a valid header name"));
            None
        }
    }
}

fn compile_values(
    map: &std::collections::BTreeMap<String, String>,
    path: &str,
    errs: &mut ConfigErrors,
) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, text) in map {
        let here = join(path, name);
        let Some(name) = header_name(name, &here, errs) else {
            continue;
        };
        let template = match Template::parse(text) {
            Ok(t) => t,
            Err(e) => {
                errs.push(here, e);
                continue;
            }
        };
        let fixed = match template.as_static() {
            Some(s) => match HeaderValue::from_bytes(s) {
                Ok(v) if safe_header_value(s) => Some(v),
                _ => {
                    errs.push(here, "value contains characters not allowed in a header");
                    continue;
                }
            },
            None => None,
        };
        out.push(Value {
            name,
            fixed,
            template,
        });
    }
    out
}

fn compile_ops(o: &HeaderOpsConfig, path: &str, errs: &mut ConfigErrors) -> Ops {
    let remove = o
        .remove
        .iter()
        .enumerate()
        .filter_map(|(i, n)| header_name(n, &format!("{}[{i}]", join(path, "remove")), errs))
        .collect();
    Ops {
        remove,
        set: compile_values(&o.set, &join(path, "set"), errs),
        add: compile_values(&o.add, &join(path, "add"), errs),
    }
}

/// Render a value; `None` when empty or unsafe.
fn render(v: &Value, facts: &Facts) -> Option<HeaderValue> {
    if let Some(f) = &v.fixed {
        return (!f.is_empty()).then(|| f.clone());
    }
    let bytes = v.template.render_to_vec(facts);
    if bytes.is_empty() {
        return None;
    }
    if !safe_header_value(&bytes) {
        log::warn!(
            "headers: not emitting {}: its value would contain control characters",
            v.name
        );
        return None;
    }
    // Takes the buffer over (no copy).
    HeaderValue::from_maybe_shared(bytes::Bytes::from(bytes)).ok()
}

/// Header edits, on a header map (request and response heads alike).
trait HeadMut {
    fn remove(&mut self, name: &HeaderName);
    fn insert(&mut self, name: HeaderName, v: HeaderValue);
    fn append(&mut self, name: HeaderName, v: HeaderValue);
}

impl HeadMut for HeaderMap {
    fn remove(&mut self, name: &HeaderName) {
        HeaderMap::remove(self, name);
    }
    fn insert(&mut self, name: HeaderName, v: HeaderValue) {
        HeaderMap::insert(self, name, v);
    }
    fn append(&mut self, name: HeaderName, v: HeaderValue) {
        HeaderMap::append(self, name, v);
    }
}

fn apply(ops: &Ops, facts: &Facts, head: &mut impl HeadMut) {
    for n in &ops.remove {
        head.remove(n);
    }
    for v in &ops.set {
        // `insert` replaces every copy; a value not emitted still removes the client's.
        match render(v, facts) {
            Some(val) => head.insert(v.name.clone(), val),
            None => head.remove(&v.name),
        }
    }
    for v in &ops.add {
        if let Some(val) = render(v, facts) {
            head.append(v.name.clone(), val);
        }
    }
}

#[async_trait]
impl Plugin for Headers {
    fn name(&self) -> &'static str {
        "headers"
    }

    fn phases(&self) -> Phases {
        let any = |o: &Ops| !(o.remove.is_empty() && o.set.is_empty() && o.add.is_empty());
        Phases {
            upstream_request: any(&self.request),
            response: any(&self.response),
            ..Phases::default()
        }
    }

    fn upstream_request(&self, req: &RequestHeader, ctx: &RequestCtx, up: &mut UpstreamHead) {
        apply(&self.request, &ctx.facts(req), &mut up.headers);
    }

    fn response(&self, req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHead) {
        apply(&self.response, &ctx.facts(req), &mut resp.headers);
    }
}

impl super::CompilePlugin for crate::config::model::HeadersConfig {
    fn compile_plugin(
        &self,
        here: &str,
        _env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        Headers::compile(self, here, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn plugin(yaml: &str) -> Result<Headers, ConfigErrors> {
        let c: HeadersConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errs = ConfigErrors::default();
        let p = Headers::compile(&c, "p", &mut errs);
        match p {
            Some(p) if errs.is_empty() => Ok(p),
            _ => Err(errs),
        }
    }

    fn client_req() -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.insert_header("x-in", "hello").unwrap();
        r.insert_header("x-evil", "a").unwrap();
        r.insert_header("cookie", "secret=1").unwrap();
        r
    }

    #[test]
    fn request_ops_in_order() {
        let p = plugin(
            "request:\n  remove: [cookie]\n  set: { x-route: '{{route}}', x-copy: 'v={{header.x-in}}', x-empty: '{{consumer.id}}' }\n  add: { x-in: second }\n",
        )
        .unwrap();
        let req = client_req();
        let mut up = req.clone();
        up.insert_header("x-empty", "client-forged").unwrap();
        let mut up = UpstreamHead::from(up);
        let ctx = RequestCtx::new();
        p.upstream_request(&req, &ctx, &mut up);
        assert!(up.headers.get("cookie").is_none());
        assert_eq!(up.headers["x-copy"], "v=hello");
        assert!(
            up.headers.get("x-route").is_none(),
            "no route: renders empty, not emitted"
        );
        assert!(
            up.headers.get("x-empty").is_none(),
            "client copy removed by set"
        );
        let all: Vec<_> = up.headers.get_all("x-in").iter().collect();
        assert_eq!(all, ["hello", "second"]);
    }

    #[test]
    fn crlf_injection_is_never_emitted() {
        let p =
            plugin("request:\n  set: { x-user: 'u={{claims.sub}}', x-ok: '{{consumer.id}}' }\n")
                .unwrap();
        let req = client_req();
        let mut up = UpstreamHead::from(req.clone());
        let mut ctx = RequestCtx::new();
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "x\r\nx-admin: true".into());
        ctx.identity = Some(crate::identity::Identity {
            consumer_id: Arc::from("acme"),
            consumer_header: http::HeaderValue::from_static("acme"),
            tier: None,
            method: "jwt",
            claims: Some(Arc::new(claims)),
        });
        p.upstream_request(&req, &ctx, &mut up);
        assert!(up.headers.get("x-user").is_none());
        assert!(up.headers.get("x-admin").is_none());
        assert_eq!(up.headers["x-ok"], "acme");
    }

    #[test]
    fn bad_configs() {
        let e = plugin("request:\n  set: { 'bad name': x, content-length: '1', x-ok: '{{nope}}' }\n  remove: ['a b']\nresponse:\n  add: { x: \"a\\r\\nb\" }\n")
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("p.request.set.bad name: `bad name` is not a valid header name"),
            "{e}"
        );
        assert!(
            e.contains("p.request.set.content-length: `content-length` is managed by moat"),
            "{e}"
        );
        assert!(
            e.contains("p.request.set.x-ok: unknown template variable"),
            "{e}"
        );
        assert!(e.contains("p.request.remove[0]"), "{e}");
        assert!(
            e.contains("p.response.add.x: value contains characters"),
            "{e}"
        );
    }
}
