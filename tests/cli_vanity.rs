//! `rustbalance keygen --vanity-prefix`: a key whose address starts with the prefix, clear
//! errors for impossible prefixes, a measured rate with `--bench`, and a clean stop.

use std::process::Command;

use rustbalance::keys::files::load_master_key;

fn rustbalance(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rustbalance"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_vanity_key_starts_with_the_prefix_and_loads_back() {
    let dir = std::env::temp_dir().join(format!("rb-vanity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out = dir.join("key");
    let output = rustbalance(&[
        "keygen",
        "--vanity-prefix",
        "Rb",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let address = String::from_utf8(output.stdout).unwrap();
    assert!(address.starts_with("rb"), "{address}");
    let key = load_master_key(&out).unwrap();
    assert_eq!(key.onion_address().to_string(), address.trim());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("1,024 tries expected"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn impossible_prefixes_are_refused_with_exit_2() {
    for (prefix, expected) in [
        ("ab1", "'1'"),
        ("", "empty"),
        ("abcdefghijklm", "12"),
        ("a-b", "'-'"),
    ] {
        let output = rustbalance(&["keygen", "--vanity-prefix", prefix]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{prefix:?}: {stderr}");
        assert!(
            stderr.starts_with("rustbalance: --vanity-prefix: ") && stderr.contains(expected),
            "{prefix:?}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{prefix:?}: {stderr}");
    }
}

#[test]
fn bench_prints_the_rate_and_writes_nothing() {
    let output = rustbalance(&[
        "keygen",
        "--vanity-prefix",
        "abc",
        "--bench",
        "1",
        "--threads",
        "1",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = String::from_utf8(output.stdout).unwrap();
    assert!(
        report.contains(" M candidates/s per thread")
            && report.contains(" M candidates/s in total"),
        "{report}"
    );
}
