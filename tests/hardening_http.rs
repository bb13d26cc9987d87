//! HTTP-side hardening, end to end over real TLS: the request-head deadline with leading
//! empty lines, idle keep-alive limits (HTTP/1.1 and HTTP/2), path normalisation before
//! routing, RFC 4514 subjects in `X-Forwarded-Client-Cert` and forged XFCC spellings, log
//! lines that no client-controlled value can split, and the bounds on slow parties once a head
//! is in: request bodies (`body_timeout`, HTTP/1 and HTTP/2), streams per HTTP/2 connection,
//! clients that stop reading (`send_timeout`), upstreams that drip (`answer_timeout`), and
//! pipelined HTTP/1 requests answered in order.

mod common;

use boring::hash::MessageDigest;
use bytes::Bytes;
use common::*;
use gatehouse::pki::CertSpec;
use serde_json::Value;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every await of a test is bounded by this.
const T: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {T:?}"))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Edge PKI: a server certificate for localhost/127.0.0.1 and client certificates.
fn edge_pki(dir: &Path) -> Pki {
    let pki = Pki::new(dir, "edge");
    pki.server("server", &[]);
    for cn in ["alice", "admin", "viewer"] {
        pki.issue(cn, CertSpec::new(cn));
    }
    pki
}

/// One TLS listener named `name` (client certificates optional).
fn listener(name: &str, port: u16, pki: &Pki) -> Listener {
    Listener::new(name, port).tls(ListenerTls::from_pki(pki, "server", ClientAuth::Optional))
}

/// Listeners `listeners` in front of the origin `web` (upstream `web`), routes to be added.
fn web_conf(web: &Upstream, listeners: impl IntoIterator<Item = Listener>) -> Conf {
    let conf = Conf::new().upstream("web", Group::new(web.addr));
    listeners.into_iter().fold(conf, Conf::listener)
}

fn client(pki: &Pki, who: Option<&str>) -> ClientOpts {
    ClientOpts {
        ca: Some(pki.ca_path()),
        cert: who.map(|w| pki.paths(w)),
        sni: Some("localhost".into()),
        tls12: false,
    }
}

async fn connect(port: u16, o: &ClientOpts) -> tokio_boring::SslStream<TcpStream> {
    within("TLS connect", tls_connect(addr(port), o))
        .await
        .expect("TLS connection to Gatehouse")
}

async fn get(port: u16, o: &ClientOpts, path: &str, headers: &[(&str, &str)]) -> Response {
    within(
        path,
        request(addr(port), Some(o), "GET", path, headers, b""),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Writes one keep-alive GET (no `Connection: close`) and reads its response.
async fn keepalive_get<S: AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    path: &str,
) -> Result<Response, String> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    match tokio::time::timeout(T, s.write_all(req.as_bytes())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("write: {e}")),
        Err(_) => return Err("write timed out".into()),
    }
    read_response(s, buf).await
}

