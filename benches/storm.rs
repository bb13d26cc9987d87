//! `cargo bench --bench storm`: a reconnect storm (issue 16). After an upgrade or a master
//! restart every agent reconnects at once; this measures links established per second through
//! Gatehouse, HAProxy (`mode tcp`, ssl both sides) and nginx (`stream`), in one run, on
//! loopback, with the same certificates.
//!
//! A link = TCP connect + full TLS handshake with a client certificate to the proxy, one
//! `event::Heartbeat` netstring carrying the link's number, the proxy's own mTLS connect to
//! the sink (a master stand-in on a runtime of its own that requires client certificates),
//! and that first message counted at the sink by number. `STORM_LINKS` links (default 2000)
//! are opened with at most `STORM_CONCURRENCY` (default 64) handshakes in flight; after the
//! last one the run waits up to `STORM_WAIT` s (default 20) for the sink to count them.
//!
//! Reported per proxy and key type: links/s (first messages delivered ÷ time from the first
//! connect to the last delivery), first messages delivered, links that failed at the client
//! (grouped by error text), links left open by the proxy with nothing delivered upstream,
//! links the proxy closed, the sink's failed and resumed handshakes, the sink's handshake time
//! (p50/p99/max, from accept), this host's listen-queue overflows and SYN retransmits during
//! the storm (`/proc/net/netstat`, host-wide), the proxy's CPU seconds, and for Gatehouse its
//! upstream connect failures by class (from its log).
//!
//! Environment: `STORM_LINKS`, `STORM_CONCURRENCY`, `STORM_WAIT`, `STORM_KEYS`
//! (`rsa4096`, `p256` or `both`, default both), `STORM_PROXIES` (default
//! `gatehouse,haproxy,nginx`), `STORM_CONNECT_TIMEOUT` (Gatehouse's upstream group
//! `connect_timeout`, e.g. `10s`; default: the config default, 2 s), `STORM_SINK_THREADS`
//! (the sink's worker threads, default 1), `STORM_SINK_BACKLOG` (the sink's listen backlog,
//! default 4096: an Icinga master listens with Boost.Asio's default, `SOMAXCONN`, which the
//! kernel caps at `net.core.somaxconn`, 4096 here), `STORM_RUST_LOG` (Gatehouse's `RUST_LOG`, default
//! `info`), `STORM_KEEP=1` keeps the run's folder (configs, logs, certificates).
//!
//! `STORM_GATEHOUSE_BIN` runs another Gatehouse build under the same harness (A/B).
//!
//! `STORM_RESUME` (`off` by default): whether the sink lets a proxy resume a TLS session.
//! nginx and HAProxy present one certificate upstream for every agent, so after their first
//! full handshake they resume that one session for all the others; that shared identity is
//! exactly what breaks Icinga's per-agent identity. A relay that keeps each agent's identity
//! can only resume a session of that same agent, and in a storm each agent connects once:
//! every upstream handshake is a full one. `off` makes all three proxies pay that; `on`
//! shows what the shared session buys the peers. `STORM_UPSTREAM_KEY` (`same` or `p256`,
//! default `p256`) is the key type of the certificate presented to the sink: Gatehouse's
//! `cert_dir` identity for agent1, and HAProxy's and nginx's one upstream certificate.
//! Icinga 2.13 accepts an EC P-256 client certificate issued by its RSA CA (checked against a
//! real master: "New client connection for identity 'agent1'"), and an EC P-256 signature
//! costs a fraction of an RSA-4096 one, so edge identities should be EC.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use boring::ssl::{SslAcceptor, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use bytes::BytesMut;
use common::{free_port, gatehouse_bin, require_binary};
use gatehouse::cluster::codec;
use gatehouse::pki::{Ca, CertSpec, Issued};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Tls = tokio_boring::SslStream<TcpStream>;

// === sink ===

