//! Prometheus metric families, registered in the default registry that Pingora's
//! prometheus service serves.
//!
//! Names and labels are a contract with operators' dashboards. Every label value is drawn
//! from a bounded set (listener and route names from the config, fixed enums otherwise), so
//! a hostile client cannot blow up the series count.

use once_cell::sync::Lazy;
use prometheus::{
    register_histogram_vec, register_int_counter_vec, register_int_gauge_vec, HistogramVec,
    IntCounterVec, IntGaugeVec,
};

/// `gatehouse_build_info{version}` — always 1; the version label says what runs.
pub static BUILD_INFO: Lazy<IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!(
        "gatehouse_build_info",
        "Gatehouse build information (always 1).",
        &["version"]
    )
    .expect("metric registers once")
});

/// `gatehouse_connections_total{listener, protocol}`.
pub static CONNECTIONS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_connections_total",
        "Connections accepted after the TLS handshake, by the protocol they turned out to speak.",
        &["listener", "protocol"]
    )
    .expect("metric registers once")
});

/// `gatehouse_connections_active{listener, protocol}`.
pub static CONNECTIONS_ACTIVE: Lazy<IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!(
        "gatehouse_connections_active",
        "Connections currently open, by protocol.",
        &["listener", "protocol"]
    )
    .expect("metric registers once")
});

/// `gatehouse_tls_client_verify_failures_total{listener, reason}`.
pub static TLS_VERIFY_FAILURES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_tls_client_verify_failures_total",
        "Client certificates that failed verification (reason: unknown_ca, expired, other).",
        &["listener", "reason"]
    )
    .expect("metric registers once")
});

/// `gatehouse_http_requests_total{route, status}` with status a class: 2xx, 3xx, 4xx, 5xx.
pub static HTTP_REQUESTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_http_requests_total",
        "HTTP requests answered, by route and status class.",
        &["route", "status"]
    )
    .expect("metric registers once")
});

/// `gatehouse_http_request_duration_seconds{route}`.
pub static HTTP_DURATION: Lazy<HistogramVec> = Lazy::new(|| {
    register_histogram_vec!(
        "gatehouse_http_request_duration_seconds",
        "Time from request start to the last response byte, by route.",
        &["route"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0
        ]
    )
    .expect("metric registers once")
});

/// `gatehouse_upstream_errors_total{upstream, kind}`.
pub static UPSTREAM_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_upstream_errors_total",
        "Failures talking to upstream peers (kind: invalid_cert, handshake, timeout, refused, other).",
        &["upstream", "kind"]
    )
    .expect("metric registers once")
});

/// `gatehouse_http_header_timeouts_total{listener}`: HTTP/1 connections closed because a
/// request head was not complete within `header_timeout` (slowloris).
pub static HTTP_HEAD_TIMEOUTS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_http_header_timeouts_total",
        "HTTP/1 connections closed because a request head took longer than header_timeout.",
        &["listener"]
    )
    .expect("metric registers once")
});

/// `gatehouse_tls_reloads_total{result}` (success, failure): SIGHUP certificate reloads.
pub static TLS_RELOADS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_tls_reloads_total",
        "Certificate reloads (SIGHUP), by result; a failed reload keeps the previous material.",
        &["result"]
    )
    .expect("metric registers once")
});

/// `gatehouse_tls_cert_not_after_timestamp_seconds{owner, cert}`: when each served or
/// presented certificate expires (owner: `listener:<name>` or `upstream:<name>`).
pub static TLS_CERT_NOT_AFTER: Lazy<IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!(
        "gatehouse_tls_cert_not_after_timestamp_seconds",
        "Expiry (Unix time) of each certificate Gatehouse serves or presents, as last loaded.",
        &["owner", "cert"]
    )
    .expect("metric registers once")
});

/// Registers every family (so each shows up before its first event) and sets build info.
pub fn init() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    Lazy::force(&CONNECTIONS);
    Lazy::force(&CONNECTIONS_ACTIVE);
    Lazy::force(&TLS_VERIFY_FAILURES);
    Lazy::force(&HTTP_REQUESTS);
    Lazy::force(&HTTP_DURATION);
    Lazy::force(&UPSTREAM_ERRORS);
    Lazy::force(&RPC_MESSAGES);
    Lazy::force(&RPC_BYTES);
    Lazy::force(&RPC_LINKS);
    Lazy::force(&RPC_LINKS_REFUSED);
    Lazy::force(&AUTHORIZER_CALLS);
    Lazy::force(&KEA_COMMANDS);
    Lazy::force(&HTTP_HEAD_TIMEOUTS);
    Lazy::force(&TLS_RELOADS);
    Lazy::force(&TLS_CERT_NOT_AFTER);
}

