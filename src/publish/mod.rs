//! The publisher: merge the healthy backends' introduction points, build and sign the master
//! descriptor for every time period Arti reports, and upload it to the responsible HSDirs.
//!
//! [`schedule`] decides when a period needs a new upload; [`Publisher::publish_due`] does the
//! work for every period that does and says when to look again. If no backend is healthy,
//! nothing is uploaded (an empty descriptor cannot exist, and an old one pointing at dead
//! backends is no better than the HSDir copies already out there) and an alert is logged
//! once, until a backend comes back.

pub mod schedule;
mod upload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tor_netdoc::doc::hsdesc::IntroPointDesc;

use crate::daemon::status::unix_secs;
use crate::descriptor::build::{
    build_descriptor, BlindedIdentity, BuildError, DescriptorParams, MasterIdentity,
};
use crate::descriptor::merge::{merge, BackendIntroPoints, LeftOutReason};
use crate::health::HealthyBackends;
use crate::params::MAX_INTRO_POINTS;
use crate::storage::state::SavedUpload;
use crate::tor::{HsDirSet, PeriodInfo, TorNetwork};
use schedule::{next_due, publish_reason, PublishRecord};
use tor_hscrypto::time::TimePeriod;
use upload::upload_to_all;

/// How soon to try again after a publish attempt in which no HSDir accepted the descriptor.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);

/// What one call of [`Publisher::publish_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRound {
    /// When to call again at the latest (`None`: only when the healthy backends change).
    pub wake_at: Option<SystemTime>,
    pub uploads: UploadResult,
}

/// Whether uploads worked in one round: what tells the cluster that this node's Tor can
/// publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadResult {
    /// Nothing was due (or nothing could be built): says nothing about Tor.
    NothingDue,
    /// At least one HSDir accepted a descriptor.
    Accepted,
    /// Uploads were attempted and no HSDir accepted any, or the HSDirs could not be found.
    Failed,
}

impl UploadResult {
    /// The result of two rounds' worth of uploads: one acceptance is enough.
    fn and(self, other: UploadResult) -> UploadResult {
        use UploadResult::*;
        match (self, other) {
            (Accepted, _) | (_, Accepted) => Accepted,
            (Failed, _) | (_, Failed) => Failed,
            (NothingDue, NothingDue) => NothingDue,
        }
    }
}

/// Publishes the master descriptor; remembers what it uploaded per time period.
pub struct Publisher {
    master: MasterIdentity,
    interval: Duration,
    /// Keyed by time-period number.
    records: HashMap<u64, PublishRecord>,
    /// The master key blinded for each period we publish, computed once per period.
    blinded: HashMap<u64, Arc<BlindedIdentity>>,
    all_dead_alerted: bool,
    /// The records came from state.json: keep them when the lease is gained (see
    /// [`Publisher::on_lease_gained`]).
    restored: bool,
}

impl Publisher {
    pub fn new(master: MasterIdentity, interval: Duration) -> Self {
        Publisher {
            master,
            interval,
            records: HashMap::new(),
            blinded: HashMap::new(),
            all_dead_alerted: false,
            restored: false,
        }
    }

    /// Upload for every period that needs it.
    pub async fn publish_due<T: TorNetwork>(
        &mut self,
        tor: &T,
        healthy: &HealthyBackends,
    ) -> PublishRound {
        if healthy.iter().all(|(_, ips)| ips.is_empty()) {
            if !self.all_dead_alerted {
                tracing::error!(
                    "ALERT: no healthy backend: not publishing the descriptor for {} until one recovers",
                    self.master.address()
                );
                self.all_dead_alerted = true;
            }
            return PublishRound {
                wake_at: None,
                uploads: UploadResult::NothingDue,
            };
        }
        if self.all_dead_alerted {
            tracing::info!("a backend is healthy again: publishing resumes");
            self.all_dead_alerted = false;
        }

        let targets = match tor.publish_periods().await {
            Ok(targets) => targets,
            Err(err) => {
                tracing::warn!("cannot publish yet: {err}");
                return PublishRound {
                    wake_at: Some(SystemTime::now() + RETRY_AFTER_FAILURE),
                    uploads: UploadResult::Failed,
                };
            }
        };
        let periods: Vec<u64> = targets
            .iter()
            .map(|t| t.time_period.interval_num())
            .collect();
        self.records.retain(|period, _| periods.contains(period));
        self.blinded.retain(|period, _| periods.contains(period));

        let mut round = PublishRound {
            wake_at: None,
            uploads: UploadResult::NothingDue,
        };
        for target in &targets {
            let (due, uploads) = self.publish_period(tor, target, healthy).await;
            round.wake_at = Some(round.wake_at.map_or(due, |w| w.min(due)));
            round.uploads = round.uploads.and(uploads);
        }
        round
    }

