//! The Debian package `make deb` built (`make test` builds it first): its files, control data,
//! maintainer scripts and systemd unit, and the shipped config after the documented first step,
//! run with the packaged binary. Read with `dpkg-deb`; nothing here installs anything.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "/etc/gatehouse/gatehouse.yaml";
const UNIT: &str = "/usr/lib/systemd/system/gatehouse.service";

/// The target folder the test binary was built into (`CARGO_TARGET_DIR` or `target/`): its
/// `debian/` holds what `make deb` wrote.
fn target_dir() -> PathBuf {
    let bin = Path::new(gatehouse_bin());
    bin.ancestors()
        .nth(2)
        .unwrap_or_else(|| panic!("{} has no target folder", bin.display()))
        .to_path_buf()
}

/// Runs `cmd`; its stdout, or a panic with everything it said.
fn output(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (on Debian: apt-get install dpkg)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `target/debian/gatehouse_<version>_<arch>.deb`; panics, saying how to build it, if missing.
fn deb() -> PathBuf {
    let arch = output(Command::new("dpkg").arg("--print-architecture"));
    let name = format!(
        "gatehouse_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    );
    let deb = target_dir().join("debian").join(name);
    assert!(
        deb.is_file(),
        "{} is missing: run `make deb` (`make test` builds it before the tests)",
        deb.display()
    );
    deb
}

/// The package unpacked: data under `root/`, control files under `control/`.
struct Unpacked {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    control: PathBuf,
}

impl Unpacked {
    fn new() -> Unpacked {
        let deb = deb();
        let tmp = tempfile::tempdir().unwrap();
        let (root, control) = (tmp.path().join("root"), tmp.path().join("control"));
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        output(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        Unpacked {
            _tmp: tmp,
            root,
            control,
        }
    }

    /// A packaged file by its installed path.
    fn path(&self, installed: &str) -> PathBuf {
        self.root.join(installed.trim_start_matches('/'))
    }

    fn read(&self, installed: &str) -> String {
        let p = self.path(installed);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

/// Every entry of the package: installed path → `ls -l`-style mode and owner.
fn contents() -> BTreeMap<String, (String, String)> {
    output(Command::new("dpkg-deb").arg("-c").arg(deb()))
        .lines()
        .filter_map(|l| {
            // drwxr-xr-x root/root 0 2026-11-30 15:00 ./usr/bin/
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f.get(5)?.trim_start_matches('.').trim_end_matches('/');
            Some((path.to_string(), (f[0].to_string(), f[1].to_string())))
        })
        .collect()
}

/// What `gatehouse package-files` (the binary under test) writes: man pages and completions,
/// file name → contents.
fn generated(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let (ok, out) = gatehouse_cmd(&["package-files", dir.to_str().unwrap()]);
    assert!(ok, "{out}");
    let mut files = BTreeMap::new();
    for sub in ["man", "completions"] {
        for e in std::fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(format!("{sub}/{name}"), std::fs::read(&p).unwrap());
        }
    }
    files
}

/// `gzip -dc`.
fn gunzip(p: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(p).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", p.display());
    out.stdout
}

#[test]
fn package_holds_binary_unit_conffile_man_pages_completions_docs() {
    let files = contents();
    let tmp = tempfile::tempdir().unwrap();
    let generated = generated(tmp.path());
    let mut want: Vec<String> = [
        "/usr/bin/gatehouse",
        UNIT,
        CONFIG,
        "/usr/share/bash-completion/completions/gatehouse",
        "/usr/share/zsh/vendor-completions/_gatehouse",
        "/usr/share/fish/vendor_completions.d/gatehouse.fish",
        "/usr/share/doc/gatehouse/copyright",
        "/usr/share/doc/gatehouse/README.md",
        "/usr/share/doc/gatehouse/docs/configuration.md",
        "/usr/share/doc/gatehouse/docs/operations.md",
        "/usr/share/doc/gatehouse/examples/kea-rbac.yaml",
    ]
    .map(String::from)
    .to_vec();
    // One page per subcommand besides gatehouse.1, as the CLI has them.
    let pages: Vec<&String> = generated.keys().filter(|k| k.starts_with("man/")).collect();
    assert!(pages.len() >= 5, "{pages:?}");
    for p in pages {
        want.push(format!("/usr/share/man/man1/{}.gz", &p["man/".len()..]));
    }
    let missing: Vec<&String> = want.iter().filter(|w| !files.contains_key(*w)).collect();
    assert!(
        missing.is_empty(),
        "missing from the package: {missing:?}\nit holds: {:#?}",
        files.keys()
    );
    let root = |owner: &str| owner == "root/root" || owner == "0/0";
    let (mode, owner) = &files["/usr/bin/gatehouse"];
    assert!(
        mode == "-rwxr-xr-x" && root(owner),
        "/usr/bin/gatehouse: {mode} {owner}"
    );
    let (mode, _) = &files[CONFIG];
    assert_eq!(mode, "-rw-r--r--", "the service user reads {CONFIG}");
    for (path, (mode, owner)) in &files {
        assert!(
            path.is_empty()
                || path == "/usr"
                || path.starts_with("/usr/")
                || path.starts_with("/etc/gatehouse")
                || path == "/etc",
            "{path} is outside /usr and /etc/gatehouse"
        );
        assert!(root(owner), "{path} belongs to {owner}");
        assert_ne!(mode.chars().nth(8), Some('w'), "{path} is {mode}");
    }
}

/// The installed docs fit the package: every relative link in README.md, ARCHITECTURE.md and
/// docs/*.md resolves to a file of the package (not to the source tree's `conf/` or `src/`),
/// and the README says what the shipped /etc config does about client certificates.
#[test]
fn installed_docs_link_only_to_what_the_package_has() {
    let u = Unpacked::new();
    let doc = u.path("/usr/share/doc/gatehouse");
    let mut pages = vec![doc.join("README.md"), doc.join("ARCHITECTURE.md")];
    for e in std::fs::read_dir(doc.join("docs")).unwrap() {
        pages.push(e.unwrap().path());
    }
    let root = u.root.canonicalize().unwrap();
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in text
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split(')').next())
        {
            let target = target.split('#').next().unwrap_or("").trim();
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.contains(' ')
            {
                continue;
            }
            checked += 1;
            let resolved = page.parent().unwrap().join(target);
            let inside = resolved.canonicalize().is_ok_and(|p| p.starts_with(&root));
            if !inside {
                broken.push(format!(
                    "{} -> {target}",
                    page.strip_prefix(&u.root).unwrap().display()
                ));
            }
        }
    }
    assert!(checked > 100, "only {checked} links found");
    assert!(
        broken.is_empty(),
        "links that the package cannot follow:\n{}",
        broken.join("\n")
    );

    let readme = std::fs::read_to_string(doc.join("README.md")).unwrap();
    let conf: serde_yaml::Value = serde_yaml::from_str(&u.read(CONFIG)).unwrap();
    let auth = conf["listeners"][0]["tls"]["client_auth"].as_str().unwrap();
    assert!(
        readme.contains(&format!("client_auth: {auth}")),
        "the packaged README does not say client_auth: {auth}"
    );
    for source_only in ["make run", "target/debug", "](conf/", "](../conf/"] {
        assert!(!readme.contains(source_only), "README: {source_only}");
    }
}

#[test]
fn control_fields_and_conffiles() {
    let deb = deb();
    let field = |f: &str| {
        output(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "gatehouse");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));
    let depends = field("Depends");
    assert!(
        depends.contains("libc6") && depends.contains("passwd"),
        "Depends: {depends}"
    );
    assert!(!field("Description").is_empty());
    let u = Unpacked::new();
    let conffiles = std::fs::read_to_string(u.control.join("conffiles")).unwrap();
    let conffiles: Vec<&str> = conffiles.lines().collect();
    // Everything under /etc is a conffile (an upgrade keeps the operator's edits), and nothing else.
    let etc: Vec<String> = contents()
        .into_iter()
        .filter(|(p, (mode, _))| p.starts_with("/etc/") && mode.starts_with('-'))
        .map(|(p, _)| p)
        .collect();
    assert_eq!(conffiles, etc, "conffiles vs the files under /etc");
    assert!(conffiles.contains(&CONFIG), "{conffiles:?}");
    // Not stale: the unit and the config are the repository's.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (installed, source) in [
        (UNIT, "conf/gatehouse.service"),
        (CONFIG, "debian/gatehouse.yaml"),
    ] {
        assert!(
            u.read(installed) == std::fs::read_to_string(repo.join(source)).unwrap(),
            "the packaged {installed} is not {source}: run `make deb`"
        );
    }
    // The binary answers as the version packaged.
    let v = output(Command::new(u.path("/usr/bin/gatehouse")).arg("--version"));
    assert_eq!(v.trim(), format!("gatehouse {}", env!("CARGO_PKG_VERSION")));
}

