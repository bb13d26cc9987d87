//! System calls of a process tree over a window, counted by `perf stat` on the kernel's
//! syscall tracepoints (no sampling, no ptrace: the proxy runs at full speed).

use std::process::{Child, Command, Stdio};

/// Counts over one window. `reads` and `writes` cover every syscall that moves socket bytes
/// (read/readv/recvfrom/recvmsg, write/writev/sendto/sendmsg); `polls` is epoll_wait/pwait.
#[derive(Clone, Copy, Debug, Default)]
pub struct Syscalls {
    pub all: f64,
    pub reads: f64,
    pub writes: f64,
    pub polls: f64,
}

const READS: [&str; 4] = ["read", "readv", "recvfrom", "recvmsg"];
const WRITES: [&str; 4] = ["write", "writev", "sendto", "sendmsg"];
const POLLS: [&str; 2] = ["epoll_wait", "epoll_pwait"];

/// `perf stat` attached to `pids` (every thread of each) for `secs`; `None` when perf is
/// missing or `BENCH_SYSCALLS=0`.
pub fn start(pids: &[u32], secs: f64) -> Option<Child> {
    if std::env::var("BENCH_SYSCALLS").is_ok_and(|v| v == "0") {
        return None;
    }
    let mut events = vec!["raw_syscalls:sys_enter".to_string()];
    for name in READS.iter().chain(&WRITES).chain(&POLLS) {
        events.push(format!("syscalls:sys_enter_{name}"));
    }
    let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
    Command::new("perf")
        .args([
            "stat",
            "-x,",
            "-e",
            &events.join(","),
            "-p",
            &pids.join(","),
        ])
        .args(["--", "sleep", &format!("{secs:.3}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

/// The counts `start`'s perf printed, once it has ended; `None` if it could not count.
pub fn finish(child: Child) -> Option<Syscalls> {
    let out = child.wait_with_output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let mut s = Syscalls::default();
    let mut seen = false;
    for line in text.lines() {
        let mut f = line.split(',');
        let (Some(count), Some(_unit), Some(event)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let Ok(n) = count.parse::<f64>() else {
            continue;
        };
        seen = true;
        let name = event.strip_prefix("syscalls:sys_enter_").unwrap_or("");
        if event == "raw_syscalls:sys_enter" {
            s.all += n;
        } else if READS.contains(&name) {
            s.reads += n;
        } else if WRITES.contains(&name) {
            s.writes += n;
        } else if POLLS.contains(&name) {
            s.polls += n;
        }
    }
    if !seen {
        eprintln!("note: perf counted no system calls ({})", text.trim());
    }
    seen.then_some(s)
}
