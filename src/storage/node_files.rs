//! The files that make a node, and creating them for a new node (`rustbalance init`).
//!
//! ```text
//! <config-dir>/            0700
//!   config.toml            0600  what the operator edits (see README "Configuration reference")
//!   master.key             0600  the master identity key, sealed (AES-256-GCM) under the
//!                                key-encryption key, which lives elsewhere (`keys::kek`)
//!   wg_private.key         0600  this node's WireGuard private key, wg(8) base64
//!   cluster.key            0600  the 32-byte cluster secret every member shares, base64
//!   cluster.key.previous   0600  during a rotation: the secret it replaced, and the peers whose
//!                                tunnels still use it
//!   peers/                 0700  <node-id>.toml per known peer: endpoint, WireGuard public
//!                                key, priority (written by join and by peer announcements)
//!   removed/               0700  <node-id>.toml per member removed from the cluster (its
//!                                last record: its id and key stay refused)
//!   removed-from-cluster.toml     written when this node is removed: `run` refuses to start
//!   config-version.toml    0600  which version of the cluster's shared configuration
//!                                config.toml holds (`storage::config_version`)
//! <state-dir>/             0700
//!   arti/                        Arti's state and cache
//!   descriptors/                 the last verified descriptor of each backend
//! ```
//!
//! A node's identity is its node id and WireGuard key; the cluster secret is what makes it a
//! member. `config.toml` is written last, after every key file: its presence means "this
//! directory holds a complete node", which is what `init` checks before touching anything.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::cluster::config_sync::{ConfigVersion, SharedConfig};
use crate::cluster::messages::PeerInfo;
use crate::cluster::secret::ClusterSecret;
use crate::cluster::wg_keys::WgPrivateKey;
use crate::cluster::{Endpoint, NodeId, Priority};
use crate::config::{BackendName, Config};
use crate::keys::files::{write_sealed_master_key, KeyFileError};
use crate::keys::onion_address::OnionAddress;
use crate::keys::{ensure_kek, KekError, KekSource, MasterKey};
use crate::params;
use crate::storage::config_version::{self, ConfigVersionError};
use crate::storage::fsutil::{create_private_dir, write_atomic, PRIVATE_FILE_MODE};

/// File names inside the config directory.
pub const MASTER_KEY_FILE: &str = params::DEFAULT_MASTER_KEY_FILE;
pub const WG_PRIVATE_KEY_FILE: &str = "wg_private.key";
pub const CLUSTER_SECRET_FILE: &str = "cluster.key";
/// The secret a rotation replaced, while some peer's tunnel still uses it.
pub const PREVIOUS_SECRET_FILE: &str = "cluster.key.previous";
pub const PEERS_DIR: &str = "peers";
pub const REMOVED_DIR: &str = "removed";
/// Written when this node learns that it was removed from the cluster.
pub const THIS_NODE_REMOVED_FILE: &str = "removed-from-cluster.toml";

/// Everything `init` decided for a new node.
pub struct NewNode<'a> {
    pub node_id: &'a NodeId,
    pub priority: Priority,
    pub master_key: &'a MasterKey,
    pub wg_private_key: &'a WgPrivateKey,
    pub cluster_secret: &'a ClusterSecret,
    pub listen: SocketAddr,
    pub endpoint: Option<&'a Endpoint>,
    pub backends: &'a [(BackendName, OnionAddress)],
    /// The cluster's shared tables (config.toml text) and their version, received when
    /// joining; `None` for the first node of a cluster (its tables are version 1).
    pub shared_config: Option<&'a SharedConfig>,
    /// The other members, for a node that joins.
    pub peers: &'a [PeerInfo],
}

