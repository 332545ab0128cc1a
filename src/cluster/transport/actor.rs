//! The task that owns the socket and every tunnel.
//!
//! boringtun's `Tunn` is sans-IO: it turns datagrams into plaintext and back, and must be driven by
//! timers from outside (ARCHITECTURE.md, "WireGuard in process"). This task is that outside. It
//! waits for whichever comes first: a datagram, a command from a [`Transport`](super::Transport)
//! handle, the 250 ms tunnel timers, the once-a-second rate-limiter reset and clean-up, or the next
//! resend of an unacknowledged message or join request. Everything runs on this one task, so the
//! tunnels need no locks and every change of state has one order.
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

use std::fmt;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::PublicKey;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};
use tracing::{debug, info, warn};
use zeroize::Zeroize as _;

use super::framing::{self, FramingError};
use super::join_guard::{JoinGuard, JoinRejection};
use super::peer::{Inserted, PeerTable};
use super::reliable::Outbox;
use super::{
    frame, unix_now_secs, Incoming, JoinCandidate, JoinError, PeerConfig, PeerError, SendError,
    TunnelStatus, WgPrivateKey, WgPublicKey, HANDSHAKE_RATE_LIMIT, JOIN_RETRY_INTERVAL,
    RATE_LIMITER_RESET, TIMER_TICK, WARN_INTERVAL, WG_BUFFER_LEN,
};
use crate::cluster::log_limit::LogLimiter;
use crate::cluster::messages::{
    Ack, JoinAccept, JoinRequest, Message, MessageError, MsgId, JOIN_REQUEST_TAG,
};
use crate::cluster::secret::ClusterSecret;
use crate::cluster::{Endpoint, NodeId};

/// The first byte of a WireGuard cookie reply (message type 3).
const WG_COOKIE_REPLY: u8 = 3;

