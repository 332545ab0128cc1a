//! Is the publisher's work on the HSDirs? The publisher judged by outcome, as a state machine
//! without I/O.
//!
//! Heartbeats say a publisher is alive and believes it can publish; they cannot say that its
//! descriptor reaches the HSDirs (a publish loop wedged by a bug, uploads that go to HSDirs no
//! client asks, a Tor client that answers locally and nowhere else). So every node reads the
//! master descriptor back from the responsible HSDirs each health round (`publish::read_back`)
//! and judges what it found ([`ReadBack`]): served (the newest copies list only introduction
//! points of backends this node finds healthy), missing (the HSDirs answered and hold no copy),
//! wrong (the newest copy lists introduction points this node does not find healthy), or not
//! judged (no HSDir answered, or no backend is healthy here: that says nothing about the
//! publisher).
//!
//! [`ServedWatch`] turns rounds into a verdict: when every round over the whole
//! `timing.hsdir_failure` bound found the descriptor of the publisher this node follows missing,
//! or the same wrong copy, that publisher has failed (a round that could not judge starts the
//! count over). A wrong copy whose revision changed since the last round
//! starts the count over: the publisher is at work, a round behind the backends (each round's
//! read-back follows the health round that the next upload reacts to, so while backends rotate
//! their introduction points every round, every copy read is one round old). A standby says so in its heartbeats; the publisher, hearing it (or seeing it in its
//! own read-back), stops counting as able to publish and so hands the lease to a standby, the
//! normal takeover (`lease`). The watch starts over whenever the publisher changes, so a new
//! publisher is never blamed for its predecessor's rounds.

use std::time::Duration;

use super::NodeId;
use crate::clock::Timestamp;

/// What one round's read-back of the master descriptor showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadBack {
    /// Some HSDir holds the newest copy, and it lists only healthy backends' introduction points.
    Served,
    /// The HSDirs answered, and none holds a copy.
    Missing,
    /// The newest copy (of this revision) lists introduction points this node does not find
    /// healthy.
    Wrong { revision: u64 },
    /// Nothing to judge by: no HSDir answered, or no backend is healthy here.
    NotJudged,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ServedWatch {
    bound: Duration,
    /// The publisher the watch is about (as this node saw it at the last round).
    watching: Option<NodeId>,
    /// The first round of the current run of rounds that did not find its descriptor served.
    not_served_since: Option<Timestamp>,
    /// The revision of the wrong copy the last round found.
    wrong_revision: Option<u64>,
}

impl ServedWatch {
    pub fn new(bound: Duration) -> Self {
        ServedWatch {
            bound,
            watching: None,
            not_served_since: None,
            wrong_revision: None,
        }
    }

    /// A new `timing.hsdir_failure_secs` (a configuration reload).
    pub fn set_bound(&mut self, bound: Duration) {
        self.bound = bound;
    }

    /// One round's read-back, while `publisher` holds the lease as this node sees it.
    pub fn observe(&mut self, read_back: ReadBack, publisher: Option<&NodeId>, now: Timestamp) {
        if publisher != self.watching.as_ref() {
            self.watching = publisher.cloned();
            self.not_served_since = None;
            self.wrong_revision = None;
        }
        match read_back {
            // No evidence either way counts as none against the publisher: a verdict rests on
            // rounds that all found its descriptor not served.
            ReadBack::Served | ReadBack::NotJudged => {
                self.not_served_since = None;
                self.wrong_revision = None;
            }
            ReadBack::Missing => {
                self.wrong_revision = None;
                self.count_from(now);
            }
            ReadBack::Wrong { revision } => {
                let updated = self
                    .wrong_revision
                    .replace(revision)
                    .is_some_and(|last| last != revision);
                if updated {
                    self.not_served_since = None;
                }
                self.count_from(now);
            }
        }
    }

    /// Count a round that did not find the descriptor served.
    fn count_from(&mut self, now: Timestamp) {
        // A start "in the future" is a clock stepped back: count from now.
        let since = self.not_served_since.get_or_insert(now);
        if *since > now {
            *since = now;
        }
    }

