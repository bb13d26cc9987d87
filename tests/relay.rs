//! The one-port relay end to end: a raw TLS client speaking netstrings to Gatehouse, and an
//! in-process netstring TLS "master" that requires client certificates.

mod common;

use boring::ssl::SslAcceptor;
use bytes::BytesMut;
use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::audit::AuditEvent;
use gatehouse::cluster::codec;
use gatehouse::pki::{self, CertSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

const HELLO: &str =
    r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}"#;
const HEARTBEAT: &str = r#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#;
const CONFIG_UPDATE: &str = r#"{"jsonrpc":"2.0","method":"config::Update","params":{"checksums":{},"update":{},"update_v2":{}}}"#;

fn check_result() -> String {
    let output = "x".repeat(400);
    format!(
        r#"{{"jsonrpc":"2.0","method":"event::CheckResult","params":{{"host":"agent1-host","cr":{{"output":"{output}","state":0.0,"exit_status":0.0}}}},"ts":1795320932.5}}"#
    )
}

fn ns(s: &str) -> Vec<u8> {
    codec::encode(s.as_bytes())
}

/// The Icinga-side PKI and an edge listener config around a sink.
struct Icinga {
    icinga: Pki,
    edge_pki: Pki,
}

impl Icinga {
    fn new(dir: &Path) -> Icinga {
        let icinga = Pki::new(dir, "icinga");
        icinga.server("master1", &["master1"]);
        icinga.issue("agent1", CertSpec::new("agent1").dns(&["agent1"]));
        icinga.issue("agent2", CertSpec::new("agent2").dns(&["agent2"]));
        icinga.issue("edge", CertSpec::new("gatehouse-edge"));
        // cert_dir: a key minted for the edge with CN=agent1 (the agent's own key stays home).
        let ids = dir.join("identities");
        std::fs::create_dir_all(&ids).unwrap();
        for agent in ["agent1", "agent2"] {
            let id = icinga.ca.issue(&CertSpec::new(agent)).unwrap();
            id.write(&ids, agent).unwrap();
        }
        let edge_pki = Pki::new(dir, "web");
        edge_pki.server("server", &[]);
        Icinga { icinga, edge_pki }
    }

    fn master_acceptor(&self) -> SslAcceptor {
        let m = self
            .icinga
            .ca
            .issue(&CertSpec::new("master1").dns(&["master1"]))
            .unwrap();
        icinga_acceptor(&m, self.icinga.ca.cert())
    }

    /// Config: listener `cluster` on `port` (http + cluster), cluster → `sink`, HTTP → `web`.
    fn conf(&self, dir: &Path, port: u16, sink: SocketAddr, web: SocketAddr) -> Conf {
        let (cert, key) = self.edge_pki.paths("server");
        let tls = ListenerTls::new(cert, key)
            .sni_cert(&["master1"], self.icinga.paths("master1"))
            .client_auth(ClientAuth::Optional)
            .client_ca(self.icinga.ca_path());
        // anonymous_max_per_ip above anonymous_max_clients: every test client comes from
        // 127.0.0.1, and the per-IP cap (default 2) would otherwise refuse the third link first.
        let limits = Limits::default()
            .anonymous_max_clients(2)
            .anonymous_max_per_ip(3)
            .anonymous_message_size("2KiB")
            .idle_timeout("3s")
            .anonymous_idle_timeout("1s");
        Conf::new()
            .listener(
                Listener::new("cluster", port)
                    .protocols(&[Protocol::Http, Protocol::Cluster])
                    .first_byte_timeout("1s")
                    .tls(tls),
            )
            .upstream(
                "icinga-master1",
                Group::new(sink).tls(UpstreamTls::mutual("master1", &self.icinga, "edge")),
            )
            .upstream("web", Group::new(web))
            .route(Route::new("web", "web"))
            .cluster(
                Cluster::new("master1", "icinga-master1")
                    .cert_dir(dir.join("identities"))
                    .missing("reject")
                    .max_violations(3)
                    .limits(limits),
            )
            .metrics(reserved_port())
    }

    fn agent(&self, who: Option<&str>) -> ClientOpts {
        ClientOpts {
            ca: Some(self.icinga.ca_path()),
            cert: who.map(|w| self.icinga.paths(w)),
            sni: Some("master1".into()),
            tls12: false,
        }
    }
}

/// A Gatehouse with listener `cluster` (http + cluster) in front of a sink and a web origin.
struct Fixture {
    c: Icinga,
    sink: Sink,
    web: Upstream,
    gh: Gatehouse,
    port: u16,
    tmp: tempfile::TempDir,
}

impl Fixture {
    async fn start(mode: SinkMode) -> Fixture {
        Fixture::start_with(mode, |_| {}).await
    }

