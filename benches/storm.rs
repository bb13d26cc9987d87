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
//!
//! **R2b, a storm against a master that kept running** (issue 27): agents reconnect after a
//! network blip, each resuming its own upstream session. `STORM_IDENTITIES` (`single` by
//! default: every link presents agent1) `=distinct`: link i presents a certificate for
//! `agent{i}`, and Gatehouse's `cert_dir` holds one for every `agent{i}` (all certificates of a
//! kind over one key: generating thousands of RSA-4096 keys would take hours; distinct CNs
//! still make distinct leaves, which is what the relay's session cache keys on).
//! `STORM_ROUNDS` (default 1) `=2`: after round 1 every client link is closed (the proxy
//! closes its upstream links; the run waits until the sink saw them all end), then round 2
//! runs the same agents against the same proxy and the same sink (same acceptor, so the same
//! session ticket keys). `STORM_RESUME=both` runs each proxy twice, sink resumption off
//! (the baseline) and on. Per round the tables add the sink's CPU per link (its runtime's
//! threads, `/proc/self/task/*/schedstat`: the master's handshake, Hello and first read),
//! Gatehouse's upstream handshakes full/resumed (`gatehouse_cluster_upstream_handshakes_total`
//! from the metrics endpoint the bench gives it), and first messages that arrived under
//! another identity than their link's agent (checked for Gatehouse only: the sink reads the
//! peer's CN, from the ticket on a resumed handshake). The R2b verdict needs
//! `STORM_KEYS=rsa4096 STORM_UPSTREAM_KEY=same STORM_IDENTITIES=distinct STORM_ROUNDS=2
//! STORM_RESUME=both STORM_PROXIES=gatehouse`: round 2 with resumption ≥ 2× the links/s of
//! round 2 without (the same state otherwise: `cert_dir` read, master running; with only
//! `STORM_RESUME=on`, round 1 stands in), every first message delivered, the sink's CPU per link
//! lower; and round 1 with resumption (a restart: nothing to resume yet) not slower than round
//! 1 without (≥ 0.9×, this box's run-to-run noise).
//!
//! `STORM_CLIENT_RESUME` (`off` by default) `=on`: the bench's agents resume their own sessions
//! with the proxy too (Gatehouse's listener then gets `session_resumption: true`; a cluster
//! listener issues no tickets by default). Off, every downstream handshake of round 2 is a full
//! one: whether real Icinga agents resume toward their parent is not known here.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use boring::error::ErrorStack;
use boring::ex_data::Index;
use boring::nid::Nid;
use boring::pkey::{PKey, Private};
use boring::ssl::{
    ConnectConfiguration, Ssl, SslAcceptor, SslConnector, SslFiletype, SslMethod, SslRef,
    SslSession, SslSessionCacheMode, SslSessionRef, SslVerifyMode,
};
use boring::x509::X509;
use bytes::BytesMut;
use common::{free_port, gatehouse_bin, require_binary};
use gatehouse::cluster::codec;
use gatehouse::pki::{Ca, CertSpec, Issued};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Tls = tokio_boring::SslStream<TcpStream>;

// === sink ===

/// Whose certificate the sink expects on link n.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Not checked: HAProxy and nginx present one certificate for every agent.
    Any,
    /// `agent1` on every link.
    Agent1,
    /// `agent{n}` (`STORM_IDENTITIES=distinct`).
    PerLink,
}

/// What the sink saw during one round of a storm.
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
    expect: Expect,
    /// First messages that came under another CN than their link's agent's.
    wrong_identity: AtomicUsize,
    /// … of them on a resumed handshake.
    wrong_identity_resumed: AtomicUsize,
}

impl SinkState {
    fn new(links: usize, expect: Expect) -> SinkState {
        SinkState {
            t0: Instant::now(),
            seen: (0..links).map(|_| AtomicBool::new(false)).collect(),
            delivered: AtomicUsize::new(0),
            last_ns: AtomicU64::new(0),
            accept_errors: Mutex::new(BTreeMap::new()),
            resumed: AtomicUsize::new(0),
            handshake_ms: Mutex::new(Vec::with_capacity(links)),
            expect,
            wrong_identity: AtomicUsize::new(0),
            wrong_identity_resumed: AtomicUsize::new(0),
        }
    }

