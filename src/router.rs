//! The route table: host + path + method + header matching without a linear scan.
//!
//! Routes are indexed by host (exact names in a hash map, `*.suffix` wildcards in a hash map
//! keyed by suffix, and a table for routes without hosts), then by path kind (exact paths
//! and prefixes in hash maps, regexes in a list). A lookup probes the exact host, each
//! wildcard suffix of the host, and the host-less table; within each, the exact path and
//! the path's prefixes at every segment boundary. The cost grows with the number of path
//! segments and regex routes, not with the number of routes.
//!
//! Among the routes that match, the winner is decided by, in order:
//! 1. higher `priority` (default 0);
//! 2. host specificity: an exact host beats a wildcard, a longer wildcard beats a shorter
//!    one, and any host entry beats a route with no hosts;
//! 3. path kind: exact `path` beats `path_prefix`, which beats `path_regex`;
//! 4. longer prefix;
//! 5. earlier in the file.
//!
//! Prefixes match on segment boundaries: `/api/users` matches `/api/users` and
//! `/api/users/7` but not `/api/usersx`; `/api/users/` matches only below `/api/users/`.
//! A route whose methods include `GET` also matches `HEAD`. When routes match the path but
//! none matches the method, the result is `MethodNotAllowed` with the methods that would.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;
use std::collections::HashMap;

/// How a route matches the path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Any path (no path given).
    Any,
    /// Exactly this path.
    Exact(String),
    /// This prefix, on a segment boundary.
    Prefix(String),
    /// A regex matched against the path.
    Regex(Regex),
}

/// The matching part of one route.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Lower-case host names, exact or `*.suffix`; empty = any host.
    pub hosts: Vec<String>,
    /// The path condition.
    pub path: PathMatch,
    /// Allowed methods; empty = any.
    pub methods: Vec<Method>,
    /// Headers that must be present with exactly these values.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Explicit priority; higher wins.
    pub priority: i32,
}

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteMatch {
    /// The index of the winning route.
    Found(usize),
    /// The path matched but not the method; the value is for the `Allow` header.
    MethodNotAllowed(String),
    /// Nothing matched.
    NotFound,
}

#[derive(Default)]
struct HostTable {
    exact: HashMap<Box<str>, Vec<u32>>,
    prefix: HashMap<Box<str>, Vec<u32>>,
    regex: Vec<u32>,
    /// Host rank: 0 = host-less, 1.. = wildcard by suffix length, u16::MAX = exact host.
    rank: u16,
}

/// A compiled route table.
#[derive(Default)]
pub struct Router {
    specs: Vec<RouteSpec>,
    exact_hosts: HashMap<Box<str>, HostTable>,
    wildcard_hosts: HashMap<Box<str>, HostTable>,
    any_host: HostTable,
}

/// Ranking key: bigger wins.
type Rank = (i32, u16, u8, usize, std::cmp::Reverse<usize>);

impl Router {
    /// Build the index. Specs are assumed validated (hosts lower-case, paths starting
    /// with `/`).
    pub fn new(specs: Vec<RouteSpec>) -> Router {
        let mut r = Router::default();
        for (i, spec) in specs.iter().enumerate() {
            let i = i as u32;
            if spec.hosts.is_empty() {
                add_path(&mut r.any_host, &spec.path, i);
            }
            for h in &spec.hosts {
                let table = if let Some(suffix) = h.strip_prefix("*.") {
                    let t = r.wildcard_hosts.entry(suffix.into()).or_default();
                    t.rank = 1 + suffix.len().min(u16::MAX as usize - 2) as u16;
                    t
                } else {
                    let t = r.exact_hosts.entry(h.as_str().into()).or_default();
                    t.rank = u16::MAX;
                    t
                };
                add_path(table, &spec.path, i);
            }
        }
        r.specs = specs;
        r
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Whether some route names `host` (lower-case, no port) in its `hosts`, exactly or by a
    /// wildcard. Host-less routes do not count.
    pub fn names_host(&self, host: &str) -> bool {
        if self.exact_hosts.contains_key(host) {
            return true;
        }
        let mut rest = host;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if self.wildcard_hosts.contains_key(rest) {
                return true;
            }
        }
        false
    }

    /// Find the route for a request. `host` must be lower-case without port.
    pub fn lookup(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
    ) -> RouteMatch {
        let mut best: Option<(Rank, usize)> = None;
        let mut method_miss = false;
        let mut visit = |table: &HostTable, best: &mut Option<(Rank, usize)>| {
            self.scan(table, path, method, headers, best, &mut method_miss);
        };
        if let Some(t) = self.exact_hosts.get(host) {
            visit(t, &mut best);
        }
        if !self.wildcard_hosts.is_empty() {
            let mut rest = host;
            while let Some(dot) = rest.find('.') {
                rest = &rest[dot + 1..];
                if let Some(t) = self.wildcard_hosts.get(rest) {
                    visit(t, &mut best);
                }
            }
        }
        visit(&self.any_host, &mut best);
        match best {
            Some((_, i)) => RouteMatch::Found(i),
            None if method_miss => RouteMatch::MethodNotAllowed(self.allow(host, path, headers)),
            None => RouteMatch::NotFound,
        }
    }

