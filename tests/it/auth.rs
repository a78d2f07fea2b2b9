//! Authentication and authorization through the real binary: the JWT attack catalogue,
//! JWKS fetching (down at start, down later, rotation, kid storms), API keys, HMAC
//! signing (tampering, skew, replay, digest, the Python interop fixture, body forwarding),
//! scopes and the IP filter. Every refusal must be 401/403 (or 503 for no keys), never 500,
//! and no credential may appear in logs or bodies.

use crate::harness::moat::{bin, temp_dir};
use crate::harness::{request, wait_until, Behavior, Moat, Response, Upstream};
use moat::auth::dates::{format_http_date, now_secs};
use moat::auth::testkit::{self, b64, SigningKey};
use serde_json::json;
use std::time::Duration;

fn claims(exp_in: i64, scope: &str) -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://issuer.test", "aud": "api", "exp": now_secs() + exp_in, "scope": scope})
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn get(m: &Moat, path: &str, headers: &[(&str, &str)]) -> Response {
    request(m.port, "GET", path, headers, b"")
}

fn assert_refused(r: &Response, status: u16, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let v = r.json();
    let code = match status {
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        503 => "SERVICE_UNAVAILABLE",
        413 => "PAYLOAD_TOO_LARGE",
        _ => "",
    };
    assert_eq!(v["error"]["code"], code, "{what}");
    if status == 401 {
        assert!(
            r.header("www-authenticate").is_some(),
            "{what}: no WWW-Authenticate"
        );
    }
}

struct JwtSetup {
    up: Upstream,
    trap: Upstream,
    m: Moat,
    rsa: SigningKey,
    ec: SigningKey,
}

fn jwt_setup() -> JwtSetup {
    let up = Upstream::start("app");
    let trap = Upstream::start("trap");
    let dir = temp_dir("jwks");
    let (rsa, rsa_jwk) = testkit::rsa("rsa1").unwrap();
    let (ec, ec_jwk) = testkit::ec("ec1", false).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, testkit::jwks(&[&rsa_jwk, &ec_jwk])).unwrap();
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{up}\"] }}\njwt_providers:\n  corp:\n    issuer: https://issuer.test\n    audiences: [api]\n    jwks_file: {jwks}\n    algorithms: [RS256, ES256]\n    leeway: 30s\nroutes:\n  - name: jwt\n    match: {{ path_prefix: /jwt }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [jwt], jwt: {{ provider: corp, token_from: [header, \"query:access_token\", \"cookie:session\"] }}, hide_credentials: true }}\n  - name: admin\n    match: {{ path_prefix: /admin }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [jwt], jwt: {{ provider: corp }}, require: {{ any_scope: [admin, root] }} }}\n  - name: both\n    match: {{ path_prefix: /both }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [jwt], jwt: {{ provider: corp }}, require: {{ all_scopes: [read, write], claims: {{ sub: alice }} }} }}\n",
        up = up.address(),
        jwks = jwks.display()
    );
    let m = Moat::start(&body);
    JwtSetup {
        up,
        trap,
        m,
        rsa,
        ec,
    }
}

