//! Gatehouse under test: the binary as a child process or the library built in this process
//! ([`Gatehouse`]), the example programs, one-shot `gatehouse` commands, and what /proc says
//! about a process.

use super::client::metrics_text;
use super::conf::{self, Conf};
use super::wait::{
    eventually_some, first_within, wait_for, wait_listening, wait_until_listening, POLL,
};
use gatehouse::audit::{AuditEvent, AuditSink};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

    /// [`Gatehouse::start_upgrade`], returning once the new process listens on
    /// `server.upgrade_sock` (it replaces the file there), as `gatehouse upgrade` waits before
    /// it sends SIGQUIT: the old process hands its sockets over at once, and stops whatever
    /// happens. Panics with the new process's log if it exits first or takes 10 s.
    pub fn start_upgrade_listening(&self) -> Gatehouse {
        use std::os::unix::fs::MetadataExt;
        let sock = self
            .conf
            .server
            .as_ref()
            .and_then(|s| s.upgrade_sock.clone())
            .expect("a server.upgrade_sock");
        let inode = || std::fs::metadata(&sock).ok().map(|m| (m.dev(), m.ino()));
        let stale = inode();
        let mut new = self.start_upgrade();
        let log = self.dir.join("gatehouse-new.log");
        let listening = || {
            if let Some(status) = new.wait_exit(Duration::ZERO) {
                panic!("the new process exited with {status}:\n{}", new.log_text());
            }
            inode().filter(|i| Some(*i) != stale)
        };
        wait_for(
            "the new process to listen on server.upgrade_sock",
            Duration::from_secs(10),
            listening,
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
        new
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
        first_within(within, || child.try_wait().ok().flatten())
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
        let line = || {
            let log = self.log_text();
            log.lines().find(|l| l.contains(needle)).map(str::to_string)
        };
        wait_for(&format!("a log line with `{needle}`"), within, line, || {
            self.log_text()
        })
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
        self.wait_metrics(&format!("`{series}`"), Duration::from_secs(5), |m| {
            m.lines().any(|l| l.starts_with(series))
        })
        .await
    }

    /// Waits up to `within` until [`Gatehouse::metrics_text`] satisfies `f`; returns the text.
    /// Panics naming `what`, with the last text read.
    pub async fn wait_metrics(
        &self,
        what: &str,
        within: Duration,
        f: impl Fn(&str) -> bool,
    ) -> String {
        let last = std::cell::RefCell::new(String::new());
        let read = || {
            let m = self.metrics_text();
            let (last, f) = (&last, &f);
            async move {
                let m = m.await;
                let ok = f(&m);
                *last.borrow_mut() = m.clone();
                ok.then_some(m)
            }
        };
        eventually_some(what, within, POLL, read, || last.borrow().clone()).await
    }

    /// The `http` audit events recorded so far, in order (in process only).
    pub fn http_events(&self) -> Vec<gatehouse::audit::HttpEvent> {
        self.audit()
            .into_iter()
            .filter_map(|e| match e {
                AuditEvent::Http(h) => Some(h),
                _ => None,
            })
            .collect()
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
        let config = gatehouse::config::Config::parse(yaml, dir)
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