/// The man pages and completions are what the CLI definition generates now (the package is not
/// stale, nothing is a hand-written copy), document the real commands and options, and leave
/// the packaging hook out.
#[test]
fn man_pages_and_completions_come_from_the_cli_definition() {
    let u = Unpacked::new();
    let tmp = tempfile::tempdir().unwrap();
    let generated = generated(tmp.path());
    let installed = |key: &str| -> PathBuf {
        let name = &key[key.find('/').unwrap() + 1..];
        match key.split_once('/').unwrap().0 {
            "man" => u.path(&format!("/usr/share/man/man1/{name}.gz")),
            _ => u.path(match name {
                "gatehouse.bash" => "/usr/share/bash-completion/completions/gatehouse",
                "_gatehouse" => "/usr/share/zsh/vendor-completions/_gatehouse",
                "gatehouse.fish" => "/usr/share/fish/vendor_completions.d/gatehouse.fish",
                other => panic!("package-files wrote an unexpected completion {other}"),
            }),
        }
    };
    assert_eq!(
        generated
            .keys()
            .filter(|k| k.starts_with("completions/"))
            .count(),
        3,
        "{:?}",
        generated.keys()
    );
    for (key, want) in &generated {
        let p = installed(key);
        let got = if key.starts_with("man/") {
            gunzip(&p)
        } else {
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        assert!(
            got == *want,
            "{} differs from what `gatehouse package-files` writes now: run `make deb`",
            p.display()
        );
        let text = String::from_utf8_lossy(want);
        assert!(
            !text.contains("package-files"),
            "{key} shows the packaging hook"
        );
    }
    // What `gatehouse --help` lists is what the pages and completions cover.
    let (ok, help) = gatehouse_cmd(&["--help"]);
    assert!(ok, "{help}");
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.contains(&"run") && commands.len() >= 4, "{help}");
    let main_page = String::from_utf8_lossy(&generated["man/gatehouse.1"]).into_owned();
    let bash = String::from_utf8_lossy(&generated["completions/gatehouse.bash"]).into_owned();
    for c in &commands {
        let page = format!("man/gatehouse-{c}.1");
        assert!(generated.contains_key(&page), "no {page}");
        let roff_name = format!("gatehouse-{c}").replace('-', "\\-");
        assert!(main_page.contains(&roff_name), "gatehouse.1 lacks {c}");
        assert!(bash.contains(c), "the bash completion lacks {c}");
    }
    let run = String::from_utf8_lossy(&generated["man/gatehouse-run.1"]).into_owned();
    for opt in ["upgrade", "daemon", "config"] {
        assert!(
            run.contains(&format!("\\-\\-{opt}")),
            "gatehouse-run.1 lacks --{opt}:\n{run}"
        );
    }
    assert!(main_page.contains(".SH SIGNALS") && main_page.contains(CONFIG));
    // groff renders every page without a warning (skipped loudly without groff, failed in CI).
    if require_binary("groff") {
        for (key, roff) in generated.iter().filter(|(k, _)| k.starts_with("man/")) {
            let out = pipe(
                Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]),
                roff,
            );
            assert!(out.is_empty(), "groff warns about {key}:\n{out}");
        }
    }
}

