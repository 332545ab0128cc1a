//! When to (re)publish the master descriptor for a time period. Pure.
//!
//! A descriptor for a period is uploaded again when any of these holds:
//! - it was never published (first start, or a new time period appeared);
//! - `publish_interval` has passed since the last upload, so HSDirs never hold a copy close
//!   to expiry and a lost upload is repaired;
//! - the merged introduction points changed (a backend died, recovered or rotated its
//!   introduction points): clients must stop trying dead ones as soon as possible;
//! - the set of HSDirs responsible for it changed (new consensus, new SRV): the new ones
//!   hold nothing yet.

use std::time::Duration;

use crate::clock::Timestamp;

/// What was last uploaded for one time period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRecord {
    pub published_at: Timestamp,
    /// Identities of the introduction points listed (see [`intro_point_fingerprint`]).
    pub intro_points: Vec<String>,
    pub hsdirs: Vec<String>,
    /// How many distinct descriptors it was (1 up to 20 introduction points offered).
    pub descriptors: usize,
    pub revision_counter: u64,
    /// Restricted discovery: the clients it admitted (x25519 public keys in hex, sorted;
    /// empty: anyone).
    pub authorized_clients: Vec<String>,
    /// HSDirs that accepted the upload, of how many tried (shown by `status`).
    pub hsdirs_accepted: usize,
    pub hsdirs_tried: usize,
}

/// Why a descriptor is being uploaded; logged with every upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishReason {
    FirstPublish,
    IntervalElapsed,
    IntroPointsChanged,
    HsDirsChanged,
    /// A responsible HSDir holds no copy of the last upload, an older one, or another
    /// publisher's (read back by the fetch-back).
    HsDirsLackIt,
    /// Restricted discovery: the list of authorized clients changed (SIGHUP).
    AuthorizedClientsChanged,
}

impl std::fmt::Display for PublishReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PublishReason::FirstPublish => "first publish for this period",
            PublishReason::IntervalElapsed => "publish interval elapsed",
            PublishReason::IntroPointsChanged => "introduction points changed",
            PublishReason::HsDirsChanged => "responsible HSDirs changed",
            PublishReason::HsDirsLackIt => "an HSDir lacks the last upload",
            PublishReason::AuthorizedClientsChanged => "the authorized clients changed",
        })
    }
}

/// Whether to upload now, given the last upload for this period (if any).
pub fn publish_reason(
    last: Option<&PublishRecord>,
    now: Timestamp,
    interval: Duration,
    intro_points: &[String],
    hsdirs: &[String],
) -> Option<PublishReason> {
    let Some(last) = last else {
        return Some(PublishReason::FirstPublish);
    };
    if !same_set(&last.intro_points, intro_points) {
        Some(PublishReason::IntroPointsChanged)
    } else if !same_set(&last.hsdirs, hsdirs) {
        Some(PublishReason::HsDirsChanged)
    } else if now.saturating_duration_since(last.published_at) >= interval {
        Some(PublishReason::IntervalElapsed)
    } else {
        None
    }
}

/// The earliest time at which `publish_reason` can become true by time alone.
pub fn next_due(last: &PublishRecord, interval: Duration) -> Timestamp {
    last.published_at + interval
}

/// Whether the two lists hold the same items, in any order.
pub fn same_set(a: &[String], b: &[String]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(600);

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_800_000_000 + secs)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn record() -> PublishRecord {
        PublishRecord {
            published_at: at(0),
            intro_points: strings(&["ip1", "ip2"]),
            hsdirs: strings(&["h1", "h2"]),
            descriptors: 1,
            revision_counter: 1,
            authorized_clients: Vec::new(),
            hsdirs_accepted: 2,
            hsdirs_tried: 2,
        }
    }

    #[test]
    fn never_published_means_publish() {
        assert_eq!(
            publish_reason(None, at(0), INTERVAL, &[], &[]),
            Some(PublishReason::FirstPublish)
        );
    }

    #[test]
    fn nothing_new_waits_for_the_interval() {
        let last = record();
        let ips = strings(&["ip2", "ip1"]); // order does not matter
        let dirs = strings(&["h1", "h2"]);
        assert_eq!(
            publish_reason(Some(&last), at(599), INTERVAL, &ips, &dirs),
            None
        );
        assert_eq!(
            publish_reason(Some(&last), at(600), INTERVAL, &ips, &dirs),
            Some(PublishReason::IntervalElapsed)
        );
        assert_eq!(next_due(&last, INTERVAL), at(600));
    }

    #[test]
    fn changes_publish_at_once() {
        let last = record();
        assert_eq!(
            publish_reason(
                Some(&last),
                at(1),
                INTERVAL,
                &strings(&["ip1"]),
                &strings(&["h1", "h2"])
            ),
            Some(PublishReason::IntroPointsChanged)
        );
        assert_eq!(
            publish_reason(
                Some(&last),
                at(1),
                INTERVAL,
                &strings(&["ip1", "ip2"]),
                &strings(&["h1", "h3"])
            ),
            Some(PublishReason::HsDirsChanged)
        );
    }
}
