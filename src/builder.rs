//! [`Gatehouse`]: a configuration plus the extensions an embedder adds, built into a Pingora
//! `Server`. The `gatehouse` binary is this builder with nothing added; the YAML features
//! (the method policy, the `cert_request` rewrite, `cert_dir` identities, the audit file) are
//! the built-in implementations of the same traits.

use crate::audit::AuditSink;
use crate::authz::{Authorizer, Guarded};
use crate::cluster::filter::RpcFilter;
use crate::cluster::identity::IdentityMapper;
use crate::config::{Config, ConfigError, ConfigErrors};
use crate::http::filter::HttpFilter;
use crate::metrics::Metrics;
use crate::server::{Plan, RunOptions};
use pingora_core::server::Server;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How long an added [`Authorizer`] may take to answer before Gatehouse denies.
pub const AUTHORIZER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A Gatehouse about to be built.
///
/// ```no_run
/// use gatehouse::cluster::filter::{Action, Interest, LinkInfo, Message, RpcFilter};
/// use gatehouse::{Gatehouse, RunOptions};
///
/// struct NoExecute;
///
/// impl RpcFilter for NoExecute {
///     fn name(&self) -> &str {
///         "no-execute"
///     }
///     fn interest(&self) -> Interest {
///         Interest::methods(["event::ExecuteCommand"])
///     }
///     fn on_message(&self, _: &LinkInfo<'_>, _: &Message<'_>) -> Action {
///         Action::Deny("remote execution is off at this site".into())
///     }
/// }
///
/// let server = Gatehouse::load("/etc/gatehouse/gatehouse.yaml".as_ref())
///     .expect("a valid config")
///     .with_rpc_filter(NoExecute)
///     .build(&RunOptions::default())
///     .expect("the server");
/// // Add your own Pingora services here, then:
/// server.run_forever();
/// ```
pub struct Gatehouse {
    file: PathBuf,
    plan: Plan,
    filters_without_relay: usize,
}

impl Gatehouse {
    /// Loads `file` and every certificate, key and CA it names; reports every problem.
    pub fn load(file: &Path) -> crate::Result<Gatehouse> {
        Ok(Gatehouse {
            file: file.to_path_buf(),
            plan: Plan::load(file)?,
            filters_without_relay: 0,
        })
    }

    /// From a validated configuration ([`Config::load`], [`Config::parse`]); loads the
    /// files it names.
    pub fn from_config(config: Config) -> crate::Result<Gatehouse> {
        Gatehouse::from_config_in(config, Metrics::global())
    }

    /// [`Gatehouse::from_config`] counting in `metrics` (families registered in a registry
    /// of the embedder's with [`Metrics::register`]; `/metrics` then serves that registry).
    pub fn from_config_in(config: Config, metrics: Arc<Metrics>) -> crate::Result<Gatehouse> {
        let file = config.base_dir.join("(config)");
        Ok(Gatehouse {
            plan: Plan::from_config_in(config, metrics).map_err(|errors| ConfigErrors {
                file: file.clone(),
                errors,
            })?,
            file,
            filters_without_relay: 0,
        })
    }

    /// The configuration being built.
    pub fn config(&self) -> &Config {
        &self.plan.config
    }

    /// Adds a cluster message filter; it runs after the built-in ones, in the order added.
    pub fn with_rpc_filter(mut self, filter: impl RpcFilter) -> Self {
        match self.plan.relay_mut() {
            Some(r) => r.add_filter(Box::new(filter)),
            None => self.filters_without_relay += 1,
        }
        self
    }

    /// Adds an HTTP filter; filters run in the order added, after routing, the YAML rules and
    /// the authorizer.
    pub fn with_http_filter(mut self, filter: impl HttpFilter) -> Self {
        self.plan.add_http_filter(Box::new(filter));
        self
    }

    /// Chooses the identity presented upstream for cluster links, replacing
    /// `cluster.upstream_identity`.
    pub fn with_identity_mapper(mut self, mapper: impl IdentityMapper) -> Self {
        if let Some(r) = self.plan.relay_mut() {
            r.set_identity_mapper(Box::new(mapper));
        }
        self
    }

    /// Asks `authorizer` about every HTTP request, Kea command and cluster link the YAML rules
    /// allowed (both must allow). Each call may take 2 s (`AUTHORIZER_TIMEOUT`); an error or a
    /// timeout denies; decisions with a TTL are cached per identity and target, and a live
    /// cluster link is re-checked when its TTL runs out and closed if the answer turned.
    pub fn with_authorizer(mut self, authorizer: impl Authorizer) -> Self {
        let guarded = Guarded::new(
            Box::new(authorizer),
            AUTHORIZER_TIMEOUT,
            self.plan.metrics(),
        );
        self.plan.set_authorizer(Arc::new(guarded));
        self
    }

    /// Sends audit events to `sink`, replacing `audit.path` (or the log target).
    pub fn with_audit_sink(mut self, sink: impl AuditSink) -> Self {
        self.plan.set_audit_sink(Arc::new(sink));
        self
    }

    /// The Pingora server, not yet running: add services, then `run_forever`.
    pub fn build(self, opts: &RunOptions) -> crate::Result<Server> {
        if self.filters_without_relay > 0 {
            log::warn!(
                "{} cluster filter(s) added, but the configuration has no `cluster:` section",
                self.filters_without_relay
            );
        }
        let file = self.file;
        self.plan.into_server(opts).map_err(|e: ConfigError| {
            ConfigErrors {
                file,
                errors: vec![e],
            }
            .into()
        })
    }

    /// Builds and runs until a stop signal; returns only on configuration errors.
    pub fn run(self, opts: &RunOptions) -> crate::Result<()> {
        let server = self.build(opts)?;
        if !opts.daemon {
            // Pingora writes the pid file only when it daemonizes; `gatehouse reload` (and
            // operators) find a foreground process, e.g. under systemd, by it too.
            let pid_file = &server.configuration.pid_file;
            if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
                log::warn!("cannot write the pid file {pid_file}: {e}; `gatehouse reload` will not find this process");
            }
        }
        server.run_forever()
    }
}
