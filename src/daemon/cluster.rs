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
//!   member hears a `PeerAnnounce`, and the newcomer hears one of each member whose join
//!   completed while it was being admitted (its accept could not list them). Nodes that join
//!   at the same time would otherwise not know each other, and a node drops the tunnel of a
//!   member it does not know: they would learn each other only from the node that admitted
//!   them, a minute later, or never if it is gone, each seeing no one better and claiming the
//!   lease. Each node repeats its member list now and then, so a member that was down during
//!   an announcement catches up, and at once when it learns a member (joins through two
//!   different members at the same time).
//! - **removal**: `rustbalance remove` on any member removes a member everywhere (membership
//!   decides; this loop keeps `removed/`, tells the members and the removed node). A removed
//!   node that is told stops, and refuses to start again.
//! - **shared configuration**: edits, SIGHUP and members' newer versions go through the
//!   [`ConfigKeeper`]; heartbeats carry each member's version so one behind is sent the newer.
//! - **secret rotation**: `rustbalance rotate-secret` replaces the cluster secret on every
//!   member; each tunnel switches to the new key once both ends hold it
//!   ([`SecretRotation`] decides; heartbeats carry each member's secret id).
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
use crate::cluster::config_sync::{ConfigVersion, SharedConfig};
use crate::cluster::election::{Action, LeaseMessage, Warning};
use crate::cluster::lease::{LeaseCore, LeaseInput, LocalEvent};
use crate::cluster::membership::{
    Admission, Impostor, JoinRefusal, Learned, Learning, MemberRefusal, Membership, Removal,
};
use crate::cluster::messages::{
    JoinAccept, MemberRemoved, Message, MsgId, PeerAnnounce, PeerInfo, PeerList, SecretUpdate,
};
use crate::cluster::secret::ClusterSecret;
use crate::cluster::secret_rotation::{RotationStep, SecretRotation};
use crate::cluster::transport::{Inbox, Incoming, JoinCandidate, PeerConfig, SendError, Transport};
use crate::cluster::{Endpoint, NodeId, Priority, Role};
use crate::config::Config;
use crate::daemon::control::{ControlReply, ControlRequest, OperatorCommand};
use crate::daemon::shared_config::ConfigKeeper;
use crate::daemon::status::{PeerStatus, StatusBoard};
use crate::logging::limit::LogLimiter;
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
/// How long a new shared configuration is resent to a member that does not acknowledge it
/// (one that is down gets it from its peers' heartbeats when it returns).
const CONFIG_SEND_WAIT: Duration = Duration::from_secs(60);
/// How often a removed node that still speaks is told again that it is removed.
const REMOVED_TELL_INTERVAL: Duration = Duration::from_secs(30);
/// At most one election warning about the same peer in this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Everything the cluster loop starts from.
pub struct ClusterSetup {
    pub me: NodeId,
    pub priority: Priority,
    /// How peers reach this node; without it, this node cannot admit newcomers.
    pub endpoint: Option<Endpoint>,
    pub config_dir: PathBuf,
    /// The cluster's shared configuration, handed to joining nodes and kept the same on
    /// every member.
    pub shared_config: ConfigKeeper,
    pub members: Vec<PeerInfo>,
    /// Members removed from the cluster (`removed/`).
    pub removed: Vec<PeerInfo>,
    pub lease: LeaseCore,
    /// How long a lease claim or release is resent: after a publisher timeout it is moot.
    pub claim_wait: Duration,
    pub transport: Transport,
    pub publishing: watch::Sender<bool>,
    pub board: StatusBoard,
    /// When the loop last went round (Unix milliseconds), for systemd's watchdog.
    pub progress: Arc<AtomicU64>,
    /// The cluster secret in force.
    pub secret: ClusterSecret,
    /// During an unfinished rotation: the secret it replaced, and the peers whose tunnels
    /// still use it (the transport was set up so).
    pub previous_secret: Option<(ClusterSecret, Vec<NodeId>)>,
    /// During a rotation, how long a peer may be silent before the other key is tried.
    pub rekey_after_silence: Duration,
}

