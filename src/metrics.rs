//! Prometheus metric families, as one [`Metrics`] object registered into a given registry.
//!
//! The binary registers them once in Prometheus' default registry ([`Metrics::global`]); an
//! embedder can register another set into a registry of its own ([`crate::Gatehouse::from_config_in`]), so two Gatehouse instances in one
//! process never collide. The `/metrics` endpoint serves whichever registry the families are in.
//!
//! Names and labels are a contract with operators' dashboards. Every label value is drawn
//! from a bounded set (listener and route names from the config, fixed enums otherwise), so
//! a hostile client cannot blow up the series count.

use once_cell::sync::OnceCell;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use prometheus::{Encoder, TextEncoder};

/// Serves a registry in the Prometheus text format on every path (gzip when asked), like
/// Pingora's prometheus service, which only knows the default registry. Gatehouse's own
/// endpoint puts it under `/metrics` beside `/healthz` and `/readyz` ([`crate::health`]).
pub(crate) struct MetricsApp(Registry);

impl MetricsApp {
    /// The app for `metrics`' registry.
    pub fn new(metrics: &Metrics) -> MetricsApp {
        MetricsApp(metrics.registry.clone())
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, _session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let encoder = TextEncoder::new();
        let mut body = Vec::new();
        if let Err(e) = encoder.encode(&self.0.gather(), &mut body) {
            log::error!("cannot encode the metrics: {e}");
        }
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, encoder.format_type())
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}

/// Every Gatehouse metric family, and the registry they are in.
pub struct Metrics {
    registry: Registry,
    /// `gatehouse_build_info{version}` — always 1; the version label says what runs.
    pub build_info: IntGaugeVec,
    /// `gatehouse_connections_total{listener, protocol}`.
    pub connections: IntCounterVec,
    /// `gatehouse_connections_active{listener, protocol}`.
    pub connections_active: IntGaugeVec,
    /// `gatehouse_handshakes_total{listener, result}`: connections from accept to the end of
    /// the TLS handshake (ok, timeout, failed, over_ip_limit, over_listener_limit).
    pub handshakes: IntCounterVec,
    /// `gatehouse_tls_client_verify_failures_total{listener, reason}`.
    pub tls_verify_failures: IntCounterVec,
    /// `gatehouse_http_requests_total{route, status}` with status a class: 2xx, 3xx, 4xx, 5xx.
    pub http_requests: IntCounterVec,
    /// `gatehouse_http_request_duration_seconds{route}`.
    pub http_duration: HistogramVec,
    /// `gatehouse_upstream_errors_total{upstream, kind}`.
    pub upstream_errors: IntCounterVec,
    /// `gatehouse_http_header_timeouts_total{listener}`: HTTP/1 connections closed because a
    /// request head was not complete within `header_timeout` (slowloris).
    pub http_head_timeouts: IntCounterVec,
    /// `gatehouse_http_client_timeouts_total{listener, phase}`: requests ended because the
    /// client stalled once its head was in: `body` (a request body gap over `body_timeout`),
    /// `send` (it took no bytes of an answer for `send_timeout`).
    pub http_client_timeouts: IntCounterVec,
    /// `gatehouse_tls_reloads_total{result}` (success, failure): certificate reloads, by SIGHUP
    /// or by a watched file change (`tls.watch`).
    pub tls_reloads: IntCounterVec,
    /// `gatehouse_tls_watched_folders`: folders the certificate file watcher has a watch on
    /// (0 when no TLS block has `watch: true`, or the watch could not be set up).
    pub tls_watched_folders: prometheus::IntGauge,
    /// `gatehouse_tls_cert_not_after_timestamp_seconds{owner, cert}`: when each served or
    /// presented certificate expires (owner: `listener:<name>` or `upstream:<name>`).
    pub tls_cert_not_after: IntGaugeVec,
    /// `gatehouse_cluster_messages_total{direction, method, verdict}` (verdict: forwarded, denied,
    /// malformed, too_large, dropped, answered).
    pub cluster_messages: IntCounterVec,
    /// `gatehouse_cluster_bytes_total{direction}` — netstring bytes forwarded.
    pub cluster_bytes: IntCounterVec,
    /// `gatehouse_cluster_links_active{kind}` (authenticated, anonymous).
    pub cluster_links: IntGaugeVec,
    /// `gatehouse_cluster_links_closed_total{end}`: cluster links that were open upstream and
    /// ended, by why (the `end` of the link-closed line: `closed`, `idle`, `stalled`,
    /// `not_taken`, …).
    pub cluster_links_closed: IntCounterVec,
    /// `gatehouse_cluster_links_refused_total{reason}`: cluster links closed before any upstream
    /// connection (reason: anonymous_max_clients, anonymous_max_per_ip, no_route, anonymous_child, identity, authorizer).
    pub cluster_links_refused: IntCounterVec,
    /// `gatehouse_authorizer_calls_total{target, result}`: decisions of an added authorizer
    /// (target: http, kea, link; result: allow, deny, cached, error, timeout).
    pub authorizer_calls: IntCounterVec,
    /// `gatehouse_kea_commands_total{route, command, verdict}` (verdict: allowed, denied, malformed,
    /// answered at the edge by a filter).
    pub kea_commands: IntCounterVec,
    /// `gatehouse_http_rate_limited_total{route}`: requests answered 429 by `rate_limit`.
    pub http_rate_limited: IntCounterVec,
    /// `gatehouse_cluster_links_replaced_total`: authenticated links closed because a newer one
    /// of the same identity exceeded `cluster.limits.max_links_per_identity`.
    pub cluster_links_replaced: prometheus::IntCounter,
    /// `gatehouse_kea_fanout_peer_total{route, peer, outcome}`: per-peer outcome of fanned-out
    /// Kea commands (`ok`, or the failure class).
    pub kea_fanout_peers: IntCounterVec,
    /// `gatehouse_cluster_upstream_handshakes_total{upstream, session}`: TLS handshakes of
    /// cluster links toward their upstream (session: `resumed` or `full`).
    pub cluster_upstream_handshakes: IntCounterVec,
    /// `gatehouse_bearer_tokens_total{issuer, result}`: bearer tokens checked on `bearer`
    /// routes (result: `ok` or why refused; issuer `-` when `iss` named none of the route's).
    pub bearer_tokens: IntCounterVec,
    /// `gatehouse_bearer_key_fetches_total{issuer, result}`: fetches of an issuer's keys
    /// (result: `ok`, `failed`).
    pub bearer_key_fetches: IntCounterVec,
}

