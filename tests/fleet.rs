//! Fleet features end to end: per-identity request rates on HTTP routes (with the raw client
//! and with curl over HTTP/2), per-identity cluster link limits.

mod common;

use common::*;
use gatehouse::pki::CertSpec;
use std::net::SocketAddr;
use std::time::Duration;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One caller's flood empties its own bucket only: the others (another CN, an anonymous IP)
/// keep being served; the excess gets 429 with Retry-After, Kea-shaped for JSON, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_per_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = Pki::new(tmp.path(), "edge");
    edge.server("server", &[]);
    for cn in ["flood", "calm"] {
        edge.issue(cn, CertSpec::new(cn));
    }
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (free_port(), free_port());
    let yaml = format!(
        r#"listeners:
  - name: edge
    address: "127.0.0.1:{port}"
    tls: {{ cert: {e}/server.crt, key: {e}/server.key, client_auth: optional, client_ca: {e}/ca.crt }}
upstreams:
  web: {{ peers: ["{origin}"] }}
routes:
  - name: api
    path_prefix: /api
    upstream: web
    rate_limit: {{ requests_per_second: 0.2, burst: 3 }}
  - {{ name: open, upstream: web }}
metrics: {{ address: "127.0.0.1:{mport}" }}
"#,
        e = edge.dir.display(),
        origin = origin.addr,
    );
    let _gh = Gatehouse::start(tmp.path(), &yaml);
    let who = |cn: Option<&str>| ClientOpts {
        ca: Some(edge.ca_path()),
        cert: cn.map(|c| edge.paths(c)),
        sni: Some("localhost".into()),
        tls12: false,
    };
    let get = |o: ClientOpts, path: &'static str, json: bool| async move {
        let headers: &[(&str, &str)] = if json {
            &[("Content-Type", "application/json")]
        } else {
            &[]
        };
        request(addr(port), Some(&o), "GET", path, headers, b"")
            .await
            .unwrap()
    };

    for i in 0..3 {
        let r = get(who(Some("flood")), "/api/x", false).await;
        assert_eq!(r.status, 200, "request {i} is within the burst");
    }
    let r = get(who(Some("flood")), "/api/x", false).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(
        r.text(),
        "rate limit exceeded for cn=flood on route 'api' (routes[].rate_limit)\n"
    );
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "one token per 5 s: {retry}");
    let r = get(who(Some("flood")), "/api/x", true).await;
    assert_eq!(r.status, 429);
    assert_eq!(
        r.json(),
        serde_json::json!({"result": 429, "text": "rate limit exceeded for cn=flood on route 'api' (routes[].rate_limit)"})
    );
    // The flood limits nobody else, and nothing on routes without a limit.
    for _ in 0..3 {
        assert_eq!(get(who(Some("calm")), "/api/x", false).await.status, 200);
        assert_eq!(get(who(None), "/api/x", false).await.status, 200);
    }
    assert_eq!(get(who(Some("calm")), "/api/x", false).await.status, 429);
    assert_eq!(
        get(who(None), "/api/x", false).await.status,
        429,
        "anonymous = by IP"
    );
    assert_eq!(get(who(Some("flood")), "/other", false).await.status, 200);

    // curl with its defaults (HTTP/2) is limited the same way.
    let (cert, key) = edge.paths("flood");
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
                "--cacert",
            ])
            .arg(edge.ca_path())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("https://localhost:{port}/api/x"))
            .output(),
    )
    .await
    .expect("curl finished")
    .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "429 2", "{out:?}");

    let m = metrics_text(mport).await;
    assert!(
        m.contains(r#"gatehouse_http_rate_limited_total{route="api"} 5"#),
        "{m}"
    );
    // Refused requests never reached the origin: 3 + 3 + 3 allowed, 1 on the open route.
    assert_eq!(origin.seen().len(), 10);
}
