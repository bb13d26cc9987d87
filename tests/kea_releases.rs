//! Smoke tests of the Kea releases the tests run from cached Debian roots
//! (`common::kea_root`): Debian 13's Kea 2.6 (UNIX control sockets only) and trixie-backports'
//! Kea 3.0 (UNIX and HTTP(S) control sockets on the daemons themselves, no Control Agent needed).
//! They skip loudly when a root cannot be made (not root, no mirror) and fail under CI=true.

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
