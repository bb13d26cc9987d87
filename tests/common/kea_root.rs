//! Real Kea daemons of releases this Debian 12 host cannot install (Debian 13's Kea 2.6,
//! trixie-backports' Kea 3.0), run with `chroot` from cached Debian roots.
//!
//! - [`root`] makes (once per machine, with `scripts/peer-root.sh`) or finds the root of a
//!   release: `kea-2.6` or `kea-3.0`.
//! - [`KeaDaemon::start`] runs kea-dhcp4 or kea-dhcp6 in such a root: no interfaces, leases in
//!   memory, a UNIX control socket, and on Kea ≥ 2.7 optionally an HTTP(S) control socket on
//!   127.0.0.1 (take its port from [`super::reserved_port`]). Stopped on drop.
//!
//! Kea 2.6.3 and 3.0 accept control sockets only under `/run/kea` (mode 750 or stricter) and
//! log files only under `/var/log/kea`, so everything a daemon needs lives inside the root:
//! its config, pid and lock files in `ROOT/etc/kea/gh-<pid>-<n>/`, its socket at
//! `ROOT/run/kea/gh-<pid>-<n>.sock` (the host reaches both through the root's path), its logs
//! on stdout, captured to the config folder.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long a daemon may take to open its control sockets.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The root of `release` (`kea-2.6`, `kea-3.0`, also `icinga-2.14`, `icinga-2.16`), made by
/// `scripts/peer-root.sh` on first use (a minute or two, as root, from the Debian mirror) and
/// reused from its cache afterwards. `None` (after a loud SKIP on stderr) when it cannot be
/// made; panics with the script's output under CI ([`super::in_ci`]). Once per process and
/// release: later calls answer from memory, failures included.
pub fn root(release: &str) -> Option<PathBuf> {
    static ROOTS: Mutex<BTreeMap<String, Result<PathBuf, String>>> = Mutex::new(BTreeMap::new());
    // Held while the script runs: this process's other tests wait for its answer.
    let mut roots = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
    let made = roots
        .entry(release.to_string())
        .or_insert_with(|| make_root(release))
        .clone();
    drop(roots);
    match made {
        Ok(root) => Some(root),
        Err(why) => {
            let msg = format!("\n!!!!! SKIPPED: no {release} root: {why} !!!!!\n");
            if super::in_ci() {
                panic!("{msg} (CI=true: peer tests may not skip)");
            }
            eprintln!("{msg}");
            None
        }
    }
}

/// Runs `scripts/peer-root.sh release`: the root (its last line on stdout) or what went wrong.
fn make_root(release: &str) -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/peer-root.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(release)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = || {
        format!(
            "{} {release} exited with {}:\n{stdout}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    };
    if !out.status.success() {
        return Err(said());
    }
    let root = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if !root.is_absolute() || !root.is_dir() {
        return Err(format!("no root directory on its last line: {}", said()));
    }
    Ok(root)
}

/// The first line of `chroot ROOT kea-dhcp4 -V`: `2.6.3 (tarball)`, `3.0.3 (3.0.3 (tarball))`.
pub fn version(root: &Path) -> String {
    let out = Command::new(chroot_bin())
        .arg(root)
        .args(["/usr/sbin/kea-dhcp4", "-V"])
        .output()
        .unwrap_or_else(|e| panic!("chroot {} kea-dhcp4 -V: {e}", root.display()));
    assert!(
        out.status.success(),
        "chroot {} kea-dhcp4 -V: {}\n{}",
        root.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn chroot_bin() -> &'static str {
    if Path::new("/usr/sbin/chroot").is_file() {
        "/usr/sbin/chroot"
    } else {
        "chroot"
    }
}

/// Which Kea DHCP daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Daemon {
    Dhcp4,
    Dhcp6,
}

impl Daemon {
    /// The binary, and the top-level key and logger name of its configuration.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Daemon::Dhcp4 => ("kea-dhcp4", "Dhcp4"),
            Daemon::Dhcp6 => ("kea-dhcp6", "Dhcp6"),
        }
    }
}

