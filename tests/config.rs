//! `gatehouse check`: every configuration error names its key path; shipped configs pass.

mod common;

use common::*;
use std::path::Path;

/// A valid base config, relative to a dev PKI in `certs/` beside it.
fn base() -> Conf {
    Conf::new()
        .listener(
            Listener::new("edge", 5665).tls(
                ListenerTls::new("certs/server.crt", "certs/server.key")
                    .client_auth(ClientAuth::Required)
                    .client_ca("certs/ca.crt"),
            ),
        )
        .upstream(
            "kea",
            Group::new("127.0.0.1:8000").connect_timeout("2s").tls(
                UpstreamTls::new("localhost")
                    .ca("certs/ca.crt")
                    .client_cert("certs/gatehouse.crt")
                    .client_key("certs/gatehouse.key"),
            ),
        )
        .route(Route::new("kea", "kea"))
}

/// `gatehouse check` on `edit(base())` written to `dir` (dev PKI written beside it).
fn check_with(dir: &Path, edit: impl Fn(Conf) -> Conf) -> (bool, String) {
    gatehouse::pki::write_dev_pki(&dir.join("certs")).unwrap();
    let file = dir.join("g.yaml");
    edit(base()).write(&file);
    gatehouse_cmd(&["check", "-c", file.to_str().unwrap()])
}

fn expect_error(edit: impl Fn(Conf) -> Conf, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), edit);
    assert!(!ok, "check should fail for `{needle}`:\n{out}");
    assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
}

/// The base listener's TLS block.
fn tls(c: &mut Conf) -> &mut conf::ListenerTls {
    c.listener_mut("edge").tls.as_mut().unwrap()
}

/// The base upstream's TLS block.
fn up_tls(c: &mut Conf) -> &mut conf::UpstreamTls {
    c.upstream_mut("kea").tls.as_mut().unwrap()
}

#[test]
fn base_config_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |s| s);
    assert!(ok, "{out}");
    assert!(out.contains(": ok"), "{out}");
}

#[test]
fn unknown_key_names_path_and_line() {
    let bogus = |c: Conf| c.set("listeners[0].tls.bogus", 1);
    expect_error(
        bogus,
        "listeners[0].tls.bogus: unknown field `bogus`, expected one of `cert`",
    );
    let text = bogus(base()).to_yaml();
    let line = 1 + text.lines().position(|l| l.contains("bogus:")).unwrap();
    expect_error(bogus, &format!("(line {line})"));
}

#[test]
fn missing_file_names_key_and_file() {
    let nope = |mut c: Conf| {
        up_tls(&mut c).ca = Some("certs/nope.pem".into());
        c
    };
    expect_error(nope, "upstreams.kea.tls.ca: cannot read");
    expect_error(nope, "certs/nope.pem: file not found");
}

#[test]
fn bad_duration() {
    expect_error(
        |mut c| {
            c.upstream_mut("kea").connect_timeout = Some("2 fortnights".into());
            c
        },
        "upstreams.kea.connect_timeout: invalid duration `2 fortnights`",
    );
}

#[test]
fn read_buffer_out_of_range() {
    for (size, bytes) in [("512", "512"), ("2MiB", "2097152")] {
        expect_error(
            |mut c| {
                c.listener_mut("edge").read_buffer = Some(size.into());
                c
            },
            &format!("listeners[0].read_buffer: {bytes} bytes is outside 1KiB..=1MiB"),
        );
    }
}

fn upstream_dhcp(mut c: Conf) -> Conf {
    c.routes[0].upstream = Some("dhcp".into());
    c
}

fn no_client_ca(mut c: Conf) -> Conf {
    tls(&mut c).client_ca = None;
    c
}

#[test]
fn route_to_unknown_upstream() {
    expect_error(upstream_dhcp, "routes[0].upstream: unknown upstream `dhcp`");
}

#[test]
fn duplicate_listener_address() {
    expect_error(
        |c| c.listener(Listener::new("again", 5665)),
        "listeners[1].address: 127.0.0.1:5665 is already used by listeners[0]",
    );
}

