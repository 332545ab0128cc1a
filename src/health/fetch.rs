//! Fetch an onion service's descriptor through the Tor seam and verify it, as a client does
//! (rend-spec-v3 §2.2.6, §2.5): blind the service's identity key for the period, ask the
//! HSDirs a client would ask, and accept only a descriptor whose signature chain verifies for
//! *that* address, whose layers decrypt under its subcredential and which is valid now. A
//! descriptor signed for any other key fails that check and is never merged.
//!
//! Used for the backends (every health round) and for the master descriptor: every node reads
//! back, each health round, what every responsible HSDir holds of it ([`fetch_copies`]).

use std::time::SystemTime;

use futures::future::join_all;
use tor_checkable::Timebound;
use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;
use tor_hscrypto::Subcredential;
use tor_netdoc::doc::hsdesc::{HsDesc, IntroPointDesc};

use crate::descriptor::build::blinded_id_and_subcredential;
use crate::keys::onion_address::OnionAddress;
use crate::tor::{HsDirError, HsDirId, HsDirSet, PeriodInfo, TorError, TorNetwork};

/// HSDirs asked for a descriptor before giving up (a client asks at most
/// `hsdir_spread_fetch` × `hsdir_n_replicas` = 6; we stop a little earlier).
const FETCH_ATTEMPTS: usize = 4;
/// HSDirs asked at the same time; the newest valid answer wins.
const HSDIRS_ASKED_TOGETHER: usize = 2;

/// A descriptor that verified and decrypted.
#[derive(Debug, Clone)]
pub struct VerifiedDescriptor {
    /// The outer document as the HSDir served it.
    pub text: String,
    pub time_period: u64,
    pub revision_counter: u64,
    pub intro_points: Vec<IntroPointDesc>,
    /// It carries `pow-params`: the backend defends itself with proof-of-work.
    pub offers_pow: bool,
    /// Which HSDir served it, for the log.
    pub hsdir: HsDirId,
}

/// Why no descriptor was obtained.
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
        last: HsDirFailure,
    },
}

impl FetchError {
    /// Whether the attempt got through the Tor network to some HSDir, so that the failure is
    /// the service's (no descriptor published) rather than this node's Tor client's.
    pub fn reached_hsdirs(&self) -> bool {
        matches!(self, FetchError::AllFailed { answered, .. } if *answered > 0)
    }
}

/// Why one HSDir gave no usable descriptor.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HsDirFailure {
    #[error(transparent)]
    Request(#[from] HsDirError),
    #[error("descriptor does not verify for this address: {0}")]
    DoesNotVerify(String),
    #[error("descriptor not valid now: {0}")]
    NotValidNow(String),
}

impl HsDirFailure {
    /// The HSDir answered (whatever it said).
    fn hsdir_answered(&self) -> bool {
        match self {
            HsDirFailure::Request(err) => err.hsdir_answered(),
            HsDirFailure::DoesNotVerify(_) | HsDirFailure::NotValidNow(_) => true,
        }
    }
}

/// Fetch, verify and decrypt `address`'s descriptor for the period clients use now.
pub async fn fetch_current<T: TorNetwork>(
    tor: &T,
    address: &OnionAddress,
) -> Result<VerifiedDescriptor, FetchError> {
    let period = tor.current_period().await?;
    fetch_for_period(tor, address, &period).await
}

/// Fetch, verify and decrypt `address`'s descriptor for `period`.
pub async fn fetch_for_period<T: TorNetwork>(
    tor: &T,
    address: &OnionAddress,
    period: &PeriodInfo,
) -> Result<VerifiedDescriptor, FetchError> {
    let service = BlindedService::new(address, period)?;
    let hsdirs = service.hsdirs(tor, HsDirSet::Fetch).await?;

    // HSDirs receive a service's new descriptor one by one, so right after it changed its
    // introduction points some still serve the old copy. Asking two at a time and keeping the
    // highest revision counter makes picking up a stale copy unlikely; the next pair is asked
    // only if neither gave a valid descriptor.
    let mut last = None;
    let (mut tried, mut answered) = (0, 0);
    for pair in hsdirs
        .chunks(HSDIRS_ASKED_TOGETHER)
        .take(FETCH_ATTEMPTS / HSDIRS_ASKED_TOGETHER)
    {
        tried += pair.len();
        let answers = join_all(pair.iter().map(|hsdir| service.download(tor, hsdir))).await;
        let mut newest: Option<VerifiedDescriptor> = None;
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
                Err(failure) => {
                    if failure.hsdir_answered() {
                        answered += 1;
                    }
                    last = Some(failure);
                }
            }
        }
        if let Some(descriptor) = newest {
            return Ok(descriptor);
        }
    }
    // Nothing failed only if nothing was asked.
    let Some(last) = last else {
        return Err(FetchError::NoHsDirs);
    };
    Err(FetchError::AllFailed {
        tried,
        answered,
        last,
    })
}

