//! `rustbalance run`: the long-running node.
//!
//! The daemon owns the tokio runtime and wires the loops of the design together:
//!
//! - the **cluster loop** ([`cluster`]) starts first and never waits for Tor: heartbeats,
//!   election, joins and membership run while Arti bootstraps, so a node without working Tor
//!   still takes part (and says it cannot publish);
//! - the **Tor side** bootstraps Arti (retrying while the network is unreachable), then runs:
//!   - the **health loop**, on every node: checks every backend at start and every
//!     `health_interval`, and passes the Healthy backends' introduction points to the publish
//!     loop through a `watch` channel, so a standby that takes over publishes at once with
//!     fresh introduction points;
//!   - the **publish loop**, active only while the election made this node the publisher:
//!     uploads at once when it gains the lease, then whenever the publisher's schedule says a
//!     period is due, the healthy set changes, or a new consensus arrives; it reports every
//!     upload's outcome to the cluster loop;
//!   - a **consensus watcher** that logs each new consensus at debug level;
//! - the **status socket** ([`status_server`]) answers `rustbalance status`.
//!
//! SIGTERM (what systemd sends) and SIGINT (Ctrl-C) stop it cleanly with exit status 0; the
//! lease is released first, so a standby takes over at once.

mod cluster;
mod status_server;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::cluster::ability::PublishAbility;
use crate::cluster::election::{Election, Timestamp};
use crate::cluster::messages::PeerInfo;
use crate::cluster::secret::ClusterSecret;
use crate::cluster::transport::{PeerConfig, Transport, TransportError, WgPrivateKey};
use crate::config::Config;
use crate::descriptor::build::MasterIdentity;
use crate::fsutil;
use crate::health::{BackendReport, HealthMonitor, HealthyBackends};
use crate::keys::files::{load_master_key, KeyFileError};
use crate::node_files::{self, NodeFilesError};
use crate::publish::{Publisher, UploadResult};
use crate::status::{unix_secs, BackendStatus, NodeStatus, PublishStatus, StatusBoard};
use crate::systemd;
use crate::tor::{EmbeddedTor, TorError};
use cluster::{ClusterSetup, LocalEvent};
use status_server::StatusServer;

/// Wait between two bootstrap attempts when the Tor network cannot be reached.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(30);
/// Longest a clean shutdown waits for the cluster loop to release the lease.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

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
    #[error(transparent)]
    NodeFiles(#[from] NodeFilesError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("another rustbalance daemon is running with this state directory (it answers on {0})")]
    AlreadyRunning(PathBuf),
    #[error("cannot serve status on {path}: {source}")]
    StatusSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Tor(#[from] TorError),
    #[error("the {0} loop stopped unexpectedly (internal error; see the log above)")]
    LoopStopped(&'static str),
}

/// The files a node runs from, read before anything starts.
struct NodeKeys {
    master: MasterIdentity,
    cluster_secret: ClusterSecret,
    wg_private_key: WgPrivateKey,
    peers: Vec<PeerInfo>,
}

/// Run the node in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let keys = NodeKeys {
        master: load_master_identity(&config)?,
        cluster_secret: node_files::load_cluster_secret(&config.config_dir)?,
        wg_private_key: node_files::load_wg_private_key(&config.config_dir)?,
        peers: node_files::load_peers(&config.config_dir)?,
    };
    fsutil::create_private_dir(&config.state_dir).map_err(|source| DaemonError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config, keys))
}

fn load_master_identity(config: &Config) -> Result<MasterIdentity, DaemonError> {
    let path = config.master_key_path();
    let key = load_master_key(&path)?;
    MasterIdentity::from_expanded_secret(key.expanded_secret())
        .map_err(|err| DaemonError::UnusableMasterKey(path, err.to_string()))
}