#[test]
fn required_client_auth_needs_client_ca() {
    expect_error(
        no_client_ca,
        "listeners[0].tls.client_ca: required when client_auth is required",
    );
}

#[test]
fn key_not_matching_cert() {
    expect_error(
        |mut c| {
            tls(&mut c).key = "certs/client.key".into();
            c
        },
        "listeners[0].tls.key:",
    );
}

/// `watch` takes a boolean, and an upstream block that names no file has nothing to watch.
#[test]
fn watch_errors_name_their_keys() {
    expect_error(
        |c| c.set("listeners[0].tls.watch", "sometimes"),
        "listeners[0].tls.watch",
    );
    expect_error(
        |mut c| {
            let t = up_tls(&mut c);
            (t.ca, t.client_cert, t.client_key) = (None, None, None);
            t.watch = Some(true);
            c
        },
        "upstreams.kea.tls.watch: this block names no file to watch",
    );
}

/// A key that never had an effect is refused by name, with why and what to do, rather than
/// silently accepted (the typed builder cannot write it, so it is set raw).
#[test]
fn second_keyshare_is_refused_as_removed() {
    for v in [true, false] {
        expect_error(
            |c| c.set("upstreams.kea.tls.second_keyshare", v),
            "upstreams.kea.tls.second_keyshare: removed, it never had an effect",
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |c| {
        let mut c = no_client_ca(upstream_dhcp(c));
        c.upstream_mut("kea").peers = vec!["nowhere".into()];
        c
    });
    assert!(!ok);
    assert!(out.contains("3 problem(s)"), "{out}");
    assert!(out.contains("routes[0].upstream") && out.contains("listeners[0].tls.client_ca"));
    assert!(
        out.contains("upstreams.kea.peers[0]: `nowhere` is not an IP:port address"),
        "{out}"
    );
}

/// Every file shipped in conf/ passes `check` (with a dev PKI beside it, as `make run` writes).
#[test]
fn shipped_configs_pass_check() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf");
    let mut n = 0;
    for entry in std::fs::read_dir(&conf).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
            n += 1;
        }
    }
    assert!(n >= 2, "conf/ should hold the shipped configs");
    let (ok, out) = gatehouse_cmd(&["dev-certs", tmp.path().join("dev-certs").to_str().unwrap()]);
    assert!(ok, "{out}");
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let (ok, out) = gatehouse_cmd(&["check", "-c", p.to_str().unwrap()]);
            assert!(ok, "{}: {out}", p.display());
        }
    }
}

/// Every shipped example (conf/ and the package's /etc config) has its own `pid_file` and
/// `upgrade_sock`: an example started next to the /etc instance must not take its pid file
/// (`gatehouse run` refuses a pid file a live gatehouse holds: tests/upgrade.rs).
#[test]
fn shipped_configs_have_their_own_pid_file_and_upgrade_sock() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(root.join("conf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.push(root.join("debian/gatehouse.yaml"));
    let mut seen = std::collections::HashMap::new();
    for f in &files {
        let v: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        for key in ["pid_file", "upgrade_sock"] {
            let value = v["server"][key]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no server.{key}", f.display()))
                .to_string();
            if let Some(other) = seen.insert(value.clone(), f.clone()) {
                panic!(
                    "{} and {} share {key} {value}",
                    other.display(),
                    f.display()
                );
            }
        }
    }
}

/// The base listener carrying `cluster` too.
fn cluster_listener(mut c: Conf) -> Conf {
    let l = c.listener_mut("edge");
    *l = l.clone().protocols(&[Protocol::Http, Protocol::Cluster]);
    c
}

#[test]
fn cluster_listener_needs_cluster_section() {
    expect_error(
        cluster_listener,
        "listeners[0].protocols: cluster needs a top-level `cluster:` section",
    );
}

#[test]
fn cluster_section_errors_name_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |c| {
        cluster_listener(c).cluster(
            Cluster::new("master1", "nope")
                .cert_dir("no-such-dir")
                .limits(
                    Limits::default()
                        .message_size("1MiB")
                        .anonymous_message_size("2MiB"),
                )
                .policy(PolicyRule::new("anonymous").direction("upstream"))
                .policy(PolicyRule::new("agent-*").deny(["config::*"]))
                .policy(PolicyRule::new("cn:agent-*").deny(["config::*"])),
        )
    });
    assert!(!ok, "{out}");
    for needle in [
        "cluster.routes[0].upstream: unknown upstream `nope`",
        "cluster.upstream_identity.cert_dir:",
        "no-such-dir: not a directory",
        "cluster.limits.anonymous_message_size: must not exceed message_size",
        "cluster.policy[0]: needs `allow`, `deny` or both",
        // One identity language: a bare glob is refused with the fix, the prefixed form passes.
        "cluster.policy[1].identity: `agent-*` names no kind of identity: use \"cn:agent-*\"",
    ] {
        assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
    }
    assert!(!out.contains("cluster.policy[2]"), "{out}");
}

