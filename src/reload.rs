//! Certificate reload: on SIGHUP (`gatehouse reload` sends it), every TLS file the running
//! configuration names is read again — listener and SNI certificates, client CAs, upstream
//! CAs and client certificates — and new handshakes switch to it. Established connections
//! keep what they negotiated.
//!
//! All or nothing: if any file is missing or broken, nothing changes and the log says which
//! key named which file and why. Configuration changes (routes, addresses) are not reloaded;
//! they take a graceful upgrade (`gatehouse run --upgrade`).
//!
//! [`watch`] decides *when* without a signal: a TLS block with `watch: true` is reloaded
//! through the same [`Reloader`] when its files change on disk.

pub mod watch;

use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::tls::upstream::UpstreamTlsMaterial;
use crate::tls::{ListenerContexts, ListenerTlsMaterial};
use crate::upstream::UpstreamGroup;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use boring::asn1::Asn1Time;
use boring::x509::X509;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One listener's live TLS contexts and where its configuration is.
pub struct LiveListener {
    /// Index into `config.listeners`.
    pub index: usize,
    /// What the listener's handshakes use.
    pub contexts: Arc<ArcSwap<ListenerContexts>>,
}

/// One TLS block of the configuration: the unit a file-watch reload re-reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Block {
    /// `listeners[i].tls` (index into `config.listeners`).
    Listener(usize),
    /// The TLS of `config.upstreams[i]`.
    Upstream(usize),
}

/// A block's key path, given the upstream names (`upstreams.<name>.tls`).
struct BlockPath<'a>(Block, &'a Config);

impl fmt::Display for BlockPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Block::Listener(i) => write!(f, "listeners[{i}].tls"),
            Block::Upstream(i) => match self.1.upstreams.get(i) {
                Some(u) => write!(f, "upstreams.{}.tls", u.name),
                None => write!(f, "upstreams[{i}].tls"),
            },
        }
    }
}

/// What a reload re-reads, by what asked for it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Trigger<'a> {
    /// SIGHUP: every block.
    Signal,
    /// Files of these watched blocks changed.
    Watch(&'a [Block]),
}

/// Re-reads the TLS material of a running configuration and swaps it in.
pub struct Reloader {
    config: Config,
    listeners: Vec<LiveListener>,
    upstreams: Arc<[UpstreamGroup]>,
    generation: AtomicU64,
    /// One reload at a time: SIGHUP and the file watcher run on different threads, and a
    /// generation must not be handed out twice.
    running: Mutex<()>,
    metrics: Arc<Metrics>,
}

/// Freshly loaded material, not yet in use.
struct Loaded {
    listeners: Vec<(usize, ListenerTlsMaterial, ListenerContexts)>,
    upstreams: Vec<(usize, UpstreamTlsMaterial)>,
}

