//! `config.toml`: what an operator writes, parsed once and checked completely.
//!
//! Loading either yields a [`Config`] whose every field is already valid (typed addresses,
//! non-zero intervals, an Arti configuration Arti itself accepted) or a [`ConfigError`] that
//! fits on one line and names the offending key, e.g.
//! `/etc/rustbalance/config.toml line 9: backends[1].address: bad checksum`.
//! Unknown keys are errors, not warnings: a misspelt key silently ignored is a setting the
//! operator believes is in force and is not. Loading never writes anything.
//!
//! The key-by-key reference lives in README.md ("Configuration reference").

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tor_hscrypto::pk::HsClientDescEncKey;

use crate::cluster::{Endpoint, NodeId, Priority};
use crate::keys::onion_address::OnionAddress;
use crate::params;

pub mod onionbalance;
pub mod shared;

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeConfig,
    pub cluster: ClusterConfig,
    pub backends: Vec<BackendConfig>,
    pub timing: TimingConfig,
    pub health: HealthConfig,
    pub status: StatusConfig,
    /// `[restricted_discovery]`: the clients that may find the service, from the list and the
    /// directory together (empty: anyone who knows the address).
    pub authorized_clients: Vec<HsClientDescEncKey>,
    /// The `[arti]` table as written. Arti's own loader checks and resolves it (the Tor layer's
    /// `ArtiSettings::from_config`), so this layer does not depend on Arti.
    pub arti: toml::Table,
    /// The file it was read from, for error messages.
    pub file: PathBuf,
    /// The directory the config was read from; relative key paths are resolved against it.
    pub config_dir: PathBuf,
    /// Where the daemon keeps state (Arti's cache by default, fetched descriptors, state.json).
    pub state_dir: PathBuf,
    /// The cluster-wide tables as config.toml text: what all members share and what a joining
    /// node receives (see [`Config::shared_text`]).
    shared: String,
}

/// `[node]`: this node's identity within the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    pub priority: Priority,
    /// File holding the master identity key, relative to the config directory.
    #[serde(default = "default_master_key")]
    pub master_key: PathBuf,
}

/// `[cluster]`: how this node talks to its peers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Local UDP address of the cluster tunnel.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How peers reach this node (`HOST:PORT`); needed before others can join through it.
    #[serde(default)]
    pub endpoint: Option<Endpoint>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            listen: default_listen(),
            endpoint: None,
        }
    }
}

/// `[[backends]]`: one onion service whose introduction points we balance over.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: BackendName,
    pub address: OnionAddress,
    /// Keep this backend out of the descriptor (maintenance) without removing it.
    #[serde(default)]
    pub exclude: bool,
}

/// `[status]`: how the node reports beyond `rustbalance status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Serve Prometheus text metrics over HTTP on this loopback address (off by default).
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
}

/// `[restricted_discovery]`: only clients holding one of these x25519 keys can decrypt the
/// master descriptor (rend-spec-v3 "client authorization"; tor's `authorized_clients/`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestrictedDiscoveryFile {
    /// Keys as in tor's `*.auth` files: `descriptor:x25519:<base32>`.
    #[serde(default)]
    clients: Vec<String>,
    /// A directory of `*.auth` files, one key each, as tor's `authorized_clients/`; relative
    /// to the config directory. Read at start and on every reload.
    #[serde(default)]
    clients_dir: Option<PathBuf>,
}

/// `[health]`: when a backend counts as dead.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Consecutive failed descriptor fetches after which a backend is Dead.
    pub dead_after_failures: u32,
    /// `[health.probe]`: an HTTP request to each backend through Tor; a failure is Dead at
    /// once. Without it, a backend whose tor died stays listed until its descriptor ages out.
    pub probe: Option<ProbeConfig>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            dead_after_failures: params::DEFAULT_DEAD_AFTER_FAILURES,
            probe: None,
        }
    }
}

/// `[health.probe]`: `GET <path>` on `<backend>.onion:<port>` must answer `expected_status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    #[serde(default = "default_probe_path")]
    pub path: String,
    #[serde(default = "default_probe_port")]
    pub port: u16,
    #[serde(default = "default_probe_status")]
    pub expected_status: u16,
    #[serde(default = "default_probe_timeout", rename = "timeout_secs")]
    timeout: Seconds,
}

