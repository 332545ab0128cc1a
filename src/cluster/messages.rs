//! What cluster nodes say to each other, and how it looks on the wire.
//!
//! Every message between two members travels as JSON inside their WireGuard tunnel
//! (`cluster::transport`, ARCHITECTURE.md, "WireGuard in process"), so a message that arrives here
//! has already been authenticated and decrypted; what remains is to parse it without trusting it.
//! JSON keeps the protocol readable in a packet capture of the decrypted tunnel and easy to extend;
//! the `type` field names the message. Unknown types and unknown fields are rejected rather than
//! ignored, so two nodes running incompatible versions fail loudly instead of half-understanding
//! each other.
//!
//! WireGuard does not retransmit, so the messages whose loss would leave the cluster confused
//! (lease claims and releases, peer changes, join answers) carry a [`MsgId`]: the receiver
//! answers with an [`Ack`] and forgets duplicates, and the sender repeats the message until the
//! ack arrives. Heartbeats need no ack: the next one is ten seconds away.
//!
//! One message travels before any tunnel exists: a node's [`JoinRequest`], sent in clear UDP
//! to a member of the cluster it wants to join. It is authenticated by an HMAC under the cluster
//! secret instead of by WireGuard, and starts with a byte no WireGuard packet starts with.

use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::Rng as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config_sync::SharedConfig;
use super::election::{Heartbeat, LeaseClaim, LeaseMessage, LeaseRelease};
use super::secret::ClusterSecret;
use super::wg_keys::WgPublicKey;
pub use super::Role;
use super::{Endpoint, NodeId, Priority};

/// The largest encoded message we send or parse, in bytes.
///
/// A UDP datagram holds at most 65 507 bytes; WireGuard adds 32 and our IPv4 framing 20. Half
/// of that leaves room for a peer list of hundreds of nodes while bounding what a confused or
/// malicious peer can make us parse.
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;

/// The first byte of a clear-text join request datagram. WireGuard packets start with their
/// type, 1 to 4, followed by three zero bytes, so an `J` (0x4a) can never be mistaken for one.
pub const JOIN_REQUEST_TAG: u8 = b'J';

/// Identifies one acknowledged message, so its ack can be matched and its resends recognised.
///
/// Drawn at random rather than counted: a node that restarts would otherwise reuse the ids its
/// peers still remember as already processed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MsgId(u64);

impl MsgId {
    /// A fresh random id.
    pub fn random() -> Self {
        MsgId(rand::rng().next_u64())
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Every message that travels inside the cluster's WireGuard tunnels. The election's three
/// messages are carried as the election's own types.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Message {
    Heartbeat(Heartbeat),
    LeaseClaim {
        claim: LeaseClaim,
        msg_id: MsgId,
    },
    LeaseRelease {
        release: LeaseRelease,
        msg_id: MsgId,
    },
    PeerAnnounce(PeerAnnounce),
    PeerList(PeerList),
    JoinAccept(JoinAccept),
    SharedConfigUpdate(SharedConfigUpdate),
    MemberRemoved(MemberRemoved),
    SecretUpdate(SecretUpdate),
    Ack(Ack),
}

/// Everything a node needs to reach another member and open a tunnel to it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerInfo {
    pub node_id: NodeId,
    pub endpoint: Endpoint,
    pub public_key: WgPublicKey,
    pub priority: Priority,
}

/// "A member joined (or changed its endpoint or key)": sent by the node that accepted it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerAnnounce {
    pub peer: PeerInfo,
    pub msg_id: MsgId,
}

/// The sender's whole view of the membership, so peers can repair what they missed.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerList {
    pub peers: Vec<PeerInfo>,
    pub msg_id: MsgId,
}

/// The answer to an accepted [`JoinRequest`], sent through the tunnel the accepting node opened
/// to the newcomer, so only the holder of the newcomer's private key can read it.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinAccept {
    /// The newcomer's publisher priority, chosen by the accepting node.
    pub assigned_priority: Priority,
    /// The members the newcomer should open tunnels to (the accepting node included).
    pub peers: Vec<PeerInfo>,
    /// The cluster's shared configuration (backends, timing, health, Tor settings) as
    /// config.toml text, with its version. The text is opaque here: the config module owns its
    /// shape and validates it, so the protocol need not change when the configuration grows.
    pub config: SharedConfig,
    /// The publisher as the accepting node knows it, for the newcomer to show.
    pub publisher: Option<NodeId>,
    pub msg_id: MsgId,
}

