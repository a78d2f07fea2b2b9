//! Unit tests of JWT verification through a provider: every algorithm, the attack
//! catalogue (alg confusion, none, crit, kid abuse, malformed tokens, claims, ECDSA
//! signature abuse) and the cache.

use super::*;
use crate::auth::dates::now_secs;
use crate::auth::testkit::{self, b64, SigningKey};
use serde_json::json;

fn provider(algs: &[Alg], jwks: &str) -> JwtProvider {
    let p = JwtProvider::new(
        "t",
        algs.to_vec(),
        ClaimRules {
            issuer: Some("https://issuer".into()),
            audiences: vec!["api".into()],
            leeway: 30,
        },
    );
    p.set_keys(jwk::parse_jwks(jwks.as_bytes()).unwrap());
    p
}

fn claims(exp_in: i64) -> serde_json::Value {
    json!({"sub": "alice", "iss": "https://issuer", "aud": "api", "exp": now_secs() + exp_in, "scope": "read write"})
}

#[test]
fn every_algorithm_verifies() {
    let (rsa, rsa_jwk) = testkit::rsa("r").unwrap();
    let (ec256, ec256_jwk) = testkit::ec("e2", false).unwrap();
    let (ec384, ec384_jwk) = testkit::ec("e3", true).unwrap();
    let (ed, ed_jwk) = testkit::ed25519("d").unwrap();
    let doc = testkit::jwks(&[&rsa_jwk, &ec256_jwk, &ec384_jwk, &ed_jwk]);
    let all = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];
    let p = provider(&all, &doc);
    let now = now_secs();
    for (alg, key, kid) in [
        ("RS256", &rsa, "r"),
        ("RS384", &rsa, "r"),
        ("RS512", &rsa, "r"),
        ("PS256", &rsa, "r"),
        ("PS384", &rsa, "r"),
        ("PS512", &rsa, "r"),
        ("ES256", &ec256, "e2"),
        ("ES384", &ec384, "e3"),
        ("EdDSA", &ed, "d"),
    ] {
        let t = testkit::token(key, alg, Some(kid), &claims(60)).unwrap();
        let v = p
            .verify_uncached(&t, now)
            .unwrap_or_else(|e| panic!("{alg}: {e:?}"));
        assert_eq!(&*v.subject, "t:alice", "namespaced by the provider");
        assert_eq!(&*v.scopes, ["read".to_string(), "write".to_string()]);
        // Without kid: the fitting keys are tried.
        let t = testkit::token(key, alg, None, &claims(60)).unwrap();
        assert!(p.verify_uncached(&t, now).is_ok(), "{alg} without kid");
        // ES256 key never verifies ES384 and the like.
        if alg == "ES256" {
            let t = testkit::token(key, "ES256", Some("e3"), &claims(60)).unwrap();
            assert_eq!(
                p.verify_uncached(&t, now).unwrap_err(),
                JwtError::BadSignature
            );
        }
    }
}

#[test]
fn consumer_is_namespaced_unless_mapped_to_consumers() {
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let mut p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let mut c = claims(60);
    c["sub"] = json!(42);
    let t = testkit::token(&rsa, "RS256", Some("r"), &c).unwrap();
    assert_eq!(&*p.verify_uncached(&t, now).unwrap().subject, "t:42");
    p.consumer_map = ConsumerMap::Consumers;
    assert_eq!(&*p.verify_uncached(&t, now).unwrap().subject, "42");
}

