//! `/healthz` and `/readyz` beside `/metrics`, as Kubernetes probes and L4 balancers see them:
//! an upstream's only peer down and back, a listener whose address is taken, the process
//! draining after SIGTERM, and a graceful upgrade (`--upgrade` + SIGQUIT). And the upstream
//! health checks behind them: an `http` check's path, Host and verdict, and its interval.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `GET path` on the metrics address (plain HTTP, as probes speak it).
async fn probe(mport: u16, path: &str) -> Response {
    request(addr(mport), None, "GET", path, &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path} on the metrics address: {e}"))
}

/// Polls `path` until `want` holds (up to 15 s); returns that answer.
async fn probe_until(
    mport: u16,
    path: &str,
    what: &str,
    want: impl Fn(&Response) -> bool,
) -> Response {
    let last = std::cell::RefCell::new(String::new());
    let answer = || async {
        let r = probe(mport, path).await;
        *last.borrow_mut() = format!("{}: {}", r.status, r.text());
        want(&r).then_some(r)
    };
    eventually_some(
        &format!("{path} to have {what}"),
        Duration::from_secs(15),
        POLL,
        answer,
        || format!("last answer {}", last.borrow()),
    )
    .await
}

/// The TLS listener of these tests: `edge` on `port`, client certificates optional.
fn edge(pki: &Pki, port: u16) -> Listener {
    Listener::new("edge", port).tls(ListenerTls::from_pki(pki, "server", ClientAuth::Optional))
}

/// curl with its defaults (HTTP/2 over TLS) as `client`: (status, HTTP version).
async fn curl(pki: &Pki, port: u16, path: &str) -> (String, String) {
    let c = common::curl(
        pki,
        "client",
        &format!("https://localhost:{port}{path}"),
        &[],
    )
    .await;
    (c.status, c.version)
}

/// An upstream group whose only peer is down is named by `/readyz` (503) while its health
/// check fails, and `/readyz` turns 200 once the peer is up; a group without a health check
/// never makes the instance unready. Built through the library (in process): an embedder's
/// instance serves the same endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_only_peer_of_a_checked_group() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &["client"]);
    let (port, mport, peer) = (reserved_port(), reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(edge(&pki, port))
        .upstream(
            "kea",
            Group::new(local(peer)).health_check(HealthCheck::tcp("200ms")),
        )
        // Never probed, and its peer is dead: Gatehouse cannot know, so it does not count.
        .upstream("spare", Group::new(local(reserved_port())))
        .route(Route::new("kea", "kea"))
        .route(Route::new("spare", "spare").path("/spare"))
        .metrics(mport);
    let gh = Gatehouse::in_process(tmp.path(), &conf);

    let live = probe(mport, "/healthz").await;
    assert_eq!((live.status, live.text().as_str()), (200, "ok\n"));
    let r = probe_until(mport, "/readyz", "named the down peer", |r| {
        r.text().contains("no healthy peer")
    })
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(
        r.text(),
        format!("not ready\nupstream kea: no healthy peer (127.0.0.1:{peer} down)\n"),
        "only the checked group whose peer is down is named"
    );
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // What a client sees meanwhile agrees: no healthy peer, 503.
    assert_eq!(curl(&pki, port, "/").await, ("503".into(), "2".into()));

    let _kea = Upstream::h1_on(addr(peer), None, Behavior::Echo).await;
    let r = probe_until(mport, "/readyz", "turned ready", |r| r.status == 200).await;
    assert_eq!(r.text(), "ready\n");
    assert_eq!(curl(&pki, port, "/").await, ("200".into(), "2".into()));

    // The metrics stay where scrapers look; other paths are not found.
    for path in ["/metrics", "/"] {
        let m = probe(mport, path).await;
        assert_eq!(m.status, 200, "{path}");
        assert!(
            m.text().contains("gatehouse_build_info"),
            "{path}: {}",
            m.text()
        );
    }
    assert_eq!(probe(mport, "/metricsz").await.status, 404);
    assert!(gh
        .metrics_text()
        .await
        .contains("gatehouse_http_requests_total{route=\"kea\",status=\"2xx\"} 1"));
}

