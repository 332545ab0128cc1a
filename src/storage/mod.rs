//! What a node keeps on disk, and how it is written so that nothing is lost.
//!
//! - [`fsutil`]: private directories and files, written atomically (temporary file, fsync,
//!   rename), so a crash leaves the old or the new version, never a torn one;
//! - [`node_files`]: the files `init` and `join` write (config.toml, the keys, `peers/`) and
//!   their loading;
//! - [`config_version`]: which version of the cluster's shared configuration config.toml
//!   holds;
//! - [`state`]: `state.json`, what the node remembers across a restart.
//!
//! This layer knows the formats and the modes; it decides nothing about the cluster.

pub mod config_version;
pub mod fsutil;
pub mod node_files;
pub mod state;