/// Why a node's files could not be created or read.
#[derive(Debug, thiserror::Error)]
pub enum NodeFilesError {
    #[error("{0} already exists: this machine is already set up as a node; nothing was changed")]
    AlreadySetUp(PathBuf),
    #[error("{0} exists but config.toml does not (an interrupted init?): remove the leftover key files, then run init again")]
    Leftover(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is missing: a node's files are created by `rustbalance init` (first node) or `rustbalance join` (further nodes)")]
    Missing(PathBuf),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error(transparent)]
    MasterKey(#[from] KeyFileError),
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    ConfigVersion(#[from] ConfigVersionError),
    #[error("this node was removed from the cluster by {by} ({path}): it must not run as a member again; to make this machine a member again, move the config directory aside and run `rustbalance join` with a fresh token from a member")]
    RemovedFromCluster { path: PathBuf, by: String },
    /// The generated config.toml does not load: a defect of this program.
    #[error("internal error: the generated config.toml is invalid ({0}); nothing was written")]
    GeneratedConfig(String),
}

/// Create the files of a new node, the master key sealed under the key-encryption key that
/// `kek_source` finds (created there if there is none yet: `keys::ensure_kek`). Refuses,
/// changing nothing, if `config_dir` already holds a node (or the leftovers of an interrupted
/// init).
pub fn create_node(
    config_dir: &Path,
    state_dir: &Path,
    kek_source: &KekSource,
    node: &NewNode<'_>,
) -> Result<(), NodeFilesError> {
    ensure_no_node(config_dir)?;
    let config_path = config_dir.join(params::CONFIG_FILE_NAME);
    let config_text = render_config(node);
    // Check the text before anything is written: a config init wrote must always load.
    let config = Config::parse(&config_text, &config_path, config_dir, state_dir)
        .map_err(|err| NodeFilesError::GeneratedConfig(err.to_string()))?;
    let version = node.shared_config.map_or_else(
        || ConfigVersion {
            number: 1,
            by: node.node_id.clone(),
        },
        |shared| shared.version.clone(),
    );
    let kek = ensure_kek(kek_source)?;

    for dir in [
        config_dir.to_owned(),
        config_dir.join(PEERS_DIR),
        state_dir.to_owned(),
    ] {
        create_private_dir(&dir).map_err(|source| NodeFilesError::Write { path: dir, source })?;
    }
    write_sealed_master_key(&config_dir.join(MASTER_KEY_FILE), node.master_key, &kek)?;
    write_secret(
        &config_dir.join(WG_PRIVATE_KEY_FILE),
        &node.wg_private_key.to_base64(),
    )?;
    write_secret(
        &config_dir.join(CLUSTER_SECRET_FILE),
        &Zeroizing::new(STANDARD.encode(node.cluster_secret.as_bytes())),
    )?;
    for peer in node.peers {
        save_peer(config_dir, peer)?;
    }
    config_version::save(config_dir, &version, config.shared_text())?;
    write_atomic(&config_path, config_text.as_bytes(), PRIVATE_FILE_MODE).map_err(|source| {
        NodeFilesError::Write {
            path: config_path,
            source,
        }
    })
}

/// Refuses if `config_dir` already holds a node, or the leftovers of an interrupted init.
pub fn ensure_no_node(config_dir: &Path) -> Result<(), NodeFilesError> {
    let config_path = config_dir.join(params::CONFIG_FILE_NAME);
    if config_path.exists() {
        return Err(NodeFilesError::AlreadySetUp(config_path));
    }
    for name in [MASTER_KEY_FILE, WG_PRIVATE_KEY_FILE, CLUSTER_SECRET_FILE] {
        let path = config_dir.join(name);
        if path.symlink_metadata().is_ok() {
            return Err(NodeFilesError::Leftover(path));
        }
    }
    Ok(())
}

/// Every peer recorded under `<config-dir>/peers/`, in node-id order. A missing directory
/// means no peers (a node set up by hand).
pub fn load_peers(config_dir: &Path) -> Result<Vec<PeerInfo>, NodeFilesError> {
    load_records(&config_dir.join(PEERS_DIR))
}

/// Every member recorded as removed under `<config-dir>/removed/`, in node-id order.
pub fn load_removed(config_dir: &Path) -> Result<Vec<PeerInfo>, NodeFilesError> {
    load_records(&config_dir.join(REMOVED_DIR))
}

/// The member records in `dir`, one `<node-id>.toml` each.
fn load_records(dir: &Path) -> Result<Vec<PeerInfo>, NodeFilesError> {
    let dir = dir.to_owned();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NodeFilesError::Read { path: dir, source }),
    };
    let mut peers = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|source| NodeFilesError::Read {
                path: dir.clone(),
                source,
            })?
            .path();
        // Temporary files of an interrupted write, and anything an editor left, are not peers.
        if path.extension().is_none_or(|ext| ext != "toml") {
            continue;
        }
        let text = crate::storage::fsutil::read_bounded_string(&path).map_err(|source| {
            NodeFilesError::Read {
                path: path.clone(),
                source,
            }
        })?;
        let peer: PeerInfo = toml::from_str(&text).map_err(|err| NodeFilesError::Damaged {
            path: path.clone(),
            reason: crate::config::one_line(err.message()),
        })?;
        if path.file_stem() != Some(std::ffi::OsStr::new(peer.node_id.as_str())) {
            return Err(NodeFilesError::Damaged {
                reason: format!(
                    "it describes node {}, not the node its name says",
                    peer.node_id
                ),
                path,
            });
        }
        peers.push(peer);
    }
    peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    Ok(peers)
}

