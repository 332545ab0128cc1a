//! `rustbalance run`: the long-running node.
//!
//! The daemon owns the tokio runtime and wires the loops of the design together:
//!
//! - the **cluster loop** ([`cluster`]) starts first and never waits for Tor: heartbeats,
//!   election, joins and membership run while Arti bootstraps, so a node without working Tor
//!   still takes part (and says it cannot publish);
//! - the **Tor side** ([`tor_side`]) owns the embedded Arti client and runs on it:
//!   - the **health loop**, on every node: checks every backend at start and every
//!     `health_interval`, and passes the Healthy backends' introduction points to the publish
//!     loop, so a standby that takes over publishes at once with fresh introduction points;
//!   - the **publish loop**, active only while the election made this node the publisher:
//!     uploads at once when it gains the lease, then whenever a period is due, the healthy set
//!     changes, or a new consensus arrives; it reports every upload's outcome to the cluster
//!     loop;
//!   - a **consensus watcher**, and a stall detector that rebuilds a wedged client in-process;
//! - the **status socket** ([`status_server`]) answers `rustbalance status`; the **control
//!   socket** ([`control`]) takes the commands that change the cluster (`rustbalance backend
//!   ...`) to the cluster loop, which keeps the shared configuration ([`shared_config`]);
//! - the **state writer** ([`state_writer`]) keeps `state.json` current, atomically.
//!
//! SIGHUP reloads config.toml: new backends and timing apply at once, and changed shared
//! tables become a new version every member applies; a config that does not load is refused
//! with its error and the running one stays in force. SIGTERM (what systemd
//! sends) and SIGINT (Ctrl-C) stop the node cleanly with exit status 0; the lease is released
//! first, so a standby takes over at once.

