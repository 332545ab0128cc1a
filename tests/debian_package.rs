//! The Debian package (`cargo deb`, metadata in Cargo.toml) installs into an empty root with
//! dpkg: the static binary, the hardened unit (which passes `systemd-analyze verify` there),
//! the system user, the node's directories with their modes, the README and the licence. An
//! upgrade over itself works; removing and purging it keeps the node's keys.
//!
//! The package is the one `tests/run.sh` builds with the README's command, found under the
//! target directory (or at `$RB_DEBIAN_PACKAGE`); this test fails if it is missing. dpkg runs
//! the maintainer scripts from outside the root (`--force-script-chrootless`, with
//! `DPKG_ROOT` set): an empty root has no shell to run them in. It needs root, as dpkg does.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

#[path = "support/build_output.rs"]
mod build_output;

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn package() -> PathBuf {
    build_output::built_file(
        "RB_DEBIAN_PACKAGE",
        &format!("debian/rustbalance_{VERSION}_amd64.deb"),
    )
}

/// Run a command; its output, with a panic naming it when it fails.
fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// dpkg acting on the root at `root`, its maintainer scripts run from here.
fn dpkg(root: &Path) -> Command {
    let mut command = Command::new("dpkg");
    command
        .arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless");
    command
}

/// The mode bits, owner and group of `path` inside `root`.
fn mode_and_owner(root: &Path, path: &str) -> (u32, u32, u32) {
    let meta = fs::metadata(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|err| panic!("{path} in the root: {err}"));
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

#[test]
fn the_package_installs_into_an_empty_root_with_its_user_directories_and_a_valid_unit() {
    let deb = package();
    assert!(
        deb.is_file(),
        "{} is missing: build it as README.md says (tests/run.sh does)",
        deb.display()
    );
    eprintln!(
        "measured: {} is {:.1} MB",
        deb.file_name().unwrap().to_string_lossy(),
        fs::metadata(&deb).unwrap().len() as f64 / 1e6
    );

    let info =
        String::from_utf8(run(Command::new("dpkg-deb").arg("--field").arg(&deb)).stdout).unwrap();
    for field in [
        "Package: rustbalance",
        &format!("Version: {VERSION}"),
        "Architecture: amd64",
        "Depends: systemd",
        "Section: net",
    ] {
        assert!(
            info.lines().any(|line| line == field),
            "control lacks {field:?}:\n{info}"
        );
    }

    // An empty root: dpkg's own database and an empty /etc, which every system has.
    let root_dir = tempfile::tempdir().unwrap();
    let root = root_dir.path();
    fs::create_dir(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    // The root has no systemd to satisfy the dependency: that is the point of an empty root.
    run(dpkg(root).arg("--force-depends").arg("--install").arg(&deb));

    let status =
        String::from_utf8(run(dpkg(root).args(["--status", "rustbalance"])).stdout).unwrap();
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert_eq!(mode_and_owner(root, "/usr/bin/rustbalance"), (0o755, 0, 0));
    for file in [
        "/usr/lib/systemd/system/rustbalance.service",
        "/usr/lib/sysusers.d/rustbalance.conf",
        "/usr/lib/tmpfiles.d/rustbalance.conf",
        "/usr/share/doc/rustbalance/README.md",
        "/usr/share/doc/rustbalance/copyright",
    ] {
        assert_eq!(mode_and_owner(root, file), (0o644, 0, 0), "{file}");
    }
    let copyright = fs::read_to_string(root.join("usr/share/doc/rustbalance/copyright")).unwrap();
    assert!(
        copyright.contains("License: MIT\n") && copyright.contains("License: Apache-2.0\n"),
        "{copyright}"
    );
    let version = run(Command::new(root.join("usr/bin/rustbalance")).arg("--version")).stdout;
    assert!(
        String::from_utf8_lossy(&version).contains(VERSION),
        "the packaged binary does not run"
    );

    // postinst: the system user (no login, home in the state directory) and the directories.
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|line| line.starts_with("rustbalance:"))
        .unwrap_or_else(|| panic!("no rustbalance user in the root's /etc/passwd:\n{passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5..], ["/var/lib/rustbalance", "/usr/sbin/nologin"]);
    let uid: u32 = fields[2].parse().unwrap();
    let gid: u32 = fields[3].parse().unwrap();
    assert!((1..1000).contains(&uid), "not a system user's id: {uid}");
    for dir in ["/etc/rustbalance", "/var/lib/rustbalance"] {
        assert_eq!(mode_and_owner(root, dir), (0o700, uid, gid), "{dir}");
    }

    verify_unit_in(root);

    // An upgrade over itself (postinst runs with the old version): user and modes unchanged.
    let key = root.join("etc/rustbalance/master.key");
    fs::write(&key, "a key that must survive").unwrap();
    run(dpkg(root).arg("--force-depends").arg("--install").arg(&deb));
    assert_eq!(fs::read_to_string(root.join("etc/passwd")).unwrap(), passwd);
    assert_eq!(mode_and_owner(root, "/etc/rustbalance"), (0o700, uid, gid));

    // Remove, then purge: the program goes, the node's keys stay (and purge says so).
    run(dpkg(root).args(["--remove", "rustbalance"]));
    assert!(!root.join("usr/bin/rustbalance").exists());
    assert!(!root
        .join("usr/lib/systemd/system/rustbalance.service")
        .exists());
    let purge = run(dpkg(root).args(["--purge", "rustbalance"]));
    assert!(key.is_file(), "purge deleted the node's keys");
    let said = String::from_utf8_lossy(&purge.stderr);
    assert!(said.contains("kept /etc/rustbalance"), "{said}");
}

/// `systemd-analyze verify` of the installed unit, inside the root. The root gets what every
/// Debian system with systemd has and an empty root lacks: systemd's own units (the unit is
/// pulled in by multi-user.target, after network-online.target) and /bin/kill
/// (`ExecReload=`). A copy of the unit naming a missing binary must fail the same check, so the
/// check is known to look.
fn verify_unit_in(root: &Path) {
    let units = root.join("usr/lib/systemd/system");
    for entry in fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let destination = units.join(entry.file_name());
        if entry.file_type().unwrap().is_file() && !destination.exists() {
            fs::copy(entry.path(), destination).unwrap();
        }
    }
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/kill", root.join("bin/kill")).unwrap();

    let verify = |unit: &str| {
        Command::new("systemd-analyze")
            .arg(format!("--root={}", root.display()))
            .args(["verify", unit])
            .output()
            .expect("systemd-analyze (Debian's systemd package; tests/run.sh installs it)")
    };
    let good = verify("rustbalance.service");
    let complaints = String::from_utf8_lossy(&good.stderr);
    assert!(
        good.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify of the installed unit: {complaints}"
    );

    let unit = fs::read_to_string(units.join("rustbalance.service")).unwrap();
    let broken = unit.replace(
        "ExecStart=/usr/bin/rustbalance ",
        "ExecStart=/usr/bin/no-such-rustbalance ",
    );
    assert_ne!(broken, unit);
    let local_units = root.join("etc/systemd/system");
    fs::create_dir_all(&local_units).unwrap();
    fs::write(local_units.join("rustbalance-broken.service"), broken).unwrap();
    let bad = verify("rustbalance-broken.service");
    assert!(
        !bad.status.success(),
        "systemd-analyze verify accepted a unit whose binary is missing"
    );
    fs::remove_file(local_units.join("rustbalance-broken.service")).unwrap();
}
