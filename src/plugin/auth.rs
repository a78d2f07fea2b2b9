//! `auth`: authenticate the request with the credential it carries (JWT, API key or HMAC
//! signature, among the route's `methods`), authorize it with `require`, and record the
//! verified identity in the context.
//!
//! - Exactly one credential must be present: none → 401, two (or one repeated) → 401.
//! - 401 `UNAUTHORIZED` carries `WWW-Authenticate` (`Bearer error="invalid_token"` for a
//!   refused JWT); 403 `FORBIDDEN` when authenticated but `require` fails; 503 when a JWT
//!   provider has no key set yet (fail closed), when an HMAC credential's replay memory
//!   is full, or when Redis cannot check a replay and `replay_on_redis_error` is `deny`;
//!   413 when a signed body exceeds `max_body`.
//! - Messages, logs and metrics carry a short category only, never the credential.
//! - Upstream gets `X-Consumer-ID` (built when the credential is verified: an identity
//!   that cannot be one is refused, never forwarded without it) and `X-Auth-Method`; with
//!   `hide_credentials` (the default) the credential (header, query parameter or cookie)
//!   is removed first.
//!
//! HMAC requests are checked by `auth::signed`: a small signed body is read and checked
//! before anything reaches the upstream; a longer or chunked one is held back
//! (`auth::held_body`, up to `max_body`) and released only once its digest matches.

use super::{Flow, Phases, Plugin, UpstreamHead};
use crate::auth::consumers::{ConsumerStore, KeyRefusal};
use crate::auth::credentials::{self, Found};
use crate::auth::dates::now_secs;
use crate::auth::held_body::HeldBody;
use crate::auth::hmac;
use crate::auth::jwt::JwtError;
use crate::auth::provider::JwtProvider;
use crate::auth::replay::ReplayGuard;
use crate::auth::require::Require;
use crate::auth::signed;
use crate::config::error::{join, ConfigErrors};
use crate::config::model::{AuthConfig, AuthMethod, ConsumerMap};
use crate::ctx::RequestCtx;
use crate::identity::Identity;
use crate::reply::{ErrorCode, Reply};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use prometheus::IntCounterVec;
use std::borrow::Cow;
use std::sync::Arc;

static X_CONSUMER_ID: HeaderName = HeaderName::from_static("x-consumer-id");
static X_AUTH_METHOD: HeaderName = HeaderName::from_static("x-auth-method");

struct JwtSettings {
    provider: Arc<JwtProvider>,
    header: bool,
    query: Vec<String>,
    cookies: Vec<String>,
}

/// What a credential resolved to.
struct Authenticated {
    consumer: Arc<str>,
    /// `consumer` as the X-Consumer-ID value.
    header: HeaderValue,
    tier: Option<Arc<str>>,
    method: &'static str,
    scopes: Arc<[String]>,
    claims: Option<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// The `Digest` a held-back signed body must still match.
    held_digest: Option<String>,
}

/// A refusal: reply plus the metric labels.
struct Refusal {
    method: &'static str,
    reason: &'static str,
    reply: Reply,
}

/// The compiled plugin.
pub struct Auth {
    jwt: Option<JwtSettings>,
    api_key: Option<(HeaderName, Option<String>)>,
    hmac: Option<signed::HmacSettings>,
    /// `WWW-Authenticate` for hmac: the headers to sign.
    hmac_challenge: HeaderValue,
    require: Require,
    /// Where credentials travel, when `hide_credentials` removes them upstream.
    hide: Option<credentials::Carriers>,
    consumers: Arc<ConsumerStore>,
    replay: Arc<dyn ReplayGuard>,
    failures: IntCounterVec,
}

