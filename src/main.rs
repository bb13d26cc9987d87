//! The `gatehouse` command: a thin shell over the library.

use clap::{Arg, ArgMatches, Command, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// glibc malloc showed up at the top of the HTTP profile (malloc_consolidate, _int_free under
// two worker threads); mimalloc's thread-local heaps remove most of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command line users run. The packaged man pages and shell completions are generated from
/// this definition (`package-files`), so they cannot drift from it.
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
    /// Replace the running instance without dropping a connection: check the configuration,
    /// start a new gatehouse on it (`run --upgrade --daemon`), then SIGQUIT the running one,
    /// which hands its listening sockets over and finishes what it has in flight.
    Upgrade {
        /// The configuration the instance runs with (its `server.pid_file` names the process).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Write a throwaway development PKI (CA, server, client, gatehouse) into DIR.
    DevCerts {
        /// Output folder (created if missing).
        dir: PathBuf,
    },
    /// Kea tools: take the Control Agent's place.
    Kea {
        #[command(subcommand)]
        cmd: KeaCmd,
    },
}

#[derive(Subcommand)]
enum KeaCmd {
    /// Print a kea-ctrl-agent configuration as Gatehouse YAML (listener, TLS, one upstream per
    /// control socket, a `kea.services` route); its basic-auth clients go to a users file.
    ImportAgent {
        /// The agent's configuration (Kea JSON, comments allowed).
        file: PathBuf,
        /// Where the agent's basic-auth clients are written (bcrypt hashes, mode 0600; an
        /// existing file is never overwritten).
        #[arg(long, default_value = "kea-users")]
        users_file: PathBuf,
    },
    /// Read a password on standard input and print its bcrypt hash, for a `basic_auth`
    /// users file line `name:<hash>`.
    HashPassword,
}

/// The packaging hook: not part of [`Cli`], so the pages and completions it writes describe
/// only what users run, and hidden from `--help`.
const PACKAGE_FILES: &str = "package-files";

fn main() -> ExitCode {
    let matches = command_line().get_matches();
    if let Some((PACKAGE_FILES, m)) = matches.subcommand() {
        return package_files(m);
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
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
        } => run(&config, &gatehouse::RunOptions { upgrade, daemon }),
        Cmd::Check { config } => check(&config),
        Cmd::Reload { config } => reload(&config),
        Cmd::Upgrade { config } => upgrade(&config),
        Cmd::Kea { cmd } => kea(cmd),
        Cmd::DevCerts { dir } => dev_certs(&dir),
    }
}

