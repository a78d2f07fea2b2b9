//! TLS termination through the real binary: SNI picks the certificate, TLS 1.1 is refused,
//! `min_version: "1.3"` refuses 1.2, ALPN negotiates h2, and a reload serves new
//! certificate files without a restart.

use crate::harness::moat::temp_dir;
use crate::harness::tls::{ca, leaf, Cert};
use crate::harness::{free_port, Moat, Upstream};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::X509;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

struct Hello {
    names: Vec<String>,
    serial: Vec<u8>,
    alpn: Option<Vec<u8>>,
    response: String,
}

fn hello(
    port: u16,
    sni: &str,
    ca: &X509,
    versions: (SslVersion, SslVersion),
    alpn: &[u8],
) -> Result<Hello, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.cert_store_mut()
        .add_cert(ca.clone())
        .map_err(|e| e.to_string())?;
    b.set_min_proto_version(Some(versions.0))
        .map_err(|e| e.to_string())?;
    b.set_max_proto_version(Some(versions.1))
        .map_err(|e| e.to_string())?;
    // Let the client offer old versions, so the refusal is the server's.
    b.set_cipher_list("DEFAULT@SECLEVEL=0")
        .map_err(|e| e.to_string())?;
    if !alpn.is_empty() {
        b.set_alpn_protos(alpn).map_err(|e| e.to_string())?;
    }
    let mut cfg = b.build().configure().map_err(|e| e.to_string())?;
    cfg.set_verify_hostname(false);
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    let mut s = cfg.connect(sni, tcp).map_err(|e| e.to_string())?;
    let cert = s.ssl().peer_certificate().ok_or("no certificate")?;
    let names = cert
        .subject_alt_names()
        .map(|n| {
            n.iter()
                .filter_map(|g| g.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let serial = cert
        .serial_number()
        .to_bn()
        .map(|b| b.to_vec())
        .unwrap_or_default();
    let alpn = s.ssl().selected_alpn_protocol().map(|p| p.to_vec());
    let mut response = String::new();
    if alpn.as_deref() != Some(b"h2") {
        s.write_all(
            format!("GET /x HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let _ = s.read_to_string(&mut response);
    }
    Ok(Hello {
        names,
        serial,
        alpn,
        response,
    })
}

fn config(
    dir: &Path,
    (port, tls_port, admin): (u16, u16, u16),
    up: &Upstream,
    a: (&Path, &Path),
    b: (&Path, &Path),
    tls_extra: &str,
) -> String {
    format!(
        "server: {{ threads: 1, pid_file: {d}/p.pid, upgrade_sock: {d}/u.sock }}\nlisteners:\n  - {{ name: public, address: \"127.0.0.1:{port}\" }}\n  - name: secure\n    address: \"127.0.0.1:{tls_port}\"\n    http2: true\n    tls:\n{tls_extra}      certificates:\n        - {{ cert_file: \"{}\", key_file: \"{}\" }}\n        - {{ cert_file: \"{}\", key_file: \"{}\" }}\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nupstreams:\n  app: {{ targets: [\"{}\"] }}\nroutes:\n  - name: app\n    match: {{ path_prefix: / }}\n    upstream: app\n",
        a.0.display(), a.1.display(), b.0.display(), b.1.display(), up.address(),
        d = dir.display()
    )
}

fn start(tls_extra: &str) -> (Moat, X509, Cert, u16, std::path::PathBuf, Upstream) {
    let dir = temp_dir("tls");
    let authority = ca();
    let a = leaf(&authority, &["a.example.com"]);
    let b = leaf(&authority, &["b.example.com", "*.b.example.com"]);
    let pa = a.write(&dir, "a");
    let pb = b.write(&dir, "b");
    let up = Upstream::start("app");
    let (port, tls_port, admin) = (free_port(), free_port(), free_port());
    let text = config(
        &dir,
        (port, tls_port, admin),
        &up,
        (&pa.0, &pa.1),
        (&pb.0, &pb.1),
        tls_extra,
    );
    let m = Moat::start_raw(&text, port, admin, dir.clone(), &[]);
    (m, authority.cert.clone(), authority, tls_port, dir, up)
}

const MODERN: (SslVersion, SslVersion) = (SslVersion::TLS1_2, SslVersion::TLS1_3);

#[test]
fn sni_versions_alpn_and_certificate_reload() {
    let (m, ca_cert, authority, port, dir, up) = start("");
    let a = hello(port, "a.example.com", &ca_cert, MODERN, b"").unwrap();
    assert_eq!(a.names, ["a.example.com"]);
    assert!(a.response.starts_with("HTTP/1.1 200"), "{}", a.response);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        hello(port, "b.example.com", &ca_cert, MODERN, b"")
            .unwrap()
            .names[0],
        "b.example.com"
    );
    assert_eq!(
        hello(port, "x.b.example.com", &ca_cert, MODERN, b"")
            .unwrap()
            .names[0],
        "b.example.com"
    );
    // Unknown name: the first certificate.
    assert_eq!(
        hello(port, "other.example.org", &ca_cert, MODERN, b"")
            .unwrap()
            .names[0],
        "a.example.com"
    );

    // TLS 1.1 is refused by the server.
    assert!(hello(
        port,
        "a.example.com",
        &ca_cert,
        (SslVersion::TLS1_1, SslVersion::TLS1_1),
        b""
    )
    .is_err());

    // ALPN: h2 is chosen when offered (http2: true); HTTP/1.1 otherwise.
    let h2 = hello(
        port,
        "a.example.com",
        &ca_cert,
        MODERN,
        b"\x02h2\x08http/1.1",
    )
    .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    let h1 = hello(port, "a.example.com", &ca_cert, MODERN, b"\x08http/1.1").unwrap();
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));

    // New certificate files + reload: new handshakes get the new certificate.
    let renewed = leaf(&authority, &["a.example.com"]);
    renewed.write(&dir, "a");
    let r = m.admin_post("/reload");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["changed"], true);
    let after = hello(port, "a.example.com", &ca_cert, MODERN, b"").unwrap();
    assert_ne!(after.serial, a.serial);
}

