//! Assembly: configuration → loaded material → a Pingora `Server` with one service per
//! listener, the upstream health checks and the metrics and health endpoint.

use crate::audit::{AuditSink, JsonLines};
use crate::authz::{Access, Guarded};
use crate::cluster::Relay;
use crate::config::{
    Config, ConfigError, ConfigErrors, FanOut, ForwardIdentity, KeaTarget, ListenerSettings,
    LogFormat, Protocol, ServerSettings,
};
use crate::demux::{Handshakes, ListenerApp};
use crate::error::{Error, ErrorKind};
use crate::health::{self, Readiness};
use crate::http::builtin::{CommandList, RateLimit};
use crate::http::filter::HttpFilter;
use crate::http::kea::KeaPolicy;
use crate::http::route::{Route, Router};
use crate::http::{ClientBounds, HttpGateway};
use crate::metrics::Metrics;
use crate::reload::watch::{Baseline, FileWatcher};
use crate::reload::{LiveListener, Reloader};
use crate::tls::{ListenerAcceptor, ListenerTlsMaterial};
use crate::upstream::{HealthService, UpstreamGroup};
use arc_swap::ArcSwap;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::{background_service, GenBackgroundService};
use pingora_core::services::listening::Service;
use pingora_proxy::HttpProxy;
use std::path::Path;
use std::sync::Arc;

/// A configuration with every file loaded and checked: what `check` validates and `run` runs.
pub struct Plan {
    /// The parsed configuration.
    pub config: Config,
    listener_tls: Vec<Option<ListenerTlsMaterial>>,
    upstreams: Arc<[UpstreamGroup]>,
    health: Vec<HealthService>,
    router: Router,
    relay: Option<Relay>,
    audit: Arc<dyn AuditSink>,
    authorizer: Option<Arc<Guarded>>,
    http_filters: Vec<Box<dyn HttpFilter>>,
    metrics: Arc<Metrics>,
    watch_baseline: Baseline,
}

impl Plan {
    /// Loads `file` and everything it names; reports every problem at once.
    pub fn load(file: &Path) -> Result<Plan, ConfigErrors> {
        let config = Config::load(file)?;
        Plan::from_config(config).map_err(|errors| ConfigErrors {
            file: file.to_path_buf(),
            errors,
        })
    }

    /// Loads the certificates, keys and CAs a validated `config` names; metrics go to
    /// Prometheus' default registry.
    pub fn from_config(config: Config) -> Result<Plan, Vec<ConfigError>> {
        Plan::from_config_in(config, Metrics::global())
    }

    /// [`Plan::from_config`] with the metric families in `metrics` (e.g. registered in a
    /// registry of the embedder's, so two instances in one process count apart).
    pub fn from_config_in(config: Config, metrics: Arc<Metrics>) -> Result<Plan, Vec<ConfigError>> {
        let mut errs = references(&config);
        prime_metrics(&metrics, &config);
        // Before the files are read (see Baseline).
        let watch_baseline = Baseline::take(&config);
        let listener_tls = load_listener_tls(&config, &metrics, &mut errs);
        let (upstreams, health) = build_upstreams(&config, &mut errs);
        if !errs.is_empty() {
            // Routes index the groups: with one missing, they would point at the wrong one.
            return Err(errs);
        }
        let routes = build_routes(&config, &metrics, &mut errs);
        let upstreams: Arc<[UpstreamGroup]> = upstreams.into();
        let audit = open_audit(&config, &mut errs);
        check_identity_files(&config, &mut errs);
        let relay = build_relay(&config, &upstreams, &audit, &metrics, &mut errs);
        if !errs.is_empty() {
            return Err(errs);
        }
        let router = Router::new(routes);
        let http_filters = builtin_filters(&config, &router, &metrics);
        Ok(Plan {
            config,
            listener_tls,
            upstreams,
            health,
            router,
            relay,
            audit,
            authorizer: None,
            http_filters,
            metrics,
            watch_baseline,
        })
    }

    /// The cluster relay, when the config has a `cluster:` section.
    pub(crate) fn relay_mut(&mut self) -> Option<&mut Relay> {
        self.relay.as_mut()
    }

    /// The metric families this plan counts in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Asks `a` after the YAML rules: HTTP requests, Kea commands, cluster links.
    pub(crate) fn set_authorizer(&mut self, a: Arc<Guarded>) {
        if let Some(r) = &mut self.relay {
            r.set_authorizer(a.clone());
        }
        self.authorizer = Some(a);
    }

    /// Runs `f` in every HTTP request's phases, after the filters added before it.
    pub(crate) fn add_http_filter(&mut self, f: Box<dyn HttpFilter>) {
        self.http_filters.push(f);
    }