#[test]
fn cluster_bad_size_and_direction() {
    expect_error(
        |c| {
            cluster_listener(c)
                .cluster(Cluster::new("*", "kea").limits(Limits::default().message_size("16 MiBs")))
        },
        "cluster.limits.message_size: invalid size `16 MiBs`",
    );
    expect_error(
        |c| {
            cluster_listener(c).cluster(
                Cluster::new("*", "kea")
                    .policy(PolicyRule::new("*").direction("sideways").deny(["x"])),
            )
        },
        "cluster.policy[0].direction: unknown variant `sideways`",
    );
}

#[test]
fn authorization_keys_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |mut c| {
        c.routes[0] = Route::new("kea", "kea")
            .allow(["ops-*"])
            .deny(["fingerprint:sha256:xyz"])
            .kea(
                KeaRoute::default()
                    .rule(KeaRule::new(Vec::<String>::new()))
                    .rule(KeaRule::new(["cn:a", "role:admin"])),
            );
        c.audit_path("no-such-dir/audit.jsonl")
    });
    assert!(!ok, "{out}");
    for needle in [
        "routes[0].allow[0]: `ops-*` names no kind of identity: use \"cn:ops-*\"",
        "routes[0].deny[0]: `fingerprint:sha256:xyz`: a SHA-256 fingerprint is 64 hex digits",
        "routes[0].kea.rules[0].identity: must list at least one identity",
        "routes[0].kea.rules[1].identity[1]: `role:admin`",
        "audit.path:",
    ] {
        assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
    }
    expect_error(
        |mut c| {
            c.routes[0].forward_identity = Some("spiffe".into());
            c
        },
        "routes[0].forward_identity: unknown variant `spiffe`",
    );
}

#[test]
fn log_format_is_text_or_json() {
    expect_error(
        |c| c.log_format("xml"),
        "log_format: unknown variant `xml`, expected `text` or `json`",
    );
    for format in ["text", "json"] {
        let tmp = tempfile::tempdir().unwrap();
        let (ok, out) = check_with(tmp.path(), |c| c.log_format(format));
        assert!(ok, "{format}: {out}");
    }
}

