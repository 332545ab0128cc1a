//! One node's side of the lease: the election together with what this node's Tor has shown,
//! as a pure state machine.
//!
//! The election ([`super::election`]) decides who publishes from what peers say and one bit
//! about this node (can it publish?); [`PublishAbility`] computes that bit from what the Tor
//! side reports (bootstrap, upload outcomes, health rounds). [`LeaseCore`] joins the two the
//! same way for the daemon's cluster loop and for the whole-cluster simulator in `tests/`:
//! every input goes to the right one, after each input a change of the ability reaches the
//! election at once, and a node that stops publishing stops counting the uploads that failed
//! while it published (found by the whole-cluster simulator: a standby that once lost an upload
//! race gave up its ability `upload_failure_release` later, for no fault of its Tor). It takes
//! `now` with every input and returns the election's actions.

use std::time::Duration;

use super::ability::PublishAbility;
use super::election::{Action, Election, ElectionTiming, Event, LeaseMessage, Warning};
use crate::clock::Timestamp;

/// What the Tor side of a node reports about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEvent {
    /// Arti bootstrapped and holds a live consensus.
    TorReady,
    /// The client lost its live consensus, or stalled and is being rebuilt.
    TorLost,
    /// At least one HSDir accepted an upload.
    UploadsAccepted,
    /// HSDirs answered the uploads but accepted none (a revision below another publisher's):
    /// this node's Tor works.
    UploadsRefused,
    /// Uploads were attempted and no HSDir answered.
    UploadsFailed,
    /// A health round checked `checked` backends; for `reached` of them some HSDir answered.
    HealthRound { checked: usize, reached: usize },
}

/// An input of the lease core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseInput {
    /// Time passed (the election's timers).
    Tick,
    /// A peer's message, from an authenticated member.
    Heard(LeaseMessage),
    /// The Tor side's news.
    Local(LocalEvent),
    /// A member was removed from the cluster.
    MemberRemoved(crate::cluster::NodeId),
    /// Clean shutdown: release the lease.
    Shutdown,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct LeaseCore {
    election: Election,
    ability: PublishAbility,
}

impl LeaseCore {
    pub fn new(election: Election, ability: PublishAbility) -> Self {
        LeaseCore { election, ability }
    }

    /// Feed one input at `now`; returns what the election decided.
    pub fn handle(&mut self, input: LeaseInput, now: Timestamp) -> Vec<Action> {
        let mut actions = match input {
            LeaseInput::Tick => self.election.handle(Event::Tick, now),
            LeaseInput::Heard(message) => self.election.handle(Event::Heard(message), now),
            LeaseInput::Shutdown => return self.election.handle(Event::Shutdown, now),
            LeaseInput::MemberRemoved(member) => {
                self.election.handle(Event::MemberRemoved(member), now)
            }
            LeaseInput::Local(event) => self.local(event, now),
        };
        actions.extend(self.update_ability(now));
        if actions.contains(&Action::StopPublishing) {
            self.ability.stopped_publishing();
        }
        actions
    }

    fn local(&mut self, event: LocalEvent, now: Timestamp) -> Vec<Action> {
        match event {
            LocalEvent::TorReady => self.ability.tor_ready(),
            LocalEvent::TorLost => self.ability.tor_lost(),
            LocalEvent::UploadsAccepted => {
                self.ability.upload_succeeded();
                return self.election.handle(Event::UploadSucceeded, now);
            }
            LocalEvent::UploadsRefused => self.ability.upload_refused(now),
            LocalEvent::UploadsFailed => self.ability.upload_failed(now),
            LocalEvent::HealthRound { checked, reached } => {
                self.ability.health_round(checked, reached, now)
            }
        }
        Vec::new()
    }

    /// Tell the election when this node's ability to publish changed.
    fn update_ability(&mut self, now: Timestamp) -> Vec<Action> {
        let can_publish = self.ability.can_publish(now);
        if can_publish == self.election.can_publish() {
            return Vec::new();
        }
        let mut actions = Vec::new();
        if !can_publish && self.ability.gave_up() {
            actions.push(Action::Warn(Warning::UploadsFailingTooLong));
        }
        actions.extend(
            self.election
                .handle(Event::LocalHealth { can_publish }, now),
        );
        actions
    }

    /// The election, to read (role, publisher, peers, when to wake).
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// New intervals (a configuration reload).
    pub fn set_timing(&mut self, timing: ElectionTiming, upload_failure_release: Duration) {
        self.election.set_timing(timing);
        self.ability.set_release_after(upload_failure_release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeId, Priority, Role};

    const RELEASE: Duration = Duration::from_secs(600);

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    fn lone_node() -> LeaseCore {
        let me = NodeId::try_from("node-a".to_owned()).unwrap();
        let priority = Priority::try_from(1).unwrap();
        let election = Election::new(me, priority, [], ElectionTiming::default(), at(0));
        LeaseCore::new(election, PublishAbility::new(RELEASE))
    }

    #[test]
    fn a_lone_node_publishes_once_its_tor_is_ready() {
        let mut lease = lone_node();
        let actions = lease.handle(LeaseInput::Tick, at(1));
        assert!(!actions.contains(&Action::StartPublishing));
        let actions = lease.handle(LeaseInput::Local(LocalEvent::TorReady), at(2));
        assert!(actions.contains(&Action::StartPublishing), "{actions:?}");
        assert_eq!(lease.election().role(), Role::Publisher);
    }

    #[test]
    fn uploads_failing_for_the_release_time_reach_the_election_on_the_next_tick() {
        let mut lease = lone_node();
        lease.handle(LeaseInput::Local(LocalEvent::TorReady), at(1));
        lease.handle(LeaseInput::Local(LocalEvent::UploadsFailed), at(10));
        assert!(lease.election().can_publish());
        let actions = lease.handle(LeaseInput::Tick, at(10 + RELEASE.as_secs()));
        assert!(!lease.election().can_publish());
        assert!(
            actions.contains(&Action::Warn(Warning::UploadsFailingTooLong)),
            "{actions:?}"
        );
        lease.handle(LeaseInput::Local(LocalEvent::UploadsAccepted), at(700));
        assert!(lease.election().can_publish());
    }
}
