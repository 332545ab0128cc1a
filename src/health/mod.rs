//! Backend health: is each backend's descriptor on the HSDirs, valid, fresh, and does the
//! backend answer? Without `[health.probe]` every round also makes a rendezvous with each
//! backend (`TorNetwork::rendezvous`), so a backend whose tor died leaves the descriptor within
//! one round, although its last descriptor stays on the HSDirs for hours.
//!
//! [`state`] decides, purely, for one backend. [`HealthMonitor::run_round`] checks every
//! backend through the Tor seam ([`TorNetwork`]; all concurrently, each descriptor fetched and
//! verified by [`fetch`]) and keeps the last good descriptor of each under
//! `<state-dir>/descriptors/<name>.desc`; [`HealthMonitor::apply_round`] (pure, so the
//! whole-cluster simulator runs it too) feeds what the round saw to each backend's state
//! machine, logs every change of state, and hands the introduction points of the Healthy
//! backends to the publisher. Between rounds, [`HealthMonitor::refresh_descriptors`] fetches
//! the Healthy backends' descriptors again (every `timing.descriptor_refresh_secs`, no
//! liveness check), so that introduction points a backend rotated reach the master descriptor
//! within that, not a whole round later; [`HealthMonitor::apply_refresh`] is its pure part.
//! [`stall`] decides when this node's own Tor client is wedged.

pub mod fetch;
pub mod stall;
pub mod state;

use std::cmp::Ordering;
use std::path::PathBuf;
use std::sync::Arc;

use futures::stream::{self, StreamExt as _};
use tor_netdoc::doc::hsdesc::IntroPointDesc;

use crate::clock::Timestamp;
use crate::config::{BackendConfig, Config, ProbeConfig};
use crate::params;
use crate::storage::fsutil;
use crate::tor::{HttpProbe, LivenessError, TorNetwork};
use fetch::VerifiedDescriptor;
use state::{BackendHealth, BackendState, HealthPolicy, Observation};

/// The introduction points of the backends that may be published, in config order.
pub type HealthyBackends<I = IntroPointDesc> = Arc<Vec<(String, Vec<I>)>>;

/// One backend as the monitor sees it.
struct MonitoredBackend<I> {
    config: BackendConfig,
    health: BackendHealth,
    /// From the last descriptor that verified; kept while the backend is Healthy.
    intro_points: Vec<I>,
    /// Its last descriptor carried `pow-params` (said once in the log when it starts).
    offers_pow: bool,
}

impl<I> MonitoredBackend<I> {
    /// Take the introduction points of a descriptor that verified and is not older than the
    /// newest seen.
    fn take_descriptor(&mut self, intro_points: Vec<I>, offers_pow: bool) {
        self.intro_points = intro_points;
        let name = &self.config.name;
        if offers_pow && !self.offers_pow {
            tracing::warn!(backend = %name, "backend {name} defends itself with proof-of-work (its descriptor has pow-params); the master descriptor cannot carry them (a backend checks each solution against its own address), so clients of the master address solve no puzzle and reach {name} without that defence");
        }
        self.offers_pow = offers_pow;
    }
}

/// What one check of one backend found.
#[derive(Debug, Clone)]
pub struct Check<I> {
    pub observation: Observation,
    /// The introduction points of its descriptor, if one verified.
    pub intro_points: Option<Vec<I>>,
    /// Some HSDir answered (with or without a descriptor): this node's Tor reaches the HSDirs,
    /// even if the rest of the check could not be made.
    pub reached_hsdirs: bool,
    /// The descriptor that verified carries `pow-params`.
    pub offers_pow: bool,
}

/// One backend as `rustbalance status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    pub name: String,
    pub address: String,
    pub state: BackendState,
    /// Introduction points of its last verified descriptor.
    pub intro_points: usize,
    /// When a valid descriptor was last fetched.
    pub last_seen: Option<Timestamp>,
    pub failure_count: u32,
    pub last_error: Option<String>,
    /// Its descriptor carries proof-of-work parameters, which the master cannot pass on.
    pub offers_pow: bool,
}

