//! docs/cluster-relay.md, "Gatehouse in front of an Icinga master", run as written: its shell
//! blocks in order, in one shell, against a real Icinga master and agents (2.13, this host's,
//! and 2.16, chrooted: `icinga2` in the script is that release's), with only
//! what a test must put in replaced: host paths (into a temp dir), ports, the edge's name, the
//! service user (`nobody`/`nogroup` for `gatehouse`), and `systemctl restart` (Gatehouse started
//! as that user instead). Then an agent connects through the edge, the enrolled agent holds a
//! CA-signed certificate, the REST API answers through the edge, and the fingerprint the docs
//! tell agents to compare is the one they were shown.
//!
//! Needs root (`install -o root`, `runuser`), icinga2, openssl and curl: skips loudly without
//! them, fails under CI.

mod common;

use common::icinga::{self, common_conf, eventually, Node};
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const SALT: &str = "walkthrough-salt";
const API_AUTH: &str = "root:icinga-secret";

/// The section's ```sh blocks, each with who runs it (its first comment line).
fn blocks() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cluster-relay.md"),
    )
    .unwrap();
    let start = doc
        .find("## Gatehouse in front of an Icinga master")
        .expect("the section");
    let section = &doc[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let mut out = Vec::new();
    let mut rest = section;
    while let Some(i) = rest.find("```sh\n") {
        let body = &rest[i + 6..];
        let end = body.find("\n```").expect("a closed block");
        let block = &body[..end];
        let who = block.lines().next().unwrap_or("").to_string();
        assert!(
            who.starts_with("# on "),
            "a block without `# on …`: {block}"
        );
        out.push((who, block.to_string()));
        rest = &body[end + 4..];
    }
    out
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        == 0
}

fn fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_relay_guide_runs_as_written_with_icinga_2_13() {
    guide("2.13").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_relay_guide_runs_as_written_with_icinga_2_16() {
    guide("2.16").await
}

async fn guide(release: &'static str) {
    if !is_root() {
        let msg = "\n!!!!! SKIPPED: the walkthrough installs files as root and runs as another user !!!!!\n";
        assert!(!in_ci(), "{msg}");
        eprintln!("{msg}");
        return;
    }
    for b in ["openssl", "runuser", "curl", "install"] {
        if !require_binary(b) {
            return;
        }
    }
    let Some(release) = icinga::Release::get(release) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let ports = Ports {
        master: reserved_port(),
        edge: reserved_port(),
    };
    let aport = reserved_port();

    // --- the master: its CA, its own certificate, the ApiListener off the public port ---
    let master = Node::of(t, "master", release.clone());
    let agent = Node::of(t, "agent", release.clone());
    let enrolled = Node::of(t, "enrolled", release.clone());
    let ca_crt = master.new_ca_master();
    let _master_d = master.start(&guide_master_conf(ports.master));
    master.wait_listening(ports.master, Duration::from_secs(30));

    // --- the guide's blocks, in one shell ---
    let run_dir = t.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let chown = Command::new("chown")
        .args(["nobody:nogroup"])
        .arg(&run_dir)
        .status()
        .unwrap();
    assert!(chown.success());
    let log = t.join("gatehouse.log");
    let script = guide_script(t, &run_dir, &log, ports, &release, &master, &enrolled);
    let (_gh, said) = run_guide(t, &script, &run_dir, &log).await;

    the_guide_left_what_it_says(t, &ca_crt, &enrolled, &said);

    // An agent through the edge, under its own identity; asked through the edge's REST API.
    let (_, csr) = agent.new_cert("agent1", &agent.certs());
    master.sign_csr(&csr, &agent.certs().join("agent1.crt"));
    std::fs::copy(&ca_crt, agent.certs().join("ca.crt")).unwrap();
    let agent_conf = icinga::agent1_conf(
        &common_conf("agent1", "agent1", ""),
        &format!(
            "object Endpoint \"master1\" {{ host = \"127.0.0.1\"; port = \"{}\" }}\nobject Endpoint \"agent1\" {{ }}",
            ports.edge
        ),
        aport,
    );
    let _agent_d = agent.start(&agent_conf);
    let edge_ca = t.join("edge-certs/ca.crt");
    eventually(
        "agent1 connected, as the master tells through the edge",
        Duration::from_secs(60),
        || agent1_connected(&edge_ca, ports.edge),
        || {
            format!(
                "--- gatehouse\n{}\n--- master\n{}\n--- agent\n{}",
                icinga::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 20),
                icinga::tail(&master.log(), 20),
                icinga::tail(&agent.log(), 20)
            )
        },
    )
    .await;
    // Under agent1's own identity (the log is written a moment later).
    master.wait_log(
        "New client connection for identity 'agent1'",
        Duration::from_secs(10),
    );
}

/// The identity key is root's, 0640, as the guide set it; the enrolled agent holds a
/// certificate the Icinga CA signed; what save-cert was shown, and saved, is the edge's
/// master1 certificate: the one the guide says to compare with.
fn the_guide_left_what_it_says(t: &Path, ca_crt: &Path, enrolled: &Node, said: &str) {
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let key = std::fs::metadata(t.join("etc/gatehouse/identities/agent1.key")).unwrap();
        assert_eq!(key.permissions().mode() & 0o777, 0o640);
        assert_eq!(key.uid(), 0);
    }
    let ca = boring::x509::X509::from_pem(&std::fs::read(ca_crt).unwrap()).unwrap();
    let signed =
        boring::x509::X509::from_pem(&std::fs::read(enrolled.certs().join("agent2.crt")).unwrap())
            .unwrap();
    assert!(
        signed.verify(&ca.public_key().unwrap()).unwrap_or(false),
        "agent2.crt is not signed by the Icinga CA:\n{said}"
    );
    assert_eq!(
        fingerprint(&enrolled.certs().join("trusted-parent.crt")),
        fingerprint(&t.join("etc/gatehouse/edge/master1.crt"))
    );
}

