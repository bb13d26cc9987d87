//! The programs in `examples/` that build their own edge on the library, run against real
//! TLS: what they add works, and everything else passes exactly as the plain binary would.

mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::cluster::codec;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ns(s: &str) -> Vec<u8> {
    codec::encode(s.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_filter_rewrites_answers_and_passes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let rp = RelayPki::new(tmp.path());
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(rp.listener("cluster", port, &[Protocol::Cluster]))
        .upstream("master", rp.master(sink.addr))
        .cluster(rp.cluster("master"))
        .audit_path(tmp.path().join("audit.jsonl"))
        .metrics(reserved_port());
    let gh = Gatehouse::start_bin(&example_bin("redact_filter"), tmp.path(), &conf);
    let agent = ClientOpts {
        ca: Some(rp.pki.ca_path()),
        cert: Some(rp.pki.paths("agent1")),
        sni: Some("master1".into()),
        tls12: false,
    };
    let mut s = tls_connect(SocketAddr::from(([127, 0, 0, 1], port)), &agent)
        .await
        .unwrap();

    let hello =
        r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}"#;
    let leaky = r#"{"jsonrpc":"2.0","method":"event::CheckResult","params":{"host":"h1","cr":{"output":"login ok user=nagios password=hunter2 rc=0","state":0.0}}}"#;
    let clean = r#"{"jsonrpc":"2.0","method":"event::CheckResult","params":{"host":"h1","cr":{"output":"disk 42% used","state":0.0}}}"#;
    let ping = r#"{"jsonrpc":"2.0","method":"example::Ping","params":{},"id":"p-7"}"#;
    let push = r#"{"jsonrpc":"2.0","method":"config::Update","params":{}}"#;
    let mut burst = Vec::new();
    for m in [hello, leaky, ping, push, clean] {
        burst.extend(ns(m));
    }
    s.write_all(&burst).await.unwrap();

    // At the master: the hello and the clean result byte-identical, the leaky one redacted;
    // the ping answered at the edge and the config push refused by the built-in policy.
    let redacted = leaky.replace("password=hunter2", "password=***");
    let want = [hello.to_string(), redacted, clean.to_string()];
    holds_within(Duration::from_secs(10), || {
        sink.frames().len() >= want.len()
    })
    .await;
    let at_master: Vec<String> = sink
        .frames()
        .iter()
        .map(|f| String::from_utf8(frame_payload(f)).unwrap())
        .collect();
    assert_eq!(at_master, want, "what reached the master");

    // Back at the agent: the edge's answer to the ping (with its id), then the master's echoes.
    let (back, _) = read_frames(&mut s, 4, Duration::from_secs(10)).await;
    let answers: Vec<serde_json::Value> = back
        .iter()
        .map(|f| serde_json::from_slice(&frame_payload(f)).unwrap())
        .filter(|v: &serde_json::Value| v.get("result").is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{back:?}");
    assert_eq!(answers[0]["id"], "p-7");
    assert_eq!(answers[0]["result"]["pong"], true);
    assert_eq!(answers[0]["result"]["you"], "cn=agent1");

    let m = gh.metrics_text().await;
    for needle in [
        r#"gatehouse_cluster_messages_total{direction="upstream",method="other",verdict="answered"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="upstream",method="config::Update",verdict="denied"} 1"#,
        r#"gatehouse_cluster_messages_total{direction="upstream",method="event::CheckResult",verdict="forwarded"} 2"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
    // The built-in audit sink still records the policy's refusal.
    let audit = std::fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(rec["kind"], "cluster");
    assert_eq!(rec["method"], "config::Update");
    assert_eq!(rec["reason"], "cluster.policy[1]");
    drop(gh);
}

/// A decision service for `examples/decision_authorizer`: answers from a shared table
/// (CN → allow, reason, ttl_ms), counts calls per target kind, and can be stopped.
struct Decisions {
    addr: SocketAddr,
    table: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, (bool, u64)>>>,
    calls: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Decisions {
    async fn start() -> Decisions {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let table = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, c) = (table.clone(), calls.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let (t, c) = (t.clone(), c.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    // Head, then Content-Length bytes of body.
                    let body = loop {
                        let Ok(Ok(n)) =
                            tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await
                        else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len: usize = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break body.to_string();
                            }
                        }
                    };
                    let input: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                    c.lock().unwrap().push(input.clone());
                    let cn = input["input"]["identity"]["cn"]
                        .as_str()
                        .unwrap_or("-")
                        .to_string();
                    let (allow, ttl) = t.lock().unwrap().get(&cn).copied().unwrap_or((false, 0));
                    let answer = serde_json::json!({ "result": { "allow": allow, "reason": format!("{cn} is not on the list"), "ttl_ms": ttl } });
                    let text = answer.to_string();
                    let resp = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}", text.len());
                    let _ = s.write_all(resp.as_bytes()).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Decisions {
            addr,
            table,
            calls,
            task,
        }
    }

    fn set(&self, cn: &str, allow: bool, ttl_ms: u64) {
        self.table
            .lock()
            .unwrap()
            .insert(cn.into(), (allow, ttl_ms));
    }

    fn calls(&self, kind: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["input"]["target"]["kind"] == kind)
            .count()
    }
}

