//! A real ISC Kea 2.2 (kea-dhcp4 with no interfaces + kea-ctrl-agent) in a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Whether Kea's daemons are installed; skips (loudly) or fails under CI, as
/// [`super::require_binary`].
pub fn installed() -> bool {
    super::require_binary("kea-ctrl-agent") && super::require_binary("kea-dhcp4")
}

/// The upstream PKI of a Kea test: the agents' server certificate for `kea.internal` (and
/// 127.0.0.1) and Gatehouse's client certificate `gatehouse`, under one CA in `dir/up`.
pub fn upstream_pki(dir: &Path) -> super::Pki {
    let up = super::Pki::new(dir, "up");
    up.server("kea", &["kea.internal"]);
    up.issue("gatehouse", gatehouse::pki::CertSpec::new("gatehouse"));
    up
}

impl KeaTls {
    /// An agent presenting `up`'s `kea` certificate and requiring client certificates from
    /// `up`'s CA (see [`upstream_pki`]).
    pub fn from_pki(up: &super::Pki) -> KeaTls {
        let (cert, key) = up.paths("kea");
        KeaTls {
            cert,
            key,
            trust_anchor: up.ca_path(),
        }
    }
}

/// Kea Control Agent TLS: server cert, key, and the CA client certs must chain to.
pub struct KeaTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub trust_anchor: PathBuf,
}

/// The Kea releases operators run, each as the HTTP(S) endpoint they put an edge in front of:
/// 2.2 (this host's) and 2.6 (Debian 13, chrooted) as kea-dhcp4 behind their Control Agent,
/// 3.0 (trixie-backports, chrooted; it has no agent) as kea-dhcp4's own HTTP control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    V2_2,
    V2_6,
    V3_0,
}

impl Release {
    /// Whether the endpoint is a Control Agent (`service` picks the daemon; none = the agent),
    /// or a daemon (Kea 3: `service` ignored, to be stripped by a `kea.daemon` route).
    pub fn has_agent(self) -> bool {
        self != Release::V3_0
    }

    /// `2.2`, `2.6`, `3.0`.
    pub fn name(self) -> &'static str {
        match self {
            Release::V2_2 => "2.2",
            Release::V2_6 => "2.6",
            Release::V3_0 => "3.0",
        }
    }
}

