//! TLS termination: certificates chosen by SNI, `min_version`, ALPN (h2 when a listener
//! says `http2: true`).
//!
//! Each TLS listener's certificates are compiled into a [`CertStore`] that lives in the
//! runtime, so a reload re-reads the files and new handshakes use the new certificates
//! without a restart (the handshake callback that reads it is `server::tls`). A
//! certificate serves the DNS names in its subjectAltName (or its CN when it has none),
//! exact or `*.` wildcard; a handshake whose SNI matches none, or that
//! sends no SNI, gets the listener's first certificate.

use crate::config::error::{index, join, ConfigErrors};
use crate::config::model::ListenerConfig;
use pingora_core::tls::pkey::{PKey, Private};
use pingora_core::tls::x509::X509;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One certificate (with its chain) and key.
pub struct CertEntry {
    names: Vec<String>,
    /// The certificate, then its chain.
    pub(crate) chain: Vec<X509>,
    /// Its private key.
    pub(crate) key: PKey<Private>,
}

/// The certificates of one listener; the first is the default.
#[derive(Default)]
pub struct CertStore {
    entries: Vec<CertEntry>,
    /// SHA-256 of every file read, to tell a reload whether anything changed.
    pub fingerprint: Vec<u8>,
}

fn names_of(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(|d| d.to_ascii_lowercase()))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        if let Some(cn) = cert
            .subject_name()
            .entries_by_nid(pingora_core::tls::nid::Nid::COMMONNAME)
            .next()
            .and_then(|e| e.data().to_string().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    names
}

fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

impl CertStore {
    /// The entry for `sni` (exact names first, then wildcards, then the default).
    pub(crate) fn pick(&self, sni: Option<&str>) -> Option<&CertEntry> {
        if let Some(host) = sni.map(|s| s.trim_end_matches('.').to_ascii_lowercase()) {
            let exact = self.entries.iter().find(|e| e.names.contains(&host));
            let wild = || {
                self.entries.iter().find(|e| {
                    e.names
                        .iter()
                        .any(|n| n.starts_with("*.") && name_matches(n, &host))
                })
            };
            if let Some(e) = exact.or_else(wild) {
                return Some(e);
            }
        }
        self.entries.first()
    }
}

/// Compile the certificates of every TLS listener, by listener name.
pub fn compile(
    listeners: &[ListenerConfig],
    errs: &mut ConfigErrors,
) -> BTreeMap<String, Arc<CertStore>> {
    let mut out = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let Some(tls) = &l.tls else { continue };
        let path = join(&index("listeners", i), "tls");
        if let Some(v) = &tls.min_version {
            if v != "1.2" && v != "1.3" {
                errs.push(
                    join(&path, "min_version"),
                    format!("`{v}`: expected \"1.2\" or \"1.3\""),
                );
            }
        }
        if tls.certificates.is_empty() {
            errs.push(join(&path, "certificates"), "list at least one certificate");
        }
        let mut store = CertStore::default();
        let mut digest = sha2::Sha256::default();
        for (j, c) in tls.certificates.iter().enumerate() {
            let cp = index(&join(&path, "certificates"), j);
            let chain = match std::fs::read(&c.cert_file)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    sha2::Digest::update(&mut digest, &pem);
                    X509::stack_from_pem(&pem).map_err(|e| e.to_string())
                }) {
                Ok(chain) if !chain.is_empty() => chain,
                Ok(_) => {
                    errs.push(
                        join(&cp, "cert_file"),
                        format!("`{}` holds no PEM certificate", c.cert_file),
                    );
                    continue;
                }
                Err(e) => {
                    errs.push(
                        join(&cp, "cert_file"),
                        format!("cannot read `{}`: {e}", c.cert_file),
                    );
                    continue;
                }
            };
            let key = match std::fs::read(&c.key_file)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    sha2::Digest::update(&mut digest, &pem);
                    PKey::private_key_from_pem(&pem).map_err(|e| e.to_string())
                }) {
                Ok(k) => k,
                Err(e) => {
                    errs.push(
                        join(&cp, "key_file"),
                        format!("cannot read a PEM private key from `{}`: {e}", c.key_file),
                    );
                    continue;
                }
            };
            let matches = chain[0]
                .public_key()
                .map(|pk| pk.public_eq(&key))
                .unwrap_or(false);
            if !matches {
                errs.push(cp.clone(), "the key does not belong to the certificate");
                continue;
            }
            store.entries.push(CertEntry {
                names: names_of(&chain[0]),
                chain,
                key,
            });
        }
        store.fingerprint = sha2::Digest::finalize(digest).to_vec();
        out.insert(l.name.clone(), Arc::new(store));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_names() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(name_matches("api.example.com", "api.example.com"));
    }
}
