//! Gatehouse in the Control Agent's place (Kea 3 removed the agent): `kea.services` dispatches
//! by `service` to each daemon's group and answers the agent's own commands; `kea.daemon`
//! fronts one daemon, refusing a `service` that names another and never sending `service` on.
//! Real Kea 2.2 daemons over their UNIX control sockets (no agent running), curl with its
//! defaults (HTTP/2) and kea-shell as clients; synthetic daemons for the faults (one that never
//! answers, one that answers garbage, one that closes mid-answer). Every command is audited,
//! also when the upstream fails.

mod common;

use common::kea::{Daemon, KeaDaemon};
use common::*;
use gatehouse::audit::{AuditEvent, KeaEvent};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Listener `edge` on `port`, client certificates of `edge` required.
fn edge_listener(port: u16, edge: &Pki) -> Listener {
    Listener::new("edge", port).tls(ListenerTls::from_pki(edge, "server", ClientAuth::Required))
}

/// A Kea command with curl's defaults (HTTP/2), as `who`: (status, body as JSON or text).
async fn post(edge: &Pki, who: &str, port: u16, path: &str, body: &str) -> (String, Value) {
    let url = format!("https://localhost:{port}{path}");
    let c = curl(
        edge,
        who,
        &url,
        &["-H", "Content-Type: application/json", "-d", body],
    )
    .await;
    assert!(
        c.status == "000" || c.version == "2",
        "curl speaks HTTP/2 by default: {}",
        c.version
    );
    let v = serde_json::from_str(&c.body).unwrap_or(Value::String(c.body.clone()));
    (c.status, v)
}

/// The Kea records of the in-process Gatehouse, waiting up to 5 s for `n` of them.
async fn kea_records(gh: &Gatehouse, n: usize) -> Vec<KeaEvent> {
    let recs = || -> Vec<KeaEvent> {
        gh.audit()
            .into_iter()
            .filter_map(|e| match e {
                AuditEvent::Kea(k) => Some(k),
                _ => None,
            })
            .collect()
    };
    // Fewer than `n` after 5 s: the caller's assertions say what is missing.
    holds_within(Duration::from_secs(5), || recs().len() >= n).await;
    recs()
}

/// The issue's bypass: a rule `services: { allow: [dhcp6] }` in front of a dhcp4 daemon (Kea 3
/// ignores `service`). On a `kea.daemon: dhcp4` route a `service` naming another daemon is
/// refused and never forwarded; no `service` is dhcp4 for the rules; what the daemon gets has
/// no `service`, every other byte as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_route_refuses_other_services_and_never_sends_service() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["dashboard-1", "ops"]);
    let daemon = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("d4", Group::new(daemon.addr))
        .route(
            Route::new("dhcp4", "d4")
                .path("/dhcp4")
                .kea(common::kea::bypass_rules("ops")),
        );
    let gh = Gatehouse::in_process(tmp.path(), &conf);

    other_services_never_reach_the_daemon(&edge, port, &daemon).await;
    let sent =
        r#"{ "command" : "config-get", "service":["dhcp4"] , "arguments": {"x": [1, "service"]} }"#;
    let (status, _) = post(&edge, "ops", port, "/dhcp4", sent).await;
    assert_eq!(status, "200");
    let (status, _) = post(&edge, "ops", port, "/dhcp4", r#"{"command":"status-get"}"#).await;
    assert_eq!(status, "200");
    let seen = daemon.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        String::from_utf8_lossy(&seen[0].body),
        r#"{ "command" : "config-get" , "arguments": {"x": [1, "service"]} }"#,
        "service cut (with its comma), every other byte as sent"
    );
    assert_eq!(
        String::from_utf8_lossy(&seen[1].body),
        r#"{"command":"status-get"}"#
    );

    let recs = kea_records(&gh, 5).await;
    let verdicts: Vec<_> = recs.iter().map(|r| r.verdict).collect();
    assert_eq!(
        verdicts,
        ["misrouted", "denied", "misrouted", "allowed", "allowed"]
    );
    assert_eq!(
        recs[1].services.as_deref(),
        Some(&["dhcp4".to_string()][..])
    );
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_kea_commands_total{command="config-get",route="dhcp4",verdict="misrouted"} 2"#),
        "{m}"
    );
}

