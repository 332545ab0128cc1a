//! The program's one clock type: [`Timestamp`], a moment on this node's wall clock.
//!
//! Every decision (election, publish ability, membership, backend health, Tor-stall
//! detection, the publish plan, the cluster transport's protocol) takes the current
//! `Timestamp` as an input and never reads a clock itself; the daemon reads the wall clock ([`Timestamp::now`]) and the whole-cluster
//! simulator supplies simulated ones. It is the wall clock, not a monotonic one, because peers
//! compare message timestamps with it and the revision counter is derived from it; the
//! decisions tolerate it stepping back.

use std::ops::Add;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A moment on some node's wall clock, in milliseconds since the Unix epoch. Timers are kept in
/// milliseconds; the wire rounds to whole seconds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 1970-01-01T00:00:00Z, the earliest moment.
    pub const EPOCH: Timestamp = Timestamp(0);

    pub const fn from_unix_millis(millis: u64) -> Self {
        Timestamp(millis)
    }

    pub const fn as_unix_millis(self) -> u64 {
        self.0
    }

    /// The start of second `secs` (the wire carries whole seconds).
    pub const fn from_unix_secs(secs: u64) -> Self {
        Timestamp(secs.saturating_mul(1000))
    }

    /// The whole seconds, rounded down.
    pub const fn as_unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// This node's wall clock now: the daemon's one clock read for decisions.
    pub fn now() -> Self {
        Timestamp::from_system_time(SystemTime::now())
    }

    /// The moment `time`; times before 1970 (a badly broken clock) become the epoch.
    pub fn from_system_time(time: SystemTime) -> Self {
        Timestamp(time.duration_since(UNIX_EPOCH).map_or(0, whole_millis))
    }

    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// How long after `earlier` this is; zero if it is not after (a clock stepped back).
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// `duration` earlier, or the epoch if that is before it.
    pub fn saturating_sub(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(whole_millis(duration)))
    }

    /// Whether this moment lies in the `window` up to `now`. A moment after `now` (the clock
    /// stepped back since it was taken) is not recent: whatever waits on it starts over rather
    /// than waiting for the clock to catch up.
    pub fn is_recent(self, now: Timestamp, window: Duration) -> bool {
        self <= now && now.saturating_duration_since(self) < window
    }

    /// How far apart the two moments are, in either direction.
    pub fn distance(self, other: Timestamp) -> Duration {
        Duration::from_millis(self.0.abs_diff(other.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, duration: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(whole_millis(duration)))
    }
}

/// `duration` in whole milliseconds, saturating (585 million years is plenty).
fn whole_millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
