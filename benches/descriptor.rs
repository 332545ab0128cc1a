//! Building and signing the master descriptor, merging introduction points, and the whole
//! set of distinct descriptors a publish makes when more than 20 are offered.
//!
//! Run with `cargo bench --bench descriptor` (release build). Prints, for each case, the
//! median and the 90th percentile over many runs. The goal (BENCHMARKS.md): a 20-intro-point
//! descriptor built and signed in at most 1 ms.

use std::time::{Duration, Instant, SystemTime};

use rustbalance::clock::Timestamp;
use rustbalance::descriptor::build::{build_descriptor, DescriptorParams, MasterIdentity};
use rustbalance::descriptor::encode::FlowControl;
use rustbalance::descriptor::merge::{merge, BackendIntroPoints};
use rustbalance::descriptor::signer::{intro_point_relay, MasterSigner};
use rustbalance::descriptor::synthetic::synthetic_intro_points;
use rustbalance::keys::MasterKey;
use rustbalance::publish::plan::{PeriodTarget, PublishPlan};
use rustbalance::tor::{HsDirId, PeriodInfo};
use tor_hscrypto::time::TimePeriod;

const RUNS: usize = 500;

fn main() {
    let key = MasterKey::generate().expect("random master key");
    let master = MasterIdentity::from_expanded_secret(key.expanded_secret()).expect("usable key");
    let now = SystemTime::now();
    let period = TimePeriod::new(
        Duration::from_secs(86_400),
        now,
        Duration::from_secs(12 * 3600),
    )
    .expect("valid time period");
    report("blind the master key for a time period", || {
        master.blind(period).expect("blinds");
    });
    let blinded = master.blind(period).expect("blinds");
    let base = DescriptorParams {
        intro_points: &[],
        revision_counter: 1,
        flow_control: Some(FlowControl { sendme_inc: 31 }),
        authorized_clients: &[],
        now,
        size_limit: 50_000,
    };
    let params = |intro_points| DescriptorParams {
        intro_points,
        ..base
    };

    let one = synthetic_intro_points(1);
    report("build + sign, 1 intro point", || {
        build_descriptor(&blinded, &params(&one), &mut rand::rng()).expect("builds");
    });
    let twenty = synthetic_intro_points(20);
    report("build + sign, 20 intro points", || {
        build_descriptor(&blinded, &params(&twenty), &mut rand::rng()).expect("builds");
    });

    let backends: Vec<Vec<_>> = (0..4).map(|_| synthetic_intro_points(10)).collect();
    let names = ["a", "b", "c", "d"];
    let inputs: Vec<BackendIntroPoints<'_, _>> = backends
        .iter()
        .zip(names)
        .map(|(ips, backend)| BackendIntroPoints {
            backend,
            intro_points: ips,
        })
        .collect();
    report("merge 4 x 10 intro points (cap only)", || {
        merge(&inputs, 20, 7, intro_point_relay, |_| true);
    });
    report(
        "merge 4 x 10 + size check by building (publish path)",
        || {
            merge(&inputs, 20, 7, intro_point_relay, |ips| {
                let params = DescriptorParams {
                    intro_points: ips,
                    ..base
                };
                build_descriptor(&blinded, &params, &mut rand::rng()).is_ok()
            });
        },
    );

    for (backends, per_backend) in [(8, 3), (50, 3)] {
        for fresh in [true, false] {
            full_set(&key, period, backends, per_backend, fresh);
        }
    }
}

/// A publish's whole decision for one period with `backends` x `per_backend` introduction
/// points on the default ring (8 HSDirs stored on, 6 asked by clients): every descriptor
/// merged, built and signed. `fresh`: a new plan each time (blinding and every introduction
/// point's certificates signed anew, as at a period's first publish); otherwise one plan
/// throughout (certificates cached, as for a re-upload within the hour).
fn full_set(key: &MasterKey, period: TimePeriod, backends: usize, per_backend: usize, fresh: bool) {
    let healthy: Vec<(String, Vec<_>)> = (0..backends)
        .map(|b| (format!("b{b}"), synthetic_intro_points(per_backend)))
        .collect();
    let store: Vec<HsDirId> = (0..8).map(|i| HsDirId::new(format!("$hsdir{i}"))).collect();
    let target = PeriodTarget {
        info: PeriodInfo {
            time_period: period,
            srv_start: Timestamp::from_system_time(period.range().expect("a period").start),
            max_descriptor_size: 50_000,
            flow_control: Some(FlowControl { sendme_inc: 31 }),
        },
        fetch_hsdirs: store
            .iter()
            .filter(|h| !["$hsdir3", "$hsdir7"].contains(&h.as_str()))
            .cloned()
            .collect(),
        hsdirs: store,
    };
    let new_plan = || {
        let master =
            MasterIdentity::from_expanded_secret(key.expanded_secret()).expect("usable key");
        PublishPlan::new(MasterSigner::new(master), Duration::from_secs(600))
    };
    let mut plan = new_plan();
    let name = format!(
        "full set, {backends} x {per_backend} intro points, {}",
        if fresh {
            "a period's first publish"
        } else {
            "re-upload (certificates cached)"
        }
    );
    report(&name, || {
        if fresh {
            plan = new_plan();
        }
        let decision = plan.decide(Timestamp::now(), std::slice::from_ref(&target), &healthy);
        assert_eq!(
            decision.uploads[0].descriptors.len(),
            if backends * per_backend > 20 { 6 } else { 1 }
        );
    });
}

fn report(name: &str, mut work: impl FnMut()) {
    work(); // warm-up
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            work();
            start.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{name}: median {:.1} µs, p90 {:.1} µs ({RUNS} runs)",
        micros(times[RUNS / 2]),
        micros(times[RUNS * 9 / 10])
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
