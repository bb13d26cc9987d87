//! Which identity Gatehouse presents upstream for a cluster link.
//!
//! Icinga knows a peer by the certificate of the directly connected TLS peer, so a link from
//! agent `a1` must reach the master with a certificate for `a1`. [`IdentityMapper`] decides
//! which; the built-in [`CertDir`] (`cluster.upstream_identity`) reads `<cn>.crt`/`<cn>.key`
//! from a folder. It runs once per link, asynchronously, and caches what it parsed: file reads
//! happen off the worker threads, and a reconnect storm parses each identity once.

use super::filter::LinkInfo;
use crate::config::MissingIdentity;
use crate::logsafe::Esc;
use crate::tls;
use async_trait::async_trait;
use boring::pkey::PKey;
use boring::x509::X509;
use pingora_core::utils::tls::CertKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What to present upstream for one link.
#[derive(Clone)]
pub enum Mapped {
    /// This certificate chain and key.
    Present(Arc<CertKey>),
    /// The upstream's own `tls.client_cert` (`missing: own`, or no `upstream_identity`).
    Own,
    /// No identity the master knows: a self-signed certificate made at start, as an Icinga
    /// agent without a certificate yet presents one (what anonymous clients get). Not the
    /// upstream's own certificate: Icinga ≥ 2.15 drops a connection whose certificate verifies
    /// but names no `Endpoint` ("Unknown endpoint … with valid certificate"), so enrollment
    /// under the edge's identity fails there; an unverified certificate is anonymous to
    /// every release.
    Anonymous,
    /// Refuse the link; the reason is logged.
    Refuse(String),
}

/// Chooses the upstream identity of a cluster link.
///
/// ```
/// use gatehouse::cluster::filter::LinkInfo;
/// use gatehouse::cluster::identity::{IdentityMapper, Mapped};
///
/// /// Every link goes upstream with the upstream's own certificate, except `root`'s.
/// struct NoRoot;
///
/// #[gatehouse::async_trait]
/// impl IdentityMapper for NoRoot {
///     async fn upstream_identity(&self, link: &LinkInfo<'_>) -> Mapped {
///         match link.identity.cn() {
///             Some("root") => Mapped::Refuse("root may not link".into()),
///             _ => Mapped::Own,
///         }
///     }
/// }
/// ```
#[async_trait]
pub trait IdentityMapper: Send + Sync + 'static {
    /// The identity for `link`, decided before the upstream connection is made.
    async fn upstream_identity(&self, link: &LinkInfo<'_>) -> Mapped;
}

/// `cluster.upstream_identity`: `<dir>/<cn>.crt` + `<cn>.key` for an authenticated client
/// `<cn>`; anonymous clients go anonymous ([`Mapped::Anonymous`]).
pub struct CertDir {
    dir: PathBuf,
    missing: MissingIdentity,
    cache: Mutex<HashMap<String, Cached>>,
}

#[derive(Clone)]
struct Cached {
    stamp: (SystemTime, SystemTime),
    cert: Arc<CertKey>,
}

impl CertDir {
    /// Reads identities from `dir`; `missing` says what a CN without files gets.
    pub fn new(dir: PathBuf, missing: MissingIdentity) -> Self {
        CertDir {
            dir,
            missing,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Loads `cn`'s identity, reusing the parsed one while neither file changed (so rotated
    /// files take effect on the next link). `Ok(None)`: no `<cn>.crt`.
    async fn load(&self, cn: &str) -> Result<Option<Arc<CertKey>>, String> {
        let safe = !cn.is_empty()
            && !cn.starts_with('.')
            && cn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
        if !safe {
            return Err(format!("CN `{}` is not usable as a file name", Esc(cn)));
        }
        let crt = self.dir.join(format!("{cn}.crt"));
        let key = self.dir.join(format!("{cn}.key"));
        let Some(crt_time) = modified(&crt).await else {
            return Ok(None);
        };
        let key_time = modified(&key)
            .await
            .ok_or_else(|| format!("{}: missing or unreadable", key.display()))?;
        let stamp = (crt_time, key_time);
        if let Some(c) = self.cached(cn).filter(|c| c.stamp == stamp) {
            return Ok(Some(c.cert));
        }
        let (crt_pem, key_pem) = tokio::try_join!(read(&crt), read(&key))?;
        let cert = Arc::new(parse_pair(&crt, &crt_pem, &key, &key_pem)?);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(
            cn.to_string(),
            Cached {
                stamp,
                cert: cert.clone(),
            },
        );
        Ok(Some(cert))
    }

    fn cached(&self, cn: &str) -> Option<Cached> {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cn)
            .cloned()
    }
}

/// A `<cn>.crt` and `<cn>.key` pair as read: a PEM chain and the key of its leaf.
fn parse_pair(crt: &Path, crt_pem: &[u8], key: &Path, key_pem: &[u8]) -> Result<CertKey, String> {
    let chain = X509::stack_from_pem(crt_pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format!("{}: not a PEM certificate", crt.display()))?;
    let pkey = PKey::private_key_from_pem(key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    if !tls::key_matches(&chain[0], &pkey) {
        return Err(format!(
            "{}: key does not match the certificate",
            crt.display()
        ));
    }
    Ok(CertKey::new(chain, pkey))
}

/// What `gatehouse check` (and start) finds wrong in a `cert_dir`, as the user it runs as:
/// the folder unreadable, a `<cn>.crt` + `<cn>.key` pair that user cannot read (the keys
/// `icinga2 pki new-cert` writes are 0600 root), one that does not parse, a key that is not
/// the certificate's. A `.crt` without a `.key` beside it (a CA certificate) is no identity. Links would otherwise be refused one by one, long after the check passed.
pub(crate) fn check_cert_dir(dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return vec![format!("{}: cannot list: {e}", dir.display())],
    };
    let mut crts: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    crts.sort();
    let mut problems = Vec::new();
    for crt in crts {
        let key = crt.with_extension("key");
        // A certificate alone (a CA's, say) is no identity: only pairs are checked.
        if !key.exists() {
            continue;
        }
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()));
        match (read(&crt), read(&key)) {
            (Ok(c), Ok(k)) => {
                if let Err(e) = parse_pair(&crt, &c, &key, &k) {
                    problems.push(e);
                }
            }
            (c, k) => problems.extend([c.err(), k.err()].into_iter().flatten()),
        }
    }
    problems
}

