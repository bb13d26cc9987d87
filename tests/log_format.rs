//! `log_format`: with `json` every line the binary writes is one JSON object, and the access
//! and cluster-link lines carry the text line's fields, typed, every client-chosen string
//! (CN, path, SNI) JSON-escaped; with `text` (the default) those values are escaped as before.
//! Requests come from curl with its defaults (HTTP/2 over TLS), links from a TLS client
//! speaking netstrings.

mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::cluster::codec;
use gatehouse::pki::CertSpec;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A certificate CN with a quote, a line break carrying a forged JSON object, a tab, a
/// control character and a backslash.
const EVIL_CN: &str = "ev\"il\n{\"forged\":1}\t\u{1}\\";
/// What the text log makes of it ([`gatehouse::logsafe::Esc`], spelled out).
const EVIL_CN_TEXT: &str = r#"ev\"il\n{\"forged\":1}\t\u{1}\\"#;
/// An SNI with a quote, a line break and a control character (BoringSSL sends anything but NUL).
const EVIL_SNI: &str = "ma\"ster\n1\u{1}";
const EVIL_SNI_TEXT: &str = r#"ma\"ster\n1\u{1}"#;
/// A request path with quotes and encoded control characters (kept encoded: not unreserved).
const EVIL_PATH: &str = "/web/q\"u'o%0At%01e";

struct Setup {
    gh: Gatehouse,
    port: u16,
    web: Upstream,
    sink: Sink,
    pki: Pki,
}

/// Gatehouse on one TLS port for HTTP and cluster links (any SNI routes to an echoing master),
/// logging in `format` (`None`: the default).
async fn start(dir: &Path, format: Option<&str>) -> Setup {
    let rp = RelayPki::new(dir);
    rp.pki.issue("evil", CertSpec::new(EVIL_CN));
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let mut conf = Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster]))
        .upstream("web", Group::new(web.addr))
        .upstream("master", rp.master(sink.addr))
        .route(Route::new("web", "web").path("/web"))
        // Audit records go to the log target (no `audit.path`).
        .route(
            Route::new("kea", "web")
                .path("/kea")
                .kea(KeaRoute::allow_all()),
        )
        // No cert_dir: every link goes up as the edge (a CN like EVIL_CN names no file).
        .cluster(Cluster::new("*", "master"));
    if let Some(f) = format {
        conf = conf.log_format(f);
    }
    let gh = Gatehouse::start(dir, &conf);
    Setup {
        gh,
        port,
        web,
        sink,
        pki: rp.pki,
    }
}

/// curl with its defaults as `who` (a stem of `pki`), the path sent as is: (status, HTTP
/// version).
async fn curl(pki: &Pki, who: &str, port: u16, path: &str) -> (String, String) {
    let url = format!("https://localhost:{port}{path}");
    let c = common::curl(pki, who, &url, &["--path-as-is", "-g"]).await;
    (c.status, c.version)
}

