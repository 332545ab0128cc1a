//! Every tunable number of RustBalance in one place, with where it comes from.
//!
//! Intervals are configurable under `[timing]` (see `config`); the constants here are their
//! defaults. Numbers fixed by the Tor protocol are not configurable and say which spec section
//! fixes them.

use std::time::Duration;

/// How often each backend's descriptor is fetched and checked (`timing.health_interval_secs`).
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// How often the Healthy backends' descriptors are fetched again between health rounds
/// (`timing.descriptor_refresh_secs`), without the liveness check. A backend under an
/// introduction flood retires its introduction points (C tor after 16384-32768 INTRODUCE2
/// cells) and uploads a new descriptor; until the master descriptor follows, its clients are
/// sent to retired ones. A fetch costs one HSDir circuit, far less than a rendezvous.
pub const DEFAULT_DESCRIPTOR_REFRESH: Duration = Duration::from_secs(60);
/// How often a node tells its peers it is alive (`timing.heartbeat_interval_secs`).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the publisher re-uploads the master descriptor (`timing.publish_interval_secs`).
pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_secs(10 * 60);
/// Silence after which the publisher is suspected dead (`timing.publisher_timeout_secs`).
pub const DEFAULT_PUBLISHER_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra wait after suspicion before a standby takes over (`timing.takeover_grace_secs`).
pub const DEFAULT_TAKEOVER_GRACE: Duration = Duration::from_secs(90);
/// Largest difference between a peer's clock and ours before the operator is warned
/// (`timing.max_clock_skew_secs`); messages are accepted whatever the skew.
pub const DEFAULT_MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);
/// Longest a reliable cluster message (lease claim or release, peer change, join answer) is
/// resent while unacknowledged; receivers remember message ids for twice as long.
pub const MAX_RELIABLE_WAIT: Duration = Duration::from_secs(60);
/// How long every upload of a publisher may fail before it hands the lease to a standby whose
/// Tor works (`timing.upload_failure_release_secs`). Ten minutes rides out a consensus or two
/// of trouble on the Tor side without giving up the lease at the first hiccup, and stays far
/// below the descriptors' 180-minute lifetime, so clients never see the master address vanish.
pub const DEFAULT_UPLOAD_FAILURE_RELEASE: Duration = Duration::from_secs(10 * 60);
/// How long the master descriptor may be missing from the HSDirs a node reads it back from
/// (or list backends that node does not find healthy) before its publisher counts as failed
/// and hands the lease over, even while its heartbeats go on (`timing.hsdir_failure_secs`).
/// Three default health rounds: a publisher that just took over, or whose healthy set is one
/// round behind a standby's, is served again well within that.
pub const DEFAULT_HSDIR_FAILURE: Duration = Duration::from_secs(15 * 60);
/// How long the embedded Tor client may go without a live consensus, or (with backends
/// configured) without any HSDir answering a fetch or accepting an upload, before it is rebuilt
/// (`timing.tor_stall_secs`). Three default health rounds: one failed round is bad luck, three
/// in a row while nothing else works either is a wedged client.
pub const DEFAULT_TOR_STALL: Duration = Duration::from_secs(15 * 60);
/// A backend whose descriptor has not changed for this long is Stale
/// (`timing.descriptor_max_age_secs`).
///
/// C tor re-uploads a service descriptor every 60-120 minutes (with a new revision counter) and
/// at each time-period change, and HSDirs drop a descriptor after its 180-minute lifetime
/// (rend-spec-v3 §2.4). A healthy backend therefore shows a new revision at least every 120
/// minutes; 180 minutes leaves room for one slow or failed upload without flagging a healthy
/// backend, and is the point where the HSDirs would stop serving the old copy anyway.
pub const DEFAULT_DESCRIPTOR_MAX_AGE: Duration = Duration::from_secs(180 * 60);

/// Consecutive failed descriptor fetches that make a backend Dead (`health.dead_after_failures`).
/// One failure can be an unlucky circuit; two in a row, each having tried several HSDirs, means
/// the descriptor is gone.
pub const DEFAULT_DEAD_AFTER_FAILURES: u32 = 2;
/// How long the HTTP probe may take, circuit and rendezvous included (`health.probe.timeout_secs`).
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the default liveness check may take to complete a rendezvous with a backend.
/// A dead backend's introduction points refuse within seconds; the bound keeps a round
/// (and so the time a dead backend stays in the descriptor) within the health interval plus
/// well under a minute.
pub const RENDEZVOUS_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// Backends checked at once in a health round: each check builds fresh circuits.
pub const MAX_CHECKS_IN_FLIGHT: usize = 16;

