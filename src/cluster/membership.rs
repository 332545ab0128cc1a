//! Who belongs to the cluster, as a state machine without I/O.
//!
//! Membership decides three things; the daemon's cluster loop carries them out (the transport,
//! the `peers/` files, the log):
//! - **admission**: a verified join request gets a priority (a member joining again keeps its
//!   own; a newcomer the one after the highest held by the members, this node and the joins in
//!   progress),
//!   the member list and the shared configuration. Refused when this node has no endpoint to
//!   tell the newcomer, when the request uses this node's own id or a member's id with another
//!   WireGuard key, or when a join of that id is already in progress. Once the newcomer
//!   acknowledged, every other member is told, and the newcomer is told the members its
//!   accept did not list (newcomers admitted at the same time).
//! - **learning**: a member announced by the node that admitted it may move (a new endpoint after
//!   a re-join); a member list only adds members not yet known. Nothing ever replaces a known
//!   member's WireGuard key or priority, and a new member whose priority another member holds
//!   is refused: only a node that admitted it assigns a priority, and it assigns a free one.
//!   Nothing is recorded before the transport accepted the member.
//! - **vouching**: a lease message counts only if its sender is a member and claims the
//!   priority recorded for it (a holder of the cluster secret cannot make itself the best
//!   candidate by announcing priority 1).
//! - **gossip**: the member list this node repeats now and then, itself included, so a member
//!   that was down during an announcement catches up.
//! - **removal** (`rustbalance remove`): a removed member is never a member again, by its id or
//!   by its WireGuard key: not learned from a list, not admitted when it joins again, its
//!   messages not counted. Removal is told by any member (the operator may run the command on
//!   any of them) and kept as a record, so a member that missed it is told when its list
//!   still names the removed one.

use std::collections::{BTreeMap, BTreeSet};

use super::messages::PeerInfo;
use super::transport::JoinCandidate;
use super::wg_keys::WgPublicKey;
use super::{NodeId, Priority};

/// How a peer became known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Announced by the member that admitted it: replaces what was known.
    Announced,
    /// Listed in a member's repeated list: only adds.
    Listed,
}

/// Why a join request is not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinRefusal {
    #[error("[cluster] endpoint is not set on this node, so the members could not tell the newcomer how to reach it")]
    NoEndpoint,
    #[error("it uses this node's own id {0}")]
    OwnId(NodeId),
    #[error("a join of {0} is already in progress")]
    InProgress(NodeId),
    #[error("{0} is a member with another WireGuard key")]
    IdTaken(NodeId),
    #[error("{0} was removed from the cluster (by its id or its WireGuard key)")]
    Removed(NodeId),
}

/// Why a member cannot be removed on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemovalRefusal {
    #[error("{0} is this node: run the command on another member")]
    OwnId(NodeId),
    #[error("{0} is not a member of this cluster (see `rustbalance status`)")]
    NotAMember(NodeId),
}

/// What a removal told by a member changes here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// The member is removed now: forget it (its `peers/` file, the election, the transport's
    /// use of it) and keep the record.
    News(PeerInfo),
    /// Already removed here.
    Known,
}

/// What to do with a member learned from a member's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Learning {
    /// Record it (once the transport accepted it).
    News,
    /// Nothing new.
    Known,
    /// Refused: see the reason.
    Refused(MemberRefusal),
}

/// Why a member learned from a message is not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberRefusal {
    #[error("it would replace the WireGuard key of member {0}")]
    KeyChange(NodeId),
    #[error("it would change the priority of member {id} from {recorded} to {claimed}")]
    PriorityChange {
        id: NodeId,
        recorded: Priority,
        claimed: Priority,
    },
    #[error("{id} claims priority {priority}, which {holder} holds")]
    PriorityTaken {
        id: NodeId,
        priority: Priority,
        holder: NodeId,
    },
    #[error("{0} was removed from the cluster")]
    Removed(NodeId),
}

/// Why a lease message does not count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Impostor {
    #[error("{0} is not a member of this cluster")]
    NotAMember(NodeId),
    #[error("{from} claims priority {claimed}, but it was admitted with priority {recorded}")]
    WrongPriority {
        from: NodeId,
        claimed: Priority,
        recorded: Priority,
    },
}

/// What to answer an admitted newcomer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The newcomer as it will be recorded once it acknowledged.
    pub newcomer: PeerInfo,
    /// Every member it must know, this node included.
    pub members: Vec<PeerInfo>,
}

