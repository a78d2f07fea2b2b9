//! Property tests of the credential parsers a client reaches: the JWT compact form (no
//! input panics; a token built from random claims verifies, and any one byte changed is
//! refused) and the HMAC `Authorization` value (no input panics; built → parsed gives back
//! what was built; a request signed by `moat sign` verifies, and a changed signed header
//! does not). Case counts are kept small: the whole file runs in well under a second.

use super::hmac::{self, parse_authorization, HmacAlg};
use super::jwk::{self, Alg};
use super::jwt::{self, ClaimRules};
use super::provider::JwtProvider;
use super::testkit::{self, b64, SigningKey};
use super::tools::{sign, SignRequest};
use crate::util::proptest::config;
use once_cell::sync::Lazy;
use pingora_http::RequestHeader;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-prop";
const NOW: i64 = 1_800_000_000;

fn rules() -> ClaimRules {
    ClaimRules {
        issuer: Some("https://issuer".into()),
        audiences: vec!["api".into()],
        leeway: 0,
    }
}

/// An HS256 provider and an ES256 one (its key made once), with their signing keys.
static PROVIDERS: Lazy<Vec<(JwtProvider, SigningKey, &'static str)>> = Lazy::new(|| {
    let hs = JwtProvider::new("t", vec![Alg::HS256], rules());
    hs.set_keys(jwk::hmac_set(SECRET.to_vec()).expect("secret"));
    let (ec, ec_jwk) = testkit::ec("e", false).expect("ec key");
    let es = JwtProvider::new("t", vec![Alg::ES256], rules());
    es.set_keys(jwk::parse_jwks(testkit::jwks(&[&ec_jwk]).as_bytes()).expect("jwks"));
    vec![
        (hs, SigningKey::Secret(SECRET.to_vec()), "HS256"),
        (es, ec, "ES256"),
    ]
});