impl Metrics {
    /// Counts one failure talking to `upstream`, of class `kind` (`FailureKind::label`).
    pub fn upstream_error(&self, upstream: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[upstream, kind])
            .inc();
    }

    /// Creates every family and registers it in `registry` (fails if one is already there).
    // The one documented exception to the 80-line limit: a flat list of families, each
    // name, help text and label set next to each other, read as the metrics' table.
    #[allow(clippy::too_many_lines)]
    pub fn register(registry: &Registry) -> prometheus::Result<Metrics> {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "gatehouse_build_info",
                "Gatehouse build information (always 1).",
            ),
            &["version"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        let connections = IntCounterVec::new(Opts::new("gatehouse_connections_total", "Connections accepted after the TLS handshake, by the protocol they turned out to speak."), &["listener", "protocol"])?;
        registry.register(Box::new(connections.clone()))?;
        let connections_active = IntGaugeVec::new(
            Opts::new(
                "gatehouse_connections_active",
                "Connections currently open, by protocol.",
            ),
            &["listener", "protocol"],
        )?;
        registry.register(Box::new(connections_active.clone()))?;
        let handshakes = IntCounterVec::new(
            Opts::new(
                "gatehouse_handshakes_total",
                "Connections from accept to a finished TLS handshake, by result: ok, timeout (listeners[].handshake_timeout), failed, over_ip_limit (max_handshakes_per_ip), over_listener_limit (max_connections).",
            ),
            &["listener", "result"],
        )?;
        registry.register(Box::new(handshakes.clone()))?;
        let tls_verify_failures = IntCounterVec::new(Opts::new("gatehouse_tls_client_verify_failures_total", "Client certificates that failed verification (reason: unknown_ca, expired, other)."), &["listener", "reason"])?;
        registry.register(Box::new(tls_verify_failures.clone()))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_requests_total",
                "HTTP requests answered, by route and status class.",
            ),
            &["route", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "gatehouse_http_request_duration_seconds",
                "Time from request start to the last response byte, by route.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
            &["route"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        let cluster_upstream_handshakes = IntCounterVec::new(
            Opts::new(
                "gatehouse_cluster_upstream_handshakes_total",
                "TLS handshakes of cluster links toward their upstream (session: resumed, full).",
            ),
            &["upstream", "session"],
        )?;
        registry.register(Box::new(cluster_upstream_handshakes.clone()))?;
        let bearer_tokens = IntCounterVec::new(Opts::new("gatehouse_bearer_tokens_total", "Bearer tokens checked on bearer routes, by issuer and result: ok, or why refused (malformed, algorithm, unknown_key, key_mismatch, signature, type, expired, not_yet_valid, issuer, audience, claims, keys_unavailable)."), &["issuer", "result"])?;
        registry.register(Box::new(bearer_tokens.clone()))?;
        let bearer_key_fetches = IntCounterVec::new(Opts::new("gatehouse_bearer_key_fetches_total", "Fetches of a token issuer's keys (discovery document and JWK set, or the JWK set file), by result: ok, failed."), &["issuer", "result"])?;
        registry.register(Box::new(bearer_key_fetches.clone()))?;
        let upstream_errors = IntCounterVec::new(Opts::new("gatehouse_upstream_errors_total", "Failures talking to upstream peers (kind: invalid_cert, handshake, timeout, refused, other)."), &["upstream", "kind"])?;
        registry.register(Box::new(upstream_errors.clone()))?;
        let http_head_timeouts = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_header_timeouts_total",
                "HTTP/1 connections closed because a request head took longer than header_timeout.",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(http_head_timeouts.clone()))?;
        let http_client_timeouts = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_client_timeouts_total",
                "HTTP requests ended because the client stalled after its head: phase body (body_timeout) or send (send_timeout).",
            ),
            &["listener", "phase"],
        )?;
        registry.register(Box::new(http_client_timeouts.clone()))?;
        let tls_reloads = IntCounterVec::new(Opts::new("gatehouse_tls_reloads_total", "Certificate reloads (SIGHUP, or a watched file changed), by result; a failed reload keeps the previous material."), &["result"])?;
        registry.register(Box::new(tls_reloads.clone()))?;
        let tls_watched_folders = prometheus::IntGauge::new(
            "gatehouse_tls_watched_folders",
            "Folders watched for changes to certificate, key and CA files of TLS blocks with watch: true.",
        )?;
        registry.register(Box::new(tls_watched_folders.clone()))?;
        let tls_cert_not_after = IntGaugeVec::new(Opts::new("gatehouse_tls_cert_not_after_timestamp_seconds", "Expiry (Unix time) of each certificate Gatehouse serves or presents, as last loaded."), &["owner", "cert"])?;
        registry.register(Box::new(tls_cert_not_after.clone()))?;
        let cluster_messages = IntCounterVec::new(Opts::new("gatehouse_cluster_messages_total", "Cluster JSON-RPC messages by direction, method (known Icinga methods, reply, else other) and verdict."), &["direction", "method", "verdict"])?;
        registry.register(Box::new(cluster_messages.clone()))?;
        let cluster_bytes = IntCounterVec::new(
            Opts::new(
                "gatehouse_cluster_bytes_total",
                "Cluster JSON-RPC bytes forwarded, by direction.",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(cluster_bytes.clone()))?;
        let cluster_links = IntGaugeVec::new(
            Opts::new(
                "gatehouse_cluster_links_active",
                "Relayed cluster links currently open.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(cluster_links.clone()))?;
        let cluster_links_closed = IntCounterVec::new(
            Opts::new(
                "gatehouse_cluster_links_closed_total",
                "Cluster links that were open upstream and ended, by why (not_taken: the upstream hung up before its first message, e.g. Icinga 2.15+ without an Endpoint for the CN).",
            ),
            &["end"],
        )?;
        registry.register(Box::new(cluster_links_closed.clone()))?;
        let cluster_links_refused = IntCounterVec::new(
            Opts::new(
                "gatehouse_cluster_links_refused_total",
                "Cluster links refused before connecting upstream, by reason.",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(cluster_links_refused.clone()))?;
        let authorizer_calls = IntCounterVec::new(Opts::new("gatehouse_authorizer_calls_total", "Decisions of the added authorizer, by target kind and result (errors and timeouts deny)."), &["target", "result"])?;
        registry.register(Box::new(authorizer_calls.clone()))?;
        let kea_commands = IntCounterVec::new(
            Opts::new(
                "gatehouse_kea_commands_total",
                "Kea commands by route, command (Kea's known commands, else other) and verdict.",
            ),
            &["route", "command", "verdict"],
        )?;
        registry.register(Box::new(kea_commands.clone()))?;
        let http_rate_limited = IntCounterVec::new(
            Opts::new(
                "gatehouse_http_rate_limited_total",
                "Requests answered 429 by a route's per-identity rate_limit, by route.",
            ),
            &["route"],
        )?;
        registry.register(Box::new(http_rate_limited.clone()))?;
        let cluster_links_replaced = prometheus::IntCounter::new(
            "gatehouse_cluster_links_replaced_total",
            "Authenticated cluster links closed for a newer link of the same identity on the same route (cluster.limits.max_links_per_identity).",
        )?;
        registry.register(Box::new(cluster_links_replaced.clone()))?;
        let kea_fanout_peers = IntCounterVec::new(
            Opts::new(
                "gatehouse_kea_fanout_peer_total",
                "Per-peer outcomes of Kea commands fanned out to a whole upstream group (ok, or the failure class).",
            ),
            &["route", "peer", "outcome"],
        )?;
        registry.register(Box::new(kea_fanout_peers.clone()))?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(Metrics {
            registry: registry.clone(),
            build_info,
            connections,
            connections_active,
            handshakes,
            tls_verify_failures,
            http_requests,
            http_duration,
            upstream_errors,
            http_head_timeouts,
            http_client_timeouts,
            tls_reloads,
            tls_watched_folders,
            tls_cert_not_after,
            cluster_messages,
            cluster_bytes,
            cluster_links,
            cluster_links_closed,
            cluster_links_refused,
            authorizer_calls,
            kea_commands,
            http_rate_limited,
            cluster_links_replaced,
            kea_fanout_peers,
            cluster_upstream_handshakes,
            bearer_tokens,
            bearer_key_fetches,
        })
    }

    /// The registry the families are in (what the `/metrics` endpoint serves).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The families in Prometheus' default registry (what `/metrics` serves), registered on
    /// first use.
    pub fn global() -> Arc<Metrics> {
        static GLOBAL: OnceCell<Arc<Metrics>> = OnceCell::new();
        GLOBAL
            .get_or_init(|| {
                Arc::new(
                    Metrics::register(prometheus::default_registry())
                        .expect("gatehouse families register once in the default registry"),
                )
            })
            .clone()
    }
}

/// The label values [`Metrics::prime`] creates series for. The fixed vocabularies come from
/// the modules that pick them (each list sits next to its `label()`, and the unit tests there
/// check the two agree): the server passes them in, so this module depends on none of them.
pub(crate) struct KnownLabels<'a> {
    /// Listener names, and whether each one terminates TLS.
    pub listeners: Vec<(&'a str, bool)>,
    /// Upstream group names.
    pub upstreams: Vec<&'a str>,
    /// Whether a cluster relay runs.
    pub cluster: bool,
    /// `gatehouse_tls_client_verify_failures_total{reason}`.
    pub verify_reasons: &'a [&'a str],
    /// `gatehouse_upstream_errors_total{kind}`.
    pub upstream_error_kinds: &'a [&'a str],
    /// `gatehouse_cluster_links_closed_total{end}`.
    pub link_ends: &'a [&'a str],
    /// `gatehouse_cluster_links_refused_total{reason}`.
    pub link_refusals: &'a [&'a str],
    /// Token issuer names.
    pub issuers: Vec<&'a str>,
    /// `gatehouse_bearer_tokens_total{result}`, `ok` and the refusals.
    pub bearer_results: &'a [&'a str],
}

