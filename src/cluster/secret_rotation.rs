//! Replacing the cluster secret on every member (`rustbalance rotate-secret`), as a state
//! machine without I/O.
//!
//! Every WireGuard tunnel's preshared key comes from the secret (`secret::pair_psk`), so the two
//! ends of a tunnel must switch together, and only once both hold the new secret. The member
//! where the operator rotates sends the new secret through each member's tunnel (under the old
//! key); a member that receives it switches its tunnel to the sender at once (the sender holds
//! it), and the sender switches its end when the member's acknowledgement arrives. Any other
//! pair switches when each hears the other's heartbeat name the new secret ([`SecretId`]). A
//! member that was down keeps its old-key tunnels at the others, so when it returns its
//! heartbeat (naming the old secret) gets through, and it is sent the new one.
//!
//! Until every member switched, a member keeps the previous secret and the peers whose tunnels
//! still use it (`storage::node_files` writes them next to `cluster.key`), so a restart in the
//! middle keeps each tunnel on the key its other end uses. Join requests and tokens use the new
//! secret at once: old tokens admit nobody.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::secret::SecretId;
use super::NodeId;
use crate::clock::Timestamp;

/// How long a member still on the previous secret waits before it is sent the new one again
/// (the send itself is acknowledged and resent by the transport meanwhile).
pub const SEND_AGAIN_AFTER: Duration = Duration::from_secs(30);

/// What the cluster loop must do for one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationStep {
    /// Switch the tunnel to this peer to the current secret's key.
    Rekey(NodeId),
    /// Switch the tunnel to this peer back to the previous secret's key (it fell silent after
    /// a switch: its end may still use that one).
    UsePrevious(NodeId),
    /// This peer still runs the previous secret: send it the current one (through its tunnel,
    /// which still uses the previous key).
    SendSecret(NodeId),
}

/// Which key the tunnel to a peer uses while a rotation is not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tunnel {
    /// The previous secret's.
    Previous,
    /// The current secret's, not yet heard through.
    Switched,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct SecretRotation {
    me: NodeId,
    current: SecretId,
    previous: Option<SecretId>,
    /// Peers whose tunnels are not known to work under the current secret.
    pending: BTreeMap<NodeId, Pending>,
    /// How long a pending peer may be silent before the lower node id of the pair tries the
    /// other key.
    toggle_after: Duration,
}

#[derive(Debug, Clone)]
struct Pending {
    tunnel: Tunnel,
    /// Since when nothing was heard from it (reset by any heartbeat and by each key change).
    quiet_since: Timestamp,
    /// When the current secret was last sent to it.
    sent: Option<Timestamp>,
}

impl SecretRotation {
    /// A node running `current`; `previous`: the secret it replaced and the peers whose tunnels
    /// are not known to work under the current one, if a rotation is not finished (their
    /// tunnels start on the previous key). `toggle_after`: a few heartbeat intervals.
    pub fn new(
        me: NodeId,
        current: SecretId,
        previous: Option<(SecretId, BTreeSet<NodeId>)>,
        toggle_after: Duration,
        now: Timestamp,
    ) -> Self {
        let mut rotation = SecretRotation {
            me,
            current,
            previous: None,
            pending: BTreeMap::new(),
            toggle_after,
        };
        if let Some((id, peers)) = previous.filter(|(_, peers)| !peers.is_empty()) {
            rotation.previous = Some(id);
            rotation.pending = peers
                .into_iter()
                .map(|peer| (peer, Pending::new(Tunnel::Previous, now)))
                .collect();
        }
        rotation
    }

    pub fn current(&self) -> SecretId {
        self.current
    }

    /// The peers whose tunnels are not known to work under the current secret (to keep across
    /// a restart).
    pub fn pending(&self) -> impl Iterator<Item = &NodeId> {
        self.pending.keys()
    }

    /// Whether a rotation is under way (the previous secret is still needed).
    pub fn under_way(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether a member's message names a secret this node should take from it: one it does
    /// not run, and not the one it just replaced.
    pub fn is_new(&self, id: SecretId) -> bool {
        id != self.current && Some(id) != self.previous
    }

    /// `new` is in force here from now on (made here, or received from `from`). Every peer's
    /// tunnel still uses the old secret, except `from`'s, switched at once.
    pub fn rotated<'a>(
        &mut self,
        new: SecretId,
        peers: impl IntoIterator<Item = &'a NodeId>,
        from: Option<&NodeId>,
        now: Timestamp,
    ) -> Vec<RotationStep> {
        self.previous = Some(self.current);
        self.current = new;
        self.pending = peers
            .into_iter()
            .map(|peer| (peer.clone(), Pending::new(Tunnel::Previous, now)))
            .collect();
        from.and_then(|from| self.switch(from, now))
            .into_iter()
            .collect()
    }

