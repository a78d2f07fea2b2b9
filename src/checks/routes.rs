//! The routes pass: every range and shape rule of `routes:` (unique names, the match
//! conditions, exactly one action and the upstream it names, respond and redirect
//! statuses, `max_body`, rewrite prefixes). Parsing templates and regexes, and building
//! the router and plugin chains, are compile steps (`runtime::routes`), run after this
//! pass; plugin settings are their plugin's.

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::{Config, RouteConfig};
use crate::util::http::valid_token;
use http::{HeaderName, Method};
use std::collections::HashSet;

/// Redirect statuses a route may answer with.
pub const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Record every problem of every route.
pub fn routes(cfg: &Config, errs: &mut ConfigErrors) {
    let mut names = HashSet::new();
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
        matcher(r, &join(&path, "match"), errs);
        action(cfg, r, &path, errs);
        if r.max_body.is_some_and(|s| s.0 == 0) {
            errs.push(join(&path, "max_body"), "must be more than 0");
        }
        rewrite(r, &path, errs);
    }
}

/// A host name or `*.suffix` wildcard, lower case.
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

/// `match`: hosts, at most one path condition, paths, methods, headers (a `path_regex`
/// is parsed where it is built).
fn matcher(r: &RouteConfig, here: &str, errs: &mut ConfigErrors) {
    let m = &r.matcher;
    for (i, h) in m.hosts.iter().enumerate() {
        if !valid_host(&h.trim().to_ascii_lowercase()) {
            errs.push(
                index(&join(here, "hosts"), i),
                format!("`{h}` is not a host name or `*.suffix` wildcard (no port, no scheme)"),
            );
        }
    }
    let given = [&m.path, &m.path_prefix, &m.path_regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if given > 1 {
        errs.push(here, "give at most one of path, path_prefix, path_regex");
    }
    if let Some(p) = &m.path {
        check_path(p, &join(here, "path"), errs);
    } else if let Some(p) = &m.path_prefix {
        check_path(p, &join(here, "path_prefix"), errs);
    }
    for (i, meth) in m.methods.iter().enumerate() {
        let upper = meth.to_ascii_uppercase();
        if Method::from_bytes(upper.as_bytes()).is_err() || !valid_token(&upper) {
            errs.push(
                index(&join(here, "methods"), i),
                format!("`{meth}` is not an HTTP method"),
            );
        }
    }
    for (name, value) in &m.headers {
        let hp = join(&join(here, "headers"), name);
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            errs.push(hp, format!("`{name}` is not a valid header name"));
        } else if super::bad_header_value(value) {
            errs.push(hp, "value contains characters not allowed in a header");
        }
    }
}

fn check_path(p: &str, path: &str, errs: &mut ConfigErrors) {
    if !p.starts_with('/') || p.contains(['?', '#']) || !p.bytes().all(|b| b.is_ascii_graphic()) {
        errs.push(
            path,
            format!("`{p}` must be a path starting with `/` (no query, no spaces)"),
        );
    }
}

/// Whether `r` has exactly one action: upstream, respond or redirect.
pub fn one_action(r: &RouteConfig) -> bool {
    [
        r.upstream.is_some(),
        r.respond.is_some(),
        r.redirect.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count()
        == 1
}

/// Exactly one action; the upstream it names exists; respond and redirect statuses.
fn action(cfg: &Config, r: &RouteConfig, path: &str, errs: &mut ConfigErrors) {
    if !one_action(r) {
        errs.push(
            path,
            "needs exactly one action: upstream, respond or redirect",
        );
    } else if let Some(name) = &r.upstream {
        if !cfg.upstreams.contains_key(name) {
            errs.push(join(path, "upstream"), format!("unknown upstream `{name}`"));
        }
    } else if let Some(resp) = &r.respond {
        if !(200..=599).contains(&resp.status) {
            errs.push(join(path, "respond.status"), "must be between 200 and 599");
        }
    } else if let Some(red) = &r.redirect {
        if !REDIRECT_STATUSES.contains(&red.status.unwrap_or(302)) {
            errs.push(
                join(path, "redirect.status"),
                "must be 301, 302, 303, 307 or 308",
            );
        }
        if red.to.is_empty() {
            errs.push(join(path, "redirect.to"), "must not be empty");
        }
    }
}

/// `rewrite`: paths, only with an `upstream` action.
fn rewrite(r: &RouteConfig, path: &str, errs: &mut ConfigErrors) {
    let Some(rw) = &r.rewrite else {
        return;
    };
    let here = join(path, "rewrite");
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
        errs.push(here, "applies only to routes with an `upstream` action");
    }
}