/// What the sink saw during one storm.
struct SinkState {
    t0: Instant,
    /// Link numbers whose first message arrived.
    seen: Vec<AtomicBool>,
    delivered: AtomicUsize,
    /// Nanoseconds after `t0` of the latest first message.
    last_ns: AtomicU64,
    accept_errors: Mutex<BTreeMap<String, usize>>,
    /// Handshakes that resumed a TLS session (no certificate signature or verification).
    resumed: AtomicUsize,
    /// Handshake durations (accept → done), ms.
    handshake_ms: Mutex<Vec<f64>>,
}

/// A master stand-in: requires client certificates, sends its `icinga::Hello` at once (and with
/// it, under `STORM_RESUME=on`, its session tickets), reads each link's first message and
/// records its number, then drains the link until it closes.
struct StormSink {
    addr: SocketAddr,
    state: Arc<SinkState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StormSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The number in `"mark":"<n>"`.
fn mark_of(payload: &[u8]) -> Option<usize> {
    let key = br#""mark":""#;
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|b| *b as char)
        .collect::<String>();
    digits.parse().ok()
}

impl StormSink {
    async fn start(acc: SslAcceptor, links: usize, t0: Instant, backlog: u32) -> StormSink {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(addr(0)).unwrap();
        let l: TcpListener = sock.listen(backlog).unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(SinkState {
            t0,
            seen: (0..links).map(|_| AtomicBool::new(false)).collect(),
            delivered: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
            accept_errors: Mutex::new(BTreeMap::new()),
            resumed: AtomicUsize::new(0),
            handshake_ms: Mutex::new(Vec::with_capacity(links)),
        });
        let (st, acc) = (state.clone(), Arc::new(acc));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let _ = tcp.set_nodelay(true);
                let (st, acc) = (st.clone(), acc.clone());
                tokio::spawn(async move {
                    let t = Instant::now();
                    let mut s = match tokio_boring::accept(&acc, tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            *st.accept_errors
                                .lock()
                                .unwrap()
                                .entry(e.to_string())
                                .or_default() += 1;
                            return;
                        }
                    };
                    if s.ssl().session_reused() {
                        st.resumed.fetch_add(1, Ordering::Relaxed);
                    }
                    // As an Icinga master: its own icinga::Hello at once. (A TLS 1.3 server's
                    // session tickets go out with its first write; a master that never wrote
                    // would hand out none.)
                    let hello = br#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"version":21300,"capabilities":3}}"#;
                    if s.write_all(&codec::encode(hello)).await.is_err() || s.flush().await.is_err()
                    {
                        return;
                    }
                    st.handshake_ms
                        .lock()
                        .unwrap()
                        .push(t.elapsed().as_secs_f64() * 1e3);
                    let mut buf = BytesMut::with_capacity(4096);
                    let mut first = true;
                    loop {
                        while let Ok(Some(f)) = codec::decode(&mut buf, 1 << 20) {
                            if !std::mem::take(&mut first) {
                                continue;
                            }
                            let n = mark_of(f.raw()).filter(|n| *n < st.seen.len());
                            if let Some(n) = n {
                                if !st.seen[n].swap(true, Ordering::Relaxed) {
                                    st.delivered.fetch_add(1, Ordering::Relaxed);
                                    st.last_ns.fetch_max(
                                        st.t0.elapsed().as_nanos() as u64,
                                        Ordering::Relaxed,
                                    );
                                }
                            }
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        StormSink { addr, state, task }
    }
}

// === certificates ===

struct Keys {
    name: &'static str,
    dir: PathBuf,
}

impl Keys {
    fn p(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

/// CA, `server` (localhost, 127.0.0.1: the proxies and the sink), `client` (CN agent1, every
/// link's certificate; also `ids/agent1.*`, Gatehouse's upstream identity for it, and what
/// HAProxy and nginx present upstream) and the PEM bundles HAProxy wants. Four keys only:
/// RSA-4096 generation takes seconds each.
fn make_keys(
    root: &Path,
    name: &'static str,
    rsa: Option<u32>,
    upstream_ec: bool,
) -> (Keys, Issued, Ca) {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("ids")).unwrap();
    let spec = |s: CertSpec| match rsa {
        Some(bits) => s.rsa(bits),
        None => s,
    };
    let t = Instant::now();
    let ca =
        Ca::from_spec(&spec(CertSpec::new("storm CA")).validity(-3600, 10 * 365 * 86400)).unwrap();
    ca.issued.write(&dir, "ca").unwrap();
    let server = ca
        .issue(&spec(
            CertSpec::new("localhost")
                .dns(&["localhost"])
                .ips(&["127.0.0.1"]),
        ))
        .unwrap();
    server.write(&dir, "server").unwrap();
    let client = ca.issue(&spec(CertSpec::new("agent1"))).unwrap();
    client.write(&dir, "client").unwrap();
    // What goes to the sink: Gatehouse's identity for agent1, the peers' one certificate.
    let upstream = if upstream_ec {
        ca.issue(&CertSpec::new("agent1")).unwrap()
    } else {
        client.clone()
    };
    upstream.write(&dir, "upstream").unwrap();
    upstream.write(&dir.join("ids"), "agent1").unwrap();
    for (pem, parts) in [
        ("server.pem", ["server.crt", "server.key"]),
        ("upstream.pem", ["upstream.crt", "upstream.key"]),
    ] {
        let joined: Vec<u8> = parts
            .iter()
            .flat_map(|p| std::fs::read(dir.join(p)).unwrap())
            .collect();
        std::fs::write(dir.join(pem), joined).unwrap();
    }
    eprintln!("{name}: keys made in {:.1} s", t.elapsed().as_secs_f64());
    (Keys { name, dir }, server, ca)
}

// === proxies ===

/// Writes `name`'s config for a listener on `port` relaying to `sink`; returns its command.
fn proxy_cmd(name: &str, k: &Keys, run: &Path, port: u16, sink: SocketAddr) -> Command {
    let d = run.display();
    match name {
        "gatehouse" => {
            let ct = std::env::var("STORM_CONNECT_TIMEOUT")
                .map(|v| format!(", connect_timeout: {v}"))
                .unwrap_or_default();
            let conf = format!(
                "server: {{ threads: 2, pid_file: {d}/gh.pid, upgrade_sock: {d}/gh.sock }}\nlisteners:\n  - {{ name: storm, address: \"127.0.0.1:{port}\", protocols: [cluster], tls: {{ cert: {c}, key: {key}, client_auth: required, client_ca: {ca} }} }}\nupstreams:\n  master: {{ peers: [\"{sink}\"]{ct}, tls: {{ ca: {ca}, client_cert: {uc}, client_key: {uk}, sni: localhost }} }}\ncluster:\n  routes: [ {{ sni: storm, upstream: master }} ]\n  upstream_identity: {{ cert_dir: {ids} }}\n  limits: {{ idle_timeout: 600s, max_links_per_identity: 1000000 }}\n",
                c = k.p("server.crt"), key = k.p("server.key"), ca = k.p("ca.crt"), ids = k.p("ids"), uc = k.p("upstream.crt"), uk = k.p("upstream.key"),
            );
            std::fs::write(run.join("gh.yaml"), conf).unwrap();
            // STORM_GATEHOUSE_BIN: another build in the same harness (A/B).
            let bin =
                std::env::var("STORM_GATEHOUSE_BIN").unwrap_or_else(|_| gatehouse_bin().into());
            let mut c = Command::new(bin);
            c.args(["run", "-c"]).arg(run.join("gh.yaml")).env(
                "RUST_LOG",
                std::env::var("STORM_RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
            c
        }
        "haproxy" => {
            let conf = format!(
                "global\n  nbthread 2\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\nfrontend storm\n  bind 127.0.0.1:{port} ssl crt {sp} ca-file {ca} verify required\n  default_backend master\nbackend master\n  server s {sink} ssl verify required ca-file {ca} crt {cl} sni str(localhost)\n",
                sp = k.p("server.pem"), ca = k.p("ca.crt"), cl = k.p("upstream.pem"),
            );
            std::fs::write(run.join("haproxy.cfg"), conf).unwrap();
            let mut c = Command::new("haproxy");
            c.args(["-db", "-f"]).arg(run.join("haproxy.cfg"));
            c
        }
        _ => {
            let user = if is_root() {
                "user nobody nogroup;\n"
            } else {
                ""
            };
            let conf = format!(
                "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n{user}worker_processes 2;\nworker_rlimit_nofile 30000;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 20000; }}\nstream {{\n server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {c}; ssl_certificate_key {key}; ssl_client_certificate {ca}; ssl_verify_client on;\n  proxy_pass {sink}; proxy_ssl on; proxy_ssl_certificate {cc}; proxy_ssl_certificate_key {ck}; proxy_ssl_trusted_certificate {ca}; proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_timeout 600s; }}\n}}\n",
                c = k.p("server.crt"), key = k.p("server.key"), ca = k.p("ca.crt"), cc = k.p("upstream.crt"), ck = k.p("upstream.key"),
            );
            std::fs::write(run.join("nginx.conf"), conf).unwrap();
            let mut c = Command::new("nginx");
            c.args(["-e", "stderr", "-c"])
                .arg(run.join("nginx.conf"))
                .args(["-g", "daemon off;"]);
            c
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

// === the storm ===

/// One link: TCP, TLS with the client certificate, the numbered first message.
async fn link(c: &SslConnector, target: SocketAddr, sni: &str, n: usize) -> Result<Tls, String> {
    let mut cfg = c.configure().map_err(|e| e.to_string())?;
    cfg.set_verify_hostname(false);
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut s = tokio_boring::connect(cfg, sni, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let msg = format!(
        r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"mark":"{n}","timeout":120}}}}"#
    );
    s.write_all(&codec::encode(msg.as_bytes()))
        .await
        .map_err(|e| format!("write: {e}"))?;
    Ok(s)
}

struct Row {
    proxy: &'static str,
    keys: &'static str,
    links: usize,
    delivered: usize,
    secs: f64,
    cpu: f64,
    client_errors: BTreeMap<String, usize>,
    open_undelivered: usize,
    closed_by_proxy: usize,
    sink_errors: BTreeMap<String, usize>,
    sink_hs: (f64, f64, f64),
    sink_resumed: usize,
    /// This host's TcpExt ListenOverflows and TCPSynRetrans during the storm.
    tcp: (u64, u64),
    gh_failures: BTreeMap<String, usize>,
}

/// This host's `TcpExt` `ListenOverflows` (a full accept queue dropped a connection) and
/// `TCPSynRetrans` (SYNs sent again, 1 s, 3 s, … later), from `/proc/net/netstat`.
fn tcp_counters() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(keys), Some(vals)) = (rows.next(), rows.next()) else {
        return (0, 0);
    };
    let get = |name: &str| {
        keys.split_whitespace()
            .zip(vals.split_whitespace())
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    (get("ListenOverflows"), get("TCPSynRetrans"))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// `upstream … connect for … failed (<class>): <error>` lines of Gatehouse's log, by class
/// and the error's first words.
fn gatehouse_failures(log: &Path) -> BTreeMap<String, usize> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out = BTreeMap::new();
    for l in text.lines().filter(|l| l.contains(" failed (")) {
        let Some((_, rest)) = l.split_once(" failed (") else {
            continue;
        };
        let (class, err) = rest.split_once("): ").unwrap_or((rest, ""));
        let err: String = err.chars().take(70).collect();
        *out.entry(format!("{class}: {err}")).or_default() += 1;
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn storm(
    proxy: &'static str,
    k: &Keys,
    run: &Path,
    sink_rt: &tokio::runtime::Runtime,
    sink_acc: SslAcceptor,
    client: Arc<SslConnector>,
    links: usize,
    parallel: usize,
    wait: Duration,
) -> Row {
    let t_sink = Instant::now();
    let backlog = env_num("STORM_SINK_BACKLOG", 4096.0) as u32;
    let sink = sink_rt
        .spawn(async move { StormSink::start(sink_acc, links, t_sink, backlog).await })
        .await
        .unwrap();
    let port = free_port();
    let log = run.join(format!("{proxy}.log"));
    let p = spawn(
        proxy,
        &mut proxy_cmd(proxy, k, run, port, sink.addr),
        &log,
        port,
    );
    let pid = p.child.id();
    // The proxy idles a moment after it listens, so that its start-up is not the storm's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sni = if proxy == "gatehouse" {
        "storm"
    } else {
        "localhost"
    };
    let target = addr(port);
    let cpu0 = cpu_secs(pid);
    let tcp0 = tcp_counters();
    // The storm starts now: the sink's clock is reset to it.
    let t0 = Instant::now();
    let base_ns = t0.duration_since(t_sink).as_nanos() as u64;
    let (open, client_errors) = open_links_at_once(&client, target, sni, links, parallel).await;
    let st = sink.state.clone();
    let all = open.len();
    common::holds_within(wait, || st.delivered.load(Ordering::Relaxed) >= all).await;
    let cpu = cpu_secs(pid) - cpu0;
    let tcp1 = tcp_counters();
    let tcp = (tcp1.0 - tcp0.0, tcp1.1 - tcp0.1);
    let delivered = st.delivered.load(Ordering::Relaxed);
    let secs = (st.last_ns.load(Ordering::Relaxed).saturating_sub(base_ns)) as f64 / 1e9;
    let (open_undelivered, closed_by_proxy) = closed_or_undelivered(open, &st).await;
    drop(p);
    let mut hs = st.handshake_ms.lock().unwrap().clone();
    let sink_hs = (pct(&mut hs, 0.5), pct(&mut hs, 0.99), pct(&mut hs, 1.0));
    let sink_errors = st.accept_errors.lock().unwrap().clone();
    drop(sink);
    Row {
        proxy,
        keys: k.name,
        links,
        delivered,
        secs,
        cpu,
        client_errors,
        open_undelivered,
        closed_by_proxy,
        sink_errors,
        sink_hs,
        sink_resumed: st.resumed.load(Ordering::Relaxed),
        tcp,
        gh_failures: if proxy == "gatehouse" {
            gatehouse_failures(&log)
        } else {
            BTreeMap::new()
        },
    }
}

/// Opens `links` links to `target`, at most `parallel` handshakes in flight: the links that
/// opened, by number, and the errors of the others, grouped.
async fn open_links_at_once(
    client: &Arc<SslConnector>,
    target: SocketAddr,
    sni: &'static str,
    links: usize,
    parallel: usize,
) -> (Vec<(usize, Tls)>, BTreeMap<String, usize>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(links);
    for n in 0..links {
        let (c, gate) = (client.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            match tokio::time::timeout(Duration::from_secs(60), link(&c, target, sni, n)).await {
                Ok(r) => r,
                Err(_) => Err("client: no link within 60 s".into()),
            }
        }));
    }
    let mut open = Vec::with_capacity(links);
    let mut client_errors = BTreeMap::new();
    for (n, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(s) => open.push((n, s)),
            Err(e) => *client_errors.entry(e).or_default() += 1,
        }
    }
    (open, client_errors)
}

/// Links the client still holds: did the proxy close them, or leave them open with nothing
/// delivered upstream? (open and undelivered, closed by the proxy).
async fn closed_or_undelivered(open: Vec<(usize, Tls)>, st: &SinkState) -> (usize, usize) {
    let mut checks = tokio::task::JoinSet::new();
    for (n, mut s) in open {
        checks.spawn(async move {
            let mut b = [0u8; 64];
            let closed = matches!(
                tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
                Ok(Ok(0)) | Ok(Err(_))
            );
            (n, closed, s)
        });
    }
    let (mut open_undelivered, mut closed_by_proxy) = (0, 0);
    let mut held = Vec::new();
    while let Some(r) = checks.join_next().await {
        let (n, closed, s) = r.unwrap();
        if closed {
            closed_by_proxy += 1;
        } else if !st.seen[n].load(Ordering::Relaxed) {
            open_undelivered += 1;
        }
        held.push(s);
    }
    (open_undelivered, closed_by_proxy)
}

/// The sink's TLS: its server certificate, client certificates required; session resumption
/// (tickets and the session cache) only with `resume`.
fn sink_acceptor(server: &Issued, ca: &boring::x509::X509, resume: bool) -> SslAcceptor {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&server.cert).unwrap();
    b.set_private_key(&server.key).unwrap();
    b.cert_store_mut().add_cert(ca.clone()).unwrap();
    b.add_client_ca(ca).unwrap();
    b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    b.set_session_id_context(b"storm-sink").unwrap();
    if !resume {
        b.set_options(boring::ssl::SslOptions::NO_TICKET);
        b.set_session_cache_mode(boring::ssl::SslSessionCacheMode::OFF);
    }
    b.build()
}

fn client_connector(k: &Keys) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_certificate_chain_file(k.p("client.crt")).unwrap();
    b.set_private_key_file(k.p("client.key"), SslFiletype::PEM)
        .unwrap();
    b.build()
}

fn grouped(m: &BTreeMap<String, usize>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{v}× {}", k.replace('|', "/")))
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    for tool in ["nginx", "haproxy"] {
        if !require_binary(tool) {
            eprintln!("the storm bench needs nginx, haproxy and libnginx-mod-stream");
            std::process::exit(1);
        }
    }
    let set = Settings::from_env();
    let root = tempfile::tempdir().unwrap();
    let _ = Command::new("chmod")
        .args(["a+rx"])
        .arg(root.path())
        .status();
    eprintln!(
        "storm: {} links, {} at a time, keys {:?}, upstream identity {}, sink resumption {}, proxies {:?}, Gatehouse connect_timeout {}",
        set.links,
        set.parallel,
        set.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
        if set.upstream_ec { "p256" } else { "same as the agents'" },
        if set.resume { "on" } else { "off" },
        set.proxies,
        std::env::var("STORM_CONNECT_TIMEOUT").unwrap_or_else(|_| "default (2s)".into())
    );
    let rows = run_storms(&set, root.path());
    print_rows(&set, &rows);
    print_r2(&rows);
    if std::env::var("STORM_KEEP").is_ok_and(|v| v == "1") {
        eprintln!("kept {}", root.keep().display());
    }
}

/// The run's settings, from the environment (see the module's doc).
struct Settings {
    links: usize,
    parallel: usize,
    wait: Duration,
    sink_threads: usize,
    keys: Vec<(&'static str, Option<u32>)>,
    resume: bool,
    upstream_ec: bool,
    proxies: Vec<&'static str>,
}

impl Settings {
    fn from_env() -> Settings {
        Settings {
            links: env_num("STORM_LINKS", 2000.0) as usize,
            parallel: env_num("STORM_CONCURRENCY", 64.0) as usize,
            wait: Duration::from_secs_f64(env_num("STORM_WAIT", 20.0)),
            sink_threads: env_num("STORM_SINK_THREADS", 1.0) as usize,
            keys: match std::env::var("STORM_KEYS").as_deref().unwrap_or("both") {
                "rsa4096" => vec![("rsa4096", Some(4096))],
                "p256" => vec![("p256", None)],
                _ => vec![("rsa4096", Some(4096)), ("p256", None)],
            },
            resume: std::env::var("STORM_RESUME").is_ok_and(|v| v == "on"),
            upstream_ec: std::env::var("STORM_UPSTREAM_KEY").map_or(true, |v| v != "same"),
            proxies: std::env::var("STORM_PROXIES")
                .unwrap_or_else(|_| "gatehouse,haproxy,nginx".into())
                .split(',')
                .filter_map(|p| match p.trim() {
                    "gatehouse" => Some("gatehouse"),
                    "haproxy" => Some("haproxy"),
                    "nginx" => Some("nginx"),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// One storm per key type and proxy, each in a folder of its own under `root`.
fn run_storms(set: &Settings, root: &Path) -> Vec<Row> {
    let sink_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(set.sink_threads)
        .thread_name("sink")
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for (name, rsa) in set.keys.iter().copied() {
        let (k, server, ca) = make_keys(root, name, rsa, set.upstream_ec);
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(root)
            .status();
        let client = Arc::new(client_connector(&k));
        for proxy in &set.proxies {
            let run = root.join(format!("{name}-{proxy}"));
            std::fs::create_dir_all(&run).unwrap();
            let _ = Command::new("chmod").args(["a+rwx"]).arg(&run).status();
            eprintln!("{name} {proxy} ...");
            let r = client_rt.block_on(storm(
                proxy,
                &k,
                &run,
                &sink_rt,
                sink_acceptor(&server, ca.cert(), set.resume),
                client.clone(),
                set.links,
                set.parallel,
                set.wait,
            ));
            eprintln!(
                "  {} of {} delivered, {:.0} links/s",
                r.delivered,
                r.links,
                r.delivered as f64 / r.secs
            );
            rows.push(r);
            // Lets the previous storm's connections wind down before the next one starts.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    rows
}

fn print_rows(set: &Settings, rows: &[Row]) {
    println!(
        "\n## Reconnect storm ({} links, {} handshakes at a time; mTLS both sides; first messages counted at the sink; upstream certificate {}; sink session resumption {})",
        set.links,
        set.parallel,
        if set.upstream_ec { "EC P-256" } else { "the agents' key type" },
        if set.resume { "on" } else { "off: every upstream handshake is a full one" }
    );
    println!("| keys | proxy | links/s | delivered | failed at client | open, nothing upstream | closed by proxy | proxy CPU s | CPU ms/link | sink handshake p50/p99/max ms | listen overflows / SYN retransmits |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {}/{} | {} | {} | {} | {:.1} | {:.1} | {:.0}/{:.0}/{:.0} | {}/{} |",
            r.keys,
            r.proxy,
            r.delivered as f64 / r.secs,
            r.delivered,
            r.links,
            r.client_errors.values().sum::<usize>(),
            r.open_undelivered,
            r.closed_by_proxy,
            r.cpu,
            r.cpu * 1e3 / r.delivered.max(1) as f64,
            r.sink_hs.0,
            r.sink_hs.1,
            r.sink_hs.2,
            r.tcp.0,
            r.tcp.1
        );
    }
    println!("\n| keys | proxy | client errors | sink handshakes resumed | sink handshake errors | Gatehouse upstream connect failures |");
    println!("|---|---|---|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.keys,
            r.proxy,
            grouped(&r.client_errors),
            r.sink_resumed,
            grouped(&r.sink_errors),
            grouped(&r.gh_failures)
        );
    }
}

fn print_r2(rows: &[Row]) {
    println!("\n## Target R2 (≥ 1.2× the better of HAProxy/nginx links/s, every first message delivered)");
    let keyset: Vec<&str> = {
        let mut v: Vec<&str> = rows.iter().map(|r| r.keys).collect();
        v.dedup();
        v
    };
    for keys in keyset {
        let of = |p: &str| rows.iter().find(|r| r.keys == keys && r.proxy == p);
        let rate = |r: &Row| r.delivered as f64 / r.secs;
        let best = ["haproxy", "nginx"]
            .iter()
            .filter_map(|p| of(p).map(rate))
            .fold(0.0, f64::max);
        if let Some(g) = of("gatehouse") {
            let ratio = rate(g) / best;
            let ok = ratio >= 1.2 && g.delivered == g.links && g.open_undelivered == 0;
            println!(
                "- {keys}: {:.2}× the better peer, {}/{} delivered, {} open without upstream → {}",
                ratio,
                g.delivered,
                g.links,
                g.open_undelivered,
                if ok { "holds" } else { "MISSED" }
            );
        }
    }
}
