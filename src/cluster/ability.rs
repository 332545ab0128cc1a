//! Whether this node can publish, from what its Tor client has shown: a pure state machine.
//!
//! The election needs one bit from the daemon (`Event::LocalHealth`): could this node upload
//! the descriptor if it held the lease? It cannot while Arti bootstraps. It also cannot, as far
//! as the cluster is concerned, once every upload has failed for `timing.upload_failure_release`
//! (10 minutes by default): the election then hands the lease to a standby whose Tor works.
//! Such a node must not claim the lease back at once while its own Tor is still broken, yet as
//! a standby it uploads nothing that could prove its Tor works again. So it waits out one more
//! release period and then needs a health round in which an HSDir answered (its circuits to
//! the HSDirs work again) before it counts as able. A successful upload (a lone
//! publisher keeps trying) ends the trouble at once.
//!
//! A node whose Tor stops working may attempt no upload at all (nothing is due, or its loops
//! wait for a client being rebuilt), so failed uploads alone would never tell the cluster. It
//! also cannot publish, then, when its client lost its live consensus or is being rebuilt
//! ([`tor_lost`](PublishAbility::tor_lost)), or when a health round that checked backends
//! reached no HSDir at all. After a loss it counts as able again only once its Tor has reached
//! an HSDir: a client rebuilt from a cached consensus while the network is still cut would
//! otherwise claim the lease back and lose it again, over and over.

use std::time::Duration;

use crate::clock::Timestamp;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct PublishAbility {
    tor_ready: bool,
    /// Since the client was lost: no HSDir reached yet.
    awaiting_hsdir: bool,
    /// The last health round checked backends and reached no HSDir.
    hsdirs_unreachable: bool,
    release_after: Duration,
    /// The first failed upload since the last success.
    failing_since: Option<Timestamp>,
    /// When uploads had failed for `release_after` (or the HSDirs did not serve this node's
    /// descriptor) and this node gave up the ability.
    gave_up_at: Option<Timestamp>,
    /// It gave up because the HSDirs did not serve its descriptor, not for failed uploads.
    gave_up_not_served: bool,
}

impl PublishAbility {
    /// A node whose Tor client has not bootstrapped yet.
    pub fn new(release_after: Duration) -> Self {
        PublishAbility {
            tor_ready: false,
            awaiting_hsdir: false,
            hsdirs_unreachable: false,
            release_after,
            failing_since: None,
            gave_up_at: None,
            gave_up_not_served: false,
        }
    }

    /// A new `timing.upload_failure_release` (a configuration reload).
    pub fn set_release_after(&mut self, release_after: Duration) {
        self.release_after = release_after;
    }

    /// Arti bootstrapped and holds a live consensus.
    pub fn tor_ready(&mut self) {
        self.tor_ready = true;
    }

    /// The client lost its live consensus, or is being dropped to be rebuilt.
    pub fn tor_lost(&mut self) {
        self.tor_ready = false;
        self.awaiting_hsdir = true;
    }

    pub fn upload_succeeded(&mut self) {
        self.failing_since = None;
        self.gave_up_at = None;
        self.awaiting_hsdir = false;
        self.hsdirs_unreachable = false;
    }

    /// HSDirs answered but accepted nothing: the Tor side works (the HSDirs hold a newer
    /// revision), so this is no reason to leave the lease to another node, whose uploads
    /// would meet the same HSDirs.
    pub fn upload_refused(&mut self, now: Timestamp) {
        self.failing_since = None;
        self.fetch_succeeded(now);
    }

    pub fn upload_failed(&mut self, now: Timestamp) {
        self.failing_since.get_or_insert(now);
    }

    /// This node stopped publishing (it lost or released the lease): uploads that failed
    /// while it published say nothing about a later lease, so they stop counting. (A node that
    /// already gave up stays given up until its Tor shows it works again.)
    pub fn stopped_publishing(&mut self) {
        self.failing_since = None;
    }

    /// A health round that checked `checked` backends finished; for `reached` of them some
    /// HSDir answered.
    pub fn health_round(&mut self, checked: usize, reached: usize, now: Timestamp) {
        if reached > 0 {
            self.fetch_succeeded(now);
        } else if checked > 0 {
            self.hsdirs_unreachable = true;
        }
    }

