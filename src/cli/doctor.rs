//! `rustbalance doctor`: what is wrong with this node, in plain words, one line per finding.
//!
//! First what the daemon reads at start, read exactly as `run` reads it and without writing
//! anything: config.toml (its `[arti]` table included), whether this node was removed, the
//! master key opened with its key-encryption key, the cluster secret, the WireGuard key and
//! the members. Then the running daemon's own view, asked over its status socket: Tor's
//! bootstrap and consensus, what the HSDirs answered when it read the master descriptor back,
//! each backend and each peer. [`diagnose_running`] turns that view into findings (pure).

use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::config::Config;
use crate::daemon::status::NodeStatus;
use crate::health::state::BackendState;
use crate::keys::kek::KekSource;
use crate::params;
use crate::tor::ArtiSettings;

/// How bad one finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    /// Works now, but an operator should look.
    Warn,
    /// Something the node needs is broken.
    Fail,
}

/// One line of the report: what was checked, how it stands, and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub verdict: Verdict,
    pub subject: String,
    pub text: String,
}

impl Finding {
    pub fn new(verdict: Verdict, subject: impl Into<String>, text: impl Into<String>) -> Finding {
        Finding {
            verdict,
            subject: subject.into(),
            text: text.into(),
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        write!(f, "{verdict:<5} {:<22} {}", self.subject, self.text)
    }
}

/// The node's files, read as `run` reads them. Returns the configuration when it loads, for
/// the checks that need it.
pub fn diagnose_files(
    config_dir: &Path,
    state_dir: &Path,
    findings: &mut Vec<Finding>,
) -> Option<Config> {
    let config = match Config::load(config_dir, state_dir) {
        Ok(config) => config,
        Err(err) => {
            findings.push(Finding::new(Verdict::Fail, "config", err.to_string()));
            return None;
        }
    };
    findings.push(Finding::new(
        Verdict::Ok,
        "config",
        format!(
            "{} loads: node {} (priority {}), {} backend(s)",
            config.config_dir.join(params::CONFIG_FILE_NAME).display(),
            config.node.id,
            config.node.priority,
            config.backends.len()
        ),
    ));
    if let Err(err) = ArtiSettings::from_config(&config) {
        findings.push(Finding::new(
            Verdict::Fail,
            "config [arti]",
            err.to_string(),
        ));
    }
    let kek = KekSource::from_env().find();
    match crate::daemon::check_node_files(&config) {
        Ok(files) => {
            findings.push(Finding::new(
                Verdict::Ok,
                "keys",
                if files.cluster_files_pending {
                    format!(
                        "the master key opens (master {}); no cluster files yet: the first run creates them",
                        files.master_address
                    )
                } else {
                    format!(
                        "the master key opens (master {}); cluster secret and WireGuard key readable; {} other member(s) known",
                        files.master_address, files.members
                    )
                },
            ));
            match kek {
                Ok((path, _)) => findings.push(Finding::new(
                    Verdict::Ok,
                    "key-encryption key",
                    format!("found at {}", path.display()),
                )),
                // The master key opened, so it is not sealed with a KEK (a plain key file).
                Err(_) => findings.push(Finding::new(
                    Verdict::Warn,
                    "key-encryption key",
                    "none found: the master key is stored unencrypted; `rustbalance init` seals new keys",
                )),
            }
        }
        Err(err) => {
            findings.push(Finding::new(Verdict::Fail, "keys", err.to_string()));
            if let Err(err) = kek {
                findings.push(Finding::new(
                    Verdict::Fail,
                    "key-encryption key",
                    err.to_string(),
                ));
            }
        }
    }
    Some(config)
}

/// The running daemon's view of itself, as findings. `max_clock_skew`: how far a peer's clock
/// may be off before it is worth a word.
pub fn diagnose_running(status: &NodeStatus, max_clock_skew: Duration) -> Vec<Finding> {
    let now = status.generated_at;
    let mut findings = Vec::new();
    let tor = &status.tor;
    findings.push(match (tor.bootstrapped, tor.consensus_valid_after) {
        (true, Some(valid_after)) => {
            let age = now.saturating_sub(valid_after);
            if age > params::CONSENSUS_TOO_OLD.as_secs() {
                Finding::new(
                    Verdict::Warn,
                    "tor",
                    format!("bootstrapped, but its consensus is {} old: it cannot fetch a newer one (is the network cut, or this machine's clock wrong?)", minutes(age)),
                )
            } else {
                Finding::new(Verdict::Ok, "tor", format!("bootstrapped, consensus of {} ago", minutes(age)))
            }
        }
        (true, None) => Finding::new(Verdict::Ok, "tor", "bootstrapped"),
        (false, _) => Finding::new(
            Verdict::Fail,
            "tor",
            format!(
                "not bootstrapped ({}%){}: the node cannot reach the Tor network; check this machine's outbound connections and its clock",
                tor.bootstrap_percent,
                tor.last_error.as_deref().map(|e| format!(", last error: {e}")).unwrap_or_default()
            ),
        ),
    });
    findings.extend(hsdir_findings(status));
    findings.push(match &status.publisher {
        Some(publisher) if *publisher == status.node_id => {
            Finding::new(Verdict::Ok, "cluster", "this node is the publisher")
        }
        Some(publisher) => Finding::new(
            Verdict::Ok,
            "cluster",
            format!("{publisher} is the publisher; this node stands by"),
        ),
        None => Finding::new(
            Verdict::Fail,
            "cluster",
            "no publisher: no member can publish now (see tor and the backends above and below)",
        ),
    });
    if status.backends.is_empty() {
        findings.push(Finding::new(
            Verdict::Fail,
            "backends",
            "none configured: add one with `rustbalance backend add NAME ADDRESS`",
        ));
    }
    for backend in &status.backends {
        let subject = format!("backend {}", backend.name);
        let error = backend.last_error.as_deref().unwrap_or("no error recorded");
        findings.push(match BackendState::from_name(&backend.state) {
            Some(BackendState::Healthy) => Finding::new(
                Verdict::Ok,
                subject,
                format!("healthy, {} introduction points", backend.intro_points),
            ),
            Some(BackendState::Unchecked) => Finding::new(Verdict::Warn, subject, "not checked yet (the first health round is under way)"),
            Some(BackendState::Excluded) => Finding::new(Verdict::Ok, subject, "excluded in config.toml: not published"),
            Some(BackendState::Stale) => Finding::new(
                Verdict::Fail,
                subject,
                "its descriptor has not changed for too long: its tor stopped re-publishing (is it running, with network?)",
            ),
            Some(BackendState::Dead) => Finding::new(
                Verdict::Fail,
                subject,
                format!("dead ({error}): is its tor running, and its torrc set to HiddenServiceOnionbalanceInstance 1?"),
            ),
            None => Finding::new(
                Verdict::Warn,
                subject,
                format!("in a state this doctor does not know ({}): is the daemon another version?", backend.state),
            ),
        });
    }
    for peer in &status.peers {
        let subject = format!("peer {}", peer.node_id);
        let endpoint = peer.endpoint.as_deref().unwrap_or("its endpoint");
        let mut finding = if !peer.live {
            Finding::new(
                Verdict::Fail,
                subject,
                match peer.last_heard {
                    Some(at) => format!("silent for {}: is it running, and do UDP datagrams reach {endpoint} (firewall, NAT)?", minutes(now.saturating_sub(at))),
                    None => format!("never heard since this node started: is it running, and do UDP datagrams reach {endpoint} (firewall, NAT)?"),
                },
            )
        } else if !peer.can_publish {
            Finding::new(Verdict::Warn, subject, "heard, but cannot publish now (its Tor is not working): `rustbalance doctor` there")
        } else {
            Finding::new(
                Verdict::Ok,
                subject,
                format!(
                    "heard {} ago, can publish",
                    minutes(now.saturating_sub(peer.last_heard.unwrap_or(now)))
                ),
            )
        };
        if let Some(offset) = peer.clock_offset_ms {
            if u128::from(offset.unsigned_abs()) > max_clock_skew.as_millis() {
                finding.verdict = finding.verdict.max(Verdict::Warn);
                finding.text.push_str(&format!(
                    "; its clock is {:+.1} s from this node's: run NTP on both",
                    offset as f64 / 1000.0
                ));
            }
        }
        findings.push(finding);
    }
    for alert in &status.alerts {
        findings.push(Finding::new(Verdict::Fail, "alert", alert.clone()));
    }
    findings
}

/// What the read-back of the master descriptor found, per time period.
fn hsdir_findings(status: &NodeStatus) -> Vec<Finding> {
    if status.hsdirs.is_empty() {
        return vec![Finding::new(
            Verdict::Warn,
            "hsdirs",
            "the master descriptor was not read back yet (after the first health round)",
        )];
    }
    status
        .hsdirs
        .iter()
        .map(|view| {
            let subject = format!("hsdirs period {}", view.time_period);
            if view.answered == 0 {
                Finding::new(
                    Verdict::Fail,
                    subject,
                    format!("none of {} responsible HSDirs answered: this node's Tor cannot reach them", view.responsible),
                )
            } else if view.holding == 0 {
                Finding::new(
                    Verdict::Fail,
                    subject,
                    format!("{} of {} answered, none holds the master descriptor: nothing published reached them (see cluster and backends)", view.answered, view.responsible),
                )
            } else if !view.only_healthy_backends {
                Finding::new(
                    Verdict::Warn,
                    subject,
                    format!("{} of {} hold it, but it lists backends this node finds unhealthy (the publisher's next upload fixes that)", view.holding, view.responsible),
                )
            } else {
                Finding::new(
                    Verdict::Ok,
                    subject,
                    format!("{} of {} answered, {} hold the master descriptor", view.answered, view.responsible, view.holding),
                )
            }
        })
        .collect()
}

/// Seconds as a person reads them.
fn minutes(secs: u64) -> String {
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 7200 {
        format!("{} min", secs / 60)
    } else {
        format!("{} h", secs / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeId, Priority, Role};
    use crate::daemon::status::{BackendStatus, HsDirsView, PeerStatus};

    const NOW: u64 = 1_800_000_000;

    fn node(name: &str) -> NodeId {
        NodeId::try_from(name.to_owned()).unwrap()
    }

    fn running() -> NodeStatus {
        let mut status =
            NodeStatus::starting(node("a"), Priority::try_from(1).unwrap(), "x.onion".into());
        status.generated_at = NOW;
        status.publisher = Some(node("a"));
        status.role = Role::Publisher;
        status.tor.bootstrapped = true;
        status.tor.consensus_valid_after = Some(NOW - 600);
        status.hsdirs = vec![HsDirsView {
            time_period: 20_000,
            responsible: 8,
            answered: 8,
            holding: 8,
            newest_revision: Some(5),
            holding_newest: 8,
            only_healthy_backends: true,
            checked_at: NOW - 5,
        }];
        status.backends = vec![backend("alpha", "healthy", None)];
        status.peers = vec![PeerStatus {
            node_id: node("b"),
            priority: Priority::try_from(2).unwrap(),
            role: Role::Standby,
            can_publish: true,
            live: true,
            last_heard: Some(NOW - 1),
            last_publish: None,
            endpoint: Some("192.0.2.2:51820".into()),
            clock_offset_ms: Some(40),
            config_version: None,
        }];
        status
    }

    fn backend(name: &str, state: &str, error: Option<&str>) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            address: "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion".into(),
            state: state.into(),
            intro_points: 3,
            last_fetch: Some(NOW - 10),
            failure_count: 0,
            last_error: error.map(str::to_owned),
            offers_pow: false,
        }
    }

