//! Metrics as operators consume them: `promtool check metrics` reports nothing, and a real
//! Prometheus scrapes Gatehouse and answers queries — including every query of the shipped
//! Grafana dashboard.

mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::cluster::codec;
use gatehouse::pki::CertSpec;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Gatehouse with an HTTP route and a relayed cluster link, after some traffic of each kind.
async fn busy_gatehouse(dir: &std::path::Path) -> (Gatehouse, u16, Sink, Upstream) {
    let rp = RelayPki::new(dir);
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster]))
        .upstream("web", Group::new(web.addr))
        .upstream("down", Group::new(local(reserved_port())))
        .upstream("master", rp.master(sink.addr))
        .route(Route::new("web", "web"))
        .route(Route::new("down", "down").path("/down"))
        .route(
            Route::new("kea", "web")
                .path("/kea")
                .kea(KeaRoute::allow_all()),
        )
        .cluster(rp.cluster("master"))
        .metrics(mport);
    let gh = Gatehouse::start(dir, &conf);
    let pki = rp.pki;
    let o = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: Some(pki.paths("agent1")),
        sni: Some("master1".into()),
        tls12: false,
    };
    for path in ["/", "/x", "/down"] {
        request(addr(port), Some(&o), "GET", path, &[], b"")
            .await
            .unwrap();
    }
    let json = [("Content-Type", "application/json")];
    request(
        addr(port),
        Some(&o),
        "POST",
        "/kea",
        &json,
        br#"{"command":"version-get"}"#,
    )
    .await
    .unwrap();
    // A certificate from an unknown CA: accepted (optional) but counted as a verify failure.
    let stranger = gatehouse::pki::self_signed(&CertSpec::new("stranger")).unwrap();
    stranger.write(dir, "stranger").unwrap();
    let mut anon = o.clone();
    anon.cert = Some((dir.join("stranger.crt"), dir.join("stranger.key")));
    request(addr(port), Some(&anon), "GET", "/", &[], b"")
        .await
        .unwrap();
    let mut link = tls_connect(addr(port), &o).await.unwrap();
    let hello = codec::encode(br#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{}}"#);
    let update = codec::encode(br#"{"jsonrpc":"2.0","method":"config::Update","params":{}}"#);
    link.write_all(&[hello, update].concat()).await.unwrap();
    until("the relay to deliver", Duration::from_secs(5), || {
        !sink.frames().is_empty()
    })
    .await;
    drop(link);
    (gh, mport, sink, web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_finds_nothing_to_complain_about() {
    if !require_binary("promtool") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_gh, mport, _sink, _web) = busy_gatehouse(tmp.path()).await;
    let text = request(addr(mport), None, "GET", "/metrics", &[], b"")
        .await
        .unwrap()
        .text();
    for family in [
        "gatehouse_build_info",
        "gatehouse_connections_total",
        "gatehouse_connections_active",
        "gatehouse_tls_client_verify_failures_total",
        "gatehouse_http_requests_total",
        "gatehouse_http_request_duration_seconds",
        "gatehouse_upstream_errors_total",
        "gatehouse_cluster_messages_total",
        "gatehouse_cluster_bytes_total",
        "gatehouse_cluster_links_active",
        "gatehouse_kea_commands_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
}

/// A real Prometheus on 127.0.0.1, scraping `target` every second; killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: u16) -> Prometheus {
        let port = reserved_port();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: gatehouse\n    static_configs: [ {{ targets: [\"127.0.0.1:{target}\"] }} ]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("spawn prometheus");
        Prometheus { child, port }
    }

    /// Instant query; returns (status, result array).
    async fn query(&self, q: &str) -> (String, serde_json::Value) {
        let enc: String = q
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let r = request(
            addr(self.port),
            None,
            "GET",
            &format!("/api/v1/query?query={enc}"),
            &[],
            b"",
        )
        .await
        .map(|r| r.json())
        .unwrap_or(serde_json::Value::Null);
        (
            r["status"].as_str().unwrap_or("").to_string(),
            r["data"]["result"].clone(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_gatehouse() {
    if !require_binary("prometheus") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (_gh, mport, _sink, _web) = busy_gatehouse(tmp.path()).await;
    let prom = Prometheus::start(tmp.path(), mport);

    let reqs = scraped_requests(&prom, tmp.path()).await;
    assert_eq!(reqs, 5.0, "five requests were made");
    let (_, denied) = prom
        .query(r#"gatehouse_cluster_messages_total{direction="upstream",method="config::Update",verdict="denied"}"#)
        .await;
    assert_eq!(value(&denied), 1.0);
    dashboard_queries_are_valid(&prom).await;
}

/// The value of a query's first result (NaN when there is none).
fn value(res: &serde_json::Value) -> f64 {
    res[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Waits until Prometheus has scraped Gatehouse up with traffic; the requests it counted.
async fn scraped_requests(prom: &Prometheus, dir: &std::path::Path) -> f64 {
    let last = std::cell::RefCell::new(String::new());
    let scraped = || async {
        let (_, up) = prom.query(r#"up{job="gatehouse"}"#).await;
        let (_, reqs) = prom
            .query(r#"sum(gatehouse_http_requests_total{job="gatehouse"})"#)
            .await;
        *last.borrow_mut() = format!("up={up}, requests={reqs}");
        (value(&up) == 1.0 && value(&reqs) > 0.0).then_some(value(&reqs))
    };
    // Prometheus scrapes on its own interval: asking twice a second is enough.
    eventually_some(
        "Prometheus to see gatehouse up with traffic",
        Duration::from_secs(30),
        Duration::from_millis(500),
        scraped,
        || {
            format!(
                "{}:\n{}",
                last.borrow(),
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            )
        },
    )
    .await
}

/// Every query of the shipped dashboard is valid PromQL over metrics that exist.
async fn dashboard_queries_are_valid(prom: &Prometheus) {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m"),
            );
        }
    }
    assert!(exprs.len() >= 6, "dashboard has {} queries", exprs.len());
    for e in exprs {
        let (status, _) = prom.query(&e).await;
        assert_eq!(
            status, "success",
            "dashboard query rejected by Prometheus: {e}"
        );
        let names: Vec<&str> = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("gatehouse_"))
            .collect();
        assert!(!names.is_empty(), "query uses no gatehouse metric: {e}");
        for n in names {
            let base = n.trim_end_matches("_bucket");
            let (_, r) = prom
                .query(&format!("count({{__name__=~\"{base}.*\"}})"))
                .await;
            assert!(
                value(&r) > 0.0,
                "dashboard uses {n}, which Gatehouse does not export"
            );
        }
    }
}

/// Before anything happened, every series whose labels the configuration decides is already
/// there at 0 (`rate()` alerts have something to evaluate from the first scrape), across the
/// families whose events are rare: reloads, verify failures, upstream errors, cluster link
/// ends and refusals, timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_with_known_labels_exist_at_zero_from_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let rp = RelayPki::new(tmp.path());
    let (port, mport) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster]))
        .upstream("web", Group::new(local(reserved_port())))
        .upstream("master", rp.master(addr(reserved_port())))
        .route(Route::new("web", "web"))
        .cluster(rp.cluster("master"))
        .metrics(mport);
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let text = request(addr(mport), None, "GET", "/metrics", &[], b"")
        .await
        .unwrap()
        .text();
    for series in [
        r#"gatehouse_tls_reloads_total{result="success"} 0"#,
        r#"gatehouse_tls_reloads_total{result="failure"} 0"#,
        r#"gatehouse_tls_client_verify_failures_total{listener="edge",reason="unknown_ca"} 0"#,
        r#"gatehouse_tls_client_verify_failures_total{listener="edge",reason="expired"} 0"#,
        r#"gatehouse_connections_total{listener="edge",protocol="rejected"} 0"#,
        r#"gatehouse_connections_active{listener="edge",protocol="cluster"} 0"#,
        r#"gatehouse_handshakes_total{listener="edge",result="timeout"} 0"#,
        r#"gatehouse_upstream_errors_total{kind="refused",upstream="web"} 0"#,
        r#"gatehouse_upstream_errors_total{kind="invalid_cert",upstream="master"} 0"#,
        r#"gatehouse_cluster_links_active{kind="anonymous"} 0"#,
        r#"gatehouse_cluster_links_closed_total{end="not_taken"} 0"#,
        r#"gatehouse_cluster_links_closed_total{end="stalled"} 0"#,
        r#"gatehouse_cluster_links_refused_total{reason="identity"} 0"#,
        r#"gatehouse_http_client_timeouts_total{listener="edge",phase="body"} 0"#,
        r#"gatehouse_http_requests_total{route="web",status="5xx"} 0"#,
    ] {
        assert!(text.contains(series), "missing {series}:\n{text}");
    }
}
