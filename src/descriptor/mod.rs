//! The master descriptor: which introduction points go in ([`merge`]), how it is built and
//! signed ([`build`]), and the master key as the publish plan sees it ([`signer`]). Pure: no
//! network, no clock of its own.

pub mod build;
pub mod merge;
pub mod signer;
pub mod synthetic;