    /// This node has just gained the lease. What it uploaded before may have been replaced by
    /// another publisher's since, so it forgets its records and uploads every period at once;
    /// unless the records were just restored from before a restart recent enough that nobody
    /// could have taken over (see `daemon`), so that a restart does not re-upload needlessly.
    pub fn on_lease_gained(&mut self) {
        if !std::mem::take(&mut self.restored) {
            self.records.clear();
        }
    }

    /// A new `timing.publish_interval` (a configuration reload).
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// Whether the all-backends-dead alert is raised.
    pub fn alert_raised(&self) -> bool {
        self.all_dead_alerted
    }

    /// The last upload of every period still published, oldest period first (for state.json
    /// and `status`).
    pub fn saved_uploads(&self) -> Vec<SavedUpload> {
        let mut uploads: Vec<SavedUpload> = self
            .records
            .iter()
            .map(|(period, record)| SavedUpload {
                time_period: *period,
                published_at: unix_secs(record.published_at),
                revision_counter: record.revision_counter,
                intro_points: record.intro_points.clone(),
                hsdirs: record.hsdirs.clone(),
                hsdirs_accepted: record.hsdirs_accepted,
                hsdirs_tried: record.hsdirs_tried,
            })
            .collect();
        uploads.sort_by_key(|u| u.time_period);
        uploads
    }

    /// Resume from the uploads saved before a restart. Periods no longer published are dropped
    /// at the next round.
    pub fn restore(&mut self, uploads: &[SavedUpload]) {
        for upload in uploads {
            self.records.insert(
                upload.time_period,
                PublishRecord {
                    published_at: UNIX_EPOCH + Duration::from_secs(upload.published_at),
                    intro_points: upload.intro_points.clone(),
                    hsdirs: upload.hsdirs.clone(),
                    revision_counter: upload.revision_counter,
                    hsdirs_accepted: upload.hsdirs_accepted,
                    hsdirs_tried: upload.hsdirs_tried,
                },
            );
        }
        self.restored = !uploads.is_empty();
    }

