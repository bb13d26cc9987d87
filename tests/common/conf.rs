//! A typed Gatehouse configuration for tests: one struct per YAML section, serialized through
//! `serde_yaml::Value`, so a test never splices, splits or `.replace()`s YAML text.
//!
//! Keys are struct fields: a misspelt key does not compile. Values stay what the YAML takes
//! (durations and sizes as text, `"1s"`, `"4KiB"`), so a test can still hand Gatehouse a bad
//! value on purpose. Unset fields (`None`) are left out of the file and take Gatehouse's
//! defaults (`src/config/schema.rs`). [`Conf::set`] writes a key the schema does not have, for
//! the tests of unknown keys only. `tests/config.rs` parses a `Conf` with every field set, so a
//! key the schema renames or drops fails there first.
//!
//! ```ignore
//! let conf = Conf::new()
//!     .listener(Listener::new("edge", port).tls(ListenerTls::from_pki(&pki, "server", ClientAuth::Optional)))
//!     .upstream("web", Group::new(web.addr))
//!     .route(Route::new("web", "web").path("/api"));
//! ```

use super::Pki;
use serde::Serialize;
use serde_yaml::{Mapping, Value};
use std::collections::BTreeMap;
use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `pub fn key(v) -> Self` for `Option` fields: `str` ones take `impl Into<String>`, `path`
/// ones `impl Into<PathBuf>`, `list` ones any iterator of strings, `val` ones the value.
macro_rules! setters {
    ($($kind:ident $name:ident $(: $t:ty)?),* $(,)?) => {$( setters!(@one $kind $name $(: $t)?); )*};
    (@one str $name:ident) => {
        pub fn $name(mut self, v: impl Into<String>) -> Self {
            self.$name = Some(v.into());
            self
        }
    };
    (@one path $name:ident) => {
        pub fn $name(mut self, v: impl Into<PathBuf>) -> Self {
            self.$name = Some(v.into());
            self
        }
    };
    (@one list $name:ident) => {
        pub fn $name<S: Into<String>>(mut self, v: impl IntoIterator<Item = S>) -> Self {
            self.$name = Some(v.into_iter().map(Into::into).collect());
            self
        }
    };
    (@one val $name:ident: $t:ty) => {
        pub fn $name(mut self, v: $t) -> Self {
            self.$name = Some(v);
            self
        }
    };
}

fn strings<S: Into<String>>(v: impl IntoIterator<Item = S>) -> Vec<String> {
    v.into_iter().map(Into::into).collect()
}

// === the file ===

/// The whole file (`schema::Config`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Conf {
    pub server: Option<Server>,
    pub listeners: Vec<Listener>,
    pub upstreams: BTreeMap<String, Group>,
    pub routes: Vec<Route>,
    pub cluster: Option<Cluster>,
    pub metrics: Option<Metrics>,
    pub audit: Option<Audit>,
    pub log_format: Option<String>,
    pub issuers: BTreeMap<String, Issuer>,
    /// Keys written by [`Conf::set`], applied last.
    #[serde(skip)]
    raw: Vec<(String, Value)>,
}

impl Conf {
    pub fn new() -> Conf {
        Conf::default()
    }

    pub fn server(mut self, s: Server) -> Conf {
        self.server = Some(s);
        self
    }

    pub fn listener(mut self, l: Listener) -> Conf {
        self.listeners.push(l);
        self
    }

    pub fn upstream(mut self, name: &str, u: Group) -> Conf {
        self.upstreams.insert(name.to_string(), u);
        self
    }

    pub fn route(mut self, r: Route) -> Conf {
        self.routes.push(r);
        self
    }

    /// `issuers.<name>`.
    pub fn issuer(mut self, name: &str, i: Issuer) -> Conf {
        self.issuers.insert(name.to_string(), i);
        self
    }

    pub fn cluster(mut self, c: Cluster) -> Conf {
        self.cluster = Some(c);
        self
    }

    /// `metrics: { address: "127.0.0.1:<port>" }`.
    pub fn metrics(mut self, port: u16) -> Conf {
        self.metrics = Some(Metrics {
            address: local(port),
        });
        self
    }

    /// `audit: { path: <path> }`.
    pub fn audit_path(mut self, path: impl Into<PathBuf>) -> Conf {
        self.audit = Some(Audit {
            path: Some(path.into()),
        });
        self
    }