/// One `#[tokio::test]` per Kea release for each `async fn(Release)` named:
/// `body => test_2_2, test_2_6, test_3_0;`.
#[macro_export]
macro_rules! per_kea_release {
    ($($body:ident => $v22:ident, $v26:ident, $v30:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v22() {
            $body($crate::common::kea::Release::V2_2).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v26() {
            $body($crate::common::kea::Release::V2_6).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $v30() {
            $body($crate::common::kea::Release::V3_0).await
        }
    )*};
}

/// Running Kea daemons; stopped on drop.
pub struct Kea {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub release: Release,
    children: Vec<Child>,
    /// A chrooted release's daemons (dhcp4 first, then its agent).
    chrooted: Vec<super::kea_root::KeaDaemon>,
}

impl Kea {
    /// `release`'s endpoint on 127.0.0.1:`port` with kea-dhcp4 behind it; `None` (after a loud
    /// SKIP, or a panic under CI) when that release is not available here. `dir` holds the
    /// host release's files; chrooted ones keep theirs in their root.
    pub fn of(release: Release, dir: &Path, port: u16, tls: Option<KeaTls>) -> Option<Kea> {
        use super::kea_root::{self, Daemon as D, KeaDaemon};
        let chrooted = match release {
            Release::V2_2 => return installed().then(|| Kea::start(dir, port, tls)),
            Release::V2_6 => {
                let root = kea_root::root("kea-2.6")?;
                let d4 = KeaDaemon::start(&root, D::Dhcp4, None, None);
                let agent = KeaDaemon::start_agent(&root, port, tls.as_ref(), &d4);
                vec![d4, agent]
            }
            Release::V3_0 => {
                let root = kea_root::root("kea-3.0")?;
                vec![KeaDaemon::start(&root, D::Dhcp4, Some(port), tls.as_ref())]
            }
        };
        Some(Kea {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir: chrooted[0].dir.clone(),
            release,
            children: Vec::new(),
            chrooted,
        })
    }

    /// A file name kea-dhcp4 may `config-write` to (Kea >= 2.6.3 accepts only its config
    /// folder), and where the host reads what it wrote.
    pub fn writable(&self, name: &str) -> (String, PathBuf) {
        let host = self.dir.join(name);
        match self.chrooted.first() {
            None => (host.display().to_string(), host),
            Some(d4) => {
                let root_dir = d4.dir.file_name().unwrap_or_default().to_string_lossy();
                (format!("/etc/kea/{root_dir}/{name}"), host)
            }
        }
    }

    /// Starts kea-dhcp4 and a control agent on `port`, all files under `dir`.
    pub fn start(dir: &Path, port: u16, tls: Option<KeaTls>) -> Kea {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("k4.sock");
        assert!(
            sock.as_os_str().len() < 100,
            "unix socket path too long: {sock:?}"
        );
        let d = dir.display();
        let dhcp4 = format!(
            r#"{{ "Dhcp4": {{
  "interfaces-config": {{ "interfaces": [ ] }},
  "control-socket": {{ "socket-type": "unix", "socket-name": "{s}" }},
  "lease-database": {{ "type": "memfile", "persist": true, "name": "{d}/leases4.csv", "lfc-interval": 0 }},
  "valid-lifetime": 4000,
  "subnet4": [ {{ "id": 1, "subnet": "192.0.2.0/24", "pools": [ {{ "pool": "192.0.2.100 - 192.0.2.200" }} ] }} ],
  "loggers": [ {{ "name": "kea-dhcp4", "severity": "INFO", "output_options": [ {{ "output": "{d}/kea-dhcp4.log" }} ] }} ]
}} }}"#,
            s = sock.display()
        );
        let tls_json = tls
            .map(|t| {
                format!(
                    r#""trust-anchor": "{}", "cert-file": "{}", "key-file": "{}", "cert-required": true,"#,
                    t.trust_anchor.display(),
                    t.cert.display(),
                    t.key.display()
                )
            })
            .unwrap_or_default();
        let ca = format!(
            r#"{{ "Control-agent": {{
  "http-host": "127.0.0.1", "http-port": {port}, {tls_json}
  "control-sockets": {{ "dhcp4": {{ "socket-type": "unix", "socket-name": "{s}" }} }},
  "loggers": [ {{ "name": "kea-ctrl-agent", "severity": "INFO", "output_options": [ {{ "output": "{d}/kea-ctrl-agent.log" }} ] }}
] }} }}"#,
            s = sock.display()
        );
        std::fs::write(dir.join("kea-dhcp4.conf"), dhcp4).unwrap();
        std::fs::write(dir.join("kea-ctrl-agent.conf"), ca).unwrap();
        let spawn = |bin: &str, conf: &str| {
            Command::new(bin)
                .arg("-c")
                .arg(dir.join(conf))
                .env("KEA_PIDFILE_DIR", dir)
                .env("KEA_LOCKFILE_DIR", dir)
                .stdout(std::fs::File::create(dir.join(format!("{bin}.out"))).unwrap())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {bin}: {e}"))
        };
        let mut kea = Kea {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir: dir.to_path_buf(),
            release: Release::V2_2,
            children: vec![spawn("kea-dhcp4", "kea-dhcp4.conf")],
            chrooted: Vec::new(),
        };
        kea.wait("control socket", || sock.exists());
        kea.children
            .push(spawn("kea-ctrl-agent", "kea-ctrl-agent.conf"));
        let addr = kea.addr;
        kea.wait("control agent port", || {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        kea
    }

    /// Stops both daemons (as on drop); `start` again on the same port brings Kea back.
    pub fn stop(&mut self) {
        self.shutdown();
    }

    fn wait(&mut self, what: &str, ready: impl Fn() -> bool) {
        let (dir, chrooted, children) = (&self.dir, &self.chrooted, &mut self.children);
        let logs = || Kea::logs_of(dir, chrooted);
        let up = || {
            if ready() {
                return Some(());
            }
            for c in children.iter_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("kea exited ({st}) before {what}:\n{}", logs());
                }
            }
            None
        };
        super::wait::wait_for(&format!("kea: {what}"), Duration::from_secs(15), up, logs);
    }

    /// Kea's own log files, for failure messages and for proving what Kea received.
    pub fn logs(&self) -> String {
        Kea::logs_of(&self.dir, &self.chrooted)
    }

    fn logs_of(dir: &Path, chrooted: &[super::kea_root::KeaDaemon]) -> String {
        if !chrooted.is_empty() {
            return chrooted.iter().map(|d| d.logs()).collect();
        }
        [
            "kea-dhcp4.log",
            "kea-ctrl-agent.log",
            "kea-dhcp4.out",
            "kea-ctrl-agent.out",
        ]
        .iter()
        .map(|f| {
            format!(
                "== {f}\n{}",
                std::fs::read_to_string(dir.join(f)).unwrap_or_default()
            )
        })
        .collect()
    }
}