    /// A member's heartbeat arrived (so the tunnel works as it is now), naming the secret it
    /// runs.
    pub fn heard(
        &mut self,
        peer: &NodeId,
        runs: Option<SecretId>,
        now: Timestamp,
    ) -> Option<RotationStep> {
        let pending = self.pending.get_mut(peer)?;
        pending.quiet_since = now;
        match pending.tunnel {
            // Heard through the new key: done with this peer.
            Tunnel::Switched => {
                self.confirm(peer);
                None
            }
            Tunnel::Previous if runs == Some(self.current) => self.switch(peer, now),
            Tunnel::Previous => {
                let sent_recently = pending
                    .sent
                    .is_some_and(|at| at.is_recent(now, SEND_AGAIN_AFTER));
                if sent_recently {
                    return None;
                }
                pending.sent = Some(now);
                Some(RotationStep::SendSecret(peer.clone()))
            }
        }
    }

    /// The current secret was sent to `peer` (after a rotation here): no need to send it
    /// again at its next heartbeat.
    pub fn sent(&mut self, peer: &NodeId, now: Timestamp) {
        if let Some(pending) = self.pending.get_mut(peer) {
            pending.sent = Some(now);
        }
    }

    /// `peer` acknowledged the current secret: it holds it now.
    pub fn acknowledged(&mut self, peer: &NodeId, now: Timestamp) -> Option<RotationStep> {
        self.switch(peer, now)
    }

    /// Time passed: a pending peer silent for `toggle_after` may use the other key at its end
    /// (a lost acknowledgement, a restart in the middle). Of each pair only the node with the
    /// lower id tries the other key, so the two ends never keep missing each other in step.
    pub fn tick(&mut self, now: Timestamp) -> Vec<RotationStep> {
        let me = self.me.clone();
        let toggle_after = self.toggle_after;
        let mut steps = Vec::new();
        for (peer, pending) in &mut self.pending {
            let quiet = !pending.quiet_since.is_recent(now, toggle_after);
            if me < *peer && quiet {
                pending.quiet_since = now;
                pending.tunnel = match pending.tunnel {
                    Tunnel::Previous => {
                        steps.push(RotationStep::Rekey(peer.clone()));
                        Tunnel::Switched
                    }
                    Tunnel::Switched => {
                        steps.push(RotationStep::UsePrevious(peer.clone()));
                        Tunnel::Previous
                    }
                };
            }
        }
        steps
    }

    /// A member left the cluster.
    pub fn forget(&mut self, peer: &NodeId) {
        self.confirm(peer);
    }

    /// `peer` holds the current secret: switch its tunnel if it still uses the previous key.
    fn switch(&mut self, peer: &NodeId, now: Timestamp) -> Option<RotationStep> {
        let pending = self.pending.get_mut(peer)?;
        if pending.tunnel == Tunnel::Switched {
            return None;
        }
        pending.tunnel = Tunnel::Switched;
        pending.quiet_since = now;
        Some(RotationStep::Rekey(peer.clone()))
    }

    /// The tunnel to `peer` works under the current secret (or `peer` left).
    fn confirm(&mut self, peer: &NodeId) {
        self.pending.remove(peer);
        if self.pending.is_empty() {
            self.previous = None;
        }
    }
}

