//! Messages per second through relayed cluster links, and the latency one relay crossing adds.
//!
//! Runs the release `gatehouse` binary in front of an in-process netstring sink that requires
//! client certificates. Load: ~600-byte `event::CheckResult` frames, pipelined, over 1 and 16
//! mTLS links; counted at the sink. CPU per message is the Gatehouse process's CPU time
//! (utime + stime) over the measured window divided by the messages the sink counted.
//! `GATEHOUSE_BENCH_SECS` sets the measured window (default 5 s, after 1 s of warm-up).

#[path = "../tests/common/mod.rs"]
mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::pki::CertSpec;
use gatehouse::rpc::codec;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRAMES_PER_WRITE: usize = 64;

fn check_result() -> Vec<u8> {
    let output = "x".repeat(430);
    codec::encode(format!(
        r#"{{"jsonrpc":"2.0","method":"event::CheckResult","params":{{"host":"agent1-host","cr":{{"output":"{output}","state":0.0,"exit_status":0.0,"execution_start":1795320932.5}}}},"ts":1795320932.5}}"#
    ).as_bytes())
}

/// CPU time (user + system) of `pid`, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/pid/stat; `after` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}

struct Row {
    path: &'static str,
    links: usize,
    msgs_per_sec: f64,
    cpu_us_per_msg: Option<f64>,
}

async fn throughput(
    path: &'static str,
    target: SocketAddr,
    o: &ClientOpts,
    links: usize,
    sink: &Sink,
    pid: Option<u32>,
    secs: f64,
) -> Row {
    let stop = Arc::new(AtomicBool::new(false));
    let frame = check_result();
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * FRAMES_PER_WRITE)
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
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (n0, c0, t0) = (
        sink.count.load(Ordering::Relaxed),
        pid.map(cpu_secs),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (n1, c1, dt) = (
        sink.count.load(Ordering::Relaxed),
        pid.map(cpu_secs),
        t0.elapsed(),
    );
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    // Let in-flight data drain so the next measurement starts on an idle machine.
    let mut last = u64::MAX;
    while sink.count.load(Ordering::Relaxed) != last {
        last = sink.count.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let msgs = (n1 - n0) as f64;
    Row {
        path,
        links,
        msgs_per_sec: msgs / dt.as_secs_f64(),
        cpu_us_per_msg: c0.zip(c1).map(|(a, b)| (b - a) * 1e6 / msgs.max(1.0)),
    }
}

/// One message in flight to an echoing sink: round-trip percentiles in µs.
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

fn main() {
    let secs: f64 = std::env::var("GATEHOUSE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let icinga = Pki::new(dir, "icinga");
        let master = icinga.server("master1", &["master1"]);
        icinga.issue("agent1", CertSpec::new("agent1"));
        icinga.issue("edge", CertSpec::new("gatehouse-edge"));
        let ids = dir.join("identities");
        std::fs::create_dir_all(&ids).unwrap();
        icinga.ca.issue(&CertSpec::new("agent1")).unwrap().write(&ids, "agent1").unwrap();

        let count_sink = Sink::start(acceptor(&master, Some(icinga.ca.cert()), false), SinkMode::Count).await;
        let echo_sink = Sink::start(acceptor(&master, Some(icinga.ca.cert()), false), SinkMode::Echo).await;
        let port = free_port();
        let i = icinga.dir.display();
        let yaml = format!(
            r#"listeners:
  - name: cluster
    address: "127.0.0.1:{port}"
    protocols: [jsonrpc]
    tls:
      cert: {i}/master1.crt
      key: {i}/master1.key
      client_auth: optional
      client_ca: {i}/ca.crt
upstreams:
  count: {{ peers: ["{count}"], tls: {{ ca: {i}/ca.crt, client_cert: {i}/edge.crt, client_key: {i}/edge.key, sni: master1 }} }}
  echo: {{ peers: ["{echo}"], tls: {{ ca: {i}/ca.crt, client_cert: {i}/edge.crt, client_key: {i}/edge.key, sni: master1 }} }}
jsonrpc:
  routes:
    - {{ sni: master1, upstream: count }}
    - {{ sni: echo, upstream: echo }}
  upstream_identity: {{ cert_dir: {ids} }}
  limits: {{ idle_timeout: 600s }}
"#,
            count = count_sink.addr,
            echo = echo_sink.addr,
            ids = ids.display()
        );
        let gh = Gatehouse::start(dir, &yaml, SocketAddr::from(([127, 0, 0, 1], port)));
        let pid = gh.child.id();
        let gh_addr = SocketAddr::from(([127, 0, 0, 1], port));
        let agent = |sni: &str| ClientOpts { ca: None, cert: Some(icinga.paths("agent1")), sni: Some(sni.into()), tls12: false };

        let mut rows = Vec::new();
        for links in [1, 16] {
            rows.push(throughput("direct", count_sink.addr, &agent("master1"), links, &count_sink, None, secs).await);
            rows.push(throughput("gatehouse", gh_addr, &agent("master1"), links, &count_sink, Some(pid), secs).await);
        }
        let direct = ping_pong(echo_sink.addr, &agent("master1"), 5000).await;
        let via = ping_pong(gh_addr, &agent("echo"), 5000).await;

        println!("\nJSON-RPC relay: ~{}-byte event::CheckResult frames, pipelined, mTLS both sides, {secs} s window", check_result().len());
        println!("{:<10} {:>5} {:>14} {:>20}", "path", "links", "msgs/s", "proxy CPU µs/msg");
        for r in &rows {
            let cpu = r.cpu_us_per_msg.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into());
            println!("{:<10} {:>5} {:>14.0} {:>20}", r.path, r.links, r.msgs_per_sec, cpu);
        }
        println!("ping-pong RTT (one message in flight, echo upstream): direct p50 {:.0} µs p99 {:.0} µs; via gatehouse p50 {:.0} µs p99 {:.0} µs; added per crossing p50 {:.0} µs",
            direct.0, direct.1, via.0, via.1, via.0 - direct.0);
        let links = gh.log_text().matches("link open").count();
        println!("(gatehouse opened {links} relayed links)");
    });
}
