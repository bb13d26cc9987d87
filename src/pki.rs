//! A small certificate factory on BoringSSL: throwaway CAs and leaf certificates.
//!
//! Used by `gatehouse dev-certs` (so `make run` needs no openssl CLI) and by the test
//! suites, which mint every certificate they use at test time. Keys are EC P-256 unless a
//! [`CertSpec`] asks for RSA ([`CertSpec::rsa`]; Icinga's own CA issues RSA-4096).

use boring::asn1::{Asn1Integer, Asn1Time};
use boring::bn::{BigNum, MsbOption};
use boring::ec::{EcGroup, EcKey};
use boring::error::ErrorStack;
use boring::hash::MessageDigest;
use boring::nid::Nid;
use boring::pkey::{PKey, Private};
use boring::rsa::Rsa;
use boring::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use boring::x509::{X509Name, X509};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A certificate with its private key.
#[derive(Clone)]
pub struct Issued {
    /// The certificate.
    pub cert: X509,
    /// Its private key.
    pub key: PKey<Private>,
}

impl Issued {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> Vec<u8> {
        self.cert.to_pem().unwrap_or_default()
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> Vec<u8> {
        self.key.private_key_to_pem_pkcs8().unwrap_or_default()
    }

    /// Writes `<stem>.crt` and `<stem>.key` into `dir`; returns the two paths.
    pub fn write(&self, dir: &Path, stem: &str) -> std::io::Result<(PathBuf, PathBuf)> {
        let crt = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&crt, self.cert_pem())?;
        write_private(&key, &self.key_pem())?;
        Ok((crt, key))
    }
}

/// Keys are 0640, never world-readable: readable by the folder's group, so `gatehouse dev-certs
/// /etc/gatehouse/certs` run as root (a setgid root:gatehouse folder in the Debian package)
/// leaves keys the service user reads and cannot change.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    write_private_mode(path, data, 0o640)
}

/// Writes `data` to `path` with `mode` (less the umask), also when the file existed with a
/// wider one.
fn write_private_mode(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    let now = f.metadata()?.permissions().mode() & 0o777;
    if now & !mode != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(now & mode))?;
    }
    f.write_all(data)
}

/// What to put in a certificate.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// Subject common name.
    pub cn: String,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// IP subject alternative names.
    pub ips: Vec<String>,
    /// URI subject alternative names (SPIFFE IDs).
    pub uris: Vec<String>,
    /// Valid from now + this many seconds (negative = in the past).
    pub not_before_secs: i64,
    /// Valid until now + this many seconds.
    pub not_after_secs: i64,
    /// RSA key of this many bits instead of EC P-256 (for keys this spec makes).
    pub rsa_bits: Option<u32>,
}

impl CertSpec {
    /// A certificate for `cn`, valid from an hour ago for a year.
    pub fn new(cn: &str) -> Self {
        CertSpec {
            cn: cn.to_string(),
            dns: vec![],
            ips: vec![],
            uris: vec![],
            not_before_secs: -3600,
            not_after_secs: 365 * 86400,
            rsa_bits: None,
        }
    }

    /// An RSA key of `bits` bits instead of EC P-256.
    pub fn rsa(mut self, bits: u32) -> Self {
        self.rsa_bits = Some(bits);
        self
    }

    /// Adds DNS names.
    pub fn dns(mut self, names: &[&str]) -> Self {
        self.dns.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Adds IP addresses.
    pub fn ips(mut self, ips: &[&str]) -> Self {
        self.ips.extend(ips.iter().map(|s| s.to_string()));
        self
    }

    /// Adds URIs (e.g. `spiffe://example.org/ops/alice`).
    pub fn uris(mut self, uris: &[&str]) -> Self {
        self.uris.extend(uris.iter().map(|s| s.to_string()));
        self
    }

    /// Sets the validity window relative to now, in seconds.
    pub fn validity(mut self, not_before_secs: i64, not_after_secs: i64) -> Self {
        self.not_before_secs = not_before_secs;
        self.not_after_secs = not_after_secs;
        self
    }
}

/// A certificate authority that can issue leaves.
#[derive(Clone)]
pub struct Ca {
    /// The CA's own certificate and key.
    pub issued: Issued,
}

impl Ca {
    /// A new self-signed CA named `cn`, valid for ten years.
    pub fn new(cn: &str) -> Result<Ca, ErrorStack> {
        Ca::from_spec(&CertSpec::new(cn).validity(-3600, 10 * 365 * 86400))
    }

