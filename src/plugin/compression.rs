//! `compression`: gzip, brotli or zstd by the client's `Accept-Encoding`, for the content
//! types listed, never for `text/event-stream` (events must flow one by one), skipped for
//! bodies smaller than `min_size` and for responses already encoded.
//!
//! The encoding itself is Pingora's response-compression module; this plugin decides, per
//! response, whether and at which level it runs (see `proxy::apply_compression`).

use super::ResponseHead;
use super::{Phases, Plugin};
use crate::config::error::ConfigErrors;
use crate::config::model::CompressionConfig;
use crate::ctx::RequestCtx;
use async_trait::async_trait;
use pingora_core::protocols::http::compression::Algorithm;
use pingora_http::RequestHeader;

const DEFAULT_TYPES: &[&str] = &[
    "text/html",
    "text/plain",
    "text/css",
    "text/xml",
    "application/json",
    "application/javascript",
    "application/xml",
    "image/svg+xml",
];

/// The compiled plugin.
pub struct Compression {
    levels: std::sync::Arc<[(Algorithm, u32)]>,
    types: Vec<String>,
    min_size: u64,
}

impl Compression {
    /// Compile: the settings checked (`checks::plugins::compression`: every bad algorithm,
    /// level or type recorded under `path`), then built.
    pub fn compile(
        c: &CompressionConfig,
        path: &str,
        errs: &mut ConfigErrors,
    ) -> Option<Compression> {
        let before = errs.checkpoint();
        crate::checks::plugins::compression(c, path, errs);
        let level = c
            .level
            .unwrap_or(crate::checks::plugins::DEFAULT_COMPRESSION_LEVEL);
        let names: Vec<&str> = if c.algorithms.is_empty() {
            vec!["gzip", "br", "zstd"]
        } else {
            c.algorithms.iter().map(String::as_str).collect()
        };
        let levels: Vec<_> = names
            .into_iter()
            .filter_map(|a| match a {
                "gzip" => Some((Algorithm::Gzip, level)),
                "br" | "brotli" => Some((Algorithm::Brotli, level)),
                "zstd" => Some((Algorithm::Zstd, level)),
                // Refused by the check above.
                _ => None,
            })
            .collect();
        let types: Vec<String> = if c.content_types.is_empty() {
            DEFAULT_TYPES.iter().map(|t| t.to_string()).collect()
        } else {
            c.content_types
                .iter()
                .map(|t| t.trim().to_ascii_lowercase())
                .collect()
        };
        (errs.clean_since(before)).then(|| Compression {
            levels: levels.into(),
            types,
            min_size: c.min_size.map(|s| s.0).unwrap_or(1024),
        })
    }

    /// Whether this response should be compressed.
    pub fn wants(&self, resp: &ResponseHead) -> bool {
        if resp.headers.contains_key(http::header::CONTENT_ENCODING) {
            return false;
        }
        let ctype = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if ctype == "text/event-stream" {
            return false;
        }
        let type_ok = self.types.iter().any(|t| match t.strip_suffix("/*") {
            Some(major) => ctype.split('/').next() == Some(major),
            None => *t == ctype,
        });
        let length = resp
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        type_ok && length.is_none_or(|n| n >= self.min_size)
    }
}

#[async_trait]
impl Plugin for Compression {
    fn name(&self) -> &'static str {
        "compression"
    }

    fn phases(&self) -> Phases {
        Phases {
            response: true,
            response_compression: true,
            ..Phases::default()
        }
    }

    fn response(&self, _req: &RequestHeader, ctx: &RequestCtx, resp: &mut ResponseHead) {
        if self.wants(resp) {
            let _ = ctx
                .plugins
                .compression
                .set(std::sync::Arc::clone(&self.levels));
        }
    }
}

impl super::CompilePlugin for crate::config::model::CompressionConfig {
    fn compile_plugin(
        &self,
        here: &str,
        _env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        Compression::compile(self, here, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(yaml: &str) -> Compression {
        let c: CompressionConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errs = ConfigErrors::default();
        Compression::compile(&c, "p", &mut errs).unwrap_or_else(|| panic!("{errs}"))
    }

    fn resp(ctype: &str, len: Option<usize>, encoded: bool) -> ResponseHead {
        let mut r = pingora_http::ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", ctype).unwrap();
        if let Some(n) = len {
            r.insert_header("content-length", n.to_string()).unwrap();
        }
        if encoded {
            r.insert_header("content-encoding", "gzip").unwrap();
        }
        r.into()
    }

    #[test]
    fn decisions() {
        let p = plugin("content_types: [text/*, application/json]\nmin_size: 100\n");
        assert!(p.wants(&resp("text/html; charset=utf-8", Some(5000), false)));
        assert!(p.wants(&resp("application/json", None, false)));
        assert!(
            !p.wants(&resp("text/event-stream", None, false)),
            "never SSE"
        );
        assert!(!p.wants(&resp("text/plain", Some(99), false)), "tiny");
        assert!(
            !p.wants(&resp("text/plain", Some(5000), true)),
            "already encoded"
        );
        assert!(!p.wants(&resp("image/png", Some(5000), false)));
    }

    #[test]
    fn bad_configs() {
        let c: CompressionConfig = serde_yaml::from_str(
            "algorithms: [gzip, lzma]\nlevel: 12\ncontent_types: [text/event-stream, html]\n",
        )
        .unwrap();
        let mut errs = ConfigErrors::default();
        assert!(Compression::compile(&c, "p", &mut errs).is_none());
        assert_eq!(errs.0.len(), 4, "{errs}");
    }
}
