//! The crate as another team embeds it: two Gatehouse instances built in one process, each
//! counting in a registry of its own.

mod common;

use common::{request, reserved_port, Behavior, Conf, Group, KeaRoute, Listener, Route, Upstream};
use gatehouse::config::Config;
use gatehouse::metrics::Metrics;
use gatehouse::{Gatehouse, RunOptions};
use prometheus::Registry;
use std::sync::Arc;

#[test]
fn two_instances_in_one_process_build_and_count_apart() {
    let dir = tempfile::tempdir().unwrap();
    let conf = |port: u16| {
        let server = common::conf::Server::default()
            .pid_file(dir.path().join(format!("{port}.pid")))
            .upgrade_sock(dir.path().join(format!("{port}.sock")));
        Conf::new()
            .server(server)
            .listener(Listener::new("edge", port))
            .upstream("web", Group::new("127.0.0.1:9"))
            .route(Route::new("web", "web"))
    };
    let mut registries = Vec::new();
    for port in [1, 2] {
        let config = Config::parse(&conf(port).to_yaml(), dir.path()).unwrap();
        let registry = Registry::new();
        let metrics = Arc::new(Metrics::register(&registry).unwrap());
        let gh = Gatehouse::from_config_in(config, metrics.clone()).unwrap();
        // Built, not run: Pingora binds when the server runs.
        let _server = gh.build(&RunOptions::default()).unwrap();
        metrics
            .connections
            .with_label_values(&["edge", "http"])
            .inc_by(port.into());
        registries.push(registry);
    }
    let count = |r: &Registry| -> f64 {
        r.gather()
            .iter()
            .filter(|f| f.name() == "gatehouse_connections_total")
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().value())
            .sum()
    };
    assert_eq!(
        (count(&registries[0]), count(&registries[1])),
        (1.0, 2.0),
        "each instance counts in its own registry"
    );
    // The route families are resolved per instance at build time too.
    assert!(registries[0]
        .gather()
        .iter()
        .any(|f| f.name() == "gatehouse_http_requests_total"));
}

/// The test harness's in-process mode as a guarantee of the library: two instances run at once
/// in one process, serve, count in their own registries, record their own audit events, and
/// stopping one leaves the other serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_in_one_process_and_stop_apart() {
    let tmp = tempfile::tempdir().unwrap();
    let web = Upstream::h1(None, Behavior::Echo).await;
    let start = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = reserved_port();
        let conf = Conf::new()
            .listener(Listener::new("edge", port))
            .upstream("web", Group::new(web.addr))
            .route(Route::new("kea", "web").kea(KeaRoute::allow_all()));
        (common::Gatehouse::in_process(&dir, &conf), port)
    };
    let ((a, a_port), (b, b_port)) = (start("a"), start("b"));
    let post = |port: u16| async move {
        request(
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            None,
            "POST",
            "/",
            &[("Content-Type", "application/json")],
            br#"{"command":"version-get"}"#,
        )
        .await
        .map(|r| r.status)
    };
    assert_eq!(post(a_port).await, Ok(200));
    for _ in 0..2 {
        assert_eq!(post(b_port).await, Ok(200));
    }
    let requests = |m: &str| {
        m.lines()
            .find(|l| l.starts_with(r#"gatehouse_http_requests_total{route="kea",status="2xx"}"#))
            .map(|l| l.rsplit(' ').next().unwrap().to_string())
    };
    assert_eq!(requests(&a.metrics_text().await).as_deref(), Some("1"));
    assert_eq!(requests(&b.metrics_text().await).as_deref(), Some("2"));
    assert_eq!((a.audit().len(), b.audit().len()), (1, 2));
    drop(a);
    assert!(post(a_port).await.is_err(), "a stopped");
    assert_eq!(post(b_port).await, Ok(200), "b still serves");
    assert_eq!(b.audit().len(), 3);
}

/// An added `IdentityMapper` replaces `cluster.upstream_identity`: here every authenticated
/// link goes upstream as `mapped-agent` (a certificate the mapper holds), `root` is refused
/// before the master is dialled. Run with `gatehouse::testing`, raw netstrings over real TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_mapper_chooses_what_a_link_presents_upstream() {
    use common::sink::{Sink, SinkMode};
    use common::{tls_connect, until, ClientOpts, Protocol, RelayPki};
    use gatehouse::cluster::filter::LinkInfo;
    use gatehouse::cluster::identity::{IdentityMapper, Mapped};
    use gatehouse::pingora::CertKey;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    struct Fixed(Arc<CertKey>);

    #[gatehouse::async_trait]
    impl IdentityMapper for Fixed {
        async fn upstream_identity(&self, link: &LinkInfo<'_>) -> Mapped {
            match link.identity.cn() {
                Some("root") => Mapped::Refuse("root may not link".into()),
                Some(_) => Mapped::Present(self.0.clone()),
                None => Mapped::Anonymous,
            }
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rp = RelayPki::new(dir);
    rp.pki.issue("root", gatehouse::pki::CertSpec::new("root"));
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let port = reserved_port();
    let conf = Conf::new()
        .server(common::conf::Server::for_test(dir))
        .listener(rp.listener("edge", port, &[Protocol::Cluster]))
        .upstream("master", rp.master(sink.addr))
        .cluster(rp.cluster("master"));
    let config = Config::parse(&conf.to_yaml(), dir).unwrap();
    let mapped = rp
        .pki
        .ca
        .issue(&gatehouse::pki::CertSpec::new("mapped-agent"))
        .unwrap();
    let mapper = Fixed(Arc::new(CertKey::new(vec![mapped.cert], mapped.key)));
    let instance = gatehouse::testing::Instance::start(
        Gatehouse::from_config(config)
            .unwrap()
            .with_identity_mapper(mapper),
    )
    .unwrap();

    let hello = gatehouse::cluster::codec::encode(
        br#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{}}"#,
    );
    let opts = |who: &str| ClientOpts {
        ca: Some(rp.pki.ca_path()),
        cert: Some(rp.pki.paths(who)),
        sni: Some("master1".into()),
        tls12: false,
    };
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut agent = tls_connect(addr, &opts("agent1")).await.unwrap();
    agent.write_all(&hello).await.unwrap();
    until(
        "agent1's Hello to reach the master",
        Duration::from_secs(10),
        || !sink.frames().is_empty(),
    )
    .await;
    assert_eq!(
        sink.client_cns.lock().unwrap().clone(),
        vec![Some("mapped-agent".to_string())],
        "agent1 went upstream as the mapper said, not as cert_dir's agent1"
    );
    let mut root = tls_connect(addr, &opts("root")).await.unwrap();
    let _ = root.write_all(&hello).await;
    assert!(
        common::closed_within(&mut root, Duration::from_secs(5)).await,
        "root's link was not refused"
    );
    assert_eq!(
        sink.client_cns.lock().unwrap().len(),
        1,
        "the master was not dialled for root"
    );
    drop((agent, root));
    instance.stop();
}
