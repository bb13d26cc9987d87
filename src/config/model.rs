//! The runtime model: the validated configuration the rest of the crate works on.
//!
//! Built from the YAML schema by `lower` (the only way in): every value is parsed once
//! (addresses, host patterns, identity matchers, durations, sizes), every relative path is
//! resolved against the config file's folder, defaults are filled in (the Icinga method
//! policy), and references are indices (`RouteSettings::upstream` indexes
//! [`Config::upstreams`]). Nothing outside `config/` sees a schema type.
//!
//! The fields are public so that embedders can read — or adjust before building — what
//! a file asked for; they stay consistent only if indices keep pointing at existing entries.

use crate::authz::Matcher;
use crate::host::HostPattern;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A validated configuration ([`Config::load`], [`Config::parse`]).
#[derive(Debug, Clone)]
pub struct Config {
    /// The folder the file's relative paths were resolved against.
    pub base_dir: PathBuf,
    /// Process settings handed to Pingora.
    pub server: ServerSettings,
    /// Where Gatehouse accepts connections, in file order.
    pub listeners: Vec<ListenerSettings>,
    /// Upstream groups, sorted by name; routes refer to them by index.
    pub upstreams: Vec<UpstreamSettings>,
    /// HTTP routes, in file order.
    pub routes: Vec<RouteSettings>,
    /// The Icinga cluster relay, if configured.
    pub cluster: Option<ClusterSettings>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The audit file; `None` = the log target `gatehouse::audit`.
    pub audit_path: Option<PathBuf>,
    /// How the access log and the cluster-link log lines are written.
    pub log_format: LogFormat,
    /// Token issuers, sorted by name; routes' `bearer` refer to them by index.
    pub issuers: Vec<IssuerSettings>,
}

/// One token issuer (`issuers.<name>`).
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The `issuers:` key (logs, metric labels).
    pub name: String,
    /// The `iss` its tokens carry.
    pub issuer: String,
    /// The `aud` values accepted (at least one).
    pub audience: Vec<String>,
    /// Where its keys come from.
    pub keys: IssuerKeys,
    /// Accepted algorithms (a non-empty subset of RS256, ES256, EdDSA).
    pub algorithms: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// Accepted `typ` headers (empty: any).
    pub typ: Vec<String>,
    /// CA file of the issuer's HTTPS server (resolved); `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// Bound on each fetch.
    pub fetch_timeout: Duration,
    /// Age at which keys are fetched again in the background.
    pub refresh_interval: Duration,
    /// Fewest time between two fetches.
    pub min_refresh_interval: Duration,
    /// How long keys serve after the last fetch that worked.
    pub max_stale: Duration,
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKeys {
    /// The discovery document's `jwks_uri` (`{issuer}/.well-known/openid-configuration`).
    Discovery,
    /// This JWK set URL (`https://`).
    Url(String),
    /// This JWK set file (resolved).
    File(PathBuf),
}

/// A route's bearer tokens (`routes[].bearer`).
#[derive(Debug, Clone)]
pub struct BearerSettings {
    /// Indices into [`Config::issuers`].
    pub issuers: Vec<usize>,
    /// What the route requires.
    pub require: BearerMode,
    /// Whether the token is sent on upstream.
    pub forward: bool,
    /// The realm of `WWW-Authenticate`.
    pub realm: String,
}

/// What a `bearer` route requires of a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BearerMode {
    /// A valid token (a certificate, if any, is still seen by certificate matchers).
    #[default]
    Token,
    /// A verified client certificate and a valid token, both.
    TokenAndCert,
    /// A valid token, or without one the connection's certificate as on any route (a token
    /// that was sent must still verify).
    TokenOrCert,
}

impl Config {
    /// The index of upstream `name` in [`Config::upstreams`].
    pub fn upstream_index(&self, name: &str) -> Option<usize> {
        self.upstreams.iter().position(|u| u.name == name)
    }
}

/// `server:` — process settings, each applied by `server::server_conf`.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Worker threads per service.
    pub threads: usize,
    /// Whether tokio may move tasks between worker threads.
    pub work_stealing: bool,
    /// Pid file (resolved).
    pub pid_file: PathBuf,
    /// Graceful-upgrade socket (resolved).
    pub upgrade_sock: PathBuf,
    /// How long work in flight gets after SIGTERM (the listeners close at once).
    pub grace_period: Duration,
    /// Then how long the runtimes' shutdown may wait for a blocked thread.
    pub graceful_shutdown_timeout: Duration,
    /// Pingora's error log (resolved), if not stderr.
    pub error_log: Option<PathBuf>,
}

/// A certificate chain file and its key file (both resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertKeyFiles {
    /// PEM chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
}

