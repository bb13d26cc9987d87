//! Certificates that rotate themselves (`tls.watch: true`): files replaced the ways operators'
//! tools replace them — renamed over the old ones under load, written in place, a Kubernetes
//! Secret's `..data` symlink swapped — are picked up by new handshakes with no signal and no
//! failed request; a key that does not match its certificate keeps the old pair (logged,
//! counted once) until the matching key lands; upstream client certificates and CAs rotate
//! for new upstream connections; a block without `watch` waits for SIGHUP; and after a
//! graceful upgrade the new process watches.

mod common;

use common::*;
use gatehouse::pki::{CertSpec, Issued};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The DER of the certificate a fresh handshake is served.
async fn served(port: u16, client: &ClientOpts) -> Vec<u8> {
    let s = tls_connect(addr(port), client).await.expect("handshake");
    s.ssl().peer_certificate().unwrap().to_der().unwrap()
}

fn der(i: &Issued) -> Vec<u8> {
    i.cert.to_der().unwrap()
}

/// Replaces `dir/name` atomically: written beside it, then renamed over it (as certbot's and
/// most ACME hooks' "write, then move" does). The old inode goes away.
fn replace(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Publishes `files` into a Kubernetes Secret volume at `vol` the way kubelet's atomic writer
/// does: a fresh `..<stamp>` folder, a `..data_tmp` link to it renamed over `..data`, the
/// user-visible links `name -> ..data/name` made once, then the previous folder removed.
fn k8s_publish(vol: &Path, stamp: &str, files: &[(&str, Vec<u8>)]) {
    let data = vol.join(format!("..{stamp}"));
    std::fs::create_dir_all(&data).unwrap();
    for (name, bytes) in files {
        std::fs::write(data.join(name), bytes).unwrap();
    }
    let previous = std::fs::read_link(vol.join("..data")).ok();
    let tmp = vol.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{stamp}"), &tmp).unwrap();
    std::fs::rename(&tmp, vol.join("..data")).unwrap();
    for (name, _) in files {
        let link = vol.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
    if let Some(old) = previous {
        std::fs::remove_dir_all(vol.join(old)).unwrap();
    }
}

/// The client every test uses: trusts `pki`'s CA, presents its `client` certificate.
fn client_of(pki: &Pki) -> ClientOpts {
    ClientOpts {
        ca: Some(pki.ca_path()),
        cert: Some(pki.paths("client")),
        sni: Some("localhost".into()),
        tls12: false,
    }
}

/// Waits up to 5 s until `gh`'s metrics have the exact line `line`.
async fn wait_line(gh: &Gatehouse, line: &str) -> String {
    gh.wait_metrics(&format!("`{line}`"), Duration::from_secs(5), |m| {
        m.lines().any(|l| l == line)
    })
    .await
}

const SUCCESS: &str = r#"gatehouse_tls_reloads_total{result="success"}"#;
const FAILURE: &str = r#"gatehouse_tls_reloads_total{result="failure"}"#;

/// Continuous load: `clients` tasks, each a fresh TLS handshake and one request at a time,
/// plus curl with its defaults (HTTP/2 over TLS, a new process and handshake per request).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    curl_ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, client: &ClientOpts, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let curl_ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..clients {
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
        let (ca, (cert, key)) = (client.ca.clone().unwrap(), client.cert.clone().unwrap());
        let (stop2, curl_ok2, failures2) = (stop.clone(), curl_ok.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let out = tokio::process::Command::new("/usr/bin/curl")
                    .args(["-sS", "--max-time", "10", "-o", "/dev/null"])
                    .args(["-w", "%{http_code} %{http_version}", "--cacert"])
                    .arg(&ca)
                    .arg("--cert")
                    .arg(&cert)
                    .arg("--key")
                    .arg(&key)
                    .arg(format!("https://localhost:{port}/curl"))
                    .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
                    .stdin(Stdio::null())
                    .kill_on_drop(true)
                    .output();
                match tokio::time::timeout(Duration::from_secs(15), out).await {
                    Ok(Ok(o)) if o.stdout == b"200 2" => {
                        curl_ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(o)) => failures2.lock().unwrap().push(format!(
                        "curl: {} {}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Ok(Err(e)) => failures2.lock().unwrap().push(format!("curl: {e}")),
                    Err(_) => failures2.lock().unwrap().push("curl timed out".into()),
                }
            }
        }));
        Load {
            stop,
            ok,
            curl_ok,
            failures,
            tasks,
        }
    }

    /// Waits until the suite's client has had `n` more requests answered (a failure fails the
    /// test only at [`Load::finish`]).
    async fn serves(&self, n: usize) {
        let from = self.ok.load(Ordering::Relaxed);
        until_explained(
            &format!("the load to be answered {n} more times"),
            Duration::from_secs(10),
            || self.ok.load(Ordering::Relaxed) >= from + n,
            || format!("failures: {:?}", self.failures.lock().unwrap()),
        )
        .await
    }

    /// Stops the load; returns (requests answered 200 by the suite's client, by curl).
    /// Panics with every failure if there was one.
    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        (
            self.ok.load(Ordering::Relaxed),
            self.curl_ok.load(Ordering::Relaxed),
        )
    }
}

