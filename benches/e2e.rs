//! `make bench`: Gatehouse against nginx and HAProxy, on loopback, in one run, with the same
//! certificates (EC P-256), the same backend and the same load.
//!
//! - HTTP: backend = nginx requiring client certs, returning a small JSON 200; fronts =
//!   Gatehouse, nginx (2 workers, upstream keepalive), HAProxy (2 threads, `http-reuse
//!   always`), each with upstream mTLS; load = wrk, 2 threads × 64 connections × 15 s. Also
//!   `examples/bare_pingora` (when built): Pingora with the same TLS work and nothing else,
//!   the floor under Gatehouse's figures.
//! - JSON-RPC relay: this process pushes ~600-byte `event::CheckResult` frames, pipelined, over
//!   1 and 16 mTLS links through Gatehouse, HAProxy `mode tcp` and nginx `stream` (each
//!   terminating TLS with client certs required and re-originating mTLS) to an in-process sink
//!   that requires client certs; counted at the sink. Proxy CPU per message = the proxy's
//!   process-tree CPU time ÷ messages. Three load shapes (64 frames per write with 1 s of
//!   warm-up; 26 frames per ~16 KB write, 2 s warm-up, 10 s, as an independent harness
//!   measured; one frame per write), each followed by a window in which `perf stat` counts the
//!   proxy's system calls per TLS record. Ping-pong: one message in flight to an echoing sink,
//!   5 rounds of 2,000 in rotating order, medians.
//! - Idle links: 2,000 and 9,000 authenticated links per proxy (Hello, then silence), each
//!   count in freshly started proxies; RSS growth of the proxy's process tree per link 2 s and
//!   5 s after the last Hello, and PSS at 5 s. (Issue 16 asks for 10,000: that needs 20,000+
//!   descriptors in the proxy and in this process, which holds both the clients' and the
//!   sink's ends, and this machine's hard limit is 20,000; run `BENCH_IDLE=2000,10000` where
//!   `ulimit -Hn` allows.)
//!
//! Environment: `BENCH_SECS` (wrk duration, default 15), `BENCH_RELAY_SECS` (default 5),
//! `BENCH_IDLE` (comma list, default `2000,9000`; `0` skips), `BENCH_WRAP` (a command to run
//! Gatehouse under, e.g. `heaptrack -o /tmp/gh`), `BENCH_READ_BUFFER` (Gatehouse listeners'
//! `read_buffer`, e.g. `64KiB`; default: the config default), `BENCH_WORK_STEALING` (`false`
//! turns `server.work_stealing` off in Gatehouse and bare Pingora), `BENCH_KEYS` (`rsa4096` or
//! `rsa2048`: every certificate's key RSA, as Icinga issues them; default EC P-256),
//! `BENCH_PARTS` (comma list of `http`, `bearer`, `relay`, `pingpong`, `idle`; default all),
//! `BENCH_SHAPES` (relay shapes by frames per write, e.g. `64`; default all),
//! `BENCH_PINGPONG_ROUNDS` (default 5), `BENCH_SYSCALLS=0` (no perf windows). Everything
//! targets 127.0.0.1.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::pki::CertSpec;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::syscalls::{self, Syscalls};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// === configs ===

struct Files {
    dir: PathBuf,
    pki: PathBuf,
}

impl Files {
    fn p(&self, f: &str) -> String {
        self.pki.join(f).display().to_string()
    }

    fn nginx_prelude(&self, name: &str, workers: u32, stream: bool) -> String {
        let d = self.dir.display();
        let user = if is_root() {
            "user nobody nogroup;"
        } else {
            ""
        };
        format!(
            "{load}{user}\nworker_processes {workers};\nworker_rlimit_nofile 30000;\npid {d}/{name}.pid;\nerror_log {d}/{name}-error.log warn;\nevents {{ worker_connections 20000; }}\n",
            load = if stream { "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n" } else { "" },
        )
    }

    fn nginx_http_temps(&self, name: &str) -> String {
        let t = self.dir.join(format!("tmp-{name}"));
        std::fs::create_dir_all(&t).unwrap();
        let t = t.display();
        format!("client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fcgi; uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;")
    }
}

fn is_root() -> bool {
    std::env::var("USER").map(|u| u == "root").unwrap_or(false)
        || std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

// === HTTP ===

struct HttpRow {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    cpu_pct: Option<f64>,
}

fn ms(v: &str) -> f64 {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(name: &'static str, port: u16, secs: f64, pid: Option<u32>) -> HttpRow {
    wrk_at(name, port, "/", None, secs, pid)
}

/// [`wrk`] on `path`, with `token` as `Authorization: Bearer` when given.
fn wrk_at(
    name: &'static str,
    port: u16,
    path: &str,
    token: Option<&str>,
    secs: f64,
    pid: Option<u32>,
) -> HttpRow {
    let url = format!("https://127.0.0.1:{port}{path}");
    let header = token.map(|t| format!("Authorization: Bearer {t}"));
    let run = |d: f64| {
        let mut cmd = Command::new("wrk");
        cmd.args([
            "-t2",
            "-c64",
            &format!("-d{}s", d as u64),
            "--timeout",
            "5s",
            "--latency",
        ]);
        if let Some(h) = &header {
            cmd.args(["-H", h]);
        }
        cmd.arg(&url).output().expect("wrk")
    };
    run(2.0); // warm-up: TLS sessions, upstream pools
    let c0 = pid.map(cpu_secs);
    let out = String::from_utf8_lossy(&run(secs).stdout).into_owned();
    let c1 = pid.map(cpu_secs);
    let field = |key: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("")
            .to_string()
    };
    let errors: u64 = out
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .flat_map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
        })
        .sum();
    HttpRow {
        name,
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        p50_ms: ms(&field("50%")),
        p99_ms: ms(&field("99%")),
        errors,
        cpu_pct: c0.zip(c1).map(|(a, b)| (b - a) * 100.0 / secs),
    }
}

// === relay ===

/// One shape of relay load: ~600 B frames per client write, the warm-up before the measured
/// window, and the window (`None`: `BENCH_RELAY_SECS`). Every shape is reported, so that no
/// single favourable one is quoted. The second is the independent harness's (26 frames per
/// ~16 KB write, 2 s warm-up, 10 s); the third writes each frame as a TLS record of its own.
#[derive(Clone, Copy, Debug)]
struct Shape {
    frames_per_write: usize,
    warmup: f64,
    hold: Option<f64>,
}

const SHAPES: [Shape; 3] = [
    Shape {
        frames_per_write: 64,
        warmup: 1.0,
        hold: None,
    },
    Shape {
        frames_per_write: 26,
        warmup: 2.0,
        hold: Some(10.0),
    },
    Shape {
        frames_per_write: 1,
        warmup: 1.0,
        hold: None,
    },
];

/// Seconds of each syscall-counting window (after the CPU window, same load).
const SYSCALL_SECS: f64 = 2.0;

