//! Fleet features end to end: per-identity request rates on HTTP routes (with the raw client
//! and with curl over HTTP/2), per-identity cluster link limits.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

/// curl as `who` of `edge`: (`"<status> <http version>"`, body).
async fn curl(edge: &Pki, who: &str, url: &str, args: &[&str]) -> (String, String) {
    let c = common::curl(edge, who, url, args).await;
    (format!("{} {}", c.status, c.version), c.body)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Listener `edge` on `port`, client certificates of `edge` optional.
fn edge_listener(port: u16, edge: &Pki) -> Listener {
    Listener::new("edge", port).tls(ListenerTls::from_pki(edge, "server", ClientAuth::Optional))
}

/// One caller's flood empties its own bucket only: the others (another CN, an anonymous IP)
/// keep being served; the excess gets 429 with Retry-After, Kea-shaped for JSON, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_per_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["flood", "calm"]);
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("web", Group::new(origin.addr))
        .route(
            Route::new("api", "web")
                .path("/api")
                .rate_limit(0.01, Some(3)),
        )
        .route(Route::new("open", "web"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let who = |cn: Option<&str>| ClientOpts {
        ca: Some(edge.ca_path()),
        cert: cn.map(|c| edge.paths(c)),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let get = |o: ClientOpts, path: &'static str, json: bool| async move {
        let headers: &[(&str, &str)] = if json {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        request(addr(port), Some(&o), "GET", path, headers, b"")
            .await
            .unwrap()
    };

    for i in 0..3 {
        let r = get(who(Some("flood")), "/api/x", false).await;
        assert_eq!(r.status, 200, "request {i} is within the burst");
    }
    let r = get(who(Some("flood")), "/api/x", false).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.text(),
        "rate limit exceeded for cn=flood on route 'api' (routes[].rate_limit)\n"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // One token per 100 s: slow as the machine may be, no bucket refills during the test.
    assert!((1..=100).contains(&retry), "one token per 100 s: {retry}");
    let r = get(who(Some("flood")), "/api/x", true).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        serde_json::json!({"result": 429, "text": "rate limit exceeded for cn=flood on route 'api' (routes[].rate_limit)"})
    );
    // The flood limits nobody else, and nothing on routes without a limit.
    for _ in 0..3 {
        assert_eq!(get(who(Some("calm")), "/api/x", false).await.status, 200);
        assert_eq!(get(who(None), "/api/x", false).await.status, 200);
    }
    assert_eq!(get(who(Some("calm")), "/api/x", false).await.status, 429);
    assert_eq!(
        get(who(None), "/api/x", false).await.status,
        429,
        "anonymous = by IP"
    );
    assert_eq!(get(who(Some("flood")), "/other", false).await.status, 200);

    // curl with its defaults (HTTP/2) is limited the same way.
    let (status, _) = curl(
        &edge,
        "flood",
        &format!("https://localhost:{port}/api/x"),
        &[],
    )
    .await;
    assert_eq!(status, "429 2");

    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_http_rate_limited_total{route="api"} 5"#),
        "{m}"
    );
    // Refused requests never reached the origin: 3 + 3 + 3 allowed, 1 on the open route.
    assert_eq!(origin.seen().len(), 10);
}

const HELLO: &str =
    r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}"#;

/// A cluster-only edge in front of an echoing sink, with `limits` as `cluster.limits`.
async fn cluster_edge(
    dir: &std::path::Path,
    limits: Limits,
) -> (Gatehouse, common::sink::Sink, RelayPki, u16) {
    let rp = RelayPki::new(dir);
    let sink = common::sink::Sink::start(rp.master_acceptor(), common::sink::SinkMode::Echo).await;
    let port = reserved_port();
    let mut cluster = rp.cluster("master").limits(limits);
    cluster.upstream_identity = None;
    let conf = Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Cluster]))
        .upstream("master", rp.master(sink.addr))
        .cluster(cluster)
        .metrics(reserved_port());
    let gh = Gatehouse::start(dir, &conf);
    (gh, sink, rp, port)
}