/// Every key the tests' typed config ([`Conf`]) can write is one Gatehouse's schema knows:
/// a config with every field set parses (the schema rejects unknown keys).
#[test]
fn the_typed_test_config_writes_only_schema_keys() {
    let every = Conf::new()
        .server(
            conf::Server::for_test(Path::new("/tmp"))
                .error_log("/tmp/gh.log")
                .work_stealing(false),
        )
        .listener(listener_with_every_key())
        .upstream("kea", group_with_every_key())
        .route(kea_route_with_every_key())
        .upstream("zk6", Group::new("unix:/run/kea/k6.sock"))
        .upstream("zz-auth", {
            let mut g = Group::new("127.0.0.1:3");
            g.basic_auth = Some(conf::UpstreamAuth {
                user: "gatehouse".into(),
                password_file: "pw".into(),
            });
            g
        })
        .route(
            Route::new("dhcp4", "kea")
                .path("/dhcp4")
                .kea(KeaRoute::allow_all().daemon("dhcp4").max_answer("1MiB")),
        )
        .route({
            let mut r =
                Route::agent("agent", KeaRoute::allow_all().service("dhcp6", "zk6")).path("/agent");
            r.basic_auth = Some(conf::BasicAuth {
                users_file: "users".into(),
                realm: Some("kea".into()),
            });
            r
        })
        .cluster(cluster_with_every_key())
        .metrics(9090)
        .audit_path("audit.jsonl")
        .log_format("json");
    let text = with_every_issuer_key(every).to_yaml();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("ids")).unwrap();
    let config = gatehouse::config::Config::parse(&text, tmp.path())
        .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
    assert_eq!(config.listeners[0].keepalive_requests, 3, "{text}");
    assert!(config.listeners[0].tls.as_ref().unwrap().watch, "{text}");
    assert!(config.upstreams[0].tls.as_ref().unwrap().watch, "{text}");
    let corp = &config.issuers[0];
    assert_eq!(
        (corp.audience.len(), corp.leeway, corp.max_stale),
        (
            2,
            std::time::Duration::from_secs(10),
            std::time::Duration::from_secs(600)
        ),
        "{text}"
    );
    let bearer = config.routes.last().and_then(|r| r.bearer.as_ref());
    assert_eq!(
        bearer.map(|b| (b.issuers.clone(), b.forward)),
        Some((vec![0, 1], true))
    );
    assert_eq!(
        config.log_format,
        gatehouse::config::LogFormat::Json,
        "{text}"
    );
}

/// Two issuers (every key between them) and a route taking both.
fn with_every_issuer_key(c: Conf) -> Conf {
    c.issuer(
        "corp",
        conf::Issuer::new("https://idp.example.org", "urn:a")
            .audiences(["urn:a", "urn:b"])
            .jwks_url("https://idp.example.org/jwks")
            .algorithms(["ES256"])
            .leeway("10s")
            .typ(["at+jwt"])
            .ca("idp-ca.pem")
            .fetch_timeout("2s")
            .refresh_interval("5m")
            .min_refresh_interval("5s")
            .max_stale("10m"),
    )
    .issuer(
        "files",
        conf::Issuer::new("https://ci.example.org", "urn:a").jwks_file("jwks.json"),
    )
    .route(
        Route::new("tokens", "kea").path("/tokens").bearer(
            conf::Bearer::new(["corp", "files"])
                .require("token_and_cert")
                .forward(true)
                .realm("edge"),
        ),
    )
}

fn listener_with_every_key() -> Listener {
    Listener::new("edge", 5665)
        .protocols(&[Protocol::Http, Protocol::Cluster])
        .first_byte_timeout("1s")
        .header_timeout("1s")
        .read_buffer("4KiB")
        .keepalive_timeout("2s")
        .keepalive_requests(3)
        .max_connections_per_identity(2)
        .handshake_timeout("5s")
        .max_handshakes_per_ip(8)
        .max_connections(100)
        .tls(
            ListenerTls::new("s.crt", "s.key")
                .client_auth(ClientAuth::Optional)
                .client_ca("ca.crt")
                .min_version("tls1.3")
                .curves("X25519")
                .alpn(["h2", "http/1.1"])
                .session_resumption(true)
                .watch(true),
        )
}

fn group_with_every_key() -> Group {
    Group::peers(["127.0.0.1:1", "127.0.0.1:2"])
        .load_balancing("consistent_hash")
        .health_check(conf::HealthCheck {
            kind: "http".into(),
            interval: Some("1s".into()),
            path: Some("/health".into()),
            host: Some("kea.internal".into()),
        })
        .connect_timeout("1s")
        .tls_handshake_timeout("5s")
        .read_timeout("1s")
        .idle_timeout("1s")
        .tls(
            UpstreamTls::new("kea.internal")
                .ca("ca.crt")
                .client_cert("c.crt")
                .client_key("c.key")
                .verify_cert(true)
                .verify_hostname(true)
                .alt_cn("kea")
                .curves("X25519")
                .alpn("h2h1")
                .watch(true),
        )
}

