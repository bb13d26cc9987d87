//! The cluster relay's upstream TLS client: one BoringSSL context (one X509 store) per upstream
//! group and TLS material generation, and a cache of the sessions the master handed out, so a
//! link that reconnects (an agent after a network blip, a replaced link) resumes instead of
//! paying a full handshake on both sides.
//!
//! Pingora's connector cannot offer a session (no hook reaches the `Ssl` before its
//! handshake) and builds an X509 store per connection from the peer's CA. So the relay uses
//! Pingora's TCP connect (a plain-TCP peer through `TransportConnector`: its timeouts,
//! keepalive, socket digest) and Pingora's TLS client handshake, on a `ConnectConfiguration`
//! of ours set up as Pingora's own (`connectors::tls::connect`: ciphers, sigalgs, curves,
//! verification, SNI).
//!
//! A session carries the identity it was made with: the master reads the client certificate
//! from the ticket, not from a new handshake. So a session is kept under the peer *and* the
//! certificate the link presented (a digest of its leaf), offered only to a link presenting
//! the same one, and used once (TLS 1.3 tickets are single-use); a reload makes a new
//! context and drops every session with the old one.

use boring::ex_data::Index;
use boring::hash::MessageDigest;
use boring::ssl::{
    ConnectConfiguration, Ssl, SslConnector, SslMethod, SslSession, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use boring::x509::store::X509StoreBuilder;
use boring::x509::X509;
use pingora_core::utils::tls::CertKey;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};

/// Pingora's client cipher, signature and curve lists (`connectors::tls`, private there).
const CIPHER_LIST: &str = "AES-128-GCM-SHA256:AES-256-GCM-SHA384:CHACHA20-POLY1305-SHA256:\
ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:AES128-GCM-SHA256:\
AES256-GCM-SHA384:AES128-SHA:AES256-SHA:DES-CBC3-SHA";
const SIGALG_LIST: &str = "ecdsa_secp256r1_sha256:rsa_pss_rsae_sha256:rsa_pkcs1_sha256:\
ecdsa_secp384r1_sha384:rsa_pss_rsae_sha384:rsa_pkcs1_sha384:rsa_pss_rsae_sha512:\
rsa_pkcs1_sha512:rsa_pkcs1_sha1:ecdsa_secp521r1_sha512";
const CURVES_LIST: &str = "X25519:P-256:P-384:P-521";

/// Sessions kept at most, over all peers and identities of one group (a ticket is ~1–2 KiB
/// with an RSA-4096 client certificate in it).
const MAX_SESSIONS: usize = 4096;
/// Sessions kept per peer and identity (a master sends two tickets after a full handshake).
const PER_KEY: usize = 2;

/// How a group's peers are checked and greeted: its `tls` block, as the relay needs it.
pub(crate) struct PeerTls<'a> {
    /// The SNI sent (empty: none, and the peer's certificate is not checked).
    pub(crate) sni: &'a str,
    pub(crate) curves: Option<&'a str>,
    pub(crate) verify_cert: bool,
    pub(crate) verify_hostname: bool,
    /// Another name the peer's certificate may carry.
    pub(crate) alt_cn: Option<&'a str>,
}

/// Where a session may be offered again: the same peer, presenting the same certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SessionKey {
    peer: SocketAddr,
    /// SHA-256 of the presented leaf's DER; zeros when none is presented.
    identity: [u8; 32],
}

impl SessionKey {
    /// The key of a link to `peer` presenting `cert` (`None`: no client certificate).
    pub(crate) fn new(peer: SocketAddr, cert: Option<&X509>) -> SessionKey {
        let mut identity = [0; 32];
        if let Some(d) = cert.and_then(|c| c.digest(MessageDigest::sha256()).ok()) {
            identity.copy_from_slice(&d);
        }
        SessionKey { peer, identity }
    }
}

/// The session key of a connection, for the new-session callback.
static KEY: LazyLock<Index<Ssl, SessionKey>> =
    LazyLock::new(|| Ssl::new_ex_index().expect("an ex_data index"));

/// The sessions of one context, by where they may be offered; each is taken on use.
#[derive(Default)]
struct Sessions {
    by_key: Mutex<HashMap<SessionKey, Vec<SslSession>>>,
}