/// The health of every configured backend. `I` is an introduction point as the checks hand
/// it over: Arti's `IntroPointDesc` in the daemon.
pub struct HealthMonitor<I = IntroPointDesc> {
    backends: Vec<MonitoredBackend<I>>,
    /// Backends for which some HSDir answered in the last round (with the descriptor, or with
    /// a 404 for a backend that is down): proof that this node's Tor client reaches the HSDirs.
    reached_last_round: usize,
    /// Backends checked in the last round (not excluded).
    checked_last_round: usize,
    policy: HealthPolicy,
    probe: Option<ProbeConfig>,
    descriptor_dir: PathBuf,
}

impl HealthMonitor {
    pub fn new(config: &Config) -> Self {
        HealthMonitor::with_backends(
            &config.backends,
            policy_of(config),
            config.health.probe.clone(),
            config.state_dir.join("descriptors"),
        )
    }

    /// Check every backend once, age the unchanged ones, and return the Healthy ones'
    /// introduction points. `on_checked(done, of)` hears each finished check (for status and
    /// the first round's progress lines).
    pub async fn run_round<T: TorNetwork>(
        &mut self,
        tor: &T,
        on_checked: impl Fn(usize, usize) + Sync,
    ) -> HealthyBackends {
        let probe = self.probe.as_ref().map(|p| HttpProbe {
            path: &p.path,
            port: p.port,
            expected_status: p.expected_status,
            timeout: p.timeout(),
        });
        let of = self
            .backends
            .iter()
            .filter(|backend| backend.health.state() != BackendState::Excluded)
            .count();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let on_checked = &on_checked;
        let checks = self.backends.iter().map(|backend| {
            let done = &done;
            let probe = probe.as_ref();
            async move {
                if backend.health.state() == BackendState::Excluded {
                    return None;
                }
                let result = check_backend(tor, &backend.config, probe).await;
                let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                on_checked(finished, of);
                Some(result)
            }
        });
        // Concurrently, but a bounded number at a time: each check builds fresh circuits.
        let results: Vec<_> = stream::iter(checks)
            .buffered(params::MAX_CHECKS_IN_FLIGHT)
            .collect()
            .await;
        let results = self
            .backends
            .iter()
            .zip(results)
            .map(|(backend, result)| {
                let (check, descriptor) = result?;
                if let Some(descriptor) = &descriptor {
                    save_descriptor(&self.descriptor_dir, &backend.config, descriptor);
                }
                Some(Check {
                    offers_pow: descriptor.as_ref().is_some_and(|d| d.offers_pow),
                    intro_points: descriptor.map(|d| d.intro_points),
                    ..check
                })
            })
            .collect();
        self.apply_round(results, Timestamp::now())
    }

    /// Fetch the Healthy backends' descriptors again, without the liveness check; returns the
    /// new healthy set when one of them has a newer descriptor (see
    /// [`apply_refresh`](HealthMonitor::apply_refresh)). A failed fetch changes nothing: the
    /// next round judges it.
    pub async fn refresh_descriptors<T: TorNetwork>(&mut self, tor: &T) -> Option<HealthyBackends> {
        let fetches = self.backends.iter().map(|backend| async {
            if backend.health.state() != BackendState::Healthy {
                return None;
            }
            fetch::fetch_current(tor, &backend.config.address)
                .await
                .inspect_err(|err| {
                    tracing::debug!(backend = %backend.config.name, "descriptor refresh failed: {err}");
                })
                .ok()
        });
        let descriptors: Vec<Option<VerifiedDescriptor>> = stream::iter(fetches)
            .buffered(params::MAX_CHECKS_IN_FLIGHT)
            .collect()
            .await;
        let refreshed = self
            .backends
            .iter()
            .zip(descriptors)
            .map(|(backend, descriptor)| {
                let descriptor = descriptor?;
                let observation = Observation::Descriptor {
                    time_period: descriptor.time_period,
                    revision_counter: descriptor.revision_counter,
                };
                // Most refreshes find the descriptor already saved: write only a newer one.
                if backend.health.compare_to_seen(&observation) == Some(Ordering::Greater) {
                    save_descriptor(&self.descriptor_dir, &backend.config, &descriptor);
                }
                Some(Check {
                    observation,
                    reached_hsdirs: true,
                    offers_pow: descriptor.offers_pow,
                    intro_points: Some(descriptor.intro_points),
                })
            })
            .collect();
        self.apply_refresh(refreshed, Timestamp::now())
            .then(|| self.healthy())
    }
}

