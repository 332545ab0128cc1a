//! The task that owns the socket: the thin shell around [`Protocol`].
//!
//! It waits for whichever comes first: a datagram, a command from a
//! [`Transport`](super::Transport) handle, room in the program's inbox for what the protocol
//! received, or the protocol's next timeout. It feeds that to the protocol with the current
//! time, then sends the datagrams the protocol produced and answers the commands whose outcome
//! it reported. Everything runs on this one task, so the tunnels need no locks and every change
//! of state has one order.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::protocol::{Completion, Protocol};
use super::{
    Incoming, JoinCandidate, JoinError, PeerConfig, PeerError, SendError, TunnelStatus,
    WARN_INTERVAL, WG_BUFFER_LEN,
};
use crate::clock::Timestamp;
use crate::cluster::messages::{JoinAccept, MsgId};
use crate::cluster::secret::ClusterSecret;
use crate::cluster::{Endpoint, NodeId};
use crate::logging::limit::LogLimiter;

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
    Rekey {
        peer: NodeId,
        secret: ClusterSecret,
        done: oneshot::Sender<bool>,
    },
    SetSecret {
        secret: ClusterSecret,
        done: oneshot::Sender<()>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// Everything the socket task owns.
pub(super) struct SocketTask {
    /// Receives, through tokio.
    socket: UdpSocket,
    /// The same socket, non-blocking, for sending on the spot without awaiting.
    sender: std::net::UdpSocket,
    send_warnings: LogLimiter<SocketAddr>,
    protocol: Protocol,
    /// Where received messages go; the protocol holds them until there is room.
    incoming: mpsc::Sender<Incoming>,
    /// The callers waiting for their reliable messages' acks.
    waiting_for_ack: HashMap<MsgId, oneshot::Sender<Result<(), SendError>>>,
    /// The caller waiting for the join under way.
    waiting_for_join: Option<oneshot::Sender<Result<JoinAccept, JoinError>>>,
}

impl SocketTask {
    pub(super) fn new(
        socket: UdpSocket,
        sender: std::net::UdpSocket,
        protocol: Protocol,
        incoming: mpsc::Sender<Incoming>,
    ) -> Self {
        SocketTask {
            socket,
            sender,
            send_warnings: LogLimiter::new(WARN_INTERVAL),
            protocol,
            incoming,
            waiting_for_ack: HashMap::new(),
            waiting_for_join: None,
        }
    }

    /// Serves the socket until shutdown or until every handle is gone.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut datagram = vec![0u8; WG_BUFFER_LEN];
        self.protocol.connect_all();
        self.flush();
        let shutdown_done = loop {
            let now = Timestamp::now();
            let wait = self
                .protocol
                .poll_timeout(now)
                .saturating_duration_since(now);
            let has_incoming = self.protocol.has_incoming();
            tokio::select! {
                received = self.socket.recv_from(&mut datagram) => match received {
                    Ok((len, source)) => {
                        self.protocol.handle_datagram(Timestamp::now(), source, &datagram[..len]);
                    }
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
                // An owned permit, so that waiting for room borrows nothing of the task.
                room = self.incoming.clone().reserve_owned(), if has_incoming => match room {
                    Ok(permit) => {
                        if let Some(incoming) = self.protocol.poll_incoming() {
                            permit.send(incoming);
                        }
                    }
                    // The program dropped its inbox: nobody reads what arrives.
                    Err(_) => while self.protocol.poll_incoming().is_some() {},
                },
                () = tokio::time::sleep(wait) => {
                    self.forget_abandoned();
                    self.protocol.handle_timeout(Timestamp::now());
                }
            }
            self.flush();
        };
        // Close the socket before saying we stopped, so the caller can bind the port again.
        drop(self);
        if let Some(done) = shutdown_done {
            // The caller may have stopped waiting; the socket is closed either way.
            let _ = done.send(());
        }
    }

    fn on_command(&mut self, command: Command) -> ControlFlow<oneshot::Sender<()>> {
        let now = Timestamp::now();
        // In every arm, a caller that stopped waiting does not need the answer: `send` results
        // are ignored on purpose.
        match command {
            Command::Send { to, packet, done } => {
                let _ = done.send(self.protocol.send(&to, &packet));
            }
            Command::Broadcast { packet, done } => {
                let _ = done.send(self.protocol.broadcast(&packet));
            }
            Command::SendReliable {
                to,
                id,
                packet,
                give_up_after,
                done,
            } => {
                let sent = self
                    .protocol
                    .send_reliable(now, to, id, packet, give_up_after);
                self.wait_for_ack(id, sent, done);
            }
            Command::AddPeer { peer, done } => {
                let _ = done.send(self.protocol.add_peer(peer, true));
            }
            Command::AcceptJoin {
                candidate,
                id,
                packet,
                give_up_after,
                done,
            } => {
                let sent = self
                    .protocol
                    .accept_join(now, candidate, id, packet, give_up_after);
                self.wait_for_ack(id, sent, done);
            }
            Command::Join {
                origin,
                origin_addr,
                my_endpoint,
                timeout,
                done,
            } => match self
                .protocol
                .start_join(now, origin, origin_addr, my_endpoint, timeout)
            {
                Ok(()) => self.waiting_for_join = Some(done),
                Err(error) => {
                    let _ = done.send(Err(error));
                }
            },
            Command::Peers { done } => {
                let _ = done.send(self.protocol.tunnel_statuses());
            }
            Command::Rekey { peer, secret, done } => {
                let _ = done.send(self.protocol.rekey_peer(&peer, &secret));
            }
            Command::SetSecret { secret, done } => {
                self.protocol.set_secret(&secret);
                let _ = done.send(());
            }
            Command::Shutdown { done } => return ControlFlow::Break(done),
        }
        ControlFlow::Continue(())
    }

    fn wait_for_ack(
        &mut self,
        id: MsgId,
        sent: Result<(), SendError>,
        done: oneshot::Sender<Result<(), SendError>>,
    ) {
        match sent {
            Ok(()) => {
                self.waiting_for_ack.insert(id, done);
            }
            Err(error) => {
                let _ = done.send(Err(error));
            }
        }
    }

    /// Tells the protocol to stop working for callers that stopped waiting.
    fn forget_abandoned(&mut self) {
        let protocol = &mut self.protocol;
        self.waiting_for_ack.retain(|id, done| {
            let abandoned = done.is_closed();
            if abandoned {
                protocol.abandon(*id);
            }
            !abandoned
        });
        if self
            .waiting_for_join
            .as_ref()
            .is_some_and(|done| done.is_closed())
        {
            self.waiting_for_join = None;
            protocol.abandon_join();
        }
    }

    /// Sends what the protocol produced and answers the callers whose outcome it reported.
    fn flush(&mut self) {
        while let Some(transmit) = self.protocol.poll_transmit() {
            // UDP may lose it anyway; WireGuard's handshake retries and our resends cover a
            // full send buffer just as they cover a lost packet.
            if let Err(error) = self.sender.send_to(&transmit.datagram, transmit.to) {
                if let Some(suppressed) = self.send_warnings.allow(transmit.to, Timestamp::now()) {
                    warn!(to = %transmit.to, suppressed, "cannot send to {}: {error}", transmit.to);
                }
            }
        }
        while let Some(completion) = self.protocol.poll_completion() {
            // A caller that stopped waiting does not need the answer.
            match completion {
                Completion::Sent { id, result } => {
                    if let Some(done) = self.waiting_for_ack.remove(&id) {
                        let _ = done.send(result);
                    }
                }
                Completion::Joined(result) => {
                    if let Some(done) = self.waiting_for_join.take() {
                        let _ = done.send(result);
                    }
                }
            }
        }
    }
}
