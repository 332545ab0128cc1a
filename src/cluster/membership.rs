//! Who belongs to the cluster, as a state machine without I/O.
//!
//! Membership decides three things; the daemon's cluster loop carries them out (the transport,
//! the `peers/` files, the log):
//! - **admission**: a verified join request gets a priority (a member joining again keeps its
//!   own; a newcomer the one after the highest held by the members, this node and the joins in
//!   progress),
//!   the member list and the shared configuration. Refused when this node has no endpoint to
//!   tell the newcomer, when the request uses this node's own id, or when a join of that id is
//!   already in progress. Once the newcomer acknowledged, every other member is told.
//! - **learning**: a member announced by the node that admitted it replaces what was known of it
//!   (a new key or endpoint after a re-join); a member list only adds members not yet known.
//!   Nothing is recorded before the transport accepted the member.
//! - **gossip**: the member list this node repeats now and then, itself included, so a member
//!   that was down during an announcement catches up.

use std::collections::BTreeMap;

use super::messages::PeerInfo;
use super::transport::JoinCandidate;
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
}

/// What to answer an admitted newcomer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The newcomer as it will be recorded once it acknowledged.
    pub newcomer: PeerInfo,
    /// Every member it must know, this node included.
    pub members: Vec<PeerInfo>,
}

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct Membership {
    /// This node as members see it; `None` without `[cluster] endpoint`.
    me: Option<PeerInfo>,
    my_id: NodeId,
    my_priority: Priority,
    members: BTreeMap<NodeId, PeerInfo>,
    /// Newcomers being admitted, with the priority they were offered.
    pending_joins: BTreeMap<NodeId, Priority>,
}

impl Membership {
    /// `me`: this node's own record, if it has an endpoint; `members`: the other members.
    pub fn new(
        my_id: NodeId,
        my_priority: Priority,
        me: Option<PeerInfo>,
        members: impl IntoIterator<Item = PeerInfo>,
    ) -> Self {
        Membership {
            me,
            members: members
                .into_iter()
                .filter(|peer| peer.node_id != my_id)
                .map(|peer| (peer.node_id.clone(), peer))
                .collect(),
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

    /// Whether `peer`, learned from a member's message, is news to record (after the transport
    /// accepted it: see [`Membership::adopt`]).
    pub fn is_news(&self, peer: &PeerInfo, how: Learned) -> bool {
        if peer.node_id == self.my_id {
            return false;
        }
        match self.members.get(&peer.node_id) {
            None => true,
            Some(known) => how == Learned::Announced && known != peer,
        }
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
        let priority = match self.members.get(&candidate.node_id) {
            Some(known) => known.priority,
            None => Priority::next_free(
                self.members
                    .values()
                    .map(|peer| peer.priority)
                    .chain(self.pending_joins.values().copied())
                    .chain([self.my_priority]),
            ),
        };
        self.pending_joins
            .insert(candidate.node_id.clone(), priority);
        let mut members: Vec<PeerInfo> = self
            .members
            .values()
            .filter(|peer| peer.node_id != candidate.node_id)
            .cloned()
            .collect();
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

    /// The newcomer acknowledged its admission (`acknowledged`), or never did. Returns the
    /// members to announce it to.
    pub fn join_done(&mut self, newcomer: &PeerInfo, acknowledged: bool) -> Vec<NodeId> {
        self.pending_joins.remove(&newcomer.node_id);
        if !acknowledged {
            return Vec::new();
        }
        self.members
            .insert(newcomer.node_id.clone(), newcomer.clone());
        self.members
            .keys()
            .filter(|id| **id != newcomer.node_id)
            .cloned()
            .collect()
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
        )
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
    fn a_member_joining_again_keeps_its_priority() {
        let mut m = membership();
        assert_eq!(
            m.admit(&candidate("c")).unwrap().newcomer.priority,
            priority(4)
        );
    }

    #[test]
    fn joins_are_refused_without_an_endpoint_or_under_this_nodes_id() {
        let mut without = Membership::new(id("a"), priority(1), None, []);
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
        let mut told = m.join_done(&newcomer, true);
        told.sort();
        assert_eq!(told, [id("b"), id("c")]);
        assert!(m.members().any(|p| p.node_id == id("d")));
        // One that never acknowledged is forgotten, and may try again.
        let other = m.admit(&candidate("e")).unwrap().newcomer;
        assert!(m.join_done(&other, false).is_empty());
        assert!(m.admit(&candidate("e")).is_ok());
    }

    #[test]
    fn announcements_replace_and_lists_only_add() {
        let m = membership();
        let mut moved = peer("b", 2);
        moved.endpoint = "elsewhere.example.net:51820".parse().unwrap();
        assert!(m.is_news(&moved, Learned::Announced));
        assert!(!m.is_news(&moved, Learned::Listed));
        assert!(m.is_news(&peer("z", 9), Learned::Listed));
        assert!(!m.is_news(&peer("a", 1), Learned::Announced));
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