#[test]
fn jwt_good_tokens_and_identity_headers() {
    let s = jwt_setup();
    let t = testkit::token(&s.rsa, "RS256", Some("rsa1"), &claims(300, "read")).unwrap();
    let r = get(
        &s.m,
        "/jwt/x",
        &[("Authorization", &bearer(&t)), ("X-Consumer-ID", "admin")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = s.up.last();
    assert_eq!(got.all("x-consumer-id"), ["alice"]);
    assert_eq!(got.all("x-auth-method"), ["jwt"]);
    assert!(
        got.header("authorization").is_none(),
        "credential forwarded"
    );
    // Query and cookie forms, hidden from the upstream.
    let r = get(&s.m, &format!("/jwt/q?a=1&access_token={t}&b=2"), &[]);
    assert_eq!(r.status, 200);
    assert_eq!(s.up.last().target, "/jwt/q?a=1&b=2");
    let r = get(
        &s.m,
        "/jwt/c",
        &[("Cookie", &format!("theme=dark; session={t}"))],
    );
    assert_eq!(r.status, 200);
    assert_eq!(s.up.last().header("cookie"), Some("theme=dark"));
    let e = testkit::token(&s.ec, "ES256", Some("ec1"), &claims(300, "read")).unwrap();
    assert_eq!(
        get(&s.m, "/jwt/e", &[("Authorization", &bearer(&e))]).status,
        200
    );
    // Without kid.
    let nk = testkit::token(&s.ec, "ES256", None, &claims(300, "read")).unwrap();
    assert_eq!(
        get(&s.m, "/jwt/e", &[("Authorization", &bearer(&nk))]).status,
        200
    );
    // Two credentials are ambiguous.
    let r = get(
        &s.m,
        &format!("/jwt/q?access_token={t}"),
        &[("Authorization", &bearer(&t))],
    );
    assert_refused(&r, 401, "two tokens");
    // Scopes both ways.
    assert_refused(
        &get(&s.m, "/admin", &[("Authorization", &bearer(&t))]),
        403,
        "no admin scope",
    );
    let adm = testkit::token(&s.rsa, "RS256", Some("rsa1"), &claims(300, "read root")).unwrap();
    assert_eq!(
        get(&s.m, "/admin", &[("Authorization", &bearer(&adm))]).status,
        200
    );
    let rw = testkit::token(&s.rsa, "RS256", Some("rsa1"), &claims(300, "write read")).unwrap();
    assert_eq!(
        get(&s.m, "/both", &[("Authorization", &bearer(&rw))]).status,
        200
    );
    assert_refused(
        &get(&s.m, "/both", &[("Authorization", &bearer(&t))]),
        403,
        "all_scopes",
    );
    let mut bob = claims(300, "read write");
    bob["sub"] = json!("bob");
    let bob = testkit::token(&s.rsa, "RS256", Some("rsa1"), &bob).unwrap();
    assert_refused(
        &get(&s.m, "/both", &[("Authorization", &bearer(&bob))]),
        403,
        "claims",
    );
    // Access log: consumer and method, never the token.
    let lines = s.m.access_lines(10);
    assert!(lines
        .iter()
        .any(|l| l["consumer"] == "alice" && l["auth_method"] == "jwt"));
    for text in [s.m.access_log(), s.m.logs()] {
        assert!(
            !text.contains(&t[..40]) && !text.contains(&adm[..40]),
            "token in logs"
        );
    }
}

#[test]
fn jwt_attack_catalogue() {
    let s = jwt_setup();
    let now = now_secs();
    let c = claims(300, "read");
    let body = c.to_string();
    let trap = format!("http://{}/jwks", s.trap.address());
    let sign = |h: serde_json::Value, c: &serde_json::Value| testkit::sign(&s.rsa, &h, c).unwrap();
    let (attacker, attacker_jwk) = testkit::rsa("rsa1").unwrap();
    let rsa_pem = match &s.rsa {
        SigningKey::Private(pk) => pk.public_key_to_pem().unwrap(),
        _ => unreachable!(),
    };
    let good = testkit::token(&s.rsa, "RS256", Some("rsa1"), &c).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let ec_good = testkit::token(&s.ec, "ES256", Some("ec1"), &c).unwrap();
    let ec_input = ec_good.rsplit_once('.').unwrap().0.to_string();
    let mut cases: Vec<(&str, String)> = Vec::new();
    for alg in ["none", "None", "nOnE"] {
        cases.push((
            "alg none",
            testkit::raw(
                &format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}"),
                &body,
                b"",
            ),
        ));
    }
    cases.push(("empty signature", format!("{}.{}.", parts[0], parts[1])));
    cases.push((
        "HS256 with the RSA public key",
        testkit::token(&SigningKey::Secret(rsa_pem), "HS256", Some("rsa1"), &c).unwrap(),
    ));
    cases.push((
        "alg outside allowlist",
        testkit::token(&s.rsa, "PS256", Some("rsa1"), &c).unwrap(),
    ));
    cases.push((
        "RS512 outside allowlist",
        testkit::token(&s.rsa, "RS512", Some("rsa1"), &c).unwrap(),
    ));
    cases.push(("kid unknown", sign(json!({"alg":"RS256","kid":"nope"}), &c)));
    cases.push((
        "kid path",
        sign(json!({"alg":"RS256","kid":"../../../../etc/passwd"}), &c),
    ));
    cases.push((
        "kid 10KB",
        sign(json!({"alg":"RS256","kid":"A".repeat(10_240)}), &c),
    ));
    cases.push(("kid number", sign(json!({"alg":"RS256","kid":12}), &c)));
    cases.push(("kid object", sign(json!({"alg":"RS256","kid":{"a":1}}), &c)));
    for (name, h) in [
        ("jku", json!({"alg":"RS256","kid":"rsa1","jku": trap})),
        ("x5u", json!({"alg":"RS256","kid":"rsa1","x5u": trap})),
        (
            "jwk",
            json!({"alg":"RS256","kid":"rsa1","jwk": attacker_jwk}),
        ),
        ("x5c", json!({"alg":"RS256","kid":"rsa1","x5c": ["MIIB"]})),
    ] {
        cases.push((name, testkit::sign(&attacker, &h, &c).unwrap()));
    }
    cases.push((
        "unknown crit",
        sign(
            json!({"alg":"RS256","kid":"rsa1","crit":["x-moat"],"x-moat":1}),
            &c,
        ),
    ));
    let mut exp_out = c.clone();
    exp_out["exp"] = json!(now - 60);
    cases.push((
        "exp outside leeway",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &exp_out),
    ));
    let mut nbf = c.clone();
    nbf["nbf"] = json!(now + 600);
    cases.push((
        "nbf future",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &nbf),
    ));
    let mut exp_str = c.clone();
    exp_str["exp"] = json!((now + 300).to_string());
    cases.push((
        "exp string",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &exp_str),
    ));
    let mut no_exp = c.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    cases.push((
        "missing exp",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &no_exp),
    ));
    let mut iss = c.clone();
    iss["iss"] = json!("https://evil.test");
    cases.push(("wrong iss", sign(json!({"alg":"RS256","kid":"rsa1"}), &iss)));
    let mut aud = c.clone();
    aud["aud"] = json!(["web"]);
    cases.push(("wrong aud", sign(json!({"alg":"RS256","kid":"rsa1"}), &aud)));
    cases.push(("two segments", format!("{}.{}", parts[0], parts[1])));
    cases.push(("four segments", format!("{good}.{}", parts[2])));
    cases.push((
        "bad base64",
        format!("{}.{}*.{}", parts[0], parts[1], parts[2]),
    ));
    let dup_payload = format!("{{\"sub\":\"bob\",\"sub\":\"alice\",\"iss\":\"https://issuer.test\",\"aud\":\"api\",\"exp\":{}}}", now + 300);
    let dup_input = format!(
        "{}.{}",
        b64(b"{\"alg\":\"RS256\",\"kid\":\"rsa1\"}"),
        b64(dup_payload.as_bytes())
    );
    let dup_sig = testkit::sign_bytes(&s.rsa, "RS256", dup_input.as_bytes()).unwrap();
    cases.push(("duplicate keys", format!("{dup_input}.{}", b64(&dup_sig))));
    cases.push((
        "oversized",
        format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2]),
    ));
    cases.push(("ecdsa r=s=0", format!("{ec_input}.{}", b64(&[0u8; 64]))));
    cases.push(("ecdsa short", format!("{ec_input}.{}", b64(&[1u8; 63]))));
    cases.push(("ecdsa long", format!("{ec_input}.{}", b64(&[1u8; 72]))));
    cases.push(("ecdsa r=n", format!("{ec_input}.{}", b64(&[0xffu8; 64]))));
    cases.push(("garbage", "not-a-token".into()));
    let before = s.up.traffic().len();
    for (what, tok) in &cases {
        let r = get(&s.m, "/jwt/attack", &[("Authorization", &bearer(tok))]);
        assert_refused(&r, 401, what);
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        assert!(
            !r.text().contains(&tok[..tok.len().min(30)]) || tok.len() < 12,
            "{what}: token echoed"
        );
    }
    // Missing credential: a challenge, no error detail.
    let r = get(&s.m, "/jwt/attack", &[]);
    assert_refused(&r, 401, "missing");
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"moat\""));
    // exp just inside the leeway is accepted.
    let mut inside = c.clone();
    inside["exp"] = json!(now_secs() - 20);
    let t = sign(json!({"alg":"RS256","kid":"rsa1"}), &inside);
    assert_eq!(
        get(&s.m, "/jwt/ok", &[("Authorization", &bearer(&t))]).status,
        200
    );
    assert_eq!(
        s.up.traffic().len(),
        before + 1,
        "a refused request reached the upstream"
    );
    assert_eq!(s.trap.requests().len(), 0, "a jku/x5u URL was fetched");
    let failures =
        s.m.metric("moat_auth_failures_total{method=\"jwt\",reason=\"algorithm\",route=\"jwt\"}");
    assert!(failures.unwrap_or(0.0) >= 5.0, "{failures:?}");
}

