//! The README's build command makes one fully static x86_64 Linux executable: no ELF
//! interpreter, no shared library needed, and it runs in an empty root directory (no libc, no
//! tor, OpenSSL or SQLite).
//!
//! The binary is the one `tests/run.sh` builds with the README's command, found under the
//! target directory (or at `$RB_STATIC_BINARY`); this test fails if it is missing.

use std::path::PathBuf;
use std::process::Command;

/// The target triple the README builds for (an explicit `--target` keeps `+crt-static` away
/// from build scripts and proc-macros).
const TARGET: &str = "x86_64-unknown-linux-gnu";

fn static_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("RB_STATIC_BINARY") {
        return PathBuf::from(path);
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target_dir.join(TARGET).join("release/rustbalance")
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

    // An empty root directory holding only the binary: no /lib, no /etc, nothing to load.
    let root = tempfile::tempdir().unwrap();
    let inside = root.path().join("rustbalance");
    std::fs::copy(&binary, &inside).unwrap();
    let args = ["/rustbalance", "keygen", "--out", "/key"];
    let direct = Command::new("chroot").arg(root.path()).args(args).output();
    let output = match direct {
        Ok(output) if output.status.success() => output,
        // Not root: a user namespace grants chroot where the kernel allows it.
        _ => match Command::new("unshare")
            .args(["-r", "chroot"])
            .arg(root.path())
            .args(args)
            .output()
        {
            Ok(output) => output,
            Err(err) => {
                eprintln!("cannot chroot here ({err}): empty-root run skipped");
                return;
            }
        },
    };
    assert!(
        output.status.success(),
        "the binary failed in an empty root: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(root.path().join("key/hostname").is_file());
}