    /// Sends audit events to `sink` instead of `audit.path` / the log.
    pub(crate) fn set_audit_sink(&mut self, sink: Arc<dyn AuditSink>) {
        if let Some(r) = &mut self.relay {
            r.set_audit_sink(sink.clone());
        }
        self.audit = sink;
    }

    /// Builds the Pingora server (not yet running).
    pub fn into_server(self, opts: &RunOptions) -> Result<Server, ConfigError> {
        let mut server = self.bootstrap_server(opts)?;
        let shared = ListenerShared {
            router: Arc::new(self.router),
            relay: self.relay.map(Arc::new),
            http_filters: Arc::new(crate::http::filter::Chain::new(self.http_filters)),
            upstreams: &self.upstreams,
            audit: &self.audit,
            authorizer: &self.authorizer,
            metrics: &self.metrics,
            log_format: self.config.log_format,
            budget: fd_budget(self.config.listeners.len()),
        };
        let mut live = Vec::new();
        if let Some(w) = fd_budget_warning(&self.config) {
            log::warn!("{w}");
        }
        for (i, (l, tls)) in self
            .config
            .listeners
            .iter()
            .zip(&self.listener_tls)
            .enumerate()
        {
            let svc = shared.service(&server.configuration, i, l, tls.as_ref(), &mut live)?;
            log::info!(
                "listener {} on {} ({}, {:?})",
                l.name,
                l.address,
                if l.tls.is_some() { "tls" } else { "plaintext" },
                l.protocols
            );
            server.add_service(svc);
        }
        server.add_services(self.health);
        server.add_service(background_service("allocator trim", crate::memory::Trimmer));
        server.add_service(background_service(
            "pid file",
            PidFileCleanup(self.config.server.pid_file.clone()),
        ));
        let reloader = Reloader::new(
            self.config.clone(),
            live,
            self.upstreams.clone(),
            self.metrics.clone(),
        );
        add_reload_services(
            &mut server,
            reloader,
            &self.listener_tls,
            &self.metrics,
            self.watch_baseline,
        );
        if let Some(address) = self.config.metrics {
            let endpoint = metrics_endpoint(
                &server,
                address,
                &self.config,
                &self.upstreams,
                &self.metrics,
            );
            log::info!("metrics on http://{address}/metrics, probes on /healthz and /readyz");
            server.add_service(endpoint);
        }
        Ok(server)
    }

    /// A bootstrapped server for `server:`, unless another instance runs on its pid file.
    fn bootstrap_server(&self, opts: &RunOptions) -> Result<Server, ConfigError> {
        // Only connect failures are retried (see HttpGateway::fail_to_connect).
        let max_retries = self
            .upstreams
            .iter()
            .map(|u| u.peer_count)
            .max()
            .unwrap_or(1);
        if !opts.upgrade {
            pid_file_guard(&self.config)?;
        }
        let conf = server_conf(&self.config.server, max_retries);
        let opt = Opt {
            upgrade: opts.upgrade,
            daemon: opts.daemon,
            ..Opt::default()
        };
        let mut server = Server::new_with_opt_and_conf(opt, conf);
        server.bootstrap();
        Ok(server)
    }
}

/// What every listener's app shares, built once by [`Plan::into_server`].
struct ListenerShared<'a> {
    router: Arc<Router>,
    relay: Option<Arc<Relay>>,
    http_filters: Arc<crate::http::filter::Chain>,
    upstreams: &'a Arc<[UpstreamGroup]>,
    audit: &'a Arc<dyn AuditSink>,
    authorizer: &'a Option<Arc<Guarded>>,
    metrics: &'a Arc<Metrics>,
    log_format: LogFormat,
    budget: FdBudget,
}

