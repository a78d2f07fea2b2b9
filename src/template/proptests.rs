//! Property tests of the template engine: parsing any text never panics; rendering any
//! request facts (header bytes, host, path, claims of any JSON shape, identity) into a
//! JSON body gives a JSON document whose strings hold exactly the values (as UTF-8, lossy),
//! into markup no character that could open a tag or leave an attribute, and into a URL
//! component only unreserved characters and percent escapes.

use super::*;
use crate::identity::Identity;
use crate::util::proptest::config;
use proptest::prelude::*;
use serde_json::Value;
use std::sync::Arc;

/// Bytes a header value may hold: anything but control characters (tab allowed).
fn header_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => 0x20u8..0x7f,
            1 => 0x80u8..=0xff,
            1 => Just(b'\t'),
            1 => prop::sample::select(b"\"'<>&\\/?#%@".to_vec()),
        ],
        0..max,
    )
    .prop_map(|v| {
        // Values are trimmed by HTTP parsers; keep them as a client can send them.
        let s = v.trim_ascii().to_vec();
        if s.is_empty() {
            b"x".to_vec()
        } else {
            s
        }
    })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What `{{claims.c}}` renders for `v`, before escaping.
fn claim_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

#[derive(Debug)]
struct Case {
    req: RequestHeader,
    claim: Value,
    id: Identity,
    header: Vec<Vec<u8>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(header_bytes(40), 1..3),
        header_bytes(100),
        "/[A-Za-z0-9/._~!$&'()*+,;=:@%-]{0,30}",
        prop::option::of("[A-Za-z0-9/._~!$&'()*+,;=:@%?-]{0,30}"),
        json_value(),
        "\\PC{1,20}",
        prop::option::of("\\PC{0,10}"),
    )
        .prop_map(|(header, host, path, query, claim, id, tier)| {
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            let mut req = RequestHeader::build("GET", target.as_bytes(), None)
                .or_else(|_| RequestHeader::build("GET", b"/", None))
                .expect("a request");
            for h in &header {
                req.append_header("x-a", h.as_slice())
                    .expect("header value");
            }
            req.insert_header("host", host.as_slice()).expect("host");
            let mut claims = serde_json::Map::new();
            claims.insert("c".into(), claim.clone());
            let id = Identity {
                consumer_id: Arc::from(id),
                consumer_header: http::HeaderValue::from_static("x"),
                tier: tier.map(Arc::from),
                method: "jwt",
                claims: Some(Arc::new(claims)),
            };
            Case {
                req,
                claim,
                id,
                header,
            }
        })
}

fn render(t: &str, c: &Case, ctx: Context) -> Vec<u8> {
    let f = Facts {
        req: &c.req,
        client_ip: Some("2001:db8::1".parse().expect("ip")),
        request_id: "r\"i<d",
        route: "ro'ute",
        identity: Some(&c.id),
    };
    let mut out = Vec::new();
    Template::parse(t)
        .expect("template")
        .render_in(&f, &mut out, ctx);
    out
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn parsing_any_text_never_panics(s in "\\PC{0,80}", braces in "[{} a-z.]{0,30}") {
        let _ = Template::parse(&s);
        let _ = Template::parse(&braces);
        let _ = Template::parse(&format!("{{{{{braces}}}}}"));
    }
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn a_json_body_holds_exactly_the_values(c in case()) {
        let t = r#"{"h":"{{header.x-a}}","c":"{{claims.c}}","id":"{{consumer.id}}","t":"{{consumer.tier}}","host":"{{host}}","p":"{{path}}","q":"{{query}}","u":"{{uri}}","ip":"{{client_ip}}","r":"{{request_id}}","ro":"{{route}}"}"#;
        let out = render(t, &c, Context::Json);
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        let joined: Vec<String> = c.header.iter().map(|h| lossy(h)).collect();
        prop_assert_eq!(&v["h"], &Value::from(joined.join(", ")));
        prop_assert_eq!(&v["c"], &Value::from(claim_text(&c.claim)));
        prop_assert_eq!(&v["id"], &Value::from(&*c.id.consumer_id));
        prop_assert_eq!(&v["t"], &Value::from(c.id.tier.as_deref().unwrap_or("")));
        prop_assert_eq!(&v["host"], &Value::from(request_host(&c.req).to_ascii_lowercase()));
        prop_assert_eq!(&v["p"], &Value::from(c.req.uri.path()));
        prop_assert_eq!(&v["r"], &Value::from("r\"i<d"));
        prop_assert_eq!(&v["ro"], &Value::from("ro'ute"));
        prop_assert_eq!(&v["q"], &Value::from(c.req.uri.query().unwrap_or("")));
        prop_assert_eq!(&v["ip"], &Value::from("2001:db8::1"));
    }

    #[test]
    fn markup_and_url_components_cannot_break_out(c in case()) {
        for var in ["header.x-a", "claims.c", "consumer.id", "host", "query"] {
            let out = render(&format!("{{{{{var}}}}}"), &c, Context::Markup);
            prop_assert!(
                !out.iter().any(|b| b"<>\"'".contains(b)),
                "{var}: {:?}", lossy(&out)
            );
            // Every `&` starts a character reference.
            let text = lossy(&out);
            for (i, _) in text.match_indices('&') {
                let rest = &text[i..];
                prop_assert!(rest.find(';').is_some_and(|e| e <= 8), "{}: {}", var, text);
            }
        }
        for var in ["header.x-a", "claims.c", "consumer.id", "request_id"] {
            let out = render(&format!("{{{{{var}}}}}"), &c, Context::Url);
            prop_assert!(
                out.iter().all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(b)),
                "{var}: {:?}", lossy(&out)
            );
        }
    }
}
