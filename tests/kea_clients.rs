//! Kea routes with real clients: curl with its defaults (HTTP/2 by ALPN), curl over HTTP/1.1
//! with a chunked upload, and the `h2` crate, against real Kea (plain and mutual TLS; curl
//! against every release in `common::kea::Release`).
//! Gatehouse must talk HTTP/1.1 to Kea whatever the client spoke: Kea answers anything else
//! with `{ "result": 400, "text": "Bad Request" }`.
//!
//! Also: a command without `service` (absent or `[]`) is for the Control Agent itself and is
//! authorized as the service `ca`.

mod common;

use bytes::Bytes;
use common::kea::{Kea, KeaTls, Release};
use common::*;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// Every await of a test is bounded by this.
const T: Duration = Duration::from_secs(20);

const CONFIG_GET: &str = r#"{"command":"config-get","service":["dhcp4"]}"#;
const VERSION_GET: &str = r#"{"command":"version-get"}"#;

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(T, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out after {T:?}"))
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

// === curl ===

/// What curl reported: `%{http_code}`, `%{http_version}` and the body it wrote.
#[derive(Debug)]
struct Curl {
    status: u16,
    version: String,
    body: Vec<u8>,
    stderr: String,
}

impl Curl {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("curl body is not JSON ({e}): {self:?}"))
    }
}

/// The client side of a Gatehouse listener, for curl.
struct CurlClient {
    url: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    out: PathBuf,
}

impl CurlClient {
    fn new(port: u16, pki: &Pki, who: &str, scratch: &Path) -> CurlClient {
        let (cert, key) = pki.paths(who);
        CurlClient {
            url: format!("https://127.0.0.1:{port}/"),
            ca: pki.ca_path(),
            cert,
            key,
            out: scratch.join(format!("curl-{who}.out")),
        }
    }

    /// Runs curl with `args` before the URL (after TLS and JSON options); `stdin` is piped in.
    async fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Curl {
        let _ = std::fs::remove_file(&self.out);
        let mut cmd = tokio::process::Command::new("/usr/bin/curl");
        cmd.args(["-sS", "--max-time", "15", "--cacert"])
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key)
            .args(["-H", "Content-Type: application/json", "-o"])
            .arg(&self.out)
            .args(["-w", "%{http_code} %{http_version}"])
            .args(args)
            .arg(&self.url)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn /usr/bin/curl");
        if let Some(data) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            within("curl stdin", pipe.write_all(data)).await.unwrap();
            drop(pipe);
        }
        let out = within("curl", child.wait_with_output()).await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut it = stdout.split_whitespace();
        let status = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let version = it.next().unwrap_or("").to_string();
        Curl {
            status,
            version,
            body: std::fs::read(&self.out).unwrap_or_default(),
            stderr,
        }
    }

    /// curl's defaults (HTTP/2 over TLS by ALPN), POSTing `body` with `-d`.
    async fn post(&self, body: &str) -> Curl {
        self.run(&["-d", body], None).await
    }
}

// === h2 crate client ===

/// An HTTP/2 connection (TLS, ALPN h2) to `127.0.0.1:port`; the connection runs in a task.
async fn h2_connect(
    port: u16,
    pki: &Pki,
    who: &str,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    use boring::ssl::{SslConnector, SslFiletype, SslMethod};
    let (cert, key) = pki.paths(who);
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_ca_file(pki.ca_path()).unwrap();
    b.set_certificate_chain_file(cert).unwrap();
    b.set_private_key_file(key, SslFiletype::PEM).unwrap();
    b.set_alpn_protos(b"\x02h2").unwrap();
    let cfg = b.build().configure().unwrap();
    let tcp = within("tcp connect", tokio::net::TcpStream::connect(addr(port)))
        .await
        .unwrap();
    let tls = within(
        "tls handshake",
        tokio_boring::connect(cfg, "localhost", tcp),
    )
    .await
    .expect("TLS handshake with Gatehouse");
    assert_eq!(
        tls.ssl().selected_alpn_protocol(),
        Some(&b"h2"[..]),
        "Gatehouse did not select h2"
    );
    let (send, conn) = within("h2 handshake", h2::client::handshake(tls))
        .await
        .expect("h2 handshake");
    (send, tokio::spawn(conn))
}

