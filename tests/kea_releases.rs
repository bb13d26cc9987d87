//! Smoke tests of the Kea releases the tests run from cached Debian roots
//! (`common::kea_root`): Debian 13's Kea 2.6 (UNIX control sockets only) and trixie-backports'
//! Kea 3.0 (UNIX and HTTP(S) control sockets on the daemons themselves, no Control Agent needed).
//! They skip loudly when a root cannot be made (not root, no mirror) and fail under CI=true.
//!
//! Then Gatehouse in front of them: the Kea 3 bypass (a daemon ignores `service`) closed by a
//! `kea.daemon` route, and `kea.services` dispatch across HTTP(S) and UNIX sockets of 3.0 and
//! 2.6 daemons, with curl (HTTP/2) and kea-shell as clients.

mod common;

use common::kea_root::{self, Daemon, KeaDaemon};
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const VERSION_GET: &str = r#"{"command":"version-get"}"#;

/// Sends `cmd` over a daemon's UNIX control socket: bare JSON both ways, one object back.
fn unix_command(sock: &Path, cmd: &str) -> Value {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("connect {sock:?}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(cmd.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // The answer is complete when it parses (the daemon also closes after answering).
        if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
            return v;
        }
        let n = s
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("{cmd} on {sock:?}: {e}; so far: {buf:?}"));
        assert!(
            n > 0,
            "{cmd} on {sock:?}: closed before a whole JSON object: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `version-get` over HTTP(S) answers `[ { "result": 0, "text": "<version>", … } ]`; the text.
async fn http_version(kea: &KeaDaemon, tls: Option<&ClientOpts>) -> String {
    let addr = kea.http.expect("an HTTP control socket");
    let r = request(
        addr,
        tls,
        "POST",
        "/",
        &[("Content-Type", "application/json")],
        VERSION_GET.as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("version-get to {addr}: {e}\n{}", kea.logs()));
    assert_eq!(r.status, 200, "{}", r.text());
    let answers = r.json();
    let list = answers
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {answers}"));
    assert_eq!(list.len(), 1, "{answers}");
    assert_eq!(list[0]["result"], 0, "{answers}");
    list[0]["text"].as_str().unwrap_or_default().to_string()
}

/// `version-get` over the UNIX socket: one object (not a list) with result 0; its text.
fn unix_version(kea: &KeaDaemon) -> String {
    let v = unix_command(&kea.unix, VERSION_GET);
    assert!(v.is_object(), "over UNIX a daemon answers one object: {v}");
    assert_eq!(v["result"], 0, "{v}");
    v["text"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_3_0_dhcp4_answers_on_http_and_unix_sockets() {
    let Some(root) = kea_root::root("kea-3.0") else {
        return;
    };
    let kea = KeaDaemon::start(&root, Daemon::Dhcp4, Some(reserved_port()), None);
    assert!(kea.version.starts_with("3.0"), "{}", kea.version);

    let text = http_version(&kea, None).await;
    assert!(text.starts_with("3.0"), "version-get over HTTP: {text}");
    let text = unix_version(&kea);
    assert!(text.starts_with("3.0"), "version-get over UNIX: {text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_3_0_dhcp4_https_socket_requires_client_certificates() {
    let Some(root) = kea_root::root("kea-3.0") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let up = common::kea::upstream_pki(tmp.path());
    let tls = common::kea::KeaTls::from_pki(&up);
    let kea = KeaDaemon::start(&root, Daemon::Dhcp4, Some(reserved_port()), Some(&tls));

    let client = ClientOpts {
        ca: Some(up.ca_path()),
        cert: Some(up.paths("gatehouse")),
        sni: Some("kea.internal".into()),
        tls12: false,
    };
    let text = http_version(&kea, Some(&client)).await;
    assert!(text.starts_with("3.0"), "version-get over HTTPS: {text}");

    let no_cert = ClientOpts {
        cert: None,
        ..client.clone()
    };
    let r = request(
        kea.http.unwrap(),
        Some(&no_cert),
        "POST",
        "/",
        &[],
        VERSION_GET.as_bytes(),
    )
    .await;
    assert!(r.is_err(), "no client certificate, yet: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_3_0_dhcp6_answers_on_its_unix_socket() {
    let Some(root) = kea_root::root("kea-3.0") else {
        return;
    };
    let kea = KeaDaemon::start(&root, Daemon::Dhcp6, None, None);
    let text = unix_version(&kea);
    assert!(text.starts_with("3.0"), "version-get over UNIX: {text}");
}

#[test]
fn kea_2_6_dhcp4_and_dhcp6_answer_on_their_unix_sockets() {
    let Some(root) = kea_root::root("kea-2.6") else {
        return;
    };
    assert!(kea_root::version(&root).starts_with("2.6"));
    for kind in [Daemon::Dhcp4, Daemon::Dhcp6] {
        let kea = KeaDaemon::start(&root, kind, None, None);
        let text = unix_version(&kea);
        assert!(
            text.starts_with("2.6"),
            "{kind:?} version-get over UNIX: {text}"
        );
    }
}

/// A Kea command through Gatehouse with curl's defaults (HTTP/2) as `who`: (status, JSON).
async fn via_edge(edge: &Pki, who: &str, port: u16, path: &str, body: &str) -> (String, Value) {
    let url = format!("https://localhost:{port}{path}");
    let c = curl(
        edge,
        who,
        &url,
        &["-H", "Content-Type: application/json", "-d", body],
    )
    .await;
    let v = serde_json::from_str(&c.body).unwrap_or(Value::String(c.body.clone()));
    (c.status, v)
}

/// The issue's case with a real Kea 3.0: a rule `services: { allow: [dhcp6] }` for dashboards
/// in front of a kea-dhcp4 HTTPS control socket. The daemon itself ignores `service` (shown
/// first, straight to it): without `kea.daemon` the rule would hand out the DHCPv4
/// configuration. With `kea.daemon: dhcp4` the dhcp6 command is refused and never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_3_0_service_bypass_is_closed_by_a_daemon_route() {
    let Some(root) = kea_root::root("kea-3.0") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let up = common::kea::upstream_pki(tmp.path());
    let kea = KeaDaemon::start(
        &root,
        Daemon::Dhcp4,
        Some(reserved_port()),
        Some(&common::kea::KeaTls::from_pki(&up)),
    );
    let client = ClientOpts {
        ca: Some(up.ca_path()),
        cert: Some(up.paths("gatehouse")),
        sni: Some("kea.internal".into()),
        tls12: false,
    };
    let bypass = br#"{"command":"config-get","service":["dhcp6"]}"#;
    let direct = request(
        kea.http.unwrap(),
        Some(&client),
        "POST",
        "/",
        &[("Content-Type", "application/json")],
        bypass,
    )
    .await
    .unwrap();
    assert!(
        direct.json()[0]["arguments"]["Dhcp4"].is_object(),
        "Kea 3.0 ignores `service` (the hole this closes): {}",
        direct.text()
    );

    let edge = Pki::edge(tmp.path(), &["dashboard-1", "ops-admin"]);
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream(
            "dhcp4",
            Group::new(kea.http.unwrap()).tls(UpstreamTls::mutual(
                "kea.internal",
                &up,
                "gatehouse",
            )),
        )
        .route(Route::new("dhcp4", "dhcp4").kea(common::kea::bypass_rules("ops-admin")));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    the_daemon_route_closes_the_bypass(&edge, port, std::str::from_utf8(bypass).unwrap()).await;
}

/// Listener `edge` on `port`, client certificates of `edge` required.
fn edge_listener(port: u16, edge: &Pki) -> Listener {
    Listener::new("edge", port).tls(ListenerTls::from_pki(edge, "server", ClientAuth::Required))
}

/// Through a `kea.daemon: dhcp4` route with [`common::kea::bypass_rules`]: the `bypass`
/// command (dhcp6) refused, no service judged as dhcp4 (the dashboard may not read it,
/// ops-admin may).
async fn the_daemon_route_closes_the_bypass(edge: &Pki, port: u16, bypass: &str) {
    let (status, v) = via_edge(edge, "dashboard-1", port, "/", bypass).await;
    assert_eq!(status, "400", "{v}");
    assert!(v.to_string().contains("dhcp4 daemon"), "{v}");
    let (status, v) = via_edge(
        edge,
        "dashboard-1",
        port,
        "/",
        r#"{"command":"config-get"}"#,
    )
    .await;
    assert_eq!(
        status, "403",
        "no service is dhcp4, which the dashboards may not read: {v}"
    );
    let (status, v) = via_edge(
        edge,
        "ops-admin",
        port,
        "/",
        r#"{"command":"config-get","service":["dhcp4"]}"#,
    )
    .await;
    assert_eq!(status, "200", "{v}");
    assert!(v[0]["arguments"]["Dhcp4"].is_object(), "{v}");
}

/// Gatehouse as the agent of Kea 3.0 daemons (dhcp4 over HTTP, dhcp6 over UNIX) and of Kea 2.6
/// daemons (both over UNIX): answers in `service` order, each daemon's answer unwrapped from its
/// list, the agent's `config-get` naming the sockets, kea-shell `--service` working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_3_0_and_2_6_daemons_with_gatehouse_as_their_agent() {
    let (Some(r30), Some(r26)) = (kea_root::root("kea-3.0"), kea_root::root("kea-2.6")) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // dhcp4 wants basic credentials on its HTTP socket: the group gives them.
    let k4 = KeaDaemon::start_with_auth(
        &r30,
        Daemon::Dhcp4,
        Some(reserved_port()),
        None,
        Some(("gatehouse", "daemon-secret")),
    );
    let mut k6 = KeaDaemon::start(&r30, Daemon::Dhcp6, None, None);
    let pw = tmp.path().join("k4.pw");
    std::fs::write(&pw, "daemon-secret\n").unwrap();
    let o4 = KeaDaemon::start(&r26, Daemon::Dhcp4, None, None);
    let o6 = KeaDaemon::start(&r26, Daemon::Dhcp6, None, None);
    let edge = Pki::edge(tmp.path(), &["ops"]);
    let port = reserved_port();
    let conf = Conf::new()
        .listener(edge_listener(port, &edge))
        .upstream("k4", {
            let mut g = Group::new(k4.http.unwrap());
            g.basic_auth = Some(UpstreamAuth {
                user: "gatehouse".into(),
                password_file: pw.clone(),
            });
            g
        });
    let _gh = Gatehouse::start(
        tmp.path(),
        &agent_of_both_releases(conf, &k4, &k6, &o4, &o6),
    );
    both_releases_answer_in_service_order(&edge, port).await;
    let (_, v) = via_edge(&edge, "ops", port, "/", r#"{"command":"config-get"}"#).await;
    let sockets = &v[0]["arguments"]["Control-agent"]["control-sockets"];
    assert_eq!(sockets["dhcp4"]["socket-type"], "http", "{v}");
    assert_eq!(sockets["dhcp6"]["socket-type"], "unix", "{v}");

    // Without the group's credentials the daemon itself refuses (Kea's own 401).
    let (status, v) = via_edge(
        &edge,
        "ops",
        port,
        "/no-auth",
        r#"{"command":"version-get"}"#,
    )
    .await;
    assert_eq!(status, "401", "{v}");

    let (_, text, all) =
        common::kea::kea_shell(&edge, port, &["--service", "dhcp4", "version-get"]).await;
    let answer: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
    assert!(
        answer[0]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3.0"),
        "kea-shell: {all}"
    );

    // The 3.0 dhcp6 stopped mid-test: its slot says so, dhcp4 still answers.
    k6.stop();
    let (status, v) = via_edge(
        &edge,
        "ops",
        port,
        "/",
        r#"{"command":"version-get","service":["dhcp6","dhcp4"]}"#,
    )
    .await;
    assert_eq!(status, "200", "{v}");
    assert!(
        v[0]["text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("unable to forward command to the dhcp6 service: upstream error:"),
        "{v}"
    );
    assert!(
        v[1]["text"].as_str().unwrap_or_default().starts_with("3.0"),
        "{v}"
    );
}

/// `conf` (with group `k4`: the 3.0 dhcp4 with credentials) completed: route `kea3` for the
/// 3.0 daemons, `/no-auth` to `k4` without credentials, `/old` for the 2.6 daemons `o4`, `o6`.
fn agent_of_both_releases(
    conf: Conf,
    k4: &KeaDaemon,
    k6: &KeaDaemon,
    o4: &KeaDaemon,
    o6: &KeaDaemon,
) -> Conf {
    let unix = |k: &KeaDaemon| format!("unix:{}", k.unix.display());
    conf.upstream("k4-no-auth", Group::new(k4.http.unwrap()))
        .upstream("k6", Group::new(unix(k6)))
        .upstream("o4", Group::new(unix(o4)))
        .upstream("o6", Group::new(unix(o6)))
        .route(Route::agent(
            "kea3",
            KeaRoute::allow_all()
                .service("dhcp4", "k4")
                .service("dhcp6", "k6"),
        ))
        .route(
            Route::new("no-auth", "k4-no-auth")
                .path("/no-auth")
                .kea(KeaRoute::allow_all().daemon("dhcp4")),
        )
        .route(
            Route::agent(
                "kea26",
                KeaRoute::allow_all()
                    .service("dhcp4", "o4")
                    .service("dhcp6", "o6"),
            )
            .path("/old"),
        )
}

/// Each release's daemons answer in `service` order, unwrapped from their lists, each its
/// own version.
async fn both_releases_answer_in_service_order(edge: &Pki, port: u16) {
    for (path, release) in [("/", "3.0"), ("/old", "2.6")] {
        let (status, v) = via_edge(
            edge,
            "ops",
            port,
            path,
            r#"{"command":"config-get","service":["dhcp6","dhcp4"]}"#,
        )
        .await;
        assert_eq!(status, "200", "{release}: {v}");
        let list = v.as_array().unwrap_or_else(|| panic!("{release}: {v}"));
        assert_eq!(list.len(), 2, "one element per daemon ({release}): {v}");
        assert!(list[0]["arguments"]["Dhcp6"].is_object(), "{release}: {v}");
        assert!(list[1]["arguments"]["Dhcp4"].is_object(), "{release}: {v}");
        let (_, v) = via_edge(
            edge,
            "ops",
            port,
            path,
            r#"{"command":"version-get","service":["dhcp4"]}"#,
        )
        .await;
        assert!(
            v[0]["text"]
                .as_str()
                .unwrap_or_default()
                .starts_with(release),
            "{v}"
        );
    }
}
