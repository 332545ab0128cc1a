//! The members this node has tunnels to, and how an incoming packet finds its tunnel.
//!
//! Every peer has one boringtun `Tunn`, created with a 24-bit index of ours. WireGuard puts that
//! index (shifted left by 8, the low byte counting sessions) into every packet the peer sends us
//! after the handshake, so a packet's receiver index leads straight to its tunnel. A handshake
//! initiation carries no such index; it is matched by the public key it reveals to us
//! (ARCHITECTURE.md, "WireGuard in process"). Hence the three ways in: by node id, by index, by
//! key.

use std::collections::HashMap;
use std::net::SocketAddr;

use boringtun::noise::Tunn;
use rand::Rng as _;

use super::reliable::SeenIds;
use super::{PeerConfig, PeerError};
use crate::cluster::wg_keys::WgPublicKey;
use crate::cluster::NodeId;

/// Tunnel indexes are 24 bits wide: boringtun keeps the low 8 bits of the 32-bit WireGuard
/// index for its session counter.
const INDEX_SPACE: u32 = 1 << 24;

/// One member of the cluster as this node sees it.
pub(super) struct Peer {
    pub(super) node_id: NodeId,
    pub(super) public_key: WgPublicKey,
    pub(super) tunn: Tunn,
    /// Where its packets last came from, or where the config says it is. Changed only by the
    /// config or by a packet that authenticated as this peer.
    pub(super) endpoint: Option<SocketAddr>,
    /// Ids of its acknowledged messages already handed to the program.
    pub(super) seen: SeenIds,
}

/// What [`PeerTable::insert`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Inserted {
    /// A new tunnel: to a new peer, or to a known one that now has a different key.
    NewTunnel,
    /// The peer was known with this key; at most its endpoint changed.
    Updated,
}

/// All peers, reachable by node id, tunnel index and public key.
pub(super) struct PeerTable {
    peers: HashMap<NodeId, (u32, Peer)>,
    by_index: HashMap<u32, NodeId>,
    by_key: HashMap<WgPublicKey, NodeId>,
    next_index: u32,
}

impl PeerTable {
    pub(super) fn new() -> Self {
        PeerTable {
            peers: HashMap::new(),
            by_index: HashMap::new(),
            by_key: HashMap::new(),
            // A random start, so a restarted node does not reuse the indexes its peers may
            // still send stale packets to.
            next_index: rand::rng().next_u32() % INDEX_SPACE,
        }
    }

    /// Adds `config`, or updates the peer with its node id. `make_tunn` builds the tunnel
    /// with the index it is given when a new one is needed.
    pub(super) fn insert(
        &mut self,
        config: PeerConfig,
        make_tunn: impl FnOnce(u32) -> Tunn,
    ) -> Result<Inserted, PeerError> {
        if let Some(owner) = self.by_key.get(&config.public_key) {
            if *owner != config.node_id {
                return Err(PeerError::KeyInUse {
                    key: config.public_key,
                    owner: owner.clone(),
                });
            }
        }
        if let Some((_, peer)) = self.peers.get_mut(&config.node_id) {
            if peer.public_key == config.public_key {
                if config.endpoint.is_some() {
                    peer.endpoint = config.endpoint;
                }
                return Ok(Inserted::Updated);
            }
            self.remove(&config.node_id);
        }
        let index = self.free_index();
        let peer = Peer {
            node_id: config.node_id.clone(),
            public_key: config.public_key,
            tunn: make_tunn(index),
            endpoint: config.endpoint,
            seen: SeenIds::default(),
        };
        self.by_index.insert(index, config.node_id.clone());
        self.by_key
            .insert(config.public_key, config.node_id.clone());
        self.peers.insert(config.node_id, (index, peer));
        Ok(Inserted::NewTunnel)
    }

    /// Gives the peer `node_id` a new tunnel (under a fresh index, so packets of the old
    /// session find no tunnel), keeping its key, endpoint and message memory. False if there
    /// is no such peer.
    pub(super) fn retunnel(
        &mut self,
        node_id: &NodeId,
        make_tunn: impl FnOnce(u32) -> Tunn,
    ) -> bool {
        let Some((old_index, _)) = self.peers.get(node_id) else {
            return false;
        };
        let old_index = *old_index;
        let index = self.free_index();
        let Some((slot, peer)) = self.peers.get_mut(node_id) else {
            return false;
        };
        peer.tunn = make_tunn(index);
        *slot = index;
        self.by_index.remove(&old_index);
        self.by_index.insert(index, node_id.clone());
        true
    }