impl ProbeConfig {
    pub fn timeout(&self) -> Duration {
        self.timeout.0
    }
}

fn default_probe_path() -> String {
    "/".into()
}

fn default_probe_port() -> u16 {
    80
}

fn default_probe_status() -> u16 {
    200
}

fn default_probe_timeout() -> Seconds {
    Seconds(params::DEFAULT_PROBE_TIMEOUT)
}

/// A backend's short name: used in logs, status and as a file name under the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct BackendName(String);

impl TryFrom<String> for BackendName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if name.is_empty() || name.len() > 64 || !valid_chars || name.starts_with('.') {
            return Err(format!(
                "{name:?} is not a valid backend name (1-64 characters of A-Z a-z 0-9 - _ . , not starting with '.')"
            ));
        }
        Ok(BackendName(name))
    }
}

impl BackendName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BackendName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `[timing]`: every interval of the daemon's loops. Shortened in tests, so that the
/// end-to-end scenarios finish in minutes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimingConfig {
    pub health_interval: Duration,
    pub descriptor_refresh: Duration,
    pub heartbeat_interval: Duration,
    pub publish_interval: Duration,
    pub publisher_timeout: Duration,
    pub takeover_grace: Duration,
    pub max_clock_skew: Duration,
    pub descriptor_max_age: Duration,
    pub upload_failure_release: Duration,
    pub tor_stall: Duration,
    pub hsdir_failure: Duration,
}

impl Default for TimingConfig {
    fn default() -> Self {
        TimingConfig {
            health_interval: params::DEFAULT_HEALTH_INTERVAL,
            descriptor_refresh: params::DEFAULT_DESCRIPTOR_REFRESH,
            heartbeat_interval: params::DEFAULT_HEARTBEAT_INTERVAL,
            publish_interval: params::DEFAULT_PUBLISH_INTERVAL,
            publisher_timeout: params::DEFAULT_PUBLISHER_TIMEOUT,
            takeover_grace: params::DEFAULT_TAKEOVER_GRACE,
            max_clock_skew: params::DEFAULT_MAX_CLOCK_SKEW,
            descriptor_max_age: params::DEFAULT_DESCRIPTOR_MAX_AGE,
            upload_failure_release: params::DEFAULT_UPLOAD_FAILURE_RELEASE,
            tor_stall: params::DEFAULT_TOR_STALL,
            hsdir_failure: params::DEFAULT_HSDIR_FAILURE,
        }
    }
}

/// The file as written: `[timing]` in whole seconds, `[arti]` still raw.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    node: NodeConfig,
    #[serde(default)]
    cluster: ClusterConfig,
    #[serde(default)]
    backends: Vec<BackendConfig>,
    #[serde(default)]
    timing: TimingFile,
    #[serde(default)]
    health: HealthConfig,
    #[serde(default)]
    status: StatusConfig,
    #[serde(default)]
    restricted_discovery: RestrictedDiscoveryFile,
    #[serde(default)]
    arti: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct TimingFile {
    health_interval_secs: Seconds,
    descriptor_refresh_secs: Seconds,
    heartbeat_interval_secs: Seconds,
    publish_interval_secs: Seconds,
    publisher_timeout_secs: Seconds,
    takeover_grace_secs: Seconds,
    max_clock_skew_secs: Seconds,
    descriptor_max_age_secs: Seconds,
    upload_failure_release_secs: Seconds,
    tor_stall_secs: Seconds,
    hsdir_failure_secs: Seconds,
}

impl Default for TimingFile {
    fn default() -> Self {
        let d = TimingConfig::default();
        TimingFile {
            health_interval_secs: Seconds(d.health_interval),
            descriptor_refresh_secs: Seconds(d.descriptor_refresh),
            heartbeat_interval_secs: Seconds(d.heartbeat_interval),
            publish_interval_secs: Seconds(d.publish_interval),
            publisher_timeout_secs: Seconds(d.publisher_timeout),
            takeover_grace_secs: Seconds(d.takeover_grace),
            max_clock_skew_secs: Seconds(d.max_clock_skew),
            descriptor_max_age_secs: Seconds(d.descriptor_max_age),
            upload_failure_release_secs: Seconds(d.upload_failure_release),
            tor_stall_secs: Seconds(d.tor_stall),
            hsdir_failure_secs: Seconds(d.hsdir_failure),
        }
    }
}

