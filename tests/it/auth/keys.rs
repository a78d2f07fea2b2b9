//! API keys (missing, empty, revoked, expired, duplicated, in the query) and `moat keygen`.

#[allow(unused_imports)]
use super::*;

fn sha(s: &str) -> String {
    hex::encode(moat::util::sha256(s.as_bytes()))
}

#[test]
fn api_keys() {
    let up = Upstream::start("app");
    let good = "mk_test_good_key_0123456789abcdef0123456789";
    let expired = "mk_test_expired_key_0123456789abcdef012345";
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{up}\"] }}\nconsumers:\n  - id: acme\n    tier: business\n    api_keys:\n      - {{ sha256: {g}, scopes: [users:read] }}\n      - {{ sha256: {e}, expires: 2020-01-01T00:00:00Z }}\nroutes:\n  - name: keys\n    match: {{ path_prefix: /k }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key], hide_credentials: true }}\n  - name: query\n    match: {{ path_prefix: /q }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key], api_key: {{ header: x-key, query: key }}, require: {{ any_scope: [users:read] }}, hide_credentials: true }}\n  - name: admin\n    match: {{ path_prefix: /admin }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [api_key], require: {{ any_scope: [admin] }} }}\n",
        up = up.address(),
        g = sha(good),
        e = sha(expired)
    );
    let m = Moat::start(&body);
    let r = get(&m, "/k", &[("x-api-key", good)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(got.all("x-consumer-id"), ["acme"]);
    assert_eq!(got.all("x-auth-method"), ["api_key"]);
    assert!(got.header("x-api-key").is_none());
    assert_eq!(
        get(&m, "/k", &[("Authorization", &format!("ApiKey {good}"))]).status,
        200
    );
    assert!(up.last().header("authorization").is_none());
    for (what, headers) in [
        ("missing", vec![]),
        ("empty", vec![("x-api-key", "")]),
        (
            "revoked",
            vec![("x-api-key", "mk_test_revoked_not_in_config")],
        ),
        ("expired", vec![("x-api-key", expired)]),
        ("duplicated", vec![("x-api-key", good), ("x-api-key", good)]),
        (
            "header and authorization",
            vec![("x-api-key", good), ("Authorization", "ApiKey other")],
        ),
        (
            "two authorization",
            vec![("Authorization", "ApiKey a"), ("Authorization", "ApiKey b")],
        ),
    ] {
        assert_refused(&get(&m, "/k", &headers), 401, what);
    }
    assert_refused(
        &get(
            &m,
            &format!("/k?key={good}&api_key={good}&x-api-key={good}"),
            &[],
        ),
        401,
        "query not allowed",
    );
    // The opt-in route takes the query form and strips it.
    assert_eq!(get(&m, &format!("/q/x?a=1&key={good}"), &[]).status, 200);
    assert_eq!(up.last().target, "/q/x?a=1");
    assert_eq!(get(&m, "/q/x", &[("x-key", good)]).status, 200);
    assert_refused(
        &get(&m, &format!("/q/x?key={good}&key={good}"), &[]),
        401,
        "query twice",
    );
    // Scopes both ways.
    assert_refused(
        &get(&m, "/admin", &[("x-api-key", good)]),
        403,
        "no admin scope",
    );
    // Never logged.
    std::thread::sleep(Duration::from_millis(300));
    for text in [m.access_log(), m.logs()] {
        assert!(!text.contains("mk_test_"), "API key in logs:\n{text}");
    }
    let n =
        m.metric("moat_auth_failures_total{method=\"api_key\",reason=\"expired\",route=\"keys\"}");
    assert_eq!(n, Some(1.0));
}

#[test]
fn keygen_prints_key_and_hash() {
    let out = std::process::Command::new(bin())
        .args(["keygen", "--prefix", "mk_live_"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("key:"))
        .unwrap()
        .trim();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256:"))
        .unwrap()
        .trim();
    assert!(key.starts_with("mk_live_") && key.len() >= 8 + 43);
    assert_eq!(hash, sha(key));
}