#[test]
fn consumer_claims_that_cannot_be_an_id_are_refused() {
    // Regression: any non-empty string was a consumer id. One with a control character
    // could not become X-Consumer-ID (the header was left out: the upstream saw an
    // authenticated request without an identity); a long one went whole into headers,
    // logs and limiter keys.
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let with_sub = |sub: serde_json::Value| {
        let mut c = claims(60);
        c["sub"] = sub;
        p.verify_uncached(&testkit::token(&rsa, "RS256", Some("r"), &c).unwrap(), now)
    };
    for bad in ["a\u{1}b", "a\r\nx-admin: 1", "del\u{7f}", "", "nul\u{0}"] {
        assert_eq!(
            with_sub(json!(bad)).unwrap_err(),
            JwtError::Claims,
            "{bad:?}"
        );
    }
    let long = "x".repeat(MAX_CONSUMER_CLAIM + 1);
    assert_eq!(with_sub(json!(long)).unwrap_err(), JwtError::Claims);
    assert!(with_sub(json!(["alice"])).is_err());
    let longest = "x".repeat(MAX_CONSUMER_CLAIM);
    for good in [longest.as_str(), "jos\u{e9}", "a b\tc"] {
        let v = with_sub(json!(good)).unwrap_or_else(|e| panic!("{good:?}: {e:?}"));
        let header = v.subject_header.expect("namespaced: a header value");
        assert_eq!(header.as_bytes(), format!("t:{good}").as_bytes());
    }
}

#[test]
fn hs256_with_secret_and_confusion_refused() {
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let p = JwtProvider::new("h", vec![Alg::HS256], ClaimRules::default());
    p.set_keys(jwk::hmac_set(secret.clone()).unwrap());
    let good = testkit::token(&SigningKey::Secret(secret), "HS256", None, &claims(60)).unwrap();
    assert!(p.verify_uncached(&good, now_secs()).is_ok());

    // HS256 signed with the RSA public key (PEM bytes as the secret) against an RS256 provider.
    let (_, jwk) = testkit::rsa("r").unwrap();
    let rs = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let pem = b"-----BEGIN PUBLIC KEY-----\nMIIB...\n-----END PUBLIC KEY-----\n".to_vec();
    let forged = testkit::token(&SigningKey::Secret(pem), "HS256", Some("r"), &claims(60)).unwrap();
    assert_eq!(
        rs.verify_uncached(&forged, now_secs()).unwrap_err(),
        JwtError::Algorithm
    );
}

#[test]
fn alg_none_and_empty_signature() {
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let body = claims(60).to_string();
    for alg in ["none", "None", "nOnE", "NONE", ""] {
        let t = testkit::raw(&format!("{{\"alg\":\"{alg}\",\"kid\":\"r\"}}"), &body, b"");
        let e = p.verify_uncached(&t, now_secs()).unwrap_err();
        assert_eq!(e, JwtError::Algorithm, "{alg}");
        let t = format!(
            "{}.{}.",
            b64(format!("{{\"alg\":\"{alg}\"}}").as_bytes()),
            b64(body.as_bytes())
        );
        assert!(p.verify_uncached(&t, now_secs()).is_err());
    }
    let good = testkit::token(&rsa, "RS256", Some("r"), &claims(60)).unwrap();
    let stripped = format!("{}.", good.rsplit_once('.').unwrap().0);
    assert_eq!(
        p.verify_uncached(&stripped, now_secs()).unwrap_err(),
        JwtError::BadSignature
    );
    // Outside the allowlist though the key could verify it.
    let rs512 = testkit::token(&rsa, "RS512", Some("r"), &claims(60)).unwrap();
    assert_eq!(
        p.verify_uncached(&rs512, now_secs()).unwrap_err(),
        JwtError::Algorithm
    );
}

#[test]
fn header_abuse() {
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let c = claims(60);
    let sign = |h: serde_json::Value| testkit::sign(&rsa, &h, &c).unwrap();
    assert_eq!(
        p.verify_uncached(&sign(json!({"alg":"RS256","kid":"nope"})), now)
            .unwrap_err(),
        JwtError::UnknownKey
    );
    assert_eq!(
        p.verify_uncached(&sign(json!({"alg":"RS256","kid":"../../etc/passwd"})), now) // check-paths: not a path
            .unwrap_err(),
        JwtError::UnknownKey
    );
    assert_eq!(
        p.verify_uncached(&sign(json!({"alg":"RS256","kid":"k".repeat(10_000)})), now)
            .unwrap_err(),
        JwtError::Malformed
    );
    assert_eq!(
        p.verify_uncached(&sign(json!({"alg":"RS256","kid":7})), now)
            .unwrap_err(),
        JwtError::Malformed
    );
    assert_eq!(
        p.verify_uncached(&sign(json!({"alg":"RS256","kid":"r","crit":["exp"]})), now)
            .unwrap_err(),
        JwtError::Malformed
    );
    // jku / x5u / jwk are ignored: the token verifies with the configured key only.
    let (other, other_jwk) = testkit::rsa("r").unwrap();
    let with_jku = json!({"alg":"RS256","kid":"r","jku":"http://127.0.0.1:1/jwks","x5u":"http://127.0.0.1:1/x","jwk": other_jwk});
    assert!(p.verify_uncached(&sign(with_jku.clone()), now).is_ok());
    let forged = testkit::sign(&other, &with_jku, &c).unwrap();
    assert_eq!(
        p.verify_uncached(&forged, now).unwrap_err(),
        JwtError::BadSignature
    );
}