    /// `log_format: <format>` (`text`, `json`).
    pub fn log_format(mut self, format: &str) -> Conf {
        self.log_format = Some(format.into());
        self
    }

    /// Writes `value` at `path` (`listeners[0].tls.bogus`), creating mappings on the way: the
    /// escape hatch for keys the schema does not have. Everything else is a typed field.
    pub fn set(mut self, path: &str, value: impl Serialize) -> Conf {
        let v = serde_yaml::to_value(value).expect("a YAML value");
        self.raw.push((path.to_string(), v));
        self
    }

    /// The listener named `name`.
    pub fn listener_mut(&mut self, name: &str) -> &mut Listener {
        self.listeners
            .iter_mut()
            .find(|l| l.name == name)
            .unwrap_or_else(|| panic!("no listener {name}"))
    }

    /// The upstream named `name`.
    pub fn upstream_mut(&mut self, name: &str) -> &mut Group {
        self.upstreams
            .get_mut(name)
            .unwrap_or_else(|| panic!("no upstream {name}"))
    }

    /// The `metrics:` address, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.address.parse().ok())
    }

    /// Every address Gatehouse listens on: the listeners' and the metrics endpoint's.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.address.parse().ok())
            .chain(self.metrics_addr())
            .collect()
    }

    /// The YAML text Gatehouse reads.
    pub fn to_yaml(&self) -> String {
        let mut v = serde_yaml::to_value(self).expect("the config serializes");
        prune_nulls(&mut v);
        for (path, value) in &self.raw {
            set_at(&mut v, path, value.clone());
        }
        serde_yaml::to_string(&v).expect("YAML text")
    }

    /// Writes [`Conf::to_yaml`] to `file`.
    pub fn write(&self, file: &Path) {
        std::fs::write(file, self.to_yaml())
            .unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    }
}

/// `127.0.0.1:<port>`.
pub fn local(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Drops `key: null` everywhere: an unset field is an absent key.
fn prune_nulls(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(prune_nulls);
        }
        Value::Sequence(s) => s.iter_mut().for_each(prune_nulls),
        _ => {}
    }
}

/// One step of a [`Conf::set`] path: a key, or a key and an index (`listeners[0]`).
fn steps(path: &str) -> impl Iterator<Item = (&str, Option<usize>)> {
    path.split('.').map(move |seg| match seg.split_once('[') {
        Some((key, i)) => (
            key,
            Some(
                i.trim_end_matches(']')
                    .parse()
                    .unwrap_or_else(|_| panic!("bad index in {path}")),
            ),
        ),
        None => (seg, None),
    })
}

fn set_at(root: &mut Value, path: &str, value: Value) {
    let mut cur = root;
    let mut steps = steps(path).peekable();
    while let Some((key, index)) = steps.next() {
        let last = steps.peek().is_none();
        let map = match cur {
            Value::Mapping(m) => m,
            other => panic!("{path}: {key} is not under a mapping: {other:?}"),
        };
        let slot = map
            .entry(Value::from(key))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        cur = match index {
            Some(i) => match slot {
                Value::Sequence(s) => s
                    .get_mut(i)
                    .unwrap_or_else(|| panic!("{path}: no item {i} in {key}")),
                other => panic!("{path}: {key} is not a list: {other:?}"),
            },
            None => slot,
        };
        if last {
            *cur = value;
            return;
        }
    }
}

// === server ===

/// `server:`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Server {
    pub threads: Option<usize>,
    pub pid_file: Option<PathBuf>,
    pub upgrade_sock: Option<PathBuf>,
    pub grace_period: Option<String>,
    pub graceful_shutdown_timeout: Option<String>,
    pub error_log: Option<PathBuf>,
    pub work_stealing: Option<bool>,
}

impl Server {
    /// What every test instance runs with: two threads, pid file and upgrade socket in `dir`,
    /// one-second grace periods.
    pub fn for_test(dir: &Path) -> Server {
        Server {
            threads: Some(2),
            pid_file: Some(dir.join("gh.pid")),
            upgrade_sock: Some(dir.join("gh_upgrade.sock")),
            grace_period: Some("1s".into()),
            graceful_shutdown_timeout: Some("1s".into()),
            ..Server::default()
        }
    }

