//! Process plumbing shared by the end-to-end benches: spawning proxies, waiting for their
//! port, and reading a process tree's CPU time, memory and open files from /proc.

#![allow(dead_code)]

pub mod syscalls;

use crate::common::{tls_connect, ClientOpts};
use gatehouse::cluster::codec;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A number from the environment, or `default`.
pub fn env_num(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `127.0.0.1:port`.
pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// === processes ===

/// A spawned proxy, stopped on drop.
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
}

/// The whole process group gets SIGINT (fast shutdown for nginx, HAProxy and Pingora alike;
/// under `BENCH_WRAP`, `perf record` and Gatehouse both stop and perf writes its data), then
/// SIGKILL after 5 s. Killing only the leader left nginx workers running, orphans that
/// skewed every later run on the machine.
impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        let group = Pid::from_raw(pid);
        let _ = killpg(group, Signal::SIGINT);
        let child = &mut self.child;
        crate::common::first_within(Duration::from_secs(5), || child.try_wait().ok().flatten());
        // Also reaps workers that outlived their master.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Starts `cmd` in a process group of its own, with stderr to `log`, and returns once it
/// listens on `port`.
pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path, port: u16) -> Proc {
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut p = Proc { name, child };
    let deadline = Instant::now() + Duration::from_secs(15);
    crate::common::wait_listening(name, &mut p.child, addr(port), deadline, log);
    p
}

/// PIDs of `pid` and all its descendants.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<u32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// CPU seconds (user + system) in a `/proc/…/stat` file (a process's or a thread's).
pub fn stat_cpu_secs(stat: &Path) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// CPU seconds (user + system) of a process tree.
pub fn cpu_secs(pid: u32) -> f64 {
    tree(pid)
        .iter()
        .map(|p| stat_cpu_secs(Path::new(&format!("/proc/{p}/stat"))))
        .sum()
}

/// The sum over a process tree of a `/proc/<pid>/<file>` line's KiB (`VmRSS:` in `status`,
/// `Pss:` in `smaps_rollup`).
pub fn tree_kib(pid: u32, file: &str, key: &str) -> u64 {
    tree(pid)
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/{file}"))
                .unwrap_or_default()
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// Resident memory of a process tree, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    tree_kib(pid, "status", "VmRSS:")
}

/// Open file descriptors of one process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A real-sized (~600 bytes) `event::CheckResult` netstring.
pub fn check_result() -> Vec<u8> {
    let output = "x".repeat(430);
    codec::encode(format!(
        r#"{{"jsonrpc":"2.0","method":"event::CheckResult","params":{{"host":"agent1-host","cr":{{"output":"{output}","state":0.0,"exit_status":0.0,"execution_start":1795320932.5}}}},"ts":1795320932.5}}"#
    ).as_bytes())
}

/// An `icinga::Hello` netstring, as an agent sends first.
pub fn hello() -> Vec<u8> {
    codec::encode(
        br#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}"#,
    )
}

/// Opens up to `n` links to `target` (at most `parallel` handshakes at once), each sending
/// `first`; returns the links that opened.
pub async fn open_links(
    target: SocketAddr,
    o: &ClientOpts,
    n: usize,
    parallel: usize,
    first: &[u8],
) -> Vec<tokio_boring::SslStream<tokio::net::TcpStream>> {
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let first: Arc<[u8]> = first.into();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (o, first, sem) = (o.clone(), first.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            let mut s = tls_connect(target, &o).await.ok()?;
            s.write_all(&first).await.ok()?;
            Some(s)
        }));
    }
    let mut links = Vec::with_capacity(n);
    for h in handles {
        if let Ok(Some(s)) = h.await {
            links.push(s);
        }
    }
    links
}
