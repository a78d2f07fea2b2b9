//! Reading a config file: YAML → `Config`, collecting every deserialization error with
//! its path instead of stopping at the first one. Sections, list items and map entries
//! are decoded one by one so that a mistake in `routes[1]` does not hide one in `routes[4]`.

use super::error::{index, join, ConfigErrors};
use super::model::{Config, PluginConfig, RouteConfig};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;

/// Parse config text. Returns the config or every error found while decoding it;
/// semantic checks are `validate`'s job.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errs.push("", format!("invalid YAML: {e}"));
            return Err(errs);
        }
    };
    let map = match root {
        Value::Mapping(m) => m,
        Value::Null => Mapping::new(),
        _ => {
            errs.push("", "the config must be a mapping of sections");
            return Err(errs);
        }
    };
    let mut cfg = Config::default();
    for (k, v) in map {
        let Some(key) = k.as_str().map(str::to_string) else {
            errs.push("", "section names must be strings");
            continue;
        };
        let path = key.as_str();
        match path {
            "server" => set(&mut cfg.server, de(v, path, &mut errs)),
            "listeners" => cfg.listeners = de_list(v, path, &mut errs),
            "admin" => cfg.admin = de(v, path, &mut errs),
            "access_log" => cfg.access_log = de(v, path, &mut errs),
            "redis" => cfg.redis = de(v, path, &mut errs),
            "watch" => set(&mut cfg.watch, de(v, path, &mut errs)),
            "upstreams" => cfg.upstreams = de_map(v, path, &mut errs),
            "consumers" => cfg.consumers = de_list(v, path, &mut errs),
            "jwt_providers" => cfg.jwt_providers = de_map(v, path, &mut errs),
            "global_plugins" => cfg.global_plugins = de_list(v, path, &mut errs),
            "routes" => cfg.routes = de_routes(v, &mut errs),
            other => errs.push(
                other,
                "unknown section (expected server, listeners, admin, access_log, redis, watch, \
                 upstreams, consumers, jwt_providers, global_plugins or routes)",
            ),
        }
    }
    errs.into_result(cfg)
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// Decode one value, recording every error (each with its full path) on failure: after
/// an error, the offending key is taken out and decoding is tried again, so one mistake
/// does not hide the next one in the same route or upstream.
fn de<T: DeserializeOwned>(v: Value, path: &str, errs: &mut ConfigErrors) -> Option<T> {
    if v.is_null() {
        // An empty section (`admin:` with nothing under it) decodes as absent or default.
        if let Ok(t) = serde_yaml::from_value::<T>(Value::Mapping(Mapping::new())) {
            return Some(t);
        }
    }
    let mut v = v;
    let mut removed: Option<String> = None;
    for attempt in 0..64 {
        // serde_yaml decodes externally tagged enums (plugins) only from text, so each
        // piece is re-encoded; load time only.
        let text = match serde_yaml::to_string(&v) {
            Ok(t) => t,
            Err(e) => {
                errs.push(path, e.to_string());
                return None;
            }
        };
        let e = match serde_path_to_error::deserialize::<_, T>(serde_yaml::Deserializer::from_str(
            &text,
        )) {
            Ok(t) if attempt == 0 => return Some(t),
            Ok(_) => return None,
            Err(e) => e,
        };
        let mut segs: Vec<String> = Vec::new();
        let mut full = path.to_string();
        for seg in e.path().iter() {
            use serde_path_to_error::Segment;
            match seg {
                Segment::Seq { index } => {
                    full = index_path(&full, *index);
                    segs.push(format!("[{index}]"));
                }
                Segment::Map { key } | Segment::Enum { variant: key } => {
                    full = join(&full, key);
                    segs.push(key.clone());
                }
                Segment::Unknown => {}
            }
        }
        let msg = clean_message(&e.into_inner().to_string());
        let quoted = |prefix: &str| {
            msg.strip_prefix(prefix)
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_string())
        };
        let missing = quoted("missing field `");
        // A key we took out is now "missing": that is our doing, not the operator's.
        if attempt > 0 && missing.is_some() && missing == removed {
            return None;
        }
        let variant = quoted("unknown variant `");
        // serde names an unknown key in its message; put it in the path, where it belongs.
        // An unknown plugin name is a key of its list item; other unknown variants are values.
        let variant_key = variant.clone().filter(|_| {
            segs.last()
                .map_or(full.ends_with(']'), |l| l.starts_with('['))
        });
        if let Some(name) = quoted("unknown field `").or(variant_key) {
            if segs.last() != Some(&name) {
                full = join(&full, &name);
                segs.push(name);
            }
        }
        errs.push(full, msg);
        if missing.is_some() || variant.is_some() {
            return None;
        }
        match segs.last() {
            Some(last) if !last.starts_with('[') && remove_at(&mut v, &segs) => {
                removed = Some(last.clone());
            }
            _ => return None,
        }
    }
    None
}

fn index_path(parent: &str, i: usize) -> String {
    index(parent, i)
}