/// UDP address the cluster transport listens on by default (WireGuard's customary port).
pub const DEFAULT_CLUSTER_LISTEN: &str = "0.0.0.0:51820";
/// File name of the master identity key inside the config directory.
pub const DEFAULT_MASTER_KEY_FILE: &str = "master.key";
/// Name of the config file inside the config directory.
pub const CONFIG_FILE_NAME: &str = "config.toml";
/// Default config directory (overridden by `--config-dir` / `RUSTBALANCE_CONFIG_DIR`).
pub const DEFAULT_CONFIG_DIR: &str = "/etc/rustbalance";
/// Default state directory (overridden by `--state-dir` / `RUSTBALANCE_STATE_DIR`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/rustbalance";
/// Arti's persistent state, below the state directory unless `[arti.storage]` says otherwise.
pub const ARTI_STATE_SUBDIR: &str = "arti/state";
/// Arti's directory cache, below the state directory unless `[arti.storage]` says otherwise.
pub const ARTI_CACHE_SUBDIR: &str = "arti/cache";

/// Name of the systemd credential that holds the key-encryption key (KEK) of `master.key`.
/// systemd hands a unit's credentials to it as files named after them in
/// `$CREDENTIALS_DIRECTORY` (`LoadCredential=`, `LoadCredentialEncrypted=`), so this is also
/// the file name in the credential store.
pub const KEK_CREDENTIAL_NAME: &str = "rustbalance-master-kek";
/// Where the KEK is created and looked for when no systemd credential provides it
/// (overridden by `RUSTBALANCE_CREDSTORE`). It is systemd's own credential store: a unit with
/// `LoadCredential=rustbalance-master-kek` finds the file there, and it lies outside the config
/// directory, so a copy of `/etc/rustbalance` alone does not carry the key to decrypt
/// `master.key`.
pub const DEFAULT_CREDSTORE_DIR: &str = "/etc/credstore";
/// Environment variable naming the credential store directory (tests point it at a temporary
/// directory).
pub const CREDSTORE_ENV: &str = "RUSTBALANCE_CREDSTORE";
/// Environment variable through which systemd tells a service where its credentials are.
pub const CREDENTIALS_DIRECTORY_ENV: &str = "CREDENTIALS_DIRECTORY";

// Numbers fixed by the Tor protocol (not configurable).

/// Clients refuse a descriptor listing more introduction points (rend-spec-v3 §2.5.2.2; C tor
/// rejects such a descriptor, Arti keeps the first 20).
pub const MAX_INTRO_POINTS: usize = 20;
/// The HSDirs' descriptor size limit when the consensus does not say
/// (`HSV3MaxDescriptorSize`, dir-spec §3.4.1 "Consensus parameters"); HSDirs refuse a
/// descriptor of this many bytes or more.
pub const DEFAULT_MAX_DESCRIPTOR_SIZE: usize = 50_000;
/// Lifetime written into the master descriptor: how long HSDirs and clients keep it
/// (rend-spec-v3 §2.4 "descriptor-lifetime"; C tor uses 180 minutes for services).
pub const DESCRIPTOR_LIFETIME_MINUTES: u16 = 180;
/// Validity of the descriptor-signing certificate and of the re-certified introduction-point
/// certificates (rend-spec-v3 §2.4, cert-spec; C tor: 54 hours, comfortably past the longest
/// descriptor lifetime).
pub const CERT_LIFETIME: Duration = Duration::from_secs(54 * 3600);
/// A consensus whose valid-after is older than this has expired (authorities vote hourly and
/// a consensus is valid for three hours, dir-spec §1.4): a node still holding one cannot fetch
/// a newer one. `rustbalance doctor` says so.
pub const CONSENSUS_TOO_OLD: Duration = Duration::from_secs(3 * 3600);
/// The FlowCtrl protocol versions a C-tor service (0.4.8 and later) writes in its
/// descriptor's `flow-control` line when the consensus enables congestion control.
pub const C_TOR_FLOWCTRL_VERSIONS: &str = "1-2";
