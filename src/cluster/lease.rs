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
//!
//! It also judges the publisher by outcome ([`ServedWatch`]): the read-back of each health
//! round goes to the watch; a standby that finds the publisher's descriptor not served for the
//! bound says so in its heartbeats, and a publisher that is told so (or sees it itself) gives up
//! its ability as after failed uploads, so the election hands the lease over.

use std::time::Duration;

use super::ability::PublishAbility;
use super::election::{Action, Election, ElectionTiming, Event, LeaseMessage, Warning};
use super::outcome::{ReadBack, ServedWatch};
use super::{NodeId, Role};
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
    /// What the round's read-back of the master descriptor showed (`outcome`).
    ReadBack(ReadBack),
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
    served: ServedWatch,
}

impl LeaseCore {
    pub fn new(election: Election, ability: PublishAbility, served: ServedWatch) -> Self {
        LeaseCore {
            election,
            ability,
            served,
        }
    }

    /// Feed one input at `now`; returns what the election decided.
    pub fn handle(&mut self, input: LeaseInput, now: Timestamp) -> Vec<Action> {
        let mut actions = match input {
            LeaseInput::Tick => self.election.handle(Event::Tick, now),
            LeaseInput::Heard(message) => {
                let accuser = match &message {
                    LeaseMessage::Heartbeat(heartbeat)
                        if heartbeat.publisher_not_served.as_ref() == Some(self.election.me()) =>
                    {
                        Some(heartbeat.from.clone())
                    }
                    _ => None,
                };
                let mut actions = self.election.handle(Event::Heard(message), now);
                if let Some(seen_by) = accuser {
                    actions.extend(self.not_served(seen_by, now));
                }
                actions
            }
            LeaseInput::Shutdown => return self.election.handle(Event::Shutdown, now),
            LeaseInput::MemberRemoved(member) => {
                self.election.handle(Event::MemberRemoved(member), now)
            }
            LeaseInput::Local(event) => self.local(event, now),
        };
        let failed = self
            .served
            .failed_publisher(self.election.publisher(now), now)
            .cloned();
        if failed.as_ref() == Some(self.election.me()) {
            actions.extend(self.not_served(self.election.me().clone(), now));
        }
        actions.extend(self.update_ability(now));
        if actions.contains(&Action::StopPublishing) {
            self.ability.stopped_publishing();
        }
        // Standbys say which publisher's descriptor they find missing, so that it steps down.
        for action in &mut actions {
            if let Action::BroadcastHeartbeat(heartbeat) = action {
                heartbeat.publisher_not_served = failed.clone();
            }
        }
        actions
    }