/// "This is the cluster's shared configuration now": sent by the member where it was made to
/// every other member, and by any member to one whose heartbeat shows an older version
/// (`config_sync`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedConfigUpdate {
    pub config: SharedConfig,
    pub msg_id: MsgId,
}

/// "This member is removed from the cluster": sent by the member where the operator removed
/// it to every other member, by any member to one whose list still names it, and to the
/// removed node itself, which stops.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRemoved {
    pub member: PeerInfo,
    pub msg_id: MsgId,
}

/// "This is the cluster secret from now on" (`rustbalance rotate-secret`): sent through each
/// member's tunnel, still under the previous secret's key (`cluster::secret_rotation`).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretUpdate {
    #[serde(with = "secret_base64")]
    pub secret: ClusterSecret,
    pub msg_id: MsgId,
}

/// The cluster secret on the wire: base64 inside the (encrypted) tunnel.
mod secret_base64 {
    use super::*;
    use zeroize::Zeroizing;

    pub fn serialize<S: Serializer>(
        secret: &ClusterSecret,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&Zeroizing::new(BASE64.encode(secret.as_bytes())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<ClusterSecret, D::Error> {
        let text = Zeroizing::new(String::deserialize(deserializer)?);
        let bytes = Zeroizing::new(
            BASE64
                .decode(text.as_bytes())
                .map_err(|_| serde::de::Error::custom("the cluster secret is not base64"))?,
        );
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("the cluster secret is not 32 bytes"))?;
        Ok(ClusterSecret::from_bytes(bytes))
    }
}

/// "I received the message with this id."
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub msg_id: MsgId,
}

/// Why bytes could not become a message, or a message could not become bytes.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge { len: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("not a join request (it does not start with the join tag byte)")]
    NotAJoinRequest,
}

impl Message {
    /// Parses one message, refusing anything longer than [`MAX_MESSAGE_BYTES`] before looking
    /// at it.
    pub fn decode(bytes: &[u8]) -> Result<Message, MessageError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge { len: bytes.len() });
        }
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The message as JSON, refused if a peer would reject it as too large.
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        let bytes = serde_json::to_vec(self)?;
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge { len: bytes.len() });
        }
        Ok(bytes)
    }

    /// The id the receiver must acknowledge, for the messages whose loss matters.
    pub fn msg_id(&self) -> Option<MsgId> {
        match self {
            Message::LeaseClaim { msg_id, .. } | Message::LeaseRelease { msg_id, .. } => {
                Some(*msg_id)
            }
            Message::PeerAnnounce(m) => Some(m.msg_id),
            Message::PeerList(m) => Some(m.msg_id),
            Message::JoinAccept(m) => Some(m.msg_id),
            Message::SharedConfigUpdate(m) => Some(m.msg_id),
            Message::MemberRemoved(m) => Some(m.msg_id),
            Message::SecretUpdate(m) => Some(m.msg_id),
            Message::Heartbeat(_) | Message::Ack(_) => None,
        }
    }

    /// The node the message says it comes from, for the messages that name one. The transport
    /// drops a message whose claim differs from the tunnel it arrived through: one member must
    /// not speak for another.
    pub fn claimed_sender(&self) -> Option<&NodeId> {
        match self {
            Message::Heartbeat(m) => Some(&m.from),
            Message::LeaseClaim { claim, .. } => Some(&claim.from),
            Message::LeaseRelease { release, .. } => Some(&release.from),
            Message::PeerAnnounce(_)
            | Message::PeerList(_)
            | Message::JoinAccept(_)
            | Message::SharedConfigUpdate(_)
            | Message::MemberRemoved(_)
            | Message::SecretUpdate(_)
            | Message::Ack(_) => None,
        }
    }

    /// The message's type name, as on the wire, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat(_) => "Heartbeat",
            Message::LeaseClaim { .. } => "LeaseClaim",
            Message::LeaseRelease { .. } => "LeaseRelease",
            Message::PeerAnnounce(_) => "PeerAnnounce",
            Message::PeerList(_) => "PeerList",
            Message::JoinAccept(_) => "JoinAccept",
            Message::SharedConfigUpdate(_) => "SharedConfigUpdate",
            Message::MemberRemoved(_) => "MemberRemoved",
            Message::SecretUpdate(_) => "SecretUpdate",
            Message::Ack(_) => "Ack",
        }
    }
}

