//! Where the files `tests/run.sh` builds before the tests are found (the static release
//! binary, the Debian package). Included by path (`#[path = "support/build_output.rs"]`) by
//! the tests that check those files and need nothing else of the harness.

use std::path::PathBuf;

/// `relative` under the target directory (`$CARGO_TARGET_DIR`, else `target/` of the
/// checkout), or the path in the environment variable `override_var` when it is set.
pub fn built_file(override_var: &str, relative: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        return PathBuf::from(path);
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target_dir.join(relative)
}
