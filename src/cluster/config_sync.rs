//! The cluster's shared configuration as one versioned document, as a state machine without
//! I/O.
//!
//! Every member runs the same `[[backends]]`, `[timing]`, `[health]` and `[arti]` (less
//! `[arti.storage]`): nodes that disagreed would publish different descriptors after a
//! failover. An edit on any member (`rustbalance backend ...`, or config.toml changed and
//! SIGHUP) makes a new [`ConfigVersion`]; the member sends the text to every other member, and
//! each validates it, writes it and applies it. The newest version wins everywhere:
//! versions are ordered by their number, then by the member that made them, so two edits made
//! at once on two members settle on the same one.
//!
//! Catching up is by heartbeats: each carries the sender's version, and a member that hears a
//! peer run an older one sends it the newer text (again at most every [`PUSH_AGAIN_AFTER`]
//! while the peer stays behind). A member that was down during an edit is up to date a
//! heartbeat after it returns. A version a member cannot apply (its validation failed there) is
//! refused once and not offered to it again until a newer one exists.
//!
//! The daemon's cluster loop does the I/O (`daemon::shared_config`): files, the tunnel, the
//! running configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NodeId;
use crate::clock::Timestamp;

/// How long a member that still runs an older version waits before it is sent the newer
/// text again (the send itself is acknowledged and resent by the transport meanwhile).
pub const PUSH_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// Which edit of the shared configuration a text is. Ordered by `number`, then by `by`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigVersion {
    pub number: u64,
    /// The member that made it.
    pub by: NodeId,
}

impl fmt::Display for ConfigVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (by {})", self.number, self.by)
    }
}

/// One version of the shared configuration: the shared tables as config.toml text (opaque
/// here; the config module owns its shape and validates it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfig {
    pub version: ConfigVersion,
    pub text: String,
}

/// What to do with a version a member sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// Newer than the running one: validate it and apply it (then [`ConfigSync::applied`],
    /// or [`ConfigSync::refused`] if it does not validate).
    Apply,
    /// Not newer than the running one, or already refused here: nothing to do.
    Ignore,
}

/// The running version, and what every member said it runs.
#[derive(Debug)]
pub struct ConfigSync {
    me: NodeId,
    current: ConfigVersion,
    /// Versions this node could not apply (cleared by a newer one applied).
    refused: BTreeSet<ConfigVersion>,
    members: BTreeMap<NodeId, MemberConfig>,
}

#[derive(Debug, Default)]
struct MemberConfig {
    /// What its last heartbeat said it runs.
    running: Option<ConfigVersion>,
    /// The version last sent to it, and when.
    sent: Option<(ConfigVersion, Timestamp)>,
}

impl ConfigSync {
    pub fn new(me: NodeId, current: ConfigVersion) -> Self {
        ConfigSync {
            me,
            current,
            refused: BTreeSet::new(),
            members: BTreeMap::new(),
        }
    }

    /// The version this node runs.
    pub fn current(&self) -> &ConfigVersion {
        &self.current
    }

    /// The version an edit made on this node becomes: above every version known here.
    pub fn next_version(&self) -> ConfigVersion {
        let highest = self
            .members
            .values()
            .filter_map(|member| member.running.as_ref())
            .chain(self.refused.iter())
            .map(|version| version.number)
            .fold(self.current.number, u64::max);
        ConfigVersion {
            number: highest.saturating_add(1),
            by: self.me.clone(),
        }
    }

    /// A member sent `version`.
    pub fn offered(&self, version: &ConfigVersion) -> Offered {
        if *version > self.current && !self.refused.contains(version) {
            Offered::Apply
        } else {
            Offered::Ignore
        }
    }

    /// `version` is running here now (applied from a member, made here, or read at start).
    pub fn applied(&mut self, version: ConfigVersion) {
        self.refused.retain(|refused| *refused > version);
        self.current = version;
    }

    /// `version` does not validate here: it is not applied, and not considered again.
    pub fn refused(&mut self, version: ConfigVersion) {
        self.refused.insert(version);
    }

    /// A member's heartbeat said it runs `running`. Returns true when it should be sent this
    /// node's version: it runs an older one, and was not sent this one recently.
    pub fn heard(&mut self, from: &NodeId, running: Option<ConfigVersion>, now: Timestamp) -> bool {
        let member = self.members.entry(from.clone()).or_default();
        member.running = running;
        let behind = member
            .running
            .as_ref()
            .is_some_and(|theirs| *theirs < self.current);
        let sent_recently = member.sent.as_ref().is_some_and(|(version, at)| {
            *version == self.current && at.is_recent(now, PUSH_AGAIN_AFTER)
        });
        if behind && !sent_recently {
            member.sent = Some((self.current.clone(), now));
            true
        } else {
            false
        }
    }

