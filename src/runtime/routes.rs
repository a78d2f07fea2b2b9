//! Compiling `routes:` and `global_plugins:` into the router, route objects and plugin
//! chains, recording every error with its path.

use super::{Action, Redirect, Respond, RespondHeader, RespondValue, Rewrite, Route};
use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Config, RespondConfig, RouteConfig};
use crate::metrics::{Metrics, RouteRequests};
use crate::plugin::{self, Chain, Plugin};
use crate::router::{PathMatch, RouteSpec, Router};
use crate::template::{Context, Template};
use crate::upstream::Pool;
use crate::util::http::{safe_header_value, valid_token};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;
use std::collections::{BTreeMap, HashSet};
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
    let mut names = HashSet::new();
    let mut specs = Vec::new();
    let mut routes = Vec::new();
    for (i, r) in cfg.routes.iter().enumerate() {
        let path = index("routes", i);
        if r.name.is_empty() {
            errs.push(join(&path, "name"), "must not be empty");
        } else if !names.insert(r.name.as_str()) {
            errs.push(
                join(&path, "name"),
                format!("duplicate route name `{}`", r.name),
            );
        }
        let spec = match_spec(r, &path, errs);
        let action = action(r, &path, cfg, pools, errs);
        let mut plugins = globals.clone();
        plugins.extend(r.plugins.iter().enumerate().filter_map(|(j, p)| {
            plugin::compile(p, &index(&join(&path, "plugins"), j), env, errs)
        }));
        if r.max_body.is_some_and(|s| s.0 == 0) {
            errs.push(join(&path, "max_body"), "must be more than 0");
        }
        let rewrite = r.rewrite.as_ref().map(|rw| {
            let here = join(&path, "rewrite");
            for (k, v) in [
                ("strip_prefix", &rw.strip_prefix),
                ("add_prefix", &rw.add_prefix),
            ] {
                if let Some(v) = v {
                    if !v.starts_with('/')
                        || v.contains(['?', '#'])
                        || !v.bytes().all(|b| b.is_ascii_graphic())
                    {
                        errs.push(join(&here, k), "must be a path starting with `/`");
                    }
                }
            }
            if r.upstream.is_none() {
                errs.push(
                    here.clone(),
                    "applies only to routes with an `upstream` action",
                );
            }
            Rewrite {
                strip_prefix: rw.strip_prefix.clone(),
                add_prefix: rw.add_prefix.clone(),
            }
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

fn valid_host(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn match_spec(r: &RouteConfig, path: &str, errs: &mut ConfigErrors) -> Option<RouteSpec> {
    let here = join(path, "match");
    let before = errs.checkpoint();
    let m = &r.matcher;
    let mut hosts = Vec::new();
    for (i, h) in m.hosts.iter().enumerate() {
        let lower = h.trim().to_ascii_lowercase();
        if !valid_host(&lower) {
            errs.push(
                index(&join(&here, "hosts"), i),
                format!("`{h}` is not a host name or `*.suffix` wildcard (no port, no scheme)"),
            );
        }
        hosts.push(lower);
    }
    let given = [
        m.path.is_some(),
        m.path_prefix.is_some(),
        m.path_regex.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given > 1 {
        errs.push(
            here.clone(),
            "give at most one of path, path_prefix, path_regex",
        );
    }
    let path_match = if let Some(p) = &m.path {
        check_path(p, &join(&here, "path"), errs);
        PathMatch::Exact(p.clone())
    } else if let Some(p) = &m.path_prefix {
        check_path(p, &join(&here, "path_prefix"), errs);
        PathMatch::Prefix(p.clone())
    } else if let Some(re) = &m.path_regex {
        match Regex::new(re) {
            Ok(re) => PathMatch::Regex(re),
            Err(e) => {
                let why = e.to_string();
                let why = why
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("error: ");
                errs.push(
                    join(&here, "path_regex"),
                    format!("invalid regex `{re}`: {why}"),
                );
                PathMatch::Any
            }
        }
    } else {
        PathMatch::Any
    };
    let mut methods = Vec::new();
    for (i, meth) in m.methods.iter().enumerate() {
        let upper = meth.to_ascii_uppercase();
        match Method::from_bytes(upper.as_bytes()) {
            Ok(x) if valid_token(&upper) => methods.push(x),
            _ => errs.push(
                index(&join(&here, "methods"), i),
                format!("`{meth}` is not an HTTP method"),
            ),
        }
    }
    let mut headers = Vec::new();
    for (name, value) in &m.headers {
        let hp = join(&join(&here, "headers"), name);
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) if safe_header_value(value.as_bytes()) => headers.push((n, v)),
            (Err(_), _) => errs.push(hp, format!("`{name}` is not a valid header name")),
            _ => errs.push(hp, "value contains characters not allowed in a header"),
        }
    }
    (errs.clean_since(before)).then_some(RouteSpec {
        hosts,
        path: path_match,
        methods,
        headers,
        priority: r.priority.unwrap_or(0),
    })
}

fn check_path(p: &str, path: &str, errs: &mut ConfigErrors) {
    if !p.starts_with('/') || p.contains(['?', '#']) || !p.bytes().all(|b| b.is_ascii_graphic()) {
        errs.push(
            path,
            format!("`{p}` must be a path starting with `/` (no query, no spaces)"),
        );
    }
}

fn action(
    r: &RouteConfig,
    path: &str,
    cfg: &Config,
    pools: &BTreeMap<String, Arc<Pool>>,
    errs: &mut ConfigErrors,
) -> Option<Action> {
    let count = [
        r.upstream.is_some(),
        r.respond.is_some(),
        r.redirect.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if count != 1 {
        errs.push(
            path,
            "needs exactly one action: upstream, respond or redirect",
        );
        return None;
    }
    if let Some(name) = &r.upstream {
        return match pools.get(name) {
            Some(p) => Some(Action::Upstream(Arc::clone(p))),
            None => {
                // A defined upstream that failed to compile has its own errors already.
                if !cfg.upstreams.contains_key(name) {
                    errs.push(join(path, "upstream"), format!("unknown upstream `{name}`"));
                }
                None
            }
        };
    }
    if let Some(resp) = &r.respond {
        return respond(resp, &join(path, "respond"), errs).map(Action::Respond);
    }
    let red = r.redirect.as_ref()?;
    let here = join(path, "redirect");
    let status = red.status.unwrap_or(302);
    let status_ok = [301, 302, 303, 307, 308].contains(&status);
    if !status_ok {
        errs.push(join(&here, "status"), "must be 301, 302, 303, 307 or 308");
    }
    if red.to.is_empty() {
        errs.push(join(&here, "to"), "must not be empty");
        return None;
    }
    match Template::parse(&red.to) {
        Ok(to) if status_ok => Some(Action::Redirect(Redirect { to, status })),
        Ok(_) => None,
        Err(e) => {
            errs.push(join(&here, "to"), e);
            None
        }
    }
}

/// A `respond` action. Its body's escaping is chosen here, from its literal
/// `Content-Type` (a templated one is refused: a client would choose the escaping); a body
/// without one goes out as `text/plain; charset=utf-8` with `X-Content-Type-Options:
/// nosniff` (unless the route sets that header), so no browser reads it as HTML.
fn respond(resp: &RespondConfig, here: &str, errs: &mut ConfigErrors) -> Option<Respond> {
    let before = errs.checkpoint();
    if !(200..=599).contains(&resp.status) {
        errs.push(join(here, "status"), "must be between 200 and 599");
    }
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
    let body = body.filter(|_| errs.clean_since(before))?;
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