mod cluster;
pub mod control;
mod shared_config;
mod state_writer;
pub mod status;
mod status_server;
pub mod systemd;
mod tor_side;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::clock::Timestamp;
use crate::cluster::ability::PublishAbility;
use crate::cluster::election::Election;
use crate::cluster::lease::LeaseCore;
use crate::cluster::messages::PeerInfo;
use crate::cluster::outcome::ServedWatch;
use crate::cluster::secret::ClusterSecret;
use crate::cluster::transport::{Inbox, Transport, TransportError};
use crate::cluster::wg_keys::WgPrivateKey;
use crate::cluster::{NodeId, Role};
use crate::config::Config;
use crate::daemon::status::{BackendStatus, NodeStatus, StatusBoard};
use crate::descriptor::build::MasterIdentity;
use crate::descriptor::signer::MasterSigner;
use crate::health::{BackendReport, HealthMonitor};
use crate::keys::files::{load_master_key, KeyFileError};
use crate::publish::plan::PublishPlan;
use crate::storage::fsutil;
use crate::storage::node_files::{self, NodeFilesError};
use crate::storage::state;
use crate::tor::{ArtiSettings, TorError};
use cluster::{ClusterExit, ClusterSetup};
use control::{ControlServer, OperatorCommand};
use shared_config::ConfigKeeper;
use status_server::{MetricsServer, StatusServer};
use tor_side::TorSide;

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
    #[error("cannot serve the control socket on {path}: {source}")]
    ControlSocket {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{by} removed this node from the cluster: it stopped, and will refuse to start again (to make this machine a member again, move the config directory aside and run `rustbalance join` with a fresh token)")]
    Removed { by: crate::cluster::NodeId },
    #[error("the shared configuration: {0}")]
    SharedConfig(#[from] shared_config::ConfigChangeError),
    #[error("cannot serve metrics on {addr} ([status] metrics_listen): {source}")]
    Metrics {
        addr: std::net::SocketAddr,
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
    removed: Vec<PeerInfo>,
    /// During an unfinished secret rotation: the secret it replaced and the peers on it.
    previous_secret: Option<(ClusterSecret, Vec<NodeId>)>,
}

impl NodeKeys {
    /// Read the node's files (the master key opened with its key-encryption key); writes
    /// nothing.
    fn load(config: &Config) -> Result<NodeKeys, DaemonError> {
        let mut keys = NodeKeys {
            master: load_master_identity(config)?,
            cluster_secret: node_files::load_cluster_secret(&config.config_dir)?,
            wg_private_key: node_files::load_wg_private_key(&config.config_dir)?,
            peers: node_files::load_peers(&config.config_dir)?,
            removed: node_files::load_removed(&config.config_dir)?,
            previous_secret: node_files::load_previous_secret(&config.config_dir)?,
        };
        // A peer file left by a crash during a removal.
        let removed = &keys.removed;
        keys.peers
            .retain(|peer| !removed.iter().any(|r| r.node_id == peer.node_id));
        Ok(keys)
    }
}

/// What [`check_node_files`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFilesSummary {
    pub master_address: String,
    /// The other members in `peers/`.
    pub members: usize,
    /// A node set up by hand has no cluster files until its first run creates them.
    pub cluster_files_pending: bool,
}

/// Read the node's files as [`run`] reads them, writing nothing (`rustbalance doctor`).
pub fn check_node_files(config: &Config) -> Result<NodeFilesSummary, DaemonError> {
    node_files::ensure_not_removed(&config.config_dir)?;
    if node_files::lacks_cluster_files(&config.config_dir)? {
        return Ok(NodeFilesSummary {
            master_address: load_master_identity(config)?.address().to_string(),
            members: 0,
            cluster_files_pending: true,
        });
    }
    let keys = NodeKeys::load(config)?;
    Ok(NodeFilesSummary {
        master_address: keys.master.address().to_string(),
        members: keys.peers.len(),
        cluster_files_pending: false,
    })
}

/// Run the node in the foreground until SIGTERM or SIGINT.
pub fn run(config: Config, arti: ArtiSettings) -> Result<(), DaemonError> {
    node_files::ensure_not_removed(&config.config_dir)?;
    if node_files::create_cluster_files_if_none(&config.config_dir)? {
        tracing::info!(
            "no cluster files in {}: created {} and {} for this node, which runs alone until another joins it (`rustbalance token` there; set [cluster] endpoint first)",
            config.config_dir.display(),
            node_files::CLUSTER_SECRET_FILE,
            node_files::WG_PRIVATE_KEY_FILE
        );
    }
    let keys = NodeKeys::load(&config)?;
    fsutil::create_private_dir(&config.state_dir).map_err(|source| DaemonError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(run_async(config, arti, keys))
}

fn load_master_identity(config: &Config) -> Result<MasterIdentity, DaemonError> {
    let path = config.master_key_path();
    let key = load_master_key(&path)?;
    MasterIdentity::from_expanded_secret(key.expanded_secret())
        .map_err(|err| DaemonError::UnusableMasterKey(path, err.to_string()))
}

async fn run_async(config: Config, arti: ArtiSettings, keys: NodeKeys) -> Result<(), DaemonError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
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
    show_unchecked_backends(&board, &config);
    let status_server = StatusServer::bind(&config.state_dir)?;
    let control_server = ControlServer::bind(&config.state_dir)?;
    let metrics_server = match config.status.metrics_listen {
        Some(addr) => Some(MetricsServer::bind(addr).await?),
        None => None,
    };

    let mut publisher = PublishPlan::new(
        MasterSigner::new(keys.master),
        config.timing.publish_interval,
    );
    resume_uploads(&config, !keys.peers.is_empty(), &mut publisher);

    let (transport, inbox) = bind_transport(
        &config,
        keys.wg_private_key,
        // Removed members too: the transport must still reach one that speaks, to tell it.
        &[keys.peers.as_slice(), keys.removed.as_slice()].concat(),
        &keys.cluster_secret,
    )
    .await?;
    tracing::info!(
        "cluster transport listening on UDP {}",
        transport.local_addr()
    );
    // A rotation was under way: the tunnels to the peers not yet switched keep the old key.
    if let Some((previous, peers)) = &keys.previous_secret {
        for peer in peers {
            transport.rekey_peer(peer, previous).await;
        }
    }

    let (publishing_tx, publishing_rx) = watch::channel(false);
    let (local_tx, local_rx) = mpsc::channel(64);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (uploads_tx, uploads_rx) = watch::channel(publisher.saved_uploads());
    let progress = Arc::new(AtomicU64::new(unix_millis()));
    let election = Election::new(
        config.node.id.clone(),
        config.node.priority,
        keys.peers
            .iter()
            .map(|peer| (peer.node_id.clone(), peer.priority)),
        (&config.timing).into(),
        Timestamp::now(),
    );
    let state_dir = config.state_dir.clone();
    let lease = LeaseCore::new(
        election,
        PublishAbility::new(config.timing.upload_failure_release),
        ServedWatch::new(config.timing.hsdir_failure),
    );
    let (me, priority, endpoint, config_dir, claim_wait, config_heartbeat) = (
        config.node.id.clone(),
        config.node.priority,
        config.cluster.endpoint.clone(),
        config.config_dir.clone(),
        config.timing.publisher_timeout,
        config.timing.heartbeat_interval,
    );
    let (configs_tx, configs) = watch::channel(Arc::new(config));
    let shared_config = ConfigKeeper::start(configs_tx, board.clone())?;
    let (commands_tx, commands_rx) = mpsc::channel(16);
    let setup = ClusterSetup {
        me,
        priority,
        endpoint,
        config_dir,
        shared_config,
        members: keys.peers,
        removed: keys.removed,
        secret: keys.cluster_secret,
        previous_secret: keys.previous_secret,
        rekey_after_silence: 3 * config_heartbeat,
        lease,
        claim_wait,
        transport,
        publishing: publishing_tx,
        board: board.clone(),
        progress: progress.clone(),
    };
    let mut cluster_task = tokio::spawn(cluster::run(
        setup,
        inbox,
        local_rx,
        configs.clone(),
        commands_rx,
        shutdown_rx,
    ));
    let status_task = tokio::spawn(status_server.serve(board.clone()));
    let control_task = tokio::spawn(control_server.serve(commands_tx.clone()));
    let metrics_task = metrics_server.map(|server| tokio::spawn(server.serve(board.clone())));
    let state_task = tokio::spawn(state_writer::run(
        state_dir.clone(),
        board.clone(),
        uploads_rx.clone(),
    ));
    let watchdog_task =
        systemd::watchdog_interval().map(|interval| tokio::spawn(watchdog(progress, interval)));

    let tor_side = TorSide {
        arti,
        configs,
        publisher,
        board: board.clone(),
        local_tx,
        publishing_rx,
        uploads_tx,
    }
    .run();
    tokio::pin!(tor_side);
    let mut cluster_stopped = false;
    let outcome = loop {
        tokio::select! {
            result = &mut tor_side => break result,
            exit = &mut cluster_task => {
                cluster_stopped = true;
                break Err(match exit {
                    Ok(ClusterExit::Removed { by }) => DaemonError::Removed { by },
                    _ => DaemonError::LoopStopped("cluster"),
                });
            }
            _ = sighup.recv() => {
                let _ = commands_tx.send(OperatorCommand::Reload).await;
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM received, shutting down");
                break Ok(());
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT received, shutting down");
                break Ok(());
            }
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
    state_task.abort();
    // A clean stop released the lease to the peers: whatever it uploaded may be replaced
    // before it is back, so it must not resume those uploads (see `resume_uploads`).
    board.update(|status| {
        if !cluster_stopped && !status.peers.is_empty() {
            status.role = Role::Standby;
        }
    });
    state_writer::save_now(&state_dir, &board, &uploads_rx);
    status_task.abort();
    control_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    outcome
}

/// Bind the cluster transport with every known peer (resolving their endpoints).
async fn bind_transport(
    config: &Config,
    private_key: WgPrivateKey,
    peers: &[PeerInfo],
    secret: &ClusterSecret,
) -> Result<(Transport, Inbox), DaemonError> {
    let mut transport_peers = Vec::new();
    for peer in peers {
        transport_peers.push(cluster::transport_peer(peer).await);
    }
    Ok(Transport::bind(
        config.cluster.listen,
        config.node.id.clone(),
        private_key,
        transport_peers,
        secret,
    )
    .await?)
}

/// Give the publisher the uploads saved before a restart, when it is safe to trust them: this
/// node was publishing, and either it has no peers or it is back before any peer could have
/// taken over (publisher timeout + takeover grace). Otherwise a new lease uploads at once.
fn resume_uploads(config: &Config, has_peers: bool, publisher: &mut PublishPlan<MasterSigner>) {
    let saved = match state::load(&config.state_dir, &config.node.id) {
        Ok(saved) => saved,
        Err(err) => {
            tracing::warn!("{err}");
            None
        }
    };
    let Some(saved) = saved else {
        return;
    };
    let now = Timestamp::now().as_unix_secs();
    let takeover_after = config.timing.publisher_timeout + config.timing.takeover_grace;
    if let Some(uploads) = saved.uploads_to_resume(now, has_peers, takeover_after) {
        tracing::info!(
            "resuming from state.json ({} s old): {} upload(s) still current are not repeated",
            now.saturating_sub(saved.saved_at),
            uploads.len()
        );
        publisher.restore(uploads);
    }
}

/// Tell systemd's watchdog the node is alive while the cluster loop makes progress (it goes
/// round at least every second); a hung loop stops the keep-alives and systemd restarts the
/// node.
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
    Timestamp::now().as_unix_millis()
}

/// Every configured backend as unchecked: the status until the health loop's first round.
pub(crate) fn show_unchecked_backends(board: &StatusBoard, config: &Config) {
    let unchecked = HealthMonitor::new(config).report();
    board.update(|status| status.backends = unchecked.into_iter().map(backend_status).collect());
}

fn backend_status(report: BackendReport) -> BackendStatus {
    BackendStatus {
        name: report.name,
        address: report.address,
        state: report.state.to_string(),
        intro_points: report.intro_points,
        last_fetch: report.last_seen.map(Timestamp::as_unix_secs),
        failure_count: report.failure_count,
        last_error: report.last_error,
        offers_pow: report.offers_pow,
    }
}
