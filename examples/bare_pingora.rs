//! The floor under Gatehouse's HTTP figures: the smallest Pingora reverse proxy that does the
//! same TLS work (downstream TLS, upstream mTLS with its own CA, SNI and hostname check, pooled
//! keep-alive) on the same allocator and runtime settings, and nothing else: no routing,
//! identity, headers, metrics or logging. `make bench` runs it beside Gatehouse, so the gap
//! between the two is what Gatehouse adds and the gap to nginx is Pingora's.
//!
//! `bare_pingora LISTEN CERT KEY UPSTREAM SNI CA CLIENT_CERT CLIENT_KEY`

use async_trait::async_trait;
use boring::pkey::PKey;
use boring::x509::X509;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::CertKey;
use pingora_proxy::{ProxyHttp, Session};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: SocketAddr,
    sni: String,
    ca: Arc<Box<[X509]>>,
    cert: Arc<CertKey>,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        let mut p = HttpPeer::new(self.upstream, true, self.sni.clone());
        p.options.ca = Some(self.ca.clone());
        p.options.idle_timeout = Some(Duration::from_secs(60));
        p.client_cert_key = Some(self.cert.clone());
        Ok(Box::new(p))
    }
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let [_, listen, cert, key, upstream, sni, ca, client_cert, client_key] = &a[..] else {
        eprintln!("usage: bare_pingora LISTEN CERT KEY UPSTREAM SNI CA CLIENT_CERT CLIENT_KEY");
        std::process::exit(2);
    };
    let bare = Bare {
        upstream: upstream.parse().expect("UPSTREAM must be IP:port"),
        sni: sni.clone(),
        ca: Arc::new(X509::stack_from_pem(&read(ca)).expect("CA").into()),
        cert: Arc::new(CertKey::new(
            X509::stack_from_pem(&read(client_cert)).expect("CLIENT_CERT"),
            PKey::private_key_from_pem(&read(client_key)).expect("CLIENT_KEY"),
        )),
    };
    // Gatehouse's defaults: two threads per listener, work stealing on (Pingora's default);
    // BENCH_WORK_STEALING=false turns it off here as in the bench's Gatehouse config.
    let work_stealing = std::env::var("BENCH_WORK_STEALING").map_or(true, |v| v != "false");
    let conf = ServerConf {
        threads: 2,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, bare);
    svc.add_tls(listen, cert, key).expect("listener TLS");
    server.add_service(svc);
    server.run_forever();
}