/// A newcomer being admitted: the priority it was offered and the members its accept listed.
#[derive(Debug, Clone)]
struct PendingJoin {
    priority: Priority,
    listed: BTreeSet<NodeId>,
}

/// Who must hear of a completed join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JoinNews {
    /// The other members, to be told of the newcomer.
    pub announce_to: Vec<NodeId>,
    /// The members the newcomer's accept did not list (their joins completed while it was
    /// being admitted), to be told to the newcomer: nobody else may know them both.
    pub missed_by_newcomer: Vec<PeerInfo>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Membership {
    /// This node as members see it; `None` without `[cluster] endpoint`.
    me: Option<PeerInfo>,
    my_id: NodeId,
    my_priority: Priority,
    members: BTreeMap<NodeId, PeerInfo>,
    /// Members removed from the cluster, as they were recorded.
    removed: BTreeMap<NodeId, PeerInfo>,
    /// Newcomers being admitted.
    pending_joins: BTreeMap<NodeId, PendingJoin>,
}

impl Membership {
    /// `me`: this node's own record, if it has an endpoint; `members`: the other members;
    /// `removed`: the members removed from the cluster.
    pub fn new(
        my_id: NodeId,
        my_priority: Priority,
        me: Option<PeerInfo>,
        members: impl IntoIterator<Item = PeerInfo>,
        removed: impl IntoIterator<Item = PeerInfo>,
    ) -> Self {
        let removed: BTreeMap<NodeId, PeerInfo> = removed
            .into_iter()
            .map(|peer| (peer.node_id.clone(), peer))
            .collect();
        Membership {
            me,
            members: members
                .into_iter()
                .filter(|peer| peer.node_id != my_id && !removed.contains_key(&peer.node_id))
                .map(|peer| (peer.node_id.clone(), peer))
                .collect(),
            removed,
            my_id,
            my_priority,
            pending_joins: BTreeMap::new(),
        }
    }

    /// The other members, by node id.
    pub fn members(&self) -> impl Iterator<Item = &PeerInfo> {
        self.members.values()
    }

    /// What is known of member `id`.
    pub fn member(&self, id: &NodeId) -> Option<&PeerInfo> {
        self.members.get(id)
    }

    /// What to do with `peer`, learned from a member's message (record it after the transport
    /// accepted it: see [`Membership::adopt`]).
    pub fn learn(&self, peer: &PeerInfo, how: Learned) -> Learning {
        if peer.node_id == self.my_id {
            return Learning::Known;
        }
        if self.is_removed(&peer.node_id, &peer.public_key) {
            return Learning::Refused(MemberRefusal::Removed(peer.node_id.clone()));
        }
        match self.members.get(&peer.node_id) {
            Some(known) if known.public_key != peer.public_key => {
                Learning::Refused(MemberRefusal::KeyChange(peer.node_id.clone()))
            }
            Some(known) if known.priority != peer.priority => {
                Learning::Refused(MemberRefusal::PriorityChange {
                    id: peer.node_id.clone(),
                    recorded: known.priority,
                    claimed: peer.priority,
                })
            }
            Some(known) if how == Learned::Announced && known != peer => Learning::News,
            Some(_) => Learning::Known,
            None => match self.holder_of(peer.priority) {
                Some(holder) => Learning::Refused(MemberRefusal::PriorityTaken {
                    id: peer.node_id.clone(),
                    priority: peer.priority,
                    holder,
                }),
                None => Learning::News,
            },
        }
    }

    /// Whether a lease message from `from` claiming `claimed` (if it carries a priority)
    /// counts: only from a member, with the priority it was admitted with.
    pub fn vouch(&self, from: &NodeId, claimed: Option<Priority>) -> Result<(), Impostor> {
        let member = self
            .members
            .get(from)
            .ok_or_else(|| Impostor::NotAMember(from.clone()))?;
        match claimed {
            Some(claimed) if claimed != member.priority => Err(Impostor::WrongPriority {
                from: from.clone(),
                claimed,
                recorded: member.priority,
            }),
            _ => Ok(()),
        }
    }

    /// The node holding `priority`: this one or a member.
    fn holder_of(&self, priority: Priority) -> Option<NodeId> {
        if priority == self.my_priority {
            return Some(self.my_id.clone());
        }
        self.members
            .values()
            .find(|peer| peer.priority == priority)
            .map(|peer| peer.node_id.clone())
    }

    /// Whether the node with this id or this WireGuard key was removed.
    pub fn is_removed(&self, id: &NodeId, key: &WgPublicKey) -> bool {
        self.removed.contains_key(id)
            || self
                .removed
                .values()
                .any(|removed| removed.public_key == *key)
    }

