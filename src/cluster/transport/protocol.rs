//! The cluster transport's protocol, without I/O: datagrams and the time in, datagrams and
//! events out.
//!
//! [`Protocol`] owns every peer's boringtun `Tunn`, the outbox of messages awaiting an ack, the
//! receivers' memory of message ids and the join guard. It never touches a socket or reads a
//! clock: the caller hands it each received datagram ([`Protocol::handle_datagram`]), calls
//! [`Protocol::handle_timeout`] when [`Protocol::poll_timeout`] says, and after every call
//! collects what it produced: datagrams to send ([`Protocol::poll_transmit`]), messages and join
//! requests for the program ([`Protocol::poll_incoming`]) and the outcome of reliable sends and
//! of a join ([`Protocol::poll_completion`]). In the daemon the socket task (`socket_task`) is
//! that caller; the unit tests below are another, wiring nodes together in memory. boringtun's
//! `Tunn` is sans-IO too, except that it reads the monotonic clock for its own handshake and
//! keepalive timers (ARCHITECTURE.md, "WireGuard in process").
//!
//! An incoming datagram goes through these gates, and anything that fails one is dropped with
//! a rate-limited warning, changing nothing:
//! 1. empty datagrams are dropped (boringtun would read them as "flush your queue");
//! 2. a datagram starting with the join tag is a clear-text join request (see `join_guard`);
//! 3. otherwise boringtun's rate limiter checks the WireGuard type, length and MAC1;
//! 4. the packet is routed to a peer's tunnel by its receiver index, or for a handshake
//!    initiation by the static key it reveals to us;
//! 5. that tunnel decrypts it. Only a handshake response or a data packet (a keepalive counts)
//!    moves the peer's endpoint to the packet's source address: both need the session keys,
//!    hence the peer's private key and the pair's preshared key. A handshake initiation proves
//!    only the private key (the preshared key enters later), so it gets its response at its
//!    source address but moves nothing; the initiator's keepalive that follows does.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use tracing::{debug, info, warn};
use zeroize::Zeroize as _;

use super::framing::{self, FramingError};
use super::join_guard::{JoinGuard, JoinRejection};
use super::peer::{Inserted, PeerTable};
use super::reliable::{Outbox, OutboxAction};
use super::{
    frame, Incoming, JoinCandidate, JoinError, PeerConfig, PeerError, SendError, TunnelStatus,
    WgPrivateKey, WgPublicKey, HANDSHAKE_RATE_LIMIT, INBOX_CAPACITY, JOIN_RETRY_INTERVAL,
    RATE_LIMITER_RESET, TIMER_TICK, WARN_INTERVAL, WG_BUFFER_LEN,
};
use crate::clock::Timestamp;
use crate::cluster::messages::{
    Ack, JoinAccept, JoinRequest, Message, MessageError, MsgId, JOIN_REQUEST_TAG,
};
use crate::cluster::secret::ClusterSecret;
use crate::cluster::{Endpoint, NodeId};
use crate::logging::limit::LogLimiter;

/// The first byte of a WireGuard cookie reply (message type 3).
const WG_COOKIE_REPLY: u8 = 3;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Transmit {
    pub(super) to: SocketAddr,
    pub(super) datagram: Vec<u8>,
}

/// How something this node asked for ended.
#[derive(Debug)]
pub(super) enum Completion {
    /// The reliable message `id` was acknowledged, or given up on.
    Sent {
        id: MsgId,
        result: Result<(), SendError>,
    },
    /// The join this node started was answered, or given up on.
    Joined(Result<JoinAccept, JoinError>),
}

/// Why decrypted plaintext is not a message we can use.
#[derive(Debug, thiserror::Error)]
enum PlaintextError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error(transparent)]
    Message(#[from] MessageError),
    #[error("an IPv6 packet, which no node sends")]
    Ipv6,
}

/// A join this node is waiting for (the newcomer's side).
struct PendingJoin {
    origin: NodeId,
    origin_addr: SocketAddr,
    my_endpoint: Endpoint,
    /// Whether the origin was a peer already, so a failed join leaves it in place.
    origin_was_peer: bool,
    started: Timestamp,
    timeout: Duration,
    next_request: Timestamp,
}

impl PendingJoin {
    /// When to give up; never further away than the whole timeout (the clock may step back).
    fn give_up(&self, now: Timestamp) -> Timestamp {
        (self.started + self.timeout).min(now + self.timeout)
    }
}

/// Datagrams to send, with the warnings about the addresses they come from.
struct Outgoing {
    transmits: VecDeque<Transmit>,
    warnings: LogLimiter<SocketAddr>,
}

impl Outgoing {
    fn transmit(&mut self, to: SocketAddr, datagram: &[u8]) {
        self.transmits.push_back(Transmit {
            to,
            datagram: datagram.to_vec(),
        });
    }

    /// Logs a warning about `source`, unless one was logged for it in the last few seconds.
    fn warn(&mut self, source: SocketAddr, now: Timestamp, what: fmt::Arguments<'_>) {
        if let Some(suppressed) = self.warnings.allow(source, now) {
            warn!(%source, suppressed, "{what}");
        }
    }
}