    /// Publish one period if it is due; returns when it is due next, and how the upload went.
    async fn publish_period<T: TorNetwork>(
        &mut self,
        tor: &T,
        target: &PeriodInfo,
        healthy: &HealthyBackends,
    ) -> (SystemTime, UploadResult) {
        let period = target.time_period.interval_num();
        let now = SystemTime::now();

        let inputs: Vec<BackendIntroPoints<'_, IntroPointDesc>> = healthy
            .iter()
            .map(|(name, ips)| BackendIntroPoints {
                backend: name,
                intro_points: ips,
            })
            .collect();
        let blinded = match self.blinded_for(target.time_period) {
            Ok(blinded) => blinded,
            Err(err) => {
                tracing::error!(period, "cannot publish this period: {err}");
                return (now + RETRY_AFTER_FAILURE, UploadResult::NothingDue);
            }
        };
        let hsdirs = match tor
            .hsdirs(&blinded.blind_id(), target.time_period, HsDirSet::Store)
            .await
        {
            Ok(hsdirs) => hsdirs,
            Err(err) => {
                tracing::warn!(period, "cannot publish this period yet: {err}");
                return (now + RETRY_AFTER_FAILURE, UploadResult::Failed);
            }
        };
        let hsdir_names: Vec<String> = hsdirs.iter().map(ToString::to_string).collect();
        let Some(srv_offset) = target.srv_offset(now) else {
            tracing::warn!(
                period,
                "the clock lies outside this period's SRV period: not publishing it now"
            );
            return (now + RETRY_AFTER_FAILURE, UploadResult::NothingDue);
        };
        let base = DescriptorParams {
            intro_points: &[],
            revision_counter: self.master.revision_counter(srv_offset),
            now,
            size_limit: target.max_descriptor_size,
        };
        // The merge's size test builds the real descriptor; the last one that fitted is the
        // one for the final list (the bisection only moves up after a success).
        let mut built = None;
        let merged = merge(&inputs, MAX_INTRO_POINTS, period, |ips| {
            let params = DescriptorParams {
                intro_points: ips,
                ..base
            };
            match build_descriptor(&blinded, &params, &mut rand::rng()) {
                Ok(text) => {
                    built = Some(text);
                    true
                }
                Err(BuildError::TooLarge { .. }) => false,
                Err(err) => {
                    tracing::error!(period, "cannot build the descriptor: {err}");
                    false
                }
            }
        });
        let (Some(mut descriptor), false) = (built, merged.intro_points.is_empty()) else {
            tracing::error!(
                period,
                "no descriptor with even one introduction point can be built for this period"
            );
            return (now + RETRY_AFTER_FAILURE, UploadResult::NothingDue);
        };
        let intro_ids: Vec<String> = merged.intro_points.iter().map(intro_point_id).collect();

        let last = self.records.get(&period);
        let Some(reason) = publish_reason(last, now, self.interval, &intro_ids, &hsdir_names)
        else {
            return (
                last.map_or(now, |l| next_due(l, self.interval)),
                UploadResult::NothingDue,
            );
        };
        for left in &merged.left_out {
            let why = match left.reason {
                LeftOutReason::Cap => "the 20-introduction-point cap",
                LeftOutReason::Size => "the HSDirs' descriptor size limit",
            };
            tracing::info!(
                period,
                "left out {} introduction point(s) of {} because of {why}",
                left.count,
                left.backend
            );
        }

        let mut revision_counter = base.revision_counter;
        if last.is_some_and(|last| revision_counter <= last.revision_counter) {
            // Published within the same second (the counter's resolution): wait for the next.
            let Some(next) = self.next_revision_counter(target).await else {
                tracing::warn!(period, "no usable revision counter (clock outside the SRV period, or stepped back): not publishing this period now");
                return (now + RETRY_AFTER_FAILURE, UploadResult::NothingDue);
            };
            revision_counter = next;
            let params = DescriptorParams {
                intro_points: &merged.intro_points,
                revision_counter,
                ..base
            };
            descriptor = match build_descriptor(&blinded, &params, &mut rand::rng()) {
                Ok(text) => text,
                Err(err) => {
                    tracing::error!(period, "cannot build the descriptor: {err}");
                    return (now + RETRY_AFTER_FAILURE, UploadResult::NothingDue);
                }
            };
        }

        let results = upload_to_all(tor, &hsdirs, Arc::from(descriptor)).await;
        let accepted = results.iter().filter(|r| r.outcome.is_ok()).count();
        for failure in results
            .iter()
            .filter_map(|r| r.outcome.as_ref().err().map(|e| (&r.hsdir, e)))
        {
            tracing::warn!(period, hsdir = %failure.0, "upload failed: {}", failure.1);
        }
        let backends = merged
            .sources
            .iter()
            .collect::<std::collections::BTreeSet<_>>();
        tracing::info!(
            period,
            revision_counter,
            "published descriptor ({reason}): {accepted}/{} HSDirs accepted, {} introduction points from {} backend(s): {}",
            results.len(),
            merged.intro_points.len(),
            backends.len(),
            backends.into_iter().cloned().collect::<Vec<_>>().join(", ")
        );
        if accepted == 0 {
            return (
                SystemTime::now() + RETRY_AFTER_FAILURE,
                UploadResult::Failed,
            );
        }
        let record = PublishRecord {
            published_at: now,
            intro_points: intro_ids,
            hsdirs: hsdir_names,
            revision_counter,
            hsdirs_accepted: accepted,
            hsdirs_tried: results.len(),
        };
        let due = next_due(&record, self.interval);
        self.records.insert(period, record);
        (due, UploadResult::Accepted)
    }

    /// The master key blinded for `period`, from the cache or computed now.
    fn blinded_for(&mut self, period: TimePeriod) -> Result<Arc<BlindedIdentity>, BuildError> {
        if let Some(blinded) = self.blinded.get(&period.interval_num()) {
            return Ok(blinded.clone());
        }
        let blinded = Arc::new(self.master.blind(period)?);
        self.blinded.insert(period.interval_num(), blinded.clone());
        Ok(blinded)
    }

    /// A revision counter strictly above the last one we uploaded for `period`. The counter
    /// has one-second resolution, so two uploads within one second wait for the next; a clock
    /// that went backwards by more than a few seconds gives up (the HSDirs would refuse it).
    async fn next_revision_counter(&self, target: &PeriodInfo) -> Option<u64> {
        const WAIT_STEP: Duration = Duration::from_millis(250);
        const MAX_WAIT_STEPS: u32 = 20;
        let last = self
            .records
            .get(&target.time_period.interval_num())
            .map(|r| r.revision_counter);
        for _ in 0..MAX_WAIT_STEPS {
            let counter = self
                .master
                .revision_counter(target.srv_offset(SystemTime::now())?);
            if last.is_none_or(|last| counter > last) {
                return Some(counter);
            }
            tokio::time::sleep(WAIT_STEP).await;
        }
        None
    }
}

/// A stable identity for an introduction point: its auth key (`KP_hs_ipt_sid`), unique per
/// introduction point and unchanged while the backend keeps it.
pub fn intro_point_id(intro_point: &IntroPointDesc) -> String {
    let key: &tor_llcrypto::pk::ed25519::PublicKey = intro_point.ipt_sid_key().as_ref();
    key.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}
