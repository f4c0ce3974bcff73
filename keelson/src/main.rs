//! The `keelson` command.
//!
//! - `keelson up`: the all-in-one cluster. Today it opens the durable store under the data
//!   directory (recovering what an earlier run left) and holds it until Ctrl-C or SIGTERM;
//!   the API server, scheduler, controllers and nodes join it as they are built.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use keelson_store::{MemStore, Store};

#[derive(Parser)]
#[command(
    name = "keelson",
    version,
    about = "Kubernetes' cluster architecture as Rust crates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the all-in-one cluster.
    Up {
        /// Where the cluster keeps its state.
        #[arg(long, default_value = ".keelson")]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    match cli.command {
        Command::Up { data_dir } => rt.block_on(up(data_dir)),
    }
}

async fn up(data_dir: PathBuf) -> anyhow::Result<()> {
    let store_dir = data_dir.join("store");
    let store = MemStore::open(&store_dir)
        .with_context(|| format!("opening the store in {}", store_dir.display()))?;
    let revision = store.current_revision().await?;
    println!(
        "keelson: store open in {} at revision {revision}",
        store_dir.display()
    );
    if let Some(report) = store.recovery_report() {
        println!(
            "keelson: recovered {} log records in {:?}{}",
            report.records,
            report.duration,
            if report.torn_tail.is_some() {
                " (cut an unfinished write off the log)"
            } else {
                ""
            }
        );
    }
    println!("keelson: the API server arrives with issue 3; press Ctrl-C to stop");
    shutdown_signal().await;
    println!("keelson: stopping");
    drop(store);
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