    /// As [`Fixture::start`], with the config edited first.
    async fn start_with(mode: SinkMode, edit: impl FnOnce(&mut Conf)) -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let c = Icinga::new(tmp.path());
        let sink = Sink::start(c.master_acceptor(), mode).await;
        let web = Upstream::h1(None, Behavior::Echo).await;
        let port = reserved_port();
        let mut conf = c.conf(tmp.path(), port, sink.addr, web.addr);
        edit(&mut conf);
        let gh = Gatehouse::start(tmp.path(), &conf);
        Fixture {
            c,
            sink,
            web,
            gh,
            port,
            tmp,
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Everything the server sends until it closes the connection (as text, for readable
/// failures); `None` if it is still open after `t`.
async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S, t: Duration) -> Option<String> {
    let mut out = Vec::new();
    let mut b = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + t;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(Ok(n)) => out.extend_from_slice(&b[..n]),
            Err(_) => return None,
        }
    }
}

/// Frames as text, for readable failures.
fn texts(frames: &[Vec<u8>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// A master (client certificate required) that answers the n-th message it receives on a
/// connection with `replies[n]`, sent as given; messages beyond the list get no answer.
struct ReplyingMaster {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ReplyingMaster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ReplyingMaster {
    async fn start(acc: SslAcceptor, replies: Vec<Vec<u8>>) -> ReplyingMaster {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (acc, replies) = (Arc::new(acc), Arc::new(replies));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (acc, replies) = (acc.clone(), replies.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = tokio_boring::accept(&acc, tcp).await else {
                        return;
                    };
                    let mut buf = BytesMut::new();
                    let mut n = 0;
                    loop {
                        while let Ok(Some(_)) = codec::decode(&mut buf, 1 << 20) {
                            if let Some(r) = replies.get(n) {
                                if s.write_all(r).await.is_err() || s.flush().await.is_err() {
                                    return;
                                }
                            }
                            n += 1;
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        ReplyingMaster { addr, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_both_ways_byte_exact_with_identity_and_policy() {
    let f = Fixture::start(SinkMode::Echo).await;
    let (c, sink, web, gh, port) = (&f.c, &f.sink, &f.web, &f.gh, f.port);

    // The client checks that the edge answers as master1 (SNI cert) — Icinga requires it.
    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    let cr = check_result();
    let mut burst = ns(HELLO);
    burst.extend(ns(HEARTBEAT));
    burst.extend(ns(CONFIG_UPDATE)); // denied: a child may not push config up
    burst.extend(ns(&cr));
    s.write_all(&burst).await.unwrap();
    // One more frame, one byte per write.
    for b in ns(HEARTBEAT) {
        s.write_all(&[b]).await.unwrap();
        s.flush().await.unwrap();
    }
    let expected = vec![ns(HELLO), ns(HEARTBEAT), ns(&cr), ns(HEARTBEAT)];
    let (echoed, _) = read_frames(&mut s, 4, Duration::from_secs(5)).await;
    assert_eq!(
        sink.frames(),
        expected,
        "master must receive exactly the allowed frames, byte for byte"
    );
    assert_eq!(echoed, expected, "the way back is byte-exact too");
    // The master saw the agent's identity (from cert_dir), not the edge's.
    assert_eq!(
        sink.client_cns.lock().unwrap().clone(),
        vec![Some("agent1".to_string())]
    );

    // HTTP on the same port is still proxied.
    let r = request(
        addr(port),
        Some(&c.agent(None)),
        "GET",
        "/v1/status",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(web.seen().len(), 1);

    let m = gh.metrics_text().await;
    for needle in [
        r#"gatehouse_cluster_messages_total{direction="upstream",method="event::CheckResult",verdict="forwarded"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="upstream",method="config::Update",verdict="denied"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="downstream",method="event::Heartbeat",verdict="forwarded"} 2"#,
        r#"gatehouse_cluster_links_active{kind="authenticated"} 1"#,
        r#"gatehouse_connections_total{listener="cluster",protocol="cluster"} 1"#,
        r#"gatehouse_connections_total{listener="cluster",protocol="http"} 1"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
    let line = gh.wait_log("denied config::Update");
    assert!(
        line.contains("agent1@") && line.contains("cluster.policy[1]"),
        "{line}"
    );

    // Violations beyond max_violations (3) close the link.
    let mut bad = Vec::new();
    for _ in 0..3 {
        bad.extend(ns(CONFIG_UPDATE));
    }
    s.write_all(&bad).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "link must close after 3 violations"
    );
    gh.wait_log("policy violations");
}

/// A link that comes back (an agent after a network blip, a replaced link) resumes the TLS
/// session the master gave its identity: the master skips the certificate checks and the
/// signature, and still sees that identity. A session is never offered for another identity:
/// the master would take it as the first one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_identity_resumes_its_upstream_session_and_no_other_does() {
    let f = Fixture::start(SinkMode::Echo).await;
    for cn in ["agent1", "agent1", "agent2", "agent2", "agent1"] {
        let mut s = tls_connect(addr(f.port), &f.c.agent(Some(cn)))
            .await
            .unwrap();
        s.write_all(&ns(HELLO)).await.unwrap();
        // The echo is read after the master's session ticket, so the session is kept.
        let (echoed, _) = read_frames(&mut s, 1, Duration::from_secs(5)).await;
        assert_eq!(echoed, vec![ns(HELLO)], "{cn}");
    }
    let cns: Vec<Option<String>> = f.sink.client_cns.lock().unwrap().clone();
    let want = ["agent1", "agent1", "agent2", "agent2", "agent1"].map(|c| Some(c.to_string()));
    assert_eq!(
        cns, want,
        "each link under its own identity, resumed or not"
    );
    let resumed = f.sink.resumed.lock().unwrap().clone();
    assert_eq!(resumed, [false, true, false, true, true]);
    let m = f.gh.metrics_text().await;
    for needle in [
        r#"gatehouse_cluster_upstream_handshakes_total{session="full",upstream="icinga-master1"} 2"#,
        r#"gatehouse_cluster_upstream_handshakes_total{session="resumed",upstream="icinga-master1"} 3"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
}

/// Whether every thread of `pid` has a tracer.
fn all_traced(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("status")).is_ok_and(|st| {
            st.lines()
                .any(|l| l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0"))
        })
    })
}

/// `strace -c` attached to every thread of a running Gatehouse, counting some system calls.
struct Strace {
    child: std::process::Child,
    out: std::path::PathBuf,
    calls: &'static [&'static str],
}

impl Strace {
    fn attach(pid: u32, calls: &'static [&'static str], out: std::path::PathBuf) -> Strace {
        let child = std::process::Command::new("strace")
            .args([
                "-f",
                "-c",
                "-e",
                &format!("trace={}", calls.join(",")),
                "-o",
            ])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .spawn()
            .unwrap();
        wait_until(
            "strace to attach to every thread",
            Duration::from_secs(5),
            || all_traced(pid),
        );
        Strace { child, out, calls }
    }

    /// Detaches and returns how many of the calls were made.
    fn stop(mut self) -> u64 {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        self.child.wait().unwrap();
        let text = std::fs::read_to_string(&self.out).unwrap();
        text.lines()
            .filter(|l| {
                l.split_whitespace()
                    .last()
                    .is_some_and(|c| self.calls.contains(&c))
            })
            .filter_map(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            .sum()
    }
}

/// An agent's link through a fresh Gatehouse (its cluster listener's `read_buffer` set when
/// given) to a counting master, Hello relayed: what the strace tests measure on.
struct TracedLink {
    f: Fixture,
    s: tokio_boring::SslStream<tokio::net::TcpStream>,
}

impl TracedLink {
    async fn start(read_buffer: Option<&'static str>) -> TracedLink {
        let f = Fixture::start_with(SinkMode::Count, |conf| {
            if let Some(rb) = read_buffer {
                conf.listener_mut("cluster").read_buffer = Some(rb.into());
            }
        })
        .await;
        let mut s = tls_connect(addr(f.port), &f.c.agent(Some("agent1")))
            .await
            .unwrap();
        s.write_all(&ns(HELLO)).await.unwrap();
        let l = TracedLink { f, s };
        l.wait_for(1);
        l
    }

    fn trace(&self, calls: &'static [&'static str]) -> Strace {
        Strace::attach(self.f.gh.pid(), calls, self.f.tmp.path().join("strace.txt"))
    }

    /// Waits until the master has counted `n` messages (the Hello included).
    fn wait_for(&self, n: u64) {
        wait_until(
            "every message to reach the master",
            Duration::from_secs(30),
            || self.f.sink.count.load(std::sync::atomic::Ordering::Relaxed) >= n,
        );
    }
}

/// `read_buffer`: the edge reads several TLS records per `recvfrom` while a link is busy
/// (64 KiB, the default), where 1 KiB leaves it at about two per record (header, then body).
/// Counted with strace on the edge while 300 records of ~16 KiB cross one link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_buffer_sets_how_many_records_one_read_takes() {
    if !require_binary("strace") {
        return;
    }
    let per_record = |rb: Option<&'static str>| async move {
        let mut l = TracedLink::start(rb).await;
        let strace = l.trace(&["recvfrom", "read"]);
        let frame = ns(&check_result());
        let batch: Vec<u8> = frame.repeat(16 * 1024 / frame.len());
        for _ in 0..300 {
            l.s.write_all(&batch).await.unwrap();
        }
        l.s.flush().await.unwrap();
        l.wait_for(1 + 300 * (batch.len() / frame.len()) as u64);
        strace.stop() as f64 / 300.0
    };
    let small = per_record(Some("1KiB")).await;
    let default = per_record(None).await;
    eprintln!("reads per record: read_buffer 1KiB {small:.2}, default (64KiB) {default:.2}");
    assert!(small >= 1.5, "1 KiB: {small:.2} reads per record");
    assert!(
        default <= 0.8,
        "64 KiB: {default:.2} reads per record (1 KiB: {small:.2})"
    );
}

/// A peer that writes each message as a TLS record of its own: what the read-ahead took in
/// one system call is read out before the write toward the master, so a burst of 3,000
/// one-message records costs far fewer writes than records (one each before). Counted with
/// strace on the edge (which also slows it, so records queue as they do under load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_records_go_on_in_batches() {
    if !require_binary("strace") {
        return;
    }
    let mut l = TracedLink::start(None).await;
    let strace = l.trace(&["sendto", "write", "writev", "sendmsg"]);
    let frame = ns(&check_result());
    for _ in 0..3000 {
        l.s.write_all(&frame).await.unwrap();
    }
    l.s.flush().await.unwrap();
    l.wait_for(3001);
    let per_record = strace.stop() as f64 / 3000.0;
    eprintln!("writes per one-message record: {per_record:.2}");
    assert!(
        per_record <= 0.5,
        "{per_record:.2} writes per one-message record"
    );
}

/// Anonymous links: the policy's anonymous rule, `pki::RequestCertificate` carrying the
/// client's certificate, `anonymous_max_clients` (2, below `anonymous_max_per_ip` 3: the third
/// link is refused for the total, counted under that reason), `anonymous_message_size`,
/// `anonymous_idle_timeout`, and malformed JSON closing an anonymous link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_links_are_limited() {
    let f = Fixture::start(SinkMode::Echo).await;
    let (c, sink, gh, port) = (&f.c, &f.sink, &f.gh, f.port);

    // An enrolling agent: self-signed cert, so anonymous.
    let selfsigned = pki::self_signed(&CertSpec::new("agent2")).unwrap();
    selfsigned.write(f.tmp.path(), "agent2-self").unwrap();
    let mut anon = c.agent(None);
    anon.cert = Some((
        f.tmp.path().join("agent2-self.crt"),
        f.tmp.path().join("agent2-self.key"),
    ));

    // Allowed methods pass; others are dropped (policy: anonymous may only hello/heartbeat/pki).
    let mut a = tls_connect(addr(port), &anon).await.unwrap();
    let mut burst = ns(HELLO);
    burst.extend(ns(&check_result()));
    burst.extend(ns(HEARTBEAT));
    a.write_all(&burst).await.unwrap();
    let (echoed, _) = read_frames(&mut a, 2, Duration::from_secs(5)).await;
    assert_eq!(echoed, vec![ns(HELLO), ns(HEARTBEAT)]);
    // Anonymous clients go upstream anonymous: a self-signed certificate, never the edge's
    // own (Icinga 2.15 and later drop a verified certificate without an Endpoint).
    assert_eq!(
        sink.client_cns.lock().unwrap().clone(),
        vec![Some(gatehouse::cluster::relay::ANONYMOUS_CN.to_string())]
    );
    cert_request_carries_the_clients_certificate(&mut a, &selfsigned.cert_pem()).await;
    let mut b2 = the_third_anonymous_link_is_refused(&f, &anon, &mut a).await;

    // Size: over anonymous_message_size (2KiB) closes an anonymous link.
    let big = format!(
        r#"{{"method":"event::Heartbeat","params":{{"pad":"{}"}}}}"#,
        "y".repeat(3000)
    );
    a.write_all(&ns(&big)).await.unwrap();
    assert!(
        closed_within(&mut a, Duration::from_secs(3)).await,
        "oversize must close"
    );
    gh.wait_log("exceeds the limit of 2048 bytes");

    // Idle: an anonymous link that stays silent is closed after anonymous_idle_timeout (1s).
    let t0 = std::time::Instant::now();
    assert!(
        closed_within(&mut b2, Duration::from_secs(5)).await,
        "idle anonymous link must close"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        t0.elapsed()
    );
    gh.wait_log("for 1s"); // either side: the echo reset both timers together

    // Malformed JSON on an anonymous link closes it.
    let mut m = tls_connect(addr(port), &anon).await.unwrap();
    m.write_all(&ns("{not json")).await.unwrap();
    assert!(closed_within(&mut m, Duration::from_secs(3)).await);
    gh.wait_log("malformed message from the anonymous client");
}

type Link = tokio_boring::SslStream<tokio::net::TcpStream>;

/// pki::RequestCertificate on anonymous link `a` carries the client's own certificate (`pem`)
/// to the master.
async fn cert_request_carries_the_clients_certificate(a: &mut Link, pem: &[u8]) {
    a.write_all(&ns(
        r#"{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{"ticket":"t1"},"id":"1"}"#,
    ))
    .await
    .unwrap();
    let (got, _) = read_frames(a, 1, Duration::from_secs(5)).await;
    let mut b = BytesMut::from(&got[0][..]);
    let v: serde_json::Value =
        serde_json::from_slice(codec::decode(&mut b, 1 << 20).unwrap().unwrap().payload()).unwrap();
    assert_eq!(v["params"]["ticket"], "t1");
    assert_eq!(
        v["params"]["cert_request"].as_str().unwrap().as_bytes(),
        pem,
        "the master must judge the agent's certificate, not the edge's"
    );
}

/// Cap: two anonymous links at once (`a` and a second one, returned); the third is refused
/// (by the total cap, not the per-IP one: 3 here), the first two live on.
async fn the_third_anonymous_link_is_refused(f: &Fixture, anon: &ClientOpts, a: &mut Link) -> Link {
    let (sink, gh, port) = (&f.sink, &f.gh, f.port);
    let mut b2 = tls_connect(addr(port), anon).await.unwrap();
    b2.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        read_frames(&mut b2, 1, Duration::from_secs(5))
            .await
            .0
            .len(),
        1
    );
    let mut third = tls_connect(addr(port), anon).await.unwrap();
    third.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        read_until_closed(&mut third, Duration::from_secs(3)).await,
        Some(String::new()),
        "third anonymous link must be refused, its Hello never relayed"
    );
    let line = gh.wait_log("refusing anonymous@127.0.0.1");
    assert!(
        line.contains("refusing anonymous@127.0.0.1") && line.contains(": 2 anonymous links open"),
        "{line}"
    );
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_cluster_links_refused_total{reason="anonymous_max_clients"} 1"#)
            && m.contains(
                r#"gatehouse_cluster_links_refused_total{reason="anonymous_max_per_ip"} 0"#
            ),
        "{m}"
    );
    assert_eq!(
        sink.client_cns.lock().unwrap().len(),
        2,
        "no upstream connection for the refused link"
    );
    a.write_all(&ns(HEARTBEAT)).await.unwrap();
    assert_eq!(
        read_frames(a, 1, Duration::from_secs(5)).await.0.len(),
        1,
        "first link unaffected"
    );
    b2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_links_forgive_bad_json_up_to_max_violations_but_not_bad_frames_and_idle() {
    let f = Fixture::start(SinkMode::Echo).await;
    let (c, gh, port) = (&f.c, &f.gh, f.port);

    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    // A link is relayed once its first message is whole and well-formed.
    let mut burst = ns(HEARTBEAT);
    burst.extend(ns("{broken"));
    burst.extend(ns("[1,2,3]"));
    burst.extend(ns(HEARTBEAT));
    s.write_all(&burst).await.unwrap();
    let (got, closed) = read_frames(&mut s, 2, Duration::from_secs(5)).await;
    assert_eq!(
        (got, closed),
        (vec![ns(HEARTBEAT), ns(HEARTBEAT)], false),
        "bad JSON dropped, link kept"
    );
    // The third malformed message (too deep) is the third violation: max_violations (3).
    s.write_all(&ns(&format!(
        "{{\"method\":\"x\",\"p\":{}{}}}",
        "[".repeat(40),
        "]".repeat(40)
    )))
    .await
    .unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    gh.wait_log("3 policy violations (cluster.max_violations)");
    let m = gh.metrics_text().await;
    assert!(m.contains(r#"gatehouse_cluster_messages_total{direction="upstream",method="other",verdict="malformed"} 3"#), "{m}");
    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();

    // A framing error closes even an authenticated link; another link is unaffected.
    let mut other = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    s.write_all(b"1234567890:").await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    gh.wait_log("netstring length longer than 9 digits");
    other.write_all(&ns(HEARTBEAT)).await.unwrap();
    assert_eq!(
        read_frames(&mut other, 1, Duration::from_secs(5))
            .await
            .0
            .len(),
        1
    );

    // Authenticated idle timeout (3s): no message → closed.
    assert!(closed_within(&mut other, Duration::from_secs(6)).await);
    gh.wait_log("no message from the"); // either side: both went quiet together

    // No first byte after the handshake → closed after first_byte_timeout (1s), counted.
    let mut quiet = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    assert!(closed_within(&mut quiet, Duration::from_secs(4)).await);
    gh.wait_log("sent nothing within");
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_connections_total{listener="cluster",protocol="timeout"} 1"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_missing_identity_and_dead_upstream_close_the_link() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Icinga::new(tmp.path());
    let sink = Sink::start(c.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = c.conf(tmp.path(), port, sink.addr, web.addr);
    // In process: each refusal is read from the instance's own counters, not its log.
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    let refused =
        |reason: &str| format!(r#"gatehouse_cluster_links_refused_total{{reason="{reason}"}} 1"#);

    // No route for this SNI.
    let mut o = c.agent(Some("agent1"));
    o.sni = Some("localhost".into());
    o.ca = Some(c.edge_pki.ca_path());
    let mut s = tls_connect(addr(port), &o).await.unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    gh.wait_metric(&refused("no_route")).await;

    // Authenticated as a CN with no certificate in cert_dir (missing: reject).
    c.icinga.issue("agent9", CertSpec::new("agent9"));
    let mut s = tls_connect(addr(port), &c.agent(Some("agent9")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    gh.wait_metric(&refused("identity")).await;
    assert!(sink.frames().is_empty());

    // Upstream down: the link is closed so the agent reconnects; classified and counted.
    drop(gh);
    conf.upstream_mut("icinga-master1").peers = vec![local(reserved_port())];
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    gh.wait_metric(
        r#"gatehouse_upstream_errors_total{kind="refused",upstream="icinga-master1"} 1"#,
    )
    .await;
}

/// `listeners[].protocols`: a netstring sent to an `[http]`-only listener and an HTTP request
/// sent to a `[cluster]`-only one are closed with nothing sent back, logged with the listener
/// and the protocol, and counted as `protocol="rejected"`; a cluster link open meanwhile and an
/// HTTP request each listener accepts are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_refuse_protocols_they_do_not_accept() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Icinga::new(tmp.path());
    let sink = Sink::start(c.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (cport, hport) = (reserved_port(), reserved_port());
    let mut conf = c.conf(tmp.path(), cport, sink.addr, web.addr);
    let cluster_only = conf.listener_mut("cluster");
    cluster_only.protocols = Some(vec![Protocol::Cluster]);
    let http_only = Listener {
        name: "web".into(),
        address: local(hport),
        protocols: Some(vec![Protocol::Http]),
        ..cluster_only.clone()
    };
    let gh = Gatehouse::start(tmp.path(), &conf.listener(http_only));
    let t = Duration::from_secs(5);

    // A link on the cluster listener, open throughout.
    let mut link = tls_connect(addr(cport), &c.agent(Some("agent1")))
        .await
        .unwrap();
    link.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(read_frames(&mut link, 1, t).await.0, vec![ns(HELLO)]);

    // A netstring to the HTTP-only listener: closed, no HTTP error page, nothing relayed.
    let mut s = tls_connect(addr(hport), &c.agent(Some("agent1")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s, t).await,
        Some(String::new()),
        "a netstring on an [http] listener must be closed unanswered"
    );
    let line = gh.wait_log("speaks Cluster (first byte 0x");
    assert!(
        line.contains("listener web: 127.0.0.1:")
            && line.contains("which this listener does not accept; closing"),
        "{line}"
    );

    // An HTTP request to the cluster-only listener: closed, nothing proxied.
    let mut s = tls_connect(addr(cport), &c.agent(None)).await.unwrap();
    s.write_all(b"GET /v1/status HTTP/1.1\r\nhost: master1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_until_closed(&mut s, t).await,
        Some(String::new()),
        "HTTP on a [cluster] listener must be closed unanswered"
    );
    let line = gh.wait_log("speaks Http (first byte 0x47)");
    assert!(line.contains("listener cluster: 127.0.0.1:"), "{line}");
    assert!(web.seen().is_empty(), "nothing reached the web origin");
    assert_eq!(
        sink.frames(),
        vec![ns(HELLO)],
        "nothing else reached the master"
    );

    // Each listener still serves what it accepts.
    link.write_all(&ns(HEARTBEAT)).await.unwrap();
    assert_eq!(
        read_frames(&mut link, 1, t).await.0,
        vec![ns(HEARTBEAT)],
        "the open link is unaffected"
    );
    let r = request(
        addr(hport),
        Some(&c.agent(None)),
        "GET",
        "/v1/status",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(web.seen().len(), 1);

    let m = gh.metrics_text().await;
    for needle in [
        r#"gatehouse_connections_total{listener="web",protocol="rejected"} 1"#,
        r#"gatehouse_connections_total{listener="cluster",protocol="rejected"} 1"#,
        r#"gatehouse_connections_total{listener="web",protocol="http"} 1"#,
        r#"gatehouse_connections_total{listener="cluster",protocol="cluster"} 1"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
}

/// `cluster.policy`: a configured policy replaces Icinga's defaults and decides by identity
/// and direction. agent1 may not send `event::CheckResult` upstream, agent2 may not receive it
/// downstream: agent1's never reaches the master, agent2's does but its echo never reaches
/// agent2; agent2's `config::Update` (denied by the defaults) passes. Each denial is counted
/// and audited with its rule; everything else is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_policy_decides_by_identity_and_direction() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Icinga::new(tmp.path());
    c.icinga.issue("agent2", CertSpec::new("agent2"));
    c.icinga
        .ca
        .issue(&CertSpec::new("agent2"))
        .unwrap()
        .write(&tmp.path().join("identities"), "agent2")
        .unwrap();
    let sink = Sink::start(c.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = c.conf(tmp.path(), port, sink.addr, web.addr);
    let cluster = conf
        .cluster
        .take()
        .unwrap()
        .policy(
            PolicyRule::new("cn:agent1")
                .direction("upstream")
                .deny(["event::CheckResult"]),
        )
        .policy(
            PolicyRule::new("cn:agent2")
                .direction("downstream")
                .deny(["event::CheckResult"]),
        );
    // In process: denials are read from its counters and typed audit events.
    let gh = Gatehouse::in_process(tmp.path(), &conf.cluster(cluster));
    let _links = each_agents_check_results_go_its_way(&c, &sink, port).await;

    let m = gh.metrics_text().await;
    for needle in [
        r#"gatehouse_cluster_messages_total{direction="upstream",method="event::CheckResult",verdict="denied"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="upstream",method="event::CheckResult",verdict="forwarded"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="downstream",method="event::CheckResult",verdict="denied"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="upstream",method="config::Update",verdict="forwarded"} 1"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
    let denials: Vec<_> = gh
        .audit()
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::Cluster(c) => Some((
                c.identity.cn.unwrap_or_default(),
                c.direction,
                c.method,
                c.verdict.as_str(),
                c.reason,
            )),
            _ => None,
        })
        .collect();
    let denial = |cn: &str, dir, rule: &str| {
        (
            cn.to_string(),
            dir,
            "event::CheckResult".to_string(),
            "denied",
            rule.to_string(),
        )
    };
    assert_eq!(
        denials,
        vec![
            denial("agent1", "upstream", "cluster.policy[0]"),
            denial("agent2", "downstream", "cluster.policy[1]"),
        ]
    );
}

/// agent1's check result never reaches the master; agent2's does, but its echo never comes
/// back; agent2's config::Update passes. Returns both links, kept open until the test ends.
async fn each_agents_check_results_go_its_way(c: &Icinga, sink: &Sink, port: u16) -> (Link, Link) {
    let t = Duration::from_secs(5);
    let cr = check_result();
    let mut a1 = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    let mut burst = ns(HELLO);
    burst.extend(ns(&cr));
    burst.extend(ns(HEARTBEAT));
    a1.write_all(&burst).await.unwrap();
    let expected = texts(&[ns(HELLO), ns(HEARTBEAT)]);
    assert_eq!(texts(&read_frames(&mut a1, 2, t).await.0), expected);
    assert_eq!(
        texts(&sink.frames()),
        expected,
        "agent1's check result is denied upstream"
    );

    let mut a2 = tls_connect(addr(port), &c.agent(Some("agent2")))
        .await
        .unwrap();
    let mut burst = ns(HELLO);
    burst.extend(ns(&cr));
    burst.extend(ns(CONFIG_UPDATE));
    burst.extend(ns(HEARTBEAT));
    a2.write_all(&burst).await.unwrap();
    assert_eq!(
        texts(&read_frames(&mut a2, 3, t).await.0),
        texts(&[ns(HELLO), ns(CONFIG_UPDATE), ns(HEARTBEAT)]),
        "agent2 gets everything back but the check result (denied downstream)"
    );
    assert_eq!(
        texts(&sink.frames()[2..]),
        texts(&[ns(HELLO), ns(&cr), ns(CONFIG_UPDATE), ns(HEARTBEAT)]),
        "agent2 may send a check result and, under this policy, config::Update upstream"
    );
    assert_eq!(
        sink.client_cns.lock().unwrap().clone(),
        vec![Some("agent1".to_string()), Some("agent2".to_string())]
    );
    (a1, a2)
}

/// `cluster.upstream_identity.missing`: a client whose CN has no certificate in `cert_dir` is
/// refused with `reject` (counted, no upstream connection); with `own` it is relayed with the
/// edge's own upstream client certificate (the master sees CN gatehouse-edge), while a client
/// with a file still goes upstream as itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_identity_own_relays_with_the_edges_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Icinga::new(tmp.path());
    c.icinga.issue("agent9", CertSpec::new("agent9")); // no identities/agent9.*
    let sink = Sink::start(c.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = c.conf(tmp.path(), port, sink.addr, web.addr);
    let t = Duration::from_secs(5);

    // missing: reject (the fixture's): closed before any upstream connection.
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    let mut s = tls_connect(addr(port), &c.agent(Some("agent9")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s, t).await,
        Some(String::new()),
        "missing: reject closes the link, nothing relayed"
    );
    gh.wait_metric(r#"gatehouse_cluster_links_refused_total{reason="identity"} 1"#)
        .await;
    assert!(sink.client_cns.lock().unwrap().is_empty());
    drop(gh);

    // missing: own: relayed as the edge.
    conf.cluster
        .as_mut()
        .and_then(|c| c.upstream_identity.as_mut())
        .unwrap()
        .missing = Some("own".into());
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    let mut s = tls_connect(addr(port), &c.agent(Some("agent9")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        texts(&read_frames(&mut s, 1, t).await.0),
        texts(&[ns(HELLO)]),
        "missing: own relays the link"
    );
    let mut a1 = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    a1.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        texts(&read_frames(&mut a1, 1, t).await.0),
        texts(&[ns(HELLO)])
    );
    assert_eq!(
        sink.client_cns.lock().unwrap().clone(),
        vec![
            Some("gatehouse-edge".to_string()),
            Some("agent1".to_string())
        ],
        "agent9 goes upstream with the edge's own certificate, agent1 with its cert_dir file"
    );
    let m = gh.metrics_text().await;
    assert!(
        m.lines()
            .filter(|l| l.starts_with("gatehouse_cluster_links_refused_total{"))
            .all(|l| l.ends_with(" 0")),
        "nothing refused with missing: own:\n{m}"
    );
}

/// `cluster.limits.parent_message_size`, on messages from the upstream (the parent, on a
/// `toward: parent` route): with `8KiB`, a 6 KiB message from the master reaches the client
/// intact, and a 10 KiB one closes the link with a framing error (logged with the limit,
/// counted as a too_large downstream message) before any byte of it reaches the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limits_messages_from_the_upstream() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Icinga::new(tmp.path());
    let padded = |n: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"pad":"{}"}}}}"#,
            "z".repeat(n)
        )
    };
    let (fits, too_big) = (padded(6 << 10), padded(10 << 10));
    // Answers the client's first message with `fits`, its second with `too_big`.
    let master = ReplyingMaster::start(c.master_acceptor(), vec![ns(&fits), ns(&too_big)]).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = c.conf(tmp.path(), port, master.addr, web.addr);
    if let Some(l) = conf.cluster.as_mut().and_then(|c| c.limits.as_mut()) {
        l.parent_message_size = Some("8KiB".into());
    }
    let gh = Gatehouse::start(tmp.path(), &conf);
    let t = Duration::from_secs(5);

    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        texts(&read_frames(&mut s, 1, t).await.0),
        texts(&[ns(&fits)]),
        "a 6 KiB message is within message_size: 8KiB"
    );
    s.write_all(&ns(HEARTBEAT)).await.unwrap();
    assert_eq!(
        read_until_closed(&mut s, t).await,
        Some(String::new()),
        "a 10 KiB message from the master closes the link, none of it delivered"
    );
    let line = gh.wait_log("framing error from the upstream");
    assert!(
        line.contains(&format!(
            "message of {} bytes exceeds the limit of 8192 bytes",
            too_big.len()
        )),
        "{line}"
    );
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_cluster_messages_total{direction="downstream",method="other",verdict="too_large"} 1"#),
        "{m}"
    );
}

