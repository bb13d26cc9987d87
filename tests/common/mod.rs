//! Test harness: real TLS, real sockets on 127.0.0.1, the real `gatehouse` binary.
//!
//! - [`Gatehouse`] runs the binary on a config written to a temp dir and kills it on drop.
//! - [`Upstream`] is an in-process HTTP/1.1 (keep-alive) or HTTP/2 origin, TLS or plain,
//!   that answers with what it saw (client CN, SNI, headers) as JSON.
//! - [`request`] is an HTTPS client that speaks raw HTTP/1.1 bytes.
#![allow(dead_code)]

pub mod conf;
pub mod icinga;
pub mod kea;
pub mod sink;

pub use conf::*;

use boring::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use boring::x509::X509;
use gatehouse::pki::{Ca, CertSpec, Issued};
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Whether peer tests must fail instead of skipping (CI sets CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Skips (loudly) when `binary` is missing locally; panics under CI.
pub fn require_binary(binary: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(binary).is_file();
    if !found {
        let msg = format!(
            "\n!!!!! SKIPPED: `{binary}` is not installed (run `make test`, which installs it) !!!!!\n"
        );
        if in_ci() {
            panic!("{msg} (CI=true: peer tests may not skip)");
        }
        eprintln!("{msg}");
    }
    found
}

/// A port the kernel just handed out for 127.0.0.1 (bound on port 0, then released).
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// Waits until `a` accepts connections; panics with `name`'s log (`log`) if the process exits
/// first or `deadline` passes.
pub fn wait_listening(name: &str, child: &mut Child, a: SocketAddr, deadline: Instant, log: &Path) {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited with {status}:\n{}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on {a}:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test PKI written to a folder: CA, server cert for localhost/127.0.0.1, and leaves.
pub struct Pki {
    pub dir: PathBuf,
    pub ca: Ca,
}

impl Pki {
    /// A fresh CA named `name` in `dir/name/`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new(&format!("{name} CA")).unwrap();
        ca.issued.write(&dir, "ca").unwrap();
        Pki { dir, ca }
    }

    /// Path of the CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues `spec` and writes it as `stem.crt`/`stem.key`.
    pub fn issue(&self, stem: &str, spec: CertSpec) -> Issued {
        let i = self.ca.issue(&spec).unwrap();
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
    pub fn master_acceptor(&self) -> SslAcceptor {
        acceptor(&self.master, Some(self.pki.ca.cert()), false)
    }
}

// === Gatehouse process ===

/// A running `gatehouse` binary; killed on drop.
pub struct Gatehouse {
    pub child: Child,
    pub dir: PathBuf,
    pub log: PathBuf,
}

/// The binary under test.
pub fn gatehouse_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

impl Gatehouse {
    /// Writes `yaml` (with `{dir}` replaced by `dir`) to `dir/gatehouse.yaml`, starts the
    /// binary, and waits until every `address: "…"` in `yaml` (listeners and metrics) accepts
    /// connections: Pingora binds each listener on its own service thread, so one port being
    /// up says nothing about the others.
    pub fn start(dir: &Path, yaml: &str) -> Gatehouse {
        Gatehouse::start_bin(Path::new(gatehouse_bin()), dir, yaml)
    }

    /// [`Gatehouse::start`] with another binary that takes `run -c FILE` or `-c FILE`, e.g.
    /// one of `examples/` built on the library ([`example_bin`]).
    pub fn start_bin(bin: &Path, dir: &Path, yaml: &str) -> Gatehouse {
        Gatehouse::start_bin_env(bin, &[], dir, yaml)
    }

    /// [`Gatehouse::start_bin`] with extra environment variables.
    pub fn start_bin_env(bin: &Path, env: &[(&str, &str)], dir: &Path, yaml: &str) -> Gatehouse {
        let file = dir.join("gatehouse.yaml");
        let yaml = yaml.replace("{dir}", &dir.display().to_string());
        let yaml = format!(
            "server:\n  threads: 2\n  pid_file: {d}/gh.pid\n  upgrade_sock: {d}/gh_upgrade.sock\n  grace_period: 1s\n  graceful_shutdown_timeout: 1s\n{yaml}",
            d = dir.display()
        );
        std::fs::write(&file, &yaml).unwrap();
        let addresses: Vec<SocketAddr> = yaml
            .split("address: \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next()?.parse().ok())
            .collect();
        assert!(
            !addresses.is_empty(),
            "no quoted `address:` to wait for in:\n{yaml}"
        );
        let log = dir.join("gatehouse.log");
        let mut cmd = Command::new(bin);
        if bin == Path::new(gatehouse_bin()) {
            cmd.arg("run");
        }
        cmd.envs(env.iter().copied());
        let child = cmd
            .arg("-c")
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn gatehouse");
        let mut gh = Gatehouse {
            child,
            dir: dir.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        for a in addresses {
            wait_listening("gatehouse", &mut gh.child, a, deadline, &gh.log);
        }
        gh
    }

    /// Everything the process logged so far.
    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits up to 5 s for a log line containing `needle`; returns that line.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(l) = self.log_text().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with `{needle}`:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads netstrings from `s` until `n` frames arrived, the stream ends, or `t` passes.
/// Returns the frames as received (`len:payload,`) and whether the stream ended.
pub async fn read_frames<S: AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
    t: Duration,
) -> (Vec<Vec<u8>>, bool) {
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + t;
    loop {
        while let Ok(Some(f)) = gatehouse::cluster::codec::decode(&mut buf, 64 << 20) {
            out.push(f.raw().to_vec());
        }
        if out.len() >= n {
            return (out, false);
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(_)) => {}
            Err(_) => return (out, false),
        }
    }
}

/// The payload of one complete netstring (`len:payload,`).
pub fn frame_payload(raw: &[u8]) -> Vec<u8> {
    let mut b = bytes::BytesMut::from(raw);
    gatehouse::cluster::codec::decode(&mut b, 64 << 20)
        .expect("a valid frame")
        .expect("a complete frame")
        .payload()
        .to_vec()
}

/// An example program built on the library, `target/<profile>/examples/<name>`. `make test`
/// builds the examples first; a missing one fails with the command that builds it.
pub fn example_bin(name: &str) -> PathBuf {
    let p = Path::new(gatehouse_bin())
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --examples` (make test does)",
        p.display()
    );
    p
}

/// Runs `gatehouse ARGS...`, returning (exit success, stdout + stderr).
pub fn gatehouse_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(gatehouse_bin())
        .args(args)
        .output()
        .expect("run gatehouse");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// === TLS helpers ===

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

/// Options for a test client connection.
#[derive(Clone, Default)]
pub struct ClientOpts {
    /// CA file that verifies the server.
    pub ca: Option<PathBuf>,
    /// Client certificate and key files.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// SNI (default: none, as for an IP).
    pub sni: Option<String>,
    /// Force TLS 1.2 (so a refused client cert fails in the handshake itself).
    pub tls12: bool,
}

/// Connects with TLS to `addr`.
pub async fn tls_connect(
    addr: SocketAddr,
    o: &ClientOpts,
) -> Result<tokio_boring::SslStream<TcpStream>, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    match &o.ca {
        Some(ca) => b.set_ca_file(ca).unwrap(),
        None => b.set_verify(SslVerifyMode::NONE),
    }
    if let Some((c, k)) = &o.cert {
        b.set_certificate_chain_file(c).unwrap();
        b.set_private_key_file(k, SslFiletype::PEM).unwrap();
    }
    if o.tls12 {
        b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
    }
    let connector = b.build();
    let mut cfg = connector.configure().unwrap();
    let name = o.sni.clone().unwrap_or_default();
    if o.sni.is_none() {
        cfg.set_use_server_name_indication(false);
        cfg.set_verify_hostname(false);
    }
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    tokio_boring::connect(cfg, &name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// The text of Gatehouse's `/metrics` on plain `127.0.0.1:port`.
pub async fn metrics_text(port: u16) -> String {
    request(
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
        "GET",
        "/metrics",
        &[],
        b"",
    )
    .await
    .expect("metrics endpoint answers")
    .text()
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 request with `Connection: close` over TLS (or plain when `tls` is None).
pub async fn request(
    addr: SocketAddr,
    tls: Option<&ClientOpts>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, String> {
    let mut raw = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        raw.push_str("Host: localhost\r\n");
    }
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        raw.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    raw.push_str("Connection: close\r\n\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    tokio::time::timeout(Duration::from_secs(20), async {
        match tls {
            Some(o) => {
                let s = tls_connect(addr, o).await?;
                exchange(s, &bytes).await
            }
            None => {
                let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
                exchange(s, &bytes).await
            }
        }
    })
    .await
    .map_err(|_| "request timed out".to_string())?
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> Result<Response, String> {
    // A server may answer early (e.g. 413) and close while we are still sending: like curl,
    // keep the write error but still read whatever answer arrived.
    let sent = async {
        s.write_all(req).await?;
        s.flush().await
    }
    .await;
    let mut buf = Vec::new();
    // A peer may close without close_notify after a full response: keep what arrived.
    if let Err(e) = s.read_to_end(&mut buf).await {
        if buf.is_empty() {
            return Err(match sent {
                Err(w) => format!("write: {w}"),
                Ok(()) => format!("read: {e}"),
            });
        }
    }
    match (parse_response(&buf), sent) {
        (Ok(r), _) => Ok(r),
        (Err(_), Err(w)) => Err(format!("write: {w}")),
        (Err(e), Ok(())) => Err(e),
    }
}

/// Parses a complete HTTP/1.1 response (Content-Length, chunked, or read-to-close).
pub fn parse_response(buf: &[u8]) -> Result<Response, String> {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(format!(
                "incomplete response: {:?}",
                String::from_utf8_lossy(buf)
            ))
        }
    };
    let headers: Vec<(String, String)> = owned_headers(r.headers);
    let status = r.code.unwrap_or(0);
    let rest = &buf[n..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn owned_headers(h: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    h.iter()
        .map(|h| {
            (
                h.name.to_string(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Whether the server closed the connection within `t` (anything it sends first is skipped).
pub async fn closed_within<S: AsyncRead + Unpin>(s: &mut S, t: Duration) -> bool {
    let mut b = [0u8; 512];
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Appends what the peer sends next to `buf`; false once it closed or failed.
async fn read_more<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size_str = std::str::from_utf8(&b[..line_end]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunk size: {e}"))?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or("short chunk")?);
        b = b.get(size + 2..).ok_or("short chunk")?;
    }
}

// === origin servers ===

/// What an origin saw on one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub client_cn: Option<String>,
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// How an origin answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// 200 with a JSON summary of what it saw.
    Echo,
    /// Accepts (and handshakes) but never answers.
    Hang,
}

/// An in-process origin on 127.0.0.1 port 0.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted (to observe pooling).
    pub connections: Arc<Mutex<usize>>,
    /// The TLS acceptor new connections get (h1 origins can swap it mid-test).
    tls: Arc<Mutex<Option<Arc<SslAcceptor>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Serves new TLS connections with `acc` from now on (a certificate rotation).
    pub fn set_tls(&self, acc: SslAcceptor) {
        *self.tls.lock().unwrap() = Some(Arc::new(acc));
    }

    /// An HTTP/1.1 keep-alive origin; TLS when `tls` is given.
    pub async fn h1(tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let tls = Arc::new(Mutex::new(tls.map(Arc::new)));
        let (s2, c2, t2) = (seen.clone(), connections.clone(), tls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                *c2.lock().unwrap() += 1;
                let (seen, tls) = (s2.clone(), t2.lock().unwrap().clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            let Ok(s) = tokio_boring::accept(&acc, tcp).await else {
                                return;
                            };
                            let ssl = s.ssl();
                            let info = ConnInfo::of(ssl);
                            serve_h1(s, info, seen, behavior).await
                        }
                        None => serve_h1(tcp, ConnInfo::default(), seen, behavior).await,
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            tls,
            task,
        }
    }

    /// An HTTP/2 origin over TLS (ALPN h2 only).
    pub async fn h2(tls: SslAcceptor) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let tls = Arc::new(tls);
        let (s2, c2) = (seen.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                *c2.lock().unwrap() += 1;
                let (seen, tls) = (s2.clone(), tls.clone());
                tokio::spawn(async move {
                    let Ok(s) = tokio_boring::accept(&tls, tcp).await else {
                        return;
                    };
                    let ssl = s.ssl();
                    let info = ConnInfo::of(ssl);
                    let Ok(mut conn) = h2::server::handshake(s).await else {
                        return;
                    };
                    // Each stream in its own task: the connection must keep being polled
                    // (accept) for request bodies to arrive.
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let (seen, info) = (seen.clone(), info.clone());
                        tokio::spawn(async move {
                            let (parts, mut body) = req.into_parts();
                            let mut data = Vec::new();
                            while let Some(Ok(chunk)) = body.data().await {
                                let _ = body.flow_control().release_capacity(chunk.len());
                                data.extend_from_slice(&chunk);
                            }
                            let s = Seen {
                                client_cn: info.client_cn.clone(),
                                sni: info.sni.clone(),
                                alpn: info.alpn.clone(),
                                method: parts.method.to_string(),
                                path: parts.uri.path().to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into(),
                                        )
                                    })
                                    .collect(),
                                body: data,
                            };
                            let reply = summary(&s);
                            seen.lock().unwrap().push(s);
                            let resp = http::Response::builder()
                                .status(200)
                                .header("content-type", "application/json")
                                .body(())
                                .unwrap();
                            if let Ok(mut stream) = respond.send_response(resp, false) {
                                let _ = stream.send_data(reply.into(), true);
                            }
                        });
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            tls: Arc::new(Mutex::new(None)),
            task,
        }
    }
}

#[derive(Default, Clone)]
struct ConnInfo {
    client_cn: Option<String>,
    sni: Option<String>,
    alpn: Option<String>,
}

impl ConnInfo {
    fn of(ssl: &boring::ssl::SslRef) -> ConnInfo {
        ConnInfo {
            client_cn: ssl.peer_certificate().and_then(|c| cn_of(&c)),
            sni: ssl
                .servername(boring::ssl::NameType::HOST_NAME)
                .map(str::to_string),
            alpn: ssl
                .selected_alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

/// The CN of a certificate.
pub fn cn_of(c: &X509) -> Option<String> {
    c.subject_name()
        .entries_by_nid(boring::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().as_utf8().ok().map(|s| s.to_string()))
}

fn summary(s: &Seen) -> Vec<u8> {
    serde_json::json!({
        "client_cn": s.client_cn, "sni": s.sni, "alpn": s.alpn,
        "method": s.method, "path": s.path,
        "body_len": s.body.len(),
    })
    .to_string()
    .into_bytes()
}

async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    info: ConnInfo,
    seen: Arc<Mutex<Vec<Seen>>>,
    behavior: Behavior,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request head.
        let (head_len, method, path, headers) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut hs);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let headers: Vec<(String, String)> = owned_headers(req.headers);
                break (
                    n,
                    req.method.unwrap_or("").to_string(),
                    req.path.unwrap_or("").to_string(),
                    headers,
                );
            }
            if !read_more(&mut s, &mut buf).await {
                return;
            }
        };
        if behavior == Behavior::Hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        });
        let (body, consumed) = if chunked {
            // Read until the whole chunked body (ending in a zero chunk) is here.
            loop {
                if let Some(end) = find(&buf[head_len..], b"0\r\n\r\n") {
                    let raw = &buf[head_len..head_len + end + 5];
                    let body = dechunk(raw).unwrap_or_default();
                    break (body, head_len + end + 5);
                }
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            }
        } else {
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_len + len {
                if !read_more(&mut s, &mut buf).await {
                    return;
                }
            }
            (buf[head_len..head_len + len].to_vec(), head_len + len)
        };
        buf.drain(..consumed);
        let seen_req = Seen {
            client_cn: info.client_cn.clone(),
            sni: info.sni.clone(),
            alpn: info.alpn.clone(),
            method,
            path,
            headers,
            body,
        };
        let reply = summary(&seen_req);
        seen.lock().unwrap().push(seen_req);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&reply).await.is_err() {
            return;
        }
        let _ = s.flush().await;
    }
}
