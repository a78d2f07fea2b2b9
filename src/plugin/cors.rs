//! `cors`: Cross-Origin Resource Sharing by exact origin match.
//!
//! - Origins match exactly (scheme, host and port as the browser sends them): no suffix or
//!   substring tricks, so `https://example.com.evil.com` and `https://evilexample.com` never
//!   match `https://example.com`. The `null` origin is always refused. `*` allows any origin
//!   and cannot be combined with `credentials: true` (a config error).
//! - Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered by
//!   moat with 204 and never reach the upstream, before any other plugin of the route runs
//!   (a preflight carries no credentials). A preflight that is not allowed gets a 204 with no
//!   `Access-Control-Allow-*` headers, which browsers treat as a refusal.
//! - Actual responses get `Access-Control-Allow-Origin` (the request's origin echoed, or `*`),
//!   `Access-Control-Allow-Credentials`, `Access-Control-Expose-Headers` when the origin is
//!   allowed; `Vary: Origin` always, so caches never mix answers for different origins.

use super::ResponseHead;
use super::{Phases, Plugin};
use crate::config::error::ConfigErrors;
use crate::config::model::CorsConfig;
use crate::ctx::RequestCtx;
use crate::reply::Reply;
use crate::util::http::is_preflight;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderName, HeaderValue, Method};
use pingora_http::RequestHeader;

/// The compiled plugin.
pub struct Cors {
    any_origin: bool,
    origins: Vec<String>,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    headers: Vec<HeaderName>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

fn list_value(items: &[String]) -> Option<HeaderValue> {
    (!items.is_empty())
        .then(|| HeaderValue::from_str(&items.join(", ")).ok())
        .flatten()
}

impl Cors {
    /// Compile: the settings checked (`checks::plugins::cors`: every bad origin, method or
    /// header recorded under `path`), then built.
    pub fn compile(c: &CorsConfig, path: &str, errs: &mut ConfigErrors) -> Option<Cors> {
        let before = errs.checkpoint();
        crate::checks::plugins::cors(c, path, errs);
        if !errs.clean_since(before) {
            return None;
        }
        let any_origin = c.origins.iter().any(|o| o == "*");
        let origins = c
            .origins
            .iter()
            .filter(|o| *o != "*")
            .map(|o| o.to_ascii_lowercase())
            .collect();
        let method_names: Vec<String> = if c.methods.is_empty() {
            ["GET", "HEAD", "POST"]
                .iter()
                .map(|m| m.to_string())
                .collect()
        } else {
            c.methods.iter().map(|m| m.to_ascii_uppercase()).collect()
        };
        // Checked above: every method and header name parses.
        let methods = method_names
            .iter()
            .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let headers: Vec<HeaderName> = c
            .headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
            .collect();
        let header_names: Vec<String> = headers.iter().map(|h| h.as_str().to_string()).collect();
        Some(Cors {
            any_origin,
            origins,
            methods_value: HeaderValue::from_str(&method_names.join(", ")).ok()?,
            methods,
            headers_value: list_value(&header_names),
            headers,
            expose_value: list_value(&c.expose_headers),
            credentials: c.credentials,
            max_age: c
                .max_age
                .and_then(|d| HeaderValue::from_str(&d.get().as_secs().to_string()).ok()),
        })
    }

    /// The value for `Access-Control-Allow-Origin`, when `origin` is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let o = origin.to_str().ok()?;
        if o == "null" {
            return None;
        }
        if self.any_origin {
            return Some(HeaderValue::from_static("*"));
        }
        let lower = o.to_ascii_lowercase();
        self.origins.contains(&lower).then(|| origin.clone())
    }

