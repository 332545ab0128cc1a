//! `rustbalance run`: the long-running node.
//!
//! The daemon owns the tokio runtime and wires the loops of the design together:
//!
//! - the **health loop** checks every backend at start and then every `health_interval`, and
//!   passes the Healthy backends' introduction points to the publisher through a `watch`
//!   channel;
//! - the **publish loop** publishes as soon as the first health round is done, then whenever
//!   the publisher's schedule says a period is due, the healthy set changes, or a new
//!   consensus arrives (new HSDirs or time periods);
//! - a **consensus watcher** logs each new consensus at debug level.
//!
//! SIGTERM (what systemd sends) and SIGINT (Ctrl-C) stop it cleanly with exit status 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::config::Config;
use crate::descriptor::build::MasterIdentity;
use crate::fsutil;
use crate::health::{HealthMonitor, HealthyBackends};
use crate::keys::files::{load_master_key, KeyFileError};
use crate::publish::Publisher;
use crate::tor::{EmbeddedTor, TorError};

/// Why the daemon stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    MasterKey(#[from] KeyFileError),
    #[error("the master key in {0} cannot sign descriptors: {1}")]
    UnusableMasterKey(PathBuf, String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Tor(#[from] TorError),
    #[error("the {0} loop stopped unexpectedly (internal error; see the log above)")]
    LoopStopped(&'static str),
}

/// Run the node in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let master = load_master_identity(&config)?;
    fsutil::create_private_dir(&config.state_dir).map_err(|source| DaemonError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config, master))
}

fn load_master_identity(config: &Config) -> Result<MasterIdentity, DaemonError> {
    let path = config.master_key_path();
    let key = load_master_key(&path)?;
    MasterIdentity::from_expanded_secret(key.expanded_secret())
        .map_err(|err| DaemonError::UnusableMasterKey(path, err.to_string()))
}

async fn run_async(config: Config, master: MasterIdentity) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    tracing::info!(
        node = %config.node.id,
        priority = %config.node.priority,
        backends = config.backends.len(),
        "starting as master {}",
        master.address()
    );
    if config.backends.is_empty() {
        tracing::warn!("no [[backends]] configured: there is nothing to balance yet");
    }

    let work = async {
        let tor = Arc::new(EmbeddedTor::bootstrap(&config.arti).await?);
        let consensus = tor.live_consensus().await?;
        tracing::info!("consensus: {consensus}");

        let (healthy_tx, healthy_rx) = watch::channel(None);
        let health = tokio::spawn(health_loop(
            tor.clone(),
            HealthMonitor::new(&config),
            config.timing.health_interval,
            healthy_tx,
        ));
        let publish = tokio::spawn(publish_loop(
            tor.clone(),
            Publisher::new(master, config.timing.publish_interval),
            healthy_rx,
        ));
        let watch_consensus = consensus_watcher(&tor, consensus.valid_after);
        tokio::select! {
            result = watch_consensus => result.map_err(DaemonError::from),
            _ = health => Err(DaemonError::LoopStopped("health")),
            _ = publish => Err(DaemonError::LoopStopped("publish")),
        }
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

/// Log every new consensus (at debug: on a test network one arrives every 20 s).
async fn consensus_watcher(
    tor: &EmbeddedTor,
    mut last_valid_after: SystemTime,
) -> Result<(), TorError> {
    let mut updates = tor.consensus_updates()?;
    while let Some(consensus) = updates.next().await {
        // Arti also signals new parameters and descriptors for the same consensus; only a
        // new valid-after is news.
        if consensus.valid_after != last_valid_after {
            tracing::debug!("new consensus: {consensus}");
            last_valid_after = consensus.valid_after;
        }
    }
    Err(TorError::Shutdown)
}

/// Check the backends at start and every `interval`; publish the healthy set after each round.
async fn health_loop(
    tor: Arc<EmbeddedTor>,
    mut monitor: HealthMonitor,
    interval: Duration,
    healthy_tx: watch::Sender<Option<HealthyBackends>>,
) {
    loop {
        let healthy = monitor.run_round(&tor).await;
        // No receiver left means the publisher stopped, and the daemon with it.
        let _ = healthy_tx.send(Some(healthy));
        tokio::time::sleep(interval).await;
    }
}

/// Publish once the first health round is done, then whenever something is due.
async fn publish_loop(
    tor: Arc<EmbeddedTor>,
    mut publisher: Publisher,
    mut healthy_rx: watch::Receiver<Option<HealthyBackends>>,
) {
    let Ok(mut consensus_updates) = tor.consensus_updates() else {
        return;
    };
    loop {
        let Some(healthy) = healthy_rx.borrow_and_update().clone() else {
            if healthy_rx.changed().await.is_err() {
                return;
            }
            continue;
        };
        let wake_at = publisher.publish_due(&tor, &healthy).await;
        let sleep = match wake_at {
            Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
            // Nothing to publish until the healthy set changes.
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = healthy_rx.changed() => if changed.is_err() { return },
            _ = consensus_updates.next() => {}
        }
    }
}
