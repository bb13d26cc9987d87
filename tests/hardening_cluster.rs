//! Hardening of the cluster relay and of `gatehouse reload`, end to end: real TLS, certificates
//! generated at test time, the real binary (Gatehouse built in process where a test reads only
//! counters and audit events), an in-process netstring "master" (the sink).
//!
//! - anonymous links per client IP (`cluster.limits.anonymous_max_per_ip`, default 2):
//!   `anonymous_links_are_capped_per_ip`, `anonymous_max_per_ip_key_takes_effect`;
//! - `pki::RequestCertificate` with `cert_request: null` / `""`:
//!   `null_or_empty_cert_request_gets_the_clients_certificate`,
//!   `anonymous_client_without_certificate_cannot_send_a_null_cert_request`;
//! - oversized `pki::RequestCertificate` (`cluster.limits.certificate_request_size`, default
//!   64KiB): `oversized_certificate_request_is_denied_without_building_a_tree`,
//!   `certificate_request_size_key_takes_effect`;
//! - log escaping of SNI, CN and method on the cluster side:
//!   `cluster_log_lines_escape_sni_cn_and_method`;
//! - `gatehouse reload` safety: `reload_refuses_a_pid_that_is_not_gatehouse`,
//!   `reload_refuses_pid_values_at_most_one` (the latter only runs its dangerous cases after
//!   the binary proved it refuses a non-gatehouse pid: on a binary without the check,
//!   `kill(-1, SIGHUP)` would hit every process of the user);
//! - a 2,000-link burst, measured: `burst_2000_authenticated_links` (`#[ignore]`; run with
//!   `ulimit -n 65536; cargo test --test hardening_cluster -- --ignored burst --nocapture`).

mod common;

use boring::ssl::{ShutdownState, SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use bytes::BytesMut;
use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::audit::{AuditEvent, ClusterEvent};
use gatehouse::cluster::codec;
use gatehouse::pki::CertSpec;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio_boring::SslStream;

const HELLO: &str =
    r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}"#;
/// What a forged log line would start with (env_logger's default format).
const FORGED: &str = "\n[2026-01-01T00:00:00Z INFO  gatehouse::audit] forged";
/// The escaped form that must appear instead (lowercase: SNI is lowercased by Gatehouse).
const FORGED_ESCAPED: &str = r"\n[2026-01-01t00:00:00z";
const T: Duration = Duration::from_secs(5);

type Tls = SslStream<TcpStream>;

fn ns(s: &str) -> Vec<u8> {
    codec::encode(s.as_bytes())
}

fn heartbeat(mark: &str) -> String {
    format!(r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"mark":"{mark}"}}}}"#)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Awaits `f` for at most `t`; panics naming `what` on timeout.
async fn within<F: Future>(what: &str, t: Duration, f: F) -> F::Output {
    match tokio::time::timeout(t, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {t:?}: {what}"),
    }
}

/// Whether `cond` held within `t` (the tests word their own failures).
async fn eventually(t: Duration, cond: impl Fn() -> bool) -> bool {
    holds_within(t, cond).await
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Opens a link with a blocking boring client (whose `get_shutdown` tells whether a TLS
/// close_notify arrived), sends `HELLO`, and reads until the server closes or `t` passes.
/// `Ok(())` = refused: closed with a close_notify; `Err` says what happened instead.
fn refused_with_close_notify(port: u16, c: &SslConnector, t: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(addr(port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(t)).unwrap();
    tcp.set_write_timeout(Some(t)).unwrap();
    let mut s = c
        .connect("master1", tcp)
        .map_err(|e| format!("handshake: {e}"))?;
    s.write_all(&ns(HELLO)).map_err(|e| format!("write: {e}"))?;
    let deadline = Instant::now() + t;
    let mut got = 0usize;
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) if s.get_shutdown().contains(ShutdownState::RECEIVED) => return Ok(()),
            Ok(0) => return Err("closed without a TLS close_notify".into()),
            Ok(n) => got += n,
            Err(e)
                if Instant::now() >= deadline
                    || matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(format!(
                    "the link is still open after {t:?} ({got} bytes relayed back to the client)"
                ))
            }
            Err(e) => return Err(format!("closed without a TLS close_notify: {e}")),
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the link is still open after {t:?} ({got} bytes relayed back to the client)"
            ));
        }
    }
}

/// A client connector: trusts `ca` (or nothing is verified), presents `cert`.
fn connector(ca: Option<&Path>, cert: Option<(PathBuf, PathBuf)>) -> SslConnector {
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    match ca {
        Some(ca) => b.set_ca_file(ca).unwrap(),
        None => b.set_verify(SslVerifyMode::NONE),
    }
    if let Some((c, k)) = cert {
        b.set_certificate_chain_file(c).unwrap();
        b.set_private_key_file(k, SslFiletype::PEM).unwrap();
    }
    b.build()
}

