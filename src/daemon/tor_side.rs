//! The daemon's Tor side: the embedded Arti client and the loops that use it.
//!
//! A supervisor owns the client. It bootstraps it (retrying while the network is
//! unreachable), then runs the health loop, the publish loop and the consensus watcher until
//! one of three things happens:
//! - a new configuration arrives (SIGHUP): the loops restart with the new backends and timing,
//!   on the same client, and the publisher keeps what it uploaded (no needless re-upload);
//! - the client stops making progress ([`StallDetector`]): the cluster loop is told at once
//!   (this node cannot publish), the client is dropped and waited for until it has released
//!   its state files, a new one is built in-process, logged, and the loops resume on it;
//! - a loop fails for good: the daemon stops with an error.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{backend_status, unix_millis, DaemonError};
use crate::clock::Timestamp;
use crate::cluster::lease::LocalEvent;
use crate::config::Config;
use crate::daemon::status::{HsDirsView, PublishStatus, RoundProgress, StatusBoard};
use crate::daemon::systemd;
use crate::descriptor::signer::intro_point_id;
use crate::descriptor::signer::MasterSigner;
use crate::health::stall::StallDetector;
use crate::health::{self, HealthMonitor, HealthyBackends};
use crate::keys::onion_address::OnionAddress;
use crate::publish::plan::{judge_read_back, HeldCopy, HsDirCopies, PublishPlan, UploadResult};
use crate::publish::{publish_due, read_back};
use crate::storage::state::SavedUpload;
use crate::tor::{ArtiSettings, EmbeddedTor, TorError, TorNetwork};

/// Wait between two bootstrap attempts when the Tor network cannot be reached.
const BOOTSTRAP_RETRY: Duration = Duration::from_secs(30);
/// How long a node that gained the lease waits for the HSDirs' copies before its first upload.
const LEASE_READ_BACK_WAIT: Duration = Duration::from_secs(5);
/// How often the stall detector looks.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Everything the Tor side reports to or shares with the rest of the daemon.
pub struct TorSide {
    /// Arti's configuration; `[arti]` changes take effect at a restart.
    pub arti: ArtiSettings,
    pub configs: watch::Receiver<Arc<Config>>,
    pub publisher: PublishPlan<MasterSigner>,
    pub board: StatusBoard,
    pub local_tx: mpsc::Sender<LocalEvent>,
    pub publishing_rx: watch::Receiver<bool>,
    /// The publisher's uploads, for state.json.
    pub uploads_tx: watch::Sender<Vec<SavedUpload>>,
}

/// Why the loops on one client ended.
enum End {
    Reload,
    Stalled(String),
    Failed(DaemonError),
}

