//! From the schema to the runtime model, in one pass: every value parsed once, every path
//! resolved once, every reference turned into an index — and every problem found on the
//! way reported under its key path (serde's parse errors too, located).

use super::model::*;
use super::schema::*;
use super::units::ByteSize;
use super::{ConfigError, ConfigErrors};
use crate::authz::Matcher;
use crate::host::HostPattern;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

impl Config {
    /// Reads, parses and validates `file`; every problem is reported at once.
    pub fn load(file: &Path) -> Result<Config, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: file.to_path_buf(),
            errors,
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| fail(vec![ConfigError::new("", format!("cannot read file: {e}"))]))?;
        // Absolute once, here: `--daemon` changes the working folder to `/`, and certificate
        // reloads, the file watcher and `cert_dir` read these paths long after startup.
        let folder = file.parent().filter(|p| !p.as_os_str().is_empty());
        let base = std::path::absolute(folder.unwrap_or(Path::new("."))).map_err(|e| {
            fail(vec![ConfigError::new(
                "",
                format!("cannot resolve the file's folder: {e}"),
            )])
        })?;
        Config::parse(&text, &base).map_err(fail)
    }

    /// Parses and validates YAML text; `base_dir` is where relative paths resolve.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let de = serde_yaml::Deserializer::from_str(text);
        let doc: Document =
            serde_path_to_error::deserialize(de).map_err(|e| vec![yaml_error(e)])?;
        lower(doc, base_dir)
    }
}

/// The `server:` keys, for the test that each of them reaches Pingora.
#[cfg(test)]
pub(crate) fn server_keys() -> Vec<String> {
    match serde_yaml::to_value(ServerSection::default()) {
        Ok(serde_yaml::Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// Icinga's own rules, the policy when the file has none: anonymous clients may only say
/// hello, heartbeat and ask for a certificate; nobody pushes config, certificates or
/// commands toward its parent.
pub fn icinga_policy() -> Vec<PolicyRule> {
    let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        PolicyRule {
            identity: Matcher::Anonymous,
            direction: PolicyDirection::Upstream,
            allow: Some(list(&[
                "icinga::Hello",
                "event::Heartbeat",
                "pki::RequestCertificate",
            ])),
            deny: Vec::new(),
        },
        PolicyRule {
            identity: Matcher::Everyone,
            direction: PolicyDirection::Upstream,
            allow: None,
            deny: list(&[
                "config::Update",
                "config::UpdateObject",
                "config::DeleteObject",
                "pki::UpdateCertificate",
                "event::SetRemovalInfo",
                "event::ExecuteCommand",
            ]),
        },
    ]
}

/// Collects problems while the model is built.
struct Lowering<'a> {
    base: &'a Path,
    errs: Vec<ConfigError>,
}

impl Lowering<'_> {
    fn err(&mut self, at: impl Into<String>, msg: impl Into<String>) {
        self.errs.push(ConfigError::new(at, msg));
    }

    fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn files(&self, cert: &Path, key: &Path) -> CertKeyFiles {
        CertKeyFiles {
            cert: self.path(cert),
            key: self.path(key),
        }
    }

    fn addr(&mut self, at: String, s: &str, what: &str) -> Option<SocketAddr> {
        s.parse()
            .map_err(|_| self.err(at, format!("`{s}` is not an IP:port address{what}")))
            .ok()
    }

    fn host(&mut self, at: String, s: &str) -> Option<HostPattern> {
        HostPattern::parse(s).map_err(|m| self.err(at, m)).ok()
    }

    fn matchers(&mut self, at: &str, list: &[String]) -> Vec<Matcher> {
        list.iter()
            .enumerate()
            .filter_map(|(j, m)| {
                Matcher::parse(m)
                    .map_err(|msg| self.err(format!("{at}[{j}]"), msg))
                    .ok()
            })
            .collect()
    }

    fn bytes(&mut self, at: &str, s: ByteSize) -> usize {
        usize::try_from(s.0).unwrap_or_else(|_| {
            self.err(at, "too large for this machine");
            usize::MAX
        })
    }
}

/// Builds the model from a parsed document, checking what the schema cannot: references,
/// duplicates, combinations and every value's own syntax.
/// `listeners[].read_buffer` when not set: the most one read below TLS takes while busy.
const DEFAULT_READ_BUFFER: usize = 64 * 1024;

fn lower(doc: Document, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let mut cx = Lowering {
        base,
        errs: Vec::new(),
    };
    let server = lower_server(&mut cx, &doc.server);
    let mut taken: BTreeMap<SocketAddr, String> = BTreeMap::new();
    let listeners = lower_listeners(&mut cx, &doc, &mut taken);
    let upstreams: Vec<UpstreamSettings> = doc
        .upstreams
        .iter()
        .map(|(name, u)| lower_upstream(&mut cx, name, u))
        .collect();
    // Groups keep the (sorted) order of the map, so a name's index there is its index in
    // the model.
    let index = |name: &str| doc.upstreams.keys().position(|k| k == name);
    let issuers = lower_issuers(&mut cx, &doc.issuers);
    let routes = lower_routes(&mut cx, &doc.routes, &index, &issuers);
    let cluster = doc
        .cluster
        .as_ref()
        .map(|c| lower_cluster(&mut cx, c, &index));
    let metrics = doc.metrics.as_ref().and_then(|m| {
        let a = cx.addr("metrics.address".into(), &m.address, "")?;
        if let Some(prev) = taken.get(&a) {
            cx.err("metrics.address", format!("{a} is already used by {prev}"));
        }
        Some(a)
    });
    let audit_path = doc
        .audit
        .as_ref()
        .and_then(|a| a.path.as_deref())
        .map(|p| cx.path(p));
    if let Some(p) = &audit_path {
        if !p
            .parent()
            .is_some_and(|d| d.as_os_str().is_empty() || d.is_dir())
        {
            cx.err(
                "audit.path",
                format!("{}: the folder does not exist", p.display()),
            );
        }
    }
    unix_groups_only_for_daemons(&mut cx, &upstreams, &routes, cluster.as_ref());
    if cluster.is_none() {
        for (i, l) in doc.listeners.iter().enumerate() {
            if l.protocols.contains(&Protocol::Cluster) {
                cx.err(
                    format!("listeners[{i}].protocols"),
                    "cluster needs a top-level `cluster:` section",
                );
            }
        }
    }
    if !cx.errs.is_empty() {
        return Err(cx.errs);
    }
    Ok(Config {
        base_dir: base.to_path_buf(),
        server,
        listeners,
        upstreams,
        routes,
        cluster,
        metrics,
        audit_path,
        log_format: doc.log_format,
        issuers,
    })
}

