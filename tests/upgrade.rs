//! Zero-downtime upgrade under load: a new process started with `--upgrade` takes the
//! listening sockets over from the old one (SIGQUIT); no HTTP request fails, and JSON-RPC links
//! on the old process are closed cleanly (close_notify) so agents reconnect to the new one.

mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::cluster::codec;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_under_load_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rp = RelayPki::new(dir);
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster]))
        .upstream("web", Group::new(web.addr))
        .upstream("master", rp.master(sink.addr))
        .route(Route::new("web", "web"))
        .cluster(rp.cluster("master"));
    let old = Gatehouse::start(dir, &conf);
    let pki = rp.pki;
    let agent = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: Some(pki.paths("agent1")),
        sni: Some("master1".into()),
        tls12: false,
    };

    let link = cluster_link_until_closed(port, &pki);
    old.wait_log("link open: agent1@");
    let mut http = agent.clone();
    http.sni = Some("localhost".into());
    let load = HttpLoad::start(port, &http);
    load.serves(20).await;

    // The upgrade: new process with --upgrade, then SIGQUIT to the old one once the new one
    // listens for its sockets.
    let new = old.start_upgrade_listening();
    Command::new("kill")
        .args(["-QUIT", &old.pid().to_string()])
        .status()
        .unwrap();
    let before_switch = load.ok.load(Ordering::Relaxed);
    the_new_process_takes_over(&new).await;
    load.serves(20).await;
    let (ok, failed) = load.stop().await;
    let state = tokio::task::spawn_blocking(move || link.join().unwrap())
        .await
        .unwrap();
    drop(new);
    assert!(
        ok > before_switch && before_switch > 0,
        "load ran on both sides of the switch ({before_switch} then {ok})"
    );
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the upgrade",
        ok + failed
    );
    assert!(
        state.contains(boring::ssl::ShutdownState::RECEIVED),
        "the old process must close its cluster links with close_notify"
    );
}

/// A cluster link of agent1 (a blocking boring client, whose `get_shutdown` tells whether a
/// close_notify arrived) that sends a heartbeat, reads its echo, then reads until the server
/// closes; the thread returns the link's shutdown state.
fn cluster_link_until_closed(
    port: u16,
    pki: &Pki,
) -> std::thread::JoinHandle<boring::ssl::ShutdownState> {
    let (ca, (crt, key)) = (pki.ca_path(), pki.paths("agent1"));
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut b = boring::ssl::SslConnector::builder(boring::ssl::SslMethod::tls()).unwrap();
        b.set_ca_file(ca).unwrap();
        b.set_certificate_chain_file(crt).unwrap();
        b.set_private_key_file(key, boring::ssl::SslFiletype::PEM)
            .unwrap();
        let tcp = std::net::TcpStream::connect(addr(port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut s = b.build().connect("master1", tcp).unwrap();
        let hb = codec::encode(br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#);
        s.write_all(&hb).unwrap();
        let mut buf = vec![0u8; hb.len()];
        s.read_exact(&mut buf).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        s.get_shutdown()
    })
}

/// HTTP load: 4 clients, a new TLS connection per request, until told to stop.
struct HttpLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl HttpLoad {
    fn start(port: u16, client: &ClientOpts) -> HttpLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let (stop, ok, failed, o) = (stop.clone(), ok.clone(), failed.clone(), client.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match request(addr(port), Some(&o), "GET", "/load", &[], b"").await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }));
        }
        HttpLoad {
            stop,
            ok,
            failed,
            tasks,
        }
    }

    /// Waits until `n` more requests have been answered (failures count for [`HttpLoad::stop`]).
    async fn serves(&self, n: usize) {
        let from = self.ok.load(Ordering::Relaxed);
        until(
            &format!("the load to be answered {n} more times"),
            Duration::from_secs(15),
            || self.ok.load(Ordering::Relaxed) >= from + n,
        )
        .await
    }

    /// Stops the clients: (requests answered 200, requests failed).
    async fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The new process of an upgrade takes over and serves, and says it waited for the sockets
