//! Real Icinga 2 master and agent (2.13, 2.14, 2.16, and a 2.16 master with a 2.13 agent) with
//! Gatehouse between them on one port: the agent
//! connects through the relay under its own identity, check results reach the master, the
//! master's REST API answers through the same port, and enrollment and renewal through the
//! edge give agents certificates for their own keys.

mod common;

use boring::x509::X509;
use common::icinga::{self, common_conf, eventually, Node};
use common::*;
use gatehouse::pki::{Ca, CertSpec};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;

const API_AUTH: &str = "Basic cm9vdDppY2luZ2Etc2VjcmV0"; // root:icinga-secret
const SALT: &str = "gatehouse-test-salt";

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn read_cert(p: &Path) -> X509 {
    X509::from_pem(&std::fs::read(p).unwrap()).unwrap()
}

fn key_of(p: &Path) -> boring::pkey::PKey<boring::pkey::Private> {
    boring::pkey::PKey::private_key_from_pem(&std::fs::read(p).unwrap()).unwrap()
}

/// Seconds from now until `cert` expires.
fn secs_left(cert: &X509) -> i64 {
    let now = boring::asn1::Asn1Time::from_unix(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as _,
    )
    .unwrap();
    let d = now.diff(cert.not_after()).unwrap();
    i64::from(d.days) * 86400 + i64::from(d.secs)
}

/// GET a REST API path on the master, through Gatehouse's cluster port.
async fn api(gh: u16, ca: &Path, path: &str) -> Option<serde_json::Value> {
    let o = ClientOpts {
        ca: Some(ca.to_path_buf()),
        cert: None,
        sni: Some("master1".into()),
        tls12: false,
    };
    let r = request(
        addr(gh),
        Some(&o),
        "GET",
        path,
        &[
            ("Authorization", API_AUTH),
            ("Accept", "application/json"),
            ("Host", "master1"),
        ],
        b"",
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.json())
}

/// The size of the largest file named `name` anywhere under `dir` (0 if none).
fn synced_size(dir: &Path, name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let p = e.path();
            if p.is_dir() {
                synced_size(&p, name)
            } else if e.file_name() == name {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0)
}

/// A TCP forwarder on 127.0.0.1 to `to`, counting the bytes `to` sends back: how much of an
/// answer has left the master, whatever the edge did with it.
async fn counting_forwarder(to: SocketAddr) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = reserved_port();
    let l = tokio::net::TcpListener::bind(addr(port)).await.unwrap();
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let Ok(up) = tokio::net::TcpStream::connect(to).await else {
                continue;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let (mut dr, mut dw) = down.into_split();
                let (mut ur, mut uw) = up.into_split();
                let upward = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut dr, &mut uw).await;
                    let _ = uw.shutdown().await;
                });
                let mut buf = vec![0u8; 16384];
                while let Ok(n) = ur.read(&mut buf).await {
                    if n == 0 || dw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = dw.shutdown().await;
                upward.abort();
            });
        }
    });
    (port, count)
}

