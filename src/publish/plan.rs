//! The publish plan: which time periods need an upload, to which HSDirs, with which
//! introduction points and revision counter, and when to look again. A state machine without
//! I/O: it is told the time, the periods and HSDirs the consensus names, and the healthy
//! backends; it answers with the uploads to make; it is told how each went.
//!
//! Rules, per period (see also [`schedule`](super::schedule)):
//! - nothing is uploaded while no backend is healthy: an alert is logged once, and publishing
//!   resumes when one recovers;
//! - an upload is due when the period was never published, `publish_interval` has passed, the
//!   merged introduction points changed, or the responsible HSDirs changed;
//! - after an upload no HSDir accepted, nothing is recorded and the period is not tried again
//!   before a backoff has passed, whatever changes meanwhile: [`RETRY_AFTER_FAILURE`], doubling
//!   with each failure in a row up to [`MAX_RETRY_AFTER_FAILURE`] (HSDirs that refused a
//!   revision refuse it again at once; a node that kept trying sent 64 uploads in 10 s). An
//!   accepted upload, or a new lease, ends the backoff;
//! - the revision counter follows the clock (seconds since the period's SRV start, through the
//!   master key's order-preserving encryption) and must be strictly above the last one
//!   uploaded: within the same second the upload waits for the next. It is also kept above the
//!   highest revision the fetch-back saw on the HSDirs ([`PublishPlan::observe_copies`]): a
//!   publisher whose clock is behind its predecessor's still gets its uploads accepted;
//! - the fetch-back also says which responsible HSDirs lack the last upload (no copy, an older
//!   one, another publisher's): the period is uploaded again at once.
//!
//! The daemon's shell ([`publish_due`](super::publish_due)) asks the Tor seam for periods and
//! HSDirs, runs the uploads the plan returns, and reports their outcome; the whole-cluster
//! simulator in `tests/` drives the same plan against simulated HSDirs.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tor_hscrypto::pk::HsBlindId;
use tor_hscrypto::time::TimePeriod;
use tor_llcrypto::pk::curve25519;

use super::schedule::{next_due, publish_reason, PublishReason, PublishRecord};
use super::upload::HsDirUpload;
use crate::clock::Timestamp;
use crate::cluster::outcome::ReadBack;
use crate::descriptor::build::{BuildError, DescriptorParams};
use crate::descriptor::merge::{merge, BackendIntroPoints, LeftOut, LeftOutReason, Merged};
use crate::descriptor::signer::DescriptorSigner;
use crate::keys::onion_address::OnionAddress;
use crate::params::MAX_INTRO_POINTS;
use crate::storage::state::SavedUpload;
use crate::tor::{HsDirError, HsDirId, PeriodInfo};

/// How soon to try a period again after an upload no HSDir accepted, or a descriptor that
/// could not be built.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// The longest wait between failed uploads of one period.
pub const MAX_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5 * 60);
/// A clock stepped back by more than this since the last upload of a period gets no revision
/// counter above the last one soon: wait [`RETRY_AFTER_FAILURE`] rather than every second.
const CLOCK_STEP_BACK_TOLERANCE: Duration = Duration::from_secs(5);

/// One period the consensus says to publish for, with the HSDirs responsible for the master's
/// blinded key in it.
#[derive(Debug, Clone)]
pub struct PeriodTarget {
    pub info: PeriodInfo,
    /// The HSDirs a service stores on, in ring order (`HsDirSet::Store`).
    pub hsdirs: Vec<HsDirId>,
    /// The HSDirs a client asks (`HsDirSet::Fetch`), any order.
    pub fetch_hsdirs: Vec<HsDirId>,
}

impl PeriodTarget {
    /// The HSDirs clients ask that are also stored on, in ring order: one descriptor each.
    fn fetch_slots(&self) -> Vec<&HsDirId> {
        self.hsdirs
            .iter()
            .filter(|hsdir| self.fetch_hsdirs.contains(hsdir))
            .collect()
    }
}

/// What the responsible HSDirs held of the master descriptor for one period, as this node's
/// fetch-back saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HsDirCopies {
    pub period: u64,
    /// When the fetch-back started: copies read before an upload say nothing about it.
    pub read_at: Timestamp,
    /// Every HSDir that answered, with its copy (`None`: it holds none).
    pub answered: Vec<(HsDirId, Option<HeldCopy>)>,
    /// HSDirs that did not answer.
    pub unreachable: usize,
}

impl HsDirCopies {
    /// The copies of the highest revision held (empty when no HSDir holds one).
    pub fn newest(&self) -> Vec<&HeldCopy> {
        let held = self.answered.iter().filter_map(|(_, copy)| copy.as_ref());
        let newest = held.clone().map(|copy| copy.revision_counter).max();
        held.filter(|copy| Some(copy.revision_counter) == newest)
            .collect()
    }
}

/// Judge one read-back round against the introduction points
/// (`DescriptorSigner::intro_point_id`) of the backends this node finds healthy
/// (`cluster::outcome`): for the period clients use now (the earliest read back), served when
/// the newest copy lists only healthy introduction points, missing when no HSDir holds one,
/// wrong otherwise. The next
/// period's descriptor, uploaded from the middle of the current period on, is not judged:
/// clients do not ask for it yet, and a publisher may reach it a little later.
pub fn judge_read_back(copies: &[HsDirCopies], healthy_ids: &BTreeSet<String>) -> ReadBack {
    let Some(current) = copies.iter().min_by_key(|period| period.period) else {
        return ReadBack::NotJudged;
    };
    // No HSDir answered, or nothing is healthy here: nothing this node can judge by.
    if current.answered.is_empty() || healthy_ids.is_empty() {
        return ReadBack::NotJudged;
    }
    let newest = current.newest();
    let Some(revision) = newest.first().map(|copy| copy.revision_counter) else {
        return ReadBack::Missing;
    };
    let only_healthy = newest.iter().all(|copy| {
        copy.intro_points
            .iter()
            .all(|intro_point| healthy_ids.contains(intro_point))
    });
    if only_healthy {
        ReadBack::Served
    } else {
        ReadBack::Wrong { revision }
    }
}

/// One HSDir's copy of the master descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    pub revision_counter: u64,
    /// Identities of its introduction points.
    pub intro_points: Vec<String>,
}

/// One descriptor of an upload and the HSDirs it goes to.
#[derive(Debug, Clone)]
pub struct PlacedDescriptor {
    pub descriptor: Arc<str>,
    pub hsdirs: Vec<HsDirId>,
    /// Identities of the introduction points it lists.
    pub intro_points: Vec<String>,
}