/// A handshake sending `sni` as SNI; the server name is checked only when `check_name`.
async fn connect_sni(
    c: &SslConnector,
    port: u16,
    sni: &str,
    check_name: bool,
) -> Result<Tls, String> {
    let mut cfg = c.configure().map_err(|e| e.to_string())?;
    cfg.set_verify_hostname(check_name);
    let tcp = TcpStream::connect(addr(port))
        .await
        .map_err(|e| e.to_string())?;
    tokio_boring::connect(cfg, sni, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// A Gatehouse with one TLS listener `edge` ([cluster], client_auth optional) in front of a
/// sink; cluster routes `master1` and `*.example.org` both go to the sink.
struct Edge {
    pki: Pki,
    sink: Sink,
    gh: Gatehouse,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Edge {
    /// The binary; `limits`: `cluster.limits` (`None` = no `limits` key); `cert_dir`: whether
    /// `upstream_identity.cert_dir` (holding `agent1`) is configured.
    async fn start(limits: Option<Limits>, cert_dir: bool, mode: SinkMode) -> Edge {
        Edge::run(Gatehouse::start, limits, cert_dir, mode).await
    }

    /// [`Edge::start`] in process: for tests that read counters and audit events only.
    async fn in_process(limits: Option<Limits>, cert_dir: bool, mode: SinkMode) -> Edge {
        Edge::run(Gatehouse::in_process, limits, cert_dir, mode).await
    }

    async fn run(
        run: fn(&Path, &Conf) -> Gatehouse,
        limits: Option<Limits>,
        cert_dir: bool,
        mode: SinkMode,
    ) -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let rp = RelayPki::new(dir.path());
        let sink = Sink::start(rp.master_acceptor(), mode).await;
        let port = reserved_port();
        let mut cluster = rp.cluster("master").route("*.example.org", "master");
        if !cert_dir {
            cluster.upstream_identity = None;
        }
        cluster.limits = limits;
        let conf = Conf::new()
            .listener(rp.listener("edge", port, &[Protocol::Cluster]))
            .upstream("master", rp.master(sink.addr))
            .cluster(cluster)
            .metrics(reserved_port());
        let gh = run(dir.path(), &conf);
        Edge {
            pki: rp.pki,
            sink,
            gh,
            port,
            _dir: dir,
        }
    }

    /// A client of this edge's CA with SNI master1, presenting `cert` (a stem in the PKI dir).
    fn opts(&self, cert: Option<&str>) -> ClientOpts {
        ClientOpts {
            ca: Some(self.pki.ca_path()),
            cert: cert.map(|c| self.pki.paths(c)),
            sni: Some("master1".into()),
            tls12: false,
        }
    }

    async fn connect(&self, cert: Option<&str>) -> Tls {
        within(
            "handshake",
            T,
            tls_connect(addr(self.port), &self.opts(cert)),
        )
        .await
        .unwrap_or_else(|e| panic!("handshake with cert {cert:?}: {e}"))
    }

    /// A link that sent `HELLO` and got it echoed by the sink (so it is relayed).
    async fn hello_link(&self, cert: Option<&str>, who: &str) -> Tls {
        let mut s = self.connect(cert).await;
        within("write", T, s.write_all(&ns(HELLO))).await.unwrap();
        let got = read_frames(&mut s, 1, T).await.0;
        assert_eq!(
            got,
            vec![ns(HELLO)],
            "{who}: the Hello must be relayed to the master and echoed back\n{}",
            self.gh.log_text()
        );
        s
    }

    /// One more anonymous link (no client certificate): `Ok(())` if it was refused with a
    /// close_notify right after its Hello, see [`refused_with_close_notify`].
    async fn try_anonymous_link(&self) -> Result<(), String> {
        let c = connector(Some(&self.pki.ca_path()), None);
        let port = self.port;
        within(
            "anonymous link",
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || {
                refused_with_close_notify(port, &c, Duration::from_secs(3))
            }),
        )
        .await
        .unwrap()
    }

    async fn metrics(&self) -> String {
        within("metrics", Duration::from_secs(20), self.gh.metrics_text()).await
    }

    /// The first sink frame containing `needle`.
    fn sink_frame(&self, needle: &str) -> Option<Vec<u8>> {
        self.sink
            .frames()
            .into_iter()
            .find(|f| contains(f, needle.as_bytes()))
    }

    /// Waits for a log line containing every needle; returns it.
    async fn log_line(&self, needles: &[&str], t: Duration) -> Option<String> {
        let line = || {
            let log = self.gh.log_text();
            let l = log.lines().find(|l| needles.iter().all(|n| l.contains(n)));
            std::future::ready(l.map(str::to_string))
        };
        first_within_async(t, POLL, line).await
    }
}

/// `pki::RequestCertificate` with `params` (JSON object members) and `id`.
fn cert_request(params: &str, id: &str) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{{{params}}},"id":"{id}"}}"#
    )
}

/// A `pki::RequestCertificate` about `total` bytes long, padded with an array of small
/// objects (`{"a":1}`): cheap on the wire, hundreds of bytes each as a serde_json tree.
fn padded_cert_request(id: &str, total: usize) -> String {
    let head = format!(
        r#"{{"jsonrpc":"2.0","method":"pki::RequestCertificate","params":{{"ticket":"t-{id}","pad":["#
    );
    let tail = format!(r#"]}},"id":"{id}"}}"#);
    let unit = r#"{"a":1}"#;
    let n = (total - head.len() - tail.len()) / (unit.len() + 1);
    let mut s = String::with_capacity(total + 16);
    s.push_str(&head);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(unit);
    }
    s.push_str(&tail);
    s
}

/// Anonymous links stay open through a test.
fn anon_limits() -> Option<Limits> {
    Some(Limits::default().anonymous_idle_timeout("60s"))
}

/// Item 1: with `anonymous_max_per_ip` absent (default 2), a third anonymous link from one IP
/// is refused (close_notify, nothing upstream, logged, counted); closing one frees a place;
/// authenticated links are not limited by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_links_are_capped_per_ip() {
    // anonymous_max_clients stays at its default (16), well above 2.
    let e = Edge::start(anon_limits(), true, SinkMode::Echo).await;
    let mut a1 = e.hello_link(None, "anonymous link 1").await;
    let _a2 = e.hello_link(None, "anonymous link 2").await;
    assert_eq!(e.sink.frames().len(), 2);

    // The third anonymous link from 127.0.0.1 is refused right after its first byte.
    let refused = e.try_anonymous_link().await;
    assert_eq!(
        refused,
        Ok(()),
        "a third anonymous link from one IP must be refused (anonymous_max_per_ip defaults to 2); \
         the sink saw {} frames on {} connections",
        e.sink.frames().len(),
        e.sink.client_cns.lock().unwrap().len()
    );
    // An authenticated client is not limited by the anonymous cap; its link, relayed and
    // echoed after the refused one, shows the refused one would have reached the master by now.
    let _agent = e
        .hello_link(Some("agent1"), "agent1 beside two anonymous links")
        .await;
    assert_eq!(
        e.sink.frames().len(),
        3,
        "nothing of the refused link reaches the master (two anonymous Hellos and agent1's)"
    );
    assert_eq!(
        e.sink.client_cns.lock().unwrap().len(),
        3,
        "no upstream connection for the refused link"
    );
    let line = e
        .log_line(&["gatehouse::cluster", "anonymous_max_per_ip"], T)
        .await;
    assert!(
        line.as_deref()
            .is_some_and(|l| l.contains("gatehouse::cluster") && l.contains("anonymous@127.0.0.1")),
        "a gatehouse::cluster line naming the client and anonymous_max_per_ip: {line:?}\n{}",
        e.gh.log_text()
    );
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_links_refused_total",
            &[("reason", "anonymous_max_per_ip")]
        ),
        1.0,
        "{m}"
    );

    // Closing one anonymous link frees a place.
    within("close", T, a1.shutdown()).await.ok();
    drop(a1);
    let one_active = |m: &str| {
        metric(
            m,
            "gatehouse_cluster_links_active",
            &[("kind", "anonymous")],
        ) == 1.0
    };
    e.gh.wait_metrics(
        "the closed anonymous link no longer counted as active",
        Duration::from_secs(5),
        one_active,
    )
    .await;
    let _a4 = e
        .hello_link(None, "a new anonymous link after one closed")
        .await;
    assert_eq!(e.sink.frames().len(), 4);
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_links_refused_total",
            &[("reason", "anonymous_max_per_ip")]
        ),
        1.0,
        "{m}"
    );
}