impl Drop for Kea {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Kea {
    fn shutdown(&mut self) {
        // The agent first, as below.
        while let Some(mut d) = self.chrooted.pop() {
            d.stop();
        }
        for mut c in self.children.drain(..).rev() {
            // SIGTERM lets Kea remove its socket and pid files.
            sigterm(c.id());
            super::wait::first_within(Duration::from_secs(3), || c.try_wait().ok().flatten());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// Which Kea daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Dhcp4,
    Dhcp6,
}

impl Daemon {
    /// The binary, the config's top-level key, the service name.
    fn names(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Daemon::Dhcp4 => ("kea-dhcp4", "Dhcp4", "dhcp4"),
            Daemon::Dhcp6 => ("kea-dhcp6", "Dhcp6", "dhcp6"),
        }
    }
}

/// One Kea 2.2 daemon with only its UNIX control socket, no agent (what Gatehouse faces on a
/// `kea.services` or `kea.daemon` route with `unix:` peers); stopped on drop.
pub struct KeaDaemon {
    pub sock: PathBuf,
    pub kind: Daemon,
    inner: Kea,
}

/// Whether the daemons are installed (skips loudly, or fails under CI).
pub fn daemons_installed() -> bool {
    super::require_binary("kea-dhcp4") && super::require_binary("kea-dhcp6")
}

impl KeaDaemon {
    /// Starts `kind` with its files (socket, leases, log) under `dir`.
    pub fn start(dir: &Path, kind: Daemon) -> KeaDaemon {
        std::fs::create_dir_all(dir).unwrap();
        let (bin, key, short) = kind.names();
        let sock = dir.join(format!("{short}.sock"));
        assert!(
            sock.as_os_str().len() < 100,
            "unix socket path too long: {sock:?}"
        );
        let d = dir.display();
        let subnet = match kind {
            Daemon::Dhcp4 => r#""subnet4": [ { "id": 1, "subnet": "192.0.2.0/24" } ]"#,
            Daemon::Dhcp6 => {
                r#""subnet6": [ { "id": 1, "subnet": "2001:db8::/64" } ], "server-id": { "type": "LLT", "persist": false }"#
            }
        };
        let conf = format!(
            r#"{{ "{key}": {{
  "interfaces-config": {{ "interfaces": [ ] }},
  "control-socket": {{ "socket-type": "unix", "socket-name": "{s}" }},
  "lease-database": {{ "type": "memfile", "persist": false }},
  {subnet},
  "loggers": [ {{ "name": "{bin}", "severity": "INFO", "output_options": [ {{ "output": "{d}/{bin}.log" }} ] }} ]
}} }}"#,
            s = sock.display()
        );
        let file = dir.join(format!("{bin}.conf"));
        std::fs::write(&file, conf).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&file)
            .env("KEA_PIDFILE_DIR", dir)
            .env("KEA_LOCKFILE_DIR", dir)
            .stdout(std::fs::File::create(dir.join(format!("{bin}.out"))).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let mut inner = Kea {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir: dir.to_path_buf(),
            release: Release::V2_2,
            children: vec![child],
            chrooted: Vec::new(),
        };
        let s = sock.clone();
        inner.wait("control socket", || s.exists());
        KeaDaemon { sock, kind, inner }
    }

    /// Stops the daemon (SIGTERM, then kill).
    pub fn stop(&mut self) {
        self.inner.shutdown();
    }

    /// The daemon's answer to `command` on its own socket (bare JSON, as Kea writes it).
    pub fn ask(&self, command: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(command.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// `unix:<socket>`, as a Gatehouse peer.
    pub fn peer(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    /// The daemon's log.
    pub fn logs(&self) -> String {
        let (bin, _, _) = self.kind.names();
        std::fs::read_to_string(self.inner.dir.join(format!("{bin}.log"))).unwrap_or_default()
    }
}

/// kea-shell (Debian 12's, written for the Control Agent) against `port` on localhost over
/// mTLS as `edge`'s `ops`, plus `args` (`--service dhcp4`, `--auth-user …`, the command);
/// bounded by 20 s. (exit success, stdout, stdout + stderr).
pub async fn kea_shell(edge: &super::Pki, port: u16, args: &[&str]) -> (bool, String, String) {
    let (cert, key) = edge.paths("ops");
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("kea-shell")
            .args(["--host", "localhost", "--port", &port.to_string()])
            .arg("--ca")
            .arg(edge.ca_path())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("kea-shell finished")
    .expect("kea-shell runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout, all)
}

/// The rules of issue 22's bypass case on a `kea.daemon: dhcp4` route: dashboards may read
/// (`*-get`) but only dhcp6, `admin` may do anything.
pub fn bypass_rules(admin: &str) -> super::KeaRoute {
    super::KeaRoute::deny_by_default()
        .daemon("dhcp4")
        .rule(
            super::KeaRule::new(["cn:dashboard-*"])
                .commands(super::AllowDeny::only(["*-get"]))
                .services(super::AllowDeny::only(["dhcp6"])),
        )
        .rule(super::KeaRule::new([format!("cn:{admin}")]))
}