    fn failures(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .filter(|f| f.verdict != Verdict::Ok)
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_working_node_has_nothing_to_say() {
        let findings = diagnose_running(&running(), Duration::from_secs(5));
        assert_eq!(failures(&findings), Vec::<String>::new());
        assert!(findings.iter().any(|f| f.subject == "backend alpha"));
        assert!(findings.iter().any(|f| f.subject == "peer b"));
    }

    #[test]
    fn each_broken_part_is_named_with_what_to_do() {
        let mut status = running();
        status.tor.bootstrapped = false;
        status.tor.bootstrap_percent = 10;
        status.tor.last_error = Some("cannot connect to any guard".into());
        status.publisher = None;
        status.hsdirs[0].answered = 0;
        status.backends.push(backend(
            "beta",
            "dead",
            Some("no rendezvous: introduction failed"),
        ));
        status.peers[0].live = false;
        status.peers[0].last_heard = Some(NOW - 600);
        status.peers[0].clock_offset_ms = Some(-61_000);
        let text = failures(&diagnose_running(&status, Duration::from_secs(5))).join("\n");
        for expected in [
            "FAIL  tor                    not bootstrapped (10%), last error: cannot connect to any guard",
            "none of 8 responsible HSDirs answered",
            "FAIL  cluster                no publisher",
            "FAIL  backend beta           dead (no rendezvous: introduction failed): is its tor running",
            "FAIL  peer b                 silent for 10 min: is it running, and do UDP datagrams reach 192.0.2.2:51820",
            "its clock is -61.0 s from this node's",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
        assert!(!text.contains("backend alpha"), "{text}");
    }

    #[test]
    fn an_old_consensus_a_skewed_clock_and_a_half_served_descriptor_are_warnings() {
        let mut status = running();
        status.tor.consensus_valid_after = Some(NOW - 5 * 3600);
        status.peers[0].clock_offset_ms = Some(9_000);
        status.hsdirs[0].only_healthy_backends = false;
        let findings = diagnose_running(&status, Duration::from_secs(5));
        let warned: Vec<&str> = findings
            .iter()
            .filter(|f| f.verdict == Verdict::Warn)
            .map(|f| f.subject.as_str())
            .collect();
        assert_eq!(warned, ["tor", "hsdirs period 20000", "peer b"]);
        assert!(findings.iter().all(|f| f.verdict != Verdict::Fail));
    }
}