/// Runs `cmd` with `input` on stdin; its stderr.
fn pipe(cmd: &mut Command, input: &[u8]) -> String {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `[Service]` of the packaged unit: key → every value it is given, in order.
fn service_section(unit: &str) -> BTreeMap<String, Vec<String>> {
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut in_service = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                keys.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
    }
    keys
}

/// The unit runs the packaged binary on the packaged config as `gatehouse`, with no capability
/// but CAP_NET_BIND_SERVICE, a read-only system, and writes only where the config points;
/// reload is the graceful upgrade; `systemd-analyze verify` accepts it.
#[test]
fn unit_runs_as_gatehouse_sandboxed_and_reload_is_the_upgrade() {
    let u = Unpacked::new();
    let unit = u.read(UNIT);
    let s = service_section(&unit);
    let one = |k: &str| set_once(&s, k);
    assert_eq!(one("User"), "gatehouse");
    assert_eq!(one("Group"), "gatehouse");
    assert_eq!(one("Type"), "forking");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("AmbientCapabilities"), "CAP_NET_BIND_SERVICE");
    assert_eq!(one("ProtectSystem"), "strict");
    for k in [
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ] {
        assert_eq!(one(k), "yes", "{k}");
    }
    assert_eq!(one("RuntimeDirectory"), "gatehouse");
    assert_eq!(one("LogsDirectory"), "gatehouse");
    let check = format!("/usr/bin/gatehouse check -c {CONFIG}");
    assert_eq!(s["ExecStartPre"], std::slice::from_ref(&check));
    assert_eq!(
        one("ExecStart"),
        format!("/usr/bin/gatehouse run -c {CONFIG} --daemon")
    );
    assert_eq!(
        s["ExecReload"],
        [format!("/usr/bin/gatehouse upgrade -c {CONFIG}")],
        "reload = `gatehouse upgrade`: check, new process, SIGQUIT (tests/upgrade.rs runs it)"
    );
    the_shipped_config_writes_where_the_unit_lets_it(&u, &s);
    if !require_binary("systemd-analyze") {
        return;
    }
    systemd_analyze_accepts(&u, &unit);
}

