//! `make soak`: a long run of mixed load against one Gatehouse process, watching its memory
//! and file descriptors.
//!
//! Load, all through one TLS port on 127.0.0.1, for `SOAK_SECS` (default 1800):
//! - HTTP: 4 clients, each request on a new mTLS connection, to an in-process origin that
//!   requires Gatehouse's client certificate (pooled upstream connections);
//! - JSON-RPC: 8 authenticated links, each sending ~600-byte `event::CheckResult` frames at
//!   ~200/s to an echoing in-process master and reading the echoes;
//! - a reconnect storm every `SOAK_STORM_SECS` (default 60): 500 links open at once (Hello
//!   and a heartbeat each), held 5 s, then dropped together;
//! - a certificate reload (SIGHUP) every 5 minutes.
//!
//! RSS (VmRSS) and open fds are sampled every 10 s. Pass: RSS at the end is within 10 % of
//! its value after warm-up (the first 10 % of the run, at least 60 s), and the fd count
//! returns to its pre-load baseline within 30 s after the load stops. Samples go to
//! `target/soak.csv`. Exit status 1 when a criterion fails.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::cluster::codec;
use gatehouse::pki::CertSpec;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Counters the load tasks share.
#[derive(Default)]
struct Tally {
    http_ok: AtomicU64,
    http_failed: AtomicU64,
    rpc_sent: AtomicU64,
    /// Bytes echoed back (frames may arrive split across reads).
    rpc_echoed_bytes: AtomicU64,
    link_failures: AtomicU64,
    storm_links: AtomicU64,
    /// Set from a storm's first connect until 2 s after its links are dropped.
    storming: AtomicBool,
}

fn main() {
    let secs = env_num("SOAK_SECS", 1800.0);
    let storm_every = env_num("SOAK_STORM_SECS", 60.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pass = rt.block_on(run(
        Duration::from_secs_f64(secs),
        Duration::from_secs_f64(storm_every),
    ));
    rt.shutdown_timeout(Duration::from_secs(5));
    std::process::exit(if pass { 0 } else { 1 });
}

async fn run(total: Duration, storm_every: Duration) -> bool {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rp = RelayPki::new(dir);
    let master_acc = rp.master_acceptor();
    let RelayPki { pki, ids, .. } = rp;
    let origin_cert = pki.server("origin", &[]);
    pki.issue("agent1", CertSpec::new("agent1"));
    let sink = Sink::start(master_acc, SinkMode::Echo).await;
    let origin = Upstream::h1(
        Some(acceptor(&origin_cert, Some(&pki.ca.issued.cert), false)),
        Behavior::Echo,
    )
    .await;
    let port = free_port();
    let conf = dir.join("gatehouse.yaml");
    std::fs::write(&conf, soak_yaml(dir, &pki, &ids, port, &origin, &sink)).unwrap();
    let log = dir.join("gatehouse.log");
    let gh = spawn(
        "gatehouse",
        Command::new(gatehouse_bin())
            .args(["run", "-c"])
            .arg(&conf)
            .env("RUST_LOG", "warn,gatehouse::reload=info"),
        &log,
        port,
    );
    let pid = gh.child.id();
    // The baseline is taken once start-up allocations have settled.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss0, fd0) = (rss_kib(pid), fd_count(pid));
    println!("soak: {} s, storms every {} s; gatehouse pid {pid}, before load: RSS {rss0} KiB, {fd0} fds",
        total.as_secs(), storm_every.as_secs());

    let agent = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: Some(pki.paths("agent1")),
        sni: Some("master1".into()),
        tls12: false,
    };
    let load = Load::start(port, &agent, storm_every);
    let watch = Watch {
        pid,
        sink: &sink,
        origin: &origin,
        tally: &load.tally,
    };
    let run = watch.sample(total).await;
    let tally = load.stop().await;
    // After the load: links close at once, pooled upstream connections after idle_timeout (5 s).
    let mut fd_end = fd_count(pid);
    holds_within(Duration::from_secs(30), || {
        fd_end = fd_count(pid);
        fd_end <= fd0
    })
    .await;
    let pass = report(total, &run, &tally, (rss0, fd0, fd_end), &log);
    drop(gh);
    pass
}

/// Gatehouse's config: one TLS port for HTTP (to `origin`) and cluster links (to `sink`, with
/// `ids` as `cert_dir`), certificates from `pki`.
fn soak_yaml(
    dir: &std::path::Path,
    pki: &Pki,
    ids: &std::path::Path,
    port: u16,
    origin: &Upstream,
    sink: &Sink,
) -> String {
    let p = pki.dir.display();
    format!(
        r#"server: {{ threads: 2, pid_file: {d}/gh.pid, upgrade_sock: {d}/gh.sock }}
listeners:
  - name: edge
    address: "127.0.0.1:{port}"
    protocols: [http, cluster]
    tls: {{ cert: {p}/server.crt, key: {p}/server.key, client_auth: optional, client_ca: {p}/ca.crt }}
upstreams:
  web: {{ peers: ["{web}"], idle_timeout: 5s, tls: {{ ca: {p}/ca.crt, client_cert: {p}/edge.crt, client_key: {p}/edge.key, sni: localhost }} }}
  master: {{ peers: ["{sink}"], tls: {{ ca: {p}/ca.crt, client_cert: {p}/edge.crt, client_key: {p}/edge.key, sni: master1 }} }}
routes: [ {{ name: web, upstream: web }} ]
cluster:
  routes: [ {{ sni: master1, upstream: master }} ]
  upstream_identity: {{ cert_dir: {ids} }}
  limits: {{ max_links_per_identity: 1000000 }}
"#,
        d = dir.display(),
        web = origin.addr,
        sink = sink.addr,
        ids = ids.display(),
    )
}