fn jwks_route(url: &str, cooldown: &str, up: &Upstream) -> String {
    format!(
        "upstreams:\n  app: {{ targets: [\"{}\"] }}\njwt_providers:\n  idp:\n    jwks_url: {url}\n    algorithms: [RS256]\n    jwks_cooldown: {cooldown}\n    jwks_refresh: 1h\nroutes:\n  - name: r\n    match: {{ path_prefix: / }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [jwt], jwt: {{ provider: idp }} }}\n",
        up.address()
    )
}

fn jwks_behavior(keys: &[&serde_json::Value]) -> Behavior {
    Behavior {
        body: testkit::jwks(keys).into_bytes(),
        ..Behavior::default()
    }
}

#[test]
fn jwks_down_at_start_then_up_then_down_then_rotated() {
    let up = Upstream::start("app");
    let port = crate::harness::free_port();
    let m = Moat::start(&jwks_route(
        &format!("http://127.0.0.1:{port}/certs"),
        "1s",
        &up,
    ));
    let (k1, j1) = testkit::rsa("k1").unwrap();
    let t1 = testkit::token(&k1, "RS256", Some("k1"), &claims(300, "")).unwrap();
    // Down at start: fail closed with 503, never open.
    let r = get(&m, "/", &[("Authorization", &bearer(&t1))]);
    assert_refused(&r, 503, "no key set");
    assert_eq!(up.traffic().len(), 0);
    // The JWKS server comes up; after the cooldown the next request fetches.
    let idp = Upstream::start_on("idp", port);
    idp.set(jwks_behavior(&[&j1]));
    std::thread::sleep(Duration::from_millis(1100));
    let ok = wait_until(Duration::from_secs(5), || {
        get(&m, "/", &[("Authorization", &bearer(&t1))]).status == 200
    });
    assert!(ok, "JWKS never loaded: {}", m.logs());
    // Rotation: a new kid is accepted after one refetch.
    let (k2, j2) = testkit::rsa("k2").unwrap();
    idp.set(jwks_behavior(&[&j1, &j2]));
    std::thread::sleep(Duration::from_millis(1100));
    let before = idp.requests().len();
    let t2 = testkit::token(&k2, "RS256", Some("k2"), &claims(300, "")).unwrap();
    assert_eq!(get(&m, "/", &[("Authorization", &bearer(&t2))]).status, 200);
    assert_eq!(idp.requests().len(), before + 1, "exactly one refetch");
    // Down after a good fetch: the last good set keeps serving.
    drop(idp);
    std::thread::sleep(Duration::from_millis(1100));
    let (k3, _) = testkit::rsa("k3").unwrap();
    let t3 = testkit::token(&k3, "RS256", Some("k3"), &claims(300, "")).unwrap();
    assert_refused(
        &get(&m, "/", &[("Authorization", &bearer(&t3))]),
        401,
        "unknown kid, server down",
    );
    let fresh = testkit::token(&k1, "RS256", Some("k1"), &claims(301, "")).unwrap();
    assert_eq!(
        get(&m, "/", &[("Authorization", &bearer(&fresh))]).status,
        200
    );
    assert_eq!(get(&m, "/", &[("Authorization", &bearer(&t2))]).status, 200);
    assert!(m.logs().contains("JWKS fetch failed"), "{}", m.logs());
}

