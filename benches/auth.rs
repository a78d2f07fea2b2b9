//! Authentication costs: RS256 and ES256 JWT verification uncached vs served from the
//! verified-token cache, an HMAC request-signature check (parse, signing string, MAC),
//! the local HMAC replay memory (steady, full, contended, swept), and an API-key lookup
//! among 10,000 keys.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use moat::auth::consumers::ConsumerStore;
use moat::auth::dates::{format_http_date, now_secs};
use moat::auth::hmac;
use moat::auth::jwk::{self, Alg};
use moat::auth::jwt::ClaimRules;
use moat::auth::provider::JwtProvider;
use moat::auth::testkit;
use moat::config::error::ConfigErrors;
use moat::util::sha256;
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
    let signed = moat::auth::tools::sign(&moat::auth::tools::SignRequest {
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

/// The local replay memory's check-and-record (`ReplaySet::record`, what a request pays):
/// - `steady`: one credential holding ~65,536 live signatures, each new one recorded as
///   one expires (the expired one leaves on that same call: a heap pop and a map removal);
/// - `full`: a credential at its capacity, every signature refused (503) without a sweep;
/// - `contended`: `steady` while another thread records into the same credential's set
///   as fast as it can (the set's lock is the only one taken);
/// - `sweep_100k`: what the background sweep pays for one idle set whose 100,000
///   signatures all expired (each one removed, then the room given back).
fn replay(c: &mut Criterion) {
    use moat::auth::replay::{LocalReplay, ReplaySet, Signature, Use};
    use moat::config::model::ReplayOnRedisError;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let sig = |set: &ReplaySet, i: u64, ttl: i64, capacity: usize| -> Use {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&i.to_le_bytes());
        let s = Signature {
            set,
            name: "acme-svc",
            key,
            ttl,
            capacity,
            margin: 300,
            on_redis_error: ReplayOnRedisError::Local,
        };
        // One new second per 1,024 signatures, each kept 64 s: ~65,536 live.
        set.record(&s, 1_000_000 + (i >> 10) as i64)
    };
    let memory = LocalReplay::new();
    let set = memory.set([1; 32]);
    let mut i: u64 = 0;
    for _ in 0..70_000 {
        i += 1;
        sig(&set, i, 64, 100_000);
    }
    c.bench_function("hmac_replay/steady", |b| {
        b.iter(|| {
            i += 1;
            black_box(sig(&set, i, 64, 100_000))
        })
    });
    let full = ReplaySet::default();
    for n in 0..1000 {
        sig(&full, n, 1_000_000, 1000);
    }
    let mut n: u64 = 1 << 40;
    c.bench_function("hmac_replay/full", |b| {
        b.iter(|| {
            n += 1;
            black_box(sig(&full, n, 1_000_000, 1000))
        })
    });
    let stop = Arc::new(AtomicBool::new(false));
    let other = {
        let (set, stop) = (Arc::clone(&set), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut j: u64 = 1 << 50;
            while !stop.load(Ordering::Relaxed) {
                j += 1;
                sig(&set, j, 64, 100_000);
            }
        })
    };
    c.bench_function("hmac_replay/contended", |b| {
        b.iter(|| {
            i += 1;
            black_box(sig(&set, i, 64, 100_000))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let _ = other.join();
    c.bench_function("hmac_replay/sweep_100k", |b| {
        b.iter_batched(
            || {
                let m = LocalReplay::new();
                let s = m.set([2; 32]);
                for k in 0..100_000 {
                    sig(&s, k, 1, 200_000);
                }
                (m, s)
            },
            |(m, s)| {
                m.sweep(2_000_000);
                black_box(s.len())
            },
            criterion::BatchSize::LargeInput,
        )
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
    let store = ConsumerStore::compile(
        &cfg,
        &moat::auth::replay::LocalReplay::new(),
        &mut ConfigErrors::default(),
    );
    let now = now_secs();
    c.bench_function("api_key_lookup/10000_keys", |b| {
        b.iter(|| black_box(store.api_key(black_box("key-777-7"), now).is_ok()))
    });
}

criterion_group!(benches, jwt, hmac_verify, replay, api_keys);
criterion_main!(benches);