impl Sessions {
    fn put(&self, key: SessionKey, s: SslSession) {
        let mut m = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_SESSIONS && !m.contains_key(&key) {
            // Bounded: a full cache forgets an arbitrary peer's sessions (it resumes no more
            // than a cache that never had them).
            if let Some(k) = m.keys().next().cloned() {
                m.remove(&k);
            }
        }
        let v = m.entry(key).or_default();
        if v.len() >= PER_KEY {
            v.remove(0);
        }
        v.push(s);
    }

    fn take(&self, key: &SessionKey) -> Option<SslSession> {
        let mut m = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let v = m.get_mut(key)?;
        let s = v.pop();
        if v.is_empty() {
            m.remove(key);
        }
        s
    }
}

/// One group's relay TLS client for one generation of its TLS material.
pub(crate) struct RelayClient {
    connector: SslConnector,
    sessions: Arc<Sessions>,
}

impl RelayClient {
    /// A client trusting `ca` (the system's store without one): one context, one store.
    pub(crate) fn new(ca: Option<&[X509]>) -> Result<RelayClient, boring::error::ErrorStack> {
        let mut b = SslConnector::builder(SslMethod::tls())?;
        b.set_cipher_list(CIPHER_LIST)?;
        b.set_sigalgs_list(SIGALG_LIST)?;
        b.set_curves_list(CURVES_LIST)?;
        b.set_max_proto_version(Some(SslVersion::TLS1_3))?;
        b.set_min_proto_version(Some(SslVersion::TLS1))?;
        match ca {
            Some(ca) => {
                let mut s = X509StoreBuilder::new()?;
                for c in ca {
                    s.add_cert(c.clone())?;
                }
                b.set_cert_store(s.build());
            }
            None => b.set_default_verify_paths()?,
        }
        let sessions = Arc::new(Sessions::default());
        let store = sessions.clone();
        b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
        // TLS 1.3 tickets arrive after the handshake, on the link's first reads.
        b.set_new_session_callback(move |ssl, session| {
            if let Some(key) = ssl.ex_data(*KEY) {
                store.put(key.clone(), session);
            }
        });
        Ok(RelayClient {
            connector: b.build(),
            sessions,
        })
    }

    /// A connection's TLS settings, as Pingora's connector would make them for peers of `m`,
    /// presenting `cert`, with a session for `key` offered (and taken) when one is kept.
    pub(crate) fn configure(
        &self,
        m: &PeerTls<'_>,
        cert: Option<&CertKey>,
        key: SessionKey,
    ) -> Result<ConnectConfiguration, boring::error::ErrorStack> {
        use pingora_core::tls::ext;
        let mut conf = self.connector.configure()?;
        if let Some(ck) = cert {
            ext::ssl_use_certificate(&mut conf, ck.leaf())?;
            ext::ssl_use_private_key(&mut conf, ck.key())?;
            for i in ck.intermediates() {
                ext::ssl_add_chain_cert(&mut conf, i)?;
            }
        }
        if let Some(c) = m.curves {
            ext::ssl_set_groups_list(&mut conf, c)?;
        }
        let sni = m.sni;
        if sni.is_empty() {
            conf.set_use_server_name_indication(false);
            conf.set_verify(SslVerifyMode::NONE);
        } else if m.verify_cert {
            if m.verify_hostname {
                let p = conf.param_mut();
                ext::add_host(p, sni)?;
                if let Some(alt) = m.alt_cn.filter(|a| !a.is_empty()) {
                    ext::add_host(p, alt)?;
                }
            }
            conf.set_verify(SslVerifyMode::PEER);
        } else {
            conf.set_verify(SslVerifyMode::NONE);
        }
        // As Pingora: the names added above are the check; this would replace them.
        conf.set_verify_hostname(false);
        if let Some(s) = self.sessions.take(&key) {
            // A session that does not fit is not offered; the handshake is a full one.
            let _ = crate::ffi::offer_session(&mut conf, &s);
        }
        conf.set_ex_data(*KEY, key);
        // A link lives for days after its handshake: the configuration copy is freed then.
        crate::ffi::shed_handshake_config(&mut conf);
        ext::clear_error_stack();
        Ok(conf)
    }
}