/// `examples/decision_authorizer` in front of an echo origin and an echo master, asking
/// [`Decisions`]; alice and bob have client certificates.
struct DecisionEdge {
    rp: RelayPki,
    web: Upstream,
    decisions: Decisions,
    gh: Gatehouse,
    edge: SocketAddr,
    _sink: Sink,
    _tmp: tempfile::TempDir,
}

impl DecisionEdge {
    async fn start() -> DecisionEdge {
        let tmp = tempfile::tempdir().unwrap();
        let rp = RelayPki::new(tmp.path());
        rp.pki
            .issue("alice", gatehouse::pki::CertSpec::new("alice"));
        rp.pki.issue("bob", gatehouse::pki::CertSpec::new("bob"));
        let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
        let web = Upstream::h1(None, Behavior::Echo).await;
        let decisions = Decisions::start().await;
        let port = reserved_port();
        let conf = Conf::new()
            .listener(rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster]))
            .upstream("web", Group::new(web.addr))
            .upstream("master", rp.master(sink.addr))
            .route(Route::new("web", "web").deny(["anonymous"]))
            .cluster(rp.cluster("master"))
            .metrics(reserved_port());
        let url = format!("http://{}/v1/data/gatehouse/decision", decisions.addr);
        let gh = Gatehouse::start_bin_env(
            &example_bin("decision_authorizer"),
            &[("DECISION_URL", &url)],
            tmp.path(),
            &conf,
        );
        DecisionEdge {
            rp,
            web,
            decisions,
            gh,
            edge: SocketAddr::from(([127, 0, 0, 1], port)),
            _sink: sink,
            _tmp: tmp,
        }
    }

    /// `GET path` as `cn`.
    async fn get(&self, cn: &str, path: &str) -> Response {
        let o = ClientOpts {
            ca: Some(self.rp.pki.ca_path()),
            cert: Some(self.rp.pki.paths(cn)),
            sni: Some("localhost".into()),
            tls12: false,
        };
        request(self.edge, Some(&o), "GET", path, &[], b"")
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_authorizer_allows_caches_fails_closed_and_revokes_links() {
    let mut e = DecisionEdge::start().await;
    http_answers_are_cached_and_denials_explained(&e).await;
    an_open_link_is_revoked(&e).await;

    // The service goes away: fail closed (a path alice has no cached answer for).
    e.decisions.task.abort();
    let _ = (&mut e.decisions.task).await;
    let r = e.get("alice", "/b").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("failing closed"), "{}", r.text());
    let m = e.gh.metrics_text().await;
    for needle in [
        r#"gatehouse_authorizer_calls_total{result="cached",target="http"} 2"#,
        r#"gatehouse_authorizer_calls_total{result="deny",target="http"} 1"#,
        r#"gatehouse_authorizer_calls_total{result="error",target="http"} 1"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
}

/// Allowed (cached for a minute), denied with the service's reason, YAML deny first.
async fn http_answers_are_cached_and_denials_explained(e: &DecisionEdge) {
    e.decisions.set("alice", true, 60_000);
    e.decisions.set("bob", false, 0);
    for _ in 0..3 {
        assert_eq!(e.get("alice", "/a").await.status, 200);
    }
    assert_eq!(
        e.decisions.calls("http"),
        1,
        "alice's answer came from the cache twice"
    );
    let r = e.get("bob", "/a").await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("bob is not on the list"), "{}", r.text());
    assert_eq!(e.web.seen().len(), 3, "bob never reached the origin");
}

