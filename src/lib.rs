//! moat: a programmable edge proxy on Cloudflare's Pingora.
//!
//! Start with `docs/architecture.md`: each Pingora phase and the file that serves it, the
//! config pipeline (file → checks → compile → swap), the module layering (no import cycle
//! between the modules below: `scripts/check-imports.sh`) and where new code goes.
//!
//! The shape: config file → [`config`] (parse, every error with its path) →
//! [`runtime::Runtime`] (compiled, immutable, held in an `ArcSwap`) → `proxy::Moat` (the
//! one `ProxyHttp` implementation, walking the compiled chain). Plugins implement
//! [`plugin::Plugin`]; custom ones can be built into a custom binary (see `plugins/`).
#![forbid(unsafe_code)]

pub mod access_log;
pub(crate) mod admin;
pub mod auth;
pub(crate) mod bind_check;
pub(crate) mod checks;
pub mod cli;
pub mod config;
pub mod conn;
pub mod ctx;
pub mod drain;
pub mod identity;
pub(crate) mod metrics;
pub(crate) mod net;
pub mod plugin;
pub(crate) mod proxy;
pub mod ratelimit;
pub mod redis;
pub(crate) mod reload;
pub mod reply;
pub mod router;
pub mod runtime;
pub(crate) mod server;
pub(crate) mod signals;
pub mod template;
pub(crate) mod tls;
pub mod upstream;
pub mod util;
