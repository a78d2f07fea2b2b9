//! Semantic checks of a parsed config, between loading (`config`) and compiling
//! (`runtime`): `validate` records every error with its path (process settings, listeners,
//! admin, identities and key providers, references between sections), `warnings` what
//! never refuses a config but an operator should know. `moat check`, `run` and reload all
//! go through `runtime::Runtime::compile`, which runs both.

pub mod plugins;
pub mod routes;
pub mod upstreams;
pub mod validate;
pub mod warnings;
