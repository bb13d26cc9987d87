//! The HTTP proxy end to end: real TLS both sides, the real binary, origins on port 0.

mod common;

use common::*;
use gatehouse::pki::CertSpec;
use std::net::SocketAddr;
use std::path::Path;

/// Edge PKI (listener cert + client certs) and upstream PKI (origin cert + Gatehouse's
/// upstream client cert), plus an unrelated CA for "wrong CA" cases.
struct World {
    edge: Pki,
    up: Pki,
    other: Pki,
}

impl World {
    fn new(dir: &Path) -> World {
        let edge = Pki::edge(dir, &["alice"]);
        let up = Pki::new(dir, "up");
        up.server("origin", &["kea.internal"]);
        up.issue("gatehouse", CertSpec::new("gatehouse"));
        let other = Pki::new(dir, "other");
        other.issue("mallory", CertSpec::new("mallory"));
        World { edge, up, other }
    }

    /// TLS listener `name` with the edge certificate; client certificates per `client_auth`.
    fn listener(&self, name: &str, port: u16, client_auth: ClientAuth) -> Listener {
        Listener::new(name, port).tls(ListenerTls::from_pki(&self.edge, "server", client_auth))
    }

    /// A config with listener `edge` on `port` (see [`World::listener`]).
    fn edge(&self, port: u16, client_auth: ClientAuth) -> Conf {
        Conf::new().listener(self.listener("edge", port, client_auth))
    }

    /// `peer` over [`World::up_tls`].
    fn up(&self, peer: SocketAddr, ca: &Path, with_cert: bool) -> Group {
        Group::new(peer).tls(self.up_tls(ca, with_cert))
    }

    /// Upstream TLS to `kea.internal` trusting `ca`, presenting Gatehouse's client cert when
    /// `with_cert`.
    fn up_tls(&self, ca: &Path, with_cert: bool) -> UpstreamTls {
        let t = UpstreamTls::new("kea.internal").ca(ca);
        if with_cert {
            t.client(&self.up, "gatehouse")
        } else {
            t
        }
    }

    fn client(&self, who: Option<&str>) -> ClientOpts {
        ClientOpts {
            ca: Some(self.edge.ca_path()),
            cert: who.map(|w| self.edge.paths(w)),
            sni: Some("localhost".into()),
            tls12: false,
        }
    }

