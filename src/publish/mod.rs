//! Publishing the master descriptor: [`plan`] decides (which periods, which introduction
//! points, which revision, when), [`upload`] posts a descriptor to every responsible HSDir, and
//! [`publish_due`] is the thin shell between them and the Tor seam: it asks the seam for the
//! periods and HSDirs, hands them to the plan, runs the uploads the plan returns and reports
//! their outcome back. [`read_back`] reads what every responsible HSDir holds of the master
//! descriptor (every node does, each health round: the plan repairs what is missing and keeps
//! its revisions above what it sees; status shows it). If no backend is healthy, nothing is uploaded (an empty descriptor
//! cannot exist, and an old one pointing at dead backends is no better than the HSDir copies
//! already out there) and an alert is logged once, until a backend comes back.

pub mod plan;
pub mod schedule;
pub mod upload;

use futures::future::join_all;

use crate::clock::Timestamp;
use crate::descriptor::signer::{intro_point_id, DescriptorSigner};
use crate::health::fetch::fetch_copies;
use crate::keys::onion_address::OnionAddress;
use crate::tor::{HsDirSet, TorNetwork};
use plan::{HeldCopy, HsDirCopies, PeriodTarget, PublishPlan, UploadResult, RETRY_AFTER_FAILURE};
use upload::upload_to_all;

/// What one call of [`publish_due`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishRound {
    /// When to call again at the latest (`None`: only when the healthy backends change).
    pub wake_at: Option<Timestamp>,
    pub uploads: UploadResult,
}

/// Upload for every period that needs it, through `tor`, as `plan` decides; `clock` is the
/// node's wall clock ([`Timestamp::now`] in the daemon, simulated time in tests).
pub async fn publish_due<T: TorNetwork, S: DescriptorSigner>(
    tor: &T,
    plan: &mut PublishPlan<S>,
    healthy: &[(String, Vec<S::IntroPoint>)],
    clock: impl Fn() -> Timestamp,
) -> PublishRound {
    if plan.nothing_to_publish(healthy) {
        return PublishRound {
            wake_at: None,
            uploads: UploadResult::NothingDue,
        };
    }
    let failed = |err: &dyn std::fmt::Display| {
        tracing::warn!("cannot publish yet: {err}");
        PublishRound {
            wake_at: Some(clock() + RETRY_AFTER_FAILURE),
            uploads: UploadResult::Failed,
        }
    };
    let periods = match tor.publish_periods().await {
        Ok(periods) => periods,
        Err(err) => return failed(&err),
    };
    let mut targets = Vec::with_capacity(periods.len());
    for info in periods {
        let blind_id = match plan.blind_id(info.time_period) {
            Ok(blind_id) => blind_id,
            Err(err) => {
                let period = info.time_period.interval_num();
                tracing::error!(period, "cannot publish this period: {err}");
                continue;
            }
        };
        let store = tor.hsdirs(&blind_id, info.time_period, HsDirSet::Store);
        let fetch = tor.hsdirs(&blind_id, info.time_period, HsDirSet::Fetch);
        match futures::join!(store, fetch) {
            (Ok(hsdirs), Ok(fetch_hsdirs)) => targets.push(PeriodTarget {
                info,
                hsdirs,
                fetch_hsdirs,
            }),
            (Err(err), _) | (_, Err(err)) => return failed(&err),
        }
    }

    let decision = plan.decide(clock(), &targets, healthy);
    let mut round = PublishRound {
        wake_at: decision.wake_at,
        uploads: UploadResult::NothingDue,
    };
    for upload in decision.uploads {
        let results: Vec<_> = join_all(
            upload
                .descriptors
                .iter()
                .map(|placed| upload_to_all(tor, &placed.hsdirs, placed.descriptor.clone())),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        let (outcome, due) = plan.uploaded(upload, &results, clock());
        round.uploads = round.uploads.and(outcome);
        round.wake_at = Some(round.wake_at.map_or(due, |w| w.min(due)));
    }
    round
}

/// What every HSDir responsible for `master` holds of its descriptor, for every period a
/// service publishes for now, read at `read_at`. Periods whose HSDirs cannot be found are left
/// out (this node's Tor is in trouble; the health round says so).
pub async fn read_back<T: TorNetwork>(
    tor: &T,
    master: &OnionAddress,
    read_at: Timestamp,
) -> Vec<HsDirCopies> {
    let periods = match tor.publish_periods().await {
        Ok(periods) => periods,
        Err(err) => {
            tracing::debug!("cannot read the master descriptor back: {err}");
            return Vec::new();
        }
    };
    // Every period at once: each HSDir request may take its whole timeout.
    let fetched = join_all(
        periods
            .iter()
            .map(|period| fetch_copies(tor, master, period)),
    )
    .await;
    let mut all = Vec::with_capacity(periods.len());
    for (period, fetched) in periods.iter().zip(fetched) {
        let copies = match fetched {
            Ok(copies) => copies,
            Err(err) => {
                tracing::debug!("cannot read the master descriptor back: {err}");
                continue;
            }
        };
        let unreachable = copies.iter().filter(|c| !c.answered()).count();
        let answered = copies
            .into_iter()
            .filter(|c| c.answered())
            .map(|c| {
                let held = c.copy.ok().map(|descriptor| HeldCopy {
                    revision_counter: descriptor.revision_counter,
                    intro_points: descriptor.intro_points.iter().map(intro_point_id).collect(),
                });
                (c.hsdir, held)
            })
            .collect();
        all.push(HsDirCopies {
            period: period.time_period.interval_num(),
            read_at,
            answered,
            unreachable,
        });
    }
    all
}