/// A `unix:` peer speaks Kea's control-socket protocol (bare JSON), not HTTP: only routes that
/// know they face a daemon (`kea.daemon`, `kea.services`) may send to such a group.
fn unix_groups_only_for_daemons(
    cx: &mut Lowering<'_>,
    upstreams: &[UpstreamSettings],
    routes: &[RouteSettings],
    cluster: Option<&ClusterSettings>,
) {
    let unix = |i: usize| upstreams.get(i).is_some_and(|u| !u.unix.is_empty());
    for (i, r) in routes.iter().enumerate() {
        let daemonish = r.kea.as_ref().is_some_and(|k| k.target != KeaTarget::Agent);
        if unix(r.upstream) && !daemonish {
            cx.err(
                format!("routes[{i}].upstream"),
                format!(
                    "upstream `{}` has `unix:` peers (Kea control sockets): only a route with `kea.daemon` or `kea.services` can use it",
                    upstreams[r.upstream].name
                ),
            );
        }
    }
    for (i, r) in cluster.iter().flat_map(|c| &c.routes).enumerate() {
        if unix(r.upstream) {
            cx.err(
                format!("cluster.routes[{i}].upstream"),
                format!(
                    "upstream `{}` has `unix:` peers: the cluster relay needs TCP peers",
                    upstreams[r.upstream].name
                ),
            );
        }
    }
}

fn lower_server(cx: &mut Lowering<'_>, s: &ServerSection) -> ServerSettings {
    if s.threads == 0 {
        cx.err("server.threads", "must be at least 1");
    }
    ServerSettings {
        threads: s.threads,
        work_stealing: s.work_stealing,
        pid_file: cx.path(&s.pid_file),
        upgrade_sock: cx.path(&s.upgrade_sock),
        grace_period: s.grace_period.get(),
        graceful_shutdown_timeout: s.graceful_shutdown_timeout.get(),
        error_log: s.error_log.as_deref().map(|p| cx.path(p)),
    }
}

fn lower_listeners(
    cx: &mut Lowering<'_>,
    doc: &Document,
    taken: &mut BTreeMap<SocketAddr, String>,
) -> Vec<ListenerSettings> {
    if doc.listeners.is_empty() {
        cx.err("listeners", "at least one listener is needed");
    }
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, l) in doc.listeners.iter().enumerate() {
        let at = format!("listeners[{i}]");
        if l.name.is_empty() || !names.insert(l.name.as_str()) {
            cx.err(
                format!("{at}.name"),
                format!("listener name `{}` is empty or used twice", l.name),
            );
        }
        let address = listener_address(cx, &at, l, taken);
        check_listener_bounds(cx, &at, l);
        let tls = l
            .tls
            .as_ref()
            .map(|t| lower_listener_tls(cx, &format!("{at}.tls"), t, &l.protocols));
        if let Some(address) = address {
            out.push(listener_settings(cx, &at, l, address, tls));
        }
    }
    out
}

/// One listener's address, claimed in `taken` so no two listeners (nor metrics) share it.
fn listener_address(
    cx: &mut Lowering<'_>,
    at: &str,
    l: &ListenerSection,
    taken: &mut BTreeMap<SocketAddr, String>,
) -> Option<SocketAddr> {
    let address = cx.addr(format!("{at}.address"), &l.address, " (IPv6 as [::1]:5665)");
    if let Some(a) = address {
        if let Some(prev) = taken.insert(a, at.to_string()) {
            cx.err(
                format!("{at}.address"),
                format!("{a} is already used by {prev}"),
            );
        }
    }
    address
}

/// A listener's protocols, sizes, timeouts and caps: none may refuse every connection.
fn check_listener_bounds(cx: &mut Lowering<'_>, at: &str, l: &ListenerSection) {
    if l.protocols.is_empty() {
        cx.err(format!("{at}.protocols"), "must name http, cluster or both");
    }
    // Below 1 KiB a busy connection reads little more than a record at a time; above 1 MiB
    // a busy one holds memory no socket read fills.
    if let Some(rb) = l
        .read_buffer
        .filter(|rb| !(1024..=1024 * 1024).contains(&rb.0))
    {
        cx.err(
            format!("{at}.read_buffer"),
            format!("{} bytes is outside 1KiB..=1MiB", rb.0),
        );
    }
    if l.keepalive_timeout.get() < Duration::from_secs(1) {
        cx.err(format!("{at}.keepalive_timeout"), "must be at least 1s");
    }
    if l.keepalive_requests == 0 {
        cx.err(format!("{at}.keepalive_requests"), "must be at least 1");
    }
    if l.max_connections_per_identity == Some(0) {
        cx.err(
            format!("{at}.max_connections_per_identity"),
            "must be at least 1 (leave it out for no limit)",
        );
    }
    if l.handshake_timeout.get().is_zero() {
        cx.err(format!("{at}.handshake_timeout"), "must be more than 0");
    }
    if l.max_handshakes_per_ip == 0 {
        cx.err(format!("{at}.max_handshakes_per_ip"), "must be at least 1");
    }
    for (key, d) in [
        ("body_timeout", l.body_timeout),
        ("send_timeout", l.send_timeout),
    ] {
        if d.get().is_zero() {
            cx.err(format!("{at}.{key}"), "must be more than 0");
        }
    }
    if !(1..=1024).contains(&l.max_concurrent_streams) {
        // The body watch (`demux`) follows at most 1024 streams of a connection.
        cx.err(
            format!("{at}.max_concurrent_streams"),
            "must be between 1 and 1024",
        );
    }
    if l.max_connections == Some(0) {
        cx.err(
            format!("{at}.max_connections"),
            "must be at least 1 (leave it out for a share of the descriptor limit)",
        );
    }
}

/// The model of a listener whose address parsed.
fn listener_settings(
    cx: &mut Lowering<'_>,
    at: &str,
    l: &ListenerSection,
    address: SocketAddr,
    tls: Option<ListenerTlsSettings>,
) -> ListenerSettings {
    ListenerSettings {
        name: l.name.clone(),
        address,
        tls,
        protocols: l.protocols.clone(),
        first_byte_timeout: l.first_byte_timeout.get(),
        header_timeout: l.header_timeout.get(),
        // The read-ahead below TLS exists only while a connection is busy, so a large one
        // costs idle connections nothing: 64 KiB takes about four full records per read.
        read_buffer: match l.read_buffer {
            Some(rb) => cx.bytes(&format!("{at}.read_buffer"), rb),
            None => DEFAULT_READ_BUFFER,
        },
        keepalive_timeout: l.keepalive_timeout.get(),
        keepalive_requests: l.keepalive_requests,
        max_connections_per_identity: l.max_connections_per_identity,
        handshake_timeout: l.handshake_timeout.get(),
        max_handshakes_per_ip: l.max_handshakes_per_ip,
        max_connections: l.max_connections,
        body_timeout: l.body_timeout.get(),
        send_timeout: l.send_timeout.get(),
        max_concurrent_streams: l.max_concurrent_streams,
    }
}

