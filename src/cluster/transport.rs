//! Encrypted, authenticated messaging between cluster nodes over WireGuard in UDP.
//!
//! Nodes of a cluster run on separate machines, often on the open internet, and what they tell each
//! other decides who publishes the master descriptor. So every message travels through a WireGuard
//! tunnel (boringtun's `noise::Tunn`, used in process, without a TUN device; the recipe and its
//! measured pitfalls are in ARCHITECTURE.md, "WireGuard in process"): one UDP socket per node, one
//! tunnel per peer, keyed with the peers' x25519 keys plus a preshared key per pair derived from
//! the cluster secret. A packet that does not authenticate changes nothing: it is dropped with a
//! rate-limited warning, and a peer's endpoint moves only when a packet from the new address proves
//! to come from that peer.
//!
//! WireGuard itself retransmits nothing, so acknowledged messages (lease claims and releases,
//! peer changes, join answers) are resent until their ack arrives ([`Transport::send_reliable`])
//! and deduplicated on receipt.
//!
//! A newcomer is not yet anybody's WireGuard peer, so joining takes one step outside the
//! tunnels: the newcomer sends a [`JoinRequest`](crate::cluster::messages::JoinRequest) in clear
//! UDP on the same port, authenticated by an HMAC under the cluster secret and a fresh
//! timestamp. The receiving member hands the verified request to the program
//! ([`Incoming::JoinRequest`]); if the program accepts, the member adds the newcomer as a peer
//! and sends the [`JoinAccept`] through the new tunnel, so only the holder of the newcomer's
//! private key can read it.
//!
//! All of that is one state machine without I/O, [`protocol`]: datagrams and the time in,
//! datagrams and events out. One task owns the socket and drives it (`socket_task`, the sans-IO
//! `Tunn`s need no locks then); the [`Transport`] handle talks to that task over a channel and
//! the [`Inbox`] receives what arrives.

mod framing;
mod join_guard;
mod peer;
mod protocol;
mod reliable;
mod socket_task;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use self::protocol::Protocol;
use self::socket_task::{Command, SocketTask};
use super::wg_keys::{WgPrivateKey, WgPublicKey};
use crate::clock::Timestamp;
use crate::params::MAX_RELIABLE_WAIT;

use super::messages::{JoinAccept, Message, MessageError};
use super::secret::ClusterSecret;
use super::{Endpoint, NodeId};

/// What a node does with datagrams from anybody before any of them authenticates, for the fuzz
/// targets (`fuzz/`, `tests/fuzz_corpus.rs`): a node with a fixed key and one known peer
/// handles each of `datagrams`, a second apart, from one source, runs its timers, and drains
/// what it produced. Returns how many messages and join requests reached the program (none
/// unless a datagram authenticated under the fixed keys).
pub fn handle_untrusted_datagrams(datagrams: &[&[u8]]) -> usize {
    const FIXED_KEY: &str = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
    let (Ok(me), Ok(peer), Ok(private_key)) = (
        NodeId::try_from("fuzz-node".to_owned()),
        NodeId::try_from("fuzz-peer".to_owned()),
        WgPrivateKey::from_base64(FIXED_KEY),
    ) else {
        unreachable!("fixed, valid names and key");
    };
    let mut now = Timestamp::from_unix_secs(1_800_000_000);
    let secret = ClusterSecret::from_bytes([7; 32]);
    let mut protocol = Protocol::new(me, private_key, &secret, now);
    let source = SocketAddr::from(([127, 0, 0, 1], 51820));
    let peer = PeerConfig {
        node_id: peer,
        public_key: WgPublicKey::from_bytes([9; 32]),
        endpoint: Some(source),
    };
    if protocol.add_peer(peer, false).is_err() {
        unreachable!("a peer other than the node itself");
    }
    let mut delivered = 0;
    for datagram in datagrams {
        protocol.handle_datagram(now, source, datagram);
        now = now + Duration::from_secs(1);
        protocol.handle_timeout(now);
        while protocol.poll_transmit().is_some() {}
        while protocol.poll_incoming().is_some() {
            delivered += 1;
        }
        while protocol.poll_completion().is_some() {}
    }
    delivered
}

// The numbers that shape the transport. Those from ARCHITECTURE.md ("WireGuard in process") are
// boringtun's requirements, not preferences.