/// POSTs `body` on a new stream: with `content-length` when `length` is set, else without
/// (the body then arrives in two DATA frames, the last one ending the stream).
async fn h2_post(
    send: &h2::client::SendRequest<Bytes>,
    port: u16,
    body: &str,
    length: bool,
) -> (u16, Vec<u8>) {
    let mut send = within("h2 ready", send.clone().ready())
        .await
        .expect("h2 connection ready");
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("https://localhost:{port}/"))
        .header("content-type", "application/json");
    if length {
        req = req.header("content-length", body.len().to_string());
    }
    let (resp, mut stream) = send
        .send_request(req.body(()).unwrap(), false)
        .expect("h2 send_request");
    if length {
        stream
            .send_data(Bytes::copy_from_slice(body.as_bytes()), true)
            .unwrap();
    } else {
        let (a, b) = body.split_at(body.len() / 2);
        stream
            .send_data(Bytes::copy_from_slice(a.as_bytes()), false)
            .unwrap();
        stream
            .send_data(Bytes::copy_from_slice(b.as_bytes()), true)
            .unwrap();
    }
    let resp = within("h2 response", resp).await.expect("h2 response");
    let status = resp.status().as_u16();
    let mut rb = resp.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = within("h2 body", rb.data()).await {
        let chunk = chunk.expect("h2 body chunk");
        let _ = rb.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, out)
}

// === helpers ===

/// A JSON value with every `hash` member removed (Kea's config-get may carry config hashes).
fn without_hashes(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| k.as_str() != "hash")
                .map(|(k, v)| (k.clone(), without_hashes(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_hashes).collect()),
        other => other.clone(),
    }
}

fn result_codes(v: &Value) -> Vec<i64> {
    v.as_array()
        .map(|l| l.iter().filter_map(|a| a["result"].as_i64()).collect())
        .unwrap_or_default()
}

/// The same command straight to Kea (HTTP/1.1, plain or with `tls`).
async fn direct(kea: &Kea, tls: Option<&ClientOpts>, body: &str) -> Value {
    let r = within(
        "direct Kea request",
        request(
            kea.addr,
            tls,
            "POST",
            "/",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{body} straight to Kea: {e}"));
    assert_eq!(r.status, 200, "{body} straight to Kea: {}", r.text());
    let v = r.json();
    assert_eq!(
        result_codes(&v).first(),
        Some(&0),
        "{body}: Kea itself did not answer result 0: {v}"
    );
    v
}

/// How often Kea logged receiving `command`: the Control Agent's `command <name> received`,
/// or (Kea 3, no agent) the daemon's `Received command '<name>'`, which Kea 2.6 and 3.0 also
/// log for their own start-up `config-set`: compare counts, not against zero.
fn kea_received(kea: &Kea, command: &str) -> usize {
    let logs = kea.logs();
    if kea.release.has_agent() {
        logs.matches(&format!("command {command} received")).count()
    } else {
        logs.matches(&format!("Received command '{command}'"))
            .count()
    }
}

/// Edge PKI: server cert (localhost, 127.0.0.1) and the clients `client`, `other`.
fn edge_pki(dir: &Path) -> Pki {
    Pki::edge(dir, &["client", "other", "dash", "ops"])
}

/// Listener `edge` on `port`, client certificates of `edge` required.
fn edge_conf(port: u16, edge: &Pki) -> Conf {
    Conf::new().listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
        edge,
        "server",
        ClientAuth::Required,
    )))
}

/// Route `kea` to `upstream`: `cn:client` may run `version-get` and `config-get`, nothing else.
/// In front of Kea 3 (a daemon), a `kea.daemon: dhcp4` route.
fn client_rules_conf(port: u16, edge: &Pki, upstream: Group, release: Release) -> Conf {
    let rule = KeaRule::new(["cn:client"]).commands(AllowDeny::only(["version-get", "config-get"]));
    let kea = KeaRoute::deny_by_default().rule(rule);
    let kea = if release.has_agent() {
        kea
    } else {
        kea.daemon("dhcp4")
    };
    edge_conf(port, edge)
        .upstream("kea", upstream)
        .route(Route::new("kea", "kea").kea(kea))
}