/// The mixed load: 4 HTTP clients, 8 steady links, a storm every `storm_every`.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, agent: &ClientOpts, storm_every: Duration) -> Load {
        let web = ClientOpts {
            sni: Some("localhost".into()),
            ..agent.clone()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (stop, tally, web) = (stop.clone(), tally.clone(), web.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match request(addr(port), Some(&web), "GET", "/soak", &[], b"").await {
                        Ok(r) if r.status == 200 => tally.http_ok.fetch_add(1, Ordering::Relaxed),
                        _ => tally.http_failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        for _ in 0..8 {
            let (stop, tally, agent) = (stop.clone(), tally.clone(), agent.clone());
            tasks.push(tokio::spawn(async move {
                steady_link(port, &agent, &stop, &tally).await;
            }));
        }
        let (stop2, tally2, agent) = (stop.clone(), tally.clone(), agent.clone());
        tasks.push(tokio::spawn(async move {
            storms(port, &agent, storm_every, &stop2, &tally2).await;
        }));
        Load { stop, tally, tasks }
    }

    /// Stops the load (each task given up to 20 s to end); its tally.
    async fn stop(self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
        self.tally
    }
}

/// A storm every `every` until `stop`; `storming` is set from its first connect until 2 s
/// after its links are dropped.
async fn storms(port: u16, agent: &ClientOpts, every: Duration, stop: &AtomicBool, tally: &Tally) {
    let mut next = Instant::now() + every;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            tally.storming.store(true, Ordering::Relaxed);
            storm(port, agent, 500, tally).await;
            // The storm's closes take a moment to show in RSS and fds: samples until then
            // still count as taken during the storm.
            tokio::time::sleep(Duration::from_secs(2)).await;
            tally.storming.store(false, Ordering::Relaxed);
            next = Instant::now() + every;
        }
        // How often the schedule is checked (and `stop` seen).
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the sampling saw.
struct Sampled {
    /// (secs, RSS KiB, fds, storm in progress)
    samples: Vec<(u64, u64, usize, bool)>,
    csv: String,
    reloads: usize,
}

/// Gatehouse (`pid`) and the in-process peers, watched while the load runs.
struct Watch<'a> {
    pid: u32,
    sink: &'a Sink,
    origin: &'a Upstream,
    tally: &'a Tally,
}

impl Watch<'_> {
    /// Samples RSS and fds every 10 s for `total`, with a SIGHUP every 5 minutes.
    async fn sample(&self, total: Duration) -> Sampled {
        let (pid, tally) = (self.pid, self.tally);
        let frame_len = check_result().len() as u64;
        let start = Instant::now();
        let mut run = Sampled {
            samples: Vec::new(),
            csv: String::from("secs,rss_kib,fds,storm,http_ok,http_failed,rpc_sent,rpc_echoed\n"),
            reloads: 0,
        };
        let mut next_reload = Duration::from_secs(300);
        while start.elapsed() < total {
            // The sampling period.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let t = start.elapsed();
            if t >= next_reload {
                let _ = Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status();
                run.reloads += 1;
                next_reload += Duration::from_secs(300);
            }
            // The in-process peers record what they see (for tests); a soak only needs counts.
            self.sink.frames.lock().unwrap().clear();
            self.origin.seen.lock().unwrap().clear();
            let storming = tally.storming.load(Ordering::Relaxed);
            let (rss, fds) = (rss_kib(pid), fd_count(pid));
            run.samples.push((t.as_secs(), rss, fds, storming));
            let line = format!(
                "{},{rss},{fds},{},{},{},{},{}",
                t.as_secs(),
                u8::from(storming),
                tally.http_ok.load(Ordering::Relaxed),
                tally.http_failed.load(Ordering::Relaxed),
                tally.rpc_sent.load(Ordering::Relaxed),
                tally.rpc_echoed_bytes.load(Ordering::Relaxed) / frame_len,
            );
            run.csv.push_str(&line);
            run.csv.push('\n');
            if run.samples.len() % 6 == 0 {
                println!("  t={:>5}s RSS {rss:>7} KiB  fds {fds:>5}  http {} ok / {} failed  rpc {} sent / {} echoed  storm links {}",
                    t.as_secs(),
                    tally.http_ok.load(Ordering::Relaxed),
                    tally.http_failed.load(Ordering::Relaxed),
                    tally.rpc_sent.load(Ordering::Relaxed),
                    tally.rpc_echoed_bytes.load(Ordering::Relaxed) / frame_len,
                    tally.storm_links.load(Ordering::Relaxed));
            }
        }
        run
    }
}

