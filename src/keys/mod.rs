//! The master key: what it is, where it is stored, and how a vanity one is found.
//!
//! - [`MasterKey`] (`master_key.rs`): the service's ed25519 identity key in the expanded form
//!   tor uses, with its public key and address.
//! - [`files`]: reading the key from tor's, mkp224o's and Onionbalance's files, and writing a
//!   HiddenServiceDir exactly as tor does.
//! - [`vanity`]: the search for a key whose address starts with chosen characters.

pub mod files;
mod master_key;
pub mod vanity;

pub use master_key::{MasterKey, NotClampedError, RandomnessError};
