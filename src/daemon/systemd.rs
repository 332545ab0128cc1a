//! Working with systemd: readiness and watchdog notifications (`sd_notify`), and installing
//! the unit when `init` or `join` run as root on a systemd host.
//!
//! The notification protocol is one datagram per message to the Unix socket named by
//! `$NOTIFY_SOCKET` (a leading `@` means Linux's abstract namespace); without the variable
//! (not started by systemd) every call does nothing. Writing those ten lines here beats a
//! dependency: the protocol is stable and tiny.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::params;
use crate::storage::fsutil;

/// The unit file shipped with the binary (its `ExecStart=` names [`PACKAGED_BINARY`]).
pub const UNIT_FILE: &str = include_str!("../../systemd/rustbalance.service");
/// The service's system user, in systemd-sysusers' format (the package ships the same file).
const SYSUSERS_ENTRY: &str = include_str!("../../systemd/rustbalance.sysusers");
/// The node's directories and their modes, in systemd-tmpfiles' format (likewise).
const TMPFILES_ENTRY: &str = include_str!("../../systemd/rustbalance.tmpfiles");
const UNIT_NAME: &str = "rustbalance.service";
/// Where the Debian package puts the unit and the binary.
const PACKAGED_UNIT_PATH: &str = "/usr/lib/systemd/system/rustbalance.service";
const PACKAGED_BINARY: &str = "/usr/bin/rustbalance";
/// Where `init` puts them without the package: an administrator's own files, which no
/// package manager owns or overwrites.
const LOCAL_UNIT_PATH: &str = "/etc/systemd/system/rustbalance.service";
const LOCAL_BINARY: &str = "/usr/local/bin/rustbalance";
/// The system user the unit runs as.
const SERVICE_USER: &str = "rustbalance";

/// Send one notification (`READY=1`, `WATCHDOG=1`, `STATUS=...`, `STOPPING=1`) to systemd, if
/// systemd asked for them. Failures are logged at debug level: a lost notification must not
/// stop the node (systemd will notice a missing READY or watchdog on its own).
pub fn notify(message: &str) {
    let Some(socket_path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(err) = send_notification(&socket_path, message) {
        tracing::debug!("cannot notify systemd ({message}): {err}");
    }
}

fn send_notification(socket_path: &OsString, message: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::SocketAddr;

    let bytes = socket_path.as_bytes();
    let address = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
        None => SocketAddr::from_pathname(Path::new(socket_path))?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), &address)?;
    Ok(())
}

/// How often to send `WATCHDOG=1`: half the `WatchdogSec=` systemd announced for this very
/// process (`$WATCHDOG_USEC`, and `$WATCHDOG_PID` if set), or `None` without a watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// What `init`/`join` do about the systemd unit, decided from the facts (pure, tested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicePlan {
    /// Install and enable the unit, then start it.
    Install,
    /// Run the daemon in the foreground, saying why (if there is something to say).
    Foreground(Option<&'static str>),
}

/// The facts [`plan`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub is_root: bool,
    pub systemd_running: bool,
    /// The node uses the directories the unit names.
    pub default_dirs: bool,
    /// `--no-systemd` was given.
    pub opted_out: bool,
}

impl Host {
    /// The facts of this machine for a node in `config_dir`/`state_dir`.
    pub fn detect(config_dir: &Path, state_dir: &Path, opted_out: bool) -> Host {
        Host {
            // SAFETY: geteuid(2) has no preconditions and cannot fail.
            is_root: unsafe { geteuid() } == 0,
            systemd_running: Path::new("/run/systemd/system").is_dir(),
            default_dirs: config_dir == Path::new(params::DEFAULT_CONFIG_DIR)
                && state_dir == Path::new(params::DEFAULT_STATE_DIR),
            opted_out,
        }
    }
}

extern "C" {
    fn geteuid() -> u32;
}

/// Install the unit when run as root on a systemd host with the unit's directories, unless
/// the operator opted out; otherwise run in the foreground.
pub fn plan(host: Host) -> ServicePlan {
    match host {
        Host {
            opted_out: true, ..
        } => ServicePlan::Foreground(None),
        Host {
            systemd_running: false,
            ..
        } => ServicePlan::Foreground(None),
        Host { is_root: false, .. } => ServicePlan::Foreground(Some(
            "not root, so the systemd unit is not installed; running in the foreground",
        )),
        Host {
            default_dirs: false,
            ..
        } => ServicePlan::Foreground(Some(
            "the systemd unit uses /etc/rustbalance and /var/lib/rustbalance, not the directories given; running in the foreground",
        )),
        _ => ServicePlan::Install,
    }
}

/// Installing the unit failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot install {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },
}