    setters!(
        val threads: usize,
        path pid_file,
        path upgrade_sock,
        str grace_period,
        str graceful_shutdown_timeout,
        path error_log,
        val work_stealing: bool,
    );
}

// === listeners ===

/// A protocol a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Cluster,
}

/// `listeners[]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: String,
    pub protocols: Option<Vec<Protocol>>,
    pub first_byte_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub read_buffer: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub keepalive_requests: Option<u32>,
    pub max_connections_per_identity: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub max_handshakes_per_ip: Option<usize>,
    pub max_connections: Option<usize>,
    pub body_timeout: Option<String>,
    pub send_timeout: Option<String>,
    pub max_concurrent_streams: Option<u32>,
    pub tls: Option<ListenerTls>,
}

impl Listener {
    /// A plaintext listener `name` on `127.0.0.1:<port>` (HTTP, the default).
    pub fn new(name: &str, port: u16) -> Listener {
        Listener {
            name: name.into(),
            address: local(port),
            ..Listener::default()
        }
    }

    pub fn protocols(mut self, p: &[Protocol]) -> Listener {
        self.protocols = Some(p.to_vec());
        self
    }

    pub fn tls(mut self, t: ListenerTls) -> Listener {
        self.tls = Some(t);
        self
    }

    setters!(
        str first_byte_timeout,
        str header_timeout,
        str read_buffer,
        str keepalive_timeout,
        val keepalive_requests: u32,
        val max_connections_per_identity: usize,
        str handshake_timeout,
        val max_handshakes_per_ip: usize,
        val max_connections: usize,
        str body_timeout,
        str send_timeout,
        val max_concurrent_streams: u32,
    );
}

/// `listeners[].tls.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    Required,
    Optional,
    None,
}

/// `listeners[].tls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub sni_certs: Option<Vec<SniCert>>,
    pub client_auth: Option<ClientAuth>,
    pub client_ca: Option<PathBuf>,
    pub min_version: Option<String>,
    pub curves: Option<String>,
    pub alpn: Option<Vec<String>>,
    pub session_resumption: Option<bool>,
    pub watch: Option<bool>,
}

impl ListenerTls {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> ListenerTls {
        ListenerTls {
            cert: cert.into(),
            key: key.into(),
            ..ListenerTls::default()
        }
    }

    /// `pki`'s `<stem>.crt`/`.key`, with `client_auth` and (unless `none`) `pki`'s CA as
    /// `client_ca`.
    pub fn from_pki(pki: &Pki, stem: &str, client_auth: ClientAuth) -> ListenerTls {
        let (cert, key) = pki.paths(stem);
        let t = ListenerTls::new(cert, key).client_auth(client_auth);
        match client_auth {
            ClientAuth::None => t,
            _ => t.client_ca(pki.ca_path()),
        }
    }

    pub fn client_auth(mut self, a: ClientAuth) -> ListenerTls {
        self.client_auth = Some(a);
        self
    }

    /// Adds an `sni_certs` entry: `(cert, key)` for `names`.
    pub fn sni_cert(mut self, names: &[&str], (cert, key): (PathBuf, PathBuf)) -> ListenerTls {
        self.sni_certs.get_or_insert_with(Vec::new).push(SniCert {
            names: strings(names.iter().copied()),
            cert,
            key,
        });
        self
    }

    setters!(
        path client_ca,
        str min_version,
        str curves,
        list alpn,
        val session_resumption: bool,
        val watch: bool,
    );
}

/// `listeners[].tls.sni_certs[]`.
#[derive(Debug, Clone, Serialize)]
pub struct SniCert {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

// === upstreams ===

/// `upstreams.<name>`: a group of peers (`Upstream` is the harness's origin server).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    pub peers: Vec<String>,
    pub load_balancing: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub connect_timeout: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub read_timeout: Option<String>,
    pub answer_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub tls: Option<UpstreamTls>,
    pub basic_auth: Option<UpstreamAuth>,
}

/// `upstreams.<name>.basic_auth`.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamAuth {
    pub user: String,
    pub password_file: PathBuf,
}

