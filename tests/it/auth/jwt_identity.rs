//! Identity namespaces: a JWT's consumer is `PROVIDER:VALUE` (`corp:alice`), so a token
//! whose claim equals a configured consumer's id does not borrow that consumer's tier,
//! rate-limit bucket or `X-Consumer-ID`, and two providers never share a consumer; with
//! `consumer_map: consumers` the claim must name a configured consumer that lists the
//! provider in its `jwt_providers`, and then is it.

#[allow(unused_imports)]
use super::*;

const ALICE_KEY: &str = "mk_test_alice_key_0123456789abcdef0123456789";

fn sha(s: &str) -> String {
    hex::encode(moat::util::sha256(s.as_bytes()))
}

/// moat with consumers `alice` (tier gold, an API key), `acme` (tier business), each with
/// `listed` added, and `svc` (tier platinum, nothing added), and providers `corp` and
/// `other` over the same keys; `other_extra` is added to `other`.
fn setup(other_extra: &str, listed: &str) -> (Upstream, Moat, SigningKey) {
    let up = Upstream::start("app");
    let dir = temp_dir("jwks-ns");
    let (rsa, jwk) = testkit::rsa("k1").unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, testkit::jwks(&[&jwk])).unwrap();
    let provider = |name: &str, extra: &str| {
        format!(
            "  {name}:\n    issuer: https://issuer.test\n    audiences: [api]\n    jwks_file: {}\n    algorithms: [RS256]\n{extra}",
            jwks.display()
        )
    };
    let headers = "      - headers: { request: { set: { x-who: \"{{consumer.id}}\", x-tier: \"t={{consumer.tier}}\" } } }\n";
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{up}\"] }}\nconsumers:\n  - id: alice\n    tier: gold\n    api_keys: [{{ sha256: {key} }}]\n{listed}  - id: acme\n    tier: business\n{listed}  - id: svc\n    tier: platinum\njwt_providers:\n{corp}{other}routes:\n  - name: both\n    match: {{ path_prefix: /both }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [jwt, api_key], jwt: {{ provider: corp }} }}\n      - rate_limit: {{ key: consumer, rate: 2/m, tiers: {{ gold: 3/m }} }}\n{headers}  - name: other\n    match: {{ path_prefix: /other }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [jwt], jwt: {{ provider: other }} }}\n      - rate_limit: {{ key: consumer, rate: 2/m, tiers: {{ gold: 3/m }} }}\n{headers}",
        up = up.address(),
        key = sha(ALICE_KEY),
        corp = provider("corp", ""),
        other = provider("other", other_extra),
    );
    (up, Moat::start(&body), rsa)
}

fn token(key: &SigningKey, sub: &str) -> String {
    let c =
        json!({"sub": sub, "iss": "https://issuer.test", "aud": "api", "exp": now_secs() + 300});
    bearer(&testkit::token(key, "RS256", Some("k1"), &c).unwrap())
}

#[test]
fn jwt_consumers_are_namespaced_by_provider() {
    let (up, m, key) = setup("", "");
    let alice = token(&key, "alice");
    let r = get(&m, "/both/x", &[("Authorization", &alice)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(got.all("x-consumer-id"), ["corp:alice"]);
    assert_eq!(got.all("x-who"), ["corp:alice"], "{{consumer.id}}");
    assert_eq!(
        got.all("x-tier"),
        ["t="],
        "no tier borrowed from consumer alice"
    );
    // The API-key consumer `alice` (gold: 3/m) and the token's `corp:alice` (2/m) count
    // apart: the key's three requests leave the token's bucket untouched.
    for i in 0..2 {
        let r = get(&m, "/both/k", &[("x-api-key", ALICE_KEY)]);
        assert_eq!(r.status, 200, "key request {i}: {}", r.text());
        assert_eq!(up.last().all("x-consumer-id"), ["alice"]);
    }
    assert_eq!(get(&m, "/both/k", &[("x-api-key", ALICE_KEY)]).status, 200);
    assert_eq!(get(&m, "/both/k", &[("x-api-key", ALICE_KEY)]).status, 429);
    assert_eq!(get(&m, "/both/x", &[("Authorization", &alice)]).status, 200);
    assert_eq!(get(&m, "/both/x", &[("Authorization", &alice)]).status, 429);
    // Another provider's `alice` is yet another consumer, with its own bucket.
    let r = get(&m, "/other/x", &[("Authorization", &alice)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().all("x-consumer-id"), ["other:alice"]);
    // The access log names the namespaced consumer.
    let lines = m.access_lines(8);
    assert!(
        lines
            .iter()
            .any(|l| l["consumer"] == "corp:alice" && l["auth_method"] == "jwt"),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["consumer"] == "other:alice"));
    assert!(lines
        .iter()
        .any(|l| l["consumer"] == "alice" && l["auth_method"] == "api_key"));
}

#[test]
fn consumer_map_consumers_binds_the_claim_to_a_configured_consumer() {
    let (up, m, key) = setup(
        "    consumer_map: consumers\n",
        "    jwt_providers: [other]\n",
    );
    // The claim names a configured consumer: the request IS that consumer.
    let r = get(&m, "/other/x", &[("Authorization", &token(&key, "acme"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(got.all("x-consumer-id"), ["acme"]);
    assert_eq!(got.all("x-who"), ["acme"]);
    assert_eq!(got.all("x-tier"), ["t=business"]);
    // Its tier's limit applies (gold: 3/m for alice), in alice's own bucket.
    let alice = token(&key, "alice");
    for _ in 0..3 {
        assert_eq!(
            get(&m, "/other/a", &[("Authorization", &alice)]).status,
            200
        );
    }
    assert_eq!(
        get(&m, "/other/a", &[("Authorization", &alice)]).status,
        429
    );
    // A claim naming no configured consumer: 401.
    let r = get(
        &m,
        "/other/x",
        &[("Authorization", &token(&key, "mallory"))],
    );
    assert_refused(&r, 401, "unknown consumer");
    // Regression: a claim naming any configured consumer took its identity, a service
    // account's included. `svc` does not list the provider: its identity is not for
    // tokens to take.
    let r = get(&m, "/other/x", &[("Authorization", &token(&key, "svc"))]);
    assert_refused(&r, 401, "a consumer that does not list the provider");
    assert_eq!(
        m.metric(
            "moat_auth_failures_total{method=\"jwt\",reason=\"unknown_consumer\",route=\"other\"}"
        ),
        Some(2.0)
    );
    // The namespaced provider on the same instance still namespaces.
    let r = get(&m, "/both/x", &[("Authorization", &token(&key, "acme"))]);
    assert_eq!(r.status, 200);
    assert_eq!(up.last().all("x-consumer-id"), ["corp:acme"]);
}

#[test]
fn a_claim_that_cannot_be_a_consumer_id_is_refused() {
    // Regression: a claim of any length became the consumer id (X-Consumer-ID, logs,
    // limiter keys).
    let (up, m, key) = setup("", "");
    for sub in ["x".repeat(300), "a\u{1}b".to_string()] {
        let r = get(&m, "/both/x", &[("Authorization", &token(&key, &sub))]);
        assert_refused(&r, 401, "claim refused");
    }
    assert_eq!(
        m.metric("moat_auth_failures_total{method=\"jwt\",reason=\"claims\",route=\"both\"}"),
        Some(2.0)
    );
    // The longest accepted one reaches the upstream as X-Consumer-ID.
    let sub = "y".repeat(256);
    let r = get(&m, "/both/x", &[("Authorization", &token(&key, &sub))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().all("x-consumer-id"), [format!("corp:{sub}")]);
}
