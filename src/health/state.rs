//! Each backend's health, as a pure state machine.
//!
//! The health loop observes a backend (its descriptor fetched and checked, or a failure; an
//! optional HTTP probe) and feeds what it saw here together with the current time. The state
//! decides whether the backend's introduction points go into the master descriptor:
//!
//! | state | meaning | merged? |
//! |---|---|---|
//! | `Unchecked` | not observed yet since start | no |
//! | `Healthy` | a valid descriptor, recently changed, probe (if any) passed | yes |
//! | `Stale` | its descriptor has not changed for `descriptor_max_age`: the backend's tor stopped re-publishing | no |
//! | `Dead` | `dead_after_failures` fetches failed in a row, or a probe failed | no |
//! | `Excluded` | the operator excluded it in config.toml | no |
//!
//! A Dead or Stale backend that shows a fresh descriptor again is Healthy again. The age of a
//! descriptor is measured from when we first saw its revision counter: C tor's counters are
//! encrypted with the backend's own key and tell us nothing about its clock. They do grow within
//! a time period, so a descriptor older than the newest one seen (a lagging HSDir's copy) is
//! ignored: it neither replaces the newer one's introduction points nor resets the stale timer.
//! A check this node could not make (its own Tor had no consensus, no circuit, or reached no
//! HSDir) says nothing about the backend and changes nothing.

use std::time::Duration;

use crate::clock::Timestamp;

/// Where a backend stands; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Unchecked,
    Healthy,
    Stale,
    Dead,
    Excluded,
}

