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
    let c = Rotation::new(dir);
    let origin = Upstream::h1(
        Some(acceptor(&c.origin_old, Some(&c.old.ca.issued.cert), false)),
        Behavior::Echo,
    )
    .await;
    let port = reserved_port();
    let gh = Gatehouse::start(dir, &reloading_conf(&c.live, port, origin.addr));
    let cfg = dir.join("gatehouse.yaml");
    let cfg = cfg.to_str().unwrap();
    let client = |pki: &Pki| ClientOpts {
        ca: Some(dir.join("trust.crt")),
        cert: Some(pki.paths("client")),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let (client_old, client_new) = (client(&c.old), client(&c.new));
    assert_eq!(
        served_cert(port, &client_old).await,
        c.edge_old.cert.to_der().unwrap()
    );
    assert!(
        request(addr(port), Some(&client_new), "GET", "/", &[], b"")
            .await
            .is_err(),
        "a client of the new CA is refused before its CA is loaded"
    );

    let load = Load::start(port, &client_old);
    let mut kept = tls_connect(addr(port), &client_old).await.unwrap();
    assert_eq!(get_on(&mut kept).await, 200);
    load.serves(5).await;

    // Step 1: new listener certificate, both client CAs, both upstream CAs; via the CLI.
    c.edge_new.write(&c.live, "server").unwrap();
    write(&c.live, "client_ca.crt", &[&c.old_ca, &c.new_ca]);
    write(&c.live, "upstream_ca.crt", &[&c.old_ca, &c.new_ca]);
    let (sent, out) = gatehouse_cmd(&["reload", "-c", cfg]);
    assert!(sent, "{out}");
    assert!(out.contains("sent SIGHUP"), "{out}");
    gh.wait_log("reload #1");
    assert_eq!(
        served_cert(port, &client_old).await,
        c.edge_new.cert.to_der().unwrap(),
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

    the_upstream_moves_to_the_new_ca(&gh, &origin, &c, &load).await;
    a_broken_key_changes_nothing(&gh, cfg, &c, port, &client_old).await;
    // The load goes on after the failed reload too.
    load.serves(5).await;
    let ok = load.finish().await;
    eprintln!("{ok} requests across 3 reloads, 0 failed");

    // The upstream CA really changed: an origin back on the old CA's certificate is refused
    // once pooled connections (made under the new one) have idled out.
    origin.set_tls(acceptor(&c.origin_old, Some(&c.old.ca.issued.cert), false));
    // Waits out the pooled connections' idle_timeout (200 ms): asking meanwhile would reuse,
    // and keep alive, a connection made under the new CA.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = request(addr(port), Some(&client_old), "GET", "/", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("invalid_cert"), "{}", r.text());
    reloads_and_expiry_are_counted(&gh.metrics_text().await, &c);

    // `gatehouse reload` with nobody to signal says so.
    std::fs::copy(c.old.dir.join("edge-server.key"), c.live.join("server.key")).unwrap();
    c.edge_old.write(&c.live, "server").unwrap();
    drop(gh);
    let (sent, out) = gatehouse_cmd(&["reload", "-c", cfg]);
    assert!(!sent, "{out}");
    assert!(out.contains("no such process"), "{out}");
}

/// Two CAs, old and new, each with a server certificate for the edge and for the origin and
/// a client; Gatehouse's upstream identity (old CA). The `live` folder Gatehouse reads starts
/// on the old material; clients trust both CAs (`trust.crt`), as during any real rotation.
struct Rotation {
    old: Pki,
    new: Pki,
    live: std::path::PathBuf,
    edge_old: gatehouse::pki::Issued,
    edge_new: gatehouse::pki::Issued,
    origin_old: gatehouse::pki::Issued,
    origin_new: gatehouse::pki::Issued,
    old_ca: Vec<u8>,
    new_ca: Vec<u8>,
}

impl Rotation {
    fn new(dir: &Path) -> Rotation {
        let old = Pki::new(dir, "old");
        let new = Pki::new(dir, "new");
        let live = dir.join("live");
        std::fs::create_dir_all(&live).unwrap();
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
        write(dir, "trust.crt", &[&old_ca, &new_ca]);
        Rotation {
            old,
            new,
            live,
            edge_old,
            edge_new,
            origin_old,
            origin_new,
            old_ca,
            new_ca,
        }
    }
}

/// Listener `edge` on `port` and upstream `web` (`origin`, 200 ms idle connections), every
/// certificate, key and CA read from `live`.
fn reloading_conf(live: &Path, port: u16, origin: SocketAddr) -> Conf {
    Conf::new()
        .listener(
            Listener::new("edge", port).tls(
                ListenerTls::new(live.join("server.crt"), live.join("server.key"))
                    .client_auth(ClientAuth::Required)
                    .client_ca(live.join("client_ca.crt")),
            ),
        )
        .upstream(
            "web",
            Group::new(origin).idle_timeout("200ms").tls(
                UpstreamTls::new("localhost")
                    .ca(live.join("upstream_ca.crt"))
                    .client_cert(live.join("gatehouse.crt"))
                    .client_key(live.join("gatehouse.key")),
            ),
        )
        .route(Route::new("web", "web"))
        .metrics(reserved_port())
}

/// Load: 3 clients, a new TLS connection per request (so handshakes straddle each reload).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, client: &ClientOpts) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let (stop, ok, failures, c) =
                (stop.clone(), ok.clone(), failures.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match request(addr(port), Some(&c), "GET", "/load", &[], b"").await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: {}", r.status, r.text()))
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Waits until `n` more requests have been answered (a request fails the test only at
    /// [`Load::finish`]).
    async fn serves(&self, n: usize) {
        let from = self.ok.load(Ordering::Relaxed);
        until_explained(
            &format!("the load to serve {n} more requests"),
            Duration::from_secs(10),
            || self.ok.load(Ordering::Relaxed) >= from + n,
            || format!("failures: {:?}", self.failures.lock().unwrap()),
        )
        .await
    }

    /// Stops the load; asserts nothing failed and enough ran; the requests served.
    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        assert!(ok > 20, "only {ok} requests ran");
        ok
    }
}

/// Step 2: the origin moves to its new certificate; step 3: the old upstream CA is dropped
/// (SIGHUP), after which requests go over new upstream connections.
async fn the_upstream_moves_to_the_new_ca(
    gh: &Gatehouse,
    origin: &Upstream,
    c: &Rotation,
    load: &Load,
) {
    origin.set_tls(acceptor(&c.origin_new, Some(&c.old.ca.issued.cert), false));
    // Requests served meanwhile, under both CAs.
    load.serves(10).await;
    let before = *origin.connections.lock().unwrap();
    write(&c.live, "upstream_ca.crt", &[&c.new_ca]);
    sighup(gh);
    gh.wait_log("reload #2");
    until(
        "requests over new upstream connections after the reload (verified by the new CA)",
        Duration::from_secs(5),
        || *origin.connections.lock().unwrap() > before,
    )
    .await;
}

/// A broken key file: refused by `gatehouse reload` before signalling, and by the process
/// itself on SIGHUP, which keeps serving the current certificate.
async fn a_broken_key_changes_nothing(
    gh: &Gatehouse,
    cfg: &str,
    c: &Rotation,
    port: u16,
    client: &ClientOpts,
) {
    std::fs::write(
        c.live.join("server.key"),
        b"-----BEGIN PRIVATE KEY-----\ngarbage\n",
    )
    .unwrap();
    let (sent, out) = gatehouse_cmd(&["reload", "-c", cfg]);
    assert!(!sent, "{out}");
    assert!(out.contains("listeners[0].tls.key"), "{out}");
    sighup(gh);
    let line = gh.wait_log("reload failed");
    assert!(
        line.contains("listeners[0].tls.key") && line.contains("server.key"),
        "{line}"
    );
    assert_eq!(
        served_cert(port, client).await,
        c.edge_new.cert.to_der().unwrap(),
        "a failed reload keeps the current certificate"
    );
}

/// Two reloads succeeded and one failed; the listener's certificate expiry and the upstream's
/// client certificate are exported.
fn reloads_and_expiry_are_counted(m: &str, c: &Rotation) {
    assert!(
        m.contains(r#"gatehouse_tls_reloads_total{result="success"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"gatehouse_tls_reloads_total{result="failure"} 1"#),
        "{m}"
    );
    let expiry = gatehouse::reload::not_after_unix(&c.edge_new.cert).unwrap();
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
}