/// `routes[].basic_auth`.
#[derive(Debug, Clone, Serialize)]
pub struct BasicAuth {
    pub users_file: PathBuf,
    pub realm: Option<String>,
}

impl Group {
    /// One peer (`127.0.0.1:9`, a `SocketAddr`, …).
    pub fn new(peer: impl Display) -> Group {
        Group::peers([peer])
    }

    pub fn peers<P: Display>(peers: impl IntoIterator<Item = P>) -> Group {
        Group {
            peers: peers.into_iter().map(|p| p.to_string()).collect(),
            ..Group::default()
        }
    }

    pub fn tls(mut self, t: UpstreamTls) -> Group {
        self.tls = Some(t);
        self
    }

    pub fn health_check(mut self, h: HealthCheck) -> Group {
        self.health_check = Some(h);
        self
    }

    setters!(
        str load_balancing,
        str connect_timeout,
        str tls_handshake_timeout,
        str read_timeout,
        str answer_timeout,
        str idle_timeout,
    );
}

/// `upstreams.<name>.health_check`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthCheck {
    pub kind: String,
    pub interval: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
}

impl HealthCheck {
    /// `{ kind: tcp, interval: <interval> }`.
    pub fn tcp(interval: &str) -> HealthCheck {
        HealthCheck {
            kind: "tcp".into(),
            interval: Some(interval.into()),
            ..HealthCheck::default()
        }
    }

    /// `{ kind: http, interval: <interval>, path: <path>, host: <host> }`.
    pub fn http(interval: &str, path: &str, host: &str) -> HealthCheck {
        HealthCheck {
            kind: "http".into(),
            interval: Some(interval.into()),
            path: Some(path.into()),
            host: Some(host.into()),
        }
    }
}

/// `upstreams.<name>.tls`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub sni: String,
    pub verify_cert: Option<bool>,
    pub verify_hostname: Option<bool>,
    pub alt_cn: Option<String>,
    pub curves: Option<String>,
    pub alpn: Option<String>,
    pub watch: Option<bool>,
}

impl UpstreamTls {
    pub fn new(sni: &str) -> UpstreamTls {
        UpstreamTls {
            sni: sni.into(),
            ..UpstreamTls::default()
        }
    }

    /// Presents `pki`'s `<stem>.crt`/`.key` as the client certificate.
    pub fn client(mut self, pki: &Pki, stem: &str) -> UpstreamTls {
        let (cert, key) = pki.paths(stem);
        self.client_cert = Some(cert);
        self.client_key = Some(key);
        self
    }

    /// Trusts `pki`'s CA and presents its `<stem>` certificate: the edge's usual upstream.
    pub fn mutual(sni: &str, pki: &Pki, stem: &str) -> UpstreamTls {
        UpstreamTls::new(sni).ca(pki.ca_path()).client(pki, stem)
    }

    setters!(
        path ca,
        path client_cert,
        path client_key,
        val verify_cert: bool,
        val verify_hostname: bool,
        str alt_cn,
        str curves,
        str alpn,
        val watch: bool,
    );
}

// === routes ===

/// `routes[]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Route {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub upstream: Option<String>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub forward_identity: Option<String>,
    pub kea: Option<KeaRoute>,
    pub rate_limit: Option<RateLimit>,
    pub basic_auth: Option<BasicAuth>,
    pub bearer: Option<Bearer>,
    pub answer_timeout: Option<String>,
}

/// `routes[].bearer`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bearer {
    pub issuers: Vec<String>,
    pub require: Option<String>,
    pub forward: Option<bool>,
    pub realm: Option<String>,
}

impl Bearer {
    /// Tokens of these issuers.
    pub fn new<S: Into<String>>(issuers: impl IntoIterator<Item = S>) -> Bearer {
        Bearer {
            issuers: strings(issuers),
            ..Bearer::default()
        }
    }

    setters!(str require, val forward: bool, str realm);
}

/// `issuers.<name>`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Issuer {
    pub issuer: String,
    pub audience: Value,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub algorithms: Option<Vec<String>>,
    pub leeway: Option<String>,
    pub typ: Option<Vec<String>>,
    pub ca: Option<PathBuf>,
    pub fetch_timeout: Option<String>,
    pub refresh_interval: Option<String>,
    pub min_refresh_interval: Option<String>,
    pub max_stale: Option<String>,
}

