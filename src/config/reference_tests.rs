//! `conf/reference.yaml` shows every key the config model accepts (so a key added to the
//! model without its documented line fails here), and every built-in plugin.
//!
//! The model's keys are learnt from the model itself: a key nobody accepts (`zz_probe`) is
//! put into each mapping of the file in turn, and the loader's `unknown field` error lists
//! what that mapping accepts. Mappings of the same struct (same list) are pooled, so a key
//! shown on one route counts for all routes.

use super::load::parse;
use super::model::PLUGIN_NAMES;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

const REFERENCE: &str = include_str!("../../conf/reference.yaml");
const PROBE: &str = "zz_probe";

/// Keys the file names only in a comment, as an alternative to one it shows (path of the
/// mapping, list indices removed, then the key).
const ALTERNATIVES: &[&str] = &[
    "admin.token_file",
    "redis.cluster",
    "redis.sentinel",
    "upstreams.users.health_check.tcp",
    "jwt_providers.corp.jwks_file",
    "jwt_providers.corp.public_key_file",
    "jwt_providers.corp.secret_env",
    "routes.match.path_regex",
];

/// A step into the YAML tree.
#[derive(Clone)]
enum Step {
    Key(Value),
    Index(usize),
}

/// The path of every mapping in `v`, depth first.
fn mappings(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        Value::Mapping(m) => {
            out.push(at.clone());
            for (k, v) in m {
                at.push(Step::Key(k.clone()));
                mappings(v, at, out);
                at.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                at.push(Step::Index(i));
                mappings(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn walk<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, step| match step {
        Step::Key(k) => &mut v[k],
        Step::Index(i) => &mut v[*i],
    })
}

/// The loader's way of writing `path` (`routes[0].match`), and the same without indices.
fn names(path: &[Step]) -> (String, String) {
    let (mut full, mut plain) = (String::new(), String::new());
    for step in path {
        match step {
            Step::Key(k) => {
                let k = k.as_str().unwrap_or("?");
                for s in [&mut full, &mut plain] {
                    if !s.is_empty() {
                        s.push('.');
                    }
                    s.push_str(k);
                }
            }
            Step::Index(i) => full.push_str(&format!("[{i}]")),
        }
    }
    (full, plain)
}

/// The keys an `unknown field` (or, at the top, `unknown section`) message says are expected.
fn expected(message: &str) -> Option<BTreeSet<String>> {
    let list = message.split_once("expected")?.1;
    let keys: BTreeSet<String> = if list.contains('`') {
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect()
    } else {
        list.trim_matches([' ', ')'])
            .split([',', ' '])
            .filter(|w| !w.is_empty() && *w != "or")
            .map(str::to_string)
            .collect()
    };
    (!keys.is_empty()).then_some(keys)
}

#[test]
fn reference_file_shows_every_key() {
    let root: Value = serde_yaml::from_str(REFERENCE).unwrap_or_else(|e| panic!("{e}"));
    let mut paths = Vec::new();
    mappings(&root, &mut Vec::new(), &mut paths);
    // Per struct (its accepted keys): the keys shown anywhere, and one place it is.
    let mut structs: BTreeMap<BTreeSet<String>, (BTreeSet<String>, String)> = BTreeMap::new();
    for path in &paths {
        let mut probed = root.clone();
        let Value::Mapping(m) = walk(&mut probed, path) else {
            continue;
        };
        let shown: BTreeSet<String> = m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        m.insert(Value::from(PROBE), Value::Null);
        let text = serde_yaml::to_string(&probed).unwrap_or_else(|e| panic!("{e}"));
        let (full, plain) = names(path);
        let at = if full.is_empty() {
            PROBE.to_string()
        } else {
            format!("{full}.{PROBE}")
        };
        let errors = parse(&text).err().map(|e| e.0).unwrap_or_default();
        // Mappings of free names (upstreams, tiers, headers to set...) accept the probe or
        // refuse its value instead: they are not structs.
        let Some(keys) = errors
            .iter()
            .find(|e| e.path == at && e.message.starts_with("unknown"))
            .and_then(|e| expected(&e.message))
        else {
            continue;
        };
        let entry = structs
            .entry(keys)
            .or_insert_with(|| (BTreeSet::new(), plain));
        entry.0.extend(shown);
    }
    assert!(structs.len() > 30, "only {} structs probed", structs.len());
    let mut missing = Vec::new();
    for (keys, (shown, plain)) in &structs {
        for k in keys.difference(shown) {
            let at = if plain.is_empty() {
                k.clone()
            } else {
                format!("{plain}.{k}")
            };
            if !ALTERNATIVES.contains(&at.as_str()) {
                missing.push(at);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys not shown in conf/reference.yaml: {missing:?}"
    );
}

#[test]
fn reference_file_shows_every_plugin() {
    let root: Value = serde_yaml::from_str(REFERENCE).unwrap_or_else(|e| panic!("{e}"));
    let mut shown = BTreeSet::new();
    let lists = std::iter::once(&root["global_plugins"]).chain(
        root["routes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|r| &r["plugins"]),
    );
    for list in lists {
        for p in list.as_sequence().into_iter().flatten() {
            if let Value::Mapping(m) = p {
                shown.extend(m.keys().filter_map(|k| k.as_str().map(str::to_string)));
            }
        }
    }
    for name in PLUGIN_NAMES {
        assert!(
            shown.contains(*name),
            "plugin `{name}` not shown in conf/reference.yaml"
        );
    }
}