/// What a [`Transport`](super::Transport) handle asks of the socket task. Each carries the
/// channel for its answer; a caller that stopped waiting simply never reads it.
pub(super) enum Command {
    Send {
        to: NodeId,
        packet: Vec<u8>,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Broadcast {
        packet: Vec<u8>,
        done: oneshot::Sender<usize>,
    },
    SendReliable {
        to: NodeId,
        id: MsgId,
        packet: Vec<u8>,
        give_up_after: Duration,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    AddPeer {
        peer: PeerConfig,
        done: oneshot::Sender<Result<(), PeerError>>,
    },
    AcceptJoin {
        candidate: JoinCandidate,
        id: MsgId,
        packet: Vec<u8>,
        give_up_after: Duration,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Join {
        origin: PeerConfig,
        origin_addr: SocketAddr,
        my_endpoint: Endpoint,
        timeout: Duration,
        done: oneshot::Sender<Result<JoinAccept, JoinError>>,
    },
    Peers {
        done: oneshot::Sender<Vec<TunnelStatus>>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
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

/// The socket, with the warnings about what arrives on it.
struct Net {
    /// Receives, through tokio.
    socket: UdpSocket,
    /// The same socket, non-blocking, for sending on the spot: the tunnels hand us datagrams
    /// in buffers we must reuse at once, so we cannot await.
    sender: std::net::UdpSocket,
    warnings: LogLimiter<SocketAddr>,
}

impl Net {
    /// Sends a datagram without waiting. UDP may lose it anyway; WireGuard's handshake retries
    /// and our resends cover a full send buffer just as they cover a lost packet.
    fn transmit(&mut self, to: SocketAddr, datagram: &[u8]) {
        if let Err(error) = self.sender.send_to(datagram, to) {
            self.warn(to, format_args!("cannot send to {to}: {error}"));
        }
    }

    /// Logs a warning about `source`, unless one was logged for it in the last few seconds.
    fn warn(&mut self, source: SocketAddr, what: fmt::Arguments<'_>) {
        if let Some(suppressed) = self.warnings.allow(source, Instant::now()) {
            warn!(%source, suppressed, "{what}");
        }
    }
}

/// A join this node is waiting for (the newcomer's side).
struct PendingJoin {
    origin: NodeId,
    origin_addr: SocketAddr,
    my_endpoint: Endpoint,
    /// Whether the origin was a peer already, so a failed join leaves it in place.
    origin_was_peer: bool,
    started: Instant,
    give_up: Instant,
    next_request: Instant,
    done: oneshot::Sender<Result<JoinAccept, JoinError>>,
}

/// Everything the socket task owns.
pub(super) struct Actor {
    net: Net,
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
    incoming: mpsc::Sender<Incoming>,
    /// The one output buffer every `Tunn` call writes into (ARCHITECTURE.md, "WireGuard in
    /// process": 64 KiB, always).
    buf: Box<[u8]>,
}

impl Actor {
    pub(super) fn new(
        socket: UdpSocket,
        sender: std::net::UdpSocket,
        me: NodeId,
        private_key: WgPrivateKey,
        secret: &ClusterSecret,
        incoming: mpsc::Sender<Incoming>,
    ) -> Self {
        let public_key = private_key.public_key();
        let public_x25519 = public_key.to_x25519();
        let mut secret_bytes = *secret.as_bytes();
        let secret = ClusterSecret::from_bytes(secret_bytes);
        secret_bytes.zeroize();
        Actor {
            net: Net {
                socket,
                sender,
                warnings: LogLimiter::new(WARN_INTERVAL),
            },
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
            incoming,
            buf: vec![0u8; WG_BUFFER_LEN].into_boxed_slice(),
        }
    }

    /// Serves the socket until shutdown or until every handle is gone.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tunnel_timers = interval(TIMER_TICK);
        tunnel_timers.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut every_second = interval(RATE_LIMITER_RESET);
        every_second.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut datagram = vec![0u8; WG_BUFFER_LEN];

        self.start_all_handshakes();
        let shutdown_done = loop {
            let wake = self.next_wake();
            tokio::select! {
                received = self.net.socket.recv_from(&mut datagram) => match received {
                    Ok((len, source)) => self.on_datagram(&datagram[..len], source),
                    // Linux reports ICMP errors of earlier sends here; nothing to do about them.
                    Err(error) => debug!(%error, "cluster socket receive error"),
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        if let ControlFlow::Break(done) = self.on_command(command) {
                            break Some(done);
                        }
                    }
                    None => break None,
                },
                _ = tunnel_timers.tick() => self.on_timer_tick(),
                _ = every_second.tick() => self.on_second(),
                _ = sleep_until_some(wake) => self.on_wake(Instant::now()),
            }
        };
        // Close the socket before saying we stopped, so the caller can bind the port again.
        drop(self);
        if let Some(done) = shutdown_done {
            // The caller may have stopped waiting; the socket is closed either way.
            let _ = done.send(());
        }
    }

    /// Starts a handshake with every peer whose endpoint is known: after a restart this makes
    /// the cluster reachable within a round trip instead of waiting for the peers' own retries
    /// (ARCHITECTURE.md, "WireGuard in process").
    fn start_all_handshakes(&mut self) {
        let peers: Vec<NodeId> = self.peers.iter().map(|peer| peer.node_id.clone()).collect();
        for peer in &peers {
            self.start_handshake(peer);
        }
    }

    pub(super) fn add_peer(
        &mut self,
        config: PeerConfig,
        start_handshake: bool,
    ) -> Result<(), PeerError> {
        if config.node_id == self.me || config.public_key == self.public_key {
            return Err(PeerError::IsSelf(config.node_id));
        }
        let node_id = config.node_id.clone();
        let private = self.private_key.as_x25519().clone();
        let peer_key = config.public_key.to_x25519();
        let psk = self.secret.pair_psk(&self.me, &config.node_id);
        let rate_limiter = Arc::clone(&self.rate_limiter);
        let inserted = self.peers.insert(config, |index| {
            Tunn::new(
                private,
                peer_key,
                Some(psk),
                None,
                index,
                Some(rate_limiter),
            )
        })?;
        if inserted == Inserted::NewTunnel && start_handshake {
            self.start_handshake(&node_id);
        }
        Ok(())
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
            self.net.transmit(endpoint, init);
        }
    }

    /// Hands `packet` to `to`'s tunnel, which sends it or queues it behind a handshake.
    fn send_packet(&mut self, to: &NodeId, packet: &[u8]) -> Result<(), SendError> {
        let peer = self
            .peers
            .get_mut(to)
            .ok_or_else(|| SendError::UnknownPeer(to.clone()))?;
        let endpoint = peer
            .endpoint
            .ok_or_else(|| SendError::NoEndpoint(to.clone()))?;
        match peer.tunn.encapsulate(packet, &mut self.buf) {
            TunnResult::WriteToNetwork(datagram) => self.net.transmit(endpoint, datagram),
            // The packet is queued; boringtun retries the handshake on its timers.
            TunnResult::Err(error) => debug!(peer = %to, ?error, "cannot start a handshake yet"),
            // Queued behind a handshake already under way.
            _ => {}
        }
        Ok(())
    }

    fn on_command(&mut self, command: Command) -> ControlFlow<oneshot::Sender<()>> {
        // In every arm, a caller that stopped waiting does not need the answer: `send` results
        // are ignored on purpose.
        match command {
            Command::Send { to, packet, done } => {
                let _ = done.send(self.send_packet(&to, &packet));
            }
            Command::Broadcast { packet, done } => {
                let reachable: Vec<NodeId> = self
                    .peers
                    .iter()
                    .filter(|peer| peer.endpoint.is_some())
                    .map(|peer| peer.node_id.clone())
                    .collect();
                let sent = reachable
                    .iter()
                    .filter(|to| self.send_packet(to, &packet).is_ok())
                    .count();
                let _ = done.send(sent);
            }
            Command::SendReliable {
                to,
                id,
                packet,
                give_up_after,
                done,
            } => self.send_reliable(to, id, packet, give_up_after, done),
            Command::AddPeer { peer, done } => {
                let _ = done.send(self.add_peer(peer, true));
            }
            Command::AcceptJoin {
                candidate,
                id,
                packet,
                give_up_after,
                done,
            } => self.accept_join(candidate, id, packet, give_up_after, done),
            Command::Join {
                origin,
                origin_addr,
                my_endpoint,
                timeout,
                done,
            } => self.start_join(origin, origin_addr, my_endpoint, timeout, done),
            Command::Peers { done } => {
                let _ = done.send(self.peer_statuses());
            }
            Command::Shutdown { done } => return ControlFlow::Break(done),
        }
        ControlFlow::Continue(())
    }

    fn send_reliable(
        &mut self,
        to: NodeId,
        id: MsgId,
        packet: Vec<u8>,
        give_up_after: Duration,
        done: oneshot::Sender<Result<(), SendError>>,
    ) {
        match self.send_packet(&to, &packet) {
            Ok(()) => self
                .outbox
                .track(id, to, packet, give_up_after, Instant::now(), done),
            Err(error) => {
                let _ = done.send(Err(error));
            }
        }
    }

    /// The member's side of a join: the newcomer becomes a peer at the address its verified
    /// request came from, and the answer goes through the tunnel this opens.
    fn accept_join(
        &mut self,
        candidate: JoinCandidate,
        id: MsgId,
        packet: Vec<u8>,
        give_up_after: Duration,
        done: oneshot::Sender<Result<(), SendError>>,
    ) {
        let config = PeerConfig {
            node_id: candidate.node_id.clone(),
            public_key: candidate.public_key,
            endpoint: Some(candidate.source),
        };
        match self.add_peer(config, false) {
            Ok(()) => {
                // A fresh handshake even if the newcomer was a peer before: a node that joins
                // again has restarted and lost the sessions we may still hold.
                self.start_handshake(&candidate.node_id);
                info!(
                    peer = %candidate.node_id,
                    source = %candidate.source,
                    "join accepted; sending the cluster configuration through the new tunnel"
                );
                self.send_reliable(candidate.node_id, id, packet, give_up_after, done);
            }
            Err(error) => {
                let _ = done.send(Err(error.into()));
            }
        }
    }

    /// The newcomer's side of a join: the origin becomes a peer, but no handshake starts, since
    /// the origin does not know our key yet; it starts the handshake once it accepts us.
    fn start_join(
        &mut self,
        origin: PeerConfig,
        origin_addr: SocketAddr,
        my_endpoint: Endpoint,
        timeout: Duration,
        done: oneshot::Sender<Result<JoinAccept, JoinError>>,
    ) {
        if self.joining.is_some() {
            let _ = done.send(Err(JoinError::AlreadyJoining));
            return;
        }
        let origin_id = origin.node_id.clone();
        let origin_was_peer = self.peers.contains(&origin_id);
        if let Err(error) = self.add_peer(origin, false) {
            let _ = done.send(Err(error.into()));
            return;
        }
        let now = Instant::now();
        self.joining = Some(PendingJoin {
            origin: origin_id,
            origin_addr,
            my_endpoint,
            origin_was_peer,
            started: now,
            give_up: now + timeout,
            next_request: now,
            done,
        });
        self.join_tick(now);
    }

    /// Sends the join request again when due, or gives up.
    fn join_tick(&mut self, now: Instant) {
        let Some(join) = &mut self.joining else {
            return;
        };
        if join.done.is_closed() || now >= join.give_up {
            let error = JoinError::NoAnswer {
                origin: join.origin_addr,
                waited: now.duration_since(join.started),
            };
            self.finish_join(Err(error));
            return;
        }
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
            unix_now_secs(),
        );
        let origin_addr = join.origin_addr;
        match request.to_datagram() {
            Ok(datagram) => self.net.transmit(origin_addr, &datagram),
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
        let _ = join.done.send(result);
    }

    fn peer_statuses(&self) -> Vec<TunnelStatus> {
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

    /// When the next resend or join step is due.
    fn next_wake(&self) -> Option<Instant> {
        let join = self
            .joining
            .as_ref()
            .map(|join| join.next_request.min(join.give_up));
        match (self.outbox.next_deadline(), join) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_wake(&mut self, now: Instant) {
        for resend in self.outbox.due(now) {
            if let Err(error) = self.send_packet(&resend.to, &resend.packet) {
                debug!(peer = %resend.to, %error, "cannot resend yet");
            }
        }
        self.join_tick(now);
    }

    /// Runs every tunnel's timers: handshake retries, keepalives, key rotation.
    fn on_timer_tick(&mut self) {
        let Actor {
            peers, net, buf, ..
        } = self;
        for peer in peers.iter_mut() {
            match peer.tunn.update_timers(buf) {
                TunnResult::WriteToNetwork(datagram) => {
                    if let Some(endpoint) = peer.endpoint {
                        net.transmit(endpoint, datagram);
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
    fn on_second(&mut self) {
        let now = Instant::now();
        self.rate_limiter.reset_count();
        self.net.warnings.forget_quiet(now);
        self.join_guard.forget_old(unix_now_secs(), now);
        for peer in self.peers.iter_mut() {
            peer.seen.forget_old(now);
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], source: SocketAddr) {
        match datagram.first() {
            // boringtun reads an empty datagram as "send your queued packets" (ARCHITECTURE.md,
            // "WireGuard in process").
            None => self
                .net
                .warn(source, format_args!("dropped an empty datagram")),
            Some(&JOIN_REQUEST_TAG) => self.on_join_request(datagram, source),
            Some(_) => {
                if let Some((peer, proves_sender)) = self.route(datagram, source) {
                    self.decapsulate(peer, proves_sender, datagram, source);
                }
            }
        }
    }

    /// Finds the tunnel a WireGuard packet belongs to, after boringtun's cheap checks. Also
    /// says whether the packet, once it decrypts, proves who sent it: initiations and cookie
    /// replies do not (see the module documentation).
    fn route(&mut self, datagram: &[u8], source: SocketAddr) -> Option<(NodeId, bool)> {
        let packet =
            match self
                .rate_limiter
                .verify_packet(Some(source.ip()), datagram, &mut self.buf)
            {
                Ok(packet) => packet,
                Err(TunnResult::WriteToNetwork(cookie)) => {
                    // Too many handshakes this second: the initiator must first prove its address.
                    self.net.transmit(source, cookie);
                    return None;
                }
                Err(_) => {
                    self.net.warn(
                        source,
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
                    self.net.warn(
                        source,
                        format_args!("dropped a handshake that is not addressed to our key"),
                    );
                    return None;
                };
                let key = WgPublicKey::from_bytes(half.peer_static_public);
                return match self.peers.id_by_key(&key) {
                    Some(peer) => Some((peer.clone(), false)),
                    None => {
                        self.net.warn(
                            source,
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
                self.net.warn(
                    source,
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
        node_id: NodeId,
        proves_sender: bool,
        datagram: &[u8],
        source: SocketAddr,
    ) {
        let Actor {
            peers, net, buf, ..
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
                net.warn(
                    source,
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
                net.transmit(source, reply);
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
                net.transmit(endpoint, queued);
            }
        }
        match plaintext {
            Some(Ok(message)) => self.on_message(node_id, message, source),
            Some(Err(error)) => self.net.warn(
                source,
                format_args!("dropped a message from peer {node_id}: {error}"),
            ),
            None => {}
        }
    }

    /// Acts on an authenticated message from `from`.
    fn on_message(&mut self, from: NodeId, message: Message, source: SocketAddr) {
        if let Some(claimed) = message.claimed_sender() {
            if *claimed != from {
                self.net.warn(
                    source,
                    format_args!(
                        "dropped a {} from peer {from} that claims to come from {claimed}",
                        message.kind()
                    ),
                );
                return;
            }
        }
        if let Message::Ack(Ack { msg_id }) = message {
            if !self.outbox.acknowledge(&from, msg_id) {
                debug!(peer = %from, %msg_id, "ack for a message no longer waiting");
            }
            return;
        }
        let answers_our_join = matches!(message, Message::JoinAccept(_))
            && self
                .joining
                .as_ref()
                .is_some_and(|join| join.origin == from);
        if !answers_our_join && self.incoming.capacity() == 0 && !self.incoming.is_closed() {
            // Not acknowledged either, so the sender will offer it again.
            self.net.warn(
                source,
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
                .is_some_and(|peer| peer.seen.first_time(msg_id, Instant::now()));
            if !first_time {
                debug!(peer = %from, %msg_id, kind = message.kind(), "repeated message ignored");
                return;
            }
        }
        match message {
            Message::JoinAccept(accept) if answers_our_join => self.finish_join(Ok(accept)),
            message => {
                // Only this task sends into the inbox and its capacity was checked above, so
                // this fails only if the program dropped its inbox: then nobody is listening.
                let _ = self.incoming.try_send(Incoming::Message { from, message });
            }
        }
    }

    fn send_ack(&mut self, to: &NodeId, msg_id: MsgId) {
        let sent = frame(&Message::Ack(Ack { msg_id }))
            .map_err(SendError::from)
            .and_then(|packet| self.send_packet(to, &packet));
        if let Err(error) = sent {
            debug!(peer = %to, %msg_id, %error, "cannot acknowledge");
        }
    }

    /// A clear-text join request: checked, then handed to the program to decide.
    fn on_join_request(&mut self, datagram: &[u8], source: SocketAddr) {
        let request = match JoinRequest::from_datagram(datagram) {
            Ok(request) => request,
            Err(error) => {
                self.net.warn(
                    source,
                    format_args!("dropped a malformed join request: {error}"),
                );
                return;
            }
        };
        if request.node_id == self.me || request.public_key == self.public_key {
            self.net.warn(
                source,
                format_args!("dropped a join request that uses this node's own id or key"),
            );
            return;
        }
        let now = Instant::now();
        match self
            .join_guard
            .admit(&request, &self.secret, unix_now_secs(), now)
        {
            Ok(()) => {}
            Err(JoinRejection::Repeat) => {
                debug!(node = %request.node_id, %source, "repeated join request while deciding");
                return;
            }
            Err(rejection) => {
                self.net.warn(
                    source,
                    format_args!(
                        "refused a join request (claimed node id {}): {rejection}",
                        request.node_id
                    ),
                );
                return;
            }
        }
        info!(node = %request.node_id, %source, "verified join request");
        let candidate = JoinCandidate {
            node_id: request.node_id,
            public_key: request.public_key,
            endpoint: request.endpoint,
            source,
        };
        if let Err(error) = self.incoming.try_send(Incoming::JoinRequest(candidate)) {
            debug!(%error, "join request not handed over; the newcomer will ask again");
        }
    }
}

/// A decrypted IPv4 packet back into a message.
fn decode(packet: &[u8]) -> Result<Message, PlaintextError> {
    Ok(Message::decode(framing::unwrap(packet)?)?)
}

/// Sleeps until `deadline`, or forever if there is none.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