#[test]
fn min_version_1_3_refuses_1_2() {
    let (_m, ca_cert, _authority, port, _dir, _up) = start("      min_version: \"1.3\"\n");
    assert!(hello(
        port,
        "a.example.com",
        &ca_cert,
        (SslVersion::TLS1_2, SslVersion::TLS1_2),
        b""
    )
    .is_err());
    assert!(hello(
        port,
        "a.example.com",
        &ca_cert,
        (SslVersion::TLS1_3, SslVersion::TLS1_3),
        b""
    )
    .is_ok());
}

#[test]
fn redirect_https_only_for_named_hosts() {
    let dir = temp_dir("redir");
    let (port, plain2, admin) = (free_port(), free_port(), free_port());
    let text = format!(
        "server: {{ threads: 1, pid_file: {d}/p.pid, upgrade_sock: {d}/u.sock }}\nlisteners:\n  - {{ name: web, address: \"127.0.0.1:{port}\", redirect_https: 8443 }}\n  - {{ name: other, address: \"127.0.0.1:{plain2}\" }}\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\nroutes:\n  - name: api\n    match: {{ hosts: [api.example.com, \"*.apps.example.com\"] }}\n    respond: {{ body: ok }}\n",
        d = dir.display()
    );
    let m = Moat::start_raw(&text, port, admin, dir, &[]);
    let get = |host: &str, path: &str| {
        crate::harness::request(m.port, "GET", path, &[("Host", host)], b"")
    };
    let r = get("API.example.com:80", "/a/b?c=1");
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some("https://api.example.com:8443/a/b?c=1")
    );
    assert_eq!(
        get("x.apps.example.com", "/").header("location"),
        Some("https://x.apps.example.com:8443/")
    );
    // A host no route names never ends up in Location.
    let r = get("evil.example.net", "/");
    assert_eq!(r.status, 404);
    assert!(r.header("location").is_none());
    // The other listener serves normally.
    let r = crate::harness::request(plain2, "GET", "/", &[("Host", "api.example.com")], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
}
