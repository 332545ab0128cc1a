//! One tor process of the test network: its directory, config, process and control port.
//!
//! Whatever its role, the harness treats every tor the same way: write its torrc, start it,
//! talk to it over its control port, wait for it (always with a deadline, always noticing if it
//! died) and, when something goes wrong, show the end of its log in the error.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::control::ControlConn;
use super::process::ProcessGuard;
use super::HarnessError;

/// The tor binary (Debian's package); `RB_TOR` overrides it.
pub fn tor_binary() -> String {
    std::env::var("RB_TOR").unwrap_or_else(|_| "tor".to_owned())
}

/// Lines of a node's log shown in an error.
const LOG_TAIL_LINES: usize = 30;
/// Pause between two polls of a node that is not ready yet.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A tor process and everything that belongs to it.
pub struct TorNode {
    name: String,
    dir: PathBuf,
    control_port: u16,
    /// An empty file, passed as `--defaults-torrc` so that no system-wide defaults apply.
    empty_file: PathBuf,
    process: Option<ProcessGuard>,
}

impl TorNode {
    /// A node that is not started yet. Creates its data directory (mode 0700, as tor requires).
    pub fn new(
        name: &str,
        dir: PathBuf,
        control_port: u16,
        empty_file: &Path,
    ) -> Result<TorNode, HarnessError> {
        create_private_dir(&dir)?;
        Ok(TorNode {
            name: name.to_owned(),
            dir,
            control_port,
            empty_file: empty_file.to_owned(),
            process: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn control_port(&self) -> u16 {
        self.control_port
    }

    fn torrc_path(&self) -> PathBuf {
        self.dir.join("torrc")
    }

    pub fn write_torrc(&self, text: &str) -> Result<(), HarnessError> {
        write_file(&self.torrc_path(), text)
    }

    /// Start tor with the torrc written before; its stdout and stderr go to `stdout.log`
    /// (tor reports configuration errors there, before its own log file is open).
    pub fn start(&mut self) -> Result<(), HarnessError> {
        self.stop();
        let output_path = self.dir.join("stdout.log");
        let output = File::create(&output_path).map_err(|e| {
            HarnessError::new(format!("cannot create {}: {e}", output_path.display()))
        })?;
        let errors = output.try_clone().map_err(|e| {
            HarnessError::new(format!("cannot duplicate {}: {e}", output_path.display()))
        })?;
        let mut command = Command::new(tor_binary());
        command
            .arg("--defaults-torrc")
            .arg(&self.empty_file)
            .arg("-f")
            .arg(self.torrc_path())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors);
        self.process = Some(ProcessGuard::spawn(self.name.clone(), &mut command)?);
        Ok(())
    }

    /// Send SIGTERM without waiting (see [`ProcessGuard::terminate`]).
    pub fn terminate(&mut self) {
        if let Some(process) = &mut self.process {
            process.terminate();
        }
    }

    /// Stop the process and wait until it is gone. The directory stays (for a restart).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop();
        }
    }

    /// An error if the process is not running, with the end of its log.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        let status = match &mut self.process {
            None => return Err(self.failure("is not running")),
            Some(process) => process.exit_status(),
        };
        match status {
            None => Ok(()),
            Some(status) => Err(self.failure(&format!("exited unexpectedly ({status})"))),
        }
    }

    /// One attempt to open an authenticated control connection.
    pub fn connect_control(&self, deadline: Instant) -> Result<ControlConn, HarnessError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.control_port));
        ControlConn::connect(addr, &self.dir.join("control_auth_cookie"), deadline)
            .map_err(|e| e.context(format!("control port of {}", self.name)))
    }

    /// Open a control connection, retrying while tor starts up (until `deadline`).
    pub fn wait_control(&mut self, deadline: Instant) -> Result<ControlConn, HarnessError> {
        loop {
            self.check_running()?;
            match self.connect_control(deadline) {
                Ok(conn) => return Ok(conn),
                Err(e) if Instant::now() >= deadline => {
                    return Err(
                        self.failure(&format!("timed out waiting for its control port ({e})"))
                    )
                }
                // Not listening yet, or the cookie file not written yet.
                Err(_) => thread::sleep(POLL_INTERVAL),
            }
        }
    }

    /// Wait until tor reports bootstrap progress 100 (`GETINFO status/bootstrap-phase`).
    pub fn wait_bootstrapped(&mut self, deadline: Instant) -> Result<(), HarnessError> {
        let mut conn = self.wait_control(deadline)?;
        loop {
            self.check_running()?;
            let phase = conn
                .getinfo("status/bootstrap-phase", deadline)
                .map_err(|e| self.failure(&e.to_string()))?;
            if phase.split_whitespace().any(|word| word == "PROGRESS=100") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "timed out waiting for bootstrap 100 (last: {phase})"
                )));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// The relay identity fingerprint tor wrote to `fingerprint` ("nickname HEX").
    pub fn fingerprint(&self) -> Result<String, HarnessError> {
        let path = self.dir.join("fingerprint");
        let text = read_file(&path)?;
        text.split_whitespace()
            .nth(1)
            .filter(|fp| fp.len() == 40 && fp.chars().all(|c| c.is_ascii_hexdigit()))
            .map(str::to_owned)
            .ok_or_else(|| {
                HarnessError::new(format!("no fingerprint in {}: {text:?}", path.display()))
            })
    }

    /// An error saying what went wrong with this node, followed by the end of its log.
    pub fn failure(&self, what: &str) -> HarnessError {
        HarnessError::new(format!(
            "tor node {} ({}): {what}\n--- last lines of its log ---\n{}",
            self.name,
            self.dir.display(),
            self.notice_log_tail()
        ))
    }

    /// The last lines of `notice.log`, or of `stdout.log` if tor never got to open its log.
    fn notice_log_tail(&self) -> String {
        ["notice.log", "stdout.log"]
            .into_iter()
            .map(|file| self.log_tail(file))
            .find(|tail| !tail.is_empty())
            .unwrap_or_else(|| "(no log output)".to_owned())
    }

    /// The last lines of one of its log files in its directory; empty if there is none.
    pub fn log_tail(&self, file: &str) -> String {
        let text = fs::read_to_string(self.dir.join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

/// Create a directory (and its parents) readable by its owner only.
pub fn create_private_dir(path: &Path) -> Result<(), HarnessError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o700)))
        .map_err(|e| HarnessError::new(format!("cannot create directory {}: {e}", path.display())))
}

pub fn write_file(path: &Path, text: &str) -> Result<(), HarnessError> {
    fs::write(path, text)
        .map_err(|e| HarnessError::new(format!("cannot write {}: {e}", path.display())))
}

pub fn read_file(path: &Path) -> Result<String, HarnessError> {
    fs::read_to_string(path)
        .map_err(|e| HarnessError::new(format!("cannot read {}: {e}", path.display())))
}