    fn scan(
        &self,
        t: &HostTable,
        path: &str,
        method: &Method,
        headers: &HeaderMap,
        best: &mut Option<(Rank, usize)>,
        method_miss: &mut bool,
    ) {
        let mut consider = |idx: u32, kind: u8, len: usize| {
            let i = idx as usize;
            let spec = &self.specs[i];
            let rank: Rank = (spec.priority, t.rank, kind, len, std::cmp::Reverse(i));
            if best.as_ref().is_some_and(|(b, _)| *b >= rank) {
                return;
            }
            if !headers_match(spec, headers) {
                return;
            }
            if !method_matches(&spec.methods, method) {
                *method_miss = true;
                return;
            }
            *best = Some((rank, i));
        };
        if let Some(ids) = t.exact.get(path) {
            for &i in ids {
                consider(i, 3, path.len());
            }
        }
        if !t.prefix.is_empty() {
            for_each_prefix(path, |p| {
                if let Some(ids) = t.prefix.get(p) {
                    for &i in ids {
                        consider(i, 2, p.len());
                    }
                }
            });
        }
        for &i in &t.regex {
            if let PathMatch::Regex(re) = &self.specs[i as usize].path {
                if re.is_match(path) {
                    consider(i, 1, 0);
                }
            }
        }
    }

    /// The `Allow` value: methods of every route matching host, path and headers.
    fn allow(&self, host: &str, path: &str, headers: &HeaderMap) -> String {
        let mut methods: Vec<&str> = Vec::new();
        for spec in &self.specs {
            if spec.methods.is_empty()
                || !host_matches(&spec.hosts, host)
                || !path_matches(&spec.path, path)
                || !headers_match(spec, headers)
            {
                continue;
            }
            for m in &spec.methods {
                methods.push(m.as_str());
                if *m == Method::GET {
                    methods.push("HEAD");
                }
            }
        }
        methods.sort_unstable();
        methods.dedup();
        methods.join(", ")
    }
}

fn add_path(t: &mut HostTable, path: &PathMatch, i: u32) {
    match path {
        PathMatch::Any => t.prefix.entry("/".into()).or_default().push(i),
        PathMatch::Exact(p) => t.exact.entry(p.as_str().into()).or_default().push(i),
        PathMatch::Prefix(p) => t.prefix.entry(p.as_str().into()).or_default().push(i),
        PathMatch::Regex(_) => t.regex.push(i),
    }
}

/// Call `f` with every prefix of `path` that ends on a segment boundary: the whole path,
/// each part before a `/`, and each part up to and including a `/`.
fn for_each_prefix(path: &str, mut f: impl FnMut(&str)) {
    f(path);
    for (i, b) in path.bytes().enumerate().rev() {
        if b == b'/' {
            if i + 1 < path.len() {
                f(&path[..=i]);
            }
            if i > 0 {
                f(&path[..i]);
            }
        }
    }
}

fn method_matches(methods: &[Method], m: &Method) -> bool {
    methods.is_empty()
        || methods
            .iter()
            .any(|x| x == m || (*m == Method::HEAD && *x == Method::GET))
}

fn headers_match(spec: &RouteSpec, headers: &HeaderMap) -> bool {
    spec.headers
        .iter()
        .all(|(name, want)| headers.get_all(name).iter().any(|v| v == want))
}

fn host_matches(hosts: &[String], host: &str) -> bool {
    hosts.is_empty()
        || hosts.iter().any(|h| match h.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => h == host,
        })
}

