//! Real Icinga 2.13 in the two shapes an edge meets besides "an agent dials its master":
//!
//! - **the master dials its agent through Gatehouse** (`cluster.routes[].toward: child`): the
//!   master's config sync flows down to the agent and the agent's check results come back up,
//!   while an agent still cannot push `config::Update` or `event::ExecuteCommand` up;
//! - **two masters in one HA zone behind one upstream group**: when the master holding an
//!   agent's link stops, the agent's next connect goes to the other one.
//!
//! Every wait has a deadline and fails with the Gatehouse and Icinga logs.

mod common;

use boring::ssl::SslAcceptor;
use bytes::BytesMut;
use common::icinga::{self, common_conf, eventually, Node};
use common::*;
use gatehouse::cluster::codec;
use gatehouse::pki::{Ca, CertSpec, Issued};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const API_AUTH: &str = "Basic cm9vdDppY2luZ2Etc2VjcmV0"; // root:icinga-secret

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Icinga's own PKI, as an operator builds it: `pki new-ca` on `ca_node`, then for each
/// `(node, endpoint)` a key and CSR (`pki new-cert`) signed on the CA node (`pki sign-csr`),
/// with `ca.crt` beside it. Returns the CA (to mint the edge's certificates) and its path.
fn icinga_pki(ca_node: &Node, nodes: &[(&Node, &str)]) -> (Ca, PathBuf) {
    ca_node.run(&["pki", "new-ca"], false);
    let ca_crt = ca_node.dir.join("data/ca/ca.crt");
    for (node, cn) in nodes {
        let p = |ext: &str| node.certs().join(format!("{cn}.{ext}"));
        let (_, csr) = node.new_cert(cn, &node.certs());
        ca_node.sign_csr(&csr, &p("crt"));
        std::fs::copy(&ca_crt, node.certs().join("ca.crt")).unwrap();
    }
    let ca = Ca::from_pem(
        &std::fs::read(&ca_crt).unwrap(),
        &std::fs::read(ca_node.dir.join("data/ca/ca.key")).unwrap(),
    )
    .unwrap();
    (ca, ca_crt)
}

/// `dir/<stem>.crt` and `dir/<stem>.key`.
fn cert_pair(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// A certificate for endpoint `cn` (SAN DNS = CN, as Icinga's own), signed by the Icinga CA
/// with a new key minted for the edge, written as `dir/cn.crt` + `.key`.
fn mint(ca: &Ca, dir: &Path, cn: &str) -> Issued {
    std::fs::create_dir_all(dir).unwrap();
    let i = ca.issue(&CertSpec::new(cn).dns(&[cn])).unwrap();
    i.write(dir, cn).unwrap();
    i
}

/// GET `path` from the REST API of the Icinga node `endpoint` listening on `port`, directly.
async fn api(port: u16, endpoint: &str, ca: &Path, path: &str) -> Option<Value> {
    let o = ClientOpts {
        ca: Some(ca.to_path_buf()),
        cert: None,
        sni: Some(endpoint.into()),
        tls12: false,
    };
    let r = request(
        addr(port),
        Some(&o),
        "GET",
        path,
        &[
            ("Authorization", API_AUTH),
            ("Accept", "application/json"),
            ("Host", endpoint),
        ],
        b"",
    )
    .await
    .ok()?;
    (r.status == 200).then(|| r.json())
}

/// The endpoints `endpoint` (on `port`) reports connected.
async fn conn_endpoints(port: u16, endpoint: &str, ca: &Path) -> Vec<String> {
    api(port, endpoint, ca, "/v1/status/ApiListener")
        .await
        .and_then(|v| {
            v["results"][0]["status"]["api"]["conn_endpoints"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(String::from))
                        .collect()
                })
        })
        .unwrap_or_default()
}