/// Item 1: `anonymous_max_per_ip: 1` set explicitly refuses the second anonymous link (with
/// `anonymous_max_clients` at 16, so only the per-IP cap can refuse it), counted under
/// `reason="anonymous_max_per_ip"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_max_per_ip_key_takes_effect() {
    let limits = Limits::default()
        .anonymous_max_per_ip(1)
        .anonymous_max_clients(16)
        .anonymous_idle_timeout("60s");
    // In process: the refusal is read from the counter (the sibling test above checks the log
    // line that names the client).
    let e = Edge::in_process(Some(limits), true, SinkMode::Echo).await;
    let _a1 = e.hello_link(None, "anonymous link 1").await;
    assert_eq!(
        e.try_anonymous_link().await,
        Ok(()),
        "with anonymous_max_per_ip: 1 the second anonymous link must be refused"
    );
    // A later link, relayed and echoed, shows the refused one would have reached the master
    // by now: nothing of it did (the first anonymous Hello and agent1's only).
    let _agent = e
        .hello_link(Some("agent1"), "agent1 after the refusal")
        .await;
    assert_eq!(e.sink.frames().len(), 2);
    assert_eq!(e.sink.client_cns.lock().unwrap().len(), 2);
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_links_refused_total",
            &[("reason", "anonymous_max_per_ip")]
        ),
        1.0,
        "{m}"
    );
}

/// Sends `frame` on `s`, then waits until the sink saw a frame containing `marker`.
async fn send_and_find(e: &Edge, s: &mut Tls, frame: &str, marker: &str) -> Option<Vec<u8>> {
    within("write", T, s.write_all(&ns(frame))).await.unwrap();
    eventually(T, || e.sink_frame(marker).is_some()).await;
    e.sink_frame(marker)
}

/// Item 2: `"cert_request": null` or `""` is treated as absent: the relay inserts the
/// client's own certificate; a non-empty client-supplied one is forwarded byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_or_empty_cert_request_gets_the_clients_certificate() {
    let e = Edge::start(None, true, SinkMode::Echo).await;
    // The PEM of the certificate the client presents (what the relay must insert).
    let pem = std::fs::read_to_string(e.pki.paths("agent1").0).unwrap();
    let mut s = e.hello_link(Some("agent1"), "agent1").await;

    // Absent (today's behaviour, the baseline) and the two new cases.
    let mut failures = Vec::new();
    for (case, params, id) in [
        ("absent", r#""ticket":"t-absent""#, "req-absent"),
        (
            "null",
            r#""ticket":"t-null","cert_request":null"#,
            "req-null",
        ),
        (
            "empty",
            r#""ticket":"t-empty","cert_request":"""#,
            "req-empty",
        ),
    ] {
        let Some(raw) = send_and_find(&e, &mut s, &cert_request(params, id), id).await else {
            failures.push(format!("{case}: never reached the master"));
            continue;
        };
        let text = String::from_utf8(frame_payload(&raw)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let got = &v["params"]["cert_request"];
        if got.as_str() != Some(pem.as_str()) {
            failures.push(format!(
                "{case}: params.cert_request at the master is {got}, not the client's certificate"
            ));
        }
        let keys = text.matches("\"cert_request\"").count();
        if keys != 1 {
            failures.push(format!(
                "{case}: {keys} `\"cert_request\"` keys in the forwarded JSON: {text}"
            ));
        }
        if v["params"]["ticket"] != format!("t-{case}") || v["id"] != id {
            failures.push(format!("{case}: ticket or id not preserved: {text}"));
        }
    }

    // A client-supplied, non-empty cert_request is forwarded unchanged, byte for byte.
    let own = cert_request(
        r#""ticket":"t-own","cert_request":"-----BEGIN CERTIFICATE-----\nMIIBown\n-----END CERTIFICATE-----\n""#,
        "req-own",
    );
    match send_and_find(&e, &mut s, &own, "req-own").await {
        Some(raw) if raw == ns(&own) => {}
        Some(raw) => failures.push(format!(
            "own: not forwarded byte-identical: {}",
            String::from_utf8_lossy(&raw)
        )),
        None => failures.push("own: never reached the master".into()),
    }
    assert!(
        failures.is_empty(),
        "pki::RequestCertificate cert_request handling:\n  {}",
        failures.join("\n  ")
    );
}

/// Item 2: an anonymous client that presented no certificate cannot get a certificate
/// request forwarded by sending `cert_request: null` (or `""`): denied, never at the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_client_without_certificate_cannot_send_a_null_cert_request() {
    // In process: the refusals are read from the audit events and counters, not the log.
    let e = Edge::in_process(None, true, SinkMode::Echo).await;
    let mut a = e.hello_link(None, "anonymous without a certificate").await;
    let mut burst = ns(&cert_request(
        r#""ticket":"t1","cert_request":null"#,
        "anon-null",
    ));
    burst.extend(ns(&cert_request(
        r#""ticket":"t2","cert_request":"""#,
        "anon-empty",
    )));
    burst.extend(ns(&heartbeat("after-anon")));
    within("write", T, a.write_all(&burst)).await.unwrap();
    // Frames of one link arrive in order: once the heartbeat is there, the requests were judged.
    let hb = eventually(T, || e.sink_frame("after-anon").is_some()).await;
    let leaked: Vec<String> = e
        .sink
        .frames()
        .iter()
        .filter(|f| contains(f, b"pki::RequestCertificate"))
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    assert!(
        leaked.is_empty(),
        "a certificate request from a client without a certificate reached the master:\n{}",
        leaked.join("\n")
    );
    assert!(
        hb,
        "the heartbeat after the requests never reached the master"
    );
    let denied: Vec<ClusterEvent> =
        e.gh.audit()
            .into_iter()
            .filter_map(|a| match a {
                AuditEvent::Cluster(c) if c.method == "pki::RequestCertificate" => Some(c),
                _ => None,
            })
            .collect();
    assert!(
        denied.len() == 2
            && denied
                .iter()
                .all(|c| c.identity.cn.is_none() && c.verdict == "denied"),
        "want both requests audited as denied for the anonymous client: {denied:#?}"
    );
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_messages_total",
            &[
                ("direction", "upstream"),
                ("method", "pki::RequestCertificate"),
                ("verdict", "denied")
            ]
        ),
        2.0,
        "{m}"
    );
}

