//! `/healthz` and `/readyz` beside `/metrics` on the `metrics:` address, for Kubernetes probes
//! and L4 balancers.
//!
//! - `/healthz`: `200 ok` whenever the process answers at all (liveness).
//! - `/readyz`: `200 ready` when every listener is bound and every upstream group with a
//!   `health_check` has a peer that passed its latest check; otherwise `503` and one line per
//!   problem (`listener edge: 127.0.0.1:5665 not bound`, `upstream kea: no healthy peer
//!   (127.0.0.1:8000 down)`, `upstream kea: health check pending`, `shutting down`).
//! - `/metrics` and `/`: the Prometheus text; any other path is `404`.
//!
//! Where the facts come from:
//! - *Bound*: Pingora records every listening socket it binds (or inherits in a graceful
//!   upgrade) in the server's table of listening fds, keyed by the configured address, right
//!   before that service's accept loop starts; the table is handed to every service, this one
//!   included. Nothing connects to the listeners to find out, so probes never show up as
//!   clients in metrics or logs. A listener whose address is taken stays unbound while Pingora
//!   retries (every second, 30 times).
//! - *Healthy*: the group's own health check ([`crate::upstream::UpstreamGroup::peer_health`]);
//!   Pingora counts a peer healthy before its first check, `/readyz` does not. A group without
//!   `health_check` is never probed and counts as ready: Gatehouse sends it traffic and moves
//!   to the next peer when a connect fails, and only a health check can say more.
//! - *Shutting down*: from SIGTERM on, `/readyz` answers 503 while the process drains (its
//!   listeners have stopped accepting), and this endpoint keeps answering until the process
//!   exits. In a graceful upgrade (SIGQUIT) the old process stays ready and stops answering
//!   when it hands over: the new process, which took the same sockets, answers from then on.

use crate::config::ListenerSettings;
use crate::metrics::{Metrics, MetricsApp};
use crate::upstream::{PeerHealth, UpstreamGroup};
use async_trait::async_trait;
use pingora_core::apps::http_app::{HttpServer, ServeHttp};
use pingora_core::modules::http::compression::ResponseCompressionBuilder;
use pingora_core::protocols::http::ServerSession;
use pingora_core::server::{ExecutionPhase, ListenFds, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_core::services::{ServiceReadyNotifier, ServiceWithDependents};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::{broadcast, watch};

/// What `/readyz` checks: the listeners, the upstream groups, and whether shutdown began.
pub(crate) struct Readiness {
    /// Listener name and address, as Pingora keys its table of listening fds.
    listeners: Vec<(String, String)>,
    upstreams: Arc<[UpstreamGroup]>,
    /// The server's table of listening fds, known once this service starts.
    fds: OnceLock<ListenFds>,
    stopping: AtomicBool,
}

impl Readiness {
    pub(crate) fn new(listeners: &[ListenerSettings], upstreams: Arc<[UpstreamGroup]>) -> Self {
        Readiness {
            listeners: listeners
                .iter()
                .map(|l| (l.name.clone(), l.address.to_string()))
                .collect(),
            upstreams,
            fds: OnceLock::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// What is not ready, one line each; empty when ready.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.stopping.load(Ordering::Acquire) {
            out.push("shutting down".to_string());
        }
        for (name, address) in &self.listeners {
            let bound = self
                .fds
                .get()
                .is_some_and(|fds| fds.lock().get(address).is_some());
            if !bound {
                out.push(format!("listener {name}: {address} not bound"));
            }
        }
        for g in self.upstreams.iter() {
            let Some(peers) = g.peer_health() else {
                continue;
            };
            if peers.iter().any(|(_, h)| *h == PeerHealth::Up) {
                continue;
            }
            if peers.iter().all(|(_, h)| *h == PeerHealth::Unknown) {
                out.push(format!("upstream {}: health check pending", g.name));
                continue;
            }
            let list: Vec<String> = peers
                .iter()
                .map(|(a, h)| match h {
                    PeerHealth::Unknown => format!("{a} not checked yet"),
                    _ => format!("{a} down"),
                })
                .collect();
            out.push(format!(
                "upstream {}: no healthy peer ({})",
                g.name,
                list.join(", ")
            ));
        }
        out
    }
}

/// The HTTP app on the metrics address: `/metrics` (and `/`), `/healthz`, `/readyz`.
pub(crate) struct App {
    metrics: MetricsApp,
    readiness: Arc<Readiness>,
}

#[async_trait]
impl ServeHttp for App {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" | "/" => self.metrics.response(session).await,
            "/healthz" => text(200, "ok\n".into()),
            "/readyz" => {
                let problems = self.readiness.problems();
                if problems.is_empty() {
                    text(200, "ready\n".into())
                } else {
                    text(503, format!("not ready\n{}\n", problems.join("\n")))
                }
            }
            _ => text(404, "not found: /metrics, /healthz, /readyz\n".into()),
        }
    }
}