impl TorSide {
    /// Run until a fatal error.
    pub async fn run(mut self) -> Result<(), DaemonError> {
        let mut was_publishing = false;
        let mut ready_sent = false;
        // Backend health outlives a rebuilt client and a reload that leaves the backends as
        // they were; a configuration with other backends (or thresholds) starts it over.
        let mut watched = self.configs.borrow().clone();
        let mut monitor = HealthMonitor::new(&watched);
        loop {
            let tor = Arc::new(self.bootstrap().await?);
            let consensus = tor.live_consensus().await?;
            tracing::info!("consensus: {consensus}");
            self.board.update(|status| {
                status.tor.bootstrapped = true;
                status.tor.consensus_valid_after =
                    Some(Timestamp::from_system_time(consensus.valid_after).as_unix_secs());
                status.tor.last_error = None;
            });
            if !ready_sent {
                // Ready in systemd's sense: config loaded, cluster running, Tor bootstrapped.
                systemd::notify("READY=1\nSTATUS=Tor bootstrapped; checking backends");
                ready_sent = true;
            }
            let _ = self.local_tx.send(LocalEvent::TorReady).await;
            // Fetches and uploads that worked, in Unix milliseconds: the stall detector's input.
            let progress = AtomicU64::new(unix_millis());

            let stalled = loop {
                let config = self.configs.borrow_and_update().clone();
                // Also a configuration that arrived while the client bootstrapped: a node
                // back from a stop learns the cluster's newer shared version within a
                // heartbeat, before its Tor is ready.
                if health::checks_change(&watched, &config) {
                    monitor = HealthMonitor::new(&config);
                    watched = config.clone();
                }
                self.publisher.set_interval(config.timing.publish_interval);
                self.publisher.set_authorized_clients(
                    config
                        .authorized_clients
                        .iter()
                        .map(|key| *key.as_ref())
                        .collect(),
                );
                self.board.update(|status| {
                    status.authorized_clients = config.authorized_clients.len();
                });
                let (healthy_tx, healthy_rx) = watch::channel(None);
                let (copies_tx, copies_rx) = watch::channel(Vec::new());
                let publishing_rx = self.publishing_rx.clone();
                let master = self.publisher.master_address();
                let health = HealthLoop {
                    tor: &tor,
                    master,
                    interval: config.timing.health_interval,
                    refresh: config.timing.descriptor_refresh,
                    healthy_tx,
                    copies_tx,
                    local_tx: &self.local_tx,
                    board: &self.board,
                    progress: &progress,
                };
                let end = tokio::select! {
                    _ = health.run(&mut monitor) => {
                        End::Failed(DaemonError::LoopStopped("health"))
                    }
                    _ = publish_loop(&tor, &mut self.publisher, &mut was_publishing, healthy_rx, copies_rx, publishing_rx, &self.local_tx, &self.board, &self.uploads_tx, &progress) => {
                        End::Failed(DaemonError::LoopStopped("publish"))
                    }
                    result = consensus_watcher(&tor, consensus.valid_after, &self.board) => {
                        End::Failed(result.map_or_else(DaemonError::from, |()| DaemonError::LoopStopped("consensus")))
                    }
                    reason = watch_for_stall(&tor, &progress, &config, &self.local_tx) => End::Stalled(reason),
                    changed = self.configs.changed() => match changed {
                        Ok(()) => End::Reload,
                        // The daemon is stopping.
                        Err(_) => return Ok(()),
                    },
                };
                match end {
                    End::Reload => {
                        tracing::info!("configuration reloaded: new backends and timing in force");
                    }
                    End::Stalled(reason) => break reason,
                    End::Failed(err) => return Err(err),
                }
            };
            tracing::warn!("the Tor client stopped making progress ({stalled}): rebuilding it");
            // The cluster hears at once that this node cannot publish now.
            let _ = self.local_tx.send(LocalEvent::TorLost).await;
            self.board.update(|status| {
                status.tor.bootstrapped = false;
                status.tor.last_error = Some(format!("rebuilt the Tor client: {stalled}"));
            });
            // Nothing else holds the client: the loops that borrowed it have ended.
            match Arc::try_unwrap(tor) {
                Ok(tor) => tor.shut_down().await,
                Err(_) => tracing::warn!(
                    "the old Tor client is still in use; building the new one anyway"
                ),
            }
        }
    }

    /// Create and bootstrap a client, retrying while the network cannot be reached.
    async fn bootstrap(&self) -> Result<EmbeddedTor, DaemonError> {
        loop {
            let board = self.board.clone();
            let on_progress = move |percent| {
                board.update(|status| status.tor.bootstrap_percent = percent);
            };
            match EmbeddedTor::bootstrap(&self.arti, on_progress).await {
                Ok(tor) => return Ok(tor),
                // A bad configuration or runtime does not get better by waiting.
                Err(err @ (TorError::Create(_) | TorError::Runtime(_))) => return Err(err.into()),
                Err(err) => {
                    tracing::error!(
                        "{err}; retrying in {} s (the cluster keeps running meanwhile)",
                        BOOTSTRAP_RETRY.as_secs()
                    );
                    self.board
                        .update(|status| status.tor.last_error = Some(err.to_string()));
                    tokio::time::sleep(BOOTSTRAP_RETRY).await;
                }
            }
        }
    }
}

/// Returns (with the reason) once the client has made no progress for `timing.tor_stall`.
/// Meanwhile tells the cluster loop at once when the client loses its live consensus (this
/// node cannot publish then) and when it holds one again.
async fn watch_for_stall(
    tor: &EmbeddedTor,
    progress: &AtomicU64,
    config: &Config,
    local_tx: &mpsc::Sender<LocalEvent>,
) -> String {
    let mut detector = StallDetector::new(
        config.timing.tor_stall,
        !config.backends.is_empty(),
        Timestamp::now(),
    );
    let mut consensus_held = true;
    loop {
        tokio::time::sleep(STALL_CHECK).await;
        let now = Timestamp::now();
        let live = tor.has_live_consensus();
        if live {
            detector.live_consensus(now);
        }
        if live != consensus_held {
            consensus_held = live;
            if live {
                tracing::info!("the Tor client holds a live consensus again");
            } else {
                tracing::warn!("the Tor client has no live consensus: this node cannot publish until it has one and reaches an HSDir");
            }
            let news = if live {
                LocalEvent::TorReady
            } else {
                LocalEvent::TorLost
            };
            let _ = local_tx.send(news).await;
        }
        detector.progress(Timestamp::from_unix_millis(
            progress.load(Ordering::Relaxed),
        ));
        if let Some(reason) = detector.stalled(now) {
            return reason;
        }
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
                status.tor.consensus_valid_after =
                    Some(Timestamp::from_system_time(consensus.valid_after).as_unix_secs());
            });
        }
    }
    Err(TorError::Shutdown)
}

