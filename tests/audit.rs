//! Every refusal reaches the `AuditSink` as a typed event: HTTP requests refused by a route's
//! `allow` (403), basic credentials (401), a rate limit (429); cluster links refused by a limit
//! and links replaced by a newer one of the same identity. Real TLS, curl with its defaults for
//! the HTTP side, raw netstrings for the cluster side.

mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::audit::{AuditEvent, LinkEvent, Verdict};
use gatehouse::cluster::codec;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn link_events(gh: &Gatehouse) -> Vec<LinkEvent> {
    gh.audit()
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::Link(l) => Some(l),
            _ => None,
        })
        .collect()
}

/// Waits (up to 10 s) until `f` holds on the recorded events.
async fn until_audited(what: &str, gh: &Gatehouse, f: impl Fn(&[AuditEvent]) -> bool) {
    until_explained(
        what,
        Duration::from_secs(10),
        || f(&gh.audit()),
        || format!("{:#?}", gh.audit()),
    )
    .await
}

/// The status curl (defaults: HTTP/2) got for `path`, as `who`, asking for `master1`.
async fn status(pki: &Pki, who: &str, port: u16, path: &str, extra: &[&str]) -> String {
    let resolve = format!("master1:{port}:127.0.0.1");
    let mut args = vec!["--resolve", resolve.as_str()];
    args.extend_from_slice(extra);
    curl(pki, who, &format!("https://master1:{port}{path}"), &args)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refusals_and_link_refusals_are_audited() {
    if !require_binary("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rp = RelayPki::new(dir);
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let web = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let gh = Gatehouse::in_process(dir, &refusing_conf(dir, &rp, &sink, &web, port));
    let pki = &rp.pki;

    http_refusals_are_audited(&gh, pki, port).await;
    let anon = ClientOpts {
        ca: Some(pki.ca_path()),
        cert: None,
        sni: Some("master1".into()),
        tls12: false,
    };
    let anonymous = second_anonymous_link_is_audited(&gh, &sink, &anon, port).await;
    let agent = ClientOpts {
        cert: Some(pki.paths("agent1")),
        ..anon.clone()
    };
    let agents = replaced_link_is_audited(&gh, &sink, &agent, port).await;
    drop((anonymous, agents));
}

/// One listener for HTTP and cluster links with a route for each HTTP refusal (`/ops` for
/// `cn:ops` only, `/auth` for basic user alice, `/limited` at one request), a catch-all, and
/// a relay allowing one anonymous link per IP and one link per identity.
fn refusing_conf(dir: &Path, rp: &RelayPki, sink: &Sink, web: &Upstream, port: u16) -> Conf {
    let users = dir.join("users");
    std::fs::write(
        &users,
        format!("alice:{}\n", gatehouse::http::basic::hash("pw-a").unwrap()),
    )
    .unwrap();
    let mut auth = Route::new("auth", "web")
        .path("/auth")
        .allow(["user:alice"]);
    auth.basic_auth = Some(conf::BasicAuth {
        users_file: users,
        realm: None,
    });
    Conf::new()
        .listener(rp.listener("edge", port, &[Protocol::Http, Protocol::Cluster]))
        .upstream("web", Group::new(web.addr))
        .upstream("master", rp.master(sink.addr))
        .route(Route::new("ops", "web").path("/ops").allow(["cn:ops"]))
        .route(auth)
        .route(
            Route::new("limited", "web")
                .path("/limited")
                .rate_limit(0.001, Some(1)),
        )
        .route(Route::new("web", "web"))
        .cluster(
            rp.cluster("master").limits(
                conf::Limits::default()
                    .anonymous_max_per_ip(1)
                    .max_links_per_identity(1),
            ),
        )
}

/// A route's allow, basic credentials, a rate limit — curl with its defaults (HTTP/2): one
/// event per refusal, none for the requests that went through.
async fn http_refusals_are_audited(gh: &Gatehouse, pki: &Pki, port: u16) {
    assert_eq!(status(pki, "agent1", port, "/ops", &[]).await, "403");
    assert_eq!(status(pki, "agent1", port, "/auth", &[]).await, "401");
    assert_eq!(
        status(pki, "agent1", port, "/auth", &["-u", "alice:wrong"]).await,
        "401"
    );
    assert_eq!(status(pki, "agent1", port, "/limited", &[]).await, "200");
    assert_eq!(status(pki, "agent1", port, "/limited", &[]).await, "429");
    assert_eq!(status(pki, "agent1", port, "/", &[]).await, "200");
    until_audited("four HTTP events", gh, |_| gh.http_events().len() >= 4).await;
    let h = gh.http_events();
    let find = |route: &str, status: u16| {
        h.iter()
            .find(|e| e.route == route && e.status == status)
            .unwrap_or_else(|| panic!("no {route} {status} in {h:#?}"))
    };
    let e = find("ops", 403);
    assert_eq!(
        (e.verdict, e.reason.as_str(), e.identity.cn.as_deref()),
        (
            Verdict::Denied,
            "route 'ops' is not allowed for cn=agent1",
            Some("agent1")
        )
    );
    assert_eq!((e.method.as_str(), e.path.as_str()), ("GET", "/ops"));
    assert!(e
        .client
        .as_deref()
        .is_some_and(|c| c.starts_with("127.0.0.1:")));
    assert_eq!(e.identity.fingerprint.as_ref().map(String::len), Some(64));
    let reasons: Vec<&str> = h
        .iter()
        .filter(|e| e.route == "auth")
        .map(|e| e.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        ["no basic credentials", "basic credentials refused"]
    );
    assert!(h
        .iter()
        .filter(|e| e.route == "auth")
        .all(|e| e.verdict == "unauthorized"));
    let e = find("limited", 429);
    assert_eq!(e.verdict, "rate_limited");
    assert!(e.reason.starts_with("filter "), "{e:?}");
    assert_eq!(
        h.len(),
        4,
        "nothing for the requests that went through: {h:#?}"
    );
}

type Link = tokio_boring::SslStream<tokio::net::TcpStream>;

fn hello() -> Vec<u8> {
    codec::encode(br#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{}}"#)
}

/// A second anonymous link from this address is refused at the edge, and audited so. Returns
/// both links, kept open until the test ends.
async fn second_anonymous_link_is_audited(
    gh: &Gatehouse,
    sink: &Sink,
    anon: &ClientOpts,
    port: u16,
) -> (Link, Link) {
    let mut first = tls_connect(addr(port), anon).await.unwrap();
    first.write_all(&hello()).await.unwrap();
    until(
        "the first link to reach the master",
        Duration::from_secs(10),
        || !sink.frames().is_empty(),
    )
    .await;
    let mut second = tls_connect(addr(port), anon).await.unwrap();
    let _ = second.write_all(&hello()).await;
    until_audited("a refused link", gh, |_| {
        link_events(gh).iter().any(|e| e.verdict == "refused")
    })
    .await;
    let l = link_events(gh);
    let refused = l.iter().find(|e| e.verdict == "refused").unwrap();
    assert!(
        refused.reason.starts_with("anonymous_max_per_ip: "),
        "{refused:?}"
    );
    assert_eq!(
        (refused.sni.as_str(), refused.identity.cn.as_ref()),
        ("master1", None)
    );
    (first, second)
}

/// The same identity twice: the older link is replaced, and that is recorded for it. Returns
/// both links, kept open until the test ends.
async fn replaced_link_is_audited(
    gh: &Gatehouse,
    sink: &Sink,
    agent: &ClientOpts,
    port: u16,
) -> (Link, Link) {
    let mut a1 = tls_connect(addr(port), agent).await.unwrap();
    a1.write_all(&hello()).await.unwrap();
    let before = sink.frames().len();
    until(
        "agent1's first link to reach the master",
        Duration::from_secs(10),
        || sink.frames().len() > before,
    )
    .await;
    let mut a2 = tls_connect(addr(port), agent).await.unwrap();
    a2.write_all(&hello()).await.unwrap();
    until_audited("a replaced link", gh, |_| {
        link_events(gh).iter().any(|e| e.verdict == "replaced")
    })
    .await;
    let l = link_events(gh);
    let replaced = l.iter().find(|e| e.verdict == "replaced").unwrap();
    assert_eq!(replaced.identity.cn.as_deref(), Some("agent1"));
    assert!(
        replaced.reason.contains("max_links_per_identity: 1"),
        "{replaced:?}"
    );
    (a1, a2)
}
