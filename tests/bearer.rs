//! Bearer tokens (issue 28): a real OpenID provider (`oidc-provider`, tests/oidc) issues JWT
//! access tokens with the client-credentials grant; curl with its defaults (HTTP/2 over TLS)
//! presents them to Gatehouse. Every case the issue lists: allowed and refused by a group
//! claim, expired, not yet valid, wrong audience, wrong issuer, `alg: none`, HS256 keyed with
//! the issuer's public key, tampered payload and signature, key rotation (one refresh), the
//! provider down (cached keys, then refused), certificate and token together, a Kea
//! `config-set` by a pipeline token audited with its claims, a rate limit per `sub`.

mod common;

use common::oidc::{Idp, ADMIN, VIEWER};
use common::*;

use std::path::Path;
use std::time::Duration;

/// What curl saw: status, `WWW-Authenticate`, body, and whether it exited cleanly.
#[derive(Debug)]
struct Seen {
    status: String,
    challenge: String,
    body: String,
    version: String,
    clean: bool,
}

/// curl with its defaults (HTTP/2 over TLS), trusting the edge CA, as `cert` (a client
/// certificate stem of `pki`) or none, with `token` as `Authorization: Bearer`.
async fn curl_as(
    pki: &Pki,
    cert: Option<&str>,
    port: u16,
    path: &str,
    token: Option<&str>,
    args: &[&str],
) -> Seen {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-D",
        "-",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .arg("--cacert")
    .arg(pki.ca_path());
    if let Some(who) = cert {
        let (c, k) = pki.paths(who);
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    if let Some(t) = token {
        cmd.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    cmd.args(args)
        .arg(format!("https://localhost:{port}{path}"));
    let out = tokio::time::timeout(Duration::from_secs(15), cmd.output())
        .await
        .expect("curl finished")
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = tail.split_once(' ').unwrap_or((tail, ""));
    let challenge = rest
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("www-authenticate")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let body = rest.split("\r\n\r\n").last().unwrap_or("").to_string();
    Seen {
        status: status.into(),
        challenge,
        body,
        version: version.into(),
        clean: out.status.success(),
    }
}

fn idp_issuer(idp: &Idp) -> conf::Issuer {
    conf::Issuer::new(idp.issuer(), "urn:gatehouse")
        .ca(idp.ca_pem_path())
        .min_refresh_interval("1s")
}

/// The edge: `/ops` for the `dhcp-admins` group, `/both` token and certificate, `/either`
/// token or certificate, `/fwd` forwards the token, `/limited` one request per `sub`, and
/// `/plain` takes no tokens (its `Authorization` is the upstream's business).
fn edge_conf(pki: &Pki, idp: &Idp, web: &Upstream, port: u16, metrics: u16) -> Conf {
    let ops = || conf::Bearer::new(["idp"]);
    Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            pki,
            "server",
            ClientAuth::Optional,
        )))
        .upstream("web", Group::new(web.addr))
        .issuer("idp", idp_issuer(idp))
        .route(
            Route::new("ops", "web")
                .path("/ops")
                .bearer(ops())
                .allow(["claim:groups=dhcp-admins"]),
        )
        .route(
            Route::new("both", "web")
                .path("/both")
                .bearer(ops().require("token_and_cert"))
                .allow(["cn:runner-*"]),
        )
        .route(
            Route::new("either", "web")
                .path("/either")
                .bearer(ops().require("token_or_cert"))
                .allow(["cn:runner-*", "client:gatehouse-*"]),
        )
        .route(
            Route::new("fwd", "web")
                .path("/fwd")
                .bearer(ops().forward(true)),
        )
        .route(
            Route::new("limited", "web")
                .path("/limited")
                .bearer(ops())
                .rate_limit(0.001, Some(1)),
        )
        .route(Route::new("plain", "web").path("/plain"))
        .metrics(metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_a_real_provider_through_curl() {
    let Some(idp) = Idp::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &["runner-1", "someone"]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let gh = Gatehouse::in_process(tmp.path(), &edge_conf(&pki, &idp, &web, port, mport));
    let admin = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    let viewer = idp.token(VIEWER.0, VIEWER.1, "urn:gatehouse");

    claims_decide(&pki, &idp, port, &admin, &viewer).await;
    hostile_tokens_are_refused(&gh, &pki, &idp, port, &admin).await;
    certificate_and_token(&pki, port, &admin).await;
    authorization_reaches_the_upstream_only_where_it_should(&pki, &web, port, &admin).await;
    rate_limit_counts_by_sub(&pki, port, &admin, &viewer).await;
    rotation_needs_one_refresh(&gh, &pki, &idp, port).await;
    withdrawn_keys_stop_remembered_tokens(&pki, &idp, port, &admin).await;
    refusals_are_audited_with_the_token(&gh);
}

/// The group claim decides `/ops`; RS256, ES256 and EdDSA tokens of the provider verify; no
/// token is a 401 with a bare challenge, a refusal by claim a 403.
async fn claims_decide(pki: &Pki, idp: &Idp, port: u16, admin: &str, viewer: &str) {
    let ok = curl_as(pki, None, port, "/ops/x", Some(admin), &[]).await;
    assert_eq!(
        (ok.status.as_str(), ok.version.as_str()),
        ("200", "2"),
        "{ok:?}"
    );
    for resource in ["urn:gatehouse:es256", "urn:gatehouse:eddsa"] {
        let t = idp.token(ADMIN.0, ADMIN.1, resource);
        let r = curl_as(pki, None, port, "/ops/x", Some(&t), &[]).await;
        assert_eq!(r.status, "200", "{resource}: {r:?}");
    }
    let no = curl_as(pki, None, port, "/ops/x", Some(viewer), &[]).await;
    assert_eq!(no.status, "403", "viewers are not dhcp-admins: {no:?}");
    assert!(no.body.contains("sub=gatehouse-viewer (idp)"), "{no:?}");
    let none = curl_as(pki, None, port, "/ops/x", None, &[]).await;
    assert_eq!(none.status, "401", "{none:?}");
    assert_eq!(none.challenge, "Bearer realm=\"gatehouse\"", "{none:?}");
    // Kea-shaped JSON for a JSON client, and the refusal before the body is read does not
    // break curl's HTTP/2 upload.
    let big = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(big.path(), "x".repeat(200_000)).unwrap();
    let upload = format!("@{}", big.path().display());
    let post = curl_as(
        pki,
        None,
        port,
        "/ops/x",
        Some("not-a-jwt"),
        &[
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &upload,
        ],
    )
    .await;
    assert_eq!(post.status, "401", "{post:?}");
    assert!(
        post.clean,
        "curl exits cleanly on the refused upload: {post:?}"
    );
    let v: serde_json::Value = serde_json::from_str(&post.body).expect("JSON body");
    assert_eq!(v["result"], 401, "{post:?}");
    assert!(
        post.challenge.contains("error=\"invalid_token\""),
        "{post:?}"
    );
}

/// Each hostile token of the crafter, and the provider's own wrong ones, is a 401
/// `invalid_token` counted under its reason.
async fn hostile_tokens_are_refused(gh: &Gatehouse, pki: &Pki, idp: &Idp, port: u16, admin: &str) {
    let crafted = idp.craft(Some(admin), None);
    for (what, token, reason) in &hostile_cases(idp, &crafted) {
        let r = curl_as(pki, None, port, "/ops/x", Some(token), &[]).await;
        assert_eq!(r.status, "401", "{what}: {r:?}");
        assert!(
            r.challenge
                .starts_with("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
            "{what}: {r:?}"
        );
        let text = gh.metrics_text().await;
        let issuer = if *reason == "issuer" { "-" } else { "idp" };
        let n = metric(
            &text,
            "gatehouse_bearer_tokens_total",
            &[("issuer", issuer), ("result", reason)],
        );
        assert!(n >= 1.0, "{what}: no {reason} count\n{text}");
    }
    for ok in ["valid", "valid_es256", "audience_array_ok", "other_sub"] {
        let r = curl_as(pki, None, port, "/ops/x", Some(&crafted[ok]), &[]).await;
        assert_eq!(r.status, "200", "{ok} (the crafter's control case): {r:?}");
    }
}

/// `/both` needs the certificate and the token; `/either` takes one or the other, but a token
/// that is sent must verify.
async fn certificate_and_token(pki: &Pki, port: u16, admin: &str) {
    let both = curl_as(pki, Some("runner-1"), port, "/both/x", Some(admin), &[]).await;
    assert_eq!(both.status, "200", "{both:?}");
    let no_cert = curl_as(pki, None, port, "/both/x", Some(admin), &[]).await;
    assert_eq!(no_cert.status, "403", "{no_cert:?}");
    let no_token = curl_as(pki, Some("runner-1"), port, "/both/x", None, &[]).await;
    assert_eq!(no_token.status, "401", "{no_token:?}");
    let wrong_cert = curl_as(pki, Some("someone"), port, "/both/x", Some(admin), &[]).await;
    assert_eq!(wrong_cert.status, "403", "cn:runner-* only: {wrong_cert:?}");

    let cert_only = curl_as(pki, Some("runner-1"), port, "/either/x", None, &[]).await;
    assert_eq!(cert_only.status, "200", "{cert_only:?}");
    let token_only = curl_as(pki, None, port, "/either/x", Some(admin), &[]).await;
    assert_eq!(
        token_only.status, "200",
        "client:gatehouse-*: {token_only:?}"
    );
    let neither = curl_as(pki, None, port, "/either/x", None, &[]).await;
    assert_eq!(neither.status, "401", "{neither:?}");
    let bad = curl_as(pki, Some("runner-1"), port, "/either/x", Some("a.b.c"), &[]).await;
    assert_eq!(
        bad.status, "401",
        "a token that is sent must verify: {bad:?}"
    );
}

/// The token is removed upstream unless `forward: true`; a route without `bearer` passes the
/// caller's `Authorization` (Icinga's basic credentials) untouched.
async fn authorization_reaches_the_upstream_only_where_it_should(
    pki: &Pki,
    web: &Upstream,
    port: u16,
    admin: &str,
) {
    let auth_seen = |path: &str| {
        web.seen()
            .iter()
            .rev()
            .find(|s| s.path.starts_with(path))
            .map(|s| s.header("authorization").map(str::to_string))
            .unwrap_or_else(|| panic!("the upstream never saw {path}"))
    };
    assert_eq!(
        curl_as(pki, None, port, "/ops/kept", Some(admin), &[])
            .await
            .status,
        "200"
    );
    assert_eq!(auth_seen("/ops/kept"), None, "the token stays at the edge");
    assert_eq!(
        curl_as(pki, None, port, "/fwd/x", Some(admin), &[])
            .await
            .status,
        "200"
    );
    assert_eq!(auth_seen("/fwd/x"), Some(format!("Bearer {admin}")));
    let twice = curl_as(
        pki,
        None,
        port,
        "/fwd/x",
        Some(admin),
        &["-H", "Authorization: Basic cm9vdDppY2luZ2E="],
    )
    .await;
    assert_eq!(twice.status, "400", "two Authorization headers: {twice:?}");
    assert!(
        twice.challenge.contains("error=\"invalid_request\""),
        "{twice:?}"
    );
    let basic = curl_as(pki, None, port, "/plain/x", None, &["-u", "root:icinga"]).await;
    assert_eq!(basic.status, "200", "{basic:?}");
    assert_eq!(auth_seen("/plain/x"), Some("Basic cm9vdDppY2luZ2E=".into()));
}

/// One request per `sub`: the admin's second is 429, the viewer's first still goes through.
async fn rate_limit_counts_by_sub(pki: &Pki, port: u16, admin: &str, viewer: &str) {
    let first = curl_as(pki, None, port, "/limited/x", Some(admin), &[]).await;
    assert_eq!(first.status, "200", "{first:?}");
    let second = curl_as(pki, Some("runner-1"), port, "/limited/x", Some(admin), &[]).await;
    assert_eq!(
        second.status, "429",
        "same sub, another certificate: {second:?}"
    );
    let other = curl_as(pki, None, port, "/limited/x", Some(viewer), &[]).await;
    assert_eq!(
        other.status, "200",
        "another sub has its own bucket: {other:?}"
    );
}

/// The provider rotates its keys: a token with the new `kid` is accepted after exactly one
/// more fetch, and a stream of unknown `kid`s does not make Gatehouse fetch again and again.
async fn rotation_needs_one_refresh(gh: &Gatehouse, pki: &Pki, idp: &Idp, port: u16) {
    let fetches = |text: &str| {
        metric(
            text,
            "gatehouse_bearer_key_fetches_total",
            &[("issuer", "idp"), ("result", "ok")],
        )
    };
    let before = fetches(&gh.metrics_text().await);
    assert!(before >= 1.0, "the keys were fetched at the first token");
    tokio::time::sleep(Duration::from_millis(1100)).await; // past min_refresh_interval
    let kids = idp.rotate(false);
    let fresh = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    let (header, _) = common::oidc::decode_jwt(&fresh);
    assert_eq!(header["kid"], kids[0].as_str(), "signed with the new key");
    let r = curl_as(pki, None, port, "/ops/x", Some(&fresh), &[]).await;
    assert_eq!(r.status, "200", "new kid after one refresh: {r:?}");
    assert_eq!(fetches(&gh.metrics_text().await), before + 1.0);
    let unknown = idp.craft(None, None)["unknown_kid"].clone();
    for _ in 0..5 {
        let r = curl_as(pki, None, port, "/ops/x", Some(&unknown), &[]).await;
        assert_eq!(r.status, "401", "{r:?}");
    }
    assert!(
        fetches(&gh.metrics_text().await) <= before + 2.0,
        "unknown kids fetch at most once per min_refresh_interval"
    );
}

/// A token verified once is remembered, but not past its issuer's keys: once the provider
/// withdraws the key that signed it and Gatehouse has fetched the new set, it is refused.
async fn withdrawn_keys_stop_remembered_tokens(pki: &Pki, idp: &Idp, port: u16, admin: &str) {
    let before = curl_as(pki, None, port, "/ops/x", Some(admin), &[]).await;
    assert_eq!(
        before.status, "200",
        "the old key is still published: {before:?}"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // past min_refresh_interval
    idp.rotate(true);
    let newest = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    let r = curl_as(pki, None, port, "/ops/x", Some(&newest), &[]).await;
    assert_eq!(r.status, "200", "the newest key, after one fetch: {r:?}");
    let after = curl_as(pki, None, port, "/ops/x", Some(admin), &[]).await;
    assert_eq!(after.status, "401", "its key was withdrawn: {after:?}");
    assert!(after.challenge.contains("invalid_token"), "{after:?}");
}

/// 401s are audited as `unauthorized`, with why; a token that verified is in the event.
fn refusals_are_audited_with_the_token(gh: &Gatehouse) {
    let events = gh.http_events();
    let expired = events
        .iter()
        .find(|e| e.reason.contains("expired"))
        .unwrap_or_else(|| panic!("no expired refusal in {events:#?}"));
    assert_eq!((expired.status, expired.route.as_str()), (401, "ops"));
    assert_eq!(expired.reason, "bearer token refused: expired (issuer idp)");
    let by_claim = events
        .iter()
        .find(|e| e.status == 403 && e.route == "ops")
        .unwrap_or_else(|| panic!("no claim refusal in {events:#?}"));
    let t = by_claim
        .identity
        .token
        .as_ref()
        .expect("the token in the event");
    assert_eq!(
        (t.issuer.as_str(), t.sub.as_str()),
        ("idp", "gatehouse-viewer")
    );
    assert_eq!(t.client.as_deref(), Some("gatehouse-viewer"));
    assert!(t.jti.as_deref().is_some_and(|j| !j.is_empty()));
}

/// The provider goes down: tokens keep verifying with the cached keys until `max_stale`,
/// then are answered 503 (fail closed); back up, they verify again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_down_serves_cached_keys_then_fails_closed() {
    let Some(idp) = Idp::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &[]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let (port, mport) = (reserved_port(), reserved_port());
    let conf = Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            &pki,
            "server",
            ClientAuth::None,
        )))
        .upstream("web", Group::new(web.addr))
        .issuer(
            "idp",
            idp_issuer(&idp).refresh_interval("1s").max_stale("3s"),
        )
        .route(Route::new("ops", "web").bearer(conf::Bearer::new(["idp"])))
        .metrics(mport);
    let gh = Gatehouse::in_process(tmp.path(), &conf);
    let admin = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    assert_eq!(
        curl_as(&pki, None, port, "/", Some(&admin), &[])
            .await
            .status,
        "200"
    );
    let fetched = std::time::Instant::now();
    idp.down("reset");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cached = curl_as(&pki, None, port, "/", Some(&admin), &[]).await;
    assert!(
        fetched.elapsed() < Duration::from_secs(3),
        "the test ran too slowly to tell"
    );
    assert_eq!(
        cached.status, "200",
        "cached keys while the provider is down: {cached:?}"
    );
    gh.wait_metrics("a failed key fetch", Duration::from_secs(5), |m| {
        metric(
            m,
            "gatehouse_bearer_key_fetches_total",
            &[("issuer", "idp"), ("result", "failed")],
        ) >= 1.0
    })
    .await;
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(fetched.elapsed()) + Duration::from_millis(300),
    )
    .await;
    let closed = curl_as(&pki, None, port, "/", Some(&admin), &[]).await;
    assert_eq!(closed.status, "503", "past max_stale: {closed:?}");
    idp.up();
    tokio::time::sleep(Duration::from_millis(1100)).await; // past min_refresh_interval
    let back = curl_as(&pki, None, port, "/", Some(&admin), &[]).await;
    assert_eq!(back.status, "200", "the provider is back: {back:?}");
    let text = gh.metrics_text().await;
    assert!(
        metric(
            &text,
            "gatehouse_bearer_tokens_total",
            &[("issuer", "idp"), ("result", "keys_unavailable")]
        ) >= 1.0,
        "{text}"
    );
}

