//! Test certificates (a CA and leaves signed by it, made fresh per test) and a TLS
//! upstream that answers `200 tls-ok` to every request.

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Name, X509};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A certificate and its key.
pub struct Cert {
    pub cert: X509,
    pub key: PKey<Private>,
}

fn build(cn: &str, sans: &[&str], issuer: Option<&Cert>) -> Cert {
    let key = PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match issuer {
        None => {
            b.set_issuer_name(&name).unwrap();
            b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
        }
        Some(ca) => {
            b.set_issuer_name(ca.cert.subject_name()).unwrap();
            let mut san = SubjectAlternativeName::new();
            for s in sans {
                // An IP address is an IP SAN (checked against connections by address).
                if s.parse::<std::net::IpAddr>().is_ok() {
                    san.ip(s);
                } else {
                    san.dns(s);
                }
            }
            let ext = san.build(&b.x509v3_context(Some(&ca.cert), None)).unwrap();
            b.append_extension(ext).unwrap();
        }
    }
    let signer = issuer.map(|c| &c.key).unwrap_or(&key);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    Cert {
        cert: b.build(),
        key,
    }
}

/// A new CA.
pub fn ca() -> Cert {
    build("moat test CA", &[], None)
}

/// A leaf for `names`, signed by `ca`.
pub fn leaf(ca: &Cert, names: &[&str]) -> Cert {
    build(names[0], names, Some(ca))
}

impl Cert {
    /// Write `cert.pem`/`key.pem` under `dir` with `prefix`; returns their paths.
    pub fn write(&self, dir: &Path, prefix: &str) -> (PathBuf, PathBuf) {
        let c = dir.join(format!("{prefix}.crt"));
        let k = dir.join(format!("{prefix}.key"));
        std::fs::write(&c, self.cert.to_pem().unwrap()).unwrap();
        std::fs::write(&k, self.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        (c, k)
    }
}

/// A TLS acceptor presenting `cert` (the leaf).
pub fn acceptor(cert: &Cert) -> Arc<SslAcceptor> {
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    acc.set_private_key(&cert.key).unwrap();
    acc.set_certificate(&cert.cert).unwrap();
    Arc::new(acc.build())
}

/// A TLS upstream on 127.0.0.1:0 answering `200 tls-ok`; counts requests.
pub struct TlsUpstream {
    pub port: u16,
    pub hits: Arc<AtomicUsize>,
}

impl TlsUpstream {
    /// Serve with `cert` (the leaf) until the process ends (threads are detached).
    pub fn start(cert: &Cert) -> TlsUpstream {
        let acc = acceptor(cert);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&hits);
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let acc = Arc::clone(&acc);
                let h = Arc::clone(&h);
                std::thread::spawn(move || {
                    let Ok(mut s) = acc.accept(conn) else { return };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\ntls-ok",
                    );
                    let _ = s.shutdown();
                });
            }
        });
        TlsUpstream { port, hits }
    }
}