/// Whether the master reports agent1 among its connected endpoints (asked through Gatehouse).
async fn agent1_connected(gport: u16, ca: &Path) -> bool {
    api(gport, ca, "/v1/status/ApiListener")
        .await
        .is_some_and(|v| {
            v["results"][0]["status"]["api"]["conn_endpoints"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e == "agent1"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icinga_2_13_master_and_agent_through_gatehouse() {
    master_and_agent("2.13", "2.13").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icinga_2_14_master_and_agent_through_gatehouse() {
    master_and_agent("2.14", "2.14").await
}

/// 2.15 and later drop a verified connection whose CN names no Endpoint: enrollment through
/// the edge goes upstream anonymous (a self-signed certificate), as an agent without one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icinga_2_16_master_and_agent_through_gatehouse() {
    master_and_agent("2.16", "2.16").await
}

/// A rolling upgrade: the master is on 2.16 while the agents are still on 2.13.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icinga_2_16_master_with_a_2_13_agent_through_gatehouse() {
    master_and_agent("2.16", "2.13").await
}

/// The whole story with a master of release `m` and an agent of release `a`.
async fn master_and_agent(m: &'static str, a: &'static str) {
    let (Some(m), Some(a)) = (icinga::Release::get(m), icinga::Release::get(a)) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // All reserved: Icinga binds with SO_REUSEPORT, so a released port another test also got
    // would be shared with that test's node.
    let (mport, aport) = (reserved_port(), reserved_port());
    let (gport, metrics_port) = (reserved_port(), reserved_port());
    let master = Node::of(root, "master", m);
    let agent = Node::of(root, "agent", a);
    let pki = StoryPki::make(root, &master, &agent);
    write_big_global_zone(&master);

    let master_conf = story_master_conf(mport);
    let master_d = master.start(&master_conf);
    master.wait_listening(mport, Duration::from_secs(30));
    let gh = Gatehouse::start(root, &story_edge_conf(&pki, gport, mport, metrics_port));
    // agent1, whose only way to the master is Gatehouse.
    let agent_conf = icinga::agent1_conf(
        &common_conf("agent1", "agent1", ""),
        &format!(
            "object Endpoint \"master1\" {{ host = \"127.0.0.1\"; port = \"{gport}\" }}\nobject Endpoint \"agent1\" {{ }}"
        ),
        aport,
    );
    let _agent_d = agent.start(&agent_conf);
    let story = Story {
        root: root.to_path_buf(),
        master,
        agent,
        pki,
        gport,
        metrics_port,
        gh,
    };

    story.agent1_links_as_itself_and_reports().await;
    story.agent1_is_renewed_for_its_own_key().await;
    story.agent2_enrolls_through_the_edge();
    // 5. The 17 MiB global zone reaches the agent: a message from the parent is not held to
    //    the child-side limit (Icinga takes any size from its parent).
    eventually(
        "the 17 MiB global zone synced to the agent",
        Duration::from_secs(90),
        || async { synced_size(&story.agent.dir.join("data/api"), "big.conf") > 16 << 20 },
        || story.diag(),
    )
    .await;
    if story.master.release.name != "2.13" && story.master.release.name != "2.14" {
        story.an_identity_without_endpoint_is_not_taken().await;
    }

    // 7. The master restarts: the agent's link through Gatehouse comes back on its own.
    drop(master_d);
    let _ = std::fs::remove_file(story.master.dir.join("log/icinga2.log"));
    eventually(
        "agent1 gone while the master is down",
        Duration::from_secs(20),
        || async {
            api(gport, &story.pki.ca_crt, "/v1/status/ApiListener")
                .await
                .is_none()
        },
        || story.diag(),
    )
    .await;
    let _master_d = story.master.start(&master_conf);
    story.master.wait_listening(mport, Duration::from_secs(30));
    eventually(
        "agent1 reconnected through Gatehouse after the master restart",
        Duration::from_secs(60),
        || agent1_connected(gport, &story.pki.ca_crt),
        || story.diag(),
    )
    .await;
}

/// The story's certificates: Icinga's own CA on the master (icinga2 pki new-ca / new-cert /
/// sign-csr), agent1's key with a certificate that expires in 10 days (it must get renewed),
/// and the edge's certificates, all signed by the Icinga CA, none holding an agent's key.
struct StoryPki {
    ca_crt: PathBuf,
    icinga_ca: Ca,
    agent_key: PathBuf,
    /// The edge's folder: `edge.*` (CN gatehouse-edge), `master1.*`, `identities/`.
    edge: PathBuf,
}

impl StoryPki {
    fn make(root: &Path, master: &Node, agent: &Node) -> StoryPki {
        let ca_crt = master.new_ca_master();
        let (agent_key, _) = agent.new_cert("agent1", &agent.certs());
        let icinga_ca = Ca::from_pem(
            &std::fs::read(&ca_crt).unwrap(),
            &std::fs::read(master.dir.join("data/ca/ca.key")).unwrap(),
        )
        .unwrap();
        let short = icinga_ca
            .issue_for_key(
                &CertSpec::new("agent1")
                    .dns(&["agent1"])
                    .validity(-3600, 10 * 86400),
                key_of(&agent_key),
            )
            .unwrap();
        std::fs::write(agent.certs().join("agent1.crt"), short.cert_pem()).unwrap();
        std::fs::copy(&ca_crt, agent.certs().join("ca.crt")).unwrap();

        let edge = root.join("edge");
        let ids = edge.join("identities");
        std::fs::create_dir_all(&ids).unwrap();
        icinga_ca
            .issue(&CertSpec::new("master1").dns(&["master1"]))
            .unwrap()
            .write(&edge, "master1")
            .unwrap();
        icinga_ca
            .issue(
                &CertSpec::new("gatehouse-edge")
                    .dns(&["localhost"])
                    .ips(&["127.0.0.1"]),
            )
            .unwrap()
            .write(&edge, "edge")
            .unwrap();
        // cert_dir, minted as docs/cluster-relay.md says: a new key for CN=agent1, signed on the CA master.
        let (_, csr) = master.new_cert("agent1", &ids);
        master.sign_csr(&csr, &ids.join("agent1.crt"));
        StoryPki {
            ca_crt,
            icinga_ca,
            agent_key,
            edge,
        }
    }
}

/// A global zone whose config is larger than Icinga's (and Gatehouse's) 16 MiB limit on
/// messages from a child: the master's config::Update carrying it comes from the parent.
fn write_big_global_zone(master: &Node) {
    let big = master.dir.join("etc/zones.d/global-big");
    std::fs::create_dir_all(&big).unwrap();
    // Long lines: Icinga's parser keeps a stack entry per line (10,000 lines exhaust it).
    let line = format!("# {}\n", "x".repeat(64 * 1024 - 3));
    std::fs::write(big.join("big.conf"), line.repeat(17 * 16)).unwrap();
}

/// The story's master on `mport`: endpoints agent1 and agent2 (a zone of its own), an API
/// user, and `agent1-host` checked in agent1's zone every 2 s.
fn story_master_conf(mport: u16) -> String {
    format!(
        r#"{}
object Endpoint "master1" {{ }}
object Endpoint "agent1" {{ }}
object Endpoint "agent2" {{ }}
object Zone "agent2" {{ endpoints = [ "agent2" ]; parent = "master" }}
object ApiListener "api" {{
  bind_host = "127.0.0.1"
  bind_port = {mport}
  accept_config = false
  accept_commands = false
  ticket_salt = TicketSalt
}}
object ApiUser "root" {{ password = "icinga-secret"; permissions = [ "*" ] }}
object Host "agent1-host" {{ check_command = "dummy"; check_interval = 2s; retry_interval = 2s; zone = "agent1"; address = "127.0.0.1" }}
"#,
        common_conf("master1", "master", SALT)
    )
}

/// Gatehouse on the cluster port `gport` (HTTP and cluster, `master1` by SNI), relaying every
/// cluster route and the REST API to the master on `mport` with the `identities` cert_dir.
fn story_edge_conf(pki: &StoryPki, gport: u16, mport: u16, metrics_port: u16) -> Conf {
    let edge = &pki.edge;
    let (cert, key) = (edge.join("edge.crt"), edge.join("edge.key"));
    let master1 = (edge.join("master1.crt"), edge.join("master1.key"));
    Conf::new()
        .listener(
            Listener::new("cluster", gport)
                .protocols(&[Protocol::Http, Protocol::Cluster])
                .tls(
                    ListenerTls::new(&cert, &key)
                        .sni_cert(&["master1"], master1)
                        .client_auth(ClientAuth::Optional)
                        .client_ca(&pki.ca_crt),
                ),
        )
        .upstream(
            "icinga-master1",
            Group::new(local(mport)).tls(
                UpstreamTls::new("master1")
                    .ca(&pki.ca_crt)
                    .client_cert(&cert)
                    .client_key(&key),
            ),
        )
        .route(Route::new("icinga-api", "icinga-master1"))
        .cluster(
            Cluster::new("master1", "icinga-master1")
                .route("*", "icinga-master1")
                .cert_dir(edge.join("identities")),
        )
        .metrics(metrics_port)
}

/// A running master and agent1 with Gatehouse between them.
struct Story {
    root: PathBuf,
    master: Node,
    agent: Node,
    pki: StoryPki,
    gport: u16,
    metrics_port: u16,
    gh: Gatehouse,
}

impl Story {
    /// The logs worth reading when a step fails.
    fn diag(&self) -> String {
        format!(
            "--- gatehouse\n{}\n--- master\n{}\n--- agent\n{}",
            icinga::tail(&self.gh.log_text(), 30),
            icinga::tail(&self.master.log(), 30),
            icinga::tail(&self.agent.log(), 30)
        )
    }

    /// Step 1: The master reports agent1 connected — asked through Gatehouse's same port — under
    /// its own identity; 2. a check result from agent1 arrives at the master, with the
    /// agent's capabilities, and Gatehouse counts it.
    async fn agent1_links_as_itself_and_reports(&self) {
        let (gport, ca_crt) = (self.gport, &self.pki.ca_crt);
        eventually(
            "agent1 in conn_endpoints",
            Duration::from_secs(60),
            || agent1_connected(gport, ca_crt),
            || self.diag(),
        )
        .await;
        // The master's log is written after its endpoint table is: poll it.
        eventually(
            "the master to log agent1's identity (not the edge's)",
            Duration::from_secs(15),
            || async {
                self.master
                    .log()
                    .contains("New client connection for identity 'agent1'")
            },
            || self.diag(),
        )
        .await;
        eventually(
            "a check result from agent1",
            Duration::from_secs(60),
            || async {
                api(gport, ca_crt, "/v1/objects/hosts/agent1-host")
                    .await
                    .is_some_and(|v| {
                        v["results"][0]["attrs"]["last_check_result"]["check_source"] == "agent1"
                    })
            },
            || self.diag(),
        )
        .await;
        // icinga::Hello reaches the master as agent1 sent it: its `capabilities` bits land on
        // the master's Endpoint (2.14: ExecuteArbitraryCommand, IfwApiCheckCommand; 2.16 adds
        // a third; a 2.13 agent sends none, and the master grants it the first from its
        // version).
        if self.master.release.name != "2.13" {
            let v = api(gport, ca_crt, "/v1/objects/endpoints/agent1")
                .await
                .unwrap_or_default();
            let caps = &v["results"][0]["attrs"]["capabilities"];
            let want = match self.agent.release.name {
                "2.13" => 1,
                "2.14" => 3,
                _ => 7,
            };
            assert_eq!(caps.as_u64(), Some(want), "agent1's capabilities: {v}");
        }
        let m = self.metrics().await;
        let forwarded = m
            .lines()
            .find(|l| l.starts_with(r#"gatehouse_cluster_messages_total{direction="upstream",method="event::CheckResult",verdict="forwarded"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(
            forwarded > 0,
            "Gatehouse must count forwarded check results:\n{m}"
        );
    }

    async fn metrics(&self) -> String {
        request(addr(self.metrics_port), None, "GET", "/metrics", &[], b"")
            .await
            .unwrap()
            .text()
    }

    /// Step 3: Renewal: agent1's 10-day certificate is replaced with a long-lived one for its own
    /// key.
    async fn agent1_is_renewed_for_its_own_key(&self) {
        let crt = self.agent.certs().join("agent1.crt");
        eventually(
            "agent1's certificate renewed",
            Duration::from_secs(60),
            || async { secs_left(&read_cert(&crt)) > 30 * 86400 },
            || self.diag(),
        )
        .await;
        let renewed = read_cert(&crt);
        assert!(
            renewed
                .public_key()
                .unwrap()
                .public_eq(&key_of(&self.pki.agent_key)),
            "renewed for the agent's own key"
        );
        assert!(renewed
            .verify(&self.pki.icinga_ca.cert().public_key().unwrap())
            .unwrap());
    }

    /// Step 4: Enrollment through the edge: a self-signed agent2 with a valid ticket gets a
    /// CA-signed certificate for its own key; a wrong ticket is refused. (Blocking is fine
    /// here: Gatehouse and Icinga run in their own processes.)
    fn agent2_enrolls_through_the_edge(&self) {
        let ca_key = self.pki.icinga_ca.cert().public_key().unwrap();
        let ticket = String::from_utf8(
            self.master
                .release
                .command()
                .args(["pki", "ticket", "--cn", "agent2", "--salt", SALT])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        let (d, out) = self.enroll("agent2-good", &ticket);
        assert!(
            out.status.success(),
            "pki request failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.diag()
        );
        let signed = read_cert(&d.join("agent2.crt"));
        assert!(signed.verify(&ca_key).unwrap(), "CA-signed");
        assert!(
            signed
                .public_key()
                .unwrap()
                .public_eq(&key_of(&d.join("agent2.key"))),
            "for agent2's own key"
        );

        let (d, out) = self.enroll("agent2-bad", "0000000000000000000000000000000000000000");
        let still = read_cert(&d.join("agent2.crt"));
        assert!(
            !out.status.success() || !still.verify(&ca_key).unwrap(),
            "a wrong ticket must not yield a signed certificate"
        );
        // Icinga's FileLogger flushes on a timer: wait for the line.
        self.master
            .wait_log("for CN 'agent2' is invalid", Duration::from_secs(15));
    }

    /// `icinga2 pki new-cert`, `save-cert` and `request` for agent2 with `ticket` through the
    /// edge, in `root/dir`: that folder and the request's output.
    fn enroll(&self, dir: &str, ticket: &str) -> (PathBuf, std::process::Output) {
        let d = self.root.join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let p = |f: &str| d.join(f).to_str().unwrap().to_string();
        let agent = &self.agent;
        agent.run(
            &[
                "pki",
                "new-cert",
                "--cn",
                "agent2",
                "--key",
                &p("agent2.key"),
                "--cert",
                &p("agent2.crt"),
            ],
            false,
        );
        let port = self.gport.to_string();
        agent.run(
            &[
                "pki",
                "save-cert",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--trustedcert",
                &p("trusted.crt"),
            ],
            false,
        );
        let out = agent.run(
            &[
                "pki",
                "request",
                "--host",
                "127.0.0.1",
                "--port",
                &port,
                "--ticket",
                ticket,
                "--key",
                &p("agent2.key"),
                "--cert",
                &p("agent2.crt"),
                "--trustedcert",
                &p("trusted.crt"),
                "--ca",
                &p("ca.crt"),
            ],
            true,
        );
        (d, out)
    }

    /// Step 6: An identity the master has no Endpoint for (agent3: CA-signed, in cert_dir): 2.15
    /// and later hang up at once, and the edge says why instead of "closed".
    async fn an_identity_without_endpoint_is_not_taken(&self) {
        let (ca, edge) = (&self.pki.icinga_ca, &self.pki.edge);
        let agent3 = ca.issue(&CertSpec::new("agent3")).unwrap();
        let (a3_crt, a3_key) = agent3.write(edge, "agent3").unwrap();
        ca.issue(&CertSpec::new("agent3"))
            .unwrap()
            .write(&edge.join("identities"), "agent3")
            .unwrap();
        let opts = ClientOpts {
            ca: Some(self.pki.ca_crt.clone()),
            cert: Some((a3_crt, a3_key)),
            sni: Some("master1".into()),
            tls12: false,
        };
        let mut s = tls_connect(addr(self.gport), &opts).await.unwrap();
        let hello = r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21605}}"#;
        use tokio::io::AsyncWriteExt;
        s.write_all(&gatehouse::cluster::codec::encode(hello.as_bytes()))
            .await
            .unwrap();
        let line = self.gh.wait_log("did not take the identity 'agent3'");
        assert!(line.contains("Endpoint"), "{line}");
        let m = self.metrics().await;
        assert!(
            m.contains(r#"gatehouse_cluster_links_closed_total{end="not_taken"} 1"#),
            "{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icinga_2_13_rest_through_gatehouse() {
    rest_through_gatehouse("2.13").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icinga_2_16_rest_through_gatehouse() {
    rest_through_gatehouse("2.16").await
}

/// Icinga's REST API through the edge, with every idle bound low (keep-alive 3 s, the
/// upstream's `read_timeout` 8 s and `answer_timeout` 6 s): curl sending Basic credentials only
/// after a 401 (`--anyauth`, over HTTP/2, as 2.16.4 fixed for direct clients), and a silent
/// event stream on a route with its own `answer_timeout` ending at `read_timeout`, as
/// documented, while one that keeps receiving passive check results outlives every bound.
async fn rest_through_gatehouse(release: &'static str) {
    let Some(release) = icinga::Release::get(release) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (mport, gport) = (reserved_port(), reserved_port());
    let master = Node::of(root, "master", release);
    let ca_crt = master.new_ca_master();
    let _master_d = master.start(&rest_master_conf(mport));
    master.wait_listening(mport, Duration::from_secs(30));
    let (fport, from_master) = counting_forwarder(addr(mport)).await;
    let idp = common::oidc::Idp::start();
    let mut conf = rest_edge_conf(root, &master, &ca_crt, gport, fport);
    if let Some(idp) = &idp {
        conf = with_token_route(conf, root, idp);
    }
    let gh = Gatehouse::start(root, &conf);
    let rest = Rest {
        opts: ClientOpts {
            ca: Some(ca_crt.clone()),
            cert: None,
            sni: Some("master1".into()),
            tls12: false,
        },
        master,
        ca_crt,
        gport,
        gh,
        from_master,
    };

    rest.curl_anyauth_is_answered_over_h2().await;
    if let Some(idp) = &idp {
        rest.tokens_reach_the_api_as_gatehouse(idp).await;
    }
    // 2. A silent event stream ends at read_timeout (8 s), as documented. (One that keeps
    // receiving is not cut by any idle bound: `hardening_http::a_stream_that_keeps_receiving_is_not_cut`.)
    let mut silent = rest
        .open_stream("AcknowledgementCleared", "gatehouse-silent")
        .await;
    let t0 = std::time::Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(20)).await,
        "a silent event stream stayed open\n{}",
        rest.diag()
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(7) && took < Duration::from_secs(16),
        "a silent stream ended after {took:?} (read_timeout 8s)"
    );
    rest.a_flowing_stream_outlives_every_bound().await;
    rest.a_large_answer_streams_through().await;
}

/// The REST test's master on `mport`: an API user, a checker, `passive1` and [`BULK`] hosts.
fn rest_master_conf(mport: u16) -> String {
    format!(
        r#"{}
object Endpoint "master1" {{ }}
object Endpoint "agent1" {{ }}
object ApiListener "api" {{ bind_host = "127.0.0.1"; bind_port = {mport} }}
object ApiUser "root" {{ password = "icinga-secret"; permissions = [ "*" ] }}
object CheckerComponent "checker" {{ }}
object Host "passive1" {{ check_command = "dummy"; enable_active_checks = false }}
for (i in range({BULK})) {{
  object Host "bulk-" + i {{ check_command = "dummy"; enable_active_checks = false }}
}}
"#,
        common_conf("master1", "master", SALT)
    )
}

/// Listener `api` on `gport` (keep-alive 3 s, presenting `master1`) in front of the master
/// reached through the forwarder on `fport`, with certificates of the master's CA written
/// to `root/edge`; `/v1/events` with its own `answer_timeout`.
fn rest_edge_conf(root: &Path, master: &Node, ca_crt: &Path, gport: u16, fport: u16) -> Conf {
    let icinga_ca = Ca::from_pem(
        &std::fs::read(ca_crt).unwrap(),
        &std::fs::read(master.dir.join("data/ca/ca.key")).unwrap(),
    )
    .unwrap();
    let edge = root.join("edge");
    std::fs::create_dir_all(&edge).unwrap();
    let (m_crt, m_key) = icinga_ca
        .issue(&CertSpec::new("master1").dns(&["master1"]))
        .unwrap()
        .write(&edge, "master1")
        .unwrap();
    let (e_crt, e_key) = icinga_ca
        .issue(&CertSpec::new("gatehouse-edge"))
        .unwrap()
        .write(&edge, "edge")
        .unwrap();
    let mut group = Group::new(local(fport)).tls(
        UpstreamTls::new("master1")
            .ca(ca_crt)
            .client_cert(&e_crt)
            .client_key(&e_key),
    );
    // Above Icinga's own jitter: it delivers some events ~4 s late (measured direct, 2.16).
    group.read_timeout = Some("8s".into());
    group.answer_timeout = Some("6s".into());
    Conf::new()
        .listener(
            Listener::new("api", gport)
                .keepalive_timeout("3s")
                .tls(ListenerTls::new(&m_crt, &m_key).client_auth(ClientAuth::None)),
        )
        .upstream("icinga", group)
        .route(
            Route::new("events", "icinga")
                .path("/v1/events")
                .answer_timeout("10m"),
        )
        .route(Route::new("api", "icinga").path("/"))
}

/// Operators with tokens of the test provider on `/v1/objects/hosts/passive1` (group
/// `dhcp-admins` only; the rest of the API stays the callers' own basic credentials): Gatehouse checks the token and asks Icinga as its own API user (`root`, from
/// `upstreams.icinga-root.basic_auth`).
fn with_token_route(conf: Conf, root: &Path, idp: &common::oidc::Idp) -> Conf {
    let password = root.join("edge/api-password");
    std::fs::write(&password, "icinga-secret\n").unwrap();
    let mut group = conf.upstreams["icinga"].clone();
    group.basic_auth = Some(conf::UpstreamAuth {
        user: "root".into(),
        password_file: password,
    });
    conf.upstream("icinga-root", group)
        .issuer(
            "idp",
            conf::Issuer::new(idp.issuer(), "urn:gatehouse").ca(idp.ca_pem_path()),
        )
        .route(
            Route::new("hosts", "icinga-root")
                .path("/v1/objects/hosts/passive1")
                .bearer(conf::Bearer::new(["idp"]))
                .allow(["claim:groups=dhcp-admins"]),
        )
}

/// A master's REST API behind Gatehouse on `gport`, through a byte-counting forwarder.
struct Rest {
    master: Node,
    ca_crt: PathBuf,
    gport: u16,
    gh: Gatehouse,
    /// Bytes that left the master so far.
    from_master: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// An anonymous client asking for `master1`.
    opts: ClientOpts,
}

impl Rest {
    fn diag(&self) -> String {
        format!(
            "--- gatehouse\n{}\n--- master\n{}",
            icinga::tail(&self.gh.log_text(), 30),
            icinga::tail(&self.master.log(), 30)
        )
    }

    /// Step 1: Basic credentials sent only after a 401, as curl --anyauth does (HTTP/2 to the
    /// edge).
    async fn curl_anyauth_is_answered_over_h2(&self) {
        let gport = self.gport;
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "15",
                    "--anyauth",
                    "-u",
                    "root:icinga-secret",
                ])
                .args(["-w", "\n%{http_code} %{http_version} %{num_connects}"])
                .arg("--cacert")
                .arg(&self.ca_crt)
                .arg("--resolve")
                .arg(format!("master1:{gport}:127.0.0.1"))
                .arg(format!(
                    "https://master1:{gport}/v1/status/IcingaApplication"
                ))
                .output(),
        )
        .await
        .expect("curl within 20 s")
        .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let last = text.lines().last().unwrap_or("").to_string();
        assert!(
            last.starts_with("200 2"),
            "curl --anyauth (HTTP/2): {last}\n{text}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.diag()
        );
    }

    /// curl with its defaults (HTTP/2) on `path`, with `token` as a bearer token: status and body.
    async fn curl_token(&self, path: &str, token: Option<&str>) -> (String, String) {
        let gport = self.gport;
        let mut cmd = tokio::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "15", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(&self.ca_crt)
            .arg("--resolve")
            .arg(format!("master1:{gport}:127.0.0.1"));
        if let Some(t) = token {
            cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
        }
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            cmd.arg(format!("https://master1:{gport}{path}")).output(),
        )
        .await
        .expect("curl within 20 s")
        .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.to_string(), body.to_string())
    }

    /// Tokens on the token route: an admin's reaches Icinga as Gatehouse's API user, a viewer's
    /// is refused at the edge, none is a 401 with a Bearer challenge; on a route without
    /// `bearer` the token goes to Icinga untouched, which refuses it (it wants its own users).
    async fn tokens_reach_the_api_as_gatehouse(&self, idp: &common::oidc::Idp) {
        use common::oidc::{ADMIN, VIEWER};
        let admin = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
        let viewer = idp.token(VIEWER.0, VIEWER.1, "urn:gatehouse");
        let (status, body) = self
            .curl_token("/v1/objects/hosts/passive1", Some(&admin))
            .await;
        assert_eq!(status, "200", "{body}\n{}", self.diag());
        assert!(body.contains("\"passive1\""), "{body}");
        let (status, _) = self
            .curl_token("/v1/objects/hosts/passive1", Some(&viewer))
            .await;
        assert_eq!(status, "403", "viewers are not dhcp-admins");
        let (status, _) = self.curl_token("/v1/objects/hosts/passive1", None).await;
        assert_eq!(status, "401");
        let (status, body) = self
            .curl_token("/v1/status/IcingaApplication", Some(&admin))
            .await;
        assert_eq!(
            status, "401",
            "Icinga itself refuses a bearer token: {body}"
        );
    }

    /// An event stream of `types` through the edge, its request sent.
    async fn open_stream(&self, types: &str, queue: &str) -> tokio_boring::SslStream<TcpStream> {
        let mut s = tls_connect(addr(self.gport), &self.opts).await.unwrap();
        let req = format!(
            "POST /v1/events?types={types}&queue={queue} HTTP/1.1\r\nHost: master1\r\nAuthorization: {API_AUTH}\r\nAccept: application/json\r\nContent-Length: 0\r\n\r\n"
        );
        use tokio::io::AsyncWriteExt;
        s.write_all(req.as_bytes()).await.unwrap();
        s
    }

    /// A passive check result for `passive1` with `output`, answered 200.
    async fn post_result(&self, output: String) {
        let body = format!(
            r#"{{"type":"Host","filter":"host.name==\"passive1\"","exit_status":0,"plugin_output":"{output}"}}"#
        );
        let r = request(
            addr(self.gport),
            Some(&self.opts),
            "POST",
            "/v1/actions/process-check-result",
            &[
                ("Host", "master1"),
                ("Authorization", API_AUTH),
                ("Accept", "application/json"),
            ],
            body.as_bytes(),
        )
        .await
        .unwrap_or_else(|e| panic!("{output}: {e}"));
        assert_eq!(r.status, 200, "{output}: {}", r.text());
    }

    /// Step 3: A stream that keeps receiving is not cut: a passive check result each second, each
    /// one reaching the stream's reader before the next is sent (Icinga delays some by ~4 s),
    /// for at least 32 s (4× read_timeout, 10× keep-alive, 5× the group's answer_timeout),
    /// the stream still open at the end.
    async fn a_flowing_stream_outlives_every_bound(&self) {
        let mut flowing = self.open_stream("CheckResult", "gatehouse-flowing").await;
        let mut seen = Vec::new();
        // The subscription starts some time after the request: results until one shows.
        let mut warm = 0;
        loop {
            warm += 1;
            self.post_result(format!("warm-{warm}")).await;
            match read_until(&mut flowing, &mut seen, "warm-", Duration::from_millis(700)).await {
                Ok(()) => break,
                Err(e) if e.starts_with("not within") && warm < 20 => continue,
                Err(e) => panic!("the event stream never started: {e}\n{}", self.diag()),
            }
        }
        let t0 = std::time::Instant::now();
        let mut tick = 0;
        while t0.elapsed() < Duration::from_secs(32) {
            tick += 1;
            self.post_result(format!("tick-{tick}-done")).await;
            if let Err(e) = read_until(
                &mut flowing,
                &mut seen,
                &format!("tick-{tick}-done"),
                Duration::from_secs(15),
            )
            .await
            {
                panic!(
                    "tick {tick}, {:?} in: the flowing stream {e}\n{}",
                    t0.elapsed(),
                    self.diag()
                );
            }
            // The feed's pace: a result a second for 32 s is the stream under test.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(
            !closed_within(&mut flowing, Duration::from_millis(500)).await,
            "the flowing stream ended with its last event\n{}",
            self.diag()
        );
    }

    /// Step 4: A large answer streams through: the client has the first objects while the master
    /// is still sending the rest, and the edge holds only what is in flight, not the answer.
    async fn a_large_answer_streams_through(&self) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let from_master = &self.from_master;
        // What the earlier streams still had in flight, once it has all left.
        let base = settled(from_master).await;
        let mut s = tls_connect(addr(self.gport), &self.opts).await.unwrap();
        s.write_all(
            format!("GET /v1/objects/hosts HTTP/1.1\r\nHost: master1\r\nAuthorization: {API_AUTH}\r\nAccept: application/json\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        read_until(
            &mut s,
            &mut got,
            r#""name":"bulk-"#,
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("the first hosts: {e}\n{}", self.diag()));
        // The client stops reading; once nothing more moves, what left the master is in flight.
        let held = settled(from_master).await - base;
        let had = got.len();
        let mut chunk = vec![0u8; 65536];
        loop {
            match tokio::time::timeout(Duration::from_secs(60), s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("the rest of the hosts did not come\n{}", self.diag()),
            }
        }
        let total = from_master.load(Ordering::Relaxed) - base;
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200")
                && text.contains(&format!(r#""name":"bulk-{}""#, BULK - 1)),
            "{}",
            icinga::tail(&text, 3)
        );
        assert!(
            held < total / 2,
            "the client had {had} bytes and read no more, yet {held} of the answer's {total} bytes \
             had left the master: the edge holds the answer"
        );
        eprintln!(
            "objects query: {total} bytes from the master; {held} had left it while the client \
             held {had} and read no more"
        );
    }
}

/// The count once it stopped moving: unchanged over half a second (at most 20 s). Quiet is
/// the condition, so it is sampled over time.
async fn settled(count: &std::sync::atomic::AtomicU64) -> u64 {
    use std::sync::atomic::Ordering;
    let mut last = count.load(Ordering::Relaxed);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = count.load(Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// Reads until `want` arrived; Err(what happened) when the stream ends or `within` passes.
async fn read_until<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    seen: &mut Vec<u8>,
    want: &str,
    within: Duration,
) -> Result<(), String> {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    while !String::from_utf8_lossy(seen).contains(want) {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(n)) => seen.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(format!("failed: {e}")),
            Err(_) => return Err(format!("not within {within:?}")),
        }
    }
    Ok(())
}

/// Hosts in the REST test's master: a `v1/objects/hosts` answer of tens of MB.
const BULK: usize = 20000;
