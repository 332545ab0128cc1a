//! What `rustbalance status` shows: the node's own view of itself, the cluster, the backends
//! and its uploads.
//!
//! The daemon keeps one [`NodeStatus`] up to date (each loop fills in its part through a
//! [`StatusBoard`]) and serves it as JSON on a Unix socket only its owner can open; the `status`
//! command reads it and prints either that JSON (`--json`, for scripts) or a table a person
//! reads at a glance. [`NodeStatus::problems`] decides whether the node is healthy, which is
//! the command's exit status, so monitoring can use it.
//!
//! Times travel as Unix seconds; the table shows them as ages relative to `generated_at`.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;
use crate::cluster::config_sync::ConfigVersion;
use crate::cluster::{NodeId, Priority, Role};

/// File name of the status socket inside the state directory.
pub const SOCKET_FILE: &str = "status.sock";

/// Everything the status command shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// When the daemon produced this view (Unix seconds).
    pub generated_at: u64,
    pub node_id: NodeId,
    pub priority: Priority,
    pub master_address: String,
    pub role: Role,
    /// Whether this node could publish now (Tor bootstrapped, uploads not failing).
    pub can_publish: bool,
    /// The publisher as this node knows it (itself included); `None` while the lease is vacant.
    pub publisher: Option<NodeId>,
    pub tor: TorStatus,
    /// The version of the cluster's shared configuration this node runs.
    #[serde(default)]
    pub config_version: Option<ConfigVersion>,
    pub peers: Vec<PeerStatus>,
    pub backends: Vec<BackendStatus>,
    /// The last upload of each time period this node published (empty on a standby).
    pub publishes: Vec<PublishStatus>,
    /// What the responsible HSDirs hold of the master descriptor, per time period, as this
    /// node's last fetch-back saw it (every node reads it back, standbys too).
    #[serde(default)]
    pub hsdirs: Vec<HsDirsView>,
    /// During a rotation of the cluster secret: the members whose tunnels are not yet known to
    /// use the new one (a member that never returns: remove it).
    #[serde(default)]
    pub secret_rotation_pending: Vec<NodeId>,
    /// Restricted discovery: how many clients the descriptor admits (0: anyone).
    #[serde(default)]
    pub authorized_clients: usize,
    /// Conditions an operator must act on, as logged at error level.
    pub alerts: Vec<String>,
    /// While the first health round since the start (or a reload) runs: how far it has come.
    #[serde(default)]
    pub first_health_round: Option<RoundProgress>,
}

/// How many of a health round's checks have finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundProgress {
    pub done: usize,
    pub of: usize,
}

/// The master descriptor on the HSDirs responsible for one time period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HsDirsView {
    pub time_period: u64,
    /// HSDirs responsible for storing it.
    pub responsible: usize,
    /// Of those, how many answered the fetch-back.
    pub answered: usize,
    /// Of those, how many hold a copy that verifies.
    pub holding: usize,
    /// The highest revision held, and how many hold that one.
    pub newest_revision: Option<u64>,
    pub holding_newest: usize,
    /// Whether the newest copies list only introduction points of backends this node finds
    /// healthy.
    pub only_healthy_backends: bool,
    /// When it was read (Unix seconds).
    pub checked_at: u64,
}

/// The embedded Tor client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorStatus {
    pub bootstrapped: bool,
    /// How far the current bootstrap has come, as Arti reports it (0-100).
    #[serde(default)]
    pub bootstrap_percent: u8,
    /// Valid-after of the live consensus (Unix seconds).
    pub consensus_valid_after: Option<u64>,
    /// The last bootstrap or consensus error, until Tor works again.
    pub last_error: Option<String>,
}

/// One peer of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub node_id: NodeId,
    pub priority: Priority,
    pub role: Role,
    pub can_publish: bool,
    /// Heard within the publisher timeout.
    pub live: bool,
    /// When its last message arrived (Unix seconds, this node's clock).
    pub last_heard: Option<u64>,
    /// When it last uploaded the descriptor, as it reported (Unix seconds).
    pub last_publish: Option<u64>,
    pub endpoint: Option<String>,
    /// How far ahead of this node's clock its last message was stamped (negative: behind), in
    /// milliseconds, transit included.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// The version of the shared configuration its last heartbeat said it runs.
    #[serde(default)]
    pub config_version: Option<ConfigVersion>,
}

