//! Test PKIs written to folders ([`Pki`], [`RelayPki`]) and the TLS acceptors of in-process
//! servers.

use super::conf::{ClientAuth, Cluster, Group, Listener, ListenerTls, Protocol, UpstreamTls};
use boring::ssl::{SslAcceptor, SslMethod, SslVerifyMode};
use boring::x509::X509;
use gatehouse::pki::{Ca, CertSpec, Issued};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// A test PKI written to a folder: CA, server cert for localhost/127.0.0.1, and leaves.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
    /// RSA key size of every key this PKI makes (EC P-256 when `None`).
    pub rsa_bits: Option<u32>,
}

impl Pki {
    /// A fresh CA named `name` in `dir/name/`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        Pki::with_keys(dir, name, None)
    }

    /// [`Pki::new`] whose keys (the CA's and every issued one) are RSA of `rsa_bits` bits, or
    /// EC P-256 for `None`: Icinga's CA issues RSA-4096, which costs more memory and CPU.
    pub fn with_keys(dir: &Path, name: &str, rsa_bits: Option<u32>) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut spec = CertSpec::new(&format!("{name} CA")).validity(-3600, 10 * 365 * 86400);
        if let Some(bits) = rsa_bits {
            spec = spec.rsa(bits);
        }
        let ca = Ca::from_spec(&spec).unwrap();
        ca.issued.write(&dir, "ca").unwrap();
        Pki { dir, ca, rsa_bits }
    }

    /// `spec` with this PKI's key type.
    pub fn spec(&self, spec: CertSpec) -> CertSpec {
        match self.rsa_bits {
            Some(bits) => spec.rsa(bits),
            None => spec,
        }
    }

    /// The edge PKI of most tests: `dir/edge/` with the listener's `server` certificate
    /// (localhost, 127.0.0.1) and one client certificate per CN in `clients`.
    pub fn edge(dir: &Path, clients: &[&str]) -> Pki {
        let edge = Pki::new(dir, "edge");
        edge.server("server", &[]);
        for cn in clients {
            edge.issue(cn, CertSpec::new(cn));
        }
        edge
    }

    /// Path of the CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues `spec` and writes it as `stem.crt`/`stem.key`.
    pub fn issue(&self, stem: &str, spec: CertSpec) -> Issued {
        let i = self.ca.issue(&self.spec(spec)).unwrap();
        i.write(&self.dir, stem).unwrap();
        i
    }

    /// A server certificate for localhost and 127.0.0.1 plus `names`.
    pub fn server(&self, stem: &str, names: &[&str]) -> Issued {
        let mut dns = vec!["localhost"];
        dns.extend_from_slice(names);
        self.issue(
            stem,
            CertSpec::new(names.first().copied().unwrap_or("localhost"))
                .dns(&dns)
                .ips(&["127.0.0.1"]),
        )
    }

    /// `dir/stem.crt` and `dir/stem.key`.
    pub fn paths(&self, stem: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        )
    }
}

/// The PKI of a relay test: CA, `server` (localhost, master1), client `agent1`, the edge's own
/// upstream certificate `edge`, `ids/agent1.*` (a `cert_dir` identity minted for the edge),
/// and a `master1` certificate for a sink that requires client certificates.
pub struct RelayPki {
    pub pki: Pki,
    pub ids: PathBuf,
    master: Issued,
}

impl RelayPki {
    pub fn new(dir: &Path) -> RelayPki {
        let pki = Pki::new(dir, "pki");
        pki.server("server", &["master1"]);
        pki.issue("agent1", CertSpec::new("agent1"));
        pki.issue("edge", CertSpec::new("edge"));
        let ids = dir.join("ids");
        std::fs::create_dir_all(&ids).unwrap();
        pki.ca
            .issue(&CertSpec::new("agent1"))
            .unwrap()
            .write(&ids, "agent1")
            .unwrap();
        let master = pki
            .ca
            .issue(&CertSpec::new("master1").dns(&["master1"]))
            .unwrap();
        RelayPki { pki, ids, master }
    }

    /// A server acceptor presenting `master1` and requiring a client certificate.
    /// The master's TLS side, as Icinga's: it asks for a client certificate and takes any (an
    /// enrolling agent's is self-signed), judging who it is afterwards.
    pub fn master_acceptor(&self) -> SslAcceptor {
        icinga_acceptor(&self.master, self.pki.ca.cert())
    }

    /// Listener `name` on `port` for `protocols`, presenting `server`; client certificates of
    /// this CA optional.
    pub fn listener(&self, name: &str, port: u16, protocols: &[Protocol]) -> Listener {
        Listener::new(name, port)
            .protocols(protocols)
            .tls(ListenerTls::from_pki(
                &self.pki,
                "server",
                ClientAuth::Optional,
            ))
    }

    /// The master's upstream group: `sink` over TLS, SNI `master1`, as `edge`.
    pub fn master(&self, sink: SocketAddr) -> Group {
        Group::new(sink).tls(UpstreamTls::mutual("master1", &self.pki, "edge"))
    }

    /// A relay sending SNI `master1` to `upstream`, presenting the `ids` identities upstream.
    pub fn cluster(&self, upstream: &str) -> Cluster {
        Cluster::new("master1", upstream).cert_dir(&self.ids)
    }
}

/// A server-side acceptor with `cert`; `client_ca` set = client certificate required.
pub fn acceptor(cert: &Issued, client_ca: Option<&X509>, alpn_h2: bool) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&cert.cert).unwrap();
    b.set_private_key(&cert.key).unwrap();
    if let Some(ca) = client_ca {
        b.cert_store_mut().add_cert(ca.clone()).unwrap();
        b.add_client_ca(ca).unwrap();
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        // Required for resumed sessions when client certs are verified.
        b.set_session_id_context(b"gatehouse-test").unwrap();
    }
    if alpn_h2 {
        b.set_alpn_select_callback(|_, protos| {
            boring::ssl::select_next_proto(b"\x02h2", protos).ok_or(boring::ssl::AlpnError::NOACK)
        });
    }
    b.build()
}

/// A master's TLS side as Icinga's: it presents `cert`, asks for a client certificate of `ca`
/// and takes any (an enrolling agent's is self-signed), judging who it is afterwards.
pub fn icinga_acceptor(cert: &Issued, ca: &X509) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&cert.cert).unwrap();
    b.set_private_key(&cert.key).unwrap();
    b.cert_store_mut().add_cert(ca.clone()).unwrap();
    b.add_client_ca(ca).unwrap();
    b.set_verify_callback(SslVerifyMode::PEER, |_, _| true);
    b.set_session_id_context(b"gatehouse-test").unwrap();
    b.build()
}

/// The CN of a certificate.
pub fn cn_of(c: &X509) -> Option<String> {
    c.subject_name()
        .entries_by_nid(boring::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
}
