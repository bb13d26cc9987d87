//! `gatehouse check`: every configuration error names its key path; shipped configs pass.

mod common;

use common::*;
use std::path::Path;

/// A valid base config in `dir` (dev PKI written beside it); `edit` may break it.
fn check_with(dir: &Path, edit: impl Fn(String) -> String) -> (bool, String) {
    gatehouse::pki::write_dev_pki(&dir.join("certs")).unwrap();
    let yaml = r#"
listeners:
  - name: edge
    address: "127.0.0.1:5665"
    tls:
      cert: certs/server.crt
      key: certs/server.key
      client_auth: required
      client_ca: certs/ca.crt
upstreams:
  kea:
    peers: ["127.0.0.1:8000"]
    connect_timeout: 2s
    tls:
      ca: certs/ca.crt
      client_cert: certs/gatehouse.crt
      client_key: certs/gatehouse.key
      sni: localhost
routes:
  - { name: kea, upstream: kea }
"#;
    let file = dir.join("g.yaml");
    std::fs::write(&file, edit(yaml.to_string())).unwrap();
    gatehouse_cmd(&["check", "-c", file.to_str().unwrap()])
}

fn expect_error(edit: impl Fn(String) -> String, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), edit);
    assert!(!ok, "check should fail for `{needle}`:\n{out}");
    assert!(out.contains(needle), "expected `{needle}` in:\n{out}");
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
    expect_error(
        |s| {
            s.replace(
                "      client_auth: required",
                "      client_auth: required\n      bogus: 1",
            )
        },
        "listeners[0].tls.bogus: unknown field `bogus`, expected one of `cert`",
    );
    expect_error(
        |s| {
            s.replace(
                "      client_auth: required",
                "      client_auth: required\n      bogus: 1",
            )
        },
        "(line 9)",
    );
}

#[test]
fn missing_file_names_key_and_file() {
    expect_error(
        |s| {
            s.replace(
                "ca: certs/ca.crt\n      client_cert",
                "ca: certs/nope.pem\n      client_cert",
            )
        },
        "upstreams.kea.tls.ca: cannot read",
    );
    expect_error(
        |s| {
            s.replace(
                "ca: certs/ca.crt\n      client_cert",
                "ca: certs/nope.pem\n      client_cert",
            )
        },
        "certs/nope.pem: file not found",
    );
}

#[test]
fn bad_duration() {
    expect_error(
        |s| s.replace("connect_timeout: 2s", "connect_timeout: 2 fortnights"),
        "upstreams.kea.connect_timeout: invalid duration `2 fortnights`",
    );
}

#[test]
fn read_buffer_out_of_range() {
    for (size, bytes) in [("512", "512"), ("2MiB", "2097152")] {
        expect_error(
            |s| {
                s.replace(
                    "    tls:\n      cert:",
                    &format!("    read_buffer: {size}\n    tls:\n      cert:"),
                )
            },
            &format!("listeners[0].read_buffer: {bytes} bytes is outside 1KiB..=1MiB"),
        );
    }
}

#[test]
fn route_to_unknown_upstream() {
    expect_error(
        |s| s.replace("upstream: kea }", "upstream: dhcp }"),
        "routes[0].upstream: unknown upstream `dhcp`",
    );
}

#[test]
fn duplicate_listener_address() {
    expect_error(
        |s| {
            s.replace(
                "upstreams:",
                "  - name: again\n    address: \"127.0.0.1:5665\"\nupstreams:",
            )
        },
        "listeners[1].address: 127.0.0.1:5665 is already used by listeners[0]",
    );
}

#[test]
fn required_client_auth_needs_client_ca() {
    expect_error(
        |s| s.replace("      client_ca: certs/ca.crt\n", ""),
        "listeners[0].tls.client_ca: required when client_auth is required",
    );
}

#[test]
fn key_not_matching_cert() {
    expect_error(
        |s| s.replace("key: certs/server.key", "key: certs/client.key"),
        "listeners[0].tls.key:",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |s| {
        s.replace("upstream: kea }", "upstream: dhcp }")
            .replace("      client_ca: certs/ca.crt\n", "")
            .replace("peers: [\"127.0.0.1:8000\"]", "peers: [\"nowhere\"]")
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

#[test]
fn cluster_listener_needs_cluster_section() {
    expect_error(
        |s| {
            s.replace(
                "    tls:\n      cert: certs/server.crt",
                "    protocols: [http, cluster]\n    tls:\n      cert: certs/server.crt",
            )
        },
        "listeners[0].protocols: cluster needs a top-level `cluster:` section",
    );
}

fn with_cluster(s: String, cluster: &str) -> String {
    s.replace(
        "    tls:\n      cert: certs/server.crt",
        "    protocols: [http, cluster]\n    tls:\n      cert: certs/server.crt",
    ) + cluster
}

#[test]
fn cluster_section_errors_name_their_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |s| {
        with_cluster(
            s,
            r#"cluster:
  routes:
    - { sni: master1, upstream: nope }
  upstream_identity: { cert_dir: no-such-dir }
  limits: { message_size: 1MiB, anonymous_message_size: 2MiB }
  policy:
    - { identity: anonymous, direction: upstream }
    - { identity: "agent-*", deny: ["config::*"] }
    - { identity: "cn:agent-*", deny: ["config::*"] }
"#,
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
        |s| {
            with_cluster(s, "cluster:\n  routes: [ { sni: \"*\", upstream: kea } ]\n  limits: { message_size: 16 MiBs }\n")
        },
        "cluster.limits.message_size: invalid size `16 MiBs`",
    );
    expect_error(
        |s| {
            with_cluster(s, "cluster:\n  routes: [ { sni: \"*\", upstream: kea } ]\n  policy: [ { identity: \"*\", direction: sideways, deny: [x] } ]\n")
        },
        "cluster.policy[0].direction: unknown variant `sideways`",
    );
}

#[test]
fn authorization_keys_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let (ok, out) = check_with(tmp.path(), |s| {
        s.replace(
            "  - { name: kea, upstream: kea }",
            "  - name: kea\n    upstream: kea\n    allow: [\"ops-*\"]\n    deny: [\"fingerprint:sha256:xyz\"]\n    kea:\n      rules:\n        - identity: []\n        - identity: [\"cn:a\", \"role:admin\"]\naudit: { path: no-such-dir/audit.jsonl }",
        )
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
        |s| {
            s.replace(
                "  - { name: kea, upstream: kea }",
                "  - { name: kea, upstream: kea, forward_identity: spiffe }",
            )
        },
        "routes[0].forward_identity: unknown variant `spiffe`",
    );
}