/// What most tests here start from: the edge PKI with a `client`, server certificates
/// `first`, `second` and `third` (`first` written as `live/server.*`), an echoing origin, and
/// the config of one watched listener on `port` in front of it (metrics on).
struct Rotation {
    tmp: tempfile::TempDir,
    pki: Pki,
    live: PathBuf,
    first: Issued,
    second: Issued,
    third: Issued,
    port: u16,
    conf: Conf,
    _origin: Upstream,
}

impl Rotation {
    async fn new() -> Rotation {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pki = Pki::edge(dir, &["client"]);
        let (first, second, third) = (
            pki.server("first", &[]),
            pki.server("second", &[]),
            pki.server("third", &[]),
        );
        let live = dir.join("live");
        std::fs::create_dir(&live).unwrap();
        first.write(&live, "server").unwrap();
        let origin = Upstream::h1(None, Behavior::Echo).await;
        let port = reserved_port();
        let conf = Conf::new()
            .listener(edge_listener(port, &pki, &live))
            .upstream("web", Group::new(origin.addr))
            .route(Route::new("web", "web"))
            .metrics(reserved_port());
        Rotation {
            tmp,
            pki,
            live,
            first,
            second,
            third,
            port,
            conf,
            _origin: origin,
        }
    }
}

/// Two listeners on `live/a.*` and `live/b.*` (certificates `a1`, `b1`; `a2`, `b2` ready to
/// rotate in), named `names`, the first watched and the second as `watch_b` says, in front
/// of an echoing origin; Gatehouse started and watching.
struct TwoBlocks {
    // Dropped in this order: Gatehouse stops before its files go.
    gh: Gatehouse,
    _origin: Upstream,
    pki: Pki,
    live: PathBuf,
    a: (Issued, Issued),
    b: (Issued, Issued),
    ports: (u16, u16),
    watching: String,
    _tmp: tempfile::TempDir,
}

impl TwoBlocks {
    async fn start(names: [&str; 2], watch_b: bool) -> TwoBlocks {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let pki = Pki::edge(dir, &["client"]);
        let live = dir.join("live");
        std::fs::create_dir(&live).unwrap();
        let a = (pki.server("a1", &[]), pki.server("a2", &[]));
        let b = (pki.server("b1", &[]), pki.server("b2", &[]));
        a.0.write(&live, "a").unwrap();
        b.0.write(&live, "b").unwrap();
        let origin = Upstream::h1(None, Behavior::Echo).await;
        let ports = (reserved_port(), reserved_port());
        let listener = |name: &str, port: u16, stem: &str, watch: bool| {
            Listener::new(name, port).tls(
                ListenerTls::new(
                    live.join(format!("{stem}.crt")),
                    live.join(format!("{stem}.key")),
                )
                .client_auth(ClientAuth::Required)
                .client_ca(pki.ca_path())
                .watch(watch),
            )
        };
        let conf = Conf::new()
            .listener(listener(names[0], ports.0, "a", true))
            .listener(listener(names[1], ports.1, "b", watch_b))
            .upstream("web", Group::new(origin.addr))
            .route(Route::new("web", "web"))
            .metrics(reserved_port());
        let gh = Gatehouse::start(dir, &conf);
        let watching = gh.wait_log("watching the files of");
        TwoBlocks {
            _tmp: tmp,
            pki,
            live,
            a,
            b,
            ports,
            gh,
            watching,
            _origin: origin,
        }
    }
}