/// An HTTP/2 connection (TLS, ALPN h2, no client certificate); the connection runs in a task.
async fn h2_connect(
    port: u16,
    pki: &Pki,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    use boring::ssl::{SslConnector, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(pki.ca_path()).unwrap();
    b.set_alpn_protos(b"\x02h2").unwrap();
    let cfg = b.build().configure().unwrap();
    let tcp = within("tcp connect", TcpStream::connect(addr(port)))
        .await
        .unwrap();
    let tls = within(
        "tls handshake",
        tokio_boring::connect(cfg, "localhost", tcp),
    )
    .await
    .expect("TLS handshake with Gatehouse");
    assert_eq!(tls.ssl().selected_alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = within("h2 handshake", h2::client::handshake(tls))
        .await
        .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// An HTTP/2 GET; returns the status after reading the whole body.
async fn h2_get(send: &h2::client::SendRequest<Bytes>, port: u16, path: &str) -> u16 {
    let mut send = within("h2 ready", send.clone().ready())
        .await
        .expect("h2 connection ready");
    let req = http::Request::builder()
        .method("GET")
        .uri(format!("https://localhost:{port}{path}"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).expect("h2 send_request");
    let resp = within("h2 response", resp).await.expect("h2 response");
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    while let Some(chunk) = within("h2 body", body.data()).await {
        let chunk = chunk.expect("h2 body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    status
}

/// An HTTP/2 POST to `path` whose body is left open: the answer to come and the body's sender.
async fn h2_post(
    send: h2::client::SendRequest<Bytes>,
    port: u16,
    path: &str,
) -> (h2::client::ResponseFuture, h2::SendStream<Bytes>) {
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{port}{path}"))
        .body(())
        .unwrap();
    send.send_request(req, false).unwrap()
}

/// `gatehouse_http_header_timeouts_total{listener="<listener>"}` (the name in docs/metrics.md; 0 when
/// absent). `gatehouse_http_head_timeouts_total` is read too, should the family be renamed.
async fn head_timeouts(gh: &Gatehouse, listener: &str) -> u64 {
    let m = within("metrics", gh.metrics_text()).await;
    [
        "gatehouse_http_head_timeouts_total",
        "gatehouse_http_header_timeouts_total",
    ]
    .iter()
    .filter_map(|family| {
        let prefix = format!("{family}{{listener=\"{listener}\"}} ");
        m.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
    })
    .map(|v| v as u64)
    .sum()
}

// === 3. request-head deadline ===

/// Empty lines before a request line must not disarm `header_timeout`: a client that sends
/// `\r\n\r\n` and then trickles a head one byte every 300 ms is closed at the deadline (1 s),
/// not earlier, logged and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_empty_lines_do_not_disarm_the_head_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = web_conf(&web, [listener("edge", port, &pki).header_timeout("1s")])
        .route(Route::new("rest", "web").path("/"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let before = head_timeouts(&gh, "edge").await;

    let mut s = connect(port, &client(&pki, None)).await;
    let t0 = Instant::now();
    within("write", s.write_all(b"\r\n\r\n")).await.unwrap();
    let mut closed_at = None;
    for &b in b"GET /trickle HTTP/1.1\r\nHost: x\r\n" {
        if closed_within(&mut s, Duration::from_millis(300)).await {
            closed_at = Some(t0.elapsed());
            break;
        }
        if t0.elapsed() > Duration::from_secs(5) {
            break;
        }
        if within("write", s.write_all(&[b])).await.is_err() {
            closed_at = Some(t0.elapsed());
            break;
        }
    }
    let Some(took) = closed_at else {
        panic!(
            "a head after two empty lines, trickled a byte every 300 ms, was still open after {:?} (header_timeout: 1s)\nlog:\n{}",
            t0.elapsed(),
            gh.log_text()
        );
    };
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}: before header_timeout (1s), so by something else"
    );
    assert!(took <= Duration::from_secs(4), "closed only after {took:?}");
    gh.wait_log("did not finish a request head within 1s");
    assert_eq!(
        head_timeouts(&gh, "edge").await,
        before + 1,
        "head timeout not counted:\n{}",
        within("metrics", gh.metrics_text()).await
    );
    assert!(
        !web.seen().iter().any(|s| s.path == "/trickle"),
        "the unfinished head reached the origin"
    );
}

// === 4. idle keep-alive connections ===

/// `keepalive_timeout: 2s`: an idle HTTP/1.1 keep-alive connection and an idle HTTP/2
/// connection are ended by the server 2–6 s after their last response; on a listener with
/// the defaults (60 s) an idle HTTP/1.1 connection is still usable after 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_end_after_keepalive_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, dport) = (reserved_port(), reserved_port());
    let edge = listener("edge", port, &pki).keepalive_timeout("2s");
    let conf = web_conf(&web, [edge, listener("dflt", dport, &pki)])
        .route(Route::new("rest", "web").path("/"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let anon = client(&pki, None);

    // HTTP/1.1, keepalive_timeout 2s.
    let mut s = connect(port, &anon).await;
    let mut buf = Vec::new();
    let r = keepalive_get(&mut s, &mut buf, "/idle-h1").await.unwrap();
    assert_eq!(r.status, 200);
    assert_ne!(
        r.header("connection").map(str::to_ascii_lowercase),
        Some("close".into()),
        "the first response already closes"
    );
    let t = Instant::now();
    let closed = closed_within(&mut s, Duration::from_millis(6500)).await;
    let idle = t.elapsed();
    assert!(
        closed,
        "idle HTTP/1.1 connection still open {idle:?} after its response (keepalive_timeout: 2s)"
    );
    assert!(
        idle >= Duration::from_millis(1500) && idle <= Duration::from_secs(6),
        "idle HTTP/1.1 connection closed after {idle:?}, want 2–6 s"
    );

    // HTTP/2, keepalive_timeout 2s: the client connection future ends (GOAWAY / EOF).
    let (send, conn) = h2_connect(port, &pki).await;
    assert_eq!(h2_get(&send, port, "/idle-h2").await, 200);
    let t = Instant::now();
    let ended = tokio::time::timeout(Duration::from_millis(6500), conn).await;
    let idle = t.elapsed();
    assert!(
        ended.is_ok(),
        "idle HTTP/2 connection still open {idle:?} after its response (keepalive_timeout: 2s)"
    );
    assert!(
        idle >= Duration::from_millis(1500),
        "idle HTTP/2 connection ended after {idle:?}, before keepalive_timeout"
    );
    drop(send);

    // Defaults: still open after 3 s idle, and still serving.
    let mut s = connect(dport, &anon).await;
    let mut buf = Vec::new();
    let r = keepalive_get(&mut s, &mut buf, "/idle-default")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(
        !closed_within(&mut s, Duration::from_secs(3)).await,
        "with the default keepalive_timeout (60s) an idle connection was closed within 3 s"
    );
    let r = keepalive_get(&mut s, &mut buf, "/idle-default-2")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    drop(gh);
}

/// `keepalive_requests: 3`: the third response on one HTTP/1.1 connection says
/// `Connection: close` and the server closes; a fourth request on it gets no answer. With the
/// defaults (1000) five requests share one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_caps_requests_per_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, dport) = (reserved_port(), reserved_port());
    let edge = listener("edge", port, &pki).keepalive_requests(3);
    let conf = web_conf(&web, [edge, listener("dflt", dport, &pki)])
        .route(Route::new("rest", "web").path("/"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let anon = client(&pki, None);
    let closes = |r: &Response| {
        r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    };

    let mut s = connect(port, &anon).await;
    let mut buf = Vec::new();
    for i in 1..=3 {
        let r = keepalive_get(&mut s, &mut buf, &format!("/capped/{i}"))
            .await
            .unwrap_or_else(|e| panic!("request {i} on one connection: {e}"));
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(
            closes(&r),
            i == 3,
            "request {i} of keepalive_requests: 3: Connection header {:?}",
            r.header("connection")
        );
    }
    assert!(
        closed_within(&mut s, Duration::from_secs(2)).await,
        "the server kept the connection open after the 3rd response"
    );
    let fourth = keepalive_get(&mut s, &mut buf, "/capped/4").await;
    assert!(fourth.is_err(), "a 4th request was answered: {fourth:?}");
    let capped: Vec<String> = web
        .seen()
        .into_iter()
        .map(|s| s.path)
        .filter(|p| p.starts_with("/capped/"))
        .collect();
    assert_eq!(capped, vec!["/capped/1", "/capped/2", "/capped/3"]);

    let mut s = connect(dport, &anon).await;
    let mut buf = Vec::new();
    for i in 1..=5 {
        let r = keepalive_get(&mut s, &mut buf, &format!("/many/{i}"))
            .await
            .unwrap_or_else(|e| panic!("default listener, request {i}: {e}"));
        assert_eq!(r.status, 200);
        assert!(!closes(&r), "default listener closed after request {i}");
    }
}

// === 5. path normalisation ===

/// Routing sees the normalised path: `/v1//actions`, `/v1/%61ctions`, `/v1/./actions`,
/// `/v1/foo/../actions` and `//v1/actions` are the `actions` route (admin only); the origin
/// gets the normalised path with the query untouched; `%2F` stays encoded; `/../etc` is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_normalised_before_routing() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = web_conf(&web, [listener("edge", port, &pki)])
        .route(
            Route::new("actions", "web")
                .path("/v1/actions")
                .allow(["cn:admin"]),
        )
        .route(Route::new("rest", "web").path("/"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let viewer = client(&pki, Some("viewer"));
    let admin = client(&pki, Some("admin"));
    let mut failures = Vec::new();

    // Sanity: the plain spelling is refused to the viewer.
    let r = get(port, &viewer, "/v1/actions/x", &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());

    for path in [
        "/v1//actions/x",
        "/v1/%61ctions/x",
        "/v1/./actions/x",
        "/v1/foo/../actions/x",
        "//v1/actions",
    ] {
        let r = get(port, &viewer, path, &[]).await;
        if r.status != 403
            || !r
                .text()
                .contains("route 'actions' is not allowed for cn=viewer")
        {
            failures.push(format!(
                "viewer {path}: {} {:?}, want 403 route 'actions' is not allowed for cn=viewer",
                r.status,
                r.text().trim()
            ));
        }
    }
    let reached: Vec<String> = web.seen().into_iter().map(|s| s.path).collect();
    if !reached.is_empty() {
        failures.push(format!("the origin saw viewer requests: {reached:?}"));
    }

    // admin passes; the origin sees the normalised path, query as sent.
    let n = web.seen().len();
    let r = get(port, &admin, "/v1//actions/x?a=%2F", &[]).await;
    let seen = web.seen();
    match (r.status, seen.get(n)) {
        (200, Some(s)) if s.path == "/v1/actions/x?a=%2F" => {}
        (status, s) => failures.push(format!(
            "admin /v1//actions/x?a=%2F: {status}, origin saw {:?}, want \"/v1/actions/x?a=%2F\"",
            s.map(|s| &s.path)
        )),
    }

    // An encoded reserved character stays encoded (it is not a path separator).
    let n = web.seen().len();
    let r = get(port, &viewer, "/v1/a%2Fb", &[]).await;
    let seen = web.seen();
    match (r.status, seen.get(n)) {
        (200, Some(s)) if s.path == "/v1/a%2Fb" => {}
        (status, s) => failures.push(format!(
            "viewer /v1/a%2Fb: {status}, origin saw {:?}, want \"/v1/a%2Fb\"",
            s.map(|s| &s.path)
        )),
    }

    // Climbing above the root is a bad request, and never forwarded.
    let n = web.seen().len();
    let r = get(port, &admin, "/../etc", &[]).await;
    if r.status != 400 || web.seen().len() != n {
        failures.push(format!(
            "/../etc: {} (origin saw {:?}), want 400 and nothing forwarded",
            r.status,
            web.seen().get(n).map(|s| &s.path)
        ));
    }
    assert!(
        failures.is_empty(),
        "path normalisation:\n{}",
        failures.join("\n")
    );
}

// === 6. X-Forwarded-Client-Cert ===

/// RFC 4514: `,` `+` `"` `\` `<` `>` `;` get a backslash (a leading `#` or space and a
/// trailing space too).
fn rfc4514_escape(v: &str) -> String {
    let mut out = String::new();
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Envoy's XFCC quoting: in double quotes, with `"` and `\` backslash-escaped.
fn xfcc_quote(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Splits one XFCC element into `key=value` pairs at `;` outside double quotes (values kept
/// as sent). A `,` outside quotes would start a second element: an error here.
fn xfcc_pairs(v: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    let mut push = |cur: &mut String| -> Result<(), String> {
        let (k, val) = cur
            .split_once('=')
            .ok_or_else(|| format!("pair without '=': {cur:?}"))?;
        pairs.push((k.to_string(), val.to_string()));
        cur.clear();
        Ok(())
    };
    for c in v.chars() {
        if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if !quoted && c == ';' {
            push(&mut cur)?;
            continue;
        } else if !quoted && c == ',' {
            return Err(format!("unquoted ',' splits the element: {v:?}"));
        }
        cur.push(c);
    }
    if quoted || escaped {
        return Err(format!("unterminated quote: {v:?}"));
    }
    push(&mut cur)?;
    Ok(pairs)
}

/// Undoes [`xfcc_quote`].
fn xfcc_unquote(v: &str) -> Result<String, String> {
    let inner = v
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .ok_or_else(|| format!("not a quoted value: {v:?}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push(chars.next().ok_or("trailing backslash")?),
            '"' => return Err(format!("unescaped '\"' inside quotes: {v:?}")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Parses an RFC 4514 DN strictly into `(type, value)` attributes; a multi-valued RDN (`+`)
/// or a character that must be escaped but is not is an error.
fn rfc4514_parse(dn: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let bytes = dn.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let eq = dn[i..]
            .find('=')
            .ok_or_else(|| format!("no '=' after byte {i} in {dn:?}"))?;
        let key = dn[i..i + eq].to_string();
        i += eq + 1;
        let mut val = Vec::new();
        loop {
            match bytes.get(i) {
                None => break,
                Some(b',') => {
                    i += 1;
                    break;
                }
                Some(b'\\') => {
                    let next = *bytes
                        .get(i + 1)
                        .ok_or_else(|| format!("trailing backslash in {dn:?}"))?;
                    if b",+\"\\<>;=# ".contains(&next) {
                        val.push(next);
                        i += 2;
                    } else {
                        let hex = dn
                            .get(i + 1..i + 3)
                            .and_then(|h| u8::from_str_radix(h, 16).ok())
                            .ok_or_else(|| {
                                format!("invalid escape '\\{}' in {dn:?}", char::from(next))
                            })?;
                        val.push(hex);
                        i += 3;
                    }
                }
                Some(&b) if b"+\";<>".contains(&b) => {
                    return Err(format!(
                        "unescaped '{}' at byte {i} of {dn:?}",
                        char::from(b)
                    ))
                }
                Some(&b) => {
                    val.push(b);
                    i += 1;
                }
            }
        }
        out.push((
            key,
            String::from_utf8(val).map_err(|e| format!("value is not UTF-8: {e}"))?,
        ));
    }
    Ok(out)
}

fn fingerprint(pki: &Pki, who: &str) -> String {
    let pem = std::fs::read(pki.paths(who).0).unwrap();
    let cert = boring::x509::X509::from_pem(&pem).unwrap();
    cert.digest(MessageDigest::sha256())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every header the origin saw whose name is `x-forwarded-client-cert` once `_` is read as
/// `-` and case is ignored.
fn xfcc_like(headers: &[(String, String)]) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(k, _)| k.to_ascii_lowercase().replace('_', "-") == "x-forwarded-client-cert")
        .cloned()
        .collect()
}

/// A subject CN full of DN syntax reaches the origin as one XFCC header whose Subject is the
/// RFC 4514 DN (`CN=a\,b\;c=\"d\"\\e…`), then quoted Envoy-style; parsed back it is the CN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xfcc_subject_is_rfc4514_escaped_then_quoted() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let odd_cn = r#"a,b;c="d"\e+f<g>h"#;
    pki.issue("odd", CertSpec::new(odd_cn));
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = web_conf(&web, [listener("edge", port, &pki)])
        .route(Route::new("xfcc", "web").path("/").xfcc());
    let _gh = Gatehouse::start(tmp.path(), &conf);

    for (who, cn) in [("alice", "alice"), ("odd", odd_cn)] {
        let path = format!("/who/{who}");
        let r = get(port, &client(&pki, Some(who)), &path, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = web.seen().into_iter().rfind(|s| s.path == path).unwrap();
        let headers = xfcc_like(&seen.headers);
        assert_eq!(
            headers.len(),
            1,
            "{who}: want exactly one XFCC header: {headers:?}"
        );
        let value = &headers[0].1;
        let pairs = xfcc_pairs(value).unwrap_or_else(|e| panic!("{who}: XFCC {value:?}: {e}"));
        let field = |k: &str| {
            pairs
                .iter()
                .filter(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Hash"), vec![fingerprint(&pki, who)], "{value}");
        let subject = field("Subject");
        assert_eq!(subject.len(), 1, "{who}: one Subject in {value}");
        let dn = xfcc_unquote(&subject[0]).unwrap_or_else(|e| panic!("{who}: {value}: {e}"));
        let attrs = rfc4514_parse(&dn).unwrap_or_else(|e| {
            panic!("{who}: Subject is not an RFC 4514 DN ({e}); XFCC: {value}")
        });
        assert_eq!(
            attrs,
            vec![("CN".to_string(), cn.to_string())],
            "{who}: Subject parsed back; XFCC: {value}"
        );
        assert_eq!(
            subject[0],
            xfcc_quote(&format!("CN={}", rfc4514_escape(cn))),
            "{who}: Subject as sent; XFCC: {value}"
        );
    }
}

/// `X-Forwarded-Client-Cert` in any spelling (`_` for `-`, any case) never reaches the
/// origin from a client: on a route with `forward_identity: xfcc` only Gatehouse's own
/// header arrives, on a route without it none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_xfcc_in_any_spelling_never_reaches_the_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = web_conf(&web, [listener("edge", port, &pki)])
        .route(Route::new("xfcc", "web").path("/xfcc").xfcc())
        .route(Route::new("plain", "web").path("/"));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let alice = client(&pki, Some("alice"));
    let hash = fingerprint(&pki, "alice");
    let forged: &[(&str, &str)] = &[
        ("X_Forwarded_Client_Cert", "Hash=forged"),
        ("x_forwarded_client_cert", "forged"),
        ("X-FORWARDED-CLIENT-CERT", "forged"),
    ];
    let mut cases: Vec<Vec<(&str, &str)>> = forged.iter().map(|h| vec![*h]).collect();
    cases.push(forged.to_vec());
    let mut failures = Vec::new();
    for (i, headers) in cases.iter().enumerate() {
        for prefix in ["/xfcc", "/plain"] {
            let path = format!("{prefix}/{i}");
            let r = get(port, &alice, &path, headers).await;
            if r.status != 200 {
                failures.push(format!("{path} {headers:?}: status {}", r.status));
                continue;
            }
            let Some(seen) = web.seen().into_iter().rfind(|s| s.path == path) else {
                failures.push(format!("{path}: never reached the origin"));
                continue;
            };
            let got = xfcc_like(&seen.headers);
            let ok = if prefix == "/xfcc" {
                got.len() == 1
                    && got[0].1.starts_with(&format!("Hash={hash};"))
                    && !got[0].1.contains("forged")
            } else {
                got.is_empty()
            };
            if !ok {
                failures.push(format!("{path} sent {headers:?}: the origin saw {got:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "forged XFCC headers got through:\n{}",
        failures.join("\n")
    );
}

// === 7. log lines ===

/// What a forged line would look like, appended after a line break in a value.
const FORGED: &str = "[2026-01-01T00:00:00Z INFO  gatehouse::audit] {\"forged\":1}";

/// Log lines that do not start the way env_logger starts a line (`[YYYY-MM-DDT…`), or that
/// carry the forged timestamp at their start.
fn foreign_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let b = l.as_bytes();
            let well_formed = b.len() > 12
                && b[0] == b'['
                && b[1..5].iter().all(u8::is_ascii_digit)
                && b[5] == b'-'
                && b[8] == b'-'
                && b[11] == b'T';
            !well_formed || l.starts_with("[2026-01-01T00:00:00Z")
        })
        .map(str::to_string)
        .collect()
}

/// The message of a log line whose target is `gatehouse::audit` (`[<time> INFO  <target>] `).
fn audit_payload(line: &str) -> Option<&str> {
    let end = line.find("] ")?;
    line[..end]
        .ends_with(" gatehouse::audit")
        .then(|| &line[end + 2..])
}

/// Every audit record must be one JSON object with no `forged` member.
fn check_audit_line(line: &str, problems: &mut Vec<String>) {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) if !m.contains_key("forged") => {}
        Ok(v) => problems.push(format!("audit record with a forged member: {v}")),
        Err(e) => problems.push(format!("audit line is not JSON ({e}): {line:?}")),
    }
}

/// A TLS connection sending `sni` as the server name (the server certificate is not checked).
async fn sni_connect(port: u16, sni: &str) -> tokio_boring::SslStream<TcpStream> {
    use boring::ssl::{SslConnector, SslMethod};
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(boring::ssl::SslVerifyMode::NONE);
    let mut cfg = b.build().configure().unwrap();
    cfg.set_use_server_name_indication(true);
    cfg.set_verify_hostname(false);
    let tcp = within("tcp connect", TcpStream::connect(addr(port)))
        .await
        .unwrap();
    within("tls handshake", tokio_boring::connect(cfg, sni, tcp))
        .await
        .unwrap_or_else(|e| panic!("handshake with SNI {sni:?}: {e}"))
}

/// Sends every vector to a running Gatehouse; returns how many reached a Kea route's
/// decision (each writes exactly one audit record).
async fn send_log_vectors(port: u16, pki: &Pki) -> usize {
    let forged_command = format!("x\n{FORGED}");
    let anon = client(pki, None);
    let alice = client(pki, Some("alice"));
    let evil = client(pki, Some("evil"));
    let mut kea = 0;
    let post = |o: ClientOpts, path: String, body: String| async move {
        within(
            "kea command",
            request(
                addr(port),
                Some(&o),
                "POST",
                &path,
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    };
    let cmd_body = serde_json::json!({ "command": forged_command }).to_string();
    let svc_body =
        serde_json::json!({ "command": "version-get", "service": [forged_command] }).to_string();
    // kea-open forwards (to a dead peer: 502); kea refuses, naming the command or service
    // (alice matches the rule, so the service is checked too).
    for (route, who) in [("/kea-open", &anon), ("/kea", &alice)] {
        for body in [&cmd_body, &svc_body] {
            let r = post(who.clone(), route.into(), body.clone()).await;
            assert!(r.status >= 400, "{route} answered {}", r.status);
            kea += 1;
        }
    }
    // A path with encoded CR LF, on a plain route and on a Kea route (served, or refused as
    // a bad request: either way it is logged, and never decoded into the log).
    let path = "/x%0d%0a[2026-01-01T00:00:00Z%20INFO%20%20gatehouse::audit]%20forged";
    let r = get(port, &anon, &format!("/web{path}"), &[]).await;
    assert!(matches!(r.status, 200 | 400), "{path}: {}", r.text());
    let r = post(
        anon.clone(),
        format!("/kea{path}"),
        r#"{"command":"version-get"}"#.into(),
    )
    .await;
    assert!(matches!(r.status, 403 | 400), "{}", r.text());
    if r.status == 403 {
        kea += 1;
    }
    // Methods: an odd but valid token is proxied; line breaks in one are refused.
    for raw in [
        "F0RGE!#$%&'*+.^_|~ /web/method HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            .to_string(),
        format!("GET\n{FORGED} /web/m2 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        format!("GET\r{FORGED} /web/m3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    ] {
        let mut s = connect(port, &anon).await;
        within("write", s.write_all(raw.as_bytes())).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    }
    // SNI with a line break (BoringSSL's client and server accept anything but NUL).
    let mut s = sni_connect(port, &format!("x\n{FORGED}")).await;
    let raw = format!(
        "POST /kea HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{cmd_body}",
        cmd_body.len()
    );
    within("write", s.write_all(raw.as_bytes())).await.unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf)
        .await
        .expect("a client with a line break in its SNI is served");
    assert_eq!(r.status, 403, "{}", r.text());
    kea += 1;
    // A verified client certificate whose CN has a line break.
    let r = get(port, &evil, "/web/evil", &[]).await;
    assert_eq!(r.status, 200);
    let r = post(
        evil.clone(),
        "/kea".into(),
        r#"{"command":"config-set","service":["dhcp4"]}"#.into(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.text());
    kea += 1;
    kea
}

/// No client-controlled value (Kea command, service, path, method, SNI, certificate CN) can
/// start a new line in the process log, and every audit record stays one JSON object —
/// with audit records in the process log and in an `audit.path` file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_controlled_values_cannot_start_a_log_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    pki.issue("evil", CertSpec::new(&format!("evil\n{FORGED}")));
    let web = Upstream::h1(None, Behavior::Echo).await;
    let dead = reserved_port();
    let mut problems = Vec::new();

    for audit_file in [false, true] {
        let dir = tmp.path().join(if audit_file { "file" } else { "target" });
        std::fs::create_dir_all(&dir).unwrap();
        let port = reserved_port();
        let mut conf = log_vector_conf(&web, &pki, port, dead);
        if audit_file {
            conf = conf.audit_path(dir.join("audit.jsonl"));
        }
        let gh = Gatehouse::start(&dir, &conf);
        let kea_requests = send_log_vectors(port, &pki).await;
        // The last access line, and an audit record for every Kea request: all the vectors
        // are in the log and the audit by now.
        gh.wait_log("/web/evil");
        let audit_lines = || -> Vec<String> {
            if audit_file {
                std::fs::read_to_string(dir.join("audit.jsonl"))
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect()
            } else {
                gh.log_text()
                    .lines()
                    .filter_map(audit_payload)
                    .map(str::to_string)
                    .collect()
            }
        };
        holds_within(T, || audit_lines().len() >= kea_requests).await;
        let log = gh.log_text();
        let audit_lines = audit_lines();
        let case = if audit_file {
            "audit.path"
        } else {
            "audit in the log"
        };
        check_log_vectors(case, &log, &audit_lines, kea_requests, &mut problems);
        drop(gh);
    }
    assert!(
        problems.is_empty(),
        "log injection:\n{}",
        problems.join("\n")
    );
}

/// Listener `edge` on `port`: `/web` to the origin, `/kea-open` (any command) and `/kea`
/// (`version-get` on dhcp4 only) to `dead`, where nobody listens.
fn log_vector_conf(web: &Upstream, pki: &Pki, port: u16, dead: u16) -> Conf {
    let kea = KeaRoute::deny_by_default().rule(
        KeaRule::new(["cn:*"])
            .commands(AllowDeny::only(["version-get"]))
            .services(AllowDeny::only(["dhcp4"])),
    );
    web_conf(web, [listener("edge", port, pki)])
        .upstream("dead", Group::new(local(dead)).connect_timeout("1s"))
        .route(Route::new("web", "web").path("/web"))
        .route(
            Route::new("kea-open", "dead")
                .path("/kea-open")
                .kea(KeaRoute::allow_all()),
        )
        .route(Route::new("kea", "dead").path("/kea").kea(kea))
}

/// After [`send_log_vectors`]: the vectors were logged at all (escaped) — a refusal naming
/// the forged command, and the encoded path as sent —, none started a line of its own, and
/// `audit_lines` hold one well-formed record per Kea request.
fn check_log_vectors(
    case: &str,
    log: &str,
    audit_lines: &[String],
    kea_requests: usize,
    problems: &mut Vec<String>,
) {
    if !log
        .lines()
        .any(|l| l.contains("is not allowed for") && l.contains("forged"))
    {
        problems.push(format!("{case}: no refusal line names the forged command"));
    }
    if !log
        .lines()
        .any(|l| l.contains("gatehouse::access") && l.to_ascii_lowercase().contains("/x%0d%0a"))
    {
        problems.push(format!(
            "{case}: no access line with the percent-encoded path as sent"
        ));
    }
    for l in foreign_lines(log) {
        problems.push(format!("{case}: a value started a log line: {l:?}"));
    }
    if audit_lines.len() != kea_requests {
        problems.push(format!(
            "{case}: {} audit records for {kea_requests} Kea requests: {audit_lines:#?}",
            audit_lines.len()
        ));
    }
    for l in audit_lines {
        check_audit_line(l, problems);
    }
}

// === 5. slow clients and slow upstreams (hardening round 3) ===

/// A plain-HTTP origin on 127.0.0.1 that reads a request head and then runs `serve` on the
/// connection (a dripping or endless answer); what each connection reports goes to the channel.
async fn raw_origin<F, Fut>(serve: F) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>)
where
    F: Fn(TcpStream, tokio::sync::mpsc::UnboundedSender<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let serve = std::sync::Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let (serve, tx) = (serve.clone(), tx.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut b = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                serve(s, tx).await
            });
        }
    });
    (at, rx)
}

/// Reads until the server closes (or `t` passes): the bytes, and whether it closed.
async fn read_until_close<S: AsyncRead + Unpin>(s: &mut S, t: Duration) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    let closed = tokio::time::timeout(t, async {
        let mut b = [0u8; 4096];
        loop {
            match s.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&b[..n]),
            }
        }
    })
    .await
    .is_ok();
    (all, closed)
}

async fn client_timeouts(gh: &Gatehouse, phase: &str) -> f64 {
    let m = within("metrics", gh.metrics_text()).await;
    metric(
        &m,
        "gatehouse_http_client_timeouts_total",
        &[("listener", "edge"), ("phase", phase)],
    )
}

/// `body_timeout: 1s` against an origin whose `read_timeout` is 20 s: an HTTP/1 request body
/// that stops after 10 of its 100 bytes is answered `408` about a second later, and an HTTP/2
/// stream whose body stops ends its connection as soon; both counted as `phase="body"`.
/// (Without the bound both waited for the origin's 20 s, holding an upstream connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_ends_at_body_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = web_conf(&web, [listener("edge", port, &pki).body_timeout("1s")])
        .route(
            Route::new("kea", "web")
                .path("/kea")
                .kea(KeaRoute::allow_all()),
        )
        .route(Route::new("rest", "web").path("/"))
        .metrics(reserved_port());
    conf.upstream_mut("web").read_timeout = Some("20s".into());
    let gh = Gatehouse::start(tmp.path(), &conf);

    stalled_h1_bodies_get_408(&gh, port, &client(&pki, None)).await;
    a_stalled_h2_body_ends_its_connection(&gh, port, &pki).await;
    assert!(
        client_timeouts(&gh, "body").await >= 3.0,
        "not counted:\n{}",
        within("metrics", gh.metrics_text()).await
    );
    // A body that keeps coming, slower than the origin's patience would like but with
    // gaps under the bound, goes through on both protocols.
    let (send, _conn) = h2_connect(port, &pki).await;
    let (resp, mut body) = h2_post(send, port, "/slow").await;
    for i in 0..4 {
        // Gaps of half the body_timeout: slow but steady.
        tokio::time::sleep(Duration::from_millis(500)).await;
        body.send_data(Bytes::from(vec![b'a'; 10]), i == 3).unwrap();
    }
    let resp = within("h2 slow body answer", resp).await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = web.seen();
    let slow = seen
        .iter()
        .find(|s| s.path == "/slow")
        .expect("the slow body reached the origin");
    assert_eq!(slow.body.len(), 40);
}

/// HTTP/1.1 bodies that stop after their first bytes are answered 408 at body_timeout, on a
/// plain route and on a Kea route (which reads the command body itself).
async fn stalled_h1_bodies_get_408(gh: &Gatehouse, port: u16, anon: &ClientOpts) {
    let mut s = connect(port, anon).await;
    let t0 = Instant::now();
    within(
        "write",
        s.write_all(
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789",
        ),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("HTTP/1 stalled body: {e}\nlog:\n{}", gh.log_text()));
    let took = t0.elapsed();
    assert_eq!(r.status, 408, "a stalled HTTP/1 body: {}", r.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(6),
        "408 after {took:?} (body_timeout 1s, upstream read_timeout 20s)"
    );

    let mut s = connect(port, anon).await;
    let t0 = Instant::now();
    within(
        "write",
        s.write_all(b"POST /kea HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"command\""),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut s, &mut buf)
        .await
        .unwrap_or_else(|e| panic!("Kea route, stalled body: {e}\nlog:\n{}", gh.log_text()));
    assert_eq!(r.status, 408, "a stalled Kea command body: {}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "408 after {:?}",
        t0.elapsed()
    );
}

/// An HTTP/2 stream whose body stops ends its connection at body_timeout, unanswered.
async fn a_stalled_h2_body_ends_its_connection(gh: &Gatehouse, port: u16, pki: &Pki) {
    let (send, conn) = h2_connect(port, pki).await;
    let (resp, mut body) = h2_post(send, port, "/upload").await;
    body.send_data(Bytes::from_static(b"0123456789"), false)
        .unwrap();
    let t0 = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(8), conn).await;
    let took = t0.elapsed();
    assert!(
        ended.is_ok(),
        "an HTTP/2 connection with a stalled body was still open after 8 s (body_timeout 1s)"
    );
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}: before body_timeout"
    );
    assert!(
        within("h2 response", resp).await.is_err(),
        "the stalled stream got an answer"
    );
    gh.wait_log("sent no piece of an HTTP/2 request body within 1s");
}

/// `body_timeout: 1s` with an upstream that takes nothing of an 8 MiB HTTP/2 upload: once the
/// buffers are full Pingora stops reading, the client's flow-control window runs out and it
/// waits: that is the server's stall, not the client's, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_held_back_by_the_server_is_not_a_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Hang).await;
    let port = reserved_port();
    let mut conf = web_conf(&web, [listener("edge", port, &pki).body_timeout("1s")])
        .route(Route::new("rest", "web").path("/"))
        .metrics(reserved_port());
    conf.upstream_mut("web").read_timeout = Some("30s".into());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let (send, conn) = h2_connect(port, &pki).await;
    let (_resp, mut body) = h2_post(send, port, "/upload").await;
    body.send_data(Bytes::from(vec![b'u'; 8 << 20]), false)
        .unwrap();
    // Four times body_timeout: a stall would have been cut by now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !conn.is_finished(),
        "the connection was closed while the server held the body back\n{}",
        gh.log_text()
    );
    assert_eq!(client_timeouts(&gh, "body").await, 0.0);
    assert!(
        body.capacity() < 8 << 20,
        "the client was never held back: the test shows nothing"
    );
}

/// `max_concurrent_streams: 3`: the listener says so in its HTTP/2 SETTINGS, and a client
/// opening six POSTs whose bodies never finish gets three of them to the origin: one HTTP/2
/// connection holds at most three upstream connections (the default was Pingora's 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_streams_caps_upstream_requests_per_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Hang).await;
    let port = reserved_port();
    let mut conf = web_conf(
        &web,
        [listener("edge", port, &pki)
            .max_concurrent_streams(3)
            .body_timeout("20s")],
    )
    .route(Route::new("rest", "web").path("/"));
    conf.upstream_mut("web").read_timeout = Some("20s".into());
    let _gh = Gatehouse::start(tmp.path(), &conf);

    let (send, _conn) = h2_connect(port, &pki).await;
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    // The server's SETTINGS arrive after the handshake: until then the limit is unknown.
    holds_within(T, || send.current_max_send_streams() != usize::MAX).await;
    assert_eq!(
        send.current_max_send_streams(),
        3,
        "the SETTINGS the listener sent"
    );
    let mut held = Vec::new();
    for i in 0..6 {
        // A well-behaved client queues a stream over the limit: `ready` waits for a place.
        let Ok(Ok(ready)) =
            tokio::time::timeout(Duration::from_millis(500), send.clone().ready()).await
        else {
            break;
        };
        send = ready;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost:{port}/held/{i}"))
            .body(())
            .unwrap();
        let (resp, mut body) = send.send_request(req, false).unwrap();
        let _ = body.send_data(Bytes::from_static(b"x"), false);
        held.push((resp, body));
    }
    // Every stream the client got to send reaches the origin (over the limit, a broken cap
    // lets all six through): then count.
    let sent = held.len();
    holds_within(T, || *web.connections.lock().unwrap() >= sent).await;
    let upstream = *web.connections.lock().unwrap();
    assert_eq!(
        upstream, 3,
        "upstream connections held by one HTTP/2 connection with six unfinished POSTs"
    );
}