impl ListenerShared<'_> {
    /// The service of listener `i`; a TLS listener's contexts join `live`, which reloads swap.
    fn service(
        &self,
        conf: &Arc<ServerConf>,
        i: usize,
        l: &ListenerSettings,
        tls: Option<&ListenerTlsMaterial>,
        live: &mut Vec<LiveListener>,
    ) -> Result<Service<ListenerApp>, ConfigError> {
        let carries_http = l.accepts(Protocol::Http);
        let http = carries_http.then(|| self.http_proxy(conf, l, tls.is_some()));
        let cluster = l
            .accepts(Protocol::Cluster)
            .then(|| self.relay.clone())
            .flatten();
        let app = ListenerApp::new(
            &l.name,
            http,
            cluster,
            l.first_byte_timeout,
            l.header_timeout,
            self.metrics.clone(),
        )
        .with_max_per_identity(l.max_connections_per_identity)
        .with_body_timeout(l.body_timeout);
        let acceptor = match tls {
            Some(t) => Some(tls_acceptor(i, t, live)?),
            None => None,
        };
        let app = app.with_handshakes(
            Handshakes::new(
                &l.name,
                acceptor,
                l.handshake_timeout,
                l.max_handshakes_per_ip,
                l.max_connections.unwrap_or(self.budget.per_listener),
                self.metrics,
            )
            .with_read_ahead(l.read_buffer, l.accepts(Protocol::Http)),
        );
        let mut svc = Service::new(format!("listener {}", l.name), app);
        let buffers = l4_buffers(l);
        // TLS runs in the app (`demux::Handshakes`), bounded from accept.
        svc.add_listener(ListenerConfig::tcp(l.address.to_string()).l4_buffer(buffers));
        Ok(svc)
    }

    /// The HTTP proxy of listener `l`, with its connection options.
    fn http_proxy(
        &self,
        conf: &Arc<ServerConf>,
        l: &ListenerSettings,
        https: bool,
    ) -> HttpProxy<HttpGateway> {
        let gateway = HttpGateway::new(
            &l.name,
            https,
            self.router.clone(),
            self.upstreams.clone(),
            self.audit.clone(),
            l.keepalive_timeout,
            self.metrics.clone(),
        )
        .with_authorizer(self.authorizer.clone())
        .with_filters(self.http_filters.clone())
        .with_log_format(self.log_format)
        .with_client_bounds(ClientBounds {
            body: l.body_timeout,
            send: l.send_timeout,
        });
        let mut proxy = pingora_proxy::http_proxy(conf, gateway);
        proxy.server_options = Some(http_options(l));
        proxy.h2_options = Some(h2_options(l));
        proxy
    }
}

/// Listener `i`'s TLS acceptor, over contexts kept in `live` for reloads to swap.
fn tls_acceptor(
    i: usize,
    t: &ListenerTlsMaterial,
    live: &mut Vec<LiveListener>,
) -> Result<ListenerAcceptor, ConfigError> {
    let at = format!("listeners[{i}].tls");
    let contexts = Arc::new(ArcSwap::from_pointee(
        t.contexts(0).map_err(|e| ConfigError::new(&at, e))?,
    ));
    let acceptor = t
        .acceptor(contexts.clone())
        .map_err(|e| ConfigError::new(&at, e))?;
    live.push(LiveListener { index: i, contexts });
    Ok(acceptor)
}

/// The certificate reload on SIGHUP, and the file watch when the files can be watched.
fn add_reload_services(
    server: &mut Server,
    reloader: Reloader,
    listener_tls: &[Option<ListenerTlsMaterial>],
    metrics: &Arc<Metrics>,
    watch_baseline: Baseline,
) {
    reloader.publish_initial(&listener_tls.iter().flatten().collect::<Vec<_>>());
    let reloader = Arc::new(reloader);
    if let Some(w) = FileWatcher::new(reloader.clone(), metrics.clone(), watch_baseline) {
        server.add_service(background_service("certificate file watch", w));
    }
    server.add_service(GenBackgroundService::new(
        "BG certificate reload".into(),
        reloader,
    ));
}

/// The `/metrics`, `/healthz` and `/readyz` endpoint on `metrics.address`.
fn metrics_endpoint(
    server: &Server,
    address: std::net::SocketAddr,
    config: &Config,
    upstreams: &Arc<[UpstreamGroup]>,
    metrics: &Metrics,
) -> health::Endpoint {
    let readiness = Arc::new(Readiness::new(&config.listeners, upstreams.clone()));
    health::Endpoint::new(
        metrics,
        readiness,
        server.watch_execution_phase(),
        &address.to_string(),
    )
}

/// Creates the series the configuration names at 0, so alerts evaluate from the first scrape.
fn prime_metrics(metrics: &Metrics, config: &Config) {
    metrics.prime(&crate::metrics::KnownLabels {
        listeners: config
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.tls.is_some()))
            .collect(),
        upstreams: config.upstreams.iter().map(|u| u.name.as_str()).collect(),
        cluster: config.cluster.is_some(),
        verify_reasons: &crate::tls::VERIFY_FAILURE_LABELS,
        upstream_error_kinds: &crate::upstream::FailureKind::LABELS,
        link_ends: &crate::cluster::relay::LINK_END_LABELS,
        link_refusals: &crate::cluster::relay::REFUSAL_LABELS,
        issuers: config.issuers.iter().map(|i| i.name.as_str()).collect(),
        bearer_results: &crate::token::Refusal::LABELS,
    });
}