crate::per_kea_release! {
    pipeline_token_changes_kea_and_is_audited =>
        pipeline_token_changes_kea_2_2, pipeline_token_changes_kea_2_6, pipeline_token_changes_kea_3_0;
}

/// A CI pipeline changes Kea: its workload token (group `dhcp-admins`) runs `config-get` then
/// `config-set` through Gatehouse to a real Kea of each release (2.2 and 2.6 behind their
/// Control Agent, 3.0's dhcp4 socket behind a `kea.daemon` route), and the audit records
/// both commands with the token's issuer, `sub`, client and `jti`; a viewer's `config-set` is
/// denied.
async fn pipeline_token_changes_kea_and_is_audited(release: common::kea::Release) {
    let Some(idp) = Idp::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &[]);
    let Some(kea) = common::kea::Kea::of(release, &tmp.path().join("kea"), reserved_port(), None)
    else {
        return;
    };
    let port = reserved_port();
    let audit = tmp.path().join("audit.jsonl");
    let gh = Gatehouse::start(tmp.path(), &pipeline_conf(&pki, &idp, &kea, port, &audit));
    pipeline_runs_config_set(&pki, &idp, port).await;
    let access = gh.wait_log("sub=gatehouse-admin method=POST");
    assert!(
        access.contains("route=kea") && access.contains("status=200"),
        "{access}"
    );
    pipeline_is_audited(&idp, &audit);
}

