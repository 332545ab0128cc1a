//! The master descriptor: which introduction points go in ([`merge`]), the keys that sign it
//! ([`build`]), how its text is written as C tor writes it ([`encode`]), and the master key as
//! the publish plan sees it ([`signer`]). Pure: no network, no clock of its own.

pub mod build;
pub mod encode;
pub mod merge;
pub mod signer;
pub mod synthetic;
