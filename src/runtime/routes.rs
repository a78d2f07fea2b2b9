//! Compiling `routes:` and `global_plugins:` into the router, route objects and plugin
//! chains, recording every error with its path. The rules of `routes:` are the routes
//! pass's (`checks::routes`), which runs before; this module parses templates and
//! regexes and builds.

use super::{Action, Redirect, Respond, RespondHeader, RespondValue, Rewrite, Route};
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Config, RespondConfig, RouteConfig};
use crate::metrics::{Metrics, RouteRequests};
use crate::plugin::{self, Chain, Plugin};
use crate::router::{PathMatch, RouteSpec, Router};
use crate::template::{Context, Template};
use crate::upstream::Pool;
use crate::util::http::safe_header_value;
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Compile the route table. Returns what could be built; errors are in `errs`.
pub(super) fn compile(
    cfg: &Config,
    pools: &BTreeMap<String, Arc<Pool>>,
    metrics: &Metrics,
    env: &plugin::CompileEnv,
    errs: &mut ConfigErrors,
) -> (Router, Vec<Arc<Route>>, Chain) {
    let globals: Vec<Arc<dyn Plugin>> = cfg
        .global_plugins
        .iter()
        .enumerate()
        .filter_map(|(i, p)| plugin::compile(p, &index("global_plugins", i), env, errs))
        .collect();
    let mut specs = Vec::new();
    let mut routes = Vec::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = index("routes", i);
        let spec = match_spec(r, &path, errs);
        let action = action(r, &path, pools, errs);
        let mut plugins = globals.clone();
        plugins.extend(r.plugins.iter().enumerate().filter_map(|(j, p)| {
            plugin::compile(p, &index(&join(&path, "plugins"), j), env, errs)
        }));
        let rewrite = r.rewrite.as_ref().map(|rw| Rewrite {
            strip_prefix: rw.strip_prefix.clone(),
            add_prefix: rw.add_prefix.clone(),
        });
        if let (Some(spec), Some(action)) = (spec, action) {
            specs.push(spec);
            let name: Arc<str> = Arc::from(r.name.as_str());
            routes.push(Arc::new(Route {
                requests: RouteRequests::new(&metrics.requests, Arc::clone(&name)),
                name,
                action,
                rewrite,
                max_body: r.max_body.map(|s| s.0),
                chain: Chain::new(&plugins),
                duration: metrics
                    .request_duration
                    .with_label_values(&[r.name.as_str()]),
            }));
        }
    }
    (Router::new(specs), routes, Chain::new(&globals))
}