/// On a `kea.daemon: dhcp4` route with [`common::kea::bypass_rules`]: a `service` naming
/// another daemon is refused (400), no `service` is dhcp4 for the rules (403 for the
/// dashboard); nothing refused reaches the daemon.
async fn other_services_never_reach_the_daemon(edge: &Pki, port: u16, daemon: &Upstream) {
    let (status, v) = post(
        edge,
        "dashboard-1",
        port,
        "/dhcp4",
        r#"{"command": "config-get", "service": ["dhcp6"]}"#,
    )
    .await;
    assert_eq!(status, "400", "{v}");
    assert_eq!(v["result"], 400);
    assert!(v["text"].as_str().unwrap().contains("dhcp4 daemon"), "{v}");
    let (status, v) = post(
        edge,
        "dashboard-1",
        port,
        "/dhcp4",
        r#"{"command": "config-get"}"#,
    )
    .await;
    assert_eq!(
        status, "403",
        "no service is the route's daemon for the rules: {v}"
    );
    assert_eq!(
        v["text"],
        "service 'dhcp4' is not allowed for cn=dashboard-1"
    );
    let (status, v) = post(
        edge,
        "ops",
        port,
        "/dhcp4",
        r#"{"command":"config-get","service":["dhcp4","dhcp6"]}"#,
    )
    .await;
    assert_eq!(status, "400", "{v}");
    assert!(
        daemon.seen().is_empty(),
        "nothing refused reached the daemon"
    );
}

/// An upstream that accepts and never answers (a hung daemon or agent): the command is
/// answered 504 Kea-shaped after the group's `read_timeout` (curl with its defaults gets the
/// answer), and audited with the failure — on the single-forward path and on dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_is_bounded_and_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let hung = Upstream::h1(None, Behavior::Hang).await;
    let hung_sock = tmp.path().join("hung.sock");
    let _hold = hung_unix_daemon(&hung_sock);
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("agent", Group::new(hung.addr).read_timeout("1s"))
        .upstream(
            "d6",
            Group::new(format!("unix:{}", hung_sock.display())).read_timeout("1s"),
        )
        .route(
            Route::new("agent", "agent")
                .path("/agent")
                .kea(KeaRoute::allow_all()),
        )
        .route(Route::agent(
            "services",
            KeaRoute::allow_all()
                .service("dhcp4", "agent")
                .service("dhcp6", "d6"),
        ));
    let gh = Gatehouse::in_process(tmp.path(), &conf);

    let t = Instant::now();
    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/agent",
        r#"{"command":"config-set","service":["dhcp4"],"arguments":{}}"#,
    )
    .await;
    assert_eq!(status, "504", "{v}");
    assert_eq!(v["result"], 504);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/",
        r#"{"command":"config-set","service":["dhcp6","dhcp4"],"arguments":{}}"#,
    )
    .await;
    assert_eq!(status, "200", "{v}");
    assert_eq!(
        v,
        json!([
            {"result": 1, "text": "unable to forward command to the dhcp6 service: upstream error: timeout"},
            {"result": 1, "text": "unable to forward command to the dhcp4 service: upstream error: timeout"},
        ])
    );
    timeouts_are_audited(&gh, &hung_sock).await;
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_kea_commands_total{command="config-set",route="agent",verdict="allowed"} 1"#),
        "{m}"
    );
}

/// A UNIX socket at `path` that accepts and holds every connection, never answering.
fn hung_unix_daemon(path: &Path) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    })
}

/// The single forward and the dispatch to the hung upstreams are both recorded with the
/// timeout, per peer.
async fn timeouts_are_audited(gh: &Gatehouse, hung_sock: &Path) {
    let recs = kea_records(gh, 2).await;
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert_eq!((recs[0].verdict.as_str(), recs[0].status), ("allowed", 504));
    assert_eq!(recs[0].reason.as_deref(), Some("upstream error: timeout"));
    let peer = &recs[0].peers.as_ref().unwrap()[0];
    assert_eq!(peer.error.as_deref(), Some("upstream error: timeout"));
    let peers = recs[1].peers.as_ref().unwrap();
    assert_eq!(
        peers
            .iter()
            .map(|p| p.service.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["dhcp6", "dhcp4"]
    );
    assert_eq!(peers[0].peer, format!("unix:{}", hung_sock.display()));
    assert!(peers
        .iter()
        .all(|p| p.error.as_deref() == Some("upstream error: timeout")));
}

/// A daemon that closes half way through its answer: the client's answer is cut, and the
/// command is still audited (status, the interruption) and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_cut_mid_way_is_still_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cutter = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[ { \"result\": 0, \"arguments\": {")
                    .await;
                // Closed here, 970 bytes short.
            });
        }
    });
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("d4", Group::new(cutter).read_timeout("2s"))
        .route(Route::new("dhcp4", "d4").kea(KeaRoute::allow_all().daemon("dhcp4")));
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    // curl reports the cut stream as an error; what matters here is the record.
    let _ = post(&edge, "ops", port, "/", r#"{"command":"lease4-get-all"}"#).await;
    let recs = kea_records(&gh, 1).await;
    assert_eq!(recs.len(), 1, "the cut answer's command is recorded");
    let r = &recs[0];
    assert_eq!((r.verdict.as_str(), r.status), ("allowed", 200));
    assert!(
        r.reason
            .as_deref()
            .is_some_and(|t| t.starts_with("interrupted")),
        "{r:?}"
    );
    assert_eq!(
        r.results.as_deref(),
        Some(&[0][..]),
        "the codes read before the cut"
    );
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_kea_commands_total{command="lease4-get-all",route="dhcp4",verdict="allowed"} 1"#),
        "{m}"
    );
}