/// One backend onion service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub state: String,
    pub intro_points: usize,
    /// When its descriptor was last fetched and verified (Unix seconds).
    pub last_fetch: Option<u64>,
    pub failure_count: u32,
    pub last_error: Option<String>,
    /// Its descriptor carries proof-of-work parameters, which the master cannot pass on.
    #[serde(default)]
    pub offers_pow: bool,
}

/// The last upload for one time period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    pub time_period: u64,
    pub published_at: u64,
    pub revision_counter: u64,
    pub intro_points: usize,
    /// Distinct descriptors (more than one when more than 20 introduction points are offered).
    #[serde(default)]
    pub descriptors: usize,
    pub hsdirs_accepted: usize,
    pub hsdirs_tried: usize,
}

impl NodeStatus {
    /// A node that has just started: nothing known yet.
    pub fn starting(node_id: NodeId, priority: Priority, master_address: String) -> Self {
        NodeStatus {
            generated_at: Timestamp::now().as_unix_secs(),
            node_id,
            priority,
            master_address,
            role: Role::Standby,
            can_publish: false,
            publisher: None,
            tor: TorStatus::default(),
            config_version: None,
            peers: Vec::new(),
            backends: Vec::new(),
            publishes: Vec::new(),
            hsdirs: Vec::new(),
            secret_rotation_pending: Vec::new(),
            authorized_clients: 0,
            alerts: Vec::new(),
            first_health_round: None,
        }
    }