    pub(super) fn remove(&mut self, node_id: &NodeId) {
        if let Some((index, peer)) = self.peers.remove(node_id) {
            self.by_index.remove(&index);
            self.by_key.remove(&peer.public_key);
        }
    }

    pub(super) fn contains(&self, node_id: &NodeId) -> bool {
        self.peers.contains_key(node_id)
    }

    pub(super) fn get_mut(&mut self, node_id: &NodeId) -> Option<&mut Peer> {
        self.peers.get_mut(node_id).map(|(_, peer)| peer)
    }

    /// The peer whose tunnel has this 32-bit WireGuard receiver index.
    pub(super) fn id_by_receiver_index(&self, receiver_index: u32) -> Option<&NodeId> {
        self.by_index.get(&(receiver_index >> 8))
    }

    pub(super) fn id_by_key(&self, key: &WgPublicKey) -> Option<&NodeId> {
        self.by_key.get(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values().map(|(_, peer)| peer)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers.values_mut().map(|(_, peer)| peer)
    }

    /// The next index no current tunnel uses.
    fn free_index(&mut self) -> u32 {
        // There are far fewer peers than indexes, so this loop ends after a step or two.
        loop {
            let index = self.next_index;
            self.next_index = (self.next_index + 1) % INDEX_SPACE;
            if !self.by_index.contains_key(&index) {
                return index;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::wg_keys::{generate_keypair, WgPrivateKey};

    fn node(id: &str) -> NodeId {
        NodeId::try_from(id.to_owned()).unwrap()
    }

    fn config(id: &str, key: WgPublicKey, port: Option<u16>) -> PeerConfig {
        PeerConfig {
            node_id: node(id),
            public_key: key,
            endpoint: port.map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
        }
    }

    fn tunn_to(peer: WgPublicKey) -> impl FnOnce(u32) -> Tunn {
        let me = WgPrivateKey::generate();
        move |index| {
            Tunn::new(
                me.as_x25519().clone(),
                peer.to_x25519(),
                None,
                None,
                index,
                None,
            )
        }
    }

    #[test]
    fn peers_are_found_by_id_index_and_key() {
        let mut table = PeerTable::new();
        let key = generate_keypair().1;
        let mut index = None;
        let inserted = table.insert(config("beta", key, Some(1)), |i| {
            index = Some(i);
            tunn_to(key)(i)
        });
        assert_eq!(inserted, Ok(Inserted::NewTunnel));
        let index = index.unwrap();
        // Session counter in the low byte does not matter.
        assert_eq!(
            table.id_by_receiver_index((index << 8) | 3),
            Some(&node("beta"))
        );
        assert_eq!(table.id_by_key(&key), Some(&node("beta")));
        assert!(table.get_mut(&node("beta")).is_some());
    }

    #[test]
    fn same_key_updates_and_new_key_replaces_the_tunnel() {
        let mut table = PeerTable::new();
        let key = generate_keypair().1;
        table
            .insert(config("beta", key, Some(1)), tunn_to(key))
            .unwrap();
        assert_eq!(
            table.insert(config("beta", key, None), tunn_to(key)),
            Ok(Inserted::Updated)
        );
        assert_eq!(
            table.get_mut(&node("beta")).unwrap().endpoint,
            Some(SocketAddr::from(([127, 0, 0, 1], 1))),
            "no endpoint in the update keeps the known one"
        );
        let new_key = generate_keypair().1;
        assert_eq!(
            table.insert(config("beta", new_key, None), tunn_to(new_key)),
            Ok(Inserted::NewTunnel)
        );
        assert_eq!(table.id_by_key(&key), None);
        assert_eq!(table.id_by_key(&new_key), Some(&node("beta")));
        assert_eq!(table.by_index.len(), 1);
    }

    #[test]
    fn a_key_belongs_to_one_node() {
        let mut table = PeerTable::new();
        let key = generate_keypair().1;
        table
            .insert(config("beta", key, None), tunn_to(key))
            .unwrap();
        assert_eq!(
            table.insert(config("gamma", key, None), tunn_to(key)),
            Err(PeerError::KeyInUse {
                key,
                owner: node("beta")
            })
        );
    }
}