    /// A link's first message, which came under `cn`.
    fn first_message(&self, payload: &[u8], cn: Option<&str>, resumed: bool) {
        let Some(n) = mark_of(payload).filter(|n| *n < self.seen.len()) else {
            return;
        };
        if self.seen[n].swap(true, Ordering::Relaxed) {
            return;
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_ns
            .fetch_max(self.t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let want = match self.expect {
            Expect::Any => return,
            Expect::Agent1 => "agent1".to_string(),
            Expect::PerLink => format!("agent{n}"),
        };
        if cn != Some(want.as_str()) {
            self.wrong_identity.fetch_add(1, Ordering::Relaxed);
            if resumed {
                self.wrong_identity_resumed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A master stand-in: requires client certificates, sends its `icinga::Hello` at once (and with
/// it, under `STORM_RESUME=on`, its session tickets), reads each link's first message and
/// records its number and the CN it came under, then drains the link until it closes. It
/// keeps running across a storm's rounds; each round counts into fresh [`SinkState`].
struct StormSink {
    addr: SocketAddr,
    links: usize,
    /// The current round's counters (a connection counts into the round it was accepted in).
    state: Arc<RwLock<Arc<SinkState>>>,
    /// Connections open now, of any round.
    open: Arc<AtomicUsize>,
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

/// The peer certificate's CN (on a resumed handshake, the one in the session).
fn peer_cn(ssl: &SslRef) -> Option<String> {
    let cert = ssl.peer_certificate()?;
    let cn = cert.subject_name().entries_by_nid(Nid::COMMONNAME).next()?;
    cn.data().as_utf8().ok().map(|s| s.to_string())
}

/// Counts a sink connection as open until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl StormSink {
    async fn start(acc: SslAcceptor, links: usize, backlog: u32, expect: Expect) -> StormSink {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(addr(0)).unwrap();
        let l: TcpListener = sock.listen(backlog).unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(RwLock::new(Arc::new(SinkState::new(links, expect))));
        let open = Arc::new(AtomicUsize::new(0));
        let (st, n, acc) = (state.clone(), open.clone(), Arc::new(acc));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let _ = tcp.set_nodelay(true);
                n.fetch_add(1, Ordering::Relaxed);
                let guard = OpenGuard(n.clone());
                let st = st.read().unwrap().clone();
                tokio::spawn(sink_conn(st, acc.clone(), tcp, guard));
            }
        });
        StormSink {
            addr,
            links,
            state,
            open,
            task,
        }
    }

    /// A new round from now: fresh counters.
    fn reset(&self, expect: Expect) -> Arc<SinkState> {
        let st = Arc::new(SinkState::new(self.links, expect));
        *self.state.write().unwrap() = st.clone();
        st
    }
}

/// One sink connection: handshake, Hello, the first message, then drained until it closes.
async fn sink_conn(st: Arc<SinkState>, acc: Arc<SslAcceptor>, tcp: TcpStream, _open: OpenGuard) {
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
    let resumed = s.ssl().session_reused();
    if resumed {
        st.resumed.fetch_add(1, Ordering::Relaxed);
    }
    let cn = peer_cn(s.ssl());
    // As an Icinga master: its own icinga::Hello at once. (A TLS 1.3 server's session tickets
    // go out with its first write; a master that never wrote would hand out none.)
    let hello =
        br#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"version":21300,"capabilities":3}}"#;
    if s.write_all(&codec::encode(hello)).await.is_err() || s.flush().await.is_err() {
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
            if std::mem::take(&mut first) {
                st.first_message(f.raw(), cn.as_deref(), resumed);
            }
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// CPU seconds of this process's threads named `sink` (the sink's runtime, workers and
/// blocking pool): on-CPU nanoseconds from `schedstat`, else utime + stime ticks from `stat`.
fn sink_cpu_secs() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    tasks
        .flatten()
        .map(|t| t.path())
        .filter(|p| std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == "sink"))
        .map(|p| thread_cpu_secs(&p))
        .sum()
}

/// One thread's CPU seconds, `task` being its `/proc/self/task/<tid>`.
fn thread_cpu_secs(task: &Path) -> f64 {
    let ns = std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok());
    if let Some(ns) = ns {
        return ns / 1e9;
    }
    stat_cpu_secs(&task.join("stat"))
}

// === certificates ===

struct Keys {
    name: &'static str,
    dir: PathBuf,
    /// `STORM_IDENTITIES=distinct`: link i's certificate (`agent{i}`, over `client_key`);
    /// empty: every link presents `client.crt`.
    agents: Vec<X509>,
    client_key: PKey<Private>,
}

impl Keys {
    fn p(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }
}

/// CA, `server` (localhost, 127.0.0.1: the proxies and the sink), `client` (CN agent1, every
/// link's certificate; also `ids/agent1.*`, Gatehouse's upstream identity for it, and what
/// HAProxy and nginx present upstream) and the PEM bundles HAProxy wants. Four keys only:
/// RSA-4096 generation takes seconds each. With `agents` > 0 also a certificate per agent on
/// each side ([`issue_agents`]).
fn make_keys(
    root: &Path,
    name: &'static str,
    rsa: Option<u32>,
    upstream_ec: bool,
    agents: usize,
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
    let agents = issue_agents(&ca, &dir, &client, &upstream, !upstream_ec, agents);
    eprintln!("{name}: keys made in {:.1} s", t.elapsed().as_secs_f64());
    let client_key = client.key;
    (
        Keys {
            name,
            dir,
            agents,
            client_key,
        },
        server,
        ca,
    )
}

/// `STORM_IDENTITIES=distinct`: for each of `n` agents a client certificate `agent{i}` over
/// `client`'s key, and Gatehouse's identity for it, `ids/agent{i}.*`, over `upstream`'s key
/// (`same`: the client's certificate itself). One key per kind and a CA signature per
/// certificate, on two threads; the CNs make the leaves (and their digests) distinct.
fn issue_agents(
    ca: &Ca,
    dir: &Path,
    client: &Issued,
    upstream: &Issued,
    same: bool,
    n: usize,
) -> Vec<X509> {
    let ids = dir.join("ids");
    let up_key = upstream.key_pem();
    let issue = |i: usize, key: &PKey<Private>| {
        ca.issue_for_key(&CertSpec::new(&format!("agent{i}")), key.clone())
            .unwrap()
            .cert
    };
    let one = |i: usize| {
        let c = issue(i, &client.key);
        let u = if same {
            c.clone()
        } else {
            issue(i, &upstream.key)
        };
        std::fs::write(ids.join(format!("agent{i}.crt")), u.to_pem().unwrap()).unwrap();
        std::fs::write(ids.join(format!("agent{i}.key")), &up_key).unwrap();
        c
    };
    const THREADS: usize = 2;
    let mut parts: Vec<std::vec::IntoIter<X509>> = std::thread::scope(|s| {
        let one = &one;
        let hs: Vec<_> = (0..THREADS)
            .map(|t| s.spawn(move || (t..n).step_by(THREADS).map(one).collect::<Vec<_>>()))
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap().into_iter())
            .collect()
    });
    (0..n).map(|i| parts[i % THREADS].next().unwrap()).collect()
}

// === agents ===

/// The link number of a client connection, for the new-session callback.
static LINK: LazyLock<Index<Ssl, usize>> =
    LazyLock::new(|| Ssl::new_ex_index().expect("an ex_data index"));

/// The bench's agents: one client context; per link its agent's certificate
/// (`STORM_IDENTITIES=distinct`) and, under `STORM_CLIENT_RESUME=on`, the latest session the
/// proxy gave that agent.
struct Agents {
    connector: SslConnector,
    certs: Vec<X509>,
    key: PKey<Private>,
    sessions: Option<Arc<Vec<Mutex<Option<SslSession>>>>>,
}

impl Agents {
    fn new(k: &Keys, links: usize, client_resume: bool) -> Agents {
        let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
        b.set_verify(SslVerifyMode::NONE);
        b.set_certificate_chain_file(k.p("client.crt")).unwrap();
        b.set_private_key_file(k.p("client.key"), SslFiletype::PEM)
            .unwrap();
        let sessions = client_resume.then(|| {
            Arc::new(
                (0..links)
                    .map(|_| Mutex::new(None))
                    .collect::<Vec<Mutex<Option<SslSession>>>>(),
            )
        });
        if let Some(store) = sessions.clone() {
            b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
            // TLS 1.3 tickets arrive after the handshake, on the link's first read.
            b.set_new_session_callback(move |ssl, s| {
                if let Some(slot) = ssl.ex_data(*LINK).and_then(|n| store.get(*n)) {
                    *slot.lock().unwrap() = Some(s);
                }
            });
        }
        Agents {
            connector: b.build(),
            certs: k.agents.clone(),
            key: k.client_key.clone(),
            sessions,
        }
    }

    /// Link `n`'s TLS settings: its agent's certificate, and its agent's session offered (and
    /// taken: TLS 1.3 tickets are single-use).
    fn configure(&self, n: usize) -> Result<ConnectConfiguration, ErrorStack> {
        let mut cfg = self.connector.configure()?;
        cfg.set_verify_hostname(false);
        if let Some(c) = self.certs.get(n) {
            cfg.set_certificate(c)?;
            cfg.set_private_key(&self.key)?;
        }
        if let Some(store) = &self.sessions {
            cfg.set_ex_data(*LINK, n);
            let kept = store.get(n).and_then(|s| s.lock().unwrap().take());
            if let Some(s) = kept {
                offer_session(&mut cfg, &s)?;
            }
        }
        Ok(cfg)
    }
}

/// Offers `session` for resumption on a link about to handshake (`STORM_CLIENT_RESUME=on`).
fn offer_session(
    cfg: &mut ConnectConfiguration,
    session: &SslSessionRef,
) -> Result<(), ErrorStack> {
    // SAFETY: `SSL_set_session` needs the session to belong to this `Ssl`'s context. Every
    // session offered here was handed out by the new-session callback of `Agents::connector`,
    // the one context every link of the run is configured from (`Agents::configure`).
    unsafe { cfg.set_session(session) }
}

// === proxies ===

/// What Gatehouse's config gets beyond the others': its metrics endpoint (upstream handshakes
/// full and resumed, per round) and, under `STORM_CLIENT_RESUME=on`, session resumption on its
/// cluster listener (off there by default).
struct GhOpts {
    metrics_port: u16,
    client_resume: bool,
}

/// Writes `name`'s config for a listener on `port` relaying to `sink`; returns its command.
fn proxy_cmd(
    name: &str,
    k: &Keys,
    run: &Path,
    port: u16,
    sink: SocketAddr,
    gh: &GhOpts,
) -> Command {
    let d = run.display();
    match name {
        "gatehouse" => {
            let ct = std::env::var("STORM_CONNECT_TIMEOUT")
                .map(|v| format!(", connect_timeout: {v}"))
                .unwrap_or_default();
            let sr = if gh.client_resume {
                ", session_resumption: true"
            } else {
                ""
            };
            let mp = gh.metrics_port;
            // Every agent of the storm connects from 127.0.0.1: the per-address handshake
            // limit (default 64) and the listener's share of the descriptor limit are lifted,
            // as in the field each agent has its own address. With them, the storms of
            // 2026-12-07 lost 17 % (2,000 links, 64 at a time) to 75 % (9,000, 256 at a time)
            // of their links at accept.
            let conf = format!(
                "server: {{ threads: 2, pid_file: {d}/gh.pid, upgrade_sock: {d}/gh.sock }}\nlisteners:\n  - {{ name: storm, address: \"127.0.0.1:{port}\", protocols: [cluster], max_handshakes_per_ip: 100000, max_connections: 100000, tls: {{ cert: {c}, key: {key}, client_auth: required, client_ca: {ca}{sr} }} }}\nupstreams:\n  master: {{ peers: [\"{sink}\"]{ct}, tls: {{ ca: {ca}, client_cert: {uc}, client_key: {uk}, sni: localhost }} }}\ncluster:\n  routes: [ {{ sni: storm, upstream: master }} ]\n  upstream_identity: {{ cert_dir: {ids} }}\n  limits: {{ idle_timeout: 600s, max_links_per_identity: 1000000 }}\nmetrics: {{ address: \"127.0.0.1:{mp}\" }}\n",
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

/// One link: TCP, TLS with its agent's certificate (and session, if one is kept), the numbered
/// first message. The link, and whether its handshake resumed a session.
async fn link(a: &Agents, target: SocketAddr, sni: &str, n: usize) -> Result<(Tls, bool), String> {
    let cfg = a.configure(n).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut s = tokio_boring::connect(cfg, sni, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resumed = s.ssl().session_reused();
    let msg = format!(
        r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"mark":"{n}","timeout":120}}}}"#
    );
    s.write_all(&codec::encode(msg.as_bytes()))
        .await
        .map_err(|e| format!("write: {e}"))?;
    Ok((s, resumed))
}

/// One round of a storm.
struct Row {
    proxy: &'static str,
    keys: &'static str,
    /// The sink's session resumption.
    resume: bool,
    /// 1, 2, …: the same proxy and sink across rounds.
    round: usize,
    links: usize,
    delivered: usize,
    secs: f64,
    cpu: f64,
    /// CPU seconds of the sink's threads.
    sink_cpu: f64,
    client_errors: BTreeMap<String, usize>,
    /// Client → proxy handshakes that resumed (`STORM_CLIENT_RESUME=on`).
    client_resumed: usize,
    open_undelivered: usize,
    closed_by_proxy: usize,
    sink_errors: BTreeMap<String, usize>,
    sink_hs: (f64, f64, f64),
    sink_resumed: usize,
    /// First messages under another CN than their link's agent's, and of them resumed
    /// (`None`: not checked).
    wrong_identity: Option<(usize, usize)>,
    /// This host's TcpExt ListenOverflows and TCPSynRetrans during the storm.
    tcp: (u64, u64),
    gh_failures: BTreeMap<String, usize>,
    /// Gatehouse's upstream handshakes (full, resumed), from its metrics.
    gh_handshakes: Option<(u64, u64)>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.delivered as f64 / self.secs
    }

    fn sink_cpu_ms(&self) -> f64 {
        self.sink_cpu * 1e3 / self.delivered.max(1) as f64
    }

    /// The proxy, with the sink's resumption and the round when a run has several.
    fn label(&self, set: &Settings) -> String {
        if set.rounds == 1 && set.resume.len() == 1 {
            return self.proxy.into();
        }
        format!(
            "{} resume {} r{}",
            self.proxy,
            on_off(self.resume),
            self.round
        )
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
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

/// Gatehouse's `gatehouse_cluster_upstream_handshakes_total` (full, resumed) from its metrics
/// endpoint; `None` when it does not answer.
async fn upstream_handshakes(port: u16) -> Option<(u64, u64)> {
    let get = async {
        let mut s = TcpStream::connect(addr(port)).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = Vec::new();
        s.read_to_end(&mut body).await.ok()?;
        Some(String::from_utf8_lossy(&body).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(3), get)
        .await
        .ok()??;
    if !text.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut out = (0, 0);
    for l in text
        .lines()
        .filter(|l| l.starts_with("gatehouse_cluster_upstream_handshakes_total{"))
    {
        let v: u64 = l.rsplit(' ').next().and_then(|v| v.parse().ok())?;
        if l.contains(r#"session="resumed""#) {
            out.1 += v;
        } else {
            out.0 += v;
        }
    }
    Some(out)
}

/// One proxy with its sink, run for `set.rounds` rounds.
struct Storm<'a> {
    proxy: &'static str,
    keys: &'static str,
    resume: bool,
    set: &'a Settings,
    pid: u32,
    target: SocketAddr,
    sni: &'static str,
    metrics_port: u16,
    log: PathBuf,
    sink: StormSink,
    expect: Expect,
    agents: Arc<Agents>,
}

/// Counters read at a round's start and end.
struct Marks {
    cpu: f64,
    sink_cpu: f64,
    tcp: (u64, u64),
    gh_handshakes: Option<(u64, u64)>,
    gh_failures: BTreeMap<String, usize>,
}

impl Marks {
    async fn read(s: &Storm<'_>) -> Marks {
        let (cpu, sink_cpu, tcp) = (cpu_secs(s.pid), sink_cpu_secs(), tcp_counters());
        let gh = s.proxy == "gatehouse";
        Marks {
            cpu,
            sink_cpu,
            tcp,
            gh_handshakes: if gh {
                upstream_handshakes(s.metrics_port).await
            } else {
                None
            },
            gh_failures: if gh {
                gatehouse_failures(&s.log)
            } else {
                BTreeMap::new()
            },
        }
    }
}

/// Starts the sink and `proxy`, then runs the rounds: after each but the last, every client
/// link is closed and the sink sees every upstream link end before the next starts.
#[allow(clippy::too_many_arguments)]
async fn storm(
    proxy: &'static str,
    k: &Keys,
    run: &Path,
    sink_rt: &tokio::runtime::Runtime,
    sink_acc: SslAcceptor,
    agents: Arc<Agents>,
    set: &Settings,
    resume: bool,
) -> Vec<Row> {
    let backlog = env_num("STORM_SINK_BACKLOG", 4096.0) as u32;
    let expect = match (proxy, set.distinct) {
        ("gatehouse", true) => Expect::PerLink,
        ("gatehouse", false) => Expect::Agent1,
        _ => Expect::Any,
    };
    let links = set.links;
    let sink = sink_rt
        .spawn(async move { StormSink::start(sink_acc, links, backlog, expect).await })
        .await
        .unwrap();
    let (port, metrics_port) = (free_port(), free_port());
    let log = run.join(format!("{proxy}.log"));
    let gh = GhOpts {
        metrics_port,
        client_resume: set.client_resume,
    };
    let mut cmd = proxy_cmd(proxy, k, run, port, sink.addr, &gh);
    let p = spawn(proxy, &mut cmd, &log, port);
    // The proxy idles a moment after it listens, so that its start-up is not the storm's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = Storm {
        proxy,
        keys: k.name,
        resume,
        set,
        pid: p.child.id(),
        target: addr(port),
        sni: if proxy == "gatehouse" {
            "storm"
        } else {
            "localhost"
        },
        metrics_port,
        log,
        sink,
        expect,
        agents,
    };
    let mut rows = Vec::new();
    for n in 1..=set.rounds {
        if n > 1 {
            all_closed(&s.sink).await;
        }
        let r = round(&s, n).await;
        eprintln!(
            "  round {n}: {} of {} delivered, {:.0} links/s, sink resumed {}, sink CPU {:.2} ms/link",
            r.delivered,
            r.links,
            r.rate(),
            r.sink_resumed,
            r.sink_cpu_ms()
        );
        rows.push(r);
    }
    drop(p);
    rows
}

/// Between rounds: the last round's links were dropped at the client; waits until the proxy
/// closed its upstream links and the sink saw every one end.
async fn all_closed(sink: &StormSink) {
    let open = sink.open.clone();
    if !common::holds_within(Duration::from_secs(15), || {
        open.load(Ordering::Relaxed) == 0
    })
    .await
    {
        eprintln!(
            "  {} sink connections still open 15 s after the clients closed theirs",
            open.load(Ordering::Relaxed)
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// One round: every link opened at once, first messages counted at the sink, the links left
/// closed (dropped) at the end.
async fn round(s: &Storm<'_>, round: usize) -> Row {
    let set = s.set;
    let m0 = Marks::read(s).await;
    let st = s.sink.reset(s.expect);
    let tcp0 = tcp_counters();
    let (open, client_errors, client_resumed) =
        open_links_at_once(&s.agents, s.target, s.sni, set.links, set.parallel).await;
    let all = open.len();
    common::holds_within(set.wait, || st.delivered.load(Ordering::Relaxed) >= all).await;
    let m1 = Marks::read(s).await;
    let delivered = st.delivered.load(Ordering::Relaxed);
    let secs = st.last_ns.load(Ordering::Relaxed) as f64 / 1e9;
    let (open_undelivered, closed_by_proxy) = closed_or_undelivered(open, &st).await;
    let mut hs = st.handshake_ms.lock().unwrap().clone();
    let sink_errors = st.accept_errors.lock().unwrap().clone();
    let load = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    Row {
        proxy: s.proxy,
        keys: s.keys,
        resume: s.resume,
        round,
        links: set.links,
        delivered,
        secs,
        cpu: m1.cpu - m0.cpu,
        sink_cpu: m1.sink_cpu - m0.sink_cpu,
        client_errors,
        client_resumed,
        open_undelivered,
        closed_by_proxy,
        sink_errors,
        sink_hs: (pct(&mut hs, 0.5), pct(&mut hs, 0.99), pct(&mut hs, 1.0)),
        sink_resumed: load(&st.resumed),
        wrong_identity: (s.expect != Expect::Any)
            .then(|| (load(&st.wrong_identity), load(&st.wrong_identity_resumed))),
        tcp: (m1.tcp.0 - tcp0.0, m1.tcp.1 - tcp0.1),
        gh_failures: minus(&m1.gh_failures, &m0.gh_failures),
        gh_handshakes: m0
            .gh_handshakes
            .zip(m1.gh_handshakes)
            .map(|(a, b)| (b.0 - a.0, b.1 - a.1)),
    }
}

/// `after` less `before`, counts that did not change left out.
fn minus(
    after: &BTreeMap<String, usize>,
    before: &BTreeMap<String, usize>,
) -> BTreeMap<String, usize> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0).min(*v)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Opens `links` links to `target`, at most `parallel` handshakes in flight: the links that
/// opened, by number, the errors of the others, grouped, and how many handshakes resumed.
async fn open_links_at_once(
    agents: &Arc<Agents>,
    target: SocketAddr,
    sni: &'static str,
    links: usize,
    parallel: usize,
) -> (Vec<(usize, Tls)>, BTreeMap<String, usize>, usize) {
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(links);
    for n in 0..links {
        let (a, gate) = (agents.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok();
            match tokio::time::timeout(Duration::from_secs(60), link(&a, target, sni, n)).await {
                Ok(r) => r,
                Err(_) => Err("client: no link within 60 s".into()),
            }
        }));
    }
    let mut open = Vec::with_capacity(links);
    let mut client_errors = BTreeMap::new();
    let mut resumed = 0;
    for (n, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok((s, r)) => {
                resumed += usize::from(r);
                open.push((n, s));
            }
            Err(e) => *client_errors.entry(e).or_default() += 1,
        }
    }
    (open, client_errors, resumed)
}

/// Links the client still holds: did the proxy close them, or leave them open with nothing
/// delivered upstream? (open and undelivered, closed by the proxy). The links are dropped
/// (closed) on return. The read also takes in the proxy's session tickets, if any.
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
        "storm: {} links, {} at a time, keys {:?}, upstream identity {}, agent identities {}, {} round(s), sink resumption {}, client resumption {}, proxies {:?}, Gatehouse connect_timeout {}",
        set.links,
        set.parallel,
        set.keys.iter().map(|k| k.0).collect::<Vec<_>>(),
        if set.upstream_ec { "p256" } else { "same as the agents'" },
        if set.distinct { "distinct" } else { "one (agent1)" },
        set.rounds,
        set.resume.iter().map(|r| on_off(*r)).collect::<Vec<_>>().join(" then "),
        on_off(set.client_resume),
        set.proxies,
        std::env::var("STORM_CONNECT_TIMEOUT").unwrap_or_else(|_| "default (2s)".into())
    );
    let rows = run_storms(&set, root.path());
    print_rows(&set, &rows);
    print_sessions(&set, &rows);
    print_r2(&set, &rows);
    print_r2b(&set, &rows);
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
    /// The sink's session resumption, one storm per entry (`STORM_RESUME=both`: off, on).
    resume: Vec<bool>,
    upstream_ec: bool,
    proxies: Vec<&'static str>,
    /// `STORM_IDENTITIES=distinct`: link i is agent i.
    distinct: bool,
    rounds: usize,
    client_resume: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let is = |name: &str, v: &str| std::env::var(name).is_ok_and(|x| x == v);
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
            resume: match std::env::var("STORM_RESUME").as_deref() {
                Ok("on") => vec![true],
                Ok("both") => vec![false, true],
                _ => vec![false],
            },
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
            distinct: is("STORM_IDENTITIES", "distinct"),
            rounds: (env_num("STORM_ROUNDS", 1.0) as usize).max(1),
            client_resume: is("STORM_CLIENT_RESUME", "on"),
        }
    }
}

