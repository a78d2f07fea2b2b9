//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `/status`, `/config`,
//! `/openapi.json` and `POST /reload`. It runs as its own Pingora service on its own
//! address, never on the public listeners. Every endpoint but `/healthz` checks the live
//! generation's access rules ([`Access`](crate::runtime::admin_access::Access), compiled
//! with the runtime): the `Host` header (DNS rebinding), then the Bearer token when
//! `admin.token_env` or `admin.token_file` is set; `POST` also needs
//! `Content-Type: application/json`.

use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::reload::{Reloaded, Reloader};
use crate::reply::{error_body, ErrorCode};
use crate::runtime::admin_access as access;
use crate::runtime::{Action, SharedRuntime};
use crate::util::http::request_host;
use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// The admin app.
pub struct Admin {
    runtime: SharedRuntime,
    metrics: Arc<Metrics>,
    listeners: Vec<SocketAddr>,
    reloader: Option<Arc<Reloader>>,
    drain: Arc<Drain>,
}

/// The admin API's OpenAPI document (kept in the repository as `docs/admin-openapi.json`).
pub const OPENAPI: &str = include_str!("../docs/admin-openapi.json");

impl Admin {
    /// Build the app; its access rules are those of the live runtime generation.
    pub fn new(
        runtime: SharedRuntime,
        metrics: Arc<Metrics>,
        listeners: Vec<SocketAddr>,
        reloader: Option<Arc<Reloader>>,
        drain: Arc<Drain>,
    ) -> Admin {
        Admin {
            runtime,
            metrics,
            listeners,
            reloader,
            drain,
        }
    }

    async fn reload(&self) -> Response<Vec<u8>> {
        let Some(r) = &self.reloader else {
            return error(ErrorCode::NotFound, "reload is not available");
        };
        match r.reload().await {
            Ok(outcome) => json_reply(
                200,
                &json!({
                    "generation": outcome.generation(),
                    "changed": matches!(outcome, Reloaded::Swapped(_)),
                }),
            ),
            Err(errs) => {
                let details: Vec<Value> = errs
                    .0
                    .iter()
                    .map(|e| json!({"path": e.path, "message": e.message}))
                    .collect();
                let id = crate::util::id::ulid();
                json_reply(
                    400,
                    &json!({"error": {
                        "code": ErrorCode::BadRequest.as_str(),
                        "message": "config rejected; the running config stays live",
                        "request_id": id,
                        "timestamp": crate::util::time::rfc3339_now(),
                        "details": details,
                    }}),
                )
            }
        }
    }

    /// Ready when not draining and every public listener accepts a connection.
    async fn ready(&self) -> bool {
        if self.drain.is_draining() {
            return false;
        }
        for a in &self.listeners {
            let mut a = *a;
            if a.ip().is_unspecified() {
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            let connect = tokio::time::timeout(Duration::from_millis(250), TcpStream::connect(a));
            if !matches!(connect.await, Ok(Ok(_))) {
                return false;
            }
        }
        true
    }

    fn status(&self) -> Value {
        let rt = self.runtime.load();
        let routes: Vec<Value> = rt
            .routes
            .iter()
            .map(|r| {
                let action = match &r.action {
                    Action::Upstream(p) => json!({"upstream": &*p.name}),
                    Action::Respond(x) => json!({"respond": x.status}),
                    Action::Redirect(x) => json!({"redirect": x.status}),
                };
                json!({"name": &*r.name, "action": action})
            })
            .collect();
        let upstreams: serde_json::Map<String, Value> = rt
            .pools
            .iter()
            .map(|(name, p)| {
                let targets: Vec<Value> = p
                    .targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        json!({
                            "address": t.label,
                            "weight": t.weight,
                            "healthy": p.target_healthy(i),
                            "ejected": p.target_ejected(i),
                            "in_flight": t.inflight(),
                        })
                    })
                    .collect();
                (name.clone(), json!({"targets": targets}))
            })
            .collect();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "generation": rt.generation,
            "loaded_at": crate::util::time::rfc3339(rt.loaded_at, false),
            "routes": routes,
            "upstreams": upstreams,
        })
    }
}

