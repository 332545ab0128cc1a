//! Who publishes the master descriptor: the publisher election, as a pure state machine.
//!
//! Several nodes hold the same master key; exactly one of them (the *publisher*) uploads the
//! descriptor, the others stand by and take over on their own when it fails. This module
//! decides which, from the messages the nodes exchange (ARCHITECTURE.md, "State machines":
//! `(state, message or tick, now) -> (state, actions)`). It owns no socket and reads no clock:
//! the daemon feeds it [`Event`]s with the current wall-clock time and carries out the
//! [`Action`]s it returns (send a message to every peer, start or stop the publish loop, log a
//! warning). That is what lets `tests/election_simulation.rs` drive thousands of simulated
//! clusters through hours of crashes, partitions and clock skew in seconds.
//!
//! # Rules
//!
//! A *live* peer is one heard within `publisher_timeout` that has not since said goodbye with
//! a `LeaseRelease`. A *candidate* is a live node (this one included) that can publish: its Tor
//! client is bootstrapped and its uploads are not failing (`can_publish`). Nodes are ranked by
//! priority number, lower first, then by node id, so no two nodes ever tie.
//!
//! | when | what this node does |
//! |---|---|
//! | every `heartbeat_interval` (10 s), and at once when its role or `can_publish` changes | broadcasts a `Heartbeat` (role, priority, can_publish, last upload) |
//! | start-up with no peers configured | claims as soon as it can publish: a single node publishes within seconds |
//! | start-up with peers | listens for `publisher_timeout` (30 s) before it may claim, so a restarted node finds the current publisher instead of fighting it; if it heard nobody at all it waits `publisher_timeout + takeover_grace` (an isolated node) |
//! | a standby hears no live publisher, is the best candidate it knows, and the last publisher it heard has been silent for `publisher_timeout` (suspect) `+ takeover_grace` (90 s) | claims: broadcasts `LeaseClaim` and starts publishing at once (the publish loop uploads immediately, with the intro points its own health loop has kept fresh) |
//! | the last publisher sent `LeaseRelease` (clean shutdown, or it cannot publish) | the best candidate claims at once, without the grace |
//! | a standby hears a live publisher | follows it, even if this node ranks higher: a returning node never takes the lease back from a working publisher (no flapping) |
//! | a publisher hears another live publisher that is stronger (can publish while this one cannot, or else ranks higher) | backs off: stops publishing and heartbeats as standby at once |
//! | a publisher hears a weaker live publisher | repeats its `LeaseClaim` at once, so the other backs off within one message delay |
//! | a publisher cannot publish (Arti not bootstrapped, or every upload failed for the configured time) and a live candidate exists | releases: stops publishing and broadcasts `LeaseRelease`, so that candidate takes over at once. With no candidate it keeps the lease and keeps trying, since nobody else could do better; a standby that cannot publish never claims |
//! | clean shutdown | broadcasts `LeaseRelease` (a publisher also stops publishing), so the others drop it at once |
//! | a message whose timestamp is more than `max_clock_skew` (5 s) from this node's clock | accepted, with a warning (rate-limited) and the offset shown in status: liveness is judged by when messages arrive on this node's clock, so a skewed clock never makes a live peer look dead |
//! | a message stamped older than the last one accepted from the same sender (a reordered datagram, or a resend that arrives after newer news) | ignored; nothing changes |
//! | such older messages keep coming for half a heartbeat interval with nothing newer (the sender's clock was stepped back) | accepted again: a step of the sender's clock silences it for at most one heartbeat |
//! | the local wall clock is stepped back | the times this node stored move back with it, so no timer waits the size of the step on top of its own length |
//!
//! Peers are learned from the messages themselves as well as from the configuration: the
//! transport only delivers messages from authenticated cluster members, the cluster loop hands
//! over only those membership vouches for (a member, claiming the priority it was admitted
//! with: `cluster::membership`), and a node that just joined may not be in this node's config
//! yet.
//!
//! Time is a [`Timestamp`] of the local wall clock (the daemon passes [`Timestamp::now`]). A
//! peer's liveness is measured on it (when its messages arrive), never on the peer's clock; the
//! sender's timestamps only order one sender's messages (authenticity and replay are the
//! WireGuard transport's business) and reveal a skewed clock to the operator.
//!
//! The messages ([`Heartbeat`], [`LeaseClaim`], [`LeaseRelease`]) are the same types on the
//! wire: `cluster::messages::Message` carries them as they are, claims and releases with a
//! message id to acknowledge (WireGuard does not retransmit; ARCHITECTURE.md, "WireGuard in
//! process"). Their timestamps travel as whole seconds ([`Timestamp::from_unix_secs`]), so two
//! messages from one sender within the same second are both accepted, in either order.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub use super::Role;
use serde::{Deserialize, Serialize};

use super::config_sync::ConfigVersion;
use super::secret::SecretId;
use super::{NodeId, Priority};
use crate::clock::Timestamp;
use crate::config::TimingConfig;
use crate::params;

/// The intervals the election runs on (`[timing]` in the config; defaults in `params`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ElectionTiming {
    /// How often a node broadcasts a heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a peer counts as gone, and a publisher as suspect.
    pub publisher_timeout: Duration,
    /// How long a suspect publisher is given to reappear before a standby takes over.
    pub takeover_grace: Duration,
    /// Largest accepted difference between a message's timestamp and the local clock.
    pub max_clock_skew: Duration,
}

impl Default for ElectionTiming {
    fn default() -> Self {
        ElectionTiming {
            heartbeat_interval: params::DEFAULT_HEARTBEAT_INTERVAL,
            publisher_timeout: params::DEFAULT_PUBLISHER_TIMEOUT,
            takeover_grace: params::DEFAULT_TAKEOVER_GRACE,
            max_clock_skew: params::DEFAULT_MAX_CLOCK_SKEW,
        }
    }
}