/// A Kea route for `dhcp-admins` (`config-get`, `config-set`) and `viewers` (`config-get`).
fn pipeline_conf(pki: &Pki, idp: &Idp, kea: &common::kea::Kea, port: u16, audit: &Path) -> Conf {
    Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            pki,
            "server",
            ClientAuth::None,
        )))
        .upstream("kea", Group::new(kea.addr))
        .issuer("idp", idp_issuer(idp))
        .route(
            Route::new("kea", "kea")
                .bearer(conf::Bearer::new(["idp"]))
                .kea(
                    if kea.release.has_agent() {
                        KeaRoute::deny_by_default()
                    } else {
                        KeaRoute::deny_by_default().daemon("dhcp4")
                    }
                    .rule(
                        KeaRule::new(["claim:groups=dhcp-admins"])
                            .commands(AllowDeny::only(["config-get", "config-set"])),
                    )
                    .rule(
                        KeaRule::new(["claim:groups=viewers"])
                            .commands(AllowDeny::only(["config-get"])),
                    ),
                ),
        )
        .audit_path(audit)
}

/// The pipeline reads Kea's configuration, changes it and sets it; Kea has it after; the
/// viewer's `config-set` is refused.
async fn pipeline_runs_config_set(pki: &Pki, idp: &Idp, port: u16) {
    let pipeline = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    let viewer = idp.token(VIEWER.0, VIEWER.1, "urn:gatehouse");
    let ask = |token: String, body: String| async move {
        let args = [
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body.as_str(),
        ];
        curl_as(pki, None, port, "/", Some(&token), &args).await
    };
    let got = ask(
        pipeline.clone(),
        r#"{"command":"config-get","service":["dhcp4"]}"#.into(),
    )
    .await;
    assert_eq!(got.status, "200", "{got:?}");
    let answer: serde_json::Value = serde_json::from_str(&got.body).expect("Kea's JSON");
    let mut config = answer[0]["arguments"].clone();
    assert!(config["Dhcp4"].is_object(), "{answer}");
    config["Dhcp4"]["valid-lifetime"] = serde_json::json!(4321);
    // Kea >= 2.6 answers config-get with the configuration's `hash` beside `Dhcp4` and refuses
    // it back in config-set ("Unsupported 'hash' parameter"): a pipeline drops it.
    if let Some(top) = config.as_object_mut() {
        top.remove("hash");
    }
    let set =
        serde_json::json!({"command": "config-set", "service": ["dhcp4"], "arguments": config});
    let r = ask(pipeline.clone(), set.to_string()).await;
    assert_eq!(r.status, "200", "{r:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()[0]["result"],
        0,
        "{r:?}"
    );
    let check = ask(
        pipeline,
        r#"{"command":"config-get","service":["dhcp4"]}"#.into(),
    )
    .await;
    assert!(
        check.body.contains("\"valid-lifetime\": 4321")
            || check.body.contains("\"valid-lifetime\":4321"),
        "Kea took the change"
    );
    let denied = ask(viewer, set.to_string()).await;
    assert_eq!(denied.status, "403", "{denied:?}");
}