impl Reloader {
    /// A reloader for `config`, whose listeners run on `listeners` and upstreams are `upstreams`.
    pub fn new(
        config: Config,
        listeners: Vec<LiveListener>,
        upstreams: Arc<[UpstreamGroup]>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            config,
            listeners,
            upstreams,
            generation: AtomicU64::new(0),
            running: Mutex::new(()),
            metrics,
        }
    }

    /// The configuration whose files this reloader re-reads.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The key path of `block` (`listeners[0].tls`, `upstreams.kea.tls`).
    pub fn block_path(&self, block: Block) -> String {
        BlockPath(block, &self.config).to_string()
    }

    /// Reads every TLS file again; on success new handshakes use it, on failure nothing
    /// changes. Returns a one-line summary, or every problem found.
    pub fn reload(&self) -> Result<String, Vec<ConfigError>> {
        self.reload_where(|_| true)
    }

    /// [`Reloader::reload`] for `blocks` only: their files are read again and swapped in
    /// together, or, if any of them is broken, none is; other blocks keep what they have.
    pub fn reload_blocks(&self, blocks: &[Block]) -> Result<String, Vec<ConfigError>> {
        self.reload_where(|b| blocks.contains(&b))
    }

    fn reload_where(&self, wanted: impl Fn(Block) -> bool) -> Result<String, Vec<ConfigError>> {
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        let loaded = self.load(generation, &wanted)?;
        self.generation.store(generation, Ordering::Relaxed);
        let mut names = Vec::new();
        for (i, material, contexts) in loaded.listeners {
            let live = &self.listeners[i];
            live.contexts.store(Arc::new(contexts));
            publish_listener(&self.metrics, &material);
            names.push(format!("listener {}", material.listener()));
        }
        for (i, material) in loaded.upstreams {
            let group = &self.upstreams[i];
            publish_upstream(&self.metrics, &group.name, &material);
            group.set_tls(material);
            names.push(format!("upstream {}", group.name));
        }
        if names.is_empty() {
            return Ok("nothing to reload: no TLS in the configuration".into());
        }
        Ok(format!(
            "reload #{generation}: new handshakes use the material read now for {}",
            names.join(", ")
        ))
    }

    fn load(
        &self,
        generation: u64,
        wanted: &dyn Fn(Block) -> bool,
    ) -> Result<Loaded, Vec<ConfigError>> {
        let cfg = &self.config;
        let mut errs = Vec::new();
        let mut listeners = Vec::new();
        for (i, live) in self.listeners.iter().enumerate() {
            let l = &cfg.listeners[live.index];
            let Some(t) = &l.tls else { continue };
            if !wanted(Block::Listener(live.index)) {
                continue;
            }
            let at = format!("listeners[{}].tls", live.index);
            match ListenerTlsMaterial::load(l, t, &at, &self.metrics) {
                Ok(m) => match m.contexts(generation) {
                    Ok(c) => listeners.push((i, m, c)),
                    Err(e) => errs.push(ConfigError::new(at, e)),
                },
                Err(e) => errs.extend(e),
            }
        }
        let mut upstreams = Vec::new();
        for (i, group) in self.upstreams.iter().enumerate() {
            let Some(t) = cfg.upstreams.get(i).and_then(|u| u.tls.as_ref()) else {
                continue;
            };
            if !wanted(Block::Upstream(i)) {
                continue;
            }
            let at = format!("upstreams.{}.tls", group.name);
            match UpstreamTlsMaterial::load(t, &at) {
                Ok(m) => upstreams.push((i, m)),
                Err(e) => errs.extend(e),
            }
        }
        if errs.is_empty() {
            Ok(Loaded {
                listeners,
                upstreams,
            })
        } else {
            Err(errs)
        }
    }

    /// Publishes the expiry of the material loaded at start.
    pub fn publish_initial(&self, listeners: &[&ListenerTlsMaterial]) {
        for m in listeners {
            publish_listener(&self.metrics, m);
        }
        for g in self.upstreams.iter() {
            if let Some(m) = g.tls() {
                publish_upstream(&self.metrics, &g.name, &m);
            }
        }
    }

    /// Reloads what `trigger` asks for, then counts and logs the outcome; true if it took.
    pub(crate) fn run(&self, trigger: Trigger<'_>) -> bool {
        let result = match trigger {
            Trigger::Signal => self.reload(),
            Trigger::Watch(blocks) => self.reload_blocks(blocks),
        };
        match result {
            Ok(summary) => {
                self.metrics
                    .tls_reloads
                    .with_label_values(&["success"])
                    .inc();
                log::info!(target: "gatehouse::reload", "{summary}");
                true
            }
            Err(errs) => {
                self.metrics
                    .tls_reloads
                    .with_label_values(&["failure"])
                    .inc();
                for e in &errs {
                    log::error!(target: "gatehouse::reload", "reload failed, keeping the current certificates: {e}");
                }
                false
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!(target: "gatehouse::reload", "cannot listen for SIGHUP, certificate reload is off: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = hup.recv() => {
                    log::info!(target: "gatehouse::reload", "SIGHUP: reloading certificates");
                    // Blocking file reads are fine here: background services run on their
                    // own runtime, not on a listener's.
                    self.run(Trigger::Signal);
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn publish_listener(metrics: &Metrics, m: &ListenerTlsMaterial) {
    let owner = format!("listener:{}", m.listener());
    for (cert, leaf) in m.leaves() {
        publish(metrics, &owner, &cert, leaf);
    }
}

fn publish_upstream(metrics: &Metrics, name: &str, m: &UpstreamTlsMaterial) {
    if let Some(leaf) = m.client_leaf() {
        publish(metrics, &format!("upstream:{name}"), "client", leaf);
    }
}

fn publish(metrics: &Metrics, owner: &str, cert: &str, leaf: &X509) {
    if let Some(t) = not_after_unix(leaf) {
        metrics
            .tls_cert_not_after
            .with_label_values(&[owner, cert])
            .set(t);
    }
}

/// A certificate's notAfter as Unix seconds.
pub fn not_after_unix(cert: &X509) -> Option<i64> {
    let epoch = Asn1Time::from_unix(0).ok()?;
    let d = epoch.diff(cert.not_after()).ok()?;
    Some(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Whether `pid` may be sent SIGHUP: a pid file is only a number someone wrote, and
/// `kill(-1, …)` signals every process we may signal, `0` our own group, `1` init. Only a
/// process running a `gatehouse` binary (`exe`, its `/proc/<pid>/exe`) is signalled; after a
/// package upgrade the link reads `…/gatehouse (deleted)`, which still counts.
pub(crate) fn check_target(pid: i32, exe: &Path) -> Result<(), String> {
    if pid <= 1 {
        return Err(format!(
            "refusing to signal pid {pid}: not a gatehouse process"
        ));
    }
    let target = std::fs::read_link(exe)
        .map_err(|e| format!("pid {pid}: no such process, or it cannot be inspected ({e})"))?;
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
    if name == "gatehouse" || name.starts_with("gatehouse-") {
        Ok(())
    } else {
        Err(format!(
            "refusing to signal pid {pid}: it runs {}, not gatehouse (stale pid file?)",
            target.display()
        ))
    }
}

/// The configuration file gatehouse `pid` runs, from its command line (`-c FILE`,
/// `--config FILE`, `--config=FILE`, `-cFILE`), relative paths resolved against its working
/// directory. `None` when it cannot be read or names none (an embedding program).
pub(crate) fn config_of(pid: i32) -> Option<std::path::PathBuf> {
    let proc = Path::new("/proc").join(pid.to_string());
    let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let file = config_arg(&args)?;
    let file = Path::new(&file);
    if file.is_absolute() {
        Some(file.to_path_buf())
    } else {
        Some(std::fs::read_link(proc.join("cwd")).ok()?.join(file))
    }
}

/// The value of `-c`/`--config` in `args`.
fn config_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-c" || a == "--config" {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(v.to_string());
        }
        if let Some(v) = a
            .strip_prefix("-c")
            .filter(|v| !v.is_empty() && !a.starts_with("--"))
        {
            return Some(v.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_read_from_every_spelling_of_the_option() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for (line, want) in [
            (
                &["gatehouse", "run", "-c", "/etc/g.yaml"][..],
                Some("/etc/g.yaml"),
            ),
            (
                &["gatehouse", "run", "--config", "g.yaml", "--daemon"],
                Some("g.yaml"),
            ),
            (&["gatehouse", "run", "--config=/x.yaml"], Some("/x.yaml")),
            (&["gatehouse", "run", "-c/y.yaml"], Some("/y.yaml")),
            (&["my-edge", "--daemon"], None),
        ] {
            assert_eq!(config_arg(&args(line)).as_deref(), want, "{line:?}");
        }
    }

    #[test]
    fn only_gatehouse_processes_are_signalled() {
        for pid in [-1, 0, 1] {
            let e = check_target(pid, Path::new("/proc/self/exe")).unwrap_err();
            assert!(e.contains(&format!("pid {pid}")), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let link = |name: &str| {
            let l = dir
                .path()
                .join(format!("link-{}", name.replace(['/', ' '], "_")));
            std::os::unix::fs::symlink(format!("/usr/bin/{name}"), &l).unwrap();
            l
        };
        assert!(check_target(4242, &link("gatehouse")).is_ok());
        assert!(check_target(4242, &link("gatehouse (deleted)")).is_ok());
        let e = check_target(4242, &link("sleep")).unwrap_err();
        assert!(e.contains("/usr/bin/sleep, not gatehouse"), "{e}");
        assert!(check_target(4242, &dir.path().join("missing")).is_err());
    }
}