/// `send_timeout: 1s`: a client that asks for a large answer and stops reading ends the request
/// about a second after its buffers fill: Gatehouse drops the upstream connection (the origin's
/// writes fail) and counts `phase="send"`. (Without the bound the upstream connection stayed
/// pinned for as long as the client liked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_at_send_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let (origin, mut reports) = raw_origin(|mut s, tx| async move {
        const TOTAL: usize = 1 << 30;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {TOTAL}\r\n\r\n");
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'z'; 64 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            if s.write_all(&chunk).await.is_err() {
                let _ = tx.send(format!("write failed after {sent} bytes"));
                return;
            }
            sent += chunk.len();
        }
        let _ = tx.send("all sent".into());
    })
    .await;
    let port = reserved_port();
    let conf = Conf::new()
        .upstream("big", Group::new(origin))
        .listener(listener("edge", port, &pki).send_timeout("1s"))
        .route(Route::new("big", "big").path("/"))
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);

    let mut s = connect(port, &client(&pki, None)).await;
    within(
        "write",
        s.write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
    .unwrap();
    // Read the head and a little, then stop reading (the connection stays open).
    let mut first = [0u8; 4096];
    within("first bytes", s.read(&mut first)).await.unwrap();
    let t0 = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(15), reports.recv()).await;
    let took = t0.elapsed();
    let Ok(Some(report)) = report else {
        panic!(
            "the origin was still writing 15 s after the client stopped reading (send_timeout 1s)\nlog:\n{}",
            gh.log_text()
        );
    };
    assert!(report.starts_with("write failed"), "{report}");
    assert!(took < Duration::from_secs(10), "dropped after {took:?}");
    // Pingora drops the upstream session before it reports the failure (and the counter is
    // bumped there): the origin may see its write fail a moment before the count.
    let timeouts = |m: &str| {
        metric(
            m,
            "gatehouse_http_client_timeouts_total",
            &[("listener", "edge"), ("phase", "send")],
        ) >= 1.0
    };
    gh.wait_metrics("the drop counted", Duration::from_secs(5), timeouts)
        .await;
    drop(s);
}