    /// The record of removed member `id`.
    pub fn removed(&self, id: &NodeId) -> Option<&PeerInfo> {
        self.removed.get(id)
    }

    /// The operator removes member `id` on this node: its record, to keep and to tell every
    /// member.
    pub fn remove(&mut self, id: &NodeId) -> Result<PeerInfo, RemovalRefusal> {
        if *id == self.my_id {
            return Err(RemovalRefusal::OwnId(id.clone()));
        }
        let record = self
            .members
            .remove(id)
            .ok_or_else(|| RemovalRefusal::NotAMember(id.clone()))?;
        self.removed.insert(id.clone(), record.clone());
        Ok(record)
    }

    /// A member says `record` was removed (never this node: the caller stops first). The
    /// record kept is the one this node knew, if it knew the member.
    pub fn removed_by_member(&mut self, record: &PeerInfo) -> Removal {
        if self.removed.contains_key(&record.node_id) {
            return Removal::Known;
        }
        let record = self
            .members
            .remove(&record.node_id)
            .unwrap_or_else(|| record.clone());
        self.removed.insert(record.node_id.clone(), record.clone());
        Removal::News(record)
    }

    /// Record a member the transport now knows.
    pub fn adopt(&mut self, peer: PeerInfo) {
        self.members.insert(peer.node_id.clone(), peer);
    }

    /// The member list to repeat to every member: the members and this node.
    pub fn gossip(&self) -> Vec<PeerInfo> {
        self.members
            .values()
            .cloned()
            .chain(self.me.clone())
            .collect()
    }

    /// Admit `candidate` (whose request carried a valid MAC), or say why not.
    pub fn admit(&mut self, candidate: &JoinCandidate) -> Result<Admission, JoinRefusal> {
        let me = self.me.clone().ok_or(JoinRefusal::NoEndpoint)?;
        if candidate.node_id == self.my_id {
            return Err(JoinRefusal::OwnId(self.my_id.clone()));
        }
        if self.pending_joins.contains_key(&candidate.node_id) {
            return Err(JoinRefusal::InProgress(candidate.node_id.clone()));
        }
        if self.is_removed(&candidate.node_id, &candidate.public_key) {
            return Err(JoinRefusal::Removed(candidate.node_id.clone()));
        }
        let priority = match self.members.get(&candidate.node_id) {
            Some(known) if known.public_key != candidate.public_key => {
                return Err(JoinRefusal::IdTaken(candidate.node_id.clone()));
            }
            Some(known) => known.priority,
            None => Priority::next_free(
                self.members
                    .values()
                    .map(|peer| peer.priority)
                    .chain(self.pending_joins.values().map(|pending| pending.priority))
                    .chain([self.my_priority]),
            ),
        };
        let mut members: Vec<PeerInfo> = self
            .members
            .values()
            .filter(|peer| peer.node_id != candidate.node_id)
            .cloned()
            .collect();
        self.pending_joins.insert(
            candidate.node_id.clone(),
            PendingJoin {
                priority,
                listed: members.iter().map(|peer| peer.node_id.clone()).collect(),
            },
        );
        members.push(me);
        Ok(Admission {
            newcomer: PeerInfo {
                node_id: candidate.node_id.clone(),
                endpoint: candidate.endpoint.clone(),
                public_key: candidate.public_key,
                priority,
            },
            members,
        })
    }

