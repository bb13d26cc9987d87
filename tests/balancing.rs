//! `upstreams.<name>.load_balancing` end to end: which peer of a two-peer group each request
//! reaches under `round_robin` (the default), `consistent_hash` and `random`. Clients differ
//! by source address (any of 127.0.0.0/8 reaches the loopback listener) and by certificate.

mod common;

use common::*;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// `127.0.0.<n>`: one more client IP.
fn client_ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A two-peer group `kea` (origins `a` and `b`) behind a TLS edge, client certificates of
/// `pki` (`alice`) optional.
struct Pair {
    pki: Pki,
    port: u16,
    a: Upstream,
    b: Upstream,
    _gh: Gatehouse,
    _tmp: tempfile::TempDir,
}

impl Pair {
    /// Starts Gatehouse with `load_balancing` set as given (`None`: the key left out).
    async fn start(load_balancing: Option<&str>) -> Pair {
        let tmp = tempfile::tempdir().unwrap();
        let pki = Pki::edge(tmp.path(), &["alice"]);
        let a = Upstream::h1(None, Behavior::Echo).await;
        let b = Upstream::h1(None, Behavior::Echo).await;
        let port = reserved_port();
        let mut group = Group::peers([a.addr, b.addr]);
        group.load_balancing = load_balancing.map(Into::into);
        let conf = Conf::new()
            .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(
                &pki,
                "server",
                ClientAuth::Optional,
            )))
            .upstream("kea", group)
            .route(Route::new("kea", "kea"));
        let gh = Gatehouse::start(tmp.path(), &conf);
        Pair {
            pki,
            port,
            a,
            b,
            _gh: gh,
            _tmp: tmp,
        }
    }

    /// `GET path` (asked once per test) from `src`, as `who` or anonymous: `'a'` or `'b'`,
    /// the peer that served it.
    async fn served(&self, src: IpAddr, who: Option<&str>, path: &str) -> char {
        let o = ClientOpts {
            ca: Some(self.pki.ca_path()),
            cert: who.map(|w| self.pki.paths(w)),
            sni: Some("localhost".into()),
            tls12: false,
        };
        let edge = SocketAddr::from(([127, 0, 0, 1], self.port));
        let r = request_from(Some(src), edge, Some(&o), "GET", path, &[], b"")
            .await
            .unwrap_or_else(|e| panic!("GET {path} from {src}: {e}"));
        assert_eq!(r.status, 200, "GET {path} from {src}: {}", r.text());
        let asked = |u: &Upstream| u.seen().iter().any(|s| s.path == path);
        match (asked(&self.a), asked(&self.b)) {
            (true, false) => 'a',
            (false, true) => 'b',
            both => panic!("GET {path} reached (a, b) = {both:?}"),
        }
    }

    /// The peers that served `n` requests from `src` as `who`, in order (`"abba…"`).
    async fn sequence(&self, src: IpAddr, who: Option<&str>, n: usize, tag: &str) -> String {
        let mut seq = String::new();
        for i in 0..n {
            seq.push(self.served(src, who, &format!("/{tag}/{i}")).await);
        }
        seq
    }
}

/// Whether `seq` switches peer at every request.
fn alternates(seq: &str) -> bool {
    seq.as_bytes().windows(2).all(|w| w[0] != w[1])
}

/// `round_robin`, written or left as the default, takes the peers in turn: one client's 16
/// requests alternate strictly (`random` would do so by chance once in 2^15,
/// `consistent_hash` never).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_the_default_and_alternates() {
    for setting in [None, Some("round_robin")] {
        let p = Pair::start(setting).await;
        let seq = p.sequence(client_ip(1), None, 16, "rr").await;
        assert!(alternates(&seq), "{setting:?}: {seq}");
    }
}

/// `consistent_hash` keys on the client: each of 48 anonymous client IPs keeps its peer over
/// three requests, while the IPs spread over both peers (all on one by chance: below 1e-10,
/// even at a 60/40 split of the ring); an authenticated client keeps its peer from 16
/// different IPs, since its certificate fingerprint, not its IP, is the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_keeps_each_client_on_one_peer() {
    let p = Pair::start(Some("consistent_hash")).await;
    let mut by_ip = String::new();
    for n in 2..50 {
        let seq = p.sequence(client_ip(n), None, 3, &format!("ip{n}")).await;
        assert!(
            seq == "aaa" || seq == "bbb",
            "127.0.0.{n} moved between peers: {seq}"
        );
        by_ip.push_str(&seq[..1]);
    }
    assert!(
        by_ip.contains('a') && by_ip.contains('b'),
        "48 client IPs all hashed to one peer: {by_ip}"
    );

    let mut alice = String::new();
    for n in 2..18 {
        alice.push(
            p.served(client_ip(n), Some("alice"), &format!("/alice/{n}"))
                .await,
        );
    }
    assert!(
        alice == "a".repeat(16) || alice == "b".repeat(16),
        "alice moved between peers with her IP: {alice}"
    );
}

/// `random` picks a peer per request: one client's 40 requests reach both peers
/// (`consistent_hash` keeps a client on one) and do not alternate strictly (`round_robin`
/// does). Each can fail by chance with probability 2^-39.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_one_client_without_taking_turns() {
    let p = Pair::start(Some("random")).await;
    let seq = p.sequence(client_ip(1), None, 40, "random").await;
    assert!(
        seq.contains('a') && seq.contains('b'),
        "one peer only: {seq}"
    );
    assert!(!alternates(&seq), "strict turns, as round_robin: {seq}");
}
