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

/// The unit file shipped with the binary, installed as `/etc/systemd/system/rustbalance.service`.
pub const UNIT_FILE: &str = include_str!("../../systemd/rustbalance.service");
const UNIT_NAME: &str = "rustbalance.service";
const UNIT_PATH: &str = "/etc/systemd/system/rustbalance.service";
/// Where the unit's `ExecStart=` expects the binary.
const BINARY_PATH: &str = "/usr/local/bin/rustbalance";
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

/// Put the binary at [`BINARY_PATH`], create the service user, hand it the node's directories,
/// install the unit, enable it and start it.
pub fn install_and_start(config_dir: &Path, state_dir: &Path) -> Result<(), InstallError> {
    let current = std::env::current_exe().map_err(|source| InstallError::Write {
        path: PathBuf::from(BINARY_PATH),
        source,
    })?;
    if current != Path::new(BINARY_PATH) {
        let binary = std::fs::read(&current).map_err(|source| InstallError::Write {
            path: current.clone(),
            source,
        })?;
        fsutil::write_atomic(Path::new(BINARY_PATH), &binary, 0o755).map_err(|source| {
            InstallError::Write {
                path: PathBuf::from(BINARY_PATH),
                source,
            }
        })?;
    }
    if run(Command::new("id").arg("-u").arg(SERVICE_USER)).is_err() {
        run(Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir"])
            .arg(state_dir)
            .args(["--shell", "/usr/sbin/nologin", SERVICE_USER]))?;
    }
    fsutil::create_private_dir(state_dir).map_err(|source| InstallError::Write {
        path: state_dir.to_owned(),
        source,
    })?;
    let owner = format!("{SERVICE_USER}:{SERVICE_USER}");
    run(Command::new("chown")
        .arg("-R")
        .arg(&owner)
        .arg(config_dir)
        .arg(state_dir))?;
    fsutil::write_atomic(Path::new(UNIT_PATH), UNIT_FILE.as_bytes(), 0o644).map_err(|source| {
        InstallError::Write {
            path: PathBuf::from(UNIT_PATH),
            source,
        }
    })?;
    run(Command::new("systemctl").arg("daemon-reload"))?;
    run(Command::new("systemctl").args(["enable", "--now", UNIT_NAME]))?;
    Ok(())
}

/// Run a command to completion; its stderr becomes the error.
fn run(command: &mut Command) -> Result<(), InstallError> {
    let described = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|err| InstallError::Command {
        command: described.clone(),
        reason: err.to_string(),
    })?;
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
