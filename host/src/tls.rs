//! The one TLS client configuration of the host: rustls with its compiled-in
//! provider (ring) and the webpki roots. Model providers and the sandbox's
//! outgoing HTTPS both use it; only the ALPN offer differs.

use std::sync::{Arc, OnceLock};

/// The shared configuration without ALPN (HTTP/1.1 over TLS, as the
/// sandbox's `wasi:http` client speaks).
pub fn client_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| Arc::new(base())).clone()
}

/// The shared configuration offering HTTP/2 and HTTP/1.1 by ALPN, for
/// clients that speak both (model providers).
pub fn client_config_h2() -> rustls::ClientConfig {
    let mut config = base();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

fn base() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}