/// An upload for one period: one descriptor for every HSDir, or (more than 20 introduction
/// points offered) distinct descriptors for the HSDirs clients ask, all with one revision.
#[derive(Debug, Clone)]
pub struct Upload {
    pub period: u64,
    pub reason: PublishReason,
    pub revision_counter: u64,
    pub descriptors: Vec<PlacedDescriptor>,
    /// Every HSDir it goes to.
    pub hsdirs: Vec<HsDirId>,
    /// Identities of the introduction points listed, in any of the descriptors (sorted).
    pub intro_points: Vec<String>,
    /// Restricted discovery: the clients it admits (as [`PublishRecord::authorized_clients`]).
    pub authorized_clients: Vec<String>,
    /// The backends they come from.
    pub backends: BTreeSet<String>,
    /// When the plan decided it: the record's time once an HSDir accepted it.
    pub decided_at: Timestamp,
}

/// The descriptors of one period, before the schedule says whether they are due.
struct Placement {
    descriptors: Vec<PlacedDescriptor>,
    backends: BTreeSet<String>,
    left_out: LeftOutOf,
}

/// The introduction points not listed.
enum LeftOutOf {
    /// The one descriptor's merge left these out, each for its reason.
    OneDescriptor(Vec<LeftOut>),
    /// Of distinct descriptors, none lists these: per backend, how many.
    EveryDescriptor(Vec<(String, usize)>),
}

impl Placement {
    fn log_left_out(&self, period: u64) {
        match &self.left_out {
            LeftOutOf::OneDescriptor(left_out) => {
                for left in left_out {
                    let why = match left.reason {
                        LeftOutReason::SharedRelay => {
                            "another backend's introduction point on the same relay (clients would only ever reach that one)"
                        }
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
            }
            LeftOutOf::EveryDescriptor(unlisted) => {
                if unlisted.is_empty() {
                    return;
                }
                // One line for all backends: with many, a line each would flood the log at
                // every upload.
                let counts: Vec<String> = unlisted
                    .iter()
                    .map(|(backend, count)| format!("{backend} {count}"))
                    .collect();
                tracing::info!(
                    period,
                    "introduction points in none of the {} distinct descriptors (each lists at most 20, one per relay): {}",
                    self.descriptors.len(),
                    counts.join(", ")
                );
                let absent: Vec<&str> = unlisted
                    .iter()
                    .map(|(backend, _)| backend.as_str())
                    .filter(|backend| !self.backends.contains(*backend))
                    .collect();
                if !absent.is_empty() {
                    tracing::warn!(
                        period,
                        "{} backend(s) in none of the {} distinct descriptors, so no client reaches them (too few relays for one introduction point each): {}",
                        absent.len(),
                        self.descriptors.len(),
                        absent.join(", ")
                    );
                }
            }
        }
    }
}

/// What the plan wants done now.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub uploads: Vec<Upload>,
    /// When to ask again at the latest (`None`: only when the healthy backends change).
    pub wake_at: Option<Timestamp>,
}

/// Whether uploads worked: what tells the cluster that this node's Tor can publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadResult {
    /// Nothing was due (or nothing could be built): says nothing about Tor.
    NothingDue,
    /// At least one HSDir accepted a descriptor.
    Accepted,
    /// HSDirs answered, but none accepted (a revision not above the one they hold, another
    /// publisher's): this node's Tor works, its revision counter is behind.
    Refused,
    /// Uploads were attempted and no HSDir answered, or the HSDirs could not be found.
    Failed,
}

impl UploadResult {
    /// The result of two pieces of work in one round: one acceptance is enough.
    pub fn and(self, other: UploadResult) -> UploadResult {
        use UploadResult::*;
        match (self, other) {
            (Accepted, _) | (_, Accepted) => Accepted,
            (Refused, _) | (_, Refused) => Refused,
            (Failed, _) | (_, Failed) => Failed,
            (NothingDue, NothingDue) => NothingDue,
        }
    }
}

/// See the module documentation.
pub struct PublishPlan<S: DescriptorSigner> {
    signer: S,
    interval: Duration,
    /// The last accepted upload of each period, keyed by time-period number.
    records: BTreeMap<u64, PublishRecord>,
    all_dead_alerted: bool,
    /// The records came from state.json: keep them when the lease is gained (see
    /// [`PublishPlan::on_lease_gained`]).
    restored: bool,
    /// Periods whose last uploads no HSDir accepted: how many in a row, and not before when
    /// to try again.
    backoff: BTreeMap<u64, Backoff>,
    /// The highest revision the fetch-back saw on the HSDirs, per period.
    revision_floor: BTreeMap<u64, u64>,
    /// Periods where the fetch-back found an HSDir lacking the last upload.
    lacking: BTreeSet<u64>,
    /// Restricted discovery: the clients that may find the service (empty: anyone), sorted.
    authorized_clients: Vec<curve25519::PublicKey>,
}

/// Failed uploads of one period in a row, and the earliest moment for the next.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    wait: Duration,
    not_before: Timestamp,
}

impl<S: DescriptorSigner> PublishPlan<S> {
    pub fn new(signer: S, interval: Duration) -> Self {
        PublishPlan {
            signer,
            interval,
            records: BTreeMap::new(),
            all_dead_alerted: false,
            restored: false,
            backoff: BTreeMap::new(),
            revision_floor: BTreeMap::new(),
            lacking: BTreeSet::new(),
            authorized_clients: Vec::new(),
        }
    }

    /// Restricted discovery: the clients whose keys the descriptor carries from now on. A
    /// period whose last upload (also one from before a restart) carried another list is
    /// uploaded again at once.
    pub fn set_authorized_clients(&mut self, mut clients: Vec<curve25519::PublicKey>) {
        clients.sort_by_key(|key| *key.as_bytes());
        clients.dedup_by_key(|key| *key.as_bytes());
        self.authorized_clients = clients;
    }

    /// The authorized clients as records keep them.
    fn authorized_client_ids(&self) -> Vec<String> {
        self.authorized_clients
            .iter()
            .map(|key| key.as_bytes().iter().map(|b| format!("{b:02x}")).collect())
            .collect()
    }

    /// Whether there is nothing to publish because no backend is healthy; raises the alert
    /// once, and lowers it when a backend is back.
    pub fn nothing_to_publish(&mut self, healthy: &[(String, Vec<S::IntroPoint>)]) -> bool {
        if healthy.iter().all(|(_, ips)| ips.is_empty()) {
            if !self.all_dead_alerted {
                tracing::error!(
                    "ALERT: no healthy backend: not publishing the descriptor for {} until one recovers",
                    self.signer.address()
                );
                self.all_dead_alerted = true;
            }
            return true;
        }
        if self.all_dead_alerted {
            tracing::info!("a backend is healthy again: publishing resumes");
            self.all_dead_alerted = false;
        }
        false
    }

