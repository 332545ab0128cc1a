//! When to give up on the embedded Tor client and build a new one: a pure decision.
//!
//! Arti repairs most trouble itself (new circuits, new guards, a fresh consensus). A client
//! can still wedge: no usable consensus for a long time, or every circuit to the HSDirs
//! failing. The daemon then rebuilds it in-process rather than wait for an operator. The
//! detector is fed the moments the client last held a live consensus and last got something
//! done through the network (an HSDir answered a fetch, even with "not found" for a backend
//! that is down, or accepted the master descriptor) and says the client is stalled when either
//! is older than `limit`
//! (`timing.tor_stall_secs`). A node with no backend to check has nothing to measure progress
//! by, so only the consensus counts there.

use std::time::Duration;

use crate::clock::Timestamp;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct StallDetector {
    limit: Duration,
    expects_progress: bool,
    last_consensus: Timestamp,
    last_progress: Timestamp,
}

impl StallDetector {
    /// A client that was fine at `start` (just bootstrapped). `expects_progress`: there are
    /// backends to fetch.
    pub fn new(limit: Duration, expects_progress: bool, start: Timestamp) -> Self {
        StallDetector {
            limit,
            expects_progress,
            last_consensus: start,
            last_progress: start,
        }
    }

    /// The client holds a consensus that is live at `now`.
    pub fn live_consensus(&mut self, now: Timestamp) {
        self.last_consensus = self.last_consensus.max(now);
    }

    /// A fetch or an upload succeeded at `at`.
    pub fn progress(&mut self, at: Timestamp) {
        self.last_progress = self.last_progress.max(at);
    }

    /// Why the client counts as stalled at `now`, if it does.
    pub fn stalled(&self, now: Timestamp) -> Option<String> {
        let since = |moment: Timestamp| now.saturating_duration_since(moment);
        if since(self.last_consensus) >= self.limit {
            return Some(format!(
                "no live consensus for {} s",
                since(self.last_consensus).as_secs()
            ));
        }
        if self.expects_progress && since(self.last_progress) >= self.limit {
            return Some(format!(
                "no HSDir reached for {} s",
                since(self.last_progress).as_secs()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(600);

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    #[test]
    fn a_working_client_is_never_stalled() {
        let mut detector = StallDetector::new(LIMIT, true, at(0));
        for minute in 1..100 {
            detector.live_consensus(at(minute * 60));
            detector.progress(at(minute * 60 - 30));
            assert_eq!(detector.stalled(at(minute * 60)), None);
        }
    }

    #[test]
    fn no_live_consensus_for_the_limit_is_a_stall() {
        let mut detector = StallDetector::new(LIMIT, true, at(0));
        detector.progress(at(650));
        detector.live_consensus(at(100));
        assert_eq!(detector.stalled(at(699)), None);
        let reason = detector.stalled(at(700)).unwrap();
        assert!(reason.contains("no live consensus for 600 s"), "{reason}");
    }

    #[test]
    fn no_progress_for_the_limit_is_a_stall_only_with_backends() {
        let mut with = StallDetector::new(LIMIT, true, at(0));
        let mut without = StallDetector::new(LIMIT, false, at(0));
        for detector in [&mut with, &mut without] {
            detector.live_consensus(at(900));
        }
        assert!(with.stalled(at(900)).unwrap().contains("no HSDir reached"));
        assert_eq!(without.stalled(at(900)), None);
    }

    #[test]
    fn older_news_does_not_move_the_clock_back() {
        let mut detector = StallDetector::new(LIMIT, true, at(0));
        detector.progress(at(500));
        detector.progress(at(100));
        detector.live_consensus(at(500));
        detector.live_consensus(at(10));
        assert_eq!(detector.stalled(at(1099)), None);
    }
}
