//! Real Kea 2.2 behind Gatehouse: answers through the proxy are byte-identical to direct ones,
//! over plain HTTP and over mutual TLS to an agent that requires client certificates.

mod common;

use common::kea::{Kea, KeaTls};
use common::*;
use gatehouse::pki::CertSpec;
use std::net::SocketAddr;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_plain_and_mtls_bodies_are_byte_identical() {
    if !require_binary("kea-ctrl-agent") || !require_binary("kea-dhcp4") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::new(tmp.path(), "edge");
    edge.server("server", &[]);
    edge.issue("ops", CertSpec::new("ops"));
    let up = Pki::new(tmp.path(), "up");
    up.server("kea", &["kea.internal"]);
    up.issue("gatehouse", CertSpec::new("gatehouse"));

    let plain = Kea::start(&tmp.path().join("k1"), free_port(), None);
    let (cert, key) = up.paths("kea");
    let secure = Kea::start(
        &tmp.path().join("k2"),
        free_port(),
        Some(KeaTls {
            cert,
            key,
            trust_anchor: up.ca_path(),
        }),
    );

    let port = free_port();
    let yaml = format!(
        r#"listeners:
  - name: edge
    address: "127.0.0.1:{port}"
    tls:
      cert: {e}/server.crt
      key: {e}/server.key
      client_auth: required
      client_ca: {e}/ca.crt
upstreams:
  kea-plain:
    peers: ["{plain}"]
    health_check: {{ kind: tcp, interval: 1s }}
  kea-tls:
    peers: ["{secure}"]
    tls:
      ca: {u}/ca.crt
      client_cert: {u}/gatehouse.crt
      client_key: {u}/gatehouse.key
      sni: kea.internal
routes:
  - {{ name: plain, host: plain.example, upstream: kea-plain }}
  - {{ name: tls, host: "*", upstream: kea-tls }}
"#,
        e = edge.dir.display(),
        u = up.dir.display(),
        plain = plain.addr,
        secure = secure.addr,
    );
    let gh = Gatehouse::start(tmp.path(), &yaml, SocketAddr::from(([127, 0, 0, 1], port)));
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