/// A link whose incoming frames are collected by a reader task (so the client never stalls
/// the echo of a large frame).
struct ReadingLink {
    w: WriteHalf<Tls>,
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadingLink {
    fn new(s: Tls) -> ReadingLink {
        let (mut r, w) = tokio::io::split(s);
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let task = tokio::spawn(async move {
            let mut buf = BytesMut::new();
            loop {
                while let Ok(Some(f)) = codec::decode(&mut buf, 64 << 20) {
                    g.lock().unwrap().push(f.raw().to_vec());
                }
                match r.read_buf(&mut buf).await {
                    Ok(n) if n > 0 => {}
                    _ => return,
                }
            }
        });
        ReadingLink { w, got, task }
    }

    fn open(&self) -> bool {
        !self.task.is_finished()
    }

    fn received(&self, marker: &str) -> bool {
        self.got
            .lock()
            .unwrap()
            .iter()
            .any(|f| contains(f, marker.as_bytes()))
    }
}

impl Drop for ReadingLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Item 3: an ~8 MiB `pki::RequestCertificate` from an authenticated agent (default
/// `certificate_request_size` 64KiB) is denied without building a JSON tree: not forwarded,
/// counted as denied, the link stays open, RSS grows < 64 MiB; a 10 KiB one still passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_certificate_request_is_denied_without_building_a_tree() {
    let e = Edge::start(None, true, SinkMode::Echo).await;
    let pem = std::fs::read_to_string(e.pki.paths("agent1").0).unwrap();
    let mut link = ReadingLink::new(e.hello_link(Some("agent1"), "agent1").await);

    let rss = send_8_mib_cert_request(&e, &mut link).await;
    let mut failures = Vec::new();
    if !eventually(T, || e.sink_frame("after-big").is_some()).await {
        failures.push("the heartbeat after the large request never reached the master".into());
    }
    if !eventually(T, || link.received("after-big")).await || !link.open() {
        failures.push("the link did not stay open (one violation < max_violations 10)".into());
    }
    if let Some(f) = e.sink_frame("t-big") {
        failures.push(format!(
            "the {} MiB request was forwarded to the master",
            f.len() >> 20
        ));
    }
    let m = e.metrics().await;
    let denied = metric(
        &m,
        "gatehouse_cluster_messages_total",
        &[
            ("direction", "upstream"),
            ("method", "pki::RequestCertificate"),
            ("verdict", "denied"),
        ],
    );
    if denied != 1.0 {
        failures.push(format!(
            "gatehouse_cluster_messages_total{{direction=\"upstream\",method=\"pki::RequestCertificate\",verdict=\"denied\"}} is {denied}, not 1"
        ));
    }
    let growth_mib = rss.peak.saturating_sub(rss.before) / 1024;
    if growth_mib >= 64 {
        failures.push(format!(
            "Gatehouse's RSS grew by {growth_mib} MiB ({} → {} MiB) for one 8 MiB request",
            rss.before / 1024,
            rss.peak / 1024
        ));
    }
    small_cert_request_gets_the_clients_certificate(&e, &mut link, &pem, &mut failures).await;
    assert!(
        failures.is_empty(),
        "oversized pki::RequestCertificate:\n  {}",
        failures.join("\n  ")
    );
}

/// Gatehouse's resident memory before a send and at its peak during it, in KiB.
struct RssPeak {
    before: u64,
    peak: u64,
}

/// Sends an 8 MiB `pki::RequestCertificate` then heartbeat `after-big`, sampling the edge's
/// RSS until the heartbeat reaches the master, the link closes or a minute passes.
async fn send_8_mib_cert_request(e: &Edge, link: &mut ReadingLink) -> RssPeak {
    let pid = e.gh.pid();
    let big = padded_cert_request("big", 8 << 20);
    let rss_before = status_kib(pid, "VmRSS:");
    // Reset the peak (VmHWM) so it measures this send only (Linux >= 4.0, own child).
    let peak_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let t0 = Instant::now();
    let mut frame = ns(&big);
    frame.extend(ns(&heartbeat("after-big")));
    within(
        "sending 8 MiB",
        Duration::from_secs(60),
        link.w.write_all(&frame),
    )
    .await
    .unwrap();
    within("flush", T, link.w.flush()).await.unwrap();
    let mut rss_max = rss_before;
    let deadline = Instant::now() + Duration::from_secs(60);
    while e.sink_frame("after-big").is_none() && link.open() && Instant::now() < deadline {
        rss_max = rss_max.max(status_kib(pid, "VmRSS:"));
        // The sampling period of the RSS watch.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rss_max = rss_max.max(status_kib(pid, "VmRSS:"));
    let peak = if peak_reset {
        status_kib(pid, "VmHWM:").max(rss_max)
    } else {
        rss_max
    };
    println!(
        "8 MiB pki::RequestCertificate: RSS before {} MiB, peak {} MiB (growth {} MiB, \
         VmHWM reset: {peak_reset}), heartbeat after it at the master after {:?}",
        rss_before / 1024,
        peak / 1024,
        peak.saturating_sub(rss_before) / 1024,
        t0.elapsed()
    );
    RssPeak {
        before: rss_before,
        peak,
    }
}

/// Below the limit: a 10 KiB request is forwarded with the client's certificate (`pem`).
async fn small_cert_request_gets_the_clients_certificate(
    e: &Edge,
    link: &mut ReadingLink,
    pem: &str,
    failures: &mut Vec<String>,
) {
    let small = padded_cert_request("small", 10 << 10);
    within("write", T, link.w.write_all(&ns(&small)))
        .await
        .unwrap();
    match eventually(T, || e.sink_frame("t-small").is_some())
        .await
        .then(|| e.sink_frame("t-small"))
        .flatten()
    {
        Some(raw) => {
            let v: serde_json::Value = serde_json::from_slice(&frame_payload(&raw)).unwrap();
            if v["params"]["cert_request"].as_str() != Some(pem) {
                failures.push("the 10 KiB request lacks the client's certificate".into());
            }
        }
        None => failures.push("the 10 KiB request (below the limit) was not forwarded".into()),
    }
}

/// Item 3: `certificate_request_size: 4KiB` set explicitly denies a 10 KiB request (a 1 KiB
/// one still passes, as does the heartbeat after it: the link stays open), counted as a
/// denied `pki::RequestCertificate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_request_size_key_takes_effect() {
    let limits = Limits::default().certificate_request_size("4KiB");
    // In process: what was denied is read from the counter.
    let e = Edge::in_process(Some(limits), true, SinkMode::Echo).await;
    let mut s = e.hello_link(Some("agent1"), "agent1").await;
    let mut burst = ns(&padded_cert_request("ten", 10 << 10));
    burst.extend(ns(&padded_cert_request("one", 1 << 10)));
    burst.extend(ns(&heartbeat("after-ten")));
    within("write", T, s.write_all(&burst)).await.unwrap();
    assert!(
        eventually(T, || e.sink_frame("after-ten").is_some()).await,
        "the heartbeat after the requests never reached the master"
    );
    assert!(
        e.sink_frame("t-ten").is_none(),
        "a 10 KiB request passed certificate_request_size: 4KiB"
    );
    assert!(
        e.sink_frame("t-one").is_some(),
        "a 1 KiB request is below 4KiB and must be forwarded"
    );
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_messages_total",
            &[
                ("direction", "upstream"),
                ("method", "pki::RequestCertificate"),
                ("verdict", "denied")
            ]
        ),
        1.0,
        "{m}"
    );
}