/// The health loop: check the backends at start and every `interval`, and read the master
/// descriptor back from the HSDirs; hand the healthy set and the copies to the publish loop,
/// the round's outcome to the cluster loop and everything to status. Between rounds, every
/// `refresh`, fetch the Healthy backends' descriptors again and hand a changed healthy set on.
struct HealthLoop<'a> {
    tor: &'a EmbeddedTor,
    master: OnionAddress,
    interval: Duration,
    refresh: Duration,
    healthy_tx: watch::Sender<Option<HealthyBackends>>,
    copies_tx: watch::Sender<Vec<HsDirCopies>>,
    local_tx: &'a mpsc::Sender<LocalEvent>,
    board: &'a StatusBoard,
    progress: &'a AtomicU64,
}

impl HealthLoop<'_> {
    async fn run(self, monitor: &mut HealthMonitor) {
        let mut first_round = true;
        loop {
            let started = Instant::now();
            let on_checked = |done: usize, of: usize| {
                if !first_round {
                    return;
                }
                self.board
                    .update(|status| status.first_health_round = Some(RoundProgress { done, of }));
                // A person at the terminal sees the first round advance, a quarter at a time.
                if done < of && (done * 4 / of) > ((done - 1) * 4 / of) {
                    tracing::info!("first health round: {done}/{of} backends checked");
                }
            };
            let healthy = monitor.run_round(self.tor, on_checked).await;
            if first_round {
                self.board.update(|status| status.first_health_round = None);
                first_round = false;
            }
            tracing::info!(
                "health round: {} backend(s) checked in {:.1} s, {} healthy",
                monitor.checked_last_round(),
                started.elapsed().as_secs_f64(),
                healthy.len()
            );
            let backends = monitor.report().into_iter().map(backend_status).collect();
            self.board.update(|status| status.backends = backends);
            if monitor.has_verdict() {
                let _ = self.healthy_tx.send(Some(healthy.clone()));
            }
            let reached = monitor.reached_last_round();
            if reached > 0 {
                self.progress.store(unix_millis(), Ordering::Relaxed);
            }
            // The cluster hears first, before the read-back adds its own HSDir timeouts: a
            // node whose Tor is cut must stop announcing that it can publish within one round.
            let checked = monitor.checked_last_round();
            // No receiver left means the daemon is stopping.
            let _ = self
                .local_tx
                .send(LocalEvent::HealthRound { checked, reached })
                .await;

            let copies = read_back(self.tor, &self.master, Timestamp::now()).await;
            if copies.iter().any(|c| !c.answered.is_empty()) {
                self.progress.store(unix_millis(), Ordering::Relaxed);
            }
            let healthy_ids = healthy_ids(&healthy);
            let views = hsdir_views(&copies, &healthy_ids);
            self.board.update(|status| status.hsdirs = views);
            let _ = self
                .local_tx
                .send(LocalEvent::ReadBack(judge_read_back(&copies, &healthy_ids)))
                .await;
            let _ = self.copies_tx.send(copies);
            self.refresh_until(monitor, Instant::now() + self.interval)
                .await;
        }
    }

    /// Refresh the Healthy backends' descriptors every `refresh` until `next_round`.
    async fn refresh_until(&self, monitor: &mut HealthMonitor, next_round: Instant) {
        loop {
            let wake = (Instant::now() + self.refresh).min(next_round);
            tokio::time::sleep_until(wake).await;
            if Instant::now() >= next_round {
                return;
            }
            if let Some(healthy) = monitor.refresh_descriptors(self.tor).await {
                let backends = monitor.report().into_iter().map(backend_status).collect();
                self.board.update(|status| status.backends = backends);
                let _ = self.healthy_tx.send(Some(healthy));
            }
        }
    }
}

/// The introduction points (by id) of the backends this node finds healthy.
fn healthy_ids(healthy: &HealthyBackends) -> BTreeSet<String> {
    healthy
        .iter()
        .flat_map(|(_, ips)| ips.iter().map(intro_point_id))
        .collect()
}

/// What status shows of the read-back copies.
fn hsdir_views(copies: &[HsDirCopies], healthy_ids: &BTreeSet<String>) -> Vec<HsDirsView> {
    copies
        .iter()
        .map(|period| {
            let held: Vec<&HeldCopy> = period
                .answered
                .iter()
                .filter_map(|(_, c)| c.as_ref())
                .collect();
            let newest_copies = period.newest();
            let newest = newest_copies.first().map(|c| c.revision_counter);
            HsDirsView {
                time_period: period.period,
                responsible: period.answered.len() + period.unreachable,
                answered: period.answered.len(),
                holding: held.len(),
                newest_revision: newest,
                holding_newest: newest_copies.len(),
                only_healthy_backends: newest_copies
                    .iter()
                    .all(|c| c.intro_points.iter().all(|ip| healthy_ids.contains(ip))),
                checked_at: period.read_at.as_unix_secs(),
            }
        })
        .collect()
}