#[test]
fn kid_storm_costs_one_fetch_per_cooldown() {
    let up = Upstream::start("app");
    let idp = Upstream::start("idp");
    let (k1, j1) = testkit::rsa("k1").unwrap();
    idp.set(jwks_behavior(&[&j1]));
    let url = format!("http://{}/certs", idp.address());
    let m = Moat::start(&jwks_route(&url, "30s", &up));
    let t1 = testkit::token(&k1, "RS256", Some("k1"), &claims(300, "")).unwrap();
    assert_eq!(get(&m, "/", &[("Authorization", &bearer(&t1))]).status, 200);
    let after_first = idp.requests().len();
    assert!(after_first <= 2, "{after_first}");
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let port = m.port;
            let k = k1.private_pem();
            std::thread::spawn(move || {
                let key =
                    SigningKey::Private(openssl::pkey::PKey::private_key_from_pem(&k).unwrap());
                for i in 0..25 {
                    let kid = format!("random-{t}-{i}-{}", rand_kid());
                    let tok = testkit::token(&key, "RS256", Some(&kid), &claims(300, "")).unwrap();
                    let r = request(port, "GET", "/", &[("Authorization", &bearer(&tok))], b"");
                    assert_eq!(r.status, 401);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let fetches = idp.requests().len() - after_first;
    assert!(
        fetches <= 1,
        "{fetches} JWKS fetches for a storm of 100 random kids"
    );
    assert_eq!(up.traffic().len(), 1);
}

fn rand_kid() -> u64 {
    use std::time::SystemTime;
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

trait Pem {
    fn private_pem(&self) -> Vec<u8>;
}
impl Pem for SigningKey {
    fn private_pem(&self) -> Vec<u8> {
        match self {
            SigningKey::Private(k) => k.private_key_to_pem_pkcs8().unwrap(),
            SigningKey::Secret(s) => s.clone(),
        }
    }
}

fn sha(s: &str) -> String {
    hex::encode(moat::auth::consumers::sha256(s.as_bytes()))
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

const SECRET: &str = "s3cr3t-for-tests-only";

fn hmac_moat(up: &Upstream, skew: &str) -> Moat {
    let body = format!(
        "access_log: {{ path: stdout }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nconsumers:\n  - id: acme\n    hmac:\n      - {{ key_id: acme-svc, secret_env: MOAT_IT_HMAC }}\nroutes:\n  - name: signed\n    match: {{ path_prefix: /api }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac], hmac: {{ clock_skew: {skew}, require_digest: true, replay_window: 300s }}, hide_credentials: true }}\n  - name: loose\n    match: {{ path_prefix: /loose }}\n    upstream: app\n    plugins:\n      - auth: {{ methods: [hmac] }}\n",
        up.address()
    );
    Moat::start_with(&body, &[], &[("MOAT_IT_HMAC", SECRET)])
}

/// Headers from `moat sign` (the binary), as (name, value).
fn moat_sign(
    method: &str,
    url: &str,
    extra: &[&str],
    body: Option<&[u8]>,
    alg: &str,
) -> Vec<(String, String)> {
    let dir = temp_dir("sign");
    let mut cmd = std::process::Command::new(bin());
    cmd.args([
        "sign",
        "--key-id",
        "acme-svc",
        "--secret-env",
        "MOAT_IT_HMAC",
        "--algorithm",
        alg,
    ]);
    for h in extra {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        let f = dir.join("body");
        std::fs::write(&f, b).unwrap();
        cmd.arg("--body-file").arg(f);
    }
    let out = cmd
        .arg(method)
        .arg(url)
        .env("MOAT_IT_HMAC", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            l.split_once(": ")
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn send(m: &Moat, method: &str, path: &str, h: &[(String, String)], body: &[u8]) -> Response {
    let hs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    request(m.port, method, path, &hs, body)
}

fn replace(h: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            if k.eq_ignore_ascii_case(name) {
                (k.clone(), value.to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

#[test]
fn hmac_signed_requests_and_tampering() {
    let up = Upstream::start("app");
    let m = hmac_moat(&up, "300s");
    let body: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let h = moat_sign(
        "POST",
        "/api/orders?x=1&y=2",
        &["X-Tenant: blue"],
        Some(&body),
        "hmac-sha256",
    );
    let r = send(&m, "POST", "/api/orders?x=1&y=2", &h, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.last();
    assert_eq!(got.body, body, "the signed body must arrive intact");
    assert_eq!(got.all("x-consumer-id"), ["acme"]);
    assert_eq!(got.all("x-auth-method"), ["hmac"]);
    assert!(got.header("authorization").is_none());
    // Replay of the same signed request.
    assert_refused(
        &send(&m, "POST", "/api/orders?x=1&y=2", &h, &body),
        401,
        "replay",
    );
    // A second signature (a different signed nonce: the same second would sign the same).
    let h2 = moat_sign(
        "POST",
        "/api/orders?x=1&y=2",
        &["X-Tenant: blue", "X-Nonce: 2"],
        Some(&body),
        "hmac-sha256",
    );
    // Tampering: method, path, query, each signed header, one body byte.
    assert_refused(
        &send(&m, "PUT", "/api/orders?x=1&y=2", &h2, &body),
        401,
        "method",
    );
    assert_refused(
        &send(&m, "POST", "/api/orderz?x=1&y=2", &h2, &body),
        401,
        "path",
    );
    assert_refused(
        &send(&m, "POST", "/api/orders?x=1&y=3", &h2, &body),
        401,
        "query",
    );
    assert_refused(
        &send(
            &m,
            "POST",
            "/api/orders?x=1&y=2",
            &replace(&h2, "x-tenant", "red"),
            &body,
        ),
        401,
        "x-tenant",
    );
    let other_date = format_http_date(now_secs() - 5);
    assert_refused(
        &send(
            &m,
            "POST",
            "/api/orders?x=1&y=2",
            &replace(&h2, "date", &other_date),
            &body,
        ),
        401,
        "date",
    );
    let other_digest = moat::auth::hmac::digest_header(b"other");
    assert_refused(
        &send(
            &m,
            "POST",
            "/api/orders?x=1&y=2",
            &replace(&h2, "digest", &other_digest),
            &body,
        ),
        401,
        "digest header",
    );
    let mut flipped = body.clone();
    flipped[31_337] ^= 1;
    assert_refused(
        &send(&m, "POST", "/api/orders?x=1&y=2", &h2, &flipped),
        401,
        "body byte",
    );
    // The untampered request still passes after all that.
    assert_eq!(
        send(&m, "POST", "/api/orders?x=1&y=2", &h2, &body).status,
        200
    );
    // Missing digest on a body while required.
    let nd = moat_sign("POST", "/api/x", &[], None, "hmac-sha256");
    assert_refused(&send(&m, "POST", "/api/x", &nd, b"abc"), 401, "no digest");
    // Algorithms: sha384/512 accepted, sha1 refused.
    for alg in ["hmac-sha384", "hmac-sha512"] {
        let h = moat_sign("GET", "/api/g", &[], None, alg);
        assert_eq!(send(&m, "GET", "/api/g", &h, b"").status, 200, "{alg}");
    }
    let h = moat_sign("GET", "/api/g", &[], None, "hmac-sha256");
    let sha1 = replace(
        &h,
        "authorization",
        &h.iter()
            .find(|(k, _)| k == "Authorization")
            .unwrap()
            .1
            .replace("hmac-sha256", "hmac-sha1"),
    );
    assert_refused(&send(&m, "GET", "/api/g", &sha1, b""), 401, "sha1");
    // Date outside the skew, and date not signed.
    let old = format_http_date(now_secs() - 400);
    let sig = sign_manual(
        "GET /api/g HTTP/1.1",
        &[("date", &old)],
        "date request-line",
    );
    assert_refused(
        &send(
            &m,
            "GET",
            "/api/g",
            &[("Date".into(), old.clone()), ("Authorization".into(), sig)],
            b"",
        ),
        401,
        "skew",
    );
    let now = format_http_date(now_secs());
    let sig = sign_manual("GET /api/g HTTP/1.1", &[], "request-line");
    assert_refused(
        &send(
            &m,
            "GET",
            "/api/g",
            &[("Date".into(), now.clone()), ("Authorization".into(), sig)],
            b"",
        ),
        401,
        "date unsigned",
    );
    let sig = sign_manual("", &[("date", &now)], "date");
    assert_refused(
        &send(
            &m,
            "GET",
            "/api/g",
            &[("Date".into(), now), ("Authorization".into(), sig)],
            b"",
        ),
        401,
        "request-line unsigned",
    );
    // Oversized signed body: 413, nothing forwarded.
    let big = vec![b'a'; 70_000];
    let h = moat_sign("POST", "/api/big", &[], Some(&big), "hmac-sha256");
    let before = up.traffic().len();
    assert_refused(&send(&m, "POST", "/api/big", &h, &big), 413, "big body");
    assert_eq!(up.traffic().len(), before);
    for text in [m.access_log(), m.logs()] {
        assert!(
            !text.contains(SECRET) && !text.contains("signature="),
            "secret in logs"
        );
    }
    let n =
        m.metric("moat_auth_failures_total{method=\"hmac\",reason=\"replay\",route=\"signed\"}");
    assert_eq!(n, Some(1.0));
}

fn sign_manual(request_line: &str, headers: &[(&str, &str)], list: &str) -> String {
    let mut parts = Vec::new();
    for n in list.split(' ') {
        if n == "request-line" {
            parts.push(request_line.to_string());
        } else {
            let v = headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| *v)
                .unwrap_or("");
            parts.push(format!("{n}: {v}"));
        }
    }
    let mac = moat::auth::hmac::compute(
        moat::auth::hmac::HmacAlg::Sha256,
        SECRET.as_bytes(),
        parts.join("\n").as_bytes(),
    )
    .unwrap();
    use base64::Engine;
    format!(
        "hmac username=\"acme-svc\", algorithm=\"hmac-sha256\", headers=\"{list}\", signature=\"{}\"",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

#[test]
fn hmac_python_reference_fixture_is_accepted() {
    let up = Upstream::start("app");
    // The fixture's date is fixed (2024-11-23), so this instance allows a wide skew.
    let m = hmac_moat(&up, "3650d");
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/hmac_reference.expected"
    ))
    .unwrap();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}: ")))
            .unwrap()
            .to_string()
    };
    let h = vec![
        ("Date".to_string(), get("date")),
        ("Digest".to_string(), get("digest")),
        ("X-Tenant".to_string(), get("x-tenant")),
        ("Authorization".to_string(), get("authorization")),
    ];
    let body = b"{\"name\":\"moat\"}";
    // Re-run the Python script when python3 is available: its output must match the fixture.
    if let Ok(out) = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hmac_reference.py"
        ))
        .output()
    {
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), text);
        }
    }
    let r = send(&m, "POST", "/api/users?limit=10&q=a%20b", &h, body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().body, body);
    assert_refused(
        &send(&m, "POST", "/api/users?limit=10&q=a%20b", &h, body),
        401,
        "fixture replay",
    );
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