/// Item 4: the SNI and certificate CN of a cluster client and the method of a denied message
/// appear escaped in `gatehouse::cluster` lines; none of them can start a forged log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_log_lines_escape_sni_cn_and_method() {
    // No cert_dir: an authenticated client goes upstream with the edge's own certificate, so
    // the link with the odd CN opens and is logged.
    let e = Edge::start(anon_limits(), false, SinkMode::Echo).await;
    let mut failures = Vec::new();
    let _odd = odd_cn_is_escaped(&e, &mut failures).await;
    let _anonymous = denied_method_is_escaped(&e, &mut failures).await;
    let _snis = control_character_snis_are_escaped(&e, &mut failures).await;

    // Nothing may start a line of its own, and no raw control character may reach the log.
    // (env_logger indents the continuation lines of a multi-line message by 4 spaces, so a
    // raw line break shows up as `    [2026-01-01…`: counted as forged too, a log shipper or
    // `grep '^ *\['` would not tell it apart.) A plain link's line, logged after all the
    // others, shows every line of theirs is in the log by now.
    let _marker = e.hello_link(Some("agent1"), "the last link").await;
    let marker = e.log_line(&["link open: agent1@", "sni=master1"], T).await;
    assert!(marker.is_some(), "no `link open` line for the last link");
    let log = e.gh.log_text();
    for l in log.lines() {
        let lower = l.to_lowercase();
        if lower.starts_with("[2026-01-01t00:00:00z") {
            failures.push(format!("forged log line: {l:?}"));
        } else if lower.trim_start().starts_with("[2026-01-01t00:00:00z") {
            failures.push(format!(
                "forged log line (indented by env_logger as a continuation line): {l:?}"
            ));
        }
        if l.chars().any(|c| c.is_control()) {
            failures.push(format!("raw control character in a log line: {l:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "cluster-side log escaping:\n  {}\n--- log ---\n{log}",
        failures.join("\n  ")
    );
}

/// A CA-signed certificate whose CN carries a line break and a fake log header, sending a
/// denied `config::Update`: the CN escaped in its `denied` and `link open:` lines. Returns
/// the link, kept open until the test ends.
async fn odd_cn_is_escaped(e: &Edge, failures: &mut Vec<String>) -> Tls {
    let evil_cn = format!("agent{FORGED}");
    e.pki.issue("evil", CertSpec::new(&evil_cn));
    let mut s = e.hello_link(Some("evil"), "the odd-CN client").await;
    within(
        "write",
        T,
        s.write_all(&ns(
            r#"{"jsonrpc":"2.0","method":"config::Update","params":{}}"#,
        )),
    )
    .await
    .unwrap();
    match e.log_line(&["denied config::Update"], T).await {
        Some(l) if l.to_lowercase().contains(FORGED_ESCAPED) => {}
        l => failures.push(format!("CN: no escaped CN in the `denied` line: {l:?}")),
    }
    match e.log_line(&["link open: agent"], T).await {
        Some(l) if l.to_lowercase().contains(FORGED_ESCAPED) => {}
        l => failures.push(format!("CN: no escaped CN in `link open:`: {l:?}")),
    }
    s
}

/// A denied method name with a line break (anonymous: only hello/heartbeat/pki pass), escaped
/// in its `denied` line. Returns the link, kept open until the test ends.
async fn denied_method_is_escaped(e: &Edge, failures: &mut Vec<String>) -> Tls {
    let mut a = e.hello_link(None, "anonymous").await;
    let method = format!("x{}", FORGED.replace('\n', "\\n"));
    within(
        "write",
        T,
        a.write_all(&ns(&format!(
            r#"{{"jsonrpc":"2.0","method":"{method}","params":{{}}}}"#
        ))),
    )
    .await
    .unwrap();
    match e.log_line(&["anonymous@", "denied x"], T).await {
        Some(l) if l.to_lowercase().contains(FORGED_ESCAPED) => {}
        l => failures.push(format!("method: not escaped in the `denied` line: {l:?}")),
    }
    a
}

/// SNIs with control characters. BoringSSL's client sends any byte but NUL; the server
/// refuses only empty or NUL-containing names. Routed ones (*.example.org) open a link and
/// are logged in `link open:`; the others are refused with `no cluster route for SNI`.
/// The client is agent1 (authenticated), so these links do not count as anonymous ones.
/// Returns the links, kept open until the test ends.
async fn control_character_snis_are_escaped(e: &Edge, failures: &mut Vec<String>) -> Vec<Tls> {
    let any = connector(None, Some(e.pki.paths("agent1")));
    let mut sent = Vec::new();
    for (case, sni, routed) in [
        ("newline, routed", format!("x{FORGED}.example.org"), true),
        ("newline, no route", format!("y{FORGED}"), false),
        ("tab, routed", "tab\tname-tab.example.org".to_string(), true),
        (
            "0x01, routed",
            "ctl\x01name-ctl.example.org".to_string(),
            true,
        ),
        ("CR, routed", "cr\rname-cr.example.org".to_string(), true),
    ] {
        match within("handshake", T, connect_sni(&any, e.port, &sni, false)).await {
            Ok(mut s) => {
                let echoed = s.ssl().servername(boring::ssl::NameType::HOST_NAME);
                println!("SNI case {case}: handshake ok (client-side servername {echoed:?})");
                within("write", T, s.write_all(&ns(HELLO))).await.unwrap();
                let got = read_frames(&mut s, 1, Duration::from_secs(2)).await.0;
                if routed && got.is_empty() {
                    failures.push(format!("SNI {case}: the link was not relayed"));
                }
                sent.push((case, sni, routed, s));
            }
            Err(err) => println!("SNI case {case}: cannot be sent: {err}"),
        }
    }
    assert!(
        sent.iter().any(|(c, ..)| c.starts_with("newline")),
        "no SNI with a newline could be sent"
    );
    // Each SNI shows up in its line; a line break as `\n` (other control characters are
    // checked by the caller: none may reach the log raw, whatever the escape syntax).
    for (case, sni, routed, _) in &sent {
        let line_kind = if *routed {
            "link open: agent1@"
        } else {
            "no cluster route for SNI"
        };
        // The part after the last control character or space, as plain text.
        let tail = sni
            .rsplit(|c: char| c.is_control() || c == ' ')
            .next()
            .unwrap_or("")
            .to_lowercase();
        let line = e.log_line(&[line_kind, &tail], T).await;
        match line {
            Some(l) if !sni.contains('\n') || l.to_lowercase().contains(FORGED_ESCAPED) => {}
            l => failures.push(format!(
                "SNI {case}: no `{line_kind}` line with the SNI escaped: {l:?}"
            )),
        }
    }
    sent.into_iter().map(|(.., s)| s).collect()
}

/// A plaintext listener `edge` on `port` and a route to an upstream nobody answers.
fn plain_edge(port: u16) -> Conf {
    Conf::new()
        .listener(Listener::new("edge", port))
        .upstream("web", Group::new("127.0.0.1:9"))
        .route(Route::new("web", "web"))
}

/// A config that passes `gatehouse check` (plaintext listener) with `pid_file`.
fn reload_config(dir: &Path, pid_file: &Path) -> PathBuf {
    let file = dir.join("reload.yaml");
    plain_edge(reserved_port())
        .server(conf::Server::default().pid_file(pid_file))
        .write(&file);
    file
}

/// `gatehouse ARGS…` in a blocking task, bounded in time.
async fn gatehouse_cli(args: Vec<String>) -> (bool, String) {
    within(
        "gatehouse command",
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || {
            gatehouse_cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        }),
    )
    .await
    .unwrap()
}

/// A `sleep 30` we started; killed (by its own handle) on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn sleep"),
        )
    }

    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    /// Whether the process has been sent a signal: one still pending (`kill` queues it at
    /// once, before the process runs to act on it), or it died of it. Exact right after the
    /// sender has returned: no wait for the process to act on it.
    fn signalled(&mut self) -> bool {
        if !self.alive() {
            return true;
        }
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let empty = |mask: &str| u64::from_str_radix(mask, 16).is_ok_and(|m| m == 0);
        let pending = ["SigPnd:", "ShdPnd:"]
            .iter()
            .any(|f| field(f).is_none_or(|mask| !empty(mask)));
        let dying = field("State:").is_none_or(|s| s.starts_with('Z') || s.starts_with('X'));
        pending || dying
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `gatehouse reload` with the pid file pointing at a `sleep` process: must be refused (the
/// process is not gatehouse) and the process must survive. Returns the failure, if any.
async fn reload_against_sleep(dir: &Path) -> Result<(), String> {
    let pid_file = dir.join("other.pid");
    let cfg = reload_config(dir, &pid_file);
    let cfg_s = cfg.display().to_string();
    let (ok, out) = gatehouse_cli(vec!["check".into(), "-c".into(), cfg_s.clone()]).await;
    assert!(ok, "the reload config must pass `gatehouse check`: {out}");

    let mut sleeper = Sleeper::start();
    let pid = sleeper.0.id();
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let (ok, out) = gatehouse_cli(vec!["reload".into(), "-c".into(), cfg_s]).await;
    let alive = !sleeper.signalled();
    let lower = out.to_lowercase();
    let words: Vec<&str> = lower.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let says_not_gatehouse = words.contains(&"not") && words.contains(&"gatehouse");
    if ok || !alive || !words.contains(&pid.to_string().as_str()) || !says_not_gatehouse {
        return Err(format!(
            "`gatehouse reload` with pid {pid} (a `sleep`) in the pid file: exit ok={ok}, \
             sleep still alive={alive}, output: {out:?} — it must refuse, saying pid {pid} is \
             not gatehouse, and send nothing"
        ));
    }
    Ok(())
}

/// Item 5: `gatehouse reload` signals a running Gatehouse (positive case), and refuses a pid
/// whose `/proc/<pid>/exe` is not gatehouse, leaving that process alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_pid_that_is_not_gatehouse() {
    let tmp = tempfile::tempdir().unwrap();
    // Positive: a running Gatehouse (its pid file written by itself) is signalled.
    let gh = Gatehouse::start(tmp.path(), &plain_edge(reserved_port()));
    let pid_file = tmp.path().join("gh.pid");
    let pid = gh.pid().to_string();
    assert!(
        eventually(T, || std::fs::read_to_string(&pid_file)
            .is_ok_and(|p| p.trim() == pid))
        .await,
        "gatehouse did not write its pid file"
    );
    let cfg = tmp.path().join("gatehouse.yaml").display().to_string();
    let (ok, out) = gatehouse_cli(vec!["reload".into(), "-c".into(), cfg]).await;
    assert!(
        ok && out.contains(&pid),
        "reload of a running gatehouse: {out}"
    );
    gh.wait_log("SIGHUP");
    drop(gh);

    // Refused: the pid of a process that is not gatehouse.
    let sub = tmp.path().join("sleep");
    std::fs::create_dir_all(&sub).unwrap();
    if let Err(e) = reload_against_sleep(&sub).await {
        panic!("{e}");
    }
}

/// Item 5: pid values -1, 0 and 1 are refused with an error and a non-zero exit.
///
/// DANGER on a binary without the fix: `kill(-1, SIGHUP)` signals every process of the user,
/// `kill(0, …)` the whole process group (this test runner), `kill(1, …)` init. So these cases
/// run only after the binary proved it refuses a non-gatehouse pid (a binary that checks
/// `/proc/<pid>/exe` refuses them on that ground too); otherwise the test fails before them.
/// To run it against a binary you do not trust, contain it in a PID namespace and session:
/// `unshare --pid --fork --mount-proc setsid --wait <test binary> --exact
/// reload_refuses_pid_values_at_most_one`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_pid_values_at_most_one() {
    let tmp = tempfile::tempdir().unwrap();
    if let Err(e) = reload_against_sleep(tmp.path()).await {
        panic!("not running the -1/0/1 cases (they would signal for real): {e}");
    }
    let pid_file = tmp.path().join("other.pid");
    let cfg = reload_config(tmp.path(), &pid_file).display().to_string();
    let mut bystander = Sleeper::start();
    for value in ["-1", "0", "1"] {
        std::fs::write(&pid_file, format!("{value}\n")).unwrap();
        let (ok, out) = gatehouse_cli(vec!["reload".into(), "-c".into(), cfg.clone()]).await;
        assert!(
            !ok && !out.contains("sent SIGHUP") && out.to_lowercase().contains("pid"),
            "pid {value}: must be refused with an error naming the pid; exit ok={ok}: {out:?}"
        );
        assert!(bystander.alive(), "pid {value}: a bystander process died");
    }
}