fn kea_route_with_every_key() -> Route {
    Route::new("kea", "kea")
        .host("*.example.org")
        .path("/kea")
        .allow(["cn:ops"])
        .deny(["cn:intern"])
        .xfcc()
        .rate_limit(0.5, Some(3))
        .kea(
            KeaRoute::deny_by_default()
                .max_body("64KiB")
                .fan_out("all")
                .rule(
                    KeaRule::new(["cn:ops"])
                        .commands(AllowDeny::only(["*"]).deny(["shutdown"]))
                        .services(AllowDeny::only(["dhcp4"])),
                ),
        )
}

fn cluster_with_every_key() -> Cluster {
    Cluster::new("master1", "kea")
        .child_route("agent1", "kea")
        .cert_dir("ids")
        .missing("own")
        .max_violations(3)
        .limits(
            Limits::default()
                .max_links_per_identity(2)
                .anonymous_max_clients(2)
                .anonymous_max_per_ip(1)
                .certificate_request_size("4KiB")
                .anonymous_message_size("2KiB")
                .message_size("1MiB")
                .idle_timeout("3s")
                .anonymous_idle_timeout("1s"),
        )
        .policy(
            PolicyRule::new("*")
                .direction("upstream")
                .allow(["a"])
                .deny(["b"]),
        )
}

/// The packaged /etc config is safe as shipped: its dashboard rule reads the DHCP daemons,
/// never the Control Agent's own configuration (`config-get` without `service`, which lists
/// its control sockets and basic-auth clients).
#[test]
fn the_packaged_config_keeps_dashboards_off_the_agent() {
    use gatehouse::authz::Identity;
    use gatehouse::http::kea::KeaPolicy;
    use gatehouse::identity::ClientCert;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("debian/gatehouse.yaml"))
        .unwrap()
        .replace("/etc/gatehouse/identities", tmp.path().to_str().unwrap());
    let c = gatehouse::config::Config::parse(&text, Path::new("/etc/gatehouse"))
        .unwrap_or_else(|e| panic!("{e:?}"));
    let kea = c
        .routes
        .iter()
        .find_map(|r| r.kea.as_ref())
        .expect("a Kea route");
    let policy = KeaPolicy::new(kea);
    let ca = gatehouse::pki::Ca::new("t").unwrap();
    let cert = ca
        .issue(&gatehouse::pki::CertSpec::new("dashboard-1"))
        .unwrap();
    let dashboard = ClientCert::from_x509(cert.cert, true);
    let who = Identity::from_cert(Some(&dashboard));
    let svc = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(
        !policy.may_run(who, "config-get", &[]),
        "the agent's own config"
    );
    assert!(!policy.may_run(who, "config-get", &svc(&["ca"])));
    assert!(policy.may_run(who, "config-get", &svc(&["dhcp4"])));
    assert!(policy.may_run(who, "lease4-get", &svc(&["dhcp4", "dhcp6"])));
    assert!(!policy.may_run(who, "config-set", &svc(&["dhcp4"])));
}

/// `gatehouse check` run as the service user reports every identity file in `cert_dir` that
/// user cannot read (the keys `icinga2 pki new-cert` writes are 0600 root) and a key that is
/// not the certificate's; a certificate with no key beside it (a CA's) is no identity; with readable files it passes. Needs root
/// (to run the check as another user): skips loudly otherwise, fails under CI.
#[test]
fn check_as_the_service_user_reports_unreadable_identities() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(1)
        != 0
    {
        let msg = "\n!!!!! SKIPPED: running `gatehouse check` as another user needs root !!!!!\n";
        assert!(!in_ci(), "{msg}");
        eprintln!("{msg}");
        return;
    }
    if !require_binary("runuser") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rp = RelayPki::new(dir);
    let file = write_relay_conf(dir, &rp);
    // Everything readable by the service user (here `nobody`)...
    for d in [dir.join("pki"), rp.ids.clone()] {
        set_mode(&d, 0o755);
        for e in std::fs::read_dir(&d).unwrap() {
            set_mode(&e.unwrap().path(), 0o644);
        }
    }
    set_mode(&file, 0o644);
    let (ok, out) = check_as_nobody(&file);
    assert!(ok, "{out}");
    // ...but one agent's key as `icinga2 pki new-cert` leaves it, a certificate with no key
    // (not an identity: fine), one whose key is another's.
    spoil_identities(&rp);
    let (ok, out) = check_as_nobody(&file);
    assert!(!ok, "{out}");
    for want in [
        "cluster.upstream_identity.cert_dir",
        "agent1.key: cannot read: Permission denied",
        "agent3.crt: key does not match the certificate",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    assert!(!out.contains("agent2"), "{out}");
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
}