/// `answer_timeout: 1s` with `read_timeout: 5s`: an origin that sends its head at once and
/// then one body byte every 100 ms (100 bytes: 10 s) is cut about a second in, on a plain route
/// and on a Kea route alike; one that drips its head is answered `504`; a route with its own
/// `answer_timeout: 10s` (a stream) gets a 2 s answer whole. Each counts as an
/// upstream `timeout`. (Every single read was within `read_timeout`: without the whole-answer
/// bound both took the full 10 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_timeout_bounds_an_upstream_that_drips() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let (body_drip, _r1) = raw_origin(|s, _tx| drip(s, true, 100)).await;
    let (head_drip, _r2) = raw_origin(|s, _tx| drip(s, false, 100)).await;
    let (stream, _r3) = raw_origin(|s, _tx| drip(s, true, 20)).await;
    let port = reserved_port();
    let group = |at: SocketAddr| Group::new(at).read_timeout("5s").answer_timeout("1s");
    let conf = Conf::new()
        .upstream("body", group(body_drip))
        .upstream("head", group(head_drip))
        .upstream("stream", group(stream))
        .listener(listener("edge", port, &pki))
        .route(Route::new("body", "body").path("/body"))
        .route(Route::new("head", "head").path("/head"))
        .route(
            Route::new("stream", "stream")
                .path("/stream")
                .answer_timeout("10s"),
        )
        .route(
            Route::new("kea", "body")
                .path("/kea")
                .kea(KeaRoute::allow_all()),
        )
        .metrics(reserved_port());
    let gh = Gatehouse::start(tmp.path(), &conf);
    let anon = client(&pki, None);

    dripped_bodies_are_cut(port, &anon).await;
    // A route with its own answer_timeout (a stream): the 2 s answer arrives whole.
    let t0 = Instant::now();
    let r = get(port, &anon, "/stream", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.len(),
        20,
        "routes[].answer_timeout: 10s lets the 2 s answer through"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1800),
        "{:?}",
        t0.elapsed()
    );
    let t0 = Instant::now();
    let r = get(port, &anon, "/head", &[]).await;
    assert_eq!(r.status, 504, "a dripped head: {}", r.text());
    assert!(
        t0.elapsed() < Duration::from_secs(8),
        "504 after {:?}",
        t0.elapsed()
    );
    gh.wait_log("no whole answer within answer_timeout (1s)");
    let m = within("metrics", gh.metrics_text()).await;
    for up in ["body", "head"] {
        assert!(
            metric(
                &m,
                "gatehouse_upstream_errors_total",
                &[("upstream", up), ("kind", "timeout")]
            ) >= 1.0,
            "{up}: not counted as a timeout:\n{m}"
        );
    }
}

