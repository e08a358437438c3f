//! `mainstay`: `serve` runs one member, `dev` runs a local three-member cluster.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mainstay_server::ServeArgs;
use tracing_subscriber::EnvFilter;

/// A Raft-replicated key-value store speaking the etcd v3 API.
#[derive(Parser)]
#[command(name = "mainstay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one member (flags use etcd's names).
    Serve(Box<ServeArgs>),
    /// Run three members on loopback (client ports 2379, 22379, 32379).
    Dev {
        /// Where the three members keep their data.
        #[arg(long, default_value = "./mainstay-data", env = "MAINSTAY_DEV_DATA_DIR")]
        data_dir: PathBuf,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_env("MAINSTAY_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let config = args.resolve()?;
            mainstay_server::run(config, shutdown_signal()).await
        }
        Command::Dev { data_dir } => mainstay_server::run_dev(data_dir, shutdown_signal()).await,
    }
}
