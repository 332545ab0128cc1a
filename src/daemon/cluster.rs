//! The daemon's cluster loop: one task that owns the election and carries out what it decides
//! over the transport, admits joining nodes, and keeps the membership (`peers/`) current.
//!
//! - **heartbeat / receive**: every message from a peer goes to the election; the election's
//!   actions go out as wire messages (heartbeats once, lease claims and releases reliably to
//!   every member) or switch the publish loop on and off through a `watch` channel.
//! - **local health**: the Tor side reports bootstrap, upload results and health rounds;
//!   [`PublishAbility`] turns them into the election's `LocalHealth` bit.
//! - **membership**: a verified join request gets the next free priority, the members and the
//!   shared configuration through the new tunnel; once the newcomer acknowledged, every other
//!   member hears a `PeerAnnounce`. Each node also repeats its member list now and then, so a
//!   member that was down during an announcement catches up.
//! - **shutdown**: the election's `LeaseRelease` goes to every member (waiting briefly for
//!   the acks), so a standby takes over at once instead of after the grace.

use std::collections::HashSet;
use std::mem::Discriminant;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::clock::Timestamp;
use crate::cluster::election::{Action, LeaseMessage, Warning};
use crate::cluster::lease::{LeaseCore, LeaseInput, LocalEvent};
use crate::cluster::log_limit::LogLimiter;
use crate::cluster::membership::{
    Admission, Impostor, JoinRefusal, Learned, Learning, MemberRefusal, Membership,
};
use crate::cluster::messages::{JoinAccept, Message, MsgId, PeerAnnounce, PeerInfo, PeerList};
use crate::cluster::transport::{Inbox, Incoming, JoinCandidate, PeerConfig, SendError, Transport};
use crate::cluster::{Endpoint, NodeId, Priority, Role};
use crate::config::Config;
use crate::daemon::status::{PeerStatus, StatusBoard};
use crate::storage::node_files;

/// How often a node repeats its member list to every peer.
const PEER_LIST_INTERVAL: Duration = Duration::from_secs(60);
/// How long an announcement of a new member is resent to a peer that does not acknowledge.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(60);
/// How long the accepting node resends the answer to a join request.
const JOIN_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long a clean shutdown waits for the peers to acknowledge the lease release.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// The loop goes round at least this often even when the election has nothing due, so its
/// progress (what systemd's watchdog hears about) is fresh.
const MAX_IDLE: Duration = Duration::from_secs(1);
/// At most one election warning about the same peer in this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Everything the cluster loop starts from.
pub struct ClusterSetup {
    pub me: NodeId,
    pub priority: Priority,
    /// How peers reach this node; without it, this node cannot admit newcomers.
    pub endpoint: Option<Endpoint>,
    pub config_dir: PathBuf,
    /// The shared tables of config.toml, handed to joining nodes.
    pub shared_config: String,
    pub members: Vec<PeerInfo>,
    pub lease: LeaseCore,
    /// How long a lease claim or release is resent: after a publisher timeout it is moot.
    pub claim_wait: Duration,
    pub transport: Transport,
    pub publishing: watch::Sender<bool>,
    pub board: StatusBoard,
    /// When the loop last went round (Unix milliseconds), for systemd's watchdog.
    pub progress: Arc<AtomicU64>,
}

/// The outcome of admitting a newcomer (reported by the task that waited for its ack).
struct JoinDone {
    newcomer: PeerInfo,
    result: Result<(), SendError>,
}

struct ClusterNode {
    priority: Priority,
    config_dir: PathBuf,
    shared_config: String,
    membership: Membership,
    lease: LeaseCore,
    claim_wait: Duration,
    transport: Transport,
    publishing: watch::Sender<bool>,
    board: StatusBoard,
    progress: Arc<AtomicU64>,
    joins_done: mpsc::Sender<JoinDone>,
    warnings: LogLimiter<(Discriminant<Warning>, Option<NodeId>)>,
    /// Refusals already logged (impostors, bad member records), each kind once per sender:
    /// only members can send, so this stays small.
    refusals_logged: HashSet<(NodeId, RefusalKind)>,
    last_publisher: Option<NodeId>,
}