    /// A new self-signed CA for `spec` (name, validity, key type).
    pub fn from_spec(spec: &CertSpec) -> Result<Ca, ErrorStack> {
        let key = new_key(spec)?;
        let cert = build(spec, &key, None, true)?;
        Ok(Ca {
            issued: Issued { cert, key },
        })
    }

    /// The CA certificate.
    pub fn cert(&self) -> &X509 {
        &self.issued.cert
    }

    /// An existing CA from its certificate and key (e.g. Icinga's `data/ca/ca.crt`, `ca.key`).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Ca, ErrorStack> {
        Ok(Ca {
            issued: Issued {
                cert: X509::from_pem(cert_pem)?,
                key: PKey::private_key_from_pem(key_pem)?,
            },
        })
    }

    /// Issues a leaf for `spec`, usable for both server and client authentication.
    pub fn issue(&self, spec: &CertSpec) -> Result<Issued, ErrorStack> {
        self.issue_for_key(spec, new_key(spec)?)
    }

    /// Issues a leaf for an existing key (a renewal keeps the key, changes the dates).
    pub fn issue_for_key(&self, spec: &CertSpec, key: PKey<Private>) -> Result<Issued, ErrorStack> {
        let cert = build(spec, &key, Some(&self.issued), false)?;
        Ok(Issued { cert, key })
    }
}

/// A self-signed leaf (what an Icinga agent has before enrollment).
pub fn self_signed(spec: &CertSpec) -> Result<Issued, ErrorStack> {
    let key = new_key(spec)?;
    let cert = build(spec, &key, None, false)?;
    Ok(Issued { cert, key })
}

fn new_key(spec: &CertSpec) -> Result<PKey<Private>, ErrorStack> {
    if let Some(bits) = spec.rsa_bits {
        return PKey::from_rsa(Rsa::generate(bits)?);
    }
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn asn1_time(offset_secs: i64) -> Result<Asn1Time, ErrorStack> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Asn1Time::from_unix((now + offset_secs) as _)
}

fn build(
    spec: &CertSpec,
    key: &PKey<Private>,
    issuer: Option<&Issued>,
    is_ca: bool,
) -> Result<X509, ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, &spec.cn)?;
    let name = name.build();

    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial: Asn1Integer = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map(|i| i.cert.subject_name()).unwrap_or(&name))?;
    b.set_pubkey(key)?;
    let not_before = asn1_time(spec.not_before_secs)?;
    let not_after = asn1_time(spec.not_after_secs)?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;

    let mut exts = Vec::new();
    if is_ca {
        exts.push(BasicConstraints::new().critical().ca().build()?);
        exts.push(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        );
    } else {
        exts.push(BasicConstraints::new().critical().build()?);
        exts.push(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()?,
        );
        exts.push(
            ExtendedKeyUsage::new()
                .server_auth()
                .client_auth()
                .build()?,
        );
        if !(spec.dns.is_empty() && spec.ips.is_empty() && spec.uris.is_empty()) {
            let mut san = SubjectAlternativeName::new();
            for d in &spec.dns {
                san.dns(d);
            }
            for ip in &spec.ips {
                san.ip(ip);
            }
            for u in &spec.uris {
                san.uri(u);
            }
            exts.push(san.build(&b.x509v3_context(issuer.map(|i| i.cert.as_ref()), None))?);
        }
    }
    for ext in &exts {
        b.append_extension(ext)?;
    }
    let signer = issuer.map(|i| &i.key).unwrap_or(key);
    b.sign(signer, MessageDigest::sha256())?;
    Ok(b.build())
}