/// An origin's answer of `len` body bytes, one byte every 100 ms (the head sent at once when
/// `head_first`, else dripped too).
async fn drip(mut s: TcpStream, head_first: bool, len: usize) {
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    );
    let head = head.as_bytes();
    let mut bytes: Vec<u8> = Vec::new();
    if head_first {
        if s.write_all(head).await.is_err() {
            return;
        }
    } else {
        bytes.extend_from_slice(head);
    }
    bytes.extend_from_slice(&vec![b' '; len]);
    for b in bytes {
        // The drip itself: every read within read_timeout, the whole beyond answer_timeout.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if s.write_all(&[b]).await.is_err() {
            return;
        }
    }
}

/// A dripped body is cut about a second in (the head passed on at once), on a plain route
/// and on a Kea route alike.
async fn dripped_bodies_are_cut(port: u16, anon: &ClientOpts) {
    for (path, body) in [("/body", ""), ("/kea", r#"{"command":"config-get"}"#)] {
        let mut s = connect(port, anon).await;
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        within("write", s.write_all(req.as_bytes())).await.unwrap();
        let t0 = Instant::now();
        let (got, closed) = read_until_close(&mut s, Duration::from_secs(15)).await;
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&got);
        assert!(closed, "{path}: still open after 15 s: {text:?}");
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "{path}: the head was sent on at once: {text:?}"
        );
        let body_len = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
        assert!(
            body_len < 100,
            "{path}: the whole dripped answer arrived ({body_len} bytes after {took:?}): nothing bounded it"
        );
        assert!(
            took < Duration::from_secs(5),
            "{path}: cut only after {took:?} (answer_timeout 1s)"
        );
    }
}