/// `last_check_result` of an object (`hosts/NAME` or `services/HOST!NAME`) as `endpoint` sees it.
/// Whether master `endpoint` lists agent1 connected and has an agent1-host result from agent1
/// that ended after `since` (Unix seconds).
async fn holds_agent1(port: u16, endpoint: &str, ca: &Path, since: f64) -> bool {
    conn_endpoints(port, endpoint, ca)
        .await
        .iter()
        .any(|e| e == "agent1")
        && last_check(port, endpoint, ca, "hosts/agent1-host")
            .await
            .is_some_and(|r| {
                r["check_source"] == "agent1"
                    && r["execution_end"].as_f64().is_some_and(|t| t > since)
            })
}

async fn last_check(port: u16, endpoint: &str, ca: &Path, object: &str) -> Option<Value> {
    let v = api(port, endpoint, ca, &format!("/v1/objects/{object}")).await?;
    let r = v["results"][0]["attrs"]["last_check_result"].clone();
    r.is_object().then_some(r)
}

/// The value of the first metric line starting with `prefix` (0 when absent).
fn metric(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Gatehouse's log and the tails of the Icinga logs, for failure messages.
fn diag(gh: &Gatehouse, nodes: &[&Node]) -> String {
    let mut s = format!("--- gatehouse\n{}", icinga::tail(&gh.log_text(), 40));
    for n in nodes {
        s.push_str(&format!("\n--- {}\n{}", n.name, icinga::tail(&n.log(), 30)));
    }
    s
}

/// A stand-in for an Icinga agent's ApiListener (CN = its endpoint name, client certificate
/// required and checked against the Icinga CA, like Icinga's own): on every connection it
/// sends `say` (one netstring each) and records every message it receives.
struct FakeAgent {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    async fn start(acc: SslAcceptor, say: Vec<&'static str>) -> FakeAgent {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let (g, acc) = (got.clone(), Arc::new(acc));
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (g, acc, say) = (g.clone(), acc.clone(), say.clone());
                tokio::spawn(async move {
                    let Ok(mut s) = tokio_boring::accept(&acc, tcp).await else {
                        return;
                    };
                    let out: Vec<u8> = say
                        .iter()
                        .flat_map(|m| codec::encode(m.as_bytes()))
                        .collect();
                    if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
                        return;
                    }
                    let mut buf = BytesMut::with_capacity(64 * 1024);
                    loop {
                        while let Ok(Some(f)) = codec::decode(&mut buf, 64 << 20) {
                            if let Ok(v) = serde_json::from_slice(f.payload()) {
                                g.lock().unwrap().push(v);
                            }
                        }
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        FakeAgent { addr, got, task }
    }

    fn methods(&self) -> Vec<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|v| v["method"].as_str().map(String::from))
            .collect()
    }
}

/// 1. master1 dials agent1 through Gatehouse. The agent has no `host` for the master (it never
///    dials); the master's Endpoint "agent1" points at Gatehouse, and Icinga sends the endpoint
///    name as SNI. Gatehouse answers with a CN=agent1 certificate (by SNI), connects on to the
///    agent's ApiListener as master1 (`cert_dir/master1.*`), and the route's `toward: child`
///    turns the method policy around: config sync flows down, check results come up, and what
///    a child may not send its parent (`config::Update`, `event::ExecuteCommand`) is refused.
///    Real Icinga never sends those upward, so that half is proven with a stand-in "agent2"
///    that the real master also dials through Gatehouse and that tries both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_dials_agent_through_gatehouse_2_13() {
    master_dials_agent("2.13").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_dials_agent_through_gatehouse_2_14() {
    master_dials_agent("2.14").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_dials_agent_through_gatehouse_2_16() {
    master_dials_agent("2.16").await
}

async fn master_dials_agent(release: &'static str) {
    let Some(release) = icinga::Release::get(release) else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (mport, aport, gport, metrics_port) = (
        reserved_port(),
        reserved_port(),
        reserved_port(),
        reserved_port(),
    );

    let master = Node::of(root, "master", release.clone());
    let agent = Node::of(root, "agent", release);
    let (ca, ca_crt) = icinga_pki(&master, &[(&master, "master1"), (&agent, "agent1")]);
    let agent_key = shorten_agent1_certificate(&ca, &agent);
    let edge = mint_dialled_edge(&ca, root);
    let fake = stand_in_agent2(&ca, root).await;

    // --- agent1: listens, never dials; accepts config from its parent ---
    let agent_conf = icinga::agent1_conf(
        &common_conf("agent1", "agent1", ""),
        // No host: the agent never dials, the master comes through Gatehouse.
        "object Endpoint \"master1\" { }\nobject Endpoint \"agent1\" { }",
        aport,
    );
    let _agent_d = agent.start(&agent_conf);
    agent.wait_listening(aport, Duration::from_secs(20));

    let conf = child_routes_conf(&edge, &ca_crt, gport, aport, fake.addr)
        .audit_path(root.join("audit.jsonl"))
        .metrics(metrics_port);
    let gh = Gatehouse::start(root, &conf);
    let _master_d = master.start(&dialling_master_conf(&master, mport, gport));
    let d = Dialled {
        root: root.to_path_buf(),
        master,
        agent,
        ca_crt,
        mport,
        metrics_port,
        gh,
        fake,
    };
    d.the_link_comes_up().await;
    d.config_flows_down_and_results_up(&agent_key).await;
    d.the_policy_follows_the_hierarchy().await;
    eprintln!(
        "master_dials_agent_through_gatehouse: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// agent1's certificate expires in 10 days (its own key): it must be renewed through the
/// child route, where its request travels back along the link the master opened. Returns
/// agent1's key.
fn shorten_agent1_certificate(ca: &Ca, agent: &Node) -> boring::pkey::PKey<boring::pkey::Private> {
    let agent_key = boring::pkey::PKey::private_key_from_pem(
        &std::fs::read(agent.certs().join("agent1.key")).unwrap(),
    )
    .unwrap();
    let short = ca
        .issue_for_key(
            &CertSpec::new("agent1")
                .dns(&["agent1"])
                .validity(-3600, 10 * 86400),
            agent_key.clone(),
        )
        .unwrap();
    std::fs::write(agent.certs().join("agent1.crt"), short.cert_pem()).unwrap();
    agent_key
}

/// The edge's certificates, all signed by the Icinga CA with keys of its own: the ones it
/// serves by SNI when the master dials agent1 / agent2, its own identity, and the one it
/// presents to agents on master1's behalf (cert_dir, keyed by the client's CN). Returns the
/// edge's folder.
fn mint_dialled_edge(ca: &Ca, root: &Path) -> PathBuf {
    let edge = root.join("edge");
    mint(ca, &edge, "agent1");
    mint(ca, &edge, "agent2");
    mint(ca, &edge, "gatehouse-edge");
    mint(ca, &edge.join("identities"), "master1");
    edge
}

/// The stand-in agent2: says hello, then tries to push config and a command up, then
/// heartbeats; records what the master sends it.
async fn stand_in_agent2(ca: &Ca, root: &Path) -> FakeAgent {
    FakeAgent::start(
        acceptor(&mint(ca, &root.join("agent2"), "agent2"), Some(ca.cert()), false),
        vec![
            r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":3,"version":21306}}"#,
            r#"{"jsonrpc":"2.0","method":"config::Update","params":{"update":{"master":{"/evil.conf":"object Host \"evil\" { check_command = \"dummy\" }"}},"update_v2":{},"checksums":{}}}"#,
            r#"{"jsonrpc":"2.0","method":"event::ExecuteCommand","params":{"command_type":"check_command","command":"dummy","host":"agent1-host","macros":{}}}"#,
            r#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#,
        ],
    )
    .await
}

/// Gatehouse between the dialling master and its agents: by SNI, `agent1` to the real agent
/// on `aport`, `agent2` to the stand-in at `fake`, both `toward: child`.
fn child_routes_conf(edge: &Path, ca_crt: &Path, gport: u16, aport: u16, fake: SocketAddr) -> Conf {
    let pair = |stem: &str| cert_pair(edge, stem);
    let (edge_crt, edge_key) = pair("gatehouse-edge");
    // The agents' upstreams trust Icinga's CA and see the edge's own certificate on the wire;
    // the identity they authenticate comes from cert_dir (master1.crt: the master's).
    let child = |port: String, sni: &str| {
        Group::new(port).tls(
            UpstreamTls::new(sni)
                .ca(ca_crt)
                .client_cert(&edge_crt)
                .client_key(&edge_key),
        )
    };
    Conf::new()
        .listener(
            Listener::new("cluster", gport)
                .protocols(&[Protocol::Cluster])
                .tls(
                    ListenerTls::new(&edge_crt, &edge_key)
                        // The master requires the server's CN to equal the endpoint it dials.
                        .sni_cert(&["agent1"], pair("agent1"))
                        .sni_cert(&["agent2"], pair("agent2"))
                        .client_auth(ClientAuth::Required)
                        .client_ca(ca_crt),
                ),
        )
        .upstream("agent1", child(format!("127.0.0.1:{aport}"), "agent1"))
        .upstream("agent2", child(fake.to_string(), "agent2"))
        // Both links carry CN master1, one per endpoint dialled: the per-identity link limit
        // counts (CN, SNI), so neither replaces the other.
        .cluster(
            Cluster::default()
                .child_route("agent1", "agent1")
                .child_route("agent2", "agent2")
                .cert_dir(edge.join("identities")),
        )
}

/// master1 on `mport`, dialling agent1 and agent2 through Gatehouse on `gport`; it syncs a
/// service (`zones.d/agent1/synced.conf`, written here) to agent1.
fn dialling_master_conf(master: &Node, mport: u16, gport: u16) -> String {
    std::fs::create_dir_all(master.dir.join("etc/zones.d/agent1")).unwrap();
    std::fs::write(
        master.dir.join("etc/zones.d/agent1/synced.conf"),
        r#"object Service "synced" { host_name = "agent1-host"; check_command = "dummy"; check_interval = 2s; retry_interval = 2s; vars.dummy_text = "synced through gatehouse" }
"#,
    )
    .unwrap();
    format!(
        r#"{}
object Endpoint "master1" {{ }}
object Endpoint "agent1" {{ host = "127.0.0.1"; port = "{gport}" }}   // Gatehouse, SNI agent1
object Endpoint "agent2" {{ host = "127.0.0.1"; port = "{gport}" }}   // Gatehouse, SNI agent2
object Zone "agent2" {{ endpoints = [ "agent2" ]; parent = "master" }}
object ApiListener "api" {{
  bind_host = "127.0.0.1"
  bind_port = {mport}
  accept_config = false
  accept_commands = false
}}
object ApiUser "root" {{ password = "icinga-secret"; permissions = [ "*" ] }}
object Host "agent1-host" {{ check_command = "dummy"; check_interval = 2s; retry_interval = 2s; zone = "agent1"; address = "127.0.0.1" }}
"#,
        common_conf("master1", "master", "")
    )
}

/// A master dialling agent1 (and the stand-in agent2) through Gatehouse.
struct Dialled {
    root: PathBuf,
    master: Node,
    agent: Node,
    ca_crt: PathBuf,
    mport: u16,
    metrics_port: u16,
    gh: Gatehouse,
    fake: FakeAgent,
}

impl Dialled {
    fn diag(&self) -> String {
        diag(&self.gh, &[&self.master, &self.agent])
    }

    /// 1. The link comes up: the master reports agent1 connected, each side saw the other's
    ///    identity, and Gatehouse routed it by SNI.
    async fn the_link_comes_up(&self) {
        eventually(
            "the master to report agent1 connected",
            Duration::from_secs(30),
            || async {
                api(
                    self.mport,
                    "master1",
                    &self.ca_crt,
                    "/v1/objects/endpoints/agent1",
                )
                .await
                .is_some_and(|v| v["results"][0]["attrs"]["connected"] == true)
            },
            || self.diag(),
        )
        .await;
        self.gh.wait_log("sni=agent1 → upstream agent1");
        self.agent.wait_log(
            "New client connection for identity 'master1'",
            Duration::from_secs(10),
        );
    }

    /// 2. Config sync flows down: the agent stores the master's zones.d/agent1, reloads, and
    ///    checks the synced service; its result comes back up to the master. 3. Renewal
    ///    through the child route: the master signed a new certificate for the agent's own
    ///    key (it judged the agent's certificate, not the edge's).
    async fn config_flows_down_and_results_up(
        &self,
        agent_key: &boring::pkey::PKey<boring::pkey::Private>,
    ) {
        let (mport, ca_crt) = (self.mport, &self.ca_crt);
        eventually(
            "a check result of the synced service from agent1 at the master",
            Duration::from_secs(45),
            || async {
                last_check(mport, "master1", ca_crt, "services/agent1-host!synced")
                    .await
                    .is_some_and(|r| {
                        r["check_source"] == "agent1" && r["output"] == "synced through gatehouse"
                    })
            },
            || self.diag(),
        )
        .await;
        let agent_crt = self.agent.certs().join("agent1.crt");
        let days_left = |p: &Path| {
            let c = boring::x509::X509::from_pem(&std::fs::read(p).unwrap_or_default()).ok()?;
            let now = boring::asn1::Asn1Time::days_from_now(0).ok()?;
            now.diff(c.not_after()).ok().map(|d| d.days)
        };
        eventually(
            "agent1's certificate renewed through the child route",
            Duration::from_secs(30),
            || async { days_left(&agent_crt).is_some_and(|d| d > 30) },
            || self.diag(),
        )
        .await;
        let renewed = boring::x509::X509::from_pem(&std::fs::read(&agent_crt).unwrap()).unwrap();
        assert!(
            renewed.public_key().unwrap().public_eq(agent_key),
            "renewed for the agent's own key"
        );
        let synced = std::fs::read_to_string(
            self.agent
                .dir
                .join("data/api/zones/agent1/_etc/synced.conf"),
        )
        .unwrap_or_default();
        assert!(synced.contains("synced through gatehouse"), "{synced}");
        // The agent restarts with its renewed certificate and the master dials it again on its
        // own reconnect timer (10 s): the host's result may come after that (CI saw it).
        eventually(
            "agent1-host's results reach the master too",
            Duration::from_secs(30),
            || async {
                last_check(mport, "master1", ca_crt, "hosts/agent1-host")
                    .await
                    .is_some_and(|r| r["check_source"] == "agent1")
            },
            || self.diag(),
        )
        .await;
    }

    /// 3. The policy follows the hierarchy. Down: the master's config::Update reached the
    ///    stand-in agent2. Up: its config::Update and event::ExecuteCommand were refused
    ///    (counted, audited, logged), while its hello passed.
    async fn the_policy_follows_the_hierarchy(&self) {
        eventually(
            "agent2's pushes refused and the master's config::Update delivered to it",
            Duration::from_secs(20),
            || async {
                let m = metrics_text(self.metrics_port).await;
                let denied = |method: &str| {
                    metric(&m, &format!(r#"gatehouse_cluster_messages_total{{direction="downstream",method="{method}",verdict="denied"}}"#))
                };
                denied("config::Update") >= 1
                    && denied("event::ExecuteCommand") >= 1
                    && ["icinga::Hello", "config::Update"]
                        .iter()
                        .all(|want| self.fake.methods().iter().any(|m| m == want))
            },
            || format!("agent2 got {:?}\n{}", self.fake.methods(), self.diag()),
        )
        .await;
        let m = metrics_text(self.metrics_port).await;
        let count = |dir: &str, method: &str, verdict: &str| {
            metric(
                &m,
                &format!(
                    r#"gatehouse_cluster_messages_total{{direction="{dir}",method="{method}",verdict="{verdict}"}}"#
                ),
            )
        };
        // Link directions: "upstream" = from the client (the master), "downstream" = from the agent.
        assert!(count("upstream", "config::Update", "forwarded") >= 2, "{m}");
        assert_eq!(count("upstream", "config::Update", "denied"), 0, "{m}");
        assert!(
            count("downstream", "event::CheckResult", "forwarded") >= 1,
            "{m}"
        );
        assert!(
            count("downstream", "icinga::Hello", "forwarded") >= 2,
            "{m}"
        );
        self.refusals_are_audited_and_logged();
        // What passed the policy arrived: agent2's icinga::Hello set its version at the master.
        // (Icinga itself would silently discard a config::Update from a child zone: the edge's
        // refusal is the second line of defence, and the one that is logged and counted.)
        let v = api(
            self.mport,
            "master1",
            &self.ca_crt,
            "/v1/objects/endpoints/agent2",
        )
        .await;
        let attrs = v.as_ref().map(|v| &v["results"][0]["attrs"]);
        assert!(
            attrs.is_some_and(|a| a["connected"] == true && a["icinga_version"] == 21306),
            "{attrs:?}\n{}",
            self.diag()
        );
    }

    fn refusals_are_audited_and_logged(&self) {
        let audit = std::fs::read_to_string(self.root.join("audit.jsonl")).unwrap_or_default();
        let refused: Vec<Value> = audit
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        for method in ["config::Update", "event::ExecuteCommand"] {
            assert!(
                refused.iter().any(|r| r["kind"] == "cluster"
                    && r["method"] == method
                    && r["direction"] == "downstream"
                    && r["verdict"] == "denied"),
                "no audit record for the refused {method}:\n{audit}"
            );
        }
        assert!(
            self.gh
                .log_text()
                .contains("denied config::Update downstream message (cluster.policy[1])"),
            "{}",
            self.diag()
        );
    }
}

/// The config header of the HA test: both masters in zone "master".
fn ha_conf(node: &str, zone: &str) -> String {
    format!(
        r#"const NodeName = "{node}"
const ZoneName = "{zone}"
const TicketSalt = ""
include <itl>
object FileLogger "main-log" {{ path = LogDir + "/icinga2.log"; severity = "information" }}
object Zone "master" {{ endpoints = [ "master1", "master2" ] }}
object Zone "agent1" {{ endpoints = [ "agent1" ]; parent = "master" }}
object Endpoint "agent1" {{ }}
"#
    )
}

/// 2. Two masters in one HA zone behind one upstream group with a TCP health check. agent1
///    dials "master1" at Gatehouse; its link goes to one of the masters. That master stops: the
///    link drops, the agent reconnects (every 10 s), the health check has taken the stopped
///    master out of rotation, and Gatehouse sends the agent to the other master, which now
///    holds agent1's link and keeps receiving its check results.
///
/// How an operator sets this up, and why:
/// - Downstream, Gatehouse shows ONE identity per SNI. The agent dials one name (master1) and
///   requires that CN: Gatehouse serves a CN=master1 certificate it was issued for that name,
///   whichever master is behind it. The agent's other master Endpoint has no `host`, so the
///   agent opens exactly one link and failover is Gatehouse's job. (The alternative, both
///   master Endpoints with a host and one route per SNI, leaves failover to Icinga, but its two
///   links share the CN agent1 and today replace each other unless
///   `max_links_per_identity: 2`: links are counted per CN, not per CN and endpoint.)
/// - Upstream, Gatehouse verifies the masters' own, unmodified Icinga certificates (SAN DNS =
///   CN = master1 / master2): `sni: master1` plus `alt_cn: master2` accepts either, and an
///   Icinga HA zone has at most two endpoints. (With more names one would re-issue the masters'
///   certificates with a shared DNS SAN and set `sni` to it.) Icinga ignores the SNI it is
///   sent, so master2 answers a link sent with SNI master1.
/// - Both masters are in the agent's parent zone, so everything master2 sends on a link the
///   agent takes for master1's is accepted, and vice versa.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_masters_fail_over_2_13() {
    ha_masters("2.13").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_masters_fail_over_2_14() {
    ha_masters("2.14").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_masters_fail_over_2_16() {
    ha_masters("2.16").await
}

async fn ha_masters(release: &'static str) {
    let Some(release) = icinga::Release::get(release) else {
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (m1port, m2port, aport, gport, metrics_port) = (
        reserved_port(),
        reserved_port(),
        reserved_port(),
        reserved_port(),
        reserved_port(),
    );

    let m1 = Node::of(root, "master1", release.clone());
    let m2 = Node::of(root, "master2", release.clone());
    let agent = Node::of(root, "agent", release);
    let (ca_crt, edge) = ha_pki(root, &m1, &m2, &agent);

    // The HA zone: each master dials the other directly.
    let mut m1_d = Some(m1.start(&ha_master_conf("master1", m1port, (m1port, m2port))));
    let mut m2_d = Some(m2.start(&ha_master_conf("master2", m2port, (m1port, m2port))));
    for (n, p) in [(&m1, m1port), (&m2, m2port)] {
        n.wait_listening(p, Duration::from_secs(20));
    }
    let gh = Gatehouse::start(
        root,
        &ha_edge_conf(&edge, &ca_crt, gport, (m1port, m2port)).metrics(metrics_port),
    );
    // agent1: dials "master1" at Gatehouse; master2 has no host (see above).
    let agent_conf = icinga::agent1_conf(
        &ha_conf("agent1", "agent1"),
        &format!(
            "object Endpoint \"master1\" {{ host = \"127.0.0.1\"; port = \"{gport}\" }}\nobject Endpoint \"master2\" {{ }}"
        ),
        aport,
    );
    let _agent_d = agent.start(&agent_conf);
    let diag = || diag(&gh, &[&m1, &m2, &agent]);

    let first_port = first_link_peer(&gh, &diag).await;
    let (gone, gone_port, stay, stay_port, stay_name) = if first_port == m1port {
        (&mut m1_d, m1port, &m2, m2port, "master2")
    } else {
        assert_eq!(first_port, m2port);
        (&mut m2_d, m2port, &m1, m1port, "master1")
    };
    let gone_name = if stay_name == "master1" {
        "master2"
    } else {
        "master1"
    };
    eventually(
        &format!("{gone_name} to report agent1 connected and its check results"),
        Duration::from_secs(30),
        || holds_agent1(gone_port, gone_name, &ca_crt, 0.0),
        &diag,
    )
    .await;
    check_results_are_forwarded(metrics_port).await;

    // Stop the master holding the link.
    let stopped_at = now_secs();
    drop(gone.take());
    let t_stop = Instant::now();
    agent1_relinks_to(&gh, stay_port, stay_name, &diag).await;
    let relinked_after = t_stop.elapsed();
    eventually(
        &format!("{stay_name} to hold agent1's link and get fresh check results"),
        Duration::from_secs(20),
        || holds_agent1(stay_port, stay_name, &ca_crt, stopped_at + 1.0),
        &diag,
    )
    .await;
    // Icinga's FileLogger flushes on a timer: wait for the line.
    stay.wait_log(
        "New client connection for identity 'agent1'",
        Duration::from_secs(10),
    );
    eprintln!(
        "ha_masters_fail_over: link moved {:.1}s after the stop; whole test {:.1}s",
        relinked_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    drop(m1_d);
    drop(m2_d);
}

/// Icinga's PKI on master1 (for both masters and agent1) and the edge's certificates: its
/// own, master1's (served to the agent), agent1's `cert_dir` identity. Returns the CA
/// certificate and the edge's folder.
fn ha_pki(root: &Path, m1: &Node, m2: &Node, agent: &Node) -> (PathBuf, PathBuf) {
    let (ca, ca_crt) = icinga_pki(m1, &[(m1, "master1"), (m2, "master2"), (agent, "agent1")]);
    let edge = root.join("edge");
    mint(&ca, &edge, "master1");
    mint(&ca, &edge, "gatehouse-edge");
    mint(&ca, &edge.join("identities"), "agent1");
    (ca_crt, edge)
}

/// Gatehouse (metrics on `metrics_port`) counted agent1's check results as forwarded.
async fn check_results_are_forwarded(metrics_port: u16) {
    let m = metrics_text(metrics_port).await;
    assert!(
        metric(
            &m,
            r#"gatehouse_cluster_messages_total{direction="upstream",method="event::CheckResult",verdict="forwarded"}"#
        ) > 0,
        "{m}"
    );
}

/// Master `node` of the HA zone, its API on `port`; `ports` are master1's and master2's.
fn ha_master_conf(node: &str, port: u16, (m1port, m2port): (u16, u16)) -> String {
    format!(
        r#"{}
object Endpoint "master1" {{ host = "127.0.0.1"; port = "{m1port}" }}
object Endpoint "master2" {{ host = "127.0.0.1"; port = "{m2port}" }}
object ApiListener "api" {{
  bind_host = "127.0.0.1"
  bind_port = {port}
  accept_config = true
  accept_commands = true
}}
object ApiUser "root" {{ password = "icinga-secret"; permissions = [ "*" ] }}
object Host "agent1-host" {{ check_command = "dummy"; check_interval = 2s; retry_interval = 2s; zone = "agent1"; address = "127.0.0.1" }}
"#,
        ha_conf(node, "master")
    )
}

/// Gatehouse for the HA zone: one route, one health-checked group holding both masters.
fn ha_edge_conf(edge: &Path, ca_crt: &Path, gport: u16, (m1port, m2port): (u16, u16)) -> Conf {
    let pair = |stem: &str| cert_pair(edge, stem);
    let (edge_crt, edge_key) = pair("gatehouse-edge");
    Conf::new()
        .listener(
            Listener::new("cluster", gport)
                .protocols(&[Protocol::Cluster])
                .tls(
                    ListenerTls::new(&edge_crt, &edge_key)
                        .sni_cert(&["master1"], pair("master1"))
                        .client_auth(ClientAuth::Optional)
                        .client_ca(ca_crt),
                ),
        )
        .upstream(
            "masters",
            Group::peers([format!("127.0.0.1:{m1port}"), format!("127.0.0.1:{m2port}")])
                .health_check(HealthCheck::tcp("1s"))
                .connect_timeout("2s")
                .tls(
                    // The masters' own certificates: master1's, or master2's.
                    UpstreamTls::new("master1")
                        .ca(ca_crt)
                        .client_cert(&edge_crt)
                        .client_key(&edge_key)
                        .alt_cn("master2"),
                ),
        )
        .cluster(Cluster::new("master1", "masters").cert_dir(edge.join("identities")))
}

/// The master port agent1's first link through Gatehouse went to.
async fn first_link_peer(gh: &Gatehouse, diag: &impl Fn() -> String) -> u16 {
    let mut first = None;
    eventually(
        "agent1's link through Gatehouse",
        Duration::from_secs(30),
        || {
            first = gh
                .log_text()
                .lines()
                .find(|l| l.contains("link open: agent1@"))
                .map(String::from);
            std::future::ready(first.is_some())
        },
        diag,
    )
    .await;
    let line = first.unwrap();
    line.rsplit("peer 127.0.0.1:")
        .next()
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peer port in `{line}`"))
}

/// The agent comes back through Gatehouse to the master on `stay_port`.
async fn agent1_relinks_to(
    gh: &Gatehouse,
    stay_port: u16,
    stay_name: &str,
    diag: &impl Fn() -> String,
) {
    eventually(
        &format!("agent1's new link to {stay_name}"),
        Duration::from_secs(40),
        || {
            let relinked = gh.log_text().lines().any(|l| {
                l.contains("link open: agent1@")
                    && l.ends_with(&format!("peer 127.0.0.1:{stay_port}"))
            });
            std::future::ready(relinked)
        },
        diag,
    )
    .await;
}
