//! Test harness: real TLS, real sockets on 127.0.0.1, Gatehouse as a process or in process.
//!
//! - [`Conf`] ([`conf`]) is the configuration, typed; [`Gatehouse`] runs the binary on it
//!   ([`Gatehouse::start`]) or builds it in this process ([`Gatehouse::in_process`]), and
//!   stops it on drop. Its ports come from [`reserved_port`].
//! - [`Upstream`] is an in-process HTTP/1.1 (keep-alive) or HTTP/2 origin, TLS or plain,
//!   that answers with what it saw (client CN, SNI, headers) as JSON.
//! - [`request`] is an HTTPS client that speaks raw HTTP/1.1 bytes.
#![allow(dead_code)]

pub mod conf;
pub mod icinga;
pub mod kea;
pub mod kea_root;
pub mod sink;

pub use conf::*;

use boring::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode, SslVersion};
use boring::x509::X509;
use gatehouse::audit::{AuditEvent, AuditSink};
use gatehouse::pki::{Ca, CertSpec, Issued};
use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
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

/// A port the kernel just handed out for 127.0.0.1 (bound on port 0, then released): another
/// test may take it before the peer binds it. The tests take every port, peers' included, from
/// [`reserved_port`] (Kea, Icinga and Prometheus bind with `SO_REUSEADDR`, which it allows);
/// this is for the benches, which run one scenario at a time. Icinga and HAProxy bind with
/// `SO_REUSEPORT`: two of them handed the same released port by concurrent tests both bind it
/// and the kernel splits its connections between them (seen in CI as API calls to one Icinga
/// master failing with "bad certificate" against the other test's CA).
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// A port on 127.0.0.1 for Gatehouse or a peer to listen on (or for a peer that never
/// listens), kept from everyone else for the rest of this process: the library's
/// [`gatehouse::testing::reserved_port`], which says why not `127.0.0.1:0` and why not
/// bind-then-release. Until something listens, a connection is refused as on a free port.
pub fn reserved_port() -> u16 {
    gatehouse::testing::reserved_port()
}

/// Waits until `a` accepts connections; panics with `name`'s log (`log`) if the process exits
/// first or `deadline` passes.
pub fn wait_listening(name: &str, child: &mut Child, a: SocketAddr, deadline: Instant, log: &Path) {
    let ended = || {
        let status = child.try_wait().ok().flatten()?;
        Some(format!("exited with {status}"))
    };
    wait_until_listening(name, a, deadline, ended, Some(log));
}