impl Message {
    /// The election's message, for the three messages the election reads.
    pub fn to_election(&self) -> Option<LeaseMessage> {
        Some(match self {
            Message::Heartbeat(m) => LeaseMessage::Heartbeat(m.clone()),
            Message::LeaseClaim { claim, .. } => LeaseMessage::LeaseClaim(claim.clone()),
            Message::LeaseRelease { release, .. } => LeaseMessage::LeaseRelease(release.clone()),
            Message::PeerAnnounce(_)
            | Message::PeerList(_)
            | Message::JoinAccept(_)
            | Message::SharedConfigUpdate(_)
            | Message::MemberRemoved(_)
            | Message::SecretUpdate(_)
            | Message::Ack(_) => return None,
        })
    }

    /// A lease claim to send, with a fresh message id: each copy is acknowledged on its own.
    pub fn lease_claim(claim: &LeaseClaim) -> Message {
        Message::LeaseClaim {
            claim: claim.clone(),
            msg_id: MsgId::random(),
        }
    }

    /// A shared configuration to send, with a fresh message id.
    pub fn shared_config_update(config: &SharedConfig) -> Message {
        Message::SharedConfigUpdate(SharedConfigUpdate {
            config: config.clone(),
            msg_id: MsgId::random(),
        })
    }

    /// A lease release to send, with a fresh message id.
    pub fn lease_release(release: &LeaseRelease) -> Message {
        Message::LeaseRelease {
            release: release.clone(),
            msg_id: MsgId::random(),
        }
    }
}

/// A node's request to join the cluster, sent in clear UDP before any tunnel exists.
///
/// The MAC (HMAC-SHA256 under a key derived from the cluster secret, see `cluster::secret`)
/// covers every other field, so only a holder of the secret can ask, and nobody can swap in
/// their own WireGuard key or endpoint. The timestamp lets the receiver reject old requests;
/// the receiver also remembers the MACs it accepted, so a captured request cannot be replayed
/// while it is still fresh.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub node_id: NodeId,
    /// The key the newcomer's tunnel will use; the accepting node adds it as a peer.
    pub public_key: WgPublicKey,
    /// Where the other members will reach the newcomer.
    pub endpoint: Endpoint,
    /// The newcomer's clock when it asked, in Unix seconds.
    #[serde(rename = "timestamp")]
    pub timestamp_secs: u64,
    pub mac: JoinMac,
}

/// The HMAC tag of a [`JoinRequest`] (base64 on the wire).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct JoinMac(pub [u8; 32]);

impl JoinRequest {
    /// A request for these fields, authenticated with `secret`.
    pub fn sign(
        secret: &ClusterSecret,
        node_id: NodeId,
        public_key: WgPublicKey,
        endpoint: Endpoint,
        timestamp_secs: u64,
    ) -> Self {
        let mac = secret.join_mac(
            &node_id,
            public_key.as_bytes(),
            &endpoint.to_string(),
            timestamp_secs,
        );
        JoinRequest {
            node_id,
            public_key,
            endpoint,
            timestamp_secs,
            mac: JoinMac(mac),
        }
    }

    /// Whether the MAC was made with `secret` over exactly these fields (constant time).
    pub fn verify(&self, secret: &ClusterSecret) -> bool {
        secret.verify_join_mac(
            &self.node_id,
            self.public_key.as_bytes(),
            &self.endpoint.to_string(),
            self.timestamp_secs,
            &self.mac.0,
        )
    }