impl Issuer {
    /// Tokens whose `iss` is `issuer` and `aud` is `audience`; keys by discovery.
    pub fn new(issuer: &str, audience: &str) -> Issuer {
        Issuer {
            issuer: issuer.into(),
            audience: Value::String(audience.into()),
            ..Issuer::default()
        }
    }

    /// `audience` as a list.
    pub fn audiences<S: Into<String>>(mut self, v: impl IntoIterator<Item = S>) -> Issuer {
        self.audience = Value::Sequence(v.into_iter().map(|s| Value::String(s.into())).collect());
        self
    }

    setters!(
        str jwks_url,
        path jwks_file,
        list algorithms,
        str leeway,
        list typ,
        path ca,
        str fetch_timeout,
        str refresh_interval,
        str min_refresh_interval,
        str max_stale,
    );
}

impl Route {
    pub fn new(name: &str, upstream: &str) -> Route {
        Route {
            name: name.into(),
            upstream: Some(upstream.into()),
            ..Route::default()
        }
    }

    /// A route with no `upstream`: a `kea.services` route (Gatehouse is the agent).
    pub fn agent(name: &str, kea: KeaRoute) -> Route {
        Route {
            name: name.into(),
            kea: Some(kea),
            ..Route::default()
        }
    }

    /// `path_prefix`.
    pub fn path(self, prefix: &str) -> Route {
        self.path_prefix(prefix)
    }

    /// `forward_identity: xfcc`.
    pub fn answer_timeout(mut self, d: &str) -> Route {
        self.answer_timeout = Some(d.into());
        self
    }

    pub fn xfcc(self) -> Route {
        self.forward_identity("xfcc")
    }

    pub fn kea(mut self, k: KeaRoute) -> Route {
        self.kea = Some(k);
        self
    }

    /// `bearer:`.
    pub fn bearer(mut self, b: Bearer) -> Route {
        self.bearer = Some(b);
        self
    }

    /// `rate_limit: { requests_per_second, burst }`.
    pub fn rate_limit(mut self, requests_per_second: f64, burst: Option<u32>) -> Route {
        self.rate_limit = Some(RateLimit {
            requests_per_second,
            burst,
        });
        self
    }

    setters!(
        str host,
        str path_prefix,
        list allow,
        list deny,
        str forward_identity,
    );
}

/// `routes[].rate_limit`.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimit {
    pub requests_per_second: f64,
    pub burst: Option<u32>,
}

/// `routes[].kea`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeaRoute {
    pub daemon: Option<String>,
    pub services: Option<BTreeMap<String, String>>,
    pub fan_out: Option<String>,
    pub max_body: Option<String>,
    pub max_answer: Option<String>,
    pub rules: Option<Vec<KeaRule>>,
    pub default: Option<String>,
}

impl KeaRoute {
    /// `{ default: allow }`: every command passes (and is audited).
    pub fn allow_all() -> KeaRoute {
        KeaRoute {
            default: Some("allow".into()),
            ..KeaRoute::default()
        }
    }

    /// `{ default: deny }` plus rules added with [`KeaRoute::rule`].
    pub fn deny_by_default() -> KeaRoute {
        KeaRoute {
            default: Some("deny".into()),
            ..KeaRoute::default()
        }
    }

    pub fn rule(mut self, r: KeaRule) -> KeaRoute {
        self.rules.get_or_insert_with(Vec::new).push(r);
        self
    }

    /// `services: { service: upstream, … }`.
    pub fn service(mut self, service: &str, upstream: &str) -> KeaRoute {
        self.services
            .get_or_insert_with(BTreeMap::new)
            .insert(service.into(), upstream.into());
        self
    }

    setters!(str max_body, str fan_out, str daemon, str max_answer);
}

/// `routes[].kea.rules[]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KeaRule {
    pub identity: Vec<String>,
    pub commands: Option<AllowDeny>,
    pub services: Option<AllowDeny>,
}

impl KeaRule {
    pub fn new<S: Into<String>>(identity: impl IntoIterator<Item = S>) -> KeaRule {
        KeaRule {
            identity: strings(identity),
            ..KeaRule::default()
        }
    }

    pub fn commands(mut self, c: AllowDeny) -> KeaRule {
        self.commands = Some(c);
        self
    }