/// Soft limit on open files of this process.
fn open_files_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Item 6 (measurement): 2,000 authenticated links, at most 200 handshakes in flight, each
/// sends one `icinga::Hello` and stays silent; all 2,000 Hellos must reach the master within
/// 60 s. Needs ~4,000 fds here (clients + sink side) and ~4,000 in Gatehouse (which inherits
/// the limit): run under `ulimit -n 65536`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement: `ulimit -n 65536; cargo test --test hardening_cluster -- --ignored burst --nocapture`"]
async fn burst_2000_authenticated_links() {
    const LINKS: usize = 2000;
    const IN_FLIGHT: usize = 200;
    let limit = open_files_limit();
    assert!(
        limit >= 5000,
        "open files limit {limit} is too low for {LINKS} links: raise it to at least 5000 (e.g. `ulimit -n 65536`)"
    );
    let e = Edge::start(None, true, SinkMode::Count).await;
    let c = Arc::new(connector(
        Some(&e.pki.ca_path()),
        Some(e.pki.paths("agent1")),
    ));
    let gate = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let failed = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let port = e.port;
    let t0 = Instant::now();
    let mut tasks = Vec::with_capacity(LINKS);
    for _ in 0..LINKS {
        let (c, gate, failed, errors) = (c.clone(), gate.clone(), failed.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(30), async {
                let mut s = connect_sni(&c, port, "master1", true).await?;
                s.write_all(&ns(HELLO)).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(s)
            })
            .await
            .unwrap_or_else(|_| Err("handshake + hello timed out".into()));
            drop(permit);
            match r {
                Ok(s) => {
                    // Stay connected, silent, until the test ends.
                    tokio::time::sleep(Duration::from_secs(120)).await;
                    drop(s);
                }
                Err(err) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let mut errs = errors.lock().unwrap();
                    if errs.len() < 5 {
                        errs.push(err);
                    }
                }
            }
        }));
    }
    let count = || e.sink.count.load(Ordering::Relaxed) as usize;
    let all = eventually(Duration::from_secs(60), || count() >= LINKS).await;
    let elapsed = t0.elapsed();
    let n = count();
    let rss = status_kib(e.gh.pid(), "VmRSS:");
    println!(
        "burst: {n}/{LINKS} Hellos at the master after {:.2}s ({} client-side failures {:?}); \
         Gatehouse RSS {} MiB",
        elapsed.as_secs_f64(),
        failed.load(Ordering::Relaxed),
        errors.lock().unwrap(),
        rss / 1024
    );
    for t in &tasks {
        t.abort();
    }
    assert!(
        all,
        "only {n} of {LINKS} Hellos reached the master within 60 s"
    );
}

