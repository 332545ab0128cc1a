//! The embedded Tor client: the only module that names Arti types.
//!
//! Everything the rest of the program needs from Tor passes through here: turning the
//! operator's `[arti]` table into Arti's configuration ([`ArtiSettings`]), bootstrapping the
//! in-process client and reporting the consensus it holds ([`EmbeddedTor`]). Keeping Arti
//! behind this boundary means an Arti upgrade touches one directory (see
//! `vendor-notes/arti.md`) and the deciding logic elsewhere is tested without a network.

mod client;
mod hsdir;
mod probe;
mod settings;
pub mod stall;

pub use client::{ConsensusSummary, EmbeddedTor, TorError};
pub use hsdir::{BackendDescriptor, FetchError, HsDirUpload, PublishTarget};
pub use probe::HttpProbe;
pub use settings::{ArtiConfigError, ArtiSettings};

/// Make rustls usable. Arti is built with its `rustls` feature (no OpenSSL, so the binary can
/// be static), which leaves the choice of crypto provider to the program; without one, the
/// first TLS handshake to a relay fails. Idempotent: later calls are no-ops.
pub fn install_crypto_provider() {
    // `Err` only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
