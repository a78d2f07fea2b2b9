//! Escaping what a template interpolates, by the context its output is written into. Only
//! the values of variables are escaped; the literal text of the template comes from the
//! config and is written as is.

/// Where a rendered template goes, deciding how each interpolated value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// As is: `text/plain` and other bodies, upstream keys. Header values are raw too,
    /// and refused whole when they hold control characters (`safe_header_value`).
    Raw,
    /// Inside a JSON string: `"`, `\` and control characters escaped, also `<`, `>`, `&`,
    /// U+2028 and U+2029 (so the document is safe inside HTML or JavaScript too); bytes that
    /// are not UTF-8 become U+FFFD. A value cannot end the string it is in.
    Json,
    /// HTML or XML text or attribute: `&`, `<`, `>`, `"`, `'` as character references.
    Markup,
    /// A URL (a redirect's `Location`): the request target's own variables (`path`,
    /// `query`, `uri`) and `host` keep URL syntax, and only bytes no URL may hold are
    /// percent-encoded (`\` included, which browsers read as `/`); every other value is
    /// one component, percent-encoded but for RFC 3986's unreserved characters, so it
    /// cannot add a path segment, a parameter or a fragment.
    Url,
}

impl Context {
    /// The context of a body sent with this `Content-Type`: JSON for `application/json`
    /// and any `+json` type, markup for HTML, XHTML, XML and any `+xml` type (SVG), else
    /// raw. Parameters and case are ignored.
    pub fn of_content_type(content_type: &[u8]) -> Context {
        let media = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
            .to_ascii_lowercase();
        let is = |t: &[u8]| media == t;
        if is(b"application/json") || is(b"text/json") || media.ends_with(b"+json") {
            Context::Json
        } else if is(b"text/html")
            || is(b"text/xml")
            || is(b"application/xml")
            || media.ends_with(b"+xml")
        {
            Context::Markup
        } else {
            Context::Raw
        }
    }

    /// Append `value` to `out`, escaped for this context. `url_syntax`: the value is a
    /// piece of the request target (or its host), already in URL syntax.
    pub(super) fn write(self, value: &[u8], url_syntax: bool, out: &mut Vec<u8>) {
        match self {
            Context::Raw => out.extend_from_slice(value),
            Context::Json => json(value, out),
            Context::Markup => markup(value, out),
            Context::Url => url(value, url_syntax, out),
        }
    }
}

fn json(value: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&') => {
                let b = c as u8;
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

fn markup(value: &[u8], out: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            b'"' => out.extend_from_slice(b"&quot;"),
            b'\'' => out.extend_from_slice(b"&#39;"),
            b => out.push(b),
        }
    }
}

fn url(value: &[u8], url_syntax: bool, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        let unreserved = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        // RFC 3986 gen-delims and sub-delims, and `%` of existing escapes.
        let syntax = b":/?#[]@!$&'()*+,;=%".contains(&b);
        if unreserved || (url_syntax && syntax) {
            out.push(b);
        } else {
            out.push(b'%');
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(ctx: Context, v: &[u8], url_syntax: bool) -> String {
        let mut out = Vec::new();
        ctx.write(v, url_syntax, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn content_types() {
        for (ct, want) in [
            (&b"application/json"[..], Context::Json),
            (b"Application/JSON; charset=utf-8", Context::Json),
            (b" application/problem+json", Context::Json),
            (b"text/html;charset=utf-8", Context::Markup),
            (b"image/svg+xml", Context::Markup),
            (b"application/xml", Context::Markup),
            (b"text/plain", Context::Raw),
            (b"application/jsonx", Context::Raw),
            (b"", Context::Raw),
        ] {
            assert_eq!(Context::of_content_type(ct), want, "{ct:?}");
        }
    }

    #[test]
    fn json_fragments_stay_inside_their_string() {
        let v = "a\"b\\c\n\r\t\u{1}<>&\u{2028}\u{2029}é\u{7f}".as_bytes();
        let s = esc(Context::Json, v, false);
        assert_eq!(
            s,
            "a\\\"b\\\\c\\n\\r\\t\\u0001\\u003c\\u003e\\u0026\\u2028\\u2029é\u{7f}"
        );
        let parsed: String = serde_json::from_str(&format!("\"{s}\"")).unwrap();
        assert_eq!(parsed.as_bytes(), v);
        assert_eq!(esc(Context::Json, b"\xff", false), "\u{fffd}");
    }

    #[test]
    fn markup_and_urls() {
        assert_eq!(
            esc(Context::Markup, b"<a href='x'>\"&\"</a>", false),
            "&lt;a href=&#39;x&#39;&gt;&quot;&amp;&quot;&lt;/a&gt;"
        );
        assert_eq!(
            esc(Context::Url, b"/a b/\\x?q=%20&r=\"<>#f", true),
            "/a%20b/%5Cx?q=%20&r=%22%3C%3E#f"
        );
        assert_eq!(
            esc(Context::Url, "a&b=c#d/e f~é".as_bytes(), false),
            "a%26b%3Dc%23d%2Fe%20f~%C3%A9"
        );
        assert_eq!(esc(Context::Raw, b"a\"<", false), "a\"<");
    }
}
