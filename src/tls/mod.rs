//! TLS on both sides: certificate material from files, downstream listener settings
//! (SNI certificates, client authentication), the caller's identity, and upstream trust.
//!
//! Loading is separate from use so that `gatehouse check` can load every file and report
//! every problem, each under the key path that named the file.

pub(crate) mod read_ahead;
pub(crate) mod relay_client;
pub mod upstream;

pub(crate) use crate::identity::TlsInfo;

use crate::config::{
    Alpn, CertKeyFiles, ClientAuth, ConfigError, ListenerSettings, ListenerTlsSettings, TlsVersion,
};
use crate::host::HostPattern;
use crate::logging::Sampler;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use boring::ex_data::Index;
use boring::pkey::{PKey, Private};
use boring::ssl::{
    NameType, Ssl, SslAcceptor, SslAcceptorBuilder, SslMethod, SslOptions, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use boring::x509::{X509StoreContext, X509StoreContextRef, X509VerifyError, X509};
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::{TlsRef, ALPN};
use std::any::Any;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

/// A certificate chain (leaf first) and its private key.
#[derive(Clone)]
pub struct CertChain {
    /// Leaf first, then intermediates.
    pub chain: Vec<X509>,
    /// The leaf's private key.
    pub key: PKey<Private>,
}

impl CertChain {
    /// The leaf certificate.
    pub fn leaf(&self) -> &X509 {
        &self.chain[0]
    }
}

/// Reads a PEM file of one or more certificates (leaf first).
pub fn read_certs(path: &Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), io_reason(&e)))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("{}: not a PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn read_key(path: &Path) -> Result<PKey<Private>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read {}: {}", path.display(), io_reason(&e)))?;
    PKey::private_key_from_pem(&pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", path.display()))
}

/// Whether `key` is the private key of `cert`.
pub fn key_matches(cert: &X509, key: &PKey<Private>) -> bool {
    cert.public_key()
        .map(|pk| pk.public_eq(key))
        .unwrap_or(false)
}

/// Reads certificates named by the config; errors are reported under `at`.
pub fn load_certs(file: &Path, at: &str) -> Result<Vec<X509>, ConfigError> {
    read_certs(file).map_err(|m| ConfigError::new(at, m))
}