/// Run the cluster loop until `shutdown` turns true (then release the lease and close the
/// transport) or the transport stops.
pub async fn run(
    setup: ClusterSetup,
    mut inbox: Inbox,
    mut local: mpsc::Receiver<LocalEvent>,
    mut configs: watch::Receiver<Arc<Config>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (joins_done, mut joins) = mpsc::channel(16);
    let my_record = setup.endpoint.map(|endpoint| PeerInfo {
        node_id: setup.me.clone(),
        endpoint,
        public_key: setup.transport.public_key(),
        priority: setup.priority,
    });
    let mut node = ClusterNode {
        membership: Membership::new(setup.me, setup.priority, my_record, setup.members),
        priority: setup.priority,
        config_dir: setup.config_dir,
        shared_config: setup.shared_config,
        lease: setup.lease,
        claim_wait: setup.claim_wait,
        transport: setup.transport,
        publishing: setup.publishing,
        board: setup.board,
        progress: setup.progress,
        joins_done,
        warnings: LogLimiter::new(WARN_INTERVAL),
        refusals_logged: HashSet::new(),
        last_publisher: None,
    };
    let mut peer_lists = tokio::time::interval_at(
        tokio::time::Instant::now() + PEER_LIST_INTERVAL,
        PEER_LIST_INTERVAL,
    );
    node.send_peer_list().await;
    node.step(LeaseInput::Tick).await;
    node.refresh();
    loop {
        let now = now();
        let wake = node
            .lease
            .election()
            .poll_timeout(now)
            .saturating_duration_since(now)
            .min(MAX_IDLE);
        tokio::select! {
            _ = tokio::time::sleep(wake) => {
                node.step(LeaseInput::Tick).await;
            }
            incoming = inbox.recv() => match incoming {
                Some(Incoming::Message { from, message }) => node.on_message(from, message).await,
                Some(Incoming::JoinRequest(candidate)) => node.on_join_request(candidate),
                None => {
                    tracing::error!("the cluster transport stopped");
                    return;
                }
            },
            Some(event) = local.recv() => {
                node.step(LeaseInput::Local(event)).await;
            }
            Some(done) = joins.recv() => node.on_join_done(done).await,
            _ = peer_lists.tick() => node.send_peer_list().await,
            Ok(()) = configs.changed() => {
                let config = configs.borrow_and_update().clone();
                node.apply(&config);
            }
            _ = shutdown.changed() => {
                node.shut_down().await;
                return;
            }
        }
        node.refresh();
    }
}

/// The transport's view of a member: its key, and its endpoint resolved now. A name that does
/// not resolve is logged and left out: the peer is then reached once it contacts this node.
pub(super) async fn transport_peer(peer: &PeerInfo) -> PeerConfig {
    let endpoint = match peer.endpoint.resolve().await {
        Ok(address) => Some(address),
        Err(err) => {
            tracing::warn!(
                "peer {}: cannot resolve its endpoint {}: {err}; waiting until it contacts this node",
                peer.node_id,
                peer.endpoint
            );
            None
        }
    };
    PeerConfig {
        node_id: peer.node_id.clone(),
        public_key: peer.public_key,
        endpoint,
    }
}

/// The local wall clock, which peers compare message timestamps with.
/// A kind of refusal, logged once per sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RefusalKind {
    Impostor(Discriminant<Impostor>),
    Member(Discriminant<MemberRefusal>),
}