impl From<&TimingConfig> for ElectionTiming {
    fn from(timing: &TimingConfig) -> Self {
        ElectionTiming {
            heartbeat_interval: timing.heartbeat_interval,
            publisher_timeout: timing.publisher_timeout,
            takeover_grace: timing.takeover_grace,
            max_clock_skew: timing.max_clock_skew,
        }
    }
}

// The three messages the election exchanges. They are also their own wire form (inside
// `cluster::messages::Message`, JSON with these field names), so one set of types runs from the
// socket to the election. Timestamps travel as whole Unix seconds.

/// "I am alive, and this is my state", sent every heartbeat interval.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(rename = "node_id")]
    pub from: NodeId,
    #[serde(with = "whole_secs")]
    pub timestamp: Timestamp,
    pub priority: Priority,
    pub role: Role,
    /// Tor is bootstrapped and uploads are not failing: the sender could publish.
    pub can_publish: bool,
    /// When the sender last uploaded the descriptor successfully (shown by `status`).
    #[serde(rename = "last_publish_ts", with = "optional_whole_secs")]
    pub last_publish: Option<Timestamp>,
    /// The sender's version of the cluster's shared configuration (`config_sync`): the
    /// cluster loop sets it on every heartbeat it sends and reads it from every one it
    /// receives, so a member that runs an older version is sent the newer one. The election
    /// ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<ConfigVersion>,
    /// The publisher whose descriptor the sender has not found on the HSDirs for the whole
    /// `hsdir_failure` bound (`outcome`): that publisher gives the lease up. Set by the lease
    /// core; the election ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_not_served: Option<NodeId>,
    /// Which cluster secret the sender runs (`secret_rotation`): set by the cluster loop; the
    /// election ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<SecretId>,
}

/// "I am the publisher from now on", sent when taking the lease and to answer a weaker rival.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseClaim {
    #[serde(rename = "node_id")]
    pub from: NodeId,
    #[serde(with = "whole_secs")]
    pub timestamp: Timestamp,
    pub priority: Priority,
}

/// "I am leaving, or cannot publish: do not wait for me", sent on clean shutdown and when a
/// publisher that cannot upload hands the lease over.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRelease {
    #[serde(rename = "node_id")]
    pub from: NodeId,
    #[serde(with = "whole_secs")]
    pub timestamp: Timestamp,
}

/// A message from a peer, of the three the election reads. The transport has authenticated the
/// sender; the election checks the timestamp.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LeaseMessage {
    Heartbeat(Heartbeat),
    LeaseClaim(LeaseClaim),
    LeaseRelease(LeaseRelease),
}

/// A [`Timestamp`] on the wire: whole Unix seconds.
mod whole_secs {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(at: &Timestamp, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(at.as_unix_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        u64::deserialize(deserializer).map(Timestamp::from_unix_secs)
    }
}

/// An optional [`Timestamp`] on the wire: whole Unix seconds or null.
mod optional_whole_secs {
    use super::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        at: &Option<Timestamp>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => serializer.serialize_some(&at.as_unix_secs()),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Timestamp>, D::Error> {
        Option::<u64>::deserialize(deserializer).map(|secs| secs.map(Timestamp::from_unix_secs))
    }
}

impl LeaseMessage {
    pub fn from(&self) -> &NodeId {
        match self {
            LeaseMessage::Heartbeat(m) => &m.from,
            LeaseMessage::LeaseClaim(m) => &m.from,
            LeaseMessage::LeaseRelease(m) => &m.from,
        }
    }

    /// The priority the sender claims, for the messages that carry one.
    pub fn priority(&self) -> Option<Priority> {
        match self {
            LeaseMessage::Heartbeat(m) => Some(m.priority),
            LeaseMessage::LeaseClaim(m) => Some(m.priority),
            LeaseMessage::LeaseRelease(_) => None,
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        match self {
            LeaseMessage::Heartbeat(m) => m.timestamp,
            LeaseMessage::LeaseClaim(m) => m.timestamp,
            LeaseMessage::LeaseRelease(m) => m.timestamp,
        }
    }
}

/// What happened, as the daemon tells the election.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Event {
    /// Time passed: send a due heartbeat, take over from a silent publisher. Call it at
    /// [`Election::poll_timeout`] (calling it more often does no harm).
    Tick,
    /// A peer's message arrived.
    Heard(LeaseMessage),
    /// Whether this node can publish: false while Arti bootstraps, and once every upload has
    /// failed for the configured time; true again when Tor works.
    LocalHealth { can_publish: bool },
    /// An upload of the master descriptor succeeded (reported in heartbeats).
    UploadSucceeded,
    /// A member was removed from the cluster (`rustbalance remove`): it no longer counts,
    /// and a lease it held is vacant.
    MemberRemoved(NodeId),
    /// The daemon is stopping cleanly. The election does nothing after this.
    Shutdown,
}

/// What the daemon must do.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Action {
    BroadcastHeartbeat(Heartbeat),
    BroadcastLeaseClaim(LeaseClaim),
    BroadcastLeaseRelease(LeaseRelease),
    /// Start the publish loop, uploading at once.
    StartPublishing,
    /// Stop uploading.
    StopPublishing,
    /// Something an operator should see.
    Warn(Warning),
}

/// What the operator is warned about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Warning {
    /// A message arrived signed with this node's own id: two nodes share it.
    DuplicateNodeId(NodeId),
    /// A peer's message carries a timestamp this far from this node's clock (the message was
    /// accepted all the same).
    ClockSkew {
        from: NodeId,
        off: Duration,
        allowed: Duration,
    },
    /// Every upload of this node has failed for `upload_failure_release`: it leaves the lease
    /// to a standby whose Tor works (raised by the lease core).
    UploadsFailingTooLong,
    /// The descriptor this node publishes has not been on the HSDirs for the `hsdir_failure`
    /// bound, as `seen_by` (this node or a standby) read them back: it leaves the lease
    /// (raised by the lease core).
    DescriptorNotServed { seen_by: NodeId },
}

