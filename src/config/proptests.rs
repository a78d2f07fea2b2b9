//! Property tests of the config loader: no text panics it; random YAML trees built from the
//! config's own keys and values, and the bundled configs with random changes, go through
//! parsing, validation and compiling without a panic, and every error they get names a
//! path: a section of the file (or one moat knows), empty only for a whole-file error.

use super::error::{ConfigErrors, SECTIONS};
use super::load::parse;
use crate::metrics::Metrics;
use crate::plugin::external::Extensions;
use crate::runtime::Runtime;
use crate::util::proptest::config;
use once_cell::sync::Lazy;
use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

/// The bundled configs: the shapes operators write.
const BASES: [&str; 8] = [
    include_str!("../../conf/reference.yaml"),
    include_str!("../../conf/quickstart.yaml"),
    include_str!("../../conf/examples/auth.yaml"),
    include_str!("../../conf/examples/limits.yaml"),
    include_str!("../../conf/examples/routing.yaml"),
    include_str!("../../conf/examples/headers.yaml"),
    include_str!("../../conf/examples/upstreams.yaml"),
    include_str!("../../conf/examples/edge-headers.yaml"),
];

/// Every key and every scalar the bundled configs use.
static VOCABULARY: Lazy<(Vec<String>, Vec<Value>)> = Lazy::new(|| {
    fn walk(v: &Value, keys: &mut Vec<String>, scalars: &mut Vec<Value>) {
        match v {
            Value::Mapping(m) => {
                for (k, v) in m {
                    if let Some(k) = k.as_str() {
                        keys.push(k.to_string());
                    }
                    walk(v, keys, scalars);
                }
            }
            Value::Sequence(s) => s.iter().for_each(|v| walk(v, keys, scalars)),
            Value::Tagged(t) => walk(&t.value, keys, scalars),
            scalar => scalars.push(scalar.clone()),
        }
    }
    let (mut keys, mut scalars) = (Vec::new(), Vec::new());
    for b in BASES {
        if let Ok(v) = serde_yaml::from_str::<Value>(b) {
            walk(&v, &mut keys, &mut scalars);
        }
    }
    keys.sort();
    keys.dedup();
    (keys, scalars)
});

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop::sample::select(VOCABULARY.1.clone()),
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        2 => prop::sample::select(vec![
            "", "0", "-1", "0s", "999999999999d", "1/x", "10/s", "0/s", "{{", "{{nope}}",
            "{{header.}}", "*.", "[::1]:0", "127.0.0.1:0", "256.0.0.1:1", "0.0.0.0/33",
            "http://", "redis://:@/", "\u{0}", "ä", "18446744073709551616", "1e400", "NaN",
        ])
        .prop_map(Value::from),
        1 => "\\PC{0,12}".prop_map(Value::from),
    ]
}

/// A random YAML tree whose keys are mostly the config's own.
fn tree() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 48, 5, |inner| {
        let key = prop_oneof![
            5 => prop::sample::select(VOCABULARY.0.clone()),
            1 => "[a-z_]{1,8}".prop_map(String::from),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((key, inner), 0..5).prop_map(|kv| {
                Value::Mapping(kv.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
            }),
        ]
    })
}

