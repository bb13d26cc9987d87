//! Gatehouse: an edge proxy for control planes (ISC Kea, Icinga 2) on Pingora + BoringSSL.
//!
//! # The embedding surface
//!
//! - [`Gatehouse`], the builder: a config plus added extensions → a Pingora `Server`
//!   ([`pingora::Server`], run with [`pingora::RunArgs`]); [`RunOptions`] for a binary.
//! - The five extension points and the types they take and return:
//!   [`cluster::filter::RpcFilter`] (cluster messages), [`http::filter::HttpFilter`] (HTTP
//!   phases, Kea commands and answers, [`http::kea::Command`]), [`authz::Authorizer`] (an
//!   external decision on requests, commands and links), [`cluster::identity::IdentityMapper`]
//!   (the certificate a link presents upstream), [`audit::AuditSink`] (where audit events go).
//! - [`authz::Identity`] and [`identity`]: who is calling (SNI, CN, SANs, SPIFFE URIs,
//!   fingerprint, basic user, a verified bearer token's claims), read once per connection.
//! - [`config`]: the validated runtime model of the YAML file (the serde schema stays private
//!   inside it; errors carry key paths).
//! - [`Error`]: the one error type of the entry points (kind, context, cause; every
//!   configuration problem at once).
//! - [`metrics::Metrics`], [`logging`], [`pki`] (throwaway CAs and certificates), and
//!   [`testing`]: an instance run in a test on reserved ports, stopped when the test is done.
//!
//! The library installs no logger: a binary calls [`logging::init`] (or its own); Gatehouse
//! logs through the `log` crate. The binary (`src/main.rs`) is the builder with nothing added.
//! What an embedder names from the crates underneath is re-exported: [`macro@async_trait`] (the
//! traits' async methods) and [`pingora`].
//!
//! # Inside (crate-private)
//!
//! The data path reads top-down: accept → TLS → demux → HTTP | cluster → upstream.
//!
//! - `tls`: certificate material, downstream TLS settings (SNI certs, client auth), upstream
//!   trust (`tls::upstream`).
//! - `demux`: the per-listener Pingora app: reads the first byte, replays it (`PrefixedIo`)
//!   into the HTTP proxy or the cluster relay; bounds from accept on.
//! - `http`: the `ProxyHttp` — path normalisation, routing, route access, identity forwarding,
//!   the filter chain (`http::filter::Chain`) with the built-in filters (`http::builtin`:
//!   per-caller rates, `list-commands` cut to the caller), and Kea (`http::kea`: command
//!   parsing and rules; serving, sending and streaming in `serve`, `send`, `stream`; several
//!   targets in `dispatch`; the agent's own answers in `agent`); failure answers, access log.
//! - `cluster`: the Icinga 2 cluster relay — netstring codec, envelope, method policy, the
//!   filter chain, the link (`cluster::relay`: admission, the pump, link bookkeeping).
//! - `upstream`: upstream groups (load balancing, health checks, peer settings) and the
//!   classification of upstream failures.
//! - `authz`: the matcher language of every rule, first-match lists, route admission, the
//!   guarded authorizer (timeout, cache, fail mode).
//! - `token`: bearer tokens (JWT access tokens) from `issuers:` on `routes[].bearer` — JWS
//!   verification on BoringSSL (`token::jws`), each issuer's keys fetched and cached
//!   (`token::keys`, over Pingora's connector in `token::fetch`).
//! - `audit`, `metrics`, `health` (`/healthz`, `/readyz`), `logging`, `logsafe` (how every
//!   client-chosen string is written into a log line).
//! - `server`: assembly of all of the above into a Pingora `Server`; `builder` on top.
//! - `reload`: SIGHUP certificate reload, all or nothing; `reload::watch` for `tls.watch`.
//! - `host` (host and SNI patterns), `glob` (`*` globs), `memory` (freed memory handed back
//!   after a burst), `ffi` (every `unsafe` call: the allocators' trim, BoringSSL's
//!   `SSL_set_session` for resumed upstream links and `SSL_set_shed_handshake_config`).

// `deny`, not `forbid`: `ffi` holds the crate's `unsafe` calls, each documented.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod authz;
mod builder;
pub mod cluster;
pub mod config;
mod demux;
mod error;
mod ffi;
mod glob;
mod health;
mod host;
pub mod http;
pub mod identity;
pub mod logging;
#[doc(hidden)]
pub mod logsafe;
mod memory;
pub mod metrics;
pub mod pki;
#[doc(hidden)]
pub mod reload;
#[doc(hidden)]
pub mod server;
pub mod testing;
#[doc(hidden)]
pub mod tls;
#[doc(hidden)]
pub mod token;
mod upstream;

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
pub use error::{Error, ErrorKind, Result};
pub use server::RunOptions;