/// The audit names the pipeline's token on its `config-set`, and the viewer on the refusal.
fn pipeline_is_audited(idp: &Idp, audit: &Path) {
    let lines = wait_for_lines(audit, 4);
    let audit: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let set_line = audit
        .iter()
        .find(|a| a["command"] == "config-set" && a["verdict"] == "allowed")
        .unwrap_or_else(|| panic!("no allowed config-set in {audit:#?}"));
    let token = &set_line["identity"]["token"];
    assert_eq!(token["issuer"], "idp", "{set_line}");
    assert_eq!(token["iss"], idp.issuer(), "{set_line}");
    assert_eq!(token["sub"], "gatehouse-admin", "{set_line}");
    assert_eq!(token["client"], "gatehouse-admin", "{set_line}");
    assert!(
        token["jti"].as_str().is_some_and(|j| !j.is_empty()),
        "{set_line}"
    );
    let denied = audit
        .iter()
        .find(|a| a["command"] == "config-set" && a["verdict"] == "denied")
        .unwrap_or_else(|| panic!("no denied config-set in {audit:#?}"));
    assert_eq!(denied["identity"]["token"]["sub"], "gatehouse-viewer");
    assert!(
        denied["reason"]
            .as_str()
            .is_some_and(|r| r.contains("sub=gatehouse-viewer (idp)")),
        "{denied}"
    );
}