crate::per_kea_release! {
    curl_reaches_plain_kea =>
        curl_over_http2_and_http11_reaches_plain_kea_2_2,
        curl_over_http2_and_http11_reaches_plain_kea_2_6,
        curl_over_http2_and_http11_reaches_plain_kea_3_0;
    curl_reaches_mtls_kea =>
        curl_over_http2_reaches_kea_2_2_over_mutual_tls,
        curl_over_http2_reaches_kea_2_6_over_mutual_tls,
        curl_over_http2_reaches_kea_3_0_over_mutual_tls;
}

// === tests ===

/// curl with its defaults speaks HTTP/2 to Gatehouse; Kea (plain HTTP) must still answer
/// 200 with the same result codes and body as when asked directly. Denials stay Kea-shaped
/// over h2, an h2 upload without a length works, and so does an HTTP/1.1 chunked upload.
async fn curl_reaches_plain_kea(release: Release) {
    let tmp = tempfile::tempdir().unwrap();
    let edge = edge_pki(tmp.path());
    let Some(kea) = Kea::of(release, &tmp.path().join("k"), reserved_port(), None) else {
        return;
    };
    let port = reserved_port();
    let conf = client_rules_conf(port, &edge, Group::new(kea.addr), release);
    let gh = Gatehouse::start(tmp.path(), &conf);
    let curl = CurlClient::new(port, &edge, "client", tmp.path());

    // Allowed commands over h2: Kea's own answer, as if asked directly.
    for cmd in [CONFIG_GET, VERSION_GET] {
        let want = direct(&kea, None, cmd).await;
        let got = curl.post(cmd).await;
        assert_eq!(got.version, "2", "curl did not use HTTP/2: {got:?}");
        assert_eq!(
            got.status,
            200,
            "{cmd} over h2: {} (stderr {})",
            got.text(),
            got.stderr
        );
        let v = got.json();
        assert_eq!(result_codes(&v), result_codes(&want), "{cmd}: {v}");
        assert_eq!(
            without_hashes(&v),
            without_hashes(&want),
            "{cmd}: answer through Gatehouse differs from Kea's own"
        );
    }

    // A denied command over h2: 403, Kea-shaped, and Kea never sees it.
    let set = r#"{"command":"config-set","service":["dhcp4"],"arguments":{}}"#;
    let before = kea_received(&kea, "config-set");
    let got = curl.post(set).await;
    assert_eq!((got.status, got.version.as_str()), (403, "2"), "{got:?}");
    assert_eq!(
        got.json(),
        json!({"result": 403, "text": "command 'config-set' is not allowed for cn=client"})
    );
    assert_eq!(kea_received(&kea, "config-set"), before, "{}", kea.logs());

    // An h2 upload of unknown length (stdin): no content-length on the request.
    let got = curl
        .run(&["-X", "POST", "-T", "-"], Some(VERSION_GET.as_bytes()))
        .await;
    assert_eq!(got.version, "2", "{got:?}");
    assert_eq!(got.status, 200, "h2 upload without length: {got:?}");
    assert_eq!(result_codes(&got.json()), vec![0], "{}", got.text());

    // HTTP/1.1 with a chunked body (Kea alone would answer 400 to chunked).
    let file = tmp.path().join("cmd.json");
    std::fs::write(&file, CONFIG_GET).unwrap();
    let data = format!("@{}", file.display());
    let got = curl
        .run(
            &[
                "--http1.1",
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &data,
            ],
            None,
        )
        .await;
    assert_eq!(got.version, "1.1", "{got:?}");
    assert_eq!(got.status, 200, "chunked HTTP/1.1 upload: {got:?}");
    assert_eq!(result_codes(&got.json()), vec![0], "{}", got.text());

    let line = gh.wait_log("gatehouse::access");
    assert!(line.contains("cn=client"), "{line}");
}