/// While this node holds the lease: publish once the first health round is done, then
/// whenever something is due. `was_publishing` outlives the loop (a reload restarts it), so
/// only a real gain of the lease counts as one.
#[allow(clippy::too_many_arguments)]
async fn publish_loop(
    tor: &EmbeddedTor,
    publisher: &mut PublishPlan<MasterSigner>,
    was_publishing: &mut bool,
    mut healthy_rx: watch::Receiver<Option<HealthyBackends>>,
    mut copies_rx: watch::Receiver<Vec<HsDirCopies>>,
    mut publishing_rx: watch::Receiver<bool>,
    local_tx: &mpsc::Sender<LocalEvent>,
    board: &StatusBoard,
    uploads_tx: &watch::Sender<Vec<SavedUpload>>,
    progress: &AtomicU64,
) {
    let Ok(mut consensus_updates) = tor.consensus_updates() else {
        return;
    };
    loop {
        // What the HSDirs hold: standbys too keep the floor of the revision counter, so that a
        // takeover publishes above the last publisher's revision.
        if copies_rx.has_changed().unwrap_or(false) {
            for period in copies_rx.borrow_and_update().iter() {
                publisher.observe_copies(period);
            }
        }
        let publishing = *publishing_rx.borrow_and_update();
        if publishing && !*was_publishing {
            publisher.on_lease_gained();
            // The last publisher may have uploaded since this node's last read-back, with a
            // revision counter ahead of this node's clock (its clock ran ahead): read what the
            // HSDirs hold now, so the first upload of this lease goes above it. Bounded, so
            // HSDirs that do not answer delay a takeover only a little.
            let master = publisher.master_address();
            if let Ok(copies) = tokio::time::timeout(
                LEASE_READ_BACK_WAIT,
                read_back(tor, &master, Timestamp::now()),
            )
            .await
            {
                for period in &copies {
                    publisher.observe_copies(period);
                }
            }
        }
        *was_publishing = publishing;
        let healthy = healthy_rx.borrow_and_update().clone();
        let (true, Some(healthy)) = (publishing, healthy) else {
            tokio::select! {
                changed = publishing_rx.changed() => if changed.is_err() { return },
                changed = healthy_rx.changed() => if changed.is_err() { return },
                changed = copies_rx.changed() => if changed.is_err() { return },
            }
            continue;
        };
        // Losing the lease stops the round at once, retries in flight included: another node
        // publishes now, and every upload of ours could only race it.
        let round = tokio::select! {
            round = publish_due(tor, publisher, &healthy, Timestamp::now) => round,
            _ = publishing_rx.wait_for(|publishing| !*publishing) => {
                tracing::info!("lost the lease: the uploads in flight are abandoned");
                continue;
            }
        };
        // An answer from an HSDir, even a refusal, shows the client at work.
        if matches!(
            round.uploads,
            UploadResult::Accepted | UploadResult::Refused
        ) {
            progress.store(unix_millis(), Ordering::Relaxed);
        }
        let news = match round.uploads {
            UploadResult::Accepted => Some(LocalEvent::UploadsAccepted),
            UploadResult::Refused => Some(LocalEvent::UploadsRefused),
            UploadResult::Failed => Some(LocalEvent::UploadsFailed),
            UploadResult::NothingDue => None,
        };
        if let Some(news) = news {
            let _ = local_tx.send(news).await;
        }
        let uploads = publisher.saved_uploads();
        let publishes = uploads
            .iter()
            .map(|upload| PublishStatus {
                time_period: upload.time_period,
                published_at: upload.published_at,
                revision_counter: upload.revision_counter,
                intro_points: upload.intro_points.len(),
                descriptors: upload.descriptors,
                hsdirs_accepted: upload.hsdirs_accepted,
                hsdirs_tried: upload.hsdirs_tried,
            })
            .collect();
        uploads_tx.send_replace(uploads);
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
            Some(at) => at.saturating_duration_since(Timestamp::now()),
            // Nothing to publish until the healthy set changes.
            None => Duration::from_secs(24 * 3600),
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            changed = healthy_rx.changed() => if changed.is_err() { return },
            changed = publishing_rx.changed() => if changed.is_err() { return },
            changed = copies_rx.changed() => if changed.is_err() { return },
            _ = consensus_updates.next() => {}
        }
    }
}