    pub fn services(mut self, s: AllowDeny) -> KeaRule {
        self.services = Some(s);
        self
    }
}

/// `{ allow: […], deny: […] }` of Kea rules.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AllowDeny {
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

impl AllowDeny {
    /// `{ allow: [..] }`.
    pub fn only<S: Into<String>>(allow: impl IntoIterator<Item = S>) -> AllowDeny {
        AllowDeny::default().allow(allow)
    }

    setters!(list allow, list deny);
}

// === cluster ===

/// `cluster:`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Cluster {
    pub routes: Vec<ClusterRoute>,
    pub upstream_identity: Option<UpstreamIdentity>,
    pub limits: Option<Limits>,
    pub policy: Option<Vec<PolicyRule>>,
    pub max_violations: Option<u32>,
}

impl Cluster {
    /// A relay whose first route sends SNI `sni` to `upstream`.
    pub fn new(sni: &str, upstream: &str) -> Cluster {
        Cluster::default().route(sni, upstream)
    }

    /// Adds a route (first match wins).
    pub fn route(mut self, sni: &str, upstream: &str) -> Cluster {
        self.routes.push(ClusterRoute {
            sni: sni.into(),
            upstream: upstream.into(),
            toward: None,
        });
        self
    }

    /// Adds a route whose upstream is a child (`toward: child`: a master dialling an agent).
    pub fn child_route(mut self, sni: &str, upstream: &str) -> Cluster {
        self.routes.push(ClusterRoute {
            sni: sni.into(),
            upstream: upstream.into(),
            toward: Some("child".into()),
        });
        self
    }

    /// `upstream_identity: { cert_dir: <dir> }`.
    pub fn cert_dir(mut self, dir: impl Into<PathBuf>) -> Cluster {
        self.upstream_identity = Some(UpstreamIdentity {
            cert_dir: dir.into(),
            missing: None,
        });
        self
    }

    /// `upstream_identity.missing` (after [`Cluster::cert_dir`]).
    pub fn missing(mut self, m: &str) -> Cluster {
        self.upstream_identity
            .as_mut()
            .expect("cert_dir first")
            .missing = Some(m.into());
        self
    }

    pub fn limits(mut self, l: Limits) -> Cluster {
        self.limits = Some(l);
        self
    }

    pub fn policy(mut self, r: PolicyRule) -> Cluster {
        self.policy.get_or_insert_with(Vec::new).push(r);
        self
    }

    setters!(val max_violations: u32);
}

/// `cluster.routes[]`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRoute {
    pub sni: String,
    pub upstream: String,
    pub toward: Option<String>,
}

/// `cluster.upstream_identity`.
#[derive(Debug, Clone, Serialize)]
pub struct UpstreamIdentity {
    pub cert_dir: PathBuf,
    pub missing: Option<String>,
}

/// `cluster.limits`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Limits {
    pub max_links_per_identity: Option<usize>,
    pub anonymous_max_clients: Option<usize>,
    pub anonymous_max_per_ip: Option<usize>,
    pub certificate_request_size: Option<String>,
    pub anonymous_message_size: Option<String>,
    pub message_size: Option<String>,
    pub parent_message_size: Option<String>,
    pub idle_timeout: Option<String>,
    pub anonymous_idle_timeout: Option<String>,
    pub anonymous_max_lifetime: Option<String>,
}

impl Limits {
    setters!(
        val max_links_per_identity: usize,
        val anonymous_max_clients: usize,
        val anonymous_max_per_ip: usize,
        str certificate_request_size,
        str anonymous_message_size,
        str message_size,
        str parent_message_size,
        str idle_timeout,
        str anonymous_idle_timeout,
        str anonymous_max_lifetime,
    );
}

/// `cluster.policy[]`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PolicyRule {
    pub identity: String,
    pub direction: Option<String>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
}

impl PolicyRule {
    pub fn new(identity: &str) -> PolicyRule {
        PolicyRule {
            identity: identity.into(),
            ..PolicyRule::default()
        }
    }

    setters!(str direction, list allow, list deny);
}

// === metrics, audit ===

/// `metrics:`.
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub address: String,
}

/// `audit:`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    pub path: Option<PathBuf>,
}