/// Where a `jwt` method finds tokens (its `token_from`, checked), with its provider.
/// `None` for an unknown provider (the plugin references pass reports it).
fn jwt_settings(
    j: &crate::config::model::JwtAuthConfig,
    env: &super::CompileEnv,
) -> Option<JwtSettings> {
    use crate::checks::plugins::TokenSource;
    let (mut header, mut query, mut cookies) = (j.token_from.is_empty(), Vec::new(), Vec::new());
    for s in &j.token_from {
        match crate::checks::plugins::token_source(s) {
            Some(TokenSource::Header) => header = true,
            Some(TokenSource::Query(n)) => query.push(n.to_string()),
            Some(TokenSource::Cookie(n)) => cookies.push(n.to_string()),
            None => {}
        }
    }
    env.auth.providers.get(&j.provider).map(|p| JwtSettings {
        provider: Arc::clone(p),
        header,
        query,
        cookies,
    })
}

impl Auth {
    /// Compile against the generation's consumers and providers: the settings checked
    /// (`checks::plugins::auth`), then built.
    pub fn compile(
        c: &AuthConfig,
        path: &str,
        env: &super::CompileEnv,
        errs: &mut ConfigErrors,
    ) -> Option<Auth> {
        let before = errs.checkpoint();
        crate::checks::plugins::auth(c, path, errs);
        let has = |m| c.methods.contains(&m);
        let jwt = c
            .jwt
            .as_ref()
            .filter(|_| has(AuthMethod::Jwt))
            .and_then(|j| jwt_settings(j, env));
        let api_key = has(AuthMethod::ApiKey)
            .then(|| {
                let cfg = c.api_key.as_ref();
                let h = crate::checks::plugins::api_key_header(c)?;
                Some((
                    h,
                    cfg.and_then(|a| a.query.clone()).filter(|q| !q.is_empty()),
                ))
            })
            .flatten();
        let hmac = has(AuthMethod::Hmac)
            .then(|| signed::HmacSettings::compile(c.hmac.as_ref(), &join(path, "hmac"), errs));
        let hide = c.hide_credentials.then(|| credentials::Carriers {
            header: api_key.as_ref().map(|(h, _)| h.clone()),
            params: api_key
                .as_ref()
                .and_then(|(_, q)| q.clone())
                .into_iter()
                .chain(jwt.iter().flat_map(|j| j.query.iter().cloned()))
                .collect(),
            cookies: jwt.iter().flat_map(|j| j.cookies.iter().cloned()).collect(),
        });
        let req = c.require.clone().unwrap_or_default();
        let hmac_challenge = signed::challenge(hmac.as_ref().map_or(&[][..], |h| &h.enforce));
        (errs.clean_since(before)).then(|| Auth {
            jwt,
            api_key,
            hmac,
            hmac_challenge,
            require: Require::new(&req),
            hide,
            consumers: Arc::clone(&env.auth.consumers),
            replay: Arc::clone(&env.auth.replay),
            failures: env.metrics.auth_failures.clone(),
        })
    }

    fn challenges(&self) -> Vec<HeaderValue> {
        let mut c = Vec::new();
        if self.jwt.is_some() {
            c.push(HeaderValue::from_static("Bearer realm=\"moat\""));
        }
        if self.api_key.is_some() {
            c.push(APIKEY.clone());
        }
        if self.hmac.is_some() {
            c.push(self.hmac_challenge.clone());
        }
        c
    }

    fn unauthorized(
        &self,
        method: &'static str,
        reason: &'static str,
        msg: &str,
        challenge: Option<HeaderValue>,
    ) -> Refusal {
        let mut reply = Reply::error(ErrorCode::Unauthorized, msg);
        let list = match challenge {
            Some(c) => vec![c],
            None => self.challenges(),
        };
        for c in list {
            reply = reply.with_header(http::header::WWW_AUTHENTICATE, c);
        }
        Refusal {
            method,
            reason,
            reply,
        }
    }