/// Reads a chain and its key and checks that they belong together; `at` is the key path of
/// the block naming them (`listeners[0].tls`), whose `cert` / `key` keys get the errors.
pub fn load_chain(
    files: &CertKeyFiles,
    at: &str,
    (cert_key, key_key): (&str, &str),
    errs: &mut Vec<ConfigError>,
) -> Option<CertChain> {
    let chain = load_certs(&files.cert, &format!("{at}.{cert_key}"))
        .map_err(|e| errs.push(e))
        .ok();
    let at_key = format!("{at}.{key_key}");
    let key = read_key(&files.key)
        .map_err(|m| errs.push(ConfigError::new(&at_key, m)))
        .ok();
    let (chain, key) = (chain?, key?);
    if !key_matches(&chain[0], &key) {
        errs.push(ConfigError::new(
            at_key,
            format!(
                "{} does not belong to the certificate in {}",
                files.key.display(),
                files.cert.display()
            ),
        ));
        return None;
    }
    Some(CertChain { chain, key })
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

// === downstream listener ===

/// Everything a listener's TLS needs, loaded from its files and checked.
#[derive(Clone)]
pub struct ListenerTlsMaterial {
    listener: Arc<str>,
    default: CertChain,
    sni: Vec<(HostPattern, CertChain)>,
    client_auth: ClientAuth,
    client_ca: Vec<X509>,
    min_version: TlsVersion,
    curves: Option<String>,
    alpn: ALPN,
    resumption: bool,
    /// `gatehouse_tls_client_verify_failures_total`, counted from the verify callback.
    verify_failures: prometheus::IntCounterVec,
    /// One line per 10 s for enrolling agents, one for rejected certificates: a client repeats
    /// either at will.
    verify_log: Arc<[Sampler; 2]>,
}

impl ListenerTlsMaterial {
    /// Loads the files `l`'s TLS settings `t` name; `at` is their key path
    /// (`listeners[0].tls`). `l` supplies the name for logs and metric labels.
    pub fn load(
        l: &ListenerSettings,
        t: &ListenerTlsSettings,
        at: &str,
        metrics: &Metrics,
    ) -> Result<Self, Vec<ConfigError>> {
        let listener = l.name.as_str();
        let mut errs = Vec::new();
        let default = load_chain(&t.default_cert, at, ("cert", "key"), &mut errs);
        let mut sni = Vec::new();
        for (j, s) in t.sni_certs.iter().enumerate() {
            let sat = format!("{at}.sni_certs[{j}]");
            if let Some(chain) = load_chain(&s.files, &sat, ("cert", "key"), &mut errs) {
                sni.extend(s.names.iter().map(|p| (p.clone(), chain.clone())));
            }
        }
        let client_ca = match &t.client_ca {
            Some(p) => load_certs(p, &format!("{at}.client_ca"))
                .map_err(|e| errs.push(e))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let alpn = alpn(t.alpn);
        let Some(default) = default else {
            return Err(errs);
        };
        let m = ListenerTlsMaterial {
            listener: listener.into(),
            default,
            sni,
            client_auth: t.client_auth,
            client_ca,
            min_version: t.min_version,
            curves: t.curves.clone(),
            alpn,
            resumption: t.session_resumption,
            verify_failures: metrics.tls_verify_failures.clone(),
            verify_log: Arc::new(std::array::from_fn(|_| {
                Sampler::new(std::time::Duration::from_secs(10))
            })),
        };
        // Build once now so that bad curves and the like surface in `check`, not at start.
        if let Err(e) = m
            .contexts(0)
            .and_then(|c| m.acceptor(Arc::new(ArcSwap::from_pointee(c))))
        {
            errs.push(ConfigError::new(at, e));
        }
        if errs.is_empty() {
            Ok(m)
        } else {
            Err(errs)
        }
    }

    /// The per-certificate contexts of one load of this material (`generation` counts reloads).
    pub fn contexts(&self, generation: u64) -> Result<ListenerContexts, String> {
        let sid = self.session_id_context(generation);
        let default = self.context(&self.default, &sid)?;
        let mut sni = Vec::with_capacity(self.sni.len());
        for (p, c) in &self.sni {
            let acc = self
                .context(c, &sid)
                .map_err(|e| format!("sni certificate for {p}: {e}"))?;
            sni.push((p.clone(), acc));
        }
        Ok(ListenerContexts { default, sni })
    }

    /// Sessions only resume within one listener and one load of its material: a client
    /// verified under a CA that a reload removed must do a full handshake again.
    fn session_id_context(&self, generation: u64) -> [u8; 16] {
        let mut h = DefaultHasher::new();
        (&*self.listener, generation).hash(&mut h);
        let mut out = [0u8; 16];
        for (o, b) in out.iter_mut().zip(format!("{:016x}", h.finish()).bytes()) {
            *o = b;
        }
        out
    }

    /// One certificate's context: what BoringSSL reads from the context a handshake was
    /// switched to (certificate, client CA names and store, ALPN, session id context).
    fn context(&self, chain: &CertChain, sid: &[u8]) -> Result<SslAcceptor, String> {
        let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(|e| format!("cannot create TLS context: {e}"))?;
        set_certificate(&mut b, chain)?;
        b.set_session_id_context(sid)
            .map_err(|e| format!("session id context: {e}"))?;
        self.set_client_auth(&mut b);
        for ca in &self.client_ca {
            b.cert_store_mut()
                .add_cert(ca.clone())
                .map_err(|e| format!("client_ca: {e}"))?;
            b.add_client_ca(ca).map_err(|e| format!("client_ca: {e}"))?;
        }
        self.set_alpn(&mut b);
        Ok(b.build())
    }

    /// The acceptor of one listener, with the callbacks every handshake runs: version, curves,
    /// client verification and ALPN live here; every handshake then switches to the current
    /// [`ListenerContexts`] for its certificate and trust, which is what reload swaps. The
    /// listener runs the handshake itself ([`crate::demux`]), through Pingora's
    /// `handshake_with_callback`, so that it can bound it from accept on.
    pub fn acceptor(
        &self,
        live: Arc<ArcSwap<ListenerContexts>>,
    ) -> Result<ListenerAcceptor, String> {
        let mut s = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())
            .map_err(|e| format!("cannot create TLS acceptor: {e}"))?;
        set_certificate(&mut s, &self.default)?;
        if self.min_version == TlsVersion::Tls13 {
            s.set_min_proto_version(Some(SslVersion::TLS1_3))
                .map_err(|e| format!("min_version: {e}"))?;
        }
        if let Some(c) = &self.curves {
            s.set_curves_list(c)
                .map_err(|e| format!("curves: `{c}` is not a valid curve list: {e}"))?;
        }
        self.set_client_auth(&mut s);
        if !self.resumption {
            // BoringSSL copies options into each `SSL` from this, the first context, and keeps
            // the session cache of the first context, so switching contexts later keeps both off.
            s.set_options(SslOptions::NO_TICKET);
            s.set_session_cache_mode(SslSessionCacheMode::OFF);
        }
        self.set_alpn(&mut s);
        Ok(ListenerAcceptor {
            acceptor: s.build(),
            live,
        })
    }

    /// The ALPN choice, the server's preference first (h2, then HTTP/1.1, as allowed).
    fn set_alpn(&self, b: &mut SslAcceptorBuilder) {
        let wire: &'static [u8] = match self.alpn {
            ALPN::H2 => b"\x02h2",
            ALPN::H1 => b"\x08http/1.1",
            _ => b"\x02h2\x08http/1.1",
        };
        b.set_alpn_select_callback(move |_, client| {
            boring::ssl::select_next_proto(wire, client).ok_or(boring::ssl::AlpnError::NOACK)
        });
    }

    /// Client verification, set on the Pingora context and on every switched-to context:
    /// BoringSSL keeps the mode from the first, boring looks the callback up on the second.
    fn set_client_auth(&self, b: &mut SslAcceptorBuilder) {
        let listener = self.listener.clone();
        let failures = self.verify_failures.clone();
        // Optional: accept anything; an unverified client is simply anonymous (Icinga's model).
        let optional = self.client_auth == ClientAuth::Optional;
        let log = self.verify_log.clone();
        let verify = move |ok: bool, ctx: &mut X509StoreContextRef| {
            if !ok {
                let reason = verify_reason(ctx.verify_result());
                failures.with_label_values(&[&listener, reason]).inc();
                log_verify_failure(&listener, optional, reason, ctx, &log);
            }
            ok || optional
        };
        match self.client_auth {
            ClientAuth::Required => b.set_verify_callback(
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
                verify,
            ),
            ClientAuth::Optional => b.set_verify_callback(SslVerifyMode::PEER, verify),
            ClientAuth::None => b.set_verify(SslVerifyMode::NONE),
        }
    }

    /// The listener's name.
    pub fn listener(&self) -> &str {
        &self.listener
    }

    /// The leaf certificates served: `default`, then one per SNI pattern.
    pub fn leaves(&self) -> Vec<(String, &X509)> {
        let mut v = vec![("default".to_string(), self.default.leaf())];
        v.extend(self.sni.iter().map(|(p, c)| (p.to_string(), c.leaf())));
        v
    }
}

