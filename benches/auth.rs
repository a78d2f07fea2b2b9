//! Authentication costs: RS256 and ES256 JWT verification uncached vs served from the
//! verified-token cache, an HMAC request-signature check (parse, signing string, MAC),
//! the local HMAC replay memory's check-and-record, and an API-key lookup among 10,000
//! keys.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use moat::auth::consumers::{sha256, ConsumerStore};
use moat::auth::dates::{format_http_date, now_secs};
use moat::auth::hmac;
use moat::auth::jwk::{self, Alg};
use moat::auth::jwt::ClaimRules;
use moat::auth::provider::JwtProvider;
use moat::auth::testkit;
use moat::config::error::ConfigErrors;
use pingora_http::RequestHeader;
use serde_json::json;

fn jwt(c: &mut Criterion) {
    let (rsa, rsa_jwk) = testkit::rsa("r").expect("rsa");
    let (ec, ec_jwk) = testkit::ec("e", false).expect("ec");
    let p = JwtProvider::new(
        "bench",
        vec![Alg::RS256, Alg::ES256],
        ClaimRules {
            issuer: Some("https://issuer".into()),
            audiences: vec!["api".into()],
            leeway: 0,
        },
    );
    p.set_keys(jwk::parse_jwks(testkit::jwks(&[&rsa_jwk, &ec_jwk]).as_bytes()).expect("jwks"));
    let claims = json!({"sub": "alice", "iss": "https://issuer", "aud": "api", "exp": now_secs() + 3600, "scope": "read write"});
    for (alg, key, kid) in [("RS256", &rsa, "r"), ("ES256", &ec, "e")] {
        let t = testkit::token(key, alg, Some(kid), &claims).expect("token");
        let now = now_secs();
        c.bench_function(&format!("jwt_verify/{alg}/uncached"), |b| {
            b.iter(|| black_box(p.verify_uncached(black_box(&t), now).is_ok()))
        });
        c.bench_function(&format!("jwt_verify/{alg}/cached"), |b| {
            b.iter(|| black_box(p.verify_sync(black_box(&t), now).is_ok()))
        });
    }
}

fn hmac_verify(c: &mut Criterion) {
    let secret = b"bench-secret-0123456789abcdef";
    let body = b"{\"name\":\"moat\"}";
    let headers = vec!["X-Tenant: blue".to_string()];
    let signed = moat::auth::cli::sign(&moat::auth::cli::SignRequest {
        key_id: "svc",
        secret,
        algorithm: "hmac-sha256",
        method: "POST",
        url: "http://api.example.com/api/orders?x=1",
        headers: &headers,
        body: Some(body),
        now: now_secs(),
    })
    .expect("sign");
    let mut req = RequestHeader::build("POST", b"/api/orders?x=1", None).expect("req");
    for (k, v) in &signed {
        req.append_header(k.clone(), v.as_str()).expect("header");
    }
    let get = |name: &str| {
        signed
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let (authz, digest) = (get("Authorization"), get("Digest"));
    let _ = format_http_date(0);
    c.bench_function("hmac_verify/sha256_with_digest", |b| {
        b.iter(|| {
            let a = hmac::parse_authorization(black_box(&authz)).expect("parse");
            let line = hmac::request_line(&req);
            let s = hmac::signing_string(&a.headers, &line, |n| hmac::single_header(&req, n))
                .expect("signing string");
            let ok = hmac::verify_mac(a.alg, secret, s.as_bytes(), &a.signature)
                && hmac::digest_matches(&digest, body);
            black_box(ok)
        })
    });
}

/// The local replay memory at a steady 65,536 live signatures of one consumer: each
/// iteration checks and records one signature (an expired one is replaced).
fn replay(c: &mut Criterion) {
    use moat::auth::replay::{LocalReplay, ReplayGuard, Signature};
    let g = LocalReplay::new();
    let mut i: u64 = 0;
    c.bench_function("hmac_replay/local_first_use", |b| {
        b.iter(|| {
            i += 1;
            let mut key = [0u8; 32];
            key[..2].copy_from_slice(&(i as u16).to_le_bytes());
            let sig = Signature {
                consumer: "acme",
                key,
                ttl: 1,
                capacity: 100_000,
            };
            // A new second per 65,536 signatures: the previous round has expired.
            let now = 1_000_000 + (i >> 16) as i64;
            black_box(futures::executor::block_on(g.first_use(sig, now)))
        })
    });
}

fn api_keys(c: &mut Criterion) {
    let mut yaml = String::from("consumers:\n");
    for i in 0..1000 {
        yaml.push_str(&format!("  - id: c{i}\n    api_keys:\n"));
        for j in 0..10 {
            let h = hex::encode(sha256(format!("key-{i}-{j}").as_bytes()));
            yaml.push_str(&format!("      - {{ sha256: {h}, scopes: [read] }}\n"));
        }
    }
    let cfg: moat::config::Config = serde_yaml::from_str(&yaml).expect("yaml");
    let store = ConsumerStore::compile(&cfg, &mut ConfigErrors::default());
    let now = now_secs();
    c.bench_function("api_key_lookup/10000_keys", |b| {
        b.iter(|| black_box(store.api_key(black_box("key-777-7"), now).is_ok()))
    });
}

criterion_group!(benches, jwt, hmac_verify, replay, api_keys);
criterion_main!(benches);