async fn modified(p: &Path) -> Option<SystemTime> {
    tokio::fs::metadata(p).await.ok()?.modified().ok()
}

async fn read(p: &Path) -> Result<Vec<u8>, String> {
    tokio::fs::read(p)
        .await
        .map_err(|e| format!("cannot read {}: {e}", p.display()))
}

#[async_trait]
impl IdentityMapper for CertDir {
    async fn upstream_identity(&self, link: &LinkInfo<'_>) -> Mapped {
        let Some(cn) = link.identity.cn() else {
            return Mapped::Anonymous;
        };
        match self.load(cn).await {
            Ok(Some(c)) => Mapped::Present(c),
            Ok(None) if self.missing == MissingIdentity::Own => Mapped::Own,
            Ok(None) => Mapped::Refuse(format!(
                "no {}.crt in cluster.upstream_identity.cert_dir (missing: reject)",
                Esc(cn)
            )),
            Err(e) => Mapped::Refuse(format!("upstream identity: {e}")),
        }
    }
}

/// No mapping: every authenticated link goes upstream with the upstream's own certificate,
/// anonymous ones anonymous ([`Mapped::Anonymous`]).
pub(crate) struct OwnIdentity;

#[async_trait]
impl IdentityMapper for OwnIdentity {
    async fn upstream_identity(&self, link: &LinkInfo<'_>) -> Mapped {
        match link.identity.cn() {
            Some(_) => Mapped::Own,
            None => Mapped::Anonymous,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::Identity;
    use crate::identity::ClientCert;
    use crate::pki::{Ca, CertSpec};

    #[tokio::test]
    async fn cert_dir_caches_until_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("t").unwrap();
        ca.issue(&CertSpec::new("a1"))
            .unwrap()
            .write(dir.path(), "a1")
            .unwrap();
        let m = CertDir::new(dir.path().to_path_buf(), MissingIdentity::Reject);
        let leaf =
            |cn: &str| ClientCert::from_x509(ca.issue(&CertSpec::new(cn)).unwrap().cert, true);
        let (a1, a2) = (leaf("a1"), leaf("a2"));
        let link = |c| LinkInfo {
            listener: "l",
            identity: Identity::Verified(c),
            client_cert: None,
            sni: "",
            peer: "-",
            toward: Default::default(),
            upstream_cert: None,
        };
        let first = match m.upstream_identity(&link(&a1)).await {
            Mapped::Present(c) => c,
            _ => panic!("a1 has files"),
        };
        let again = match m.upstream_identity(&link(&a1)).await {
            Mapped::Present(c) => c,
            _ => panic!("a1 has files"),
        };
        assert!(Arc::ptr_eq(&first, &again), "parsed once");
        assert!(
            matches!(m.upstream_identity(&link(&a2)).await, Mapped::Refuse(r) if r.contains("no a2.crt"))
        );
        // Rotation: a new certificate is picked up on the next link.
        std::thread::sleep(std::time::Duration::from_millis(20));
        ca.issue(&CertSpec::new("a1"))
            .unwrap()
            .write(dir.path(), "a1")
            .unwrap();
        let rotated = match m.upstream_identity(&link(&a1)).await {
            Mapped::Present(c) => c,
            _ => panic!("a1 has files"),
        };
        assert!(!Arc::ptr_eq(&first, &rotated));
        let anon = LinkInfo {
            identity: Identity::Anonymous,
            ..link(&a1)
        };
        assert!(
            matches!(m.upstream_identity(&anon).await, Mapped::Anonymous),
            "anonymous clients go upstream anonymous, never as the edge"
        );
        let own = CertDir::new(dir.path().to_path_buf(), MissingIdentity::Own);
        assert!(matches!(
            own.upstream_identity(&link(&a2)).await,
            Mapped::Own
        ));
    }
}