/// One listener.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Name in logs and metric labels.
    pub name: String,
    /// Where it listens.
    pub address: SocketAddr,
    /// Downstream TLS; `None` = plaintext.
    pub tls: Option<ListenerTlsSettings>,
    /// What it accepts, told apart by the first byte.
    pub protocols: Vec<Protocol>,
    /// How long a client may take to send its first byte.
    pub first_byte_timeout: Duration,
    /// How long an HTTP/1 request head may take.
    pub header_timeout: Duration,
    /// Read buffer below TLS, in bytes; 0 = none (the default of `[cluster]`-only listeners).
    pub read_buffer: usize,
    /// Idle limit of a keep-alive connection.
    pub keepalive_timeout: Duration,
    /// Requests served on one HTTP/1 connection.
    pub keepalive_requests: u32,
    /// Connections open at once per caller (CN or certificate fingerprint, else client IP); `None` = no limit.
    pub max_connections_per_identity: Option<usize>,
    /// From accept to a finished TLS handshake.
    pub handshake_timeout: Duration,
    /// Connections in the TLS handshake at once per client address.
    pub max_handshakes_per_ip: usize,
    /// Connections open at once; `None` = this listener's share of the descriptor limit
    /// ([`crate::server::fd_budget`]).
    pub max_connections: Option<usize>,
    /// Longest gap between two pieces of a request body.
    pub body_timeout: Duration,
    /// Longest wait for a client to take bytes written to it.
    pub send_timeout: Duration,
    /// HTTP/2 streams open at once per connection.
    pub max_concurrent_streams: u32,
}

impl ListenerSettings {
    /// Whether the listener accepts `p`.
    pub fn accepts(&self, p: Protocol) -> bool {
        self.protocols.contains(&p)
    }
}

/// A listener's TLS.
#[derive(Debug, Clone)]
pub struct ListenerTlsSettings {
    /// The certificate served when no SNI certificate matches.
    pub default_cert: CertKeyFiles,
    /// Certificates chosen by SNI, first match wins.
    pub sni_certs: Vec<SniCertSettings>,
    /// Whether clients must present a certificate.
    pub client_auth: ClientAuth,
    /// CAs client certificates are verified against.
    pub client_ca: Option<PathBuf>,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// BoringSSL curve list, if not the default.
    pub curves: Option<String>,
    /// Application protocols accepted.
    pub alpn: Alpn,
    /// Session tickets and cache (default: on when the listener carries HTTP).
    pub session_resumption: bool,
    /// Re-read this block's files when they change on disk (see [`crate::reload::watch`]).
    pub watch: bool,
}

/// A certificate served for the SNI names it lists.
#[derive(Debug, Clone)]
pub struct SniCertSettings {
    /// The names (exact or `*.suffix`).
    pub names: Vec<HostPattern>,
    /// Its files.
    pub files: CertKeyFiles,
}

/// One upstream group.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The `upstreams:` key.
    pub name: String,
    /// Its TCP peers.
    pub peers: Vec<SocketAddr>,
    /// Its Kea UNIX control sockets (`unix:/path` peers); a group has these or TCP peers.
    pub unix: Vec<PathBuf>,
    /// How a peer is picked.
    pub load_balancing: LoadBalancing,
    /// Active health probe, if any.
    pub health_check: Option<HealthProbe>,
    /// TCP connect limit.
    pub connect_timeout: Duration,
    /// TLS handshake limit (after the TCP connect).
    pub tls_handshake_timeout: Duration,
    /// Limit on each read and write.
    pub read_timeout: Duration,
    /// Limit on a whole answer, head and body, from the request sent.
    pub answer_timeout: Duration,
    /// How long pooled idle connections are kept.
    pub idle_timeout: Duration,
    /// Upstream TLS; `None` = plaintext.
    pub tls: Option<UpstreamTlsSettings>,
    /// Basic credentials sent to every peer.
    pub basic_auth: Option<UpstreamAuthSettings>,
}

/// An upstream group's active health probe.
#[derive(Debug, Clone)]
pub struct HealthProbe {
    /// TCP connect or HTTP GET.
    pub kind: ProbeKind,
    /// Time between probes.
    pub interval: Duration,
    /// Path of the HTTP probe.
    pub path: http::Uri,
    /// `Host` of the HTTP probe (default: the upstream's SNI, else `localhost`).
    pub host: Option<String>,
}

/// Upstream TLS.
#[derive(Debug, Clone)]
pub struct UpstreamTlsSettings {
    /// CA store peers are verified against (default: the system's).
    pub ca: Option<PathBuf>,
    /// Client certificate presented to peers.
    pub client: Option<CertKeyFiles>,
    /// SNI sent (and the name verified).
    pub sni: String,
    /// Verify the peer's chain.
    pub verify_cert: bool,
    /// Verify the peer's name against `sni` (or `alt_cn`).
    pub verify_hostname: bool,
    /// Another name the peer's certificate may carry.
    pub alt_cn: Option<String>,
    /// BoringSSL curve list, if not the default.
    pub curves: Option<String>,
    /// Application protocols offered.
    pub alpn: Alpn,
    /// Re-read this block's files when they change on disk (see [`crate::reload::watch`]).
    pub watch: bool,
}