/// The requests `origin` answered at exactly `path` (path and query).
fn asked(origin: &Upstream, path: &str) -> Vec<Seen> {
    origin
        .seen()
        .into_iter()
        .filter(|s| s.path == path)
        .collect()
}

/// Waits (up to 15 s) until `origin` has answered `n` requests at `path`.
async fn asked_until(origin: &Upstream, path: &str, n: usize) {
    until_explained(
        &format!("{n} checks at {path}"),
        Duration::from_secs(15),
        || asked(origin, path).len() >= n,
        || format!("{} answered {}", origin.addr, asked(origin, path).len()),
    )
    .await
}

/// Waits until `origin`'s answer at `path` (changed just before) is the one the load balancer
/// acts on: checks run one pass after another and each result is applied before the next
/// pass, so the second check from now answered the new status, and a third means it counted.
async fn three_more_checks(origin: &Upstream, path: &str) {
    let n = asked(origin, path).len();
    asked_until(origin, path, n + 3).await;
}

/// Which of `peers` served `GET path` through Gatehouse (each path asked once).
async fn served_by(port: u16, pki: &Pki, path: &str, peers: [&Upstream; 2]) -> SocketAddr {
    let o = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: None,
        sni: Some("localhost".into()),
        tls12: false,
    };
    let r = request(addr(port), Some(&o), "GET", path, &[], b"")
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    let by: Vec<_> = peers
        .iter()
        .filter(|p| !asked(p, path).is_empty())
        .collect();
    assert_eq!(by.len(), 1, "GET {path} reached {} peers", by.len());
    by[0].addr
}

/// `health_check.kind: http` asks every peer `GET <path>` (query included) with
/// `Host: <host>`, and the answer decides: a peer answering 503 there, though it accepts
/// connections (a `tcp` check would pass it), gets no request; when both fail `/readyz` names
/// them and clients get 503; a peer answering 200 again is back in the rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_check_asks_its_path_and_host_and_follows_the_answer() {
    const HEALTH: &str = "/health/kea?full=1";
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &["client"]);
    let a = Upstream::h1(None, Behavior::Echo).await;
    let b = Upstream::h1(None, Behavior::Echo).await;
    a.answer(HEALTH, 503);
    let (port, mport) = (reserved_port(), reserved_port());
    let check = HealthCheck::http("200ms", HEALTH, "kea.health");
    let conf = Conf::new()
        .listener(edge(&pki, port))
        .upstream("kea", Group::peers([a.addr, b.addr]).health_check(check))
        .route(Route::new("kea", "kea"))
        .metrics(mport);
    let gh = Gatehouse::start(tmp.path(), &conf);

    // a failed its first check (it answered 503 from the start): only b is served.
    asked_until(&a, HEALTH, 2).await;
    asked_until(&b, HEALTH, 2).await;
    let r = probe(mport, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    for i in 0..6 {
        let by = served_by(port, &pki, &format!("/app/b{i}"), [&a, &b]).await;
        assert_eq!(by, b.addr, "request {i} went to the peer whose check fails");
    }

    // Both fail: no healthy peer.
    b.answer(HEALTH, 500);
    three_more_checks(&b, HEALTH).await;
    let r = probe(mport, "/readyz").await;
    assert_eq!(
        (r.status, r.text()),
        (
            503,
            format!(
                "not ready\nupstream kea: no healthy peer ({} down, {} down)\n",
                a.addr, b.addr
            )
        )
    );
    assert_eq!(curl(&pki, port, "/app/none").await.0, "503");

    // a answers 200 again: back in, and the only one served.
    a.answer(HEALTH, 200);
    three_more_checks(&a, HEALTH).await;
    let r = probe(mport, "/readyz").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    for i in 0..6 {
        let by = served_by(port, &pki, &format!("/app/a{i}"), [&a, &b]).await;
        assert_eq!(by, a.addr, "request {i} went to the peer whose check fails");
    }

    // Every check was `GET <path>` with the configured Host; nothing else but the clients'
    // requests reached the peers (no check of `/`).
    for origin in [&a, &b] {
        for s in origin.seen() {
            if s.path == HEALTH {
                assert_eq!(
                    (s.method.as_str(), s.header("host")),
                    ("GET", Some("kea.health")),
                    "{s:?}"
                );
            } else {
                assert!(s.path.starts_with("/app/"), "not a client request: {s:?}");
            }
        }
    }
    drop(gh);
}

