//! JWT: good tokens and identity headers, the attack catalogue, JWKS availability and rotation, kid storms.

#[allow(unused_imports)]
use super::*;

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
    assert_eq!(got.all("x-consumer-id"), ["corp:alice"]);
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
        .any(|l| l["consumer"] == "corp:alice" && l["auth_method"] == "jwt"));
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
        sign(json!({"alg":"RS256","kid":"../../../../etc/passwd"}), &c), // check-paths: not a path
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
    let mut no_aud = c.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    cases.push((
        "missing aud",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &no_aud),
    ));
    let mut null_aud = c.clone();
    null_aud["aud"] = json!(null);
    cases.push((
        "aud null",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &null_aud),
    ));
    let mut no_iss = c.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    cases.push((
        "missing iss",
        sign(json!({"alg":"RS256","kid":"rsa1"}), &no_iss),
    ));
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
