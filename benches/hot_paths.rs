//! Hot-path micro-benchmarks: netstring decode/encode, envelope parse, route matching with
//! 10 and 1,000 routes, and identity/policy evaluation.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gatehouse::authz::{Access, Identity, Matcher};
use gatehouse::cluster::filter::{
    CertRequest, Interest, LinkInfo, Message, MethodPolicy, RpcFilter,
};
use gatehouse::cluster::policy::{Direction, Policy};
use gatehouse::cluster::{codec, envelope};
use gatehouse::http::route::{HostPattern, Route, Router};
use gatehouse::identity::{ClientCert, TlsInfo};
use gatehouse::metrics::Metrics;
use gatehouse::pki::{Ca, CertSpec};

fn check_result() -> Vec<u8> {
    let output = "x".repeat(430);
    format!(
        r#"{{"jsonrpc":"2.0","method":"event::CheckResult","params":{{"host":"agent1-host","cr":{{"output":"{output}","state":0.0,"exit_status":0.0,"execution_start":1795320932.5}}}},"ts":1795320932.5}}"#
    )
    .into_bytes()
}

fn netstrings(c: &mut Criterion) {
    let payload = check_result();
    let frame = codec::encode(&payload);
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 64)
        .collect();
    let mut g = c.benchmark_group("netstring");
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode 64 pipelined CheckResult frames", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&batch[..]);
            let mut n = 0;
            while let Ok(Some(f)) = codec::decode(&mut buf, 16 << 20) {
                n += f.payload().len();
            }
            black_box(n)
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode one CheckResult", |b| {
        b.iter(|| black_box(codec::encode(black_box(&payload))))
    });
    g.finish();
}

fn envelopes(c: &mut Criterion) {
    let payload = check_result();
    c.bench_function("envelope parse (CheckResult, ~600 B)", |b| {
        b.iter(|| black_box(envelope::parse(black_box(&payload)).is_ok()))
    });
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("route match");
    for n in [10usize, 1000] {
        let routes: Vec<Route> = (0..n)
            .map(|i| {
                let host = if i % 2 == 0 {
                    format!("host{i}.example.org")
                } else {
                    format!("*.zone{i}.example.org")
                };
                Route::plain(
                    &format!("r{i}"),
                    HostPattern::parse(&host).unwrap(),
                    &format!("/api/v{i}/"),
                    0,
                    &Metrics::global(),
                )
            })
            .chain(std::iter::once(Route::plain(
                "default",
                HostPattern::Any,
                "/",
                0,
                &Metrics::global(),
            )))
            .collect();
        let router = Router::new(routes);
        // Worst case: nothing specific matches, the default route is found last.
        g.bench_with_input(BenchmarkId::new("routes", n), &router, |b, r| {
            b.iter(|| {
                black_box(
                    r.find(black_box("unknown.example.net"), black_box("/kea/command"))
                        .is_some(),
                )
            })
        });
    }
    g.finish();
}

fn policies(c: &mut Criterion) {
    let ca = Ca::new("bench").unwrap();
    let leaf = ca
        .issue(&CertSpec::new("dashboard-7").uris(&["spiffe://example.org/ops/dashboard-7"]))
        .unwrap();
    let info = TlsInfo {
        sni: None,
        client: Some(ClientCert::from_x509(leaf.cert, true)),
    };
    let m = |s: &str| Matcher::parse(s).unwrap();
    let access = Access::new(
        Some(vec![
            m("cn:ops-*"),
            m("cn:dashboard-*"),
            m("spiffe://example.org/ops/"),
        ]),
        vec![m("cn:ops-intern")],
    );
    c.bench_function("route access (allow 3, deny 1)", |b| {
        b.iter(|| black_box(access.admits(Identity::of(black_box(Some(&info))))))
    });
    let policy = Policy::icinga_defaults();
    let agent = ClientCert::from_x509(ca.issue(&CertSpec::new("agent1")).unwrap().cert, true);
    let caller = Identity::Verified(&agent);
    c.bench_function("rpc policy (Icinga defaults, CheckResult)", |b| {
        b.iter(|| {
            black_box(policy.decide(
                black_box(caller),
                Direction::Upstream,
                black_box(Some("event::CheckResult")),
            ))
        })
    });
}

/// The relay's built-in filter chain on a check result: the method policy as an `RpcFilter`,
/// then the `cert_request` filter's interest check (it does not want a check result). Compare
/// with `rpc policy` above: the trait layer must cost nothing measurable per message.
fn filter_chain(c: &mut Criterion) {
    let ca = Ca::new("bench").unwrap();
    let agent = ClientCert::from_x509(ca.issue(&CertSpec::new("agent1")).unwrap().cert, true);
    let link = LinkInfo {
        listener: "cluster",
        identity: Identity::Verified(&agent),
        client_cert: None,
        sni: "master1",
        peer: "127.0.0.1:1",
        toward: Default::default(),
        upstream_cert: None,
    };
    let policy = MethodPolicy::new(Policy::icinga_defaults());
    let cert = CertRequest::new(64 << 10);
    let cert_interest: Interest = cert.interest();
    let payload = check_result();
    let env = envelope::parse(&payload).unwrap();
    c.bench_function("rpc filter chain, built-ins (CheckResult)", |b| {
        b.iter(|| {
            let msg = Message::new(Direction::Upstream, black_box(&payload), &env);
            let a = policy.on_message(black_box(&link), &msg);
            black_box((a, cert_interest.wants(Direction::Upstream, msg.method())))
        })
    });
}

criterion_group!(
    benches,
    netstrings,
    envelopes,
    routing,
    policies,
    filter_chain
);
criterion_main!(benches);