/// One node's side of the cluster transport (see the module documentation).
pub(super) struct Protocol {
    me: NodeId,
    private_key: WgPrivateKey,
    public_key: WgPublicKey,
    /// `public_key` in boringtun's form, for identifying handshake initiators.
    public_x25519: PublicKey,
    secret: ClusterSecret,
    /// Shared by every tunnel, so a handshake flood is limited per node, not per peer.
    rate_limiter: Arc<RateLimiter>,
    peers: PeerTable,
    outbox: Outbox,
    join_guard: JoinGuard,
    joining: Option<PendingJoin>,
    out: Outgoing,
    /// Messages and join requests for the program, at most [`INBOX_CAPACITY`].
    incoming: VecDeque<Incoming>,
    completions: VecDeque<Completion>,
    next_tunnel_timers: Timestamp,
    next_housekeeping: Timestamp,
    /// The one output buffer every `Tunn` call writes into (ARCHITECTURE.md, "WireGuard in
    /// process": 64 KiB, always).
    buf: Box<[u8]>,
}

impl Protocol {
    pub(super) fn new(
        me: NodeId,
        private_key: WgPrivateKey,
        secret: &ClusterSecret,
        now: Timestamp,
    ) -> Self {
        let public_key = private_key.public_key();
        let public_x25519 = public_key.to_x25519();
        let mut secret_bytes = *secret.as_bytes();
        let secret = ClusterSecret::from_bytes(secret_bytes);
        secret_bytes.zeroize();
        Protocol {
            me,
            private_key,
            public_key,
            rate_limiter: Arc::new(RateLimiter::new(&public_x25519, HANDSHAKE_RATE_LIMIT)),
            public_x25519,
            secret,
            peers: PeerTable::new(),
            outbox: Outbox::default(),
            join_guard: JoinGuard::default(),
            joining: None,
            out: Outgoing {
                transmits: VecDeque::new(),
                warnings: LogLimiter::new(WARN_INTERVAL),
            },
            incoming: VecDeque::new(),
            completions: VecDeque::new(),
            next_tunnel_timers: now + TIMER_TICK,
            next_housekeeping: now + RATE_LIMITER_RESET,
            buf: vec![0u8; WG_BUFFER_LEN].into_boxed_slice(),
        }
    }

    /// The next datagram to send.
    pub(super) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// The next message or join request for the program.
    pub(super) fn poll_incoming(&mut self) -> Option<Incoming> {
        self.incoming.pop_front()
    }

