//! The README's build command makes one fully static x86_64 Linux executable: no ELF
//! interpreter, no shared library needed, and it runs in an empty root directory (no libc, no
//! tor, OpenSSL or SQLite).
//!
//! The binary is the one `tests/run.sh` builds with the README's command, found under the
//! target directory (or at `$RB_STATIC_BINARY`); this test fails if it is missing.

use std::path::PathBuf;
use std::process::Command;

#[path = "support/build_output.rs"]
mod build_output;

/// The target triple the README builds for (an explicit `--target` keeps `+crt-static` away
/// from build scripts and proc-macros).
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn static_binary() -> PathBuf {
    build_output::built_file("RB_STATIC_BINARY", &format!("{TARGET}/release/rustbalance"))
}

/// What the ELF file says about linking: (has an interpreter, names of needed libraries).
fn elf_linking(bytes: &[u8]) -> (bool, usize) {
    let u16_at = |at: usize| u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap()) as usize;
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&bytes[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(bytes[4], 2, "not a 64-bit ELF file");
    assert_eq!(u16_at(18), 62, "not an x86_64 executable");
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    let mut interpreter = false;
    let mut needed = 0;
    for index in 0..phnum {
        let header = phoff + index * phentsize;
        let kind = u32::from_le_bytes(bytes[header..header + 4].try_into().unwrap());
        match kind {
            // PT_INTERP: the program asks for a dynamic loader.
            3 => interpreter = true,
            // PT_DYNAMIC: a static-pie has one, for its own relocations; count DT_NEEDED.
            2 => {
                let (offset, size) = (u64_at(header + 8), u64_at(header + 32));
                for entry in (offset..offset + size).step_by(16) {
                    match u64_at(entry) {
                        0 => break,
                        1 => needed += 1,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    (interpreter, needed)
}

#[test]
fn the_release_binary_is_fully_static_and_runs_in_an_empty_root() {
    let binary = static_binary();
    let bytes = std::fs::read(&binary).unwrap_or_else(|err| {
        panic!(
            "{}: {err}; build it with the README's command: RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release --locked --target {TARGET} (tests/run.sh does)",
            binary.display()
        )
    });
    let (interpreter, needed) = elf_linking(&bytes);
    assert!(
        !interpreter,
        "{} asks for a dynamic loader",
        binary.display()
    );
    assert_eq!(needed, 0, "{} needs shared libraries", binary.display());
    if let Ok(file) = Command::new("file").arg(&binary).output() {
        let description = String::from_utf8_lossy(&file.stdout);
        eprintln!("file: {}", description.trim());
        assert!(
            description.contains("statically linked") || description.contains("static-pie linked"),
            "{description}"
        );
    }
    eprintln!(
        "measured: static release binary {:.1} MB",
        bytes.len() as f64 / 1e6
    );
    // The goal of the package (BENCHMARKS.md, "Release binary"): at most 25 MB.
    assert!(
        bytes.len() <= 25_000_000,
        "the static binary is {} bytes, above 25 MB",
        bytes.len()
    );

    // An empty root directory holding only the binary: no /lib, no /etc, nothing to load.
    // (No /dev either: key generation needs /dev/urandom, which a static glibc build reads
    // when getrandom(2) cannot be looked up; every real machine, and the systemd unit's
    // PrivateDevices=, has it. So the commands here need no randomness.)
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(&binary, root.path().join("rustbalance")).unwrap();
    let in_empty_root = |args: &[&str]| {
        let direct = Command::new("chroot").arg(root.path()).args(args).output();
        match direct {
            Ok(output)
                if output
                    .status
                    .code()
                    .is_some_and(|c| c != 125 && c != 126 && c != 127) =>
            {
                Some(output)
            }
            // Not root: a user namespace grants chroot where the kernel allows it.
            _ => Command::new("unshare")
                .args(["-r", "chroot"])
                .arg(root.path())
                .args(args)
                .output()
                .ok()
                .filter(|output| {
                    output
                        .status
                        .code()
                        .is_some_and(|c| c != 125 && c != 126 && c != 127)
                }),
        }
    };
    let Some(version) = in_empty_root(&["/rustbalance", "--version"]) else {
        eprintln!("cannot chroot here: the empty-root run is skipped");
        return;
    };
    assert!(version.status.success(), "{version:?}");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("rustbalance "));
    // A real command, through argument parsing to its one-line error and exit status.
    let status = in_empty_root(&["/rustbalance", "--state-dir", "/nowhere", "status"]).unwrap();
    assert_eq!(status.status.code(), Some(3), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stderr).contains("no rustbalance daemon answers"));

    // Outside the empty root, the static binary does real work: a new key.
    let out = root.path().join("key");
    let keygen = Command::new(&binary)
        .args(["keygen", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        keygen.status.success(),
        "{}",
        String::from_utf8_lossy(&keygen.stderr)
    );
    assert!(out.join("hostname").is_file());
}