/// A link as `cn` that sent a Hello and got it echoed (so it is relayed end to end).
async fn hello_link(
    rp: &RelayPki,
    port: u16,
    cn: &str,
) -> tokio_boring::SslStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let o = ClientOpts {
        ca: Some(rp.pki.ca_path()),
        cert: Some(rp.pki.paths(cn)),
        sni: Some("master1".into()),
        tls12: false,
    };
    let mut s = tls_connect(addr(port), &o).await.unwrap();
    let hello = gatehouse::cluster::codec::encode(HELLO.as_bytes());
    s.write_all(&hello).await.unwrap();
    let (got, _) = read_frames(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(got, vec![hello], "{cn}: Hello relayed and echoed");
    s
}

/// Icinga keeps every connection an endpoint makes, and a second link for the same CN is an
/// agent reconnecting past a dead one: with the default limit (1) the newer link stays and
/// the older is closed with close_notify; a raised limit keeps both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_link_of_the_same_identity_replaces_the_older() {
    let tmp = tempfile::tempdir().unwrap();
    let (gh, _sink, rp, port) = cluster_edge(tmp.path(), Limits::default()).await;
    let mut old = hello_link(&rp, port, "agent1").await;
    let edge = hello_link(&rp, port, "edge").await;
    let mut new = hello_link(&rp, port, "agent1").await;
    assert!(
        closed_within(&mut old, Duration::from_secs(5)).await,
        "the older agent1 link must be closed\n{}",
        gh.log_text()
    );
    gh.wait_log("replaced by a newer link of the same identity");
    // The newer link and the other identity's link still relay.
    use tokio::io::AsyncWriteExt;
    let hb = gatehouse::cluster::codec::encode(
        br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#,
    );
    new.write_all(&hb).await.unwrap();
    assert_eq!(
        read_frames(&mut new, 1, Duration::from_secs(5)).await.0,
        vec![hb]
    );
    drop(edge);
    let m = gh.metrics_text().await;
    assert!(
        m.contains("gatehouse_cluster_links_replaced_total 1"),
        "{m}"
    );

    let tmp2 = tempfile::tempdir().unwrap();
    let limits = Limits::default().max_links_per_identity(2);
    let (gh2, _sink2, rp2, port2) = cluster_edge(tmp2.path(), limits).await;
    let mut a = hello_link(&rp2, port2, "agent1").await;
    let _b = hello_link(&rp2, port2, "agent1").await;
    assert!(
        !closed_within(&mut a, Duration::from_secs(1)).await,
        "two links allowed\n{}",
        gh2.log_text()
    );
}

/// `max_connections_per_identity`: a caller's connection beyond the cap is closed right after
/// the handshake; other callers and the caller's own open connections are untouched, and a
/// closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["a", "b"]);
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge).max_connections_per_identity(2))
        .upstream("web", Group::new(origin.addr))
        .route(Route::new("web", "web"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let who = |cn: &str| ClientOpts {
        ca: Some(edge.ca_path()),
        cert: Some(edge.paths(cn)),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let first = tls_connect(addr(port), &who("a")).await.unwrap();
    let _second = tls_connect(addr(port), &who("a")).await.unwrap();
    // Both are held open (idle) before the third arrives. The server takes a connection's
    // place once its side of the handshake ends, a moment after the client's, and nothing
    // counts a connection that has not spoken yet: that moment cannot be waited for.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = tls_connect(addr(port), &who("a")).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(3)).await,
        "a's third connection must be closed\n{}",
        gh.log_text()
    );
    let r = request(addr(port), Some(&who("b")), "GET", "/", &[], b"").await;
    assert_eq!(r.map(|r| r.status).ok(), Some(200), "b is not limited by a");
    drop(first);
    let a = who("a");
    let served = || async {
        let r = request(addr(port), Some(&a), "GET", "/", &[], b"").await;
        r.is_ok_and(|r| r.status == 200).then_some(())
    };
    let freed = first_within_async(Duration::from_secs(3), POLL, served).await;
    assert!(
        freed.is_some(),
        "a closed connection frees its place\n{}",
        gh.log_text()
    );
    // At least the third connection (retries above may add more while `first` closes).
    let m = gh.metrics_text().await;
    let refused = m
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"gatehouse_connections_total{listener="edge",protocol="over_identity_limit"} "#,
            )
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 1), "{m}");
}