#[test]
fn malformed_tokens() {
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let good = testkit::token(&rsa, "RS256", Some("r"), &claims(60)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    for bad in [
        format!("{}.{}", parts[0], parts[1]),
        format!("{good}.extra"),
        format!("{}.{}!.{}", parts[0], parts[1], parts[2]),
        format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        "a.b.c".to_string(),
        String::new(),
        format!("{good}{}", "A".repeat(9000)),
    ] {
        assert!(p.verify_uncached(&bad, now).is_err(), "{bad}");
        assert!(p.verify_sync(&bad, now).is_err());
    }
    // Duplicate keys in header and payload.
    let dup_h = testkit::raw(
        "{\"alg\":\"none\",\"alg\":\"RS256\",\"kid\":\"r\"}",
        &claims(60).to_string(),
        b"x",
    );
    assert_eq!(
        p.verify_uncached(&dup_h, now).unwrap_err(),
        JwtError::Malformed
    );
    let exp = now + 60;
    let payload = format!("{{\"sub\":\"alice\",\"sub\":\"admin\",\"iss\":\"https://issuer\",\"aud\":\"api\",\"exp\":{exp}}}");
    let h = "{\"alg\":\"RS256\",\"kid\":\"r\"}";
    let input = format!("{}.{}", b64(h.as_bytes()), b64(payload.as_bytes()));
    let sig = testkit::sign_bytes(&rsa, "RS256", input.as_bytes()).unwrap();
    let dup_p = format!("{input}.{}", b64(&sig));
    assert_eq!(
        p.verify_uncached(&dup_p, now).unwrap_err(),
        JwtError::Malformed
    );
}

#[test]
fn claims_and_leeway() {
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let tok = |c: serde_json::Value| testkit::token(&rsa, "RS256", Some("r"), &c).unwrap();
    let base = |exp: serde_json::Value| json!({"sub":"a","iss":"https://issuer","aud":["x","api"],"exp":exp});
    assert!(
        p.verify_uncached(&tok(base(json!(now - 25))), now).is_ok(),
        "inside leeway"
    );
    assert_eq!(
        p.verify_uncached(&tok(base(json!(now - 35))), now)
            .unwrap_err(),
        JwtError::Expired
    );
    assert_eq!(
        p.verify_uncached(&tok(base(json!((now + 60).to_string()))), now)
            .unwrap_err(),
        JwtError::Claims
    );
    assert_eq!(
        p.verify_uncached(
            &tok(json!({"sub":"a","iss":"https://issuer","aud":"api"})),
            now
        )
        .unwrap_err(),
        JwtError::Claims
    );
    let mut c = base(json!(now + 60));
    c["nbf"] = json!(now + 120);
    assert_eq!(
        p.verify_uncached(&tok(c.clone()), now).unwrap_err(),
        JwtError::NotYetValid
    );
    c["nbf"] = json!(now + 20);
    assert!(p.verify_uncached(&tok(c), now).is_ok());
    let mut c = base(json!(now + 60));
    c["iss"] = json!("https://evil");
    assert_eq!(
        p.verify_uncached(&tok(c), now).unwrap_err(),
        JwtError::Claims
    );
    let mut c = base(json!(now + 60));
    c["aud"] = json!("other");
    assert_eq!(
        p.verify_uncached(&tok(c), now).unwrap_err(),
        JwtError::Claims
    );
    let mut c = base(json!(now + 60));
    c.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        p.verify_uncached(&tok(c), now).unwrap_err(),
        JwtError::Claims
    );
}

