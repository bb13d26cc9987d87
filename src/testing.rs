//! Running a Gatehouse inside a test: [`Instance::start`] builds it on a thread of its own and
//! runs it until [`Instance::stop`] (or drop), on ports from [`reserved_port`] and with its pid
//! file and upgrade socket kept to itself ([`isolate`]). This is how Gatehouse's own suite runs
//! instances in-process; several run at once in one test binary.
//!
//! ```no_run
//! use gatehouse::testing::{isolate, reserved_port, Instance};
//! use gatehouse::config::Config;
//! use gatehouse::Gatehouse;
//!
//! let dir = std::env::temp_dir();
//! let port = reserved_port();
//! let yaml = format!(
//!     "listeners: [ {{ name: web, address: \"127.0.0.1:{port}\" }} ]\n\
//!      upstreams: {{ app: {{ peers: [\"127.0.0.1:9\"] }} }}\n\
//!      routes: [ {{ name: app, upstream: app }} ]\n"
//! );
//! let mut config = Config::parse(&yaml, &dir).expect("a valid config");
//! isolate(&mut config, &dir);
//! let instance = Instance::start(Gatehouse::from_config(config).expect("built")).expect("running");
//! // ... requests to 127.0.0.1:{port} ...
//! instance.stop();
//! ```

use crate::builder::Gatehouse;
use crate::config::Config;
use crate::error::{Error, ErrorKind};
use crate::server::RunOptions;
use pingora_core::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long [`Instance::start`] waits for every listener to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A port on 127.0.0.1 no other part of this process (and no `bind(…:0)`) will be handed
/// while the process runs, free for a test's listener.
///
/// Not bind-then-release, where another test could take the port in between: the port stays
/// bound by a socket this process keeps (`SO_REUSEADDR`, never listening), which Pingora,
/// binding with `SO_REUSEADDR`, can still listen on. Pingora also needs a real port: its
/// listening-fd table is keyed by the configured address, so `127.0.0.1:0` twice would share
/// one socket.
pub fn reserved_port() -> u16 {
    static KEPT: Mutex<Vec<socket2::Socket>> = Mutex::new(Vec::new());
    let reserve = || -> std::io::Result<(u16, socket2::Socket)> {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let port = s
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| std::io::Error::other("not an inet socket"))?;
        Ok((port, s))
    };
    let (port, socket) = reserve().unwrap_or_else(|e| panic!("reserving a port on 127.0.0.1: {e}"));
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(socket);
    port
}

/// Puts `config`'s pid file and upgrade socket in `dir`, so that instances of parallel tests
/// (and a gatehouse running on the machine) never share them.
pub fn isolate(config: &mut Config, dir: &Path) {
    config.server.pid_file = dir.join("gatehouse.pid");
    config.server.upgrade_sock = dir.join("gatehouse-upgrade.sock");
}

/// A Gatehouse running in this process, on a thread of its own; stopped by [`Instance::stop`]
/// or on drop (a fast shutdown: what is in flight is cut).
pub struct Instance {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    addresses: Vec<SocketAddr>,
}

impl Instance {
    /// Builds `gatehouse` and runs it; returns once every listener and the metrics address
    /// accept connections (within 15 s), or the reason it did not build or start.
    ///
    /// Signals are not watched (the default would take SIGINT, SIGTERM and SIGQUIT of the
    /// whole test process); the certificate reloader's SIGHUP handler is installed as usual.
    pub fn start(gatehouse: Gatehouse) -> crate::Result<Instance> {
        let config = gatehouse.config();
        let addresses: Vec<SocketAddr> = config
            .listeners
            .iter()
            .map(|l| l.address)
            .chain(config.metrics)
            .collect();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (built, is_built) = std::sync::mpsc::channel();
        // Pingora's `run` blocks on runtimes of its own, which may not start inside a test's
        // runtime: it runs on a plain thread.
        let thread = std::thread::Builder::new()
            .name("gatehouse-instance".into())
            .spawn(move || match gatehouse.build(&RunOptions::default()) {
                Err(e) => {
                    let _ = built.send(Err(e));
                }
                Ok(server) => {
                    let _ = built.send(Ok(()));
                    server.run(RunArgs {
                        shutdown_signal: Box::new(StopSignal(Mutex::new(Some(stopped)))),
                    });
                }
            })
            .map_err(|e| Error::new(ErrorKind::Io, "starting the instance's thread").because(e))?;
        match is_built.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Io,
                    "the instance's thread ended while building",
                ))
            }
        }
        let instance = Instance {
            stop: Some(stop),
            thread: Some(thread),
            addresses,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        for a in &instance.addresses {
            while std::net::TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err() {
                if instance.ended() || Instant::now() > deadline {
                    return Err(Error::new(
                        ErrorKind::Io,
                        format!("the instance did not listen on {a} within {START_TIMEOUT:?}"),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(instance)
    }

    /// The listener addresses (and the metrics address) it serves.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Stops it and waits (up to 10 s) for its runtimes to end.
    pub fn stop(mut self) {
        self.shut_down();
    }

    /// Whether it stopped running (or never started).
    pub fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ended() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(t) = self.thread.take() {
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!("a test instance did not stop within 10 s");
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Pingora's shutdown signal for an [`Instance`]: a fast shutdown once [`Instance::stop`]
/// sends (or the instance is dropped).
struct StopSignal(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait::async_trait]
impl ShutdownSignalWatch for StopSignal {
    async fn recv(&self) -> ShutdownSignal {
        let stopped = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(stopped) = stopped {
            let _ = stopped.await;
        }
        ShutdownSignal::FastShutdown
    }
}
