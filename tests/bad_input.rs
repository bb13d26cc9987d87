//! The bad-input corpus: raw bytes over real TLS to a running Gatehouse. Each case checks the
//! specific log line (and metric where one exists), that the offending connection is closed
//! or answered with the right status, and that a well-behaved HTTP client and an open
//! JSON-RPC link on the same port are unaffected.

mod common;

use bytes::BytesMut;
use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::cluster::codec;
use gatehouse::pki::{self, CertSpec};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Link = tokio_boring::SslStream<TcpStream>;

const HEARTBEAT: &[u8] = br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Edge {
    pki: Pki,
    gh: Gatehouse,
    port: u16,
    web: Upstream,
    _sink: Sink,
    dir: tempfile::TempDir,
}

impl Edge {
    async fn start() -> Edge {
        let dir = tempfile::tempdir().unwrap();
        let rp = RelayPki::new(dir.path());
        // The neighbour is another agent: a second link of agent1 would replace the first
        // (cluster.limits.max_links_per_identity).
        rp.pki.issue("agent2", CertSpec::new("agent2"));
        rp.pki
            .ca
            .issue(&CertSpec::new("agent2"))
            .unwrap()
            .write(&rp.ids, "agent2")
            .unwrap();
        let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
        let web = Upstream::h1(None, Behavior::Echo).await;
        let port = reserved_port();
        let limits = Limits::default()
            .message_size("64KiB")
            .anonymous_message_size("4KiB")
            .idle_timeout("2s")
            .anonymous_idle_timeout("2s");
        let conf = Conf::new()
            .listener(
                rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster])
                    .first_byte_timeout("1s")
                    .header_timeout("1s"),
            )
            .upstream("web", Group::new(web.addr))
            .upstream("master", rp.master(sink.addr))
            .route(Route::new("web", "web"))
            .route(
                Route::new("kea", "web")
                    .path("/kea")
                    .kea(KeaRoute::allow_all().max_body("4KiB")),
            )
            .cluster(rp.cluster("master").limits(limits))
            .metrics(reserved_port());
        let gh = Gatehouse::start(dir.path(), &conf);
        Edge {
            pki: rp.pki,
            gh,
            port,
            web,
            _sink: sink,
            dir,
        }
    }

    fn agent(&self) -> ClientOpts {
        ClientOpts {
            ca: Some(self.pki.ca_path()),
            cert: Some(self.pki.paths("agent1")),
            sni: Some("master1".into()),
            tls12: false,
        }
    }

    fn anon(&self) -> ClientOpts {
        ClientOpts {
            cert: None,
            ..self.agent()
        }
    }

    /// A client whose certificate is `cert` (written to the temp dir as `name`).
    fn with_cert(&self, name: &str, cert: &pki::Issued) -> ClientOpts {
        let (c, k) = cert.write(self.dir.path(), name).unwrap();
        ClientOpts {
            cert: Some((c, k)),
            sni: Some("localhost".into()),
            ..self.agent()
        }
    }

    async fn metrics(&self) -> String {
        self.gh.metrics_text().await
    }

    /// An open cluster link of another agent (agent2) that has spoken (a heartbeat, echoed by
    /// the master).
    async fn neighbour(&self) -> tokio_boring::SslStream<TcpStream> {
        let agent2 = ClientOpts {
            cert: Some(self.pki.paths("agent2")),
            ..self.agent()
        };
        let mut link = tls_connect(addr(self.port), &agent2).await.unwrap();
        link.write_all(&codec::encode(HEARTBEAT)).await.unwrap();
        assert!(read_frame(&mut link, Duration::from_secs(5))
            .await
            .is_some());
        link
    }

    /// The well-behaved neighbours still work: an HTTP request and a heartbeat on `link`.
    async fn still_healthy(&self, link: &mut tokio_boring::SslStream<TcpStream>, case: &str) {
        let r = request(
            addr(self.port),
            Some(&self.agent()),
            "GET",
            "/healthy",
            &[],
            b"",
        )
        .await;
        assert_eq!(
            r.map(|r| r.status).ok(),
            Some(200),
            "{case}: HTTP neighbour broke"
        );
        link.write_all(&codec::encode(HEARTBEAT)).await.unwrap();
        let got = read_frame(link, Duration::from_secs(5)).await;
        assert_eq!(
            got.as_deref(),
            Some(&codec::encode(HEARTBEAT)[..]),
            "{case}: JSON-RPC neighbour broke"
        );
        assert!(
            Path::new(&format!("/proc/{}", self.gh.pid())).exists(),
            "{case}: the process died"
        );
    }
}

