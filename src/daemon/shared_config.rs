//! Keeping the cluster's shared configuration: the files and the running configuration behind
//! [`ConfigSync`]'s decisions.
//!
//! The cluster loop owns the one [`ConfigKeeper`], and so is the only writer of config.toml
//! while the daemon runs. Three things make a new running configuration:
//! - an operator's edit on this node (`rustbalance backend ...` over the control socket), which
//!   becomes a new version;
//! - SIGHUP: config.toml read again; if its shared tables changed, that is a new version;
//! - a newer version from a member: validated here, composed with this node's own tables,
//!   written (temporary file, fsync, rename) and applied.
//!
//! Every candidate is checked as a whole config.toml ([`Config::parse`], Arti's own loader for
//! `[arti]`) before anything is written: a version that fails is refused with its error, on the
//! node where it was made before any member sees it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::show_unchecked_backends;
use super::status::StatusBoard;
use crate::clock::Timestamp;
use crate::cluster::config_sync::{ConfigSync, ConfigVersion, Offered, SharedConfig};
use crate::cluster::messages::{Message, MAX_MESSAGE_BYTES};
use crate::cluster::NodeId;
use crate::config::shared::{compose, edit_backends, BackendEdit, EditError};
use crate::config::{Config, ConfigError};
use crate::health;
use crate::storage::config_version::{self, ConfigVersionError, Recorded};
use crate::storage::fsutil::{write_atomic, PRIVATE_FILE_MODE};
use crate::tor::ArtiSettings;

/// Why a change of the shared configuration was not made.
#[derive(Debug, thiserror::Error)]
pub enum ConfigChangeError {
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    #[error("{0} has changes that are not loaded yet: reload them first (systemctl reload rustbalance, or SIGHUP) or undo them, then try again")]
    UnloadedChanges(PathBuf),
    #[error("the shared configuration would be {0} bytes as a cluster message, more than the {MAX_MESSAGE_BYTES} members accept")]
    TooLarge(usize),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Version(#[from] ConfigVersionError),
}

/// The running configuration, its version, and what the members run.
pub struct ConfigKeeper {
    configs: watch::Sender<Arc<Config>>,
    sync: ConfigSync,
    board: StatusBoard,
}

impl ConfigKeeper {
    /// Start from the configuration the daemon loaded. If its shared tables are not the
    /// version recorded last (edited while the daemon was down, or no version recorded yet),
    /// they become a new version made by this node.
    pub fn start(
        configs: watch::Sender<Arc<Config>>,
        board: StatusBoard,
    ) -> Result<ConfigKeeper, ConfigChangeError> {
        let config = configs.borrow().clone();
        let me = config.node.id.clone();
        let version = match config_version::load(&config.config_dir, config.shared_text())? {
            Some(Recorded {
                version,
                text_unchanged: true,
            }) => version,
            recorded => {
                let version = ConfigVersion {
                    number: recorded.map_or(1, |r| r.version.number.saturating_add(1)),
                    by: me.clone(),
                };
                tracing::info!("config.toml's shared tables are version {version} from now on");
                config_version::save(&config.config_dir, &version, config.shared_text())?;
                version
            }
        };
        let keeper = ConfigKeeper {
            configs,
            sync: ConfigSync::new(me, version),
            board,
        };
        keeper.show();
        Ok(keeper)
    }

    /// The running shared configuration, with its version.
    pub fn current(&self) -> SharedConfig {
        SharedConfig {
            version: self.sync.current().clone(),
            text: self.configs.borrow().shared_text().to_owned(),
        }
    }

    pub fn version(&self) -> &ConfigVersion {
        self.sync.current()
    }

    /// A member's heartbeat said which version it runs: true when it should be sent ours.
    pub fn heard(&mut self, from: &NodeId, running: Option<ConfigVersion>, now: Timestamp) -> bool {
        self.sync.heard(from, running, now)
    }

    /// Our version was sent to `to`.
    pub fn sent(&mut self, to: &NodeId, now: Timestamp) {
        self.sync.sent(to, now);
    }

    /// A member left the cluster.
    pub fn forget(&mut self, member: &NodeId) {
        self.sync.forget(member);
    }

    /// What `member` last said it runs.
    pub fn member_version(&self, member: &NodeId) -> Option<&ConfigVersion> {
        self.sync.member_version(member)
    }

    /// An operator's edit: the new version, to send to every member, or `None` when the edit
    /// changes nothing.
    pub fn edit(&mut self, edit: &BackendEdit) -> Result<Option<SharedConfig>, ConfigChangeError> {
        let running = self.configs.borrow().clone();
        let on_disk = Config::load(&running.config_dir, &running.state_dir)?;
        if on_disk.shared_text() != running.shared_text() {
            return Err(ConfigChangeError::UnloadedChanges(running.file.clone()));
        }
        let text = edit_backends(running.shared_text(), edit)?;
        if text == running.shared_text() {
            return Ok(None);
        }
        let version = self.sync.next_version();
        self.install(&text, &version)?;
        Ok(Some(self.current()))
    }