/// A whole, non-zero number of seconds, at most [`MAX_SECONDS`]. Zero would make a loop spin
/// or a timeout fire at once; an absurd value would overflow a deadline (an instant plus it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seconds(Duration);

/// The longest interval or timeout accepted: a year, far beyond any useful setting.
const MAX_SECONDS: u64 = 365 * 24 * 3600;

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match u64::deserialize(deserializer)? {
            0 => Err(serde::de::Error::custom("must be at least 1 second")),
            secs if secs > MAX_SECONDS => Err(serde::de::Error::custom(format!(
                "must be at most {MAX_SECONDS} seconds (a year)"
            ))),
            secs => Ok(Seconds(Duration::from_secs(secs))),
        }
    }
}

fn default_master_key() -> PathBuf {
    PathBuf::from(params::DEFAULT_MASTER_KEY_FILE)
}

fn default_listen() -> SocketAddr {
    params::DEFAULT_CLUSTER_LISTEN
        .parse()
        .expect("DEFAULT_CLUSTER_LISTEN is a valid socket address")
}

/// Why a configuration was refused. Every message is one line and names the file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read {path}: {source} (create it with `rustbalance init`, or pass --config-dir)"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}{}: {key}{message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        /// The dotted key followed by ": ", or empty when the error concerns the whole file.
        key: String,
        message: String,
    },
}

impl ConfigError {
    /// `key` (dotted, e.g. `arti.storage.cache_dir`) of the file `config` was read from is
    /// wrong: for the checks of layers above this one (the `[arti]` table).
    pub fn invalid_key(config: &Config, key: &str, message: String) -> Self {
        ConfigError::Invalid {
            path: config.file.clone(),
            line: None,
            key: format!("{key}: "),
            message,
        }
    }
}

impl Config {
    /// Read and check `<config_dir>/config.toml`.
    pub fn load(config_dir: &Path, state_dir: &Path) -> Result<Config, ConfigError> {
        let path = config_dir.join(params::CONFIG_FILE_NAME);
        let text = crate::storage::fsutil::read_bounded_string(&path).map_err(|source| {
            ConfigError::Unreadable {
                path: path.clone(),
                source,
            }
        })?;
        Config::parse(&text, &path, config_dir, state_dir)
    }