/// The outcome of admitting a newcomer (reported by the task that waited for its ack).
struct JoinDone {
    newcomer: PeerInfo,
    result: Result<(), SendError>,
}

struct ClusterNode {
    priority: Priority,
    config_dir: PathBuf,
    shared_config: ConfigKeeper,
    membership: Membership,
    lease: LeaseCore,
    claim_wait: Duration,
    transport: Transport,
    publishing: watch::Sender<bool>,
    board: StatusBoard,
    progress: Arc<AtomicU64>,
    joins_done: mpsc::Sender<JoinDone>,
    secret: ClusterSecret,
    previous_secret: Option<ClusterSecret>,
    rotation: SecretRotation,
    /// Members that acknowledged the new secret, from the tasks that sent it.
    secret_acks: mpsc::Sender<NodeId>,
    warnings: LogLimiter<(Discriminant<Warning>, Option<NodeId>)>,
    /// Refusals already logged (impostors, bad member records), each kind once per sender:
    /// only members can send, so this stays small.
    refusals_logged: HashSet<(NodeId, RefusalKind)>,
    last_publisher: Option<NodeId>,
    /// When a removed node that still speaks was last told so.
    removed_told: LogLimiter<NodeId>,
    /// Set when a member told this node that it was removed.
    removed_by: Option<NodeId>,
}

/// Why the cluster loop stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterExit {
    /// The daemon asked it to (the lease was released).
    Shutdown,
    /// The transport's socket task ended (an internal error, logged).
    TransportStopped,
    /// A member said this node was removed from the cluster.
    Removed { by: NodeId },
}