/// The one value `[Service]` key `k` is given; panics when it is set never or more than once.
fn set_once<'a>(s: &'a BTreeMap<String, Vec<String>>, k: &str) -> &'a str {
    match s.get(k).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("{k}= should be set once, is {other:?}"),
    }
}

/// The shipped config agrees with the unit (`[Service]` in `s`): pid file, upgrade socket and
/// any log file where the service may write.
fn the_shipped_config_writes_where_the_unit_lets_it(
    u: &Unpacked,
    s: &BTreeMap<String, Vec<String>>,
) {
    let writable: Vec<&str> = set_once(s, "ReadWritePaths").split_whitespace().collect();
    assert_eq!(writable, ["/run/gatehouse", "/var/log/gatehouse"]);
    let conf: serde_yaml::Value = serde_yaml::from_str(&u.read(CONFIG)).unwrap();
    let server = &conf["server"];
    assert_eq!(server["pid_file"].as_str(), Some(set_once(s, "PIDFile")));
    let sock = server["upgrade_sock"].as_str().unwrap_or_default();
    assert!(sock.starts_with("/run/gatehouse/"), "upgrade_sock {sock}");
    for written in [&server["error_log"], &conf["audit"]["path"]] {
        if let Some(p) = written.as_str() {
            assert!(
                writable.iter().any(|w| p.starts_with(&format!("{w}/"))),
                "{p} is not under ReadWritePaths {writable:?}"
            );
        }
    }
}

/// `systemd-analyze verify` says nothing about the unit. It checks that the binaries exist,
/// so a copy runs the unpacked one; it exits 0 on unknown keys and bad values, so anything it
/// says fails the test.
fn systemd_analyze_accepts(u: &Unpacked, unit: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("gatehouse.service");
    let unpacked_bin = u.path("/usr/bin/gatehouse");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/gatehouse", unpacked_bin.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(&copy)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {}\n{said}",
        out.status
    );
}