    /// This node's version was just sent to `to` (after an edit here): no need to send it
    /// again at its next heartbeat.
    pub fn sent(&mut self, to: &NodeId, now: Timestamp) {
        self.members.entry(to.clone()).or_default().sent = Some((self.current.clone(), now));
    }

    /// A member left the cluster: forget what it runs.
    pub fn forget(&mut self, member: &NodeId) {
        self.members.remove(member);
    }

    /// What each member last said it runs.
    pub fn member_version(&self, member: &NodeId) -> Option<&ConfigVersion> {
        self.members.get(member)?.running.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> NodeId {
        NodeId::try_from(name.to_owned()).unwrap()
    }

    fn version(number: u64, by: &str) -> ConfigVersion {
        ConfigVersion { number, by: id(by) }
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(secs)
    }

    #[test]
    fn versions_order_by_number_then_by_the_member_that_made_them() {
        assert!(version(2, "a") > version(1, "z"));
        assert!(version(2, "b") > version(2, "a"));
    }

    #[test]
    fn an_edit_goes_above_every_version_known() {
        let mut sync = ConfigSync::new(id("a"), version(3, "a"));
        assert_eq!(sync.next_version(), version(4, "a"));
        sync.heard(&id("b"), Some(version(7, "b")), at(10));
        assert_eq!(sync.next_version(), version(8, "a"));
        let saturated = ConfigSync::new(id("a"), version(u64::MAX, "z"));
        assert_eq!(saturated.next_version().number, u64::MAX);
    }

    #[test]
    fn only_a_newer_version_is_applied_and_a_refused_one_only_once() {
        let mut sync = ConfigSync::new(id("a"), version(3, "b"));
        assert_eq!(sync.offered(&version(3, "b")), Offered::Ignore);
        assert_eq!(sync.offered(&version(2, "z")), Offered::Ignore);
        assert_eq!(sync.offered(&version(3, "c")), Offered::Apply);
        sync.refused(version(3, "c"));
        assert_eq!(sync.offered(&version(3, "c")), Offered::Ignore);
        assert_eq!(sync.offered(&version(4, "b")), Offered::Apply);
        sync.applied(version(4, "b"));
        assert_eq!(sync.current(), &version(4, "b"));
        assert_eq!(sync.offered(&version(3, "c")), Offered::Ignore);
    }

    #[test]
    fn a_member_behind_is_sent_the_newer_version_again_only_after_a_while() {
        let mut sync = ConfigSync::new(id("a"), version(5, "a"));
        let b = id("b");
        assert!(sync.heard(&b, Some(version(4, "a")), at(100)));
        assert!(!sync.heard(&b, Some(version(4, "a")), at(101)));
        assert!(sync.heard(&b, Some(version(4, "a")), at(131)));
        // Up to date, or newer: nothing to send. A member that says nothing is not pushed.
        assert!(!sync.heard(&b, Some(version(5, "a")), at(200)));
        assert!(!sync.heard(&b, Some(version(6, "c")), at(300)));
        assert!(!sync.heard(&id("c"), None, at(300)));
        assert_eq!(sync.member_version(&b), Some(&version(6, "c")));
    }

    #[test]
    fn a_version_sent_after_an_edit_is_not_sent_again_at_the_next_heartbeat() {
        let mut sync = ConfigSync::new(id("a"), version(1, "a"));
        sync.applied(version(2, "a"));
        sync.sent(&id("b"), at(50));
        assert!(!sync.heard(&id("b"), Some(version(1, "a")), at(51)));
        // A newer edit is sent at once.
        sync.applied(version(3, "a"));
        assert!(sync.heard(&id("b"), Some(version(1, "a")), at(52)));
    }

    #[test]
    fn a_clock_stepped_back_does_not_silence_a_push_forever() {
        let mut sync = ConfigSync::new(id("a"), version(2, "a"));
        assert!(sync.heard(&id("b"), Some(version(1, "a")), at(10_000)));
        // The clock went back an hour: the last send is "in the future"; not recent.
        assert!(sync.heard(&id("b"), Some(version(1, "a")), at(6_400)));
    }
}