/// Writes `dir/gatehouse.yaml`: a relay with `rp`'s `cert_dir` identities; returns its path.
fn write_relay_conf(dir: &Path, rp: &RelayPki) -> std::path::PathBuf {
    let conf = Conf::new()
        .server(conf::Server::for_test(dir))
        .listener(rp.listener(
            "edge",
            reserved_port(),
            &[Protocol::Http, Protocol::Cluster],
        ))
        .upstream(
            "master",
            rp.master(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                reserved_port(),
            ))),
        )
        .cluster(rp.cluster("master"));
    let file = dir.join("gatehouse.yaml");
    conf.write(&file);
    file
}

/// `gatehouse check -c file` as `nobody`: (success, stdout + stderr).
fn check_as_nobody(file: &Path) -> (bool, String) {
    let out = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(gatehouse_bin())
        .args(["check", "-c"])
        .arg(file)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// agent1's key 0600, agent2 a certificate without a key, agent3 with agent1's key.
fn spoil_identities(rp: &RelayPki) {
    set_mode(&rp.ids.join("agent1.key"), 0o600);
    let other = rp
        .pki
        .ca
        .issue(&gatehouse::pki::CertSpec::new("agent2"))
        .unwrap();
    other.write(&rp.ids, "agent2").unwrap();
    std::fs::remove_file(rp.ids.join("agent2.key")).unwrap();
    let third = rp
        .pki
        .ca
        .issue(&gatehouse::pki::CertSpec::new("agent3"))
        .unwrap();
    third.write(&rp.ids, "agent3").unwrap();
    std::fs::copy(rp.ids.join("agent1.key"), rp.ids.join("agent3.key")).unwrap();
    for f in ["agent2.crt", "agent3.crt", "agent3.key"] {
        set_mode(&rp.ids.join(f), 0o644);
    }
}

/// Every bad `issuers:` / `routes[].bearer` value is refused under its key path, all at once:
/// an algorithm that is not accepted (`none`, `HS256`), a non-https key URL, both key sources,
/// an unknown issuer, a token matcher on a route that takes no tokens, a token matcher in the
/// cluster policy, basic and bearer on one route, and bounds out of range.
#[test]
fn bad_issuer_and_bearer_values_are_refused_with_their_key() {
    let tmp = tempfile::tempdir().unwrap();
    let c = bad_bearer_conf();
    let text = c.to_yaml();
    let errs = gatehouse::config::Config::parse(&text, tmp.path()).unwrap_err();
    let all: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    let all = all.join("\n");
    for (key, says) in [
        ("issuers.idp.issuer", "not an https:// URL"),
        ("issuers.idp.algorithms[1]", "`none` is not accepted"),
        ("issuers.idp.algorithms[2]", "`HS256` is not accepted"),
        ("issuers.idp.leeway", "at most 5m"),
        ("issuers.idp.max_stale", "at least refresh_interval"),
        ("issuers.both", "exclude each other"),
        ("issuers.both.audience", "at least one non-empty"),
        ("issuers.plainurl.jwks_url", "not an https:// URL"),
        ("routes[0].bearer.issuers[1]", "unknown issuer `ghost`"),
        ("routes[0].bearer.realm", "without quotes"),
        ("routes[1].allow[0]", "no `bearer:`"),
        ("routes[1].allow[1]", "no `bearer:`"),
        ("routes[2].bearer", "not both"),
        ("routes[3].allow[0]", "claim:NAME=GLOB"),
        ("issuers.userinfo.issuer", "not an https:// URL"),
        ("issuers.userinfo.min_refresh_interval", "at least 1s"),
        ("issuers.filed.ca", "remove `ca`"),
        ("routes[5].bearer.issuers[1]", "same `issuer`"),
        ("routes[5].bearer.realm", "printable ASCII"),
        ("routes[4].bearer.issuers", "names no issuer"),
        ("routes[2].basic_auth.realm", "printable ASCII"),
        ("routes[4].bearer.realm", "printable ASCII"),
        ("issuers.a:b", "without `:`"),
        ("issuers.a:b.algorithms", "at least one of"),
        ("issuers.a:b.fetch_timeout", "more than 0"),
        ("issuers.a:b.refresh_interval", "more than 0"),
    ] {
        assert!(
            all.lines().any(|l| l.contains(key) && l.contains(says)),
            "no `{key}`: …{says}… in:\n{all}"
        );
    }
}

/// A config with one of each bad `issuers:` / `bearer` value (see the test above).
fn bad_bearer_conf() -> Conf {
    Conf::new()
        .listener(Listener::new("edge", 5665))
        .upstream("web", Group::new("127.0.0.1:9"))
        .issuer(
            "idp",
            conf::Issuer::new("http://idp.example.org", "urn:a")
                .algorithms(["RS256", "none", "HS256"])
                .leeway("10m")
                .refresh_interval("1h")
                .max_stale("1m"),
        )
        .issuer(
            "both",
            conf::Issuer::new("https://b.example.org", "")
                .jwks_url("https://b.example.org/jwks")
                .jwks_file("jwks.json"),
        )
        .issuer(
            "plainurl",
            conf::Issuer::new("https://c.example.org", "urn:a").jwks_url("http://c.example.org/k"),
        )
        .issuer(
            "userinfo",
            conf::Issuer::new("https://u:pw@d.example.org", "urn:a").min_refresh_interval("0s"),
        )
        .issuer(
            "filed",
            conf::Issuer::new("https://idp.example.org", "urn:a")
                .jwks_file("jwks.json")
                .ca("ca.pem"),
        )
        .issuer(
            "twin",
            conf::Issuer::new("https://idp.example.org", "urn:b"),
        )
        .issuer(
            "a:b",
            conf::Issuer::new("https://e.example.org", "urn:a")
                .algorithms(Vec::<String>::new())
                .fetch_timeout("0s")
                .refresh_interval("0s"),
        )
        .route(
            Route::new("t", "web")
                .path("/t")
                .bearer(conf::Bearer::new(["idp", "ghost"]).realm("a\"b")),
        )
        .route(
            Route::new("c", "web")
                .path("/c")
                .allow(["claim:groups=ops", "sub:x"]),
        )
        .route({
            let mut r = Route::new("both", "web")
                .path("/both")
                .bearer(conf::Bearer::new(["idp"]));
            r.basic_auth = Some(conf::BasicAuth {
                users_file: "users".into(),
                realm: Some("kéa".into()),
            });
            r
        })
        .route(Route::new("m", "web").path("/m").allow(["claim:=x"]))
        .route(
            Route::new("empty", "web")
                .path("/empty")
                .bearer(conf::Bearer::new(Vec::<String>::new()).realm("")),
        )
        .route(
            Route::new("twins", "web")
                .path("/twins")
                .bearer(conf::Bearer::new(["filed", "twin"]).realm("édge")),
        )
}

/// `sub:`, `client:` and `claim:` in `cluster.policy` are refused: a link carries no token.
#[test]
fn token_matchers_are_refused_in_the_cluster_policy() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = Conf::new()
        .listener(Listener::new("edge", 5665).protocols(&[Protocol::Cluster]))
        .upstream("m", Group::new("127.0.0.1:9"))
        .cluster(conf::Cluster::new("m1", "m").policy(conf::PolicyRule::new("sub:x").deny(["*"])));
    let errs = gatehouse::config::Config::parse(&policy.to_yaml(), tmp.path()).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("cluster.policy[0].identity")
                && e.to_string().contains("no bearer token")),
        "{errs:?}"
    );
}
