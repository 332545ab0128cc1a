//! `rustbalance run`: the long-running node.
//!
//! The daemon owns the tokio runtime and wires the loops of the design together. Today it
//! bootstraps the embedded Tor client, reports the consensus it holds and keeps reporting
//! new ones; the health, heartbeat, election and publish loops plug in here as they land.
//! SIGTERM (what systemd sends) and SIGINT (Ctrl-C) stop it cleanly with exit status 0.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::tor::{EmbeddedTor, TorError};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Tor(#[from] TorError),
}

/// Run the node in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    create_private_dir(&config.state_dir)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config))
}

async fn run_async(config: Config) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tracing::info!(
        node = %config.node.id,
        priority = %config.node.priority,
        backends = config.backends.len(),
        "starting"
    );
    if config.backends.is_empty() {
        tracing::warn!("no [[backends]] configured: there is nothing to balance yet");
    }

    let work = async {
        let tor = EmbeddedTor::bootstrap(&config.arti).await?;
        let consensus = tor.live_consensus().await?;
        tracing::info!("consensus: {consensus}");
        let mut updates = tor.consensus_updates()?;
        let mut last_valid_after = consensus.valid_after;
        while let Some(consensus) = updates.next().await {
            // Arti also signals new parameters and descriptors for the same consensus;
            // only a new valid-after is news to an operator.
            if consensus.valid_after != last_valid_after {
                tracing::debug!("new consensus: {consensus}");
                last_valid_after = consensus.valid_after;
            }
        }
        Err::<(), DaemonError>(TorError::Shutdown.into())
    };

    tokio::select! {
        result = work => result,
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM received, shutting down");
            Ok(())
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT received, shutting down");
            Ok(())
        }
    }
}

/// Create `path` (and its parents) with mode 0700 if it does not exist yet: it will hold
/// Arti's state and, later, key material.
fn create_private_dir(path: &Path) -> Result<(), DaemonError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|source| DaemonError::StateDir {
            path: path.to_owned(),
            source,
        })
}