/// How often every tunnel's timers run: boringtun's handshake retries, keepalives and key
/// rotation are driven from outside (ARCHITECTURE.md, "WireGuard in process").
const TIMER_TICK: Duration = Duration::from_millis(250);
/// How often the shared handshake rate limiter is reset; boringtun expects every second
/// (ARCHITECTURE.md, "WireGuard in process").
const RATE_LIMITER_RESET: Duration = Duration::from_secs(1);
/// Handshakes per second accepted before boringtun asks initiators for a cookie round trip,
/// boringtun's own default for a device. Each initiation is counted twice (our routing check
/// and the tunnel's own), so cookies start at about 50 a second: still far above what a
/// cluster of a few nodes needs.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Size of every buffer handed to boringtun: the largest UDP datagram, since smaller buffers
/// make it panic on large packets (ARCHITECTURE.md, "WireGuard in process").
const WG_BUFFER_LEN: usize = 64 * 1024;
/// First wait for an ack before a reliable message is sent again: many round trips even between
/// distant VPSes (a loopback round trip is 32 µs, ARCHITECTURE.md, "WireGuard in process"), short
/// enough that a lost lease claim costs well under a heartbeat interval.
const RESEND_FIRST_DELAY: Duration = Duration::from_millis(300);
/// The wait doubles after each resend up to this.
const RESEND_MAX_DELAY: Duration = Duration::from_secs(4);
/// How often a newcomer repeats its join request while waiting for the answer.
const JOIN_RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Largest difference between a join request's timestamp and our clock. Nodes keep their
/// clocks in sync (NTP) to a few seconds; a minute tolerates a careless one.
const JOIN_MAX_SKEW: Duration = Duration::from_secs(60);
/// While the program decides about a newcomer, its repeated requests are not handed over again.
const JOIN_DECISION_HOLDOFF: Duration = Duration::from_secs(5);
/// At most one warning per source address in this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Received messages waiting for the program. When it is full, new messages are dropped (and
/// not acknowledged, so their senders resend) rather than stalling the task that serves every
/// tunnel. The protocol holds them; the channel to the program hands them over one at a time.
const INBOX_CAPACITY: usize = 1024;
/// Requests from [`Transport`] handles waiting for the socket task.
const COMMAND_CAPACITY: usize = 256;

/// A peer as the configuration (or a join) describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub node_id: NodeId,
    pub public_key: WgPublicKey,
    /// Where to send to it, if known; otherwise learned when it first contacts us.
    pub endpoint: Option<SocketAddr>,
}

/// Something that arrived for the program.
#[derive(Debug)]
pub enum Incoming {
    /// A message from a peer, authenticated by its tunnel; each acknowledged message once.
    Message { from: NodeId, message: Message },
    /// A verified request to join the cluster. Answer with [`Transport::accept_join`], or drop
    /// it to refuse (the newcomer then gets no answer).
    JoinRequest(JoinCandidate),
}

/// A node asking to join, whose request carried a valid MAC under the cluster secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinCandidate {
    pub node_id: NodeId,
    pub public_key: WgPublicKey,
    /// The endpoint the newcomer asks the cluster to reach it at (covered by the MAC).
    pub endpoint: Endpoint,
    /// The address its request came from; the answer goes there.
    pub source: SocketAddr,
}

/// One peer's WireGuard tunnel: its key, where it is reached, and when it last completed a
/// handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelStatus {
    pub node_id: NodeId,
    pub public_key: WgPublicKey,
    pub endpoint: Option<SocketAddr>,
    /// Time since the last completed handshake, if any.
    pub since_handshake: Option<Duration>,
}

/// Starting the transport failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen for cluster peers on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid peer in the configuration: {0}")]
    Peer(#[from] PeerError),
}

/// A peer could not be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("{0} is this node itself (same node id or WireGuard key), not a peer")]
    IsSelf(NodeId),
    #[error("WireGuard key {key} already belongs to peer {owner}; every node needs its own key")]
    KeyInUse { key: WgPublicKey, owner: NodeId },
    #[error("the cluster transport has shut down")]
    Closed,
}