    /// The UDP payload: the join tag byte, then the request as JSON.
    pub fn to_datagram(&self) -> Result<Vec<u8>, MessageError> {
        let mut datagram = vec![JOIN_REQUEST_TAG];
        serde_json::to_writer(&mut datagram, self)?;
        if datagram.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge {
                len: datagram.len(),
            });
        }
        Ok(datagram)
    }

    /// Parses a UDP payload made by [`to_datagram`](Self::to_datagram). Says nothing about
    /// whether the request is authentic: call [`verify`](Self::verify).
    pub fn from_datagram(datagram: &[u8]) -> Result<Self, MessageError> {
        if datagram.len() > MAX_MESSAGE_BYTES {
            return Err(MessageError::TooLarge {
                len: datagram.len(),
            });
        }
        match datagram.split_first() {
            Some((&JOIN_REQUEST_TAG, json)) => Ok(serde_json::from_slice(json)?),
            _ => Err(MessageError::NotAJoinRequest),
        }
    }
}

impl Serialize for JoinMac {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&BASE64.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for JoinMac {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = BASE64
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("join MAC is not base64"))?;
        let mac = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| serde::de::Error::custom("join MAC is not 32 bytes"))?;
        Ok(JoinMac(mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Timestamp;
    use crate::cluster::config_sync::ConfigVersion;
    use crate::cluster::wg_keys::generate_keypair;

    fn node(id: &str) -> NodeId {
        NodeId::try_from(id.to_owned()).unwrap()
    }

    fn priority(p: u32) -> Priority {
        Priority::try_from(p).unwrap()
    }

    fn peer_info(id: &str) -> PeerInfo {
        PeerInfo {
            node_id: node(id),
            endpoint: "vps1.example.net:51820".parse().unwrap(),
            public_key: generate_keypair().1,
            priority: priority(2),
        }
    }

    fn one_of_each() -> Vec<Message> {
        vec![
            Message::Heartbeat(Heartbeat {
                from: node("alpha"),
                timestamp: Timestamp::from_unix_secs(1_700_000_000),
                role: Role::Publisher,
                priority: priority(1),
                last_publish: Some(Timestamp::from_unix_secs(1_699_999_990)),
                can_publish: true,
                config_version: Some(ConfigVersion {
                    number: 3,
                    by: node("beta"),
                }),
                publisher_not_served: Some(node("gamma")),
                secret_id: None,
            }),
            Message::lease_claim(&LeaseClaim {
                from: node("alpha"),
                priority: priority(1),
                timestamp: Timestamp::from_unix_secs(1_700_000_000),
            }),
            Message::lease_release(&LeaseRelease {
                from: node("alpha"),
                timestamp: Timestamp::from_unix_secs(1_700_000_000),
            }),
            Message::PeerAnnounce(PeerAnnounce {
                peer: peer_info("beta"),
                msg_id: MsgId::random(),
            }),
            Message::PeerList(PeerList {
                peers: vec![peer_info("beta"), peer_info("gamma")],
                msg_id: MsgId::random(),
            }),
            Message::JoinAccept(JoinAccept {
                assigned_priority: priority(3),
                peers: vec![peer_info("alpha")],
                config: SharedConfig {
                    version: ConfigVersion {
                        number: 2,
                        by: node("alpha"),
                    },
                    text: "[timing]\nheartbeat_interval_secs = 10\n".into(),
                },
                publisher: Some(node("alpha")),
                msg_id: MsgId::random(),
            }),
            Message::SharedConfigUpdate(SharedConfigUpdate {
                config: SharedConfig {
                    version: ConfigVersion {
                        number: 4,
                        by: node("beta"),
                    },
                    text: "[health]\ndead_after_failures = 2\n".into(),
                },
                msg_id: MsgId::random(),
            }),
            Message::MemberRemoved(MemberRemoved {
                member: peer_info("gamma"),
                msg_id: MsgId::random(),
            }),
            Message::SecretUpdate(SecretUpdate {
                secret: ClusterSecret::generate(),
                msg_id: MsgId::random(),
            }),
            Message::Ack(Ack {
                msg_id: MsgId::random(),
            }),
        ]
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        for message in one_of_each() {
            let bytes = message.encode().unwrap();
            assert_eq!(Message::decode(&bytes).unwrap(), message);
        }
    }

    #[test]
    fn heartbeat_uses_the_field_names_of_the_protocol() {
        let json: serde_json::Value =
            serde_json::from_slice(&one_of_each()[0].encode().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "Heartbeat",
                "node_id": "alpha",
                "timestamp": 1_700_000_000u64,
                "role": "publisher",
                "priority": 1,
                "last_publish_ts": 1_699_999_990u64,
                "can_publish": true,
                "config_version": { "number": 3, "by": "beta" },
                "publisher_not_served": "gamma",
            })
        );
    }

    #[test]
    fn only_messages_that_matter_ask_for_an_ack() {
        let acked: Vec<&str> = one_of_each()
            .iter()
            .filter(|m| m.msg_id().is_some())
            .map(Message::kind)
            .collect();
        assert_eq!(
            acked,
            [
                "LeaseClaim",
                "LeaseRelease",
                "PeerAnnounce",
                "PeerList",
                "JoinAccept",
                "SharedConfigUpdate",
                "MemberRemoved",
                "SecretUpdate"
            ]
        );
    }

    #[test]
    fn unknown_types_and_fields_are_rejected() {
        for bad in [
            r#"{"type":"Shutdown"}"#,
            r#"{"msg_id":1}"#,
            r#"{"type":"Ack","msg_id":1,"extra":true}"#,
            r#"{"type":"Ack"}"#,
            r#"{"type":"LeaseRelease","node_id":"Bad Id","timestamp":1,"msg_id":1}"#,
            r#"{"type":"LeaseClaim","node_id":"a","priority":0,"timestamp":1,"msg_id":1}"#,
        ] {
            assert!(
                matches!(
                    Message::decode(bad.as_bytes()),
                    Err(MessageError::Malformed(_))
                ),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn oversized_input_is_refused_before_parsing() {
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            Message::decode(&huge),
            Err(MessageError::TooLarge { .. })
        ));
        let too_many_peers = Message::PeerList(PeerList {
            peers: (0..400).map(|i| peer_info(&format!("node-{i}"))).collect(),
            msg_id: MsgId::random(),
        });
        assert!(matches!(
            too_many_peers.encode(),
            Err(MessageError::TooLarge { .. })
        ));
    }

    #[test]
    fn truncated_and_random_input_gives_errors_not_panics() {
        let mut rng = rand::rng();
        for message in one_of_each() {
            let bytes = message.encode().unwrap();
            for cut in 0..bytes.len() {
                assert!(Message::decode(&bytes[..cut]).is_err());
            }
        }
        for len in 0..512 {
            let mut noise = vec![0u8; len];
            rng.fill_bytes(&mut noise);
            assert!(Message::decode(&noise).is_err());
            assert!(JoinRequest::from_datagram(&noise).is_err());
        }
    }

    fn signed_request(secret: &ClusterSecret) -> JoinRequest {
        JoinRequest::sign(
            secret,
            node("newcomer"),
            generate_keypair().1,
            "vps9.example.net:51820".parse().unwrap(),
            1_700_000_000,
        )
    }

    #[test]
    fn join_request_round_trips_and_verifies_with_the_same_secret_only() {
        let secret = ClusterSecret::generate();
        let request = signed_request(&secret);
        let datagram = request.to_datagram().unwrap();
        assert_eq!(datagram[0], JOIN_REQUEST_TAG);
        let parsed = JoinRequest::from_datagram(&datagram).unwrap();
        assert_eq!(parsed, request);
        assert!(parsed.verify(&secret));
        assert!(!parsed.verify(&ClusterSecret::generate()));
    }

    #[test]
    fn join_request_with_a_changed_field_fails_verification() {
        let secret = ClusterSecret::generate();
        let mut request = signed_request(&secret);
        request.endpoint = "attacker.example.net:51820".parse().unwrap();
        assert!(!request.verify(&secret));
        let mut request = signed_request(&secret);
        request.public_key = generate_keypair().1;
        assert!(!request.verify(&secret));
        let mut request = signed_request(&secret);
        request.timestamp_secs += 1;
        assert!(!request.verify(&secret));
    }

    #[test]
    fn join_request_needs_its_tag_byte() {
        let secret = ClusterSecret::generate();
        let mut datagram = signed_request(&secret).to_datagram().unwrap();
        datagram[0] = 1;
        assert!(matches!(
            JoinRequest::from_datagram(&datagram),
            Err(MessageError::NotAJoinRequest)
        ));
        assert!(matches!(
            JoinRequest::from_datagram(&[]),
            Err(MessageError::NotAJoinRequest)
        ));
    }
}