impl Pending {
    fn new(tunnel: Tunnel, now: Timestamp) -> Self {
        Pending {
            tunnel,
            quiet_since: now,
            sent: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::secret::ClusterSecret;

    const TOGGLE: Duration = Duration::from_secs(3);

    fn id(name: &str) -> NodeId {
        NodeId::try_from(name.to_owned()).unwrap()
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    fn ids() -> (SecretId, SecretId) {
        (
            ClusterSecret::generate().id(),
            ClusterSecret::generate().id(),
        )
    }

    #[test]
    fn the_rotating_member_switches_each_tunnel_when_the_member_acknowledges() {
        let (old, new) = ids();
        let (b, c) = (id("b"), id("c"));
        let mut a = SecretRotation::new(id("a"), old, None, TOGGLE, at(0));
        assert_eq!(a.rotated(new, [&b, &c], None, at(0)), []);
        assert_eq!(
            a.acknowledged(&b, at(0)),
            Some(RotationStep::Rekey(b.clone()))
        );
        assert_eq!(a.acknowledged(&b, at(0)), None, "switched once");
        // Heard through the new key: b is done.
        assert_eq!(a.heard(&b, Some(new), at(1)), None);
        // c was down: its heartbeat, once back, names the old secret: it is sent the new one,
        // then not again at once.
        assert_eq!(
            a.heard(&c, Some(old), at(1)),
            Some(RotationStep::SendSecret(c.clone()))
        );
        assert_eq!(a.heard(&c, Some(old), at(2)), None);
        assert_eq!(
            a.heard(&c, Some(old), at(32)),
            Some(RotationStep::SendSecret(c.clone()))
        );
        assert_eq!(
            a.acknowledged(&c, at(33)),
            Some(RotationStep::Rekey(c.clone()))
        );
        assert!(a.under_way());
        assert_eq!(a.heard(&c, Some(new), at(34)), None);
        assert!(!a.under_way());
        assert!(!a.is_new(old) || !a.is_new(new));
    }

    #[test]
    fn a_receiving_member_switches_to_the_sender_at_once_and_to_others_by_heartbeat() {
        let (old, new) = ids();
        let (a, c) = (id("a"), id("c"));
        let mut b = SecretRotation::new(id("b"), old, None, TOGGLE, at(0));
        assert!(b.is_new(new));
        assert_eq!(
            b.rotated(new, [&a, &c], Some(&a), at(0)),
            [RotationStep::Rekey(a.clone())]
        );
        assert!(
            !b.is_new(old),
            "the secret it just replaced is not taken back"
        );
        assert_eq!(
            b.heard(&c, Some(new), at(1)),
            Some(RotationStep::Rekey(c.clone()))
        );
        assert_eq!(b.heard(&c, Some(new), at(2)), None);
        assert_eq!(b.heard(&a, Some(new), at(2)), None);
        assert!(!b.under_way());
    }

    #[test]
    fn after_a_lost_acknowledgement_the_lower_id_tries_the_other_key_until_they_meet() {
        let (old, new) = ids();
        let (a, b) = (id("a"), id("b"));
        // a rotated; b switched at once, but its acknowledgement was lost: a's end is old.
        let mut at_a = SecretRotation::new(a.clone(), old, None, TOGGLE, at(0));
        at_a.rotated(new, [&b], None, at(0));
        let mut at_b = SecretRotation::new(b.clone(), old, None, TOGGLE, at(0));
        at_b.rotated(new, [&a], Some(&a), at(0));
        // Nothing gets through. b (the higher id) waits; a tries the new key.
        assert_eq!(at_b.tick(at(10)), []);
        assert_eq!(at_a.tick(at(2)), []);
        assert_eq!(at_a.tick(at(3)), [RotationStep::Rekey(b.clone())]);
        // Now they meet: each hears the other through the new key.
        assert_eq!(at_a.heard(&b, Some(new), at(4)), None);
        assert_eq!(at_b.heard(&a, Some(new), at(4)), None);
        assert!(!at_a.under_way() && !at_b.under_way());
    }

    #[test]
    fn a_restart_in_the_middle_keeps_the_peers_still_pending() {
        let (old, new) = ids();
        let c = id("c");
        let mut restarted = SecretRotation::new(
            id("a"),
            new,
            Some((old, BTreeSet::from([c.clone()]))),
            TOGGLE,
            at(0),
        );
        assert_eq!(
            restarted.heard(&c, Some(old), at(1)),
            Some(RotationStep::SendSecret(c.clone()))
        );
        // Silent for the toggle time: the lower id tries the other key, then back.
        assert_eq!(restarted.tick(at(5)), [RotationStep::Rekey(c.clone())]);
        assert_eq!(
            restarted.tick(at(9)),
            [RotationStep::UsePrevious(c.clone())]
        );
        let done = SecretRotation::new(id("a"), new, Some((old, BTreeSet::new())), TOGGLE, at(0));
        assert!(
            done.is_new(old),
            "no rotation under way: any other secret is news"
        );
    }
}