/// Record `peer` as `<config-dir>/peers/<node-id>.toml` (atomically, replacing what was known).
pub fn save_peer(config_dir: &Path, peer: &PeerInfo) -> Result<(), NodeFilesError> {
    save_record(&config_dir.join(PEERS_DIR), peer)
}

/// Record `peer` as removed (`<config-dir>/removed/<node-id>.toml`), then forget it as a peer.
/// In that order: a crash in between leaves it removed, and the stale peer file is ignored.
pub fn save_removed(config_dir: &Path, peer: &PeerInfo) -> Result<(), NodeFilesError> {
    save_record(&config_dir.join(REMOVED_DIR), peer)?;
    let path = config_dir
        .join(PEERS_DIR)
        .join(format!("{}.toml", peer.node_id));
    match std::fs::remove_file(&path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            Err(NodeFilesError::Write { path, source: err })
        }
        _ => Ok(()),
    }
}

/// Remember that this node was removed from the cluster by `by`: `run` refuses to start from
/// now on.
pub fn save_this_node_removed(config_dir: &Path, by: &NodeId) -> Result<(), NodeFilesError> {
    let path = config_dir.join(THIS_NODE_REMOVED_FILE);
    let text = format!(
        "# This node was removed from the cluster; it must not run as a member again.\nby = \"{by}\"\n"
    );
    write_atomic(&path, text.as_bytes(), PRIVATE_FILE_MODE)
        .map_err(|source| NodeFilesError::Write { path, source })
}

/// Refuses if this node was removed from its cluster.
pub fn ensure_not_removed(config_dir: &Path) -> Result<(), NodeFilesError> {
    let path = config_dir.join(THIS_NODE_REMOVED_FILE);
    match crate::storage::fsutil::read_bounded_string(&path) {
        Ok(text) => {
            let by = text
                .parse::<toml::Table>()
                .ok()
                .and_then(|table| table.get("by")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| "a member".to_owned());
            Err(NodeFilesError::RemovedFromCluster { path, by })
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NodeFilesError::Read { path, source }),
    }
}

fn save_record(dir: &Path, peer: &PeerInfo) -> Result<(), NodeFilesError> {
    let dir = dir.to_owned();
    let path = dir.join(format!("{}.toml", peer.node_id));
    let text = toml::to_string(peer).map_err(|err| NodeFilesError::Damaged {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    create_private_dir(&dir)
        .and_then(|()| write_atomic(&path, text.as_bytes(), PRIVATE_FILE_MODE))
        .map_err(|source| NodeFilesError::Write { path, source })
}

/// Replace `<config-dir>/cluster.key` (a rotation), atomically.
pub fn save_cluster_secret(
    config_dir: &Path,
    secret: &ClusterSecret,
) -> Result<(), NodeFilesError> {
    write_secret(
        &config_dir.join(CLUSTER_SECRET_FILE),
        &Zeroizing::new(STANDARD.encode(secret.as_bytes())),
    )
}

/// What `<config-dir>/cluster.key.previous` holds while a rotation is not finished.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousSecretFile {
    secret: String,
    /// The peers whose tunnels still use it.
    peers: Vec<NodeId>,
}

/// Keep the previous cluster secret and the peers whose tunnels still use it; with no such
/// peer left, remove the file.
pub fn save_previous_secret(
    config_dir: &Path,
    secret: &ClusterSecret,
    peers: impl IntoIterator<Item = NodeId>,
) -> Result<(), NodeFilesError> {
    let path = config_dir.join(PREVIOUS_SECRET_FILE);
    let peers: Vec<NodeId> = peers.into_iter().collect();
    if peers.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(NodeFilesError::Write { path, source: err })
            }
            _ => Ok(()),
        };
    }
    let file = PreviousSecretFile {
        secret: STANDARD.encode(secret.as_bytes()),
        peers,
    };
    let text = Zeroizing::new(
        toml::to_string(&file).map_err(|err| NodeFilesError::Damaged {
            path: path.clone(),
            reason: err.to_string(),
        })?,
    );
    drop(Zeroizing::new(file.secret));
    write_atomic(&path, text.as_bytes(), PRIVATE_FILE_MODE)
        .map_err(|source| NodeFilesError::Write { path, source })
}