/// Run the cluster loop until `shutdown` turns true (then release the lease and close the
/// transport), the transport stops, or this node learns that it was removed.
pub async fn run(
    setup: ClusterSetup,
    mut inbox: Inbox,
    mut local: mpsc::Receiver<LocalEvent>,
    mut configs: watch::Receiver<Arc<Config>>,
    mut commands: mpsc::Receiver<OperatorCommand>,
    mut shutdown: watch::Receiver<bool>,
) -> ClusterExit {
    let (joins_done, mut joins) = mpsc::channel(16);
    let (secret_acks, mut acks) = mpsc::channel(16);
    let rotation = SecretRotation::new(
        setup.me.clone(),
        setup.secret.id(),
        setup
            .previous_secret
            .as_ref()
            .map(|(secret, peers)| (secret.id(), peers.iter().cloned().collect())),
        setup.rekey_after_silence,
        now(),
    );
    let my_record = setup.endpoint.map(|endpoint| PeerInfo {
        node_id: setup.me.clone(),
        endpoint,
        public_key: setup.transport.public_key(),
        priority: setup.priority,
    });
    let mut node = ClusterNode {
        membership: Membership::new(
            setup.me,
            setup.priority,
            my_record,
            setup.members,
            setup.removed,
        ),
        priority: setup.priority,
        config_dir: setup.config_dir,
        shared_config: setup.shared_config,
        lease: setup.lease,
        claim_wait: setup.claim_wait,
        transport: setup.transport,
        publishing: setup.publishing,
        board: setup.board,
        progress: setup.progress,
        secret: setup.secret,
        previous_secret: setup.previous_secret.map(|(secret, _)| secret),
        rotation,
        secret_acks,
        joins_done,
        warnings: LogLimiter::new(WARN_INTERVAL),
        refusals_logged: HashSet::new(),
        last_publisher: None,
        removed_told: LogLimiter::new(REMOVED_TELL_INTERVAL),
        removed_by: None,
    };
    let mut peer_lists = tokio::time::interval_at(
        tokio::time::Instant::now() + PEER_LIST_INTERVAL,
        PEER_LIST_INTERVAL,
    );
    node.send_peer_list().await;
    node.step(LeaseInput::Tick).await;
    node.refresh();
    loop {
        let looked_at = now();
        let wake = node
            .lease
            .election()
            .poll_timeout(looked_at)
            .saturating_duration_since(looked_at)
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
                    return ClusterExit::TransportStopped;
                }
            },
            Some(event) = local.recv() => {
                node.step(LeaseInput::Local(event)).await;
            }
            Some(done) = joins.recv() => node.on_join_done(done).await,
            Some(peer) = acks.recv() => {
                let step = node.rotation.acknowledged(&peer, now());
                node.carry_out(step).await;
            }
            Some(command) = commands.recv() => node.on_command(command).await,
            _ = peer_lists.tick() => node.send_peer_list().await,
            Ok(()) = configs.changed() => {
                let config = configs.borrow_and_update().clone();
                node.apply(&config);
            }
            _ = shutdown.changed() => {
                node.shut_down().await;
                return ClusterExit::Shutdown;
            }
        }
        for step in node.rotation.tick(now()) {
            node.carry_out(Some(step)).await;
        }
        if let Some(by) = node.removed_by.take() {
            node.step(LeaseInput::Shutdown).await;
            node.transport.shutdown().await;
            return ClusterExit::Removed { by };
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
                Action::BroadcastHeartbeat(mut heartbeat) => {
                    heartbeat.config_version = Some(self.shared_config.version().clone());
                    heartbeat.secret_id = Some(self.rotation.current());
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
                let message = message();
                let kind = message.kind();
                self.send_in_task(
                    member.node_id.clone(),
                    message,
                    give_up_after,
                    move |to, err| {
                        tracing::debug!("{kind} to {to} not delivered: {err}");
                    },
                )
            })
            .collect()
    }

    /// Send `message` reliably to `to` in a task of its own, so that a dead member delays
    /// nobody; `not_delivered` reports a failure.
    fn send_in_task(
        &self,
        to: NodeId,
        message: Message,
        give_up_after: Duration,
        not_delivered: impl FnOnce(&NodeId, SendError) + Send + 'static,
    ) -> JoinHandle<()> {
        let transport = self.transport.clone();
        tokio::spawn(async move {
            if let Err(err) = transport.send_reliable(&to, message, give_up_after).await {
                not_delivered(&to, err);
            }
        })
    }

    async fn on_message(&mut self, from: NodeId, message: Message) {
        if self.membership.removed(&from).is_some() {
            self.tell_removed(&from);
            return;
        }
        if let Some(lease_message) = message.to_election() {
            match self.membership.vouch(&from, lease_message.priority()) {
                Ok(()) => {
                    if let Message::Heartbeat(heartbeat) = message {
                        self.heard_config_version(&from, heartbeat.config_version);
                        let pending = self.rotation.pending().count();
                        let step = self.rotation.heard(&from, heartbeat.secret_id, now());
                        self.carry_out(step).await;
                        if self.rotation.pending().count() != pending {
                            self.save_previous_secret();
                        }
                    }
                    self.step(LeaseInput::Heard(lease_message)).await;
                }
                Err(impostor) => self.refuse_once(
                    &from,
                    RefusalKind::Impostor(std::mem::discriminant(&impostor)),
                    format_args!(
                        "refused a {} from {from}: {impostor}",
                        message_kind(&lease_message)
                    ),
                ),
            }
            return;
        }
        match message {
            Message::PeerAnnounce(announce) => {
                let learned = self
                    .learn_peer(announce.peer, Learned::Announced, &from)
                    .await;
                if learned {
                    self.send_peer_list().await;
                }
            }
            Message::PeerList(list) => {
                let mut learned = false;
                for peer in list.peers {
                    if let Some(record) = self.membership.removed(&peer.node_id) {
                        // `from` missed the removal: tell it.
                        let record = record.clone();
                        self.send_removal(&from, &record);
                        continue;
                    }
                    learned |= self.learn_peer(peer, Learned::Listed, &from).await;
                }
                if learned {
                    self.send_peer_list().await;
                }
            }
            Message::SecretUpdate(update)
                if self.membership.member(&from).is_some()
                    && self.rotation.is_new(update.secret.id()) =>
            {
                tracing::warn!(
                    "{from} replaced the cluster secret: tunnels switch to it as the members get it; join tokens made before no longer work"
                );
                self.adopt_secret(update.secret, Some(&from)).await;
            }
            Message::MemberRemoved(removal) if self.membership.member(&from).is_some() => {
                self.on_removal(&removal.member, &from).await;
            }
            Message::SharedConfigUpdate(update) if self.membership.member(&from).is_some() => {
                self.receive_shared_config(&update.config, &from);
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

    /// Record a member that `via` told us about, if membership says it is news. Returns
    /// whether it was recorded.
    async fn learn_peer(&mut self, peer: PeerInfo, how: Learned, via: &NodeId) -> bool {
        match self.membership.learn(&peer, how) {
            Learning::News => {}
            Learning::Known => return false,
            Learning::Refused(refusal) => {
                self.refuse_once(
                    via,
                    RefusalKind::Member(std::mem::discriminant(&refusal)),
                    format_args!(
                        "ignored member {} as told by {via}: {refusal}",
                        peer.node_id
                    ),
                );
                return false;
            }
        }
        if let Err(err) = self.transport.add_peer(transport_peer(&peer).await).await {
            tracing::warn!("ignored peer {} announced by {via}: {err}", peer.node_id);
            return false;
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
        true
    }

    /// Tell every member which members this node knows, so one that missed an announcement
    /// (it was down, or joined at the same time) learns them. Unacknowledged: it is repeated
    /// every minute.
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
            config: self.shared_config.current(),
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
        let news = self.membership.join_done(&newcomer, result.is_ok());
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
        for member in news.announce_to {
            self.announce(&newcomer, member);
        }
        for missed in news.missed_by_newcomer {
            self.announce(&missed, newcomer.node_id.clone());
        }
    }

    /// Tell `to`, reliably and in a task of its own, that `member` belongs to the cluster.
    fn announce(&self, member: &PeerInfo, to: NodeId) {
        let message = Message::PeerAnnounce(PeerAnnounce {
            peer: member.clone(),
            msg_id: MsgId::random(),
        });
        let about = member.node_id.clone();
        self.send_in_task(to, message, ANNOUNCE_WAIT, move |to, err| {
            tracing::warn!("could not tell {to} about member {about}: {err}");
        });
    }

    /// A reloaded configuration: new intervals.
    fn apply(&mut self, config: &Config) {
        self.lease.set_timing(
            (&config.timing).into(),
            config.timing.upload_failure_release,
            config.timing.hsdir_failure,
        );
        self.claim_wait = config.timing.publisher_timeout;
    }

    /// `new` is the cluster secret from now on (made here, or sent by `from`): keep the old one
    /// for the tunnels that still use it, write both, and take joins under the new one.
    async fn adopt_secret(&mut self, new: ClusterSecret, from: Option<&NodeId>) {
        let members = self.member_ids();
        let step = self
            .rotation
            .rotated(new.id(), &members, from, now())
            .into_iter()
            .next();
        let old = std::mem::replace(&mut self.secret, new);
        self.previous_secret = Some(old);
        self.save_previous_secret();
        if let Err(err) = node_files::save_cluster_secret(&self.config_dir, &self.secret) {
            tracing::error!("the new cluster secret is in force but not saved: {err}");
        }
        self.transport.set_secret(&self.secret).await;
        self.carry_out(step).await;
    }

    /// Switch a tunnel to the current secret, or send a member still on the previous one the
    /// current secret.
    async fn carry_out(&mut self, step: Option<RotationStep>) {
        let Some(step) = step else {
            return;
        };
        match step {
            RotationStep::Rekey(peer) => {
                tracing::debug!("the tunnel to {peer} switches to the new cluster secret");
                self.transport.rekey_peer(&peer, &self.secret).await;
            }
            RotationStep::UsePrevious(peer) => {
                if let Some(previous) = &self.previous_secret {
                    tracing::debug!(
                        "{peer} is silent: trying the previous cluster secret's key with it"
                    );
                    self.transport.rekey_peer(&peer, previous).await;
                }
            }
            RotationStep::SendSecret(peer) => self.send_secret(&peer),
        }
    }

    /// Send `to` the current secret; its acknowledgement switches our end of its tunnel.
    fn send_secret(&self, to: &NodeId) {
        let message = Message::SecretUpdate(SecretUpdate {
            secret: self.secret.clone(),
            msg_id: MsgId::random(),
        });
        let (transport, to, acks) = (self.transport.clone(), to.clone(), self.secret_acks.clone());
        tokio::spawn(async move {
            match transport.send_reliable(&to, message, ANNOUNCE_WAIT).await {
                Ok(()) => {
                    let _ = acks.send(to).await;
                }
                Err(err) => tracing::debug!("the new cluster secret did not reach {to}: {err}"),
            }
        });
    }

    /// Keep the previous secret and the peers still on it (none left: forget it).
    fn save_previous_secret(&mut self) {
        let Some(previous) = &self.previous_secret else {
            return;
        };
        let peers = self.rotation.pending().cloned();
        if let Err(err) = node_files::save_previous_secret(&self.config_dir, previous, peers) {
            tracing::error!("cannot save the previous cluster secret: {err}");
        }
        if !self.rotation.under_way() {
            self.previous_secret = None;
            tracing::info!("every member's tunnel uses the new cluster secret");
        }
    }

    /// A member said `member` is removed from the cluster.
    async fn on_removal(&mut self, member: &PeerInfo, by: &NodeId) {
        if member.node_id == *self.lease.election().me() {
            tracing::error!(
                "{by} says this node was removed from the cluster: it stops publishing and exits, and will refuse to start again"
            );
            if let Err(err) = node_files::save_this_node_removed(&self.config_dir, by) {
                tracing::error!("cannot record the removal: {err}");
            }
            self.removed_by = Some(by.clone());
            return;
        }
        if let Removal::News(record) = self.membership.removed_by_member(member) {
            tracing::warn!("{} was removed from the cluster by {by}", record.node_id);
            self.forget_member(&record).await;
        }
    }

    /// Forget a removed member here: its files, the election, what it runs.
    async fn forget_member(&mut self, record: &PeerInfo) {
        if let Err(err) = node_files::save_removed(&self.config_dir, record) {
            tracing::error!(
                "{} is removed but the removal is not saved: {err}",
                record.node_id
            );
        }
        self.shared_config.forget(&record.node_id);
        self.rotation.forget(&record.node_id);
        self.save_previous_secret();
        self.step(LeaseInput::MemberRemoved(record.node_id.clone()))
            .await;
    }

    /// `to` should know that `record` was removed.
    fn send_removal(&self, to: &NodeId, record: &PeerInfo) {
        let message = Message::MemberRemoved(MemberRemoved {
            member: record.clone(),
            msg_id: MsgId::random(),
        });
        self.send_in_task(to.clone(), message, ANNOUNCE_WAIT, |to, err| {
            tracing::debug!("the removal was not delivered to {to}: {err}");
        });
    }

    /// A removed node still speaks: tell it (now and then) that it is removed, so it stops.
    fn tell_removed(&mut self, removed: &NodeId) {
        if self.removed_told.allow(removed.clone(), now()).is_none() {
            return;
        }
        if let Some(record) = self.membership.removed(removed).cloned() {
            tracing::info!("{removed}, removed from the cluster, still speaks: telling it");
            self.send_removal(removed, &record);
        }
    }

    /// A command from the operator: SIGHUP, or a request on the control socket.
    async fn on_command(&mut self, command: OperatorCommand) {
        match command {
            OperatorCommand::Reload => match self.shared_config.reload() {
                Ok(Some(shared)) => {
                    tracing::info!(
                        "SIGHUP: configuration reloaded; its shared tables are version {}, sent to every member",
                        shared.version
                    );
                    self.send_shared_config();
                }
                Ok(None) => tracing::info!("SIGHUP: configuration reloaded"),
                Err(err) => tracing::error!(
                    "SIGHUP: configuration not reloaded: {err}; the running configuration stays in force"
                ),
            },
            OperatorCommand::Control { request, reply } => {
                let answer = self.on_control(&request).await;
                let _ = reply.send(answer);
            }
        }
    }

    /// Carry out an operator's request from the control socket.
    async fn on_control(&mut self, request: &ControlRequest) -> ControlReply {
        if let ControlRequest::RotateSecret = request {
            self.adopt_secret(ClusterSecret::generate(), None).await;
            let members = self.member_ids();
            for member in &members {
                self.rotation.sent(member, now());
                self.send_secret(member);
            }
            tracing::warn!("the cluster secret was replaced here, and sent to every member");
            return ControlReply::Done {
                message: format!(
                    "a new cluster secret is in force here and was sent to {} member(s); join tokens made before no longer work (print a new one with `rustbalance token`)",
                    members.len()
                ),
            };
        }
        if let ControlRequest::RemoveMember { node_id } = request {
            return match self.membership.remove(node_id) {
                Ok(record) => {
                    tracing::warn!("{node_id} removed from the cluster by the operator");
                    self.forget_member(&record).await;
                    let members = self.member_ids();
                    for member in members.iter().chain([node_id]) {
                        self.send_removal(member, &record);
                    }
                    ControlReply::Done {
                        message: format!(
                            "{node_id} is removed: its key is refused from now on; {} member(s) and {node_id} itself are being told",
                            members.len()
                        ),
                    }
                }
                Err(refusal) => ControlReply::Refused {
                    error: refusal.to_string(),
                },
            };
        }
        if let Some(edit) = request.backend_edit() {
            return match self.shared_config.edit(&edit) {
                Ok(Some(shared)) => {
                    tracing::info!(
                        "shared configuration version {} made here ({request:?}), sent to every member",
                        shared.version
                    );
                    let members = self.send_shared_config();
                    ControlReply::Done {
                        message: format!(
                            "shared configuration version {} is running here and was sent to {members} member(s)",
                            shared.version
                        ),
                    }
                }
                Ok(None) => ControlReply::Done {
                    message: format!(
                        "nothing to change: the shared configuration stays at version {}",
                        self.shared_config.version()
                    ),
                },
                Err(err) => ControlReply::Refused {
                    error: err.to_string(),
                },
            };
        }
        ControlReply::Refused {
            error: format!("{request:?} is not supported by this node"),
        }
    }

    /// The other members' ids.
    fn member_ids(&self) -> Vec<NodeId> {
        self.membership
            .members()
            .map(|member| member.node_id.clone())
            .collect()
    }

    /// Send the running shared configuration to every member (after a change made here).
    /// Returns to how many.
    fn send_shared_config(&mut self) -> usize {
        let now = now();
        let members = self.member_ids();
        for member in &members {
            self.shared_config.sent(member, now);
        }
        let config = self.shared_config.current();
        self.send_to_members(CONFIG_SEND_WAIT, || Message::shared_config_update(&config));
        members.len()
    }

    /// A member's heartbeat said which shared configuration it runs: one behind is sent ours.
    fn heard_config_version(&mut self, from: &NodeId, running: Option<ConfigVersion>) {
        if !self.shared_config.heard(from, running, now()) {
            return;
        }
        let (transport, to, message) = (
            self.transport.clone(),
            from.clone(),
            Message::shared_config_update(&self.shared_config.current()),
        );
        tokio::spawn(async move {
            if let Err(err) = transport
                .send_reliable(&to, message, CONFIG_SEND_WAIT)
                .await
            {
                tracing::debug!("shared configuration to {to} not delivered: {err}");
            }
        });
    }

    /// A member sent a shared configuration: apply it if it is newer.
    fn receive_shared_config(&mut self, config: &SharedConfig, from: &NodeId) {
        match self.shared_config.receive(config) {
            Ok(true) => tracing::info!(
                "shared configuration version {} from {from} applied and written to config.toml",
                config.version
            ),
            Ok(false) => {}
            Err(err) => tracing::error!(
                "refused shared configuration version {} from {from}: {err}; this node keeps version {}",
                config.version,
                self.shared_config.version()
            ),
        }
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
                config_version: self.shared_config.member_version(view.node_id).cloned(),
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
                    config_version: None,
                });
            }
        }
        peers.sort_by_key(|p| (p.priority, p.node_id.clone()));
        let (role, can_publish) = (
            self.lease.election().role(),
            self.lease.election().can_publish(),
        );
        let rotation_pending: Vec<NodeId> = self.rotation.pending().cloned().collect();
        self.board.update(|status| {
            status.role = role;
            status.can_publish = can_publish;
            status.publisher = publisher;
            status.peers = peers;
            status.secret_rotation_pending = rotation_pending;
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
