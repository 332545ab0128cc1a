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
//! encrypted with the backend's own key and tell us nothing about its clock.

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
    /// probe (if configured) passed.
    Descriptor { revision_counter: u64 },
    /// No HSDir gave us a valid descriptor.
    FetchFailed { reason: String },
    /// The descriptor was fine but the backend did not answer the HTTP probe.
    ProbeFailed { reason: String },
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
    /// The revision counter of the newest descriptor, and when we first saw it.
    revision: Option<(u64, Timestamp)>,
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
            Observation::Descriptor { revision_counter } => {
                self.failure_count = 0;
                self.last_seen = Some(now);
                self.last_error = None;
                match self.revision {
                    Some((seen, _)) if seen == revision_counter => {}
                    _ => self.revision = Some((revision_counter, now)),
                }
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
        };
        self.move_to(next)
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
mod tests {
    use super::*;

    const POLICY: HealthPolicy = HealthPolicy {
        descriptor_max_age: Duration::from_secs(3 * 3600),
        dead_after_failures: 2,
    };

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_800_000_000 + secs)
    }

    fn descriptor(revision_counter: u64) -> Observation {
        Observation::Descriptor { revision_counter }
    }

    fn fetch_failed() -> Observation {
        Observation::FetchFailed {
            reason: "all HSDirs failed".into(),
        }
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
}
