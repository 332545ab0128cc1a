//! `<config-dir>/config-version.toml`: which version of the cluster's shared configuration
//! config.toml holds.
//!
//! It records the version's number, the member that made it, and a SHA3-256 digest of the
//! shared text it had. When config.toml's shared tables no longer match the digest, the
//! operator edited the file: at the next start or reload that edit becomes a new version
//! (`daemon::shared_config`). Written atomically after config.toml, so a crash between the two
//! at worst makes a received version look like a local edit with the same text, which the
//! members then settle on like any other.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};

use crate::cluster::config_sync::ConfigVersion;
use crate::storage::fsutil::{write_atomic, PRIVATE_FILE_MODE};

/// File name inside the config directory.
pub const CONFIG_VERSION_FILE: &str = "config-version.toml";

/// What the file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionFile {
    number: u64,
    by: crate::cluster::NodeId,
    shared_sha3_256: String,
}

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigVersionError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({reason}): remove it, and this node's config.toml counts as a new edit"
    )]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The version recorded last, and whether config.toml's shared tables are still its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub version: ConfigVersion,
    pub text_unchanged: bool,
}

/// The version recorded for config.toml, compared with its shared tables `shared_text`.
/// `None` when there is no file (a node from before versions, or set up by hand).
pub fn load(config_dir: &Path, shared_text: &str) -> Result<Option<Recorded>, ConfigVersionError> {
    let path = config_dir.join(CONFIG_VERSION_FILE);
    let text = match crate::storage::fsutil::read_bounded_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigVersionError::Read { path, source }),
    };
    let file: VersionFile = toml::from_str(&text).map_err(|err| ConfigVersionError::Damaged {
        path: path.clone(),
        reason: crate::config::one_line(err.message()),
    })?;
    Ok(Some(Recorded {
        version: ConfigVersion {
            number: file.number,
            by: file.by,
        },
        text_unchanged: file.shared_sha3_256 == digest(shared_text),
    }))
}

/// Record that config.toml holds `version`, whose shared text is `shared_text`.
pub fn save(
    config_dir: &Path,
    version: &ConfigVersion,
    shared_text: &str,
) -> Result<(), ConfigVersionError> {
    let path = config_dir.join(CONFIG_VERSION_FILE);
    let file = VersionFile {
        number: version.number,
        by: version.by.clone(),
        shared_sha3_256: digest(shared_text),
    };
    let text = toml::to_string(&file).map_err(|err| ConfigVersionError::Damaged {
        path: path.clone(),
        reason: err.to_string(),
    })?;
    write_atomic(&path, text.as_bytes(), PRIVATE_FILE_MODE)
        .map_err(|source| ConfigVersionError::Write { path, source })
}

fn digest(text: &str) -> String {
    Sha3_256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("rb-cfgversion-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_saved_version_is_found_and_compared_with_the_text() {
        let dir = scratch("roundtrip");
        let version = ConfigVersion {
            number: 4,
            by: crate::cluster::NodeId::try_from("node-b".to_owned()).unwrap(),
        };
        assert!(load(&dir, "x = 1\n").unwrap().is_none());
        save(&dir, &version, "x = 1\n").unwrap();
        let recorded = |text_unchanged| {
            Some(Recorded {
                version: version.clone(),
                text_unchanged,
            })
        };
        assert_eq!(load(&dir, "x = 1\n").unwrap(), recorded(true));
        assert_eq!(load(&dir, "x = 2\n").unwrap(), recorded(false));
        std::fs::write(dir.join(CONFIG_VERSION_FILE), "number = -1\n").unwrap();
        let err = load(&dir, "x = 1\n").unwrap_err().to_string();
        assert!(err.contains("config-version.toml is damaged"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
