//! ip_filter both ways.

#[allow(unused_imports)]
use super::*;

#[test]
fn ip_filter_both_ways() {
    let up = Upstream::start("app");
    let body = format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: local\n    match: {{ path_prefix: /local }}\n    upstream: app\n    plugins:\n      - ip_filter: {{ allow: [127.0.0.0/8] }}\n  - name: deny\n    match: {{ path_prefix: /deny }}\n    upstream: app\n    plugins:\n      - ip_filter: {{ deny: [127.0.0.1/32] }}\n  - name: v6\n    match: {{ path_prefix: /v6 }}\n    upstream: app\n    plugins:\n      - ip_filter: {{ allow: [\"2001:db8::/32\"], deny: [\"2001:db8:bad::/48\"] }}\n",
        up.address()
    );
    let m = Moat::start_with(&body, &["127.0.0.0/8"], &[]);
    assert_eq!(get(&m, "/local", &[]).status, 200);
    assert_refused(&get(&m, "/deny", &[]), 403, "denied");
    assert_eq!(
        get(&m, "/deny", &[("X-Forwarded-For", "198.51.100.7")]).status,
        200
    );
    assert_refused(
        &get(&m, "/local", &[("X-Forwarded-For", "198.51.100.7")]),
        403,
        "not allowed",
    );
    assert_eq!(
        get(&m, "/v6", &[("X-Forwarded-For", "2001:db8::1")]).status,
        200
    );
    assert_refused(
        &get(&m, "/v6", &[("X-Forwarded-For", "2001:db8:bad::1")]),
        403,
        "v6 deny",
    );
    assert_refused(&get(&m, "/v6", &[]), 403, "v4 on a v6 allowlist");
}
