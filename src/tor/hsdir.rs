//! The Arti side of HSDir requests: one GET of a descriptor, one POST of ours.
//!
//! Arti's own onion-service client and service code do both, but privately; this is the small
//! piece of glue they would otherwise be. Every request goes over an anonymous HSDir circuit
//! from Arti's `HsCircPool` and a `BEGIN_DIR` stream (rend-spec-v3 §2.2.5, §2.2.6), within
//! [`HSDIR_REQUEST_TIMEOUT`]. `tor_dirclient::send_request` reports non-200 replies as `Ok`,
//! so the status code is judged here and turned into an [`HsDirError`]. Which HSDirs to ask,
//! what to do with the answer, and retries are the callers' decisions (see `health::fetch` and
//! `publish`).

use std::sync::Arc;
use std::time::Duration;

use tor_dirclient::request::{HsDescDownloadRequest, HsDescUploadRequest, Requestable};
use tor_dirclient::DirResponse;
use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;
use tor_llcrypto::pk::rsa::RsaIdentity;
use tor_netdir::{HsDirParams, Relay};

use super::network::{HsDirError, HsDirId, HsDirSet, PeriodInfo, TorError};
use super::EmbeddedTor;
use crate::clock::Timestamp;
use crate::descriptor::encode::FlowControl;
use crate::params::DEFAULT_MAX_DESCRIPTOR_SIZE;

/// Longest wait for one HSDir request, circuit included.
const HSDIR_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl EmbeddedTor {
    /// The current period and every period to publish for, from a live consensus.
    pub(super) async fn periods(&self) -> Result<(TimePeriod, Vec<PeriodInfo>), TorError> {
        let netdir = self.live_netdir().await?;
        let params = netdir.params();
        let size_limit = usize::try_from(i32::from(params.hsdir_max_desc_size))
            .unwrap_or(DEFAULT_MAX_DESCRIPTOR_SIZE);
        // As C tor decides its services' `flow-control` line (congestion control on unless
        // `cc_alg` is 0; the consensus bounds `cc_sendme_inc` to 1..=254).
        let flow_control = (i32::from(params.cc_alg) != 0)
            .then(|| u8::try_from(i32::from(params.cc_sendme_inc)).ok())
            .flatten()
            .map(|sendme_inc| FlowControl { sendme_inc });
        let info = |params: HsDirParams| PeriodInfo {
            time_period: params.time_period(),
            srv_start: Timestamp::from_system_time(params.start_of_shard_rand_period()),
            max_descriptor_size: size_limit,
            flow_control,
        };
        Ok((
            netdir.hs_time_period(),
            netdir.hs_all_time_periods().into_iter().map(info).collect(),
        ))
    }

    /// The HSDirs of `set` for `blinded_id` in `period`.
    pub(super) async fn responsible_hsdirs(
        &self,
        blinded_id: &HsBlindId,
        period: TimePeriod,
        set: HsDirSet,
    ) -> Result<Vec<HsDirId>, TorError> {
        let netdir = self.live_netdir().await?;
        // Arti answers `Err` only for an internal bug (a period the consensus does not cover):
        // no HSDir is then known for it.
        let relays: Vec<Relay<'_>> = match set {
            HsDirSet::Fetch => netdir
                .hs_dirs_download(*blinded_id, period, &mut rand::rng())
                .unwrap_or_default(),
            HsDirSet::Store => netdir
                .hs_dirs_upload(*blinded_id, period)
                .map(|relays| relays.collect())
                .unwrap_or_default(),
        };
        Ok(relays.iter().map(hsdir_id).collect())
    }

    /// One GET of a descriptor from one HSDir; the body on HTTP 200.
    pub(super) async fn download(
        &self,
        hsdir: &HsDirId,
        blinded_id: &HsBlindId,
    ) -> Result<String, HsDirError> {
        let request = HsDescDownloadRequest::new(*blinded_id);
        let response = self
            .hsdir_request(hsdir, CircuitRole::Client, &request)
            .await?;
        match response.status_code() {
            200 => response
                .into_output_string()
                .map_err(|e| HsDirError::BadReply(e.error.to_string())),
            404 => Err(HsDirError::NotFound),
            code => Err(HsDirError::Refused(code)),
        }
    }

    /// One POST of a descriptor to one HSDir.
    pub(super) async fn upload(
        &self,
        hsdir: &HsDirId,
        descriptor: Arc<str>,
    ) -> Result<(), HsDirError> {
        let request = HsDescUploadRequest::new(descriptor);
        let response = self
            .hsdir_request(hsdir, CircuitRole::Service, &request)
            .await?;
        match response.status_code() {
            200 => Ok(()),
            400 => Err(HsDirError::RevisionRefused),
            code => Err(HsDirError::Refused(code)),
        }
    }

    /// Send `request` to `hsdir` over an anonymous HSDir circuit and a `BEGIN_DIR` stream,
    /// within [`HSDIR_REQUEST_TIMEOUT`]. Any HTTP status is a response: the caller judges it.
    async fn hsdir_request(
        &self,
        hsdir: &HsDirId,
        role: CircuitRole,
        request: &(impl Requestable + Sync),
    ) -> Result<DirResponse, HsDirError> {
        let exchange = async {
            let netdir = self.live_netdir_now().ok_or(HsDirError::NoConsensus)?;
            let relay = hsdir
                .as_str()
                .strip_prefix('$')
                .and_then(RsaIdentity::from_hex)
                .and_then(|id| netdir.by_id(&id))
                .ok_or_else(|| HsDirError::NotInConsensus(hsdir.clone()))?;
            let pool = self
                .client
                .hs_circ_pool()
                .map_err(|e| HsDirError::NoCircuit(e.to_string()))?;
            let no_circuit = |e: tor_circmgr::Error| HsDirError::NoCircuit(e.to_string());
            let stream = match role {
                CircuitRole::Client => {
                    let tunnel = pool.get_or_launch_client_dir(&netdir, relay).await;
                    tunnel.map_err(no_circuit)?.begin_dir_stream().await
                }
                CircuitRole::Service => {
                    let tunnel = pool.get_or_launch_svc_dir(&netdir, relay).await;
                    tunnel.map_err(no_circuit)?.begin_dir_stream().await
                }
            };
            let mut stream =
                stream.map_err(|e| HsDirError::NoCircuit(format!("no directory stream: {e}")))?;
            tor_dirclient::send_request(self.client.runtime(), request, &mut stream, None)
                .await
                .map_err(|e| HsDirError::Request(e.to_string()))
        };
        tokio::time::timeout(HSDIR_REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or(Err(HsDirError::Timeout(HSDIR_REQUEST_TIMEOUT)))
    }
}

/// Whose circuit a request travels on: Arti keeps separate circuit kinds for a client
/// fetching a descriptor and a service uploading one (their paths differ with vanguards).
#[derive(Debug, Clone, Copy)]
enum CircuitRole {
    Client,
    Service,
}

/// A relay's RSA identity as tor's logs and the consensus name it (`$` and hex).
fn hsdir_id(relay: &Relay<'_>) -> HsDirId {
    HsDirId::new(relay.rsa_id().to_string())
}