/// Two GETs sent back to back on one HTTP/1.1 connection (pipelined) are both answered, in
/// order, and the connection stays usable: Pingora alone answered the first and dropped the
/// second without a word, while saying keep-alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf =
        web_conf(&web, [listener("edge", port, &pki)]).route(Route::new("rest", "web").path("/"));
    let _gh = Gatehouse::start(tmp.path(), &conf);

    let mut s = connect(port, &client(&pki, None)).await;
    within(
        "write",
        s.write_all(
            b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\n\r\nGET /three HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    for want in ["/one", "/two", "/three"] {
        let r = read_response(&mut s, &mut buf)
            .await
            .unwrap_or_else(|e| panic!("pipelined {want}: {e}"));
        assert_eq!(r.status, 200, "{want}: {}", r.text());
        assert_eq!(r.json()["path"], want, "answers out of order");
    }
    let r = keepalive_get(&mut s, &mut buf, "/four").await.unwrap();
    assert_eq!(r.json()["path"], "/four", "the connection is still usable");
}

/// Refusals a client can repeat at will write one line per kind per 10 s, not one each: 30
/// requests refused by a route's `allow` (over curl's default HTTP/2 and over HTTP/1) write one
/// refusal line, every one still gets its 403 and its access line; 20 HTTP connections to a
/// `[cluster]`-only listener write one line too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_write_one_line_per_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, cport) = (reserved_port(), reserved_port());
    let conf = web_conf(
        &web,
        [
            listener("edge", port, &pki),
            listener("links", cport, &pki).protocols(&[Protocol::Cluster]),
        ],
    )
    .route(Route::new("admin", "web").path("/").allow(["cn:admin"]))
    .cluster(Cluster::new("master1", "web"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    let viewer = client(&pki, Some("viewer"));
    for i in 0..20 {
        let r = get(port, &viewer, &format!("/secret/{i}"), &[]).await;
        assert_eq!(r.status, 403, "{}", r.text());
    }
    for i in 0..10 {
        let out = curl(
            &pki,
            "viewer",
            &format!("https://localhost:{port}/secret/curl{i}"),
            &[],
        )
        .await;
        assert_eq!(
            (out.status.as_str(), out.version.as_str()),
            ("403", "2"),
            "curl (HTTP/2): {}",
            out.body
        );
    }
    for _ in 0..20 {
        let mut s = connect(cport, &client(&pki, None)).await;
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        assert!(
            closed_within(&mut s, T).await,
            "the cluster listener answered HTTP"
        );
    }
    // Every refusal's access line: all the refusals' lines are in the log by now.
    let access_lines = || {
        let log = gh.log_text();
        log.lines().filter(|l| l.contains("status=403")).count()
    };
    holds_within(T, || access_lines() >= 30).await;
    let log = gh.log_text();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(
        count("route admin refused"),
        1,
        "30 refusals within 10 s:\n{log}"
    );
    assert_eq!(
        count("status=403"),
        30,
        "every refusal keeps its access line:\n{log}"
    );
    assert_eq!(
        count("which this listener does not accept"),
        1,
        "20 wrong-protocol connections within 10 s:\n{log}"
    );
}

/// Pingora's own warnings and errors are per connection or request too: 20 clients that hang up
/// in the middle of a request head each make Pingora report "Fail to proxy"; Gatehouse's logger
/// writes one such line per 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pingora_lines_a_client_triggers_are_sampled() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let conf = web_conf(&web, [listener("edge", port, &pki)]).route(Route::new("rest", "web"));
    let gh = Gatehouse::start(tmp.path(), &conf);
    for _ in 0..20 {
        let mut s = connect(port, &client(&pki, None)).await;
        within("write", s.write_all(b"GET /half HTTP/1.1\r\nHo"))
            .await
            .unwrap();
        // The hang-up comes once the edge is reading the half head, not with it.
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(s);
    }
    // Pingora's first line for them, then a request answered after them: their lines are in
    // the log by now.
    holds_within(T, || {
        let log = gh.log_text();
        log.lines()
            .any(|l| l.contains(" pingora") && (l.contains("ERROR") || l.contains("WARN")))
    })
    .await;
    assert_eq!(
        get(port, &client(&pki, None), "/after", &[]).await.status,
        200
    );
    gh.wait_log("path=/after");
    let log = gh.log_text();
    let pingora: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" pingora") && (l.contains("ERROR") || l.contains("WARN")))
        .collect();
    assert!(
        !pingora.is_empty(),
        "no Pingora line at all: the test triggers nothing\n{log}"
    );
    let mut kinds: Vec<&str> = pingora
        .iter()
        .filter_map(|l| l.split(']').next())
        .map(|head| head.rsplit(' ').next().unwrap_or(""))
        .collect();
    kinds.sort();
    let n = kinds.len();
    kinds.dedup();
    assert_eq!(
        n,
        kinds.len(),
        "more than one line per Pingora target and level within 10 s:\n{}",
        pingora.join("\n")
    );
}