    /// Why this node is unhealthy; empty when it is healthy. A node is unhealthy when the
    /// cluster has no publisher, its Tor client is not bootstrapped, every backend is dead
    /// (or none is configured), or an alert is raised.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.publisher.is_none() {
            problems.push("no publisher in the cluster".to_owned());
        }
        if !self.tor.bootstrapped {
            problems.push("the embedded Tor client is not bootstrapped".to_owned());
        }
        if self.backends.is_empty() {
            problems.push("no backends configured".to_owned());
        } else if !self.backends.iter().any(|b| b.state == "healthy") {
            problems.push("no healthy backend".to_owned());
        }
        problems.extend(self.alerts.iter().cloned());
        problems
    }

    /// The table for people.
    pub fn render(&self) -> String {
        let now = self.generated_at;
        let mut out = String::new();
        let problems = self.problems();
        let health = if problems.is_empty() {
            "healthy".to_owned()
        } else {
            format!("UNHEALTHY: {}", problems.join("; "))
        };
        let _ = writeln!(
            out,
            "node       {} (priority {})",
            self.node_id, self.priority
        );
        let _ = writeln!(out, "master     {}", self.master_address);
        let _ = writeln!(
            out,
            "role       {}{}",
            self.role,
            if self.can_publish {
                ""
            } else {
                " (cannot publish now)"
            }
        );
        let _ = writeln!(
            out,
            "publisher  {}",
            self.publisher
                .as_ref()
                .map_or("none".to_owned(), ToString::to_string)
        );
        let tor = match (&self.tor.consensus_valid_after, self.tor.bootstrapped) {
            (Some(valid_after), true) => {
                format!(
                    "bootstrapped, consensus of {} ago",
                    ago(now, Some(*valid_after))
                )
            }
            (None, true) => "bootstrapped".to_owned(),
            (_, false) => format!("bootstrapping ({}%)", self.tor.bootstrap_percent),
        };
        let _ = writeln!(out, "tor        {tor}");
        if let Some(error) = &self.tor.last_error {
            let _ = writeln!(out, "           last error: {error}");
        }
        if let Some(version) = &self.config_version {
            let _ = writeln!(out, "config     shared configuration version {version}");
        }
        if !self.secret_rotation_pending.is_empty() {
            let waiting: Vec<&str> = self
                .secret_rotation_pending
                .iter()
                .map(NodeId::as_str)
                .collect();
            let _ = writeln!(
                out,
                "secret     rotation under way, waiting for {}",
                waiting.join(", ")
            );
        }
        if self.authorized_clients > 0 {
            let _ = writeln!(
                out,
                "discovery  restricted to {} authorized client(s)",
                self.authorized_clients
            );
        }
        let _ = writeln!(out, "health     {health}");

        let _ = writeln!(out, "\npeers");
        if self.peers.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for peer in &self.peers {
            let _ = writeln!(
                out,
                "  {:<28} priority {:<3} {:<10} {:<14} last heard {:<10} {}{}{}",
                peer.node_id.as_str(),
                peer.priority,
                peer.role.to_string(),
                if !peer.live {
                    "silent"
                } else if peer.can_publish {
                    "can publish"
                } else {
                    "cannot publish"
                },
                ago(now, peer.last_heard),
                peer.endpoint.as_deref().unwrap_or(""),
                clock_note(peer.clock_offset_ms),
                config_note(self.config_version.as_ref(), peer.config_version.as_ref())
            );
        }

        let _ = writeln!(out, "\nbackends");
        if let Some(RoundProgress { done, of }) = self.first_health_round {
            let _ = writeln!(out, "  (first health round: {done}/{of} checked)");
        }
        if self.backends.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        for backend in &self.backends {
            let _ = writeln!(
                out,
                "  {:<16} {:<10} {:>2} intro points  fetched {:<10} {}{}",
                backend.name,
                backend.state,
                backend.intro_points,
                ago(now, backend.last_fetch),
                backend.last_error.as_deref().unwrap_or(""),
                if backend.offers_pow {
                    " (offers proof-of-work; clients of the master bypass it)"
                } else {
                    ""
                }
            );
        }

        let _ = writeln!(out, "\nuploads");
        if self.publishes.is_empty() {
            let _ = writeln!(out, "  (none by this node)");
        }
        for publish in &self.publishes {
            let _ = writeln!(
                out,
                "  period {:<8} {:<10} {}/{} HSDirs accepted, {} intro points{}, revision {}",
                publish.time_period,
                ago(now, Some(publish.published_at)),
                publish.hsdirs_accepted,
                publish.hsdirs_tried,
                publish.intro_points,
                match publish.descriptors {
                    0 | 1 => String::new(),
                    distinct => format!(" in {distinct} distinct descriptors"),
                },
                publish.revision_counter
            );
        }
        let _ = writeln!(out, "\nmaster descriptor on the HSDirs");
        if self.hsdirs.is_empty() {
            let _ = writeln!(out, "  (not read back yet)");
        }
        for view in &self.hsdirs {
            let _ = writeln!(
                out,
                "  period {:<8} {}/{} responsible HSDirs hold it ({} answered), {} the newest{}{}  checked {}",
                view.time_period,
                view.holding,
                view.responsible,
                view.answered,
                view.holding_newest,
                view.newest_revision
                    .map_or(String::new(), |r| format!(" (revision {r})")),
                if view.only_healthy_backends { "" } else { ", lists a backend that is not healthy" },
                ago(now, Some(view.checked_at))
            );
        }
        for alert in &self.alerts {
            let _ = writeln!(out, "\nALERT: {alert}");
        }
        out
    }
}