impl Shape {
    fn label(&self, relay_secs: f64) -> String {
        let bytes = self.frames_per_write * check_result().len();
        format!(
            "{} frame{} ({:.1} KB) per write, {} s warm-up, {} s",
            self.frames_per_write,
            if self.frames_per_write == 1 { "" } else { "s" },
            bytes as f64 / 1000.0,
            self.warmup,
            self.hold.unwrap_or(relay_secs)
        )
    }

    /// TLS records one client write becomes (at most 16 KiB of plaintext each).
    fn records_per_write(&self) -> usize {
        (self.frames_per_write * check_result().len()).div_ceil(16384)
    }
}

/// `BENCH_SHAPES`: the shapes to run, by frames per write (e.g. `64`); default every shape.
fn shapes() -> Vec<Shape> {
    match std::env::var("BENCH_SHAPES") {
        Ok(v) if !v.trim().is_empty() => {
            let want: Vec<usize> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            SHAPES
                .into_iter()
                .filter(|s| want.contains(&s.frames_per_write))
                .collect()
        }
        _ => SHAPES.to_vec(),
    }
}

/// Clients pushing pipelined frames, `frames_per_write` per write, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    async fn start(target: SocketAddr, o: &ClientOpts, links: usize, shape: Shape) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let frame = check_result();
        let batch: Vec<u8> = frame
            .iter()
            .copied()
            .cycle()
            .take(frame.len() * shape.frames_per_write)
            .collect();
        let mut tasks = Vec::new();
        for _ in 0..links {
            let mut s = tls_connect(target, o).await.expect("connect");
            let (stop, batch) = (stop.clone(), batch.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if s.write_all(&batch).await.is_err() {
                        return;
                    }
                }
            }));
        }
        Load { stop, tasks }
    }

    /// Stops the clients, then waits until what was in flight has arrived: the sink's count
    /// unchanged over 300 ms.
    async fn stop(self, sink: &Sink) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.abort();
        }
        let mut last = u64::MAX;
        while sink.count.load(Ordering::Relaxed) != last {
            last = sink.count.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// One relay measurement.
struct RelayRun {
    path: &'static str,
    shape: Shape,
    links: usize,
    rate: f64,
    /// Proxy CPU µs per message.
    cpu: Option<f64>,
    /// System calls over `SYSCALL_SECS`, and the messages relayed in that time.
    sys: Option<(Syscalls, f64)>,
}

impl RelayRun {
    /// Client TLS records into the proxy during the syscall window.
    fn records_in(&self) -> Option<f64> {
        let (_, msgs) = self.sys?;
        Some(msgs / self.shape.frames_per_write as f64 * self.shape.records_per_write() as f64)
    }
}

/// Pipelined load through `target` in `shape`: msgs/s and the proxy's CPU per message over
/// the window, then (for a proxy) its system calls over a window of their own. Counting them
/// in the CPU window would charge each syscall perf's tracepoint cost, more for the proxies
/// that make more of them.
async fn relay_throughput(
    target: SocketAddr,
    o: &ClientOpts,
    links: usize,
    sink: &Sink,
    pid: Option<u32>,
    (shape, secs): (Shape, f64),
) -> (f64, Option<f64>, Option<(Syscalls, f64)>) {
    let load = Load::start(target, o, links, shape).await;
    // Warm-up, then the measured window: the time is the measurement.
    tokio::time::sleep(Duration::from_secs_f64(shape.warmup)).await;
    let count = || sink.count.load(Ordering::Relaxed);
    let (n0, c0, t0) = (count(), pid.map(cpu_secs), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(shape.hold.unwrap_or(secs))).await;
    let (n1, c1, dt) = (count(), pid.map(cpu_secs), t0.elapsed());
    let sys = match pid {
        Some(pid) => count_syscalls(pid, sink).await,
        None => None,
    };
    load.stop(sink).await;
    let msgs = (n1 - n0) as f64;
    (
        msgs / dt.as_secs_f64(),
        c0.zip(c1).map(|(a, b)| (b - a) * 1e6 / msgs.max(1.0)),
        sys,
    )
}

/// The proxy tree's system calls over `SYSCALL_SECS` and the messages relayed in that time
/// (the sink's rate over perf's whole run, attach included, times the window).
async fn count_syscalls(pid: u32, sink: &Sink) -> Option<(Syscalls, f64)> {
    let perf = syscalls::start(&tree(pid), SYSCALL_SECS)?;
    let (n0, t0) = (sink.count.load(Ordering::Relaxed), Instant::now());
    let counted = tokio::task::spawn_blocking(move || syscalls::finish(perf))
        .await
        .ok()??;
    let rate = (sink.count.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
    Some((counted, rate * SYSCALL_SECS))
}

async fn ping_pong(target: SocketAddr, o: &ClientOpts, n: usize) -> (f64, f64) {
    let mut s = tls_connect(target, o).await.expect("connect");
    let frame = check_result();
    let mut buf = vec![0u8; frame.len()];
    let mut rtts = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        s.write_all(&frame).await.unwrap();
        s.read_exact(&mut buf).await.unwrap();
        if i >= 200 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    (rtts[n / 2], rtts[n * 99 / 100])
}

/// P4's figures: per path, the median over rounds of its p50 and p99, and of its added p50
/// (its p50 minus the same round's direct p50).
struct PingPong {
    rounds: usize,
    direct: (f64, f64),
    /// (path, p50, p99, added p50, each round's added p50).
    rows: Vec<(&'static str, f64, f64, f64, Vec<f64>)>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `rounds` rounds of 2,000 round trips straight to the echo sink and through each proxy, the
/// order rotated every round so that no path always runs first or last.
async fn ping_pong_rounds(
    direct: (SocketAddr, &ClientOpts),
    paths: &[(&'static str, SocketAddr, &ClientOpts)],
    rounds: usize,
) -> PingPong {
    let mut all: Vec<(&'static str, SocketAddr, &ClientOpts)> =
        vec![("direct", direct.0, direct.1)];
    all.extend_from_slice(paths);
    let mut seen: Vec<Vec<(f64, f64)>> = vec![Vec::new(); all.len()];
    for round in 0..rounds {
        for k in 0..all.len() {
            let i = (k + round) % all.len();
            let (_, target, o) = all[i];
            seen[i].push(ping_pong(target, o, 2000).await);
        }
    }
    let direct_p50: Vec<f64> = seen[0].iter().map(|r| r.0).collect();
    let med =
        |i: usize, f: fn(&(f64, f64)) -> f64| median(&seen[i].iter().map(f).collect::<Vec<_>>());
    let rows = (1..all.len())
        .map(|i| {
            let added: Vec<f64> = seen[i]
                .iter()
                .zip(&direct_p50)
                .map(|(r, d)| r.0 - d)
                .collect();
            (
                all[i].0,
                med(i, |r| r.0),
                med(i, |r| r.1),
                median(&added),
                added,
            )
        })
        .collect();
    PingPong {
        rounds,
        direct: (med(0, |r| r.0), med(0, |r| r.1)),
        rows,
    }
}

/// One idle-links measurement: the proxy tree's growth per link, RSS 2 s and 5 s after the
/// last Hello, and PSS at 5 s (how the independent harness sampled it).
struct IdleRow {
    proxy: &'static str,
    links: usize,
    rss2: f64,
    rss5: f64,
    pss5: f64,
}

/// Proportional set size of a process tree, KiB (`smaps_rollup`).
fn pss_kib(pid: u32) -> u64 {
    tree_kib(pid, "smaps_rollup", "Pss:")
}

/// Opens `n` links (Hello, then silence) and measures the proxy's growth per link.
async fn idle_links(
    proxy: &'static str,
    target: SocketAddr,
    o: &ClientOpts,
    n: usize,
    pid: u32,
) -> IdleRow {
    let (rss0, pss0) = (rss_kib(pid), pss_kib(pid));
    let links = open_links(target, o, n, 32, &hello()).await;
    let opened = links.len();
    let per = |after: u64, before: u64| after.saturating_sub(before) as f64 / opened.max(1) as f64;
    // RSS has no event to wait for: it is read once the proxy has settled, then again later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss2 = per(rss_kib(pid), rss0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss5, pss5) = (per(rss_kib(pid), rss0), per(pss_kib(pid), pss0));
    drop(links);
    tokio::time::sleep(Duration::from_secs(2)).await;
    if opened < n {
        eprintln!("warning: only {opened} of {n} links opened");
    }
    IdleRow {
        proxy,
        links: n,
        rss2,
        rss5,
        pss5,
    }
}

/// `gatehouse`, or under `BENCH_WRAP` (e.g. `heaptrack -o /tmp/gh`, `perf record -g --`) for
/// profiling it under the bench's load.
fn gatehouse_cmd_wrapped(bin: &str) -> Command {
    match std::env::var("BENCH_WRAP") {
        Ok(w) if !w.trim().is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().unwrap_or_default());
            c.args(parts).arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}

fn main() {
    for tool in ["wrk", "nginx", "haproxy"] {
        if !require_binary(tool) {
            eprintln!("make bench needs wrk, nginx, haproxy and libnginx-mod-stream (apt-get install -y wrk nginx haproxy libnginx-mod-stream)");
            std::process::exit(1);
        }
    }
    let http_secs = env_num("BENCH_SECS", 15.0);
    let relay_secs = env_num("BENCH_RELAY_SECS", 5.0);
    let idle: Vec<usize> = std::env::var("BENCH_IDLE")
        .unwrap_or_else(|_| "2000,9000".into())
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(http_secs, relay_secs, idle));
}

async fn run(http_secs: f64, relay_secs: f64, idle: Vec<usize>) {
    let tmp = tempfile::tempdir().unwrap();
    let b = Bench::setup(tmp.path().to_path_buf());
    let http = if b.part("http") {
        http_rows(&b, http_secs)
    } else {
        Vec::new()
    };
    let bearer = if b.part("bearer") {
        bearer_rows(&b, http_secs)
    } else {
        Vec::new()
    };
    let relay = relay_rows(&b, relay_secs, &idle).await;
    if !http.is_empty() {
        report_http(&http, http_secs);
    }
    if !bearer.is_empty() {
        report_bearer(&bearer, http_secs);
    }
    report_relay(&relay, relay_secs);
    report_targets(&b.key_label, &http, &relay, relay_secs);
}

/// One run's certificates, files and settings, shared by every section.
struct Bench {
    dir: PathBuf,
    f: Files,
    pki: Pki,
    /// The server certificate every proxy and sink presents.
    server: gatehouse::pki::Issued,
    /// Gatehouse's `cert_dir` (agent1).
    ids: PathBuf,
    key_label: String,
    /// `BENCH_READ_BUFFER`.
    rb: Option<String>,
    gh_bin: &'static str,
    only_gh: bool,
    relay_links: Vec<usize>,
    /// `BENCH_SHAPES`.
    shapes: Vec<Shape>,
    /// `BENCH_PARTS`: `http`, `bearer`, `relay`, `pingpong`, `idle` (default all).
    parts: Vec<String>,
}

impl Bench {
    fn setup(dir: PathBuf) -> Bench {
        if is_root() {
            // nginx workers run as nobody and must read certs and write temp files here.
            let _ = Command::new("chmod")
                .args(["-R", "a+rwX"])
                .arg(&dir)
                .status();
            let _ = Command::new("chmod").args(["a+rx"]).arg(&dir).status();
        }
        // BENCH_KEYS=rsa4096: every key RSA-4096, as Icinga's CA issues them (default EC P-256).
        let rsa_bits = match std::env::var("BENCH_KEYS").as_deref() {
            Ok("rsa4096") => Some(4096),
            Ok("rsa2048") => Some(2048),
            _ => None,
        };
        let pki = Pki::with_keys(&dir, "pki", rsa_bits);
        let key_label = match rsa_bits {
            Some(bits) => format!("RSA-{bits}"),
            None => "EC P-256".to_string(),
        };
        let server = pki.server("server", &[]);
        pki.issue("client", CertSpec::new("agent1"));
        pki.issue("gatehouse", CertSpec::new("gatehouse"));
        let ids = dir.join("identities");
        std::fs::create_dir_all(&ids).unwrap();
        pki.ca
            .issue(&pki.spec(CertSpec::new("agent1")))
            .unwrap()
            .write(&ids, "agent1")
            .unwrap();
        write_pems(&pki);
        let _ = Command::new("chmod")
            .args(["-R", "a+rX"])
            .arg(&dir)
            .status();
        // Same-run A/B of two builds: BENCH_GATEHOUSE_BIN runs another gatehouse binary under
        // this same harness; BENCH_ONLY_GATEHOUSE=1 measures only Gatehouse (HTTP front and
        // relay, no peers, no ping-pong); BENCH_RELAY_LINKS picks the relay link counts (1,16).
        let gh_bin: &'static str = match std::env::var("BENCH_GATEHOUSE_BIN") {
            Ok(p) if !p.trim().is_empty() => Box::leak(p.into_boxed_str()),
            _ => gatehouse_bin(),
        };
        eprintln!("gatehouse binary: {gh_bin}");
        Bench {
            f: Files {
                dir: dir.clone(),
                pki: pki.dir.clone(),
            },
            dir,
            pki,
            server,
            ids,
            key_label,
            rb: std::env::var("BENCH_READ_BUFFER").ok(),
            gh_bin,
            only_gh: std::env::var("BENCH_ONLY_GATEHOUSE").is_ok_and(|v| v == "1"),
            relay_links: std::env::var("BENCH_RELAY_LINKS")
                .unwrap_or_else(|_| "1,16".into())
                .split(',')
                .filter_map(|v| v.trim().parse().ok())
                .filter(|n| *n > 0)
                .collect(),
            shapes: shapes(),
            parts: std::env::var("BENCH_PARTS")
                .unwrap_or_else(|_| "http,bearer,relay,pingpong,idle".into())
                .split(',')
                .map(|p| p.trim().to_string())
                .collect(),
        }
    }

    fn part(&self, name: &str) -> bool {
        self.parts.iter().any(|p| p == name)
    }

    // Each helper starts a proxy on its config in `dir`, logging to `dir`/`name`.log.

    fn nginx(&self, name: &'static str, conf: &str, port: u16) -> Proc {
        let log = self.dir.join(format!("{name}.log"));
        spawn(
            name,
            Command::new("nginx")
                .args(["-e", "stderr", "-c"])
                .arg(self.dir.join(conf))
                .args(["-g", "daemon off;"]),
            &log,
            port,
        )
    }

    fn haproxy(&self, stem: &str, port: u16) -> Proc {
        let log = self.dir.join(format!("{stem}.log"));
        spawn(
            "haproxy",
            Command::new("haproxy")
                .args(["-db", "-f"])
                .arg(self.dir.join(format!("{stem}.cfg"))),
            &log,
            port,
        )
    }

    /// Gatehouse on `stem`.yaml. The HTTP front runs as deployed, its access log on (one
    /// line per request to its log file; `BENCH_ACCESS_LOG=0` turns it off); the relay logs
    /// warnings only, as it logs no line per message anyway.
    fn gatehouse(&self, stem: &str, port: u16) -> Proc {
        let log = self.dir.join(format!("{stem}.log"));
        let access_log =
            stem == "gh-http" && std::env::var("BENCH_ACCESS_LOG").map_or(true, |v| v != "0");
        spawn(
            "gatehouse",
            gatehouse_cmd_wrapped(self.gh_bin)
                .args(["run", "-c"])
                .arg(self.dir.join(format!("{stem}.yaml")))
                .env(
                    "RUST_LOG",
                    if access_log {
                        "warn,gatehouse::access=info"
                    } else {
                        "warn"
                    },
                ),
            &log,
            port,
        )
    }
}

/// `server.pem` and `client.pem` (certificate then key), as HAProxy takes them.
fn write_pems(pki: &Pki) {
    for (pem, parts) in [
        ("server.pem", ["server.crt", "server.key"]),
        ("client.pem", ["client.crt", "client.key"]),
    ] {
        let joined: Vec<u8> = parts
            .iter()
            .flat_map(|p| std::fs::read(pki.dir.join(p)).unwrap())
            .collect();
        std::fs::write(pki.dir.join(pem), joined).unwrap();
    }
}

// --- HTTP ---

/// The HTTP section's ports: backend (mTLS), backend (plain TLS, for `direct`), nginx front,
/// HAProxy front, Gatehouse.
#[derive(Clone, Copy)]
struct HttpPorts {
    backend: u16,
    plain: u16,
    nginx: u16,
    haproxy: u16,
    gatehouse: u16,
}

/// Writes `backend.conf`, `front.conf`, `haproxy-http.cfg` and `gh-http.yaml`.
fn write_http_configs(b: &Bench, p: HttpPorts) {
    let (f, d) = (&b.f, b.dir.display());
    let (bport, pport, nport, hport, gport) = (p.backend, p.plain, p.nginx, p.haproxy, p.gatehouse);
    let backend_conf = format!(
        "{}http {{ access_log off; {} keepalive_requests 1000000; keepalive_timeout 75s;\n ssl_certificate {}; ssl_certificate_key {}; ssl_session_cache shared:B:10m;\n server {{ listen 127.0.0.1:{bport} ssl; ssl_client_certificate {}; ssl_verify_client on; location / {{ default_type application/json; return 200 '{{\"result\":0,\"text\":\"pong\"}}\\n'; }} }}\n server {{ listen 127.0.0.1:{pport} ssl; location / {{ default_type application/json; return 200 '{{\"result\":0,\"text\":\"pong\"}}\\n'; }} }} }}\n",
        f.nginx_prelude("backend", 1, false), f.nginx_http_temps("backend"), f.p("server.crt"), f.p("server.key"), f.p("ca.crt")
    );
    let front_conf = format!(
        "{}http {{ access_log off; {} keepalive_requests 1000000; keepalive_timeout 75s;\n upstream b {{ server 127.0.0.1:{bport}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 60s; }}\n server {{ listen 127.0.0.1:{nport} ssl; ssl_certificate {}; ssl_certificate_key {}; ssl_session_cache shared:F:10m;\n location / {{ proxy_pass https://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_ssl_certificate {}; proxy_ssl_certificate_key {}; proxy_ssl_trusted_certificate {}; proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_ssl_session_reuse on; }} }} }}\n",
        f.nginx_prelude("front", 2, false), f.nginx_http_temps("front"), f.p("server.crt"), f.p("server.key"), f.p("gatehouse.crt"), f.p("gatehouse.key"), f.p("ca.crt")
    );
    let haproxy_http = format!(
        "global\n  nbthread 2\n  maxconn 9000\n  ssl-default-bind-options ssl-min-ver TLSv1.2\ndefaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\n  timeout http-keep-alive 75s\n  http-reuse always\nfrontend fe\n  bind 127.0.0.1:{hport} ssl crt {}\n  default_backend be\nbackend be\n  server b1 127.0.0.1:{bport} ssl verify required ca-file {} crt {} sni str(localhost) verifyhost localhost pool-max-conn 256\n",
        f.p("server.pem"), f.p("ca.crt"), f.p("client.pem")
    );
    let gh_http = format!(
        "server: {{ threads: 2, work_stealing: {ws}, pid_file: {d}/gh-http.pid, upgrade_sock: {d}/gh-http.sock }}\nlisteners:\n  - name: http\n    address: \"127.0.0.1:{gport}\"\n    keepalive_requests: 1000000\n    tls: {{ cert: {}, key: {}, client_auth: none, alpn: [http/1.1] }}\n{rb_block}upstreams:\n  b: {{ peers: [\"127.0.0.1:{bport}\"], tls: {{ ca: {}, client_cert: {}, client_key: {}, sni: localhost }} }}\nroutes: [ {{ name: b, upstream: b }}, {{ name: kea, path_prefix: /kea, upstream: b, kea: {{ default: allow }} }} ]\nmetrics: {{ address: \"127.0.0.1:{mport}\" }}\n",
        f.p("server.crt"), f.p("server.key"), f.p("ca.crt"), f.p("gatehouse.crt"), f.p("gatehouse.key"),
        rb_block = b.rb.as_deref().map(|v| format!("    read_buffer: {v}\n")).unwrap_or_default(),
        ws = std::env::var("BENCH_WORK_STEALING").map_or(true, |v| v != "false"),
        mport = free_port(),
    );
    for (name, text) in [
        ("backend.conf", &backend_conf),
        ("front.conf", &front_conf),
        ("haproxy-http.cfg", &haproxy_http),
        ("gh-http.yaml", &gh_http),
    ] {
        std::fs::write(b.dir.join(name), text).unwrap();
    }
}

/// The Pingora floor: examples/bare_pingora (built by `make bench`) in front of the backend
/// on `bport`, and its port; `None` when it is missing or only Gatehouse is measured.
fn start_bare_pingora(b: &Bench, bport: u16) -> Option<(Proc, u16)> {
    let f = &b.f;
    let bare_bin = std::path::Path::new(b.gh_bin)
        .with_file_name("examples")
        .join("bare_pingora");
    if b.only_gh {
        None
    } else if bare_bin.exists() {
        let xport = free_port();
        let mut c = Command::new(&bare_bin);
        c.arg(format!("127.0.0.1:{xport}"))
            .args([f.p("server.crt"), f.p("server.key")])
            .arg(format!("127.0.0.1:{bport}"))
            .arg("localhost")
            .args([f.p("ca.crt"), f.p("gatehouse.crt"), f.p("gatehouse.key")]);
        Some((
            spawn("bare_pingora", &mut c, &b.dir.join("bare.log"), xport),
            xport,
        ))
    } else {
        eprintln!(
            "note: {} is missing, the bare Pingora row is skipped (cargo build --release --example bare_pingora)",
            bare_bin.display()
        );
        None
    }
}

/// wrk against each HTTP front (and the backend directly), every front's processes stopped
/// afterwards.
fn http_rows(b: &Bench, http_secs: f64) -> Vec<HttpRow> {
    let p = HttpPorts {
        backend: free_port(),
        plain: free_port(),
        nginx: free_port(),
        haproxy: free_port(),
        gatehouse: free_port(),
    };
    write_http_configs(b, p);
    let backend = b.nginx("nginx-backend", "backend.conf", p.backend);
    let front = b.nginx("nginx-front", "front.conf", p.nginx);
    let hap = b.haproxy("haproxy-http", p.haproxy);
    let gh = b.gatehouse("gh-http", p.gatehouse);
    let bare = start_bare_pingora(b, p.backend);

    let mut http = Vec::new();
    eprintln!("HTTP: wrk -t2 -c64 -d{http_secs}s keep-alive against each front ...");
    if !b.only_gh {
        http.push(wrk("direct", p.plain, http_secs, None));
        http.push(wrk("nginx", p.nginx, http_secs, Some(front.child.id())));
        http.push(wrk("haproxy", p.haproxy, http_secs, Some(hap.child.id())));
    }
    if let Some((proc, port)) = &bare {
        http.push(wrk(
            "pingora (bare)",
            *port,
            http_secs,
            Some(proc.child.id()),
        ));
    }
    http.push(wrk(
        "gatehouse",
        p.gatehouse,
        http_secs,
        Some(gh.child.id()),
    ));
    drop((gh, bare, hap, front, backend));
    http
}

/// What a bearer token costs: Gatehouse alone (access log off) in front of the backend, a
/// route without `bearer` and one taking tokens of the real test provider (tests/oidc), one
/// token per run repeated by every request (as a pipeline or an operator sends it): RS256,
/// ES256, EdDSA. Skipped, loudly, when the provider cannot run here.
fn bearer_rows(b: &Bench, secs: f64) -> Vec<HttpRow> {
    let Some(idp) = common::oidc::Idp::start() else {
        return Vec::new();
    };
    let (bport, gport) = (free_port(), free_port());
    let f = &b.f;
    let backend = format!(
        "{}http {{ access_log off; {} keepalive_requests 1000000; keepalive_timeout 75s;\n server {{ listen 127.0.0.1:{bport}; location / {{ default_type application/json; return 200 '{{\"result\":0,\"text\":\"pong\"}}\\n'; }} }} }}\n",
        f.nginx_prelude("backend-bearer", 1, false), f.nginx_http_temps("backend-bearer"),
    );
    let gh = format!(
        "server: {{ threads: 2, pid_file: {d}/gh-bearer.pid, upgrade_sock: {d}/gh-bearer.sock }}\nlisteners:\n  - {{ name: http, address: \"127.0.0.1:{gport}\", keepalive_requests: 1000000, tls: {{ cert: {c}, key: {k}, client_auth: none, alpn: [http/1.1] }} }}\nupstreams: {{ b: {{ peers: [\"127.0.0.1:{bport}\"] }} }}\nissuers: {{ idp: {{ issuer: \"{iss}\", audience: urn:gatehouse, ca: {ca} }} }}\nroutes:\n  - {{ name: tokens, path_prefix: /t, upstream: b, bearer: {{ issuers: [idp] }}, allow: [\"claim:groups=dhcp-admins\"] }}\n  - {{ name: plain, upstream: b }}\n",
        d = b.dir.display(), c = f.p("server.crt"), k = f.p("server.key"),
        iss = idp.issuer(), ca = idp.ca_pem_path().display(),
    );
    std::fs::write(b.dir.join("backend-bearer.conf"), backend).unwrap();
    std::fs::write(b.dir.join("gh-bearer.yaml"), gh).unwrap();
    let backend = b.nginx("nginx-backend-bearer", "backend-bearer.conf", bport);
    let proc = b.gatehouse("gh-bearer", gport);
    let pid = Some(proc.child.id());
    let token = |resource: &str| idp.token("gatehouse-admin", "admin-secret", resource);
    let (rs, es, ed) = (
        token("urn:gatehouse"),
        token("urn:gatehouse:es256"),
        token("urn:gatehouse:eddsa"),
    );
    eprintln!("bearer: wrk -t2 -c64 -d{secs}s, one token per run ...");
    let rows = vec![
        wrk_at("no bearer route", gport, "/", None, secs, pid),
        wrk_at(
            "no bearer route, with a token",
            gport,
            "/",
            Some(&rs),
            secs,
            pid,
        ),
        wrk_at("RS256", gport, "/t", Some(&rs), secs, pid),
        wrk_at("ES256", gport, "/t", Some(&es), secs, pid),
        wrk_at("EdDSA", gport, "/t", Some(&ed), secs, pid),
    ];
    drop((proc, backend, idp));
    rows
}

fn report_bearer(rows: &[HttpRow], secs: f64) {
    let cpu = |r: &HttpRow| r.cpu_pct.map_or(f64::NAN, |c| c / 100.0 / r.rps * 1e6);
    let base = rows.first().map_or(f64::NAN, cpu);
    println!("\n## Bearer tokens (wrk -t2 -c64 -d{secs}s, keep-alive, one token repeated; Gatehouse alone, plain backend, access log off)");
    println!("| route, token | req/s | p99 ms | errors | CPU µs/req | vs no bearer route |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {} | {:.1} | {:+.1} µs |",
            r.name,
            r.rps,
            r.p99_ms,
            r.errors,
            cpu(r),
            cpu(r) - base
        );
    }
}

// --- relay ---

/// The relay section's front ports, each proxy's count and echo listener.
#[derive(Clone, Copy)]
struct RelayPorts {
    g_count: u16,
    g_echo: u16,
    h_count: u16,
    h_echo: u16,
    n_count: u16,
    n_echo: u16,
}

/// Writes `gh-relay.yaml`, `haproxy-relay.cfg` and `stream.conf`: each proxy terminating TLS
/// with client certificates required in front of the `count` and `echo` sinks.
fn write_relay_configs(b: &Bench, p: RelayPorts, count: SocketAddr, echo: SocketAddr) {
    let f = &b.f;
    let RelayPorts {
        g_count,
        g_echo,
        h_count,
        h_echo,
        n_count,
        n_echo,
    } = p;
    // Every bench link presents the same client certificate (agent1), so the per-identity
    // link limit (default 1, see cluster.limits.max_links_per_identity) is lifted here; and
    // every link comes from 127.0.0.1, so the per-address handshake limit and the listener's
    // share of the descriptor limit (4,500 each with two listeners at `ulimit -n` 20,000) are
    // lifted too: with them the 9,000-link run measured 4,500 links.
    let gh_relay = format!(
        "server: {{ threads: 2, pid_file: {d}/gh-relay.pid, upgrade_sock: {d}/gh-relay.sock }}\nlisteners:\n  - {{ name: count, address: \"127.0.0.1:{g_count}\", protocols: [cluster], max_handshakes_per_ip: 100000, max_connections: 100000, {rb_flow}tls: {{ cert: {c}, key: {k}, client_auth: required, client_ca: {ca} }} }}\n  - {{ name: echo, address: \"127.0.0.1:{g_echo}\", protocols: [cluster], max_handshakes_per_ip: 100000, max_connections: 100000, {rb_flow}tls: {{ cert: {c}, key: {k}, client_auth: required, client_ca: {ca} }} }}\nupstreams:\n  count: {{ peers: [\"{cs}\"], tls: {{ ca: {ca}, client_cert: {gc}, client_key: {gk}, sni: localhost }} }}\n  echo: {{ peers: [\"{es}\"], tls: {{ ca: {ca}, client_cert: {gc}, client_key: {gk}, sni: localhost }} }}\ncluster:\n  routes: [ {{ sni: count, upstream: count }}, {{ sni: echo, upstream: echo }} ]\n  upstream_identity: {{ cert_dir: {ids} }}\n  limits: {{ idle_timeout: 600s, max_links_per_identity: 1000000 }}\n",
        d = b.dir.display(), c = f.p("server.crt"), k = f.p("server.key"), ca = f.p("ca.crt"), gc = f.p("gatehouse.crt"), gk = f.p("gatehouse.key"),
        cs = count, es = echo, ids = b.ids.display(),
        rb_flow = b.rb.as_deref().map(|v| format!("read_buffer: {v}, ")).unwrap_or_default(),
    );
    let hap_relay = format!(
        "global\n  nbthread 2\n  maxconn 9000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 600s\n  timeout server 600s\nfrontend count\n  bind 127.0.0.1:{h_count} ssl crt {sp} ca-file {ca} verify required\n  default_backend count\nfrontend echo\n  bind 127.0.0.1:{h_echo} ssl crt {sp} ca-file {ca} verify required\n  default_backend echo\nbackend count\n  server s 127.0.0.1:{cp} ssl verify required ca-file {ca} crt {cl} sni str(localhost)\nbackend echo\n  server s 127.0.0.1:{ep} ssl verify required ca-file {ca} crt {cl} sni str(localhost)\n",
        sp = f.p("server.pem"), ca = f.p("ca.crt"), cl = f.p("client.pem"), cp = count.port(), ep = echo.port()
    );
    let stream_server = |listen: u16, to: SocketAddr| {
        format!(
            " server {{ listen 127.0.0.1:{listen} ssl; ssl_certificate {}; ssl_certificate_key {}; ssl_client_certificate {}; ssl_verify_client on;\n  proxy_pass {to}; proxy_ssl on; proxy_ssl_certificate {}; proxy_ssl_certificate_key {}; proxy_ssl_trusted_certificate {}; proxy_ssl_verify on; proxy_ssl_name localhost; proxy_ssl_server_name on; proxy_timeout 600s; }}\n",
            f.p("server.crt"), f.p("server.key"), f.p("ca.crt"), f.p("client.crt"), f.p("client.key"), f.p("ca.crt")
        )
    };
    let nginx_stream = format!(
        "{}stream {{\n{}{}}}\n",
        f.nginx_prelude("stream", 2, true),
        stream_server(n_count, count),
        stream_server(n_echo, echo)
    );
    std::fs::write(b.dir.join("gh-relay.yaml"), gh_relay).unwrap();
    std::fs::write(b.dir.join("haproxy-relay.cfg"), hap_relay).unwrap();
    std::fs::write(b.dir.join("stream.conf"), nginx_stream).unwrap();
}

fn start_relays(b: &Bench, p: RelayPorts) -> [Proc; 3] {
    [
        b.gatehouse("gh-relay", p.g_count),
        b.haproxy("haproxy-relay", p.h_count),
        b.nginx("nginx-stream", "stream.conf", p.n_count),
    ]
}

/// Each relay proxy: (name, count port, echo port, pid).
fn with_ports(p: RelayPorts, procs: &[Proc; 3]) -> [(&'static str, u16, u16, u32); 3] {
    [
        ("gatehouse", p.g_count, p.g_echo, procs[0].child.id()),
        ("haproxy", p.h_count, p.h_echo, procs[1].child.id()),
        ("nginx", p.n_count, p.n_echo, procs[2].child.id()),
    ]
}

/// The relay section's measurements.
struct RelayResults {
    relay: Vec<RelayRun>,
    pp: Option<PingPong>,
    idle_rows: Vec<IdleRow>,
}

/// The client options of the relay section. The client does not verify the proxies (its CPU
/// is not what is measured); SNI picks Gatehouse's route. Every proxy requires and verifies
/// the client certificate.
struct RelayClients {
    count: ClientOpts,
    echo: ClientOpts,
    local: ClientOpts,
}

impl RelayClients {
    fn new(pki: &Pki) -> RelayClients {
        let agent = |sni: &str| ClientOpts {
            ca: None,
            cert: Some(pki.paths("client")),
            sni: Some(sni.into()),
            tls12: false,
        };
        RelayClients {
            count: agent("count"),
            echo: agent("echo"),
            local: agent("localhost"),
        }
    }

    /// Gatehouse's options for its `count` route, the others' otherwise.
    fn count_for(&self, proxy: &str) -> &ClientOpts {
        if proxy == "gatehouse" {
            &self.count
        } else {
            &self.local
        }
    }

    /// Gatehouse's options for its `echo` route, the others' otherwise.
    fn echo_for(&self, proxy: &str) -> &ClientOpts {
        if proxy == "gatehouse" {
            &self.echo
        } else {
            &self.local
        }
    }
}

/// Throughput, ping-pong and idle links through each relay proxy (the parts `b.parts` names).
async fn relay_rows(b: &Bench, relay_secs: f64, idle: &[usize]) -> RelayResults {
    let sink = |mode| Sink::start(acceptor(&b.server, Some(b.pki.ca.cert()), false), mode);
    let count_sink = sink(SinkMode::Count).await;
    let echo_sink = sink(SinkMode::Echo).await;
    let p = RelayPorts {
        g_count: free_port(),
        g_echo: free_port(),
        h_count: free_port(),
        h_echo: free_port(),
        n_count: free_port(),
        n_echo: free_port(),
    };
    write_relay_configs(b, p, count_sink.addr, echo_sink.addr);
    let mut relays = start_relays(b, p);
    let c = RelayClients::new(&b.pki);
    let proxies: Vec<_> = with_ports(p, &relays)
        .into_iter()
        .filter(|r| !b.only_gh || r.0 == "gatehouse")
        .collect();
    let relay = if b.part("relay") {
        throughput_rows(b, &c, &count_sink, &proxies, relay_secs).await
    } else {
        Vec::new()
    };
    let pp = if b.part("pingpong") && !b.only_gh {
        let rounds = env_num("BENCH_PINGPONG_ROUNDS", 5.0).max(1.0) as usize;
        eprintln!("ping-pong: {rounds} rounds ...");
        let paths: Vec<_> = proxies
            .iter()
            .map(|(name, _, eport, _)| (*name, addr(*eport), c.echo_for(name)))
            .collect();
        Some(ping_pong_rounds((echo_sink.addr, &c.local), &paths, rounds).await)
    } else {
        None
    };
    let mut idle_rows = Vec::new();
    for n in idle.iter().filter(|_| b.part("idle")) {
        eprintln!("idle: {n} links per proxy ...");
        // Fresh processes for each count: memory an allocator kept from the previous count
        // (or from the throughput runs) must not flatter the next.
        drop(relays); // stopped before the new ones bind the same ports
        relays = start_relays(b, p);
        for (name, cport, _, pid) in with_ports(p, &relays) {
            if b.only_gh && name != "gatehouse" {
                continue;
            }
            let o = c.count_for(name);
            idle_rows.push(idle_links(name, addr(cport), o, *n, pid).await);
        }
    }
    drop(relays);
    RelayResults {
        relay,
        pp,
        idle_rows,
    }
}

/// Pipelined throughput, straight to the sink and through each proxy: the first shape at each
/// link count, every other shape at the largest (R1's 16).
async fn throughput_rows(
    b: &Bench,
    c: &RelayClients,
    count_sink: &Sink,
    proxies: &[(&'static str, u16, u16, u32)],
    relay_secs: f64,
) -> Vec<RelayRun> {
    let most = b.relay_links.iter().copied().max().unwrap_or(16);
    let mut runs = Vec::new();
    for (i, shape) in b.shapes.iter().copied().enumerate() {
        for links in b
            .relay_links
            .iter()
            .copied()
            .filter(|l| i == 0 || *l == most)
        {
            eprintln!("relay: {links} links, {} ...", shape.label(relay_secs));
            let mut paths = vec![("direct", count_sink.addr, &c.local, None)];
            if b.only_gh {
                paths.clear();
            }
            for (name, cport, _, pid) in proxies {
                paths.push((*name, addr(*cport), c.count_for(name), Some(*pid)));
            }
            for (path, target, o, pid) in paths {
                let (rate, cpu, sys) =
                    relay_throughput(target, o, links, count_sink, pid, (shape, relay_secs)).await;
                runs.push(RelayRun {
                    path,
                    shape,
                    links,
                    rate,
                    cpu,
                    sys,
                });
            }
        }
    }
    runs
}

// --- report ---

/// nginx's (req/s, p99 ms), NaN when it was not measured.
fn nginx_http(http: &[HttpRow]) -> (f64, f64) {
    http.iter()
        .find(|r| r.name == "nginx")
        .map(|r| (r.rps, r.p99_ms))
        .unwrap_or((f64::NAN, f64::NAN))
}

fn report_http(http: &[HttpRow], http_secs: f64) {
    let nginx_http = nginx_http(http);
    println!("\n## HTTP (wrk -t2 -c64 -d{http_secs}s, keep-alive; backend nginx with mTLS; fronts re-originate mTLS; Gatehouse with its access log, metrics listener and a Kea route on)");
    println!(
        "| front | req/s | p50 ms | p99 ms | errors | front CPU | CPU µs/req | req/s vs nginx | p99 vs nginx |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in http {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {:.2}× | {:.2}× |",
            r.name,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.cpu_pct
                .map(|c| format!("{c:.0}%"))
                .unwrap_or_else(|| "-".into()),
            r.cpu_pct
                .map(|c| format!("{:.1}", c / 100.0 / r.rps * 1e6))
                .unwrap_or_else(|| "-".into()),
            r.rps / nginx_http.0,
            r.p99_ms / nginx_http.1
        );
    }
}

fn report_relay(r: &RelayResults, relay_secs: f64) {
    let shapes: Vec<Shape> = {
        let mut v: Vec<Shape> = Vec::new();
        for run in &r.relay {
            if !v
                .iter()
                .any(|s| s.frames_per_write == run.shape.frames_per_write)
            {
                v.push(run.shape);
            }
        }
        v
    };
    if !r.relay.is_empty() {
        println!("\n## JSON-RPC relay (~{} B event::CheckResult frames, pipelined; mTLS both sides; sink counts)", check_result().len());
        println!("| load shape | path | links | msgs/s | proxy CPU µs/msg |");
        println!("|---|---|---:|---:|---:|");
        for run in &r.relay {
            println!(
                "| {} | {} | {} | {:.0} | {} |",
                run.shape.label(relay_secs),
                run.path,
                run.links,
                run.rate,
                run.cpu
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        report_syscalls(r, &shapes, relay_secs);
    }
    if let Some(pp) = &r.pp {
        report_ping_pong(pp);
    }
    if !r.idle_rows.is_empty() {
        println!("\n## Idle authenticated links (Hello, then silence): proxy growth per link, KiB");
        println!("| proxy | links | RSS at 2 s | RSS at 5 s | PSS at 5 s |");
        println!("|---|---:|---:|---:|---:|");
        for i in &r.idle_rows {
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} |",
                i.proxy, i.links, i.rss2, i.rss5, i.pss5
            );
        }
    }
}

/// System calls per client TLS record into the proxy, side by side.
fn report_syscalls(r: &RelayResults, shapes: &[Shape], relay_secs: f64) {
    let rows: Vec<&RelayRun> = r.relay.iter().filter(|x| x.sys.is_some()).collect();
    if rows.is_empty() {
        println!("\n(no system-call counts: perf missing or not permitted; `apt-get install linux-perf`, run as root)");
        return;
    }
    println!("\n## System calls per TLS record (perf stat on the proxy's syscall tracepoints, {SYSCALL_SECS} s after each CPU window, same load)");
    println!("Records in = the clients' TLS records into the proxy (each client write is ⌈bytes / 16 KiB⌉ records); reads and writes count every call that moves socket bytes, on both sides of the proxy.");
    println!("| load shape | proxy | links | records in/s | reads per record | writes per record | epoll waits per record | all syscalls per record | all per 1,000 msgs |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for shape in shapes {
        for run in rows
            .iter()
            .filter(|x| x.shape.frames_per_write == shape.frames_per_write)
        {
            let (Some((s, msgs)), Some(rec)) = (run.sys, run.records_in()) else {
                continue;
            };
            println!(
                "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
                shape.label(relay_secs),
                run.path,
                run.links,
                rec / SYSCALL_SECS,
                s.reads / rec,
                s.writes / rec,
                s.polls / rec,
                s.all / rec,
                s.all / msgs * 1000.0
            );
        }
    }
}

fn report_ping_pong(pp: &PingPong) {
    println!(
        "\n## Ping-pong (one message in flight, echo sink), µs: medians of {} alternating rounds of 2,000",
        pp.rounds
    );
    println!("| path | p50 | p99 | added p50 per crossing | added p50, each round |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| direct | {:.0} | {:.0} | - | - |",
        pp.direct.0, pp.direct.1
    );
    for (name, p50, p99, added, each) in &pp.rows {
        let each: Vec<String> = each.iter().map(|a| format!("{a:.0}")).collect();
        println!(
            "| {name} | {p50:.0} | {p99:.0} | {added:.0} | {} |",
            each.join(", ")
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "holds"
    } else {
        "MISSED"
    }
}

const NO_PEERS: &str = "neither HAProxy nor nginx measured in this run: no verdict";

/// Issue 27's targets measured in this run: R1 (every load shape), R3, P4 and H1. R2 and R2b
/// (reconnect storms) are `benches/storm.rs`, which `make bench` runs next.
fn report_targets(key_label: &str, http: &[HttpRow], r: &RelayResults, relay_secs: f64) {
    println!("\n## Targets");
    report_r1(&r.relay, relay_secs);
    report_r3(key_label, &r.idle_rows);
    if let Some(pp) = &r.pp {
        report_p4(pp);
    }
    report_h1(http);
    println!("- R2, R2b reconnect storms: see the storm tables (`cargo bench --bench storm`)");
}

/// R1: Gatehouse's relay with 16 links against the better of HAProxy and nginx, in each load
/// shape; it holds only if it holds in every shape.
fn report_r1(relay: &[RelayRun], relay_secs: f64) {
    let mut all_hold = true;
    let mut any = false;
    for gh in relay
        .iter()
        .filter(|r| r.path == "gatehouse" && r.links == 16)
    {
        let peers: Vec<&RelayRun> = relay
            .iter()
            .filter(|r| {
                r.links == 16
                    && r.shape.frames_per_write == gh.shape.frames_per_write
                    && (r.path == "haproxy" || r.path == "nginx")
            })
            .collect();
        if peers.is_empty() {
            println!("- R1 relay, 16 links: {NO_PEERS}");
            return;
        }
        any = true;
        let best_rate = peers.iter().map(|r| r.rate).fold(0.0, f64::max);
        let best_cpu = peers
            .iter()
            .filter_map(|r| r.cpu)
            .fold(f64::INFINITY, f64::min);
        let (ratio, cpu) = (gh.rate / best_rate, gh.cpu.unwrap_or(f64::NAN));
        let ok = ratio >= 1.2 && cpu / best_cpu <= 0.8;
        all_hold &= ok;
        println!(
            "- R1 relay, 16 links, {}: msgs/s ≥ 1.2× the better of HAProxy/nginx and CPU/msg ≤ 0.8× the better peer's: {ratio:.2}×, {cpu:.2} µs/msg = {:.2}× ({best_cpu:.2} µs) → {}",
            gh.shape.label(relay_secs),
            cpu / best_cpu,
            verdict(ok)
        );
    }
    if any {
        println!("- R1 over every load shape → {}", verdict(all_hold));
    }
}

/// R3: ≤ 30 KiB per idle link at every count, RSS at 2 s and at 5 s.
fn report_r3(key_label: &str, idle: &[IdleRow]) {
    let gh: Vec<&IdleRow> = idle.iter().filter(|r| r.proxy == "gatehouse").collect();
    if gh.is_empty() {
        return;
    }
    let worst = gh.iter().map(|r| r.rss2.max(r.rss5)).fold(0.0, f64::max);
    let each: Vec<String> = gh
        .iter()
        .map(|r| {
            format!(
                "{:.1} / {:.1} KiB at {} (PSS {:.1})",
                r.rss2, r.rss5, r.links, r.pss5
            )
        })
        .collect();
    println!(
        "- R3 idle links ≤ 30 KiB RSS per link ({key_label} certificates), RSS at 2 s / 5 s: {} → {}",
        each.join(", "),
        verdict(worst <= 30.0)
    );
}

/// P4: Gatehouse's added p50 per crossing ≤ the better peer's, medians over the rounds.
fn report_p4(pp: &PingPong) {
    let added = |n: &str| pp.rows.iter().find(|r| r.0 == n).map(|r| r.3);
    let peer = [added("haproxy"), added("nginx")]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
    if let Some(gh) = added("gatehouse") {
        println!(
            "- P4 added latency per crossing ≤ the better peer's (median of {} alternating rounds): {gh:.0} µs against {peer:.0} µs → {}",
            pp.rounds,
            verdict(gh <= peer)
        );
    }
}

/// H1: Gatehouse's CPU per request ≤ 1.05× bare Pingora's, same run.
fn report_h1(http: &[HttpRow]) {
    let cpu = |n: &str| {
        http.iter()
            .find(|r| r.name == n)
            .and_then(|r| r.cpu_pct.map(|c| c / 100.0 / r.rps * 1e6))
    };
    match (cpu("gatehouse"), cpu("pingora (bare)")) {
        (Some(g), Some(p)) => println!(
            "- H1 HTTP CPU per request ≤ 1.05× bare Pingora's: {g:.1} µs against {p:.1} µs = {:.2}× → {}",
            g / p,
            verdict(g / p <= 1.05)
        ),
        (Some(_), None) => println!("- H1 HTTP: bare Pingora not measured in this run: no verdict"),
        _ => {}
    }
    let nginx = nginx_http(http);
    if let (Some(g), false) = (
        http.iter().find(|r| r.name == "gatehouse"),
        nginx.0.is_nan(),
    ) {
        println!(
            "- (issue 5, for the record) P1 HTTP ≥ 1.3× nginx req/s and p99 ≤ 0.8× nginx: {:.2}× req/s, {:.2}× p99",
            g.rps / nginx.0,
            g.p99_ms / nginx.1
        );
    }
}