/// Waits until `a` accepts connections; panics, with `log` if there is one, when `ended`
/// says why it never will or `deadline` passes.
fn wait_until_listening(
    name: &str,
    a: SocketAddr,
    deadline: Instant,
    mut ended: impl FnMut() -> Option<String>,
    log: Option<&Path>,
) {
    let log_text = || {
        log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default()
    };
    while std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_err() {
        if let Some(story) = ended() {
            panic!("{name} {story}:\n{}", log_text());
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

// === Gatehouse ===

/// A running Gatehouse on a [`Conf`], stopped on drop. It runs one of two ways:
///
/// - [`Gatehouse::start`]: the `gatehouse` binary (or an example program, [`Gatehouse::start_bin`])
///   as a child process, logging to `dir/gatehouse.log`. For tests of what only a process
///   shows: its log lines, exit, signals, reload, upgrade, memory.
/// - [`Gatehouse::in_process`]: built in this test process through the library's builder
///   (`Gatehouse::from_config_in` → `with_audit_sink` → `build` → Pingora's `Server::run` on a
///   thread of its own), counting in a registry of its own and recording typed audit events:
///   tests read [`Gatehouse::metrics_text`] and [`Gatehouse::audit`] instead of log text.
///
/// Either way the config is written to `dir/gatehouse.yaml` with a [`conf::Server::for_test`]
/// section unless the [`Conf`] has one, and the constructor returns once every listener and
/// the metrics endpoint accept connections (Pingora binds each service on its own thread, so
/// one port being up says nothing about the others). Ports come from [`reserved_port`].
pub struct Gatehouse {
    pub dir: PathBuf,
    /// The configuration it runs, `server:` section included.
    pub conf: Conf,
    run: Run,
}

enum Run {
    Process { child: Child, log: PathBuf },
    InProcess(InProcess),
}

/// The binary under test.
pub fn gatehouse_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

impl Gatehouse {
    /// Runs the `gatehouse` binary on `conf`.
    pub fn start(dir: &Path, conf: &Conf) -> Gatehouse {
        Gatehouse::start_bin(Path::new(gatehouse_bin()), dir, conf)
    }

    /// [`Gatehouse::start`] with another binary that takes `run -c FILE` or `-c FILE`, e.g.
    /// one of `examples/` built on the library ([`example_bin`]).
    pub fn start_bin(bin: &Path, dir: &Path, conf: &Conf) -> Gatehouse {
        Gatehouse::start_bin_env(bin, &[], dir, conf)
    }

    /// [`Gatehouse::start_bin`] with extra environment variables.
    pub fn start_bin_env(bin: &Path, env: &[(&str, &str)], dir: &Path, conf: &Conf) -> Gatehouse {
        let conf = conf_for(dir, conf);
        let file = dir.join("gatehouse.yaml");
        conf.write(&file);
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
            dir: dir.to_path_buf(),
            conf,
            run: Run::Process { child, log },
        };
        gh.wait_ready();
        gh
    }

    /// Starts the new process of a graceful upgrade: `gatehouse run --upgrade` on this
    /// instance's file, logging to `gatehouse-new.log` (binary only). It takes the listeners
    /// over once this one gets SIGQUIT, so it is not waited for here; dropping it stops it.
    pub fn start_upgrade(&self) -> Gatehouse {
        let log = self.dir.join("gatehouse-new.log");
        let child = Command::new(gatehouse_bin())
            .args(["run", "-c"])
            .arg(self.dir.join("gatehouse.yaml"))
            .arg("--upgrade")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn gatehouse --upgrade");
        Gatehouse {
            dir: self.dir.clone(),
            conf: self.conf.clone(),
            run: Run::Process { child, log },
        }
    }

    /// Builds and runs Gatehouse on `conf` inside this test process (see [`Gatehouse`]).
    pub fn in_process(dir: &Path, conf: &Conf) -> Gatehouse {
        let conf = conf_for(dir, conf);
        conf.write(&dir.join("gatehouse.yaml"));
        let run = Run::InProcess(InProcess::start(dir, &conf.to_yaml()));
        let mut gh = Gatehouse {
            dir: dir.to_path_buf(),
            conf,
            run,
        };
        gh.wait_ready();
        gh
    }

    fn wait_ready(&mut self) {
        let addresses = self.conf.addresses();
        assert!(
            !addresses.is_empty(),
            "no listener or metrics address to wait for in:\n{}",
            self.conf.to_yaml()
        );
        let deadline = Instant::now() + Duration::from_secs(15);
        for a in addresses {
            match &mut self.run {
                Run::Process { child, log } => wait_listening("gatehouse", child, a, deadline, log),
                Run::InProcess(p) => {
                    let ended = || p.ended().then(|| "(in process) stopped".to_string());
                    wait_until_listening("gatehouse", a, deadline, ended, None)
                }
            }
        }
    }

    /// The process id (binary only).
    pub fn pid(&self) -> u32 {
        match &self.run {
            Run::Process { child, .. } => child.id(),
            Run::InProcess(_) => panic!("pid(): this Gatehouse runs in the test process"),
        }
    }

    /// Waits up to `within` for the process to exit (binary only): after a SIGQUIT hand-over
    /// or a stop signal. Returns its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let Run::Process { child, .. } = &mut self.run else {
            panic!("wait_exit(): this Gatehouse runs in the test process");
        };
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` (`TERM`, `QUIT`, …) to the process (binary only).
    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {}", self.pid());
    }

    /// Whether the process has exited, waiting up to `t` (binary only).
    pub fn exited_within(&mut self, t: Duration) -> bool {
        self.wait_exit(t).is_some()
    }

    /// Everything the process logged so far (binary only; an in-process instance logs to this
    /// process's logger, shown with `RUST_LOG`).
    pub fn log_text(&self) -> String {
        let Run::Process { log, .. } = &self.run else {
            return "(in-process Gatehouse: no log of its own; run with RUST_LOG=info to see it)"
                .into();
        };
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits up to 5 s for a log line containing `needle`; returns that line (binary only).
    pub fn wait_log(&self, needle: &str) -> String {
        self.wait_log_within(needle, Duration::from_secs(5))
    }

    /// [`Gatehouse::wait_log`], waiting up to `within`.
    pub fn wait_log_within(&self, needle: &str, within: Duration) -> String {
        assert!(
            matches!(self.run, Run::Process { .. }),
            "wait_log({needle:?}): an in-process Gatehouse has no log of its own: assert on \
             metrics_text() or audit()"
        );
        let deadline = Instant::now() + within;
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

    /// Its metrics in the Prometheus text format: encoded from its own registry when in
    /// process, else fetched from the `metrics:` endpoint.
    pub async fn metrics_text(&self) -> String {
        match &self.run {
            Run::InProcess(p) => {
                use prometheus::Encoder;
                let mut out = Vec::new();
                prometheus::TextEncoder::new()
                    .encode(&p.registry.gather(), &mut out)
                    .expect("encode metrics");
                String::from_utf8(out).expect("UTF-8 metrics")
            }
            Run::Process { .. } => {
                let a = self
                    .conf
                    .metrics_addr()
                    .expect("metrics_text(): the config has no `metrics:` address");
                metrics_text(a.port()).await
            }
        }
    }

    /// Waits up to 5 s until [`Gatehouse::metrics_text`] has a line starting with `series`
    /// (`family{labels} value`, labels in Prometheus' order); returns the text. The in-process
    /// counterpart of [`Gatehouse::wait_log`] for what is counted.
    pub async fn wait_metric(&self, series: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = self.metrics_text().await;
            if m.lines().any(|l| l.starts_with(series)) {
                return m;
            }
            assert!(Instant::now() < deadline, "no `{series}` in:\n{m}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The audit events recorded so far, in order (in process only: the binary writes them to
    /// `audit.path` or its log).
    pub fn audit(&self) -> Vec<AuditEvent> {
        match &self.run {
            Run::InProcess(p) => p.audit.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            Run::Process { .. } => panic!("audit(): only an in-process Gatehouse records events"),
        }
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        if let Run::Process { child, .. } = &mut self.run {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `conf` with a test `server:` section for `dir` unless it has one.
fn conf_for(dir: &Path, conf: &Conf) -> Conf {
    let mut conf = conf.clone();
    conf.server
        .get_or_insert_with(|| conf::Server::for_test(dir));
    conf
}

/// A Gatehouse built and run by the library in this process.
///
/// Several run at once in one test binary (tests run on parallel threads). What Pingora keeps
/// per process does not get in the way: each `Server` has its own runtimes, listening-fd table
/// and shutdown watch; the fast-timeout threshold it sets in `run` is a global, but every
/// instance sets the same value (none); logging is this process's `log` logger (off unless
/// `RUST_LOG` is set). It runs as any embedder's test would: [`gatehouse::testing::Instance`]
/// (no signals watched; stopped on drop), counting in a registry of its own and recording
/// every audit event.
struct InProcess {
    registry: prometheus::Registry,
    audit: Arc<Mutex<Vec<AuditEvent>>>,
    instance: gatehouse::testing::Instance,
}

impl InProcess {
    fn start(dir: &Path, yaml: &str) -> InProcess {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = env_logger::try_init();
        }
        let config = gatehouse::Config::parse(yaml, dir)
            .unwrap_or_else(|e| panic!("the config does not parse: {e:?}\n{yaml}"));
        let registry = prometheus::Registry::new();
        let metrics = Arc::new(gatehouse::metrics::Metrics::register(&registry).unwrap());
        let audit = Arc::new(Mutex::new(Vec::new()));
        let sink = AuditLog(audit.clone());
        let instance = gatehouse::Gatehouse::from_config_in(config, metrics)
            .map(|g| g.with_audit_sink(sink))
            .and_then(gatehouse::testing::Instance::start)
            .unwrap_or_else(|e| panic!("Gatehouse did not start: {e}\n{yaml}"));
        InProcess {
            registry,
            audit,
            instance,
        }
    }

    /// Whether `Server::run` returned (or never started).
    fn ended(&self) -> bool {
        self.instance.ended()
    }
}

/// The audit sink of an in-process instance: every event, in order.
struct AuditLog(Arc<Mutex<Vec<AuditEvent>>>);

impl AuditSink for AuditLog {
    fn record(&self, event: &AuditEvent) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
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

/// What curl saw: status code, HTTP version (`2`, `1.1`) and body.
#[derive(Debug)]
pub struct CurlOut {
    pub status: String,
    pub version: String,
    pub body: String,
}

/// curl with its defaults (HTTP/2 over TLS), as `who` of `pki` (its `who.crt`/`who.key`),
/// trusting `pki`'s CA, plus `args`; bounded by 15 s.
pub async fn curl(pki: &Pki, who: &str, url: &str, args: &[&str]) -> CurlOut {
    let (cert, key) = pki.paths(who);
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(args)
            .arg("--cacert")
            .arg(pki.ca_path())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(url)
            .output(),
    )
    .await
    .expect("curl finished")
    .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    CurlOut {
        status: status.to_string(),
        version: version.to_string(),
        body: body.to_string(),
    }
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
    tls_handshake(tcp_connect(None, addr).await?, o).await
}

/// The client side of a TLS handshake over `tcp`, as `o` says.
async fn tls_handshake(
    tcp: TcpStream,
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
    tokio_boring::connect(cfg, &name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// A TCP connection to `addr`, from `src` when given (any of 127.0.0.0/8 reaches a loopback
/// listener, so a test can be many clients by their IP).
async fn tcp_connect(src: Option<IpAddr>, addr: SocketAddr) -> Result<TcpStream, String> {
    let Some(src) = src else {
        return TcpStream::connect(addr).await.map_err(|e| e.to_string());
    };
    let s = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    s.bind(SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    s.connect(addr).await.map_err(|e| e.to_string())
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

/// Sum of every series of `name` whose labels include all of `labels` (0 if none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .fold(0.0, |a, b| a + b)
}

/// A `/proc/<pid>/status` field in KiB (0 when unreadable).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
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
    request_from(None, addr, tls, method, path, headers, body).await
}

/// [`request`] from the source address `src` (e.g. `127.0.0.7`: another client IP).
pub async fn request_from(
    src: Option<IpAddr>,
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
        let tcp = tcp_connect(src, addr).await?;
        match tls {
            Some(o) => {
                let s = tls_handshake(tcp, o).await?;
                exchange(s, &bytes).await
            }
            None => exchange(tcp, &bytes).await,
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

/// Reads one complete HTTP/1.1 response off a kept-alive connection (`buf` keeps leftovers).
pub async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<Response, String> {
    loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(n)) = r.parse(buf) {
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            let total = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
                buf[n..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|e| n + e + 5)
            } else {
                let len: usize = header("content-length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                (buf.len() >= n + len).then_some(n + len)
            };
            if let Some(total) = total {
                let resp = parse_response(&buf[..total])?;
                buf.drain(..total);
                return Ok(resp);
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(Duration::from_secs(20), s.read(&mut chunk)).await {
            Err(_) => return Err("timed out waiting for a response".into()),
            Ok(Ok(0)) => return Err("connection closed".into()),
            Ok(Err(e)) => return Err(format!("read: {e}")),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
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
    /// Status answered per request path instead of 200 ([`Upstream::answer`]).
    answers: Answers,
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

    /// From now on answer requests for `path` (path and query, exactly) with `status`, still
    /// recording them and with the usual JSON body (h1 origins only): a health endpoint that
    /// fails, then recovers.
    pub fn answer(&self, path: &str, status: u16) {
        self.answers
            .lock()
            .unwrap()
            .insert(path.to_string(), status);
    }

    /// An HTTP/1.1 keep-alive origin; TLS when `tls` is given.
    pub async fn h1(tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Upstream::h1_listening(l, tls, behavior)
    }

    /// [`Upstream::h1`] on `addr`, e.g. a [`reserved_port`] a config named before the origin
    /// came up (a peer that comes back).
    pub async fn h1_on(addr: SocketAddr, tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.set_reuseaddr(true).expect("SO_REUSEADDR");
        s.bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let l = s
            .listen(1024)
            .unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
        Upstream::h1_listening(l, tls, behavior)
    }

    fn h1_listening(l: TcpListener, tls: Option<SslAcceptor>, behavior: Behavior) -> Upstream {
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let tls = Arc::new(Mutex::new(tls.map(Arc::new)));
        let answers = Answers::default();
        let (s2, c2, t2, a2) = (
            seen.clone(),
            connections.clone(),
            tls.clone(),
            answers.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                *c2.lock().unwrap() += 1;
                let (seen, tls) = (s2.clone(), t2.lock().unwrap().clone());
                let answers = a2.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            let Ok(s) = tokio_boring::accept(&acc, tcp).await else {
                                return;
                            };
                            let ssl = s.ssl();
                            let info = ConnInfo::of(ssl);
                            serve_h1(s, info, seen, answers, behavior).await
                        }
                        None => serve_h1(tcp, ConnInfo::default(), seen, answers, behavior).await,
                    }
                });
            }
        });
        Upstream {
            addr,
            seen,
            connections,
            tls,
            answers,
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
            answers: Answers::default(),
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

/// Status per request path an h1 origin answers instead of 200.
type Answers = Arc<Mutex<HashMap<String, u16>>>;

async fn serve_h1<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    info: ConnInfo,
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Answers,
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
        let status = answers
            .lock()
            .unwrap()
            .get(&seen_req.path)
            .copied()
            .unwrap_or(200);
        seen.lock().unwrap().push(seen_req);
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|c| c.canonical_reason())
            .unwrap_or("Other");
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        );
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(&reply).await.is_err() {
            return;
        }
        let _ = s.flush().await;
    }
}