/// The `h2` crate as a client: commands with and without `content-length` reach Kea.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_crate_client_posts_kea_commands() {
    if !common::kea::installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let edge = edge_pki(tmp.path());
    let kea = Kea::start(&tmp.path().join("k"), reserved_port(), None);
    let port = reserved_port();
    let conf = client_rules_conf(port, &edge, Group::new(kea.addr), Release::V2_2);
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let (send, _conn) = h2_connect(port, &edge, "client").await;

    for (cmd, length) in [
        (VERSION_GET, true),
        (CONFIG_GET, true),
        (VERSION_GET, false),
        (CONFIG_GET, false),
    ] {
        let want = direct(&kea, None, cmd).await;
        let (status, body) = h2_post(&send, port, cmd, length).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, 200, "{cmd} (content-length: {length}): {text}");
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(result_codes(&v), vec![0], "{cmd}: {v}");
        assert_eq!(without_hashes(&v), without_hashes(&want), "{cmd}");
    }
    let (status, body) = h2_post(&send, port, r#"{"command":"shutdown"}"#, true).await;
    assert_eq!(status, 403);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!({"result": 403, "text": "command 'shutdown' is not allowed for cn=client"})
    );
}

/// Kea's Control Agent with TLS that requires client certificates: HTTP/2 clients get the
/// same answers as Gatehouse's own upstream identity asking directly.
async fn curl_reaches_mtls_kea(release: Release) {
    let tmp = tempfile::tempdir().unwrap();
    let edge = edge_pki(tmp.path());
    let up = common::kea::upstream_pki(tmp.path());
    let Some(kea) = Kea::of(
        release,
        &tmp.path().join("k"),
        reserved_port(),
        Some(KeaTls::from_pki(&up)),
    ) else {
        return;
    };
    let port = reserved_port();
    let kea_tls = UpstreamTls::mutual("kea.internal", &up, "gatehouse");
    let conf = client_rules_conf(port, &edge, Group::new(kea.addr).tls(kea_tls), release);
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let as_gatehouse = ClientOpts {
        ca: Some(up.ca_path()),
        cert: Some(up.paths("gatehouse")),
        sni: Some("kea.internal".into()),
        tls12: false,
    };
    let curl = CurlClient::new(port, &edge, "client", tmp.path());
    for cmd in [CONFIG_GET, VERSION_GET] {
        let want = direct(&kea, Some(&as_gatehouse), cmd).await;
        let got = curl.post(cmd).await;
        assert_eq!(got.version, "2", "{got:?}");
        assert_eq!(got.status, 200, "{cmd} over h2 to TLS Kea: {}", got.text());
        let v = got.json();
        assert_eq!(result_codes(&v), result_codes(&want), "{cmd}: {v}");
        assert_eq!(without_hashes(&v), without_hashes(&want), "{cmd}");
    }
}

// --- what exactly goes upstream ---

/// One request as an origin received it, head verbatim.
#[derive(Debug, Clone)]
struct Captured {
    head: String,
    body: Vec<u8>,
}

impl Captured {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive).
    fn headers(&self, name: &str) -> Vec<String> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// An origin that records each request head verbatim and answers like Kea: HTTP/1.1 with
/// `Content-Length` → `[ { "result": 0 } ]`; anything else → 400 `Bad Request`, then closes.
struct CaptureOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Captured>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CaptureOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CaptureOrigin {
    async fn start(tls: Option<boring::ssl::SslAcceptor>) -> CaptureOrigin {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tls = tls.map(Arc::new);
        let s2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let (seen, tls) = (s2.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acc) => {
                            if let Ok(s) = tokio_boring::accept(&acc, tcp).await {
                                capture_serve(s, seen).await
                            }
                        }
                        None => capture_serve(tcp, seen).await,
                    }
                });
            }
        });
        CaptureOrigin { addr, seen, task }
    }

    fn seen(&self) -> Vec<Captured> {
        self.seen.lock().unwrap().clone()
    }
}

async fn capture_serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    seen: Arc<Mutex<Vec<Captured>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tokio::time::timeout(T, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
        let mut c = Captured {
            head,
            body: Vec::new(),
        };
        let lengths = c.headers("content-length");
        let proper = c.request_line().ends_with(" HTTP/1.1")
            && lengths.len() == 1
            && c.headers("transfer-encoding").is_empty();
        if !proper {
            seen.lock().unwrap().push(c);
            let body = br#"{ "result": 400, "text": "Bad Request" }"#;
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body).await;
            let _ = s.shutdown().await;
            return;
        }
        let len: usize = lengths[0].parse().unwrap_or(0);
        while buf.len() < head_end + len {
            match tokio::time::timeout(T, s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        }
        c.body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);
        seen.lock().unwrap().push(c);
        let body = br#"[ { "result": 0, "text": "captured" } ]"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if s.write_all(head.as_bytes()).await.is_err() || s.write_all(body).await.is_err() {
            return;
        }
    }
}

