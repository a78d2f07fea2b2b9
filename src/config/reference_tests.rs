//! `conf/reference.yaml` shows every key the config model accepts (so a key added to the
//! model without its documented line fails here), names in a comment each key it shows only
//! as an alternative, shows every built-in plugin, and states the defaults the code uses.
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

/// Each key of [`ALTERNATIVES`] is named in a comment (as `key:` or between word breaks).
#[test]
fn reference_file_names_each_alternative_in_a_comment() {
    let comments: Vec<&str> = REFERENCE
        .lines()
        .filter_map(|l| l.split_once('#').map(|(_, c)| c))
        .collect();
    for alt in ALTERNATIVES {
        let key = alt.rsplit('.').next().unwrap_or(alt);
        let word = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let named = comments.iter().any(|c| {
            let bytes = c.as_bytes();
            c.match_indices(key).any(|(i, _)| {
                let before = i.checked_sub(1).and_then(|j| bytes.get(j));
                !word(before) && !word(bytes.get(i + key.len()))
            })
        });
        assert!(
            named,
            "`{alt}` is in ALTERNATIVES but no comment of conf/reference.yaml names `{key}`"
        );
    }
}

/// A default the code uses, and how to read the reference file's `[...]` for it.
enum Code {
    Dur(std::time::Duration),
    Size(u64),
    Int(u64),
    Text(String),
}

/// The `[...]` at the end of the first line starting with `prefix` (indentation included).
fn stated(prefix: &str) -> String {
    let line = REFERENCE
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line `{prefix}` in conf/reference.yaml"));
    let open = line
        .rfind('[')
        .unwrap_or_else(|| panic!("no [default] on `{line}`"));
    let close = line[open..]
        .find(']')
        .unwrap_or_else(|| panic!("unclosed [ on `{line}`"));
    line[open + 1..open + close].to_string()
}

#[test]
fn reference_file_states_the_defaults_the_code_uses() {
    use super::units::{parse_duration, parse_size};
    use Code::*;
    let server = crate::server::server_conf(&super::Config::default(), false);
    let limits = crate::runtime::RequestBounds::default();
    // What serde fills in for keys left out.
    let provider: super::model::JwtProviderConfig =
        serde_yaml::from_str("algorithms: [RS256]").expect("provider");
    let auth: super::model::AuthConfig =
        serde_yaml::from_str("{ methods: [hmac], hmac: {} }").expect("auth");
    let hmac = auth.hmac.clone().expect("hmac");
    let yaml = |v: &super::model::ConsumerMap| {
        serde_yaml::to_string(v)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let rows: Vec<(&str, Code)> = vec![
        ("  threads:", Int(server.threads as u64)),
        ("  upgrade_sock:", Text(server.upgrade_sock.clone())),
        (
            "  grace_period:",
            Dur(crate::drain::sequence::DEFAULT_GRACE_PERIOD),
        ),
        (
            "  shutdown_timeout:",
            Dur(crate::drain::sequence::DEFAULT_SHUTDOWN_TIMEOUT),
        ),
        ("    max_header_bytes:", Size(limits.max_header_bytes)),
        ("    max_headers:", Int(limits.max_headers as u64)),
        (
            "    header_timeout:",
            Dur(crate::conn::DEFAULT_HEADER_TIMEOUT),
        ),
        ("    max_body:", Size(limits.max_body)),
        (
            "    idle_timeout:",
            Dur(std::time::Duration::from_secs(limits.idle_timeout_secs)),
        ),
        (
            "    per_ip_v6_prefix:",
            Int(crate::conn::limit::DEFAULT_V6_PREFIX.into()),
        ),
        ("  timeout:", Dur(crate::redis::config::DEFAULT_TIMEOUT)),
        (
            "      interval:",
            Dur(crate::upstream::health::DEFAULT_INTERVAL),
        ),
        (
            "      timeout:",
            Dur(crate::upstream::health::DEFAULT_TIMEOUT),
        ),
        (
            "    connect_timeout:",
            Dur(crate::runtime::upstreams::DEFAULT_CONNECT_TIMEOUT),
        ),
        (
            "    read_timeout:",
            Dur(crate::runtime::upstreams::DEFAULT_READ_TIMEOUT),
        ),
        (
            "    retries:",
            Int(crate::runtime::upstreams::DEFAULT_RETRIES.into()),
        ),
        (
            "          sync_interval:",
            Dur(std::time::Duration::from_micros(
                crate::ratelimit::fast::DEFAULT_SYNC_US,
            )),
        ),
        (
            "          max_keys:",
            Int(crate::ratelimit::store::DEFAULT_MAX_KEYS as u64),
        ),
        (
            "          lease:",
            Dur(crate::ratelimit::lease::DEFAULT_LEASE),
        ),
        (
            "    jwks_refresh:",
            Dur(crate::auth::provider::DEFAULT_REFRESH),
        ),
        (
            "    jwks_cooldown:",
            Dur(crate::auth::provider::DEFAULT_COOLDOWN),
        ),
        (
            "    allow_insecure_jwks:",
            Text(provider.allow_insecure_jwks.to_string()),
        ),
        ("    consumer_map:", Text(yaml(&provider.consumer_map))),
        (
            "            clock_skew:",
            Dur(std::time::Duration::from_secs(
                crate::auth::hmac::DEFAULT_CLOCK_SKEW as u64,
            )),
        ),
        (
            "            require_digest:",
            Text(hmac.require_digest.to_string()),
        ),
        (
            "            enforce_headers:",
            Text(crate::auth::hmac::DEFAULT_ENFORCE_HEADERS.join(", ")),
        ),
        (
            "            replay_capacity:",
            Int(crate::auth::replay::REPLAY_CAPACITY as u64),
        ),
        (
            "            replay_on_redis_error:",
            Text(
                serde_yaml::to_string(&hmac.replay_on_redis_error)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            ),
        ),
        (
            "          hide_credentials:",
            Text(auth.hide_credentials.to_string()),
        ),
    ];
    for (prefix, code) in rows {
        let text = stated(prefix);
        let same = match &code {
            Dur(d) => parse_duration(&text).ok() == Some(*d),
            Size(n) => parse_size(&text).ok() == Some(*n),
            Int(n) => text.parse::<u64>().ok() == Some(*n),
            Text(t) => &text == t,
        };
        let code = match code {
            Dur(d) => format!("{d:?}"),
            Size(n) | Int(n) => n.to_string(),
            Text(t) => t,
        };
        assert!(
            same,
            "`{}`: conf/reference.yaml says [{text}], the code {code}",
            prefix.trim()
        );
    }
}
