//! HTTPS GET of an issuer's discovery document and JWK set, over Pingora's connector (the
//! same TLS client upstream groups use), with the issuer's own CA store.

use boring::x509::X509;
use pingora_core::connectors::http::Connector;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Largest document read (a JWK set of a few dozen RSA keys is well under this).
const MAX_DOCUMENT: usize = 512 * 1024;

/// Fetches documents of one issuer.
pub(crate) struct Fetcher {
    connector: Connector,
    ca: Option<Arc<Box<[X509]>>>,
    timeout: Duration,
}

/// Set by the handshake hook when the server's certificate names the IP literal dialled.
struct IpChecked(bool);

impl Fetcher {
    /// A fetcher trusting `ca` (else the system's roots), each GET bounded by `timeout`.
    pub fn new(ca: Option<Vec<X509>>, timeout: Duration) -> Fetcher {
        Fetcher {
            connector: Connector::new(None),
            ca: ca.map(|c| Arc::new(c.into_boxed_slice())),
            timeout,
        }
    }

    /// The body of a 200 answer to `GET url` (`https://` only), or why not.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(self.timeout, self.get_unbounded(url)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }

    async fn get_unbounded(&self, url: &str) -> Result<Vec<u8>, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err("not an https:// URL".into());
        }
        let host = uri.host().ok_or("no host")?.to_string();
        let port = uri.port_u16().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let mut last = format!("{host} resolves to no address");
        // Each address gets its share of the connect budget, so one that does not answer
        // leaves time for the next.
        let share = u32::try_from(addrs.len().max(1)).unwrap_or(u32::MAX);
        let connect = (self.timeout / share).max(Duration::from_secs(1));
        for addr in addrs {
            match self
                .get_from(addr, connect, &uri, &host, bare.parse().ok())
                .await
            {
                Ok(body) => return Ok(body),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    async fn get_from(
        &self,
        addr: std::net::SocketAddr,
        connect: Duration,
        uri: &http::Uri,
        host: &str,
        ip: Option<IpAddr>,
    ) -> Result<Vec<u8>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let mut peer = HttpPeer::new(addr, true, bare.to_string());
        let o = &mut peer.options;
        o.ca = self.ca.clone();
        o.verify_cert = true;
        o.connection_timeout = Some(connect);
        o.read_timeout = Some(self.timeout);
        o.write_timeout = Some(self.timeout);
        if let Some(ip) = ip {
            // Pingora checks names only against DNS names; an IP literal must be one of the
            // certificate's IP addresses, checked in the handshake and required below.
            o.verify_hostname = false;
            o.upstream_tls_handshake_complete_hook = Some(Arc::new(move |ssl| {
                let ok = ssl.peer_certificate().is_some_and(|c| {
                    c.subject_alt_names().is_some_and(|names| {
                        names
                            .iter()
                            .filter_map(|n| n.ipaddress())
                            .any(|b| ip_bytes(ip) == b)
                    })
                });
                Some(Arc::new(IpChecked(ok)))
            }));
        }
        let (mut session, _) = self
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        if ip.is_some() {
            let checked = session
                .digest()
                .and_then(|d| d.ssl_digest.as_ref())
                .and_then(|d| d.extension.get::<IpChecked>())
                .is_some_and(|c| c.0);
            if !checked {
                return Err(format!("{addr}: the certificate does not name {bare}"));
            }
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let mut req =
            RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
        // The authority as in the URL, port included: a server builds its links from it.
        let authority = uri.authority().map_or(host, |a| a.as_str());
        req.insert_header(http::header::HOST, authority)
            .and_then(|()| req.insert_header(http::header::ACCEPT, "application/json"))
            .and_then(|()| req.insert_header("user-agent", "gatehouse"))
            .map_err(|e| e.to_string())?;
        let fail = |e: Box<pingora_error::Error>| format!("{addr}: {e}");
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(fail)?;
        session.finish_request_body().await.map_err(fail)?;
        session.read_response_header().await.map_err(fail)?;
        let status = session.response_header().map_or(0, |h| h.status.as_u16());
        if status != 200 {
            return Err(format!("{addr}: status {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = session.read_response_body().await.map_err(fail)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(format!("{addr}: the answer is over {MAX_DOCUMENT} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}