/// Bad input loses nothing before it: when a message that ends the link (here one over
/// `parent_message_size`) arrives in the same read as good ones, the good ones are still delivered,
/// then the link closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_before_the_one_that_ends_the_link_are_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let c = Icinga::new(tmp.path());
    let too_big = format!(
        r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"pad":"{}"}}}}"#,
        "z".repeat(10 << 10)
    );
    // One reply, one write, one TLS record: a heartbeat, then the oversized message.
    let reply = [ns(HEARTBEAT), ns(&too_big)].concat();
    let master = ReplyingMaster::start(c.master_acceptor(), vec![reply]).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = c.conf(tmp.path(), port, master.addr, web.addr);
    if let Some(l) = conf.cluster.as_mut().and_then(|c| c.limits.as_mut()) {
        l.parent_message_size = Some("8KiB".into());
    }
    let gh = Gatehouse::start(tmp.path(), &conf);
    let t = Duration::from_secs(5);

    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    s.write_all(&ns(HELLO)).await.unwrap();
    assert_eq!(
        texts(&read_frames(&mut s, 1, t).await.0),
        texts(&[ns(HEARTBEAT)]),
        "the heartbeat read together with the oversized message is delivered"
    );
    assert_eq!(
        read_until_closed(&mut s, t).await,
        Some(String::new()),
        "then the link closes, nothing of the oversized message delivered"
    );
    gh.wait_log("framing error from the upstream");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upstream_applies_backpressure() {
    let f = Fixture::start(SinkMode::Stall).await;
    let (c, sink, gh, port) = (&f.c, &f.sink, &f.gh, f.port);
    let pid = gh.pid();

    let mut s = tls_connect(addr(port), &c.agent(Some("agent1")))
        .await
        .unwrap();
    let frame = ns(&check_result());
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 200)
        .collect();
    let before = rss_kib(pid);
    // Push up to 256 MiB; a bounded relay stops taking bytes long before that.
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match tokio::time::timeout(Duration::from_secs(2), s.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => break,
        }
    }
    let after = rss_kib(pid);
    assert!(
        sent < 64 << 20,
        "the relay kept accepting data from the client: {} MiB",
        sent >> 20
    );
    assert!(
        after.saturating_sub(before) < 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB while the master stalled"
    );
    assert_eq!(sink.client_cns.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_links_with_close_notify() {
    let f = Fixture::start(SinkMode::Echo).await;
    let (c, gh, port) = (&f.c, &f.gh, f.port);
    // A blocking client: boring's own SslStream tells whether close_notify arrived.
    let (ca, (crt, key)) = (c.icinga.ca_path(), c.icinga.paths("agent1"));
    let client = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut b = boring::ssl::SslConnector::builder(boring::ssl::SslMethod::tls()).unwrap();
        b.set_ca_file(ca).unwrap();
        b.set_certificate_chain_file(crt).unwrap();
        b.set_private_key_file(key, boring::ssl::SslFiletype::PEM)
            .unwrap();
        let tcp = std::net::TcpStream::connect(addr(port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut s = b.build().connect("master1", tcp).unwrap();
        s.write_all(&ns(HELLO)).unwrap();
        let mut buf = vec![0u8; ns(HELLO).len()];
        s.read_exact(&mut buf).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // until the edge closes the link
        s.get_shutdown()
    });
    // Wait until the link is up, then SIGTERM: graceful stop (grace_period 1s in tests).
    gh.wait_log("link open: agent1@");
    std::process::Command::new("kill")
        .args(["-TERM", &gh.pid().to_string()])
        .status()
        .unwrap();
    let state = tokio::task::spawn_blocking(move || client.join().unwrap())
        .await
        .unwrap();
    assert!(
        state.contains(boring::ssl::ShutdownState::RECEIVED),
        "the link must end with a TLS close_notify, not a bare TCP close"
    );
    gh.wait_log("shutting down");
}