    /// The master's blinded identity for a period, to ask which HSDirs are responsible.
    pub fn blind_id(&mut self, period: TimePeriod) -> Result<HsBlindId, BuildError> {
        self.signer.blind_id(period)
    }

    /// Decide the uploads due at `now` for `targets` (every period the consensus names).
    pub fn decide(
        &mut self,
        now: Timestamp,
        targets: &[PeriodTarget],
        healthy: &[(String, Vec<S::IntroPoint>)],
    ) -> Decision {
        let periods: Vec<u64> = targets
            .iter()
            .map(|t| t.info.time_period.interval_num())
            .collect();
        self.records.retain(|period, _| periods.contains(period));
        self.backoff.retain(|period, _| periods.contains(period));
        self.revision_floor
            .retain(|period, _| periods.contains(period));
        self.lacking.retain(|period| periods.contains(period));
        self.signer.retain_periods(&periods);

        let mut decision = Decision::default();
        for target in targets {
            let (upload, wake_at) = self.decide_period(now, target, healthy);
            decision.wake_at = Some(decision.wake_at.map_or(wake_at, |w| w.min(wake_at)));
            decision.uploads.extend(upload);
        }
        decision
    }

    /// One period: an upload if one is due, and when to look again.
    fn decide_period(
        &mut self,
        now: Timestamp,
        target: &PeriodTarget,
        healthy: &[(String, Vec<S::IntroPoint>)],
    ) -> (Option<Upload>, Timestamp) {
        let period = target.info.time_period.interval_num();
        let retry = now + RETRY_AFTER_FAILURE;
        if let Some(backoff) = self.backoff.get_mut(&period) {
            // Never further away than the wait itself (the clock may have stepped back).
            backoff.not_before = backoff.not_before.min(now + backoff.wait);
            if now < backoff.not_before {
                return (None, backoff.not_before);
            }
        }
        let Some(srv_offset) = target.info.srv_offset_secs(now) else {
            tracing::warn!(
                period,
                "the clock lies outside this period's SRV period: not publishing it now"
            );
            return (None, retry);
        };
        let revision_counter = match self
            .signer
            .revision_counter(target.info.time_period, srv_offset)
        {
            Ok(counter) => counter.max(
                self.revision_floor
                    .get(&period)
                    .map_or(0, |floor| floor.saturating_add(1)),
            ),
            Err(err) => {
                tracing::error!(period, "cannot compute the revision counter: {err}");
                return (None, retry);
            }
        };
        let base = DescriptorParams {
            intro_points: &[],
            revision_counter,
            flow_control: target.info.flow_control,
            authorized_clients: &self.authorized_clients,
            now: now.to_system_time(),
            size_limit: target.info.max_descriptor_size,
        };

        let Some(placed) = Self::place_descriptors(&mut self.signer, target, healthy, &base) else {
            tracing::error!(
                period,
                "no descriptor with even one introduction point can be built for this period"
            );
            return (None, retry);
        };
        let mut intro_ids: Vec<String> = placed
            .descriptors
            .iter()
            .flat_map(|d| d.intro_points.iter().cloned())
            .collect();
        intro_ids.sort();
        intro_ids.dedup();
        let hsdir_names: Vec<String> = target.hsdirs.iter().map(ToString::to_string).collect();

        let authorized_clients = self.authorized_client_ids();
        let last = self.records.get(&period);
        let reason = publish_reason(last, now, self.interval, &intro_ids, &hsdir_names)
            .or_else(|| {
                self.lacking
                    .contains(&period)
                    .then_some(PublishReason::HsDirsLackIt)
            })
            .or_else(|| {
                last.filter(|last| last.authorized_clients != authorized_clients)
                    .map(|_| PublishReason::AuthorizedClientsChanged)
            });
        let Some(reason) = reason else {
            return (None, last.map_or(now, |l| next_due(l, self.interval)));
        };
        if let Some(last) = last.filter(|last| revision_counter <= last.revision_counter) {
            // The counter has one-second resolution: within the second of the last upload,
            // wait for the next. A clock stepped back further waits longer.
            if last.published_at > now + CLOCK_STEP_BACK_TOLERANCE {
                tracing::warn!(period, "no usable revision counter (the clock stepped back): not publishing this period now");
                return (None, retry);
            }
            return (None, now + Duration::from_secs(1));
        }
        placed.log_left_out(period);
        let upload = Upload {
            period,
            reason,
            revision_counter,
            descriptors: placed.descriptors,
            hsdirs: target.hsdirs.clone(),
            intro_points: intro_ids,
            authorized_clients,
            backends: placed.backends,
            decided_at: now,
        };
        // Once it is done, `uploaded` says when the period is due next: an interval from now if
        // an HSDir accepted it, a retry otherwise.
        (Some(upload), now + self.interval)
    }