/// Kea fan-out across a fleet of real Control Agents: one list in peer order, each element
/// tagged with its peer; a hanging peer costs at most the group's read_timeout and a stopped
/// one is reported, never failing the others; a denied command reaches no agent; over mutual
/// TLS too, and with curl's defaults (HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_commands_fan_out_to_every_agent() {
    if !common::kea::installed() {
        return;
    }
    let mut f = KeaFleet::start().await;
    f.version_get_bounds_the_hanging_peer().await;
    f.each_agent_answers_for_itself().await;

    // A denied command reaches no agent.
    let (r, _) = f
        .send(r#"{"command":"config-set","service":["dhcp4"],"arguments":{}}"#)
        .await;
    assert_eq!(r.status, 403);
    for k in [&f.k1, &f.k2] {
        assert!(
            !k.logs().contains("Received command 'config-set'"),
            "{}",
            k.logs()
        );
    }

    // One agent stopped mid-test: reported as refused, the other still answers.
    f.k2.stop();
    let (r, _) = f.send(r#"{"command":"version-get"}"#).await;
    let v = r.json();
    assert_eq!(v[0]["result"], 0, "{v}");
    assert_eq!(v[1]["text"], "upstream error: refused", "{v}");
    assert_eq!(v[1]["peer"], f.k2.addr.to_string());

    f.the_mtls_fleet_answers_curl().await;
    f.audit_and_metrics_name_each_peer().await;
}

/// Two plain Control Agents and a hanging peer (group `fleet`, `read_timeout: 1s`, SNI
/// localhost), two over mutual TLS (`fleet-tls`, any other SNI), `dashboard-1` allowed
/// `*-get` and `list-commands`.
struct KeaFleet {
    edge: Pki,
    k1: common::kea::Kea,
    k2: common::kea::Kea,
    hang: Upstream,
    t1: common::kea::Kea,
    t2: common::kea::Kea,
    gh: Gatehouse,
    port: u16,
    mport: u16,
    tmp: tempfile::TempDir,
}

impl KeaFleet {
    async fn start() -> KeaFleet {
        use common::kea::{Kea, KeaTls};
        let tmp = tempfile::tempdir().unwrap();
        let edge = Pki::edge(tmp.path(), &["dashboard-1"]);
        let up = common::kea::upstream_pki(tmp.path());
        let k1 = Kea::start(&tmp.path().join("k1"), reserved_port(), None);
        let k2 = Kea::start(&tmp.path().join("k2"), reserved_port(), None);
        let hang = Upstream::h1(None, Behavior::Hang).await;
        let tls = || Some(KeaTls::from_pki(&up));
        let t1 = Kea::start(&tmp.path().join("t1"), reserved_port(), tls());
        let t2 = Kea::start(&tmp.path().join("t2"), reserved_port(), tls());
        let (port, mport) = (reserved_port(), reserved_port());
        let kea = || {
            KeaRoute::deny_by_default().fan_out("all").rule(
                KeaRule::new(["cn:dashboard-*"]).commands(AllowDeny::only([
                    "*-get",
                    "version-get",
                    "list-commands",
                ])),
            )
        };
        let conf = Conf::new()
            .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
                &edge,
                "server",
                ClientAuth::Required,
            )))
            .upstream(
                "fleet",
                Group::peers([k1.addr, k2.addr, hang.addr]).read_timeout("1s"),
            )
            .upstream(
                "fleet-tls",
                Group::peers([t1.addr, t2.addr]).tls(UpstreamTls::mutual(
                    "kea.internal",
                    &up,
                    "gatehouse",
                )),
            )
            .route(Route::new("fleet", "fleet").host("localhost").kea(kea()))
            .route(Route::new("fleet-tls", "fleet-tls").host("*").kea(kea()))
            .audit_path(tmp.path().join("audit.jsonl"))
            .metrics(mport);
        let gh = Gatehouse::start(tmp.path(), &conf);
        KeaFleet {
            edge,
            k1,
            k2,
            hang,
            t1,
            t2,
            gh,
            port,
            mport,
            tmp,
        }
    }

    /// POSTs `body` to the plain fleet as dashboard-1: the answer and how long it took.
    async fn send(&self, body: &str) -> (Response, Duration) {
        let o = ClientOpts {
            ca: Some(self.edge.ca_path()),
            cert: Some(self.edge.paths("dashboard-1")),
            sni: Some("localhost".into()),
            tls12: false,
        };
        let t0 = std::time::Instant::now();
        let r = request(
            addr(self.port),
            Some(&o),
            "POST",
            "/",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap();
        (r, t0.elapsed())
    }

    /// version-get: both agents answer, the hanging peer is a timeout after ~read_timeout.
    async fn version_get_bounds_the_hanging_peer(&self) {
        let (r, took) = self.send(r#"{"command":"version-get"}"#).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(
            peers(&v),
            [
                self.k1.addr.to_string(),
                self.k2.addr.to_string(),
                self.hang.addr.to_string()
            ],
            "{v}"
        );
        assert_eq!(v[0]["result"], 0, "{v}");
        assert_eq!(v[1]["result"], 0, "{v}");
        assert!(v[0]["text"].as_str().unwrap().starts_with("2."), "{v}");
        assert_eq!(
            v[2],
            serde_json::json!({"result": 1, "text": "upstream error: timeout", "peer": self.hang.addr.to_string()})
        );
        assert!(
            took < Duration::from_secs(3),
            "bounded by read_timeout: {took:?}"
        );
    }

    /// config-get on dhcp4: each agent's own configuration, in peer order; list-commands is
    /// cut to the caller's rule in every agent's element.
    async fn each_agent_answers_for_itself(&self) {
        let (r, _) = self
            .send(r#"{"command":"config-get","service":["dhcp4"]}"#)
            .await;
        let v = r.json();
        assert_eq!(
            peers(&v)[..2],
            [self.k1.addr.to_string(), self.k2.addr.to_string()]
        );
        for e in &v.as_array().unwrap()[..2] {
            assert_eq!(e["result"], 0, "{e}");
            assert!(e["arguments"]["Dhcp4"].is_object(), "{e}");
        }

        let (r, _) = self
            .send(r#"{"command":"list-commands","service":["dhcp4"]}"#)
            .await;
        let v = r.json();
        for e in &v.as_array().unwrap()[..2] {
            let names: Vec<&str> = e["arguments"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|n| n.as_str())
                .collect();
            assert!(names.contains(&"config-get"), "{e}");
            assert!(
                names
                    .iter()
                    .all(|n| n.ends_with("-get") || *n == "list-commands"),
                "only what dashboard-1 may run: {e}"
            );
        }
    }

    /// The mutual-TLS fleet, through curl with its defaults (HTTP/2).
    async fn the_mtls_fleet_answers_curl(&self) {
        let (status, body) = curl(
            &self.edge,
            "dashboard-1",
            &format!("https://127.0.0.1:{}/", self.port),
            &[
                "-H",
                "Content-Type: application/json",
                "--data",
                r#"{"command":"version-get"}"#,
            ],
        )
        .await;
        assert_eq!(status, "200 2", "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            peers(&v),
            [self.t1.addr.to_string(), self.t2.addr.to_string()],
            "{v}"
        );
        assert!(
            v.as_array().unwrap().iter().all(|e| e["result"] == 0),
            "{v}"
        );
    }

    /// One audit record per command, with each peer's outcome; per-peer metrics.
    async fn audit_and_metrics_name_each_peer(&self) {
        let audit: Vec<serde_json::Value> =
            std::fs::read_to_string(self.tmp.path().join("audit.jsonl"))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
        let first = &audit[0];
        assert_eq!(
            (first["command"].as_str(), first["verdict"].as_str()),
            (Some("version-get"), Some("allowed"))
        );
        assert_eq!(
            first["peers"],
            serde_json::json!([
                {"peer": self.k1.addr.to_string(), "results": [0]},
                {"peer": self.k2.addr.to_string(), "results": [0]},
                {"peer": self.hang.addr.to_string(), "results": [1], "error": "upstream error: timeout"},
            ])
        );
        assert_eq!(audit.iter().filter(|a| a["verdict"] == "denied").count(), 1);
        let m = metrics_text(self.mport).await;
        for needle in [
            format!(
                r#"gatehouse_kea_fanout_peer_total{{outcome="timeout",peer="{}",route="fleet"}} 4"#,
                self.hang.addr
            ),
            format!(
                r#"gatehouse_kea_fanout_peer_total{{outcome="refused",peer="{}",route="fleet"}} 1"#,
                self.k2.addr
            ),
            format!(
                r#"gatehouse_kea_fanout_peer_total{{outcome="ok",peer="{}",route="fleet-tls"}} 1"#,
                self.t1.addr
            ),
        ] {
            assert!(m.contains(&needle), "{needle}\n{m}\n{}", self.gh.log_text());
        }
    }
}

/// The `peer` of every element of a fanned-out answer.
fn peers(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| e["peer"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// Every fanned-out copy is prepared like a single forward: Gatehouse's own
/// `X-Forwarded-For` and `X-Forwarded-Client-Cert` (the client's forged ones never pass), a
/// Host per peer, the exact body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_copies_carry_gatehouse_forwarding_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let (a, b) = (
        Upstream::h1(None, Behavior::Echo).await,
        Upstream::h1(None, Behavior::Echo).await,
    );
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("fleet", Group::peers([a.addr, b.addr]))
        .route(
            Route::new("fleet", "fleet")
                .xfcc()
                .kea(KeaRoute::allow_all().fan_out("all")),
        );
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let o = ClientOpts {
        ca: Some(edge.ca_path()),
        cert: Some(edge.paths("ops")),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let body = br#"{"command":"version-get","service":["dhcp4"]}"#;
    let r = request(
        addr(port),
        Some(&o),
        "POST",
        "/",
        &[
            ("Content-Type", "application/json"),
            (
                "X-Forwarded-Client-Cert",
                "Hash=forged;Subject=\"CN=admin\"",
            ),
            ("X-Forwarded-For", "10.6.6.6"),
        ],
        body,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["peer"].clone())
            .collect::<Vec<_>>(),
        [a.addr.to_string(), b.addr.to_string()]
    );
    for origin in [&a, &b] {
        let seen = origin.seen();
        let s = &seen[0];
        assert_eq!(
            s.header("x-forwarded-for"),
            Some("127.0.0.1"),
            "{:?}",
            s.headers
        );
        let xfcc = s.header("x-forwarded-client-cert").unwrap_or_default();
        assert!(
            xfcc.starts_with("Hash=") && xfcc.contains("CN=ops") && !xfcc.contains("forged"),
            "{xfcc}"
        );
        assert_eq!(s.header("host"), Some(origin.addr.to_string().as_str()));
        assert_eq!(s.body, body);
    }
}

/// A `toward: child` route is a parent speaking down to a child: an anonymous client is
/// refused there (counted), while an authenticated one is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_routes_take_authenticated_parents_only() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let rp = RelayPki::new(tmp.path());
    let sink = common::sink::Sink::start(rp.master_acceptor(), common::sink::SinkMode::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let mut cluster = Cluster::default().child_route("master1", "child");
    cluster.upstream_identity = None;
    let conf = Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Cluster]))
        .upstream("child", rp.master(sink.addr))
        .cluster(cluster)
        .metrics(mport);
    let gh = Gatehouse::start(tmp.path(), &conf);
    let anon = ClientOpts {
        ca: Some(rp.pki.ca_path()),
        cert: None,
        sni: Some("master1".into()),
        tls12: false,
    };
    let mut s = tls_connect(addr(port), &anon).await.unwrap();
    let _ = s
        .write_all(&gatehouse::cluster::codec::encode(HELLO.as_bytes()))
        .await;
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "anonymous link on a child route must be closed\n{}",
        gh.log_text()
    );
    assert_eq!(
        sink.count.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the child"
    );
    let _parent = hello_link(&rp, port, "agent1").await;
    let m = metrics_text(mport).await;
    assert!(
        m.contains(r#"gatehouse_cluster_links_refused_total{reason="anonymous_child"} 1"#),
        "{m}"
    );
}