/// What a lease message is called in the log.
fn message_kind(message: &LeaseMessage) -> &'static str {
    match message {
        LeaseMessage::Heartbeat(_) => "heartbeat",
        LeaseMessage::LeaseClaim(_) => "lease claim",
        LeaseMessage::LeaseRelease(_) => "lease release",
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

impl ClusterNode {
    /// Feed one input to the lease core and carry out the election's decisions.
    async fn step(&mut self, input: LeaseInput) -> Vec<JoinHandle<()>> {
        let actions = self.lease.handle(input, now());
        self.perform(actions).await
    }

    /// Carry out the election's actions. Returns the tasks resending acknowledged messages.
    async fn perform(&mut self, actions: Vec<Action>) -> Vec<JoinHandle<()>> {
        let mut resends = Vec::new();
        for action in actions {
            match action {
                Action::BroadcastHeartbeat(heartbeat) => {
                    let message = Message::Heartbeat(heartbeat);
                    if let Err(err) = self.transport.broadcast(&message).await {
                        tracing::warn!("cannot send the heartbeat: {err}");
                    }
                }
                Action::BroadcastLeaseClaim(claim) => {
                    resends.extend(
                        self.send_to_members(self.claim_wait, || Message::lease_claim(&claim)),
                    );
                }
                Action::BroadcastLeaseRelease(release) => {
                    resends.extend(
                        self.send_to_members(self.claim_wait, || Message::lease_release(&release)),
                    );
                }
                Action::StartPublishing => {
                    tracing::info!(
                        "this node is now the publisher (priority {})",
                        self.priority
                    );
                    self.publishing.send_replace(true);
                }
                Action::StopPublishing => {
                    tracing::info!("this node is now a standby: it stops publishing");
                    self.publishing.send_replace(false);
                }
                Action::Warn(warning) => {
                    // Rate-limited per kind of warning and peer, so a peer with a skewed clock
                    // is reported every half minute, not at every heartbeat.
                    let subject = (std::mem::discriminant(&warning), warning.about().cloned());
                    if let Some(held_back) = self.warnings.allow(subject, Timestamp::now()) {
                        if held_back > 0 {
                            tracing::warn!("{warning} ({held_back} more like it held back)");
                        } else {
                            tracing::warn!("{warning}");
                        }
                    }
                }
            }
        }
        resends
    }

    /// Send a message (made fresh per member, each with its own msg_id) reliably to every
    /// member, each in its own task so that a dead member delays nobody.
    fn send_to_members(
        &self,
        give_up_after: Duration,
        message: impl Fn() -> Message,
    ) -> Vec<JoinHandle<()>> {
        self.membership
            .members()
            .map(|member| {
                let (transport, member, message) =
                    (self.transport.clone(), member.node_id.clone(), message());
                tokio::spawn(async move {
                    let kind = message.kind();
                    if let Err(err) = transport
                        .send_reliable(&member, message, give_up_after)
                        .await
                    {
                        tracing::debug!("{kind} to {member} not delivered: {err}");
                    }
                })
            })
            .collect()
    }

    async fn on_message(&mut self, from: NodeId, message: Message) {
        if let Some(message) = message.to_election() {
            match self.membership.vouch(&from, message.priority()) {
                Ok(()) => {
                    self.step(LeaseInput::Heard(message)).await;
                }
                Err(impostor) => self.refuse_once(
                    &from,
                    RefusalKind::Impostor(std::mem::discriminant(&impostor)),
                    format_args!(
                        "refused a {} from {from}: {impostor}",
                        message_kind(&message)
                    ),
                ),
            }
            return;
        }
        match message {
            Message::PeerAnnounce(announce) => {
                self.learn_peer(announce.peer, Learned::Announced, &from)
                    .await
            }
            Message::PeerList(list) => {
                for peer in list.peers {
                    self.learn_peer(peer, Learned::Listed, &from).await;
                }
            }
            Message::JoinAccept(_) => {
                tracing::debug!("ignored a JoinAccept from {from}: this node is not joining");
            }
            // Heartbeats and lease messages went to the election; acks stay in the transport.
            _ => {}
        }
    }

    /// Logs `what` about `from` the first time a refusal of this kind concerns it.
    fn refuse_once(&mut self, from: &NodeId, kind: RefusalKind, what: std::fmt::Arguments<'_>) {
        if self.refusals_logged.insert((from.clone(), kind)) {
            tracing::warn!("{what} (logged once)");
        }
    }

    /// Record a member that `via` told us about, if membership says it is news.
    async fn learn_peer(&mut self, peer: PeerInfo, how: Learned, via: &NodeId) {
        match self.membership.learn(&peer, how) {
            Learning::News => {}
            Learning::Known => return,
            Learning::Refused(refusal) => {
                self.refuse_once(
                    via,
                    RefusalKind::Member(std::mem::discriminant(&refusal)),
                    format_args!(
                        "ignored member {} as told by {via}: {refusal}",
                        peer.node_id
                    ),
                );
                return;
            }
        }
        if let Err(err) = self.transport.add_peer(transport_peer(&peer).await).await {
            tracing::warn!("ignored peer {} announced by {via}: {err}", peer.node_id);
            return;
        }
        if let Err(err) = node_files::save_peer(&self.config_dir, &peer) {
            tracing::warn!("peer {} is in use but not saved: {err}", peer.node_id);
        }
        tracing::info!(
            "new cluster member {} (priority {}) at {}, announced by {via}",
            peer.node_id,
            peer.priority,
            peer.endpoint
        );
        self.membership.adopt(peer);
    }

    /// Tell every member which members this node knows, so one that missed an announcement
    /// (it was down) learns them. Unacknowledged: it is repeated every minute.
    async fn send_peer_list(&mut self) {
        let message = Message::PeerList(PeerList {
            peers: self.membership.gossip(),
            msg_id: MsgId::random(),
        });
        if let Err(err) = self.transport.broadcast(&message).await {
            tracing::warn!("cannot send the member list: {err}");
        }
    }

    /// A node with the cluster secret asks to join: offer it a priority, the members and the
    /// shared configuration, as membership decides.
    fn on_join_request(&mut self, candidate: JoinCandidate) {
        let admission = match self.membership.admit(&candidate) {
            Ok(admission) => admission,
            // The newcomer resends its request while the first answer is on its way.
            Err(JoinRefusal::InProgress(_)) => return,
            Err(refusal) => {
                tracing::warn!(
                    "refused the join request of {} from {}: {refusal}",
                    candidate.node_id,
                    candidate.source
                );
                return;
            }
        };
        let Admission { newcomer, members } = admission;
        let accept = JoinAccept {
            assigned_priority: newcomer.priority,
            peers: members,
            config: self.shared_config.clone(),
            publisher: self.lease.election().publisher(now()).cloned(),
            msg_id: MsgId::random(),
        };
        tracing::info!(
            "{} asks to join from {}: admitting it with priority {}",
            candidate.node_id,
            candidate.source,
            newcomer.priority
        );
        let (transport, done) = (self.transport.clone(), self.joins_done.clone());
        tokio::spawn(async move {
            let result = transport
                .accept_join(candidate, accept, JOIN_ANSWER_WAIT)
                .await;
            let _ = done.send(JoinDone { newcomer, result }).await;
        });
    }

    /// The newcomer acknowledged (or never did): record it and tell every other member.
    async fn on_join_done(&mut self, done: JoinDone) {
        let JoinDone { newcomer, result } = done;
        let announce_to = self.membership.join_done(&newcomer, result.is_ok());
        if let Err(err) = result {
            tracing::warn!("{} did not complete its join: {err}", newcomer.node_id);
            return;
        }
        if let Err(err) = node_files::save_peer(&self.config_dir, &newcomer) {
            tracing::warn!("member {} is in use but not saved: {err}", newcomer.node_id);
        }
        tracing::info!(
            "{} joined the cluster with priority {} (endpoint {})",
            newcomer.node_id,
            newcomer.priority,
            newcomer.endpoint
        );
        for member in announce_to {
            let message = Message::PeerAnnounce(PeerAnnounce {
                peer: newcomer.clone(),
                msg_id: MsgId::random(),
            });
            let (transport, member) = (self.transport.clone(), member.clone());
            tokio::spawn(async move {
                if let Err(err) = transport
                    .send_reliable(&member, message, ANNOUNCE_WAIT)
                    .await
                {
                    tracing::warn!("could not tell {member} about the new member: {err}");
                }
            });
        }
    }

    /// A reloaded configuration: new intervals, and the shared tables a newcomer receives.
    fn apply(&mut self, config: &Config) {
        self.lease.set_timing(
            (&config.timing).into(),
            config.timing.upload_failure_release,
        );
        self.claim_wait = config.timing.publisher_timeout;
        self.shared_config = config.shared_text().to_owned();
    }

    /// Update `status` and log a change of publisher.
    fn refresh(&mut self) {
        let now = now();
        self.progress.store(now.as_unix_millis(), Ordering::Relaxed);
        let publisher = self.lease.election().publisher(now).cloned();
        if publisher != self.last_publisher {
            match &publisher {
                Some(id) => tracing::info!("cluster publisher: {id}"),
                None => tracing::info!("cluster publisher: none (lease vacant)"),
            }
            self.last_publisher = publisher.clone();
        }
        let mut peers: Vec<PeerStatus> = self
            .lease
            .election()
            .peers(now)
            .map(|view| PeerStatus {
                node_id: view.node_id.clone(),
                priority: view.priority,
                role: view.role,
                can_publish: view.can_publish,
                live: view.live,
                last_heard: view.last_heard.map(|t| t.as_unix_secs()),
                last_publish: view.last_publish.map(|t| t.as_unix_secs()),
                endpoint: self
                    .membership
                    .member(view.node_id)
                    .map(|peer| peer.endpoint.to_string()),
                clock_offset_ms: view.clock_offset_ms,
            })
            .collect();
        // Members the election has not heard from since start.
        for member in self.membership.members() {
            if !peers.iter().any(|p| p.node_id == member.node_id) {
                peers.push(PeerStatus {
                    node_id: member.node_id.clone(),
                    priority: member.priority,
                    role: Role::Standby,
                    can_publish: false,
                    live: false,
                    last_heard: None,
                    last_publish: None,
                    endpoint: Some(member.endpoint.to_string()),
                    clock_offset_ms: None,
                });
            }
        }
        peers.sort_by_key(|p| (p.priority, p.node_id.clone()));
        let (role, can_publish) = (
            self.lease.election().role(),
            self.lease.election().can_publish(),
        );
        self.board.update(|status| {
            status.role = role;
            status.can_publish = can_publish;
            status.publisher = publisher;
            status.peers = peers;
            status.generated_at = Timestamp::now().as_unix_secs();
        });
    }

    /// Clean shutdown: stop publishing, release the lease to every member (waiting briefly
    /// for their acks), close the socket.
    async fn shut_down(&mut self) {
        let resends = self.step(LeaseInput::Shutdown).await;
        if tokio::time::timeout(RELEASE_WAIT, join_all(resends))
            .await
            .is_err()
        {
            tracing::info!("not every member acknowledged the lease release in time");
        }
        self.transport.shutdown().await;
    }
}
