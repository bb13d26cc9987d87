//! `/healthz` and `/readyz` beside `/metrics`, as Kubernetes probes and L4 balancers see them:
//! an upstream's only peer down and back, a listener whose address is taken, the process
//! draining after SIGTERM, and a graceful upgrade (`--upgrade` + SIGQUIT).

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
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = probe(mport, path).await;
        if want(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never {what}; last answer {}: {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr(port)).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the edge still accepts after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let new = old.start_upgrade();
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.signal("QUIT");
    assert!(
        old.exited_within(Duration::from_secs(30)),
        "the old process did not exit:\n{}",
        old.log_text()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
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