fn claims_strategy() -> impl Strategy<Value = (String, Map<String, Value>)> {
    let extra = prop::collection::btree_map(
        "x_[a-z]{1,8}",
        prop_oneof![
            any::<String>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<bool>().prop_map(Value::from),
        ],
        0..4,
    );
    ("\\PC{1,24}", extra, 1i64..1_000_000).prop_map(|(sub, extra, exp_in)| {
        let mut c = Map::new();
        c.insert("sub".into(), json!(sub));
        c.insert("iss".into(), json!("https://issuer"));
        c.insert("aud".into(), json!("api"));
        c.insert("exp".into(), json!(NOW + exp_in));
        c.extend(extra);
        (sub, c)
    })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn jwt_parser_never_panics_on_any_text(s in "\\PC{0,300}") {
        let (p, _, _) = &PROVIDERS[0];
        let _ = jwt::decode_header(&s, &[Alg::HS256, Alg::RS256]);
        prop_assert!(p.verify_uncached(&s, NOW).is_err());
    }

    #[test]
    fn jwt_parser_never_panics_on_any_segments(
        header in prop::collection::vec(any::<u8>(), 0..80),
        body in prop::collection::vec(any::<u8>(), 0..80),
        sig in prop::collection::vec(any::<u8>(), 0..80),
        json_header in any::<bool>(),
    ) {
        // Raw bytes, or JSON headers with random members (the parser's real input).
        let header = if json_header {
            format!("{{\"alg\":\"HS256\",\"kid\":{:?},\"x\":{:?}}}", String::from_utf8_lossy(&header), String::from_utf8_lossy(&body)).into_bytes()
        } else {
            header
        };
        let token = format!("{}.{}.{}", b64(&header), b64(&body), b64(&sig));
        for (p, _, _) in PROVIDERS.iter() {
            prop_assert!(p.verify_uncached(&token, NOW).is_err());
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn a_token_from_random_claims_verifies_and_any_changed_byte_is_refused(
        (sub, claims) in claims_strategy(),
        which in 0usize..2,
        kid in any::<bool>(),
        at in any::<prop::sample::Index>(),
        byte in 0x20u8..0x7f,
    ) {
        let (p, key, alg) = &PROVIDERS[which];
        let kid = (kid && *alg == "ES256").then_some("e");
        let token = testkit::token(key, alg, kid, &Value::Object(claims.clone())).unwrap();
        let v = p.verify_uncached(&token, NOW).unwrap();
        prop_assert_eq!(&*v.subject, format!("t:{sub}"));
        for (k, want) in &claims {
            prop_assert_eq!(v.claims.get(k), Some(want));
        }
        let i = at.index(token.len());
        prop_assume!(token.as_bytes()[i] != byte);
        let mut changed = token.into_bytes();
        changed[i] = byte;
        let changed = String::from_utf8(changed).unwrap();
        prop_assert!(p.verify_uncached(&changed, NOW).is_err(), "{} accepted", changed);
    }
}

/// `hmac-sha256` etc.
fn alg_strategy() -> impl Strategy<Value = HmacAlg> {
    prop_oneof![
        Just(HmacAlg::Sha256),
        Just(HmacAlg::Sha384),
        Just(HmacAlg::Sha512)
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn hmac_authorization_parser_never_panics(s in "\\PC{0,200}", prefixed in any::<bool>()) {
        let v = if prefixed { format!("hmac {s}") } else { s };
        let _ = parse_authorization(&v);
    }

    #[test]
    fn hmac_authorization_built_then_parsed_round_trips(
        key_id in "[A-Za-z0-9._-]{1,32}",
        alg in alg_strategy(),
        headers in prop::collection::vec("[a-z0-9-]{1,16}", 0..6),
        signature in prop::collection::vec(any::<u8>(), 0..80),
        order in Just(vec![0usize, 1, 2, 3]).prop_shuffle(),
        scheme in prop_oneof![Just("hmac"), Just("HMAC"), Just("Hmac")],
        (sp1, sp2) in (" {0,2}", " {0,2}"),
    ) {
        use base64::Engine;
        let sig = base64::engine::general_purpose::STANDARD.encode(&signature);
        let params = [
            format!("username{sp1}={sp2}\"{key_id}\""),
            format!("algorithm=\"{}\"", alg.name()),
            format!("headers=\"{}\"", headers.join(" ")),
            format!("signature=\"{sig}\""),
        ];
        let list: Vec<&str> = order.iter().map(|&i| params[i].as_str()).collect();
        let value = format!("{scheme} {}", list.join(&format!("{sp1},{sp2}")));
        let a = parse_authorization(&value).unwrap();
        prop_assert_eq!(a.key_id, key_id);
        prop_assert_eq!(a.alg, alg);
        prop_assert_eq!(a.headers, headers);
        prop_assert_eq!(a.signature, signature);
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn a_request_signed_by_moat_sign_verifies_and_a_changed_header_does_not(
        method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE")],
        path in "/[A-Za-z0-9/_.~-]{0,24}",
        query in prop::option::of("[a-z0-9=&]{0,16}"),
        host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
        extra in prop::collection::btree_map("x-[a-z]{1,8}", "[ -~]{0,20}", 0..3),
        body in prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        alg in alg_strategy(),
        tamper in any::<prop::sample::Index>(),
    ) {
        let target = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let url = format!("http://{host}{target}");
        let extra: Vec<String> = extra.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let out = sign(&SignRequest {
            key_id: "k",
            secret: SECRET,
            algorithm: alg.name(),
            method,
            url: &url,
            headers: &extra,
            body: body.as_deref(),
            now: NOW,
        })
        .unwrap();
        let request = |out: &[(String, String)]| {
            let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
            for (k, v) in out {
                r.append_header(k.clone(), v.as_str()).unwrap();
            }
            r
        };
        let verifies = |r: &RequestHeader| {
            let v = hmac::single_header(r, "authorization").unwrap();
            let a = parse_authorization(&v).unwrap();
            let s = hmac::signing_string(&a.headers, &hmac::request_line(r), |n| {
                hmac::single_header(r, n)
            });
            s.is_ok_and(|s| hmac::verify_mac(a.alg, SECRET, s.as_bytes(), &a.signature))
        };
        prop_assert!(verifies(&request(&out)));
        if let Some(b) = &body {
            let d = hmac::single_header(&request(&out), "digest").unwrap();
            prop_assert!(hmac::digest_matches(&d, b));
        }
        // Every header but Authorization is signed: change one value.
        let signed: Vec<usize> = (0..out.len()).filter(|&i| out[i].0 != "Authorization").collect();
        let i = signed[tamper.index(signed.len())];
        let mut changed = out.clone();
        changed[i].1.push('x');
        prop_assert!(!verifies(&request(&changed)), "{:?} changed", out[i].0);
    }
}
