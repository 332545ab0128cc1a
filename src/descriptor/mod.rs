//! The master descriptor: which introduction points go in ([`merge`]) and how it is built and
//! signed ([`build`]). Pure: no network, no clock of its own.

pub mod build;
pub mod merge;
pub mod synthetic;