impl Metrics {
    /// Creates every series whose labels are known before anything happens, at 0, so that
    /// `rate()` and `increase()` alerts have something to evaluate from the first scrape
    /// (a counter born at its first event hides that event from them).
    pub(crate) fn prime(&self, known: &KnownLabels<'_>) {
        for result in ["success", "failure"] {
            self.tls_reloads.with_label_values(&[result]);
        }
        for &(listener, tls) in &known.listeners {
            for protocol in ["http", "cluster", "rejected", "timeout"] {
                self.connections.with_label_values(&[listener, protocol]);
            }
            for protocol in ["http", "cluster"] {
                self.connections_active
                    .with_label_values(&[listener, protocol]);
            }
            if tls {
                for reason in known.verify_reasons {
                    self.tls_verify_failures
                        .with_label_values(&[listener, reason]);
                }
            }
        }
        for upstream in &known.upstreams {
            for kind in known.upstream_error_kinds {
                self.upstream_errors.with_label_values(&[upstream, kind]);
            }
        }
        for issuer in &known.issuers {
            for result in ["ok", "failed"] {
                self.bearer_key_fetches.with_label_values(&[issuer, result]);
            }
            for result in std::iter::once(&"ok").chain(known.bearer_results) {
                self.bearer_tokens.with_label_values(&[issuer, result]);
            }
        }
        if known.cluster {
            for kind in ["authenticated", "anonymous"] {
                self.cluster_links.with_label_values(&[kind]);
            }
            for direction in ["upstream", "downstream"] {
                self.cluster_bytes.with_label_values(&[direction]);
            }
            for end in known.link_ends {
                self.cluster_links_closed.with_label_values(&[end]);
            }
            for reason in known.link_refusals {
                self.cluster_links_refused.with_label_values(&[reason]);
            }
        }
    }
}