    /// Which credential the request carries; refuses none or several. Header credentials
    /// are borrowed from `req`.
    fn pick<'r>(&self, req: &'r RequestHeader) -> Result<Cred<'r>, Refusal> {
        let mut found: Vec<Cred<'r>> = Vec::new();
        let mut many = false;
        fn add<'r, T: Into<Cow<'r, str>>>(
            found: &mut Vec<Cred<'r>>,
            many: &mut bool,
            f: Found<T>,
            make: fn(Cow<'r, str>) -> Cred<'r>,
        ) {
            match f {
                Found::None => {}
                Found::One(v) => found.push(make(v.into())),
                Found::Many => *many = true,
            }
        }
        match credentials::header(req, http::header::AUTHORIZATION) {
            Found::One(v) => {
                let (scheme, _) = credentials::scheme(&v);
                if scheme.eq_ignore_ascii_case("bearer")
                    && self.jwt.as_ref().is_some_and(|j| j.header)
                {
                    found.push(Cred::Jwt(after_scheme(v)));
                } else if scheme.eq_ignore_ascii_case("apikey") && self.api_key.is_some() {
                    found.push(Cred::ApiKey(after_scheme(v)));
                } else if hmac::is_hmac_scheme(&v) && self.hmac.is_some() {
                    found.push(Cred::Hmac(v));
                }
            }
            Found::Many => many = true,
            Found::None => {}
        }
        if let Some((h, q)) = &self.api_key {
            add(
                &mut found,
                &mut many,
                credentials::header(req, h),
                Cred::ApiKey,
            );
            if let Some(q) = q {
                add(
                    &mut found,
                    &mut many,
                    credentials::query_param(req, q),
                    Cred::ApiKey,
                );
            }
        }
        if let Some(j) = &self.jwt {
            for q in &j.query {
                add(
                    &mut found,
                    &mut many,
                    credentials::query_param(req, q),
                    Cred::Jwt,
                );
            }
            for c in &j.cookies {
                add(
                    &mut found,
                    &mut many,
                    credentials::cookie(req, c),
                    Cred::Jwt,
                );
            }
        }
        if many || found.len() > 1 {
            return Err(self.unauthorized(
                "none",
                "ambiguous",
                "more than one credential in the request",
                None,
            ));
        }
        found
            .pop()
            .ok_or_else(|| self.unauthorized("none", "missing", "credentials are required", None))
    }

    /// Check a JWT or API key (borrowed from the request head).
    async fn authenticate(&self, cred: Cred<'_>) -> Result<Authenticated, Refusal> {
        let now = now_secs();
        match cred {
            Cred::Jwt(token) => self.authenticate_jwt(&token, now).await,
            Cred::ApiKey(key) => self.authenticate_api_key(&key, now),
            Cred::Hmac(_) => {
                Err(self.unauthorized("hmac", "missing", "credentials are required", None))
            }
        }
    }

    /// Check a JWT with the route's provider, and find its consumer.
    async fn authenticate_jwt(&self, token: &str, now: i64) -> Result<Authenticated, Refusal> {
        let Some(j) = &self.jwt else {
            return Err(self.unauthorized("jwt", "missing", "credentials are required", None));
        };
        match j.provider.verify(token, now).await {
            Ok(v) => {
                let refuse = |reason| {
                    self.unauthorized("jwt", reason, "invalid token", Some(BEARER_INVALID.clone()))
                };
                // `PROVIDER:VALUE`, a consumer of the provider's own; with
                // `consumer_map: consumers`, the configured consumer it names, if
                // that consumer lists the provider in its `jwt_providers`.
                let (consumer, header, tier) = match j.provider.consumer_map {
                    ConsumerMap::Namespaced => match &v.subject_header {
                        Some(h) => (Arc::clone(&v.subject), h.clone(), None),
                        None => return Err(refuse("claims")),
                    },
                    ConsumerMap::Consumers => {
                        match self.consumers.jwt_consumer(&j.provider.name, &v.subject) {
                            Some(c) => (Arc::clone(&c.id), c.header.clone(), c.tier.clone()),
                            None => return Err(refuse("unknown_consumer")),
                        }
                    }
                };
                Ok(Authenticated {
                    consumer,
                    header,
                    tier,
                    method: "jwt",
                    scopes: Arc::clone(&v.scopes),
                    claims: Some(Arc::clone(&v.claims)),
                    held_digest: None,
                })
            }
            Err(JwtError::NoKeys) => Err(Refusal {
                method: "jwt",
                reason: JwtError::NoKeys.reason(),
                reply: Reply::error(
                    ErrorCode::ServiceUnavailable,
                    "token verification keys are not available",
                ),
            }),
            Err(e) => {
                let msg = if e == JwtError::Expired {
                    "token expired"
                } else {
                    "invalid token"
                };
                Err(self.unauthorized("jwt", e.reason(), msg, Some(BEARER_INVALID.clone())))
            }
        }
    }

    /// Check an API key against the consumers' key hashes.
    fn authenticate_api_key(&self, key: &str, now: i64) -> Result<Authenticated, Refusal> {
        if key.is_empty() {
            return Err(self.unauthorized(
                "api_key",
                "malformed",
                "invalid API key",
                Some(APIKEY.clone()),
            ));
        }
        match self.consumers.api_key(key, now) {
            Ok(k) => Ok(Authenticated {
                consumer: Arc::clone(&k.consumer.id),
                header: k.consumer.header.clone(),
                tier: k.consumer.tier.clone(),
                method: "api_key",
                scopes: Arc::clone(&k.scopes),
                claims: None,
                held_digest: None,
            }),
            Err(KeyRefusal::Expired) => Err(self.unauthorized(
                "api_key",
                "expired",
                "API key expired",
                Some(APIKEY.clone()),
            )),
            Err(KeyRefusal::Unknown) => Err(self.unauthorized(
                "api_key",
                "unknown_key",
                "invalid API key",
                Some(APIKEY.clone()),
            )),
        }
    }

    /// Check an HMAC signature (it may read the request body, hence the session).
    async fn authenticate_hmac(
        &self,
        session: &mut Session,
        value: &str,
    ) -> Result<Authenticated, Refusal> {
        let now = now_secs();
        let Some(settings) = &self.hmac else {
            return Err(self.unauthorized("hmac", "missing", "credentials are required", None));
        };
        let replay = self.replay.as_ref();
        match signed::verify(session, value, settings, &self.consumers, replay, now).await {
            Ok(v) => Ok(Authenticated {
                consumer: Arc::clone(&v.consumer.id),
                header: v.consumer.header.clone(),
                tier: v.consumer.tier.clone(),
                method: "hmac",
                scopes: Arc::from(Vec::new()),
                claims: None,
                held_digest: v.held_digest,
            }),
            Err(signed::Refused::Body(reply)) => Err(Refusal {
                method: "hmac",
                reason: "body",
                reply,
            }),
            Err(signed::Refused::Full { retry_after }) => Err(Refusal {
                method: "hmac",
                reason: "replay_capacity",
                reply: Reply::error(
                    ErrorCode::ServiceUnavailable,
                    "too many signed requests from this consumer within the replay window",
                )
                .with_header(http::header::RETRY_AFTER, HeaderValue::from(retry_after)),
            }),
            Err(signed::Refused::ReplayUnavailable) => Err(Refusal {
                method: "hmac",
                reason: "replay_unavailable",
                reply: Reply::error(
                    ErrorCode::ServiceUnavailable,
                    "signed requests cannot be checked for replays right now",
                )
                .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
            }),
            Err(signed::Refused::Signature(e)) => Err(self.unauthorized(
                "hmac",
                e.reason(),
                "invalid request signature",
                Some(self.hmac_challenge.clone()),
            )),
        }
    }
}

