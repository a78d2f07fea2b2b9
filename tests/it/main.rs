//! Integration tests: the `moat` binary against real HTTP servers, all on 127.0.0.1 with
//! ephemeral ports. One test binary (faster to build and link than one per file).

mod harness;

mod admin;
mod admin_access;
mod auth;
mod check;
mod compose;
mod compression;
mod conf_files;
mod conn_limits;
mod drain;
mod edge_headers;
mod forwarding;
mod framing;
mod http2;
mod log_secrets;
mod memory;
mod plugin_heads;
mod quickstart;
mod ratelimit;
mod reload;
mod request_id;
mod request_limits;
mod routing;
mod slowloris;
mod startup;
mod streaming;
mod templates;
mod tls;
mod upgrade;
mod upstream_tls;
mod upstreams;
mod websocket;
