//! The `stamp` plugin: adds one templated header to every response of the routes that
//! use it. Small on purpose: it shows the whole extension surface (settings, factory,
//! plugin, phases).

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use moat::config::ConfigErrors;
use moat::ctx::RequestCtx;
use moat::plugin::external::{decode, PluginFactory};
use moat::plugin::{Phases, Plugin, ResponseHead};
use moat::template::Template;
use moat::util::http::safe_header_value;
use pingora_http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

/// `stamp: { header, value }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StampConfig {
    header: String,
    value: String,
}

/// The compiled plugin.
struct Stamp {
    header: HeaderName,
    value: Template,
}

/// Registers as `stamp`.
pub struct StampFactory;

impl PluginFactory for StampFactory {
    fn compile(
        &self,
        settings: &serde_yaml::Value,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Arc<dyn Plugin>> {
        let c: StampConfig = decode(settings, path, errs)?;
        let header = match HeaderName::from_bytes(c.header.as_bytes()) {
            Ok(h) => h,
            Err(_) => {
                errs.push(
                    format!("{path}.header"),
                    format!("`{}` is not a header name", c.header),
                );
                return None;
            }
        };
        let value = match Template::parse(&c.value) {
            Ok(t) => t,
            Err(e) => {
                errs.push(format!("{path}.value"), e);
                return None;
            }
        };
        Some(Arc::new(Stamp { header, value }))
    }
}

#[async_trait]
impl Plugin for Stamp {
    fn name(&self) -> &'static str {
        "stamp"
    }

    fn phases(&self) -> Phases {
        Phases {
            response: true,
            ..Phases::default()
        }
    }

    fn response(&self, req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHead) {
        let v = self.value.render_to_vec(&ctx.facts(req));
        if safe_header_value(&v) {
            if let Ok(v) = HeaderValue::from_bytes(&v) {
                resp.headers.insert(self.header.clone(), v);
            }
        }
    }
}