fn lower_listener_tls(
    cx: &mut Lowering<'_>,
    at: &str,
    t: &ListenerTlsSection,
    protocols: &[Protocol],
) -> ListenerTlsSettings {
    if t.client_auth != ClientAuth::None && t.client_ca.is_none() {
        cx.err(
            format!("{at}.client_ca"),
            format!("required when client_auth is {:?}", t.client_auth).to_lowercase(),
        );
    }
    let alpn = match &t.alpn {
        None => Alpn::H2H1,
        Some(list) => {
            if list.is_empty() {
                cx.err(format!("{at}.alpn"), "must name at least one protocol");
            }
            for (j, p) in list.iter().enumerate() {
                if p != "h2" && p != "http/1.1" {
                    cx.err(
                        format!("{at}.alpn[{j}]"),
                        format!("unknown protocol `{p}` (use h2 or http/1.1)"),
                    );
                }
            }
            let h2 = list.iter().any(|p| p == "h2");
            let h1 = list.iter().any(|p| p == "http/1.1");
            match (h2, h1) {
                (true, true) => Alpn::H2H1,
                (true, false) => Alpn::H2,
                _ => Alpn::H1,
            }
        }
    };
    let mut sni_certs = Vec::new();
    for (j, s) in t.sni_certs.iter().enumerate() {
        let sat = format!("{at}.sni_certs[{j}]");
        if s.names.is_empty() {
            cx.err(format!("{sat}.names"), "must list at least one name");
        }
        let names = s
            .names
            .iter()
            .enumerate()
            .filter_map(|(k, n)| cx.host(format!("{sat}.names[{k}]"), n))
            .collect();
        sni_certs.push(SniCertSettings {
            names,
            files: cx.files(&s.cert, &s.key),
        });
    }
    ListenerTlsSettings {
        default_cert: cx.files(&t.cert, &t.key),
        sni_certs,
        client_auth: t.client_auth,
        client_ca: t.client_ca.as_deref().map(|p| cx.path(p)),
        min_version: t.min_version,
        curves: t.curves.clone(),
        alpn,
        session_resumption: t
            .session_resumption
            .unwrap_or_else(|| protocols.contains(&Protocol::Http)),
        watch: t.watch,
    }
}

fn lower_upstream(cx: &mut Lowering<'_>, name: &str, u: &UpstreamSection) -> UpstreamSettings {
    let at = format!("upstreams.{name}");
    let (peers, unix) = lower_peers(cx, &at, u);
    let health_check = u
        .health_check
        .as_ref()
        .and_then(|hc| lower_health_probe(cx, &at, hc));
    let tls = u.tls.as_ref().map(|t| lower_upstream_tls(cx, &at, t));
    // A zero bound would fail every connection to the group (as a timeout), not disable it.
    for (key, d) in [
        ("connect_timeout", u.connect_timeout),
        ("tls_handshake_timeout", u.tls_handshake_timeout),
        ("read_timeout", u.read_timeout),
        ("answer_timeout", u.answer_timeout),
    ] {
        if d.get().is_zero() {
            cx.err(format!("{at}.{key}"), "must be more than 0");
        }
    }
    let basic_auth = u
        .basic_auth
        .as_ref()
        .map(|a| lower_upstream_auth(cx, &at, a));
    UpstreamSettings {
        name: name.to_string(),
        peers,
        unix,
        basic_auth,
        load_balancing: u.load_balancing,
        health_check,
        connect_timeout: u.connect_timeout.get(),
        tls_handshake_timeout: u.tls_handshake_timeout.get(),
        read_timeout: u.read_timeout.get(),
        answer_timeout: u.answer_timeout.get(),
        idle_timeout: u.idle_timeout.get(),
        tls,
    }
}

/// A group's TCP and `unix:` peers; a group is one kind, and a `unix:` one has no HTTP options.
fn lower_peers(
    cx: &mut Lowering<'_>,
    at: &str,
    u: &UpstreamSection,
) -> (Vec<SocketAddr>, Vec<PathBuf>) {
    if u.peers.is_empty() {
        cx.err(format!("{at}.peers"), "at least one peer is needed");
    }
    let mut peers: Vec<SocketAddr> = Vec::new();
    let mut unix: Vec<PathBuf> = Vec::new();
    for (j, p) in u.peers.iter().enumerate() {
        let pat = format!("{at}.peers[{j}]");
        match p.strip_prefix("unix:") {
            Some(path) if path.starts_with('/') => unix.push(PathBuf::from(path)),
            Some(_) => {
                cx.err(
                    pat,
                    format!("`{p}`: a UNIX socket peer is `unix:/absolute/path`"),
                );
            }
            None => peers.extend(cx.addr(pat, p, " or unix:/path")),
        }
    }
    if !unix.is_empty() {
        if !peers.is_empty() {
            cx.err(
                format!("{at}.peers"),
                "mixes TCP and `unix:` peers: a group is one kind (put them in two groups)",
            );
        }
        for (key, set) in [
            ("health_check", u.health_check.is_some()),
            ("tls", u.tls.is_some()),
            ("basic_auth", u.basic_auth.is_some()),
        ] {
            if set {
                cx.err(
                    format!("{at}.{key}"),
                    "does not apply to `unix:` peers (a Kea control socket on this machine)",
                );
            }
        }
    }
    (peers, unix)
}

/// The health check of one group; `None` when its path is not a request path.
fn lower_health_probe(
    cx: &mut Lowering<'_>,
    at: &str,
    hc: &HealthCheckSection,
) -> Option<HealthProbe> {
    let path = if hc.path.starts_with('/') {
        hc.path.parse::<http::Uri>().map_err(|e| e.to_string())
    } else {
        Err("must start with /".to_string())
    };
    let path = path
        .map_err(|m| cx.err(format!("{at}.health_check.path"), m))
        .ok()?;
    Some(HealthProbe {
        kind: hc.kind,
        interval: hc.interval.get(),
        path,
        host: hc.host.clone(),
    })
}