    fn origin_acceptor(&self, alpn_h2: bool) -> boring::ssl::SslAcceptor {
        let origin = self.up.ca.issue(
            &CertSpec::new("kea.internal")
                .dns(&["kea.internal"])
                .ips(&["127.0.0.1"]),
        );
        acceptor(&origin.unwrap(), Some(self.up.ca.cert()), alpn_h2)
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_on_both_sides_forwards_identity_and_headers() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(Some(w.origin_acceptor(false)), Behavior::Echo).await;
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Required)
        .upstream("kea", w.up(origin.addr, &w.up.ca_path(), true))
        .route(Route::new("kea", "kea").host("*").path("/"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);

    let r = request(
        addr(port),
        Some(&w.client(Some("alice"))),
        "POST",
        "/",
        &[
            ("Content-Type", "application/json"),
            (
                "X-Forwarded-Client-Cert",
                "Hash=spoofed;Subject=\"CN=admin\"",
            ),
            ("X-Forwarded-For", "10.9.9.9"),
        ],
        br#"{"command":"version-get"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    // The origin requires a client cert: it saw Gatehouse's own identity and our SNI.
    assert_eq!(j["client_cn"], "gatehouse");
    assert_eq!(j["sni"], "kea.internal");
    let seen = origin.seen();
    let s = seen.last().unwrap();
    assert_eq!(s.body, br#"{"command":"version-get"}"#);
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        s.header("x-forwarded-client-cert"),
        None,
        "spoofed XFCC must be stripped"
    );

    let line = gh.wait_log("gatehouse::access");
    assert!(
        line.contains("listener=edge") && line.contains("cn=alice"),
        "{line}"
    );
    assert!(
        line.contains("route=kea") && line.contains(&format!("peer={}", origin.addr)),
        "{line}"
    );
    assert!(
        line.contains("status=200") && line.contains("method=POST") && line.contains("path=/"),
        "{line}"
    );

    let m = gh.metrics_text().await;
    assert!(m.contains("gatehouse_build_info{version=\""), "{m}");
    assert!(
        m.contains("gatehouse_http_requests_total{route=\"kea\",status=\"2xx\"} 1"),
        "{m}"
    );
}

/// `client_auth: required` on `port`: no certificate gets no answer (TLS 1.2: the handshake
/// fails; 1.3: an alert on the first read), nor does `stranger`'s from an unknown CA; alice's
/// passes.
async fn required_takes_only_good_certificates(w: &World, port: u16, stranger: &ClientOpts) {
    let mut o = w.client(None);
    o.tls12 = true;
    assert!(
        tls_connect(addr(port), &o).await.is_err(),
        "handshake must fail"
    );
    assert!(
        request(addr(port), Some(&w.client(None)), "GET", "/", &[], b"")
            .await
            .is_err()
    );
    assert!(request(addr(port), Some(stranger), "GET", "/", &[], b"")
        .await
        .is_err());
    let ok = request(
        addr(port),
        Some(&w.client(Some("alice"))),
        "GET",
        "/",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_required_and_optional() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (req_port, opt_port) = (reserved_port(), reserved_port());
    let conf = w
        .edge(req_port, ClientAuth::Required)
        .listener(w.listener("edge-optional", opt_port, ClientAuth::Optional))
        .upstream("plain", Group::new(origin.addr))
        .route(Route::new("all", "plain"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);

    let mut stranger = w.client(None);
    stranger.cert = Some(w.other.paths("mallory"));
    required_takes_only_good_certificates(&w, req_port, &stranger).await;

    // optional: no cert → served, logged as `-`.
    let r = request(
        addr(opt_port),
        Some(&w.client(None)),
        "GET",
        "/anon",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let line = gh.wait_log("path=/anon");
    assert!(
        line.contains("listener=edge-optional") && line.contains("cn=-"),
        "{line}"
    );
    // optional: an unverified cert is served but stays anonymous.
    let r = request(
        addr(opt_port),
        Some(&stranger),
        "GET",
        "/stranger",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let line = gh.wait_log("path=/stranger");
    assert!(
        line.contains("cn=-"),
        "unverified cert must not authenticate: {line}"
    );

    let m = gh.metrics_text().await;
    assert!(
        m.contains(
            "gatehouse_tls_client_verify_failures_total{listener=\"edge\",reason=\"unknown_ca\"}"
        ),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_tls_client_verify_failures_total{listener=\"edge-optional\",reason=\"unknown_ca\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_are_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let good = Upstream::h1(Some(w.origin_acceptor(false)), Behavior::Echo).await;
    let hang = Upstream::h1(None, Behavior::Hang).await;
    let (dead, port) = (reserved_port(), reserved_port());
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream("wrongca", w.up(good.addr, &w.other.ca_path(), true))
        .upstream("nocert", w.up(good.addr, &w.up.ca_path(), false))
        .upstream("down", Group::new(local(dead)))
        .upstream("hang", Group::new(hang.addr).read_timeout("1s"))
        .route(Route::new("wrongca", "wrongca").path("/wrongca"))
        .route(Route::new("nocert", "nocert").path("/nocert"))
        .route(Route::new("down", "down").path("/down"))
        .route(Route::new("hang", "hang").path("/hang"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let c = w.client(Some("alice"));
    let get = |path: &'static str| {
        let c = c.clone();
        async move {
            request(addr(port), Some(&c), "GET", path, &[], b"")
                .await
                .unwrap()
        }
    };

    let r = get("/wrongca").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (502, "upstream error: invalid_cert")
    );
    let r = get("/nocert").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (502, "upstream error: handshake")
    );
    let r = get("/down").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (502, "upstream error: refused")
    );
    let r = get("/hang").await;
    assert_eq!(
        (r.status, r.text().trim()),
        (504, "upstream error: timeout")
    );

    // JSON clients (Kea's) get Kea-shaped errors.
    let r = request(
        addr(port),
        Some(&c),
        "POST",
        "/down",
        &[("Content-Type", "application/json")],
        br#"{"command":"version-get"}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        r.json(),
        serde_json::json!({"result": 502, "text": "upstream error: refused"})
    );

    let line = gh.wait_log("upstream wrongca peer");
    assert!(
        line.contains(&good.addr.to_string()) && line.contains("invalid_cert"),
        "{line}"
    );
    let m = gh.metrics_text().await;
    for (up, kind) in [
        ("wrongca", "invalid_cert"),
        ("nocert", "handshake"),
        ("down", "refused"),
        ("hang", "timeout"),
    ] {
        assert!(
            m.contains(&format!(
                "gatehouse_upstream_errors_total{{kind=\"{kind}\",upstream=\"{up}\"}}"
            )),
            "{up}/{kind} not counted:\n{m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_never_mix_trust_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(Some(w.origin_acceptor(false)), Behavior::Echo).await;
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream("right", w.up(origin.addr, &w.up.ca_path(), true))
        .upstream("wrong", w.up(origin.addr, &w.other.ca_path(), true))
        .route(Route::new("right", "right").path("/right"))
        .route(Route::new("wrong", "wrong").path("/wrong"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let c = w.client(Some("alice"));
    for _ in 0..2 {
        let r = request(addr(port), Some(&c), "GET", "/right", &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // A pooled connection made with the right CA must not serve the wrong-CA upstream.
        let r = request(addr(port), Some(&c), "GET", "/wrong", &[], b"")
            .await
            .unwrap();
        assert_eq!(
            (r.status, r.text().trim()),
            (502, "upstream error: invalid_cert")
        );
    }
    // The right upstream did reuse its pooled connection.
    assert_eq!(origin.seen().len(), 2);
    assert_eq!(
        *origin.connections.lock().unwrap(),
        3,
        "1 pooled + 2 rejected handshakes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_with_configured_sni_and_h2_downstream() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h2(w.origin_acceptor(true)).await;
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream(
            "h2",
            Group::new(origin.addr).tls(w.up_tls(&w.up.ca_path(), true).alpn("h2")),
        )
        .route(Route::new("h2", "h2").host("localhost").path("/"));
    let gh = Gatehouse::start(tmp.path(), &conf);

    // HTTP/1.1 in, HTTP/2 out.
    let r = request(
        addr(port),
        Some(&w.client(Some("alice"))),
        "POST",
        "/x",
        &[],
        b"hello",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["alpn"], "h2");
    assert_eq!(j["sni"], "kea.internal");
    assert_eq!(j["client_cn"], "gatehouse");
    assert_eq!(j["body_len"], 5);

    // HTTP/2 in: the identity read at the handshake reaches h2 streams too.
    let mut b = boring::ssl::SslConnector::builder(boring::ssl::SslMethod::tls()).unwrap();
    b.set_ca_file(w.edge.ca_path()).unwrap();
    let (c, k) = w.edge.paths("alice");
    b.set_certificate_chain_file(c).unwrap();
    b.set_private_key_file(k, boring::ssl::SslFiletype::PEM)
        .unwrap();
    b.set_alpn_protos(b"\x02h2").unwrap();
    let cfg = b.build().configure().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
    let tls = tokio_boring::connect(cfg, "localhost", tcp).await.unwrap();
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (mut client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/h2-in")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    let line = gh.wait_log("path=/h2-in");
    assert!(
        line.contains("cn=alice") && line.contains("status=200"),
        "{line}"
    );

    // No route for this host: 404.
    let r = request(
        addr(port),
        Some(&w.client(None)),
        "GET",
        "/",
        &[("Host", "other.example")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfcc_is_built_by_gatehouse_and_never_passed_through() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let ops = w.edge.issue(
        "ops",
        CertSpec::new("ops-admin")
            .uris(&["spiffe://example.org/ops/admin"])
            .dns(&["admin.example.org"]),
    );
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream("o", Group::new(origin.addr))
        .route(Route::new("xfcc", "o").path("/xfcc").xfcc())
        .route(Route::new("plain", "o").path("/plain"))
        .route(
            Route::new("ops-only", "o")
                .path("/ops")
                .allow(["spiffe://example.org/ops/"]),
        );
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let spoof = [("X-Forwarded-Client-Cert", "Hash=0000;Subject=\"CN=root\"")];
    let mut o = w.client(None);
    o.cert = Some(w.edge.paths("ops"));

    for path in ["/xfcc", "/plain"] {
        let r = request(addr(port), Some(&o), "GET", path, &spoof, b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let fp: String = ops
        .cert
        .digest(boring::hash::MessageDigest::sha256())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let seen = origin.seen();
    assert_eq!(
        seen[0].header("x-forwarded-client-cert"),
        Some(format!("Hash={fp};Subject=\"CN=ops-admin\";URI=spiffe://example.org/ops/admin;DNS=admin.example.org").as_str()),
        "exactly the header Gatehouse built"
    );
    assert_eq!(
        seen[1].header("x-forwarded-client-cert"),
        None,
        "stripped on every route"
    );
    // An anonymous client gets no XFCC at all, and the spoof is still removed.
    let r = request(
        addr(port),
        Some(&w.client(None)),
        "GET",
        "/xfcc",
        &spoof,
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(origin.seen()[2].header("x-forwarded-client-cert"), None);

    routes_are_allowed_by_spiffe_prefix(&w, port, &o).await;
    assert_eq!(
        origin.seen().len(),
        4,
        "refused requests never reach the origin"
    );
}

/// Route access by SPIFFE prefix: admin (`admin`) in, alice (no SPIFFE ID) and anonymous out.
async fn routes_are_allowed_by_spiffe_prefix(w: &World, port: u16, admin: &ClientOpts) {
    assert_eq!(
        request(addr(port), Some(admin), "GET", "/ops", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    let r = request(
        addr(port),
        Some(&w.client(Some("alice"))),
        "GET",
        "/ops",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status, r.text().trim()),
        (403, "route 'ops-only' is not allowed for cn=alice")
    );
    let r = request(addr(port), Some(&w.client(None)), "GET", "/ops", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 403);
}

/// How many TLS 1.3 session tickets a listener hands one client. BoringSSL sends them with the
/// server's first write, so the client sends an HTTP request and reads to the end: an HTTP
/// listener answers it, a cluster-only one closes (close_notify).
async fn tickets_offered(port: u16, ca: &Path) -> usize {
    use boring::ssl::{SslConnector, SslMethod, SslSessionCacheMode, SslVersion};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let n = Arc::new(AtomicUsize::new(0));
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap();
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT);
    let seen = n.clone();
    b.set_new_session_callback(move |_, _| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    let tcp = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
    let cfg = b.build().configure().unwrap();
    let mut s = tokio_boring::connect(cfg, "localhost", tcp).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink).await;
    n.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_resumption_is_off_on_cluster_only_listeners() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (edge, cluster, resume) = (reserved_port(), reserved_port(), reserved_port());
    let cluster_only = &[Protocol::Cluster];
    let tls = || ListenerTls::from_pki(&w.edge, "server", ClientAuth::None);
    let conf = Conf::new()
        .listener(Listener::new("edge", edge).tls(tls()))
        .listener(
            Listener::new("cluster", cluster)
                .protocols(cluster_only)
                .tls(tls()),
        )
        .listener(
            Listener::new("resume", resume)
                .protocols(cluster_only)
                .tls(tls().session_resumption(true)),
        )
        .upstream("web", Group::new(origin.addr))
        .route(Route::new("all", "web"))
        .cluster(Cluster::new("*", "web"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let ca = w.edge.ca_path();
    // HTTP clients get tickets; a cluster-only port issues none unless told to.
    assert!(tickets_offered(edge, &ca).await >= 1, "{}", gh.log_text());
    assert_eq!(tickets_offered(cluster, &ca).await, 0);
    assert!(tickets_offered(resume, &ca).await >= 1);
}

/// An origin that accepts TCP at once but starts its TLS handshake only after `delay` (a
/// master busy with a reconnect storm), then answers one request with 200 "ok".
async fn slow_handshake_origin(
    acc: boring::ssl::SslAcceptor,
    delay: std::time::Duration,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    let acc = std::sync::Arc::new(acc);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let acc = acc.clone();
            tokio::spawn(async move {
                // The busy master under test: its handshake starts late.
                tokio::time::sleep(delay).await;
                let Ok(mut s) = tokio_boring::accept(&acc, tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// `connect_timeout` bounds the TCP connect only; `tls_handshake_timeout` (default 10 s) the
/// TLS handshake after it: a peer that answers its handshake 3 s late is reached by default
/// (the old 2 s connect_timeout covered both and gave up), and times out (504) with a 1 s
/// handshake bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_timeout_is_separate_from_connect_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let slow =
        slow_handshake_origin(w.origin_acceptor(false), std::time::Duration::from_secs(3)).await;
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Required)
        .upstream(
            "patient",
            w.up(slow, &w.up.ca_path(), true).connect_timeout("2s"),
        )
        .upstream(
            "hasty",
            w.up(slow, &w.up.ca_path(), true)
                .connect_timeout("2s")
                .tls_handshake_timeout("1s"),
        )
        .route(Route::new("patient", "patient").path("/patient"))
        .route(Route::new("hasty", "hasty").path("/hasty"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let get = |path: &'static str| {
        let o = w.client(Some("alice"));
        async move {
            let t0 = std::time::Instant::now();
            let r = request(addr(port), Some(&o), "GET", path, &[], b"")
                .await
                .unwrap();
            (r.status, r.text(), t0.elapsed())
        }
    };
    let (status, text, took) = get("/patient").await;
    assert_eq!((status, text.as_str()), (200, "ok"), "{}", gh.log_text());
    assert!(took >= std::time::Duration::from_secs(3), "{took:?}");
    let (status, text, took) = get("/hasty").await;
    assert_eq!(status, 504, "{text}");
    assert!(took < std::time::Duration::from_secs(3), "{took:?}");
}

/// `connect_timeout` bounds the TCP connect of a TLS upstream (Gatehouse's own connect, see
/// `tls_handshake_timeout`): a peer whose accept queue is full drops our SYN, and with
/// `connect_timeout: 300ms` the request ends with 504 after at least 300 ms and well under the
/// 2 s default (1.5 s leaves a loaded machine 1.2 s of slack), and the log names the 300 ms
/// bound. Fails if the configured value were ignored (2 s default, or the handshake's 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_the_tcp_connect() {
    use socket2::{Domain, Socket, Type};
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    // A listener that never accepts, with the smallest queue; fill it so further SYNs drop.
    let full = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    full.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    full.listen(0).unwrap();
    let dead = full.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(dead),
        )
        .await
        {
            fillers.push(s);
        }
    }
    assert!(!fillers.is_empty(), "the queue took no connection at all");
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Required)
        .upstream(
            "full",
            w.up(dead, &w.up.ca_path(), true).connect_timeout("300ms"),
        )
        .route(Route::new("full", "full"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let t0 = std::time::Instant::now();
    let r = request(
        addr(port),
        Some(&w.client(Some("alice"))),
        "GET",
        "/",
        &[],
        b"",
    )
    .await
    .unwrap();
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.text().trim(), "upstream error: timeout");
    assert!(
        took >= std::time::Duration::from_millis(300)
            && took < std::time::Duration::from_millis(1500),
        "{took:?}"
    );
    let line = gh.wait_log("upstream full peer");
    assert!(line.contains("timeout 300ms connecting to"), "{line}");
}

/// An origin acceptor presenting `cert` (no client certificate asked for), accepting only the
/// key-exchange groups `curves` when given.
fn plain_acceptor(cert: &gatehouse::pki::Issued, curves: Option<&str>) -> boring::ssl::SslAcceptor {
    use boring::ssl::{SslAcceptor, SslMethod};
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls()).unwrap();
    b.set_certificate(&cert.cert).unwrap();
    b.set_private_key(&cert.key).unwrap();
    if let Some(c) = curves {
        b.set_curves_list(c).unwrap();
    }
    b.build()
}

/// `upstreams.<n>.tls.verify_hostname` and `verify_cert`: by default an origin whose certificate
/// names another host, or comes from a CA not in `ca`, is refused (502 invalid_cert);
/// `verify_hostname: false` accepts the other name but still checks the chain, and
/// `verify_cert: false` accepts the unknown CA. Fails if either key were ignored (Pingora's
/// defaults verify both) or if `verify_hostname: false` switched off chain verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_verify_cert_and_verify_hostname() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    // Right CA, wrong name: the certificate is for other.internal, we ask for kea.internal.
    let misnamed =
        w.up.ca
            .issue(&CertSpec::new("other.internal").dns(&["other.internal"]))
            .unwrap();
    let misnamed = Upstream::h1(Some(plain_acceptor(&misnamed, None)), Behavior::Echo).await;
    // Right name, unknown CA.
    let stranger = w
        .other
        .ca
        .issue(&CertSpec::new("kea.internal").dns(&["kea.internal"]))
        .unwrap();
    let stranger = Upstream::h1(Some(plain_acceptor(&stranger, None)), Behavior::Echo).await;
    let ca = w.up.ca_path();
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream("name-checked", w.up(misnamed.addr, &ca, false))
        .upstream(
            "name-unchecked",
            Group::new(misnamed.addr).tls(w.up_tls(&ca, false).verify_hostname(false)),
        )
        .upstream("ca-checked", w.up(stranger.addr, &ca, false))
        .upstream(
            "ca-unchecked",
            Group::new(stranger.addr).tls(w.up_tls(&ca, false).verify_cert(false)),
        )
        .upstream(
            "ca-checked-name-unchecked",
            Group::new(stranger.addr).tls(w.up_tls(&ca, false).verify_hostname(false)),
        )
        .route(Route::new("a", "name-checked").path("/name-checked"))
        .route(Route::new("b", "name-unchecked").path("/name-unchecked"))
        .route(Route::new("c", "ca-checked-name-unchecked").path("/ca-checked-name"))
        .route(Route::new("d", "ca-checked").path("/ca-checked"))
        .route(Route::new("e", "ca-unchecked").path("/ca-unchecked"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let c = w.client(None);
    let get = |path: &'static str| {
        let c = c.clone();
        async move {
            let r = request(addr(port), Some(&c), "GET", path, &[], b"")
                .await
                .unwrap();
            (r.status, r.text().trim().to_string())
        }
    };
    let refused = (502, "upstream error: invalid_cert".to_string());

    assert_eq!(
        get("/name-checked").await,
        refused,
        "hostname is verified by default"
    );
    let (status, body) = get("/name-unchecked").await;
    assert_eq!(
        status,
        200,
        "verify_hostname: false: {body}\n{}",
        gh.log_text()
    );
    assert_eq!(
        get("/ca-checked-name").await,
        refused,
        "verify_hostname: false must keep verifying the chain"
    );
    assert_eq!(
        get("/ca-checked").await,
        refused,
        "chain is verified by default"
    );
    let (status, body) = get("/ca-unchecked").await;
    assert_eq!(status, 200, "verify_cert: false: {body}\n{}", gh.log_text());
    assert_eq!(misnamed.seen().len(), 1);
    assert_eq!(stranger.seen().len(), 1);
}

/// `listeners[].tls.min_version: tls1.3` refuses a client that offers TLS 1.2 at most, which
/// the default (`tls1.2`) listener serves. Fails if the setting were not applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_min_version_refuses_older_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (default, strict) = (reserved_port(), reserved_port());
    let conf = w
        .edge(default, ClientAuth::Optional)
        .listener(Listener::new("strict", strict).tls(
            ListenerTls::from_pki(&w.edge, "server", ClientAuth::Optional).min_version("tls1.3"),
        ))
        .upstream("o", Group::new(origin.addr))
        .route(Route::new("all", "o"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let mut old = w.client(None);
    old.tls12 = true;

    let s = tls_connect(addr(default), &old)
        .await
        .expect("TLS 1.2 by default");
    assert_eq!(s.ssl().version_str(), "TLSv1.2");
    let e = tls_connect(addr(strict), &old)
        .await
        .expect_err("a TLS 1.2 client must be refused by a tls1.3 listener");
    assert!(e.contains("handshake"), "{e}");
    // A TLS 1.3 client is served there.
    let r = request(addr(strict), Some(&w.client(None)), "GET", "/", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
}

/// `listeners[].tls.alpn: [http/1.1]` disables HTTP/2: curl (which offers h2 first) gets
/// HTTP/1.1 there and HTTP/2 on a default listener. Fails if the list were ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_alpn_http11_disables_h2() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (both, h1) = (reserved_port(), reserved_port());
    let conf =
        w.edge(both, ClientAuth::Optional)
            .listener(Listener::new("h1", h1).tls(
                ListenerTls::from_pki(&w.edge, "server", ClientAuth::Optional).alpn(["http/1.1"]),
            ))
            .upstream("o", Group::new(origin.addr))
            .route(Route::new("all", "o"));
    let _gh = Gatehouse::start(tmp.path(), &conf);

    let out = curl(&w.edge, "alice", &format!("https://localhost:{both}/"), &[]).await;
    assert_eq!(
        (out.status.as_str(), out.version.as_str()),
        ("200", "2"),
        "{out:?}"
    );
    let out = curl(&w.edge, "alice", &format!("https://localhost:{h1}/"), &[]).await;
    assert_eq!(
        (out.status.as_str(), out.version.as_str()),
        ("200", "1.1"),
        "{out:?}"
    );
}

/// `listeners[].tls.client_auth: none` asks for no certificate: a client holding one that the
/// listener's `client_ca` would verify is still anonymous (`cn=-`, no XFCC, refused by a
/// route that admits only `cn:alice`), while on an `optional` listener with the same CA the
/// same client is alice. Fails if `none` requested or verified client certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_auth_none_ignores_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (optional, none) = (reserved_port(), reserved_port());
    let conf = w
        .edge(optional, ClientAuth::Optional)
        .listener(Listener::new("none", none).tls(
            // Same CA as the optional listener: only client_auth differs.
            ListenerTls::from_pki(&w.edge, "server", ClientAuth::None).client_ca(w.edge.ca_path()),
        ))
        .upstream("o", Group::new(origin.addr))
        .route(
            Route::new("alice-only", "o")
                .path("/alice")
                .allow(["cn:alice"]),
        )
        .route(Route::new("xfcc", "o").path("/").xfcc());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let alice = w.client(Some("alice"));
    let get = |port: u16, path: &'static str| {
        let c = alice.clone();
        async move {
            request(addr(port), Some(&c), "GET", path, &[], b"")
                .await
                .unwrap()
                .status
        }
    };

    assert_eq!(get(optional, "/optional").await, 200);
    let line = gh.wait_log("path=/optional");
    assert!(line.contains("cn=alice"), "{line}");
    assert!(origin.seen()[0].header("x-forwarded-client-cert").is_some());
    assert_eq!(get(optional, "/alice").await, 200);

    assert_eq!(get(none, "/none").await, 200);
    let line = gh.wait_log("path=/none");
    assert!(
        line.contains("listener=none") && line.contains("cn=-"),
        "client_auth none must not read the certificate: {line}"
    );
    let seen = origin.seen();
    assert_eq!(seen[2].path, "/none");
    assert_eq!(seen[2].header("x-forwarded-client-cert"), None);
    assert_eq!(get(none, "/alice").await, 403);
}

/// `listeners[].tls.curves` limits the key exchange: with `P-384` a client offering only P-256
/// cannot complete a handshake (a default listener would accept it), one offering P-384 can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_curves_limit_key_exchange() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let (default, p384) = (reserved_port(), reserved_port());
    let conf =
        w.edge(default, ClientAuth::Optional)
            .listener(Listener::new("p384", p384).tls(
                ListenerTls::from_pki(&w.edge, "server", ClientAuth::Optional).curves("P-384"),
            ))
            .upstream("o", Group::new(origin.addr))
            .route(Route::new("all", "o"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let ca = w.edge.ca_path();
    handshake_offering(default, &ca, "P-256")
        .await
        .expect("a default listener accepts P-256");
    let e = handshake_offering(p384, &ca, "P-256")
        .await
        .expect_err("P-256 is not in curves: P-384");
    assert!(e.contains("handshake"), "{e}");
    handshake_offering(p384, &ca, "P-384")
        .await
        .expect("P-384 is in the list");
}

/// A TLS handshake with the listener on `port`, offering only the key-exchange groups `curves`.
async fn handshake_offering(port: u16, ca: &Path, curves: &str) -> Result<(), String> {
    use boring::ssl::{SslConnector, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(ca).unwrap();
    b.set_curves_list(curves).unwrap();
    let cfg = b.build().configure().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr(port))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_boring::connect(cfg, "localhost", tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map(drop)
    .map_err(|e| format!("handshake: {e}"))
}

/// `upstreams.<n>.tls.curves` is what Gatehouse offers its peers: against an origin that
/// accepts only P-384 (which Pingora's default list includes), `curves: P-256` fails the
/// handshake (502) and `curves: P-384` reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_curves_limit_key_exchange() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let cert =
        w.up.ca
            .issue(&CertSpec::new("kea.internal").dns(&["kea.internal"]))
            .unwrap();
    let origin = Upstream::h1(Some(plain_acceptor(&cert, Some("P-384"))), Behavior::Echo).await;
    let ca = w.up.ca_path();
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream(
            "p256",
            Group::new(origin.addr).tls(w.up_tls(&ca, false).curves("P-256")),
        )
        .upstream(
            "p384",
            Group::new(origin.addr).tls(w.up_tls(&ca, false).curves("P-384")),
        )
        .route(Route::new("p256", "p256").path("/p256"))
        .route(Route::new("p384", "p384").path("/p384"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let c = w.client(None);
    let r = request(addr(port), Some(&c), "GET", "/p256", &[], b"")
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.text().trim()),
        (502, "upstream error: handshake")
    );
    let r = request(addr(port), Some(&c), "GET", "/p384", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(origin.seen().len(), 1);
}

/// `upstreams.<n>.tls.alpn: h2h1` offers both protocols: an HTTP/2-only origin, which the
/// default (`h1`) cannot talk to, is reached over h2, and an origin without ALPN still over
/// HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_alpn_h2h1_offers_both() {
    let tmp = tempfile::tempdir().unwrap();
    let w = World::new(tmp.path());
    let h2 = Upstream::h2(w.origin_acceptor(true)).await;
    let h1 = Upstream::h1(Some(w.origin_acceptor(false)), Behavior::Echo).await;
    let ca = w.up.ca_path();
    let port = reserved_port();
    let conf = w
        .edge(port, ClientAuth::Optional)
        .upstream("h2-default", w.up(h2.addr, &ca, true))
        .upstream(
            "h2-both",
            Group::new(h2.addr).tls(w.up_tls(&ca, true).alpn("h2h1")),
        )
        .upstream(
            "h1-both",
            Group::new(h1.addr).tls(w.up_tls(&ca, true).alpn("h2h1")),
        )
        .route(Route::new("a", "h2-default").path("/h2-default"))
        .route(Route::new("b", "h2-both").path("/h2-both"))
        .route(Route::new("c", "h1-both").path("/h1-both"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let c = w.client(None);
    let get = |path: &'static str| {
        let c = c.clone();
        async move {
            request(addr(port), Some(&c), "GET", path, &[], b"")
                .await
                .unwrap()
        }
    };
    let r = get("/h2-default").await;
    assert_eq!(
        r.status,
        502,
        "h1 cannot talk to an h2-only origin: {}",
        r.text()
    );
    let r = get("/h2-both").await;
    assert_eq!(r.status, 200, "{}\n{}", r.text(), gh.log_text());
    assert_eq!(r.json()["alpn"], "h2");
    let r = get("/h1-both").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alpn"], serde_json::Value::Null);
}