/// A cluster link as `evil` with SNI [`EVIL_SNI`]: one heartbeat, its echo, then close.
async fn evil_link(pki: &Pki, port: u16) -> Result<(), String> {
    use boring::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
    let (cert, key) = pki.paths("evil");
    let mut b = SslConnector::builder(SslMethod::tls()).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    b.set_certificate_chain_file(cert).unwrap();
    b.set_private_key_file(key, SslFiletype::PEM).unwrap();
    let mut cfg = b.build().configure().unwrap();
    cfg.set_verify_hostname(false);
    let tcp = tokio::net::TcpStream::connect(addr(port)).await.unwrap();
    let mut s = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_boring::connect(cfg, EVIL_SNI, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("a client with an odd SNI is served");
    let hb = codec::encode(br#"{"jsonrpc":"2.0","method":"event::Heartbeat","params":{}}"#);
    s.write_all(&hb).await.unwrap();
    let mut echo = vec![0u8; hb.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut echo))
        .await
        .map_err(|_| "no echo in time".to_string())?
        .map_err(|e| format!("the master's echo: {e}"))?;
    assert_eq!(echo, hb);
    let _ = s.shutdown().await;
    Ok(())
}

/// Sends every vector: an authenticated request with a hostile CN and path, an anonymous
/// one, an anonymous Kea command (audited), one refused before routing (`/../x`: 400), and a
/// cluster link with a hostile CN and SNI. Returns once the link's close is logged (a line with `closed`).
async fn send_vectors(s: &Setup, closed: &str) {
    assert_eq!(
        curl(&s.pki, "evil", s.port, EVIL_PATH).await,
        ("200".into(), "2".into()),
        "curl over HTTP/2 through Gatehouse"
    );
    let anon = ClientOpts {
        ca: Some(s.pki.ca_path()),
        cert: None,
        sni: Some("localhost".into()),
        tls12: false,
    };
    let r = request(addr(s.port), Some(&anon), "POST", "/web/anon", &[], b"x")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let json = [("Content-Type", "application/json")];
    let cmd = br#"{"command":"version-get"}"#;
    let r = request(addr(s.port), Some(&anon), "POST", "/kea", &json, cmd)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let r = request(addr(s.port), Some(&anon), "GET", "/../x", &[], b"")
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    if let Err(e) = evil_link(&s.pki, s.port).await {
        panic!("{e}:\n{}", s.gh.log_text());
    }
    assert_eq!(s.sink.frames().len(), 1);
    assert_eq!(s.web.seen().len(), 3);
    s.gh.wait_log(closed);
}

/// Every line of the log, each parsed as one JSON object (panics on any other line).
fn json_lines(log: &str) -> Vec<JsonLine> {
    log.lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(m)) => m,
            other => panic!("not one JSON object per line ({other:?}): {l:?}\n{log}"),
        })
        .collect()
}

/// Waits until a log line contains every one of `needles` (up to 5 s); the whole log then.
fn wait_for_line(gh: &Gatehouse, needles: &[&str]) -> String {
    let log = || {
        let log = gh.log_text();
        let found = log.lines().any(|l| needles.iter().all(|n| l.contains(n)));
        found.then_some(log)
    };
    common::wait_for(
        &format!("a line with {needles:?}"),
        Duration::from_secs(5),
        log,
        || gh.log_text(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_text_fields_typed_and_escaped() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path(), Some("json")).await;
    send_vectors(&s, "\"event\":\"link_closed\"").await;
    let log = wait_for_line(&s.gh, &["gatehouse::access", "\"status\":400"]);
    let lines = json_lines(&log);
    for l in &lines {
        for key in ["time", "level", "target"] {
            assert!(l[key].is_string(), "{key} in {l:?}");
        }
        assert!(!l.contains_key("forged"), "a forged member: {l:?}");
    }
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "gatehouse::access" && l.contains_key("status"))
        .collect();
    assert_eq!(access.len(), 4, "one access line per request:\n{log}");
    access_lines_are_typed(&access, &s.web.addr.to_string());
    let audit: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "gatehouse::audit")
        .collect();
    assert_eq!(audit.len(), 1, "{log}");
    assert_eq!(
        audit[0]["audit"]["kind"], "kea",
        "the audit record nested, not a string"
    );
    assert_eq!(audit[0]["audit"]["command"], "version-get");

    let links: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "gatehouse::cluster" && l.contains_key("event"))
        .collect();
    assert_eq!(links.len(), 2, "link open and close:\n{log}");
    link_lines_are_typed(links[0], links[1], &s.sink.addr.to_string());

    // Everything else is wrapped, Pingora's lines included.
    assert!(
        lines.iter().any(|l| l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("pingora"))
            && l["message"].is_string()),
        "Pingora's own records as JSON lines too:\n{log}"
    );
}

type JsonLine = serde_json::Map<String, Value>;