/// Pingora's ALPN setting for the model's.
pub fn alpn(a: Alpn) -> ALPN {
    match a {
        Alpn::H1 => ALPN::H1,
        Alpn::H2 => ALPN::H2,
        Alpn::H2H1 => ALPN::H2H1,
    }
}

fn set_certificate(b: &mut SslAcceptorBuilder, c: &CertChain) -> Result<(), String> {
    b.set_certificate(c.leaf())
        .map_err(|e| format!("cert: {e}"))?;
    for x in &c.chain[1..] {
        b.add_extra_chain_cert(x.clone())
            .map_err(|e| format!("cert chain: {e}"))?;
    }
    b.set_private_key(&c.key).map_err(|e| format!("key: {e}"))?;
    b.check_private_key()
        .map_err(|e| format!("key does not match cert: {e}"))
}

/// The TLS contexts a listener's handshakes currently use: one per certificate.
pub struct ListenerContexts {
    default: SslAcceptor,
    sni: Vec<(HostPattern, SslAcceptor)>,
}

impl ListenerContexts {
    fn for_name(&self, name: Option<&str>) -> &SslAcceptor {
        name.and_then(|n| self.sni.iter().find(|(p, _)| p.matches(n)))
            .map_or(&self.default, |(_, a)| a)
    }
}

