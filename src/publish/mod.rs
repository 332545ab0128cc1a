//! Publishing the master descriptor: [`plan`] decides (which periods, which introduction
//! points, which revision, when), [`upload`] posts a descriptor to every responsible HSDir, and
//! [`publish_due`] is the thin shell between them and the Tor seam: it asks the seam for the
//! periods and HSDirs, hands them to the plan, runs the uploads the plan returns and reports
//! their outcome back. If no backend is healthy, nothing is uploaded (an empty descriptor
//! cannot exist, and an old one pointing at dead backends is no better than the HSDir copies
//! already out there) and an alert is logged once, until a backend comes back.

pub mod plan;
pub mod schedule;
pub mod upload;

use crate::clock::Timestamp;
use crate::descriptor::signer::DescriptorSigner;
use crate::tor::{HsDirSet, TorNetwork};
use plan::{PeriodTarget, PublishPlan, UploadResult, RETRY_AFTER_FAILURE};
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
        match tor
            .hsdirs(&blind_id, info.time_period, HsDirSet::Store)
            .await
        {
            Ok(hsdirs) => targets.push(PeriodTarget { info, hsdirs }),
            Err(err) => return failed(&err),
        }
    }

    let decision = plan.decide(clock(), &targets, healthy);
    let mut round = PublishRound {
        wake_at: decision.wake_at,
        uploads: UploadResult::NothingDue,
    };
    for upload in decision.uploads {
        let results = upload_to_all(tor, &upload.hsdirs, upload.descriptor.clone()).await;
        let (outcome, due) = plan.uploaded(upload, &results, clock());
        round.uploads = round.uploads.and(outcome);
        round.wake_at = Some(round.wake_at.map_or(due, |w| w.min(due)));
    }
    round
}