/// Malformed messages from a known peer are dropped and, unlike before, count toward
/// `max_violations` (default 10): 50 of them in one burst end the link, and the log has a line
/// per 10 s for them, not one per message (the probe's 50,000 wrote 50,002 lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_from_a_known_peer_are_violations_logged_sampled() {
    let e = Edge::start(None, true, SinkMode::Echo).await;
    let mut s = e.hello_link(Some("agent1"), "agent1").await;
    let burst: Vec<u8> = std::iter::repeat_n(&b"1:x,"[..], 50)
        .flatten()
        .copied()
        .collect();
    within("write", T, s.write_all(&burst)).await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "the link stayed open after 50 malformed messages\n{}",
        e.gh.log_text()
    );
    let line = e
        .log_line(&["agent1", "policy violations (cluster.max_violations)"], T)
        .await;
    assert!(line.is_some(), "the close says why:\n{}", e.gh.log_text());
    let dropped =
        e.gh.log_text()
            .lines()
            .filter(|l| l.contains("dropped a malformed"))
            .count();
    assert!(
        (1..=2).contains(&dropped),
        "{dropped} lines for one burst:\n{}",
        e.gh.log_text()
    );
}

/// `cluster.limits.anonymous_max_lifetime`: an anonymous link that keeps sending heartbeats
/// (so never idle) is closed when its lifetime runs out, and says so; enrollment takes seconds,
/// so eight addresses can no longer hold all the anonymous places for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_links_end_at_their_max_lifetime() {
    let e = Edge::start(
        Some(
            Limits::default()
                .anonymous_idle_timeout("60s")
                .anonymous_max_lifetime("2s"),
        ),
        true,
        SinkMode::Echo,
    )
    .await;
    let mut s = e.hello_link(None, "anonymous").await;
    let start = Instant::now();
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(8) {
        if s.write_all(&ns(&heartbeat("beat"))).await.is_err() {
            closed = true;
            break;
        }
        if closed_within(&mut s, Duration::from_millis(400)).await {
            closed = true;
            break;
        }
    }
    assert!(closed, "a busy anonymous link outlived its 2 s lifetime");
    assert!(
        start.elapsed() >= Duration::from_millis(1500),
        "closed early: {:?}",
        start.elapsed()
    );
    let line = e.log_line(&["anonymous_max_lifetime"], T).await;
    assert!(line.is_some(), "{}", e.gh.log_text());
}