/// at INFO (waiting is part of every upgrade), not as Pingora's ERROR.
async fn the_new_process_takes_over(new: &Gatehouse) {
    until_explained(
        "the new process to serve",
        Duration::from_secs(15),
        || new.log_text().contains("path=/load"),
        || new.log_text(),
    )
    .await;
    let log = new.log_text();
    let waits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("graceful upgrade: waiting"))
        .collect();
    assert!(
        !waits.is_empty() && waits.iter().all(|l| l.contains(" INFO ")),
        "{log}"
    );
    assert!(!log.contains("No incoming socket transfer"), "{log}");
}

/// A second instance started on a running one's addresses without `--upgrade` (the probe's
/// "both accept, /metrics answered by the old one") is refused at start, naming the key, the
/// address and the pid in `server.pid_file`; the running instance keeps serving alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_live_addresses_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = Pki::edge(dir, &[]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            &pki,
            "server",
            ClientAuth::Optional,
        )))
        .upstream("web", Group::new(web.addr))
        .route(Route::new("web", "web"))
        .metrics(reserved_port());
    let first = Gatehouse::start(dir, &conf);
    let file = dir.join("gatehouse.yaml");
    let second = Command::new(gatehouse_bin())
        .args(["run", "-c", file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::task::spawn_blocking(move || second.wait_with_output()),
    )
    .await
    .expect("the second instance exits")
    .unwrap()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second instance ran: {err}");
    assert!(
        err.contains("listeners[0].address")
            && err.contains(&format!(
                "is already served by gatehouse pid {}",
                first.pid()
            )),
        "{err}"
    );
    let o = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: None,
        sni: Some("localhost".into()),
        tls12: false,
    };
    let r = request(addr(port), Some(&o), "GET", "/", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the first instance still serves");
}