/// Synthetic UNIX daemons that misbehave: one answers garbage, one closes mid-object, one
/// answers fine. Each slot says what happened; the good daemon's answer is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_daemons_that_misbehave_get_typed_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let port = reserved_port();
    let conf = misbehaving_daemons_conf(tmp.path(), &edge, port);
    let gh = Gatehouse::in_process(tmp.path(), &conf);

    // An answer over kea.max_answer is that daemon's slot, and the audit says so.
    let (_, v) = post(
        &edge,
        "ops",
        port,
        "/small",
        r#"{"command":"config-get","service":["dhcp4","d2"]}"#,
    )
    .await;
    assert_eq!(
        v,
        json!([
            {"result": 1, "text": "unable to forward command to the dhcp4 service: upstream error: too_large"},
            {"result": 0, "text": "fine"},
        ])
    );
    let recs = kea_records(&gh, 1).await;
    let peers = recs[0].peers.clone().unwrap();
    assert_eq!(peers[0].error.as_deref(), Some("upstream error: too_large"));

    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/",
        r#"{"command":"status-get","service":["dhcp4","dhcp6","d2"]}"#,
    )
    .await;
    assert_eq!(status, "200", "{v}");
    assert_eq!(
        v,
        json!([
            {"result": 1, "text": "unable to forward command to the dhcp4 service: upstream error: not_json"},
            {"result": 1, "text": "unable to forward command to the dhcp6 service: upstream error: not_json"},
            {"result": 0, "text": "fine"},
        ])
    );
    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/",
        r#"{"command":"status-get","service":"d2"}"#,
    )
    .await;
    assert_eq!(status, "400", "a malformed service: {v}");
    let recs = kea_records(&gh, 3).await;
    assert_eq!(recs[1].results.as_deref(), Some(&[1, 1, 0][..]));
    assert_eq!(recs[2].verdict, "malformed");
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_kea_fanout_peer_total{outcome="not_json""#),
        "{m}"
    );
}

/// A synthetic UNIX daemon at `path` that answers `answer` to whatever it is sent, then
/// closes; its `unix:` address.
fn fake_unix_daemon(path: &Path, answer: &[u8]) -> String {
    let answer = answer.to_vec();
    let l = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&answer).await;
        }
    });
    format!("unix:{}", path.display())
}

