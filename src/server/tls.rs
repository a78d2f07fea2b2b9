//! The TLS side of a listener: the handshake callback that picks the certificate of the
//! live runtime by SNI (see [`crate::tls`] for how certificates are compiled), and the
//! Pingora settings (`min_version`, ALPN h2).

use crate::config::model::ListenerConfig;
use crate::runtime::SharedRuntime;
use async_trait::async_trait;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::tls::ext;
use pingora_core::tls::ssl::{NameType, SslVersion};

/// The handshake callback of one listener: picks the certificate from the live runtime.
pub struct SniCallback {
    runtime: SharedRuntime,
    listener: String,
}

impl SniCallback {
    /// A callback for the listener named `listener`.
    pub fn new(runtime: SharedRuntime, listener: String) -> SniCallback {
        SniCallback { runtime, listener }
    }
}

#[async_trait]
impl TlsAccept for SniCallback {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let rt = self.runtime.load();
        let Some(store) = rt.tls.get(&self.listener) else {
            return;
        };
        let sni = ssl.servername(NameType::HOST_NAME).map(str::to_string);
        let Some(entry) = store.pick(sni.as_deref()) else {
            return;
        };
        if ext::ssl_use_certificate(ssl, &entry.chain[0]).is_err()
            || ext::ssl_use_private_key(ssl, &entry.key).is_err()
        {
            log::error!("tls: cannot use the certificate for {:?}", sni);
            return;
        }
        for c in &entry.chain[1..] {
            let _ = ext::ssl_add_chain_cert(ssl, c);
        }
    }
}

/// Pingora TLS settings for a listener.
pub fn settings(
    runtime: SharedRuntime,
    l: &ListenerConfig,
) -> Result<pingora_core::listeners::tls::TlsSettings, String> {
    let cb = Box::new(SniCallback::new(runtime, l.name.clone()));
    let mut s = pingora_core::listeners::tls::TlsSettings::with_callbacks(cb)
        .map_err(|e| format!("listener {}: {e}", l.name))?;
    let min = match l.tls.as_ref().and_then(|t| t.min_version.as_deref()) {
        Some("1.3") => SslVersion::TLS1_3,
        _ => SslVersion::TLS1_2,
    };
    s.set_min_proto_version(Some(min))
        .map_err(|e| format!("listener {}: {e}", l.name))?;
    if l.http2 == Some(true) {
        s.enable_h2();
    }
    Ok(s)
}
