//! What the seeded simulations (`election_simulation`, `cluster_simulation`) share: how a run
//! is steered from the environment (`RB_SIM_SEED` to replay one seed, `RB_SIM_SEEDS` for more
//! seeds, `RB_SIM_TRACE` to print every event).

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