    pub(super) fn has_incoming(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// The next outcome of a reliable send or a join.
    pub(super) fn poll_completion(&mut self) -> Option<Completion> {
        self.completions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next, seen at `now`: the tunnel
    /// timers run at least every [`TIMER_TICK`], so this is never further away than that, even
    /// if the clock stepped back since the deadlines were set. Calling `handle_timeout` earlier
    /// does no harm: it runs only what is due.
    pub(super) fn poll_timeout(&self, now: Timestamp) -> Timestamp {
        let mut next = (now + TIMER_TICK)
            .min(self.next_tunnel_timers)
            .min(self.next_housekeeping);
        if let Some(outbox) = self.outbox.next_deadline() {
            next = next.min(outbox);
        }
        if let Some(join) = &self.joining {
            next = next.min(join.next_request).min(join.started + join.timeout);
        }
        next
    }

    /// Runs whatever is due at `now`: the tunnels' timers (handshake retries, keepalives, key
    /// rotation), the once-a-second clean-up, resends and give-ups, the join's next request.
    /// A deadline further away than its interval (the clock stepped back) is due now.
    pub(super) fn handle_timeout(&mut self, now: Timestamp) {
        self.next_tunnel_timers = self.next_tunnel_timers.min(now + TIMER_TICK);
        self.next_housekeeping = self.next_housekeeping.min(now + RATE_LIMITER_RESET);
        if now >= self.next_tunnel_timers {
            self.next_tunnel_timers = now + TIMER_TICK;
            self.run_tunnel_timers();
        }
        if now >= self.next_housekeeping {
            self.next_housekeeping = now + RATE_LIMITER_RESET;
            self.housekeeping(now);
        }
        for action in self.outbox.due(now) {
            match action {
                OutboxAction::Resend { to, packet } => {
                    if let Err(error) = self.send(&to, &packet) {
                        debug!(peer = %to, %error, "cannot resend yet");
                    }
                }
                OutboxAction::GiveUp { id, error } => {
                    self.completions.push_back(Completion::Sent {
                        id,
                        result: Err(error),
                    })
                }
            }
        }
        self.join_tick(now);
    }

    /// Starts a handshake with every peer whose endpoint is known: after a restart this makes
    /// the cluster reachable within a round trip instead of waiting for the peers' own retries
    /// (ARCHITECTURE.md, "WireGuard in process").
    pub(super) fn connect_all(&mut self) {
        let peers: Vec<NodeId> = self.peers.iter().map(|peer| peer.node_id.clone()).collect();
        for peer in &peers {
            self.start_handshake(peer);
        }
    }

    /// Adds a peer, or updates the endpoint of a known one (a different key replaces its
    /// tunnel); a new tunnel starts a handshake if `start_handshake`.
    pub(super) fn add_peer(
        &mut self,
        config: PeerConfig,
        start_handshake: bool,
    ) -> Result<(), PeerError> {
        if config.node_id == self.me || config.public_key == self.public_key {
            return Err(PeerError::IsSelf(config.node_id));
        }
        let node_id = config.node_id.clone();
        let make_tunn = self.tunnel_maker(&config.node_id, config.public_key, &self.secret);
        let inserted = self.peers.insert(config, make_tunn)?;
        if inserted == Inserted::NewTunnel && start_handshake {
            self.start_handshake(&node_id);
        }
        Ok(())
    }

    /// What builds a tunnel to `peer` (key `public_key`) under the pair key of `secret`, given
    /// the tunnel's index.
    fn tunnel_maker(
        &self,
        peer: &NodeId,
        public_key: WgPublicKey,
        secret: &ClusterSecret,
    ) -> impl FnOnce(u32) -> Tunn {
        let private = self.private_key.as_x25519().clone();
        let peer_key = public_key.to_x25519();
        let psk = secret.pair_psk(&self.me, peer);
        let rate_limiter = Arc::clone(&self.rate_limiter);
        move |index| {
            Tunn::new(
                private,
                peer_key,
                Some(psk),
                None,
                index,
                Some(rate_limiter),
            )
        }
    }

    /// Switches the tunnel to `peer` to the preshared key of `secret` (a new cluster secret
    /// both ends hold now): a new tunnel, and a handshake at once. False if `peer` is unknown.
    pub(super) fn rekey_peer(&mut self, peer: &NodeId, secret: &ClusterSecret) -> bool {
        let Some(public_key) = self.peers.get_mut(peer).map(|p| p.public_key) else {
            return false;
        };
        let make_tunn = self.tunnel_maker(peer, public_key, secret);
        let rekeyed = self.peers.retunnel(peer, make_tunn);
        if rekeyed {
            self.start_handshake(peer);
        }
        rekeyed
    }

    /// The cluster secret for new peers and join requests from now on (a rotation).
    pub(super) fn set_secret(&mut self, secret: &ClusterSecret) {
        self.secret = secret.clone();
    }

    /// Sends `peer` a new handshake initiation, even if one is under way or a session exists.
    fn start_handshake(&mut self, peer: &NodeId) {
        let Some(peer) = self.peers.get_mut(peer) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if let TunnResult::WriteToNetwork(init) =
            peer.tunn.format_handshake_initiation(&mut self.buf, true)
        {
            self.out.transmit(endpoint, init);
        }
    }

    /// Hands the framed `packet` to `to`'s tunnel, which sends it or queues it behind a
    /// handshake. `Ok` means WireGuard took it; it may still be lost on the way.
    pub(super) fn send(&mut self, to: &NodeId, packet: &[u8]) -> Result<(), SendError> {
        let peer = self
            .peers
            .get_mut(to)
            .ok_or_else(|| SendError::UnknownPeer(to.clone()))?;
        let endpoint = peer
            .endpoint
            .ok_or_else(|| SendError::NoEndpoint(to.clone()))?;
        match peer.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(datagram) => self.out.transmit(endpoint, datagram),
            // The packet is queued; boringtun retries the handshake on its timers.
            TunnResult::Err(error) => debug!(peer = %to, ?error, "cannot start a handshake yet"),
            // Queued behind a handshake already under way.
            _ => {}
        }
        Ok(())
    }

    /// Sends `packet` once to every peer with a known address; returns how many that was.
    pub(super) fn broadcast(&mut self, packet: &[u8]) -> usize {
        let reachable: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|peer| peer.endpoint.is_some())
            .map(|peer| peer.node_id.clone())
            .collect();
        reachable
            .iter()
            .filter(|to| self.send(to, packet).is_ok())
            .count()
    }

    /// Sends the message `id` (framed as `packet`) and resends it until `to` acknowledges it or
    /// `give_up_after` passes; the outcome comes as [`Completion::Sent`]. An error here means
    /// it was not sent at all, and no completion follows.
    pub(super) fn send_reliable(
        &mut self,
        now: Timestamp,
        to: NodeId,
        id: MsgId,
        packet: Vec<u8>,
        give_up_after: Duration,
    ) -> Result<(), SendError> {
        self.send(&to, &packet)?;
        self.outbox.track(id, to, packet, give_up_after, now);
        Ok(())
    }

    /// Stops resending `id`: nobody waits for its outcome any more.
    pub(super) fn abandon(&mut self, id: MsgId) {
        self.outbox.abandon(id);
    }

    /// The member's side of a join: the newcomer becomes a peer at the address its verified
    /// request came from, and the answer (message `id`, framed as `packet`) goes through the
    /// tunnel this opens, reliably, like [`send_reliable`](Self::send_reliable).
    pub(super) fn accept_join(
        &mut self,
        now: Timestamp,
        candidate: JoinCandidate,
        id: MsgId,
        packet: Vec<u8>,
        give_up_after: Duration,
    ) -> Result<(), SendError> {
        let config = PeerConfig {
            node_id: candidate.node_id.clone(),
            public_key: candidate.public_key,
            endpoint: Some(candidate.source),
        };
        self.add_peer(config, false)?;
        // A fresh handshake even if the newcomer was a peer before: a node that joins again
        // has restarted and lost the sessions we may still hold.
        self.start_handshake(&candidate.node_id);
        info!(
            peer = %candidate.node_id,
            source = %candidate.source,
            "join accepted; sending the cluster configuration through the new tunnel"
        );
        self.send_reliable(now, candidate.node_id, id, packet, give_up_after)
    }