/// Remove the mapping entry at `segs` (keys and `[i]` indices) from `v`.
fn remove_at(v: &mut Value, segs: &[String]) -> bool {
    let Some((last, parents)) = segs.split_last() else {
        return false;
    };
    let mut cur = v;
    for s in parents {
        let next = match s.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            Some(i) => match (cur, i.parse::<usize>()) {
                (Value::Sequence(items), Ok(i)) => items.get_mut(i),
                _ => None,
            },
            None => match cur {
                Value::Mapping(m) => m.get_mut(s.as_str()),
                _ => None,
            },
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match cur {
        Value::Mapping(m) => m.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// serde_yaml appends " at line L column C" to some messages; positions refer to the
/// re-encoded value, not the file, so drop them in favour of the path.
/// serde_yaml also prefixes its own (partial) path; the full path is already in front.
fn clean_message(msg: &str) -> String {
    let msg = match msg.find(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let msg = match msg.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') && !head.contains('`') => rest,
        _ => msg,
    };
    // Rust type names mean nothing to operators.
    match msg.find("expected struct ") {
        Some(i) => format!("{}expected a mapping", &msg[..i]),
        None => msg.to_string(),
    }
}

fn de_list<T: DeserializeOwned>(v: Value, path: &str, errs: &mut ConfigErrors) -> Vec<T> {
    match v {
        Value::Null => Vec::new(),
        Value::Sequence(items) => items
            .into_iter()
            .enumerate()
            .filter_map(|(i, item)| de(item, &index(path, i), errs))
            .collect(),
        _ => {
            errs.push(path, "expected a list");
            Vec::new()
        }
    }
}

fn de_map<T: DeserializeOwned>(
    v: Value,
    path: &str,
    errs: &mut ConfigErrors,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Mapping(m) => {
            for (k, item) in m {
                let Some(name) = k.as_str() else {
                    errs.push(path, "names must be strings");
                    continue;
                };
                if let Some(t) = de(item, &join(path, name), errs) {
                    out.insert(name.to_string(), t);
                }
            }
        }
        _ => errs.push(path, "expected a mapping of names"),
    }
    out
}

/// Routes are decoded item by item, and each route's plugins one by one.
fn de_routes(v: Value, errs: &mut ConfigErrors) -> Vec<RouteConfig> {
    let items = match v {
        Value::Null => return Vec::new(),
        Value::Sequence(items) => items,
        _ => {
            errs.push("routes", "expected a list");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let path = index("routes", i);
        let Value::Mapping(mut m) = item else {
            errs.push(path, "expected a mapping");
            continue;
        };
        let plugins_v = m.remove("plugins");
        let route: Option<RouteConfig> = de(Value::Mapping(m), &path, errs);
        let plugins: Vec<PluginConfig> = match plugins_v {
            Some(p) => de_list(p, &join(&path, "plugins"), errs),
            None => Vec::new(),
        };
        if let Some(mut r) = route {
            r.plugins = plugins;
            out.push(r);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .err()
            .map(|e| e.0.iter().map(|e| e.to_string()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn reference_file_parses() {
        let text = include_str!("../../conf/reference.yaml");
        let cfg = parse(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.routes.len(), 3);
        assert_eq!(cfg.routes[0].plugins.len(), 8);
        assert_eq!(cfg.global_plugins.len(), 3);
        assert_eq!(cfg.upstreams["users"].targets[1].weight, 3);
    }

    #[test]
    fn http2_on_plain_listeners_and_upstreams() {
        let cfg = parse(
            "listeners:\n  - { name: p, address: 127.0.0.1:8080, http2: true }\nupstreams:\n  u: { targets: [127.0.0.1:9000], http2: true }\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.listeners[0].http2, Some(true));
        assert_eq!(cfg.upstreams["u"].http2, Some(true));
        let e = errors("upstreams:\n  u: { targets: [127.0.0.1:9000], http2: maybe }\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("upstreams.u.http2: "), "{e:?}");
    }

    #[test]
    fn unknown_key_path_names_the_key() {
        let e = errors(
            "routes:\n  - name: a\n    respond: {status: 200}\n  - name: b\n    respond: {}\n    plugins:\n      - request_id: {}\n      - rate_limit: { key: ip, rat: 1/s }\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].starts_with("routes[1].plugins[1].rate_limit.rat: unknown field `rat`"),
            "{e:?}"
        );
        assert_eq!(
            e[1],
            "routes[1].plugins[1].rate_limit: missing field `rate`"
        );
    }

    #[test]
    fn every_error_is_reported() {
        let e = errors(
            "server: { threads: x }\nroutes:\n  - name: a\n    respond: {}\n    plugins:\n      - rate_limit: { key: ip, rate: 10/x }\n  - nam: b\nlistenerz: []\n",
        );
        assert_eq!(e.len(), 5, "{e:?}");
        assert!(
            e.contains(&"routes[1]: missing field `name`".to_string()),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.starts_with("server.threads: ")), "{e:?}");
        assert!(
            e.iter().any(|m| m
                == "routes[0].plugins[0].rate_limit.rate: expected N/s, N/m, N/h or N/d"),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("routes[1].nam: unknown field")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("listenerz: unknown section")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_plugin_is_kept_for_the_registry() {
        // Names outside the built-in registry decode as external plugins; compiling the
        // config refuses them unless a custom build registered them (plugin::external).
        let cfg = parse("global_plugins:\n  - rate_limiter: { x: 1 }\n").unwrap();
        assert_eq!(cfg.global_plugins[0].name(), "rate_limiter");
        let e = errors("global_plugins:\n  - headers: {}\n    cors: {}\n");
        assert!(e[0].contains("one plugin per list item"), "{e:?}");
    }

    #[test]
    fn bad_yaml_and_empty() {
        assert!(errors("routes: [")[0].starts_with("invalid YAML"));
        assert!(parse("").is_ok());
        assert!(errors("admin:\n  address: 1\n  address: 2\n")[0].contains("duplicate"));
    }
}
