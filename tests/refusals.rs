//! Every answer Gatehouse gives without the request body reaches curl intact: a route refusal,
//! a Kea rule refusal, a 401, a 413, a 429 and an edge answer, each asked 200 times by curl with
//! its defaults (HTTP/2 by ALPN) and 200 times over HTTP/1.1, with a body and without, plus a
//! body larger than what Gatehouse reads before answering. Each curl is its own process and
//! connection, as an operator's script runs it; any curl error fails the test.
//!
//! An HTTP/2 stream answered while the client is still sending must end with the answer and
//! `RST_STREAM(NO_ERROR)`; any other end is `curl: (92) Stream error in the HTTP/2 framing layer`
//! for the client, whatever the access log says.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// How often each kind is asked, per HTTP version and body.
const TRIES: usize = 200;
/// curl processes at once.
const AT_ONCE: usize = 4;

/// One way to be refused: where, as whom, and which statuses count as the answer.
struct Kind {
    name: &'static str,
    path: &'static str,
    who: &'static str,
    /// Extra curl arguments (credentials).
    args: &'static [&'static str],
    /// The body sent with `-d` (`None`: a GET without one).
    body: Option<String>,
    want: &'static [u16],
}

/// What one curl run ended with.
#[derive(Debug)]
struct Outcome {
    ok: bool,
    status: u16,
    version: String,
    stderr: String,
}

async fn curl(port: u16, pki: &Pki, kind: &Kind, http11: bool, scratch: &Path) -> Outcome {
    let (cert, key) = pki.paths(kind.who);
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "15", "--cacert"])
        .arg(pki.ca_path())
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .args(kind.args);
    if http11 {
        cmd.arg("--http1.1");
    }
    if let Some(body) = &kind.body {
        // Large bodies from a file, as `-d @file` does for an operator's saved command.
        if body.len() > 4096 {
            let file = scratch.join(format!("{}.json", kind.name));
            if !file.exists() {
                std::fs::write(&file, body).unwrap();
            }
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(format!("@{}", file.display()));
        } else {
            cmd.args(["-H", "Content-Type: application/json", "-d", body]);
        }
    }
    cmd.arg(format!("https://127.0.0.1:{port}{}", kind.path))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("curl within 20 s")
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut it = stdout.split_whitespace();
    Outcome {
        ok: out.status.success(),
        status: it.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        version: it.next().unwrap_or("").to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    }
}

/// Runs `kind` [`TRIES`] times over HTTP/2 and over HTTP/1.1; every failure, and the statuses.
async fn hammer(
    port: u16,
    pki: &Arc<Pki>,
    kind: Arc<Kind>,
    scratch: &Path,
) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut failures = Vec::new();
    let mut statuses = BTreeMap::new();
    for http11 in [false, true] {
        let mut left = TRIES;
        while left > 0 {
            let batch = left.min(AT_ONCE);
            left -= batch;
            let runs: Vec<_> = (0..batch)
                .map(|_| {
                    let (pki, kind, scratch) = (pki.clone(), kind.clone(), scratch.to_path_buf());
                    tokio::spawn(async move { curl(port, &pki, &kind, http11, &scratch).await })
                })
                .collect();
            for r in runs {
                let o = r.await.unwrap();
                let want_version = if http11 { "1.1" } else { "2" };
                *statuses
                    .entry(format!("{} HTTP/{}", o.status, o.version))
                    .or_insert(0) += 1;
                if !o.ok || !kind.want.contains(&o.status) || o.version != want_version {
                    failures.push(format!(
                        "{} (HTTP/{want_version}): {} HTTP/{} {}",
                        kind.name, o.status, o.version, o.stderr
                    ));
                }
            }
        }
    }
    (failures, statuses)
}