#[test]
fn ecdsa_signature_abuse() {
    let (ec, jwk) = testkit::ec("e", false).unwrap();
    let p = provider(&[Alg::ES256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let good = testkit::token(&ec, "ES256", Some("e"), &claims(60)).unwrap();
    assert!(p.verify_uncached(&good, now).is_ok());
    let input = good.rsplit_once('.').unwrap().0;
    for sig in [
        vec![0u8; 64],
        vec![0u8; 63],
        vec![1u8; 65],
        vec![0xffu8; 64],
        vec![],
    ] {
        let t = format!("{input}.{}", b64(&sig));
        let e = p.verify_uncached(&t, now).unwrap_err();
        assert!(matches!(e, JwtError::BadSignature), "{e:?}");
    }
    // A DER signature instead of r||s.
    let der = {
        let SigningKey::Private(pk) = &ec else {
            unreachable!()
        };
        let digest =
            openssl::hash::hash(openssl::hash::MessageDigest::sha256(), input.as_bytes()).unwrap();
        openssl::ecdsa::EcdsaSig::sign(&digest, &pk.ec_key().unwrap())
            .unwrap()
            .to_der()
            .unwrap()
    };
    let t = format!("{input}.{}", b64(&der));
    assert_eq!(
        p.verify_uncached(&t, now).unwrap_err(),
        JwtError::BadSignature
    );
}

#[test]
fn cache_is_bounded_by_exp_and_cleared_on_rotation() {
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let t = testkit::token(&rsa, "RS256", Some("r"), &claims(10)).unwrap();
    let a = p.verify_sync(&t, now).unwrap();
    let b = p.verify_sync(&t, now).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second verify served from cache");
    // At exp the cached entry is gone; verification runs again (and honours leeway).
    let c = p.verify_sync(&t, now + 10).unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(p.verify_sync(&t, now + 41).unwrap_err(), JwtError::Expired);
    // New key set: the cache is cleared and the old token no longer verifies.
    let (_, jwk2) = testkit::rsa("r2").unwrap();
    p.set_keys(jwk::parse_jwks(testkit::jwks(&[&jwk2]).as_bytes()).unwrap());
    assert_eq!(p.verify_sync(&t, now).unwrap_err(), JwtError::UnknownKey);
}

#[tokio::test]
async fn no_keys_fails_closed() {
    let p = JwtProvider::new("n", vec![Alg::RS256], ClaimRules::default());
    let (rsa, _) = testkit::rsa("r").unwrap();
    let t = testkit::token(&rsa, "RS256", Some("r"), &claims(60)).unwrap();
    assert_eq!(
        p.verify(&t, now_secs()).await.unwrap_err(),
        JwtError::NoKeys
    );
}

#[test]
fn entry_cached_under_an_old_key_set_is_not_served() {
    // Regression: a verification racing `set_keys` could insert, after the clear, a token
    // verified with the removed key; it was then served until its `exp`. Simulate the
    // losing interleaving by inserting the entry tagged with the previous generation.
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let p = provider(&[Alg::RS256], &testkit::jwks(&[&jwk]));
    let now = now_secs();
    let t = testkit::token(&rsa, "RS256", Some("r"), &claims(3600)).unwrap();
    let v = Arc::new(p.verify_uncached(&t, now).unwrap());
    let old = p.generation.load(Ordering::SeqCst);
    let (_, jwk2) = testkit::rsa("r2").unwrap();
    p.set_keys(jwk::parse_jwks(testkit::jwks(&[&jwk2]).as_bytes()).unwrap());
    let entry = Cached {
        generation: old,
        verified: v,
        token: Arc::from(t.as_str()),
    };
    p.cache.insert(p.token_key(&t), entry, now + 3600, now);
    assert_eq!(p.verify_sync(&t, now).unwrap_err(), JwtError::UnknownKey);
}

#[test]
fn kid_ignored_when_the_keys_have_none() {
    // Regression: a PEM key or an HS* secret has no kid, and every token naming one (most
    // issuers set `kid`) was refused as an unknown key.
    let secret = b"0123456789abcdef0123456789abcdef".to_vec();
    let p = JwtProvider::new("h", vec![Alg::HS256], ClaimRules::default());
    p.set_keys(jwk::hmac_set(secret.clone()).unwrap());
    let key = SigningKey::Secret(secret);
    let t = testkit::token(&key, "HS256", Some("k1"), &claims(60)).unwrap();
    assert!(p.verify_uncached(&t, now_secs()).is_ok());
    let (rsa, _) = testkit::rsa("r").unwrap();
    let SigningKey::Private(pk) = &rsa else {
        unreachable!()
    };
    let pem = pk.public_key_to_pem().unwrap();
    let p = JwtProvider::new("p", vec![Alg::RS256], ClaimRules::default());
    p.set_keys(jwk::parse_pem(&pem).unwrap());
    let t = testkit::token(&rsa, "RS256", Some("any"), &claims(60)).unwrap();
    assert!(p.verify_uncached(&t, now_secs()).is_ok());
    // Still only the configured key: another key's token with a kid fails.
    let (other, _) = testkit::rsa("r").unwrap();
    let t = testkit::token(&other, "RS256", Some("any"), &claims(60)).unwrap();
    assert_eq!(
        p.verify_uncached(&t, now_secs()).unwrap_err(),
        JwtError::BadSignature
    );
}

#[test]
fn the_same_key_set_again_keeps_the_token_cache() {
    // Regression: every JWKS fetch (every jwks_refresh, and each unknown-kid refetch)
    // installed the set anew and flushed the verified-token cache, even when nothing
    // changed: every cached token then paid a full signature check again.
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let (_, jwk2) = testkit::rsa("r2").unwrap();
    let doc = testkit::jwks(&[&jwk, &jwk2]);
    let p = provider(&[Alg::RS256], &doc);
    let now = now_secs();
    let t = testkit::token(&rsa, "RS256", Some("r"), &claims(60)).unwrap();
    let a = p.verify_sync(&t, now).unwrap();
    // The same keys, fetched again (even formatted differently).
    let spaced =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&doc).unwrap())
            .unwrap();
    p.set_keys(jwk::parse_jwks(spaced.as_bytes()).unwrap());
    let b = p.verify_sync(&t, now).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "cache flushed by an unchanged key set");
    // A key added, removed or changed is a new set: flushed.
    for changed in [
        testkit::jwks(&[&jwk]),
        testkit::jwks(&[&jwk2, &jwk]),
        testkit::jwks(&[&jwk, &jwk2, &testkit::rsa("r3").unwrap().1]),
    ] {
        let before = p.verify_sync(&t, now).unwrap();
        p.set_keys(jwk::parse_jwks(changed.as_bytes()).unwrap());
        let after = p.verify_sync(&t, now).unwrap();
        assert!(!Arc::ptr_eq(&before, &after), "{changed}");
    }
}

#[tokio::test]
async fn a_refetch_of_the_same_jwks_keeps_the_token_cache() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (rsa, jwk) = testkit::rsa("r").unwrap();
    let doc = testkit::jwks(&[&jwk]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", l.local_addr().unwrap());
    let server = tokio::spawn(async move {
        for _ in 0..2 {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                doc.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(doc.as_bytes()).await;
        }
    });
    let mut p = JwtProvider::new("f", vec![Alg::RS256], ClaimRules::default());
    p.url = Some(url);
    assert!(p.fetch_now().await);
    let now = now_secs();
    let t = testkit::token(&rsa, "RS256", Some("r"), &claims(60)).unwrap();
    let a = p.verify_sync(&t, now).unwrap();
    assert!(p.fetch_now().await);
    assert_eq!(p.fetches(), 2);
    let b = p.verify_sync(&t, now).unwrap();
    assert!(
        Arc::ptr_eq(&a, &b),
        "cache flushed by a refetch of the same JWKS"
    );
    server.await.unwrap();
}