/// A cluster link: allowed for 500 ms at a time, then revoked while open.
async fn an_open_link_is_revoked(e: &DecisionEdge) {
    e.decisions.set("agent1", true, 500);
    let agent = ClientOpts {
        ca: Some(e.rp.pki.ca_path()),
        cert: Some(e.rp.pki.paths("agent1")),
        sni: Some("master1".into()),
        tls12: false,
    };
    let mut s = tls_connect(e.edge, &agent).await.unwrap();
    s.write_all(&ns(
        r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{}}"#,
    ))
    .await
    .unwrap();
    let (hello, _) = read_frames(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(hello.len(), 1, "the link is up and echoed");
    // The link's first decision lives 500 ms: the service is asked again as it runs out.
    until(
        "the link re-checked as the TTL ran out",
        Duration::from_secs(5),
        || e.decisions.calls("link") >= 2,
    )
    .await;
    e.decisions.set("agent1", false, 0);
    let t0 = std::time::Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the link was not closed after the revocation"
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    e.gh.wait_log("revoked by authorizer decision-service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_whoami_is_answered_at_the_edge_and_the_rest_goes_to_kea() {
    if !common::kea::installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "pki");
    pki.server("server", &[]);
    pki.issue(
        "dash",
        gatehouse::pki::CertSpec::new("dash-1").dns(&["dash.example.org"]),
    );
    let kea = common::kea::Kea::start(&tmp.path().join("k"), reserved_port(), None);
    let port = reserved_port();
    let rule =
        KeaRule::new(["cn:dash-*"]).commands(AllowDeny::only(["gatehouse-whoami", "version-get"]));
    let conf = Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            &pki,
            "server",
            ClientAuth::Required,
        )))
        .upstream("kea", Group::new(kea.addr))
        .route(Route::new("kea", "kea").kea(KeaRoute::deny_by_default().rule(rule)))
        .audit_path(tmp.path().join("audit.jsonl"))
        .metrics(reserved_port());
    let gh = Gatehouse::start_bin(&example_bin("kea_whoami"), tmp.path(), &conf);
    let o = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: Some(pki.paths("dash")),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let post = |body: &'static str| {
        let o = o.clone();
        async move {
            request(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Some(&o),
                "POST",
                "/",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await
            .unwrap()
        }
    };
    let me = post(r#"{"command":"gatehouse-whoami"}"#).await;
    assert_eq!(me.status, 200, "{}", me.text());
    let v = me.json();
    assert_eq!(v[0]["result"], 0);
    assert_eq!(v[0]["text"], "cn=dash-1");
    assert_eq!(v[0]["arguments"]["dns"][0], "dash.example.org");
    assert_eq!(v[0]["arguments"]["fingerprint"].as_str().unwrap().len(), 64);
    // Real Kea still answers the rest, and the YAML rules still refuse what they refuse.
    let version = post(r#"{"command":"version-get"}"#).await;
    assert_eq!(version.status, 200);
    assert_eq!(version.json()[0]["result"], 0, "{}", version.text());
    assert!(version.json()[0]["text"].as_str().unwrap().starts_with('2'));
    let refused = post(r#"{"command":"config-set","arguments":{}}"#).await;
    assert_eq!(refused.status, 403);
    assert!(
        !kea.logs().contains("gatehouse-whoami"),
        "Kea never saw the edge-answered command"
    );
    assert_eq!(
        audit_verdicts(&tmp.path().join("audit.jsonl")),
        [
            ("gatehouse-whoami".to_string(), "answered".to_string()),
            ("version-get".into(), "allowed".into()),
            ("config-set".into(), "denied".into()),
        ]
    );
    let m = gh.metrics_text().await;
    assert!(
        m.contains(
            r#"gatehouse_kea_commands_total{command="other",route="kea",verdict="answered"} 1"#
        ),
        "{m}"
    );
}

/// (command, verdict) of every line of an audit file.
fn audit_verdicts(path: &std::path::Path) -> Vec<(String, String)> {
    let audit = std::fs::read_to_string(path).unwrap();
    audit
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| {
            (
                v["command"].as_str().unwrap_or("-").to_string(),
                v["verdict"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}