impl NodeStatus {
    /// The status as Prometheus text metrics (exposition format 0.0.4), every one a gauge.
    pub fn prometheus(&self) -> String {
        let flag = |on: bool| if on { 1.0 } else { 0.0 };
        let node = |value: f64| vec![(format!("node=\"{}\"", self.node_id), value)];
        let per_backend = |value: &dyn Fn(&BackendStatus) -> f64| {
            self.backends
                .iter()
                .map(|b| (format!("backend=\"{}\"", b.name), value(b)))
                .collect::<Vec<_>>()
        };
        let per_period = |value: &dyn Fn(&PublishStatus) -> f64| {
            self.publishes
                .iter()
                .map(|p| (format!("time_period=\"{}\"", p.time_period), value(p)))
                .collect::<Vec<_>>()
        };
        let per_hsdir_period = |value: &dyn Fn(&HsDirsView) -> f64| {
            self.hsdirs
                .iter()
                .map(|v| (format!("time_period=\"{}\"", v.time_period), value(v)))
                .collect::<Vec<_>>()
        };
        let live = self.peers.iter().filter(|p| p.live).count();
        let metrics: [(&str, &str, Samples); 13] = [
            (
                "healthy",
                "1 when the node is healthy (what `rustbalance status` exits 0 for)",
                node(flag(self.problems().is_empty())),
            ),
            (
                "publisher",
                "1 while this node holds the publisher lease",
                node(flag(self.role == Role::Publisher)),
            ),
            (
                "cluster_has_publisher",
                "1 while some node holds the lease, as this node knows",
                node(flag(self.publisher.is_some())),
            ),
            (
                "can_publish",
                "1 when this node could publish (Tor bootstrapped, uploads working)",
                node(flag(self.can_publish)),
            ),
            (
                "tor_bootstrapped",
                "1 when the embedded Tor client is bootstrapped",
                node(flag(self.tor.bootstrapped)),
            ),
            (
                "peers",
                "known peers, by whether they were heard within the publisher timeout",
                vec![
                    ("state=\"live\"".to_owned(), live as f64),
                    (
                        "state=\"silent\"".to_owned(),
                        (self.peers.len() - live) as f64,
                    ),
                ],
            ),
            (
                "backend_healthy",
                "1 when the backend's introduction points are published",
                per_backend(&|b| flag(b.state == "healthy")),
            ),
            (
                "backend_intro_points",
                "introduction points of the backend's last verified descriptor",
                per_backend(&|b| b.intro_points as f64),
            ),
            (
                "last_upload_timestamp_seconds",
                "when this node last uploaded the descriptor for the period",
                per_period(&|p| p.published_at as f64),
            ),
            (
                "upload_hsdirs_accepted",
                "HSDirs that accepted the last upload for the period",
                per_period(&|p| p.hsdirs_accepted as f64),
            ),
            (
                "hsdirs_holding",
                "responsible HSDirs holding the master descriptor for the period (fetch-back)",
                per_hsdir_period(&|v| v.holding as f64),
            ),
            (
                "hsdirs_responsible",
                "HSDirs responsible for the master descriptor for the period",
                per_hsdir_period(&|v| v.responsible as f64),
            ),
            (
                "alerts",
                "alerts raised (see the log)",
                node(self.alerts.len() as f64),
            ),
        ];
        let mut out = String::new();
        for (name, help, samples) in metrics {
            let _ = writeln!(
                out,
                "# HELP rustbalance_{name} {help}\n# TYPE rustbalance_{name} gauge"
            );
            for (labels, value) in samples {
                let _ = writeln!(out, "rustbalance_{name}{{{labels}}} {value}");
            }
        }
        out
    }
}

/// One metric's samples: label pairs (`key="value"`) and the value.
type Samples = Vec<(String, f64)>;

/// "12 s ago"-style age of `then` at `now`; "never" without a time.
fn ago(now: u64, then: Option<u64>) -> String {
    let Some(then) = then else {
        return "never".to_owned();
    };
    let secs = now.saturating_sub(then);
    match secs {
        0..=119 => format!("{secs} s ago"),
        120..=7199 => format!("{} min ago", secs / 60),
        _ => format!("{} h ago", secs / 3600),
    }
}

/// The daemon's shared [`NodeStatus`]: each loop updates its part, the status socket reads it.
#[derive(Clone, Debug)]
pub struct StatusBoard(Arc<Mutex<NodeStatus>>);

impl StatusBoard {
    pub fn new(initial: NodeStatus) -> Self {
        StatusBoard(Arc::new(Mutex::new(initial)))
    }

    /// Change part of the status.
    pub fn update(&self, change: impl FnOnce(&mut NodeStatus)) {
        // A loop that panicked while holding the lock left a status that is still worth showing.
        let mut status = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut status);
    }

    /// The status as of now.
    pub fn snapshot(&self) -> NodeStatus {
        let mut status = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        status.generated_at = Timestamp::now().as_unix_secs();
        status
    }
}

/// A peer's clock offset worth showing: a second or more.
fn clock_note(offset_ms: Option<i64>) -> String {
    match offset_ms {
        Some(ms) if ms.unsigned_abs() >= 1000 => {
            format!("  clock {:+.1} s from ours", ms as f64 / 1000.0)
        }
        _ => String::new(),
    }
}

