//! TLS on both sides: certificate material from files, downstream listener settings
//! (SNI certificates, client authentication), the caller's identity, and upstream trust.
//!
//! Loading is separate from use so that `gatehouse check` can load every file and report
//! every problem, each under the key path that named the file.

pub mod identity;
pub mod upstream;

pub use identity::{ClientCert, TlsInfo};

use crate::config::{ClientAuth, Config, ConfigError, ListenerTls, TlsVersion};
use crate::http::route::HostPattern;
use crate::metrics;
use async_trait::async_trait;
use boring::pkey::{PKey, Private};
use boring::ssl::{NameType, SslVerifyMode, SslVersion};
use boring::x509::{X509StoreContextRef, X509VerifyError, X509};
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::{TlsRef, ALPN};
use pingora_core::tls::ext;
use std::any::Any;
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
pub fn load_certs(cfg: &Config, file: &Path, at: &str) -> Result<Vec<X509>, ConfigError> {
    read_certs(&cfg.resolve(file)).map_err(|m| ConfigError::new(at, m))
}

/// Reads a private key named by the config; errors are reported under `at`.
pub fn load_key(cfg: &Config, file: &Path, at: &str) -> Result<PKey<Private>, ConfigError> {
    read_key(&cfg.resolve(file)).map_err(|m| ConfigError::new(at, m))
}