/// One route's request metrics, resolved once when the route is built: a labelled lookup
/// hashes the labels and takes a lock, a resolved handle is one atomic operation.
pub(crate) struct RouteMetrics {
    /// Indexed by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    requests: [prometheus::IntCounter; 5],
    duration: prometheus::Histogram,
}

impl RouteMetrics {
    /// Handles for route `route` (`-` for requests answered before routing).
    pub fn new(m: &Metrics, route: &str) -> Self {
        let class = |c| m.http_requests.with_label_values(&[route, c]);
        RouteMetrics {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: m.http_duration.with_label_values(&[route]),
        }
    }

    /// Counts one answered request.
    pub fn observe(&self, status: u16, secs: f64) {
        let i = usize::from(status.clamp(100, 599) / 100 - 1);
        self.requests[i].inc();
        self.duration.observe(secs);
    }
}

/// Keeps a gauge right however the thing it counts ends (drop = decrement).
pub(crate) struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    /// Counts one connection of `protocol` on `listener` as opened and active.
    pub fn open(m: &Metrics, listener: &str, protocol: &str) -> Self {
        m.connections.with_label_values(&[listener, protocol]).inc();
        Self::gauge(
            m.connections_active
                .with_label_values(&[listener, protocol]),
        )
    }

    /// Increments `g` now and decrements it on drop.
    pub fn gauge(g: prometheus::IntGauge) -> Self {
        g.inc();
        ActiveGuard(g)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_by_status_class() {
        let reg = Registry::new();
        let metrics = Metrics::register(&reg).unwrap();
        let m = RouteMetrics::new(&metrics, "unit-test-route");
        for s in [101, 204, 200, 302, 404, 503, 599] {
            m.observe(s, 0.001);
        }
        let get = |c| {
            metrics
                .http_requests
                .with_label_values(&["unit-test-route", c])
                .get()
        };
        assert_eq!(
            [get("1xx"), get("2xx"), get("3xx"), get("4xx"), get("5xx")],
            [1, 2, 1, 1, 2]
        );
        assert_eq!(
            metrics
                .http_duration
                .with_label_values(&["unit-test-route"])
                .get_sample_count(),
            7
        );
    }

    #[test]
    fn two_sets_in_two_registries_do_not_collide() {
        let (a, b) = (Registry::new(), Registry::new());
        let ma = Metrics::register(&a).unwrap();
        let _mb = Metrics::register(&b).unwrap();
        assert!(
            Metrics::register(&a).is_err(),
            "twice in one registry is refused, not a panic"
        );
        ma.cluster_links_refused
            .with_label_values(&["no_route"])
            .inc();
        let count = |r: &Registry| {
            r.gather()
                .iter()
                .filter(|f| f.name() == "gatehouse_cluster_links_refused_total")
                .map(|f| f.get_metric().len())
                .sum::<usize>()
        };
        assert_eq!((count(&a), count(&b)), (1, 0));
    }

    /// Every family `register` creates has a row in `docs/metrics.md` naming its labels, and
    /// every row there names a family that exists. The families come from the collectors'
    /// own descriptors, not a hand list: the pattern below names every field of `Metrics`
    /// and stops compiling when one is added, until the new family is listed here too.
    #[test]
    fn every_family_is_in_docs_metrics_md() {
        use prometheus::core::Collector;
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let Metrics {
            registry: _,
            build_info,
            connections,
            connections_active,
            handshakes,
            tls_verify_failures,
            http_requests,
            http_duration,
            upstream_errors,
            http_head_timeouts,
            http_client_timeouts,
            tls_reloads,
            tls_watched_folders,
            tls_cert_not_after,
            cluster_messages,
            cluster_bytes,
            cluster_links,
            cluster_links_closed,
            cluster_links_refused,
            authorizer_calls,
            kea_commands,
            http_rate_limited,
            cluster_links_replaced,
            kea_fanout_peers,
            cluster_upstream_handshakes,
            bearer_tokens,
            bearer_key_fetches,
        } = &metrics;
        let collectors: [&dyn Collector; 26] = [
            bearer_tokens,
            bearer_key_fetches,
            build_info,
            connections,
            connections_active,
            handshakes,
            tls_verify_failures,
            http_requests,
            http_duration,
            upstream_errors,
            http_head_timeouts,
            http_client_timeouts,
            tls_reloads,
            tls_watched_folders,
            tls_cert_not_after,
            cluster_messages,
            cluster_bytes,
            cluster_links,
            cluster_links_closed,
            cluster_links_refused,
            authorizer_calls,
            kea_commands,
            http_rate_limited,
            cluster_links_replaced,
            kea_fanout_peers,
            cluster_upstream_handshakes,
        ];
        let problems = doc_problems(&collectors);
        assert!(
            problems.is_empty(),
            "docs/metrics.md is out of step with Metrics::register:\n  {}",
            problems.join("\n  ")
        );
    }

    /// What is out of step between the families of `collectors` and `docs/metrics.md`.
    fn doc_problems(collectors: &[&dyn prometheus::core::Collector]) -> Vec<String> {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
        let doc = std::fs::read_to_string(file).expect("docs/metrics.md is readable");
        // A family's row: a table row whose first cell is the family name in backticks.
        let rows: std::collections::BTreeMap<&str, &str> = doc
            .lines()
            .filter_map(|line| {
                let cell = line.trim().strip_prefix('|')?.split('|').next()?.trim();
                let name = cell.strip_prefix('`')?.strip_suffix('`')?;
                name.starts_with("gatehouse_").then_some((name, line))
            })
            .collect();
        let mut problems = Vec::new();
        let mut names = std::collections::BTreeSet::new();
        for desc in collectors.iter().flat_map(|c| c.desc()) {
            names.insert(desc.fq_name.as_str());
            let Some(row) = rows.get(desc.fq_name.as_str()) else {
                problems.push(format!("`{}` has no row", desc.fq_name));
                continue;
            };
            for label in &desc.variable_labels {
                if !row.contains(&format!("`{label}`")) {
                    problems.push(format!(
                        "`{}`'s row does not name the label `{label}`",
                        desc.fq_name
                    ));
                }
            }
        }
        for name in rows.keys().filter(|n| !names.contains(*n)) {
            problems.push(format!("`{name}` has a row but is not registered"));
        }
        problems
    }
}