/// Each listener's certificates, keys and CAs (`None` for plaintext or a file that failed).
fn load_listener_tls(
    config: &Config,
    metrics: &Arc<Metrics>,
    errs: &mut Vec<ConfigError>,
) -> Vec<Option<ListenerTlsMaterial>> {
    let mut listener_tls = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        listener_tls.push(l.tls.as_ref().and_then(|t| {
            ListenerTlsMaterial::load(l, t, &format!("listeners[{i}].tls"), metrics)
                .map_err(|e| errs.extend(e))
                .ok()
        }));
    }
    listener_tls
}

/// The upstream groups that build, in order, with their health-check services.
fn build_upstreams(
    config: &Config,
    errs: &mut Vec<ConfigError>,
) -> (Vec<UpstreamGroup>, Vec<HealthService>) {
    let mut upstreams = Vec::new();
    let mut health = Vec::new();
    for u in &config.upstreams {
        match UpstreamGroup::build(u) {
            Ok((g, hc)) => {
                upstreams.push(g);
                health.extend(hc);
            }
            Err(e) => errs.extend(e),
        }
    }
    (upstreams, health)
}

/// The HTTP routes, with their users files loaded.
fn build_routes(
    config: &Config,
    metrics: &Arc<Metrics>,
    errs: &mut Vec<ConfigError>,
) -> Vec<Route> {
    let mut routes = Vec::with_capacity(config.routes.len());
    let issuers: Vec<Option<Arc<crate::token::Issuer>>> = config
        .issuers
        .iter()
        .map(|s| {
            crate::token::Issuer::new(s, metrics.clone())
                .map(Arc::new)
                .map_err(|e| errs.push(ConfigError::new(format!("issuers.{}", s.name), e)))
                .ok()
        })
        .collect();
    for (i, r) in config.routes.iter().enumerate() {
        let mut route = Route::plain(&r.name, r.host.clone(), &r.path_prefix, r.upstream, metrics);
        route.access = Access::new(r.allow.clone(), r.deny.clone());
        route.forward_xfcc = r.forward_identity == ForwardIdentity::Xfcc;
        route.kea = r.kea.as_ref().map(|k| Arc::new(KeaPolicy::new(k)));
        route.fan_out = r.kea.as_ref().is_some_and(|k| k.fan_out == FanOut::All);
        route.answer_timeout = r.answer_timeout;
        if let Some(b) = &r.basic_auth {
            match crate::http::basic::BasicAuth::load(&b.users_file, &b.realm) {
                Ok(a) => route.basic_auth = Some(Arc::new(a)),
                Err(e) => errs.push(ConfigError::new(
                    format!("routes[{i}].basic_auth.users_file"),
                    e,
                )),
            }
        }
        if let Some(b) = &r.bearer {
            let list = b
                .issuers
                .iter()
                .filter_map(|&i| issuers.get(i).cloned().flatten())
                .collect();
            route.bearer = Some(Arc::new(crate::token::Bearer::new(
                list,
                b.require,
                b.forward,
                b.realm.clone(),
                metrics.clone(),
            )));
        }
        routes.push(route);
    }
    routes
}

/// The audit sink of `audit.path`; the log (with an error reported) when it cannot be opened.
fn open_audit(config: &Config, errs: &mut Vec<ConfigError>) -> Arc<dyn AuditSink> {
    let audit_path = config.audit_path.clone();
    Arc::new(JsonLines::open(audit_path.as_deref()).unwrap_or_else(|e| {
        errs.push(ConfigError::new(
            "audit.path",
            format!(
                "cannot open {}: {e}",
                audit_path.as_deref().unwrap_or(Path::new("-")).display()
            ),
        ));
        JsonLines::log()
    }))
}

/// Checks `cluster.upstream_identity.cert_dir`'s files now, not when a link first needs one.
fn check_identity_files(config: &Config, errs: &mut Vec<ConfigError>) {
    // Every identity file, as this user: `gatehouse check` run as the service user proves
    // what the links will need.
    if let Some(id) = config
        .cluster
        .as_ref()
        .and_then(|c| c.upstream_identity.as_ref())
    {
        for problem in crate::cluster::identity::check_cert_dir(&id.cert_dir) {
            errs.push(ConfigError::new(
                "cluster.upstream_identity.cert_dir",
                problem,
            ));
        }
    }
}

/// The cluster relay, when the config has a `cluster:` section.
fn build_relay(
    config: &Config,
    upstreams: &Arc<[UpstreamGroup]>,
    audit: &Arc<dyn AuditSink>,
    metrics: &Arc<Metrics>,
    errs: &mut Vec<ConfigError>,
) -> Option<Relay> {
    config.cluster.as_ref().and_then(|c| {
        match Relay::new(c, upstreams.clone(), audit.clone(), metrics.clone()) {
            Ok(mut relay) => {
                relay.set_log_format(config.log_format);
                Some(relay)
            }
            Err(e) => {
                errs.push(ConfigError::new(
                    "cluster",
                    format!("cannot make the certificate anonymous clients present upstream: {e}"),
                ));
                None
            }
        }
    })
}