/// The provider's wrong tokens and the crafter's hostile ones: what, token, refusal reason.
fn hostile_cases(
    idp: &Idp,
    crafted: &std::collections::HashMap<String, String>,
) -> Vec<(&'static str, String, &'static str)> {
    let future = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse:future");
    let other = idp.token(ADMIN.0, ADMIN.1, "urn:other");
    vec![
        ("expired", crafted["expired"].clone(), "expired"),
        ("not yet valid (provider)", future, "not_yet_valid"),
        (
            "not yet valid (crafted)",
            crafted["not_yet_valid"].clone(),
            "not_yet_valid",
        ),
        ("wrong audience (provider)", other, "audience"),
        (
            "wrong audience (crafted)",
            crafted["wrong_audience"].clone(),
            "audience",
        ),
        ("wrong issuer", crafted["wrong_issuer"].clone(), "issuer"),
        ("no exp", crafted["no_exp"].clone(), "claims"),
        ("alg none", crafted["alg_none"].clone(), "algorithm"),
        (
            "alg none, real kid",
            crafted["alg_none_kid"].clone(),
            "algorithm",
        ),
        (
            "HS256, public key PEM",
            crafted["hs256_public_pem"].clone(),
            "algorithm",
        ),
        (
            "HS256, public key DER",
            crafted["hs256_public_der"].clone(),
            "algorithm",
        ),
        (
            "HS256, modulus",
            crafted["hs256_public_n"].clone(),
            "algorithm",
        ),
        (
            "ES256 header, RSA kid",
            crafted["alg_kty_mismatch"].clone(),
            "key_mismatch",
        ),
        (
            "RS256 header, EC kid",
            crafted["alg_kty_mismatch2"].clone(),
            "key_mismatch",
        ),
        (
            "tampered payload",
            crafted["tampered_payload"].clone(),
            "signature",
        ),
        (
            "tampered signature",
            crafted["tampered_signature"].clone(),
            "signature",
        ),
        ("unknown kid", crafted["unknown_kid"].clone(), "unknown_key"),
    ]
}

fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One route per issuer setting, each issuer naming the same provider: every `issuers:` key
/// and `bearer.realm` shown to have its effect.
fn knobs_conf(
    pki: &Pki,
    idp: &Idp,
    web: &Upstream,
    jwks_file: &Path,
    hang: u16,
    port: u16,
) -> Conf {
    let base = || idp_issuer(idp);
    let hung = format!("https://127.0.0.1:{hang}/jwks");
    let issuers = [
        ("url", base().jwks_url(idp.jwks_url())),
        (
            "file",
            conf::Issuer::new(idp.issuer(), "urn:gatehouse").jwks_file(jwks_file),
        ),
        ("es", base().algorithms(["ES256"])),
        ("exact", base().leeway("0s")),
        ("jwt", base().typ(["JWT"])),
        ("at", base().typ(["application/AT+JWT"])),
        ("slow", base().jwks_url(&hung).fetch_timeout("1s")),
        ("roots", conf::Issuer::new(idp.issuer(), "urn:gatehouse")),
        ("both", base().audiences(["urn:nothing", "urn:other"])),
        // A second issuer of its own `iss`, its keys the provider's (the crafter signs its
        // `wrong_issuer` token with them): `/multi` takes either, picked by `iss`.
        (
            "evil",
            conf::Issuer::new("https://evil.example", "urn:gatehouse").jwks_file(idp.keys_file()),
        ),
    ];
    let mut c = Conf::new()
        .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
            pki,
            "server",
            ClientAuth::None,
        )))
        .upstream("web", Group::new(web.addr));
    for (name, issuer) in issuers {
        c = c.issuer(name, issuer).route(
            Route::new(name, "web")
                .path(&format!("/{name}"))
                .bearer(conf::Bearer::new([name]).realm(format!("realm-{name}"))),
        );
    }
    c.route(
        Route::new("multi", "web")
            .path("/multi")
            .bearer(conf::Bearer::new(["url", "evil"])),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_issuer_setting_has_its_effect() {
    let Some(idp) = Idp::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::edge(tmp.path(), &[]);
    let web = Upstream::h1(None, Behavior::Echo).await;
    let jwks = tmp.path().join("jwks.json");
    std::fs::write(&jwks, idp.jwks().to_string()).unwrap();
    // Takes connections and never answers: the `slow` issuer's JWKS.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let port = reserved_port();
    let conf = knobs_conf(&pki, &idp, &web, &jwks, hang_port, port);
    let _gh = Gatehouse::in_process(tmp.path(), &conf);
    let rs = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse");
    let es = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse:es256");
    let status = |path: &'static str, token: String| {
        let pki = &pki;
        async move { curl_as(pki, None, port, path, Some(&token), &[]).await }
    };
    for path in ["/url/x", "/file/x", "/at/x"] {
        let r = status(path, rs.clone()).await;
        assert_eq!(r.status, "200", "{path}: {r:?}");
    }
    let r = status("/es/x", rs.clone()).await;
    assert_eq!(r.status, "401", "algorithms: [ES256] refuses RS256: {r:?}");
    assert!(
        r.challenge
            .starts_with("Bearer realm=\"realm-es\", error=\"invalid_token\""),
        "{r:?}"
    );
    assert_eq!(status("/es/x", es).await.status, "200");
    let r = status("/jwt/x", rs.clone()).await;
    assert_eq!(r.status, "401", "typ: [JWT] refuses an at+jwt token: {r:?}");
    assert!(
        r.challenge.starts_with("Bearer realm=\"realm-jwt\""),
        "{r:?}"
    );
    let other = idp.token(ADMIN.0, ADMIN.1, "urn:other");
    assert_eq!(
        status("/both/x", other).await.status,
        "200",
        "one of the audiences"
    );
    assert_eq!(status("/both/x", rs.clone()).await.status, "401");
    let evil = idp.craft(None, None)["wrong_issuer"].clone();
    assert_eq!(
        status("/multi/x", evil.clone()).await.status,
        "200",
        "its `iss` picks `evil`"
    );
    assert_eq!(
        status("/multi/x", rs.clone()).await.status,
        "200",
        "its `iss` picks `url`"
    );
    assert_eq!(
        status("/url/x", evil).await.status,
        "401",
        "`evil` is not `/url`'s issuer"
    );
    let r = status("/roots/x", rs.clone()).await;
    assert_eq!(
        r.status, "503",
        "without `ca` the test CA is not trusted: {r:?}"
    );
    fetch_timeout_and_leeway(&pki, &idp, port, &rs).await;
}