/// The edge listener of most tests: `live/server.crt` + `.key`, clients of `pki` required.
fn edge_listener(port: u16, pki: &Pki, live: &Path) -> Listener {
    Listener::new("edge", port).tls(
        ListenerTls::new(live.join("server.crt"), live.join("server.key"))
            .client_auth(ClientAuth::Required)
            .client_ca(pki.ca_path())
            .watch(true),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_and_rewritten_files_rotate_under_load_with_no_failed_request() {
    if !require_binary("curl") {
        return;
    }
    let r = Rotation::new().await;
    let (dir, pki, live, port) = (r.tmp.path(), &r.pki, &r.live, r.port);
    let (first, second, third) = (&r.first, &r.second, &r.third);
    let conf = r.conf.clone();
    let gh = Gatehouse::start(dir, &conf);
    // The folder of the pair and the folder of the client CA.
    gh.wait_log("watching the files of listeners[0].tls in 2 folder(s)");
    let client = client_of(pki);
    assert_eq!(served(port, &client).await, der(first));

    let load = Load::start(port, &client, 3);
    load.serves(5).await;

    // Renamed over the old files, the certificate first: for a moment it does not match the
    // key still in place, which must not count as a failed reload.
    replace(live, "server.crt", &second.cert_pem());
    replace(live, "server.key", &second.key_pem());
    let line = gh.wait_log("reload #1");
    assert!(line.contains("listener edge"), "{line}");
    assert_eq!(
        served(port, &client).await,
        der(second),
        "new handshakes get the renamed-in certificate"
    );
    load.serves(5).await;

    // Written in place (truncated and rewritten, same inode).
    std::fs::write(live.join("server.crt"), third.cert_pem()).unwrap();
    std::fs::write(live.join("server.key"), third.key_pem()).unwrap();
    gh.wait_log("reload #2");
    assert_eq!(
        served(port, &client).await,
        der(third),
        "new handshakes get the rewritten certificate"
    );
    load.serves(5).await;

    let (ok, curl_ok) = load.finish().await;
    assert!(ok > 20 && curl_ok > 0, "only {ok} + {curl_ok} requests ran");
    eprintln!("{ok} requests and {curl_ok} curl runs across 2 rotations, 0 failed");
    let m = gh.metrics_text().await;
    assert!(m.contains(&format!("{SUCCESS} 2")), "{m}");
    assert!(m.contains(&format!("{FAILURE} 0")), "no failed reload: {m}");
    assert!(m.contains("gatehouse_tls_watched_folders 2"), "{m}");
    assert!(
        !gh.log_text().contains("reload #3"),
        "one reload per rotation:\n{}",
        gh.log_text()
    );
}

/// A Kubernetes Secret volume (what cert-manager's certificates arrive in): the files are
/// links through `..data`, and an update swaps `..data` to a new folder by rename. Runs in
/// process, as an embedder would: the watcher is part of the built server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_secret_volume_swap_rotates_the_certificate_and_its_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let old = Pki::edge(dir, &["client"]);
    let new = Pki::new(dir, "new");
    new.issue("client", CertSpec::new("client-new"));
    let vol = dir.join("secret");
    std::fs::create_dir(&vol).unwrap();
    let secret = |leaf: &Issued, ca: &Pki| {
        vec![
            ("tls.crt", leaf.cert_pem()),
            ("tls.key", leaf.key_pem()),
            ("ca.crt", ca.ca.issued.cert_pem()),
        ]
    };
    let first = old.server("first", &[]);
    k8s_publish(&vol, "2026_01_01", &secret(&first, &old));
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(
            Listener::new("edge", port).tls(
                ListenerTls::new(vol.join("tls.crt"), vol.join("tls.key"))
                    .client_auth(ClientAuth::Required)
                    .client_ca(vol.join("ca.crt"))
                    .watch(true),
            ),
        )
        .upstream("web", Group::new(origin.addr))
        .route(Route::new("web", "web"));
    let gh = Gatehouse::in_process(dir, &conf);
    // The volume (where `..data` is swapped) and the data folder the links end in.
    wait_line(&gh, "gatehouse_tls_watched_folders 2").await;
    let client_old = client_of(&old);
    assert_eq!(served(port, &client_old).await, der(&first));

    // Same CA, new certificate.
    let second = old.server("second", &[]);
    k8s_publish(&vol, "2026_02_01", &secret(&second, &old));
    wait_line(&gh, &format!("{SUCCESS} 1")).await;
    assert_eq!(served(port, &client_old).await, der(&second));

    // A second swap: the watcher followed `..data` to the new folder. This one changes the
    // CA too, as a Secret holding `ca.crt` does when the issuer rotates.
    let client_new = client_of(&new);
    let third = new.server("third", &[]);
    k8s_publish(&vol, "2026_03_01", &secret(&third, &new));
    let m = wait_line(&gh, &format!("{SUCCESS} 2")).await;
    assert!(m.contains(&format!("{FAILURE} 0")), "{m}");
    assert_eq!(served(port, &client_new).await, der(&third));
    let r = request(addr(port), Some(&client_new), "GET", "/", &[], b"")
        .await
        .expect("a client of the new CA is admitted");
    assert_eq!(r.status, 200, "{}", r.text());
    // A client of the old CA that trusts the new server certificate: its own certificate is
    // no longer accepted.
    let stale = ClientOpts {
        cert: Some(old.paths("client")),
        ..client_new.clone()
    };
    assert!(
        request(addr(port), Some(&stale), "GET", "/", &[], b"")
            .await
            .map(|r| r.status != 200)
            .unwrap_or(true),
        "the old CA's clients are no longer admitted"
    );
    let m = gh.metrics_text().await;
    assert!(m.contains("gatehouse_tls_watched_folders 2"), "{m}");
}

/// A certificate written without its key: the pair does not match, nothing changes, the
/// failure is logged with its key path and counted once; when the key lands, it reloads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_pair_keeps_the_old_certificate_until_the_key_lands() {
    let r = Rotation::new().await;
    let (dir, pki, live, port) = (r.tmp.path(), &r.pki, &r.live, r.port);
    let (first, second) = (&r.first, &r.second);
    let conf = r.conf.clone();
    let gh = Gatehouse::start(dir, &conf);
    gh.wait_log("watching the files of listeners[0].tls");
    let client = client_of(pki);

    std::fs::write(live.join("server.crt"), second.cert_pem()).unwrap();
    let line = gh.wait_log("reload failed");
    assert!(
        line.contains("listeners[0].tls.key") && line.contains("does not belong"),
        "{line}"
    );
    wait_line(&gh, &format!("{FAILURE} 1")).await;
    assert_eq!(
        served(port, &client).await,
        der(first),
        "a failed reload keeps the current pair"
    );

    // Events that change no bytes of the block retry nothing: the same certificate written
    // again, another file in the folder.
    std::fs::write(live.join("server.crt"), second.cert_pem()).unwrap();
    std::fs::write(live.join("notes.txt"), b"renewed").unwrap();
    // Nothing marks an event the watcher took and acted on by doing nothing: it is given a
    // second, over three times the quiet a batch waits for (300 ms), to (not) retry.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = gh.metrics_text().await;
    assert!(
        m.contains(&format!("{FAILURE} 1")) && m.contains(&format!("{SUCCESS} 0")),
        "{m}"
    );

    replace(live, "server.key", &second.key_pem());
    gh.wait_log("reload #1");
    assert_eq!(served(port, &client).await, der(second));
    let m = wait_line(&gh, &format!("{SUCCESS} 1")).await;
    assert!(m.contains(&format!("{FAILURE} 1")), "{m}");
    let expiry = gatehouse::reload::not_after_unix(&second.cert).unwrap();
    assert!(
        m.contains(&format!(
            r#"gatehouse_tls_cert_not_after_timestamp_seconds{{cert="default",owner="listener:edge"}} {expiry}"#
        )),
        "{m}"
    );
}

