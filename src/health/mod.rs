//! Backend health: is each backend's descriptor on the HSDirs, valid, fresh, and does the
//! backend answer?
//!
//! [`state`] decides, purely; [`HealthMonitor`] runs one round of checks through the Tor
//! seam ([`TorNetwork`]; all backends concurrently, each descriptor fetched and verified by
//! [`fetch`]), feeds what it saw to each backend's
//! state machine, logs every change of state, keeps the last good descriptor of each backend
//! under `<state-dir>/descriptors/<name>.desc`, and hands the introduction points of the
//! Healthy backends to the publisher.

pub mod fetch;
pub mod stall;
pub mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::join_all;
use tor_netdoc::doc::hsdesc::IntroPointDesc;

use crate::config::{BackendConfig, Config, ProbeConfig};
use crate::storage::fsutil;
use crate::tor::{HttpProbe, TorNetwork};
use fetch::VerifiedDescriptor;
use state::{BackendHealth, BackendState, HealthPolicy, Observation};

/// The introduction points of the backends that may be published, in config order.
pub type HealthyBackends = Arc<Vec<(String, Vec<IntroPointDesc>)>>;

/// One backend as the monitor sees it.
struct MonitoredBackend {
    config: BackendConfig,
    health: BackendHealth,
    /// From the last descriptor that verified; kept while the backend is Healthy.
    intro_points: Vec<IntroPointDesc>,
}

/// One backend as `rustbalance status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    pub name: String,
    pub address: String,
    pub state: BackendState,
    /// Introduction points of its last verified descriptor.
    pub intro_points: usize,
    /// When a valid descriptor was last fetched.
    pub last_seen: Option<SystemTime>,
    pub failure_count: u32,
    pub last_error: Option<String>,
}

/// The health of every configured backend.
pub struct HealthMonitor {
    backends: Vec<MonitoredBackend>,
    /// Backends for which some HSDir answered in the last round (with the descriptor, or with
    /// a 404 for a backend that is down): proof that this node's Tor client reaches the HSDirs.
    reached_last_round: usize,
    policy: HealthPolicy,
    probe: Option<ProbeConfig>,
    descriptor_dir: PathBuf,
}

impl HealthMonitor {
    pub fn new(config: &Config) -> Self {
        HealthMonitor {
            backends: config
                .backends
                .iter()
                .map(|backend| MonitoredBackend {
                    config: backend.clone(),
                    health: BackendHealth::new(backend.exclude),
                    intro_points: Vec::new(),
                })
                .collect(),
            policy: HealthPolicy {
                descriptor_max_age: config.timing.descriptor_max_age,
                dead_after_failures: config.health.dead_after_failures,
            },
            reached_last_round: 0,
            probe: config.health.probe.clone(),
            descriptor_dir: config.state_dir.join("descriptors"),
        }
    }

    /// Check every backend once, age the unchanged ones, and return the Healthy ones'
    /// introduction points.
    pub async fn run_round<T: TorNetwork>(&mut self, tor: &T) -> HealthyBackends {
        let probe = self.probe.as_ref().map(|p| HttpProbe {
            path: &p.path,
            port: p.port,
            expected_status: p.expected_status,
            timeout: p.timeout(),
        });
        let checks = self.backends.iter().map(|backend| async {
            if backend.health.state() == BackendState::Excluded {
                return None;
            }
            Some(check_backend(tor, &backend.config, probe.as_ref()).await)
        });
        let results = join_all(checks).await;

        let now = SystemTime::now();
        self.reached_last_round = results
            .iter()
            .flatten()
            .filter(|check| check.reached_hsdirs)
            .count();
        for (backend, result) in self.backends.iter_mut().zip(results) {
            let Some(Check {
                observation,
                descriptor,
                ..
            }) = result
            else {
                continue;
            };
            if let Some(descriptor) = descriptor {
                save_descriptor(&self.descriptor_dir, &backend.config, &descriptor);
                backend.intro_points = descriptor.intro_points;
            }
            let name = &backend.config.name;
            if let Some(change) = backend.health.observe(observation, now, &self.policy) {
                let reason = backend.health.last_error().unwrap_or("descriptor verified");
                if change.to == BackendState::Healthy {
                    tracing::info!(backend = %name, "backend {}: {} -> {}", name, change.from, change.to);
                } else {
                    tracing::warn!(backend = %name, "backend {}: {} -> {} ({reason})", name, change.from, change.to);
                }
            }
            // A backend that answers but whose descriptor stopped changing goes Stale here.
            if let Some(change) = backend.health.tick(now, &self.policy) {
                tracing::warn!(backend = %name, "backend {}: {} -> {} (descriptor unchanged for too long)", name, change.from, change.to);
            }
        }
        self.healthy()
    }

