//! Real Icinga 2 instances in a temp dir: nothing under /etc, /var or /run. Path constants are
//! overridden with `-D...Dir=`; the CA lives in the master's DataDir.
//!
//! Each node runs one [`Release`]: the host's Icinga (Debian 12: 2.13), or 2.14 (Debian 13) or
//! 2.16 (Debian testing) from a cached root made by `scripts/peer-root.sh`, run with `chroot`;
//! the host's `/tmp` is bind-mounted into the root, so the temp paths agree on both sides.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// An Icinga release a node runs.
#[derive(Clone, Debug)]
pub struct Release {
    /// `2.13`, `2.14`, `2.16`.
    pub name: &'static str,
    /// `None`: the host's `icinga2`.
    root: Option<PathBuf>,
}

impl Release {
    /// `name` ready to run, or `None` after a loud SKIP (a panic under CI): the host's Icinga
    /// for `2.13`, a cached root for the others (made on first use, a minute or two).
    pub fn get(name: &'static str) -> Option<Release> {
        if name == "2.13" {
            return super::require_binary("icinga2").then_some(Release { name, root: None });
        }
        let root = super::kea_root::root(&format!("icinga-{name}"))?;
        if let Err(e) = mounted(&root) {
            let msg = format!("\n!!!!! SKIPPED: icinga {name}: {e} !!!!!\n");
            if super::in_ci() {
                panic!("{msg} (CI=true: peer tests may not skip)");
            }
            eprintln!("{msg}");
            return None;
        }
        Some(Release {
            name,
            root: Some(root),
        })
    }

    /// The `icinga2` command of this release as a shell words prefix (`icinga2`, or `chroot`
    /// into its root, in the same working directory: the host's `/tmp` is there too), for
    /// scripts that run it by name with relative paths.
    pub fn shell(&self) -> String {
        match &self.root {
            None => "command icinga2".into(),
            Some(root) => format!(
                "/usr/sbin/chroot {} /bin/sh -c 'cd \"$0\" && exec /usr/sbin/icinga2 \"$@\"' \"$PWD\"",
                root.display()
            ),
        }
    }

    /// The `icinga2` command of this release, running as the current user (root in CI)
    /// without dropping privileges.
    pub fn command(&self) -> Command {
        let mut c = match &self.root {
            None => Command::new("icinga2"),
            Some(root) => {
                let mut c = Command::new(if Path::new("/usr/sbin/chroot").is_file() {
                    "/usr/sbin/chroot"
                } else {
                    "chroot"
                });
                c.arg(root).arg("/usr/sbin/icinga2");
                c
            }
        };
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        c.env("ICINGA2_USER", &user).env("ICINGA2_GROUP", &user);
        c
    }
}

/// Makes the host's `/tmp` and a `/proc` visible inside `root` (once; they stay mounted, and
/// `scripts/peer-root.sh` unmounts before it ever removes a root).
fn mounted(root: &Path) -> Result<(), String> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let is_mount = |p: &Path| {
        let p = p.to_string_lossy();
        info.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
    };
    let tmp = root.join("tmp");
    if !is_mount(&tmp) {
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        run_mount(&["--bind", "/tmp", &tmp.to_string_lossy()])?;
    }
    let proc = root.join("proc");
    if !is_mount(&proc) {
        std::fs::create_dir_all(&proc).map_err(|e| e.to_string())?;
        run_mount(&["-t", "proc", "proc", &proc.to_string_lossy()])?;
    }
    Ok(())
}