    /// The descriptors for one period and the HSDirs each goes to. Up to 20 introduction points
    /// offered: one descriptor for every HSDir. More: one descriptor per HSDir a client asks
    /// (`target.fetch_hsdirs`, up to `hsdir_n_replicas` x `hsdir_spread_fetch`), each merged
    /// from every backend, its round-robin order starting at the next backend listed in the
    /// fewest descriptors so far: each descriptor lists at least one backend no earlier one
    /// lists while there is one, and every backend is listed about equally often. The HSDirs
    /// that only store get copies of them in turn. `None` when some descriptor cannot be built
    /// with even one introduction point.
    fn place_descriptors(
        signer: &mut S,
        target: &PeriodTarget,
        healthy: &[(String, Vec<S::IntroPoint>)],
        base: &DescriptorParams<'_, S::IntroPoint>,
    ) -> Option<Placement> {
        let inputs: Vec<BackendIntroPoints<'_, S::IntroPoint>> = healthy
            .iter()
            .filter(|(_, ips)| !ips.is_empty())
            .map(|(name, ips)| BackendIntroPoints {
                backend: name,
                intro_points: ips,
            })
            .collect();
        let offered: usize = inputs.iter().map(|b| b.intro_points.len()).sum();
        let period = target.info.time_period.interval_num();
        let slots = target.fetch_slots();
        if offered <= MAX_INTRO_POINTS || slots.len() < 2 {
            let (merged, descriptor) =
                Self::merge_and_build(signer, target, &inputs, period, base)?;
            return Some(Placement {
                descriptors: vec![PlacedDescriptor {
                    descriptor,
                    hsdirs: target.hsdirs.clone(),
                    intro_points: merged.intro_points.iter().map(S::intro_point_id).collect(),
                }],
                backends: merged.sources.into_iter().collect(),
                left_out: LeftOutOf::OneDescriptor(merged.left_out),
            });
        }

        let mut descriptors = Vec::with_capacity(slots.len());
        let mut backends = BTreeSet::new();
        // How many descriptors list each backend so far; the first backend of a merge's order
        // is always listed (it has the pick of the relays).
        let count = inputs.len();
        let mut listed_in = vec![0_usize; count];
        let mut first = (period % count as u64) as usize;
        let mut last_listed = 0;
        for (slot, fetch_hsdir) in slots.iter().enumerate() {
            if slot > 0 {
                // Round-robin goes on where the last descriptor stopped, from the next
                // backend listed in the fewest descriptors.
                let fewest = listed_in.iter().copied().min().unwrap_or(0);
                first = (0..count)
                    .map(|step| (first + last_listed + step) % count)
                    .find(|&backend| listed_in[backend] == fewest)
                    .unwrap_or(first);
            }
            // The same start modulo `count`; the multiple of `count` turns which introduction
            // point each backend prefers (see `merge`).
            let seed = (first + slot * count) as u64;
            let (merged, descriptor) = Self::merge_and_build(signer, target, &inputs, seed, base)?;
            last_listed = merged.intro_points.len();
            for (index, input) in inputs.iter().enumerate() {
                if merged.sources.iter().any(|source| source == input.backend) {
                    listed_in[index] += 1;
                }
            }
            // The HSDirs that only store take copies in turn.
            let hsdirs = std::iter::once((*fetch_hsdir).clone())
                .chain(
                    target
                        .hsdirs
                        .iter()
                        .filter(|hsdir| !slots.contains(hsdir))
                        .skip(slot)
                        .step_by(slots.len())
                        .cloned(),
                )
                .collect();
            backends.extend(merged.sources);
            descriptors.push(PlacedDescriptor {
                descriptor,
                hsdirs,
                intro_points: merged.intro_points.iter().map(S::intro_point_id).collect(),
            });
        }
        let listed: BTreeSet<&String> = descriptors
            .iter()
            .flat_map(|d| d.intro_points.iter())
            .collect();
        let unlisted = inputs
            .iter()
            .map(|backend| {
                let count = backend
                    .intro_points
                    .iter()
                    .filter(|ip| !listed.contains(&S::intro_point_id(ip)))
                    .count();
                (backend.backend.to_owned(), count)
            })
            .filter(|(_, count)| *count > 0)
            .collect();
        Some(Placement {
            descriptors,
            backends,
            left_out: LeftOutOf::EveryDescriptor(unlisted),
        })
    }

