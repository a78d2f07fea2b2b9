//! Path normalization before routing: dot segments (`.`, `..`, and their `%2e` spellings)
//! are resolved and repeated slashes merged, and the normalized path is what goes upstream,
//! so a route cannot be bypassed with `/public/../admin` and upstreams see the path that
//! was matched. Other percent-encodings are left as they are.

/// The request target for `path` with the query `query` (without its `?`), when there is
/// one: `path?query`.
pub fn with_query(path: String, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    }
}

/// The normalized form of `path`, or `None` when it is already normal.
pub fn normalize(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let suspicious = b.windows(2).any(|w| w == b"//" || w == b"/.")
        || b.windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'e' || w[2] == b'E'));
    if !suspicious {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let decoded = seg.to_ascii_lowercase().replace("%2e", ".");
        match decoded.as_str() {
            "" => trailing_slash = i == last && i > 0,
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() || trailing_slash {
        s.push('/');
    }
    (s != path).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn cases() {
        assert_eq!(normalize("/a/b"), None);
        assert_eq!(normalize("/"), None);
        assert_eq!(normalize("/a/b/"), None);
        assert_eq!(normalize("/public/../admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/public/%2e%2e/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/public/%2E%2E/admin").as_deref(), Some("/admin"));
        assert_eq!(normalize("/a/./b").as_deref(), Some("/a/b"));
        assert_eq!(normalize("//a///b").as_deref(), Some("/a/b"));
        assert_eq!(
            normalize("/../../etc/passwd").as_deref(),
            Some("/etc/passwd")
        );
        assert_eq!(normalize("/a/b/..").as_deref(), Some("/a/"));
        assert_eq!(normalize("/a/.").as_deref(), Some("/a/"));
        assert_eq!(normalize("/..").as_deref(), Some("/"));
        assert_eq!(normalize("/a/.hidden"), None);
        assert_eq!(normalize("/a/..b").as_deref(), None);
    }
}