/// [`Cli`] with the hidden [`PACKAGE_FILES`] subcommand added.
fn command_line() -> Command {
    Cli::command().subcommand(
        Command::new(PACKAGE_FILES)
            .hide(true)
            .about("Write the man pages (DIR/man) and shell completions (DIR/completions)")
            .arg(
                Arg::new("dir")
                    .value_name("DIR")
                    .required(true)
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
    )
}

/// `gatehouse run`: the logger starts once the file has said which format it wants.
fn run(config: &Path, opts: &gatehouse::RunOptions) -> ExitCode {
    let run = gatehouse::Gatehouse::load(config).and_then(|g| {
        let _ = gatehouse::logging::init(g.config().log_format);
        g.run(opts)
    });
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse check`: loads everything `run` would, and warns about the descriptor budget.
fn check(config: &Path) -> ExitCode {
    match gatehouse::Gatehouse::load(config) {
        Ok(g) => {
            if let Some(w) = gatehouse::server::fd_budget_warning(g.config()) {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", config.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprint!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse reload`.
fn reload(config: &Path) -> ExitCode {
    match gatehouse::server::request_reload(config) {
        Ok(pid) => {
            println!("sent SIGHUP to gatehouse (pid {pid}); it logs the outcome and counts it in gatehouse_tls_reloads_total");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse upgrade`: the new process runs this same executable.
fn upgrade(config: &Path) -> ExitCode {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("gatehouse"));
    match gatehouse::server::request_upgrade(config, &exe) {
        Ok((old, new)) => {
            println!("gatehouse pid {new} took over from pid {old}, which finishes its requests and exits");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("upgrade: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `gatehouse dev-certs DIR`.
fn dev_certs(dir: &Path) -> ExitCode {
    match gatehouse::pki::write_dev_pki(dir) {
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
    }
}

/// `gatehouse kea …`.
fn kea(cmd: KeaCmd) -> ExitCode {
    match cmd {
        KeaCmd::ImportAgent { file, users_file } => {
            let imported = std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: {e}", file.display()))
                .and_then(|t| gatehouse::http::kea::import::import_agent(&t, &file, &users_file));
            let imported = match imported {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("import-agent: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(users) = &imported.users {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let written = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&users_file)
                    .and_then(|mut f| f.write_all(users.as_bytes()));
                if let Err(e) = written {
                    eprintln!("import-agent: {}: {e}", users_file.display());
                    return ExitCode::FAILURE;
                }
                eprintln!(
                    "import-agent: wrote the agent's basic-auth clients to {}",
                    users_file.display()
                );
            }
            print!("{}", imported.yaml);
            ExitCode::SUCCESS
        }
        KeaCmd::HashPassword => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("hash-password: cannot read standard input");
                return ExitCode::FAILURE;
            }
            let password = line.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                eprintln!("hash-password: empty password");
                return ExitCode::FAILURE;
            }
            match gatehouse::http::basic::hash(password) {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hash-password: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `gatehouse package-files DIR`: what `make deb` installs under /usr/share/man and the shells'
/// completion folders.
fn package_files(m: &ArgMatches) -> ExitCode {
    let Some(dir) = m.get_one::<PathBuf>("dir") else {
        return ExitCode::FAILURE;
    };
    match write_package_files(dir) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("package-files: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// Man pages (`man/gatehouse.1`, one `man/gatehouse-<command>.1` per subcommand) and bash,
/// zsh and fish completions (`completions/`), all from [`Cli`].
fn write_package_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use clap_complete::Shell;
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // As clap_mangen::generate_to does: no `help` page, and `build` gives every subcommand its
    // display name (`gatehouse-run`), which names its page.
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    let source = format!("gatehouse {}", env!("CARGO_PKG_VERSION"));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = clap_mangen::Man::new(sub.clone()).source(source.clone());
        out.push(page.generate_to(&man)?);
    }
    let page = man.join("gatehouse.1");
    let mut roff = Vec::new();
    let top = clap_mangen::Man::new(cmd.clone());
    top.render_title(&mut roff)?;
    top.render_name_section(&mut roff)?;
    top.render_synopsis_section(&mut roff)?;
    top.render_description_section(&mut roff)?;
    top.render_options_section(&mut roff)?;
    top.render_subcommands_section(&mut roff)?;
    roff.extend_from_slice(MAN_EXTRA.as_bytes());
    top.render_version_section(&mut roff)?;
    std::fs::write(&page, roff)?;
    out.push(page);
    // Completions from the command as users type it, `help` included.
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        out.push(clap_complete::generate_to(
            shell,
            &mut cmd,
            "gatehouse",
            &completions,
        )?);
    }
    Ok(out)
}

/// What the main page adds to the generated sections: how a running instance is driven, and
/// where the package puts things (roff).
const MAN_EXTRA: &str = r#".SH SIGNALS
.TP
\fBSIGHUP\fR
Re\-read every certificate, key and CA the configuration names (all or nothing); what
\fBgatehouse reload\fR sends.
.TP
\fBSIGQUIT\fR
Graceful upgrade: hand the listening sockets over \fIserver.upgrade_sock\fR to a process
started with \fBrun \-\-upgrade\fR, finish in\-flight requests, close cluster links with
close_notify; what \fBgatehouse upgrade\fR (and so \fBsystemctl reload gatehouse\fR) sends
after starting that process.
.TP
\fBSIGTERM\fR
Graceful stop (\fIserver.grace_period\fR, then \fIserver.graceful_shutdown_timeout\fR).
.TP
\fBSIGINT\fR
Stop at once.
.SH ENVIRONMENT
.TP
\fBRUST_LOG\fR
Log filter for stderr (default \fBinfo\fR), e.g. \fBgatehouse::access=warn,info\fR.
.SH FILES
.TP
\fI/etc/gatehouse/gatehouse.yaml\fR
The configuration the systemd unit runs (relative paths in it resolve against its folder).
.TP
\fI/etc/gatehouse/certs/\fR
Certificates and keys, root:gatehouse, setgid: keys written here are readable by the service
user only through its group.
.TP
\fI/run/gatehouse/\fR
\fIserver.pid_file\fR and \fIserver.upgrade_sock\fR under the unit.
.TP
\fI/usr/share/doc/gatehouse/docs/\fR
Every configuration key, the metrics, the cluster relay.
.SH SEE ALSO
\fBsystemctl\fR(1), \fBjournalctl\fR(1)
"#;