impl<I: Clone> HealthMonitor<I> {
    /// A monitor of `backends`, all unchecked (or excluded). `descriptor_dir`: where
    /// [`HealthMonitor::run_round`] keeps each backend's last verified descriptor.
    pub fn with_backends(
        backends: &[BackendConfig],
        policy: HealthPolicy,
        probe: Option<ProbeConfig>,
        descriptor_dir: PathBuf,
    ) -> Self {
        HealthMonitor {
            backends: backends
                .iter()
                .map(|backend| MonitoredBackend {
                    config: backend.clone(),
                    health: BackendHealth::new(backend.exclude),
                    intro_points: Vec::new(),
                    offers_pow: false,
                })
                .collect(),
            policy,
            reached_last_round: 0,
            checked_last_round: 0,
            probe,
            descriptor_dir,
        }
    }

    /// Apply one round's checks (one per backend in config order, `None` for an excluded
    /// one) at `now`: feed each backend's state machine, log every change, age the unchanged
    /// ones, and return the Healthy ones' introduction points.
    pub fn apply_round(
        &mut self,
        results: Vec<Option<Check<I>>>,
        now: Timestamp,
    ) -> HealthyBackends<I> {
        self.checked_last_round = results.iter().flatten().count();
        self.reached_last_round = results
            .iter()
            .flatten()
            .filter(|check| check.reached_hsdirs)
            .count();
        let mut not_checked = Vec::new();
        for (backend, result) in self.backends.iter_mut().zip(results) {
            let Some(Check {
                observation,
                intro_points,
                offers_pow,
                ..
            }) = result
            else {
                continue;
            };
            let name = backend.config.name.clone();
            if let Observation::NotChecked { reason } = &observation {
                not_checked.push(format!("{name} ({reason})"));
            } else if backend.health.compare_to_seen(&observation) == Some(Ordering::Less) {
                tracing::debug!(backend = %name, "ignored a descriptor older than the newest seen (a lagging HSDir)");
            } else if let Some(intro_points) = intro_points {
                backend.take_descriptor(intro_points, offers_pow);
            }
            if let Some(change) = backend.health.observe(observation, now, &self.policy) {
                let reason = backend.health.last_error().unwrap_or("descriptor verified");
                if change.to == BackendState::Healthy {
                    tracing::info!(backend = %name, "backend {}: {} -> {}", name, change.from, change.to);
                } else {
                    tracing::warn!(backend = %name, "backend {}: {} -> {} ({reason})", name, change.from, change.to);
                }
            }
            // A backend that answers but whose descriptor stopped changing goes Stale here.
            if let Some(change) = backend.health.tick(now, &self.policy) {
                tracing::warn!(backend = %name, "backend {}: {} -> {} (descriptor unchanged for too long)", name, change.from, change.to);
            }
        }
        if !not_checked.is_empty() {
            tracing::warn!(
                "this node's Tor could not check {} backend(s); their state is kept: {}",
                not_checked.len(),
                not_checked.join("; ")
            );
        }
        self.healthy()
    }

    /// Apply the descriptors a refresh fetched (one per backend in config order, `None` where
    /// there is none) at `now`: a Healthy backend's descriptor newer than the newest seen
    /// replaces its introduction points (a live tor uploaded it, so it also counts as seen
    /// for the staleness rule). Anything else changes nothing: a backend that is not Healthy
    /// waits for a round with the liveness check. Returns whether introduction points changed.
    pub fn apply_refresh(&mut self, refreshed: Vec<Option<Check<I>>>, now: Timestamp) -> bool {
        let mut changed = false;
        for (backend, check) in self.backends.iter_mut().zip(refreshed) {
            let Some(Check {
                observation,
                intro_points: Some(intro_points),
                offers_pow,
                ..
            }) = check
            else {
                continue;
            };
            let newer = backend.health.compare_to_seen(&observation) == Some(Ordering::Greater);
            if backend.health.state() != BackendState::Healthy || !newer {
                continue;
            }
            tracing::info!(
                backend = %backend.config.name,
                "backend {}: new descriptor between health rounds ({} introduction points)",
                backend.config.name,
                intro_points.len()
            );
            backend.take_descriptor(intro_points, offers_pow);
            backend.health.observe(observation, now, &self.policy);
            changed = true;
        }
        changed
    }