/// A stream that keeps receiving (Icinga's `/v1/events`: a chunk every 500 ms for 8 s) is not
/// cut by any bound lower than its life: keep-alive 3 s, the upstream's `read_timeout` 4 s and
/// `answer_timeout` 6 s, with the route's own `answer_timeout: 10m`. Every chunk arrives, over
/// HTTP/1 and over curl's HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_keeps_receiving_is_not_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let (origin, _r) = raw_origin(|mut s, _tx| async move {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for i in 0..16 {
            // The stream's pace: a chunk every 500 ms, each gap within every idle bound.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let event = format!("{{\"type\":\"CheckResult\",\"n\":{i}}}\n");
            let chunk = format!("{:x}\r\n{event}\r\n", event.len());
            if s.write_all(chunk.as_bytes()).await.is_err() {
                return;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n").await;
    })
    .await;
    let port = reserved_port();
    let conf = Conf::new()
        .upstream(
            "icinga",
            Group::new(origin).read_timeout("4s").answer_timeout("6s"),
        )
        .listener(listener("edge", port, &pki).keepalive_timeout("3s"))
        .route(
            Route::new("events", "icinga")
                .path("/v1/events")
                .answer_timeout("10m"),
        );
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let r = within(
        "the whole stream",
        request(
            addr(port),
            Some(&client(&pki, None)),
            "POST",
            "/v1/events?types=CheckResult",
            &[],
            b"",
        ),
    )
    .await
    .expect("the stream");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text().matches("CheckResult").count(),
        16,
        "every event: {}",
        r.text()
    );
    let out = curl(
        &pki,
        "viewer",
        &format!("https://localhost:{port}/v1/events?types=CheckResult"),
        &["-X", "POST"],
    )
    .await;
    assert_eq!(
        (out.status.as_str(), out.version.as_str()),
        ("200", "2"),
        "{}",
        out.body
    );
    assert_eq!(
        out.body.matches("CheckResult").count(),
        16,
        "every event over HTTP/2: {}",
        out.body
    );
}

