//! Who a request was authenticated as. Set by authentication; read by templates,
//! limits and logs through the request context.

use http::HeaderValue;
use std::sync::Arc;

/// A verified identity.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The consumer id (`consumers[].id`, or the JWT's `consumer_claim`).
    pub consumer_id: Arc<str>,
    /// `consumer_id` as the `X-Consumer-ID` value sent upstream, built when the credential
    /// was verified (an id that cannot be one is refused then, never sent without it).
    pub consumer_header: HeaderValue,
    /// The consumer's tier, selecting tiered limits.
    pub tier: Option<Arc<str>>,
    /// How the request authenticated: `jwt`, `api_key` or `hmac`.
    pub method: &'static str,
    /// Verified JWT claims, when the credential was a JWT.
    pub claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
}