/// What Kea is sent for an HTTP/2 client: a proper HTTP/1.1 request in origin form, `Host`
/// = the upstream's `tls.sni` (else the configured peer address), the body's exact length in
/// `Content-Length`, no `Transfer-Encoding`, `Content-Type: application/json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kea_route_sends_http11_with_host_and_length_for_h2_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let edge = edge_pki(tmp.path());
    let up = Pki::new(tmp.path(), "up");
    let origin_cert = up.server("kea", &["kea.internal"]);
    let plain = CaptureOrigin::start(None).await;
    let secure = CaptureOrigin::start(Some(acceptor(&origin_cert, None, false))).await;
    let port = reserved_port();
    let conf = edge_conf(port, &edge)
        .upstream("plain", Group::new(plain.addr))
        .upstream(
            "secure",
            Group::new(secure.addr).tls(UpstreamTls::new("kea.internal").ca(up.ca_path())),
        )
        .route(
            Route::new("plain", "plain")
                .path("/")
                .kea(KeaRoute::allow_all()),
        )
        .route(
            Route::new("secure", "secure")
                .host("kea.example")
                .path("/")
                .kea(KeaRoute::allow_all()),
        );
    let _gh = Gatehouse::start(tmp.path(), &conf);

    // curl with its defaults (h2; -d sends a length, -T - streams without one) and the h2
    // crate without a length.
    let curl = CurlClient::new(port, &edge, "client", tmp.path());
    let got = curl.post(CONFIG_GET).await;
    assert_eq!(got.version, "2", "{got:?}");
    let streamed = curl
        .run(&["-X", "POST", "-T", "-"], Some(VERSION_GET.as_bytes()))
        .await;
    assert_eq!(streamed.version, "2", "{streamed:?}");
    let (send, _conn) = h2_connect(port, &edge, "client").await;
    let (h2_status, h2_body) = h2_post(&send, port, VERSION_GET, false).await;
    let mut failures = Vec::new();
    let seen = plain.seen();
    for (i, (status, body, sent)) in [
        (got.status, got.body.clone(), CONFIG_GET),
        (streamed.status, streamed.body.clone(), VERSION_GET),
        (h2_status, h2_body, VERSION_GET),
    ]
    .into_iter()
    .enumerate()
    {
        let text = String::from_utf8_lossy(&body);
        if status != 200 {
            failures.push(format!("request {i} ({sent}): client got {status} {text}"));
        }
        match seen.get(i) {
            None => failures.push(format!("request {i} ({sent}) never reached the origin")),
            Some(c) => check_upstream_request(
                c,
                &plain.addr.to_string(),
                sent,
                &format!("plain #{i}"),
                &mut failures,
            ),
        }
    }
    if seen.len() != 3 {
        failures.push(format!(
            "{} upstream requests for 3 client requests",
            seen.len()
        ));
    }
    host_is_the_upstream_sni(&send, port, &secure, &mut failures).await;
    assert!(
        failures.is_empty(),
        "upstream requests for HTTP/2 clients:\n{}",
        failures.join("\n")
    );
}

/// Upstream with TLS: Host is the configured SNI. h2 routes by :authority.
async fn host_is_the_upstream_sni(
    send: &h2::client::SendRequest<Bytes>,
    port: u16,
    secure: &CaptureOrigin,
    failures: &mut Vec<String>,
) {
    let mut send = within("h2 ready", send.clone().ready()).await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://kea.example:{port}/"))
        .header("content-type", "application/json")
        .body(())
        .unwrap();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from_static(VERSION_GET.as_bytes()), true)
        .unwrap();
    let resp = within("h2 response", resp).await.unwrap();
    if resp.status() != 200 {
        failures.push(format!("TLS upstream: client got {}", resp.status()));
    }
    match secure.seen().first() {
        None => failures.push("TLS upstream: nothing reached the origin".into()),
        Some(c) => check_upstream_request(c, "kea.internal", VERSION_GET, "tls", failures),
    }
}