impl Warning {
    /// The peer a warning is about, if any: warnings are rate-limited per kind and peer.
    pub fn about(&self) -> Option<&NodeId> {
        match self {
            Warning::DuplicateNodeId(id) | Warning::ClockSkew { from: id, .. } => Some(id),
            Warning::UploadsFailingTooLong => None,
            Warning::DescriptorNotServed { seen_by } => Some(seen_by),
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::DuplicateNodeId(id) => write!(
                f,
                "received a cluster message signed with this node's own id {id}: two nodes \
                 share one node id; give each node its own"
            ),
            Warning::ClockSkew { from, off, allowed } => write!(
                f,
                "the clock of {from} is {:.1} s away from this node's (more than {} s): check \
                 that both nodes keep time with NTP; liveness does not depend on it, but the \
                 revision counter of a new publisher does",
                off.as_secs_f64(),
                allowed.as_secs()
            ),
            Warning::DescriptorNotServed { seen_by } => write!(
                f,
                "the HSDirs have not served the descriptor this node publishes for too long \
                 (seen by {seen_by} reading it back): this node leaves the lease to a standby \
                 and counts as able to publish again once its Tor has shown that it works"
            ),
            Warning::UploadsFailingTooLong => f.write_str(
                "every upload of this node has failed for too long: it leaves the lease to a \
                 standby whose Tor works",
            ),
        }
    }
}

/// A peer as `rustbalance status` shows it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PeerView<'a> {
    pub node_id: &'a NodeId,
    pub priority: Priority,
    /// The role it last announced.
    pub role: Role,
    pub can_publish: bool,
    /// When it was last heard (local clock); `None` if never since this node started.
    pub last_heard: Option<Timestamp>,
    /// When it last uploaded the descriptor, as it reported.
    pub last_publish: Option<Timestamp>,
    /// Heard within `publisher_timeout` and not gone (a silent publisher is *suspect*).
    pub live: bool,
    /// How far ahead of this node's clock its last accepted message was stamped (negative:
    /// behind), in milliseconds; transit time included.
    pub clock_offset_ms: Option<i64>,
}

/// What this node knows about one peer.
#[derive(Clone, Debug)]
struct Peer {
    priority: Priority,
    role: Role,
    can_publish: bool,
    last_publish: Option<Timestamp>,
    /// Local time of the last accepted message.
    last_heard: Option<Timestamp>,
    /// The sender's timestamp on that message: anything a little older is reordered.
    last_sent: Option<Timestamp>,
    /// Its clock's offset from ours, as its last accepted message showed.
    clock_offset_ms: Option<i64>,
    /// Since when only messages stamped older than `last_sent` have arrived from it.
    only_older_since: Option<Timestamp>,
    /// It sent `LeaseRelease` and nothing since.
    released: bool,
}

impl Peer {
    fn new(priority: Priority) -> Self {
        Peer {
            priority,
            role: Role::Standby,
            can_publish: false,
            last_publish: None,
            last_heard: None,
            last_sent: None,
            clock_offset_ms: None,
            only_older_since: None,
            released: false,
        }
    }

    fn is_live(&self, now: Timestamp, timeout: Duration) -> bool {
        !self.released && self.last_heard.is_some_and(|heard| now < heard + timeout)
    }
}

/// One node's view of the election, and its decisions.
#[derive(Clone, Debug)]
pub struct Election {
    me: NodeId,
    priority: Priority,
    timing: ElectionTiming,
    started_at: Timestamp,
    /// No peers were configured: a single-node deployment, which need not listen first.
    configured_alone: bool,
    /// Some peer's message was accepted since start-up.
    heard_anyone: bool,
    role: Role,
    can_publish: bool,
    last_publish: Option<Timestamp>,
    peers: BTreeMap<NodeId, Peer>,
    next_heartbeat: Timestamp,
    /// The latest `now` handled, to notice the wall clock being stepped back.
    last_now: Timestamp,
    shut_down: bool,
}