/// Reads a chain and its key and checks that they belong together.
pub fn load_chain(
    cfg: &Config,
    cert: &Path,
    key_file: &Path,
    at_cert: &str,
    at_key: &str,
    errs: &mut Vec<ConfigError>,
) -> Option<CertChain> {
    let chain = load_certs(cfg, cert, at_cert)
        .map_err(|e| errs.push(e))
        .ok();
    let key = load_key(cfg, key_file, at_key)
        .map_err(|e| errs.push(e))
        .ok();
    let (chain, key) = (chain?, key?);
    if !key_matches(&chain[0], &key) {
        errs.push(ConfigError::new(
            at_key,
            format!(
                "{} does not belong to the certificate in {}",
                cfg.resolve(key_file).display(),
                cfg.resolve(cert).display()
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

/// Everything a listener's TLS needs, loaded and checked; builds fresh [`TlsSettings`]
/// for each address (Pingora consumes one per address).
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
}

impl ListenerTlsMaterial {
    /// Loads the files `t` names; `at` is the key path of `t` (`listeners[0].tls`).
    pub fn load(
        cfg: &Config,
        listener: &str,
        t: &ListenerTls,
        at: &str,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let default = load_chain(
            cfg,
            &t.cert,
            &t.key,
            &format!("{at}.cert"),
            &format!("{at}.key"),
            &mut errs,
        );
        let mut sni = Vec::new();
        for (j, s) in t.sni_certs.iter().enumerate() {
            let sat = format!("{at}.sni_certs[{j}]");
            let chain = load_chain(
                cfg,
                &s.cert,
                &s.key,
                &format!("{sat}.cert"),
                &format!("{sat}.key"),
                &mut errs,
            );
            for (k, n) in s.names.iter().enumerate() {
                match HostPattern::parse(n) {
                    Ok(p) => {
                        if let Some(c) = &chain {
                            sni.push((p, c.clone()));
                        }
                    }
                    Err(m) => errs.push(ConfigError::new(format!("{sat}.names[{k}]"), m)),
                }
            }
        }
        let client_ca = match &t.client_ca {
            Some(p) => load_certs(cfg, p, &format!("{at}.client_ca"))
                .map_err(|e| errs.push(e))
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let alpn = match t.alpn.as_deref() {
            None => ALPN::H2H1,
            Some(list) => {
                let h2 = list.iter().any(|p| p == "h2");
                let h1 = list.iter().any(|p| p == "http/1.1");
                match (h2, h1) {
                    (true, true) => ALPN::H2H1,
                    (true, false) => ALPN::H2,
                    _ => ALPN::H1,
                }
            }
        };
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
        };
        // Build once now so that bad curves and the like surface in `check`, not at start.
        if let Err(e) = m.settings() {
            errs.push(ConfigError::new(at, e));
        }
        if errs.is_empty() {
            Ok(m)
        } else {
            Err(errs)
        }
    }

    /// Fresh Pingora TLS settings for one listening address.
    pub fn settings(&self) -> Result<TlsSettings, String> {
        let cb = Callbacks {
            sni: self.sni.clone(),
        };
        let mut s = TlsSettings::with_callbacks(Box::new(cb))
            .map_err(|e| format!("cannot create TLS acceptor: {e}"))?;
        // The callback only overrides per SNI; this default serves everything else.
        s.set_certificate(self.default.leaf())
            .map_err(|e| format!("cert: {e}"))?;
        for c in &self.default.chain[1..] {
            s.add_extra_chain_cert(c.clone())
                .map_err(|e| format!("cert chain: {e}"))?;
        }
        s.set_private_key(&self.default.key)
            .map_err(|e| format!("key: {e}"))?;
        s.check_private_key()
            .map_err(|e| format!("key does not match cert: {e}"))?;
        if self.min_version == TlsVersion::Tls13 {
            s.set_min_proto_version(Some(SslVersion::TLS1_3))
                .map_err(|e| format!("min_version: {e}"))?;
        }
        if let Some(c) = &self.curves {
            s.set_curves_list(c)
                .map_err(|e| format!("curves: `{c}` is not a valid curve list: {e}"))?;
        }
        // Resumed sessions with client certs need an id context, or resumption fails.
        s.set_session_id_context(self.listener.as_bytes())
            .map_err(|e| format!("session id context: {e}"))?;
        for ca in &self.client_ca {
            s.cert_store_mut()
                .add_cert(ca.clone())
                .map_err(|e| format!("client_ca: {e}"))?;
            s.add_client_ca(ca).map_err(|e| format!("client_ca: {e}"))?;
        }
        let listener = self.listener.clone();
        let count = move |ok: bool, ctx: &mut X509StoreContextRef| {
            if !ok {
                let reason = verify_reason(ctx.verify_result());
                metrics::TLS_VERIFY_FAILURES
                    .with_label_values(&[&listener, reason])
                    .inc();
                log::info!(
                    target: "gatehouse::tls",
                    "listener {listener}: client certificate rejected at depth {}: {reason} ({:?})",
                    ctx.error_depth(),
                    ctx.verify_result()
                );
            }
            ok
        };
        match self.client_auth {
            ClientAuth::Required => s.set_verify_callback(
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
                count,
            ),
            // Accept anything; an unverified client is simply anonymous (Icinga's model).
            ClientAuth::Optional => s.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
                count(ok, ctx);
                true
            }),
            ClientAuth::None => s.set_verify(SslVerifyMode::NONE),
        }
        s.set_alpn(self.alpn.clone());
        Ok(s)
    }
}

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

/// Per-handshake hooks: the certificate by SNI, and the identity read at the end.
struct Callbacks {
    sni: Vec<(HostPattern, CertChain)>,
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let Some(name) = ssl
            .servername(NameType::HOST_NAME)
            .map(|s| s.to_ascii_lowercase())
        else {
            return;
        };
        let Some((_, c)) = self.sni.iter().find(|(p, _)| p.matches(&name)) else {
            return;
        };
        let ok = ext::ssl_use_certificate(ssl, c.leaf()).is_ok()
            && ext::ssl_use_private_key(ssl, &c.key).is_ok()
            && c.chain[1..]
                .iter()
                .all(|x| ext::ssl_add_chain_cert(ssl, x).is_ok());
        if !ok {
            log::warn!(target: "gatehouse::tls", "could not apply the SNI certificate for {name}; serving the default");
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(TlsInfo::from_ssl(ssl)))
    }
}