/// The whole folder replaced by two renames (`live` moved away, `live.new` moved in): the
/// watch on the old folder followed it away, so the new one is watched from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_renamed_into_place_is_watched_again() {
    let r = Rotation::new().await;
    let (dir, pki, live, port) = (r.tmp.path(), &r.pki, &r.live, r.port);
    let (second, third) = (&r.second, &r.third);
    let conf = r.conf.clone();
    let gh = Gatehouse::in_process(dir, &conf);
    wait_line(&gh, "gatehouse_tls_watched_folders 2").await;
    let client = client_of(pki);

    let staged = dir.join("live.new");
    std::fs::create_dir(&staged).unwrap();
    second.write(&staged, "server").unwrap();
    std::fs::rename(live, dir.join("live.old")).unwrap();
    std::fs::rename(&staged, live).unwrap();
    wait_line(&gh, &format!("{SUCCESS} 1")).await;
    assert_eq!(served(port, &client).await, der(second));

    // The watch is on the folder now at `live`, not only on the one moved away.
    replace(live, "server.key", &third.key_pem());
    replace(live, "server.crt", &third.cert_pem());
    let m = wait_line(&gh, &format!("{SUCCESS} 2")).await;
    assert!(m.contains(&format!("{FAILURE} 0")), "{m}");
    assert_eq!(served(port, &client).await, der(third));
}

