//! `security_headers`: a sane preset of response security headers, with per-header
//! override (`set`) and removal (`remove`).
//!
//! Preset: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`, `Referrer-Policy:
//! no-referrer`, and with `hsts: SECONDS` `Strict-Transport-Security: max-age=SECONDS;
//! includeSubDomains`. An upstream's own value for a preset header is kept (the service
//! knows its pages best); `set` always wins. Responses moat makes itself (errors, `respond`,
//! redirects, preflights) also get a restrictive `Content-Security-Policy: default-src
//! 'none'; frame-ancestors 'none'`, since they never need to load anything.

use super::{Phases, Plugin, ResponseHead};
use crate::config::error::ConfigErrors;
use crate::config::model::SecurityHeadersConfig;
use crate::ctx::RequestCtx;
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;

/// The CSP of moat's own responses.
pub const OWN_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The compiled plugin.
pub struct SecurityHeaders {
    /// Preset headers, set when the response has none.
    preset: Vec<(HeaderName, HeaderValue)>,
    /// Configured values, always set.
    set: Vec<(HeaderName, HeaderValue)>,
    /// Removed from every response.
    remove: Vec<HeaderName>,
    own_csp: bool,
}

impl SecurityHeaders {
    /// Compile: the settings checked (`checks::plugins::security_headers`: every bad
    /// header name or value recorded under `path`), then built.
    pub fn compile(
        c: &SecurityHeadersConfig,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<SecurityHeaders> {
        let before = errs.checkpoint();
        crate::checks::plugins::security_headers(c, path, errs);
        if !errs.clean_since(before) {
            return None;
        }
        // Checked above: every name and value parses.
        let remove: Vec<HeaderName> = c
            .remove
            .iter()
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        let set: Vec<(HeaderName, HeaderValue)> = c
            .set
            .iter()
            .filter_map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect();
        let mut preset = vec![
            (
                http::header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                http::header::X_FRAME_OPTIONS,
                HeaderValue::from_static("DENY"),
            ),
            (
                http::header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ];
        if let Some(secs) = c.hsts {
            let v = HeaderValue::from_str(&format!("max-age={secs}; includeSubDomains")).ok()?;
            preset.push((http::header::STRICT_TRANSPORT_SECURITY, v));
        }
        let overridden = |n: &HeaderName| set.iter().any(|(s, _)| s == n) || remove.contains(n);
        preset.retain(|(n, _)| !overridden(n));
        let own_csp = !overridden(&http::header::CONTENT_SECURITY_POLICY);
        Some(SecurityHeaders {
            preset,
            set,
            remove,
            own_csp,
        })
    }
}

#[async_trait]
impl Plugin for SecurityHeaders {
    fn name(&self) -> &'static str {
        "security_headers"
    }

    fn phases(&self) -> Phases {
        Phases {
            response: true,
            ..Phases::default()
        }
    }

    fn response(&self, _req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHead) {
        let h = &mut resp.headers;
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.preset {
            if let http::header::Entry::Vacant(e) = h.entry(n) {
                e.insert(v.clone());
            }
        }
        if self.own_csp && ctx.own_response {
            h.insert(
                http::header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(OWN_CSP),
            );
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
    }
}

impl super::CompilePlugin for crate::config::model::SecurityHeadersConfig {
    fn compile_plugin(
        &self,
        here: &str,
        _env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        SecurityHeaders::compile(self, here, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(yaml: &str) -> SecurityHeaders {
        let c: SecurityHeadersConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errs = ConfigErrors::default();
        SecurityHeaders::compile(&c, "p", &mut errs).unwrap_or_else(|| panic!("{errs}"))
    }

    #[test]
    fn preset_override_and_removal() {
        let p = plugin("hsts: 31536000\nset: { referrer-policy: same-origin }\nremove: [x-frame-options, server]\n");
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        let mut ctx = RequestCtx::new();
        let mut up = pingora_http::ResponseHeader::build(200, None).unwrap();
        up.insert_header("server", "upstream/1.0").unwrap();
        up.insert_header("x-content-type-options", "upstream-value")
            .unwrap();
        let mut resp = ResponseHead::from(up);
        p.response(&req, &ctx, &mut resp);
        assert_eq!(
            resp.headers["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(resp.headers["referrer-policy"], "same-origin");
        assert_eq!(resp.headers["x-content-type-options"], "upstream-value");
        assert!(resp.headers.get("x-frame-options").is_none());
        assert!(resp.headers.get("server").is_none());
        assert!(
            resp.headers.get("content-security-policy").is_none(),
            "upstream response"
        );
        ctx.own_response = true;
        let mut own = ResponseHead::from(pingora_http::ResponseHeader::build(404, None).unwrap());
        p.response(&req, &ctx, &mut own);
        assert_eq!(own.headers["content-security-policy"], OWN_CSP);
        assert_eq!(own.headers["x-content-type-options"], "nosniff");
    }

    #[test]
    fn bad_configs() {
        let c: SecurityHeadersConfig =
            serde_yaml::from_str("hsts: 0\nset: { 'a b': x }\nremove: ['c d']\n").unwrap();
        let mut errs = ConfigErrors::default();
        assert!(SecurityHeaders::compile(&c, "p", &mut errs).is_none());
        assert_eq!(errs.0.len(), 3, "{errs}");
    }
}