/// `health_check.interval` paces the checks: at `200ms` a peer is checked about five times a
/// second (the 5 s default would not check it again within the 2 s watched), and a peer that
/// stops listening is named down by `/readyz` within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_check_interval_paces_the_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &["client"]);
    let (port, mport, peer) = (reserved_port(), reserved_port(), reserved_port());
    let origin = Upstream::h1_on(addr(peer), None, Behavior::Echo).await;
    let conf = Conf::new()
        .listener(edge(&pki, port))
        .upstream(
            "kea",
            Group::new(local(peer)).health_check(HealthCheck::tcp("200ms")),
        )
        .route(Route::new("kea", "kea"))
        .metrics(mport);
    let gh = Gatehouse::start(tmp.path(), &conf);
    probe_until(mport, "/readyz", "turned ready", |r| r.status == 200).await;

    // Every TCP check is one accepted connection (no client sends anything meanwhile).
    let connections = || *origin.connections.lock().unwrap();
    let (before, since) = (connections(), Instant::now());
    // A 2 s window: the check rate is what is measured.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (checks, watched) = (connections() - before, since.elapsed());
    // A pass starts `interval` after the previous one started (never in bursts): at most one
    // per 200 ms, plus the one under way and one whose accept the test saw late; and however
    // loaded the machine, well over three.
    let most = (watched.as_millis() / 200) as usize + 2;
    assert!(
        (4..=most).contains(&checks),
        "{checks} checks in {watched:?} at a 200ms interval"
    );

    drop(origin);
    let down = Instant::now();
    probe_until(mport, "/readyz", "named the down peer", |r| {
        r.text().contains("no healthy peer")
    })
    .await;
    assert!(
        down.elapsed() < Duration::from_secs(3),
        "the dead peer was noticed after {:?}",
        down.elapsed()
    );
    drop(gh);
}

/// A listener whose address another socket holds is named by `/readyz` while Pingora retries
/// the bind (every second), and `/readyz` turns 200 once it bound — learnt from Pingora's own
/// table of listening sockets, without connecting to the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_listener_whose_address_is_taken() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &["client"]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let squatter = tokio::net::TcpSocket::new_v4().unwrap();
    squatter.set_reuseaddr(true).unwrap();
    squatter.bind(addr(port)).unwrap();
    let squatter = squatter.listen(16).unwrap();
    let conf = Conf::new()
        .listener(edge(&pki, port))
        .upstream("web", Group::new(web.addr))
        .route(Route::new("web", "web"))
        .metrics(mport);
    let gh = Gatehouse::in_process(tmp.path(), &conf);

    let r = probe(mport, "/readyz").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.text(),
        format!("not ready\nlistener edge: 127.0.0.1:{port} not bound\n")
    );
    assert_eq!(probe(mport, "/healthz").await.status, 200);

    drop(squatter);
    let r = probe_until(mport, "/readyz", "turned ready", |r| r.status == 200).await;
    assert_eq!(r.text(), "ready\n");
    assert_eq!(curl(&pki, port, "/").await, ("200".into(), "2".into()));
    assert_eq!(web.seen().len(), 1, "the request went through Gatehouse");
    drop(gh);
}