/// The built-in HTTP filters: the routes' rate limits, then Kea's `list-commands`.
fn builtin_filters(
    config: &Config,
    router: &Router,
    metrics: &Metrics,
) -> Vec<Box<dyn HttpFilter>> {
    let kea_routes: Vec<_> = router
        .routes()
        .iter()
        .filter_map(|r| Some((r.name.to_string(), r.kea.clone()?)))
        .collect();
    // Built-in filters run before any an embedder adds.
    let mut http_filters: Vec<Box<dyn HttpFilter>> = Vec::new();
    let limited: Vec<_> = config
        .routes
        .iter()
        .filter_map(|r| {
            let limit = r.rate_limit?;
            let counter = metrics.http_rate_limited.with_label_values(&[&r.name]);
            Some((r.name.clone(), limit, counter))
        })
        .collect();
    if !limited.is_empty() {
        http_filters.push(Box::new(RateLimit::new(limited)));
    }
    if !kea_routes.is_empty() {
        http_filters.push(Box::new(CommandList::new(kea_routes)));
    }
    http_filters
}

/// Refuses a fresh start while `server.pid_file` names another live gatehouse: two instances
/// sharing a pid file would leave `gatehouse reload` and `upgrade` signalling whichever wrote it
/// last, and the file stale after either exits. When that instance also accepts on one of this
/// configuration's addresses, the error names the address: Pingora binds with `SO_REUSEPORT`,
/// so a second instance started by mistake would share the ports with the first, each
/// answering some clients. A graceful upgrade (`--upgrade`) takes the sockets over instead and
/// is not asked; an address held by anything else is left to Pingora, which retries the bind
/// (`/readyz` names the listener meanwhile).
fn pid_file_guard(config: &Config) -> Result<(), ConfigError> {
    let pid_file = &config.server.pid_file;
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|&pid| i64::from(pid) != i64::from(std::process::id()))
        .filter(|&pid| {
            crate::reload::check_target(pid, &Path::new("/proc").join(pid.to_string()).join("exe"))
                .is_ok()
        })
    else {
        return Ok(());
    };
    let addresses = config
        .listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (format!("listeners[{i}].address"), l.address))
        .chain(config.metrics.map(|a| ("metrics.address".to_string(), a)));
    for (key, addr) in addresses {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300))
            .is_ok()
        {
            return Err(ConfigError::new(
                key,
                format!(
                    "{addr} is already served by gatehouse pid {pid} (server.pid_file {}): stop it first, or start this one with --upgrade to take its sockets over",
                    pid_file.display()
                ),
            ));
        }
    }
    let runs = crate::reload::config_of(pid)
        .map(|c| format!("with {}", c.display()))
        .unwrap_or_else(|| "with another configuration".into());
    Err(ConfigError::new(
        "server.pid_file",
        format!(
            "{} names gatehouse pid {pid}, which is running ({runs}): give this configuration its own server.pid_file and server.upgrade_sock, or stop that instance, or replace it with `gatehouse upgrade`",
            pid_file.display()
        ),
    ))
}

/// Removes `server.pid_file` when this process stops, if the file still names this process.
/// After a graceful upgrade it names the new process by then (Pingora broadcasts the shutdown
/// only after handing the sockets over and waiting out its close timeout), and stays.
struct PidFileCleanup(std::path::PathBuf);

#[async_trait::async_trait]
impl pingora_core::services::background::BackgroundService for PidFileCleanup {
    async fn start(&self, mut shutdown: pingora_core::server::ShutdownWatch) {
        let _ = shutdown.changed().await;
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|t| t.trim() == std::process::id().to_string());
        if ours {
            if let Err(e) = std::fs::remove_file(&self.0) {
                log::warn!("cannot remove the pid file {}: {e}", self.0.display());
            }
        }
    }
}

/// The process's file-descriptor budget (see [`fd_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft `RLIMIT_NOFILE`.
    pub limit: u64,
    /// Kept for the probes, `/metrics`, logs, upstream health checks, reloads and upgrades.
    pub reserve: u64,
    /// Each listener's `max_connections` when the file sets none.
    pub per_listener: usize,
}