    /// Answer a preflight.
    pub fn preflight_reply(&self, req: &RequestHeader) -> Reply {
        let mut headers = vec![(VARY, HeaderValue::from_static("Origin"))];
        let allowed = req.headers.get(ORIGIN).and_then(|o| self.allow_origin(o));
        let method_ok = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let headers_ok = req
            .headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .all(|h| {
                self.headers
                    .iter()
                    .any(|a| a.as_str().eq_ignore_ascii_case(h))
            });
        if let (Some(origin), true, true) = (allowed, method_ok, headers_ok) {
            headers.push((ACCESS_CONTROL_ALLOW_ORIGIN, origin));
            headers.push((ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone()));
            if let Some(h) = &self.headers_value {
                headers.push((ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
            }
            if self.credentials {
                headers.push((
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                ));
            }
            if let Some(age) = &self.max_age {
                headers.push((ACCESS_CONTROL_MAX_AGE, age.clone()));
            }
        }
        Reply::raw(204, headers, Bytes::new())
    }
}

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn phases(&self) -> Phases {
        Phases {
            early_request: true,
            response: true,
            ..Phases::default()
        }
    }

    fn early_request(&self, req: &RequestHeader) -> Option<Reply> {
        is_preflight(req).then(|| self.preflight_reply(req))
    }

    fn response(&self, req: &RequestHeader, _ctx: &RequestCtx, resp: &mut ResponseHead) {
        if is_preflight(req) && resp.headers.contains_key(ACCESS_CONTROL_ALLOW_METHODS) {
            return; // moat's own preflight answer is complete
        }
        resp.headers
            .append(VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = req.headers.get(ORIGIN).and_then(|o| self.allow_origin(o)) else {
            // Never pass an upstream's own CORS grant for an origin moat does not allow.
            resp.headers.remove(ACCESS_CONTROL_ALLOW_ORIGIN);
            resp.headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
            return;
        };
        resp.headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        if self.credentials {
            resp.headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        } else {
            resp.headers.remove(ACCESS_CONTROL_ALLOW_CREDENTIALS);
        }
        if let Some(e) = &self.expose_value {
            resp.headers
                .insert(ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}

impl super::CompilePlugin for crate::config::model::CorsConfig {
    fn compile_plugin(
        &self,
        here: &str,
        _env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        Cors::compile(self, here, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(yaml: &str) -> Cors {
        let c: CorsConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errs = ConfigErrors::default();
        Cors::compile(&c, "p", &mut errs).unwrap_or_else(|| panic!("{errs}"))
    }

    fn req(method: &str, h: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/x", None).unwrap();
        for (k, v) in h {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn exact_origins_only() {
        let c = cors("origins: [https://example.com]\ncredentials: true\n");
        let ok = HeaderValue::from_static("https://example.com");
        assert_eq!(c.allow_origin(&ok), Some(ok));
        for bad in [
            "https://example.com.evil.com",
            "https://evilexample.com",
            "http://example.com",
            "https://example.com:8443",
            "null",
            "https://example.com/",
        ] {
            assert_eq!(
                c.allow_origin(&HeaderValue::from_static(bad)),
                None,
                "{bad}"
            );
        }
    }

    #[test]
    fn preflights() {
        let c = cors("origins: [https://app.example.com]\nmethods: [GET, POST]\nheaders: [authorization, content-type]\ncredentials: true\nmax_age: 10m\n");
        let good = req(
            "OPTIONS",
            &[
                ("origin", "https://app.example.com"),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "Content-Type, authorization",
                ),
            ],
        );
        let r = c.preflight_reply(&good);
        let get = |r: &Reply, n: &str| {
            r.headers
                .iter()
                .find(|(k, _)| k.as_str() == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(r.status, 204);
        assert_eq!(
            get(&r, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            get(&r, "access-control-allow-credentials").as_deref(),
            Some("true")
        );
        assert_eq!(get(&r, "access-control-max-age").as_deref(), Some("600"));
        for bad in [
            req(
                "OPTIONS",
                &[
                    ("origin", "https://evil.com"),
                    ("access-control-request-method", "POST"),
                ],
            ),
            req(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "DELETE"),
                ],
            ),
            req(
                "OPTIONS",
                &[
                    ("origin", "https://app.example.com"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-secret"),
                ],
            ),
        ] {
            let r = c.preflight_reply(&bad);
            assert_eq!(r.status, 204);
            assert!(get(&r, "access-control-allow-origin").is_none());
            assert!(get(&r, "access-control-allow-methods").is_none());
            assert_eq!(get(&r, "vary").as_deref(), Some("Origin"));
        }
    }

    #[test]
    fn bad_configs() {
        let mut errs = ConfigErrors::default();
        let c: CorsConfig = serde_yaml::from_str(
            "origins: [\"*\", \"null\", example.com, https://a.com/]\ncredentials: true\n",
        )
        .unwrap();
        assert!(Cors::compile(&c, "p", &mut errs).is_none());
        let e = errs.to_string();
        assert!(
            e.contains("p.origins: \"*\" cannot be used with credentials: true"),
            "{e}"
        );
        assert!(e.contains("p.origins[1]"), "{e}");
        assert!(e.contains("p.origins[2]"), "{e}");
        assert!(e.contains("p.origins[3]"), "{e}");
    }
}