/// Answers stream through the edge, never held whole: the origin sends the first part of a
/// chunked answer (a large `v1/objects/query` does so at once since Icinga 2.16) and sends
/// the rest only once the client has read that first part through Gatehouse. If the edge
/// held the answer until its end, the client would never see the first part and the origin
/// would never finish. Over HTTP/1 and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stream_through_the_edge_piece_by_piece() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = edge_pki(tmp.path());
    let go_on = std::sync::Arc::new(tokio::sync::Notify::new());
    let (origin, _r) = raw_origin({
        let go_on = go_on.clone();
        move |s, _tx| answer_in_two_parts(s, go_on.clone())
    })
    .await;
    let port = reserved_port();
    let conf = Conf::new()
        .upstream("icinga", Group::new(origin))
        .listener(listener("edge", port, &pki))
        .route(Route::new("api", "icinga").path("/"));
    let _gh = Gatehouse::start(tmp.path(), &conf);

    // HTTP/1
    let mut s = connect(port, &client(&pki, None)).await;
    within(
        "write",
        s.write_all(b"GET /v1/objects/hosts HTTP/1.1\r\nHost: localhost\r\n\r\n"),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until_seen(&mut s, &mut got, "first-object").await;
    go_on.notify_one();
    read_until_seen(&mut s, &mut got, "last-object").await;

    the_first_part_streams_over_h2(port, &pki, &go_on).await;
}

/// A chunked answer: the first object at once, the rest only once `go_on` is notified.
async fn answer_in_two_parts(mut s: TcpStream, go_on: std::sync::Arc<tokio::sync::Notify>) {
    let first = "{\"results\":[{\"name\":\"first-object\"}";
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n",
        first.len()
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    if tokio::time::timeout(Duration::from_secs(10), go_on.notified())
        .await
        .is_err()
    {
        return;
    }
    let rest = ",{\"name\":\"last-object\"}]}";
    let tail = format!("{:x}\r\n{rest}\r\n0\r\n\r\n", rest.len());
    let _ = s.write_all(tail.as_bytes()).await;
}

/// Reads into `got` until it contains `what`; panics if the connection ends first.
async fn read_until_seen<S: AsyncRead + Unpin>(s: &mut S, got: &mut Vec<u8>, what: &str) {
    while !String::from_utf8_lossy(got).contains(what) {
        let mut b = [0u8; 4096];
        let n = within(
            &format!("{what}, before the origin sends more"),
            s.read(&mut b),
        )
        .await
        .unwrap();
        assert!(n > 0, "closed before {what}");
        got.extend_from_slice(&b[..n]);
    }
}

/// Over HTTP/2: the first part arrives before the origin sends the rest.
async fn the_first_part_streams_over_h2(port: u16, pki: &Pki, go_on: &tokio::sync::Notify) {
    let (send, _conn) = h2_connect(port, pki).await;
    let mut send = within("h2 ready", send.ready()).await.unwrap();
    let req = http::Request::builder()
        .uri(format!("https://localhost:{port}/v1/objects/hosts"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = within("h2 head", resp).await.unwrap();
    let mut body = resp.into_body();
    let first = within("the first part over HTTP/2", body.data())
        .await
        .expect("a first part")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("first-object"),
        "{first:?}"
    );
    go_on.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = within("the rest over HTTP/2", body.data()).await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(String::from_utf8_lossy(&rest).contains("last-object"));
}