/// How many connections the listeners may hold so that descriptors are left for everything
/// else: a reserve of a tenth of the limit (at least 128), and of the rest half (a proxied
/// connection may hold an upstream one too), split evenly among `listeners`.
pub fn fd_budget(listeners: usize) -> FdBudget {
    let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024);
    let reserve = (limit / 10).max(128).min(limit);
    let per = (limit - reserve) / 2 / (listeners.max(1) as u64);
    FdBudget {
        limit,
        reserve,
        per_listener: usize::try_from(per.max(1)).unwrap_or(usize::MAX),
    }
}

/// What `gatehouse check` warns about: listeners whose `max_connections` add up to more than
/// the descriptor limit can serve (two descriptors each, plus the reserve), so a flood would
/// reach `Too many open files` and starve `/metrics` and the probes first.
pub fn fd_budget_warning(config: &Config) -> Option<String> {
    let b = fd_budget(config.listeners.len());
    let total: u64 = config
        .listeners
        .iter()
        .map(|l| l.max_connections.unwrap_or(b.per_listener) as u64)
        .sum();
    (total * 2 + b.reserve > b.limit).then(|| {
        format!(
            "listeners' max_connections add up to {total}: with an upstream connection each and {} descriptors kept for the rest, more than this process's limit of {} open files (ulimit -n; LimitNOFILE= under systemd). Raise the limit or lower max_connections",
            b.reserve, b.limit
        )
    })
}

/// References a loaded file always has right, but an embedder's edited [`Config`] may not:
/// every upstream index must name a group, every limit must be at least 1.
fn references(config: &Config) -> Vec<ConfigError> {
    let n = config.upstreams.len();
    let mut errs = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if r.upstream >= n {
            errs.push(ConfigError::new(
                format!("routes[{i}].upstream"),
                format!("index {} names no upstream ({n} configured)", r.upstream),
            ));
        }
        if let Some(KeaTarget::Services(map)) = r.kea.as_ref().map(|k| &k.target) {
            for (svc, g) in map.iter().filter(|(_, g)| *g >= n) {
                errs.push(ConfigError::new(
                    format!("routes[{i}].kea.services.{svc}"),
                    format!("index {g} names no upstream ({n} configured)"),
                ));
            }
        }
    }
    for (i, r) in config.cluster.iter().flat_map(|c| &c.routes).enumerate() {
        if r.upstream >= n {
            errs.push(ConfigError::new(
                format!("cluster.routes[{i}].upstream"),
                format!("index {} names no upstream ({n} configured)", r.upstream),
            ));
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        if l.max_connections_per_identity == Some(0) {
            errs.push(ConfigError::new(
                format!("listeners[{i}].max_connections_per_identity"),
                "must be at least 1",
            ));
        }
    }
    errs
}

/// `gatehouse reload`: checks that `file` and everything it names load, then sends SIGHUP to
/// the instance whose pid is in its `server.pid_file`. Returns that pid.
///
/// Checking first means a broken certificate is reported to whoever ran the command rather
/// than only in the running instance's log (which still refuses it if it changes meanwhile).
pub fn request_reload(file: &Path) -> crate::Result<i32> {
    let plan = Plan::load(file)?;
    let pid = running_instance(&plan.config, file)?;
    kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| {
        Error::new(
            ErrorKind::Signal,
            format!(
                "cannot signal gatehouse (pid {pid} from {})",
                plan.config.server.pid_file.display()
            ),
        )
        .because(e)
    })?;
    Ok(pid)
}

/// The gatehouse that runs `file`, from `config`'s `server.pid_file`: a live gatehouse
/// process whose command line names that same file (when it can be read), so a pid file
/// another instance overwrote is never acted on.
fn running_instance(config: &Config, file: &Path) -> crate::Result<i32> {
    let pid_file = &config.server.pid_file;
    let signal = |context: String| Error::new(ErrorKind::Signal, context);
    let text = std::fs::read_to_string(pid_file).map_err(|e| {
        signal(format!(
            "cannot read the pid file {} (is gatehouse running with this configuration?)",
            pid_file.display()
        ))
        .because(e)
    })?;
    let pid: i32 = text.trim().parse().map_err(|_| {
        signal(format!(
            "{}: not a process id: {:?}",
            pid_file.display(),
            text.trim()
        ))
    })?;
    crate::reload::check_target(pid, &Path::new("/proc").join(pid.to_string()).join("exe"))
        .map_err(|e| signal(format!("{}: {e}", pid_file.display())))?;
    if let Some(theirs) = crate::reload::config_of(pid) {
        let same = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        if same(&theirs) != same(file) {
            return Err(signal(format!(
                "{} names gatehouse pid {pid}, which runs {}, not {}: two configurations share this pid_file; nothing signalled",
                pid_file.display(),
                theirs.display(),
                file.display()
            )));
        }
    }
    Ok(pid)
}

