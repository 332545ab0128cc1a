//! At most one warning per source every few seconds (a source: an address for the transport,
//! a peer for the election's warnings, a place in Arti's code for Arti's warnings).
//!
//! Anyone on the internet can send datagrams to the cluster port. Each bad one deserves a
//! warning (an operator wants to know a node is being probed, or that a peer runs with the
//! wrong key), but one line per datagram would let a flood fill the disk. So each source gets
//! one line per interval, and the next line says how many were held back.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use crate::clock::Timestamp;

/// Sources remembered at most; past this, sources quiet for a whole interval are forgotten, and
/// if a flood of spoofed addresses still fills the table, new sources are not logged at all.
const MAX_SOURCES: usize = 1024;

/// Decides whether a warning about a source may be logged now.
pub(crate) struct LogLimiter<K> {
    interval: Duration,
    sources: HashMap<K, SourceState>,
}

struct SourceState {
    last_logged: Timestamp,
    suppressed: u64,
}

impl<K: Hash + Eq> LogLimiter<K> {
    pub(crate) fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            sources: HashMap::new(),
        }
    }

    /// `Some(n)` if a warning about `source` may be logged now, `n` being how many were held
    /// back since the last one; `None` to stay quiet.
    pub(crate) fn allow(&mut self, source: K, now: Timestamp) -> Option<u64> {
        self.allow_since(source, now)
            .map(|(held_back, _)| held_back)
    }

    /// [`allow`](Self::allow), with the time the previous warning about `source` was logged
    /// (`now` for the first).
    pub(crate) fn allow_since(&mut self, source: K, now: Timestamp) -> Option<(u64, Timestamp)> {
        if let Some(state) = self.sources.get_mut(&source) {
            if state.last_logged.is_recent(now, self.interval) {
                state.suppressed += 1;
                return None;
            }
            let held_back = (state.suppressed, state.last_logged);
            *state = SourceState {
                last_logged: now,
                suppressed: 0,
            };
            return Some(held_back);
        }
        if self.sources.len() >= MAX_SOURCES {
            self.forget_quiet(now);
            if self.sources.len() >= MAX_SOURCES {
                return None;
            }
        }
        self.sources.insert(
            source,
            SourceState {
                last_logged: now,
                suppressed: 0,
            },
        );
        Some((0, now))
    }

    /// Drops the sources that have been quiet for a whole interval.
    pub(crate) fn forget_quiet(&mut self, now: Timestamp) {
        let interval = self.interval;
        self.sources
            .retain(|_, state| state.last_logged.is_recent(now, interval));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn one_line_per_source_per_interval_with_a_count_of_the_rest() {
        let mut limiter = LogLimiter::new(Duration::from_secs(5));
        let start = Timestamp::from_unix_secs(1_700_000_000);
        assert_eq!(limiter.allow(addr(1), start), Some(0));
        assert_eq!(limiter.allow(addr(1), start + Duration::from_secs(1)), None);
        assert_eq!(limiter.allow(addr(1), start + Duration::from_secs(2)), None);
        assert_eq!(
            limiter.allow(addr(2), start + Duration::from_secs(2)),
            Some(0)
        );
        assert_eq!(
            limiter.allow(addr(1), start + Duration::from_secs(5)),
            Some(2)
        );
    }

    #[test]
    fn a_flood_of_sources_is_bounded() {
        let mut limiter = LogLimiter::new(Duration::from_secs(5));
        let start = Timestamp::from_unix_secs(1_700_000_000);
        for port in 0..MAX_SOURCES as u16 {
            assert!(limiter.allow(addr(port), start).is_some());
        }
        assert_eq!(limiter.allow(addr(u16::MAX), start), None);
        assert_eq!(limiter.sources.len(), MAX_SOURCES);
        let later = start + Duration::from_secs(6);
        assert_eq!(limiter.allow(addr(u16::MAX), later), Some(0));
        assert_eq!(limiter.sources.len(), 1);
    }
}
