//! Outgoing network policy: which HTTP destinations and socket addresses a
//! sandbox may reach.
//!
//! HTTP is checked twice. First the request's host and port must match a
//! granted pattern; then the name is resolved and every address is checked,
//! so that a granted name cannot be pointed at loopback, a private network or
//! a cloud metadata service (DNS rebinding). Such addresses pass only when the
//! grant says `allow_private = true` or names the IP literally. The connection
//! is then made to the checked address itself (TLS still verifies the name),
//! so the name cannot be re-resolved to somewhere else in between.

use crate::tenancy::grants::HostPattern;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Whether `ip` is loopback, private, link-local (cloud metadata included),
/// carrier-grade NAT, unspecified, broadcast, multicast, documentation or
/// otherwise not a public unicast address.
pub fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_restricted_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_restricted_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || (first == 0x0064 && v6.segments()[1] == 0xff9b) // NAT64 may reach v4 privates
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) // AWS metadata v6
        }
    }
}

fn is_restricted_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local() // 169.254/16, cloud metadata
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64/10 carrier-grade NAT
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0/24 protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18/15 benchmarking
        || o[0] >= 240 // reserved
}

/// The refused connection attempts of one call, for its report: at most
/// 32, repeats not kept.
pub type DenialLog = super::notes::CallNotes<32>;

/// Log a denial and note it for the call's report.
fn record(denials: &DenialLog, message: String) {
    tracing::warn!(target: "loom::egress", "{message}");
    denials.note(message);
}

/// The `wasi:http` hooks of one call: the tenant's HTTP grants for this plugin.
pub struct EgressHooks {
    /// Granted destinations.
    pub allowed: Arc<[HostPattern]>,
    /// Where refusals are recorded.
    pub denials: DenialLog,
    /// One permit per HTTP connection the call may have open at once; each
    /// connection holds a host descriptor until it closes. `None` when
    /// nothing is granted (every request is refused anyway).
    pub connections: Option<Arc<tokio::sync::Semaphore>>,
}

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ),
                    HttpError,
                >,
            > + Send,
    > {
        drop(fut);
        let allowed = self.allowed.clone();
        let denials = self.denials.clone();
        let connections = self.connections.clone();
        Box::new(async move {
            let uri = request.uri().clone();
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
            let host = authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
            let Some(pattern) = allowed.iter().find(|p| p.matches(&host, port)) else {
                record(
                    &denials,
                    format!("http to {host}:{port} denied: not granted to this tenant"),
                );
                return Err(HttpError::HttpRequestDenied);
            };
            let Some(Ok(permit)) = connections.map(|c| c.try_acquire_owned()) else {
                record(
                    &denials,
                    "http request refused: the call has as many connections open as \
                     limits.max_open_files allows"
                        .to_owned(),
                );
                return Err(HttpError::ConnectionLimitReached);
            };
            let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host.as_str(), port))
                    .await
                    .map_err(|e| HttpError::DnsError {
                        rcode: Some(e.to_string()),
                        info_code: None,
                    })?
                    .collect(),
            };
            let private_ok = pattern.allow_private || pattern.is_explicit_address();
            let Some(target) = resolved
                .iter()
                .find(|addr| private_ok || !is_restricted(addr.ip()))
                .copied()
            else {
                record(
                    &denials,
                    format!(
                        "http to {host}:{port} denied: it resolves to restricted address(es) {resolved:?}; \
                         grant it with allow_private = true if that is intended"
                    ),
                );
                return Err(HttpError::DestinationIpProhibited);
            };
            send_pinned(request, options, target, &host, https, permit).await
        })
    }
}

/// Anything a connection can run over.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// Send `request` over a connection to `target`, an address already checked
/// against the policy; for HTTPS, verify the certificate against `host`.
async fn send_pinned(
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    target: SocketAddr,
    host: &str,
    https: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
> {
    use http_body_util::BodyExt;
    use std::time::Duration;
    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(Duration::from_secs(30));
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(Duration::from_secs(60));
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(target))
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Connect)?;
    let stream: Box<dyn Stream> = if https {
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(HttpError::InvalidDnsNameError)?;
        let tls = tokio::time::timeout(
            connect_timeout,
            tokio_rustls::TlsConnector::from(crate::tls::client_config()).connect(name, tcp),
        )
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
        .map_err(HttpError::Tls)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(wasmtime_wasi_http::io::TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)?
    .map_err(HttpError::from)?;
    // The permit lives as long as the connection: it is given back when the
    // connection closes.
    let connection = tokio::spawn(async move {
        let outcome = connection.await;
        drop(permit);
        outcome
    });
    // Origin-form request target; the Host header carries the name.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| HttpError::ConnectionReadTimeout)?
        .map_err(HttpError::from)?;
    let response = response.map(|body| body.map_err(HttpError::from).boxed_unsync());
    let finished = async move {
        match connection.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(HttpError::from(error)),
            Err(_) => Err(HttpError::ConnectionTerminated),
        }
    };
    Ok((response, Box::new(finished)))
}

/// The socket check of one call: only the granted TCP addresses.
pub fn socket_check(
    granted: Arc<[SocketAddr]>,
    denials: DenialLog,
) -> impl Fn(
    SocketAddr,
    wasmtime_wasi::sockets::SocketAddrUse,
) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, usage| {
        use wasmtime_wasi::sockets::SocketAddrUse;
        let ok = match usage {
            SocketAddrUse::TcpConnect => granted.contains(&addr),
            // `connect` first binds implicitly to the wildcard address.
            SocketAddrUse::TcpBind => {
                !granted.is_empty() && addr.ip().is_unspecified() && addr.port() == 0
            }
            _ => false,
        };
        if !ok {
            record(
                &denials,
                format!("socket {usage:?} to {addr} denied: not granted to this tenant"),
            );
        }
        Box::pin(async move { ok })
    }
}

#[cfg(test)]
mod tests {
    use super::is_restricted;

    #[test]
    fn restricted_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(
                is_restricted(ip.parse().unwrap()),
                "{ip} should be restricted"
            );
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(!is_restricted(ip.parse().unwrap()), "{ip} should be public");
        }
    }
}
