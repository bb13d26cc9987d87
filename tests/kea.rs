//! Real Kea behind Gatehouse, every supported release (`common::kea::Release`: 2.2 and 2.6
//! behind their Control Agent, 3.0's daemon socket): answers through the proxy are
//! byte-identical to direct ones, over plain HTTP and over mutual TLS to a peer that requires
//! client certificates; per-identity command rules; a peer that restarts.

mod common;

use common::kea::{Kea, KeaTls, Release};
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const COMMANDS: &[&str] = &[
    r#"{"command":"version-get"}"#,
    r#"{"command":"list-commands"}"#,
    r#"{"command":"list-commands","service":["dhcp4"]}"#,
    r#"{"command":"config-get","service":["dhcp4"]}"#,
];

async fn post(addr: SocketAddr, tls: Option<&ClientOpts>, body: &str) -> Response {
    let r = request(
        addr,
        tls,
        "POST",
        "/",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{body} to {addr}: {e}"));
    assert_eq!(r.status, 200, "{body}: {}", r.text());
    r
}

async fn compare(kea: &Kea, direct_tls: Option<&ClientOpts>, gh: SocketAddr, client: &ClientOpts) {
    for cmd in COMMANDS {
        let direct = post(kea.addr, direct_tls, cmd).await;
        let proxied = post(gh, Some(client), cmd).await;
        assert!(
            direct.body.starts_with(b"[") && direct.text().contains("\"result\": 0"),
            "{cmd}: unexpected Kea answer {}",
            direct.text()
        );
        assert_eq!(
            proxied.text(),
            direct.text(),
            "{cmd}: body through Gatehouse differs from Kea's own"
        );
    }
}

crate::per_kea_release! {
    bodies_are_byte_identical =>
        kea_2_2_plain_and_mtls_bodies_are_byte_identical,
        kea_2_6_plain_and_mtls_bodies_are_byte_identical,
        kea_3_0_plain_and_mtls_bodies_are_byte_identical;
    commands_are_authorized =>
        kea_2_2_commands_are_authorized_per_identity_and_audited,
        kea_2_6_commands_are_authorized_per_identity_and_audited,
        kea_3_0_commands_are_authorized_per_identity_and_audited;
    restart_is_survived =>
        kea_2_2_restart_and_dead_peers_are_survived,
        kea_2_6_restart_and_dead_peers_are_survived,
        kea_3_0_restart_and_dead_peers_are_survived;
}

async fn bodies_are_byte_identical(release: Release) {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let up = common::kea::upstream_pki(tmp.path());

    let Some(plain) = Kea::of(release, &tmp.path().join("k1"), reserved_port(), None) else {
        return;
    };
    let Some(secure) = Kea::of(
        release,
        &tmp.path().join("k2"),
        reserved_port(),
        Some(KeaTls::from_pki(&up)),
    ) else {
        return;
    };

    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream(
            "kea-plain",
            Group::new(plain.addr).health_check(HealthCheck::tcp("1s")),
        )
        .upstream(
            "kea-tls",
            Group::new(secure.addr).tls(UpstreamTls::mutual("kea.internal", &up, "gatehouse")),
        )
        .route(Route::new("plain", "kea-plain").host("plain.example"))
        .route(Route::new("tls", "kea-tls").host("*"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let gh_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = ClientOpts {
        ca: Some(edge.ca_path()),
        cert: Some(edge.paths("ops")),
        sni: Some("localhost".into()),
        tls12: false,
    };

    // Plain-HTTP agent: routed by the Host header (`Host: localhost` goes to the TLS agent).
    for cmd in COMMANDS {
        let direct = post(plain.addr, None, cmd).await;
        let proxied = request(
            gh_addr,
            Some(&client),
            "POST",
            "/",
            &[
                ("Host", "plain.example"),
                ("Content-Type", "application/json"),
            ],
            cmd.as_bytes(),
        )
        .await
        .unwrap();
        assert_eq!(proxied.status, 200, "{}", proxied.text());
        assert_eq!(proxied.text(), direct.text(), "{cmd} via plain agent");
    }

    // TLS agent that requires client certs: only Gatehouse's upstream identity gets in.
    let direct_tls = ClientOpts {
        ca: Some(up.ca_path()),
        cert: Some(up.paths("gatehouse")),
        sni: Some("kea.internal".into()),
        tls12: false,
    };
    compare(&secure, Some(&direct_tls), gh_addr, &client).await;
    let no_cert = ClientOpts {
        cert: None,
        ..direct_tls.clone()
    };
    assert!(
        request(secure.addr, Some(&no_cert), "POST", "/", &[], b"{}")
            .await
            .is_err(),
        "the TLS agent must require client certificates"
    );
    let line = gh.wait_log("route=tls");
    assert!(
        line.contains("cn=ops") && line.contains("status=200"),
        "{line}"
    );
}

/// Listener `edge` on `port`, client certificates of `edge` required.
fn edge_listener(port: u16, edge: &Pki) -> Listener {
    Listener::new("edge", port).tls(ListenerTls::from_pki(edge, "server", ClientAuth::Required))
}

/// Route `kea` to upstream `kea`: dashboards read dhcp4, ops-admin does all but shut it
/// down, ops-intern is refused at the route. In front of a daemon (Kea 3), a `kea.daemon`
/// route, as docs/kea3.md asks.
fn rbac(release: Release) -> Route {
    let dashboard = KeaRule::new(["cn:dashboard-*"])
        .commands(AllowDeny::only([
            "*-get",
            "list-commands",
            "status-get",
            "version-get",
            "lease4-get*",
        ]))
        .services(AllowDeny::only(["dhcp4"]));
    let admin = KeaRule::new(["cn:ops-admin"]).commands(AllowDeny::only(["*"]).deny(["shutdown"]));
    Route::new("kea", "kea")
        .allow(["cn:dashboard-*", "cn:ops-*"])
        .deny(["cn:ops-intern"])
        .xfcc()
        .kea({
            let kea = KeaRoute::deny_by_default()
                .max_body("64KiB")
                .rule(dashboard)
                .rule(admin);
            if release.has_agent() {
                kea
            } else {
                kea.daemon("dhcp4")
            }
        })
}

async fn commands_are_authorized(release: Release) {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["dashboard-1", "ops-admin", "ops-intern"]);
    let Some(k) = Kea::of(release, &tmp.path().join("k"), reserved_port(), None) else {
        return;
    };
    let (port, mport) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("kea", Group::new(k.addr))
        .route(rbac(release))
        .audit_path(tmp.path().join("audit.jsonl"))
        .metrics(mport);
    // Kea 2.6 and 3.0 log their own start-up as a `config-set`: count from here on.
    let at_start: std::collections::HashMap<&str, usize> =
        ["config-set", "config-write", "shutdown", "config-get"]
            .into_iter()
            .map(|c| (c, received(&k, c)))
            .collect();
    let gh = Gatehouse::start(tmp.path(), &conf);
    let e = Rbac {
        k,
        edge,
        gh_addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };

    // dashboard-1: read-only commands on dhcp4 pass and return Kea's own answers.
    for cmd in [
        r#"{"command":"config-get","service":["dhcp4"]}"#,
        r#"{"command":"list-commands","service":["dhcp4"]}"#,
        r#"{"command":"version-get","service":["dhcp4"]}"#,
    ] {
        let r = e.send("dashboard-1", cmd.into()).await;
        assert_eq!(r.status, 200, "{cmd}: {}", r.text());
        assert_eq!(r.json()[0]["result"], 0, "{cmd}: {}", r.text());
    }
    e.list_commands_is_cut_to_the_callers_rule().await;
    e.refused_commands_never_reach_kea(release, &at_start).await;
    e.ops_admin_writes_the_config().await;

    // ops-intern is refused at the route (deny wins over allow).
    let r = e
        .send("ops-intern", r#"{"command":"version-get"}"#.into())
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.json()["text"],
        "route 'kea' is not allowed for cn=ops-intern"
    );

    e.bodies_are_reframed_or_refused().await;
    audit_has_each_outcome(&tmp.path().join("audit.jsonl"));
    let metrics = metrics_text(mport).await;
    for needle in [
        r#"gatehouse_kea_commands_total{command="config-set",route="kea",verdict="denied"} 1"#,
        r#"gatehouse_kea_commands_total{command="config-write",route="kea",verdict="allowed"} 1"#,
        r#"gatehouse_kea_commands_total{command="other",route="kea",verdict="malformed"} 2"#,
    ] {
        assert!(metrics.contains(needle), "missing {needle}:\n{metrics}");
    }
    drop(gh);
}

/// How many times Kea logged receiving command `c`.
fn received(k: &Kea, c: &str) -> usize {
    k.logs().matches(&format!("Received command '{c}'")).count()
}

/// Kea behind the [`rbac`] route at `gh_addr`; dashboard-1, ops-admin and ops-intern of
/// `edge` call it.
struct Rbac {
    k: Kea,
    edge: Pki,
    gh_addr: SocketAddr,
}

impl Rbac {
    fn as_(&self, cn: &str) -> ClientOpts {
        ClientOpts {
            ca: Some(self.edge.ca_path()),
            cert: Some(self.edge.paths(cn)),
            sni: Some("localhost".into()),
            tls12: false,
        }
    }

    /// POSTs `body` as `cn`.
    async fn send(&self, cn: &str, body: String) -> Response {
        request(
            self.gh_addr,
            Some(&self.as_(cn)),
            "POST",
            "/",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap()
    }

    /// list-commands lists what the caller may run, not everything Kea knows: the answer's
    /// `arguments` are cut by the caller's rule (and re-framed with their new length).
    async fn list_commands_is_cut_to_the_callers_rule(&self) {
        let lc = r#"{"command":"list-commands","service":["dhcp4"]}"#;
        let names = |v: &serde_json::Value| -> Vec<String> {
            v[0]["arguments"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|n| n.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let all = names(&post(self.k.addr, None, lc).await.json());
        assert!(
            ["config-get", "config-set", "shutdown"]
                .iter()
                .all(|c| all.iter().any(|a| a == c)),
            "Kea's own list: {all:?}"
        );
        let dashboard_may = |c: &str| {
            c.ends_with("-get")
                || c.starts_with("lease4-get")
                || ["list-commands", "status-get", "version-get"].contains(&c)
        };
        let seen = names(&self.send("dashboard-1", lc.into()).await.json());
        let want: Vec<String> = all.iter().filter(|c| dashboard_may(c)).cloned().collect();
        assert!(want.iter().any(|c| c == "config-get") && !want.is_empty());
        assert_eq!(
            seen, want,
            "dashboard-1 sees exactly what its rule allows, in Kea's order"
        );
        let seen = names(&self.send("ops-admin", lc.into()).await.json());
        let want: Vec<String> = all.iter().filter(|c| *c != "shutdown").cloned().collect();
        assert_eq!(seen, want, "ops-admin sees all but the denied shutdown");
    }

    /// Everything else is refused Kea-shaped, and Kea never sees it (its counts of refused
    /// commands stay at `at_start`); dhcp4 still answers after the refused shutdown.
    async fn refused_commands_never_reach_kea(
        &self,
        release: Release,
        at_start: &std::collections::HashMap<&str, usize>,
    ) {
        for (cmd, text) in [
            (
                r#"{"command":"config-set","service":["dhcp4"],"arguments":{}}"#,
                "command 'config-set' is not allowed for cn=dashboard-1",
            ),
            (
                r#"{"command":"config-write","service":["dhcp4"]}"#,
                "command 'config-write' is not allowed for cn=dashboard-1",
            ),
            (
                r#"{"command":"shutdown","service":["dhcp4"]}"#,
                "command 'shutdown' is not allowed for cn=dashboard-1",
            ),
        ] {
            let r = self.send("dashboard-1", cmd.into()).await;
            assert_eq!(r.status, 403, "{cmd}");
            assert_eq!(r.json(), serde_json::json!({"result": 403, "text": text}));
        }
        self.other_services_are_judged(release).await;
        // ops-admin may not shut Kea down either (deny wins inside its rule).
        let r = self
            .send(
                "ops-admin",
                r#"{"command":"shutdown","service":["dhcp4"]}"#.into(),
            )
            .await;
        assert_eq!(r.status, 403);
        for never in ["config-set", "config-write", "shutdown"] {
            assert_eq!(
                received(&self.k, never),
                at_start[never],
                "Kea received {never}:\n{}",
                self.k.logs()
            );
        }
        assert!(
            received(&self.k, "config-get") > at_start["config-get"],
            "the allowed ones did reach Kea"
        );
        let alive = post(
            self.k.addr,
            None,
            r#"{"command":"version-get","service":["dhcp4"]}"#,
        )
        .await;
        assert_eq!(
            alive.json()[0]["result"],
            0,
            "dhcp4 still up after the denied shutdown"
        );
    }

    /// Commands without a service, and for dhcp6, as a dashboard limited to dhcp4.
    async fn other_services_are_judged(&self, release: Release) {
        let no_service = [
            r#"{"command":"config-get"}"#,
            r#"{"command":"config-get","service":[]}"#,
        ];
        let dhcp6 = r#"{"command":"config-get","service":["dhcp6"]}"#;
        if release.has_agent() {
            // No service = the Control Agent itself (its config lists sockets and auth clients).
            for cmd in no_service {
                let r = self.send("dashboard-1", cmd.into()).await;
                assert_eq!(r.status, 403, "{cmd}");
                assert_eq!(
                    r.json()["text"],
                    "service 'ca' is not allowed for cn=dashboard-1"
                );
            }
            let r = self.send("dashboard-1", dhcp6.into()).await;
            assert_eq!(r.status, 403);
            assert_eq!(
                r.json()["text"],
                "service 'dhcp6' is not allowed for cn=dashboard-1"
            );
        } else {
            // A daemon: no service is the daemon, which the dashboard may read; another
            // service is refused by the daemon route before any rule (Kea 3.0 would answer it
            // as dhcp4).
            for cmd in no_service {
                let r = self.send("dashboard-1", cmd.into()).await;
                assert_eq!(r.status, 200, "{cmd}: {}", r.text());
                assert!(r.json()[0]["arguments"]["Dhcp4"].is_object(), "{cmd}");
            }
            let r = self.send("dashboard-1", dhcp6.into()).await;
            assert_eq!(r.status, 400, "{}", r.text());
            assert_eq!(r.json()["result"], 400);
        }
    }

    async fn ops_admin_writes_the_config(&self) {
        let (name, out) = self.k.writable("written.json");
        let r = self
            .send(
                "ops-admin",
                format!(
                    r#"{{"command":"config-write","service":["dhcp4"],"arguments":{{"filename":"{name}"}}}}"#
                ),
            )
            .await;
        assert_eq!(
            (r.status, &r.json()[0]["result"]),
            (200, &serde_json::json!(0)),
            "{}",
            r.text()
        );
        assert!(std::fs::read_to_string(&out).unwrap().contains("Dhcp4"));
    }

    /// A chunked POST is re-framed with Content-Length (Kea alone answers 400 to it);
    /// malformed and oversized bodies: 400 and 413, Kea-shaped.
    async fn bodies_are_reframed_or_refused(&self) {
        let chunked = b"2d\r\n{\"command\":\"version-get\",\"service\":[\"dhcp4\"]}\r\n0\r\n\r\n";
        let te = [
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ];
        let direct = request(self.k.addr, None, "POST", "/", &te, chunked)
            .await
            .unwrap();
        assert_eq!(direct.status, 400, "Kea itself refuses chunked bodies");
        let via = request(
            self.gh_addr,
            Some(&self.as_("dashboard-1")),
            "POST",
            "/",
            &te,
            chunked,
        )
        .await
        .unwrap();
        assert_eq!(via.status, 200, "{}", via.text());
        assert_eq!(via.json()[0]["result"], 0);

        let r = self.send("dashboard-1", "{not json".into()).await;
        assert_eq!(r.status, 400);
        assert!(
            r.json()["text"]
                .as_str()
                .unwrap()
                .starts_with("malformed command"),
            "{}",
            r.text()
        );
        let r = self
            .send(
                "dashboard-1",
                format!(
                    r#"{{"command":"version-get","pad":"{}"}}"#,
                    "x".repeat(70_000)
                ),
            )
            .await;
        assert_eq!(r.status, 413);
        assert_eq!(r.json()["result"], 413);
    }
}

/// The audit log has a line for each kind of outcome, with the fields operators need.
fn audit_has_each_outcome(path: &Path) {
    let audit: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |verdict: &str, command: Option<&str>| {
        audit
            .iter()
            .find(|a| a["verdict"] == verdict && command.is_none_or(|c| a["command"] == c))
            .unwrap_or_else(|| panic!("no {verdict} {command:?} line in {audit:#?}"))
            .clone()
    };
    let a = find("allowed", Some("config-get"));
    assert_eq!(a["identity"]["cn"], "dashboard-1");
    assert_eq!(a["identity"]["fingerprint"].as_str().unwrap().len(), 64);
    assert_eq!(a["services"], serde_json::json!(["dhcp4"]));
    assert_eq!(
        (a["status"].as_u64(), a["results"].clone()),
        (Some(200), serde_json::json!([0]))
    );
    for key in ["time", "listener", "client", "route", "duration_ms"] {
        assert!(!a[key].is_null(), "audit line lacks {key}: {a}");
    }
    let d = find("denied", Some("config-set"));
    assert_eq!(
        d["reason"],
        "command 'config-set' is not allowed for cn=dashboard-1"
    );
    assert_eq!(d["status"], 403);
    let m = find("malformed", None);
    assert_eq!(m["command"], serde_json::Value::Null);
}

async fn restart_is_survived(release: Release) {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let kea_dir = tmp.path().join("k");
    let kea_port = reserved_port();
    let Some(mut k) = Kea::of(release, &kea_dir, kea_port, None) else {
        return;
    };
    let (port, mport, dead) = (reserved_port(), reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream(
            "kea",
            Group::peers([local(kea_port), local(dead)])
                .health_check(HealthCheck::tcp("1s"))
                .connect_timeout("1s"),
        )
        .route(Route::new("kea", "kea"))
        .metrics(mport);
    let gh = Gatehouse::start(tmp.path(), &conf);
    let gh_addr = SocketAddr::from(([127, 0, 0, 1], port));
    let o = ClientOpts {
        ca: Some(edge.ca_path()),
        cert: Some(edge.paths("ops")),
        sni: Some("localhost".into()),
        tls12: false,
    };

    // The dead peer leaves the rotation once the health check has run: no more connect attempts.
    // Two and a half check intervals (1 s): nothing tells when a peer was found down while
    // another is up, so the interval is waited out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = refused(mport).await;
    for _ in 0..20 {
        assert_eq!(version_get(gh_addr, &o).await.status, 200);
    }
    assert_eq!(
        refused(mport).await,
        before,
        "the unhealthy peer was still tried"
    );

    // Kea goes away: 502/503, Kea-shaped, and nothing else breaks.
    k.stop();
    for _ in 0..5 {
        let r = version_get(gh_addr, &o).await;
        assert!(
            r.status == 502 || r.status == 503,
            "got {} {}",
            r.status,
            r.text()
        );
        assert!(
            r.json()["text"].as_str().unwrap().starts_with("upstream"),
            "{}",
            r.text()
        );
    }
    // Kea comes back on the same port: Gatehouse recovers by itself.
    let k2 = Kea::of(release, &kea_dir, kea_port, None).expect("the release ran before");
    let last = std::cell::RefCell::new(String::new());
    let answered = || async {
        let r = version_get(gh_addr, &o).await;
        *last.borrow_mut() = format!("{} {}", r.status, r.text());
        (r.status == 200).then_some(r)
    };
    let r = eventually_some(
        "recovery",
        Duration::from_secs(15),
        Duration::from_millis(250),
        answered,
        || format!("last answer: {}", last.borrow()),
    )
    .await;
    assert_eq!(r.json()[0]["result"], 0);
    assert!(
        Path::new(&format!("/proc/{}", gh.pid())).exists(),
        "same Gatehouse process"
    );
    drop(k2);
}

/// `version-get` to the edge at `gh_addr` as `o`.
async fn version_get(gh_addr: SocketAddr, o: &ClientOpts) -> Response {
    request(
        gh_addr,
        Some(o),
        "POST",
        "/",
        &[("Content-Type", "application/json")],
        br#"{"command":"version-get"}"#,
    )
    .await
    .unwrap()
}

/// Connections to upstream `kea` refused so far, from the metrics on `mport`.
async fn refused(mport: u16) -> u64 {
    let m = metrics_text(mport).await;
    m.lines()
        .find(|l| {
            l.starts_with(r#"gatehouse_upstream_errors_total{kind="refused",upstream="kea"}"#)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}