async fn read_frame<S: tokio::io::AsyncRead + Unpin>(s: &mut S, t: Duration) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + t;
    loop {
        if let Ok(Some(f)) = codec::decode(&mut buf, 1 << 20) {
            return Some(f.raw().to_vec());
        }
        match tokio::time::timeout_at(deadline, s.read_buf(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Sends raw bytes over TCP (no TLS) and reads whatever comes back until close.
async fn raw_tcp(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netstring_and_message_corpus() {
    let e = Edge::start().await;
    let mut neighbour = e.neighbour().await;
    framing_errors_close_the_link(&e, &mut neighbour).await;
    a_frame_split_per_byte_is_fine(&e).await;
    bad_payloads_are_dropped_or_close(&e, &mut neighbour).await;
    // Last: it outlasts the 2 s idle limit that would also close the quiet neighbour.
    a_stalled_frame_is_closed_by_the_idle_limit(&e).await;
}

/// Framing errors close even an authenticated link; counted apart: five broken frames, one
/// over the limit.
async fn framing_errors_close_the_link(e: &Edge, neighbour: &mut Link) {
    let framing: &[(&str, &[u8], &str)] = &[
        ("10 digits", b"1234567890:", "longer than 9 digits"),
        ("leading zero", b"05:hello,", "leading zero"),
        ("empty length", b":x,", "empty length"),
        ("non-digit before ':'", b"12a:", "contains byte 0x61"),
        ("missing ','", b"5:hello;", "not terminated by ','"),
        (
            "over the limit",
            b"70000:",
            "exceeds the limit of 65536 bytes",
        ),
    ];
    for (case, bytes, log) in framing {
        // Mid-link, after a good frame: the first byte of a link is the demux's to judge.
        let mut s = tls_connect(addr(e.port), &e.agent()).await.unwrap();
        s.write_all(&codec::encode(HEARTBEAT)).await.unwrap();
        assert!(
            read_frame(&mut s, Duration::from_secs(5)).await.is_some(),
            "{case}: link not up"
        );
        s.write_all(bytes).await.unwrap();
        assert!(
            closed_within(&mut s, Duration::from_secs(3)).await,
            "{case}: not closed"
        );
        e.gh.wait_log(log);
        e.still_healthy(neighbour, case).await;
    }
    let m = e.metrics().await;
    for (verdict, n) in [("malformed", 5), ("too_large", 1)] {
        let series = format!(
            r#"gatehouse_cluster_messages_total{{direction="upstream",method="other",verdict="{verdict}"}} {n}"#
        );
        assert!(m.lines().any(|l| l == series), "no `{series}` in:\n{m}");
    }
}

async fn a_frame_split_per_byte_is_fine(e: &Edge) {
    let mut s = tls_connect(addr(e.port), &e.agent()).await.unwrap();
    for b in codec::encode(HEARTBEAT) {
        s.write_all(&[b]).await.unwrap();
        s.flush().await.unwrap();
    }
    assert_eq!(
        read_frame(&mut s, Duration::from_secs(5)).await,
        Some(codec::encode(HEARTBEAT))
    );
}

/// Bad payloads: dropped (and counted) on an authenticated link, which stays up, and close
/// an anonymous one.
async fn bad_payloads_are_dropped_or_close(e: &Edge, neighbour: &mut Link) {
    let deep = format!(
        "{{\"method\":\"x\",\"p\":{}{}}}",
        "[".repeat(32),
        "]".repeat(32)
    );
    let payloads: &[(&str, Vec<u8>, &str)] = &[
        (
            "invalid UTF-8",
            b"{\"method\":\"\xff\xfe\"}".to_vec(),
            "invalid UTF-8",
        ),
        ("invalid JSON", b"{\"method\":".to_vec(), "unexpected end"),
        ("JSON array", b"[1,2,3]".to_vec(), "not a JSON object"),
        ("depth 33", deep.into_bytes(), "nested deeper than 32"),
    ];
    for (case, payload, log) in payloads {
        // A link of its own per case: a link's malformed lines are sampled (one per 10 s).
        // It opens with a valid message (a link is relayed only after one).
        let mut s = tls_connect(addr(e.port), &e.agent()).await.unwrap();
        s.write_all(&codec::encode(HEARTBEAT)).await.unwrap();
        assert!(
            read_frame(&mut s, Duration::from_secs(5)).await.is_some(),
            "{case}: no link"
        );
        s.write_all(&codec::encode(payload)).await.unwrap();
        s.write_all(&codec::encode(HEARTBEAT)).await.unwrap();
        assert_eq!(
            read_frame(&mut s, Duration::from_secs(5)).await,
            Some(codec::encode(HEARTBEAT)),
            "{case}: link lost"
        );
        let line = e.gh.wait_log(log);
        assert!(
            line.contains("dropped a malformed upstream message"),
            "{case}: {line}"
        );
    }
    for (case, payload, _) in payloads {
        let mut a = tls_connect(addr(e.port), &e.anon()).await.unwrap();
        a.write_all(&codec::encode(payload)).await.unwrap();
        assert!(
            closed_within(&mut a, Duration::from_secs(3)).await,
            "anonymous {case}: not closed"
        );
        e.still_healthy(neighbour, case).await;
    }
    let m = e.metrics().await;
    assert!(m.contains(r#"gatehouse_cluster_messages_total{direction="upstream",method="other",verdict="malformed"}"#), "{m}");
}

/// A length that promises more than is ever sent is closed by the idle limit.
async fn a_stalled_frame_is_closed_by_the_idle_limit(e: &Edge) {
    let mut s = tls_connect(addr(e.port), &e.agent()).await.unwrap();
    s.write_all(b"100:{\"method\":").await.unwrap();
    assert!(
        closed_within(&mut s, Duration::from_secs(6)).await,
        "stalled frame not closed"
    );
    // Neither side sent a whole message, so the client's and the upstream's idle limits run
    // out together and either may be the one logged.
    e.gh.wait_log("no message from the ");
    let r = request(
        addr(e.port),
        Some(&e.agent()),
        "GET",
        "/after-stall",
        &[],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_and_certificate_corpus() {
    let e = Edge::start().await;
    let mut neighbour = e.neighbour().await;
    tls_garbage_is_closed_unanswered(&e, &mut neighbour).await;

    // No first byte after the handshake: closed after first_byte_timeout (1s), counted.
    let mut quiet = tls_connect(addr(e.port), &e.agent()).await.unwrap();
    assert!(closed_within(&mut quiet, Duration::from_secs(4)).await);
    e.gh.wait_log("sent nothing within 1s");

    unverifiable_certificates_are_anonymous(&e).await;
    hostile_cns_forge_nothing(&e).await;
    e.still_healthy(&mut neighbour, "certificates").await;
}

/// TLS garbage and plain HTTP on the TLS port: no TLS, no answer but a close.
async fn tls_garbage_is_closed_unanswered(e: &Edge, neighbour: &mut Link) {
    let out = raw_tcp(
        e.port,
        &[0x16, 0x03, 0x01, 0xff, 0xff, 0xde, 0xad, 0xbe, 0xef],
    )
    .await;
    assert!(
        !out.starts_with(b"HTTP"),
        "garbage must not be answered as HTTP"
    );
    let out = raw_tcp(e.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        !out.starts_with(b"HTTP"),
        "plain HTTP on the TLS port must not be served"
    );
    e.gh.wait_log("handshake");
    e.still_healthy(neighbour, "TLS garbage").await;
}

/// Certificates that do not verify: served as anonymous (optional mode), counted by reason.
async fn unverifiable_certificates_are_anonymous(e: &Edge) {
    let expired = e
        .pki
        .ca
        .issue(&CertSpec::new("old").validity(-30 * 86400, -86400))
        .unwrap();
    let future = e
        .pki
        .ca
        .issue(&CertSpec::new("early").validity(86400, 30 * 86400))
        .unwrap();
    let stranger = pki::self_signed(&CertSpec::new("stranger")).unwrap();
    for (name, cert, reason) in [
        ("expired", &expired, "expired"),
        ("future", &future, "expired"),
        ("stranger", &stranger, "unknown_ca"),
    ] {
        let o = e.with_cert(name, cert);
        let r = request(
            addr(e.port),
            Some(&o),
            "GET",
            &format!("/cert-{name}"),
            &[],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{name}");
        let line = e.gh.wait_log(&format!("path=/cert-{name}"));
        assert!(line.contains("cn=-"), "{name} must be anonymous: {line}");
        let m = e.metrics().await;
        assert!(
            m.contains(&format!("gatehouse_tls_client_verify_failures_total{{listener=\"edge\",reason=\"{reason}\"}}")),
            "{name}: {m}"
        );
    }
}

/// A CA-signed CN with a line break cannot forge log lines; a wildcard CN is no file name.
async fn hostile_cns_forge_nothing(e: &Edge) {
    let evil = e
        .pki
        .ca
        .issue(&CertSpec::new("agent\nlistener=forged"))
        .unwrap();
    let o = e.with_cert("evil", &evil);
    let r = request(addr(e.port), Some(&o), "GET", "/evil-cn", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let line = e.gh.wait_log("path=/evil-cn");
    assert!(line.contains(r"cn=agent\nlistener=forged"), "{line}");
    assert!(
        !e.gh
            .log_text()
            .lines()
            .any(|l| l.starts_with("listener=forged")),
        "a forged log line appeared"
    );
    let star = e.pki.ca.issue(&CertSpec::new("*")).unwrap();
    let mut o = e.with_cert("star", &star);
    o.sni = Some("master1".into());
    let mut s = tls_connect(addr(e.port), &o).await.unwrap();
    s.write_all(&codec::encode(HEARTBEAT)).await.unwrap();
    assert!(closed_within(&mut s, Duration::from_secs(3)).await);
    e.gh.wait_log("is not usable as a file name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_corpus() {
    let e = Edge::start().await;
    let mut neighbour = e.neighbour().await;
    let mut o_web = e.agent();
    o_web.sni = Some("localhost".into());

    smuggled_requests_never_reach_the_origin(&e, &o_web).await;
    oversized_requests_are_refused_unforwarded(&e, &o_web).await;
    // (Links idle out after 2 s here: the neighbour speaks between the slower cases below.)
    e.still_healthy(&mut neighbour, "smuggling, big headers, Kea body")
        .await;
    slowloris_heads_are_cut(&e, &o_web, &mut neighbour).await;

    // A spoofed X-Forwarded-Client-Cert never reaches the origin.
    let r = request(
        addr(e.port),
        Some(&o_web),
        "GET",
        "/xfcc",
        &[("X-Forwarded-Client-Cert", "Hash=00;Subject=\"CN=root\"")],
        b"",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let last = e
        .web
        .seen()
        .into_iter()
        .rfind(|s| s.path == "/xfcc")
        .unwrap();
    assert_eq!(last.header("x-forwarded-client-cert"), None);

    e.still_healthy(&mut neighbour, "HTTP corpus").await;
}

/// Request smuggling: both Content-Length and Transfer-Encoding, or two Content-Lengths.
async fn smuggled_requests_never_reach_the_origin(e: &Edge, o_web: &ClientOpts) {
    let before = e.web.seen().len();
    let r = request(
        addr(e.port),
        Some(o_web),
        "POST",
        "/smuggle-clte",
        &[("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let seen = e.web.seen();
    assert!(
        !seen.iter().any(|s| s.path == "/smuggled"),
        "a smuggled request reached the origin"
    );
    for s in &seen[before..] {
        assert!(
            !(s.header("content-length").is_some() && s.header("transfer-encoding").is_some()),
            "origin got ambiguous framing: {:?}",
            s.headers
        );
    }
    if let Ok(r) = r {
        assert!(
            r.status == 400 || r.status == 200,
            "CL+TE answered {}",
            r.status
        );
    }
    let mut raw = b"POST /dup-cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 9\r\nConnection: close\r\n\r\nabc".to_vec();
    raw.extend_from_slice(b"GET /smuggled2 HTTP/1.1\r\nHost: x\r\n\r\n");
    let resp = tls_raw(addr(e.port), o_web, &raw).await;
    assert!(
        resp.starts_with(b"HTTP/1.1 400"),
        "duplicate Content-Length: {}",
        String::from_utf8_lossy(&resp[..resp.len().min(80)])
    );
    assert!(!e
        .web
        .seen()
        .iter()
        .any(|s| s.path == "/smuggled2" || s.path == "/dup-cl"));
}

/// Oversized headers refused, a huge body to a Kea route 413: the origin never sees them.
async fn oversized_requests_are_refused_unforwarded(e: &Edge, o_web: &ClientOpts) {
    let big = "a".repeat(2 << 20);
    let r = request(
        addr(e.port),
        Some(o_web),
        "GET",
        "/big-header",
        &[("X-Big", &big)],
        b"",
    )
    .await;
    assert!(
        r.map(|r| r.status >= 400).unwrap_or(true),
        "a 2 MiB header was accepted"
    );
    assert!(!e.web.seen().iter().any(|s| s.path == "/big-header"));

    let r = request(
        addr(e.port),
        Some(o_web),
        "POST",
        "/kea",
        &[("Content-Type", "application/json")],
        &vec![b' '; 1 << 20],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 413);
    assert!(!e.web.seen().iter().any(|s| s.path == "/kea"));
}

/// Sends `first`, then a header line every 300 ms until the server closes: whether it closed
/// and how long that took.
async fn trickle(mut s: Link, first: &'static [u8]) -> (bool, Duration) {
    let t0 = std::time::Instant::now();
    s.write_all(first).await.unwrap();
    for i in 0..20 {
        // The pace of a slowloris client: each line well within header_timeout on its own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
        if closed_within(&mut s, Duration::from_millis(1)).await {
            break;
        }
    }
    let closed = closed_within(&mut s, Duration::from_secs(2)).await;
    (closed, t0.elapsed())
}

/// Slowloris: a head trickling in (a header line every 300 ms) is cut at header_timeout
/// (1 s), on a fresh connection and on a keep-alive one after a complete request; a head
/// sent slowly but whole within the limit is served.
async fn slowloris_heads_are_cut(e: &Edge, o_web: &ClientOpts, neighbour: &mut Link) {
    let s = tls_connect(addr(e.port), o_web).await.unwrap();
    let (closed, took) = trickle(s, b"GET /slow HTTP/1.1\r\nHost: localhost\r\n").await;
    assert!(
        closed && took < Duration::from_secs(4),
        "slowloris head held the connection ({took:?})"
    );
    e.still_healthy(neighbour, "slowloris").await;
    let mut s = tls_connect(addr(e.port), o_web).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let (closed, took) = trickle(s, b"GET /slow2 HTTP/1.1\r\nHost: localhost\r\n").await;
    assert!(
        closed && took < Duration::from_secs(4),
        "keep-alive slowloris held the connection ({took:?})"
    );
    e.still_healthy(neighbour, "keep-alive slowloris").await;
    a_slow_but_whole_head_is_served(e, o_web).await;
    assert!(!e
        .web
        .seen()
        .iter()
        .any(|s| s.path == "/slow" || s.path == "/slow2"));
    e.gh.wait_log("did not finish a request head within 1s");
    assert!(
        e.metrics()
            .await
            .contains(r#"gatehouse_http_header_timeouts_total{listener="edge"} 2"#),
        "{}",
        e.metrics().await
    );
}

async fn a_slow_but_whole_head_is_served(e: &Edge, o_web: &ClientOpts) {
    let mut s = tls_connect(addr(e.port), o_web).await.unwrap();
    for part in [
        &b"GET /slow-but-fine HTTP/1.1\r\n"[..],
        b"Host: localhost\r\n",
        b"Connection: close\r\n\r\n",
    ] {
        s.write_all(part).await.unwrap();
        // Three parts 250 ms apart: slow, but the whole head within header_timeout (1 s).
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// Writes raw bytes over TLS and reads until the server closes (or 5 s).
async fn tls_raw(a: SocketAddr, o: &ClientOpts, bytes: &[u8]) -> Vec<u8> {
    let mut s = tls_connect(a, o).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    out
}