fn path_matches(p: &PathMatch, path: &str) -> bool {
    match p {
        PathMatch::Any => true,
        PathMatch::Exact(e) => e == path,
        PathMatch::Prefix(pre) => {
            let mut hit = false;
            for_each_prefix(path, |x| hit |= x == pre);
            hit
        }
        PathMatch::Regex(re) => re.is_match(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(hosts: &[&str], path: PathMatch, methods: &[&str], priority: i32) -> RouteSpec {
        RouteSpec {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path,
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            headers: vec![],
            priority,
        }
    }
    fn pre(p: &str) -> PathMatch {
        PathMatch::Prefix(p.into())
    }
    fn get(r: &Router, host: &str, path: &str) -> RouteMatch {
        r.lookup(host, path, &Method::GET, &HeaderMap::new())
    }

    #[test]
    fn prefix_on_segment_boundary() {
        let r = Router::new(vec![spec(&[], pre("/api/users"), &[], 0)]);
        assert_eq!(get(&r, "h", "/api/users"), RouteMatch::Found(0));
        assert_eq!(get(&r, "h", "/api/users/7"), RouteMatch::Found(0));
        assert_eq!(get(&r, "h", "/api/users/"), RouteMatch::Found(0));
        assert_eq!(get(&r, "h", "/api/usersx"), RouteMatch::NotFound);
        assert_eq!(get(&r, "h", "/api"), RouteMatch::NotFound);
        let r = Router::new(vec![spec(&[], pre("/api/users/"), &[], 0)]);
        assert_eq!(get(&r, "h", "/api/users/7"), RouteMatch::Found(0));
        assert_eq!(get(&r, "h", "/api/users"), RouteMatch::NotFound);
        let r = Router::new(vec![spec(&[], pre("/"), &[], 0)]);
        assert_eq!(get(&r, "h", "/anything/at/all"), RouteMatch::Found(0));
        assert_eq!(get(&r, "h", "/"), RouteMatch::Found(0));
    }

    #[test]
    fn precedence() {
        let r = Router::new(vec![
            spec(
                &[],
                PathMatch::Regex(Regex::new("^/api/.*$").unwrap()),
                &[],
                0,
            ),
            spec(&[], pre("/api"), &[], 0),
            spec(&[], pre("/api/users"), &[], 0),
            spec(&[], PathMatch::Exact("/api/users/me".into()), &[], 0),
            spec(&[], pre("/api/users"), &[], 0), // duplicate: earlier wins
        ]);
        assert_eq!(get(&r, "h", "/api/users/me"), RouteMatch::Found(3));
        assert_eq!(get(&r, "h", "/api/users/7"), RouteMatch::Found(2));
        assert_eq!(get(&r, "h", "/api/other"), RouteMatch::Found(1));
        let r = Router::new(vec![
            spec(&[], pre("/api"), &[], 0),
            spec(&[], PathMatch::Regex(Regex::new("^/api").unwrap()), &[], 5),
        ]);
        assert_eq!(get(&r, "h", "/api/x"), RouteMatch::Found(1));
    }

    #[test]
    fn hosts() {
        let r = Router::new(vec![
            spec(&[], pre("/"), &[], 0),
            spec(&["*.example.com"], pre("/"), &[], 0),
            spec(&["*.api.example.com"], pre("/"), &[], 0),
            spec(&["api.example.com"], pre("/"), &[], 0),
        ]);
        assert_eq!(get(&r, "api.example.com", "/x"), RouteMatch::Found(3));
        assert_eq!(get(&r, "v1.api.example.com", "/x"), RouteMatch::Found(2));
        assert_eq!(get(&r, "www.example.com", "/x"), RouteMatch::Found(1));
        assert_eq!(get(&r, "example.com", "/x"), RouteMatch::Found(0));
        assert_eq!(get(&r, "evilexample.com", "/x"), RouteMatch::Found(0));
        let only = Router::new(vec![spec(&["*.example.com"], pre("/"), &[], 0)]);
        assert_eq!(get(&only, "example.com", "/"), RouteMatch::NotFound);
        assert_eq!(get(&only, "a.example.com.evil", "/"), RouteMatch::NotFound);
    }

    #[test]
    fn methods_and_allow() {
        let r = Router::new(vec![
            spec(&[], pre("/a"), &["POST"], 0),
            spec(&[], pre("/a"), &["GET", "PUT"], 0),
        ]);
        assert_eq!(
            r.lookup("h", "/a", &Method::HEAD, &HeaderMap::new()),
            RouteMatch::Found(1)
        );
        assert_eq!(
            r.lookup("h", "/a", &Method::POST, &HeaderMap::new()),
            RouteMatch::Found(0)
        );
        assert_eq!(
            r.lookup("h", "/a", &Method::DELETE, &HeaderMap::new()),
            RouteMatch::MethodNotAllowed("GET, HEAD, POST, PUT".into())
        );
        assert_eq!(get(&r, "h", "/b"), RouteMatch::NotFound);
    }

    #[test]
    fn headers_condition() {
        let mut s = spec(&[], pre("/"), &[], 0);
        s.headers = vec![(
            HeaderName::from_static("x-api-version"),
            HeaderValue::from_static("2"),
        )];
        let r = Router::new(vec![s, spec(&[], pre("/"), &[], -1)]);
        let mut h = HeaderMap::new();
        assert_eq!(r.lookup("h", "/", &Method::GET, &h), RouteMatch::Found(1));
        h.insert("x-api-version", HeaderValue::from_static("2"));
        assert_eq!(r.lookup("h", "/", &Method::GET, &h), RouteMatch::Found(0));
    }

    #[test]
    fn many_routes() {
        let specs = (0..10_000)
            .map(|i| {
                spec(
                    &[&format!("h{}.example.com", i % 100)],
                    pre(&format!("/svc{i}")),
                    &[],
                    0,
                )
            })
            .collect();
        let r = Router::new(specs);
        assert_eq!(
            get(&r, "h42.example.com", "/svc9942/x"),
            RouteMatch::Found(9942)
        );
        assert_eq!(
            get(&r, "h41.example.com", "/svc9942/x"),
            RouteMatch::NotFound
        );
    }
}
