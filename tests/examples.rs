//! The programs in `examples/` that build their own edge on the library, run against real
//! TLS: what they add works, and everything else passes exactly as the plain binary would.

mod common;

use common::sink::{Sink, SinkMode};
use common::*;
use gatehouse::rpc::codec;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn ns(s: &str) -> Vec<u8> {
    codec::encode(s.as_bytes())
}

/// Reads frames until `n` arrived or `t` passed.
async fn read_frames<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
    n: usize,
    t: Duration,
) -> Vec<Vec<u8>> {
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + t;
    while out.len() < n {
        while let Ok(Some(f)) = codec::decode(&mut buf, 1 << 20) {
            out.push(f.payload().to_vec());
        }
        if out.len() >= n {
            break;
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(k)) if k > 0 => buf.extend_from_slice(&chunk[..k]),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redact_filter_rewrites_answers_and_passes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let rp = RelayPki::new(tmp.path());
    let sink = Sink::start(rp.master_acceptor(), SinkMode::Echo).await;
    let (port, mport) = (free_port(), free_port());
    let p = rp.pki.dir.display();
    let yaml = format!(
        r#"listeners:
  - name: cluster
    address: "127.0.0.1:{port}"
    protocols: [jsonrpc]
    tls: {{ cert: {p}/server.crt, key: {p}/server.key, client_auth: optional, client_ca: {p}/ca.crt }}
upstreams:
  master: {{ peers: ["{sink}"], tls: {{ ca: {p}/ca.crt, client_cert: {p}/edge.crt, client_key: {p}/edge.key, sni: master1 }} }}
jsonrpc:
  routes: [ {{ sni: master1, upstream: master }} ]
  upstream_identity: {{ cert_dir: {ids} }}
audit: {{ path: {d}/audit.jsonl }}
metrics: {{ address: "127.0.0.1:{mport}" }}
"#,
        sink = sink.addr,
        ids = rp.ids.display(),
        d = tmp.path().display(),
    );
    let gh = Gatehouse::start_bin(&example_bin("redact_filter"), tmp.path(), &yaml);
    let agent = ClientOpts {
        ca: Some(rp.pki.ca_path()),
        cert: Some(rp.pki.paths("agent1")),
        sni: Some("master1".into()),
        tls12: false,
    };
    let mut s = tls_connect(SocketAddr::from(([127, 0, 0, 1], port)), &agent)
        .await
        .unwrap();

    let hello =
        r#"{"jsonrpc":"2.0","method":"icinga::Hello","params":{"capabilities":1,"version":21306}}"#;
    let leaky = r#"{"jsonrpc":"2.0","method":"event::CheckResult","params":{"host":"h1","cr":{"output":"login ok user=nagios password=hunter2 rc=0","state":0.0}}}"#;
    let clean = r#"{"jsonrpc":"2.0","method":"event::CheckResult","params":{"host":"h1","cr":{"output":"disk 42% used","state":0.0}}}"#;
    let ping = r#"{"jsonrpc":"2.0","method":"example::Ping","params":{},"id":"p-7"}"#;
    let push = r#"{"jsonrpc":"2.0","method":"config::Update","params":{}}"#;
    let mut burst = Vec::new();
    for m in [hello, leaky, ping, push, clean] {
        burst.extend(ns(m));
    }
    s.write_all(&burst).await.unwrap();

    // At the master: the hello and the clean result byte-identical, the leaky one redacted;
    // the ping answered at the edge and the config push refused by the built-in policy.
    let redacted = leaky.replace("password=hunter2", "password=***");
    let want = [hello.to_string(), redacted, clean.to_string()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.frames().len() < want.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let at_master: Vec<String> = sink
        .frames()
        .iter()
        .map(|f| {
            let mut b = bytes::BytesMut::from(&f[..]);
            let frame = codec::decode(&mut b, 1 << 20).unwrap().unwrap();
            String::from_utf8(frame.payload().to_vec()).unwrap()
        })
        .collect();
    assert_eq!(at_master, want, "what reached the master");

    // Back at the agent: the edge's answer to the ping (with its id), then the master's echoes.
    let back = read_frames(&mut s, 4, Duration::from_secs(10)).await;
    let answers: Vec<serde_json::Value> = back
        .iter()
        .map(|f| serde_json::from_slice(f).unwrap())
        .filter(|v: &serde_json::Value| v.get("result").is_some())
        .collect();
    assert_eq!(answers.len(), 1, "{back:?}");
    assert_eq!(answers[0]["id"], "p-7");
    assert_eq!(answers[0]["result"]["pong"], true);
    assert_eq!(answers[0]["result"]["you"], "cn=agent1");

    let m = metrics_text(mport).await;
    for needle in [
        r#"gatehouse_rpc_messages_total{direction="upstream",method="other",verdict="answered"} 1"#,
        r#"gatehouse_rpc_messages_total{direction="upstream",method="config::Update",verdict="denied"} 1"#,
        r#"gatehouse_rpc_messages_total{direction="upstream",method="event::CheckResult",verdict="forwarded"} 2"#,
    ] {
        assert!(m.contains(needle), "missing `{needle}`:\n{m}");
    }
    // The built-in audit sink still records the policy's refusal.
    let audit = std::fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    let rec: serde_json::Value = serde_json::from_str(audit.lines().next().unwrap()).unwrap();
    assert_eq!(rec["kind"], "jsonrpc");
    assert_eq!(rec["method"], "config::Update");
    assert_eq!(rec["reason"], "jsonrpc.policy[1]");
    drop(gh);
}
