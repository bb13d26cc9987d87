//! What the log says about a client's certificate, driven by real clients: an Icinga agent
//! enrolling with its self-signed certificate on an `optional` listener is "anonymous
//! (self-signed, enrolling)", not a rejection; a client without a certificate on a `required`
//! listener, one from an unknown CA, one that is not TLS at all, each get one `gatehouse::tls`
//! line naming the listener, the peer and the reason in words; nothing of it is an ERROR.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits (up to 10 s) for a log line containing every needle; the line.
fn line_with(gh: &Gatehouse, needles: &[&str]) -> String {
    let line = || {
        let log = gh.log_text();
        let l = log.lines().find(|l| needles.iter().all(|n| l.contains(n)));
        l.map(str::to_string)
    };
    wait_for(
        &format!("a line with {needles:?}"),
        Duration::from_secs(10),
        line,
        || gh.log_text(),
    )
}

async fn curl(args: &[&str]) -> String {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl within 20 s")
    .expect("run curl");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_outcomes_are_logged_in_words() {
    if !require_binary("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = Pki::edge(dir, &["ops"]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (required, optional) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(Listener::new("strict", required).tls(ListenerTls::from_pki(
            &pki,
            "server",
            ClientAuth::Required,
        )))
        .listener(Listener::new("open", optional).tls(ListenerTls::from_pki(
            &pki,
            "server",
            ClientAuth::Optional,
        )))
        .upstream("web", Group::new(web.addr))
        .route(Route::new("web", "web"));
    let gh = Gatehouse::start(dir, &conf);
    let ca = pki.ca_path();
    let ca = ca.to_str().unwrap();
    let url = |port: u16| format!("https://localhost:{port}/");
    let resolve = |port: u16| format!("localhost:{port}:127.0.0.1");

    // An enrolling agent: a self-signed certificate, as `icinga2 pki new-cert` makes.
    let selfsigned = gatehouse::pki::self_signed(&gatehouse::pki::CertSpec::new("agent2")).unwrap();
    let (crt, key) = selfsigned.write(dir, "agent2").unwrap();
    let (crt, key) = (crt.to_str().unwrap(), key.to_str().unwrap());
    // curl to `port` over TLS trusting the edge CA, with the self-signed certificate or none.
    let tls_curl = |port: u16, with_cert: bool| {
        let mut args = vec![
            "--cacert".to_string(),
            ca.to_string(),
            "--resolve".to_string(),
            resolve(port),
        ];
        if with_cert {
            args.extend(["--cert", crt, "--key", key].map(String::from));
        }
        args.push(url(port));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&args).await
        }
    };
    let err = tls_curl(optional, true).await;
    assert!(err.is_empty(), "{err}");
    let l = line_with(&gh, &["listener open", "agent2"]);
    assert!(
        l.contains("anonymous (self-signed, enrolling)") && l.contains(" INFO "),
        "{l}"
    );

    // No certificate where one is required.
    let err = tls_curl(required, false).await;
    assert!(!err.is_empty(), "served without a certificate");
    let l = line_with(&gh, &["listener strict", "no client certificate"]);
    assert!(
        l.contains("gatehouse::tls") && l.contains("127.0.0.1:"),
        "{l}"
    );

    // A certificate from another CA where one is required.
    let err = tls_curl(required, true).await;
    assert!(!err.is_empty(), "served with a stranger's certificate");
    let l = line_with(&gh, &["listener strict", "not accepted"]);
    assert!(l.contains("CN=agent2") && l.contains("unknown_ca"), "{l}");

    // Plain HTTP on the TLS port.
    let err = curl(&[&format!("http://127.0.0.1:{required}/")]).await;
    assert!(!err.is_empty());
    line_with(&gh, &["listener strict", "not TLS"]);

    let log = gh.log_text();
    assert!(
        !log.lines().any(|l| l.contains(" ERROR ")),
        "an ERROR for a client's doing:\n{log}"
    );
    let _ = addr(required);
}