/// A member that runs another version of the shared configuration than this node.
fn config_note(mine: Option<&ConfigVersion>, theirs: Option<&ConfigVersion>) -> String {
    match theirs {
        Some(theirs) if Some(theirs) != mine => format!("  config version {theirs}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_node() -> NodeStatus {
        let id = |s: &str| NodeId::try_from(s.to_owned()).unwrap();
        let mut status = NodeStatus::starting(
            id("node-a"),
            Priority::try_from(1).unwrap(),
            "example.onion".into(),
        );
        status.generated_at = 1_000;
        status.role = Role::Publisher;
        status.can_publish = true;
        status.publisher = Some(id("node-a"));
        status.tor.bootstrapped = true;
        status.peers.push(PeerStatus {
            node_id: id("node-b"),
            priority: Priority::try_from(2).unwrap(),
            role: Role::Standby,
            can_publish: true,
            live: true,
            last_heard: Some(997),
            last_publish: None,
            endpoint: Some("127.0.0.1:5000".into()),
            clock_offset_ms: Some(-61_500),
            config_version: None,
        });
        status.backends.push(BackendStatus {
            name: "web1".into(),
            address: "x.onion".into(),
            state: "healthy".into(),
            intro_points: 3,
            last_fetch: Some(940),
            failure_count: 0,
            last_error: None,
            offers_pow: false,
        });
        status.publishes.push(PublishStatus {
            time_period: 20_000,
            published_at: 700,
            revision_counter: 5,
            intro_points: 3,
            descriptors: 1,
            hsdirs_accepted: 8,
            hsdirs_tried: 8,
        });
        status
    }

    #[test]
    fn a_working_node_is_healthy_and_its_table_says_what_it_knows() {
        let status = healthy_node();
        assert!(status.problems().is_empty());
        let table = status.render();
        for expected in [
            "node       node-a (priority 1)",
            "role       publisher",
            "publisher  node-a",
            "health     healthy",
            "node-b",
            "3 s ago",
            "web1",
            "60 s ago",
            "8/8 HSDirs accepted",
            "5 min ago",
        ] {
            assert!(
                table.contains(expected),
                "{expected:?} missing from\n{table}"
            );
        }
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<NodeStatus>(&json).unwrap(), status);
    }

    #[test]
    fn metrics_say_the_same_as_the_table() {
        let metrics = healthy_node().prometheus();
        for line in [
            "# TYPE rustbalance_healthy gauge",
            "rustbalance_healthy{node=\"node-a\"} 1",
            "rustbalance_publisher{node=\"node-a\"} 1",
            "rustbalance_peers{state=\"live\"} 1",
            "rustbalance_backend_healthy{backend=\"web1\"} 1",
            "rustbalance_backend_intro_points{backend=\"web1\"} 3",
            "rustbalance_last_upload_timestamp_seconds{time_period=\"20000\"} 700",
            "rustbalance_upload_hsdirs_accepted{time_period=\"20000\"} 8",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{line:?} missing from\n{metrics}"
            );
        }
    }

    #[test]
    fn the_first_health_round_shows_its_progress() {
        let mut status = healthy_node();
        assert!(!status.render().contains("first health round"));
        status.first_health_round = Some(RoundProgress { done: 12, of: 50 });
        let rendered = status.render();
        assert!(
            rendered.contains("backends\n  (first health round: 12/50 checked)\n"),
            "{rendered}"
        );
        let json = serde_json::to_string(&status).unwrap();
        assert_eq!(serde_json::from_str::<NodeStatus>(&json).unwrap(), status);
    }

    #[test]
    fn each_unhealthy_condition_is_named() {
        let mut status = healthy_node();
        status.publisher = None;
        status.tor.bootstrapped = false;
        status.tor.bootstrap_percent = 45;
        status.backends[0].state = "dead".into();
        status
            .alerts
            .push("no healthy backend: not publishing".into());
        let problems = status.problems();
        assert_eq!(problems.len(), 4, "{problems:?}");
        let rendered = status.render();
        assert!(rendered.contains("UNHEALTHY: no publisher in the cluster"));
        assert!(
            rendered.contains("tor        bootstrapping (45%)"),
            "{rendered}"
        );
        status.backends.clear();
        assert!(status
            .problems()
            .contains(&"no backends configured".to_owned()));
    }
}