    /// The newcomer's side of a join: the origin becomes a peer, but no handshake starts, since
    /// the origin does not know our key yet; it starts the handshake once it accepts us. The
    /// request is repeated every [`JOIN_RETRY_INTERVAL`] until the answer arrives or `timeout`
    /// passes; the outcome comes as [`Completion::Joined`]. An error here means no join
    /// started, and no completion follows.
    pub(super) fn start_join(
        &mut self,
        now: Timestamp,
        origin: PeerConfig,
        origin_addr: SocketAddr,
        my_endpoint: Endpoint,
        timeout: Duration,
    ) -> Result<(), JoinError> {
        if self.joining.is_some() {
            return Err(JoinError::AlreadyJoining);
        }
        let origin_id = origin.node_id.clone();
        let origin_was_peer = self.peers.contains(&origin_id);
        self.add_peer(origin, false)?;
        self.joining = Some(PendingJoin {
            origin: origin_id,
            origin_addr,
            my_endpoint,
            origin_was_peer,
            started: now,
            timeout,
            next_request: now,
        });
        self.join_tick(now);
        Ok(())
    }

    /// Stops the join under way: nobody waits for its outcome any more.
    pub(super) fn abandon_join(&mut self) {
        if let Some(join) = self.joining.take() {
            if !join.origin_was_peer {
                self.peers.remove(&join.origin);
            }
        }
    }

    /// Sends the join request again when due, or gives up.
    fn join_tick(&mut self, now: Timestamp) {
        let Some(join) = &mut self.joining else {
            return;
        };
        if now >= join.give_up(now) {
            let error = JoinError::NoAnswer {
                origin: join.origin_addr,
                waited: now.saturating_duration_since(join.started),
            };
            self.finish_join(Err(error));
            return;
        }
        join.next_request = join.next_request.min(now + JOIN_RETRY_INTERVAL);
        if now < join.next_request {
            return;
        }
        join.next_request = now + JOIN_RETRY_INTERVAL;
        // Signed afresh each time: the origin refuses a MAC it has seen before.
        let request = JoinRequest::sign(
            &self.secret,
            self.me.clone(),
            self.public_key,
            join.my_endpoint.clone(),
            now.as_unix_secs(),
        );
        let origin_addr = join.origin_addr;
        match request.to_datagram() {
            Ok(datagram) => self.out.transmit(origin_addr, &datagram),
            Err(error) => self.finish_join(Err(error.into())),
        }
    }

    fn finish_join(&mut self, result: Result<JoinAccept, JoinError>) {
        let Some(join) = self.joining.take() else {
            return;
        };
        match &result {
            Ok(_) => info!(origin = %join.origin, "joined the cluster"),
            Err(_) if !join.origin_was_peer => self.peers.remove(&join.origin),
            Err(_) => {}
        }
        self.completions.push_back(Completion::Joined(result));
    }

    /// Every peer's endpoint and handshake age.
    pub(super) fn tunnel_statuses(&self) -> Vec<TunnelStatus> {
        self.peers
            .iter()
            .map(|peer| TunnelStatus {
                node_id: peer.node_id.clone(),
                public_key: peer.public_key,
                endpoint: peer.endpoint,
                since_handshake: peer.tunn.stats().0,
            })
            .collect()
    }