/// No upstream connection for a link before it sent one whole, valid message: the probe's
/// garbage (`12345678901234567890:xxxx`), a malformed first message and a digit followed by
/// silence each end at the edge, counted `no_valid_first_message`, and the master never sees a
/// connection; a link that opens properly is relayed as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_connection_before_a_valid_first_message() {
    let e = Edge::start(
        Some(Limits::default().anonymous_idle_timeout("1s")),
        true,
        SinkMode::Echo,
    )
    .await;
    for (case, bytes) in [
        ("garbage", b"12345678901234567890:xxxx".to_vec()),
        ("malformed", ns("{not json")),
        ("silence", b"5".to_vec()),
    ] {
        let mut s = e.connect(None).await;
        within("write", T, s.write_all(&bytes)).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(4)).await,
            "{case}: not closed"
        );
    }
    assert_eq!(
        e.sink.client_cns.lock().unwrap().len(),
        0,
        "the master was dialled for a link that never sent a valid message"
    );
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_links_refused_total",
            &[("reason", "no_valid_first_message")]
        ),
        3.0,
        "{m}"
    );
    let _ok = e.hello_link(None, "a proper anonymous link").await;
    assert_eq!(e.sink.client_cns.lock().unwrap().len(), 1);
}

/// A master that keeps sending heartbeats but never reads (the probe's stalled receiver): the
/// agent's messages pile up until the edge's write to the master makes no progress for the
/// idle limit, and then the link ends, saying which side took nothing. Before, the heartbeats
/// kept the link alive and the agent's messages stalled unseen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_takes_nothing_ends_the_link() {
    let e = Edge::start(
        Some(Limits::default().idle_timeout("2s")),
        true,
        SinkMode::ChattyStall,
    )
    .await;
    let mut s = e.connect(Some("agent1")).await;
    within("hello", T, s.write_all(&ns(HELLO))).await.unwrap();
    // 64 KiB messages until the way to the master is full (the write blocks).
    let big = ns(&format!(
        r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"pad":"{}"}}}}"#,
        "x".repeat(64 * 1024)
    ));
    let (mut r, mut w) = tokio::io::split(s);
    let writer = tokio::spawn(async move {
        for _ in 0..2000 {
            if w.write_all(&big).await.is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let line = e
        .log_line(
            &["agent1", "the upstream took nothing for 2s"],
            Duration::from_secs(60),
        )
        .await;
    assert!(
        line.is_some(),
        "the stalled link was kept:\n{}",
        e.gh.log_text()
    );
    assert!(
        closed_within(&mut r, Duration::from_secs(5)).await,
        "the agent's side stayed open"
    );
    assert!(
        start.elapsed() < Duration::from_secs(45),
        "{:?}",
        start.elapsed()
    );
    writer.abort();
}

/// A master that takes nothing while an agent sends 12 MiB messages: the blocked direction
/// holds one message (the one being written), as `docs/cluster-relay.md` says, not the read
/// buffer grown to twice its size plus a copy in the write batch (about 2.3× before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_direction_holds_one_message() {
    const MSG: usize = 12 << 20;
    let e = Edge::start(
        Some(Limits::default().idle_timeout("30s").message_size("32MiB")),
        true,
        SinkMode::Stall,
    )
    .await;
    let pid = e.gh.pid();
    let s = e.connect(Some("agent1")).await;
    let (mut r, mut w) = tokio::io::split(s);
    within("hello", T, w.write_all(&ns(HELLO))).await.unwrap();
    // The baseline once the link is relayed: the master has taken its connection.
    until("the link to reach the master", T, || {
        e.sink.client_cns.lock().unwrap().len() == 1
    })
    .await;
    let before = status_kib(pid, "VmRSS:");
    let big = ns(&format!(
        r#"{{"jsonrpc":"2.0","method":"event::Heartbeat","params":{{"pad":"{}"}}}}"#,
        "x".repeat(MSG)
    ));
    let writer = tokio::spawn(async move {
        for _ in 0..3 {
            if w.write_all(&big).await.is_err() {
                break;
            }
        }
        w
    });
    let mut peak = before;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        // RSS sampled over a 5 s window while the writer is blocked: the measurement itself.
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(status_kib(pid, "VmRSS:"));
    }
    let growth = (peak.saturating_sub(before) * 1024) as usize;
    eprintln!(
        "blocked direction: RSS {before} → {peak} KiB, {:.2}× the message",
        growth as f64 / MSG as f64
    );
    assert!(
        growth > MSG / 2,
        "RSS grew by {} KiB only: the message never reached the edge (a broken test)",
        growth / 1024
    );
    assert!(
        (growth as f64) < MSG as f64 * 1.5,
        "a blocked direction held {:.2}× its 12 MiB message (RSS {} → {} KiB)",
        growth as f64 / MSG as f64,
        before,
        peak
    );
    assert!(
        !closed_within(&mut r, Duration::from_millis(100)).await,
        "the link ended while blocked (idle_timeout is 30 s)"
    );
    writer.abort();
}

/// Link refusals a client can repeat at will write one line per reason per 10 s: 20 links
/// whose SNI has no cluster route are each refused and counted, and logged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_link_refusals_write_one_line() {
    let e = Edge::start(None, true, SinkMode::Echo).await;
    let c = connector(Some(&e.pki.ca_path()), Some(e.pki.paths("agent1")));
    for _ in 0..20 {
        let mut s = within(
            "connect",
            T,
            connect_sni(&c, e.port, "nowhere.invalid", false),
        )
        .await
        .expect("handshake");
        let _ = s.write_all(&ns(HELLO)).await;
        assert!(
            closed_within(&mut s, T).await,
            "a link without a route stayed open"
        );
    }
    let m = e.metrics().await;
    assert_eq!(
        metric(
            &m,
            "gatehouse_cluster_links_refused_total",
            &[("reason", "no_route")]
        ),
        20.0,
        "{m}"
    );
    let log = e.gh.log_text();
    let lines = |target: &str| {
        log.lines()
            .filter(|l| l.contains(target) && l.contains("no cluster route for SNI"))
            .count()
    };
    assert_eq!(
        (lines("gatehouse::cluster"), lines("gatehouse::audit")),
        (1, 1),
        "20 refusals within 10 s, no audit.path (the audit goes to the log, sampled too):\n{log}"
    );
}