    /// The publisher whose descriptor has not been served for the whole bound, if it still
    /// holds the lease (`publisher`, as this node sees it now).
    pub fn failed_publisher(&self, publisher: Option<&NodeId>, now: Timestamp) -> Option<&NodeId> {
        let watching = self.watching.as_ref()?;
        let failed = publisher == Some(watching)
            && self
                .not_served_since
                .is_some_and(|since| now >= since + self.bound);
        failed.then_some(watching)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUND: Duration = Duration::from_secs(300);

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    fn id(name: &str) -> NodeId {
        NodeId::try_from(name.to_owned()).unwrap()
    }

    #[test]
    fn a_publisher_fails_when_its_descriptor_is_not_served_for_the_whole_bound() {
        let a = id("a");
        let mut watch = ServedWatch::new(BOUND);
        watch.observe(ReadBack::Served, Some(&a), at(0));
        watch.observe(ReadBack::Missing, Some(&a), at(60));
        watch.observe(ReadBack::Missing, Some(&a), at(120));
        assert_eq!(watch.failed_publisher(Some(&a), at(359)), None);
        assert_eq!(watch.failed_publisher(Some(&a), at(360)), Some(&a));
        // A round that could not judge (no HSDir answered here) starts the count over.
        watch.observe(ReadBack::NotJudged, Some(&a), at(370));
        assert_eq!(watch.failed_publisher(Some(&a), at(380)), None);
        watch.observe(ReadBack::Missing, Some(&a), at(380));
        assert_eq!(watch.failed_publisher(Some(&a), at(679)), None);
        assert_eq!(watch.failed_publisher(Some(&a), at(680)), Some(&a));
        // Served again: no longer failed.
        watch.observe(ReadBack::Served, Some(&a), at(400));
        assert_eq!(watch.failed_publisher(Some(&a), at(900)), None);
    }

    #[test]
    fn the_same_wrong_copy_fails_the_publisher_but_a_changing_one_does_not() {
        let a = id("a");
        let wrong = |revision| ReadBack::Wrong { revision };
        let mut watch = ServedWatch::new(BOUND);
        // The publisher reacts a round late, every round: at work, never blamed.
        for round in 0..20 {
            watch.observe(wrong(round), Some(&a), at(round * 100));
        }
        assert_eq!(watch.failed_publisher(Some(&a), at(2000)), None);
        // Then the copy stays the same: the count runs from the first round that saw it.
        watch.observe(wrong(19), Some(&a), at(2000));
        watch.observe(wrong(19), Some(&a), at(2100));
        assert_eq!(watch.failed_publisher(Some(&a), at(2199)), None);
        assert_eq!(watch.failed_publisher(Some(&a), at(2200)), Some(&a));
    }

    #[test]
    fn a_new_publisher_is_not_blamed_for_its_predecessors_rounds() {
        let (a, b) = (id("a"), id("b"));
        let mut watch = ServedWatch::new(BOUND);
        watch.observe(ReadBack::Missing, Some(&a), at(0));
        assert_eq!(watch.failed_publisher(Some(&a), at(300)), Some(&a));
        // b took over before the next round: nothing is said about b, nor about a.
        assert_eq!(watch.failed_publisher(Some(&b), at(301)), None);
        watch.observe(ReadBack::Missing, Some(&b), at(310));
        assert_eq!(watch.failed_publisher(Some(&b), at(609)), None);
        assert_eq!(watch.failed_publisher(Some(&b), at(610)), Some(&b));
        // No publisher at all: nobody to blame.
        watch.observe(ReadBack::Missing, None, at(700));
        assert_eq!(watch.failed_publisher(None, at(2000)), None);
    }

    #[test]
    fn a_clock_stepped_back_restarts_the_count_rather_than_waiting_for_it() {
        let a = id("a");
        let mut watch = ServedWatch::new(BOUND);
        watch.observe(ReadBack::Missing, Some(&a), at(5000));
        watch.observe(ReadBack::Missing, Some(&a), at(1000));
        assert_eq!(watch.failed_publisher(Some(&a), at(1300)), Some(&a));
    }
}