    /// `seen_by` finds this node's descriptor missing from the HSDirs: while it publishes, it
    /// stops counting as able to, and the election hands the lease over.
    fn not_served(&mut self, seen_by: NodeId, now: Timestamp) -> Vec<Action> {
        if self.election.role() != Role::Publisher {
            return Vec::new();
        }
        self.ability.not_served(now);
        vec![Action::Warn(Warning::DescriptorNotServed { seen_by })]
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
            LocalEvent::ReadBack(read_back) => {
                let publisher = self.election.publisher(now).cloned();
                self.served.observe(read_back, publisher.as_ref(), now);
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
    pub fn set_timing(
        &mut self,
        timing: ElectionTiming,
        upload_failure_release: Duration,
        hsdir_failure: Duration,
    ) {
        self.election.set_timing(timing);
        self.ability.set_release_after(upload_failure_release);
        self.served.set_bound(hsdir_failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::election::Heartbeat;
    use crate::cluster::Priority;

    const RELEASE: Duration = Duration::from_secs(600);
    const HSDIR_FAILURE: Duration = Duration::from_secs(900);

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    fn lone_node() -> LeaseCore {
        let me = NodeId::try_from("node-a".to_owned()).unwrap();
        let priority = Priority::try_from(1).unwrap();
        let election = Election::new(me, priority, [], ElectionTiming::default(), at(0));
        LeaseCore::new(
            election,
            PublishAbility::new(RELEASE),
            ServedWatch::new(HSDIR_FAILURE),
        )
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

    fn node(name: &str, priority: u32) -> LeaseCore {
        let me = NodeId::try_from(name.to_owned()).unwrap();
        let peers = [("a", 1), ("b", 2)].into_iter().map(|(n, p)| {
            (
                NodeId::try_from(n.to_owned()).unwrap(),
                Priority::try_from(p).unwrap(),
            )
        });
        let timing = ElectionTiming::default();
        let election = Election::new(
            me,
            Priority::try_from(priority).unwrap(),
            peers,
            timing,
            at(0),
        );
        let mut lease = LeaseCore::new(
            election,
            PublishAbility::new(RELEASE),
            ServedWatch::new(HSDIR_FAILURE),
        );
        lease.handle(LeaseInput::Local(LocalEvent::TorReady), at(0));
        lease
    }

    /// Run `a` (priority 1) and `b` from `from` until `until`, every heartbeat (whichever
    /// input made it) reaching the other node; returns b's heartbeats.
    fn exchange(a: &mut LeaseCore, b: &mut LeaseCore, from: u64, until: u64) -> Vec<Heartbeat> {
        let mut from_b = Vec::new();
        let mut to_a: Vec<Heartbeat> = Vec::new();
        let mut to_b: Vec<Heartbeat> = Vec::new();
        let heartbeats = |actions: Vec<Action>, out: &mut Vec<Heartbeat>| {
            out.extend(actions.into_iter().filter_map(|action| match action {
                Action::BroadcastHeartbeat(heartbeat) => Some(heartbeat),
                _ => None,
            }));
        };
        for secs in from..until {
            heartbeats(a.handle(LeaseInput::Tick, at(secs)), &mut to_b);
            heartbeats(b.handle(LeaseInput::Tick, at(secs)), &mut to_a);
            for heartbeat in std::mem::take(&mut to_b) {
                heartbeats(
                    b.handle(
                        LeaseInput::Heard(LeaseMessage::Heartbeat(heartbeat)),
                        at(secs),
                    ),
                    &mut to_a,
                );
            }
            for heartbeat in std::mem::take(&mut to_a) {
                from_b.push(heartbeat.clone());
                heartbeats(
                    a.handle(
                        LeaseInput::Heard(LeaseMessage::Heartbeat(heartbeat)),
                        at(secs),
                    ),
                    &mut to_b,
                );
            }
        }
        from_b
    }

    #[test]
    fn a_standby_that_finds_the_descriptor_missing_makes_the_publisher_step_down() {
        let (mut a, mut b) = (node("a", 1), node("b", 2));
        exchange(&mut a, &mut b, 0, 200);
        assert_eq!(a.election().role(), Role::Publisher);
        // b's read-back finds nothing on the HSDirs, round after round, while a heartbeats.
        let mut said = Vec::new();
        for round in 1..=5 {
            b.handle(
                LeaseInput::Local(LocalEvent::ReadBack(ReadBack::Missing)),
                at(round * 200),
            );
            said = exchange(&mut a, &mut b, round * 200, round * 200 + 200);
            if a.election().role() == Role::Standby {
                break;
            }
        }
        assert!(
            said.iter()
                .any(|h| h.publisher_not_served.as_ref().map(NodeId::as_str) == Some("a")),
            "{said:?}"
        );
        assert!(
            !a.election().can_publish(),
            "a still counts as able to publish"
        );
        let after = 1400;
        exchange(&mut a, &mut b, 1200, after);
        assert_eq!(b.election().role(), Role::Publisher);
        assert_eq!(a.election().role(), Role::Standby);
        // b's next read-back is about b, and starts over: nobody is blamed now.
        b.handle(
            LeaseInput::Local(LocalEvent::ReadBack(ReadBack::Served)),
            at(after),
        );
        let said = exchange(&mut a, &mut b, after, after + 60);
        assert!(!said.is_empty());
        assert!(
            said.iter().all(|h| h.publisher_not_served.is_none()),
            "{said:?}"
        );
    }

    #[test]
    fn a_publisher_that_finds_its_own_descriptor_missing_steps_down() {
        let (mut a, mut b) = (node("a", 1), node("b", 2));
        exchange(&mut a, &mut b, 0, 200);
        a.handle(
            LeaseInput::Local(LocalEvent::ReadBack(ReadBack::Missing)),
            at(200),
        );
        a.handle(
            LeaseInput::Local(LocalEvent::ReadBack(ReadBack::Missing)),
            at(500),
        );
        let actions = a.handle(LeaseInput::Tick, at(200 + HSDIR_FAILURE.as_secs()));
        assert!(
            actions
                .iter()
                .any(|action| matches!(action, Action::Warn(Warning::DescriptorNotServed { .. }))),
            "{actions:?}"
        );
        exchange(&mut a, &mut b, 1100, 1300);
        assert_eq!(b.election().role(), Role::Publisher);
    }
}
