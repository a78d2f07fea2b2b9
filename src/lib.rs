//! moat: a programmable edge proxy on Cloudflare's Pingora.
//!
//! The shape: config file → [`config`] (parse, every error with its path) →
//! [`runtime::Runtime`] (compiled, immutable, held in an `ArcSwap`) → [`proxy::Moat`] (the
//! one `ProxyHttp` implementation, walking the compiled chain). Plugins implement
//! [`plugin::Plugin`]; custom ones can be built into a custom binary (see `plugins/`).
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod auth;
pub mod bind_check;
pub mod cli;
pub mod config;
pub mod conn_limit;
pub mod ctx;
pub mod drain;
pub mod identity;
pub mod limit;
pub mod metrics;
pub mod net;
pub mod plugin;
pub mod proxy;
pub mod redis;
pub mod reload;
pub mod reply;
pub mod router;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod slowloris;
pub mod template;
pub mod tls;
pub mod upstream;
pub mod util;