/// One storm per key type, proxy and sink resumption setting, each in a folder of its own
/// under `root`.
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
        let agents = if set.distinct { set.links } else { 0 };
        let (k, server, ca) = make_keys(root, name, rsa, set.upstream_ec, agents);
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(root)
            .status();
        for proxy in &set.proxies {
            for resume in set.resume.iter().copied() {
                let run = match set.resume.len() {
                    1 => root.join(format!("{name}-{proxy}")),
                    _ => root.join(format!("{name}-{proxy}-resume-{}", on_off(resume))),
                };
                std::fs::create_dir_all(&run).unwrap();
                let _ = Command::new("chmod").args(["a+rwx"]).arg(&run).status();
                eprintln!("{name} {proxy}, sink resumption {} ...", on_off(resume));
                // Fresh agents per storm: no session of one proxy is offered to another.
                let agents = Arc::new(Agents::new(&k, set.links, set.client_resume));
                rows.extend(client_rt.block_on(storm(
                    proxy,
                    &k,
                    &run,
                    &sink_rt,
                    sink_acceptor(&server, ca.cert(), resume),
                    agents,
                    set,
                    resume,
                )));
                // Lets the previous storm's connections wind down before the next one starts.
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    rows
}

fn print_rows(set: &Settings, rows: &[Row]) {
    println!(
        "\n## Reconnect storm ({} links, {} handshakes at a time; mTLS both sides; first messages counted at the sink; upstream certificate {}; sink session resumption {}; agent identities {}; client → proxy resumption {})",
        set.links,
        set.parallel,
        if set.upstream_ec { "EC P-256" } else { "the agents' key type" },
        match set.resume[..] {
            [true] => "on",
            [false] => "off: every upstream handshake is a full one",
            _ => "off, then on",
        },
        if set.distinct { "distinct (agent{i} on link i)" } else { "one (agent1)" },
        if set.client_resume { "on" } else { "off: every downstream handshake is a full one" },
    );
    println!("| keys | proxy | links/s | delivered | failed at client | open, nothing upstream | closed by proxy | proxy CPU s | CPU ms/link | sink handshake p50/p99/max ms | listen overflows / SYN retransmits |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {}/{} | {} | {} | {} | {:.1} | {:.1} | {:.0}/{:.0}/{:.0} | {}/{} |",
            r.keys,
            r.label(set),
            r.rate(),
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
            r.label(set),
            grouped(&r.client_errors),
            r.sink_resumed,
            grouped(&r.sink_errors),
            grouped(&r.gh_failures)
        );
    }
}

