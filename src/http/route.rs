//! HTTP routing: host pattern plus longest path prefix.

pub use crate::host::{normalize_host, HostPattern};

use super::kea::KeaPolicy;
use crate::authz::Access;
use crate::metrics::{Metrics, RouteMetrics};
use std::sync::Arc;

/// One compiled route.
pub struct Route {
    /// Route name (logs, metric labels).
    pub name: Arc<str>,
    /// Host pattern.
    pub host: HostPattern,
    /// Path prefix.
    pub prefix: String,
    /// Index into the proxy's upstream table.
    pub upstream: usize,
    /// Who may use the route.
    pub access: Access,
    /// Send `X-Forwarded-Client-Cert` upstream.
    pub forward_xfcc: bool,
    /// Kea command-level authorization, when the route has a `kea:` block.
    pub kea: Option<Arc<KeaPolicy>>,
    /// Send allowed Kea commands to every peer of the group (`kea.fan_out: all`).
    pub fan_out: bool,
    /// This route's request counters and histogram.
    pub(crate) metrics: RouteMetrics,
    /// Callers must give HTTP basic credentials (`routes[].basic_auth`).
    pub basic_auth: Option<Arc<super::basic::BasicAuth>>,
    /// Callers give bearer tokens (`routes[].bearer`).
    pub(crate) bearer: Option<Arc<crate::token::Bearer>>,
    /// The bound on a whole answer, instead of the upstream's `answer_timeout`.
    pub answer_timeout: Option<std::time::Duration>,
}

impl Route {
    /// A route with no access rule, identity forwarding or Kea block; its request metrics
    /// are resolved in `metrics` now, once.
    pub fn plain(
        name: &str,
        host: HostPattern,
        prefix: &str,
        upstream: usize,
        metrics: &Metrics,
    ) -> Route {
        Route {
            name: name.into(),
            host,
            prefix: prefix.to_string(),
            upstream,
            access: Access::default(),
            forward_xfcc: false,
            kea: None,
            fan_out: false,
            metrics: RouteMetrics::new(metrics, name),
            basic_auth: None,
            bearer: None,
            answer_timeout: None,
        }
    }

    /// The bound on a whole answer on this route: its own, else its upstream group's.
    pub fn answer_timeout(
        &self,
        upstreams: &[crate::upstream::UpstreamGroup],
    ) -> std::time::Duration {
        self.answer_timeout
            .unwrap_or_else(|| upstreams[self.upstream].answer_timeout())
    }
}

impl Route {
    /// A prefix ending in `/` matches as a plain prefix; otherwise only at a segment
    /// boundary, so `/api` matches `/api` and `/api/x` but not `/apix`.
    fn path_matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            None => false,
            Some(rest) => self.prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        }
    }
}

/// The route table: longest prefix first, then the most specific host, then file order.
#[derive(Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Builds the table; `routes` in configuration order.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut routes = routes;
        // Stable sort keeps file order among equals.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.specificity().cmp(&a.host.specificity()))
        });
        Router {
            routes: routes.into_iter().map(Arc::new).collect(),
        }
    }

    /// Every route, in matching order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for `host` (lowercase, no port; empty when absent) and `path`.
    pub fn find(&self, host: &str, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|r| r.host.matches(host) && r.path_matches(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, host: &str, prefix: &str) -> Route {
        Route::plain(
            name,
            HostPattern::parse(host).unwrap(),
            prefix,
            0,
            &Metrics::global(),
        )
    }

    #[test]
    fn longest_prefix_then_specific_host() {
        let router = Router::new(vec![
            r("root", "*", "/"),
            r("api", "*", "/api"),
            r("api-kea", "kea.internal", "/api"),
            r("v1", "*.example.org", "/api/v1/"),
        ]);
        let name = |h: &str, p: &str| router.find(h, p).map(|r| r.name.to_string());
        assert_eq!(name("x", "/"), Some("root".into()));
        assert_eq!(name("x", "/api"), Some("api".into()));
        assert_eq!(name("x", "/api/z"), Some("api".into()));
        assert_eq!(name("x", "/apix"), Some("root".into()));
        assert_eq!(name("kea.internal", "/api/z"), Some("api-kea".into()));
        assert_eq!(name("a.example.org", "/api/v1/x"), Some("v1".into()));
        assert_eq!(name("other.net", "/api/v1/x"), Some("api".into()));
        let none = Router::new(vec![r("only", "kea.internal", "/")]);
        assert!(none.find("other", "/").is_none());
    }
}