/// An upstream block with `watch: true`: its client certificate and then its CA rotate, and
/// new upstream connections use them (the origin sees the new client certificate; an origin
/// moved to the new CA is trusted once its CA file changed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_client_certificate_and_ca_rotate_for_new_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let edge = Pki::edge(dir, &["client"]);
    let old = Pki::new(dir, "old");
    let new = Pki::new(dir, "new");
    let origin_old = old.server("origin", &[]);
    let origin_new = new.server("origin", &[]);
    let id1 = old.issue("gh1", CertSpec::new("gatehouse-1"));
    let id2 = old.issue("gh2", CertSpec::new("gatehouse-2"));
    let live = dir.join("live");
    std::fs::create_dir(&live).unwrap();
    std::fs::write(live.join("upstream_ca.crt"), old.ca.issued.cert_pem()).unwrap();
    id1.write(&live, "id").unwrap();
    // The origin requires client certificates of the old CA throughout.
    let origin = Upstream::h1(
        Some(acceptor(&origin_old, Some(old.ca.cert()), false)),
        Behavior::Echo,
    )
    .await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            &edge,
            "server",
            ClientAuth::Required,
        )))
        .upstream(
            "web",
            Group::new(origin.addr).idle_timeout("200ms").tls(
                UpstreamTls::new("localhost")
                    .ca(live.join("upstream_ca.crt"))
                    .client_cert(live.join("id.crt"))
                    .client_key(live.join("id.key"))
                    .watch(true),
            ),
        )
        .route(Route::new("web", "web"));
    let gh = Gatehouse::in_process(dir, &conf);
    wait_line(&gh, "gatehouse_tls_watched_folders 1").await;
    let client = client_of(&edge);
    let last_cn = || origin.seen().last().and_then(|s| s.client_cn.clone());
    let get = || request(addr(port), Some(&client), "GET", "/", &[], b"");

    assert_eq!(get().await.unwrap().status, 200);
    assert_eq!(last_cn().as_deref(), Some("gatehouse-1"));

    // The client certificate: key first this time, then the certificate.
    replace(&live, "id.key", &id2.key_pem());
    replace(&live, "id.crt", &id2.cert_pem());
    wait_line(&gh, &format!("{SUCCESS} 1")).await;
    let r = get().await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        last_cn().as_deref(),
        Some("gatehouse-2"),
        "a new upstream connection presents the new client certificate"
    );

    // The origin moves to a certificate of the new CA: refused until the CA file follows.
    origin.set_tls(acceptor(&origin_new, Some(old.ca.cert()), false));
    // Waits out the pooled connection's idle_timeout (200 ms): a request meanwhile would
    // reuse it, made before the origin moved.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = get().await.unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("invalid_cert"), "{}", r.text());
    replace(&live, "upstream_ca.crt", &new.ca.issued.cert_pem());
    let m = wait_line(&gh, &format!("{SUCCESS} 2")).await;
    assert!(m.contains(&format!("{FAILURE} 0")), "{m}");
    let r = get().await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the new CA verifies the origin: {}",
        r.text()
    );
    assert_eq!(last_cn().as_deref(), Some("gatehouse-2"));
}