impl Election {
    /// A node starting at `now` as a standby that cannot publish yet: the daemon reports
    /// `LocalHealth { can_publish: true }` once Arti is bootstrapped. The first heartbeat is
    /// due at once.
    pub fn new(
        me: NodeId,
        priority: Priority,
        peers: impl IntoIterator<Item = (NodeId, Priority)>,
        timing: ElectionTiming,
        now: Timestamp,
    ) -> Self {
        let peers: BTreeMap<NodeId, Peer> = peers
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, priority)| (id, Peer::new(priority)))
            .collect();
        Election {
            configured_alone: peers.is_empty(),
            me,
            priority,
            timing,
            started_at: now,
            heard_anyone: false,
            role: Role::Standby,
            can_publish: false,
            last_publish: None,
            peers,
            next_heartbeat: now,
            last_now: now,
            shut_down: false,
        }
    }

    /// Applies `event` at local time `now` and says what to do about it.
    pub fn handle(&mut self, event: Event, now: Timestamp) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.shut_down {
            return actions;
        }
        self.follow_clock_step_back(now);
        let mut heartbeat_now = false;
        let mut heard_from = None;
        match event {
            Event::Tick => {}
            Event::Heard(message) => match self.accept(message, now) {
                Ok((sender, warning)) => {
                    actions.extend(warning.map(Action::Warn));
                    heard_from = Some(sender);
                }
                Err(warning) => {
                    actions.extend(warning.map(Action::Warn));
                    return actions;
                }
            },
            Event::LocalHealth { can_publish } => {
                heartbeat_now = can_publish != self.can_publish;
                self.can_publish = can_publish;
            }
            Event::UploadSucceeded => self.last_publish = Some(now),
            Event::MemberRemoved(member) => {
                self.peers.remove(&member);
            }
            Event::Shutdown => {
                self.shut_down = true;
                if self.role == Role::Publisher {
                    self.role = Role::Standby;
                    actions.push(Action::StopPublishing);
                }
                actions.push(Action::BroadcastLeaseRelease(LeaseRelease {
                    from: self.me.clone(),
                    timestamp: now,
                }));
                return actions;
            }
        }
        heartbeat_now |= self.decide(now, &mut actions);
        if let Some(sender) = heard_from {
            self.answer_weaker_rival(&sender, now, &mut actions);
        }
        if heartbeat_now || now >= self.next_heartbeat {
            actions.push(Action::BroadcastHeartbeat(self.heartbeat(now)));
            self.next_heartbeat = now + self.timing.heartbeat_interval;
        }
        actions
    }

    /// The latest time at which [`Event::Tick`] should next be handled: the next heartbeat,
    /// or the moment this node may take over.
    pub fn poll_timeout(&self, now: Timestamp) -> Timestamp {
        let mut next = self.next_heartbeat;
        if !self.shut_down && self.role == Role::Standby && self.can_publish {
            let expiries = self
                .peers
                .values()
                .filter_map(|peer| peer.last_heard)
                .map(|heard| heard + self.timing.publisher_timeout);
            for moment in expiries.chain([self.earliest_claim()]) {
                if moment > now {
                    next = next.min(moment);
                }
            }
        }
        next
    }

    /// New intervals (a configuration reload); they apply from the next decision on.
    pub fn set_timing(&mut self, timing: ElectionTiming) {
        self.timing = timing;
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn can_publish(&self) -> bool {
        self.can_publish
    }

    /// Who publishes, as far as this node knows at `now`: itself, or the strongest live peer
    /// that announced itself publisher. `None` while the lease is vacant (or shut down).
    pub fn publisher(&self, now: Timestamp) -> Option<&NodeId> {
        if self.role == Role::Publisher {
            return Some(&self.me);
        }
        self.live_publishers(now)
            .min_by_key(|(id, peer)| strength(id, peer.can_publish, peer.priority))
            .map(|(id, _)| id)
    }

    /// Every known peer, in node-id order, for `rustbalance status`.
    pub fn peers(&self, now: Timestamp) -> impl Iterator<Item = PeerView<'_>> {
        let timeout = self.timing.publisher_timeout;
        self.peers.iter().map(move |(node_id, peer)| PeerView {
            node_id,
            priority: peer.priority,
            role: peer.role,
            can_publish: peer.can_publish,
            last_heard: peer.last_heard,
            last_publish: peer.last_publish,
            live: peer.is_live(now, timeout),
            clock_offset_ms: peer.clock_offset_ms,
        })
    }

    /// When the wall clock was stepped back (say NTP correcting a clock that ran ahead), moves
    /// every local time this node stored back with it, as if no time had passed. Otherwise
    /// those moments would lie in the future and, for example, a takeover would wait the size
    /// of the step on top of the grace. (A step forward cannot be told from time passing.)
    fn follow_clock_step_back(&mut self, now: Timestamp) {
        let back = self.last_now.saturating_duration_since(now);
        self.last_now = now;
        if back.is_zero() {
            return;
        }
        let earlier = |moment: Timestamp| moment.saturating_sub(back);
        self.started_at = earlier(self.started_at);
        self.next_heartbeat = earlier(self.next_heartbeat);
        self.last_publish = self.last_publish.map(earlier);
        for peer in self.peers.values_mut() {
            peer.last_heard = peer.last_heard.map(earlier);
        }
    }

    /// Checks a message and records what it says about its sender, with a warning about the
    /// sender's clock if it deserves one. `Err` carries the warning for the operator, if the
    /// rejection deserves one; either way a rejected message changes nothing.
    #[allow(clippy::type_complexity)]
    fn accept(
        &mut self,
        message: LeaseMessage,
        now: Timestamp,
    ) -> Result<(NodeId, Option<Warning>), Option<Warning>> {
        let from = message.from().clone();
        if from == self.me {
            return Err(Some(Warning::DuplicateNodeId(from)));
        }
        let sent = message.timestamp();
        let step_window = self.timing.heartbeat_interval / 2;
        if let Some(peer) = self.peers.get_mut(&from) {
            if peer.last_sent.is_some_and(|last| sent < last) {
                // Older than what the sender already told us: reordered, or a late resend;
                // unless nothing newer has come for a while (its clock stepped back).
                match peer.only_older_since {
                    Some(since) if now.saturating_duration_since(since) >= step_window => {}
                    Some(_) => return Err(None),
                    None => {
                        peer.only_older_since = Some(now);
                        return Err(None);
                    }
                }
            }
        }
        let off = sent.distance(now);
        let skew_warning = (off > self.timing.max_clock_skew).then(|| Warning::ClockSkew {
            from: from.clone(),
            off,
            allowed: self.timing.max_clock_skew,
        });
        let peer = match &message {
            LeaseMessage::Heartbeat(Heartbeat { priority, .. })
            | LeaseMessage::LeaseClaim(LeaseClaim { priority, .. }) => self
                .peers
                .entry(from.clone())
                .or_insert_with(|| Peer::new(*priority)),
            LeaseMessage::LeaseRelease(_) => match self.peers.get_mut(&from) {
                Some(peer) => peer,
                // A goodbye from a node we never knew changes nothing.
                None => return Err(None),
            },
        };
        match message {
            LeaseMessage::Heartbeat(heartbeat) => {
                peer.priority = heartbeat.priority;
                peer.role = heartbeat.role;
                peer.can_publish = heartbeat.can_publish;
                peer.last_publish = heartbeat.last_publish;
                peer.released = false;
            }
            LeaseMessage::LeaseClaim(claim) => {
                peer.priority = claim.priority;
                peer.role = Role::Publisher;
                // Only a node that can publish claims.
                peer.can_publish = true;
                peer.released = false;
            }
            LeaseMessage::LeaseRelease(_) => {
                peer.role = Role::Standby;
                peer.released = true;
            }
        }
        peer.last_heard = Some(now);
        peer.last_sent = Some(sent);
        peer.only_older_since = None;
        peer.clock_offset_ms = Some(signed_millis(sent, now));
        self.heard_anyone = true;
        Ok((from, skew_warning))
    }

    /// Applies the rules that change this node's role. Returns whether a heartbeat should go
    /// out at once to announce the change.
    fn decide(&mut self, now: Timestamp, actions: &mut Vec<Action>) -> bool {
        match self.role {
            Role::Publisher => {
                let mine = strength(&self.me, self.can_publish, self.priority);
                let outranked = self
                    .live_publishers(now)
                    .any(|(id, peer)| strength(id, peer.can_publish, peer.priority) < mine);
                if outranked {
                    self.role = Role::Standby;
                    actions.push(Action::StopPublishing);
                    return true;
                }
                if !self.can_publish && self.live_candidates(now).next().is_some() {
                    self.role = Role::Standby;
                    actions.push(Action::StopPublishing);
                    actions.push(Action::BroadcastLeaseRelease(LeaseRelease {
                        from: self.me.clone(),
                        timestamp: now,
                    }));
                }
                false
            }
            Role::Standby => {
                if self.may_claim(now) {
                    self.role = Role::Publisher;
                    actions.push(Action::StartPublishing);
                    actions.push(Action::BroadcastLeaseClaim(self.claim(now)));
                }
                false
            }
        }
    }

    /// A standby claims when it can publish, no live publisher is heard, it is the best
    /// candidate it knows of, and the wait since start-up or since the last publisher fell
    /// silent is over.
    fn may_claim(&self, now: Timestamp) -> bool {
        let rank = (self.priority, &self.me);
        self.can_publish
            && self.live_publishers(now).next().is_none()
            && self
                .live_candidates(now)
                .all(|(id, peer)| (peer.priority, id) > rank)
            && now >= self.earliest_claim()
    }

    /// The first moment this node may claim a vacant lease: after listening at start-up, and
    /// `publisher_timeout + takeover_grace` after the last publisher heard fell silent. A
    /// publisher that released is no longer a publisher here, so its successor need not wait.
    fn earliest_claim(&self) -> Timestamp {
        let listen = if self.configured_alone {
            Duration::ZERO
        } else if self.heard_anyone {
            self.timing.publisher_timeout
        } else {
            self.timing.publisher_timeout + self.timing.takeover_grace
        };
        let silent_publisher_replaceable = self
            .peers
            .values()
            .filter(|peer| peer.role == Role::Publisher)
            .filter_map(|peer| peer.last_heard)
            .max()
            .map(|heard| heard + self.timing.publisher_timeout + self.timing.takeover_grace);
        (self.started_at + listen).max(silent_publisher_replaceable.unwrap_or(Timestamp::EPOCH))
    }

    /// When this publisher hears from another one (weaker: a stronger one made it back off in
    /// `decide`), it repeats its claim so the other backs off now rather than at this node's
    /// next heartbeat.
    fn answer_weaker_rival(&self, sender: &NodeId, now: Timestamp, actions: &mut Vec<Action>) {
        let rival_publishes = self.peers.get(sender).is_some_and(|peer| {
            peer.role == Role::Publisher && peer.is_live(now, self.timing.publisher_timeout)
        });
        if self.role == Role::Publisher && rival_publishes {
            actions.push(Action::BroadcastLeaseClaim(self.claim(now)));
        }
    }

    fn live_publishers(&self, now: Timestamp) -> impl Iterator<Item = (&NodeId, &Peer)> {
        let timeout = self.timing.publisher_timeout;
        self.peers
            .iter()
            .filter(move |(_, peer)| peer.role == Role::Publisher && peer.is_live(now, timeout))
    }

    fn live_candidates(&self, now: Timestamp) -> impl Iterator<Item = (&NodeId, &Peer)> {
        let timeout = self.timing.publisher_timeout;
        self.peers
            .iter()
            .filter(move |(_, peer)| peer.can_publish && peer.is_live(now, timeout))
    }

    fn heartbeat(&self, now: Timestamp) -> Heartbeat {
        Heartbeat {
            from: self.me.clone(),
            timestamp: now,
            priority: self.priority,
            role: self.role,
            can_publish: self.can_publish,
            last_publish: self.last_publish,
            config_version: None,
            publisher_not_served: None,
            secret_id: None,
        }
    }

    fn claim(&self, now: Timestamp) -> LeaseClaim {
        LeaseClaim {
            from: self.me.clone(),
            timestamp: now,
            priority: self.priority,
        }
    }
}