/// Logs a client certificate that did not verify, naming the peer (set on the connection by
/// [`ListenerAcceptor::callbacks_for`]): on an `optional` listener a self-signed leaf is an
/// Icinga agent enrolling (`icinga2 pki new-cert` makes one), so that is what the line says;
/// anything else is "not accepted", with the reason.
fn log_verify_failure(
    listener: &str,
    optional: bool,
    reason: &str,
    ctx: &X509StoreContextRef,
    log: &[Sampler; 2],
) {
    let peer = X509StoreContext::ssl_idx()
        .ok()
        .and_then(|i| ctx.ex_data(i))
        .and_then(|ssl| peer_index().and_then(|i| ssl.ex_data(i)))
        .map_or("-", |p| &**p);
    let cert = ctx.current_cert();
    let cn = cert
        .and_then(|c| {
            c.subject_name()
                .entries_by_nid(boring::nid::Nid::COMMONNAME)
                .next()
                .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
        })
        .unwrap_or_default();
    let cn = crate::logsafe::EscText(&cn);
    let self_signed = ctx.error_depth() == 0
        && cert.is_some_and(|c| c.public_key().and_then(|k| c.verify(&k)).unwrap_or(false));
    if optional && self_signed {
        if let Some(more) = log[0].admit_note() {
            log::info!(target: "gatehouse::tls", "listener {listener}: {peer}: anonymous (self-signed, enrolling): CN={cn}{more}");
        }
    } else if let Some(more) = log[1].admit_note() {
        let then = if optional {
            "served as anonymous"
        } else {
            "handshake refused"
        };
        log::info!(
            target: "gatehouse::tls",
            "listener {listener}: {peer}: client certificate CN={cn} not accepted: {reason} ({}, depth {}); {then}{more}",
            ctx.verify_result().err().map_or("", |e| e.error_string()),
            ctx.error_depth()
        );
    }
}