    /// For how many backends some HSDir answered in the last round.
    pub fn reached_last_round(&self) -> usize {
        self.reached_last_round
    }

    /// How many backends the last round checked (the excluded ones are not checked).
    pub fn checked_last_round(&self) -> usize {
        self.checked_last_round
    }

    /// Every configured backend, in config order.
    pub fn report(&self) -> Vec<BackendReport> {
        self.backends
            .iter()
            .map(|b| BackendReport {
                name: b.config.name.to_string(),
                address: b.config.address.to_string(),
                state: b.health.state(),
                intro_points: b.intro_points.len(),
                last_seen: b.health.last_seen(),
                failure_count: b.health.failure_count(),
                last_error: b.health.last_error().map(str::to_owned),
                offers_pow: b.offers_pow,
            })
            .collect()
    }

    /// Whether the healthy set is a verdict the publisher may act on: some backend is
    /// Healthy, or every backend has been judged. A backend still Unchecked since start (a
    /// first round this node's Tor could not make, or one failed fetch, which is not yet a
    /// verdict) says nothing, so an empty set then must not raise the no-healthy-backend alert.
    pub fn has_verdict(&self) -> bool {
        let state = |b: &MonitoredBackend<I>| b.health.state();
        self.backends
            .iter()
            .any(|b| state(b) == BackendState::Healthy)
            || self
                .backends
                .iter()
                .all(|b| state(b) != BackendState::Unchecked)
    }

    fn healthy(&self) -> HealthyBackends<I> {
        Arc::new(
            self.backends
                .iter()
                .filter(|b| b.health.state() == BackendState::Healthy)
                .map(|b| (b.config.name.to_string(), b.intro_points.clone()))
                .collect(),
        )
    }
}

/// Whether `new` changes what the health checks follow: the backends (names, addresses,
/// exclusions, in order), the thresholds or the probe. A monitor for `old` starts over only
/// then (and status shows the backends unchecked); another change (new timing, say) keeps
/// every backend's health.
pub fn checks_change(old: &Config, new: &Config) -> bool {
    old.backends != new.backends
        || policy_of(old) != policy_of(new)
        || old.health.probe != new.health.probe
}

/// The health thresholds `config` sets.
fn policy_of(config: &Config) -> HealthPolicy {
    HealthPolicy {
        descriptor_max_age: config.timing.descriptor_max_age,
        dead_after_failures: config.health.dead_after_failures,
    }
}

/// Fetch (and probe) one backend: what the check found, and the descriptor if one verified
/// (its introduction points go into the check once it is saved).
async fn check_backend<T: TorNetwork>(
    tor: &T,
    backend: &BackendConfig,
    probe: Option<&HttpProbe<'_>>,
) -> (Check<IntroPointDesc>, Option<VerifiedDescriptor>) {
    let descriptor = match fetch::fetch_current(tor, &backend.address).await {
        Ok(descriptor) => descriptor,
        Err(err) => {
            let reason = format!("descriptor fetch: {err}");
            let observation = if err.reached_hsdirs() {
                Observation::FetchFailed { reason }
            } else {
                Observation::NotChecked { reason }
            };
            let check = Check {
                observation,
                intro_points: None,
                reached_hsdirs: err.reached_hsdirs(),
                offers_pow: false,
            };
            return (check, None);
        }
    };
    tracing::debug!(
        backend = %backend.name,
        hsdir = %descriptor.hsdir,
        intro_points = descriptor.intro_points.len(),
        "descriptor verified"
    );
    let failure = match probe {
        Some(probe) => {
            tor.probe(&backend.address, probe)
                .await
                .err()
                .map(|err| Observation::ProbeFailed {
                    reason: format!("probe: {err}"),
                })
        }
        None => match tor
            .rendezvous(&backend.address, params::RENDEZVOUS_CHECK_TIMEOUT)
            .await
        {
            Ok(()) => None,
            Err(err @ LivenessError::OwnTor(_)) => Some(Observation::NotChecked {
                reason: format!("rendezvous: {err}"),
            }),
            Err(err) => Some(Observation::ProbeFailed {
                reason: format!("rendezvous: {err}"),
            }),
        },
    };
    let check = Check {
        observation: failure.unwrap_or(Observation::Descriptor {
            time_period: descriptor.time_period,
            revision_counter: descriptor.revision_counter,
        }),
        intro_points: None,
        reached_hsdirs: true,
        offers_pow: false,
    };
    (check, Some(descriptor))
}