/// A folder of stand-ins for the commands the maintainer scripts run, each logging its
/// arguments to `calls`, so the real scripts can run here without touching the system.
/// `getent` answers with `GETENT_RC`, `useradd` with `USERADD_RC`; PATH holds nothing else,
/// so a command the scripts gained and the test does not know fails the test.
fn stand_ins(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls");
    for (name, rc) in [
        ("getent", "${GETENT_RC:-0}"),
        ("useradd", "${USERADD_RC:-0}"),
        ("install", "0"),
        ("deb-systemd-helper", "0"),
        ("deb-systemd-invoke", "0"),
        ("systemctl", "0"),
    ] {
        let p = bin.join(name);
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\nexit {rc}\n",
                calls.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// postinst `configure` creates the system user when it is missing, leaves an existing one
/// alone, and fails when it cannot create it; every maintainer script parses.
#[test]
fn maintainer_scripts_create_the_user_once() {
    let u = Unpacked::new();
    for script in ["postinst", "prerm", "postrm"] {
        let p = u.control.join(script);
        assert!(p.is_file(), "no {script} in the package");
        output(Command::new("sh").arg("-n").arg(&p));
    }
    let postinst = u.control.join("postinst");
    let run = |getent: &str, useradd: &str, args: &[&str]| {
        let tmp = tempfile::tempdir().unwrap();
        let bin = stand_ins(tmp.path());
        let out = Command::new(&postinst)
            .args(args)
            .env_clear()
            .env("PATH", &bin)
            .env("GETENT_RC", getent)
            .env("USERADD_RC", useradd)
            .output()
            .unwrap();
        let calls = std::fs::read_to_string(tmp.path().join("calls")).unwrap_or_default();
        let said = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), calls, said)
    };
    // First install, no user yet (getent: 2 = not found).
    let (ok, calls, said) = run("2", "0", &["configure"]);
    assert!(ok, "postinst configure failed: {said}\n{calls}");
    let useradd: Vec<&str> = calls
        .lines()
        .filter(|l| l.starts_with("useradd "))
        .collect();
    assert_eq!(useradd.len(), 1, "{calls}");
    for want in ["--system", "--no-create-home", "/usr/sbin/nologin"] {
        assert!(useradd[0].contains(want), "{}", useradd[0]);
    }
    assert!(useradd[0].ends_with(" gatehouse"), "{}", useradd[0]);
    assert!(calls.contains("getent passwd gatehouse"), "{calls}");
    // Reinstall or upgrade: the user exists.
    let (ok, calls, said) = run("0", "0", &["configure", "0.0.1"]);
    assert!(
        ok,
        "postinst configure (user exists) failed: {said}\n{calls}"
    );
    assert!(!calls.contains("useradd"), "{calls}");
    // A user that cannot be created fails the installation instead of a unit that cannot start.
    let (ok, calls, _) = run("2", "1", &["configure"]);
    assert!(!ok, "postinst ignored a failing useradd:\n{calls}");
}