/// Make sure the unit is installed (the Debian package's, or else the shipped one with this
/// binary under /usr/local), that the service user and the node's directories exist with
/// their modes, hand the directories to the user, and enable and start the unit.
pub fn install_and_start(config_dir: &Path, state_dir: &Path) -> Result<(), InstallError> {
    let write_error = |path: &Path| {
        let path = path.to_owned();
        move |source| InstallError::Write { path, source }
    };
    if !Path::new(PACKAGED_UNIT_PATH).exists() {
        let current = std::env::current_exe().map_err(write_error(Path::new(LOCAL_BINARY)))?;
        if current != Path::new(LOCAL_BINARY) {
            let binary = std::fs::read(&current).map_err(write_error(&current))?;
            fsutil::write_atomic(Path::new(LOCAL_BINARY), &binary, 0o755)
                .map_err(write_error(Path::new(LOCAL_BINARY)))?;
        }
        fsutil::write_atomic(Path::new(LOCAL_UNIT_PATH), local_unit().as_bytes(), 0o644)
            .map_err(write_error(Path::new(LOCAL_UNIT_PATH)))?;
    }
    run_with_input(Command::new("systemd-sysusers").arg("-"), SYSUSERS_ENTRY)?;
    run_with_input(
        Command::new("systemd-tmpfiles").args(["--create", "-"]),
        TMPFILES_ENTRY,
    )?;
    // What init wrote as root before the user existed.
    let owner = format!("{SERVICE_USER}:{SERVICE_USER}");
    run_with_input(
        Command::new("chown")
            .arg("-R")
            .arg(&owner)
            .arg(config_dir)
            .arg(state_dir),
        "",
    )?;
    run_with_input(Command::new("systemctl").arg("daemon-reload"), "")?;
    run_with_input(
        Command::new("systemctl").args(["enable", "--now", UNIT_NAME]),
        "",
    )?;
    Ok(())
}

/// The shipped unit for a binary installed by hand at [`LOCAL_BINARY`].
fn local_unit() -> String {
    UNIT_FILE.replace(
        &format!("ExecStart={PACKAGED_BINARY} "),
        &format!("ExecStart={LOCAL_BINARY} "),
    )
}

/// Run a command to completion with `input` on its stdin; its stderr becomes the error.
fn run_with_input(command: &mut Command, input: &str) -> Result<(), InstallError> {
    use std::io::Write as _;
    use std::process::Stdio;
    let described = format!("{command:?}").replace('"', "");
    let failed = |err: std::io::Error| InstallError::Command {
        command: described.clone(),
        reason: err.to_string(),
    };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(failed)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(failed)?;
    }
    let output = child.wait_with_output().map_err(failed)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(InstallError::Command {
            command: described,
            reason: crate::config::one_line(&String::from_utf8_lossy(&output.stderr)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(is_root: bool, systemd_running: bool, default_dirs: bool, opted_out: bool) -> Host {
        Host {
            is_root,
            systemd_running,
            default_dirs,
            opted_out,
        }
    }

    #[test]
    fn installs_only_as_root_on_systemd_with_default_dirs_unless_opted_out() {
        assert_eq!(plan(host(true, true, true, false)), ServicePlan::Install);
        assert_eq!(
            plan(host(true, true, true, true)),
            ServicePlan::Foreground(None)
        );
        assert_eq!(
            plan(host(true, false, true, false)),
            ServicePlan::Foreground(None)
        );
        assert!(matches!(
            plan(host(false, true, true, false)),
            ServicePlan::Foreground(Some(_))
        ));
        assert!(matches!(
            plan(host(true, true, false, false)),
            ServicePlan::Foreground(Some(_))
        ));
    }

    #[test]
    fn the_unit_installed_by_hand_runs_the_binary_installed_by_hand() {
        let exec_lines = |unit: &str| -> Vec<String> {
            unit.lines()
                .filter(|line| line.starts_with("ExecStart="))
                .map(str::to_owned)
                .collect()
        };
        let packaged = exec_lines(UNIT_FILE);
        assert_eq!(packaged.len(), 1);
        assert!(packaged[0].starts_with("ExecStart=/usr/bin/rustbalance "));
        let local = exec_lines(&local_unit());
        assert_eq!(
            local,
            [packaged[0].replacen("/usr/bin/", "/usr/local/bin/", 1)]
        );
        assert_eq!(
            UNIT_FILE.lines().count(),
            local_unit().lines().count(),
            "only ExecStart= differs"
        );
    }

    #[test]
    fn install_failures_carry_the_command_and_its_stderr() {
        run_with_input(&mut Command::new("cat"), "fed through stdin").unwrap();
        let err = run_with_input(
            Command::new("sh").args(["-c", "cat >/dev/null; echo 'no such user' >&2; exit 3"]),
            "input",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("sh -c") && text.ends_with("no such user"),
            "{text}"
        );
    }

    #[test]
    fn notifications_reach_the_socket_systemd_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_notification(&path.clone().into_os_string(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("rustbalance-test-{}", std::process::id());
        let abstract_listener = {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
            UnixDatagram::bind_addr(&addr).unwrap()
        };
        send_notification(&OsString::from(format!("@{name}")), "WATCHDOG=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