fn check_upstream_request(
    c: &Captured,
    host: &str,
    body: &str,
    case: &str,
    failures: &mut Vec<String>,
) {
    let mut wrong = Vec::new();
    if c.request_line() != "POST / HTTP/1.1" {
        wrong.push(format!(
            "request line {:?}, want \"POST / HTTP/1.1\"",
            c.request_line()
        ));
    }
    if c.headers("host") != vec![host.to_string()] {
        wrong.push(format!("Host {:?}, want [{host:?}]", c.headers("host")));
    }
    if c.headers("content-length") != vec![body.len().to_string()] {
        wrong.push(format!(
            "Content-Length {:?}, want [\"{}\"]",
            c.headers("content-length"),
            body.len()
        ));
    }
    if !c.headers("transfer-encoding").is_empty() {
        wrong.push(format!(
            "Transfer-Encoding {:?}",
            c.headers("transfer-encoding")
        ));
    }
    if c.headers("content-type") != vec!["application/json".to_string()] {
        wrong.push(format!("Content-Type {:?}", c.headers("content-type")));
    }
    if !c.body.is_empty() && c.body != body.as_bytes() {
        wrong.push(format!("body {:?}", String::from_utf8_lossy(&c.body)));
    }
    if !wrong.is_empty() {
        failures.push(format!(
            "{case}: {}\n--- head as received ---\n{}\n---",
            wrong.join("; "),
            c.head
        ));
    }
}

/// A command without `service` (absent or `[]`) is for the Control Agent: the service `ca`.
/// A rule allowing only `dhcp4` refuses it before Kea sees it; one allowing `ca` lets it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_service_are_authorized_as_service_ca() {
    without_service_is_ca(Release::V2_2).await
}

/// Kea 2.6's Control Agent, the last release with one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_without_service_are_authorized_as_service_ca_on_kea_2_6() {
    without_service_is_ca(Release::V2_6).await
}

async fn without_service_is_ca(release: Release) {
    let tmp = tempfile::tempdir().unwrap();
    let edge = edge_pki(tmp.path());
    let Some(kea) = Kea::of(release, &tmp.path().join("k"), reserved_port(), None) else {
        return;
    };
    let port = reserved_port();
    let any = || AllowDeny::only(["*"]);
    let rules = KeaRoute::deny_by_default()
        .rule(
            KeaRule::new(["cn:dash"])
                .commands(any())
                .services(AllowDeny::only(["dhcp4"])),
        )
        .rule(
            KeaRule::new(["cn:ops"])
                .commands(any())
                .services(AllowDeny::only(["ca", "dhcp4"])),
        );
    let conf = edge_conf(port, &edge)
        .upstream("kea", Group::new(kea.addr))
        .route(Route::new("kea", "kea").kea(rules));
    let _gh = Gatehouse::start(tmp.path(), &conf);
    let send = |who: &str, body: &'static str| {
        let o = ClientOpts {
            ca: Some(edge.ca_path()),
            cert: Some(edge.paths(who)),
            sni: Some("localhost".into()),
            tls12: false,
        };
        async move {
            within(
                body,
                request(
                    addr(port),
                    Some(&o),
                    "POST",
                    "/",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("{body}: {e}"))
        }
    };

    let config_gets = kea_received(&kea, "config-get");
    let version_gets = kea_received(&kea, "version-get");
    for body in [
        r#"{"command":"config-get"}"#,
        r#"{"command":"config-get","service":[]}"#,
        r#"{"command":"version-get"}"#,
    ] {
        let r = send("dash", body).await;
        assert_eq!(r.status, 403, "{body} as cn=dash: {}", r.text());
        assert_eq!(
            r.json(),
            json!({"result": 403, "text": "service 'ca' is not allowed for cn=dash"})
        );
    }
    assert_eq!(
        (
            kea_received(&kea, "config-get"),
            kea_received(&kea, "version-get")
        ),
        (config_gets, version_gets),
        "Kea saw a refused command:\n{}",
        kea.logs()
    );

    // dhcp4 is allowed for dash; ca and dhcp4 for ops.
    for (who, body) in [
        ("dash", CONFIG_GET),
        ("ops", VERSION_GET),
        ("ops", r#"{"command":"config-get","service":[]}"#),
        ("ops", CONFIG_GET),
    ] {
        let r = send(who, body).await;
        assert_eq!(r.status, 200, "{body} as cn={who}: {}", r.text());
        assert_eq!(result_codes(&r.json()), vec![0], "{body}: {}", r.text());
    }
}
