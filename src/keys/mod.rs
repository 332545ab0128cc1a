//! The master key: what it is, where it is stored, and how a vanity one is found.
//!
//! - [`MasterKey`] (`master_key.rs`): the service's ed25519 identity key in the expanded form
//!   tor uses, with its public key and address.
//! - [`files`]: reading the key from tor's, mkp224o's and Onionbalance's files and from a
//!   node's sealed `master.key`, and writing both a sealed `master.key` and a HiddenServiceDir
//!   exactly as tor does.
//! - [`sealed`]: the encrypted-at-rest format of a node's `master.key`.
//! - [`kek`]: the key-encryption key that format is sealed under, and where it is found
//!   (systemd credentials, or the credential store).
//! - [`vanity`]: the search for a key whose address starts with chosen characters.
//! - [`onion_address`]: the v3 `.onion` address a key is known by.

pub mod files;
pub mod kek;
mod master_key;
pub mod onion_address;
pub mod sealed;
pub mod vanity;

pub use kek::{ensure_kek, Kek, KekError, KekSource};
pub use master_key::{MasterKey, NotClampedError, RandomnessError};