/// One route's request metrics, resolved once when the route is built: a labelled lookup
/// hashes the labels and takes a lock, a resolved handle is one atomic operation.
pub struct RouteMetrics {
    /// Indexed by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    requests: [prometheus::IntCounter; 5],
    duration: prometheus::Histogram,
}

impl RouteMetrics {
    /// Handles for route `route` (`-` for requests answered before routing).
    pub fn new(route: &str) -> Self {
        let class = |c| HTTP_REQUESTS.with_label_values(&[route, c]);
        RouteMetrics {
            requests: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: HTTP_DURATION.with_label_values(&[route]),
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
pub struct ActiveGuard(prometheus::IntGauge);

impl ActiveGuard {
    /// Counts one connection of `protocol` on `listener` as opened and active.
    pub fn open(listener: &str, protocol: &str) -> Self {
        CONNECTIONS.with_label_values(&[listener, protocol]).inc();
        Self::gauge(CONNECTIONS_ACTIVE.with_label_values(&[listener, protocol]))
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

/// `gatehouse_rpc_messages_total{direction, method, verdict}` (verdict: forwarded, denied,
/// malformed, dropped, answered).
pub static RPC_MESSAGES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_rpc_messages_total",
        "Cluster JSON-RPC messages by direction, method (known Icinga methods, reply, else other) and verdict.",
        &["direction", "method", "verdict"]
    )
    .expect("metric registers once")
});

/// `gatehouse_rpc_bytes_total{direction}` — netstring bytes forwarded.
pub static RPC_BYTES: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_rpc_bytes_total",
        "Cluster JSON-RPC bytes forwarded, by direction.",
        &["direction"]
    )
    .expect("metric registers once")
});

/// `gatehouse_rpc_links_active{kind}` (authenticated, anonymous).
pub static RPC_LINKS: Lazy<IntGaugeVec> = Lazy::new(|| {
    register_int_gauge_vec!(
        "gatehouse_rpc_links_active",
        "Relayed cluster links currently open.",
        &["kind"]
    )
    .expect("metric registers once")
});

/// `gatehouse_rpc_links_refused_total{reason}`: cluster links closed before any upstream
/// connection (reason: anonymous_max_clients, anonymous_max_per_ip, no_route, identity).
pub static RPC_LINKS_REFUSED: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_rpc_links_refused_total",
        "Cluster links refused before connecting upstream, by reason.",
        &["reason"]
    )
    .expect("metric registers once")
});

/// `gatehouse_authorizer_calls_total{target, result}`: decisions of an added authorizer
/// (target: http, kea, link; result: allow, deny, cached, error, timeout).
pub static AUTHORIZER_CALLS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_authorizer_calls_total",
        "Decisions of the added authorizer, by target kind and result (errors and timeouts deny).",
        &["target", "result"]
    )
    .expect("metric registers once")
});

/// `gatehouse_kea_commands_total{route, command, verdict}` (verdict: allowed, denied, malformed,
/// answered at the edge by a filter).
pub static KEA_COMMANDS: Lazy<IntCounterVec> = Lazy::new(|| {
    register_int_counter_vec!(
        "gatehouse_kea_commands_total",
        "Kea commands by route, command (Kea's known commands, else other) and verdict.",
        &["route", "command", "verdict"]
    )
    .expect("metric registers once")
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_count_by_status_class() {
        let m = RouteMetrics::new("unit-test-route");
        for s in [101, 204, 200, 302, 404, 503, 599] {
            m.observe(s, 0.001);
        }
        let get = |c| {
            HTTP_REQUESTS
                .with_label_values(&["unit-test-route", c])
                .get()
        };
        assert_eq!(
            [get("1xx"), get("2xx"), get("3xx"), get("4xx"), get("5xx")],
            [1, 2, 1, 1, 2]
        );
        assert_eq!(
            HTTP_DURATION
                .with_label_values(&["unit-test-route"])
                .get_sample_count(),
            7
        );
    }
}
