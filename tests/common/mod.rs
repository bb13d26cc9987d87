//! Test harness: real TLS, real sockets on 127.0.0.1, Gatehouse as a process or in process.
//!
//! - [`Conf`] ([`conf`]) is the configuration, typed; [`Gatehouse`] ([`harness`]) runs the
//!   binary on it ([`Gatehouse::start`]) or builds it in this process
//!   ([`Gatehouse::in_process`]), and stops it on drop. Its ports come from [`reserved_port`]
//!   ([`env`], with the checks for peer binaries).
//! - [`Upstream`] ([`origin`]) is an in-process HTTP/1.1 (keep-alive) or HTTP/2 origin, TLS or
//!   plain, that answers with what it saw (client CN, SNI, headers) as JSON; [`sink`] is the
//!   netstring master.
//! - [`request`] ([`client`]) is an HTTPS client that speaks raw HTTP/1.1 bytes, parsed by
//!   [`http1`]; [`curl`] runs curl with its defaults.
//! - [`Pki`] ([`pki`]) writes the certificates; [`wait`] waits for conditions, never for a
//!   fixed time.
//! - [`icinga`], [`kea`] and [`kea_root`] run the real peers.
//!
//! Every item is re-exported here, so tests name them `common::…` whatever file holds them.
// Each test binary uses a different part of the harness.
#![allow(dead_code)]

pub mod client;
pub mod conf;
pub mod env;
pub mod harness;
pub mod http1;
pub mod icinga;
pub mod kea;
pub mod kea_root;
pub mod oidc;
pub mod origin;
pub mod pki;
pub mod sink;
pub mod wait;

// Not every test binary names something of every file.
#[allow(unused_imports)]
pub use self::{client::*, conf::*, env::*, harness::*, http1::*, origin::*, pki::*, wait::*};