/// Keep the last verified descriptor for the operator to inspect; failure only costs that.
fn save_descriptor(
    dir: &std::path::Path,
    backend: &BackendConfig,
    descriptor: &VerifiedDescriptor,
) {
    let path = dir.join(format!("{}.desc", backend.name));
    let result = fsutil::create_private_dir(dir).and_then(|()| {
        fsutil::write_atomic(&path, descriptor.text.as_bytes(), fsutil::PRIVATE_FILE_MODE)
    });
    if let Err(err) = result {
        tracing::warn!(backend = %backend.name, "cannot save descriptor to {}: {err}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::state::tests::{at, descriptor, POLICY};
    use super::*;
    use crate::config::BackendName;

    fn monitor() -> HealthMonitor<String> {
        let backend = BackendConfig {
            name: BackendName::try_from("web1".to_owned()).unwrap(),
            address: "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
                .parse()
                .unwrap(),
            exclude: false,
        };
        HealthMonitor::with_backends(&[backend], POLICY, None, PathBuf::from("/nonexistent"))
    }

    fn check(
        observation: Observation,
        ips: Option<&[&str]>,
        reached_hsdirs: bool,
    ) -> Check<String> {
        Check {
            observation,
            intro_points: ips.map(|ips| ips.iter().map(|s| s.to_string()).collect()),
            reached_hsdirs,
            offers_pow: false,
        }
    }

    #[test]
    fn a_monitor_is_rebuilt_only_for_other_backends_or_thresholds() {
        let config = |extra: &str| {
            let text = format!(
                "[node]\nid = \"node-a\"\npriority = 1\n{extra}\n[[backends]]\nname = \"web1\"\naddress = \"2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion\"\n"
            );
            Config::parse(
                &text,
                std::path::Path::new("config.toml"),
                std::path::Path::new("/etc/rustbalance"),
                std::path::Path::new("/var/lib/rustbalance"),
            )
            .unwrap()
        };
        let base = config("");
        assert!(!checks_change(&base, &config("")));
        assert!(
            !checks_change(&base, &config("[timing]\nheartbeat_interval_secs = 2")),
            "timing the monitor does not use keeps it"
        );
        assert!(checks_change(
            &base,
            &config("[health]\ndead_after_failures = 5")
        ));
        let mut excluded = config("");
        excluded.backends[0].exclude = true;
        assert!(checks_change(&base, &excluded));
        let mut more = config("");
        more.backends.push(BackendConfig {
            name: BackendName::try_from("web2".to_owned()).unwrap(),
            ..more.backends[0].clone()
        });
        assert!(checks_change(&base, &more));
    }

    #[test]
    fn no_verdict_until_the_backend_is_judged() {
        let mut monitor = monitor();
        assert!(!monitor.has_verdict(), "nothing checked yet");
        let not_checked = Observation::NotChecked {
            reason: "this node's Tor has no consensus".into(),
        };
        let healthy = monitor.apply_round(vec![Some(check(not_checked, None, false))], at(0));
        assert!(healthy.is_empty());
        assert!(!monitor.has_verdict(), "a check not made is no verdict");
        let failed = || Observation::FetchFailed {
            reason: "404".into(),
        };
        for round in 1..POLICY.dead_after_failures {
            monitor.apply_round(vec![Some(check(failed(), None, true))], at(round.into()));
            assert!(
                !monitor.has_verdict(),
                "{round} failed fetch(es) are no verdict yet"
            );
        }
        monitor.apply_round(vec![Some(check(failed(), None, true))], at(60));
        assert!(monitor.has_verdict(), "dead is a verdict");
        assert!(monitor.healthy().is_empty());
    }

    #[test]
    fn a_check_this_node_could_not_make_keeps_the_backend_and_its_intro_points() {
        let mut monitor = monitor();
        monitor.apply_round(
            vec![Some(check(descriptor(5), Some(&["a", "b"]), true))],
            at(0),
        );
        let not_checked = Observation::NotChecked {
            reason: "rendezvous: this node's Tor could not try".into(),
        };
        // The descriptor fetch reached an HSDir, the rendezvous could not be tried.
        let healthy =
            monitor.apply_round(vec![Some(check(not_checked.clone(), None, true))], at(60));
        assert_eq!(
            healthy.as_slice(),
            [("web1".to_owned(), vec!["a".to_owned(), "b".to_owned()])]
        );
        assert_eq!(monitor.reached_last_round(), 1, "an HSDir answered");
        // No circuit at all: still healthy, and this round reached nothing.
        let healthy = monitor.apply_round(vec![Some(check(not_checked, None, false))], at(120));
        assert_eq!(healthy.len(), 1);
        assert_eq!(monitor.reached_last_round(), 0);
        assert_eq!(monitor.checked_last_round(), 1);
    }

    #[test]
    fn a_backend_offering_proof_of_work_is_reported_while_its_descriptor_says_so() {
        let mut monitor = monitor();
        let with_pow = Check {
            offers_pow: true,
            ..check(descriptor(5), Some(&["a"]), true)
        };
        monitor.apply_round(vec![Some(with_pow)], at(0));
        assert!(monitor.report()[0].offers_pow);
        // A round that fetched no descriptor changes nothing.
        let failed = Observation::FetchFailed {
            reason: "404".into(),
        };
        monitor.apply_round(vec![Some(check(failed, None, true))], at(60));
        assert!(monitor.report()[0].offers_pow);
        monitor.apply_round(
            vec![Some(check(descriptor(6), Some(&["a"]), true))],
            at(120),
        );
        assert!(!monitor.report()[0].offers_pow);
    }

    #[test]
    fn an_older_descriptor_does_not_bring_back_old_intro_points() {
        let mut monitor = monitor();
        monitor.apply_round(
            vec![Some(check(descriptor(7), Some(&["new"]), true))],
            at(0),
        );
        let healthy = monitor.apply_round(
            vec![Some(check(descriptor(6), Some(&["old"]), true))],
            at(60),
        );
        assert_eq!(
            healthy.as_slice(),
            [("web1".to_owned(), vec!["new".to_owned()])]
        );
    }

    #[test]
    fn a_refresh_takes_a_healthy_backends_newer_descriptor_only() {
        let mut monitor = monitor();
        let refresh =
            |revision, ips: &[&str]| vec![Some(check(descriptor(revision), Some(ips), true))];
        // Not checked yet: a descriptor alone does not make a backend healthy.
        assert!(!monitor.apply_refresh(refresh(5, &["a"]), at(0)));
        assert!(monitor.healthy().is_empty());
        monitor.apply_round(vec![Some(check(descriptor(5), Some(&["a"]), true))], at(10));
        // The same revision again, or an older one: nothing changes.
        assert!(!monitor.apply_refresh(refresh(5, &["x"]), at(20)));
        assert!(!monitor.apply_refresh(refresh(4, &["x"]), at(30)));
        assert!(!monitor.apply_refresh(vec![None], at(35)));
        // The backend rotated its introduction points.
        assert!(monitor.apply_refresh(refresh(6, &["b", "c"]), at(40)));
        assert_eq!(
            monitor.healthy().as_slice(),
            [("web1".to_owned(), vec!["b".to_owned(), "c".to_owned()])]
        );
        // Dead backends wait for a round with the liveness check.
        let dead = Observation::ProbeFailed {
            reason: "no rendezvous".into(),
        };
        monitor.apply_round(vec![Some(check(dead, None, true))], at(50));
        assert!(!monitor.apply_refresh(refresh(7, &["d"]), at(60)));
        assert!(monitor.healthy().is_empty());
    }
}
