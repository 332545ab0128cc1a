//! The Tor network: the seam the rest of the node talks through, and its Arti implementation.
//!
//! [`network`] defines the seam: the [`TorNetwork`] trait (a live consensus, the time periods,
//! the HSDirs responsible for a blinded key, one descriptor fetch, one upload, a rendezvous
//! with a backend, one HTTP probe) with plain values and typed errors. Everything else in this
//! folder is the Arti implementation, and the only code in the program that uses arti-client,
//! tor-circmgr, tor-dirclient, tor-dirmgr, tor-hsclient, tor-netdir, tor-rtcompat or
//! tor-proto: turning the operator's `[arti]` table into Arti's configuration
//! ([`ArtiSettings`]), bootstrapping the in-process client and reporting the consensus it holds
//! ([`EmbeddedTor`]), HSDir requests, the rendezvous check and the HTTP probe. An Arti upgrade
//! touches this directory (see `vendor-notes/arti.md`); the deciding logic elsewhere is tested
//! against a simulated network. ARCHITECTURE.md, "The Tor seam", has the whole picture.

mod client;
mod hsdir;
pub mod network;
mod probe;
mod settings;

use std::sync::Arc;
use std::time::Duration;

use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;

pub use client::{ConsensusSummary, EmbeddedTor};
pub use network::{
    HsDirError, HsDirId, HsDirSet, HttpProbe, LivenessError, PeriodInfo, ProbeError, TorError,
    TorNetwork,
};
pub use settings::{ArtiConfigError, ArtiSettings};

use crate::keys::onion_address::OnionAddress;

/// Make rustls usable. Arti is built with its `rustls` feature (no OpenSSL, so the binary can
/// be static), which leaves the choice of crypto provider to the program; without one, the
/// first TLS handshake to a relay fails. Idempotent: later calls are no-ops.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TorNetwork for EmbeddedTor {
    fn has_live_consensus(&self) -> bool {
        self.live_netdir_now().is_some()
    }

    async fn current_period(&self) -> Result<PeriodInfo, TorError> {
        let (current, periods) = self.periods().await?;
        periods
            .into_iter()
            .find(|info| info.time_period == current)
            .ok_or(TorError::NoConsensus)
    }

    async fn publish_periods(&self) -> Result<Vec<PeriodInfo>, TorError> {
        Ok(self.periods().await?.1)
    }

    async fn hsdirs(
        &self,
        blinded_id: &HsBlindId,
        period: TimePeriod,
        set: HsDirSet,
    ) -> Result<Vec<HsDirId>, TorError> {
        self.responsible_hsdirs(blinded_id, period, set).await
    }

    async fn fetch_descriptor(
        &self,
        hsdir: &HsDirId,
        blinded_id: &HsBlindId,
    ) -> Result<String, HsDirError> {
        self.download(hsdir, blinded_id).await
    }

    async fn upload_descriptor(
        &self,
        hsdir: &HsDirId,
        descriptor: Arc<str>,
    ) -> Result<(), HsDirError> {
        self.upload(hsdir, descriptor).await
    }

    async fn rendezvous(
        &self,
        address: &OnionAddress,
        timeout: Duration,
    ) -> Result<(), LivenessError> {
        self.rendezvous_check(address, timeout).await
    }

    async fn probe(&self, address: &OnionAddress, probe: &HttpProbe<'_>) -> Result<(), ProbeError> {
        self.http_probe(address, probe).await
    }
}