/// The effective config as JSON with its secrets redacted: key hashes (`sha256`), the
/// password of any URL that holds one (`redis.url`, `redis.cluster`, a `jwks_url`...), and
/// the values of keys named like a secret (`password`, `secret`, `token`, `*_password`...)
/// in a custom plugin's settings. Built-in settings hold no other secret: they name
/// environment variables and files.
pub fn redacted_config(cfg: &crate::config::Config) -> Value {
    const REDACTED: &str = "<redacted>";
    fn secret_key(k: &str) -> bool {
        let k = k.to_ascii_lowercase();
        ["password", "secret", "token", "sha256", "api_key"]
            .iter()
            .any(|s| k == *s || k.ends_with(&format!("_{s}")))
    }
    fn redact(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if secret_key(k) && !v.is_object() && !v.is_array() {
                        *v = Value::String(REDACTED.into());
                    } else {
                        redact(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(redact),
            Value::String(s) => {
                if let Some(r) = crate::checks::warnings::redact_url_password(s, REDACTED) {
                    *s = r;
                }
            }
            _ => {}
        }
    }
    let mut v = serde_json::to_value(cfg).unwrap_or(Value::Null);
    redact(&mut v);
    v
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

fn json_reply(status: u16, v: &Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

fn error(code: ErrorCode, msg: &str) -> Response<Vec<u8>> {
    let id = crate::util::id::ulid();
    let r = respond(
        code.status(),
        "application/json",
        error_body(code, msg, &id).into_bytes(),
    );
    if code == ErrorCode::Unauthorized {
        let (mut parts, body) = r.into_parts();
        parts.headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return Response::from_parts(parts, body);
    }
    r
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        // HTTP/1.0 closes after the response unless it asked for keep-alive (Pingora's
        // server app keeps every connection open): a probe reading to the end returns.
        let req = s.req_header();
        if req.version == http::Version::HTTP_10
            && !req
                .headers
                .get(http::header::CONNECTION)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("keep-alive"))
                })
        {
            s.set_keepalive(None);
        }
        let req = s.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        if path != "/healthz" {
            let rt = self.runtime.load();
            if !rt.admin.host_allowed(request_host(req)) {
                return error(
                    ErrorCode::Forbidden,
                    "this Host does not name the admin listener: use a loopback address or \
                     list it in admin.allowed_hosts",
                );
            }
            if !rt
                .admin
                .authorized(req.headers.get(http::header::AUTHORIZATION))
            {
                return error(ErrorCode::Unauthorized, "admin token required");
            }
        }
        if path == "/reload" {
            if method == http::Method::POST {
                if !access::is_json(req.headers.get(http::header::CONTENT_TYPE)) {
                    return error(
                        ErrorCode::UnsupportedMediaType,
                        "POST needs Content-Type: application/json (cross-site requests \
                         are refused)",
                    );
                }
                return self.reload().await;
            }
            let (mut parts, body) =
                error(ErrorCode::MethodNotAllowed, "use POST /reload").into_parts();
            parts
                .headers
                .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
            return Response::from_parts(parts, body);
        }
        if method != http::Method::GET && method != http::Method::HEAD {
            let (mut parts, body) =
                error(ErrorCode::MethodNotAllowed, "admin endpoints answer GET").into_parts();
            parts.headers.insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, HEAD"),
            );
            return Response::from_parts(parts, body);
        }
        match path.as_str() {
            "/healthz" => json_reply(200, &json!({"status": "ok"})),
            "/readyz" => {
                if self.ready().await {
                    json_reply(200, &json!({"status": "ready"}))
                } else {
                    json_reply(503, &json!({"status": "not ready"}))
                }
            }
            "/metrics" => respond(200, "text/plain; version=0.0.4", self.metrics.render()),
            "/status" => json_reply(200, &self.status()),
            "/config" => json_reply(200, &redacted_config(&self.runtime.load().config)),
            "/openapi.json" => respond(200, "application/json", OPENAPI.as_bytes().to_vec()),
            _ => error(ErrorCode::NotFound, "unknown admin endpoint"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let cfg = crate::config::load::parse(
            "consumers:\n  - id: a\n    api_keys:\n      - sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
        )
        .unwrap();
        let v = redacted_config(&cfg);
        assert_eq!(v["consumers"][0]["api_keys"][0]["sha256"], "<redacted>");
        assert!(!v.to_string().contains("9f86d08"));
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        let cfg = crate::config::load::parse(concat!(
            "redis:\n",
            "  url: redis://moat:s3cret-1@cache.internal:6379/0\n",
            "jwt_providers:\n",
            "  idp: { issuer: i, audiences: [a], jwks_url: \"https://u:s3cret-2@idp/keys\" }\n",
        ))
        .unwrap();
        let v = redacted_config(&cfg);
        assert_eq!(
            v["redis"]["url"],
            "redis://moat:<redacted>@cache.internal:6379/0"
        );
        assert_eq!(
            v["jwt_providers"]["idp"]["jwks_url"],
            "https://u:<redacted>@idp/keys"
        );
        let cfg = crate::config::load::parse(
            "redis: { cluster: [\"redis://:s3cret-3@h:7000\", \"redis://h:7001\"] }\n",
        )
        .unwrap();
        let v = redacted_config(&cfg);
        assert_eq!(v["redis"]["cluster"][0], "redis://:<redacted>@h:7000");
        assert_eq!(v["redis"]["cluster"][1], "redis://h:7001");
        assert!(!v.to_string().contains("s3cret"), "{v}");
    }
}