    /// Check the text of a config file; `path` is only used in error messages.
    pub fn parse(
        text: &str,
        path: &Path,
        config_dir: &Path,
        state_dir: &Path,
    ) -> Result<Config, ConfigError> {
        let invalid = |line: Option<usize>, key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line,
            key: if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            },
            message,
        };

        let shared = shared_tables(text);
        let file: ConfigFile = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|err| {
                let key = err.path().to_string();
                let key = if key == "." { String::new() } else { key };
                let toml_err = err.into_inner();
                let line = toml_err.span().map(|span| line_of(text, span.start));
                invalid(line, &key, one_line(toml_err.message()))
            })?;

        let timing = TimingConfig {
            health_interval: file.timing.health_interval_secs.0,
            descriptor_refresh: file.timing.descriptor_refresh_secs.0,
            heartbeat_interval: file.timing.heartbeat_interval_secs.0,
            publish_interval: file.timing.publish_interval_secs.0,
            publisher_timeout: file.timing.publisher_timeout_secs.0,
            takeover_grace: file.timing.takeover_grace_secs.0,
            max_clock_skew: file.timing.max_clock_skew_secs.0,
            descriptor_max_age: file.timing.descriptor_max_age_secs.0,
            upload_failure_release: file.timing.upload_failure_release_secs.0,
            tor_stall: file.timing.tor_stall_secs.0,
            hsdir_failure: file.timing.hsdir_failure_secs.0,
        };
        if timing.hsdir_failure < 2 * timing.health_interval {
            return Err(invalid(
                None,
                "timing.hsdir_failure_secs",
                format!(
                    "must be at least twice timing.health_interval_secs ({} s): the read-back runs once per health round, and one round may miss a descriptor uploaded a moment later",
                    timing.health_interval.as_secs()
                ),
            ));
        }
        if timing.heartbeat_interval >= timing.publisher_timeout {
            return Err(invalid(
                None,
                "timing.publisher_timeout_secs",
                format!(
                    "must be longer than timing.heartbeat_interval_secs ({} s), or a live publisher is suspected between two heartbeats",
                    timing.heartbeat_interval.as_secs()
                ),
            ));
        }

        check_backends_unique(&file.backends)
            .map_err(|(key, message)| invalid(None, &key, message))?;

        if file.health.dead_after_failures == 0 {
            return Err(invalid(
                None,
                "health.dead_after_failures",
                "must be at least 1".into(),
            ));
        }
        if let Some(probe) = &file.health.probe {
            if !probe.path.starts_with('/')
                || probe
                    .path
                    .chars()
                    .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
            {
                return Err(invalid(
                    None,
                    "health.probe.path",
                    format!(
                        "{:?} is not an absolute URL path like \"/health\"",
                        probe.path
                    ),
                ));
            }
            if probe.port == 0 {
                return Err(invalid(None, "health.probe.port", "must be 1-65535".into()));
            }
            if !(100..=599).contains(&probe.expected_status) {
                return Err(invalid(
                    None,
                    "health.probe.expected_status",
                    format!("{} is not an HTTP status code", probe.expected_status),
                ));
            }
        }

        if let Some(addr) = file.status.metrics_listen {
            if !addr.ip().is_loopback() {
                return Err(invalid(
                    None,
                    "status.metrics_listen",
                    format!("{addr} is not a loopback address: metrics describe the cluster and stay on this machine (use 127.0.0.1 or [::1], and a reverse proxy or SSH tunnel to reach them)"),
                ));
            }
        }

        if file.node.master_key.as_os_str().is_empty() {
            return Err(invalid(None, "node.master_key", "must name a file".into()));
        }
        let authorized_clients = authorized_clients(&file.restricted_discovery, config_dir)
            .map_err(|(key, message)| invalid(None, &key, message))?;

        Ok(Config {
            node: file.node,
            cluster: file.cluster,
            backends: file.backends,
            timing,
            health: file.health,
            status: file.status,
            authorized_clients,
            arti: file.arti,
            file: path.to_owned(),
            config_dir: config_dir.to_owned(),
            state_dir: state_dir.to_owned(),
            shared,
        })
    }

    /// The cluster-wide part of this configuration (`[[backends]]`, `[timing]`, `[health]`,
    /// `[arti]`) as config.toml text, for a joining node: everything but what belongs to this
    /// node (`[node]`, `[cluster]`, `[status]`, and `[arti.storage]`, whose paths are this
    /// machine's). Comments are not kept.
    pub fn shared_text(&self) -> &str {
        &self.shared
    }

    /// The configuration to run after a reload that loaded `new`: backends, timing and health
    /// checks from `new`; `[node]`, `[cluster]` and `[arti]` stay as running (the node's
    /// identity, its socket and its Tor client are set up once). Also returns which of those
    /// tables changed, and so wait for a restart.
    pub fn reloaded(&self, new: Config) -> (Config, Vec<&'static str>) {
        let mut needs_restart = Vec::new();
        if new.node.id != self.node.id
            || new.node.priority != self.node.priority
            || new.node.master_key != self.node.master_key
        {
            needs_restart.push("[node]");
        }
        if new.cluster.listen != self.cluster.listen
            || new.cluster.endpoint != self.cluster.endpoint
        {
            needs_restart.push("[cluster]");
        }
        if new.arti != self.arti {
            needs_restart.push("[arti]");
        }
        let applied = Config {
            node: self.node.clone(),
            cluster: self.cluster.clone(),
            arti: self.arti.clone(),
            ..new
        };
        (applied, needs_restart)
    }

    /// The master key file, resolved against the config directory.
    pub fn master_key_path(&self) -> PathBuf {
        self.config_dir.join(&self.node.master_key)
    }
}

/// The most authorized clients a descriptor can carry: each costs an `auth-client` line of
/// 91 bytes (about 165 once both layers are encrypted and base64-encoded), and the whole
/// descriptor must stay under the HSDirs' 50 000 bytes with its introduction points. From
/// about 100 clients on, fewer than 20 introduction points fit (the log names those left
/// out); beyond this, hardly any.
const MAX_AUTHORIZED_CLIENTS: usize = 256;