/// One group's `tls:` block, refusing combinations that would silently not do what they say.
fn lower_upstream_tls(
    cx: &mut Lowering<'_>,
    at: &str,
    t: &UpstreamTlsSection,
) -> UpstreamTlsSettings {
    if t.client_cert.is_some() != t.client_key.is_some() {
        cx.err(
            format!("{at}.tls"),
            "client_cert and client_key go together",
        );
    }
    if t.second_keyshare.is_some() {
        cx.err(
            format!("{at}.tls.second_keyshare"),
            "removed, it never had an effect: Pingora applies it only when built with its post-quantum `pq_use_second_keyshare` feature, which Gatehouse is not; delete the key",
        );
    }
    if t.watch && t.ca.is_none() && t.client_cert.is_none() {
        cx.err(
            format!("{at}.tls.watch"),
            "this block names no file to watch (the system trust store is not watched): set ca or client_cert, or leave watch out",
        );
    }
    if t.sni.is_empty() && (t.verify_cert || t.verify_hostname) {
        cx.err(
            format!("{at}.tls.sni"),
            "an empty SNI disables verification: set it, or set verify_cert and verify_hostname to false",
        );
    }
    UpstreamTlsSettings {
        ca: t.ca.as_deref().map(|p| cx.path(p)),
        client: match (&t.client_cert, &t.client_key) {
            (Some(c), Some(k)) => Some(cx.files(c, k)),
            _ => None,
        },
        sni: t.sni.clone(),
        verify_cert: t.verify_cert,
        verify_hostname: t.verify_hostname,
        alt_cn: t.alt_cn.clone(),
        curves: t.curves.clone(),
        alpn: t.alpn,
        watch: t.watch,
    }
}

/// The credentials one group sends; the user must fit before the `:` of HTTP basic.
fn lower_upstream_auth(
    cx: &mut Lowering<'_>,
    at: &str,
    a: &UpstreamAuthSection,
) -> UpstreamAuthSettings {
    if a.user.is_empty() || a.user.contains(':') {
        cx.err(
            format!("{at}.basic_auth.user"),
            "must be a non-empty name without `:`",
        );
    }
    UpstreamAuthSettings {
        user: a.user.clone(),
        password_file: cx.path(&a.password_file),
    }
}

fn lower_routes(
    cx: &mut Lowering<'_>,
    routes: &[RouteSection],
    index: &dyn Fn(&str) -> Option<usize>,
    issuers: &[IssuerSettings],
) -> Vec<RouteSettings> {
    let mut names = HashSet::new();
    let mut keys = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !names.insert(r.name.as_str()) {
            cx.err(
                format!("{at}.name"),
                format!("route name `{}` is used twice", r.name),
            );
        }
        let upstream = route_upstream(cx, &at, r, index);
        if !r.path_prefix.starts_with('/') {
            cx.err(format!("{at}.path_prefix"), "must start with /");
        }
        let host = cx.host(format!("{at}.host"), &r.host);
        let allow = r
            .allow
            .as_ref()
            .map(|a| cx.matchers(&format!("{at}.allow"), a));
        let deny = cx.matchers(&format!("{at}.deny"), &r.deny);
        let kea = r
            .kea
            .as_ref()
            .map(|k| lower_kea(cx, &format!("{at}.kea"), k, index));
        let rate_limit = r.rate_limit.as_ref().map(|l| lower_rate_limit(cx, &at, l));
        let basic_auth = r
            .basic_auth
            .as_ref()
            .map(|b| lower_route_basic_auth(cx, &at, b));
        let bearer = r.bearer.as_ref().map(|b| lower_bearer(cx, &at, b, issuers));
        token_matchers_need_bearer(cx, &at, r, bearer.is_some());
        if !keys.insert((r.host.to_ascii_lowercase(), r.path_prefix.as_str())) {
            cx.err(
                at.clone(),
                format!(
                    "host `{}` and path_prefix `{}` are already routed by an earlier route",
                    r.host, r.path_prefix
                ),
            );
        }
        let answer_timeout = r.answer_timeout.map(|d| d.get());
        if answer_timeout.is_some_and(|d| d.is_zero()) {
            cx.err(format!("{at}.answer_timeout"), "must be more than 0");
        }
        if let (Some(host), Some(upstream)) = (host, upstream) {
            out.push(RouteSettings {
                name: r.name.clone(),
                host,
                path_prefix: r.path_prefix.clone(),
                upstream,
                allow,
                deny,
                forward_identity: r.forward_identity,
                kea,
                rate_limit,
                basic_auth,
                bearer,
                answer_timeout,
            });
        }
    }
    out
}

/// The group a route sends to: `upstream`, or a `kea.services` route's first service's group.
fn route_upstream(
    cx: &mut Lowering<'_>,
    at: &str,
    r: &RouteSection,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Option<usize> {
    let services = r.kea.as_ref().and_then(|k| k.services.as_ref());
    match (&r.upstream, services) {
        (Some(name), None) => {
            let u = index(name);
            if u.is_none() {
                cx.err(
                    format!("{at}.upstream"),
                    format!("unknown upstream `{name}`"),
                );
            }
            u
        }
        (Some(_), Some(_)) => {
            cx.err(
                format!("{at}.upstream"),
                "a `kea.services` route sends each command to its service's group: remove `upstream`",
            );
            None
        }
        (None, Some(s)) => s.values().next().and_then(|name| index(name)),
        (None, None) => {
            cx.err(
                format!("{at}.upstream"),
                "missing: every route needs `upstream` (a Kea agent route may name `kea.services` instead)",
            );
            None
        }
    }
}

/// A route's `rate_limit:`; the burst defaults to one second's worth.
fn lower_rate_limit(cx: &mut Lowering<'_>, at: &str, l: &RateLimitSection) -> RateLimitSettings {
    let rps = l.requests_per_second;
    if !(rps.is_finite() && (1e-6..=1e9).contains(&rps)) {
        cx.err(
            format!("{at}.rate_limit.requests_per_second"),
            "must be between 0.000001 and 1000000000",
        );
    }
    if l.burst == Some(0) {
        cx.err(format!("{at}.rate_limit.burst"), "must be at least 1");
    }
    RateLimitSettings {
        requests_per_second: rps,
        burst: l
            .burst
            .unwrap_or_else(|| rps.ceil().clamp(1.0, f64::from(u32::MAX)) as u32),
    }
}

/// A `WWW-Authenticate` realm: it goes into a quoted header value as is, and a header value
/// is visible ASCII (anything else would fail every 401 of the route, not the load).
fn realm(cx: &mut Lowering<'_>, at: &str, realm: &str) {
    if realm.is_empty()
        || realm.contains(['"', '\\'])
        || !realm.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        cx.err(
            at,
            "must be non-empty printable ASCII, without quotes or backslashes",
        );
    }
}