/// What one responsible HSDir holds of a service's descriptor for a period.
#[derive(Debug)]
pub struct HsDirCopy {
    pub hsdir: HsDirId,
    /// The verified copy, or why there is none usable.
    pub copy: Result<VerifiedDescriptor, HsDirFailure>,
}

impl HsDirCopy {
    /// The HSDir answered (with a copy, a 404, or something that does not verify).
    pub fn answered(&self) -> bool {
        self.copy
            .as_ref()
            .err()
            .is_none_or(HsDirFailure::hsdir_answered)
    }
}

/// Fetch `address`'s descriptor for `period` from every HSDir a service stores it on, all at
/// once, to see what each holds (the master descriptor, read back after uploads).
pub async fn fetch_copies<T: TorNetwork>(
    tor: &T,
    address: &OnionAddress,
    period: &PeriodInfo,
) -> Result<Vec<HsDirCopy>, FetchError> {
    let service = BlindedService::new(address, period)?;
    let hsdirs = service.hsdirs(tor, HsDirSet::Store).await?;
    let copies = join_all(hsdirs.iter().map(|hsdir| async {
        HsDirCopy {
            hsdir: hsdir.clone(),
            copy: service.download(tor, hsdir).await,
        }
    }))
    .await;
    Ok(copies)
}

/// A service's address with its keys for one time period: what every download checks against.
struct BlindedService<'a> {
    address: &'a OnionAddress,
    time_period: TimePeriod,
    blind_id: HsBlindId,
    subcredential: Subcredential,
}

impl<'a> BlindedService<'a> {
    fn new(address: &'a OnionAddress, period: &PeriodInfo) -> Result<Self, FetchError> {
        let time_period = period.time_period;
        let (blind_id, subcredential) = blinded_id_and_subcredential(address, time_period)
            .ok_or(FetchError::Blinding(time_period.interval_num()))?;
        Ok(BlindedService {
            address,
            time_period,
            blind_id,
            subcredential,
        })
    }

    /// The HSDirs of `set` for the blinded key.
    async fn hsdirs<T: TorNetwork>(
        &self,
        tor: &T,
        set: HsDirSet,
    ) -> Result<Vec<HsDirId>, FetchError> {
        Ok(tor.hsdirs(&self.blind_id, self.time_period, set).await?)
    }

    /// Download a descriptor from one HSDir and verify it for the blinded key: signatures,
    /// decryption under the subcredential, validity now.
    async fn download<T: TorNetwork>(
        &self,
        tor: &T,
        hsdir: &HsDirId,
    ) -> Result<VerifiedDescriptor, HsDirFailure> {
        let address = self.address;
        let text = tor
            .fetch_descriptor(hsdir, &self.blind_id)
            .await
            .inspect_err(|err| {
                tracing::debug!(%address, %hsdir, "descriptor fetch failed: {err}");
            })?;
        let descriptor =
            HsDesc::parse_decrypt_validate(&text, &self.blind_id, &self.subcredential, None)
                .map_err(|err| HsDirFailure::DoesNotVerify(err.to_string()))
                .and_then(|bound| {
                    bound
                        .if_valid_at(&SystemTime::now())
                        .map_err(|err| HsDirFailure::NotValidNow(err.to_string()))
                })
                .inspect_err(|failure| {
                    tracing::warn!(%address, %hsdir, "rejected descriptor: {failure}");
                })?;
        Ok(VerifiedDescriptor {
            time_period: self.time_period.interval_num(),
            revision_counter: u64::from(descriptor.revision()),
            intro_points: descriptor.intro_points().to_vec(),
            offers_pow: !descriptor.pow_params().is_empty(),
            hsdir: hsdir.clone(),
            text,
        })
    }
}