/// A client key in tor's `*.auth` format, one line (the file may end in a newline).
fn parse_client_key(text: &str) -> Result<HsClientDescEncKey, String> {
    HsClientDescEncKey::from_str(text.trim()).map_err(|_| {
        "not a client key in tor's format descriptor:x25519:<52 base32 characters>".to_owned()
    })
}

/// Every key of `[restricted_discovery]`: the list, then the directory's `*.auth` files in
/// name order; duplicates once. An error is (dotted key, message).
fn authorized_clients(
    file: &RestrictedDiscoveryFile,
    config_dir: &Path,
) -> Result<Vec<HsClientDescEncKey>, (String, String)> {
    let mut keys = Vec::new();
    for (index, text) in file.clients.iter().enumerate() {
        let key = parse_client_key(text)
            .map_err(|message| (format!("restricted_discovery.clients[{index}]"), message))?;
        keys.push(key);
    }
    if let Some(dir) = &file.clients_dir {
        let dir_key = "restricted_discovery.clients_dir".to_owned();
        let dir = config_dir.join(dir);
        let entries = std::fs::read_dir(&dir).map_err(|err| {
            (
                dir_key.clone(),
                format!("cannot read {}: {err}", dir.display()),
            )
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let path = entry
                .map_err(|err| {
                    (
                        dir_key.clone(),
                        format!("cannot read {}: {err}", dir.display()),
                    )
                })?
                .path();
            if path.extension().is_some_and(|ext| ext == "auth") {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = crate::storage::fsutil::read_bounded_string(&path).map_err(|err| {
                (
                    dir_key.clone(),
                    format!("cannot read {}: {err}", path.display()),
                )
            })?;
            let key = parse_client_key(&text)
                .map_err(|message| (dir_key.clone(), format!("{}: {message}", path.display())))?;
            keys.push(key);
        }
    }
    // In a set, not by comparing with every earlier key: a directory may hold many files.
    let mut seen = HashSet::new();
    let unique: Vec<HsClientDescEncKey> = keys
        .into_iter()
        .filter(|key| {
            let public: &tor_llcrypto::pk::curve25519::PublicKey = key.as_ref();
            seen.insert(*public.as_bytes())
        })
        .collect();
    if unique.len() > MAX_AUTHORIZED_CLIENTS {
        return Err((
            "restricted_discovery".to_owned(),
            format!(
                "{} clients; at most {MAX_AUTHORIZED_CLIENTS} fit in a descriptor",
                unique.len()
            ),
        ));
    }
    Ok(unique)
}

/// The tables of a config file every member shares, re-serialized (see [`Config::shared_text`]).
/// Only called on text that is about to be checked by the full parser, whose error wins.
fn shared_tables(text: &str) -> String {
    let Ok(mut table) = text.parse::<toml::Table>() else {
        return String::new();
    };
    for node_local in NODE_LOCAL_TABLES {
        table.remove(*node_local);
    }
    if let Some(toml::Value::Table(arti)) = table.get_mut("arti") {
        for node_local in NODE_LOCAL_ARTI_TABLES {
            arti.remove(*node_local);
        }
    }
    toml::to_string(&table).unwrap_or_default()
}

/// Tables that belong to one node: its identity, its socket and endpoint, its metrics
/// listener. A joining node never receives them.
const NODE_LOCAL_TABLES: &[&str] = &["node", "cluster", "status"];
/// Tables of `[arti]` that belong to one node: `storage` names directories of that machine.
const NODE_LOCAL_ARTI_TABLES: &[&str] = &["storage"];

/// Two backends with one name would share a descriptor file; two with one address would be
/// counted twice in the merge.
fn check_backends_unique(backends: &[BackendConfig]) -> Result<(), (String, String)> {
    let mut names = HashSet::new();
    let mut addresses = HashSet::new();
    for (index, backend) in backends.iter().enumerate() {
        if !names.insert(&backend.name) {
            return Err((
                format!("backends[{index}].name"),
                format!("{:?} is used by an earlier backend", backend.name.as_str()),
            ));
        }
        if !addresses.insert(backend.address) {
            return Err((
                format!("backends[{index}].address"),
                format!("{} is listed twice", backend.address),
            ));
        }
    }
    Ok(())
}

/// 1-based line number of byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Collapse a possibly multi-line message onto one line.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("config.toml"),
            Path::new("/etc/rustbalance"),
            Path::new("/var/lib/rustbalance"),
        )
    }

    #[test]
    fn minimal_config_gets_design_defaults() {
        let config = parse("[node]\nid = \"node-a\"\npriority = 1\n").unwrap();
        assert_eq!(config.timing, TimingConfig::default());
        assert_eq!(config.timing.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(config.cluster.listen.to_string(), "0.0.0.0:51820");
        assert_eq!(
            config.master_key_path(),
            Path::new("/etc/rustbalance/master.key")
        );
        assert!(config.backends.is_empty());
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let text = format!(
            "[node]\nid = \"node-a\"\npriority = 1\n\n[[backends]]\nname = \"a\"\naddress = \"{A}\"\n\n[[backends]]\nname = \"b\"\naddress = \"{}\"\n",
            A.replacen("2gzy", "2gzz", 1)
        );
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "config.toml line 11: backends[1].address: bad checksum (is a character mistyped?)"
        );
    }

    #[test]
    fn absurd_intervals_are_refused_by_name() {
        for (table, key) in [
            ("timing", "health_interval_secs"),
            ("health.probe", "timeout_secs"),
        ] {
            for (value, why) in [
                ("0", "must be at least 1 second"),
                ("31536001", "must be at most 31536000 seconds (a year)"),
                (
                    "9223372036854775807",
                    "must be at most 31536000 seconds (a year)",
                ),
            ] {
                let text = format!(
                    "[node]\nid = \"node-a\"\npriority = 1\n\n[{table}]\n{key} = {value}\n"
                );
                let err = parse(&text).unwrap_err().to_string();
                assert_eq!(err, format!("config.toml line 6: {table}.{key}: {why}"));
            }
        }
        // Beyond TOML's integers, the parser itself refuses, with the line.
        let huge = "[node]\nid = \"node-a\"\npriority = 1\n\n[timing]\nhealth_interval_secs = 18446744073709551615\n";
        assert_eq!(
            parse(huge).unwrap_err().to_string(),
            "config.toml line 6: number too large to fit in target type"
        );
        let year = "[node]\nid = \"node-a\"\npriority = 1\n[timing]\ndescriptor_max_age_secs = 31536000\nhsdir_failure_secs = 31536000\n";
        assert_eq!(
            parse(year).unwrap().timing.descriptor_max_age,
            Duration::from_secs(31_536_000)
        );
    }

    /// A client key as tor writes it in `authorized_clients/*.auth`.
    fn client_key(byte: u8) -> String {
        HsClientDescEncKey::from(tor_llcrypto::pk::curve25519::PublicKey::from([byte; 32]))
            .to_string()
    }

    #[test]
    fn authorized_clients_come_from_the_list_and_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let clients = dir.path().join("clients");
        std::fs::create_dir(&clients).unwrap();
        std::fs::write(clients.join("alice.auth"), format!("{}\n", client_key(2))).unwrap();
        // The same key in the list and in a file counts once; other files are not keys.
        std::fs::write(clients.join("bob.auth"), client_key(1)).unwrap();
        std::fs::write(clients.join("README"), "not a key").unwrap();
        let text = format!(
            "[node]\nid = \"n\"\npriority = 1\n[restricted_discovery]\nclients = [\"{}\"]\nclients_dir = \"clients\"\n",
            client_key(1)
        );
        let config =
            Config::parse(&text, Path::new("config.toml"), dir.path(), dir.path()).unwrap();
        let keys: Vec<String> = config
            .authorized_clients
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(keys, [client_key(1), client_key(2)]);
        assert!(parse("[node]\nid = \"n\"\npriority = 1\n")
            .unwrap()
            .authorized_clients
            .is_empty());

        std::fs::write(clients.join("carol.auth"), "descriptor:x25519:tooshort").unwrap();
        let err = Config::parse(&text, Path::new("config.toml"), dir.path(), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config.toml: restricted_discovery.clients_dir: ")
                && err.contains("carol.auth: not a client key"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_client_key_is_named() {
        let err = parse(&format!(
            "[node]\nid = \"n\"\npriority = 1\n[restricted_discovery]\nclients = [\"{}\", \"x25519:abc\"]\n",
            client_key(1)
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "config.toml: restricted_discovery.clients[1]: not a client key in tor's format descriptor:x25519:<52 base32 characters>"
        );
        let err = parse("[node]\nid = \"n\"\npriority = 1\n[restricted_discovery]\nclients_dir = \"/nonexistent/dir\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "config.toml: restricted_discovery.clients_dir: cannot read /nonexistent/dir: "
            ),
            "{err}"
        );
    }

    #[test]
    fn heartbeat_must_be_shorter_than_publisher_timeout() {
        let err =
            parse("[node]\nid = \"n\"\npriority = 1\n[timing]\nheartbeat_interval_secs = 30\n")
                .unwrap_err()
                .to_string();
        assert!(
            err.starts_with("config.toml: timing.publisher_timeout_secs: must be longer"),
            "{err}"
        );
    }

    #[test]
    fn shared_text_carries_everything_but_what_belongs_to_the_node() {
        let text = format!(
            "[node]\nid = \"node-a\"\npriority = 1\n[cluster]\nlisten = \"127.0.0.1:9\"\n\
             [[backends]]\nname = \"a\"\naddress = \"{A}\"\n[timing]\nheartbeat_interval_secs = 2\n\
             [health]\ndead_after_failures = 3\n[status]\nmetrics_listen = \"127.0.0.1:9100\"\n\
             [arti.storage]\ncache_dir = \"/srv/node-a/cache\"\n\
             [arti.tor_network]\nfallback_caches = []\n"
        );
        let origin = parse(&text).unwrap();
        let shared = origin.shared_text();
        for node_local in [
            "node-a",
            "127.0.0.1:9",
            "metrics_listen",
            "/srv/node-a",
            "storage",
        ] {
            assert!(
                !shared.contains(node_local),
                "{node_local} was shared:\n{shared}"
            );
        }
        assert!(
            shared.contains("tor_network"),
            "the Tor network is shared:\n{shared}"
        );
        let joined = parse(&format!(
            "[node]\nid = \"node-b\"\npriority = 2\n{}",
            origin.shared_text()
        ))
        .unwrap();
        assert_eq!(joined.backends[0].address, origin.backends[0].address);
        assert_eq!(joined.timing, origin.timing);
        assert_eq!(joined.health, origin.health);
        assert_eq!(joined.node.id.as_str(), "node-b");
        assert_eq!(joined.cluster.listen.to_string(), "0.0.0.0:51820");
    }

    #[test]
    fn a_reload_takes_backends_and_timing_and_keeps_identity() {
        let running = parse("[node]\nid = \"node-a\"\npriority = 1\n").unwrap();
        let new = parse(&format!(
            "[node]\nid = \"node-b\"\npriority = 1\n[timing]\nhealth_interval_secs = 7\n\
             [[backends]]\nname = \"a\"\naddress = \"{A}\"\n"
        ))
        .unwrap();
        let (applied, needs_restart) = running.reloaded(new);
        assert_eq!(needs_restart, ["[node]"]);
        assert_eq!(applied.node.id.as_str(), "node-a");
        assert_eq!(applied.backends.len(), 1);
        assert_eq!(applied.timing.health_interval, Duration::from_secs(7));
        let (_, nothing) = applied.reloaded(applied.clone());
        assert!(nothing.is_empty());
    }

    #[test]
    fn metrics_listen_only_on_loopback() {
        let base = "[node]\nid = \"n\"\npriority = 1\n[status]\n";
        let ok = parse(&format!("{base}metrics_listen = \"127.0.0.1:9808\"\n")).unwrap();
        assert_eq!(ok.status.metrics_listen.unwrap().port(), 9808);
        let err = parse(&format!("{base}metrics_listen = \"0.0.0.0:9808\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("status.metrics_listen: 0.0.0.0:9808 is not a loopback"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_backends_are_rejected() {
        let text = format!(
            "[node]\nid = \"n\"\npriority = 1\n[[backends]]\nname = \"a\"\naddress = \"{A}\"\n[[backends]]\nname = \"b\"\naddress = \"{A}\"\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("backends[1].address: "), "{err}");
    }
}