/// The previous cluster secret and the peers whose tunnels still use it, if a rotation is not
/// finished.
pub fn load_previous_secret(
    config_dir: &Path,
) -> Result<Option<(ClusterSecret, Vec<NodeId>)>, NodeFilesError> {
    let path = config_dir.join(PREVIOUS_SECRET_FILE);
    let text = match read_secret(&path) {
        Ok(text) => text,
        Err(NodeFilesError::Missing(_)) => return Ok(None),
        Err(err) => return Err(err),
    };
    let damaged = |reason: String| NodeFilesError::Damaged {
        path: path.clone(),
        reason,
    };
    let file: PreviousSecretFile =
        toml::from_str(&text).map_err(|err| damaged(crate::config::one_line(err.message())))?;
    let encoded = Zeroizing::new(file.secret);
    let bytes = Zeroizing::new(
        STANDARD
            .decode(encoded.as_bytes())
            .map_err(|_| damaged("the secret is not base64".into()))?,
    );
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| damaged("the secret is not 32 bytes".into()))?;
    Ok(Some((ClusterSecret::from_bytes(bytes), file.peers)))
}

/// A node set up by hand (a config.toml and a master key, as for Onionbalance) has no cluster
/// files: create them on its first run, so that it runs alone now and others can join it
/// later. Returns whether they were created. A directory with one of the two but not the
/// other, or with peers, was not set up by hand: nothing is created and the missing file is
/// reported when it is read.
pub fn create_cluster_files_if_none(config_dir: &Path) -> Result<bool, NodeFilesError> {
    if !lacks_cluster_files(config_dir)? {
        return Ok(false);
    }
    let secret_path = config_dir.join(CLUSTER_SECRET_FILE);
    let wg_path = config_dir.join(WG_PRIVATE_KEY_FILE);
    write_secret(&wg_path, &WgPrivateKey::generate().to_base64())?;
    write_secret(
        &secret_path,
        &Zeroizing::new(STANDARD.encode(ClusterSecret::generate().as_bytes())),
    )?;
    Ok(true)
}

/// Whether the node was set up by hand and has none of the cluster files yet: no cluster
/// secret, no WireGuard key, no peers ([`create_cluster_files_if_none`] creates them).
pub fn lacks_cluster_files(config_dir: &Path) -> Result<bool, NodeFilesError> {
    let exists = |name: &str| config_dir.join(name).symlink_metadata().is_ok();
    Ok(!exists(CLUSTER_SECRET_FILE)
        && !exists(WG_PRIVATE_KEY_FILE)
        && load_peers(config_dir)?.is_empty())
}

/// The cluster secret from `<config-dir>/cluster.key`.
pub fn load_cluster_secret(config_dir: &Path) -> Result<ClusterSecret, NodeFilesError> {
    let path = config_dir.join(CLUSTER_SECRET_FILE);
    let text = read_secret(&path)?;
    let bytes =
        Zeroizing::new(
            STANDARD
                .decode(text.trim())
                .map_err(|_| NodeFilesError::Damaged {
                    path: path.clone(),
                    reason: "not base64".into(),
                })?,
        );
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| NodeFilesError::Damaged {
            path: path.clone(),
            reason: format!("{} bytes instead of 32", bytes.len()),
        })?;
    Ok(ClusterSecret::from_bytes(bytes))
}

/// This node's WireGuard private key from `<config-dir>/wg_private.key`.
pub fn load_wg_private_key(config_dir: &Path) -> Result<WgPrivateKey, NodeFilesError> {
    let path = config_dir.join(WG_PRIVATE_KEY_FILE);
    let text = read_secret(&path)?;
    WgPrivateKey::from_base64(text.trim()).map_err(|err| NodeFilesError::Damaged {
        path,
        reason: err.to_string(),
    })
}

