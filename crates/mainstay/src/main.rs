//! `mainstay`: `serve` runs one member, `dev` runs a local three-member
//! cluster, `certs` makes the certificates for TLS.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mainstay_server::{CertMember, LogFormat, LogOutput, ServeArgs};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc (docs/performance.md has the
/// measurement): glibc's free-list work was a tenth of a member's CPU under
/// load. mimalloc was as fast but held 20 % more memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A Raft-replicated key-value store speaking the etcd v3 API.
#[derive(Parser)]
#[command(name = "mainstay", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Print the file's hash, revision, total keys and size, as etcdctl does.
    Status(mainstay_server::StatusArgs),
    /// Create a new member's data directory from the file (each member of
    /// the new cluster is restored with its own --name and --data-dir).
    Restore(Box<mainstay_server::RestoreArgs>),
}

#[derive(Subcommand)]
enum Command {
    /// Run one member (flags use etcd's names).
    #[command(
        after_help = "Every etcd 3.4 and 3.5 server flag is accepted: the ones Mainstay does not \
                      act on are named in a warning at start, the ones asking for what it does \
                      not do (peer TLS, v2, --wal-dir, discovery, ...) stop it; docs/compat.md lists \
                      them all. Each flag can also be set by MAINSTAY_<FLAG>, by etcd's \
                      ETCD_<FLAG> (below MAINSTAY_*) and by --config-file (below both)."
    )]
    Serve(Box<ServeArgs>),
    /// Run three members on loopback (client ports 2379, 22379, 32379).
    Dev {
        /// Where the three members keep their data.
        #[arg(long, default_value = "./mainstay-data", env = "MAINSTAY_DEV_DATA_DIR")]
        data_dir: PathBuf,
        /// Serve clients over TLS, client certificates required (a CA and
        /// certificates are made once under <data-dir>/certs).
        #[arg(long)]
        tls: bool,
    },
    /// Read or restore a snapshot file (`etcdctl snapshot save`, from
    /// Mainstay or etcd): etcdutl's commands and flags.
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Make a certificate authority and certificates for members and clients
    /// (existing files are kept: run again to add members or clients).
    Certs {
        /// Folder for the files.
        #[arg(long, default_value = "./mainstay-certs")]
        dir: PathBuf,
        /// A member and the host names or addresses it is reached by:
        /// name=host[,host...]; repeat for each member.
        #[arg(long = "member", value_parser = CertMember::parse)]
        members: Vec<CertMember>,
        /// A client certificate, by its common name (the user name once auth
        /// is on); repeat for more [default: root].
        #[arg(long = "client")]
        clients: Vec<String>,
        /// Days the certificates are valid (the CA ten times as long).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

async fn ctrl_c() {
    if let Err(error) = tokio::signal::ctrl_c().await {
        tracing::error!(%error, "cannot listen for Ctrl-C; stopping");
    }
}

async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

async fn shutdown_signal() {
    tokio::select! {
        () = ctrl_c() => {}
        () = terminate() => {}
    }
}

/// Installs the log: `MAINSTAY_LOG` (a tracing filter) if set, else `filter`
/// (from `--log-level`), written to `output` (`--log-outputs`).
fn init_logging(filter: &str, output: LogOutput, format: LogFormat) {
    let filter = EnvFilter::try_from_env("MAINSTAY_LOG").unwrap_or_else(|_| EnvFilter::new(filter));
    // Colour codes only for a person at a terminal, not in files or pipes.
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (output, format) {
        (LogOutput::Stderr, LogFormat::Text) => builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .init(),
        (LogOutput::Stdout, LogFormat::Text) => builder
            .with_writer(std::io::stdout)
            .with_ansi(std::io::stdout().is_terminal())
            .init(),
        (LogOutput::Stderr, LogFormat::Json) => builder
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .init(),
        (LogOutput::Stdout, LogFormat::Json) => builder
            .json()
            .with_current_span(true)
            .with_writer(std::io::stdout)
            .init(),
    }
}

/// Errors end the process with their one-line message (the causes joined with
/// `: `), never a backtrace: returning an error from `main` would print its
/// Debug form, a stack of frames when `RUST_BACKTRACE` is set.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// `mainstay certs`: makes the files and says how to use them.
fn certs(dir: &Path, members: &[CertMember], clients: &[String], days: u32) -> anyhow::Result<()> {
    let made = mainstay_server::make_certs(dir, members, clients, days)?;
    for path in &made.written {
        println!("wrote {}", path.display());
    }
    for path in &made.kept {
        println!("kept  {}", path.display());
    }
    let file = |name: &str| dir.join(name).display().to_string();
    for member in members {
        println!(
            "\n{}: mainstay serve --name {} --cert-file {} --key-file {} --trusted-ca-file {} --client-cert-auth --listen-client-urls https://{}:2379 ...",
            member.name,
            member.name,
            file(&format!("{}.pem", member.name)),
            file(&format!("{}-key.pem", member.name)),
            file("ca.pem"),
            member.hosts.first().map_or("HOST", String::as_str),
        );
    }
    for client in clients {
        println!(
            "\n{client}: etcdctl --cacert {} --cert {} --key {} --endpoints https://HOST:2379 ...",
            file("ca.pem"),
            file(&format!("client-{client}.pem")),
            file(&format!("client-{client}-key.pem")),
        );
    }
    Ok(())
}

/// The chaos tier's self-test: a debug build run with
/// `MAINSTAY_CHAOS_SELF_TEST=1` answers forwarded writes before applying them,
/// deliberately unsafe, so the tier shows that it catches it. Release builds
/// do not have it. (An environment variable rather than a cargo feature: the
/// feature made CI build the binary a second time, 100 s.)
#[cfg(debug_assertions)]
fn chaos_self_test() -> bool {
    std::env::var_os("MAINSTAY_CHAOS_SELF_TEST").is_some_and(|value| value == "1")
}

#[cfg(not(debug_assertions))]
fn chaos_self_test() -> bool {
    false
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            // The settings come first: the log's level and destination are among them.
            let config = args.resolve()?;
            init_logging(&config.log_filter(), config.log_output, config.log_format);
            for warning in &config.warnings {
                tracing::warn!(setting = %warning.setting, "{warning}");
            }
            if chaos_self_test() {
                tracing::warn!(
                    "CHAOS SELF-TEST (MAINSTAY_CHAOS_SELF_TEST=1, a debug build): answers writes before applying them"
                );
                let listeners = mainstay_server::bind(&config).await?;
                let mut env = mainstay_server::Env::production();
                env.safety_breaks.answer_before_local_apply = true;
                return mainstay_server::run_with_listeners(
                    config,
                    listeners,
                    env,
                    shutdown_signal(),
                    None,
                )
                .await;
            }
            mainstay_server::run(config, shutdown_signal()).await
        }
        Command::Dev { data_dir, tls } => {
            init_logging("info,openraft=warn", LogOutput::Stderr, LogFormat::Text);
            mainstay_server::run_dev(data_dir, tls, shutdown_signal()).await
        }
        Command::Snapshot {
            action: SnapshotAction::Status(args),
        } => {
            let status = mainstay_server::file_status(&args.file)?;
            println!(
                "{}",
                mainstay_server::render_status(&status, &args.write_out)?
            );
            Ok(())
        }
        Command::Snapshot {
            action: SnapshotAction::Restore(args),
        } => {
            println!("{}", mainstay_server::restore(&args)?);
            Ok(())
        }
        Command::Certs {
            dir,
            members,
            mut clients,
            days,
        } => {
            if clients.is_empty() {
                clients.push("root".to_string());
            }
            certs(&dir, &members, &clients, days)
        }
    }
}