/// Sessions and the master's side: the sink's CPU per link, resumed handshakes on each hop,
/// and whether any first message came under another agent's identity.
fn print_sessions(set: &Settings, rows: &[Row]) {
    println!("\n| keys | proxy | sink CPU ms/link | sink handshakes resumed | Gatehouse upstream handshakes full/resumed | first messages under another identity (resumed) | client → proxy handshakes resumed |");
    println!("|---|---|---:|---:|---|---|---:|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {} | {} | {} | {} |",
            r.keys,
            r.label(set),
            r.sink_cpu_ms(),
            r.sink_resumed,
            r.gh_handshakes
                .map_or("-".into(), |(f, s)| format!("{f}/{s}")),
            r.wrong_identity
                .map_or("not checked".into(), |(w, s)| format!("{w} ({s})")),
            if set.client_resume {
                r.client_resumed.to_string()
            } else {
                "off".into()
            }
        );
    }
}

fn print_r2(set: &Settings, rows: &[Row]) {
    println!("\n## Target R2 (≥ 1.2× the better of HAProxy/nginx links/s, every first message delivered)");
    // A storm after a restart: the first round, under the first resumption setting.
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| r.round == 1 && r.resume == set.resume[0])
        .collect();
    let keyset: Vec<&str> = {
        let mut v: Vec<&str> = rows.iter().map(|r| r.keys).collect();
        v.dedup();
        v
    };
    for keys in keyset {
        let of = |p: &str| {
            rows.iter()
                .copied()
                .find(|r| r.keys == keys && r.proxy == p)
        };
        let best = ["haproxy", "nginx"]
            .iter()
            .filter_map(|p| of(p).map(Row::rate))
            .fold(0.0, f64::max);
        if best == 0.0 {
            println!("- {keys}: not measured (no HAProxy or nginx storm in this run)");
            continue;
        }
        if let Some(g) = of("gatehouse") {
            let ratio = g.rate() / best;
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

/// R2b: round 2 (the master kept running, each agent resuming its own session) against
/// Gatehouse's links/s without resumption (the `STORM_RESUME=off` storm's same round, else
/// round 1 of this one), and round 1 (a restart: nothing to resume) against the
/// `STORM_RESUME=off` storm's round 1.
fn print_r2b(set: &Settings, rows: &[Row]) {
    if set.rounds < 2 || !set.resume.contains(&true) {
        return;
    }
    println!("\n## Target R2b (RSA-4096, upstream identity the agent's, distinct agents: a storm against a running master ≥ 2× Gatehouse's links/s without resumption, every first message delivered, the master's handshake CPU per link falling; client → proxy resumption {})", on_off(set.client_resume));
    let r2b_setting = !set.upstream_ec && set.distinct;
    for keys in set.keys.iter().map(|k| k.0) {
        let of = |resume: bool, round: usize| {
            rows.iter().find(|r| {
                r.keys == keys && r.proxy == "gatehouse" && r.resume == resume && r.round == round
            })
        };
        let (Some(on1), Some(on2)) = (of(true, 1), of(true, 2)) else {
            continue;
        };
        let (base, base_name) = match of(false, 2) {
            Some(b) => (b, "resumption off, round 2"),
            None => (on1, "round 1"),
        };
        let ratio = on2.rate() / base.rate();
        let ok = ratio >= 2.0
            && on2.delivered == on2.links
            && on2.open_undelivered == 0
            && on2.sink_cpu_ms() < base.sink_cpu_ms();
        let verdict = match (keys == "rsa4096" && r2b_setting, ok) {
            (false, _) => "not R2b's setting (needs STORM_KEYS=rsa4096 STORM_UPSTREAM_KEY=same STORM_IDENTITIES=distinct)",
            (true, true) => "holds",
            (true, false) => "MISSED",
        };
        println!(
            "- {keys}, master kept running: round 2 {:.0} links/s = {ratio:.2}× {:.0} ({base_name}), {}/{} delivered, {} open without upstream, sink resumed {}, master's CPU {:.2} → {:.2} ms/link → {verdict}",
            on2.rate(), base.rate(), on2.delivered, on2.links, on2.open_undelivered, on2.sink_resumed,
            base.sink_cpu_ms(), on2.sink_cpu_ms(),
        );
        print_restart(keys, on1, of(false, 1));
    }
}

/// A round after a restart (round 1, sessions on but none to resume) against the storm without
/// resumption: not slower, within this box's run-to-run noise (≥ 0.9×).
fn print_restart(keys: &str, on1: &Row, off1: Option<&Row>) {
    let Some(off1) = off1 else {
        println!("- {keys}, after a restart: not measured (needs STORM_RESUME=both)");
        return;
    };
    let ratio = on1.rate() / off1.rate();
    let ok = ratio >= 0.9 && on1.delivered == on1.links;
    println!(
        "- {keys}, after a restart (round 1, nothing to resume): {:.0} links/s = {ratio:.2}× {:.0} without resumption (≥ 0.9× counts as not slower), {}/{} delivered → {}",
        on1.rate(),
        off1.rate(),
        on1.delivered,
        on1.links,
        if ok { "holds" } else { "MISSED" }
    );
}