/// A message could not be sent, or was not acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("{0} is not a peer of this node")]
    UnknownPeer(NodeId),
    #[error("no address known for peer {0}: configure its endpoint, or wait until it contacts us")]
    NoEndpoint(NodeId),
    #[error(transparent)]
    Encode(#[from] MessageError),
    #[error("{0} messages carry no msg_id, so they cannot be sent reliably")]
    NotAcknowledgeable(&'static str),
    #[error("{to} did not acknowledge the message: sent {attempts} times over {waited:?}")]
    Unacknowledged {
        to: NodeId,
        attempts: u32,
        waited: Duration,
    },
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the cluster transport has shut down")]
    Closed,
}

/// Joining a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(
        "no answer from {origin} within {waited:?}: check that the join token names that node's \
         endpoint and key, that its UDP port is reachable from here, and that the cluster \
         secret is the same (a refused or unverifiable request gets no answer)"
    )]
    NoAnswer {
        origin: SocketAddr,
        waited: Duration,
    },
    #[error("a join is already in progress")]
    AlreadyJoining,
    #[error("cannot use the origin as a peer: {0}")]
    Origin(#[from] PeerError),
    #[error("cannot build the join request: {0}")]
    Encode(#[from] MessageError),
    #[error("the cluster transport has shut down")]
    Closed,
}

/// A handle to the node's cluster transport; cheap to clone, one per loop that sends.
///
/// The socket task stops when [`shutdown`](Self::shutdown) is called or every handle is dropped.
#[derive(Clone, Debug)]
pub struct Transport {
    commands: mpsc::Sender<Command>,
    local_addr: SocketAddr,
    public_key: WgPublicKey,
}

/// Where received messages and join requests arrive.
#[derive(Debug)]
pub struct Inbox {
    incoming: mpsc::Receiver<Incoming>,
}

impl Inbox {
    /// The next message or join request; `None` once the transport has stopped.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }
}

impl Transport {
    /// Binds the node's UDP socket, creates a tunnel per peer and starts handshakes with every
    /// peer whose endpoint is known, so that a restarted node is reachable again at once
    /// (ARCHITECTURE.md, "WireGuard in process"). Must be called within a tokio runtime.
    pub async fn bind(
        listen: SocketAddr,
        node_id: NodeId,
        private_key: WgPrivateKey,
        peers: Vec<PeerConfig>,
        secret: &ClusterSecret,
    ) -> Result<(Transport, Inbox), TransportError> {
        let bind_error = |source| TransportError::Bind {
            addr: listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(listen).map_err(bind_error)?;
        let local_addr = socket.local_addr().map_err(bind_error)?;
        socket.set_nonblocking(true).map_err(bind_error)?;
        // A second handle on the same socket sends without waiting for tokio to report it
        // writable (tokio's `try_send_to` fails until it has); see `socket_task`.
        let sender = socket.try_clone().map_err(bind_error)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(bind_error)?;
        let public_key = private_key.public_key();
        let (incoming_tx, incoming) = mpsc::channel(1);
        let (commands, commands_rx) = mpsc::channel(COMMAND_CAPACITY);
        let mut protocol = Protocol::new(node_id, private_key, secret, Timestamp::now());
        for peer in peers {
            protocol.add_peer(peer, false)?;
        }
        let task = SocketTask::new(socket, sender, protocol, incoming_tx);
        tokio::spawn(task.run(commands_rx));
        Ok((
            Transport {
                commands,
                local_addr,
                public_key,
            },
            Inbox { incoming },
        ))
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> WgPublicKey {
        self.public_key
    }

    /// Sends `message` once. `Ok` means WireGuard took it: sent, or queued behind the
    /// handshake it starts. It may still be lost on the way.
    pub async fn send(&self, to: &NodeId, message: &Message) -> Result<(), SendError> {
        let packet = frame(message)?;
        self.ask(|done| Command::Send {
            to: to.clone(),
            packet,
            done,
        })
        .await
        .unwrap_or(Err(SendError::Closed))
    }

    /// Sends `message` once to every peer with a known address; returns how many that was.
    pub async fn broadcast(&self, message: &Message) -> Result<usize, SendError> {
        let packet = frame(message)?;
        self.ask(|done| Command::Broadcast { packet, done })
            .await
            .ok_or(SendError::Closed)
    }

    /// Sends `message` and resends it, waiting longer each time, until `to` acknowledges it
    /// or `give_up_after` (at most a minute) has passed. The message must carry a msg_id.
    pub async fn send_reliable(
        &self,
        to: &NodeId,
        message: Message,
        give_up_after: Duration,
    ) -> Result<(), SendError> {
        let id = message
            .msg_id()
            .ok_or(SendError::NotAcknowledgeable(message.kind()))?;
        let packet = frame(&message)?;
        self.ask(|done| Command::SendReliable {
            to: to.clone(),
            id,
            packet,
            give_up_after,
            done,
        })
        .await
        .unwrap_or(Err(SendError::Closed))
    }

    /// Adds a peer, or updates the endpoint of a known one (a different key replaces its
    /// tunnel), and starts a handshake with it if its endpoint is known.
    pub async fn add_peer(&self, peer: PeerConfig) -> Result<(), PeerError> {
        self.ask(|done| Command::AddPeer { peer, done })
            .await
            .unwrap_or(Err(PeerError::Closed))
    }

    /// Switches the tunnel to `peer` to the preshared key of `secret` (both ends hold it now:
    /// `cluster::secret_rotation`). False if `peer` is not a peer.
    pub async fn rekey_peer(&self, peer: &NodeId, secret: &ClusterSecret) -> bool {
        let (peer, secret) = (peer.clone(), secret.clone());
        self.ask(|done| Command::Rekey { peer, secret, done })
            .await
            .unwrap_or(false)
    }

    /// The cluster secret for new peers and join requests from now on.
    pub async fn set_secret(&self, secret: &ClusterSecret) {
        let secret = secret.clone();
        let _ = self.ask(|done| Command::SetSecret { secret, done }).await;
    }

    /// Accepts a join request: adds the newcomer as a peer at the address its request came
    /// from and sends it `accept` through the new tunnel, reliably. Returns once the newcomer
    /// acknowledged the answer.
    pub async fn accept_join(
        &self,
        candidate: JoinCandidate,
        accept: JoinAccept,
        give_up_after: Duration,
    ) -> Result<(), SendError> {
        let id = accept.msg_id;
        let packet = frame(&Message::JoinAccept(accept))?;
        self.ask(|done| Command::AcceptJoin {
            candidate,
            id,
            packet,
            give_up_after,
            done,
        })
        .await
        .unwrap_or(Err(SendError::Closed))
    }

    /// Asks the cluster member `origin_id` (key `origin_key`, at `origin_addr`) to let this
    /// node in, announcing `my_endpoint` as the address the members should use. Repeats the
    /// request every second until the answer arrives through the tunnel the origin opens, or
    /// `timeout` passes. On success the origin stays a peer; add the other members from the
    /// answer with [`add_peer`](Self::add_peer).
    pub async fn join(
        &self,
        origin_id: NodeId,
        origin_key: WgPublicKey,
        origin_addr: SocketAddr,
        my_endpoint: Endpoint,
        timeout: Duration,
    ) -> Result<JoinAccept, JoinError> {
        let origin = PeerConfig {
            node_id: origin_id,
            public_key: origin_key,
            endpoint: Some(origin_addr),
        };
        self.ask(|done| Command::Join {
            origin,
            origin_addr,
            my_endpoint,
            timeout,
            done,
        })
        .await
        .unwrap_or(Err(JoinError::Closed))
    }

    /// Every peer's endpoint and handshake age; empty once the transport has stopped.
    pub async fn peers(&self) -> Vec<TunnelStatus> {
        self.ask(|done| Command::Peers { done })
            .await
            .unwrap_or_default()
    }

    /// Stops the socket task and closes the socket; returns when the socket is closed, so the
    /// port can be bound again at once.
    pub async fn shutdown(&self) {
        // Already stopped is as good as stopped now.
        let _ = self.ask(|done| Command::Shutdown { done }).await;
    }

    /// Sends a command carrying a reply channel and waits for the reply; `None` if the socket
    /// task is gone.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (done, answer) = oneshot::channel();
        self.commands.send(command(done)).await.ok()?;
        answer.await.ok()
    }
}

/// The plaintext WireGuard carries for `message`: JSON behind a minimal IPv4 header.
fn frame(message: &Message) -> Result<Vec<u8>, MessageError> {
    let json = message.encode()?;
    // `encode` keeps messages far below the 64 KiB an IPv4 length can describe.
    framing::wrap(&json).map_err(|_| MessageError::TooLarge { len: json.len() })
}