/// Writes the development PKI used by `make run`: `ca`, `server` (localhost, 127.0.0.1, ::1),
/// `client` (CN=dev-client) and `gatehouse` (CN=gatehouse, Gatehouse's own upstream client
/// identity), each as `.crt` + `.key`. Returns the files written.
pub fn write_dev_pki(dir: &Path) -> crate::Result<Vec<PathBuf>> {
    use crate::error::{Error, ErrorKind};
    let io = |what: String| move |e: std::io::Error| Error::new(ErrorKind::Io, what).because(e);
    let pki = |what: &'static str| move |e: ErrorStack| Error::new(ErrorKind::Pki, what).because(e);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let ca = Ca::new("Gatehouse dev CA").map_err(pki("making the dev CA"))?;
    let server = ca
        .issue(
            &CertSpec::new("localhost")
                .dns(&["localhost"])
                .ips(&["127.0.0.1", "::1"]),
        )
        .map_err(pki("issuing the server certificate"))?;
    let client = ca
        .issue(&CertSpec::new("dev-client"))
        .map_err(pki("issuing the client certificate"))?;
    let gatehouse = ca
        .issue(&CertSpec::new("gatehouse"))
        .map_err(pki("issuing gatehouse's upstream certificate"))?;
    let mut out = Vec::new();
    for (issued, stem) in [
        (&server, "server"),
        (&client, "client"),
        (&gatehouse, "gatehouse"),
    ] {
        let (c, k) = issued
            .write(dir, stem)
            .map_err(io(format!("writing {stem} into {}", dir.display())))?;
        out.push(c);
        out.push(k);
    }
    // The CA: its certificate beside the others, its key where the service cannot read it
    // (whoever holds it can mint client identities): `ca-key/` 0700, the key 0600, whatever
    // group a setgid folder hands down.
    let crt = dir.join("ca.crt");
    std::fs::write(&crt, ca.issued.cert_pem()).map_err(io(format!("writing {}", crt.display())))?;
    let private = dir.join(DEV_CA_KEY_DIR);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&private)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io(format!("creating {}", private.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod 0700 {}", private.display())))?;
    }
    let key = private.join("ca.key");
    write_private_mode(&key, &ca.issued.key_pem(), 0o600)
        .map_err(io(format!("writing {}", key.display())))?;
    // A CA key an earlier version left beside the certificates (0640: group-readable) belongs
    // to a CA these certificates no longer chain to; it only gives its holder identities.
    let old = dir.join("ca.key");
    if old.exists() {
        std::fs::remove_file(&old).map_err(io(format!("removing {}", old.display())))?;
    }
    out.push(crt);
    out.push(key);
    Ok(out)
}

/// Where [`write_dev_pki`] puts the CA's key, under its folder.
pub const DEV_CA_KEY_DIR: &str = "ca-key";

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    /// Keys are 0640 (less what the umask takes), the CA's 0600 in a 0700 folder; certificates
    /// are not world-writable.
    #[test]
    fn dev_pki_keys_are_group_readable_never_world_readable() {
        let tmp = tempfile::tempdir().unwrap();
        // What this process's umask lets through, measured on a file asked to be 0777.
        let probe = tmp.path().join("probe");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o777)
            .open(&probe)
            .unwrap();
        let allowed = mode(&probe);
        let dir = tmp.path().join("certs");
        let files = write_dev_pki(&dir).unwrap();
        assert_eq!(files.len(), 8, "{files:?}");
        let keys: Vec<_> = files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "key"))
            .collect();
        assert_eq!(keys.len(), 4, "{files:?}");
        for k in keys {
            let want = if k.ends_with("ca-key/ca.key") {
                0o600
            } else {
                0o640
            };
            assert_eq!(mode(k), want & allowed, "{}", k.display());
        }
        // The CA key stays out of the service group's reach, also over an older, wider one.
        assert_eq!(mode(&dir.join("ca-key")), 0o700);
        std::fs::set_permissions(
            dir.join("ca-key/ca.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(dir.join("ca-key"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(dir.join("ca.key"), "an earlier version's CA key").unwrap();
        write_dev_pki(&dir).unwrap();
        assert_eq!(mode(&dir.join("ca-key/ca.key")), 0o600 & allowed);
        assert_eq!(mode(&dir.join("ca-key")), 0o700);
        assert!(!dir.join("ca.key").exists());
        for f in &files {
            assert_eq!(mode(f) & 0o002, 0, "{}", f.display());
        }
    }
}
