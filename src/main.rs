//! The `gatehouse` command: a thin shell over the library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

// glibc malloc showed up at the top of the HTTP profile (malloc_consolidate, _int_free under
// two worker threads); mimalloc's thread-local heaps remove most of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Edge proxy for control planes (Kea, Icinga 2)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy.
    Run {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
        /// Take the listeners over from a running instance (then SIGQUIT the old one).
        #[arg(long)]
        upgrade: bool,
        /// Run in the background.
        #[arg(long)]
        daemon: bool,
    },
    /// Parse and validate a configuration and load every file it names.
    Check {
        /// Configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Make a running instance re-read its certificates, keys and CAs (sends it SIGHUP).
    /// The files are checked first; nothing is sent if any of them is broken.
    Reload {
        /// The configuration the instance runs with (its `server.pid_file` names the process).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Write a throwaway development PKI (CA, server, client, gatehouse) into DIR.
    DevCerts {
        /// Output folder (created if missing).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` logs in the configuration's `log_format`, so its logger waits for the file
    // (loading it logs nothing; its errors go to stderr as text).
    if !matches!(cli.cmd, Cmd::Run { .. }) {
        let _ = gatehouse::logging::init(gatehouse::config::LogFormat::Text);
    }
    match cli.cmd {
        Cmd::Run {
            config,
            upgrade,
            daemon,
        } => {
            let opts = gatehouse::RunOptions { upgrade, daemon };
            let run = gatehouse::Gatehouse::load(&config).and_then(|g| {
                let _ = gatehouse::logging::init(g.config().log_format);
                g.run(&opts)
            });
            match run {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Check { config } => match gatehouse::Gatehouse::load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Reload { config } => match gatehouse::server::request_reload(&config) {
            Ok(pid) => {
                println!("sent SIGHUP to gatehouse (pid {pid}); it logs the outcome and counts it in gatehouse_tls_reloads_total");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("reload: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::DevCerts { dir } => match gatehouse::pki::write_dev_pki(&dir) {
            Ok(files) => {
                for f in files {
                    println!("wrote {}", f.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dev-certs: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
