//! `<state-dir>/state.json`: what a node must remember across a restart or a crash.
//!
//! It holds this node's view when last saved: its role, the publisher, the peers, each
//! backend's state, and above all the last upload of every time period (revision counter,
//! introduction points, HSDirs). After a restart the publisher resumes from it: a node that was
//! publishing and comes back before anyone could have taken over does not upload again what
//! the HSDirs already hold. The election needs nothing from it: a restarted node listens for a
//! publisher timeout before it may claim, whatever it was before.
//!
//! The file is always whole: it is written with [`crate::storage::fsutil::write_atomic`] (temporary
//! file, fsync, rename), so a crash leaves either the old or the new version. A damaged or
//! foreign file is reported and ignored (the node starts fresh), never trusted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cluster::{NodeId, Priority, Role};
use crate::storage::fsutil::{write_atomic, PRIVATE_FILE_MODE};

/// File name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The format version written; others are ignored with a warning.
const FORMAT_VERSION: u32 = 1;

/// What is saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    pub version: u32,
    /// When it was written (Unix seconds).
    pub saved_at: u64,
    pub node_id: NodeId,
    pub role: Role,
    pub publisher: Option<NodeId>,
    pub peers: Vec<SavedPeer>,
    pub backends: Vec<SavedBackend>,
    pub uploads: Vec<SavedUpload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedPeer {
    pub node_id: NodeId,
    pub priority: Priority,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedBackend {
    pub name: String,
    pub state: String,
    /// When its descriptor was last fetched and verified (Unix seconds).
    pub last_fetch: Option<u64>,
}

/// The last upload of one time period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedUpload {
    pub time_period: u64,
    /// Unix seconds.
    pub published_at: u64,
    pub revision_counter: u64,
    /// Identities of the introduction points listed.
    pub intro_points: Vec<String>,
    pub hsdirs: Vec<String>,
    /// How many distinct descriptors the upload was. Absent in files written before it
    /// existed: one.
    #[serde(default = "one_descriptor")]
    pub descriptors: usize,
    /// Restricted discovery: the clients the upload admitted (x25519 public keys in hex,
    /// sorted; empty: anyone). Absent in files written before it existed.
    #[serde(default)]
    pub authorized_clients: Vec<String>,
    pub hsdirs_accepted: usize,
    pub hsdirs_tried: usize,
}

fn one_descriptor() -> usize {
    1
}

impl SavedState {
    pub fn new(node_id: NodeId, role: Role, publisher: Option<NodeId>) -> Self {
        SavedState {
            version: FORMAT_VERSION,
            saved_at: 0,
            node_id,
            role,
            publisher,
            peers: Vec::new(),
            backends: Vec::new(),
            uploads: Vec::new(),
        }
    }

    /// The uploads a restarted node may trust, if any: it was the publisher, and either it has
    /// no peers or it is back before any peer could have taken over (`takeover_after`: the
    /// publisher timeout plus the takeover grace). Otherwise a new lease uploads at once.
    pub fn uploads_to_resume(
        &self,
        now_unix_secs: u64,
        has_peers: bool,
        takeover_after: std::time::Duration,
    ) -> Option<&[SavedUpload]> {
        let age = now_unix_secs.saturating_sub(self.saved_at);
        let nobody_took_over = !has_peers || age < takeover_after.as_secs();
        (self.role == Role::Publisher && nobody_took_over && !self.uploads.is_empty())
            .then_some(self.uploads.as_slice())
    }
}

/// Why state.json was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is damaged ({reason}); starting without it")]
    Damaged { path: PathBuf, reason: String },
    #[error("{path} has format version {found}, this program writes {FORMAT_VERSION}; starting without it")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} belongs to node {found}, not to this node; starting without it")]
    OtherNode { path: PathBuf, found: NodeId },
}

/// The saved state of node `me`, if there is one.
pub fn load(state_dir: &Path, me: &NodeId) -> Result<Option<SavedState>, StateError> {
    let path = state_dir.join(STATE_FILE);
    let bytes = match crate::storage::fsutil::read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let state: SavedState = serde_json::from_slice(&bytes).map_err(|err| StateError::Damaged {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    if state.version != FORMAT_VERSION {
        return Err(StateError::Version {
            path,
            found: state.version,
        });
    }
    if state.node_id != *me {
        return Err(StateError::OtherNode {
            path,
            found: state.node_id,
        });
    }
    Ok(Some(state))
}

/// Write `state` atomically (0600).
pub fn save(state_dir: &Path, state: &SavedState) -> std::io::Result<()> {
    let mut json = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    json.push(b'\n');
    write_atomic(&state_dir.join(STATE_FILE), &json, PRIVATE_FILE_MODE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::try_from(id.to_owned()).unwrap()
    }

    fn sample() -> SavedState {
        let mut state = SavedState::new(node("node-a"), Role::Publisher, Some(node("node-a")));
        state.saved_at = 1_700_000_000;
        state.peers.push(SavedPeer {
            node_id: node("node-b"),
            priority: Priority::try_from(2).unwrap(),
            role: Role::Standby,
        });
        state.backends.push(SavedBackend {
            name: "web1".into(),
            state: "healthy".into(),
            last_fetch: Some(1_699_999_990),
        });
        state.uploads.push(SavedUpload {
            time_period: 20_000,
            published_at: 1_699_999_995,
            revision_counter: 42,
            intro_points: vec!["ab".into()],
            hsdirs: vec!["cd".into()],
            descriptors: 3,
            authorized_clients: vec!["ef".into()],
            hsdirs_accepted: 8,
            hsdirs_tried: 8,
        });
        state
    }

    #[test]
    fn saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), &node("node-a")).unwrap().is_none());
        save(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path(), &node("node-a")).unwrap(), Some(sample()));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_foreign_or_other_version_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STATE_FILE);
        std::fs::write(&path, b"{\"version\": 1, \"saved_at\": 3").unwrap();
        assert!(matches!(
            load(dir.path(), &node("node-a")),
            Err(StateError::Damaged { .. })
        ));
        save(dir.path(), &sample()).unwrap();
        assert!(matches!(
            load(dir.path(), &node("node-z")),
            Err(StateError::OtherNode { .. })
        ));
        let mut other = sample();
        other.version = 7;
        save(dir.path(), &other).unwrap();
        assert!(matches!(
            load(dir.path(), &node("node-a")),
            Err(StateError::Version { found: 7, .. })
        ));
    }

    #[test]
    fn uploads_saved_before_distinct_descriptors_load_as_one_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &sample()).unwrap();
        let path = dir.path().join(STATE_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let older = text.replace("\"descriptors\": 3,", "");
        assert_ne!(older, text, "the field is written");
        std::fs::write(&path, older).unwrap();
        let loaded = load(dir.path(), &node("node-a")).unwrap().unwrap();
        assert_eq!(loaded.uploads[0].descriptors, 1);
    }
}