fn run_mount(args: &[&str]) -> Result<(), String> {
    let out = Command::new("mount")
        .args(args)
        .output()
        .map_err(|e| format!("mount {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mount {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One Icinga node's folder layout: etc, data (certs, ca), log, cache, spool, run.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub release: Release,
}

impl Node {
    /// A node running `release`.
    pub fn of(root: &Path, name: &str, release: Release) -> Node {
        let dir = root.join(name);
        for d in ["etc", "data/certs", "log", "cache", "spool", "run"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        Node {
            name: name.to_string(),
            dir,
            release,
        }
    }

    /// The `-D` path defines that keep this node in its folder.
    pub fn defs(&self) -> Vec<String> {
        let d = self.dir.display();
        vec![
            format!("-DConfigDir={d}/etc"),
            // Not derived from ConfigDir: without it a master would not find etc/zones.d.
            format!("-DZonesDir={d}/etc/zones.d"),
            format!("-DDataDir={d}/data"),
            format!("-DLogDir={d}/log"),
            format!("-DCacheDir={d}/cache"),
            format!("-DSpoolDir={d}/spool"),
            format!("-DInitRunDir={d}/run"),
        ]
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.join("data/certs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/icinga2.log")).unwrap_or_default()
    }

    /// `icinga2 pki new-cert`: a new key and CSR for `cn` in `dir`; returns their paths.
    pub fn new_cert(&self, cn: &str, dir: &Path) -> (PathBuf, PathBuf) {
        let (key, csr) = (dir.join(format!("{cn}.key")), dir.join(format!("{cn}.csr")));
        let (k, c) = (key.to_str().unwrap(), csr.to_str().unwrap());
        self.run(
            &["pki", "new-cert", "--cn", cn, "--key", k, "--csr", c],
            false,
        );
        (key, csr)
    }

    /// `icinga2 pki sign-csr` on this node (the CA master): `csr` signed into `crt`.
    pub fn sign_csr(&self, csr: &Path, crt: &Path) {
        let (c, t) = (csr.to_str().unwrap(), crt.to_str().unwrap());
        self.run(&["pki", "sign-csr", "--csr", c, "--cert", t], false);
    }

    /// Runs `icinga2 ARGS... <path defines>`; panics with the output on failure unless `may_fail`.
    pub fn run(&self, args: &[&str], may_fail: bool) -> Output {
        let out = self
            .release
            .command()
            .args(args)
            .args(self.defs())
            .output()
            .expect("run icinga2");
        if !may_fail && !out.status.success() {
            panic!(
                "icinga2 {args:?} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// Writes `etc/icinga2.conf`, validates it, and starts the daemon.
    pub fn start(&self, conf: &str) -> Daemon {
        let file = self.dir.join("etc/icinga2.conf");
        std::fs::write(&file, conf).unwrap();
        let f = file.to_str().unwrap();
        self.run(&["daemon", "-C", "-c", f], false);
        let child = self
            .release
            .command()
            .args(["daemon", "-c", f])
            .args(self.defs())
            .stdout(std::fs::File::create(self.dir.join("log/stdout.log")).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn icinga2 daemon");
        Daemon {
            child,
            node: self.clone(),
        }
    }

    /// `icinga2 pki new-ca` on this node, then its own `master1` certificate (from that CA, in
    /// its certs folder, with the CA beside it): a CA master. Returns the CA certificate.
    pub fn new_ca_master(&self) -> PathBuf {
        self.run(&["pki", "new-ca"], false);
        let ca_crt = self.dir.join("data/ca/ca.crt");
        let (_, csr) = self.new_cert("master1", &self.certs());
        self.sign_csr(&csr, &self.certs().join("master1.crt"));
        std::fs::copy(&ca_crt, self.certs().join("ca.crt")).unwrap();
        ca_crt
    }

    /// Waits (up to `within`) until the node's ApiListener listens on 127.0.0.1:`port`.
    pub fn wait_listening(&self, port: u16, within: Duration) {
        self.wait_log(
            &format!("Started new listener on '[127.0.0.1]:{port}'"),
            within,
        );
    }

    /// Waits until the node's log contains `needle`.
    pub fn wait_log(&self, needle: &str, within: Duration) {
        super::wait::wait_for(
            &format!("`{needle}` in {}'s log", self.name),
            within,
            || self.log().contains(needle).then_some(()),
            || tail(&self.log(), 40),
        )
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A running Icinga daemon; SIGTERM (then SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    pub node: Node,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let exited = || self.child.try_wait().ok().flatten();
        if super::wait::first_within(Duration::from_secs(10), exited).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// agent1's config after `header` (zones and constants): its parent `endpoints` lines, an
/// ApiListener on `aport` accepting config and commands, a checker, and `agent1-host`
/// checked every 2 s with the output "hello from agent1".
pub fn agent1_conf(header: &str, endpoints: &str, aport: u16) -> String {
    format!(
        r#"{header}
{endpoints}
object ApiListener "api" {{
  bind_host = "127.0.0.1"
  bind_port = {aport}
  accept_config = true
  accept_commands = true
}}
object CheckerComponent "checker" {{ }}
object Host "agent1-host" {{ check_command = "dummy"; check_interval = 2s; retry_interval = 2s; zone = "agent1"; address = "127.0.0.1"; vars.dummy_text = "hello from agent1" }}
"#
    )
}

/// Zones, endpoints and the common header of every node's config.
pub fn common_conf(node: &str, zone: &str, ticket_salt: &str) -> String {
    format!(
        r#"const NodeName = "{node}"
const ZoneName = "{zone}"
const TicketSalt = "{ticket_salt}"
include <itl>
object FileLogger "main-log" {{ path = LogDir + "/icinga2.log"; severity = "information" }}
object Zone "master" {{ endpoints = [ "master1" ] }}
object Zone "agent1" {{ endpoints = [ "agent1" ]; parent = "master" }}
object Zone "global-big" {{ global = true }}
"#
    )
}

/// Polls `f` every 500 ms until it holds; fails after `within` with `what` and `diag()` (the
/// logs worth reading). Icinga acts on its own timers, so its tests wait for states; asking its
/// API twice a second is often enough and keeps the master's log readable.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F, diag: impl Fn() -> String)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let holds = || {
        let fut = f();
        async move { fut.await.then_some(()) }
    };
    super::wait::eventually_some(what, within, Duration::from_millis(500), holds, diag).await
}
