//! The in-process Arti client: bootstrap it and say which consensus it holds.
//!
//! Bootstrap progress is logged as it happens, so an operator watching `journalctl` sees
//! whether the node is stuck dialling fallbacks or fetching microdescriptors. Arti's own
//! `timely_netdir()` accepts a consensus days old, which would give the wrong time period on
//! a network with short periods (and a stale HSDir ring anywhere); everything that computes
//! periods or HSDirs must therefore use [`EmbeddedTor::live_consensus`], which waits for a
//! consensus that is live right now (`Timeliness::Strict`).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arti_client::TorClient;
use futures::stream::BoxStream;
use futures::StreamExt;
use tor_netdir::{NetDir, Timeliness};
use tor_rtcompat::PreferredRuntime;

use super::network::TorError;
use super::ArtiSettings;

/// A bootstrapped embedded Tor client.
/// How long [`EmbeddedTor::shut_down`] waits for a dropped client's background tasks to end
/// and release the lock on the state files. Arti 0.47 may keep them for much longer (measured:
/// more than 75 s; vendor-notes/arti.md); the new client then starts read-only, which costs the
/// saving of guard and timeout state, not the ability to publish.
const STOP_WAIT: Duration = Duration::from_secs(30);

pub struct EmbeddedTor {
    pub(super) client: Arc<TorClient<PreferredRuntime>>,
}

/// The facts of one consensus an operator wants to see in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusSummary {
    pub valid_after: SystemTime,
    pub valid_until: SystemTime,
    /// Relays listed in the consensus.
    pub relays: usize,
    /// Relays we also hold descriptors for, i.e. can build circuits through.
    pub usable_relays: usize,
    /// Usable relays with the HSDir flag: the ring that stores onion-service descriptors.
    pub hsdirs: usize,
}

impl ConsensusSummary {
    fn of(netdir: &NetDir) -> Self {
        let lifetime = netdir.lifetime();
        ConsensusSummary {
            valid_after: lifetime.valid_after(),
            valid_until: lifetime.valid_until(),
            relays: netdir.all_relays().count(),
            usable_relays: netdir.relays().count(),
            hsdirs: netdir
                .relays()
                .filter(|relay| relay.rs().is_flagged_hsdir())
                .count(),
        }
    }
}

impl fmt::Display for ConsensusSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "valid-after {}, valid-until {}, {} relays ({} usable), {} HSDirs",
            humantime::format_rfc3339_seconds(self.valid_after),
            humantime::format_rfc3339_seconds(self.valid_until),
            self.relays,
            self.usable_relays,
            self.hsdirs
        )
    }
}

impl EmbeddedTor {
    /// Create the client from `settings` and bootstrap it, logging progress as it goes.
    /// Must run inside the tokio runtime.
    /// `on_progress` hears each new whole percentage of the bootstrap (for `status`).
    pub async fn bootstrap(
        settings: &ArtiSettings,
        on_progress: impl Fn(u8) + Send + 'static,
    ) -> Result<Self, TorError> {
        super::install_crypto_provider();
        let runtime = PreferredRuntime::current().map_err(TorError::Runtime)?;
        let client = TorClient::with_runtime(runtime)
            .config(settings.client_config().clone())
            .create_unbootstrapped()
            .map_err(|e| TorError::Create(e.to_string()))?;

        let progress = tokio::spawn(report_bootstrap_progress(
            client.bootstrap_events(),
            on_progress,
        ));
        let outcome = client.bootstrap().await;
        progress.abort();
        let tor = EmbeddedTor { client };
        if let Err(e) = outcome {
            // The next attempt needs the state files this client locked.
            tor.shut_down().await;
            return Err(TorError::Bootstrap(e.to_string()));
        }
        tracing::info!("Tor bootstrap complete");
        Ok(tor)
    }

    /// Drops the client and waits (up to [`STOP_WAIT`]) until it has really stopped and
    /// released the lock on its state files. A client built while the old one still holds
    /// that lock runs read-only: it cannot save what it learns (guards, consensus), so after
    /// a repair it takes much longer to become useful.
    pub async fn shut_down(self) {
        let stopped = self.client.wait_for_stop();
        drop(self);
        let started = std::time::Instant::now();
        tracing::info!("waiting for the old Tor client to release its state files");
        match tokio::time::timeout(STOP_WAIT, stopped).await {
            Ok(()) => tracing::info!(
                "the old Tor client stopped after {:.1} s",
                started.elapsed().as_secs_f64()
            ),
            Err(_) => tracing::warn!(
                "the old Tor client did not stop within {} s; the new one starts read-only and takes its state files over once they are released",
                STOP_WAIT.as_secs()
            ),
        }
    }

    /// Wait for a consensus that is live now, and summarise it.
    pub async fn live_consensus(&self) -> Result<ConsensusSummary, TorError> {
        let netdir = self.live_netdir().await?;
        Ok(ConsensusSummary::of(&netdir))
    }

    /// The network directory of a consensus that is live now, waiting for one if needed.
    pub(super) async fn live_netdir(&self) -> Result<Arc<NetDir>, TorError> {
        let dirmgr = self
            .client
            .dirmgr()
            .map_err(|e| TorError::Bootstrap(e.to_string()))?;
        dirmgr
            .wait_for_netdir(Timeliness::Strict)
            .await
            .map_err(|_| TorError::Shutdown)
    }

    /// The network directory of a consensus that is live right now, if one is held (no
    /// waiting).
    pub(super) fn live_netdir_now(&self) -> Option<Arc<NetDir>> {
        let dirmgr = self.client.dirmgr().ok()?;
        dirmgr.netdir(Timeliness::Strict).ok()
    }

    /// A summary of every new live consensus from now on. Ends when the client shuts down.
    pub fn consensus_updates(&self) -> Result<BoxStream<'static, ConsensusSummary>, TorError> {
        let dirmgr = self
            .client
            .dirmgr()
            .map_err(|e| TorError::Bootstrap(e.to_string()))?;
        let events = dirmgr.events();
        Ok(events
            .filter_map(move |_| {
                let summary = dirmgr
                    .netdir(Timeliness::Strict)
                    .ok()
                    .map(|netdir| ConsensusSummary::of(&netdir));
                async move { summary }
            })
            .boxed())
    }
}

/// Report each bootstrap step to `on_progress`, and log it: at info when the whole percentage
/// moves by ten or Arti reports a blockage (the operator needs to act), at debug otherwise.
async fn report_bootstrap_progress(
    mut events: arti_client::status::BootstrapEvents,
    on_progress: impl Fn(u8),
) {
    let mut last_logged_percent = None;
    while let Some(status) = events.next().await {
        // as_frac is within 0..=1; the clamp keeps a surprise from wrapping.
        let percent = (status.as_frac() * 100.0).round().clamp(0.0, 100.0) as u8;
        on_progress(percent);
        if let Some(blockage) = status.blocked() {
            tracing::warn!("Tor bootstrap blocked at {percent}%: {blockage}");
        } else if last_logged_percent.is_none_or(|last| percent >= last + 10) {
            tracing::info!("Tor bootstrap: {status}");
            last_logged_percent = Some(percent);
        } else {
            tracing::debug!("Tor bootstrap: {status}");
        }
    }
}