/// The four access lines of [`send_vectors`]: the hostile CN and path, an anonymous POST, the
/// Kea command, the request refused before routing.
fn access_lines_are_typed(access: &[&JsonLine], web: &str) {
    let evil = access[0];
    assert_eq!(evil["level"], "INFO");
    assert_eq!(evil["listener"], "edge");
    assert_eq!(evil["cn"], EVIL_CN, "the CN exactly as in the certificate");
    assert_eq!(evil["method"], "GET");
    assert_eq!(evil["path"], EVIL_PATH);
    assert_eq!(evil["route"], "web");
    assert_eq!(evil["peer"], web);
    assert_eq!(evil["status"], 200, "a number");
    assert!(
        evil["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{evil:?}"
    );
    let client: SocketAddr = evil["client"].as_str().unwrap().parse().unwrap();
    assert_eq!(client.ip().to_string(), "127.0.0.1");
    assert!(
        !evil.contains_key("message"),
        "fields, not a message: {evil:?}"
    );

    let anon = access[1];
    assert_eq!(anon["cn"], Value::Null);
    assert_eq!(
        (anon["method"].as_str(), anon["path"].as_str()),
        (Some("POST"), Some("/web/anon"))
    );
    assert_eq!(anon["status"], 200);

    assert_eq!(
        (access[2]["path"].as_str(), access[2]["status"].as_u64()),
        (Some("/kea"), Some(200))
    );

    let refused = access[3];
    assert_eq!(refused["status"], 400);
    assert_eq!(refused["route"], Value::Null, "answered before routing");
    assert_eq!(refused["peer"], Value::Null);
}

/// The hostile link's `link_open` and `link_closed` lines, to the master at `master`.
fn link_lines_are_typed(open: &JsonLine, closed: &JsonLine, master: &str) {
    for l in [open, closed] {
        assert_eq!(l["listener"], "edge");
        assert_eq!(l["cn"], EVIL_CN);
        assert_eq!(l["sni"], EVIL_SNI, "the SNI exactly as sent");
        assert_eq!(l["upstream"], "master");
        assert_eq!(l["peer"], master);
        assert!(
            l["client"].as_str().unwrap().starts_with("127.0.0.1:"),
            "{l:?}"
        );
    }
    assert_eq!(open["event"], "link_open");
    assert_eq!(closed["event"], "link_closed");
    assert_eq!(
        (
            closed["messages_up"].as_u64(),
            closed["messages_down"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert!(
        closed["duration_s"].as_f64().is_some_and(|d| d >= 0.0),
        "{closed:?}"
    );
    assert_eq!(closed["end"], "closed");
    assert_eq!(closed["reason"], "client closed the connection");
}

/// Without `log_format` the lines are env_logger's text, and the same hostile values come out
/// escaped: no line break, quote or control character of theirs reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_still_escape_what_clients_choose() {
    let tmp = tempfile::tempdir().unwrap();
    let s = start(tmp.path(), None).await;
    send_vectors(&s, "link closed:").await;
    let log = wait_for_line(&s.gh, &["gatehouse::access", "status=400"]);
    for l in log.lines() {
        let b = l.as_bytes();
        let env_logger_line =
            b.len() > 12 && b[0] == b'[' && b[1..5].iter().all(u8::is_ascii_digit) && b[11] == b'T';
        assert!(
            env_logger_line,
            "a line that env_logger did not start: {l:?}\n{log}"
        );
        assert!(
            !l.chars().any(|c| c.is_control()),
            "a control character: {l:?}"
        );
    }
    let access = |needle: &str| {
        log.lines()
            .find(|l| l.contains("gatehouse::access] listener=edge") && l.contains(needle))
            .unwrap_or_else(|| panic!("no access line with {needle}:\n{log}"))
            .to_string()
    };
    let evil = access("path=/web/q");
    assert!(
        evil.contains(&format!("cn={EVIL_CN_TEXT} sub=- method=GET path=/web/q\\\"u'o%0At%01e route=web peer={} status=200 duration_ms=", s.web.addr)),
        "{evil}"
    );
    assert!(access("path=/web/anon").contains("cn=- sub=- method=POST"));
    assert!(access("status=400").contains("route=- peer=- status=400"));
    // The audit record is the line's message, as before.
    let audit = log
        .lines()
        .find_map(|l| l.split_once(" gatehouse::audit] ").map(|(_, m)| m))
        .unwrap_or_else(|| panic!("no audit line:\n{log}"));
    let audit: Value = serde_json::from_str(audit).unwrap();
    assert_eq!(audit["command"], "version-get");
    let open = log
        .lines()
        .find(|l| l.contains("link open:"))
        .unwrap_or_else(|| panic!("no link open line:\n{log}"));
    assert!(
        open.contains(&format!("link open: {EVIL_CN_TEXT}@127.0.0.1:"))
            && open.contains(&format!(
                "sni={EVIL_SNI_TEXT} → upstream master peer {}",
                s.sink.addr
            )),
        "{open}"
    );
    assert!(
        log.contains("up / 1 down messages: client closed the connection"),
        "{log}"
    );
}