/// The shipped config fails `check` as shipped (no certificates yet), passes after the first
/// step its header documents, and runs with the packaged binary: TLS with client certificates,
/// the Kea route's default deny, metrics; paths moved from / into a temp dir.
#[tokio::test]
async fn shipped_config_passes_check_and_runs_after_the_first_step() {
    let u = Unpacked::new();
    let root = u.root.to_str().unwrap().to_string();
    let relocate = |s: &str| {
        s.replace("/etc/gatehouse/", &format!("{root}/etc/gatehouse/"))
            .replace("/run/gatehouse/", &format!("{root}/run/gatehouse/"))
            .replace("/var/log/gatehouse/", &format!("{root}/var/log/gatehouse/"))
    };
    let shipped = u.read(CONFIG);
    let config = u.path(CONFIG);
    std::fs::write(&config, relocate(&shipped)).unwrap();
    // The folders postinst and the unit make.
    for d in [
        "/etc/gatehouse/identities",
        "/run/gatehouse",
        "/var/log/gatehouse",
    ] {
        std::fs::create_dir_all(u.path(d)).unwrap();
    }
    let bin = u.path("/usr/bin/gatehouse");
    check_passes_after_the_first_step(&bin, &shipped, &config, &relocate);

    // Run it, on ports of this test.
    let config_arg = config.to_str().unwrap();
    let mut conf: serde_yaml::Value = serde_yaml::from_str(&relocate(&shipped)).unwrap();
    let (port, metrics) = (reserved_port(), reserved_port());
    conf["listeners"][0]["address"] = format!("127.0.0.1:{port}").into();
    conf["metrics"]["address"] = format!("127.0.0.1:{metrics}").into();
    std::fs::write(&config, serde_yaml::to_string(&conf).unwrap()).unwrap();
    let log = u.root.join("gatehouse.log");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new(&bin)
            .args(["run", "-c", config_arg])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    for p in [port, metrics] {
        let a = ([127, 0, 0, 1], p).into();
        wait_listening("packaged gatehouse", &mut child.0, a, deadline, &log);
    }
    let pid = std::fs::read_to_string(u.path("/run/gatehouse/gatehouse.pid")).unwrap();
    assert_eq!(pid.trim(), child.0.id().to_string(), "server.pid_file");

    if require_binary("curl") {
        let certs = u.path("/etc/gatehouse/certs");
        // client_auth: required — no certificate, no handshake.
        let (ok, out) = curl_kea_command(&certs, port, false);
        assert!(!ok, "a client without a certificate was served:\n{out}");
        // The dev client (CN=dev-client) matches no rule: default deny, Kea-shaped, over HTTP/2.
        let (ok, out) = curl_kea_command(&certs, port, true);
        assert!(ok, "{out}");
        let (body, status) = out.rsplit_once('\n').unwrap();
        assert_eq!(status, "403 2", "{body}");
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["result"], 403, "{body}");
        let text = body["text"].as_str().unwrap_or_default();
        assert!(text.contains("cn=dev-client"), "{text}");
    }
    let m = metrics_text(metrics).await;
    assert!(m.contains("gatehouse_build_info"), "{m}");
}

/// The relocated shipped config at `config` fails `check` (no certificates), and passes once
/// the `gatehouse dev-certs` step its header spells out has run.
fn check_passes_after_the_first_step(
    bin: &Path,
    shipped: &str,
    config: &Path,
    relocate: &impl Fn(&str) -> String,
) {
    let gatehouse = |args: &[&str]| {
        let out = Command::new(bin).args(args).output().unwrap();
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let config_arg = config.to_str().unwrap();
    let (ok, out) = gatehouse(&["check", "-c", config_arg]);
    assert!(
        !ok,
        "the shipped config passed check without certificates:\n{out}"
    );
    assert!(
        out.contains("listeners[0].tls.cert") && out.contains("certs/server.crt"),
        "{out}"
    );
    let step: Vec<String> = shipped
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .find(|l| l.starts_with("gatehouse dev-certs "))
        .unwrap_or_else(|| panic!("no `gatehouse dev-certs` step in the header:\n{shipped}"))
        .split_whitespace()
        .skip(1)
        .map(relocate)
        .collect();
    let step: Vec<&str> = step.iter().map(String::as_str).collect();
    let (ok, out) = gatehouse(&step);
    assert!(ok, "{out}");
    let (ok, out) = gatehouse(&["check", "-c", config_arg]);
    assert!(ok, "the shipped config after the first step:\n{out}");
}

/// curl (HTTP/2) POSTing a Kea `config-get` to the packaged edge on `port`, trusting the dev
/// CA in `certs`, with the dev client certificate when `client`: (success, body and
/// `\n<status> <version>`).
fn curl_kea_command(certs: &Path, port: u16, client: bool) -> (bool, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .arg("--cacert")
    .arg(certs.join("ca.crt"))
    .args(["-H", "Content-Type: application/json"])
    .args(["-d", r#"{"command": "config-get", "service": ["dhcp4"]}"#]);
    if client {
        cmd.arg("--cert")
            .arg(certs.join("client.crt"))
            .arg("--key")
            .arg(certs.join("client.key"));
    }
    let out = cmd
        .arg(format!("https://localhost:{port}/"))
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}