/// A route's `basic_auth:`.
fn lower_route_basic_auth(
    cx: &mut Lowering<'_>,
    at: &str,
    b: &BasicAuthSection,
) -> BasicAuthSettings {
    realm(cx, &format!("{at}.basic_auth.realm"), &b.realm);
    BasicAuthSettings {
        users_file: cx.path(&b.users_file),
        realm: b.realm.clone(),
    }
}

fn lower_kea(
    cx: &mut Lowering<'_>,
    at: &str,
    k: &KeaSection,
    index: &dyn Fn(&str) -> Option<usize>,
) -> KeaSettings {
    let target = match (&k.daemon, &k.services) {
        (Some(_), Some(_)) => {
            cx.err(
                format!("{at}.daemon"),
                "`daemon` and `services` exclude each other: a route fronts one daemon, or is the agent for several",
            );
            KeaTarget::Agent
        }
        (Some(d), None) => {
            if !is_service_name(d) {
                cx.err(
                    format!("{at}.daemon"),
                    format!("`{d}` is not a Kea service name (dhcp4, dhcp6, d2, …; not `ca`)"),
                );
            }
            KeaTarget::Daemon(d.clone())
        }
        (None, Some(map)) => {
            if map.is_empty() {
                cx.err(
                    format!("{at}.services"),
                    "map at least one service to an upstream",
                );
            }
            let mut out = Vec::new();
            for (svc, group) in map {
                if !is_service_name(svc) {
                    cx.err(
                        format!("{at}.services.{svc}"),
                        format!("`{svc}` is not a Kea service name (dhcp4, dhcp6, d2, …; `ca` is Gatehouse itself here)"),
                    );
                }
                match index(group) {
                    Some(i) => out.push((svc.clone(), i)),
                    None => {
                        cx.err(
                            format!("{at}.services.{svc}"),
                            format!("unknown upstream `{group}`"),
                        );
                    }
                }
            }
            KeaTarget::Services(out)
        }
        (None, None) => KeaTarget::Agent,
    };
    let rules = k
        .rules
        .iter()
        .enumerate()
        .map(|(j, rule)| {
            let rat = format!("{at}.rules[{j}].identity");
            if rule.identity.is_empty() {
                cx.err(&rat, "must list at least one identity");
            }
            KeaRule {
                identity: cx.matchers(&rat, &rule.identity),
                commands: rule.commands.clone(),
                services: rule.services.clone(),
            }
        })
        .collect();
    let max_answer = cx.bytes(&format!("{at}.max_answer"), k.max_answer);
    if max_answer < 1024 {
        cx.err(format!("{at}.max_answer"), "must be at least 1KiB");
    }
    KeaSettings {
        target,
        fan_out: k.fan_out,
        max_body: cx.bytes(&format!("{at}.max_body"), k.max_body),
        max_answer,
        rules,
        default: k.default,
    }
}