/// After SIGTERM the process drains: `/readyz` answers 503 `shutting down` (what an L4
/// balancer needs to stop sending), `/healthz` and `/metrics` still answer, the edge listener
/// refuses new connections, and the endpoint answers until the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readyz_503_while_the_process_drains() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &["client"]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .server(conf::Server::for_test(tmp.path()).grace_period("5s"))
        .listener(edge(&pki, port))
        .upstream(
            "web",
            Group::new(web.addr).health_check(HealthCheck::tcp("200ms")),
        )
        .route(Route::new("web", "web"))
        .metrics(mport);
    let mut gh = Gatehouse::start(tmp.path(), &conf);
    let r = probe_until(mport, "/readyz", "turned ready", |r| r.status == 200).await;
    assert_eq!(r.text(), "ready\n");
    assert_eq!(curl(&pki, port, "/").await.0, "200");

    gh.signal("TERM");
    let r = probe_until(mport, "/readyz", "said shutting down", |r| r.status == 503).await;
    assert_eq!(r.text(), "not ready\nshutting down\n");
    assert_eq!(probe(mport, "/healthz").await.status, 200);
    let m = probe(mport, "/metrics").await;
    assert!(
        m.text().contains("gatehouse_http_requests_total"),
        "{}",
        m.text()
    );
    gh.wait_log("/readyz answers 503");
    // Pingora stops accepting on the listeners at once (the grace period is for work in
    // flight), so the balancer's next connection is refused rather than served.
    let refused = || async {
        tokio::net::TcpStream::connect(addr(port))
            .await
            .is_err()
            .then_some(())
    };
    eventually_some(
        "the edge to refuse connections after SIGTERM",
        Duration::from_secs(5),
        POLL,
        refused,
        || gh.log_text(),
    )
    .await;
    let r = probe(mport, "/readyz").await;
    assert_eq!(r.status, 503, "still draining: {}", r.text());
    assert!(
        gh.exited_within(Duration::from_secs(20)),
        "the process did not exit after its grace period:\n{}",
        gh.log_text()
    );
    assert!(
        tokio::net::TcpStream::connect(addr(mport)).await.is_err(),
        "the metrics address answers after the process exited"
    );
}

/// One probe's answer (status, body) or why there was none.
type Probe = Result<(u16, String), String>;

/// Through a graceful upgrade the probe address keeps answering and never says the instance
/// is going away: the old process stays ready until it hands its sockets over (SIGQUIT), then
/// stops answering, and the new one, which inherited the listeners, answers from then on. The
/// only 503 allowed is the new process's first health-check pass (`health check pending`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_keeps_readyz_answering_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = Pki::edge(dir, &["client"]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(edge(&pki, port))
        .upstream(
            "web",
            Group::new(web.addr).health_check(HealthCheck::tcp("200ms")),
        )
        .route(Route::new("web", "web"))
        .metrics(mport);
    let mut old = Gatehouse::start(dir, &conf);
    probe_until(mport, "/readyz", "turned ready", |r| r.status == 200).await;

    // Probe all along, as a balancer would.
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let poller = {
        let (stop, answers) = (stop.clone(), answers.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let a = request(addr(mport), None, "GET", "/readyz", &[], b"")
                    .await
                    .map(|r| (r.status, r.text()));
                answers.lock().unwrap().push(a);
                // A balancer's probe interval.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let new = old.start_upgrade_listening();
    old.signal("QUIT");
    assert!(
        old.exited_within(Duration::from_secs(30)),
        "the old process did not exit:\n{}",
        old.log_text()
    );
    // Twenty probes after the old process is gone: the new one answers them all.
    let at_exit = answers.lock().unwrap().len();
    until(
        "20 probes after the hand-over",
        Duration::from_secs(10),
        || answers.lock().unwrap().len() >= at_exit + 20,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    poller.await.unwrap();

    let r = probe(mport, "/readyz").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "ready\n"),
        "the new process answers alone now:\n{}",
        new.log_text()
    );
    assert_eq!(curl(&pki, port, "/").await.0, "200");
    let answers = answers.lock().unwrap().clone();
    assert!(answers.len() > 20, "too few probes: {answers:?}");
    let pending = "not ready\nupstream web: health check pending\n";
    let odd: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, t)) if t == "ready\n"))
        .filter(|a| !matches!(a, Ok((503, t)) if t == pending))
        .collect();
    assert!(
        odd.is_empty(),
        "probes during the upgrade that a balancer would act on: {odd:?}"
    );
    drop(new);
}