/// One HTTP route.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// Name in logs and metric labels.
    pub name: String,
    /// Host (SNI or `Host`) it serves.
    pub host: HostPattern,
    /// Path prefix it serves (longest prefix wins).
    pub path_prefix: String,
    /// Index into [`Config::upstreams`]. On a `kea.services` route, the group of its first
    /// service (such a route answers every request in the Kea flow, by service).
    pub upstream: usize,
    /// Who may use it (`None` = everyone not denied).
    pub allow: Option<Vec<Matcher>>,
    /// Who may not.
    pub deny: Vec<Matcher>,
    /// How the caller's identity is passed upstream.
    pub forward_identity: ForwardIdentity,
    /// Kea command authorization, for routes to a Kea Control Agent.
    pub kea: Option<KeaSettings>,
    /// Per-caller request rate.
    pub rate_limit: Option<RateLimitSettings>,
    /// HTTP basic credentials asked of callers.
    pub basic_auth: Option<BasicAuthSettings>,
    /// Bearer tokens taken from callers.
    pub bearer: Option<BearerSettings>,
    /// The bound on a whole answer, instead of the upstream's (`None`: the upstream's).
    pub answer_timeout: Option<Duration>,
}

/// A route's basic authentication.
#[derive(Debug, Clone)]
pub struct BasicAuthSettings {
    /// `name:bcrypt-hash` lines.
    pub users_file: PathBuf,
    /// The realm of `WWW-Authenticate`.
    pub realm: String,
}

/// The basic credentials an upstream group's peers get.
#[derive(Debug, Clone)]
pub struct UpstreamAuthSettings {
    /// The user name.
    pub user: String,
    /// The file holding the password (first line).
    pub password_file: PathBuf,
}

/// A route's per-caller token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimitSettings {
    /// Sustained requests per second (> 0).
    pub requests_per_second: f64,
    /// Bucket size (≥ 1).
    pub burst: u32,
}

/// A route's Kea command rules.
#[derive(Debug, Clone)]
pub struct KeaSettings {
    /// What the route's upstream is: an agent, one daemon, or a daemon per service.
    pub target: KeaTarget,
    /// Whether commands go to one peer or to all of them (per group).
    pub fan_out: FanOut,
    /// Largest request body read, in bytes.
    pub max_body: usize,
    /// Largest answer held whole (merges, filtered answers), in bytes.
    pub max_answer: usize,
    /// Rules, first identity match decides.
    pub rules: Vec<KeaRule>,
    /// Verdict when no rule matches.
    pub default: KeaDefault,
}

/// What stands behind a Kea route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeaTarget {
    /// A Kea Control Agent (Kea ≤ 3.0): commands go as sent, `service` included.
    Agent,
    /// One daemon (`kea.daemon`): no `service` means this one; another is refused; `service`
    /// is removed before forwarding.
    Daemon(String),
    /// Gatehouse is the agent (`kea.services`): service name → upstream index, by name.
    Services(Vec<(String, usize)>),
}

/// Where a Kea route sends an allowed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FanOut {
    /// One peer, picked by the load balancer.
    #[default]
    None,
    /// Every peer of the group, in parallel; the answers are merged into one list.
    All,
}

/// One Kea rule.
#[derive(Debug, Clone)]
pub struct KeaRule {
    /// Whom it is about.
    pub identity: Vec<Matcher>,
    /// Commands allowed / denied.
    pub commands: Option<AllowDeny>,
    /// Services allowed / denied.
    pub services: Option<AllowDeny>,
}

/// The cluster relay.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Upstream by the client's SNI, first match wins.
    pub routes: Vec<ClusterRouteSettings>,
    /// Certificates presented upstream per agent, if not Gatehouse's own.
    pub upstream_identity: Option<UpstreamIdentitySettings>,
    /// Size, time and count limits.
    pub limits: ClusterLimits,
    /// The method policy (Icinga's defaults when the file has none).
    pub policy: Vec<PolicyRule>,
    /// Denied messages after which a link is closed.
    pub max_violations: u32,
}

/// One `cluster.routes` entry.
#[derive(Debug, Clone)]
pub struct ClusterRouteSettings {
    /// The SNI it serves (the endpoint name the client dialled).
    pub sni: HostPattern,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Where the upstream sits in Icinga's hierarchy, relative to the client.
    pub toward: Toward,
}