fn users_file(dir: &Path) -> PathBuf {
    let users = dir.join("users");
    std::fs::write(
        &users,
        format!("alice:{}\n", gatehouse::http::basic::hash("pw-a").unwrap()),
    )
    .unwrap();
    users
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_sent_without_the_body_reach_curl_intact() {
    if !require_binary("curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::edge(tmp.path(), &["ops", "other", "client"]));
    let origin = Upstream::h1(None, Behavior::Echo).await;
    let port = reserved_port();
    let _gh = Gatehouse::start(tmp.path(), &refusing_conf(tmp.path(), &pki, &origin, port));

    let mut failures = Vec::new();
    let mut report = String::new();
    for kind in kinds() {
        let name = kind.name;
        let (f, statuses) = hammer(port, &pki, Arc::new(kind), tmp.path()).await;
        report.push_str(&format!("{name}: {statuses:?}, {} failed\n", f.len()));
        failures.extend(f);
    }
    eprintln!("{report}");
    assert!(
        failures.is_empty(),
        "{} of {} curl runs failed:\n{}\n{report}",
        failures.len(),
        13 * 2 * TRIES,
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        origin.seen().iter().all(|s| s.path == "/limited"),
        "only the one request the rate limit let through reached the origin"
    );
}

/// One route per kind of answer sent without the request body: `/route` (cn:ops only),
/// `/rule` (a Kea rule for cn:client, 1 KiB bodies), `/auth` (basic, alice), `/limited` (one
/// request), `/agent` (the agent's own commands answered at the edge).
fn refusing_conf(dir: &Path, pki: &Pki, origin: &Upstream, port: u16) -> Conf {
    let listener =
        Listener::new("edge", port).tls(ListenerTls::from_pki(pki, "server", ClientAuth::Required));
    let mut auth = Route::new("auth", "origin").path("/auth");
    auth.basic_auth = Some(conf::BasicAuth {
        users_file: users_file(dir),
        realm: None,
    });
    Conf::new()
        .listener(listener)
        .upstream("origin", Group::new(origin.addr))
        .route(
            Route::new("route", "origin")
                .path("/route")
                .allow(["cn:ops"]),
        )
        .route(
            Route::new("rule", "origin").path("/rule").kea(
                KeaRoute::deny_by_default()
                    .max_body("1KiB")
                    .rule(KeaRule::new(["cn:client"]).commands(AllowDeny::only(["version-get"]))),
            ),
        )
        .route(auth.allow(["user:alice"]))
        .route(
            Route::new("limited", "origin")
                .path("/limited")
                .rate_limit(0.001, Some(1)),
        )
        .route(
            Route::agent("agent", KeaRoute::allow_all().service("dhcp4", "origin")).path("/agent"),
        )
}

/// The 13 kinds of answer [`refusing_conf`] sends without the body, with and without one.
fn kinds() -> Vec<Kind> {
    let command = r#"{"command":"config-set","service":["dhcp4"],"arguments":{"Dhcp4":{}}}"#;
    let big = format!(
        r#"{{"command":"config-set","service":["dhcp4"],"arguments":{{"pad":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let kind = |name, path, who, args, body: Option<&str>, want| Kind {
        name,
        path,
        who,
        args,
        body: body.map(str::to_string),
        want,
    };
    vec![
        kind("route", "/route", "other", &[], None, &[403]),
        kind("route+body", "/route", "other", &[], Some(command), &[403]),
        kind("route+200KiB", "/route", "other", &[], Some(&big), &[403]),
        kind("rule", "/rule", "client", &[], Some(command), &[403]),
        kind("rule+nobody", "/rule", "client", &[], None, &[400]),
        kind("413", "/rule", "client", &[], Some(&big), &[413]),
        kind("401", "/auth", "ops", &[], None, &[401]),
        kind("401+body", "/auth", "ops", &[], Some(command), &[401]),
        kind(
            "401+wrong",
            "/auth",
            "ops",
            &["-u", "alice:wrong"],
            Some(command),
            &[401],
        ),
        kind("429", "/limited", "ops", &[], None, &[200, 429]),
        kind("429+body", "/limited", "ops", &[], Some(command), &[429]),
        kind(
            "edge",
            "/agent",
            "ops",
            &[],
            Some(r#"{"command":"list-commands"}"#),
            &[200],
        ),
        kind("edge+nobody", "/agent", "ops", &[], None, &[400]),
    ]
}