    /// Runs every tunnel's timers: handshake retries, keepalives, key rotation.
    fn run_tunnel_timers(&mut self) {
        let Protocol {
            peers, out, buf, ..
        } = self;
        for peer in peers.iter_mut() {
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    if let Some(endpoint) = peer.endpoint {
                        out.transmit(endpoint, datagram);
                    }
                }
                // boringtun gave up on the handshake after 90 s and says so on every tick; the
                // next message to this peer starts a new one. The election notices the silence.
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(error) => debug!(peer = %peer.node_id, ?error, "tunnel timer"),
                _ => {}
            }
        }
    }

    /// Once a second: reset the handshake rate limiter (ARCHITECTURE.md, "WireGuard in process")
    /// and forget what no longer matters.
    fn housekeeping(&mut self, now: Timestamp) {
        self.rate_limiter.reset_count();
        self.out.warnings.forget_quiet(now);
        self.join_guard.forget_old(now);
        for peer in self.peers.iter_mut() {
            peer.seen.forget_old(now);
        }
    }

    /// A datagram that arrived from `source` at `now`.
    pub(super) fn handle_datagram(&mut self, now: Timestamp, source: SocketAddr, datagram: &[u8]) {
        match datagram.first() {
            // boringtun reads an empty datagram as "send your queued packets" (ARCHITECTURE.md,
            // "WireGuard in process").
            None => self
                .out
                .warn(source, now, format_args!("dropped an empty datagram")),
            Some(&JOIN_REQUEST_TAG) => self.on_join_request(now, datagram, source),
            Some(_) => {
                if let Some((peer, proves_sender)) = self.route(now, datagram, source) {
                    self.decapsulate(now, peer, proves_sender, datagram, source);
                }
            }
        }
    }

    /// Finds the tunnel a WireGuard packet belongs to, after boringtun's cheap checks. Also
    /// says whether the packet, once it decrypts, proves who sent it: initiations and cookie
    /// replies do not (see the module documentation).
    fn route(
        &mut self,
        now: Timestamp,
        datagram: &[u8],
        source: SocketAddr,
    ) -> Option<(NodeId, bool)> {
        let packet =
            match self
                .rate_limiter
                .verify_packet(Some(source.ip()), datagram, &mut self.buf)
            {
                Ok(packet) => packet,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    // Too many handshakes this second: the initiator must first prove its address.
                    self.out.transmit(source, cookie);
                    return None;
                }
                Err(_) => {
                    self.out.warn(
                        source,
                        now,
                        format_args!(
                            "dropped a datagram that is not a WireGuard packet for this node \
                             (garbage, truncated, or made for another key)"
                        ),
                    );
                    return None;
                }
            };
        let (receiver_index, proves_sender) = match packet {
            Packet::HandshakeInit(init) => {
                let Ok(half) =
                    parse_handshake_anon(self.private_key.as_x25519(), &self.public_x25519, &init)
                else {
                    self.out.warn(
                        source,
                        now,
                        format_args!("dropped a handshake that is not addressed to our key"),
                    );
                    return None;
                };
                let key = WgPublicKey::from_bytes(half.peer_static_public);
                return match self.peers.id_by_key(&key) {
                    Some(peer) => Some((peer.clone(), false)),
                    None => {
                        self.out.warn(
                            source,
                            now,
                            format_args!("dropped a handshake from key {key}, which is not a peer"),
                        );
                        None
                    }
                };
            }
            Packet::HandshakeResponse(response) => (response.receiver_idx, true),
            Packet::PacketCookieReply(cookie) => (cookie.receiver_idx, false),
            Packet::PacketData(data) => (data.receiver_idx, true),
        };
        match self.peers.id_by_receiver_index(receiver_index) {
            Some(peer) => Some((peer.clone(), proves_sender)),
            None => {
                self.out.warn(
                    source,
                    now,
                    format_args!(
                        "dropped a packet for tunnel index {receiver_index:#x}, which no peer \
                         has (from before a restart, or forged)"
                    ),
                );
                None
            }
        }
    }

    /// Lets `node_id`'s tunnel decrypt the datagram, then acts on what came out of it.
    fn decapsulate(
        &mut self,
        now: Timestamp,
        node_id: NodeId,
        proves_sender: bool,
        datagram: &[u8],
        source: SocketAddr,
    ) {
        let Protocol {
            peers, out, buf, ..
        } = self;
        let Some(peer) = peers.get_mut(&node_id) else {
            return;
        };
        let mut authenticated = proves_sender;
        let mut plaintext = None;
        match peer.tunn.decapsulate(Some(source.ip()), datagram, buf) {
            // A keepalive, or a cookie reply boringtun stored.
            TunnResult::Done => {}
            TunnResult::Err(error) => {
                out.warn(
                    source,
                    now,
                    format_args!(
                        "dropped a packet for peer {node_id}: {error:?} (replayed, damaged, \
                         from a stale session, or from a node with another cluster secret)"
                    ),
                );
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                // A cookie reply answers a handshake we did not verify (we are under load).
                if reply.first() == Some(&WG_COOKIE_REPLY) {
                    authenticated = false;
                }
                out.transmit(source, reply);
            }
            TunnResult::WriteToTunnelV4(packet, _) => plaintext = Some(decode(packet)),
            TunnResult::WriteToTunnelV6(..) => plaintext = Some(Err(PlaintextError::Ipv6)),
        }
        if authenticated && peer.endpoint != Some(source) {
            info!(
                peer = %node_id,
                endpoint = %source,
                previous = ?peer.endpoint,
                "peer endpoint set from an authenticated packet"
            );
            peer.endpoint = Some(source);
        }
        // A completed handshake releases the packets queued behind it (ARCHITECTURE.md, "WireGuard
        // in process").
        if let Some(endpoint) = peer.endpoint {
            while let TunnResult::WriteToNetwork(queued) = peer.tunn.decapsulate(None, &[], buf) {
                out.transmit(endpoint, queued);
            }
        }
        match plaintext {
            Some(Ok(message)) => self.on_message(now, node_id, message, source),
            Some(Err(error)) => self.out.warn(
                source,
                now,
                format_args!("dropped a message from peer {node_id}: {error}"),
            ),
            None => {}
        }
    }

    /// Acts on an authenticated message from `from`.
    fn on_message(&mut self, now: Timestamp, from: NodeId, message: Message, source: SocketAddr) {
        if let Some(claimed) = message.claimed_sender() {
            if *claimed != from {
                self.out.warn(
                    source,
                    now,
                    format_args!(
                        "dropped a {} from peer {from} that claims to come from {claimed}",
                        message.kind()
                    ),
                );
                return;
            }
        }
        if let Message::Ack(Ack { msg_id }) = message {
            if self.outbox.acknowledge(&from, msg_id) {
                self.completions.push_back(Completion::Sent {
                    id: msg_id,
                    result: Ok(()),
                });
            } else {
                debug!(peer = %from, %msg_id, "ack for a message no longer waiting");
            }
            return;
        }
        let answers_our_join = matches!(message, Message::JoinAccept(_))
            && self
                .joining
                .as_ref()
                .is_some_and(|join| join.origin == from);
        if !answers_our_join && self.incoming.len() >= INBOX_CAPACITY {
            // Not acknowledged either, so the sender will offer it again.
            self.out.warn(
                source,
                now,
                format_args!(
                    "dropped a {} from peer {from}: the program is not reading messages",
                    message.kind()
                ),
            );
            return;
        }
        if let Some(msg_id) = message.msg_id() {
            // Every copy is acknowledged: the ack of an earlier one may have been lost.
            self.send_ack(&from, msg_id);
            let first_time = self
                .peers
                .get_mut(&from)
                .is_some_and(|peer| peer.seen.first_time(msg_id, now));
            if !first_time {
                debug!(peer = %from, %msg_id, kind = message.kind(), "repeated message ignored");
                return;
            }
        }
        match message {
            Message::JoinAccept(accept) if answers_our_join => self.finish_join(Ok(accept)),
            message => self.incoming.push_back(Incoming::Message { from, message }),
        }
    }

    fn send_ack(&mut self, to: &NodeId, msg_id: MsgId) {
        let sent = frame(&Message::Ack(Ack { msg_id }))
            .map_err(SendError::from)
            .and_then(|packet| self.send(to, &packet));
        if let Err(error) = sent {
            debug!(peer = %to, %msg_id, %error, "cannot acknowledge");
        }
    }

    /// A clear-text join request: checked, then handed to the program to decide.
    fn on_join_request(&mut self, now: Timestamp, datagram: &[u8], source: SocketAddr) {
        let request = match JoinRequest::from_datagram(datagram) {
            Ok(request) => request,
            Err(error) => {
                self.out.warn(
                    source,
                    now,
                    format_args!("dropped a malformed join request: {error}"),
                );
                return;
            }
        };
        if request.node_id == self.me || request.public_key == self.public_key {
            self.out.warn(
                source,
                now,
                format_args!("dropped a join request that uses this node's own id or key"),
            );
            return;
        }
        match self.join_guard.admit(&request, &self.secret, now) {
            Ok(()) => {}
            Err(JoinRejection::Repeat) => {
                debug!(node = %request.node_id, %source, "repeated join request while deciding");
                return;
            }
            Err(rejection) => {
                self.out.warn(
                    source,
                    now,
                    format_args!(
                        "refused a join request (claimed node id {}): {rejection}",
                        request.node_id
                    ),
                );
                return;
            }
        }
        if self.incoming.len() >= INBOX_CAPACITY {
            debug!(node = %request.node_id, "join request not handed over; the newcomer will ask again");
            return;
        }
        info!(node = %request.node_id, %source, "verified join request");
        self.incoming
            .push_back(Incoming::JoinRequest(JoinCandidate {
                node_id: request.node_id,
                public_key: request.public_key,
                endpoint: request.endpoint,
                source,
            }));
    }
}