/// Where a cluster route's upstream sits relative to the client that dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Toward {
    /// The upstream is the parent (an agent dialling its master): the usual way.
    #[default]
    Parent,
    /// The upstream is a child (a master dialling an agent whose Endpoint has no `host`).
    Child,
}

/// `cluster.upstream_identity`.
#[derive(Debug, Clone)]
pub struct UpstreamIdentitySettings {
    /// `<cn>.crt` / `<cn>.key` per agent (resolved).
    pub cert_dir: PathBuf,
    /// What happens to an agent without files.
    pub missing: MissingIdentity,
}

/// `cluster.limits`, in bytes and durations.
#[derive(Debug, Clone)]
pub struct ClusterLimits {
    /// Authenticated links open at once per CN and route (≥ 1); a newer link closes the oldest.
    pub max_links_per_identity: usize,
    /// Anonymous links open at once, all clients.
    pub anonymous_max_clients: usize,
    /// Anonymous links open at once from one IP.
    pub anonymous_max_per_ip: usize,
    /// Largest `cert_request` parameter spliced.
    pub certificate_request_size: usize,
    /// Largest message from an anonymous client.
    pub anonymous_message_size: usize,
    /// Largest message from the child side.
    pub message_size: usize,
    /// Largest message from the parent side.
    pub parent_message_size: usize,
    /// Idle limit of an authenticated link.
    pub idle_timeout: Duration,
    /// Idle limit of an anonymous link.
    pub anonymous_idle_timeout: Duration,
    /// The longest an anonymous link stays open.
    pub anonymous_max_lifetime: Duration,
}

/// One method-policy rule.
#[derive(Debug, Clone)]
pub struct PolicyRule {
    /// Whom it is about.
    pub identity: Matcher,
    /// Which messages it looks at.
    pub direction: PolicyDirection,
    /// Only these methods pass (globs).
    pub allow: Option<Vec<String>>,
    /// These never pass (globs).
    pub deny: Vec<String>,
}

/// A protocol a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2 (anything whose first byte is not a digit).
    Http,
    /// Icinga 2 cluster JSON-RPC in netstrings (first byte is a digit).
    Cluster,
}

/// Whether and how clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// The handshake fails without a certificate signed by `client_ca`.
    Required,
    /// Any certificate (or none) is accepted; only a verified one makes the client authenticated.
    Optional,
    /// No certificate is requested.
    None,
}

/// Lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[serde(rename = "tls1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "tls1.3")]
    Tls13,
}

/// How a peer is picked from an upstream group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancing {
    /// Each peer in turn.
    #[default]
    RoundRobin,
    /// A peer at random.
    Random,
    /// The same client identity (CN, else address) sticks to the same peer.
    ConsistentHash,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// A TCP connect succeeds.
    Tcp,
    /// `GET path` over the upstream's own TLS settings answers 2xx.
    Http,
}

/// Which application protocols a TLS handshake offers (upstream) or accepts (listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Alpn {
    /// HTTP/1.1 only.
    #[default]
    H1,
    /// HTTP/2 only.
    H2,
    /// HTTP/2 preferred, HTTP/1.1 accepted.
    #[serde(rename = "h2h1")]
    H2H1,
}

/// How the client identity is passed upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForwardIdentity {
    /// Nothing (any incoming `X-Forwarded-Client-Cert` is still removed).
    #[default]
    None,
    /// Envoy's `X-Forwarded-Client-Cert: Hash=…;Subject="…";URI=…;DNS=…`.
    Xfcc,
}

/// Verdict for identities no rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeaDefault {
    /// Refuse (403).
    #[default]
    Deny,
    /// Forward.
    Allow,
}

/// A glob allow list and deny list; deny wins, and an absent allow list allows everything.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AllowDeny {
    /// Only these pass.
    #[serde(default)]
    pub allow: Option<Vec<String>>,
    /// These never pass.
    #[serde(default)]
    pub deny: Vec<String>,
}

/// What to do when `cert_dir` has no certificate for an authenticated client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MissingIdentity {
    /// Close the link (the master would otherwise see the wrong identity).
    #[default]
    Reject,
    /// Connect with the upstream's own client certificate.
    Own,
}

/// Which messages a policy rule looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PolicyDirection {
    /// Up the hierarchy: client → upstream on the usual route, upstream → client on a
    /// `toward: child` route.
    Upstream,
    /// Down the hierarchy (the other way).
    Downstream,
    /// Either way.
    #[default]
    Both,
}

/// `log_format:` — how the access log (`gatehouse::access`) and the cluster-link log
/// (`gatehouse::cluster`, link open and close) write their lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` text, client-chosen values escaped ([`crate::logsafe::Esc`]).
    #[default]
    Text,
    /// One JSON object per line with the same fields, typed (see [`crate::logging`]).
    Json,
}