/// The master's API port and the edge's public one.
#[derive(Clone, Copy)]
struct Ports {
    master: u16,
    edge: u16,
}

/// The master on `mport`, with endpoints agent1 and agent2 (a zone of its own) and an API
/// user.
fn guide_master_conf(mport: u16) -> String {
    format!(
        r#"{}
object Endpoint "master1" {{ }}
object Endpoint "agent1" {{ }}
object Endpoint "agent2" {{ }}
object Zone "agent2" {{ endpoints = [ "agent2" ]; parent = "master" }}
object ApiListener "api" {{
  bind_host = "127.0.0.1"
  bind_port = {mport}
  ticket_salt = TicketSalt
}}
object ApiUser "root" {{ password = "icinga-secret"; permissions = [ "*" ] }}
"#,
        common_conf("master1", "master", SALT)
    )
}

/// The guide's blocks as one bash script, each after an `icinga2` function running
/// `release` on the node the block is for, with what a test must put in replaced (paths
/// under `t`, ports, the edge's name, the service user; `systemctl restart` becomes
/// Gatehouse started as `nobody`, logging to `log`, waited for on its port).
fn guide_script(
    t: &Path,
    run_dir: &Path,
    log: &Path,
    ports: Ports,
    release: &icinga::Release,
    master: &Node,
    enrolled: &Node,
) -> String {
    let (gport, mport) = (ports.edge, ports.master);
    let bin_dir = Path::new(gatehouse_bin()).parent().unwrap();
    let mut script = format!(
        "set -euo pipefail\nexport PATH={}:$PATH\nexport ICINGA2_USER=root ICINGA2_GROUP=root\n",
        bin_dir.display()
    );
    let fill = |text: &str, data: &Path| {
        text.replace("/root/edge-certs", &t.join("edge-certs").display().to_string())
            .replace("/etc/gatehouse", &t.join("etc/gatehouse").display().to_string())
            .replace("/run/gatehouse", &run_dir.display().to_string())
            .replace("/var/lib/icinga2", &data.display().to_string())
            .replace("0.0.0.0:5665", &format!("127.0.0.1:{gport}"))
            .replace("--port 5665", &format!("--port {gport}"))
            .replace("127.0.0.1:5666", &format!("127.0.0.1:{mport}"))
            .replace("edge.example.org", "127.0.0.1")
            .replace("-g gatehouse", "-g nogroup")
            .replace("runuser -u gatehouse", "runuser -u nobody")
            .replace(
                "systemctl restart gatehouse",
                &format!(
                    "(runuser -u nobody -- gatehouse run -c {cfg} > {log} 2>&1 &)\n\
                     for i in $(seq 150); do (exec 3<>/dev/tcp/127.0.0.1/{gport}) 2>/dev/null && break; sleep 0.1; done",
                    cfg = t.join("etc/gatehouse/gatehouse.yaml").display(),
                    log = log.display()
                ),
            )
    };
    let blocks = blocks();
    assert!(blocks.len() >= 5, "{blocks:?}");
    std::fs::create_dir_all(t.join("etc/gatehouse")).unwrap();
    for (who, block) in &blocks {
        let node = if who.contains("CA master") {
            master
        } else if who.contains("agent") {
            enrolled
        } else {
            assert!(who.contains("edge"), "{who}");
            master
        };
        script.push_str(&format!(
            "icinga2() {{ {} \"$@\" {}; }}\necho '>>> {who}'\n{}\n",
            release.shell(),
            node.defs().join(" "),
            fill(block, &node.dir.join("data"))
        ));
    }
    script
}

/// The Gatehouse the guide started, by the pid in its pid file; killed on drop.
struct KillPid(String);

impl Drop for KillPid {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.trim()).status();
    }
}

/// Runs `script` in `t` (within 120 s): it succeeds, `gatehouse check` as the service user
/// said `ok`, and Gatehouse wrote its pid file in `run_dir`. Returns the Gatehouse it started
/// and what the script and Gatehouse (`log`) said.
async fn run_guide(t: &Path, script: &str, run_dir: &Path, log: &Path) -> (KillPid, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(t)
            .output(),
    )
    .await
    .expect("the guide within 120 s")
    .unwrap();
    let said = format!(
        "{}{}\n--- gatehouse\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let pid = std::fs::read_to_string(run_dir.join("gatehouse.pid")).unwrap_or_default();
    let gh = KillPid(pid.clone());
    assert!(
        out.status.success(),
        "the guide failed:\n{script}\n---\n{said}"
    );
    assert!(
        said.contains(": ok"),
        "gatehouse check as the service user:\n{said}"
    );
    assert!(
        !pid.trim().is_empty(),
        "gatehouse wrote no pid file:\n{said}"
    );
    (gh, said)
}

/// Whether the master, asked through the edge on `gport` with curl, lists agent1 connected.
async fn agent1_connected(ca_path: &Path, gport: u16) -> bool {
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "-u", API_AUTH, "--cacert"])
        .arg(ca_path)
        .args(["--resolve", &format!("master1:{gport}:127.0.0.1")])
        .arg(format!("https://master1:{gport}/v1/status/ApiListener"))
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("\"agent1\"")
}