/// `watch` is per block: a change reloads the watched block whose files changed and no
/// other; a block with `watch: false` (or none) keeps its material until SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_without_watch_waits_for_sighup() {
    let t = TwoBlocks::start(["watched", "unwatched"], false).await;
    let (live, gh, (pa, pb)) = (&t.live, &t.gh, t.ports);
    let ((_, a2), (b1, b2)) = (&t.a, &t.b);
    let line = &t.watching;
    assert!(
        line.contains("listeners[0].tls") && !line.contains("listeners[1]"),
        "{line}"
    );
    let client = client_of(&t.pki);

    // Both pairs change in the same folder at once.
    for (stem, leaf) in [("a", &a2), ("b", &b2)] {
        replace(live, &format!("{stem}.key"), &leaf.key_pem());
        replace(live, &format!("{stem}.crt"), &leaf.cert_pem());
    }
    let line = gh.wait_log("reload #1");
    assert!(
        line.contains("listener watched") && !line.contains("unwatched"),
        "only the watched block is reloaded: {line}"
    );
    assert_eq!(served(pa, &client).await, der(a2));
    // Nothing marks a reload that did not happen: the unwatched block is given a second, over
    // three times the quiet a batch waits for (300 ms), to (not) change.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        served(pb, &client).await,
        der(b1),
        "watch: false keeps the material until SIGHUP"
    );
    assert!(gh.metrics_text().await.contains(&format!("{SUCCESS} 1")));

    let ok = Command::new("kill")
        .args(["-HUP", &gh.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -HUP");
    gh.wait_log("reload #2");
    assert_eq!(served(pb, &client).await, der(b2));
}

/// Two watched blocks change in one batch and one of them is broken: all or nothing keeps
/// both out; when the broken one is fixed, the good one's new files come in with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_block_refused_with_a_broken_one_comes_in_with_the_fix() {
    let t = TwoBlocks::start(["a", "b"], true).await;
    let (live, gh, (pa, pb)) = (&t.live, &t.gh, t.ports);
    let ((a1, a2), (_, b2)) = (&t.a, &t.b);
    let client = client_of(&t.pki);

    // One batch: a's new pair, and b's new certificate without its key.
    replace(live, "a.key", &a2.key_pem());
    replace(live, "a.crt", &a2.cert_pem());
    replace(live, "b.crt", &b2.cert_pem());
    gh.wait_log("reload failed");
    wait_line(gh, &format!("{FAILURE} 1")).await;
    assert_eq!(served(pa, &client).await, der(a1), "all or nothing");

    // b's key lands: only b's files changed, but a's refused change comes in too.
    replace(live, "b.key", &b2.key_pem());
    gh.wait_log("reload #1");
    assert_eq!(served(pb, &client).await, der(b2));
    assert_eq!(
        served(pa, &client).await,
        der(a2),
        "the good block refused with the broken one is retried with the fix"
    );
}

/// A certificate rotated while a graceful upgrade is under way (the new process has read its
/// files and waits for the old one's sockets) is picked up when the new process runs: the
/// watcher compares the files with what was read at load, not with what it finds when it
/// starts watching.
#[tokio::test]
async fn a_rotation_during_a_graceful_upgrade_is_not_missed() {
    let r = Rotation::new().await;
    let (dir, pki, live, port) = (r.tmp.path(), &r.pki, &r.live, r.port);
    let second = &r.second;
    let mut old = Gatehouse::start(dir, &r.conf);
    old.wait_log("watching the files of listeners[0].tls");

    let new = old.start_upgrade();
    // Pingora's bootstrap comes after the files are read; it waits there for the sockets.
    new.wait_log_within("Bootstrap starting", Duration::from_secs(10));
    replace(live, "server.crt", &second.cert_pem());
    replace(live, "server.key", &second.key_pem());
    // At once: the new process waits ~6 s for the sockets (Pingora's retries), then gives up.
    old.signal("QUIT");
    assert!(
        old.wait_exit(Duration::from_secs(10)).is_some(),
        "the old process did not stop"
    );
    new.wait_log_within("reload #1", Duration::from_secs(10));
    assert_eq!(served(port, &client_of(pki)).await, der(second));
}

/// Graceful upgrade: the new process watches the files, the old one is gone with its watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_graceful_upgrade_the_new_process_watches() {
    let r = Rotation::new().await;
    let (dir, pki, live, port) = (r.tmp.path(), &r.pki, &r.live, r.port);
    let second = &r.second;
    let conf = r.conf.clone();
    let mut old = Gatehouse::start(dir, &conf);
    old.wait_log("watching the files of listeners[0].tls");

    let new = old.start_upgrade_listening();
    Command::new("kill")
        .args(["-QUIT", &old.pid().to_string()])
        .status()
        .unwrap();
    let exited = old.wait_exit(Duration::from_secs(10));
    assert!(exited.is_some(), "the old process did not stop");
    new.wait_log_within(
        "watching the files of listeners[0].tls",
        Duration::from_secs(10),
    );

    replace(live, "server.crt", &second.cert_pem());
    replace(live, "server.key", &second.key_pem());
    new.wait_log_within("reload #1", Duration::from_secs(10));
    assert_eq!(served(port, &client_of(pki)).await, der(second));
    assert!(
        !old.log_text().contains("reload #"),
        "the old process reloaded nothing:\n{}",
        old.log_text()
    );
}
