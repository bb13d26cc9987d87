//! Upstream TLS: one upstream's own trust store, client identity and handshake options,
//! applied to every `HttpPeer` Gatehouse builds for it.

use super::relay_client::{PeerTls, RelayClient};
use crate::config::{ConfigError, UpstreamTlsSettings};
use boring::ssl::{SslConnector, SslMethod};
use boring::x509::X509;
use pingora_core::protocols::tls::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// Loaded upstream TLS settings, ready to stamp onto peers.
#[derive(Clone)]
pub struct UpstreamTlsMaterial {
    sni: String,
    ca: Option<Arc<Box<[X509]>>>,
    client: Option<Arc<CertKey>>,
    verify_cert: bool,
    verify_hostname: bool,
    alt_cn: Option<String>,
    curves: Option<Cow<'static, str>>,
    alpn: ALPN,
    /// Hash of everything above. Pingora's pool key ignores the CA store (and ALPN), so
    /// without this a peer with the wrong CA could reuse a connection made with the right one.
    group_key: u64,
    /// The cluster relay's client for these settings (its sessions die with them).
    relay: Arc<RelayClient>,
}

impl UpstreamTlsMaterial {
    /// Loads the files `t` names; `at` is its key path (`upstreams.kea.tls`).
    pub fn load(t: &UpstreamTlsSettings, at: &str) -> Result<Self, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let ca = t.ca.as_ref().and_then(|p| {
            super::load_certs(p, &format!("{at}.ca"))
                .map_err(|e| errs.push(e))
                .ok()
        });
        let client = t.client.as_ref().and_then(|files| {
            super::load_chain(files, at, ("client_cert", "client_key"), &mut errs)
        });
        if let Some(c) = &t.curves {
            let ok = SslConnector::builder(SslMethod::tls())
                .map(|mut b| b.set_curves_list(c).is_ok())
                .unwrap_or(false);
            if !ok {
                errs.push(ConfigError::new(
                    format!("{at}.curves"),
                    format!("`{c}` is not a valid curve list"),
                ));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        let ca: Option<Arc<Box<[X509]>>> = ca.map(|v| Arc::new(v.into_boxed_slice()));

        let mut h = DefaultHasher::new();
        t.sni.hash(&mut h);
        for c in ca.iter().flat_map(|c| c.iter()) {
            c.to_der().unwrap_or_default().hash(&mut h);
        }
        if let Some(cc) = &client {
            for c in &cc.chain {
                c.to_der().unwrap_or_default().hash(&mut h);
            }
        }
        (t.verify_cert, t.verify_hostname, &t.alt_cn, &t.curves).hash(&mut h);
        t.alpn.hash(&mut h);

        let relay = RelayClient::new(ca.as_deref().map(|c| &c[..])).map_err(|e| {
            vec![ConfigError::new(
                at.to_string(),
                format!("cannot make a TLS client of these settings: {e}"),
            )]
        })?;
        Ok(UpstreamTlsMaterial {
            sni: t.sni.clone(),
            ca,
            client: client.map(|c| Arc::new(CertKey::new(c.chain, c.key))),
            verify_cert: t.verify_cert,
            verify_hostname: t.verify_hostname,
            alt_cn: t.alt_cn.clone(),
            curves: t.curves.clone().map(Cow::Owned),
            alpn: super::alpn(t.alpn),
            group_key: h.finish(),
            relay: Arc::new(relay),
        })
    }

    /// The cluster relay's TLS client for these settings.
    pub(crate) fn relay_client(&self) -> &RelayClient {
        &self.relay
    }

    /// The client certificate presented by default (`client_cert`).
    pub(crate) fn client(&self) -> Option<&Arc<CertKey>> {
        self.client.as_ref()
    }

    /// How peers are checked and greeted, for the relay's client.
    pub(crate) fn peer_tls(&self) -> PeerTls<'_> {
        PeerTls {
            sni: &self.sni,
            curves: self.curves.as_deref(),
            verify_cert: self.verify_cert,
            verify_hostname: self.verify_hostname,
            alt_cn: self.alt_cn.as_deref(),
        }
    }

    /// The client certificate presented to peers, if any.
    pub fn client_leaf(&self) -> Option<&X509> {
        self.client.as_ref().map(|c| c.leaf())
    }

    /// The SNI sent to peers.
    pub fn sni(&self) -> &str {
        &self.sni
    }

    /// Stamps these settings onto a TLS peer.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.sni = self.sni.clone();
        peer.client_cert_key = self.client.clone();
        peer.group_key = self.group_key;
        let o = &mut peer.options;
        o.ca = self.ca.clone();
        o.verify_cert = self.verify_cert;
        o.verify_hostname = self.verify_hostname;
        o.alternative_cn = self.alt_cn.clone();
        o.curves = self.curves.clone();
        o.alpn = self.alpn.clone();
    }
}