    /// SIGHUP: config.toml read again. Returns the new version when its shared tables
    /// changed (to send to every member).
    pub fn reload(&mut self) -> Result<Option<SharedConfig>, ConfigChangeError> {
        let running = self.configs.borrow().clone();
        let new = Config::load(&running.config_dir, &running.state_dir)?;
        // `[arti]` only takes effect at a restart, but a table Arti refuses would stop that
        // restart: refuse it now, like any other error.
        ArtiSettings::from_config(&new)?;
        let changed = new.shared_text() != running.shared_text();
        if changed {
            let version = self.sync.next_version();
            check_size(&SharedConfig {
                version: version.clone(),
                text: new.shared_text().to_owned(),
            })?;
            config_version::save(&new.config_dir, &version, new.shared_text())?;
            self.sync.applied(version);
        }
        self.run(new);
        Ok(changed.then(|| self.current()))
    }

    /// A member sent `config`: applied if newer (returns true), ignored if not. A version that
    /// does not validate here is refused, and not considered again.
    pub fn receive(&mut self, config: &SharedConfig) -> Result<bool, ConfigChangeError> {
        match self.sync.offered(&config.version) {
            Offered::Ignore => Ok(false),
            Offered::Apply => match self.install(&config.text, &config.version) {
                Ok(()) => Ok(true),
                Err(err) => {
                    self.sync.refused(config.version.clone());
                    Err(err)
                }
            },
        }
    }

    /// Check `shared_text` as this node's whole configuration, write it and run it as
    /// `version`.
    fn install(
        &mut self,
        shared_text: &str,
        version: &ConfigVersion,
    ) -> Result<(), ConfigChangeError> {
        let running = self.configs.borrow().clone();
        let path = running.file.clone();
        let file_text = crate::storage::fsutil::read_bounded_string(&path).map_err(|source| {
            ConfigError::Unreadable {
                path: path.clone(),
                source,
            }
        })?;
        let composed = compose(&file_text, shared_text)?;
        let new = Config::parse(&composed, &path, &running.config_dir, &running.state_dir)?;
        ArtiSettings::from_config(&new)?;
        check_size(&SharedConfig {
            version: version.clone(),
            text: new.shared_text().to_owned(),
        })?;
        if new.shared_text() != running.shared_text() {
            write_atomic(&path, composed.as_bytes(), PRIVATE_FILE_MODE).map_err(|source| {
                ConfigChangeError::Write {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        config_version::save(&new.config_dir, version, new.shared_text())?;
        self.sync.applied(version.clone());
        self.run(new);
        Ok(())
    }

    /// Hand `new` to the loops (what cannot change while running stays; the log says so).
    fn run(&mut self, new: Config) {
        let (applied, needs_restart) = self.configs.borrow().reloaded(new);
        if !needs_restart.is_empty() {
            tracing::warn!(
                "changes to {} take effect at the next restart",
                needs_restart.join(", ")
            );
        }
        // The health loop starts over by the same rule (and keeps what it knows of the
        // backends when only other settings changed: status keeps showing it).
        if health::checks_change(&self.configs.borrow(), &applied) {
            show_unchecked_backends(&self.board, &applied);
        }
        self.configs.send_replace(Arc::new(applied));
        self.show();
    }

    fn show(&self) {
        let version = self.sync.current().clone();
        self.board
            .update(|status| status.config_version = Some(version));
    }
}

/// A version must fit in one cluster message, or no member could receive it.
fn check_size(config: &SharedConfig) -> Result<(), ConfigChangeError> {
    let message = Message::shared_config_update(config);
    let len = serde_json::to_vec(&message).map_or(usize::MAX, |bytes| bytes.len());
    if len > MAX_MESSAGE_BYTES {
        return Err(ConfigChangeError::TooLarge(len));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Priority;
    use crate::daemon::status::NodeStatus;

    const NODE: &str = "[node]\nid = \"node-a\"\npriority = 1\n";
    const WEB1: &str = "\n[[backends]]\nname = \"web1\"\naddress = \"2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion\"\n";
    const WEB2: &str = "\n[[backends]]\nname = \"web2\"\naddress = \"mnopanmvg3zpjvpaswrxdtopezi3powbcszekhpqvix3td32qjfrbyad.onion\"\n";

    #[test]
    fn a_reload_that_keeps_the_backends_keeps_what_status_shows_of_them() {
        let dir = tempfile::tempdir().unwrap();
        let (config_dir, state_dir) = (dir.path().join("etc"), dir.path().join("state"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let path = config_dir.join("config.toml");
        std::fs::write(&path, format!("{NODE}{WEB1}")).unwrap();
        let config = Config::load(&config_dir, &state_dir).unwrap();
        let board = StatusBoard::new(NodeStatus::starting(
            config.node.id.clone(),
            Priority::try_from(1).unwrap(),
            "x.onion".into(),
        ));
        show_unchecked_backends(&board, &config);
        let (configs, _receiver) = watch::channel(Arc::new(config));
        let mut keeper = ConfigKeeper::start(configs, board.clone()).unwrap();
        // What the health loop reported.
        board.update(|status| status.backends[0].state = "healthy".into());
        let states = || -> Vec<String> {
            board
                .snapshot()
                .backends
                .into_iter()
                .map(|b| format!("{} {}", b.name, b.state))
                .collect()
        };

        std::fs::write(
            &path,
            format!("{NODE}{WEB1}\n[timing]\nheartbeat_interval_secs = 2\n"),
        )
        .unwrap();
        keeper.reload().unwrap();
        assert_eq!(states(), ["web1 healthy"], "new timing, same backends");

        std::fs::write(&path, format!("{NODE}{WEB1}{WEB2}")).unwrap();
        keeper.reload().unwrap();
        assert_eq!(
            states(),
            ["web1 unchecked", "web2 unchecked"],
            "another list starts over"
        );
    }
}