async fn run_async(config: Config, keys: NodeKeys) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let master_address = keys.master.address();
    tracing::info!(
        node = %config.node.id,
        priority = %config.node.priority,
        backends = config.backends.len(),
        peers = keys.peers.len(),
        "starting as master {master_address}"
    );
    if config.backends.is_empty() {
        tracing::warn!("no [[backends]] configured: there is nothing to balance yet");
    }
    let board = StatusBoard::new(NodeStatus::starting(
        config.node.id.clone(),
        config.node.priority,
        master_address.to_string(),
    ));
    let unchecked = HealthMonitor::new(&config).report();
    board.update(|status| status.backends = unchecked.into_iter().map(backend_status).collect());
    let status_server = StatusServer::bind(&config.state_dir)?;

    let mut transport_peers = Vec::new();
    for peer in &keys.peers {
        let endpoint = match peer.endpoint.resolve().await {
            Ok(address) => Some(address),
            Err(err) => {
                tracing::warn!(
                    "peer {}: cannot resolve {}: {err}; waiting until it contacts this node",
                    peer.node_id,
                    peer.endpoint
                );
                None
            }
        };
        transport_peers.push(PeerConfig {
            node_id: peer.node_id.clone(),
            public_key: peer.public_key,
            endpoint,
        });
    }
    let (transport, inbox) = Transport::bind(
        config.cluster.listen,
        config.node.id.clone(),
        keys.wg_private_key,
        transport_peers,
        &keys.cluster_secret,
    )
    .await?;
    tracing::info!(
        "cluster transport listening on UDP {}",
        transport.local_addr()
    );

    let (publishing_tx, publishing_rx) = watch::channel(false);
    let (local_tx, local_rx) = mpsc::channel(64);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let progress = Arc::new(AtomicU64::new(unix_millis()));
    let election = Election::new(
        config.node.id.clone(),
        config.node.priority,
        keys.peers
            .iter()
            .map(|peer| (peer.node_id.clone(), peer.priority)),
        (&config.timing).into(),
        Timestamp::from_system_time(SystemTime::now()),
    );
    let setup = ClusterSetup {
        me: config.node.id.clone(),
        priority: config.node.priority,
        endpoint: config.cluster.endpoint.clone(),
        config_dir: config.config_dir.clone(),
        shared_config: config.shared_text().to_owned(),
        members: keys.peers,
        election,
        ability: PublishAbility::new(config.timing.upload_failure_release),
        claim_wait: config.timing.publisher_timeout,
        transport,
        publishing: publishing_tx,
        board: board.clone(),
        progress: progress.clone(),
    };
    let mut cluster_task = tokio::spawn(cluster::run(setup, inbox, local_rx, shutdown_rx));
    let watchdog_task =
        systemd::watchdog_interval().map(|interval| tokio::spawn(watchdog(progress, interval)));
    let status_task = tokio::spawn(status_server.serve(board.clone()));

    let tor_side = tor_side(&config, keys.master, board, local_tx, publishing_rx);
    let mut cluster_stopped = false;
    let outcome = tokio::select! {
        result = tor_side => result,
        _ = &mut cluster_task => {
            cluster_stopped = true;
            Err(DaemonError::LoopStopped("cluster"))
        }
        _ = sigterm.recv() => {
            tracing::info!("SIGTERM received, shutting down");
            Ok(())
        }
        _ = sigint.recv() => {
            tracing::info!("SIGINT received, shutting down");
            Ok(())
        }
    };
    systemd::notify("STOPPING=1");
    if let Some(task) = watchdog_task {
        task.abort();
    }
    if !cluster_stopped {
        let _ = shutdown_tx.send(true);
        if tokio::time::timeout(SHUTDOWN_WAIT, cluster_task)
            .await
            .is_err()
        {
            tracing::warn!("the cluster loop did not stop in time");
        }
    }
    status_task.abort();
    outcome
}

/// Tell systemd's watchdog the node is alive while the cluster loop makes progress (it runs
/// at least every heartbeat interval); a hung loop stops the keep-alives and systemd restarts
/// the node.
async fn watchdog(progress: Arc<AtomicU64>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let idle =
            Duration::from_millis(unix_millis().saturating_sub(progress.load(Ordering::Relaxed)));
        // systemd's limit is twice `interval`: one missed beat is not yet a hang.
        if idle < 2 * interval {
            systemd::notify("WATCHDOG=1");
        } else {
            tracing::error!(
                "the cluster loop has made no progress for {} s: not telling systemd's watchdog, which restarts the node",
                idle.as_secs()
            );
        }
    }
}

/// Milliseconds since the Unix epoch.
fn unix_millis() -> u64 {
    Timestamp::from_system_time(SystemTime::now()).as_unix_millis()
}

/// Bootstrap Arti (retrying while the network is unreachable), then run the health and
/// publish loops and the consensus watcher. Returns only on a fatal error.
async fn tor_side(
    config: &Config,
    master: MasterIdentity,
    board: StatusBoard,
    local_tx: mpsc::Sender<LocalEvent>,
    publishing_rx: watch::Receiver<bool>,
) -> Result<(), DaemonError> {
    let tor = loop {
        match EmbeddedTor::bootstrap(&config.arti).await {
            Ok(tor) => break Arc::new(tor),
            // A bad configuration or runtime does not get better by waiting.
            Err(err @ (TorError::Create(_) | TorError::Runtime(_))) => return Err(err.into()),
            Err(err) => {
                tracing::error!(
                    "{err}; retrying in {} s (the cluster keeps running meanwhile)",
                    BOOTSTRAP_RETRY.as_secs()
                );
                board.update(|status| status.tor.last_error = Some(err.to_string()));
                tokio::time::sleep(BOOTSTRAP_RETRY).await;
            }
        }
    };
    let consensus = tor.live_consensus().await?;
    tracing::info!("consensus: {consensus}");
    // Ready in systemd's sense: config loaded, cluster running, Tor bootstrapped.
    systemd::notify("READY=1\nSTATUS=Tor bootstrapped; checking backends");
    board.update(|status| {
        status.tor.bootstrapped = true;
        status.tor.consensus_valid_after = Some(unix_secs(consensus.valid_after));
        status.tor.last_error = None;
    });
    let _ = local_tx.send(LocalEvent::TorReady).await;

    let (healthy_tx, healthy_rx) = watch::channel(None);
    let health = tokio::spawn(health_loop(
        tor.clone(),
        HealthMonitor::new(config),
        config.timing.health_interval,
        healthy_tx,
        local_tx.clone(),
        board.clone(),
    ));
    let publish = tokio::spawn(publish_loop(
        tor.clone(),
        Publisher::new(master, config.timing.publish_interval),
        healthy_rx,
        publishing_rx,
        local_tx,
        board.clone(),
    ));
    let watch_consensus = consensus_watcher(&tor, consensus.valid_after, &board);
    tokio::select! {
        result = watch_consensus => result.map_err(DaemonError::from),
        _ = health => Err(DaemonError::LoopStopped("health")),
        _ = publish => Err(DaemonError::LoopStopped("publish")),
    }
}