/// The route's match conditions (the routes pass checked them; a `path_regex` is parsed
/// here). `None` when anything under `match` is wrong.
fn match_spec(r: &RouteConfig, path: &str, errs: &mut ConfigErrors) -> Option<RouteSpec> {
    let here = join(path, "match");
    let m = &r.matcher;
    // With `path` or `path_prefix` also given, the pass refused the match: no regex.
    let only_regex = m.path.is_none() && m.path_prefix.is_none();
    let regex = m.path_regex.as_ref().filter(|_| only_regex).and_then(|re| {
        Regex::new(re)
            .map_err(|e| {
                let why = e.to_string();
                let why = why
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("error: ")
                    .to_string();
                errs.push(
                    join(&here, "path_regex"),
                    format!("invalid regex `{re}`: {why}"),
                );
            })
            .ok()
    });
    if errs.any_under(&here) {
        return None;
    }
    let path_match = match (&m.path, &m.path_prefix, regex) {
        (Some(p), _, _) => PathMatch::Exact(p.clone()),
        (_, Some(p), _) => PathMatch::Prefix(p.clone()),
        (_, _, Some(re)) => PathMatch::Regex(re),
        _ => PathMatch::Any,
    };
    let mut methods = Vec::new();
    for (i, meth) in m.methods.iter().enumerate() {
        match Method::from_bytes(meth.to_ascii_uppercase().as_bytes()) {
            Ok(x) => methods.push(x),
            Err(_) => errs.push(
                index(&join(&here, "methods"), i),
                format!("`{meth}` is not an HTTP method"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => errs.push(
                join(&join(&here, "headers"), name),
                "value contains characters not allowed in a header",
            ),
        }
    }
    Some(RouteSpec {
        hosts: m
            .hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
        path: path_match,
        methods,
        headers,
        priority: r.priority.unwrap_or(0),
    })
}

/// The route's action (the routes pass checked there is exactly one, naming a defined
/// upstream); `None` when it cannot be built.
fn action(
    r: &RouteConfig,
    path: &str,
    pools: &BTreeMap<String, Arc<Pool>>,
    errs: &mut ConfigErrors,
) -> Option<Action> {
    if !crate::checks::routes::one_action(r) {
        return None;
    }
    if let Some(name) = &r.upstream {
        // A pool that failed to build (or an unknown name) has its errors already.
        return pools.get(name).map(|p| Action::Upstream(Arc::clone(p)));
    }
    if let Some(resp) = &r.respond {
        return respond(resp, &join(path, "respond"), errs).map(Action::Respond);
    }
    let red = r.redirect.as_ref()?;
    let here = join(path, "redirect");
    if red.to.is_empty() {
        return None;
    }
    let to = Template::parse(&red.to)
        .map_err(|e| errs.push(join(&here, "to"), e))
        .ok()?;
    let status = red.status.unwrap_or(302);
    (!errs.any_under(&here)).then_some(Action::Redirect(Redirect { to, status }))
}

/// A `respond` action. Its body's escaping is chosen here, from its literal
/// `Content-Type` (a templated one is refused: a client would choose the escaping); a body
/// without one goes out as `text/plain; charset=utf-8` with `X-Content-Type-Options:
/// nosniff` (unless the route sets that header), so no browser reads it as HTML.
fn respond(resp: &RespondConfig, here: &str, errs: &mut ConfigErrors) -> Option<Respond> {
    let body = Template::parse(&resp.body)
        .map_err(|e| errs.push(join(here, "body"), e))
        .ok();
    let mut headers = Vec::new();
    for (name, value) in &resp.headers {
        let hp = join(&join(here, "headers"), name);
        let n = HeaderName::from_bytes(name.as_bytes());
        let t = Template::parse(value);
        match (n, t) {
            (Ok(n), Ok(t)) => {
                if t.as_static().is_some_and(|s| !safe_header_value(s)) {
                    errs.push(hp, "value contains characters not allowed in a header");
                } else if crate::plugin::headers::FORBIDDEN.contains(&n.as_str()) {
                    errs.push(
                        hp,
                        format!("`{name}` is managed by moat and cannot be changed"),
                    );
                } else if n == http::header::CONTENT_TYPE && t.as_static().is_none() {
                    errs.push(
                        hp,
                        "must be literal text: the body's values are escaped for the content \
                         type, chosen when the config is loaded",
                    );
                } else {
                    let value = match t.as_static().map(HeaderValue::from_bytes) {
                        Some(Ok(v)) => RespondValue::Fixed(v),
                        _ => RespondValue::Template(t),
                    };
                    headers.push(RespondHeader { name: n, value });
                }
            }
            (Err(_), _) => errs.push(hp, format!("`{name}` is not a valid header name")),
            (_, Err(e)) => errs.push(hp, e),
        }
    }
    let body = body.filter(|_| !errs.any_under(here))?;
    let has = |headers: &[RespondHeader], n: &HeaderName| headers.iter().any(|h| h.name == *n);
    let body_context = headers
        .iter()
        .find_map(|h| match &h.value {
            RespondValue::Fixed(v) if h.name == http::header::CONTENT_TYPE => Some(v.as_bytes()),
            _ => None,
        })
        .map_or(Context::Raw, Context::of_content_type);
    if !has(&headers, &http::header::CONTENT_TYPE) && body.as_static() != Some(&b""[..]) {
        for (name, value) in [
            (http::header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ] {
            if !has(&headers, &name) {
                let value = RespondValue::Fixed(HeaderValue::from_static(value));
                headers.push(RespondHeader { name, value });
            }
        }
    }
    Some(Respond {
        status: resp.status,
        headers,
        body,
        body_context,
    })
}