/// Prints the table, writes `target/soak.csv`; whether both criteria hold. `fds`: before the
/// load, after it stopped.
fn report(
    total: Duration,
    run: &Sampled,
    tally: &Tally,
    (rss0, fd0, fd_end): (u64, usize, usize),
    log: &std::path::Path,
) -> bool {
    let frame_len = check_result().len() as u64;
    // Compare like with like: the mean of the samples between storms in the minute after
    // warm-up against the same in the last minute.
    let calm_mean = |from: u64, to: u64| {
        let v: Vec<u64> = run
            .samples
            .iter()
            .filter(|s| !s.3 && s.0 >= from && s.0 <= to)
            .map(|s| s.1)
            .collect();
        v.iter().sum::<u64>() / (v.len() as u64).max(1)
    };
    let warmup = (total / 10).max(Duration::from_secs(60)).min(total);
    let (w, end) = (warmup.as_secs(), total.as_secs());
    let rss_warm = calm_mean(w, w + 60);
    let rss_end = calm_mean(end.saturating_sub(60), end);
    let rss_max = run.samples.iter().map(|s| s.1).max().unwrap_or(0);
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak.csv");
    let _ = std::fs::write(&target, &run.csv);

    let drift = (rss_end as f64 - rss_warm as f64) / rss_warm.max(1) as f64;
    let rss_ok = drift.abs() <= 0.10;
    let fd_ok = fd_end <= fd0;
    let reload_lines = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("new handshakes use"))
        .count();
    println!("\n#### Soak ({} s, `make soak`)", total.as_secs());
    println!("| measure | value |\n|---|---:|");
    println!(
        "| HTTP requests ok / failed | {} / {} |",
        tally.http_ok.load(Ordering::Relaxed),
        tally.http_failed.load(Ordering::Relaxed)
    );
    println!(
        "| cluster messages sent / echoed back | {} / {} |",
        tally.rpc_sent.load(Ordering::Relaxed),
        tally.rpc_echoed_bytes.load(Ordering::Relaxed) / frame_len
    );
    println!(
        "| storm links opened / steady-link failures | {} / {} |",
        tally.storm_links.load(Ordering::Relaxed),
        tally.link_failures.load(Ordering::Relaxed)
    );
    println!(
        "| reloads signalled / logged | {} / {reload_lines} |",
        run.reloads
    );
    println!("| RSS before load | {rss0} KiB |");
    println!(
        "| RSS after warm-up ({w}–{} s, between storms) | {rss_warm} KiB |",
        w + 60
    );
    println!("| RSS in the last minute (between storms) | {rss_end} KiB |");
    println!("| RSS max (any sample) | {rss_max} KiB |");
    println!(
        "| RSS drift end vs warm-up | {:+.1} % ({}) |",
        drift * 100.0,
        if rss_ok { "within 10 %: ok" } else { "FAIL" }
    );
    println!(
        "| fds before load / after load stopped | {fd0} / {fd_end} ({}) |",
        if fd_ok { "ok" } else { "FAIL" }
    );
    println!("samples: {}", target.display());
    if tally.http_failed.load(Ordering::Relaxed) > 0 {
        println!(
            "note: failed HTTP requests during the soak; see {}",
            log.display()
        );
    }
    rss_ok && fd_ok
}

/// A long-lived agent link: ~200 messages/s, each echoed back by the master.
async fn steady_link(port: u16, agent: &ClientOpts, stop: &AtomicBool, tally: &Tally) {
    let frame = check_result();
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = tls_connect(addr(port), agent).await else {
            tally.link_failures.fetch_add(1, Ordering::Relaxed);
            // An agent's reconnect delay.
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let (mut r, mut w) = tokio::io::split(s);
        let reader = async {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        tally
                            .rpc_echoed_bytes
                            .fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        };
        let writer = async {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let batch = frame.repeat(10);
                if w.write_all(&batch).await.is_err() {
                    return;
                }
                tally.rpc_sent.fetch_add(10, Ordering::Relaxed);
            }
            let _ = w.shutdown().await;
        };
        tokio::select! {
            _ = reader => tally.link_failures.fetch_add(1, Ordering::Relaxed),
            _ = writer => 0,
        };
    }
}

/// `n` links at once: Hello and a heartbeat each, held 5 s, then all dropped together.
async fn storm(port: u16, agent: &ClientOpts, n: usize, tally: &Tally) {
    let mut first = hello();
    first.extend_from_slice(&codec::encode(
        br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#,
    ));
    let links = open_links(addr(port), agent, n, n, &first).await;
    tally
        .storm_links
        .fetch_add(links.len() as u64, Ordering::Relaxed);
    // The storm's links are held this long: part of the load.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(links);
}
