//! The crate as another team embeds it: two Gatehouse instances built in one process, each
//! counting in a registry of its own.

use gatehouse::config::Config;
use gatehouse::metrics::Metrics;
use gatehouse::{Gatehouse, RunOptions};
use prometheus::Registry;
use std::sync::Arc;

#[test]
fn two_instances_in_one_process_build_and_count_apart() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = |port: u16| {
        format!(
            "server: {{ pid_file: {d}/{port}.pid, upgrade_sock: {d}/{port}.sock }}\nlisteners:\n  - {{ name: edge, address: \"127.0.0.1:{port}\" }}\nupstreams:\n  web: {{ peers: [\"127.0.0.1:9\"] }}\nroutes: [ {{ name: web, upstream: web }} ]\n",
            d = dir.path().display()
        )
    };
    let mut registries = Vec::new();
    for port in [1, 2] {
        let config = Config::parse(&yaml(port), dir.path()).unwrap();
        let registry = Registry::new();
        let metrics = Arc::new(Metrics::register(&registry).unwrap());
        let gh = Gatehouse::from_config_in(config, metrics.clone()).unwrap();
        // Built, not run: Pingora binds when the server runs.
        let _server = gh.build(&RunOptions::default()).unwrap();
        metrics
            .connections
            .with_label_values(&["edge", "http"])
            .inc_by(port.into());
        registries.push(registry);
    }
    let count = |r: &Registry| -> f64 {
        r.gather()
            .iter()
            .filter(|f| f.name() == "gatehouse_connections_total")
            .flat_map(|f| f.get_metric())
            .map(|m| m.get_counter().value())
            .sum()
    };
    assert_eq!(
        (count(&registries[0]), count(&registries[1])),
        (1.0, 2.0),
        "each instance counts in its own registry"
    );
    // The route families are resolved per instance at build time too.
    assert!(registries[0]
        .gather()
        .iter()
        .any(|f| f.name() == "gatehouse_http_requests_total"));
}
