//! What the test machine offers: peer binaries (skipping loudly when one is missing, failing
//! under CI) and ports on 127.0.0.1.

use std::net::TcpListener as StdListener;
use std::path::Path;

/// Whether peer tests must fail instead of skipping (CI sets CI=true).
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Skips (loudly) when `binary` is missing locally; panics under CI.
pub fn require_binary(binary: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(binary).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(binary).is_file();
    if !found {
        let msg = format!(
            "\n!!!!! SKIPPED: `{binary}` is not installed (run `make test`, which installs it) !!!!!\n"
        );
        if in_ci() {
            panic!("{msg} (CI=true: peer tests may not skip)");
        }
        eprintln!("{msg}");
    }
    found
}

/// A port the kernel just handed out for 127.0.0.1 (bound on port 0, then released): another
/// test may take it before the peer binds it. The tests take every port, peers' included, from
/// [`reserved_port`] (Kea, Icinga and Prometheus bind with `SO_REUSEADDR`, which it allows);
/// this is for the benches, which run one scenario at a time. Icinga and HAProxy bind with
/// `SO_REUSEPORT`: two of them handed the same released port by concurrent tests both bind it
/// and the kernel splits its connections between them (seen in CI as API calls to one Icinga
/// master failing with "bad certificate" against the other test's CA).
pub fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("local addr").port()
}

/// A port on 127.0.0.1 for Gatehouse or a peer to listen on (or for a peer that never
/// listens), kept from everyone else for the rest of this process: the library's
/// [`gatehouse::testing::reserved_port`], which says why not `127.0.0.1:0` and why not
/// bind-then-release. Until something listens, a connection is refused as on a free port.
pub fn reserved_port() -> u16 {
    gatehouse::testing::reserved_port()
}
