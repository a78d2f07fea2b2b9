//! Templates escape what they interpolate for the context they write into (issue 14,
//! item 8): a JSON `respond` body gets JSON string fragments, an HTML or XML one character
//! references, a redirect's `Location` percent-encoding (a whole component for values
//! that do not come from the request target); headers keep refusing control characters. Literal text from the config is never changed.

use crate::harness::{send_raw, Moat};

const ROUTES: &str = r#"routes:
  - name: whoami
    match: { path: /whoami }
    respond:
      headers: { content-type: application/json }
      body: '{"client_ip":"{{client_ip}}","host":"{{host}}","user_agent":"{{header.user-agent}}","q":"{{query}}"}'
  - name: problem
    match: { path: /problem }
    respond:
      headers: { Content-Type: "application/problem+json; charset=utf-8" }
      body: '{"title":"{{header.x-title}}"}'
  - name: page
    match: { path: /page }
    respond:
      headers: { content-type: text/html }
      body: "<p title='{{header.x-title}}'>{{header.x-title}}</p>"
  - name: plain
    match: { path: /plain }
    respond:
      headers: { content-type: text/plain }
      body: "{{header.x-title}}"
  - name: echo-header
    match: { path: /echo }
    respond:
      headers: { content-type: text/plain, x-echo: "{{header.x-title}}" }
      body: ok
  - name: back
    match: { path_prefix: /back }
    redirect: { to: "{{path}}/", status: 302 }
  - name: search
    match: { path: /search }
    redirect: { to: "https://search.example.com/?ua={{header.user-agent}}&{{query}}", status: 302 }
"#;

/// Send a raw request (header values as raw bytes) and split the answer.
fn raw(
    m: &Moat,
    target: &[u8],
    headers: &[(&str, &[u8])],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.extend_from_slice(k.as_bytes());
        req.extend_from_slice(b": ");
        req.extend_from_slice(v);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    let out = send_raw(m.port, &req);
    let r = crate::harness::client::parse_all(&out)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(&out)));
    (r.status, r.headers, r.body)
}

#[test]
fn json_respond_bodies_escape_every_value() {
    let m = Moat::start(ROUTES);
    let nasty = r#"x","client_ip":"6.6.6.6","admin":true,"z":"\"#;
    let (status, _, body) = raw(
        &m,
        b"/whoami?a=%22&b=%7D",
        &[("User-Agent", nasty.as_bytes())],
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["client_ip", "host", "q", "user_agent"], "{v}");
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert_eq!(v["user_agent"], nasty);
    assert_eq!(v["q"], "a=%22&b=%7D");

    // Tabs, bytes that are not UTF-8 (obs-text): still one valid JSON document.
    let (status, _, body) = raw(
        &m,
        b"/whoami",
        &[("User-Agent", b"a\tb\xff\xfe<\\/script>")],
    );
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    assert_eq!(v["user_agent"], "a\tb\u{fffd}\u{fffd}<\\/script>");
    assert!(
        !String::from_utf8_lossy(&body).contains('<'),
        "markup characters are escaped too: {}",
        String::from_utf8_lossy(&body)
    );

    // Any JSON media type (+json suffix, parameters, any case).
    let (_, _, body) = raw(&m, b"/problem", &[("X-Title", br#"a"}, "b": {"#)]);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v, serde_json::json!({"title": r#"a"}, "b": {"#}));
}

#[test]
fn markup_bodies_escape_and_plain_ones_do_not() {
    let m = Moat::start(ROUTES);
    let title = br#"x' onmouseover='alert(1)'><script>alert("&")</script>"#;
    let (_, _, body) = raw(&m, b"/page", &[("X-Title", title)]);
    let body = String::from_utf8(body).unwrap();
    assert_eq!(
        body,
        "<p title='x&#39; onmouseover=&#39;alert(1)&#39;&gt;&lt;script&gt;alert(&quot;&amp;&quot;)&lt;/script&gt;'>x&#39; onmouseover=&#39;alert(1)&#39;&gt;&lt;script&gt;alert(&quot;&amp;&quot;)&lt;/script&gt;</p>"
    );
    // text/plain: the value as sent.
    let (_, _, body) = raw(&m, b"/plain", &[("X-Title", title)]);
    assert_eq!(body, title);
    // Header context: a value is copied as is (control characters never reach a header).
    let (_, headers, _) = raw(&m, b"/echo", &[("X-Title", title)]);
    let echo = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-echo"));
    assert_eq!(echo.map(|(_, v)| v.as_bytes()), Some(&title[..]));
}

#[test]
fn redirect_targets_percent_encode_what_a_url_cannot_hold() {
    let m = Moat::start(ROUTES);
    // A backslash after the leading slash: browsers read `/\host` as `//host`.
    let (status, headers, _) = raw(&m, b"/back/\\evil.example", &[]);
    let location = |h: &[(String, String)]| {
        h.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(status, 302);
    assert_eq!(
        location(&headers).as_deref(),
        Some("/back/%5Cevil.example/")
    );

    let (status, headers, _) = raw(
        &m,
        b"/search?q=a%20b&x=1",
        &[("User-Agent", br#"Mozilla "5" <b>&#{x}|^`"#)],
    );
    assert_eq!(status, 302);
    assert_eq!(
        location(&headers).as_deref(),
        Some("https://search.example.com/?ua=Mozilla%20%225%22%20%3Cb%3E%26%23%7Bx%7D%7C%5E%60&q=a%20b&x=1")
    );
    // A header value cannot add a parameter or a fragment: only the request target's own
    // variables (path, query, uri) and the host keep URL syntax.
    let (_, headers, _) = raw(&m, b"/search", &[("User-Agent", b"x&admin=1#top/..")]);
    assert_eq!(
        location(&headers).as_deref(),
        Some("https://search.example.com/?ua=x%26admin%3D1%23top%2F..&")
    );
}
