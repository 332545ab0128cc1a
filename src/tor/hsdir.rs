//! Talking to HSDirs through the embedded client: fetch a backend's descriptor, upload ours.
//!
//! Arti's own onion-service client and service code does both, but privately; this is the
//! small piece of glue DESIGN.md §3 describes. Every request goes over an anonymous
//! HSDir circuit from Arti's `HsCircPool` and a `BEGIN_DIR` stream:
//!
//! - fetch (rend-spec-v3 §2.2.6): blind the backend's identity key for the current time
//!   period, ask the HSDirs that Arti's ring says a client would ask, one after the other, and
//!   accept the first descriptor whose signature chain verifies for *that* address, whose
//!   layers decrypt under its subcredential and which is valid now. A descriptor signed for
//!   any other key fails that check and is never merged.
//! - upload (rend-spec-v3 §2.2.5): to every HSDir responsible for the blinded key of each
//!   time period Arti reports (`hs_all_time_periods`), concurrently, each with a timeout and
//!   retries with backoff. `send_request` reports non-200 replies as `Ok`, so the status code
//!   is checked explicitly; an HSDir answers `400` to a revision counter that is not higher
//!   than the one it holds.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::join_all;
use tor_checkable::Timebound;
use tor_dirclient::request::{HsDescDownloadRequest, HsDescUploadRequest, Requestable};
use tor_dirclient::DirResponse;
use tor_hscrypto::ope::SrvPeriodOffset;
use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;
use tor_hscrypto::Subcredential;
use tor_netdir::{HsDirParams, NetDir, Relay};
use tor_netdoc::doc::hsdesc::{HsDesc, IntroPointDesc};

use super::{EmbeddedTor, TorError};
use crate::descriptor::build::blinded_id_and_subcredential;
use crate::onion_address::OnionAddress;

/// Longest wait for one HSDir request, circuit included.
const HSDIR_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HSDirs asked for a backend's descriptor before giving up (a client asks at most
/// `hsdir_spread_fetch` × `hsdir_n_replicas` = 6; we stop a little earlier).
const FETCH_ATTEMPTS: usize = 4;
/// HSDirs asked at the same time; the newest valid answer wins.
const HSDIRS_ASKED_TOGETHER: usize = 2;
/// Attempts per HSDir for an upload, and the backoff before the first retry (doubling).
const UPLOAD_ATTEMPTS: u32 = 3;
const UPLOAD_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The HSDirs' size limit when the consensus does not say (`HSV3MaxDescriptorSize`).
pub const DEFAULT_MAX_DESCRIPTOR_SIZE: usize = 50_000;

/// A backend descriptor that verified and decrypted.
#[derive(Debug, Clone)]
pub struct BackendDescriptor {
    /// The outer document as the HSDir served it.
    pub text: String,
    pub revision_counter: u64,
    pub intro_points: Vec<IntroPointDesc>,
    /// Which HSDir served it (its RSA identity), for the log.
    pub hsdir: String,
}

/// Why no descriptor was obtained for a backend.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Tor(#[from] TorError),
    #[error("cannot blind this address's key for time period {0}")]
    Blinding(u64),
    #[error("no HSDir is responsible for it in the current consensus")]
    NoHsDirs,
    #[error("{tried} HSDirs asked, none gave a valid descriptor (last: {last})")]
    AllFailed {
        tried: usize,
        /// How many of them answered at all (a 404, a bad descriptor): circuits worked.
        answered: usize,
        last: String,
    },
}

impl FetchError {
    /// Whether the attempt got through the Tor network to some HSDir, so that the failure is
    /// the backend's (no descriptor published) rather than this node's Tor client's.
    pub fn reached_hsdirs(&self) -> bool {
        matches!(self, FetchError::AllFailed { answered, .. } if *answered > 0)
    }
}

/// Why one HSDir gave no usable descriptor.
enum HsDirFailure {
    /// No answer: the circuit or the directory request failed.
    Unreached(String),
    /// It answered, but not with a valid descriptor (404, another status, a bad document).
    Answered(String),
}

/// One time period the master descriptor must be published for, with the consensus it was
/// computed from.
#[derive(Clone)]
pub struct PublishTarget {
    netdir: Arc<NetDir>,
    params: HsDirParams,
}

impl PublishTarget {
    pub fn time_period(&self) -> TimePeriod {
        self.params.time_period()
    }

    /// Seconds since the start of this period's SRV period, the input of the revision
    /// counter; `None` if `now` lies outside it.
    pub fn srv_offset(&self, now: SystemTime) -> Option<SrvPeriodOffset> {
        self.params.offset_within_srv_period(now)
    }

    /// The consensus's `HSV3MaxDescriptorSize`: HSDirs reject descriptors this long or longer.
    pub fn size_limit(&self) -> usize {
        usize::try_from(i32::from(self.netdir.params().hsdir_max_desc_size))
            .unwrap_or(DEFAULT_MAX_DESCRIPTOR_SIZE)
    }

