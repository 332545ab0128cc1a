//! What the seeded simulations (`election_simulation`, `cluster_simulation`) share: their one
//! source of chance, and how a run is steered from the environment (`RB_SIM_SEED` to replay one
//! seed, `RB_SIM_SEEDS` for more seeds, `RB_SIM_TRACE` to print every event).

// Each simulation uses part of this module.
#![allow(dead_code)]

/// A number from the environment, or `None` if the variable is unset; a value that is not a
/// number stops the test with its name.
pub fn env_number(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// SplitMix64: tiny, fast and good enough to drive a simulation.
pub struct SimRng(pub u64);

impl SimRng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}