static BEARER_INVALID: HeaderValue = HeaderValue::from_static("Bearer error=\"invalid_token\"");
static APIKEY: HeaderValue = HeaderValue::from_static("ApiKey realm=\"moat\"");

/// A credential found in the request, borrowed from its head when it can be.
enum Cred<'r> {
    Jwt(Cow<'r, str>),
    ApiKey(Cow<'r, str>),
    /// The whole `Authorization` value.
    Hmac(Cow<'r, str>),
}

/// What follows the scheme of an `Authorization` value (see [`credentials::scheme`]),
/// still borrowed when `v` is.
fn after_scheme(v: Cow<'_, str>) -> Cow<'_, str> {
    match v {
        Cow::Borrowed(b) => Cow::Borrowed(credentials::scheme(b).1),
        Cow::Owned(o) => Cow::Owned(credentials::scheme(&o).1.to_string()),
    }
}

#[async_trait]
impl Plugin for Auth {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn phases(&self) -> Phases {
        Phases {
            request: true,
            // A signed body is held back until its digest is checked (HMAC only).
            request_body: self.hmac.is_some(),
            upstream_request: true,
            ..Phases::default()
        }
    }

    async fn request(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let result = match self.pick(session.req_header()) {
            Ok(Cred::Hmac(v)) => {
                let v = v.into_owned();
                self.authenticate_hmac(session, &v).await
            }
            Ok(cred) => self.authenticate(cred).await,
            Err(r) => Err(r),
        };
        let refusal = match result {
            Ok(who) if self.require.allows(&who.scopes, who.claims.as_deref()) => {
                if let Some(d) = who.held_digest {
                    let refusal = self.unauthorized(
                        "hmac",
                        "digest",
                        "invalid request signature",
                        Some(self.hmac_challenge.clone()),
                    );
                    let failures =
                        self.failures
                            .with_label_values(&[ctx.route_name(), "hmac", "digest"]);
                    ctx.plugins.held_body =
                        Some(Box::new(HeldBody::new(d, refusal.reply, failures)));
                }
                ctx.identity = Some(Identity {
                    consumer_id: who.consumer,
                    consumer_header: who.header,
                    tier: who.tier,
                    method: who.method,
                    claims: who.claims,
                });
                return Flow::Continue;
            }
            Ok(who) => {
                let mut reply =
                    Reply::error(ErrorCode::Forbidden, "not allowed: missing scope or claim");
                if who.method == "jwt" {
                    reply = reply.with_header(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer error=\"insufficient_scope\""),
                    );
                }
                Refusal {
                    method: who.method,
                    reason: "forbidden",
                    reply,
                }
            }
            Err(r) => r,
        };
        self.failures
            .with_label_values(&[ctx.route_name(), refusal.method, refusal.reason])
            .inc();
        Flow::Reply(refusal.reply)
    }

    fn request_body(
        &self,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut RequestCtx,
    ) -> Result<(), Reply> {
        match ctx.plugins.held_body.as_mut() {
            Some(held) => held.filter(body, end),
            None => Ok(()),
        }
    }

    fn upstream_request(&self, _req: &RequestHeader, ctx: &RequestCtx, up: &mut UpstreamHead) {
        if let Some(c) = &self.hide {
            c.hide(up);
        }
        if let Some(id) = &ctx.identity {
            up.headers
                .insert(X_CONSUMER_ID.clone(), id.consumer_header.clone());
            up.headers
                .insert(X_AUTH_METHOD.clone(), HeaderValue::from_static(id.method));
        }
    }
}

impl super::CompilePlugin for crate::config::model::AuthConfig {
    fn compile_plugin(
        &self,
        here: &str,
        env: &super::CompileEnv,
        errs: &mut crate::config::error::ConfigErrors,
    ) -> Option<std::sync::Arc<dyn Plugin>> {
        Auth::compile(self, here, env, errs).map(|p| std::sync::Arc::new(p) as _)
    }
}
