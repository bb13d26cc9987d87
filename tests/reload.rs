//! Certificate reload (SIGHUP / `gatehouse reload`) under load: a listener certificate, its
//! client CA and an upstream CA are rotated mid-run with zero failed requests; new handshakes
//! use the new material, an established connection keeps working, a broken file changes
//! nothing, and the reload outcome and certificate expiry show up in the metrics.

mod common;

use common::*;
use gatehouse::pki::CertSpec;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn pem(c: &boring::x509::X509) -> Vec<u8> {
    c.to_pem().unwrap()
}

/// The DER of the certificate a fresh handshake is served.
async fn served_cert(port: u16, client: &ClientOpts) -> Vec<u8> {
    let s = tls_connect(addr(port), client).await.expect("handshake");
    s.ssl().peer_certificate().unwrap().to_der().unwrap()
}

/// One keep-alive request on an open connection; returns the status.
async fn get_on<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S) -> u16 {
    s.write_all(b"GET /kept HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        if let Ok(r) = parse_response(&buf) {
            let len: usize = r
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if r.body.len() >= len {
                return r.status;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_buf(&mut buf))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&buf)
        );
    }
}

fn sighup(gh: &Gatehouse) {
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &gh.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
}

fn write(dir: &Path, name: &str, parts: &[&[u8]]) {
    std::fs::write(dir.join(name), parts.concat()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_certificates_and_cas_under_load_fails_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old = Pki::new(dir, "old");
    let new = Pki::new(dir, "new");
    let live = dir.join("live");
    std::fs::create_dir_all(&live).unwrap();

    // Server certificates (Gatehouse's and the origin's), clients, Gatehouse's upstream identity.
    let edge_old = old.server("edge-server", &[]);
    let edge_new = new.server("edge-server", &[]);
    let origin_old = old.server("origin", &[]);
    let origin_new = new.server("origin", &[]);
    old.issue("client", CertSpec::new("client-old"));
    new.issue("client", CertSpec::new("client-new"));
    let upstream_id = old.issue("gatehouse", CertSpec::new("gatehouse"));
    let (old_ca, new_ca) = (pem(&old.ca.issued.cert), pem(&new.ca.issued.cert));

    edge_old.write(&live, "server").unwrap();
    write(&live, "client_ca.crt", &[&old_ca]);
    write(&live, "upstream_ca.crt", &[&old_ca]);
    upstream_id.write(&live, "gatehouse").unwrap();
    // Clients trust both CAs, as during any real rotation.
    write(dir, "trust.crt", &[&old_ca, &new_ca]);

    let origin = Upstream::h1(
        Some(acceptor(&origin_old, Some(&old.ca.issued.cert), false)),
        Behavior::Echo,
    )
    .await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(
            Listener::new("edge", port).tls(
                ListenerTls::new(live.join("server.crt"), live.join("server.key"))
                    .client_auth(ClientAuth::Required)
                    .client_ca(live.join("client_ca.crt")),
            ),
        )
        .upstream(
            "web",
            Group::new(origin.addr).idle_timeout("200ms").tls(
                UpstreamTls::new("localhost")
                    .ca(live.join("upstream_ca.crt"))
                    .client_cert(live.join("gatehouse.crt"))
                    .client_key(live.join("gatehouse.key")),
            ),
        )
        .route(Route::new("web", "web"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(dir, &conf);
    let cfg = dir.join("gatehouse.yaml");
    let cfg = cfg.to_str().unwrap();
    let client = |pki: &Pki| ClientOpts {
        ca: Some(dir.join("trust.crt")),
        cert: Some(pki.paths("client")),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let (client_old, client_new) = (client(&old), client(&new));
    assert_eq!(
        served_cert(port, &client_old).await,
        edge_old.cert.to_der().unwrap()
    );
    assert!(
        request(addr(port), Some(&client_new), "GET", "/", &[], b"")
            .await
            .is_err(),
        "a client of the new CA is refused before its CA is loaded"
    );

    // Load: 3 clients, a new TLS connection per request (so handshakes straddle each reload).
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failures, c) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            client_old.clone(),
        );
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match request(addr(port), Some(&c), "GET", "/load", &[], b"").await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{}: {}", r.status, r.text())),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        }));
    }
    let mut kept = tls_connect(addr(port), &client_old).await.unwrap();
    assert_eq!(get_on(&mut kept).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Step 1: new listener certificate, both client CAs, both upstream CAs; via the CLI.
    edge_new.write(&live, "server").unwrap();
    write(&live, "client_ca.crt", &[&old_ca, &new_ca]);
    write(&live, "upstream_ca.crt", &[&old_ca, &new_ca]);
    let (sent, out) = gatehouse_cmd(&["reload", "-c", cfg]);
    assert!(sent, "{out}");
    assert!(out.contains("sent SIGHUP"), "{out}");
    gh.wait_log("reload #1");
    assert_eq!(
        served_cert(port, &client_old).await,
        edge_new.cert.to_der().unwrap(),
        "new handshakes get the new certificate"
    );
    let r = request(addr(port), Some(&client_new), "GET", "/", &[], b"")
        .await
        .expect("a client of the new CA is admitted after the reload");
    assert_eq!(r.status, 200);
    assert_eq!(
        get_on(&mut kept).await,
        200,
        "an established connection goes on"
    );

    // Step 2: the origin moves to its new certificate; step 3: the old upstream CA is dropped.
    origin.set_tls(acceptor(&origin_new, Some(&old.ca.issued.cert), false));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = *origin.connections.lock().unwrap();
    write(&live, "upstream_ca.crt", &[&new_ca]);
    sighup(&gh);
    gh.wait_log("reload #2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        *origin.connections.lock().unwrap() > before,
        "after the reload, requests go over new upstream connections (verified by the new CA)"
    );

    // A broken file: refused by `gatehouse reload` before signalling, and by the process itself.
    std::fs::write(
        live.join("server.key"),
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n",
    )
    .unwrap();
    let (sent, out) = gatehouse_cmd(&["reload", "-c", cfg]);
    assert!(!sent, "{out}");
    assert!(out.contains("listeners[0].tls.key"), "{out}");
    sighup(&gh);
    let line = gh.wait_log("reload failed");
    assert!(
        line.contains("listeners[0].tls.key") && line.contains("server.key"),
        "{line}"
    );
    assert_eq!(
        served_cert(port, &client_old).await,
        edge_new.cert.to_der().unwrap(),
        "a failed reload keeps the current certificate"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(ok > 20, "only {ok} requests ran");
    eprintln!("{ok} requests across 3 reloads, 0 failed");

    // The upstream CA really changed: an origin back on the old CA's certificate is refused
    // once pooled connections (made under the new one) have idled out.
    origin.set_tls(acceptor(&origin_old, Some(&old.ca.issued.cert), false));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = request(addr(port), Some(&client_old), "GET", "/", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("invalid_cert"), "{}", r.text());

    let m = gh.metrics_text().await;
    assert!(
        m.contains(r#"gatehouse_tls_reloads_total{result="success"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gatehouse_tls_reloads_total{result="failure"} 1"#),
        "{m}"
    );
    let expiry = gatehouse::reload::not_after_unix(&edge_new.cert).unwrap();
    assert!(
        m.contains(&format!(
            r#"gatehouse_tls_cert_not_after_timestamp_seconds{{cert="default",owner="listener:edge"}} {expiry}"#
        )),
        "{m}"
    );
    assert!(
        m.contains(
            r#"gatehouse_tls_cert_not_after_timestamp_seconds{cert="client",owner="upstream:web"}"#
        ),
        "{m}"
    );

    // `gatehouse reload` with nobody to signal says so.
    std::fs::copy(old.dir.join("edge-server.key"), live.join("server.key")).unwrap();
    edge_old.write(&live, "server").unwrap();
    drop(gh);
    let (sent, out) = gatehouse_cmd(&["reload", "-c", cfg]);
    assert!(!sent, "{out}");
    assert!(out.contains("no such process"), "{out}");
}