/// The connection's peer address on its `Ssl`, for the verify callback's log line.
fn peer_index() -> Option<Index<Ssl, Arc<str>>> {
    static INDEX: std::sync::OnceLock<Option<Index<Ssl, Arc<str>>>> = std::sync::OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// A failed handshake's cause in words, from BoringSSL's reason in Pingora's error text: its
/// index in [`HANDSHAKE_FAILURES`] (`0` when unknown, words empty) and the words. Logs sample
/// per cause, so that one kind (a probe that connects and leaves) does not hide another.
pub fn handshake_failure_cause(error: &str) -> (usize, &'static str) {
    HANDSHAKE_FAILURES
        .iter()
        .position(|(needle, _)| error.contains(needle))
        .map_or((0, ""), |i| (i + 1, HANDSHAKE_FAILURES[i].1))
}

/// BoringSSL reasons (or Pingora's words) a handshake fails with, and what they mean.
pub const HANDSHAKE_FAILURES: &[(&str, &str)] = &[
    (
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "no client certificate (client_auth: required)",
    ),
    (
        "CERTIFICATE_VERIFY_FAILED",
        "its client certificate was not accepted",
    ),
    ("HTTP_REQUEST", "not TLS: plain HTTP on a TLS port"),
    (
        "WRONG_VERSION_NUMBER",
        "not TLS, or a TLS version this listener does not speak",
    ),
    (
        "UNSUPPORTED_PROTOCOL",
        "a TLS version this listener does not speak (min_version)",
    ),
    ("NO_SHARED_CIPHER", "no cipher in common"),
    (
        "NO_SHARED_GROUP",
        "no key-exchange curve in common (curves)",
    ),
    (
        "TLSV1_ALERT_UNKNOWN_CA",
        "the client does not trust this listener's certificate",
    ),
    (
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "the client refused this listener's certificate",
    ),
    (
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "the client refused this listener's certificate",
    ),
    (
        "unexpected EOF",
        "the client closed the connection during the handshake",
    ),
];

/// Every value [`verify_reason`] returns (`gatehouse_tls_client_verify_failures_total{reason}`).
pub(crate) const VERIFY_FAILURE_LABELS: [&str; 3] = ["unknown_ca", "expired", "other"];

/// Why a client certificate failed verification, as a metric label.
fn verify_reason(r: Result<(), X509VerifyError>) -> &'static str {
    match r {
        Err(e)
            if e == X509VerifyError::UNABLE_TO_GET_ISSUER_CERT_LOCALLY
                || e == X509VerifyError::UNABLE_TO_GET_ISSUER_CERT
                || e == X509VerifyError::DEPTH_ZERO_SELF_SIGNED_CERT
                || e == X509VerifyError::SELF_SIGNED_CERT_IN_CHAIN
                || e == X509VerifyError::UNABLE_TO_VERIFY_LEAF_SIGNATURE =>
        {
            "unknown_ca"
        }
        Err(e)
            if e == X509VerifyError::CERT_HAS_EXPIRED
                || e == X509VerifyError::CERT_NOT_YET_VALID =>
        {
            "expired"
        }
        _ => "other",
    }
}

/// Per-handshake hooks: the certificate and trust of the moment, and the identity.
struct Callbacks {
    live: Arc<ArcSwap<ListenerContexts>>,
    /// Shared with the connection's `Ssl` (one allocation per handshake, not two).
    peer: Arc<str>,
}

/// One listener's TLS acceptor and the callbacks each handshake runs (certificate by SNI from
/// the live contexts; the client's identity read once when it completes).
pub struct ListenerAcceptor {
    /// The first context of every handshake.
    pub acceptor: SslAcceptor,
    /// The contexts to switch to by SNI.
    live: Arc<ArcSwap<ListenerContexts>>,
}

impl ListenerAcceptor {
    /// What Pingora's `handshake_with_callback` takes for one connection from `peer`: the
    /// certificate by SNI, the identity once done, and `peer` on the connection for the
    /// verify callback's log line.
    pub fn callbacks_for(&self, peer: &str) -> impl TlsAccept + Send + Sync {
        Callbacks {
            live: self.live.clone(),
            peer: Arc::from(peer),
        }
    }
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        if let Some(i) = peer_index() {
            ssl.set_ex_data(i, self.peer.clone());
        }
        let name = ssl
            .servername(NameType::HOST_NAME)
            .map(|s| s.to_ascii_lowercase());
        let live = self.live.load();
        let ctx = live.for_name(name.as_deref());
        // Runs before BoringSSL picks the credential, the session to resume and the client
        // CAs, so all of those come from the switched-to context.
        if let Err(e) = ssl.set_ssl_context(ctx.context()) {
            log::warn!(target: "gatehouse::tls", "could not switch to the certificate for {name:?}: {e}");
        }
        // The configuration copied into this connection is needed only until it completes.
        crate::ffi::shed_handshake_config(ssl);
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(TlsInfo::from_ssl(ssl)))
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    #[test]
    fn every_verify_reason_is_listed() {
        for r in [
            Err(X509VerifyError::UNABLE_TO_GET_ISSUER_CERT_LOCALLY),
            Err(X509VerifyError::CERT_HAS_EXPIRED),
            Err(X509VerifyError::CERT_REVOKED),
            Ok(()),
        ] {
            assert!(VERIFY_FAILURE_LABELS.contains(&verify_reason(r)));
        }
    }
}