fn read_secret(path: &Path) -> Result<Zeroizing<String>, NodeFilesError> {
    crate::storage::fsutil::read_bounded_string(path)
        .map(Zeroizing::new)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => NodeFilesError::Missing(path.to_owned()),
            _ => NodeFilesError::Read {
                path: path.to_owned(),
                source,
            },
        })
}

fn write_secret(path: &Path, text: &str) -> Result<(), NodeFilesError> {
    let contents = Zeroizing::new(format!("{text}\n"));
    write_atomic(path, contents.as_bytes(), PRIVATE_FILE_MODE).map_err(|source| {
        NodeFilesError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// config.toml for a new node, commented for the operator who opens it later.
fn render_config(node: &NewNode<'_>) -> String {
    let mut text = String::from(
        "# RustBalance node configuration: see README.md, \"Configuration reference\".\n\n",
    );
    let _ = writeln!(text, "[node]");
    let _ = writeln!(text, "id = \"{}\"", node.node_id);
    let _ = writeln!(text, "# 1 is the first choice for publisher.");
    let _ = writeln!(text, "priority = {}", node.priority);
    let _ = writeln!(text, "master_key = \"{MASTER_KEY_FILE}\"");
    let _ = writeln!(text, "\n[cluster]");
    let _ = writeln!(text, "listen = \"{}\"", node.listen);
    match node.endpoint {
        Some(endpoint) => {
            let _ = writeln!(text, "endpoint = \"{endpoint}\"");
        }
        None => {
            let _ = writeln!(
                text,
                "# How other nodes reach this one; needed before any can join.\n# endpoint = \"vps1.example.net:51820\""
            );
        }
    }
    if let Some(shared) = node.shared_config {
        let _ = writeln!(
            text,
            "\n# Shared by every node of the cluster (received when this node joined): change it on\n# any one member (`rustbalance backend ...`, or edit and reload) and the others follow.\n{}",
            shared.text
        );
        return text;
    }
    if node.backends.is_empty() {
        let _ = writeln!(
            text,
            "\n# Add one table per backend onion service:\n# [[backends]]\n# name = \"web1\"\n# address = \"<56 characters>.onion\""
        );
    }
    for (name, address) in node.backends {
        let _ = writeln!(
            text,
            "\n[[backends]]\nname = \"{name}\"\naddress = \"{address}\""
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rb-nodefiles-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A credential store of the test's own, never the machine's.
    fn kek_source(root: &Path) -> KekSource {
        KekSource {
            credentials_dir: None,
            credstore: root.join("credstore"),
        }
    }

    struct Fixture {
        node_id: NodeId,
        master_key: MasterKey,
        wg: WgPrivateKey,
        secret: ClusterSecret,
        endpoint: Endpoint,
        backends: Vec<(BackendName, OnionAddress)>,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                node_id: NodeId::try_from("node-test-0001".to_owned()).unwrap(),
                master_key: MasterKey::from_seed(&[9; 32]),
                wg: WgPrivateKey::generate(),
                secret: ClusterSecret::from_bytes([7; 32]),
                endpoint: "vps1.example.net:51820".parse().unwrap(),
                backends: vec![(
                    BackendName::try_from("web1".to_owned()).unwrap(),
                    "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion"
                        .parse()
                        .unwrap(),
                )],
            }
        }

        fn node(&self) -> NewNode<'_> {
            NewNode {
                node_id: &self.node_id,
                priority: Priority::try_from(1).unwrap(),
                master_key: &self.master_key,
                wg_private_key: &self.wg,
                cluster_secret: &self.secret,
                listen: "0.0.0.0:51820".parse().unwrap(),
                endpoint: Some(&self.endpoint),
                backends: &self.backends,
                shared_config: None,
                peers: &[],
            }
        }
    }

    #[test]
    fn a_new_node_has_private_files_that_load_back() {
        let root = scratch("create");
        let (config_dir, state_dir) = (root.join("etc"), root.join("state"));
        let fixture = Fixture::new();
        let kek_source = kek_source(&root);
        create_node(&config_dir, &state_dir, &kek_source, &fixture.node()).unwrap();

        let config = Config::load(&config_dir, &state_dir).unwrap();
        assert_eq!(config.node.id, fixture.node_id);
        assert_eq!(config.backends.len(), 1);
        assert_eq!(config.cluster.endpoint, Some(fixture.endpoint.clone()));
        let sealed = std::fs::read(config.master_key_path()).unwrap();
        assert!(crate::keys::sealed::is_sealed(&sealed));
        let key = crate::keys::files::load_master_key_with(&config.master_key_path(), &kek_source)
            .unwrap();
        assert_eq!(key.onion_address(), fixture.master_key.onion_address());
        assert_eq!(
            load_cluster_secret(&config_dir).unwrap().as_bytes(),
            &[7; 32]
        );
        assert_eq!(
            load_wg_private_key(&config_dir).unwrap().public_key(),
            fixture.wg.public_key()
        );
        for dir in [
            &config_dir,
            &config_dir.join(PEERS_DIR),
            &state_dir,
            &kek_source.credstore,
        ] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        for file in [
            config_dir.join("config.toml"),
            config_dir.join(MASTER_KEY_FILE),
            config_dir.join(WG_PRIVATE_KEY_FILE),
            config_dir.join(CLUSTER_SECRET_FILE),
            kek_source.credstore_file(),
        ] {
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn without_a_key_encryption_key_nothing_is_written() {
        let root = scratch("nokek");
        let (config_dir, state_dir) = (root.join("etc"), root.join("state"));
        // The credential store cannot be created: a file is in its way.
        let kek_source = kek_source(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&kek_source.credstore, "not a directory").unwrap();
        let err =
            create_node(&config_dir, &state_dir, &kek_source, &Fixture::new().node()).unwrap_err();
        assert!(matches!(err, NodeFilesError::Kek(_)), "{err}");
        assert!(err.to_string().contains("credstore"), "{err}");
        assert!(!config_dir.exists());
        assert!(!state_dir.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn peers_round_trip_through_their_files() {
        let root = scratch("peers");
        assert!(load_peers(&root).unwrap().is_empty());
        let peer = |id: &str, priority: u32| PeerInfo {
            node_id: NodeId::try_from(id.to_owned()).unwrap(),
            endpoint: "vps2.example.net:51820".parse().unwrap(),
            public_key: WgPrivateKey::generate().public_key(),
            priority: Priority::try_from(priority).unwrap(),
        };
        let (b, a) = (peer("node-b", 3), peer("node-a", 2));
        save_peer(&root, &b).unwrap();
        save_peer(&root, &a).unwrap();
        assert_eq!(load_peers(&root).unwrap(), vec![a.clone(), b.clone()]);
        let mode = std::fs::metadata(root.join(PEERS_DIR).join("node-a.toml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // A file whose name and contents disagree is refused, naming the file.
        std::fs::copy(
            root.join(PEERS_DIR).join("node-a.toml"),
            root.join(PEERS_DIR).join("node-c.toml"),
        )
        .unwrap();
        let err = load_peers(&root).unwrap_err().to_string();
        assert!(err.contains("node-c.toml is damaged"), "{err}");
        std::fs::write(root.join(PEERS_DIR).join("node-c.toml"), "node_id = 7\n").unwrap();
        let err = load_peers(&root).unwrap_err().to_string();
        assert!(err.contains("node-c.toml is damaged"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_existing_node_is_never_touched() {
        let root = scratch("twice");
        let (config_dir, state_dir) = (root.join("etc"), root.join("state"));
        let fixture = Fixture::new();
        let kek_source = kek_source(&root);
        create_node(&config_dir, &state_dir, &kek_source, &fixture.node()).unwrap();
        let contents = || -> Vec<Vec<u8>> {
            [
                MASTER_KEY_FILE,
                WG_PRIVATE_KEY_FILE,
                CLUSTER_SECRET_FILE,
                "config.toml",
            ]
            .iter()
            .map(|f| std::fs::read(config_dir.join(f)).unwrap())
            .collect()
        };
        let before = contents();

        let other = Fixture::new();
        let err = create_node(&config_dir, &state_dir, &kek_source, &other.node()).unwrap_err();
        assert!(matches!(err, NodeFilesError::AlreadySetUp(_)), "{err}");
        assert_eq!(contents(), before);

        // Leftovers of an interrupted init are refused too.
        std::fs::remove_file(config_dir.join("config.toml")).unwrap();
        let err = create_node(&config_dir, &state_dir, &kek_source, &other.node()).unwrap_err();
        assert!(matches!(err, NodeFilesError::Leftover(_)), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