/// Every error names a path: empty only for whole-file errors, else headed by a section
/// of `doc` or one moat knows (an error about a missing one names it); and says something.
fn paths_are_named(doc: &Value, errs: &ConfigErrors) -> Result<(), TestCaseError> {
    let top: Vec<&str> = doc
        .as_mapping()
        .map(|m| m.keys().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    prop_assert!(!errs.0.is_empty());
    for e in &errs.0 {
        prop_assert!(!e.message.is_empty(), "{e:?}");
        let whole_file = e.message.starts_with("invalid YAML")
            || e.message.starts_with("the config must be a mapping")
            || e.message.starts_with("section names must be strings");
        if e.path.is_empty() {
            prop_assert!(whole_file, "no path: {e}");
            continue;
        }
        // A section name may itself hold `.` or `[` (an unknown one is named as written):
        // the path is headed by a section when it is the name or goes on with `.` or `[`.
        prop_assert!(
            SECTIONS.iter().chain(&top).any(|s| headed_by(&e.path, s)),
            "{e} (sections of the file: {top:?})"
        );
    }
    Ok(())
}

/// True when `path` is `section` itself or a path inside it.
fn headed_by(path: &str, section: &str) -> bool {
    path.strip_prefix(section)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Parse, validate and compile `doc`'s YAML; check the errors' paths.
fn load(doc: &Value) -> Result<(), TestCaseError> {
    let text = serde_yaml::to_string(doc).expect("YAML");
    let result = parse(&text).and_then(|cfg| {
        let metrics = Metrics::new().expect("metrics");
        Runtime::compile(cfg, 1, &metrics, None, &Extensions::default()).map(|_| ())
    });
    match result {
        Ok(()) => Ok(()),
        Err(errs) => paths_are_named(doc, &errs),
    }
}

/// A step into a tree.
#[derive(Debug, Clone)]
enum Step {
    Key(Value),
    At(usize),
}

fn nodes(v: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(at.clone());
    match v {
        Value::Mapping(m) => {
            for (k, v) in m {
                at.push(Step::Key(k.clone()));
                nodes(v, at, out);
                at.pop();
            }
        }
        Value::Sequence(s) => {
            for (i, v) in s.iter().enumerate() {
                at.push(Step::At(i));
                nodes(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn node<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Step::Key(k) => v.as_mapping_mut()?.get_mut(k),
        Step::At(i) => v.as_sequence_mut()?.get_mut(*i),
    })
}

/// One random change: replace a node, drop it, add a key or an item, or copy another
/// node over it.
#[derive(Debug, Clone)]
enum Change {
    Replace(Value),
    Drop,
    AddKey(String, Value),
    Duplicate,
    CopyFrom(prop::sample::Index),
}

fn change() -> impl Strategy<Value = (prop::sample::Index, Change)> {
    let key = prop_oneof![
        prop::sample::select(VOCABULARY.0.clone()),
        Just("zz_prop".to_string())
    ];
    (
        any::<prop::sample::Index>(),
        prop_oneof![
            3 => scalar().prop_map(Change::Replace),
            1 => tree().prop_map(Change::Replace),
            2 => Just(Change::Drop),
            2 => (key, scalar()).prop_map(|(k, v)| Change::AddKey(k, v)),
            1 => Just(Change::Duplicate),
            1 => any::<prop::sample::Index>().prop_map(Change::CopyFrom),
        ],
    )
}

fn apply(doc: &mut Value, (at, change): &(prop::sample::Index, Change)) {
    let mut all = Vec::new();
    nodes(doc, &mut Vec::new(), &mut all);
    let path = all[at.index(all.len())].clone();
    match change {
        Change::Replace(v) => {
            if let Some(n) = node(doc, &path) {
                *n = v.clone();
            }
        }
        Change::CopyFrom(from) => {
            let src = node(doc, &all[from.index(all.len())]).map(|v| v.clone());
            if let (Some(src), Some(n)) = (src, node(doc, &path)) {
                *n = src;
            }
        }
        Change::AddKey(k, v) => match node(doc, &path) {
            Some(Value::Mapping(m)) => {
                m.insert(Value::from(k.as_str()), v.clone());
            }
            Some(Value::Sequence(s)) => s.push(v.clone()),
            _ => {}
        },
        Change::Drop | Change::Duplicate => {
            let Some((last, parent)) = path.split_last() else {
                return;
            };
            match (node(doc, parent), last, change) {
                (Some(Value::Mapping(m)), Step::Key(k), Change::Drop) => {
                    m.remove(k);
                }
                (Some(Value::Sequence(s)), Step::At(i), Change::Drop) => {
                    s.remove(*i);
                }
                (Some(Value::Sequence(s)), Step::At(i), Change::Duplicate) => {
                    let copy = s[*i].clone();
                    s.insert(*i, copy);
                }
                _ => {}
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn no_text_panics_the_loader(text in "\\PC{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn yaml_shaped_text_never_panics_and_errors_have_paths(
        lines in prop::collection::vec(
            (
                0usize..4,
                prop_oneof![
                    prop::sample::select(VOCABULARY.0.clone()),
                    Just("- ".to_string()),
                    Just("<<: *a".to_string()),
                    Just("x: &a {k: v}".to_string()),
                    Just("? [a, b]".to_string()),
                    Just("!tag".to_string()),
                ],
                prop_oneof![Just(": "), Just(":"), Just(""), Just(" - ")],
                "[ -~]{0,16}",
            ),
            0..12,
        ),
    ) {
        let text: String = lines
            .iter()
            .map(|(indent, key, sep, val)| format!("{}{key}{sep}{val}\n", "  ".repeat(*indent)))
            .collect();
        if let Err(errs) = parse(&text) {
            let doc: Value = serde_yaml::from_str(&text).unwrap_or(Value::Null);
            paths_are_named(&doc, &errs)?;
        }
    }
}

proptest! {
    #![proptest_config(config(48))]

    #[test]
    fn random_config_trees_load_or_name_their_errors(
        sections in prop::collection::vec(
            (prop_oneof![4 => prop::sample::select(SECTIONS.to_vec()), 1 => Just("zz")], tree()),
            0..6,
        ),
    ) {
        let doc = Value::Mapping(
            sections.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<Mapping>(),
        );
        load(&doc)?;
    }

    #[test]
    fn bundled_configs_with_random_changes_load_or_name_their_errors(
        base in 0..BASES.len(),
        changes in prop::collection::vec(change(), 1..4),
    ) {
        let mut doc: Value = serde_yaml::from_str(BASES[base]).expect("bundled config");
        for c in &changes {
            apply(&mut doc, c);
        }
        load(&doc)?;
    }
}

/// Inputs the properties once failed on, kept as fixed cases.
mod regressions {
    use super::*;

    /// `access_log:[` is an unknown section whose name holds a `[`: its error's path is
    /// the name as written, not cut at the `[`.
    #[test]
    fn section_name_with_a_bracket_is_its_own_path() {
        let text = "access_log:[:\n";
        let errs = parse(text).expect_err("unknown section");
        let doc: Value = serde_yaml::from_str(text).expect("YAML");
        assert!(errs.0.iter().any(|e| e.path == "access_log:["), "{errs}");
        paths_are_named(&doc, &errs).expect("every error names a section of the file");
    }
}