/// Log every new consensus (at debug: on a test network one arrives every 20 s).
async fn consensus_watcher(
    tor: &EmbeddedTor,
    mut last_valid_after: SystemTime,
    board: &StatusBoard,
) -> Result<(), TorError> {
    let mut updates = tor.consensus_updates()?;
    while let Some(consensus) = updates.next().await {
        // Arti also signals new parameters and descriptors for the same consensus; only a
        // new valid-after is news.
        if consensus.valid_after != last_valid_after {
            tracing::debug!("new consensus: {consensus}");
            last_valid_after = consensus.valid_after;
            board.update(|status| {
                status.tor.consensus_valid_after = Some(unix_secs(consensus.valid_after));
            });
        }
    }
    Err(TorError::Shutdown)
}

/// Check the backends at start and every `interval`; hand the healthy set to the publish loop
/// and the round's outcome to the cluster loop after each round.
async fn health_loop(
    tor: Arc<EmbeddedTor>,
    mut monitor: HealthMonitor,
    interval: Duration,
    healthy_tx: watch::Sender<Option<HealthyBackends>>,
    local_tx: mpsc::Sender<LocalEvent>,
    board: StatusBoard,
) {
    loop {
        let healthy = monitor.run_round(&tor).await;
        let backends = monitor.report().into_iter().map(backend_status).collect();
        board.update(|status| status.backends = backends);
        let fetched = monitor.fetched_last_round();
        // No receiver left means the daemon is stopping.
        let _ = local_tx.send(LocalEvent::HealthRound { fetched }).await;
        let _ = healthy_tx.send(Some(healthy));
        tokio::time::sleep(interval).await;
    }
}

fn backend_status(report: BackendReport) -> BackendStatus {
    BackendStatus {
        name: report.name,
        address: report.address,
        state: report.state.to_string(),
        intro_points: report.intro_points,
        last_fetch: report.last_seen.map(unix_secs),
        failure_count: report.failure_count,
        last_error: report.last_error,
    }
}

/// While this node holds the lease: publish once the first health round is done, then
/// whenever something is due. Uploads at once each time the node gains the lease.
async fn publish_loop(
    tor: Arc<EmbeddedTor>,
    mut publisher: Publisher,
    mut healthy_rx: watch::Receiver<Option<HealthyBackends>>,
    mut publishing_rx: watch::Receiver<bool>,
    local_tx: mpsc::Sender<LocalEvent>,
    board: StatusBoard,
) {
    let Ok(mut consensus_updates) = tor.consensus_updates() else {
        return;
    };
    let mut was_publishing = false;
    loop {
        let publishing = *publishing_rx.borrow_and_update();
        if publishing && !was_publishing {
            // What this node uploaded before may have been replaced by another publisher's.
            publisher.forget_uploads();
        }
        was_publishing = publishing;
        let healthy = healthy_rx.borrow_and_update().clone();
        let (true, Some(healthy)) = (publishing, healthy) else {
            tokio::select! {
                changed = publishing_rx.changed() => if changed.is_err() { return },
                changed = healthy_rx.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let round = publisher.publish_due(&tor, &healthy).await;
        if round.uploads != UploadResult::NothingDue {
            let _ = local_tx.send(LocalEvent::Uploads(round.uploads)).await;
        }
        let publishes = publisher
            .report()
            .into_iter()
            .map(|period| PublishStatus {
                time_period: period.time_period,
                published_at: unix_secs(period.published_at),
                revision_counter: period.revision_counter,
                intro_points: period.intro_points,
                hsdirs_accepted: period.hsdirs_accepted,
                hsdirs_tried: period.hsdirs_tried,
            })
            .collect();
        let alerts = if publisher.alert_raised() {
            vec!["no healthy backend: the descriptor is not being published".to_owned()]
        } else {
            Vec::new()
        };
        board.update(|status| {
            status.publishes = publishes;
            status.alerts = alerts;
        });
        let sleep = match round.wake_at {
            Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
            // Nothing to publish until the healthy set changes.
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = healthy_rx.changed() => if changed.is_err() { return },
            changed = publishing_rx.changed() => if changed.is_err() { return },
            _ = consensus_updates.next() => {}
        }
    }
}