fn text(status: u16, body: String) -> http::Response<Vec<u8>> {
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(http::header::CACHE_CONTROL, "no-store")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.into_bytes())
        .unwrap_or_default()
}

/// The metrics-and-health service: Pingora's listening service around [`App`], which learns
/// the table of listening fds when it starts and decides for itself when to stop accepting
/// (see the module documentation).
pub(crate) struct Endpoint {
    inner: Service<HttpServer<App>>,
    readiness: Arc<Readiness>,
    phases: Option<broadcast::Receiver<ExecutionPhase>>,
}

impl Endpoint {
    /// The service for `metrics`' registry and `readiness`, listening on `address`;
    /// `phases` is the server's execution-phase watch (to tell an upgrade from a stop).
    pub(crate) fn new(
        metrics: &Metrics,
        readiness: Arc<Readiness>,
        phases: broadcast::Receiver<ExecutionPhase>,
        address: &str,
    ) -> Endpoint {
        let mut app = HttpServer::new_app(App {
            metrics: MetricsApp::new(metrics),
            readiness: readiness.clone(),
        });
        app.add_module(ResponseCompressionBuilder::enable(7));
        let mut inner = Service::new("metrics and health".to_string(), app);
        inner.add_tcp(address);
        Endpoint {
            inner,
            readiness,
            phases: Some(phases),
        }
    }
}

#[async_trait]
impl ServiceWithDependents for Endpoint {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready: ServiceReadyNotifier,
    ) {
        if let Some(fds) = &fds {
            let _ = self.readiness.fds.set(fds.clone());
        }
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(follow_shutdown(
            shutdown,
            self.phases.take(),
            stop,
            self.readiness.clone(),
        ));
        ready.notify_ready();
        pingora_core::services::Service::start_service(
            &mut self.inner,
            fds,
            stopped,
            listeners_per_fd,
        )
        .await
    }

    fn name(&self) -> &str {
        pingora_core::services::Service::name(&self.inner)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        // Pingora keeps the inherited sockets every service claims (graceful upgrade).
        pingora_core::services::Service::listen_addresses(&self.inner)
    }
}

/// Follows the server's shutdown: on a graceful upgrade, stops the endpoint's accept loop with
/// the rest (the new process answers on the same socket); on a stop, marks `/readyz` 503 and
/// keeps answering until the runtime ends.
async fn follow_shutdown(
    mut shutdown: ShutdownWatch,
    mut phases: Option<broadcast::Receiver<ExecutionPhase>>,
    stop: watch::Sender<bool>,
    readiness: Arc<Readiness>,
) {
    let mut upgrading = false;
    loop {
        tokio::select! {
            // Pingora announces the upgrade phase before it broadcasts the shutdown.
            biased;
            phase = next_phase(&mut phases) => match phase {
                Some(p) => upgrading |= matches!(p, ExecutionPhase::GracefulUpgradeTransferringFds),
                None => phases = None,
            },
            changed = shutdown.changed() => {
                let gone = changed.is_err();
                if !gone && !*shutdown.borrow() {
                    continue;
                }
                // A phase sent just before the shutdown may still be queued.
                while let Some(rx) = phases.as_mut() {
                    match rx.try_recv() {
                        Ok(p) => upgrading |= matches!(p, ExecutionPhase::GracefulUpgradeTransferringFds),
                        Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                        Err(_) => break,
                    }
                }
                if upgrading || gone {
                    let _ = stop.send(true);
                    return;
                }
                readiness.stopping.store(true, Ordering::Release);
                log::info!("stopping: /readyz answers 503 until the process exits");
                // Holding `stop` keeps the accept loop going (a dropped sender ends it); the
                // runtime drops this task when the process exits.
                return std::future::pending().await;
            }
        }
    }
}

/// The next execution phase; pending forever once the channel is gone.
async fn next_phase(
    phases: &mut Option<broadcast::Receiver<ExecutionPhase>>,
) -> Option<ExecutionPhase> {
    let Some(rx) = phases.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(p) => return Some(p),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}