/// `fetch_timeout: 1s` bounds a fetch from a JWKS server that never answers; `leeway: 0s`
/// refuses a token past its `exp` that the default 30 s leeway still takes.
async fn fetch_timeout_and_leeway(pki: &Pki, idp: &Idp, port: u16, rs: &str) {
    let status = |path: &'static str, token: String| async move {
        curl_as(pki, None, port, path, Some(&token), &[]).await
    };
    let rs = rs.to_string();
    let started = std::time::Instant::now();
    let r = status("/slow/x", rs.clone()).await;
    assert_eq!(r.status, "503", "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "fetch_timeout: 1s bounds the fetch (the default is 5 s): {:?}",
        started.elapsed()
    );
    // leeway: a 2-second token, past its exp, is still taken with the default 30 s leeway.
    let short = idp.token(ADMIN.0, ADMIN.1, "urn:gatehouse:short");
    assert_eq!(status("/exact/x", short.clone()).await.status, "200");
    tokio::time::sleep(Duration::from_millis(2600)).await; // the token's own lifetime
    let r = status("/exact/x", short.clone()).await;
    assert_eq!(r.status, "401", "leeway: 0s, past exp: {r:?}");
    assert_eq!(
        status("/url/x", short).await.status,
        "200",
        "within the default leeway"
    );
}