/// Runs `gatehouse ARGS`, bounded; (success, stdout + stderr). Output goes through a file, not
/// a pipe: a daemon `upgrade` starts keeps its inherited stdout and stderr open.
async fn gatehouse(args: &[&str]) -> (bool, String) {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = tokio::time::timeout(
        Duration::from_secs(40),
        tokio::process::Command::new(gatehouse_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(out.reopen().unwrap())
            .stderr(out.reopen().unwrap())
            .status(),
    )
    .await
    .unwrap_or_else(|_| panic!("gatehouse {args:?} within 40 s"))
    .expect("run gatehouse");
    (
        status.success(),
        std::fs::read_to_string(out.path()).unwrap_or_default(),
    )
}

/// Stops a daemonized gatehouse however the test ends.
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

fn pid_in(file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// Waits up to 15 s for `f`.
async fn until_15s(what: &str, f: impl FnMut() -> bool) {
    until(what, Duration::from_secs(15), f).await
}

/// Two configurations that share a `pid_file` (the operator's example started next to the
/// `/etc` instance): the second is refused at start, naming the key and the live pid; `reload`
/// with the second refuses to signal the first (it runs another file); the first removes its
/// pid file when it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_pid_file_is_refused_and_reload_checks_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let web = Upstream::h1(None, Behavior::Echo).await;
    let shared = tmp.path().join("shared.pid");
    let conf = |dir: &std::path::Path, port: u16| {
        Conf::new()
            .server(conf::Server::for_test(dir).pid_file(&shared))
            .listener(Listener::new("edge", port))
            .upstream("web", Group::new(web.addr))
            .route(Route::new("web", "web"))
    };
    let mut first = Gatehouse::start(&a, &conf(&a, reserved_port()));
    until_15s("the first instance's pid file", || {
        pid_in(&shared) == Some(first.pid() as i32)
    })
    .await;
    let second = b.join("gatehouse.yaml");
    conf(&b, reserved_port()).write(&second);
    let second = second.to_str().unwrap();

    let (ok, out) = gatehouse(&["run", "-c", second]).await;
    assert!(!ok, "a second instance on a shared pid_file ran: {out}");
    assert!(
        out.contains("server.pid_file")
            && out.contains(&format!("names gatehouse pid {}", first.pid()))
            && out.contains(a.join("gatehouse.yaml").to_str().unwrap()),
        "{out}"
    );
    assert_eq!(
        pid_in(&shared),
        Some(first.pid() as i32),
        "the pid file kept"
    );

    let (ok, out) = gatehouse(&["reload", "-c", second]).await;
    assert!(!ok, "reload signalled an instance of another config: {out}");
    assert!(out.contains("nothing signalled"), "{out}");
    let (ok, out) = gatehouse(&["reload", "-c", a.join("gatehouse.yaml").to_str().unwrap()]).await;
    assert!(ok, "reload of the instance's own config: {out}");

    Command::new("kill")
        .args(["-TERM", &first.pid().to_string()])
        .status()
        .unwrap();
    assert!(
        first.wait_exit(Duration::from_secs(15)).is_some(),
        "stopped"
    );
    assert!(!shared.exists(), "the pid file outlived its process");
}

/// `gatehouse upgrade -c FILE`: checks, starts the new process, hands over; requests keep
/// being answered, the old process exits, the pid file names the new one. A broken file is
/// refused before anything is signalled, and a new process that fails before it takes the
/// sockets leaves the old one serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_command_hands_over() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let sock_dir = dir.join("sock");
    std::fs::create_dir_all(&sock_dir).unwrap();
    let conf = Conf::new()
        .server(conf::Server::for_test(dir).upgrade_sock(sock_dir.join("up.sock")))
        .listener(Listener::new("edge", port))
        .upstream("web", Group::new(web.addr))
        .route(Route::new("web", "web"));
    let mut old = Gatehouse::start(dir, &conf);
    let pid_file = dir.join("gh.pid");
    let file = dir.join("gatehouse.yaml");
    let file = file.to_str().unwrap();
    until_15s("the pid file", || {
        pid_in(&pid_file) == Some(old.pid() as i32)
    })
    .await;

    // A broken configuration: refused, the old one untouched.
    let broken = dir.join("broken.yaml");
    std::fs::write(&broken, "listeners: [ { name: x } ]\n").unwrap();
    let (ok, out) = gatehouse(&["upgrade", "-c", broken.to_str().unwrap()]).await;
    assert!(!ok, "{out}");
    assert!(old.wait_exit(Duration::from_millis(100)).is_none(), "{out}");

    // A new process that fails before it takes the sockets (here: it cannot make the upgrade
    // socket): the old one is never told to stop, and serves on.
    std::fs::remove_dir(&sock_dir).unwrap();
    let (ok, out) = gatehouse(&["upgrade", "-c", file]).await;
    assert!(!ok && out.contains("still serves"), "{out}");
    assert!(
        old.wait_exit(Duration::from_secs(2)).is_none(),
        "the old one was stopped: {out}"
    );
    let r = request(addr(port), None, "GET", "/still", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    std::fs::create_dir_all(&sock_dir).unwrap();

    let (ok, out) = gatehouse(&["upgrade", "-c", file]).await;
    let new = pid_in(&pid_file).unwrap_or(0);
    let _stop = StopOnDrop(new);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "gatehouse pid {new} took over from pid {}",
            old.pid()
        )),
        "{out}"
    );
    assert_ne!(new, old.pid() as i32);
    let r = request(addr(port), None, "GET", "/after", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        old.wait_exit(Duration::from_secs(20)).is_some(),
        "the old process did not exit"
    );
    assert_eq!(
        pid_in(&pid_file),
        Some(new),
        "the old one left the new pid file"
    );
    let r = request(addr(port), None, "GET", "/later", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the new process serves alone");
    Command::new("kill")
        .args(["-TERM", &new.to_string()])
        .status()
        .unwrap();
    until_15s("the new process's pid file removed at exit", || {
        !pid_file.exists()
    })
    .await;
}
