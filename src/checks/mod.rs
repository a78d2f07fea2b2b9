//! The rules of a parsed config, between loading (`config`) and compiling (`runtime`):
//! `validate` runs the named passes ([`validate::PASSES`]: process settings, listeners,
//! admin, access log, `upstreams`, identities and key providers, plugin references,
//! `routes`), each recording every error with its path; `plugins` holds the plugin-settings
//! rules each plugin's `compile` runs first; `warnings` what never refuses a config but an
//! operator should know. `moat check`, `run` and reload all go through
//! `runtime::Runtime::compile`, which runs the passes, then the compile steps (which only
//! build), then the warnings.

pub mod plugins;
pub mod routes;
pub mod upstreams;
pub mod validate;
pub mod warnings;

/// True when `value` cannot be sent as a literal header value (bytes a header may not hold,
/// or control characters).
fn bad_header_value(value: &str) -> bool {
    http::HeaderValue::from_str(value).is_err()
        || !crate::util::http::safe_header_value(value.as_bytes())
}