/// Orders publishers in a conflict, strongest first: one that can publish beats one that
/// cannot; then the lower priority number; then the node id.
fn strength(id: &NodeId, can_publish: bool, priority: Priority) -> (bool, Priority, &NodeId) {
    (!can_publish, priority, id)
}

/// `later - earlier` in milliseconds, negative if `later` is before `earlier`; saturating.
fn signed_millis(later: Timestamp, earlier: Timestamp) -> i64 {
    let magnitude = i64::try_from(later.distance(earlier).as_millis()).unwrap_or(i64::MAX);
    if later >= earlier {
        magnitude
    } else {
        -magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seconds after an arbitrary start, on the local clock.
    fn at(secs: u64) -> Timestamp {
        Timestamp::from_unix_secs(1_700_000_000 + secs)
    }

    fn id(name: &str) -> NodeId {
        NodeId::try_from(name.to_owned()).unwrap()
    }

    fn prio(n: u32) -> Priority {
        Priority::try_from(n).unwrap()
    }

    /// Node `me` with priority `priority` and peers `a` (1), `b` (2), `c` (3) except itself,
    /// started at 0 s with Tor working.
    fn node(me: &str, priority: u32) -> Election {
        let peers = [("a", 1), ("b", 2), ("c", 3)]
            .into_iter()
            .map(|(name, p)| (id(name), prio(p)));
        let mut election = Election::new(
            id(me),
            prio(priority),
            peers,
            ElectionTiming::default(),
            at(0),
        );
        election.handle(Event::LocalHealth { can_publish: true }, at(0));
        election
    }

    fn heartbeat(from: &str, priority: u32, role: Role, secs: u64) -> Event {
        Event::Heard(LeaseMessage::Heartbeat(Heartbeat {
            from: id(from),
            timestamp: at(secs),
            priority: prio(priority),
            role,
            can_publish: true,
            last_publish: None,
            config_version: None,
            publisher_not_served: None,
            secret_id: None,
        }))
    }

    fn claim(from: &str, priority: u32, secs: u64) -> Event {
        Event::Heard(LeaseMessage::LeaseClaim(LeaseClaim {
            from: id(from),
            timestamp: at(secs),
            priority: prio(priority),
        }))
    }

    fn release(from: &str, secs: u64) -> Event {
        Event::Heard(LeaseMessage::LeaseRelease(LeaseRelease {
            from: id(from),
            timestamp: at(secs),
        }))
    }

    /// Runs the node second by second from `from` to `to`: at each second the events
    /// `script` gives for it, then a tick. Returns the first second at which it started
    /// publishing, and stops there.
    fn run(
        election: &mut Election,
        from: u64,
        to: u64,
        mut script: impl FnMut(u64) -> Vec<Event>,
    ) -> Option<u64> {
        (from..=to).find(|&secs| {
            let mut actions = Vec::new();
            for event in script(secs).into_iter().chain([Event::Tick]) {
                actions.extend(election.handle(event, at(secs)));
            }
            actions.contains(&Action::StartPublishing)
        })
    }

    /// Every ten seconds (at 5, 15, ...), a heartbeat from each of `peers`.
    fn heartbeats<'a>(peers: &'a [(&'a str, u32, Role)]) -> impl FnMut(u64) -> Vec<Event> + 'a {
        move |secs| {
            if secs % 10 != 5 {
                return Vec::new();
            }
            peers
                .iter()
                .map(|&(name, priority, role)| heartbeat(name, priority, role, secs))
                .collect()
        }
    }

    fn silence(_: u64) -> Vec<Event> {
        Vec::new()
    }

    fn claims(actions: &[Action]) -> bool {
        actions.contains(&Action::StartPublishing)
            && actions
                .iter()
                .any(|a| matches!(a, Action::BroadcastLeaseClaim(_)))
    }

    /// What a rejected message must leave unchanged, at time `now`.
    fn observable(election: &Election, now: Timestamp) -> String {
        format!(
            "{:?} {:?} {:?} {:?}",
            election.role(),
            election.publisher(now),
            election.poll_timeout(now),
            election.peers(now).collect::<Vec<_>>()
        )
    }

    #[test]
    fn single_node_publishes_as_soon_as_tor_works() {
        let mut election = Election::new(id("solo"), prio(1), [], ElectionTiming::default(), at(0));
        let first = election.handle(Event::Tick, at(0));
        assert!(
            !first.contains(&Action::StartPublishing),
            "Arti is still bootstrapping"
        );
        assert!(first
            .iter()
            .any(|a| matches!(a, Action::BroadcastHeartbeat(h) if !h.can_publish)));
        let ready = election.handle(Event::LocalHealth { can_publish: true }, at(3));
        assert!(claims(&ready));
        assert_eq!(election.role(), Role::Publisher);
        assert_eq!(election.publisher(at(3)), Some(&id("solo")));
    }

    #[test]
    fn a_removed_publisher_no_longer_counts_and_its_lease_is_vacant_at_once() {
        let mut b = node("b", 2);
        b.handle(heartbeat("a", 1, Role::Publisher, 100), at(100));
        b.handle(heartbeat("c", 3, Role::Standby, 100), at(100));
        assert_eq!(b.publisher(at(100)), Some(&id("a")));
        let removed = b.handle(Event::MemberRemoved(id("a")), at(101));
        assert!(claims(&removed), "{removed:?}");
        assert_eq!(b.publisher(at(101)), Some(&id("b")));
        assert!(b.peers(at(101)).all(|view| view.node_id != &id("a")));
    }

    #[test]
    fn cold_cluster_best_candidate_claims_after_listening() {
        let mut a = node("a", 1);
        let mut b = node("b", 2);
        assert_eq!(
            run(&mut a, 0, 100, heartbeats(&[("b", 2, Role::Standby)])),
            Some(30)
        );
        assert_eq!(
            run(&mut b, 0, 100, heartbeats(&[("a", 1, Role::Standby)])),
            None,
            "b defers to a"
        );
    }

    #[test]
    fn restarted_node_follows_the_running_publisher() {
        // b (priority 2) publishes; a (priority 1) restarts and hears it.
        let mut a = node("a", 1);
        assert_eq!(
            run(&mut a, 0, 3600, heartbeats(&[("b", 2, Role::Publisher)])),
            None
        );
        assert_eq!(a.publisher(at(3600)), Some(&id("b")));
    }

    #[test]
    fn isolated_node_publishes_after_timeout_and_grace() {
        let mut c = node("c", 3);
        assert_eq!(run(&mut c, 0, 300, silence), Some(120));
    }

    #[test]
    fn standby_takes_over_only_after_timeout_and_grace() {
        let mut b = node("b", 2);
        // a publishes until 45 s, then falls silent: suspect at 75 s, replaced at 165 s.
        let mut script = |secs| {
            let mut events = heartbeats(&[("c", 3, Role::Standby)])(secs);
            if secs <= 45 {
                events.extend(heartbeats(&[("a", 1, Role::Publisher)])(secs));
            }
            events
        };
        assert_eq!(run(&mut b, 0, 300, &mut script), Some(165));
        assert_eq!(b.publisher(at(165)), Some(&id("b")));
    }

    #[test]
    fn best_live_candidate_takes_over_and_others_defer() {
        let mut c = node("c", 3);
        let script = |secs| {
            let mut events = heartbeats(&[("b", 2, Role::Standby)])(secs);
            if secs == 5 {
                events.push(heartbeat("a", 1, Role::Publisher, 5));
            }
            events
        };
        assert_eq!(
            run(&mut c, 0, 600, script),
            None,
            "b is alive and ranks first"
        );
    }

    #[test]
    fn clean_release_lets_the_next_node_claim_at_once() {
        let mut b = node("b", 2);
        assert_eq!(
            run(&mut b, 0, 39, heartbeats(&[("a", 1, Role::Publisher)])),
            None
        );
        assert!(claims(&b.handle(release("a", 40), at(40))));
    }

    #[test]
    fn release_from_a_standby_does_not_cut_the_wait_for_a_silent_publisher() {
        let mut c = node("c", 3);
        let script = |secs| match secs {
            40 => vec![
                heartbeat("a", 1, Role::Publisher, 40),
                heartbeat("b", 2, Role::Standby, 40),
            ],
            41 => vec![release("b", 41)],
            _ => Vec::new(),
        };
        assert_eq!(run(&mut c, 0, 300, script), Some(160));
    }

    #[test]
    fn lower_priority_number_wins_conflicting_claims() {
        let mut a = node("a", 1);
        let mut b = node("b", 2);
        assert_eq!(run(&mut a, 0, 200, silence), Some(120));
        assert_eq!(run(&mut b, 0, 200, silence), Some(120));
        // Each hears the other's claim.
        let a_reaction = a.handle(claim("b", 2, 120), at(121));
        let b_reaction = b.handle(claim("a", 1, 120), at(121));
        assert_eq!(a.role(), Role::Publisher);
        assert!(
            a_reaction
                .iter()
                .any(|x| matches!(x, Action::BroadcastLeaseClaim(_))),
            "the winner repeats its claim at once"
        );
        assert_eq!(b.role(), Role::Standby);
        assert!(b_reaction.contains(&Action::StopPublishing));
        assert!(b_reaction
            .iter()
            .any(|x| matches!(x, Action::BroadcastHeartbeat(h) if h.role == Role::Standby)));
    }

    #[test]
    fn returning_better_node_does_not_take_the_lease_back() {
        // b took over while a was away; a comes back, healthy, and hears b.
        let mut b = node("b", 2);
        assert_eq!(run(&mut b, 0, 200, silence), Some(120));
        let stopped = (121..3600).any(|secs| {
            let mut actions = heartbeats(&[("a", 1, Role::Standby)])(secs)
                .into_iter()
                .flat_map(|event| b.handle(event, at(secs)))
                .collect::<Vec<_>>();
            actions.extend(b.handle(Event::Tick, at(secs)));
            actions.contains(&Action::StopPublishing)
        });
        assert!(!stopped);
        let mut a = node("a", 1);
        assert_eq!(
            run(&mut a, 0, 3600, heartbeats(&[("b", 2, Role::Publisher)])),
            None
        );
    }

    #[test]
    fn publisher_that_cannot_publish_hands_over_to_a_candidate() {
        let mut a = node("a", 1);
        assert_eq!(run(&mut a, 0, 200, silence), Some(120));
        let failing = a.handle(Event::LocalHealth { can_publish: false }, at(700));
        assert!(
            !failing.contains(&Action::StopPublishing),
            "nobody could take over: keep the lease and keep trying"
        );
        assert!(failing.iter().any(|x| matches!(x,
            Action::BroadcastHeartbeat(h) if !h.can_publish && h.role == Role::Publisher)));
        let handover = a.handle(heartbeat("b", 2, Role::Standby, 705), at(705));
        assert!(handover.contains(&Action::StopPublishing));
        assert!(handover
            .iter()
            .any(|x| matches!(x, Action::BroadcastLeaseRelease(_))));
        assert_eq!(a.role(), Role::Standby);
        // While its uploads keep failing it never claims, even once b is gone.
        assert_eq!(run(&mut a, 706, 2000, silence), None);
    }

    #[test]
    fn a_skewed_peer_is_warned_about_but_its_messages_count() {
        let mut b = node("b", 2);
        b.handle(Event::Tick, at(50));
        let actions = b.handle(heartbeat("a", 1, Role::Publisher, 110), at(50));
        assert!(
            actions.iter().any(|action| matches!(action, Action::Warn(Warning::ClockSkew { from, .. }) if *from == id("a"))),
            "{actions:?}"
        );
        assert_eq!(
            b.publisher(at(50)),
            Some(&id("a")),
            "a 60 s skew does not hide a live publisher"
        );
        let offset = b
            .peers(at(50))
            .find(|p| *p.node_id == id("a"))
            .unwrap()
            .clock_offset_ms;
        assert_eq!(offset, Some(60_000));
        // Liveness follows arrival on b's clock: heard at 50, live until the timeout.
        let timeout = ElectionTiming::default().publisher_timeout.as_secs();
        assert_eq!(b.publisher(at(50 + timeout - 1)), Some(&id("a")));
        assert_eq!(b.publisher(at(50 + timeout)), None);
        // Within the limit draws no warning.
        let actions = b.handle(heartbeat("c", 3, Role::Standby, 58), at(55));
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Warn(_))),
            "{actions:?}"
        );
    }

    #[test]
    fn a_sender_whose_clock_stepped_back_is_heard_again_within_a_heartbeat() {
        let mut b = node("b", 2);
        b.handle(heartbeat("a", 1, Role::Standby, 500), at(100));
        // a's clock is stepped back by a minute: its next messages look older than the last.
        b.handle(heartbeat("a", 1, Role::Publisher, 450), at(110));
        assert_eq!(
            b.publisher(at(110)),
            None,
            "one older message is taken for a late one"
        );
        b.handle(heartbeat("a", 1, Role::Publisher, 460), at(120));
        assert_eq!(b.publisher(at(120)), Some(&id("a")));
    }

    #[test]
    fn replayed_older_message_is_ignored() {
        let mut c = node("c", 3);
        c.handle(claim("b", 2, 100), at(100));
        c.handle(heartbeat("b", 2, Role::Standby, 102), at(102));
        c.handle(Event::Tick, at(103));
        let before = observable(&c, at(103));
        // The old claim again, still within the skew limit.
        assert!(c.handle(claim("b", 2, 100), at(103)).is_empty());
        assert_eq!(observable(&c, at(103)), before);
        assert_eq!(c.publisher(at(103)), None);
    }

    #[test]
    fn message_under_this_nodes_own_id_is_rejected() {
        let mut a = node("a", 1);
        let actions = a.handle(heartbeat("a", 1, Role::Publisher, 5), at(5));
        assert!(matches!(
            actions.as_slice(),
            [Action::Warn(Warning::DuplicateNodeId(_))]
        ));
        assert_eq!(a.publisher(at(5)), None);
    }

    #[test]
    fn unconfigured_peer_is_learned_from_its_messages() {
        let mut a = node("a", 1);
        a.handle(heartbeat("newcomer", 4, Role::Publisher, 5), at(5));
        assert_eq!(a.publisher(at(5)), Some(&id("newcomer")));
        assert!(a
            .peers(at(5))
            .any(|p| p.node_id == &id("newcomer") && p.live));
    }

    #[test]
    fn shutdown_releases_the_lease_and_goes_quiet() {
        let mut a = node("a", 1);
        assert_eq!(run(&mut a, 0, 200, silence), Some(120));
        let actions = a.handle(Event::Shutdown, at(300));
        assert_eq!(actions[0], Action::StopPublishing);
        assert!(matches!(actions[1], Action::BroadcastLeaseRelease(_)));
        assert!(a.handle(Event::Tick, at(400)).is_empty());
    }

    #[test]
    fn stepping_the_clock_back_does_not_delay_a_takeover() {
        let mut b = node("b", 2);
        let script = |secs| match secs {
            100 => vec![heartbeat("a", 1, Role::Publisher, 100)],
            _ => Vec::new(),
        };
        assert_eq!(run(&mut b, 0, 110, script), None);
        // Now the clock is stepped back by 60 s, to 50 s. a stays silent: 120 s after b last
        // heard it, 110 s of them still to come, is 160 s on the stepped clock.
        assert_eq!(run(&mut b, 50, 300, silence), Some(160));
    }

    #[test]
    fn status_shows_peers_roles_and_liveness() {
        let mut b = node("b", 2);
        let uploaded = Heartbeat {
            from: id("a"),
            timestamp: at(10),
            priority: prio(1),
            role: Role::Publisher,
            can_publish: true,
            last_publish: Some(at(8)),
            config_version: None,
            publisher_not_served: None,
            secret_id: None,
        };
        b.handle(Event::Heard(LeaseMessage::Heartbeat(uploaded)), at(10));
        let a_view = |secs| {
            b.peers(at(secs))
                .find(|p| p.node_id == &id("a"))
                .map(|p| (p.role, p.live, p.last_heard, p.last_publish))
        };
        assert_eq!(
            a_view(20),
            Some((Role::Publisher, true, Some(at(10)), Some(at(8))))
        );
        assert_eq!(
            a_view(40),
            Some((Role::Publisher, false, Some(at(10)), Some(at(8)))),
            "silent for 30 s: suspect"
        );
        assert_eq!(b.peers(at(20)).count(), 2);
    }

    #[test]
    fn poll_timeout_points_at_the_next_heartbeat_or_takeover() {
        let mut c = node("c", 3);
        c.handle(Event::Tick, at(0));
        assert_eq!(c.poll_timeout(at(1)), at(10));
        let mut b = node("b", 2);
        b.handle(Event::Tick, at(0));
        b.handle(heartbeat("a", 1, Role::Publisher, 5), at(5));
        b.handle(Event::Tick, at(120));
        assert_eq!(b.poll_timeout(at(121)), at(125));
    }

    #[test]
    fn timing_comes_from_the_config() {
        let config = TimingConfig {
            health_interval: Duration::from_secs(1),
            descriptor_refresh: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(2),
            publish_interval: Duration::from_secs(3),
            publisher_timeout: Duration::from_secs(4),
            takeover_grace: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(6),
            descriptor_max_age: Duration::from_secs(7),
            upload_failure_release: Duration::from_secs(8),
            tor_stall: Duration::from_secs(9),
            hsdir_failure: Duration::from_secs(10),
        };
        let timing = ElectionTiming::from(&config);
        assert_eq!(timing.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(timing.publisher_timeout, Duration::from_secs(4));
        assert_eq!(timing.takeover_grace, Duration::from_secs(5));
        assert_eq!(timing.max_clock_skew, Duration::from_secs(6));
    }
}