    /// The newcomer acknowledged its admission (`acknowledged`), or never did. Returns who
    /// must hear of it, and of whom it must hear.
    pub fn join_done(&mut self, newcomer: &PeerInfo, acknowledged: bool) -> JoinNews {
        let listed = self
            .pending_joins
            .remove(&newcomer.node_id)
            .map(|pending| pending.listed)
            .unwrap_or_default();
        if !acknowledged {
            return JoinNews::default();
        }
        self.members
            .insert(newcomer.node_id.clone(), newcomer.clone());
        let others = self
            .members
            .values()
            .filter(|peer| peer.node_id != newcomer.node_id);
        JoinNews {
            announce_to: others.clone().map(|peer| peer.node_id.clone()).collect(),
            missed_by_newcomer: others
                .filter(|peer| !listed.contains(&peer.node_id))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wg_keys::generate_keypair;
    use crate::cluster::Endpoint;

    fn id(name: &str) -> NodeId {
        NodeId::try_from(name.to_owned()).unwrap()
    }

    fn priority(p: u32) -> Priority {
        Priority::try_from(p).unwrap()
    }

    fn peer(name: &str, p: u32) -> PeerInfo {
        PeerInfo {
            node_id: id(name),
            endpoint: format!("{name}.example.net:51820").parse().unwrap(),
            public_key: generate_keypair().1,
            priority: priority(p),
        }
    }

    fn candidate(name: &str) -> JoinCandidate {
        JoinCandidate {
            node_id: id(name),
            public_key: generate_keypair().1,
            endpoint: format!("{name}.example.net:51820")
                .parse::<Endpoint>()
                .unwrap(),
            source: "127.0.0.1:4000".parse().unwrap(),
        }
    }

    fn membership() -> Membership {
        Membership::new(
            id("a"),
            priority(1),
            Some(peer("a", 1)),
            [peer("b", 2), peer("c", 4)],
            [],
        )
    }

    #[test]
    fn a_removed_member_is_never_a_member_again_by_id_or_by_key() {
        let mut m = membership();
        assert_eq!(m.remove(&id("a")), Err(RemovalRefusal::OwnId(id("a"))));
        assert_eq!(m.remove(&id("z")), Err(RemovalRefusal::NotAMember(id("z"))));
        let record = m.remove(&id("c")).unwrap();
        assert!(m.member(&id("c")).is_none());
        assert_eq!(m.removed(&id("c")), Some(&record));
        assert_eq!(m.vouch(&id("c"), None), Err(Impostor::NotAMember(id("c"))));
        assert_eq!(
            m.learn(&record, Learned::Listed),
            Learning::Refused(MemberRefusal::Removed(id("c")))
        );
        // Its old key under a fresh id, or its id with a fresh key: refused either way.
        let mut same_key = candidate("c2");
        same_key.public_key = record.public_key;
        assert_eq!(m.admit(&same_key), Err(JoinRefusal::Removed(id("c2"))));
        assert_eq!(m.admit(&candidate("c")), Err(JoinRefusal::Removed(id("c"))));
        assert!(!m.gossip().iter().any(|p| p.node_id == id("c")));
    }

    #[test]
    fn a_removal_told_by_a_member_is_news_once_and_survives_a_restart() {
        let mut m = membership();
        let b = m.member(&id("b")).unwrap().clone();
        let told = PeerInfo {
            public_key: generate_keypair().1,
            ..b.clone()
        };
        // The record kept is the one this node knew (its real key), not the message's.
        assert_eq!(m.removed_by_member(&told), Removal::News(b.clone()));
        assert_eq!(m.removed_by_member(&told), Removal::Known);
        // A member nobody here knew is recorded too, so it is never learned later.
        let unknown = peer("x", 9);
        assert_eq!(
            m.removed_by_member(&unknown),
            Removal::News(unknown.clone())
        );
        let restarted = Membership::new(
            id("a"),
            priority(1),
            Some(peer("a", 1)),
            [b.clone(), peer("c", 4)],
            [b.clone(), unknown],
        );
        assert!(restarted.member(&id("b")).is_none(), "a stale peers/ file");
        assert!(restarted.is_removed(&id("b"), &b.public_key));
    }

    #[test]
    fn a_newcomer_gets_the_next_priority_and_every_member() {
        let mut m = membership();
        let admission = m.admit(&candidate("d")).unwrap();
        assert_eq!(admission.newcomer.priority, priority(5));
        let mut names: Vec<_> = admission
            .members
            .iter()
            .map(|p| p.node_id.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "b", "c"]);
        // A second newcomer while the first is pending gets another priority.
        assert_eq!(
            m.admit(&candidate("e")).unwrap().newcomer.priority,
            priority(6)
        );
        assert_eq!(
            m.admit(&candidate("d")),
            Err(JoinRefusal::InProgress(id("d")))
        );
    }

    #[test]
    fn a_member_joining_again_keeps_its_priority_and_its_id_is_its_alone() {
        let mut m = membership();
        let mut again = candidate("c");
        again.public_key = m.member(&id("c")).unwrap().public_key;
        assert_eq!(m.admit(&again).unwrap().newcomer.priority, priority(4));
        let mut m = membership();
        assert_eq!(
            m.admit(&candidate("c")),
            Err(JoinRefusal::IdTaken(id("c"))),
            "the same id with another key"
        );
    }

    #[test]
    fn lease_messages_count_only_from_members_with_their_recorded_priority() {
        let m = membership();
        assert_eq!(m.vouch(&id("b"), Some(priority(2))), Ok(()));
        assert_eq!(m.vouch(&id("b"), None), Ok(()));
        assert_eq!(
            m.vouch(&id("b"), Some(priority(1))),
            Err(Impostor::WrongPriority {
                from: id("b"),
                claimed: priority(1),
                recorded: priority(2)
            })
        );
        assert_eq!(
            m.vouch(&id("0"), Some(priority(1))),
            Err(Impostor::NotAMember(id("0")))
        );
    }

    #[test]
    fn joins_are_refused_without_an_endpoint_or_under_this_nodes_id() {
        let mut without = Membership::new(id("a"), priority(1), None, [], []);
        assert_eq!(without.admit(&candidate("d")), Err(JoinRefusal::NoEndpoint));
        assert_eq!(
            membership().admit(&candidate("a")),
            Err(JoinRefusal::OwnId(id("a")))
        );
    }

    #[test]
    fn an_acknowledged_newcomer_is_announced_to_the_others() {
        let mut m = membership();
        let newcomer = m.admit(&candidate("d")).unwrap().newcomer;
        let news = m.join_done(&newcomer, true);
        assert_eq!(news.announce_to, [id("b"), id("c")]);
        assert!(news.missed_by_newcomer.is_empty(), "its accept listed them");
        assert!(m.members().any(|p| p.node_id == id("d")));
        // One that never acknowledged is forgotten, and may try again.
        let other = m.admit(&candidate("e")).unwrap().newcomer;
        assert_eq!(m.join_done(&other, false), JoinNews::default());
        assert!(m.admit(&candidate("e")).is_ok());
    }

    #[test]
    fn newcomers_admitted_together_are_told_of_each_other() {
        let mut m = membership();
        let d = m.admit(&candidate("d")).unwrap();
        let e = m.admit(&candidate("e")).unwrap();
        let f = m.admit(&candidate("f")).unwrap();
        assert!(!e.members.iter().any(|p| p.node_id == id("d")));
        // d completes first: it knew everyone there was.
        let news = m.join_done(&d.newcomer, true);
        assert!(news.missed_by_newcomer.is_empty());
        assert_eq!(news.announce_to, [id("b"), id("c")]);
        // f next: its accept did not list d.
        let news = m.join_done(&f.newcomer, true);
        assert_eq!(news.announce_to, [id("b"), id("c"), id("d")]);
        assert_eq!(news.missed_by_newcomer, std::slice::from_ref(&d.newcomer));
        // e last: it missed d and f, and d and f are told of e.
        let news = m.join_done(&e.newcomer, true);
        assert_eq!(news.announce_to, [id("b"), id("c"), id("d"), id("f")]);
        assert_eq!(news.missed_by_newcomer, [d.newcomer, f.newcomer]);
    }

    #[test]
    fn announcements_move_members_and_lists_only_add() {
        let m = membership();
        let mut moved = m.member(&id("b")).unwrap().clone();
        moved.endpoint = "elsewhere.example.net:51820".parse().unwrap();
        assert_eq!(m.learn(&moved, Learned::Announced), Learning::News);
        assert_eq!(m.learn(&moved, Learned::Listed), Learning::Known);
        assert_eq!(m.learn(&peer("z", 9), Learned::Listed), Learning::News);
        assert_eq!(m.learn(&peer("a", 1), Learned::Announced), Learning::Known);
    }

    #[test]
    fn no_message_replaces_a_members_key_or_takes_a_held_priority() {
        let m = membership();
        for how in [Learned::Announced, Learned::Listed] {
            assert_eq!(
                m.learn(&peer("b", 2), how),
                Learning::Refused(MemberRefusal::KeyChange(id("b")))
            );
            let mut promoted = m.member(&id("c")).unwrap().clone();
            promoted.priority = priority(1);
            assert!(matches!(
                m.learn(&promoted, how),
                Learning::Refused(MemberRefusal::PriorityChange { .. })
            ));
            // A stranger listed with this node's priority, or a member's.
            assert_eq!(
                m.learn(&peer("0", 1), how),
                Learning::Refused(MemberRefusal::PriorityTaken {
                    id: id("0"),
                    priority: priority(1),
                    holder: id("a")
                })
            );
            assert!(matches!(
                m.learn(&peer("x", 4), how),
                Learning::Refused(MemberRefusal::PriorityTaken { .. })
            ));
        }
    }

    #[test]
    fn gossip_lists_the_members_and_this_node() {
        let names: Vec<String> = membership()
            .gossip()
            .iter()
            .map(|p| p.node_id.to_string())
            .collect();
        assert_eq!(names, ["b", "c", "a"]);
    }
}