/// A kea-dhcp4 or kea-dhcp6 running chrooted in a release's root; SIGTERM (then SIGKILL) on
/// drop, which also removes its folder in the root unless the thread is panicking (then the
/// folder stays, for its logs).
pub struct KeaDaemon {
    /// Its HTTP(S) control socket on 127.0.0.1, when asked for.
    pub http: Option<SocketAddr>,
    /// Host-side path of its UNIX control socket (`ROOT/run/kea/gh-….sock`).
    pub unix: PathBuf,
    /// Host-side path of its folder in the root: config, pid and lock files, captured output.
    pub dir: PathBuf,
    /// The daemon's first `-V` line (see [`version`]).
    pub version: String,
    child: Option<Child>,
}

impl KeaDaemon {
    /// Starts `kind` in `root` (from [`root`]) and waits (up to 15 s) until its UNIX socket
    /// and, when `http_port` is given, its HTTP socket accept connections; panics with its
    /// output otherwise.
    ///
    /// `http_port` (from [`super::reserved_port`]): an HTTP control socket on
    /// `127.0.0.1:http_port`, HTTPS when `tls` is given (the files are copied into the root,
    /// client certificates required). Kea 2.6 has no HTTP sockets on its daemons (they came
    /// in 2.7.2): asking for one there panics.
    ///
    /// Configuration: Kea 2.6 takes one `control-socket` (UNIX only; it refuses the
    /// `control-sockets` list), Kea 3.0 a `control-sockets` list (its `control-socket` is an
    /// alias of it: both together is "duplicate control-socket entries").
    pub fn start(
        root: &Path,
        kind: Daemon,
        http_port: Option<u16>,
        tls: Option<&super::kea::KeaTls>,
    ) -> KeaDaemon {
        KeaDaemon::start_with_auth(root, kind, http_port, tls, None)
    }

    /// [`KeaDaemon::start`] whose HTTP(S) control socket requires basic credentials
    /// `(user, password)` (`authentication` of the socket entry, Kea >= 2.7).
    pub fn start_with_auth(
        root: &Path,
        kind: Daemon,
        http_port: Option<u16>,
        tls: Option<&super::kea::KeaTls>,
        auth: Option<(&str, &str)>,
    ) -> KeaDaemon {
        let (bin, key) = kind.names();
        let version = version(root);
        let kea2 = version.starts_with("2.");
        assert!(
            !(kea2 && http_port.is_some()),
            "Kea {version} in {} has no HTTP control socket on its daemons (Kea >= 2.7.2)",
            root.display()
        );
        assert!(
            http_port.is_some() || tls.is_none(),
            "TLS is for the HTTP control socket: give an http_port too"
        );
        let slot = Slot::new(root);
        let inner_sock = format!("/run/kea/{}.sock", slot.name);

        let unix_json = format!(r#"{{ "socket-type": "unix", "socket-name": "{inner_sock}" }}"#);
        let http_json = http_port.map(|port| {
            let tls_json = tls
                .map(|t| {
                    format!(
                        r#", "socket-type": "https", "trust-anchor": "{}", "cert-file": "{}", "key-file": "{}", "cert-required": true"#,
                        slot.copy_in(&t.trust_anchor, "ca.crt"),
                        slot.copy_in(&t.cert, "server.crt"),
                        slot.copy_in(&t.key, "server.key"),
                    )
                })
                .unwrap_or_else(|| r#", "socket-type": "http""#.into());
            let auth_json = auth
                .map(|(user, password)| {
                    format!(
                        r#", "authentication": {{ "type": "basic", "realm": "kea-test", "clients": [ {{ "user": "{user}", "password": "{password}" }} ] }}"#
                    )
                })
                .unwrap_or_default();
            format!(
                r#"{{ "socket-address": "127.0.0.1", "socket-port": {port}{tls_json}{auth_json} }}"#
            )
        });
        let sockets = if kea2 {
            format!(r#""control-socket": {unix_json}"#)
        } else {
            let list: Vec<String> = std::iter::once(unix_json).chain(http_json).collect();
            format!(r#""control-sockets": [ {} ]"#, list.join(", "))
        };
        let conf = format!(
            r#"{{ "{key}": {{
  "interfaces-config": {{ "interfaces": [ ] }},
  {sockets},
  "lease-database": {{ "type": "memfile", "persist": false }},
  "loggers": [ {{ "name": "{bin}", "severity": "INFO", "output_options": [ {{ "output": "stdout" }} ] }} ]
}} }}"#
        );
        let mut d = slot.launch(bin, &conf, version, http_port);
        let unix = d.unix.clone();
        d.wait("UNIX control socket", || {
            std::os::unix::net::UnixStream::connect(&unix).is_ok()
        });
        d.wait_http();
        d
    }

