//! Authentication building blocks, compiled once per config generation and shared by the
//! `auth` plugins of every route:
//! - [`consumers`]: API keys by hash (scopes, expiry) and HMAC credentials by key id;
//! - [`provider`] / [`jwt`] / [`jwk`] / [`fetch`] / [`cache`]: JWT verification with keys
//!   from a JWKS URL (background refresh, on-demand refetch with cooldown), a JWKS file,
//!   a PEM key or an HS* secret, and the verified-token cache;
//! - [`hmac`] / [`signed`]: the Kong-compatible HMAC request-signing scheme and the
//!   request-path check (bounded signed bodies); [`replay`]: the replay guards (local, or
//!   shared through Redis);
//! - [`credentials`]: finding and hiding credentials; [`require`]: scopes and claims;
//! - [`tools`]: `moat keygen` and `moat sign`; [`dates`]: RFC 3339 and HTTP dates;
//! - `testkit`: key and token helpers for tests and benches (only under `cfg(test)` or
//!   the `testkit` feature).
//!
//! The request-side logic (which credential, `require`, identity, hiding credentials)
//! lives in `plugin::auth`.

pub(crate) mod cache;
pub mod consumers;
pub(crate) mod credentials;
pub mod dates;
pub(crate) mod fetch;
pub(crate) mod held_body;
pub mod hmac;
pub mod jwk;
pub mod jwt;
pub(crate) mod mac;
pub mod provider;
pub mod replay;
pub(crate) mod require;
pub(crate) mod signed;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tools;

#[cfg(test)]
mod proptests;

use crate::config::error::ConfigErrors;
use crate::config::model::Config;
use consumers::ConsumerStore;
use provider::JwtProvider;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The compiled `consumers:` and `jwt_providers:`, plus the replay guard.
pub struct AuthState {
    /// API keys and HMAC credentials.
    pub consumers: Arc<ConsumerStore>,
    /// JWT providers by name.
    pub providers: BTreeMap<String, Arc<JwtProvider>>,
    /// HMAC replay detection, shared by every route of the generation (this instance's
    /// own, or shared through Redis with `redis:`; see [`replay`]).
    pub replay: Arc<dyn replay::ReplayGuard>,
}

impl Default for AuthState {
    fn default() -> Self {
        AuthState {
            consumers: Arc::default(),
            providers: BTreeMap::new(),
            replay: Arc::new(replay::LocalReplay::new()),
        }
    }
}

impl AuthState {
    /// Compile consumers and providers, recording errors (validation has already checked
    /// the shapes; this loads keys and secrets). HMAC credentials take their replay memory
    /// from `local_replay` (the process's, carried across reloads).
    pub fn compile(
        cfg: &Config,
        local_replay: &replay::LocalReplay,
        errs: &mut ConfigErrors,
    ) -> AuthState {
        let consumers = Arc::new(ConsumerStore::compile(cfg, local_replay, errs));
        let providers = cfg
            .jwt_providers
            .iter()
            .filter_map(|(name, p)| {
                JwtProvider::compile(name, p, errs).map(|p| (name.clone(), Arc::new(p)))
            })
            .collect();
        AuthState {
            consumers,
            providers,
            ..AuthState::default()
        }
    }
}

/// Start the JWKS refresh loops of `state`'s `jwks_url` providers, and the sweeper of
/// `local_replay` (the process's replay memory: once per process), on the current tokio
/// runtime. Each loop holds a `Weak` reference and stops once what it serves is dropped;
/// call it once per compiled generation (at start and after each reload).
pub fn start_background(state: &AuthState, local_replay: &Arc<replay::LocalReplay>) {
    for p in state.providers.values() {
        provider::spawn_refresh(p);
    }
    local_replay.start_sweeper();
}
