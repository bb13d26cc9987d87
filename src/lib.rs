//! Gatehouse: an edge proxy for control planes (ISC Kea, Icinga 2) on Pingora + BoringSSL.
//!
//! # Layout
//!
//! The data path reads top-down: accept → TLS → demux → HTTP | cluster → upstream.
//!
//! - [`config`]: the YAML file lowered into the validated runtime model ([`Config`]); the serde
//!   schema stays private inside it, errors carry key paths.
//! - [`identity`]: what a handshake says about the caller ([`identity::TlsInfo`]: SNI, CN,
//!   SANs, SPIFFE URIs, fingerprint), read once per connection.
//! - [`host`]: host and SNI patterns, shared by routes, `sni_certs` and cluster routes.
//! - [`tls`]: certificate material, downstream TLS settings (SNI certs, client auth), and
//!   upstream trust ([`tls::upstream`]).
//! - [`demux`]: the per-listener Pingora app: reads the first byte, replays it
//!   ([`demux::PrefixedIo`]) into the HTTP proxy or the cluster relay.
//! - [`http`]: the `ProxyHttp` — path normalisation ([`http::path`]), routing ([`http::route`]),
//!   route access, identity forwarding, Kea command authorization ([`http::kea`]), filters
//!   ([`http::filter`]) with the built-in ones (per-caller rates, [`http::limit`]; `list-commands`
//!   cut to the caller), Kea dispatch to daemons by service and fan-out to every peer ([`http::kea::dispatch`]); failure answers, access log.
//! - [`authz`]: [`authz::Identity`] and the one matcher language of every rule (`cn:`, `dns:`,
//!   `spiffe://`, `fingerprint:`, `anonymous`, `*`), first-match rule lists, route admission.
//! - [`audit`]: typed audit events and their sink (the JSON-lines file is the built-in one).
//! - [`cluster`]: the Icinga 2 cluster relay — netstring codec ([`cluster::codec`]), envelope
//!   ([`cluster::envelope`]), method policy ([`cluster::policy`]), the link itself ([`cluster::relay`]).
//! - [`upstream`]: upstream groups (load balancing, health checks, peer settings) and
//!   the classification of upstream failures.
//! - [`metrics`]: the Prometheus families.
//! - [`health`]: `/healthz` and `/readyz` beside `/metrics` (listeners bound, upstream groups
//!   healthy, shutdown).
//! - [`logging`]: `log_format: json` — JSON lines for the access and cluster-link logs, and the
//!   binary's logger.
//! - [`server`]: assembly of all of the above into a Pingora `Server`.
//! - [`reload`]: SIGHUP certificate reload (all TLS files re-read, swapped in all or nothing);
//!   [`reload::watch`] reloads blocks with `tls.watch: true` when their files change.
//! - [`pki`]: throwaway CAs and certificates (`gatehouse dev-certs`, tests).
//! - [`glob`]: `*` globs for method and CN patterns.
//! - [`logsafe`]: [`logsafe::Esc`], how every client-chosen string is written into a log line.
//! - [`memory`]: freed memory handed back to the system after a burst (the crate's one
//!   `unsafe`: `mi_collect`, `malloc_trim`).
//!
//! - [`error`]: [`Error`], the one error type of the public entry points (kind, context, cause;
//!   every configuration problem at once).
//! - [`builder`]: [`Gatehouse`], the builder: a config plus added extensions → a Pingora
//!   `Server`. The five extension points: [`cluster::filter::RpcFilter`] (cluster messages),
//!   [`http::filter::HttpFilter`] (HTTP phases, Kea commands and answers),
//!   [`authz::Authorizer`] (an external decision on requests, commands and links),
//!   [`cluster::identity::IdentityMapper`] (the certificate a link presents upstream),
//!   [`audit::AuditSink`] (where audit events go).
//! - [`testing`]: an instance run in a test ([`testing::Instance`]) on reserved ports.
//!
//! The library installs no logger: a binary calls [`logging::init`] (or its own); Gatehouse
//! logs through the `log` crate. The binary (`src/main.rs`) is the builder with nothing added.
//!
//! What an embedder names from the crates underneath is re-exported: [`macro@async_trait`] (the
//! traits' async methods) and [`pingora`] (the `Server` that [`Gatehouse::build`] returns, the
//! arguments of its `run`).

// `deny`, not `forbid`: `memory::release` is the one documented exception.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod authz;
pub mod builder;
pub mod cluster;
pub mod config;
pub mod demux;
pub mod error;
pub mod glob;
pub mod health;
pub mod host;
pub mod http;
pub mod identity;
pub mod logging;
pub mod logsafe;
pub mod memory;
pub mod metrics;
pub mod pki;
pub mod reload;
pub mod server;
pub mod testing;
pub mod tls;
pub mod upstream;

pub use async_trait::async_trait;

/// The Pingora types an embedder names: what [`Gatehouse::build`] returns and how it runs, and
/// the certificate-and-key an [`cluster::identity::IdentityMapper`] presents
/// ([`cluster::identity::Mapped::Present`]), so that an embedder need not depend on
/// `pingora-core` itself.
pub mod pingora {
    pub use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
    pub use pingora_core::services::Service;
    pub use pingora_core::utils::tls::CertKey;
}

pub use builder::Gatehouse;
pub use config::{Config, ConfigError, ConfigErrors};
pub use error::{Error, ErrorKind, Result};
pub use server::{Plan, RunOptions};