impl BackendState {
    /// The state [`as_str`](Self::as_str) names (as status reports carry it).
    pub fn from_name(name: &str) -> Option<BackendState> {
        [
            BackendState::Unchecked,
            BackendState::Healthy,
            BackendState::Stale,
            BackendState::Dead,
            BackendState::Excluded,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BackendState::Unchecked => "unchecked",
            BackendState::Healthy => "healthy",
            BackendState::Stale => "stale",
            BackendState::Dead => "dead",
            BackendState::Excluded => "excluded",
        }
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The thresholds, from `[timing]` and `[health]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    pub descriptor_max_age: Duration,
    pub dead_after_failures: u32,
}

/// What one health check saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observation {
    /// A descriptor was fetched, its signatures checked and its layers decrypted, and the
    /// backend answered the liveness check.
    Descriptor {
        time_period: u64,
        revision_counter: u64,
    },
    /// HSDirs answered, but none gave us a valid descriptor.
    FetchFailed { reason: String },
    /// The descriptor was fine but the backend did not answer the liveness check (no
    /// rendezvous, or the HTTP probe of `[health.probe]` failed).
    ProbeFailed { reason: String },
    /// This node could not check the backend: its own Tor has no consensus, no circuit, or
    /// reached no HSDir. Says nothing about the backend.
    NotChecked { reason: String },
}

/// A descriptor's place in time: its period, then its revision counter within the period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct DescriptorVersion {
    time_period: u64,
    revision_counter: u64,
}

/// A change of state, for the log and for deciding to republish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: BackendState,
    pub to: BackendState,
}

/// One backend's health record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendHealth {
    state: BackendState,
    /// Failed checks in a row; reset by a good descriptor.
    failure_count: u32,
    /// When a valid descriptor was last fetched.
    last_seen: Option<Timestamp>,
    last_error: Option<String>,
    /// The newest descriptor seen, and when we first saw it.
    revision: Option<(DescriptorVersion, Timestamp)>,
}

impl BackendHealth {
    pub fn new(excluded: bool) -> Self {
        BackendHealth {
            state: if excluded {
                BackendState::Excluded
            } else {
                BackendState::Unchecked
            },
            failure_count: 0,
            last_seen: None,
            last_error: None,
            revision: None,
        }
    }

    pub fn state(&self) -> BackendState {
        self.state
    }

    pub fn failure_count(&self) -> u32 {
        self.failure_count
    }

    pub fn last_seen(&self) -> Option<Timestamp> {
        self.last_seen
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Record what a health check saw at `now`.
    pub fn observe(
        &mut self,
        observation: Observation,
        now: Timestamp,
        policy: &HealthPolicy,
    ) -> Option<Transition> {
        if self.state == BackendState::Excluded {
            return None;
        }
        let next = match observation {
            Observation::Descriptor {
                time_period,
                revision_counter,
            } => {
                let version = DescriptorVersion {
                    time_period,
                    revision_counter,
                };
                match self.revision {
                    Some((newest, _)) if version < newest => return None,
                    Some((newest, _)) if version == newest => {}
                    _ => self.revision = Some((version, now)),
                }
                self.failure_count = 0;
                self.last_seen = Some(now);
                self.last_error = None;
                self.state_by_age(now, policy)
            }
            Observation::FetchFailed { reason } => {
                self.failure_count = self.failure_count.saturating_add(1);
                self.last_error = Some(reason);
                if self.failure_count >= policy.dead_after_failures {
                    BackendState::Dead
                } else {
                    // One failed fetch is not yet a verdict: keep what we knew.
                    self.state
                }
            }
            Observation::ProbeFailed { reason } => {
                self.failure_count = self.failure_count.saturating_add(1);
                self.last_error = Some(reason);
                BackendState::Dead
            }
            Observation::NotChecked { .. } => return None,
        };
        self.move_to(next)
    }

    /// How `observation`, a descriptor, compares with the newest one seen (by period, then
    /// revision); `None` when it is no descriptor or none was seen. [`observe`](Self::observe)
    /// ignores an older one.
    pub fn compare_to_seen(&self, observation: &Observation) -> Option<std::cmp::Ordering> {
        match (observation, self.revision) {
            (
                Observation::Descriptor {
                    time_period,
                    revision_counter,
                },
                Some((newest, _)),
            ) => Some(
                DescriptorVersion {
                    time_period: *time_period,
                    revision_counter: *revision_counter,
                }
                .cmp(&newest),
            ),
            _ => None,
        }
    }

    /// Let time pass without an observation: a Healthy backend whose descriptor has aged
    /// past the limit becomes Stale.
    pub fn tick(&mut self, now: Timestamp, policy: &HealthPolicy) -> Option<Transition> {
        if self.state != BackendState::Healthy {
            return None;
        }
        let next = self.state_by_age(now, policy);
        self.move_to(next)
    }

    /// Healthy or Stale, by how long the current revision has been unchanged.
    fn state_by_age(&self, now: Timestamp, policy: &HealthPolicy) -> BackendState {
        match self.revision {
            Some((_, since))
                if now.saturating_duration_since(since) > policy.descriptor_max_age =>
            {
                BackendState::Stale
            }
            _ => BackendState::Healthy,
        }
    }

    fn move_to(&mut self, next: BackendState) -> Option<Transition> {
        let from = self.state;
        self.state = next;
        (from != next).then_some(Transition { from, to: next })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::cmp::Ordering;

    pub(in crate::health) const POLICY: HealthPolicy = HealthPolicy {
        descriptor_max_age: Duration::from_secs(3 * 3600),
        dead_after_failures: 2,
    };

    pub(in crate::health) fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_800_000_000 + secs)
    }

    const PERIOD: u64 = 20_000;

    pub(in crate::health) fn descriptor(revision_counter: u64) -> Observation {
        Observation::Descriptor {
            time_period: PERIOD,
            revision_counter,
        }
    }

    fn fetch_failed() -> Observation {
        Observation::FetchFailed {
            reason: "all HSDirs failed".into(),
        }
    }

    #[test]
    fn each_state_is_found_by_its_name() {
        for state in [
            BackendState::Unchecked,
            BackendState::Healthy,
            BackendState::Stale,
            BackendState::Dead,
            BackendState::Excluded,
        ] {
            assert_eq!(BackendState::from_name(state.as_str()), Some(state));
        }
        assert_eq!(BackendState::from_name("Healthy"), None);
    }

    #[test]
    fn first_good_descriptor_makes_a_backend_healthy() {
        let mut health = BackendHealth::new(false);
        assert_eq!(health.state(), BackendState::Unchecked);
        let change = health.observe(descriptor(1), at(0), &POLICY);
        assert_eq!(
            change,
            Some(Transition {
                from: BackendState::Unchecked,
                to: BackendState::Healthy
            })
        );
        assert_eq!(health.last_seen(), Some(at(0)));
    }

    #[test]
    fn dead_only_after_consecutive_failures() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(1), at(0), &POLICY);
        assert_eq!(health.observe(fetch_failed(), at(300), &POLICY), None);
        assert_eq!(health.state(), BackendState::Healthy);
        assert_eq!(health.failure_count(), 1);
        // A success in between resets the count.
        health.observe(descriptor(2), at(600), &POLICY);
        health.observe(fetch_failed(), at(900), &POLICY);
        assert_eq!(health.state(), BackendState::Healthy);
        let change = health.observe(fetch_failed(), at(1200), &POLICY);
        assert_eq!(change.map(|t| t.to), Some(BackendState::Dead));
        assert_eq!(health.last_error(), Some("all HSDirs failed"));
    }

    #[test]
    fn a_failed_probe_is_dead_at_once_and_recovery_re_includes() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(1), at(0), &POLICY);
        let reason = "connection refused".to_string();
        health.observe(Observation::ProbeFailed { reason }, at(300), &POLICY);
        assert_eq!(health.state(), BackendState::Dead);
        let change = health.observe(descriptor(1), at(600), &POLICY);
        assert_eq!(change.map(|t| t.to), Some(BackendState::Healthy));
        assert_eq!(health.failure_count(), 0);
    }

    #[test]
    fn an_unchanged_revision_goes_stale_and_a_new_one_revives() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(7), at(0), &POLICY);
        // Same revision for exactly the max age: still healthy.
        assert_eq!(health.observe(descriptor(7), at(3 * 3600), &POLICY), None);
        let change = health.observe(descriptor(7), at(3 * 3600 + 1), &POLICY);
        assert_eq!(change.map(|t| t.to), Some(BackendState::Stale));
        let change = health.observe(descriptor(8), at(3 * 3600 + 300), &POLICY);
        assert_eq!(change.map(|t| t.to), Some(BackendState::Healthy));
    }

    #[test]
    fn time_alone_makes_a_healthy_backend_stale() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(7), at(0), &POLICY);
        assert_eq!(health.tick(at(3600), &POLICY), None);
        let change = health.tick(at(3 * 3600 + 1), &POLICY);
        assert_eq!(change.map(|t| t.to), Some(BackendState::Stale));
    }

    #[test]
    fn excluded_backends_stay_excluded() {
        let mut health = BackendHealth::new(true);
        assert_eq!(health.observe(descriptor(1), at(0), &POLICY), None);
        assert_eq!(health.state(), BackendState::Excluded);
    }

    #[test]
    fn a_clock_stepping_backwards_does_not_make_a_backend_stale() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(1), at(1000), &POLICY);
        assert_eq!(health.observe(descriptor(1), at(0), &POLICY), None);
        assert_eq!(health.state(), BackendState::Healthy);
    }

    #[test]
    fn an_older_descriptor_from_a_lagging_hsdir_is_ignored() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(9), at(0), &POLICY);
        assert_eq!(health.compare_to_seen(&descriptor(8)), Some(Ordering::Less));
        assert_eq!(
            health.compare_to_seen(&descriptor(9)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            health.compare_to_seen(&descriptor(10)),
            Some(Ordering::Greater)
        );
        // The older copy keeps coming back: the newer one's age is not reset by it, so the
        // backend still goes stale when the newer one ages.
        for minutes in 1..=180 {
            health.observe(descriptor(8), at(minutes * 60), &POLICY);
        }
        let change = health.observe(descriptor(8), at(3 * 3600 + 1), &POLICY);
        assert_eq!(change, None, "an older copy changes nothing");
        let change = health.tick(at(3 * 3600 + 1), &POLICY);
        assert_eq!(change.map(|t| t.to), Some(BackendState::Stale));
    }

    #[test]
    fn a_new_period_starts_the_revisions_again() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(900), at(0), &POLICY);
        let next_period = Observation::Descriptor {
            time_period: PERIOD + 1,
            revision_counter: 3,
        };
        assert_eq!(
            health.compare_to_seen(&next_period),
            Some(Ordering::Greater)
        );
        health.observe(next_period, at(3 * 3600), &POLICY);
        assert_eq!(
            health.tick(at(3 * 3600 + 60), &POLICY),
            None,
            "a fresh descriptor"
        );
    }

    #[test]
    fn a_check_this_node_could_not_make_changes_nothing() {
        let mut health = BackendHealth::new(false);
        health.observe(descriptor(1), at(0), &POLICY);
        health.observe(fetch_failed(), at(60), &POLICY);
        let not_checked = || Observation::NotChecked {
            reason: "no circuit".into(),
        };
        for minute in 2..10 {
            assert_eq!(
                health.observe(not_checked(), at(minute * 60), &POLICY),
                None
            );
        }
        assert_eq!(health.state(), BackendState::Healthy);
        assert_eq!(
            health.failure_count(),
            1,
            "not counted as the backend's failure"
        );
        assert_eq!(health.last_error(), Some("all HSDirs failed"));
    }
}