    /// For how many backends some HSDir answered in the last round.
    pub fn reached_last_round(&self) -> usize {
        self.reached_last_round
    }

    /// Every configured backend, in config order.
    pub fn report(&self) -> Vec<BackendReport> {
        self.backends
            .iter()
            .map(|b| BackendReport {
                name: b.config.name.to_string(),
                address: b.config.address.to_string(),
                state: b.health.state(),
                intro_points: b.intro_points.len(),
                last_seen: b.health.last_seen(),
                failure_count: b.health.failure_count(),
                last_error: b.health.last_error().map(str::to_owned),
            })
            .collect()
    }

    fn healthy(&self) -> HealthyBackends {
        Arc::new(
            self.backends
                .iter()
                .filter(|b| b.health.state() == BackendState::Healthy)
                .map(|b| (b.config.name.to_string(), b.intro_points.clone()))
                .collect(),
        )
    }
}

/// What one check of one backend found.
struct Check {
    observation: Observation,
    /// The descriptor, if it verified.
    descriptor: Option<VerifiedDescriptor>,
    /// Some HSDir answered (with or without a descriptor).
    reached_hsdirs: bool,
}

/// Fetch (and probe) one backend.
async fn check_backend<T: TorNetwork>(
    tor: &T,
    backend: &BackendConfig,
    probe: Option<&HttpProbe<'_>>,
) -> Check {
    let descriptor = match fetch::fetch_current(tor, &backend.address).await {
        Ok(descriptor) => descriptor,
        Err(err) => {
            return Check {
                reached_hsdirs: err.reached_hsdirs(),
                observation: Observation::FetchFailed {
                    reason: format!("descriptor fetch: {err}"),
                },
                descriptor: None,
            };
        }
    };
    tracing::debug!(
        backend = %backend.name,
        hsdir = %descriptor.hsdir,
        intro_points = descriptor.intro_points.len(),
        "descriptor verified"
    );
    if let Some(probe) = probe {
        if let Err(err) = tor.probe(&backend.address, probe).await {
            return Check {
                observation: Observation::ProbeFailed {
                    reason: format!("probe: {err}"),
                },
                descriptor: Some(descriptor),
                reached_hsdirs: true,
            };
        }
    }
    let revision_counter = descriptor.revision_counter;
    Check {
        observation: Observation::Descriptor { revision_counter },
        descriptor: Some(descriptor),
        reached_hsdirs: true,
    }
}

/// Keep the last verified descriptor for the operator to inspect; failure only costs that.
fn save_descriptor(
    dir: &std::path::Path,
    backend: &BackendConfig,
    descriptor: &VerifiedDescriptor,
) {
    let path = dir.join(format!("{}.desc", backend.name));
    let result = fsutil::create_private_dir(dir).and_then(|()| {
        fsutil::write_atomic(&path, descriptor.text.as_bytes(), fsutil::PRIVATE_FILE_MODE)
    });
    if let Err(err) = result {
        tracing::warn!(backend = %backend.name, "cannot save descriptor to {}: {err}", path.display());
    }
}