    /// Merge with `seed` and build the descriptor for the merged list. The merge's size test
    /// builds the real descriptor; the last one that fitted is the one for the final list (the
    /// bisection only moves up after a success).
    fn merge_and_build(
        signer: &mut S,
        target: &PeriodTarget,
        inputs: &[BackendIntroPoints<'_, S::IntroPoint>],
        seed: u64,
        base: &DescriptorParams<'_, S::IntroPoint>,
    ) -> Option<(Merged<S::IntroPoint>, Arc<str>)> {
        let time_period = target.info.time_period;
        let period = time_period.interval_num();
        let mut built = None;
        let merged = merge(
            inputs,
            MAX_INTRO_POINTS,
            seed,
            S::intro_point_relay,
            |ips| {
                let params = DescriptorParams {
                    intro_points: ips,
                    ..*base
                };
                match signer.build(time_period, &params) {
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
            },
        );
        match (built, merged.intro_points.is_empty()) {
            (Some(descriptor), false) => Some((merged, Arc::from(descriptor))),
            _ => None,
        }
    }

    /// How `upload` went; returns the outcome and when the period is due next.
    pub fn uploaded(
        &mut self,
        upload: Upload,
        results: &[HsDirUpload],
        now: Timestamp,
    ) -> (UploadResult, Timestamp) {
        let accepted = results.iter().filter(|r| r.outcome.is_ok()).count();
        for failure in results.iter().filter(|r| r.outcome.is_err()) {
            if let Err(err) = &failure.outcome {
                tracing::warn!(period = upload.period, hsdir = %failure.hsdir, "upload failed: {err}");
            }
        }
        tracing::info!(
            period = upload.period,
            revision_counter = upload.revision_counter,
            "published descriptor ({}): {accepted}/{} HSDirs accepted in {:.1} s, {}{} introduction points from {} backend(s): {}",
            upload.reason,
            results.len(),
            now.saturating_duration_since(upload.decided_at).as_secs_f64(),
            match upload.descriptors.len() {
                1 => String::new(),
                distinct => format!("{distinct} distinct descriptors, "),
            },
            upload.intro_points.len(),
            upload.backends.len(),
            upload.backends.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        if accepted == 0 {
            let failures = self
                .backoff
                .get(&upload.period)
                .map_or(1, |b| b.failures.saturating_add(1));
            let wait = RETRY_AFTER_FAILURE
                .saturating_mul(2u32.saturating_pow(failures - 1))
                .min(MAX_RETRY_AFTER_FAILURE);
            let not_before = now + wait;
            tracing::warn!(
                period = upload.period,
                "no HSDir accepted the descriptor ({failures} time(s) in a row): next attempt in {} s",
                wait.as_secs()
            );
            self.backoff.insert(
                upload.period,
                Backoff {
                    failures,
                    wait,
                    not_before,
                },
            );
            let answered = results
                .iter()
                .any(|r| r.outcome.as_ref().is_err_and(HsDirError::hsdir_answered));
            let result = if answered {
                UploadResult::Refused
            } else {
                UploadResult::Failed
            };
            return (result, not_before);
        }
        self.backoff.remove(&upload.period);
        self.lacking.remove(&upload.period);
        let record = PublishRecord {
            published_at: upload.decided_at,
            intro_points: upload.intro_points,
            hsdirs: upload.hsdirs.iter().map(ToString::to_string).collect(),
            descriptors: upload.descriptors.len(),
            revision_counter: upload.revision_counter,
            authorized_clients: upload.authorized_clients,
            hsdirs_accepted: accepted,
            hsdirs_tried: results.len(),
        };
        let due = next_due(&record, self.interval);
        self.records.insert(upload.period, record);
        (UploadResult::Accepted, due)
    }

    /// What the fetch-back saw on the HSDirs for one period: the revisions raise the floor of
    /// the next revision counter, and an HSDir that lacks the last upload (holds no copy, or
    /// an older one) makes the period due again. Returns whether it did. A newer copy is
    /// another publisher's (a partition, or a takeover this node has not heard of yet): it
    /// only raises the floor, since overwriting it at every round would start an upload war
    /// the election, not the HSDirs, must settle.
    pub fn observe_copies(&mut self, copies: &HsDirCopies) -> bool {
        let held = copies.answered.iter().filter_map(|(_, copy)| copy.as_ref());
        if let Some(highest) = held.map(|copy| copy.revision_counter).max() {
            let floor = self.revision_floor.entry(copies.period).or_insert(0);
            *floor = (*floor).max(highest);
        }
        let Some(last) = self
            .records
            .get(&copies.period)
            .filter(|last| copies.read_at >= last.published_at)
        else {
            return false;
        };
        // Distinct descriptors share the revision and list parts of the upload's introduction
        // points; no other descriptor has that revision and lists only those.
        let has_ours_or_newer = |copy: &HeldCopy| {
            copy.revision_counter > last.revision_counter
                || (copy.revision_counter == last.revision_counter
                    && copy
                        .intro_points
                        .iter()
                        .all(|ip| last.intro_points.contains(ip)))
        };
        let lacking = copies
            .answered
            .iter()
            .filter(|(hsdir, _)| last.hsdirs.contains(&hsdir.to_string()))
            .any(|(_, copy)| !copy.as_ref().is_some_and(has_ours_or_newer));
        if lacking {
            self.lacking.insert(copies.period);
        }
        lacking
    }

    /// The master address, to read its descriptor back.
    pub fn master_address(&self) -> OnionAddress {
        self.signer.address()
    }

    /// This node has just gained the lease. What it uploaded before may have been replaced by
    /// another publisher's since, so it forgets its records and uploads every period at once;
    /// unless the records were just restored from before a restart recent enough that nobody
    /// could have taken over (see `daemon`), so that a restart does not re-upload needlessly.
    pub fn on_lease_gained(&mut self) {
        // Failures under an earlier lease say nothing about this one.
        self.backoff.clear();
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
        self.records
            .iter()
            .map(|(period, record)| SavedUpload {
                time_period: *period,
                published_at: record.published_at.as_unix_secs(),
                revision_counter: record.revision_counter,
                intro_points: record.intro_points.clone(),
                hsdirs: record.hsdirs.clone(),
                descriptors: record.descriptors,
                authorized_clients: record.authorized_clients.clone(),
                hsdirs_accepted: record.hsdirs_accepted,
                hsdirs_tried: record.hsdirs_tried,
            })
            .collect()
    }

    /// Resume from the uploads saved before a restart. Periods no longer published are dropped
    /// at the next round.
    pub fn restore(&mut self, uploads: &[SavedUpload]) {
        for upload in uploads {
            self.records.insert(
                upload.time_period,
                PublishRecord {
                    published_at: Timestamp::from_unix_secs(upload.published_at),
                    intro_points: upload.intro_points.clone(),
                    hsdirs: upload.hsdirs.clone(),
                    descriptors: upload.descriptors,
                    revision_counter: upload.revision_counter,
                    authorized_clients: upload.authorized_clients.clone(),
                    hsdirs_accepted: upload.hsdirs_accepted,
                    hsdirs_tried: upload.hsdirs_tried,
                },
            );
        }
        self.restored = !uploads.is_empty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tor::HsDirError;

    const INTERVAL: Duration = Duration::from_secs(600);

    /// A signer that writes the list as text: `rev=<n> ips=<a,b,...>`; one revision per second.
    struct TextSigner;

    impl DescriptorSigner for TextSigner {
        type IntroPoint = String;

        fn address(&self) -> crate::keys::onion_address::OnionAddress {
            "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
                .parse()
                .unwrap()
        }
        fn intro_point_id(intro_point: &String) -> String {
            intro_point.clone()
        }
        /// `<name>@<relay>`, or a relay of its own.
        fn intro_point_relay(intro_point: &String) -> String {
            match intro_point.split_once('@') {
                Some((_, relay)) => relay.to_owned(),
                None => intro_point.clone(),
            }
        }
        fn revision_counter(
            &mut self,
            _period: TimePeriod,
            srv_offset_secs: u32,
        ) -> Result<u64, BuildError> {
            Ok(u64::from(srv_offset_secs))
        }
        fn blind_id(&mut self, period: TimePeriod) -> Result<HsBlindId, BuildError> {
            Ok(HsBlindId::from([period.interval_num() as u8; 32]))
        }
        fn build(
            &mut self,
            _period: TimePeriod,
            params: &DescriptorParams<'_, String>,
        ) -> Result<String, BuildError> {
            Ok(format!(
                "rev={} ips={}",
                params.revision_counter,
                params.intro_points.join(",")
            ))
        }
        fn retain_periods(&mut self, _periods: &[u64]) {}
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_800_000_000 + secs)
    }

    fn target(period: u64, hsdirs: &[&str]) -> PeriodTarget {
        PeriodTarget {
            info: PeriodInfo {
                time_period: TimePeriod::from_parts(1440, period, 720),
                srv_start: at(0),
                max_descriptor_size: 50_000,
                flow_control: None,
            },
            hsdirs: hsdirs.iter().map(|h| HsDirId::new(h.to_string())).collect(),
            fetch_hsdirs: hsdirs.iter().map(|h| HsDirId::new(h.to_string())).collect(),
        }
    }

    /// A period with the default ring: 2 replicas x 4 store HSDirs, of which clients ask the
    /// first 3 of each (`s1`..`s8`, fetch: all but `s4` and `s8`).
    fn ring_target(period: u64) -> PeriodTarget {
        let store: Vec<String> = (1..=8).map(|i| format!("s{i}")).collect();
        let mut target = target(
            period,
            &store.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        target
            .fetch_hsdirs
            .retain(|hsdir| !["s4", "s8"].contains(&hsdir.as_str()));
        target
    }

    /// `count` backends `b0`.. with `per_backend` introduction points each (`b0-0`, ...).
    fn many_backends(count: usize, per_backend: usize) -> Vec<(String, Vec<String>)> {
        (0..count)
            .map(|b| {
                let ips = (0..per_backend).map(|i| format!("b{b}-{i}")).collect();
                (format!("b{b}"), ips)
            })
            .collect()
    }

    /// How many of `upload`'s descriptors list each backend.
    fn descriptors_per_backend(upload: &Upload) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for placed in &upload.descriptors {
            let backends: BTreeSet<&str> = placed
                .intro_points
                .iter()
                .map(|ip| ip.split('-').next().unwrap())
                .collect();
            for backend in backends {
                *counts.entry(backend.to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    fn healthy(backends: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        backends
            .iter()
            .map(|(name, ips)| {
                (
                    name.to_string(),
                    ips.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect()
    }

    fn accepted_by_all(upload: &Upload) -> Vec<HsDirUpload> {
        upload
            .hsdirs
            .iter()
            .map(|hsdir| HsDirUpload {
                hsdir: hsdir.clone(),
                outcome: Ok(()),
            })
            .collect()
    }

    fn plan() -> PublishPlan<TextSigner> {
        PublishPlan::new(TextSigner, INTERVAL)
    }

    /// Decide at `now` and report every upload as accepted by every HSDir.
    fn publish(
        plan: &mut PublishPlan<TextSigner>,
        now: Timestamp,
        targets: &[PeriodTarget],
        backends: &[(String, Vec<String>)],
    ) -> Vec<(u64, PublishReason, u64)> {
        let decision = plan.decide(now, targets, backends);
        decision
            .uploads
            .into_iter()
            .map(|upload| {
                let done = (upload.period, upload.reason, upload.revision_counter);
                let results = accepted_by_all(&upload);
                assert_eq!(
                    plan.uploaded(upload, &results, now).0,
                    UploadResult::Accepted
                );
                done
            })
            .collect()
    }

    #[test]
    fn a_new_list_of_authorized_clients_is_uploaded_at_once_for_every_period() {
        let mut plan = plan();
        let targets = [target(10, &["h1"]), target(11, &["h2"])];
        let backends = healthy(&[("a", &["a1"])]);
        publish(&mut plan, at(100), &targets, &backends);
        let key = |byte| curve25519::PublicKey::from([byte; 32]);
        plan.set_authorized_clients(vec![key(1), key(2)]);
        assert_eq!(
            publish(&mut plan, at(110), &targets, &backends),
            [
                (10, PublishReason::AuthorizedClientsChanged, 110),
                (11, PublishReason::AuthorizedClientsChanged, 110)
            ]
        );
        // The same clients in another order, or listed twice, change nothing.
        plan.set_authorized_clients(vec![key(2), key(1), key(2)]);
        assert!(publish(&mut plan, at(120), &targets, &backends).is_empty());

        // After a restart with restricted discovery turned off meanwhile: the restored
        // records say which clients the HSDirs' copies admit, so both periods go again.
        let saved = plan.saved_uploads();
        let mut restarted = super::tests::plan();
        restarted.restore(&saved);
        restarted.set_authorized_clients(Vec::new());
        assert_eq!(
            publish(&mut restarted, at(130), &targets, &backends),
            [
                (10, PublishReason::AuthorizedClientsChanged, 130),
                (11, PublishReason::AuthorizedClientsChanged, 130)
            ]
        );
    }

    #[test]
    fn every_period_is_published_then_waits_for_the_interval() {
        let mut plan = plan();
        let targets = [target(10, &["h1", "h2"]), target(11, &["h3"])];
        let backends = healthy(&[("a", &["a1", "a2"]), ("b", &["b1"])]);
        assert_eq!(
            publish(&mut plan, at(100), &targets, &backends),
            [
                (10, PublishReason::FirstPublish, 100),
                (11, PublishReason::FirstPublish, 100)
            ]
        );
        let decision = plan.decide(at(699), &targets, &backends);
        assert!(decision.uploads.is_empty());
        assert_eq!(decision.wake_at, Some(at(700)));
        assert_eq!(
            publish(&mut plan, at(700), &targets, &backends),
            [
                (10, PublishReason::IntervalElapsed, 700),
                (11, PublishReason::IntervalElapsed, 700)
            ]
        );
    }

    #[test]
    fn changed_intro_points_or_hsdirs_publish_at_once() {
        let mut plan = plan();
        let backends = healthy(&[("a", &["a1"]), ("b", &["b1"])]);
        publish(&mut plan, at(100), &[target(10, &["h1"])], &backends);
        let fewer = healthy(&[("a", &["a1"])]);
        assert_eq!(
            publish(&mut plan, at(101), &[target(10, &["h1"])], &fewer),
            [(10, PublishReason::IntroPointsChanged, 101)]
        );
        assert_eq!(
            publish(&mut plan, at(102), &[target(10, &["h2"])], &fewer),
            [(10, PublishReason::HsDirsChanged, 102)]
        );
    }

    #[test]
    fn a_second_upload_within_the_same_second_waits_for_the_next() {
        let mut plan = plan();
        publish(
            &mut plan,
            at(100),
            &[target(10, &["h1"])],
            &healthy(&[("a", &["a1"])]),
        );
        let changed = healthy(&[("a", &["a2"])]);
        let decision = plan.decide(at(100), &[target(10, &["h1"])], &changed);
        assert!(decision.uploads.is_empty());
        assert_eq!(decision.wake_at, Some(at(101)));
        assert_eq!(
            publish(&mut plan, at(101), &[target(10, &["h1"])], &changed),
            [(10, PublishReason::IntroPointsChanged, 101)]
        );
    }

    #[test]
    fn a_refused_upload_records_nothing_and_is_retried() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        let mut decision = plan.decide(at(100), &targets, &backends);
        let upload = decision.uploads.remove(0);
        let refused = vec![HsDirUpload {
            hsdir: HsDirId::new("h1".into()),
            outcome: Err(HsDirError::RevisionRefused),
        }];
        assert_eq!(
            plan.uploaded(upload, &refused, at(100)),
            (UploadResult::Refused, at(100) + RETRY_AFTER_FAILURE)
        );
        assert!(plan.saved_uploads().is_empty());
        assert_eq!(
            publish(&mut plan, at(130), &targets, &backends),
            [(10, PublishReason::FirstPublish, 130)]
        );
    }

    #[test]
    fn refused_uploads_back_off_whatever_changes_until_one_is_accepted() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        let changed = healthy(&[("a", &["a1"]), ("b", &["b1"])]);
        let refused = vec![HsDirUpload {
            hsdir: HsDirId::new("h1".into()),
            outcome: Err(HsDirError::RevisionRefused),
        }];
        let mut now = 100;
        let mut waits = Vec::new();
        for _ in 0..6 {
            let mut decision = plan.decide(at(now), &targets, &backends);
            let upload = decision.uploads.remove(0);
            let (result, next) = plan.uploaded(upload, &refused, at(now));
            assert_eq!(result, UploadResult::Refused);
            let wait = next.saturating_duration_since(at(now)).as_secs();
            waits.push(wait);
            // A change of the healthy backends does not cut the wait short.
            let early = plan.decide(at(now + wait - 1), &targets, &changed);
            assert!(early.uploads.is_empty(), "uploaded during the backoff");
            assert_eq!(early.wake_at, Some(next));
            now += wait;
        }
        assert_eq!(waits, [30, 60, 120, 240, 300, 300]);
        // An accepted upload ends the backoff.
        let mut decision = plan.decide(at(now), &targets, &backends);
        let upload = decision.uploads.remove(0);
        let accepted = vec![HsDirUpload {
            hsdir: HsDirId::new("h1".into()),
            outcome: Ok(()),
        }];
        assert_eq!(
            plan.uploaded(upload, &accepted, at(now)).0,
            UploadResult::Accepted
        );
        assert_eq!(
            publish(&mut plan, at(now + 1), &targets, &changed),
            [(10, PublishReason::IntroPointsChanged, now + 1)]
        );
    }

    #[test]
    fn a_new_lease_ends_the_backoff() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        let mut decision = plan.decide(at(100), &targets, &backends);
        let upload = decision.uploads.remove(0);
        let failed = vec![HsDirUpload {
            hsdir: HsDirId::new("h1".into()),
            outcome: Err(HsDirError::NoCircuit("cut".into())),
        }];
        plan.uploaded(upload, &failed, at(100));
        plan.on_lease_gained();
        assert_eq!(
            publish(&mut plan, at(101), &targets, &backends),
            [(10, PublishReason::FirstPublish, 101)]
        );
    }

    #[test]
    fn no_healthy_backend_raises_the_alert_once() {
        let mut plan = plan();
        let none = healthy(&[("a", &[])]);
        assert!(plan.nothing_to_publish(&none));
        assert!(plan.alert_raised());
        assert!(plan.nothing_to_publish(&none));
        assert!(!plan.nothing_to_publish(&healthy(&[("a", &["a1"])])));
        assert!(!plan.alert_raised());
    }

    #[test]
    fn periods_no_longer_named_are_forgotten() {
        let mut plan = plan();
        let backends = healthy(&[("a", &["a1"])]);
        publish(
            &mut plan,
            at(100),
            &[target(10, &["h1"]), target(11, &["h1"])],
            &backends,
        );
        publish(&mut plan, at(101), &[target(11, &["h1"])], &backends);
        let periods: Vec<u64> = plan.saved_uploads().iter().map(|u| u.time_period).collect();
        assert_eq!(periods, [11]);
    }

    #[test]
    fn restored_uploads_survive_the_first_lease_only() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        publish(&mut plan, at(100), &targets, &backends);
        let saved = plan.saved_uploads();

        let mut restarted = self::plan();
        restarted.restore(&saved);
        restarted.on_lease_gained();
        assert!(restarted
            .decide(at(110), &targets, &backends)
            .uploads
            .is_empty());
        // A later lease (another node may have published meanwhile) uploads at once.
        restarted.on_lease_gained();
        assert_eq!(
            publish(&mut restarted, at(120), &targets, &backends),
            [(10, PublishReason::FirstPublish, 120)]
        );
    }

    /// An HSDir's name and its copy: revision and introduction points, or none.
    type Held<'a> = (&'a str, Option<(u64, &'a [&'a str])>);

    fn copies(period: u64, held: &[Held<'_>]) -> HsDirCopies {
        HsDirCopies {
            period,
            read_at: at(1_000_000),
            answered: held
                .iter()
                .map(|(hsdir, copy)| {
                    let copy = copy.map(|(revision_counter, ips)| HeldCopy {
                        revision_counter,
                        intro_points: ips.iter().map(|s| s.to_string()).collect(),
                    });
                    (HsDirId::new(hsdir.to_string()), copy)
                })
                .collect(),
            unreachable: 0,
        }
    }

    #[test]
    fn an_hsdir_lacking_the_last_upload_gets_it_again_at_once() {
        let mut plan = plan();
        let targets = [target(10, &["h1", "h2"])];
        let backends = healthy(&[("a", &["a1"])]);
        publish(&mut plan, at(100), &targets, &backends);
        // Both hold it: nothing to do.
        let both = copies(
            10,
            &[("h1", Some((100, &["a1"]))), ("h2", Some((100, &["a1"])))],
        );
        assert!(!plan.observe_copies(&both));
        assert!(plan.decide(at(110), &targets, &backends).uploads.is_empty());
        // h2 lost it (or never got it): the period is due again.
        let lost = copies(10, &[("h1", Some((100, &["a1"]))), ("h2", None)]);
        assert!(plan.observe_copies(&lost));
        assert_eq!(
            publish(&mut plan, at(120), &targets, &backends),
            [(10, PublishReason::HsDirsLackIt, 120)]
        );
        assert!(
            plan.decide(at(130), &targets, &backends).uploads.is_empty(),
            "repaired once"
        );
    }

    #[test]
    fn the_revision_stays_above_what_the_hsdirs_hold() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        // A predecessor whose clock ran a minute ahead uploaded revision 160.
        plan.observe_copies(&copies(10, &[("h1", Some((160, &["a1"])))]));
        assert_eq!(
            publish(&mut plan, at(100), &targets, &backends),
            [(10, PublishReason::FirstPublish, 161)]
        );
        // Its own upload read back raises the floor too: the next one goes above it again.
        plan.observe_copies(&copies(10, &[("h1", Some((161, &["a1"])))]));
        let changed = healthy(&[("a", &["a1", "a2"])]);
        assert_eq!(
            publish(&mut plan, at(101), &targets, &changed),
            [(10, PublishReason::IntroPointsChanged, 162)]
        );
    }

    #[test]
    fn another_publishers_newer_copy_only_raises_the_floor() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        publish(&mut plan, at(100), &targets, &backends);
        assert!(!plan.observe_copies(&copies(10, &[("h1", Some((150, &["x9"])))])));
        assert!(
            plan.decide(at(101), &targets, &backends).uploads.is_empty(),
            "no upload war"
        );
        let changed = healthy(&[("a", &["a1", "a2"])]);
        assert_eq!(
            publish(&mut plan, at(102), &targets, &changed),
            [(10, PublishReason::IntroPointsChanged, 151)]
        );
    }

    #[test]
    fn copies_read_before_the_last_upload_say_nothing_about_it() {
        let mut plan = plan();
        let targets = [target(10, &["h1"])];
        let backends = healthy(&[("a", &["a1"])]);
        publish(&mut plan, at(100), &targets, &backends);
        let mut old = copies(10, &[("h1", None)]);
        old.read_at = at(99);
        assert!(!plan.observe_copies(&old));
        assert!(plan.decide(at(110), &targets, &backends).uploads.is_empty());
    }

    #[test]
    fn up_to_twenty_introduction_points_go_in_one_descriptor_to_every_hsdir() {
        let mut plan = plan();
        let decision = plan.decide(at(100), &[ring_target(10)], &many_backends(5, 4));
        let [upload] = &decision.uploads[..] else {
            panic!("one upload expected")
        };
        let [placed] = &upload.descriptors[..] else {
            panic!("one descriptor expected")
        };
        assert_eq!(placed.hsdirs, upload.hsdirs);
        assert_eq!(placed.intro_points.len(), 20);
    }

    #[test]
    fn more_than_twenty_get_a_descriptor_for_every_hsdir_clients_ask() {
        for (backends, per_backend) in [(8, 3), (50, 3), (7, 20), (120, 1)] {
            let mut plan = plan();
            let healthy = many_backends(backends, per_backend);
            let decision = plan.decide(at(100), &[ring_target(10)], &healthy);
            let upload = &decision.uploads[0];
            let case = format!("{backends} x {per_backend}");
            assert_eq!(upload.descriptors.len(), 6, "{case}: one per fetch HSDir");
            // Every HSDir gets exactly one descriptor; each client-asked HSDir its own.
            let mut placed_on: Vec<&str> = upload
                .descriptors
                .iter()
                .flat_map(|d| d.hsdirs.iter().map(HsDirId::as_str))
                .collect();
            placed_on.sort();
            assert_eq!(
                placed_on,
                ["s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"],
                "{case}"
            );
            for placed in &upload.descriptors {
                assert!(placed.intro_points.len() <= 20, "{case}");
                assert_eq!(
                    placed
                        .hsdirs
                        .iter()
                        .filter(|h| !["s4", "s8"].contains(&h.as_str()))
                        .count(),
                    1,
                    "{case}: one client-asked HSDir per descriptor"
                );
            }
            let distinct: BTreeSet<&Vec<String>> =
                upload.descriptors.iter().map(|d| &d.intro_points).collect();
            assert!(distinct.len() > 1, "{case}: the descriptors differ");
            // Every backend is listed, as evenly as the counts allow.
            let counts = descriptors_per_backend(upload);
            assert_eq!(
                counts.len(),
                backends,
                "{case}: every backend listed somewhere"
            );
            let (least, most) = (
                counts.values().min().unwrap(),
                counts.values().max().unwrap(),
            );
            assert!(most - least <= 1, "{case}: spread {least}..={most}");
            // One revision for all; the union is what the record keeps.
            let union: BTreeSet<&String> = upload
                .descriptors
                .iter()
                .flat_map(|d| &d.intro_points)
                .collect();
            assert_eq!(upload.intro_points.len(), union.len(), "{case}");
        }
    }

    #[test]
    fn distinct_descriptors_list_every_backend_however_the_relays_are_shared() {
        // 8 backends with 3 introduction points each on 3 of 9 relays (as on the private test
        // network): one descriptor lists one per relay, so at most 9, and often not every
        // backend; the 6 descriptors together list every one.
        let mut state = 0x9e37_79b9_u64;
        let mut next = |bound: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize % bound
        };
        for case in 0..300 {
            let healthy: Vec<(String, Vec<String>)> = (0..8)
                .map(|b| {
                    let mut relays: Vec<usize> = Vec::new();
                    while relays.len() < 3 {
                        let relay = next(9);
                        if !relays.contains(&relay) {
                            relays.push(relay);
                        }
                    }
                    let ips = relays.iter().map(|r| format!("b{b}-{r}@r{r}")).collect();
                    (format!("b{b}"), ips)
                })
                .collect();
            let mut plan = plan();
            let decision = plan.decide(at(100), &[ring_target(case)], &healthy);
            let upload = &decision.uploads[0];
            for placed in &upload.descriptors {
                let relays: BTreeSet<&str> = placed
                    .intro_points
                    .iter()
                    .map(|ip| ip.split_once('@').unwrap().1)
                    .collect();
                assert_eq!(relays.len(), placed.intro_points.len(), "case {case}");
            }
            assert_eq!(
                descriptors_per_backend(upload).len(),
                8,
                "case {case}: {healthy:?}"
            );
        }
    }

    #[test]
    fn where_relays_allow_several_choices_distinct_descriptors_list_different_ones() {
        // Backend b has introduction points on relays b, b+1 and b+2 (of 8): every backend can
        // have a relay of its own in three ways; the descriptors use all three.
        let healthy: Vec<(String, Vec<String>)> = (0..8)
            .map(|b| {
                let ips = (0..3)
                    .map(|i| format!("b{b}-{i}@r{}", (b + i) % 8))
                    .collect();
                (format!("b{b}"), ips)
            })
            .collect();
        let mut plan = plan();
        let decision = plan.decide(at(100), &[ring_target(10)], &healthy);
        let upload = &decision.uploads[0];
        for placed in &upload.descriptors {
            assert_eq!(placed.intro_points.len(), 8, "one per relay, every backend");
        }
        assert_eq!(
            upload.intro_points.len(),
            24,
            "every introduction point listed somewhere"
        );
    }

    #[test]
    fn copies_of_distinct_descriptors_are_the_upload_read_back() {
        let mut plan = plan();
        let targets = [ring_target(10)];
        let healthy = many_backends(8, 3);
        let decision = plan.decide(at(100), &targets, &healthy);
        let upload = decision.uploads.into_iter().next().unwrap();
        let placed = upload.descriptors.clone();
        let results = accepted_by_all(&upload);
        plan.uploaded(upload, &results, at(100));
        let held: Vec<(HsDirId, Option<HeldCopy>)> = placed
            .iter()
            .flat_map(|d| {
                d.hsdirs.iter().map(|hsdir| {
                    let copy = HeldCopy {
                        revision_counter: 100,
                        intro_points: d.intro_points.clone(),
                    };
                    (hsdir.clone(), Some(copy))
                })
            })
            .collect();
        let mut read = HsDirCopies {
            period: 10,
            read_at: at(1_000),
            answered: held,
            unreachable: 0,
        };
        assert!(!plan.observe_copies(&read), "every HSDir holds its part");
        assert!(plan.decide(at(101), &targets, &healthy).uploads.is_empty());
        // One HSDir's copy lists an introduction point the upload did not: not ours.
        read.answered[0].1.as_mut().unwrap().intro_points[0] = "x9".into();
        assert!(plan.observe_copies(&read));
    }

    #[test]
    fn a_new_ring_moves_the_distinct_descriptors() {
        let mut plan = plan();
        let healthy = many_backends(8, 3);
        publish(&mut plan, at(100), &[ring_target(10)], &healthy);
        let mut moved = ring_target(10);
        moved.hsdirs[0] = HsDirId::new("s9".into());
        moved.fetch_hsdirs[0] = HsDirId::new("s9".into());
        let decision = plan.decide(at(101), &[moved], &healthy);
        let upload = &decision.uploads[0];
        assert_eq!(upload.reason, PublishReason::HsDirsChanged);
        assert!(upload
            .descriptors
            .iter()
            .any(|d| d.hsdirs[0].as_str() == "s9"));
    }
}