    /// A Kea 2.x `kea-ctrl-agent` in `root` (its release's agent, as operators of 2.6 run it)
    /// on `127.0.0.1:http_port`, forwarding `dhcp4` to `dhcp4`'s UNIX socket; HTTPS with
    /// client certificates required when `tls` is given. Kea 3.0 has no agent: panics.
    pub fn start_agent(
        root: &Path,
        http_port: u16,
        tls: Option<&super::kea::KeaTls>,
        dhcp4: &KeaDaemon,
    ) -> KeaDaemon {
        let version = version(root);
        assert!(
            version.starts_with("2."),
            "Kea {version} in {} has no control agent",
            root.display()
        );
        let slot = Slot::new(root);
        let tls_json = tls
            .map(|t| {
                format!(
                    r#""trust-anchor": "{}", "cert-file": "{}", "key-file": "{}", "cert-required": true,"#,
                    slot.copy_in(&t.trust_anchor, "ca.crt"),
                    slot.copy_in(&t.cert, "server.crt"),
                    slot.copy_in(&t.key, "server.key"),
                )
            })
            .unwrap_or_default();
        let forward = dhcp4
            .unix
            .strip_prefix(root)
            .map(|p| Path::new("/").join(p))
            .unwrap_or_else(|_| panic!("{:?} is not in {}", dhcp4.unix, root.display()));
        let conf = format!(
            r#"{{ "Control-agent": {{
  "http-host": "127.0.0.1", "http-port": {http_port}, {tls_json}
  "control-sockets": {{ "dhcp4": {{ "socket-type": "unix", "socket-name": "{}" }} }},
  "loggers": [ {{ "name": "kea-ctrl-agent", "severity": "INFO", "output_options": [ {{ "output": "stdout" }} ] }} ]
}} }}"#,
            forward.display()
        );
        let mut d = slot.launch("kea-ctrl-agent", &conf, version, Some(http_port));
        d.wait_http();
        d
    }

    /// Waits for the HTTP(S) control socket, when there is one.
    fn wait_http(&mut self) {
        if let Some(a) = self.http {
            self.wait("HTTP control socket", || {
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
            });
        }
    }

    /// Waits for `ready`; panics with the daemon's output if it exits first or takes too long.
    fn wait(&mut self, what: &str, ready: impl Fn() -> bool) {
        let up = || {
            if ready() {
                return Some(());
            }
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "Kea {} exited ({st}) before its {what} was up:\n{}",
                    self.version,
                    self.logs()
                );
            }
            None
        };
        let up = super::wait::first_within(START_TIMEOUT, up).is_some();
        assert!(
            up,
            "Kea {}: no {what} after {START_TIMEOUT:?}:\n{}",
            self.version,
            self.logs()
        );
    }

    /// The daemon's stdout (its log) and stderr, for failure messages.
    pub fn logs(&self) -> String {
        ["stdout", "stderr"]
            .iter()
            .map(|f| {
                format!(
                    "== {}/{f}\n{}",
                    self.dir.display(),
                    std::fs::read_to_string(self.dir.join(f)).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Stops the daemon (SIGTERM, after 3 s SIGKILL), as on drop.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // SIGTERM lets Kea remove its socket, pid and lock files.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if super::wait::first_within(Duration::from_secs(3), || c.try_wait().ok().flatten())
            .is_some()
        {
            return;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for KeaDaemon {
    fn drop(&mut self) {
        self.stop();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            let _ = std::fs::remove_file(&self.unix);
        }
    }
}

/// A daemon's place in a root: `gh-<pid>-<n>`, its folder (config, pid and lock files, captured
/// output) and its UNIX socket path, inside the chroot and as the host sees them.
struct Slot {
    root: PathBuf,
    name: String,
    /// The folder inside the chroot (`/etc/kea/gh-…`).
    inner: String,
    /// The same folder seen from the host.
    dir: PathBuf,
    /// Host-side path of the UNIX control socket (`ROOT/run/kea/gh-….sock`).
    unix: PathBuf,
}

impl Slot {
    fn new(root: &Path) -> Slot {
        sweep_stale(root);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "gh-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let inner = format!("/etc/kea/{name}");
        let dir = root.join(inner.trim_start_matches('/'));
        let unix = root.join(format!("run/kea/{name}.sock"));
        assert!(
            unix.as_os_str().len() < 100,
            "UNIX socket path too long (keep GATEHOUSE_PEER_ROOTS short): {unix:?}"
        );
        std::fs::create_dir_all(&dir).unwrap();
        // Folders the packages' tmpfiles.d would have made on a booted system: sockets only in
        // /run/kea, mode 750 or stricter; kea-dhcp6 keeps its DUID in /var/lib/kea.
        for d in ["run/kea", "var/lib/kea", "var/log/kea"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).unwrap();
            set_mode(&p, 0o750);
        }
        // A socket (and its lock) left by a killed run of the same pid would pass for ours.
        let _ = std::fs::remove_file(&unix);
        let _ = std::fs::remove_file(root.join(format!("run/kea/{name}.sock.lock")));
        Slot {
            root: root.to_path_buf(),
            name,
            inner,
            dir,
            unix,
        }
    }

    /// Copies `from` into the slot's folder as `to`; its path inside the chroot.
    fn copy_in(&self, from: &Path, to: &str) -> String {
        std::fs::copy(from, self.dir.join(to))
            .unwrap_or_else(|e| panic!("copy {from:?} into the root: {e}"));
        format!("{}/{to}", self.inner)
    }

    /// Writes `conf` and starts `chroot ROOT /usr/sbin/BIN -c conf`, output captured.
    fn launch(self, bin: &str, conf: &str, version: String, http_port: Option<u16>) -> KeaDaemon {
        std::fs::write(self.dir.join("kea.conf"), conf).unwrap();
        let child = Command::new(chroot_bin())
            .arg(&self.root)
            .arg(format!("/usr/sbin/{bin}"))
            .arg("-c")
            .arg(format!("{}/kea.conf", self.inner))
            .env("KEA_PIDFILE_DIR", &self.inner)
            .env("KEA_LOCKFILE_DIR", &self.inner)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("stdout")).unwrap())
            .stderr(std::fs::File::create(self.dir.join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("chroot {} {bin}: {e}", self.root.display()));
        KeaDaemon {
            http: http_port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
            unix: self.unix,
            dir: self.dir,
            version,
            child: Some(child),
        }
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {p:?}: {e}"));
}

/// Removes the folders and sockets (`gh-<pid>-<n>`) that processes no longer running left in
/// `root` (a test binary killed before its drops ran).
fn sweep_stale(root: &Path) {
    let dead = |name: &str| {
        name.strip_prefix("gh-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
    };
    for d in ["etc/kea", "run/kea"] {
        let Ok(entries) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        for e in entries.flatten() {
            if !dead(&e.file_name().to_string_lossy()) {
                continue;
            }
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