/// Route `kea` dispatching dhcp4 to a daemon answering garbage, dhcp6 to one closing
/// mid-object, d2 to a good one; route `/small` with a 1 KiB `max_answer` sending dhcp4 to a
/// daemon answering 2 KiB.
fn misbehaving_daemons_conf(dir: &Path, edge: &Pki, port: u16) -> Conf {
    let fake = |name: &str, answer: &[u8]| fake_unix_daemon(&dir.join(name), answer);
    Conf::new()
        .listener(edge_listener(port, edge))
        .upstream(
            "garbage",
            Group::new(fake("g.sock", b"<html>not kea</html>")),
        )
        .upstream(
            "cut",
            Group::new(fake("c.sock", b"{ \"result\": 0, \"argu")),
        )
        .upstream(
            "good",
            Group::new(fake("ok.sock", br#"{ "result": 0, "text": "fine" }"#)),
        )
        .upstream("big", {
            let big = format!(r#"{{ "result": 0, "text": "{}" }}"#, "x".repeat(2048));
            Group::new(fake("big.sock", big.as_bytes()))
        })
        .route(Route::agent(
            "kea",
            KeaRoute::allow_all()
                .service("dhcp4", "garbage")
                .service("dhcp6", "cut")
                .service("d2", "good"),
        ))
        .route(
            Route::agent(
                "small",
                KeaRoute::allow_all()
                    .service("dhcp4", "big")
                    .service("d2", "good")
                    .max_answer("1KiB"),
            )
            .path("/small"),
        )
}

/// Real Kea 2.2 dhcp4 and dhcp6 with no agent, Gatehouse in the agent's place: dispatch in
/// `service` order, an unmapped service, the agent's own commands, a daemon stopped mid-test,
/// a `kea.daemon` route over a UNIX socket; curl (HTTP/2) and kea-shell as clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_daemons_with_gatehouse_as_their_agent() {
    if !common::kea::daemons_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let d4 = KeaDaemon::start(&tmp.path().join("k4"), Daemon::Dhcp4);
    let mut d6 = KeaDaemon::start(&tmp.path().join("k6"), Daemon::Dhcp6);
    let port = reserved_port();
    let gh = Gatehouse::in_process(tmp.path(), &agent_in_place_conf(&edge, port, &d4, &d6));

    each_daemons_list_is_cut_to_the_caller(&edge, port).await;
    let direct = dispatch_follows_the_service_order(&edge, port, &d4).await;
    the_agents_own_commands_are_answered_at_the_edge(&edge, port, &d4).await;

    // A daemon route over a UNIX socket: the daemon's object, listed.
    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/dhcp4",
        r#"{"command":"config-get","service":["dhcp4"]}"#,
    )
    .await;
    assert_eq!(status, "200");
    assert!(v[0]["arguments"]["Dhcp4"].is_object(), "{v}");

    // kea-shell, written for the agent, with --service.
    let (ok, text, all) =
        common::kea::kea_shell(&edge, port, &["--service", "dhcp6", "version-get"]).await;
    let answer: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    assert!(
        ok && answer[0]["result"] == 0 && answer[0]["text"].is_string(),
        "{all}"
    );

    // dhcp6 stopped: its slot says so, dhcp4 still answers.
    d6.stop();
    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/",
        r#"{"command":"version-get","service":["dhcp6","dhcp4"]}"#,
    )
    .await;
    assert_eq!(status, "200");
    assert!(
        v[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("unable to forward command to the dhcp6 service"),
        "{v}"
    );
    assert_eq!(v[1], json!(direct));
    let recs = kea_records(&gh, 10).await;
    let last = recs.last().unwrap();
    let peers = last.peers.as_ref().unwrap();
    assert_eq!(peers[0].service.as_deref(), Some("dhcp6"));
    assert!(peers[0].error.is_some());
    assert_eq!(
        (peers[1].service.as_deref(), &peers[1].results[..]),
        (Some("dhcp4"), &[0][..])
    );
}

/// Gatehouse as the agent of `d4` and `d6`: route `agent` (everything), `/dhcp4` a daemon
/// route, `/ro` read-only for ops.
fn agent_in_place_conf(edge: &Pki, port: u16, d4: &KeaDaemon, d6: &KeaDaemon) -> Conf {
    Conf::new()
        .listener(edge_listener(port, edge))
        .upstream("k4", Group::new(d4.peer()))
        .upstream("k6", Group::new(d6.peer()))
        .route(Route::agent(
            "agent",
            KeaRoute::allow_all()
                .service("dhcp4", "k4")
                .service("dhcp6", "k6"),
        ))
        .route(
            Route::new("dhcp4", "k4")
                .path("/dhcp4")
                .kea(KeaRoute::allow_all().daemon("dhcp4")),
        )
        .route(
            Route::agent(
                "readonly",
                KeaRoute::deny_by_default()
                    .service("dhcp4", "k4")
                    .service("dhcp6", "k6")
                    .rule(
                        KeaRule::new(["cn:ops"])
                            .commands(AllowDeny::only(["*-get", "list-commands"])),
                    ),
            )
            .path("/ro"),
        )
}

/// Identity-aware list-commands on a services route: each daemon's list cut to the caller's.
async fn each_daemons_list_is_cut_to_the_caller(edge: &Pki, port: u16) {
    let (_, v) = post(
        edge,
        "ops",
        port,
        "/ro",
        r#"{"command":"list-commands","service":["dhcp4","dhcp6"]}"#,
    )
    .await;
    for (i, daemon) in ["dhcp4", "dhcp6"].iter().enumerate() {
        let names: Vec<&str> = v[i]["arguments"]
            .as_array()
            .unwrap_or_else(|| panic!("{daemon}: {v}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            names.contains(&"config-get") && names.contains(&"list-commands"),
            "{daemon}: {names:?}"
        );
        assert!(
            names
                .iter()
                .all(|n| n.ends_with("-get") || *n == "list-commands"),
            "{daemon}: only what ops may run: {names:?}"
        );
    }
}

/// Dispatch: one element per service, in the order asked, each the daemon's own answer; an
/// unmapped service answered as the agent would. Returns dhcp4's own `version-get` answer.
async fn dispatch_follows_the_service_order(edge: &Pki, port: u16, d4: &KeaDaemon) -> Value {
    let (status, v) = post(
        edge,
        "ops",
        port,
        "/",
        r#"{"command":"config-get","service":["dhcp6","dhcp4"]}"#,
    )
    .await;
    assert_eq!(status, "200", "{v}");
    assert!(v[0]["arguments"]["Dhcp6"].is_object(), "dhcp6 first: {v}");
    assert!(v[1]["arguments"]["Dhcp4"].is_object(), "dhcp4 second: {v}");
    let direct: Value = serde_json::from_str(&d4.ask(r#"{"command":"version-get"}"#)).unwrap();
    let (_, v) = post(
        edge,
        "ops",
        port,
        "/",
        r#"{"command":"version-get","service":["dhcp4"]}"#,
    )
    .await;
    assert_eq!(
        v,
        json!([direct]),
        "the daemon's answer, as the agent listed it"
    );
    let (_, v) = post(
        edge,
        "ops",
        port,
        "/",
        r#"{"command":"version-get","service":["d2","dhcp4"]}"#,
    )
    .await;
    assert_eq!(
        v[0],
        json!({"result": 1, "text": "forwarding socket is not configured for the server type d2"})
    );
    assert_eq!(v[1]["result"], 0);
    direct
}

async fn the_agents_own_commands_are_answered_at_the_edge(edge: &Pki, port: u16, d4: &KeaDaemon) {
    let (_, v) = post(edge, "ops", port, "/", r#"{"command":"config-get"}"#).await;
    let sockets = &v[0]["arguments"]["Control-agent"]["control-sockets"];
    assert_eq!(sockets["dhcp4"]["socket-type"], "unix");
    assert_eq!(
        sockets["dhcp4"]["socket-name"],
        d4.sock.display().to_string()
    );
    assert!(sockets["dhcp6"].is_object(), "{v}");
    let (_, v) = post(edge, "ops", port, "/", r#"{"command":"list-commands"}"#).await;
    assert!(v[0]["arguments"]
        .as_array()
        .unwrap()
        .contains(&json!("status-get")));
    let (_, v) = post(
        edge,
        "ops",
        port,
        "/",
        r#"{"command":"config-set","arguments":{}}"#,
    )
    .await;
    assert_eq!(v[0]["result"], 1, "{v}");
}

/// A child process stopped when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl KillOnDrop {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// kea-shell with basic credentials and `--service`, as the agent's clients run it.
async fn kea_shell(
    edge: &Pki,
    port: u16,
    user: &str,
    password: &str,
    service: &str,
) -> (bool, String) {
    let args = [
        "--auth-user",
        user,
        "--auth-password",
        password,
        "--service",
        service,
        "version-get",
    ];
    let (ok, _, all) = common::kea::kea_shell(edge, port, &args).await;
    (ok, all)
}

/// A real Kea 2.2 Control Agent configuration (comments, mTLS, basic-auth clients, one with a
/// password file), first run by the real agent (its clients work there, and Gatehouse reaches
/// it with `upstreams.<name>.basic_auth`), then imported with `gatehouse kea import-agent`:
/// the YAML passes `check`, and Gatehouse run on it serves the agent's clients — kea-shell
/// with each user, a wrong password refused 401 with `WWW-Authenticate`, curl `-u` over HTTP/2
/// — with the user as the audited identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_agent_then_serve_its_basic_auth_clients() {
    if !(common::kea::installed()
        && common::kea::daemons_installed()
        && require_binary("kea-shell"))
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let d4 = KeaDaemon::start(&tmp.path().join("k4"), Daemon::Dhcp4);
    let agent_dir = tmp.path().join("agent");
    let agent_port = reserved_port();
    let agent_conf = write_agent_conf(&agent_dir, &edge, agent_port, &d4);
    let mut agent = start_real_agent(&agent_conf, &agent_dir, agent_port).await;
    // The real agent: its clients work, and a Gatehouse group with the agent's credentials.
    let (ok, text) = kea_shell(&edge, agent_port, "bob", "pw-b", "dhcp4").await;
    assert!(
        ok && text.contains("2.2.0"),
        "the real agent with bob: {text}"
    );
    the_agent_takes_a_groups_credentials(tmp.path(), &edge, agent_port).await;
    agent.stop();

    // The import, run in the agent's place.
    let gh_dir = tmp.path().join("gh");
    let file = import_agent(&agent_conf, &gh_dir);
    let log = gh_dir.join("gh.log");
    let mut gh = KillOnDrop(
        std::process::Command::new(gatehouse_bin())
            .args(["run", "-c", file.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_listening(
        "gatehouse",
        &mut gh.0,
        std::net::SocketAddr::from(([127, 0, 0, 1], agent_port)),
        Instant::now() + Duration::from_secs(15),
        &log,
    );
    for (user, pw) in [("alice", "pw-a"), ("bob", "pw-b")] {
        let (ok, text) = kea_shell(&edge, agent_port, user, pw, "dhcp4").await;
        assert!(
            ok && text.contains("2.2.0"),
            "{user} through the imported config: {text}"
        );
    }
    let (_, text) = kea_shell(&edge, agent_port, "alice", "wrong", "dhcp4").await;
    assert!(text.contains("401"), "a wrong password: {text}");
    curl_basic_credentials_over_h2(&edge, agent_port).await;
    gh.stop();
    let audit = std::fs::read_to_string(gh_dir.join("audit.jsonl")).unwrap();
    let users_seen: Vec<String> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["identity"]["user"].as_str().map(str::to_string))
        .collect();
    assert_eq!(users_seen, ["alice", "bob", "alice"], "{audit}");
}

/// Writes `agent_dir/kea-ctrl-agent.conf`: a Kea 2.2 agent on `agent_port` over mTLS (the
/// edge PKI's server certificate, clients of its CA required) for `d4`, with basic clients
/// alice (password inline) and bob (`bob.pw`); returns its path.
fn write_agent_conf(agent_dir: &Path, edge: &Pki, agent_port: u16, d4: &KeaDaemon) -> PathBuf {
    std::fs::create_dir_all(agent_dir).unwrap();
    // Kea 2.2 takes the file's whole content as the password: no newline.
    std::fs::write(agent_dir.join("bob.pw"), "pw-b").unwrap();
    let (server_crt, server_key) = edge.paths("server");
    let agent_conf = agent_dir.join("kea-ctrl-agent.conf");
    std::fs::write(
        &agent_conf,
        format!(
            r#"// The agent this edge replaces.
{{ "Control-agent": {{
    "http-host": "127.0.0.1", "http-port": {agent_port},   # the agent's port
    "trust-anchor": "{ca}", "cert-file": "{crt}", "key-file": "{key}", "cert-required": true,
    /* the daemons it forwards to */
    "control-sockets": {{ "dhcp4": {{ "socket-type": "unix", "socket-name": "{sock}" }} }},
    "authentication": {{ "type": "basic", "realm": "kea-test", "directory": "{dir}",
        "clients": [ {{ "user": "alice", "password": "pw-a" }}, {{ "user": "bob", "password-file": "bob.pw" }} ] }},
    "loggers": [ {{ "name": "kea-ctrl-agent", "severity": "INFO", "output_options": [ {{ "output": "{dir}/agent.log" }} ] }} ]
}} }}"#,
            ca = edge.ca_path().display(),
            crt = server_crt.display(),
            key = server_key.display(),
            sock = d4.sock.display(),
            dir = agent_dir.display(),
        ),
    )
    .unwrap();
    agent_conf
}

/// The real kea-ctrl-agent on `agent_conf`, once it listens on `agent_port`.
async fn start_real_agent(agent_conf: &Path, agent_dir: &Path, agent_port: u16) -> KillOnDrop {
    let agent = KillOnDrop(
        std::process::Command::new("kea-ctrl-agent")
            .arg("-c")
            .arg(agent_conf)
            .env("KEA_PIDFILE_DIR", agent_dir)
            .env("KEA_LOCKFILE_DIR", agent_dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut agent = agent;
    wait_listening(
        "the real agent",
        &mut agent.0,
        std::net::SocketAddr::from(([127, 0, 0, 1], agent_port)),
        Instant::now() + Duration::from_secs(15),
        &agent_dir.join("agent.log"),
    );
    agent
}

/// A Gatehouse in front of the real agent, its group sending alice's credentials: the agent
/// answers.
async fn the_agent_takes_a_groups_credentials(dir: &Path, edge: &Pki, agent_port: u16) {
    let gh_port = reserved_port();
    let pw = dir.join("agent-alice.pw");
    std::fs::write(&pw, "pw-a\n").unwrap();
    let mut with_creds = Group::new(format!("127.0.0.1:{agent_port}")).tls(
        UpstreamTls::new("localhost")
            .ca(edge.ca_path())
            .client_cert(edge.paths("ops").0)
            .client_key(edge.paths("ops").1),
    );
    with_creds.basic_auth = Some(UpstreamAuth {
        user: "alice".into(),
        password_file: pw.clone(),
    });
    let conf = Conf::new()
        .listener(edge_listener(gh_port, edge))
        .upstream("agent", with_creds)
        .route(Route::new("agent", "agent").kea(KeaRoute::allow_all()));
    let g1 = dir.join("g1");
    std::fs::create_dir_all(&g1).unwrap();
    let _gh = Gatehouse::start(&g1, &conf);
    let (status, v) = post(
        edge,
        "ops",
        gh_port,
        "/",
        r#"{"command":"version-get","service":["dhcp4"]}"#,
    )
    .await;
    assert_eq!(
        (status.as_str(), &v[0]["result"]),
        ("200", &json!(0)),
        "the agent took the group's credentials: {v}"
    );
}

/// `gatehouse kea import-agent` on `agent_conf` into `gh_dir` (users file 0600), completed
/// with a test `server:` and `audit:` section: the path of a config that passes `check`.
fn import_agent(agent_conf: &Path, gh_dir: &Path) -> PathBuf {
    std::fs::create_dir_all(gh_dir).unwrap();
    let users = gh_dir.join("kea-users");
    let out = std::process::Command::new(gatehouse_bin())
        .args(["kea", "import-agent"])
        .arg(agent_conf)
        .arg("--users-file")
        .arg(&users)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert!(
        yaml.contains("services:") && yaml.contains("dhcp4: dhcp4"),
        "{yaml}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let file = gh_dir.join("gatehouse.yaml");
    std::fs::write(
        &file,
        format!(
            "{yaml}\nserver: {{ pid_file: {d}/gh.pid, upgrade_sock: {d}/up.sock }}\naudit: {{ path: {d}/audit.jsonl }}\n",
            d = gh_dir.display()
        ),
    )
    .unwrap();
    let (ok, text) = gatehouse_cmd(&["check", "-c", file.to_str().unwrap()]);
    assert!(ok, "{text}\n{yaml}");
    file
}

/// curl `-u` over HTTP/2 to the imported config: a wrong password 401 with the agent's realm
/// and a Kea-shaped body, alice's own answered.
async fn curl_basic_credentials_over_h2(edge: &Pki, agent_port: u16) {
    let url = format!("https://localhost:{agent_port}/");
    let c = curl(
        edge,
        "ops",
        &url,
        &[
            "-u",
            "alice:wrong",
            "-D",
            "-",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"command":"version-get","service":["dhcp4"]}"#,
        ],
    )
    .await;
    assert_eq!(
        (c.status.as_str(), c.version.as_str()),
        ("401", "2"),
        "{}",
        c.body
    );
    assert!(
        c.body
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"kea-test\""),
        "{}",
        c.body
    );
    assert!(
        c.body.contains(r#"{"result":401,"text":"Unauthorized"}"#),
        "{}",
        c.body
    );
    let c = curl(
        edge,
        "ops",
        &url,
        &[
            "-u",
            "alice:pw-a",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"command":"version-get","service":["dhcp4"]}"#,
        ],
    )
    .await;
    assert_eq!(c.status, "200", "{}", c.body);
}

/// `fan_out: all` on a `kea.services` route: every peer of the service's group gets the
/// command (without `service`), one element each, tagged with its peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_applies_per_service_group() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let (a, b) = (
        Upstream::h1(None, Behavior::Echo).await,
        Upstream::h1(None, Behavior::Echo).await,
    );
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("pair", Group::peers([a.addr, b.addr]))
        .route(Route::agent(
            "kea",
            KeaRoute::allow_all()
                .service("dhcp4", "pair")
                .fan_out("all"),
        ));
    let _gh = Gatehouse::in_process(tmp.path(), &conf);
    let (status, v) = post(
        &edge,
        "ops",
        port,
        "/",
        r#"{"command":"status-get","service":["dhcp4"]}"#,
    )
    .await;
    assert_eq!(status, "200", "{v}");
    let peers: Vec<&str> = v
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .filter_map(|e| e["peer"].as_str())
        .collect();
    assert_eq!(peers, [a.addr.to_string(), b.addr.to_string()], "{v}");
    for o in [&a, &b] {
        let seen = o.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            String::from_utf8_lossy(&seen[0].body),
            r#"{"command":"status-get"}"#
        );
    }
}

/// A client that sends a command and leaves before the (slow) daemon answers: the command may
/// have reached the daemon, so it is audited and counted all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_command_is_still_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = l.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let told = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let told = told.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                told.store(true, std::sync::atomic::Ordering::Relaxed);
                // The slow daemon under test: it answers after the client has left.
                tokio::time::sleep(Duration::from_millis(800)).await;
                let body = r#"[ { "result": 0, "text": "late" } ]"#;
                let _ = s
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("d4", Group::new(slow))
        .route(Route::new("dhcp4", "d4").kea(KeaRoute::allow_all().daemon("dhcp4")));
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    let who = ClientOpts {
        ca: Some(edge.ca_path()),
        cert: Some(edge.paths("ops")),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let mut s = tls_connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)), &who)
        .await
        .unwrap();
    let body = r#"{"command":"config-write","arguments":{}}"#;
    s.write_all(
        format!("POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
    )
    .await
    .unwrap();
    // The client leaves once the command has reached the daemon, before its answer.
    until(
        "the command to reach the daemon",
        Duration::from_secs(5),
        || asked.load(std::sync::atomic::Ordering::Relaxed),
    )
    .await;
    drop(s);
    let recs = kea_records(&gh, 1).await;
    assert_eq!(
        recs.len(),
        1,
        "the command the client left behind is recorded"
    );
    assert_eq!(recs[0].command.as_deref(), Some("config-write"));
    assert_eq!(recs[0].verdict, "allowed");
    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_kea_commands_total{command="config-write",route="dhcp4",verdict="allowed"} 1"#),
        "{m}"
    );
}

/// `routes[].basic_auth` on a plain route: the caller's `Authorization` never reaches the
/// upstream; a group with `basic_auth` of its own sends its credentials instead; the caller is
/// `user:<name>` for `allow`; HTTP/2 curl with `-u` as client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_stay_at_the_edge() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let users = tmp.path().join("users");
    std::fs::write(
        &users,
        format!(
            "alice:{}\nbob:{}\n",
            gatehouse::http::basic::hash("pw-a").unwrap(),
            gatehouse::http::basic::hash("pw-b").unwrap()
        ),
    )
    .unwrap();
    let pw = tmp.path().join("up.pw");
    std::fs::write(&pw, "up-secret\n").unwrap();
    let port = reserved_port();
    let auth = |r: Route| {
        let mut r = r.allow(["user:alice"]);
        r.basic_auth = Some(conf::BasicAuth {
            users_file: users.clone(),
            realm: None,
        });
        r
    };
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("plain", Group::new(origin.addr))
        .upstream("creds", {
            let mut g = Group::new(origin.addr);
            g.basic_auth = Some(conf::UpstreamAuth {
                user: "edge".into(),
                password_file: pw.clone(),
            });
            g
        })
        .route(auth(Route::new("plain", "plain").path("/plain")))
        .route(auth(Route::new("creds", "creds").path("/creds")));
    let _gh = Gatehouse::in_process(tmp.path(), &conf);
    let url = |p: &str| format!("https://localhost:{port}{p}");
    let c = curl(&edge, "ops", &url("/plain"), &["-u", "alice:pw-a"]).await;
    assert_eq!(
        (c.status.as_str(), c.version.as_str()),
        ("200", "2"),
        "{}",
        c.body
    );
    let c = curl(&edge, "ops", &url("/creds"), &["-u", "alice:pw-a"]).await;
    assert_eq!(c.status, "200", "{}", c.body);
    let c = curl(&edge, "ops", &url("/plain"), &["-u", "bob:pw-b"]).await;
    assert_eq!(c.status, "403", "bob is not in allow: {}", c.body);
    let c = curl(&edge, "ops", &url("/plain"), &["-u", "alice:wrong"]).await;
    assert_eq!(c.status, "401", "{}", c.body);
    let seen = origin.seen();
    assert_eq!(seen.len(), 2, "only alice's two requests went upstream");
    assert_eq!(
        seen[0].header("authorization"),
        None,
        "the caller's credentials stayed at the edge"
    );
    assert_eq!(
        seen[1].header("authorization"),
        Some(gatehouse::http::basic::header_value("edge", "up-secret").as_str()),
        "the group's own credentials"
    );
}
