//! Keeps `<state-dir>/state.json` current: written at start, whenever what it holds changes
//! (checked every second), at least every minute, and once more at a clean stop. Peers'
//! last-heard times are not part of it, so a quiet cluster does not write every second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::clock::Timestamp;
use crate::daemon::status::{NodeStatus, StatusBoard};
use crate::storage::state::{self, SavedBackend, SavedPeer, SavedState, SavedUpload};

/// How often the writer looks for changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The file is rewritten at least this often, so its `saved_at` tells how fresh it is.
const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Write state.json whenever it changes, until the task is aborted.
pub async fn run(
    state_dir: PathBuf,
    board: StatusBoard,
    mut uploads: watch::Receiver<Vec<SavedUpload>>,
) {
    remove_leftovers(&state_dir);
    let mut last_saved: Option<SavedState> = None;
    let mut last_write = Instant::now();
    loop {
        let state = saved_state(&board.snapshot(), uploads.borrow_and_update().clone());
        let due = last_saved.as_ref() != Some(&state) || last_write.elapsed() >= REFRESH_INTERVAL;
        if due && save(&state_dir, state.clone()) {
            last_saved = Some(state);
            last_write = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(CHECK_INTERVAL) => {}
            changed = uploads.changed() => if changed.is_err() { return },
        }
    }
}

/// Temporary files of writes a crash interrupted (the state file itself is always whole).
fn remove_leftovers(state_dir: &Path) {
    let prefix = format!(".{}.tmp-", state::STATE_FILE);
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Write the state as it is now (at a clean stop).
pub fn save_now(
    state_dir: &Path,
    board: &StatusBoard,
    uploads: &watch::Receiver<Vec<SavedUpload>>,
) {
    save(
        state_dir,
        saved_state(&board.snapshot(), uploads.borrow().clone()),
    );
}

/// Stamp and write; a failure is logged (the node keeps running without a fresh file).
fn save(state_dir: &Path, mut state: SavedState) -> bool {
    state.saved_at = Timestamp::now().as_unix_secs();
    match state::save(state_dir, &state) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(
                "cannot write {}: {err}",
                state_dir.join(state::STATE_FILE).display()
            );
            false
        }
    }
}

/// The parts of the status that go into state.json.
fn saved_state(status: &NodeStatus, uploads: Vec<SavedUpload>) -> SavedState {
    let mut state = SavedState::new(
        status.node_id.clone(),
        status.role,
        status.publisher.clone(),
    );
    state.peers = status
        .peers
        .iter()
        .map(|peer| SavedPeer {
            node_id: peer.node_id.clone(),
            priority: peer.priority,
            role: peer.role,
        })
        .collect();
    state.backends = status
        .backends
        .iter()
        .map(|backend| SavedBackend {
            name: backend.name.clone(),
            state: backend.state.clone(),
            last_fetch: backend.last_fetch,
        })
        .collect();
    state.uploads = uploads;
    state
}
