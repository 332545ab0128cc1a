//! Vanity master addresses: find a master key whose .onion address starts with chosen letters.
//!
//! There is no shortcut: the only way is to try keys until one fits, 32^n of them on average
//! for an n-character prefix. What can be made fast is each try. A naive search derives every
//! candidate with a scalar multiplication and base32-encodes it; this one
//!
//! - steps through the public keys of consecutive scalars `a + 8k` (still valid clamped
//!   ed25519 scalars) instead of deriving each from scratch (`walk.rs`),
//! - computes only the y coordinate of each point, two candidates at a time around a batch
//!   centre, with one field inversion per batch thanks to Montgomery's trick (`walk.rs`),
//! - compares the prefix as a 64-bit mask on the key's raw bytes (`prefix.rs`),
//! - does its field arithmetic four candidates at a time with AVX2 where the processor has it
//!   (`field_avx2.rs`), else with fiat-crypto's proven code (`field.rs`); `engine.rs` lets the
//!   walk use either,
//! - runs one independent walk per core (`search.rs`).
//!
//! Measured on our 2-core machines (AMD EPYC, AVX2): about 20 million candidates per second
//! per core, linear in cores; mkp224o's fastest build does 4.5–5.3 million there.
//!
//! Nothing found by the fast path is trusted: a hit is rebuilt from the secret scalar, its
//! public key recomputed by curve25519-dalek with a full scalar multiplication, and its address
//! encoded and parsed again before the key is returned.

mod engine;
mod field;
#[cfg(target_arch = "x86_64")]
mod field_avx2;
mod point;
mod prefix;
mod search;
mod walk;

pub use engine::Arithmetic;
pub use prefix::{PrefixError, VanityPrefix};
pub use search::{
    arithmetic, bench, default_threads, search, BenchReport, Progress, PROGRESS_INTERVAL,
};

use crate::keys::RandomnessError;

/// Why a vanity search ended without a key.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("the search was stopped before a matching key was found ({tries} candidates tried)")]
    Stopped { tries: u64 },
    #[error(transparent)]
    Randomness(#[from] RandomnessError),
    #[error("could not start a search thread: {0}")]
    SpawnThread(#[source] std::io::Error),
    /// The fast path and the full re-derivation disagree: a defect in this program. No key is
    /// returned, so nothing wrong is ever written.
    #[error("internal error in the vanity search, no key was produced (please report it): {0}")]
    Bug(&'static str),
}