    /// RSA identities (hex) of the HSDirs responsible for `address` in this period: when
    /// this set changes, the descriptor must be uploaded again.
    pub fn hsdir_ids(&self, address: &OnionAddress) -> Vec<String> {
        let Some((blind_id, _)) = blinded_id_and_subcredential(address, self.time_period()) else {
            return Vec::new();
        };
        self.netdir
            .hs_dirs_upload(blind_id, self.time_period())
            .map(|relays| relays.map(|relay| relay_name(&relay)).collect())
            .unwrap_or_default()
    }
}

/// What one HSDir said to an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDirUpload {
    pub hsdir: String,
    /// `Ok` when the HSDir answered 200; otherwise why not, after all retries.
    pub outcome: Result<(), String>,
}

impl EmbeddedTor {
    /// Fetch, verify and decrypt `address`'s descriptor for the current time period.
    pub async fn fetch_descriptor(
        &self,
        address: &OnionAddress,
    ) -> Result<BackendDescriptor, FetchError> {
        let netdir = self.live_netdir().await?;
        let period = netdir.hs_time_period();
        let (blind_id, subcredential) = blinded_id_and_subcredential(address, period)
            .ok_or(FetchError::Blinding(period.interval_num()))?;
        let hsdirs = netdir
            .hs_dirs_download(blind_id, period, &mut rand::rng())
            .map_err(|_| FetchError::NoHsDirs)?;
        if hsdirs.is_empty() {
            return Err(FetchError::NoHsDirs);
        }

        // HSDirs receive a backend's new descriptor one by one, so right after the backend
        // changed its introduction points some still serve the old copy. Asking two at a time
        // and keeping the highest revision counter makes picking up a stale copy unlikely;
        // the next pair is asked only if neither gave a valid descriptor.
        let mut last = String::new();
        let (mut tried, mut answered) = (0, 0);
        for pair in hsdirs
            .chunks(HSDIRS_ASKED_TOGETHER)
            .take(FETCH_ATTEMPTS / HSDIRS_ASKED_TOGETHER)
        {
            tried += pair.len();
            let answers = join_all(pair.iter().map(|hsdir| {
                self.download_verified(&netdir, hsdir, address, blind_id, &subcredential)
            }))
            .await;
            let mut newest: Option<BackendDescriptor> = None;
            for answer in answers {
                match answer {
                    Ok(descriptor) => {
                        if newest
                            .as_ref()
                            .is_none_or(|n| descriptor.revision_counter > n.revision_counter)
                        {
                            newest = Some(descriptor);
                        }
                    }
                    Err(HsDirFailure::Unreached(reason)) => last = reason,
                    Err(HsDirFailure::Answered(reason)) => {
                        answered += 1;
                        last = reason;
                    }
                }
            }
            if let Some(descriptor) = newest {
                return Ok(descriptor);
            }
        }
        Err(FetchError::AllFailed {
            tried,
            answered,
            last,
        })
    }

    /// Download a descriptor from one HSDir and verify it for the blinded key: signatures,
    /// decryption under the subcredential, validity now.
    async fn download_verified(
        &self,
        netdir: &NetDir,
        hsdir: &Relay<'_>,
        address: &OnionAddress,
        blind_id: HsBlindId,
        subcredential: &Subcredential,
    ) -> Result<BackendDescriptor, HsDirFailure> {
        let hsdir_name = relay_name(hsdir);
        let text = self
            .download(netdir, hsdir, blind_id)
            .await
            .inspect_err(|failure| {
                let (HsDirFailure::Unreached(reason) | HsDirFailure::Answered(reason)) = failure;
                tracing::debug!(%address, hsdir = %hsdir_name, "descriptor fetch failed: {reason}");
            })?;
        let descriptor = HsDesc::parse_decrypt_validate(&text, &blind_id, subcredential, None)
            .map_err(|err| format!("descriptor does not verify for this address: {err}"))
            .and_then(|bound| {
                bound
                    .if_valid_at(&SystemTime::now())
                    .map_err(|err| format!("descriptor not valid now: {err}"))
            })
            .map_err(|reason| {
                tracing::warn!(%address, hsdir = %hsdir_name, "rejected descriptor: {reason}");
                HsDirFailure::Answered(reason)
            })?;
        Ok(BackendDescriptor {
            revision_counter: u64::from(descriptor.revision()),
            intro_points: descriptor.intro_points().to_vec(),
            hsdir: hsdir_name,
            text,
        })
    }

    /// The time periods to publish for now, from a live consensus.
    pub async fn publish_targets(&self) -> Result<Vec<PublishTarget>, TorError> {
        let netdir = self.live_netdir().await?;
        Ok(netdir
            .hs_all_time_periods()
            .into_iter()
            .map(|params| PublishTarget {
                netdir: netdir.clone(),
                params,
            })
            .collect())
    }

