//! Authorization rules of an `auth` plugin (`require:`): scopes and claim values the
//! authenticated credential must carry, else 403.

use crate::config::model::RequireConfig;
use serde_json::{Map, Value};

/// Compiled `require:`.
#[derive(Debug, Clone, Default)]
pub struct Require {
    any_scope: Vec<String>,
    all_scopes: Vec<String>,
    claims: Vec<(String, String)>,
}

impl Require {
    /// From the config.
    pub fn new(c: &RequireConfig) -> Require {
        Require {
            any_scope: c.any_scope.clone(),
            all_scopes: c.all_scopes.clone(),
            claims: c
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Whether a credential with `scopes` and `claims` (JWT only) is allowed: one of
    /// `any_scope` (when set), every one of `all_scopes`, and every listed claim.
    pub fn allows(&self, scopes: &[String], claims: Option<&Map<String, Value>>) -> bool {
        let has = |s: &String| scopes.iter().any(|x| x == s);
        (self.any_scope.is_empty() || self.any_scope.iter().any(has))
            && self.all_scopes.iter().all(has)
            && self.claims.iter().all(|(k, want)| {
                claims
                    .and_then(|c| c.get(k))
                    .is_some_and(|v| claim_matches(v, want))
            })
    }
}

/// A claim equals `want` (strings, numbers and booleans by their text), or is an array
/// containing it.
pub fn claim_matches(v: &Value, want: &str) -> bool {
    match v {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(want)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_match() {
        assert!(claim_matches(&json!("admin"), "admin"));
        assert!(claim_matches(&json!(["a", "admin"]), "admin"));
        assert!(claim_matches(&json!(42), "42"));
        assert!(claim_matches(&json!(true), "true"));
        assert!(!claim_matches(&json!({"admin": 1}), "admin"));
        assert!(!claim_matches(&json!(null), "null"));
    }

    #[test]
    fn scopes_and_claims_both_ways() {
        let r = Require::new(&RequireConfig {
            any_scope: vec!["a".into(), "b".into()],
            all_scopes: vec!["c".into()],
            claims: [("tenant".to_string(), "blue".to_string())].into(),
        });
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let blue = json!({"tenant": "blue"});
        let red = json!({"tenant": "red"});
        assert!(r.allows(&s(&["b", "c"]), blue.as_object()));
        assert!(!r.allows(&s(&["c"]), blue.as_object()));
        assert!(!r.allows(&s(&["a"]), blue.as_object()));
        assert!(!r.allows(&s(&["a", "c"]), red.as_object()));
        assert!(!r.allows(&s(&["a", "c"]), None));
        assert!(Require::default().allows(&[], None));
    }
}