    /// A health round reached the HSDirs (some HSDir answered).
    fn fetch_succeeded(&mut self, now: Timestamp) {
        self.awaiting_hsdir = false;
        self.hsdirs_unreachable = false;
        if self
            .gave_up_at
            .is_some_and(|at| now >= at + self.release_after)
        {
            self.gave_up_at = None;
        }
    }

    /// Whether this node can publish at `now` (gives up here when uploads failed too long).
    pub fn can_publish(&mut self, now: Timestamp) -> bool {
        if self
            .failing_since
            .is_some_and(|since| now >= since + self.release_after)
        {
            self.failing_since = None;
            self.gave_up_at = Some(now);
            self.gave_up_not_served = false;
        }
        self.tor_ready
            && !self.awaiting_hsdir
            && !self.hsdirs_unreachable
            && self.gave_up_at.is_none()
    }

    /// The HSDirs have not served this node's descriptor for the `hsdir_failure` bound,
    /// though its uploads seemed to work: it gives up as if its uploads had failed (it counts
    /// as able again after one more release period and a health round that reached an HSDir).
    pub fn not_served(&mut self, now: Timestamp) {
        self.failing_since = None;
        self.gave_up_at = Some(now);
        self.gave_up_not_served = true;
    }

    /// Whether the node gave up because its uploads kept failing.
    pub fn gave_up(&self) -> bool {
        self.gave_up_at.is_some() && !self.gave_up_not_served
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: Duration = Duration::from_secs(600);

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    #[test]
    fn not_before_tor_is_ready() {
        let mut ability = PublishAbility::new(RELEASE);
        assert!(!ability.can_publish(at(0)));
        ability.tor_ready();
        assert!(ability.can_publish(at(0)));
    }

    #[test]
    fn failing_uploads_give_up_after_the_release_time_and_a_success_restores() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        ability.upload_failed(at(10));
        ability.upload_failed(at(300));
        assert!(ability.can_publish(at(609)));
        assert!(!ability.can_publish(at(610)));
        assert!(ability.gave_up());
        ability.upload_succeeded();
        assert!(ability.can_publish(at(611)));
    }

    #[test]
    fn a_success_in_between_restarts_the_count() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        ability.upload_failed(at(0));
        ability.upload_succeeded();
        ability.upload_failed(at(500));
        assert!(ability.can_publish(at(1000)));
        assert!(!ability.can_publish(at(1100)));
    }

    #[test]
    fn after_giving_up_only_a_fetch_one_release_period_later_restores() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        ability.upload_failed(at(0));
        assert!(!ability.can_publish(at(600)));
        // Fetches right after giving up do not count: no claiming straight back.
        ability.health_round(2, 2, at(700));
        assert!(!ability.can_publish(at(700)));
        ability.health_round(2, 1, at(1200));
        assert!(ability.can_publish(at(1200)));
    }

    #[test]
    fn failures_while_publishing_stop_counting_once_the_node_stops() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        ability.upload_failed(at(0));
        ability.stopped_publishing();
        assert!(ability.can_publish(at(10_000)));
        assert!(!ability.gave_up());
    }

    #[test]
    fn a_lost_client_counts_as_able_again_only_once_it_reaches_an_hsdir() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        assert!(ability.can_publish(at(0)));
        ability.tor_lost();
        assert!(!ability.can_publish(at(1)));
        // Rebuilt, perhaps from a cached consensus while the network is still cut.
        ability.tor_ready();
        assert!(!ability.can_publish(at(2)));
        ability.health_round(2, 0, at(3));
        assert!(!ability.can_publish(at(3)));
        ability.health_round(2, 1, at(4));
        assert!(ability.can_publish(at(4)));
    }

    #[test]
    fn a_round_that_reaches_no_hsdir_stops_the_ability_until_one_does() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        ability.health_round(2, 0, at(10));
        assert!(!ability.can_publish(at(10)));
        ability.health_round(2, 2, at(20));
        assert!(ability.can_publish(at(20)));
        // A node with nothing to check learns nothing from its rounds.
        ability.health_round(0, 0, at(30));
        assert!(ability.can_publish(at(30)));
    }

    #[test]
    fn refused_uploads_prove_tor_works() {
        let mut ability = PublishAbility::new(RELEASE);
        ability.tor_ready();
        ability.upload_failed(at(0));
        ability.upload_refused(at(300));
        ability.upload_refused(at(900));
        assert!(
            ability.can_publish(at(2000)),
            "refusals are answers, not failures"
        );
    }
}
