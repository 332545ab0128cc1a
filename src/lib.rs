//! RustBalance: an onion-service load balancer with an embedded Tor client (Arti).
//!
//! The master `.onion` address's descriptor is built from the introduction points of several
//! backend onion services, so clients are spread over the backends and a lost backend drops
//! out. See `README.md` for operators and `ARCHITECTURE.md` for the layers, the Tor seam and the
//! state machines; each module's documentation says which part it implements.

pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod descriptor;
pub mod health;
pub mod keys;
pub mod logging;
pub mod params;
pub mod publish;
pub mod storage;
pub mod tor;
