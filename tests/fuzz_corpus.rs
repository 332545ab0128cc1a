//! The short fuzzing pass of every `cargo test` (CI included): every fuzz target of `fuzz/`
//! runs over its committed corpus (`fuzz/corpus/<target>/`: seeds, and the inputs that once
//! crashed it, each a regression test) and over a few thousand seeded mutations of it. The long
//! coverage-guided runs are `cargo fuzz` (fuzz/README.md).

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::fs;
use std::path::Path;

/// Mutations per corpus file: enough to cross every parser's early branches in a few seconds.
const MUTATIONS_PER_INPUT: usize = 300;

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    for (name, target) in targets::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fuzz/corpus")
            .join(name);
        let mut inputs: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                (path.display().to_string(), fs::read(&path).unwrap())
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{name} has no corpus");
        let mut rng = Lcg(0x5eed ^ name.len() as u64);
        for (path, input) in &inputs {
            target(input);
            for round in 0..MUTATIONS_PER_INPUT {
                let mutated = mutate(input, &mut rng);
                let outcome = std::panic::catch_unwind(|| target(&mutated));
                assert!(
                    outcome.is_ok(),
                    "{name} panicked on mutation {round} of {path}: {mutated:?}"
                );
            }
        }
        eprintln!(
            "{name}: {} inputs, {} mutations each",
            inputs.len(),
            MUTATIONS_PER_INPUT
        );
    }
}

/// A small deterministic generator: a failure replays exactly.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize % bound.max(1)
    }
}

/// One to four byte-level edits: flip, set to an edge value, insert, delete, or duplicate a
/// slice.
fn mutate(input: &[u8], rng: &mut Lcg) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.next(4) {
        let at = rng.next(out.len() + 1);
        match rng.next(5) {
            0 if at < out.len() => out[at] ^= 1 << rng.next(8),
            1 if at < out.len() => out[at] = [0, 0xff, b'"', b'\n', b'9'][rng.next(5)],
            2 => out.insert(at, rng.next(256) as u8),
            3 if at < out.len() => {
                out.remove(at);
            }
            _ => {
                let end = (at + rng.next(16)).min(out.len());
                let slice = out[at..end].to_vec();
                out.splice(at..at, slice);
            }
        }
    }
    out
}