/// A decrypted IPv4 packet back into a message.
fn decode(packet: &[u8]) -> Result<Message, PlaintextError> {
    Ok(Message::decode(framing::unwrap(packet)?)?)
}

/// Nodes wired together in memory: the protocol alone, on a simulated clock and a network that
/// can lose datagrams.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::config_sync::{ConfigVersion, SharedConfig};
    use crate::cluster::messages::PeerList;
    use crate::cluster::Priority;

    const START: Timestamp = Timestamp::from_unix_secs(1_700_000_000);
    const STEP: Duration = Duration::from_millis(50);

    struct Node {
        id: NodeId,
        addr: SocketAddr,
        key: WgPublicKey,
        protocol: Protocol,
    }

    struct Network {
        nodes: Vec<Node>,
        now: Timestamp,
        /// Datagrams from these addresses are lost.
        cut_off: Vec<SocketAddr>,
        delivered: usize,
    }

    impl Network {
        /// `names.len()` nodes sharing `secret`, not yet peers of each other.
        fn new(names: &[&str], secret: &ClusterSecret) -> Self {
            let nodes = names
                .iter()
                .zip(1u16..)
                .map(|(name, port)| {
                    let private = WgPrivateKey::generate();
                    let key = private.public_key();
                    let id = NodeId::try_from((*name).to_owned()).unwrap();
                    Node {
                        protocol: Protocol::new(id.clone(), private, secret, START),
                        id,
                        addr: SocketAddr::from(([127, 0, 0, 1], 50_000 + port)),
                        key,
                    }
                })
                .collect();
            Network {
                nodes,
                now: START,
                cut_off: Vec::new(),
                delivered: 0,
            }
        }

        /// Makes every node a peer of every other, with known endpoints, and starts handshakes.
        fn connect_all(&mut self) {
            let configs: Vec<PeerConfig> = self.nodes.iter().map(Node::config).collect();
            for node in &mut self.nodes {
                for config in &configs {
                    if config.node_id != node.id {
                        node.protocol.add_peer(config.clone(), false).unwrap();
                    }
                }
                node.protocol.connect_all();
            }
            self.deliver();
        }

        fn node(&mut self, index: usize) -> &mut Protocol {
            &mut self.nodes[index].protocol
        }

        /// Moves datagrams until no node has any left to send.
        fn deliver(&mut self) {
            for _ in 0..1000 {
                let mut in_flight = Vec::new();
                for node in &mut self.nodes {
                    while let Some(transmit) = node.protocol.poll_transmit() {
                        in_flight.push((node.addr, transmit));
                    }
                }
                if in_flight.is_empty() {
                    return;
                }
                for (from, transmit) in in_flight {
                    if self.cut_off.contains(&from) {
                        continue;
                    }
                    if let Some(to) = self.nodes.iter_mut().find(|n| n.addr == transmit.to) {
                        self.delivered += 1;
                        to.protocol
                            .handle_datagram(self.now, from, &transmit.datagram);
                    }
                }
            }
            panic!("the nodes never stopped sending");
        }

        /// Lets `duration` pass in small steps, running every timer that comes due.
        fn run_for(&mut self, duration: Duration) {
            let end = self.now + duration;
            while self.now < end {
                self.now = self.now + STEP;
                for node in &mut self.nodes {
                    // More often than needed, which the protocol must tolerate.
                    node.protocol.handle_timeout(self.now);
                }
                self.deliver();
            }
        }
    }

    impl Node {
        fn config(&self) -> PeerConfig {
            PeerConfig {
                node_id: self.id.clone(),
                public_key: self.key,
                endpoint: Some(self.addr),
            }
        }
    }

    fn peer_list() -> Message {
        Message::PeerList(PeerList {
            peers: Vec::new(),
            msg_id: MsgId::random(),
        })
    }

    fn incoming(protocol: &mut Protocol) -> Vec<Incoming> {
        std::iter::from_fn(|| protocol.poll_incoming()).collect()
    }

    fn completions(protocol: &mut Protocol) -> Vec<Completion> {
        std::iter::from_fn(|| protocol.poll_completion()).collect()
    }

    /// alpha and beta, peers with a completed handshake; everything beta sends from now on
    /// (handshake responses, acks) is lost until `cut_off` is cleared.
    fn pair_with_beta_silenced() -> Network {
        let mut network = Network::new(&["alpha", "beta"], &ClusterSecret::generate());
        network.connect_all();
        let beta = network.nodes[1].addr;
        network.cut_off.push(beta);
        network
    }

    /// Asserts that node 0's only completion is the ack of `id`.
    fn assert_acknowledged(network: &mut Network, id: MsgId) {
        match completions(network.node(0)).as_slice() {
            [Completion::Sent {
                id: acked,
                result: Ok(()),
            }] => assert_eq!(*acked, id),
            other => panic!("expected the ack of {id}, got {other:?}"),
        }
    }

    /// Sends `message` reliably from node 0 to node 1.
    fn send_reliably(network: &mut Network, message: &Message, wait: Duration) -> MsgId {
        let to = network.nodes[1].id.clone();
        let id = message.msg_id().unwrap();
        let now = network.now;
        network
            .node(0)
            .send_reliable(now, to, id, frame(message).unwrap(), wait)
            .unwrap();
        id
    }

    #[test]
    fn a_reliable_message_survives_lost_datagrams_and_arrives_once() {
        let secret = ClusterSecret::generate();
        let mut network = Network::new(&["alpha", "beta"], &secret);
        network.connect_all();
        // Everything beta sends (handshake responses, acks) is lost for two seconds.
        let beta = network.nodes[1].addr;
        network.cut_off.push(beta);
        let message = peer_list();
        let id = send_reliably(&mut network, &message, Duration::from_secs(30));
        network.run_for(Duration::from_secs(2));
        assert!(
            completions(network.node(0)).is_empty(),
            "no ack got through"
        );
        network.cut_off.clear();
        network.run_for(Duration::from_secs(5));

        let received = incoming(network.node(1));
        assert_eq!(received.len(), 1, "resent copies are handed over once");
        match &received[0] {
            Incoming::Message { from, message: got } => {
                assert_eq!(from.as_str(), "alpha");
                assert_eq!(*got, message);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_acknowledged(&mut network, id);
    }

    #[test]
    fn an_unanswered_message_is_given_up_at_its_deadline() {
        let mut network = pair_with_beta_silenced();
        let id = send_reliably(&mut network, &peer_list(), Duration::from_secs(3));
        network.run_for(Duration::from_secs(4));
        match completions(network.node(0)).as_slice() {
            [Completion::Sent {
                id: failed,
                result: Err(SendError::Unacknowledged { attempts, .. }),
            }] => {
                assert_eq!(*failed, id);
                assert!(*attempts >= 3, "resent before giving up: {attempts}");
            }
            other => panic!("unexpected completions {other:?}"),
        }
    }

    #[test]
    fn a_newcomer_joins_through_a_verified_request_and_a_new_tunnel() {
        let secret = ClusterSecret::generate();
        let mut network = Network::new(&["member", "newcomer"], &secret);
        let member = network.nodes[0].config();
        let now = network.now;
        let my_endpoint: Endpoint = "127.0.0.1:50002".parse().unwrap();
        network
            .node(1)
            .start_join(
                now,
                member.clone(),
                member.endpoint.unwrap(),
                my_endpoint.clone(),
                Duration::from_secs(10),
            )
            .unwrap();
        network.deliver();
        let candidate = match incoming(network.node(0)).as_slice() {
            [Incoming::JoinRequest(candidate)] => candidate.clone(),
            other => panic!("expected one join request, got {other:?}"),
        };
        assert_eq!(candidate.node_id.as_str(), "newcomer");
        assert_eq!(candidate.endpoint, my_endpoint);
        assert_eq!(candidate.public_key, network.nodes[1].key);

        let accept = JoinAccept {
            assigned_priority: Priority::try_from(2).unwrap(),
            peers: Vec::new(),
            config: SharedConfig {
                version: ConfigVersion {
                    number: 1,
                    by: network.nodes[0].id.clone(),
                },
                text: "shared settings".to_owned(),
            },
            publisher: None,
            msg_id: MsgId::random(),
        };
        let packet = frame(&Message::JoinAccept(accept.clone())).unwrap();
        network
            .node(0)
            .accept_join(
                now,
                candidate,
                accept.msg_id,
                packet,
                Duration::from_secs(10),
            )
            .unwrap();
        network.run_for(Duration::from_secs(1));

        match completions(network.node(1)).as_slice() {
            [Completion::Joined(Ok(joined))] => assert_eq!(*joined, accept),
            other => panic!("unexpected completions {other:?}"),
        }
        assert!(
            incoming(network.node(1)).is_empty(),
            "the answer is not a message"
        );
        match completions(network.node(0)).as_slice() {
            [Completion::Sent { result: Ok(()), .. }] => {}
            other => panic!("the member's answer was not acknowledged: {other:?}"),
        }
        // The request repeats once a second until answered; one answer ends it.
        network.run_for(Duration::from_secs(3));
        assert!(incoming(network.node(0)).is_empty());
    }

    #[test]
    fn a_join_request_under_another_secret_is_not_handed_over() {
        let mut network = Network::new(&["member"], &ClusterSecret::generate());
        let outsider_secret = ClusterSecret::generate();
        let mut outsider = Network::new(&["outsider"], &outsider_secret);
        let member = network.nodes[0].config();
        let now = network.now;
        outsider
            .node(0)
            .start_join(
                now,
                member.clone(),
                member.endpoint.unwrap(),
                "127.0.0.1:50009".parse().unwrap(),
                Duration::from_secs(2),
            )
            .unwrap();
        let request = outsider.node(0).poll_transmit().unwrap();
        network
            .node(0)
            .handle_datagram(now, outsider.nodes[0].addr, &request.datagram);
        assert!(incoming(network.node(0)).is_empty());
        assert!(
            network.node(0).poll_transmit().is_none(),
            "no answer at all"
        );

        // Unanswered, the join gives up at its timeout and forgets the origin.
        outsider.run_for(Duration::from_secs(3));
        match completions(outsider.node(0)).as_slice() {
            [Completion::Joined(Err(JoinError::NoAnswer { .. }))] => {}
            other => panic!("unexpected completions {other:?}"),
        }
        assert!(outsider.node(0).tunnel_statuses().is_empty());
    }

    #[test]
    fn a_forged_or_foreign_datagram_changes_nothing() {
        let secret = ClusterSecret::generate();
        let mut network = Network::new(&["alpha", "beta"], &secret);
        network.connect_all();
        let before = network.node(0).tunnel_statuses();
        let stranger = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let now = network.now;
        for datagram in [&b""[..], b"\x04garbage", &[4; 148], &[1; 148]] {
            network.node(0).handle_datagram(now, stranger, datagram);
        }
        // A node with another cluster secret has the right keys but not the pair's PSK.
        let mut foreign = Network::new(&["beta"], &ClusterSecret::generate());
        let alpha = network.nodes[0].config();
        foreign.node(0).add_peer(alpha, true).unwrap();
        let init = foreign.node(0).poll_transmit().unwrap();
        network
            .node(0)
            .handle_datagram(now, stranger, &init.datagram);
        let endpoints = |statuses: Vec<TunnelStatus>| -> Vec<_> {
            statuses
                .into_iter()
                .map(|s| (s.node_id, s.endpoint))
                .collect()
        };
        assert_eq!(
            endpoints(network.node(0).tunnel_statuses()),
            endpoints(before),
            "no endpoint moved"
        );
        assert!(incoming(network.node(0)).is_empty());
    }

    #[test]
    fn a_full_inbox_leaves_messages_unacknowledged_until_there_is_room() {
        let secret = ClusterSecret::generate();
        let mut network = Network::new(&["alpha", "beta"], &secret);
        network.connect_all();
        for _ in 0..INBOX_CAPACITY {
            send_reliably(&mut network, &peer_list(), Duration::from_secs(30));
        }
        network.deliver();
        let extra = send_reliably(&mut network, &peer_list(), Duration::from_secs(30));
        network.deliver();
        let acked = completions(network.node(0));
        assert_eq!(acked.len(), INBOX_CAPACITY);
        assert!(acked
            .iter()
            .all(|c| !matches!(c, Completion::Sent { id, .. } if *id == extra)));
        // The program reads; the resend of the extra message is then taken and acknowledged.
        assert_eq!(incoming(network.node(1)).len(), INBOX_CAPACITY);
        network.run_for(Duration::from_secs(1));
        assert_eq!(incoming(network.node(1)).len(), 1);
        assert_acknowledged(&mut network, extra);
    }

    #[test]
    fn resends_go_on_when_the_clock_steps_back() {
        let mut network = pair_with_beta_silenced();
        let id = send_reliably(&mut network, &peer_list(), Duration::from_secs(30));
        network.run_for(Duration::from_secs(1));
        network.now = network.now.saturating_sub(Duration::from_secs(3600));
        let now = network.now;
        assert!(network.node(0).poll_timeout(now) <= now + TIMER_TICK);
        network.cut_off.clear();
        // The next resend is due within its backoff, not an hour later.
        network.run_for(Duration::from_secs(3));
        assert_acknowledged(&mut network, id);
    }
}