/// `gatehouse upgrade`: checks `file` and everything it names, starts a new gatehouse on it
/// with `--upgrade --daemon`, then sends SIGQUIT to the running one, which hands its listening
/// sockets over `server.upgrade_sock` and finishes what it has in flight. Waits until the new
/// process has taken over (it wrote `server.pid_file`). Returns (old pid, new pid).
///
/// One order, the one the systemd unit uses through this command: the old process is told to
/// hand over only once the new one listens on `server.upgrade_sock` (it waits up to 5 s for
/// the sockets); a new process that fails before then leaves the old one serving.
pub fn request_upgrade(file: &Path, exe: &Path) -> crate::Result<(i32, i32)> {
    use std::os::unix::fs::MetadataExt;
    let plan = Plan::load(file)?;
    let old = running_instance(&plan.config, file)?;
    let fail = |context: String| Error::new(ErrorKind::Signal, context);
    let sock = &plan.config.server.upgrade_sock;
    let inode = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let stale = inode(sock);
    let mut child = std::process::Command::new(exe)
        .arg("run")
        .arg("-c")
        .arg(file)
        .args(["--upgrade", "--daemon"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("cannot start {}", exe.display())).because(e))?;
    // SIGQUIT only once the new process listens on the upgrade socket (it replaces the file):
    // the old one hands its sockets over and stops whatever happens, so a new process that
    // died first would leave nothing serving.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(fail(format!(
                "the new gatehouse exited with {status} before it took the sockets; pid {old} still serves"
            )));
        }
        if inode(sock).is_some_and(|i| Some(i) != stale) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "the new gatehouse did not listen on {} within 10 s; pid {old} still serves",
                sock.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if let Err(e) = kill(Pid::from_raw(old), Signal::SIGQUIT) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(format!("cannot signal gatehouse pid {old}")).because(e));
    }
    // The new process forks into the background once it holds the sockets.
    let status = child
        .wait()
        .map_err(|e| fail("waiting for the new gatehouse".into()).because(e))?;
    if !status.success() {
        return Err(fail(format!(
            "the new gatehouse exited with {status}; pid {old} was told to stop (SIGQUIT): check its log"
        )));
    }
    let pid_file = &plan.config.server.pid_file;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let new = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
            .filter(|&p| p != old);
        if let Some(new) = new {
            return Ok((old, new));
        }
        if std::time::Instant::now() > deadline {
            return Err(fail(format!(
                "the new gatehouse did not write {} within 10 s",
                pid_file.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Pingora's process settings from `server:`. Every key of the section lands here; the test
/// below fails for a key that does not.
pub fn server_conf(s: &ServerSettings, max_retries: usize) -> ServerConf {
    ServerConf {
        threads: s.threads,
        work_stealing: s.work_stealing,
        pid_file: s.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: s.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(ceil_secs(s.grace_period)),
        graceful_shutdown_timeout_seconds: Some(ceil_secs(s.graceful_shutdown_timeout)),
        error_log: s
            .error_log
            .as_ref()
            .map(|p| p.to_string_lossy().into_owned()),
        max_retries,
        ..ServerConf::default()
    }
}

/// Pingora's per-connection HTTP options from a listener: the request cap of an HTTP/1
/// connection and the idle limit of an HTTP/2 one (HTTP/1 idle keep-alive is bounded per
/// request, see `HttpGateway::request_filter`).
fn http_options(l: &ListenerSettings) -> HttpServerOptions {
    let mut o = HttpServerOptions::default();
    // Pingora counts reuses: a limit of N serves N + 1 requests.
    o.keepalive_request_limit = Some(l.keepalive_requests.saturating_sub(1));
    o.h2_idle_timeout = Some(std::time::Duration::from_secs(ceil_secs(
        l.keepalive_timeout,
    )));
    o
}

/// HTTP/2 settings: Pingora's bounded defaults (64 KiB of decoded headers), with the
/// listener's stream limit: each open stream may hold an upstream connection.
fn h2_options(l: &ListenerSettings) -> pingora_core::protocols::http::v2::server::H2Options {
    let mut o = pingora_core::protocols::http::v2::server::default_h2_options();
    o.max_concurrent_streams(l.max_concurrent_streams);
    o
}

/// The buffers Pingora keeps below TLS for a listener's connections: none for reads (the
/// read-ahead under TLS, `read_buffer`, is Gatehouse's: it exists only while a connection is
/// busy, where Pingora's would stay resident); for writes Pingora's default where HTTP is
/// spoken, none on `[cluster]`-only listeners.
fn l4_buffers(l: &ListenerSettings) -> L4BufferSettings {
    let buffers = L4BufferSettings::default().read(0);
    if l.accepts(Protocol::Http) {
        buffers
    } else {
        // The relay writes whole batches and flushes each: a write buffer below TLS would
        // coalesce nothing and cost every idle cluster link its 1460 bytes.
        buffers.write(0)
    }
}

fn ceil_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Process options from the command line.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Take the listeners over from a running instance (graceful upgrade).
    pub upgrade: bool,
    /// Detach and run in the background.
    pub daemon: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `server:` key, set away from its default, must show in Pingora's `ServerConf`:
    /// a key that is parsed and documented but never applied fails here.
    #[test]
    fn every_server_key_reaches_pingora() {
        let yaml = "threads: 3\nwork_stealing: false\npid_file: /run/gh/x.pid\n\
                    upgrade_sock: /run/gh/x.sock\ngrace_period: 7s\n\
                    graceful_shutdown_timeout: 1500ms\nerror_log: /var/log/gh.log\n";
        let s = crate::config::server_from_yaml(yaml);
        let c = server_conf(&s, 4);
        type Check = fn(&ServerConf) -> bool;
        let table: &[(&str, Check)] = &[
            ("threads", |c| c.threads == 3),
            ("work_stealing", |c| !c.work_stealing),
            ("pid_file", |c| c.pid_file == "/run/gh/x.pid"),
            ("upgrade_sock", |c| c.upgrade_sock == "/run/gh/x.sock"),
            ("grace_period", |c| c.grace_period_seconds == Some(7)),
            ("graceful_shutdown_timeout", |c| {
                c.graceful_shutdown_timeout_seconds == Some(2)
            }),
            ("error_log", |c| {
                c.error_log.as_deref() == Some("/var/log/gh.log")
            }),
        ];
        for (key, check) in table {
            assert!(check(&c), "server.{key} does not reach ServerConf: {c:?}");
        }
        assert_eq!(c.max_retries, 4);
        // The table covers the whole section: a new key needs a row (and a wire).
        let keys = crate::config::server_keys();
        let mut covered: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
        covered.sort_unstable();
        let mut keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, covered, "server: keys without a row in this table");
        // The defaults are Pingora's where Gatehouse has no reason to differ.
        let d = server_conf(&crate::config::server_from_yaml("{}"), 1);
        assert!(d.work_stealing);
        assert_eq!(d.threads, 2);
    }

    /// An embedder's edited model is checked before anything indexes with it.
    #[test]
    fn edited_configs_with_dangling_indices_are_refused() {
        let yaml = "listeners: [{ name: a, address: \"127.0.0.1:1\" }]\nupstreams: { u: { peers: [\"127.0.0.1:2\"] } }\nroutes: [{ name: r, upstream: u }]\n";
        let mut c = Config::parse(yaml, Path::new(".")).unwrap();
        c.routes[0].upstream = 3;
        c.listeners[0].max_connections_per_identity = Some(0);
        let m = Arc::new(Metrics::register(&prometheus::Registry::new()).unwrap());
        let errs = Plan::from_config_in(c, m).err().unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].upstream",
                "listeners[0].max_connections_per_identity"
            ]
        );
    }

    /// The buffers handed to Pingora below TLS: none for reads (`read_buffer` is the
    /// read-ahead's, see `tls::read_ahead`), writes buffered only where HTTP is spoken.
    #[test]
    fn listener_l4_buffers() {
        let yaml = r#"
listeners:
  - { name: h, address: "127.0.0.1:1", read_buffer: 3KiB }
  - { name: d, address: "127.0.0.1:2" }
  - { name: c, address: "127.0.0.1:3", protocols: [cluster] }
  - { name: s, address: "127.0.0.1:4", protocols: [cluster], read_buffer: 16KiB }
upstreams: { u: { peers: ["127.0.0.1:9"] } }
routes: [ { name: r, upstream: u } ]
cluster: { routes: [ { sni: "*", upstream: u } ] }
"#;
        let c = Config::parse(yaml, Path::new(".")).unwrap_or_else(|e| panic!("{e:?}"));
        let got: Vec<(usize, bool)> = c
            .listeners
            .iter()
            .map(l4_buffers)
            .map(|b| (b.read_capacity(), b.write_capacity() > 0))
            .collect();
        assert_eq!(got, [(0, true), (0, true), (0, false), (0, false)]);
    }

    #[test]
    fn listener_http_options() {
        let l = crate::config::listener_from_yaml(
            "{ name: a, address: '127.0.0.1:1', keepalive_timeout: 1500ms, keepalive_requests: 7 }",
        );
        let o = http_options(&l);
        assert_eq!(o.keepalive_request_limit, Some(6), "7 requests = 6 reuses");
        assert_eq!(o.h2_idle_timeout, Some(std::time::Duration::from_secs(2)));
    }
}