/// A Kea service name as `service` lists it: lowercase letters, digits, `-`; `ca` is the agent.
fn is_service_name(s: &str) -> bool {
    !s.is_empty()
        && s != "ca"
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn lower_cluster(
    cx: &mut Lowering<'_>,
    c: &ClusterSection,
    index: &dyn Fn(&str) -> Option<usize>,
) -> ClusterSettings {
    let routes = lower_cluster_routes(cx, c, index);
    let upstream_identity = c
        .upstream_identity
        .as_ref()
        .map(|id| lower_upstream_identity(cx, id));
    let policy = match &c.policy {
        None => icinga_policy(),
        Some(rules) => lower_policy(cx, rules),
    };
    let limits = lower_cluster_limits(cx, &c.limits);
    ClusterSettings {
        routes,
        upstream_identity,
        limits,
        policy,
        max_violations: c.max_violations,
    }
}

/// `cluster.routes`: which group a link goes to, by the SNI it asked for.
fn lower_cluster_routes(
    cx: &mut Lowering<'_>,
    c: &ClusterSection,
    index: &dyn Fn(&str) -> Option<usize>,
) -> Vec<ClusterRouteSettings> {
    if c.routes.is_empty() {
        cx.err("cluster.routes", "at least one route is needed");
    }
    let mut routes = Vec::new();
    for (i, r) in c.routes.iter().enumerate() {
        let upstream = index(&r.upstream);
        if upstream.is_none() {
            cx.err(
                format!("cluster.routes[{i}].upstream"),
                format!("unknown upstream `{}`", r.upstream),
            );
        }
        let sni = cx.host(format!("cluster.routes[{i}].sni"), &r.sni);
        if let (Some(sni), Some(upstream)) = (sni, upstream) {
            routes.push(ClusterRouteSettings {
                sni,
                upstream,
                toward: r.toward,
            });
        }
    }
    routes
}

/// `cluster.upstream_identity`; its folder must exist now, its files are checked on load.
fn lower_upstream_identity(
    cx: &mut Lowering<'_>,
    id: &UpstreamIdentitySection,
) -> UpstreamIdentitySettings {
    let cert_dir = cx.path(&id.cert_dir);
    if !cert_dir.is_dir() {
        cx.err(
            "cluster.upstream_identity.cert_dir",
            format!("{}: not a directory", cert_dir.display()),
        );
    }
    UpstreamIdentitySettings {
        cert_dir,
        missing: id.missing,
    }
}

/// `cluster.limits`, refusing any that would refuse every link or message.
fn lower_cluster_limits(cx: &mut Lowering<'_>, l: &ClusterLimitsSection) -> ClusterLimits {
    if l.anonymous_max_per_ip == 0 {
        cx.err(
            "cluster.limits.anonymous_max_per_ip",
            "must be at least 1 (set anonymous_max_clients: 0 to refuse anonymous links)",
        );
    }
    if l.certificate_request_size < ByteSize(1024) {
        cx.err(
            "cluster.limits.certificate_request_size",
            "must be at least 1KiB",
        );
    }
    if l.anonymous_message_size > l.message_size {
        cx.err(
            "cluster.limits.anonymous_message_size",
            "must not exceed message_size",
        );
    }
    if l.max_links_per_identity == 0 {
        cx.err(
            "cluster.limits.max_links_per_identity",
            "must be at least 1 (a newer link replaces the oldest)",
        );
    }
    let limits = ClusterLimits {
        max_links_per_identity: l.max_links_per_identity,
        anonymous_max_clients: l.anonymous_max_clients,
        anonymous_max_per_ip: l.anonymous_max_per_ip,
        certificate_request_size: cx.bytes(
            "cluster.limits.certificate_request_size",
            l.certificate_request_size,
        ),
        anonymous_message_size: cx.bytes(
            "cluster.limits.anonymous_message_size",
            l.anonymous_message_size,
        ),
        message_size: cx.bytes("cluster.limits.message_size", l.message_size),
        parent_message_size: cx.bytes("cluster.limits.parent_message_size", l.parent_message_size),
        idle_timeout: l.idle_timeout.get(),
        anonymous_idle_timeout: l.anonymous_idle_timeout.get(),
        anonymous_max_lifetime: l.anonymous_max_lifetime.get(),
    };
    if limits.anonymous_max_lifetime.is_zero() {
        cx.err(
            "cluster.limits.anonymous_max_lifetime",
            "must be more than 0",
        );
    }
    limits
}

fn lower_policy(cx: &mut Lowering<'_>, rules: &[PolicyRuleSection]) -> Vec<PolicyRule> {
    rules
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            if r.allow.is_none() && r.deny.is_none() {
                cx.err(
                    format!("cluster.policy[{i}]"),
                    "needs `allow`, `deny` or both",
                );
            }
            let identity = Matcher::parse(&r.identity)
                .map_err(|msg| cx.err(format!("cluster.policy[{i}].identity"), msg))
                .ok()?;
            if identity.is_token() {
                cx.err(
                    format!("cluster.policy[{i}].identity"),
                    "cluster links carry no bearer token: sub:, client: and claim: never match here",
                );
            }
            Some(PolicyRule {
                identity,
                direction: r.direction,
                allow: r.allow.clone(),
                deny: r.deny.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// Lowers a YAML fragment with `f`, for unit tests of the modules that use the model.
#[cfg(test)]
fn fragment<S: serde::de::DeserializeOwned, T>(
    yaml: &str,
    f: impl FnOnce(&mut Lowering<'_>, &S) -> T,
) -> T {
    let section: S = serde_yaml::from_str(yaml).expect("fragment parses");
    let mut cx = Lowering {
        base: Path::new("."),
        errs: Vec::new(),
    };
    let out = f(&mut cx, &section);
    assert!(cx.errs.is_empty(), "fragment does not lower: {:?}", cx.errs);
    out
}

/// A `cluster.policy` list from YAML (unit tests).
#[cfg(test)]
pub(crate) fn policy_from_yaml(yaml: &str) -> Vec<PolicyRule> {
    fragment(yaml, |cx, rules: &Vec<PolicyRuleSection>| {
        lower_policy(cx, rules)
    })
}

/// A route's `kea:` block from YAML (unit tests).
#[cfg(test)]
pub(crate) fn kea_from_yaml(yaml: &str) -> KeaSettings {
    fragment(yaml, |cx, k: &KeaSection| {
        lower_kea(cx, "kea", k, &|_| None)
    })
}

/// One listener from YAML (unit tests).
#[cfg(test)]
pub(crate) fn listener_from_yaml(yaml: &str) -> ListenerSettings {
    let doc = format!("listeners: [{yaml}]");
    let mut c = Config::parse(&doc, Path::new(".")).expect("listener lowers");
    c.listeners.remove(0)
}

/// `server:` from YAML (unit tests).
#[cfg(test)]
pub(crate) fn server_from_yaml(yaml: &str) -> ServerSettings {
    fragment(yaml, |cx, s: &ServerSection| lower_server(cx, s))
}

/// Reports a parse error under its full key path (serde_yaml alone stops at the parent map
/// for errors raised inside a value), with the line where the parser gives one.
fn yaml_error(err: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let line = inner.location().map(|l| l.line());
    let mut msg = inner.to_string();
    // serde_yaml prefixes its own (shorter) path and suffixes the position: drop both.
    if let Some((head, rest)) = msg.split_once(": ") {
        if !head.contains(' ') {
            msg = rest.to_string();
        }
    }
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    if let Some(l) = line {
        msg.push_str(&format!(" (line {l})"));
    }
    let path = if path == "." { String::new() } else { path };
    ConfigError::new(path, msg)
}

/// `issuers:`, in name order (routes refer to them by index).
fn lower_issuers(
    cx: &mut Lowering<'_>,
    issuers: &BTreeMap<String, IssuerSection>,
) -> Vec<IssuerSettings> {
    issuers
        .iter()
        .map(|(name, s)| {
            let at = format!("issuers.{name}");
            if name.is_empty() || name.contains([':', ' ', '/']) {
                cx.err(at.clone(), "an issuer name is non-empty, without `:`, `/` or spaces");
            }
            if s.issuer.is_empty() {
                cx.err(format!("{at}.issuer"), "must not be empty");
            }
            let audience = match &s.audience {
                OneOrMany::One(a) => vec![a.clone()],
                OneOrMany::Many(list) => list.clone(),
            };
            if audience.is_empty() || audience.iter().any(String::is_empty) {
                cx.err(format!("{at}.audience"), "needs at least one non-empty audience");
            }
            let keys = match (&s.jwks_url, &s.jwks_file) {
                (Some(_), Some(_)) => {
                    cx.err(at.clone(), "`jwks_url` and `jwks_file` exclude each other");
                    IssuerKeys::Discovery
                }
                (Some(u), None) => {
                    https_url(cx, &format!("{at}.jwks_url"), u);
                    IssuerKeys::Url(u.clone())
                }
                (None, Some(f)) => IssuerKeys::File(cx.path(f)),
                (None, None) => {
                    https_url(cx, &format!("{at}.issuer"), &s.issuer);
                    IssuerKeys::Discovery
                }
            };
            if s.algorithms.is_empty() {
                cx.err(format!("{at}.algorithms"), "needs at least one of RS256, ES256, EdDSA");
            }
            for (j, a) in s.algorithms.iter().enumerate() {
                if !["RS256", "ES256", "EdDSA"].contains(&a.as_str()) {
                    cx.err(
                        format!("{at}.algorithms[{j}]"),
                        format!("`{a}` is not accepted: RS256, ES256 or EdDSA (never `none`, never HS* with a public key)"),
                    );
                }
            }
            issuer_bounds(cx, &at, s);
            let leeway = s.leeway.get();
            IssuerSettings {
                name: name.clone(),
                issuer: s.issuer.clone(),
                audience,
                keys,
                algorithms: s.algorithms.clone(),
                leeway,
                typ: s.typ.clone(),
                ca: s.ca.as_deref().map(|p| cx.path(p)),
                fetch_timeout: s.fetch_timeout.get(),
                refresh_interval: s.refresh_interval.get(),
                min_refresh_interval: s.min_refresh_interval.get(),
                max_stale: s.max_stale.get(),
            }
        })
        .collect()
}

/// An issuer's durations (and `ca` beside a file, which nothing would read).
fn issuer_bounds(cx: &mut Lowering<'_>, at: &str, s: &IssuerSection) {
    if s.leeway.get() > Duration::from_secs(300) {
        cx.err(format!("{at}.leeway"), "at most 5m");
    }
    for (key, d) in [
        ("fetch_timeout", s.fetch_timeout.get()),
        ("refresh_interval", s.refresh_interval.get()),
        ("max_stale", s.max_stale.get()),
    ] {
        if d.is_zero() {
            cx.err(format!("{at}.{key}"), "must be more than 0");
        }
    }
    if s.max_stale.get() < s.refresh_interval.get() {
        cx.err(
            format!("{at}.max_stale"),
            "must be at least refresh_interval",
        );
    }
    if s.min_refresh_interval.get() < Duration::from_secs(1) {
        cx.err(
            format!("{at}.min_refresh_interval"),
            "at least 1s (unknown `kid`s must not make Gatehouse fetch back to back)",
        );
    }
    if s.ca.is_some() && s.jwks_file.is_some() {
        cx.err(
            format!("{at}.ca"),
            "keys from `jwks_file` are not fetched: remove `ca`",
        );
    }
}

fn https_url(cx: &mut Lowering<'_>, at: &str, u: &str) {
    let ok = u.parse::<http::Uri>().is_ok_and(|p| {
        p.scheme_str() == Some("https")
            && p.host().is_some()
            && !p.authority().is_some_and(|a| a.as_str().contains('@'))
    });
    if !ok {
        cx.err(at, format!("`{u}` is not an https:// URL (keys are fetched over TLS only; a file is `jwks_file`)"));
    }
}

/// A route's `bearer:`; its issuers are resolved to indices.
fn lower_bearer(
    cx: &mut Lowering<'_>,
    at: &str,
    b: &BearerSection,
    all: &[IssuerSettings],
) -> BearerSettings {
    if b.issuers.is_empty() {
        cx.err(format!("{at}.bearer.issuers"), "names no issuer");
    }
    let issuers = b
        .issuers
        .iter()
        .enumerate()
        .filter_map(|(j, name)| {
            // `all` is in name order, as the map was: a position there is the model's index.
            let i = all.iter().position(|s| s.name == *name);
            if i.is_none() {
                cx.err(
                    format!("{at}.bearer.issuers[{j}]"),
                    format!("unknown issuer `{name}` (not a key of `issuers:`)"),
                );
            }
            i
        })
        .collect();
    realm(cx, &format!("{at}.bearer.realm"), &b.realm);
    let settings = BearerSettings {
        issuers,
        require: b.require,
        forward: b.forward,
        realm: b.realm.clone(),
    };
    distinct_iss(cx, at, &settings, all);
    settings
}

/// Two of a route's issuers with one `iss`: the second would never be asked.
fn distinct_iss(cx: &mut Lowering<'_>, at: &str, b: &BearerSettings, issuers: &[IssuerSettings]) {
    let mut seen = HashSet::new();
    for (j, &i) in b.issuers.iter().enumerate() {
        if let Some(s) = issuers.get(i) {
            if !seen.insert(s.issuer.as_str()) {
                cx.err(
                    format!("{at}.bearer.issuers[{j}]"),
                    format!("`{}` has the same `issuer` as one before it", s.name),
                );
            }
        }
    }
}

/// `sub:`, `client:` and `claim:` only ever match on a route that takes tokens.
fn token_matchers_need_bearer(cx: &mut Lowering<'_>, at: &str, r: &RouteSection, bearer: bool) {
    if r.bearer.is_some() && r.basic_auth.is_some() {
        cx.err(
            format!("{at}.bearer"),
            "a route takes basic credentials or bearer tokens, not both (one Authorization header)",
        );
    }
    if bearer {
        return;
    }
    let rules = r.kea.iter().flat_map(|k| k.rules.iter().enumerate());
    let lists = [
        ("allow", r.allow.clone().unwrap_or_default()),
        ("deny", r.deny.clone()),
    ]
    .into_iter()
    .flat_map(|(key, l)| {
        l.into_iter()
            .enumerate()
            .map(move |(j, m)| (format!("{key}[{j}]"), m))
    })
    .chain(rules.flat_map(|(i, rule)| {
        rule.identity
            .iter()
            .enumerate()
            .map(move |(j, m)| (format!("kea.rules[{i}].identity[{j}]"), m.clone()))
    }));
    for (key, m) in lists {
        if Matcher::parse(&m).is_ok_and(|m| m.is_token()) {
            cx.err(
                format!("{at}.{key}"),
                format!("`{m}` names a token claim, but the route has no `bearer:` to take tokens"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file named by a relative path still yields absolute paths: after `--daemon` the
    /// working folder is `/`, and reloads read these paths again.
    #[test]
    fn a_relative_config_path_resolves_to_absolute_paths() {
        let dir = tempfile::Builder::new().tempdir_in(".").unwrap();
        let yaml = "server: { pid_file: run/gh.pid }\nlisteners: [ { name: h, address: \"127.0.0.1:1\" } ]\nupstreams: { u: { peers: [\"127.0.0.1:9\"] } }\nroutes: [ { name: r, upstream: u } ]\n";
        std::fs::write(dir.path().join("g.yaml"), yaml).unwrap();
        let cwd = std::env::current_dir().unwrap();
        let relative = dir
            .path()
            .strip_prefix(&cwd)
            .unwrap_or(dir.path())
            .join("g.yaml");
        assert!(relative.is_relative(), "{}", relative.display());
        let c = Config::load(&relative).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            c.server.pid_file.is_absolute(),
            "{}",
            c.server.pid_file.display()
        );
        assert!(
            c.server.pid_file.ends_with("run/gh.pid") && c.server.pid_file.starts_with(&cwd),
            "{}",
            c.server.pid_file.display()
        );
    }

    /// `read_buffer` defaults to 64 KiB on every listener; a value set is kept.
    #[test]
    fn read_buffer_defaults_to_64_kib() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = r#"
listeners:
  - { name: h, address: "127.0.0.1:1", protocols: [http] }
  - { name: c, address: "127.0.0.1:2", protocols: [cluster] }
  - { name: b, address: "127.0.0.1:3", protocols: [http, cluster] }
  - { name: s, address: "127.0.0.1:4", protocols: [cluster], read_buffer: 4KiB }
upstreams: { u: { peers: ["127.0.0.1:9"] } }
routes: [ { name: r, upstream: u } ]
cluster: { routes: [ { sni: "*", upstream: u } ] }
"#;
        let c = Config::parse(yaml, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
        let rb: Vec<usize> = c.listeners.iter().map(|l| l.read_buffer).collect();
        assert_eq!(rb, [65536, 65536, 65536, 4096]);
    }

    /// Relative paths resolve against the file's folder once, here; values arrive parsed.
    #[test]
    fn paths_resolve_once_and_values_arrive_parsed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ids")).unwrap();
        let yaml = r#"
server: { pid_file: run/gh.pid, upgrade_sock: /abs/gh.sock }
listeners:
  - name: edge
    address: "127.0.0.1:5665"
    protocols: [cluster]
    read_buffer: 2KiB
    tls: { cert: certs/server.crt, key: certs/server.key, client_ca: certs/ca.crt, client_auth: optional }
upstreams:
  zz: { peers: ["127.0.0.1:2"] }
  master: { peers: ["127.0.0.1:1"], tls: { sni: master1, ca: pki/ca.crt, client_cert: a.crt, client_key: a.key } }
routes: [ { name: r, host: "*.example.org", upstream: zz, allow: ["cn:ops-*"] } ]
cluster:
  routes: [ { sni: "*", upstream: master } ]
  upstream_identity: { cert_dir: ids }
audit: { path: audit.jsonl }
"#;
        let c = Config::parse(yaml, dir.path()).unwrap();
        let d = dir.path();
        assert_eq!(c.server.pid_file, d.join("run/gh.pid"));
        assert_eq!(c.server.upgrade_sock, Path::new("/abs/gh.sock"));
        let l = &c.listeners[0];
        assert_eq!(l.address, "127.0.0.1:5665".parse::<SocketAddr>().unwrap());
        assert_eq!(l.read_buffer, 2048);
        let t = l.tls.as_ref().unwrap();
        assert_eq!(t.default_cert.cert, d.join("certs/server.crt"));
        assert_eq!(
            t.client_ca.as_deref(),
            Some(d.join("certs/ca.crt").as_path())
        );
        assert!(
            !t.session_resumption,
            "cluster-only listeners default to no resumption"
        );
        // Upstreams are sorted by name; references are indices into that order.
        assert_eq!(c.upstreams[0].name, "master");
        assert_eq!(c.upstream_index("zz"), Some(1));
        assert_eq!(c.routes[0].upstream, 1);
        assert!(c.routes[0].host.matches("a.example.org"));
        assert_eq!(c.routes[0].allow, Some(vec![Matcher::Cn("ops-*".into())]));
        let tls = c.upstreams[0].tls.as_ref().unwrap();
        assert_eq!(tls.ca.as_deref(), Some(d.join("pki/ca.crt").as_path()));
        assert_eq!(tls.client.as_ref().unwrap().key, d.join("a.key"));
        let cl = c.cluster.as_ref().unwrap();
        assert_eq!(cl.routes[0].upstream, 0);
        assert_eq!(cl.routes[0].toward, Toward::Parent);
        assert_eq!(
            cl.upstream_identity.as_ref().unwrap().cert_dir,
            d.join("ids")
        );
        assert_eq!(
            cl.policy.len(),
            icinga_policy().len(),
            "no policy key = Icinga's"
        );
        assert_eq!(c.audit_path, Some(d.join("audit.jsonl")));
    }

    #[test]
    fn rate_limit_values_are_checked_and_burst_defaults_to_a_second() {
        let doc = |rl: &str| {
            format!("listeners: [{{ name: a, address: \"127.0.0.1:1\" }}]\nupstreams: {{ u: {{ peers: [\"127.0.0.1:2\"] }} }}\nroutes: [{{ name: r, upstream: u, rate_limit: {rl} }}]\n")
        };
        let c = Config::parse(&doc("{ requests_per_second: 2.5 }"), Path::new(".")).unwrap();
        assert_eq!(
            c.routes[0].rate_limit,
            Some(RateLimitSettings {
                requests_per_second: 2.5,
                burst: 3
            })
        );
        let errs = Config::parse(&doc("{ requests_per_second: 0, burst: 0 }"), Path::new("."))
            .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[0].rate_limit.requests_per_second",
                "routes[0].rate_limit.burst"
            ]
        );
    }

    /// Limits that would refuse everything are refused themselves, under their key paths.
    #[test]
    fn zero_bounds_and_zero_caps_are_refused() {
        let yaml = r#"
listeners: [{ name: a, address: "127.0.0.1:1", protocols: [cluster], max_connections_per_identity: 0 }]
upstreams: { u: { peers: ["127.0.0.1:2"], connect_timeout: 0s, tls_handshake_timeout: 0ms, read_timeout: 0s } }
cluster: { routes: [{ sni: "*", upstream: u }], limits: { max_links_per_identity: 0 } }
"#;
        let errs = Config::parse(yaml, Path::new(".")).unwrap_err();
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "cluster.limits.max_links_per_identity",
                "listeners[0].max_connections_per_identity",
                "upstreams.u.connect_timeout",
                "upstreams.u.read_timeout",
                "upstreams.u.tls_handshake_timeout",
            ],
            "{errs:?}"
        );
    }

    /// The hardening bounds refuse what would time out or refuse every connection, under their
    /// key paths; a stream cap the HTTP/2 body watch cannot follow is refused too.
    #[test]
    fn hardening_bounds_that_would_refuse_everything_are_refused() {
        let yaml = r#"
listeners: [{ name: a, address: "127.0.0.1:1", handshake_timeout: 0s, max_handshakes_per_ip: 0, max_connections: 0, body_timeout: 0s, send_timeout: 0ms, max_concurrent_streams: 0 },
            { name: b, address: "127.0.0.1:3", max_concurrent_streams: 1025 }]
upstreams: { u: { peers: ["127.0.0.1:2"], answer_timeout: 0s } }
routes: [{ name: r, upstream: u, answer_timeout: 0s }]
"#;
        let errs = Config::parse(yaml, Path::new(".")).unwrap_err();
        let mut paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "listeners[0].body_timeout",
                "listeners[0].handshake_timeout",
                "listeners[0].max_concurrent_streams",
                "listeners[0].max_connections",
                "listeners[0].max_handshakes_per_ip",
                "listeners[0].send_timeout",
                "listeners[1].max_concurrent_streams",
                "routes[0].answer_timeout",
                "upstreams.u.answer_timeout",
            ],
            "{errs:?}"
        );
    }
}