    /// Upload `descriptor` for `address` to every HSDir responsible for `target`,
    /// concurrently; returns one result per HSDir.
    pub async fn upload_descriptor(
        &self,
        target: &PublishTarget,
        address: &OnionAddress,
        descriptor: Arc<str>,
    ) -> Vec<HsDirUpload> {
        let Some((blind_id, _)) = blinded_id_and_subcredential(address, target.time_period())
        else {
            return Vec::new();
        };
        let Ok(hsdirs) = target.netdir.hs_dirs_upload(blind_id, target.time_period()) else {
            return Vec::new();
        };
        let uploads = hsdirs.map(|hsdir| {
            let descriptor = descriptor.clone();
            async move {
                let outcome = self
                    .upload_with_retries(&target.netdir, &hsdir, descriptor)
                    .await;
                HsDirUpload {
                    hsdir: relay_name(&hsdir),
                    outcome,
                }
            }
        });
        join_all(uploads).await
    }

    async fn upload_with_retries(
        &self,
        netdir: &NetDir,
        hsdir: &Relay<'_>,
        descriptor: Arc<str>,
    ) -> Result<(), String> {
        let mut backoff = UPLOAD_FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.upload(netdir, hsdir, descriptor.clone()).await {
                Ok(()) => return Ok(()),
                // The HSDir holds a descriptor at least as new: retrying cannot help.
                Err(reason) if reason.starts_with("HTTP 400") => return Err(reason),
                Err(reason) if attempt >= UPLOAD_ATTEMPTS => return Err(reason),
                Err(reason) => {
                    tracing::debug!(hsdir = %relay_name(hsdir), attempt, "upload failed, retrying: {reason}");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        }
    }

    /// One GET of a descriptor from one HSDir; the body on HTTP 200.
    async fn download(
        &self,
        netdir: &NetDir,
        hsdir: &Relay<'_>,
        blind_id: HsBlindId,
    ) -> Result<String, HsDirFailure> {
        let request = HsDescDownloadRequest::new(blind_id);
        let response = self
            .hsdir_request(netdir, hsdir, CircuitRole::Client, &request)
            .await
            .map_err(HsDirFailure::Unreached)?;
        match response.status_code() {
            200 => response
                .into_output_string()
                .map_err(|e| HsDirFailure::Answered(format!("bad reply body: {}", e.error))),
            404 => Err(HsDirFailure::Answered(
                "HTTP 404: the HSDir holds no descriptor for it".to_owned(),
            )),
            code => Err(HsDirFailure::Answered(format!("HTTP {code}"))),
        }
    }

    /// One POST of a descriptor to one HSDir.
    async fn upload(
        &self,
        netdir: &NetDir,
        hsdir: &Relay<'_>,
        descriptor: Arc<str>,
    ) -> Result<(), String> {
        let request = HsDescUploadRequest::new(descriptor);
        let response = self
            .hsdir_request(netdir, hsdir, CircuitRole::Service, &request)
            .await?;
        match response.status_code() {
            200 => Ok(()),
            400 => Err("HTTP 400: rejected (revision counter not higher than the one it holds, or invalid)".to_owned()),
            code => Err(format!("HTTP {code}")),
        }
    }

    /// Send `request` to `hsdir` over an anonymous HSDir circuit and a `BEGIN_DIR` stream,
    /// within [`HSDIR_REQUEST_TIMEOUT`]. Any HTTP status is a response: the caller judges it.
    async fn hsdir_request(
        &self,
        netdir: &NetDir,
        hsdir: &Relay<'_>,
        role: CircuitRole,
        request: &(impl Requestable + Sync),
    ) -> Result<DirResponse, String> {
        let exchange = async {
            let pool = self.client.hs_circ_pool().map_err(|e| e.to_string())?;
            let no_circuit = |e: tor_circmgr::Error| format!("no circuit: {e}");
            let stream = match role {
                CircuitRole::Client => {
                    let tunnel = pool.get_or_launch_client_dir(netdir, hsdir.clone()).await;
                    tunnel.map_err(no_circuit)?.begin_dir_stream().await
                }
                CircuitRole::Service => {
                    let tunnel = pool.get_or_launch_svc_dir(netdir, hsdir.clone()).await;
                    tunnel.map_err(no_circuit)?.begin_dir_stream().await
                }
            };
            let mut stream = stream.map_err(|e| format!("no directory stream: {e}"))?;
            tor_dirclient::send_request(self.client.runtime(), request, &mut stream, None)
                .await
                .map_err(|e| format!("request failed: {e}"))
        };
        tokio::time::timeout(HSDIR_REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {HSDIR_REQUEST_TIMEOUT:?}")))
    }
}

/// Whose circuit a request travels on: Arti keeps separate circuit kinds for a client
/// fetching a descriptor and a service uploading one (their paths differ with vanguards).
#[derive(Debug, Clone, Copy)]
enum CircuitRole {
    Client,
    Service,
}

/// A relay's RSA identity in hex, as tor's logs and consensus name it.
fn relay_name(relay: &Relay<'_>) -> String {
    relay.rsa_id().to_string()
}
