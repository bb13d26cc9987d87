//! What a listener does with a connection once TLS is up: decide which protocol it
//! speaks and hand it to that side.
//!
//! Today every listener speaks HTTP only, so the connection goes straight to Pingora's HTTP
//! app (HTTP/1 keep-alive loop, or HTTP/2 by ALPN). This is the seam where first-byte
//! detection of netstring JSON-RPC plugs in.

use crate::http::HttpGateway;
use crate::metrics::ActiveGuard;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use std::sync::Arc;

/// The Pingora app behind one listener.
pub struct ListenerApp {
    name: Arc<str>,
    http: Arc<HttpProxy<HttpGateway>>,
}

impl ListenerApp {
    /// An app for listener `name` that serves HTTP with `http`.
    pub fn new(name: &str, http: HttpProxy<HttpGateway>) -> Self {
        ListenerApp {
            name: name.into(),
            http: Arc::new(http),
        }
    }
}

#[async_trait]
impl ServerApp for ListenerApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _active = ActiveGuard::open(&self.name, "http");
        // The HTTP app runs the whole keep-alive loop itself and returns None.
        self.http.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(&*self.http).await
    }
}
