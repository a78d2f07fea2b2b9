//! A bounded HTTP(S) GET for JWKS documents, over Pingora's own client connector (so TLS
//! uses the same OpenSSL stack and certificate verification as upstreams). The whole
//! exchange runs under one timeout, the body is capped, and only 200 is accepted. Errors
//! are short strings without the response body.

use bytes::BytesMut;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::time::Duration;

/// GET `url` (http:// or https://) within `timeout`; the body, at most `max` bytes.
pub async fn get(url: &str, timeout: Duration, max: usize) -> Result<Vec<u8>, String> {
    match tokio::time::timeout(timeout, get_inner(url, max)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}ms", timeout.as_millis())),
    }
}

/// Check a URL's shape at config time.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

/// Whether `url` is plain `http://` to a host that is not loopback (`localhost`,
/// 127.0.0.0/8, `::1`, `::ffff:127.0.0.0/104`), as [`get`] reads it: the same parse decides
/// what is checked and where moat connects. `false` for a URL [`check_url`] refuses.
pub fn insecure_remote(url: &str) -> bool {
    parse(url).is_ok_and(|t| !t.tls && !t.loopback())
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// `localhost` or a loopback address (other names are resolved at fetch time: not
    /// loopback here).
    fn loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.to_canonical().is_loopback())
    }
}

fn parse(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|_| "not a URL".to_string())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok(Target {
        tls,
        host,
        port,
        path,
    })
}

async fn get_inner(url: &str, max: usize) -> Result<Vec<u8>, String> {
    let t = parse(url)?;
    let addr = tokio::net::lookup_host((t.host.as_str(), t.port))
        .await
        .map_err(|e| format!("resolving {}: {e}", t.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", t.host))?;
    let peer = HttpPeer::new(addr, t.tls, t.host.clone());
    let connector = Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| format!("connect: {}", e.etype().as_str()))?;
    let mut req = RequestHeader::build("GET", t.path.as_bytes(), None)
        .map_err(|e| format!("request: {}", e.etype().as_str()))?;
    let host_header = if (t.tls && t.port == 443) || (!t.tls && t.port == 80) {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    for (k, v) in [
        ("Host", host_header.as_str()),
        ("Accept", "application/json"),
        ("User-Agent", "moat-jwks"),
        ("Connection", "close"),
    ] {
        req.insert_header(k, v)
            .map_err(|e| format!("request: {}", e.etype().as_str()))?;
    }
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    session
        .finish_request_body()
        .await
        .map_err(|e| format!("send: {}", e.etype().as_str()))?;
    session
        .read_response_header()
        .await
        .map_err(|e| format!("response: {}", e.etype().as_str()))?;
    let status = session
        .response_header()
        .map(|r| r.status.as_u16())
        .unwrap_or(0);
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| format!("body: {}", e.etype().as_str()))?
    {
        if body.len() + chunk.len() > max {
            return Err(format!("body larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve_once(resp: &'static [u8]) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(resp).await;
            }
        });
        format!("http://{addr}/jwks.json")
    }

    #[tokio::test]
    async fn fetches_and_bounds() {
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"keys\":[]}",
        )
        .await;
        let body = get(&url, Duration::from_secs(2), 1000).await.unwrap();
        assert_eq!(body, b"{\"keys\":[]}");
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\n{\"keys\":[]}",
        )
        .await;
        assert!(get(&url, Duration::from_secs(2), 5).await.is_err());
        let url = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(
            get(&url, Duration::from_secs(2), 100).await.unwrap_err(),
            "status 404"
        );
        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/");
        assert!(get(&url, Duration::from_secs(2), 100).await.is_err());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("https://auth.example.com/certs").is_ok());
    }

    #[test]
    fn plain_http_only_to_loopback_however_the_host_is_written() {
        // Refused: a name that only starts like a loopback address, shorthand or numeric
        // forms the resolver would expand (not taken as loopback), userinfo in front of
        // another host, a mapped address outside 127/8, the unspecified address.
        for url in [
            "http://127.0.0.1.evil.com/certs",
            "http://localhost.evil.com/certs",
            "http://127.1/certs",
            "http://0x7f000001/certs",
            "http://2130706433/certs",
            "http://0.0.0.0/certs",
            "http://[::]/certs",
            "http://127.0.0.1@evil.com/certs",
            "http://127.0.0.1:80@evil.com/certs",
            "http://localhost@evil.com/certs",
            "http://[::ffff:10.0.0.1]/certs",
            "http://evil.com#@127.0.0.1/certs",
            "http://evil.com\\@127.0.0.1/certs",
            "http://127.0.0.1%2f@evil.com/certs",
        ] {
            assert!(
                insecure_remote(url) || check_url(url).is_err(),
                "{url} must be refused"
            );
        }
        // Loopback in every spelling the fetch connects to as loopback (userinfo in front
        // of a loopback host is loopback: that is where the fetch goes).
        for url in [
            "http://localhost:8081/certs",
            "http://LOCALHOST/certs",
            "http://127.0.0.1/certs",
            "http://127.9.9.9:1/certs",
            "http://[::1]:8080/certs",
            "http://[::ffff:127.0.0.1]/certs",
            "http://evil.com@127.0.0.1/certs",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
            assert!(!insecure_remote(url), "{url} is loopback");
            let t = parse(url).unwrap();
            assert!(t.loopback(), "{url}: the fetch goes to {}", t.host);
        }
        assert!(!insecure_remote("https://auth.example.com/certs"));
    }
}
