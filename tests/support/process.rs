//! A child process that cannot outlive the code that started it.
//!
//! A test that fails half-way must not leave a dozen tor daemons behind: they would hold ports,
//! burn CPU and confuse the next run. [`ProcessGuard`] owns a [`Child`] and stops it when dropped,
//! which also happens while a panicking test unwinds. Stopping is polite first (SIGTERM, which
//! makes tor exit at once, even a relay), then forceful (SIGKILL), and the child is always reaped
//! so no zombie is left.
//!
//! The guard signals by PID only while the child is unreaped, so the PID cannot have been
//! recycled for another process. If the test process itself is killed hard, no destructor runs;
//! tor covers that case through `__OwningControllerProcess` (see `torrc`).

use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::HarnessError;

/// How long a process gets to exit after SIGTERM before it is killed.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How often to check whether a stopping process has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

const SIGTERM: i32 = 15;

// std offers SIGKILL only (`Child::kill`); SIGTERM needs the C library's kill(2), which std
// links anyway, so no extra crate is needed for one function.
extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Owns a running child process and stops it on drop.
pub struct ProcessGuard {
    name: String,
    child: Child,
    /// Set once the child has been reaped; from then on its PID must not be signalled.
    exited: Option<ExitStatus>,
}

impl ProcessGuard {
    /// Start `command` under a guard; `name` appears in messages about this process.
    pub fn spawn(
        name: impl Into<String>,
        command: &mut Command,
    ) -> Result<ProcessGuard, HarnessError> {
        let name = name.into();
        let child = command
            .spawn()
            .map_err(|e| HarnessError::new(format!("cannot start {name} ({command:?}): {e}")))?;
        Ok(ProcessGuard {
            name,
            child,
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            // An error here means the child was already reaped elsewhere, which cannot happen
            // since we own it; treat it as "still running" and let `stop` kill it.
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
            }
        }
        self.exited
    }

    /// Send SIGTERM without waiting, so that many processes can shut down in parallel before
    /// each one is stopped (and waited for) in turn.
    pub fn terminate(&mut self) {
        if self.exit_status().is_none() {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                // SAFETY: kill(2) takes plain integers; `pid` is our own unreaped child.
                unsafe {
                    kill(pid, SIGTERM);
                }
            }
        }
    }

    /// SIGKILL now (a crash, as far as the process can tell), and reap it.
    pub fn kill_hard(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while self.exit_status().is_none() && Instant::now() < deadline {
            thread::sleep(EXIT_POLL);
        }
        self.exited
    }

    /// Stop the process: SIGTERM, up to [`TERM_GRACE`] to exit, then SIGKILL; always reaped.
    pub fn stop(&mut self) {
        self.terminate();
        let deadline = Instant::now() + TERM_GRACE;
        while self.exit_status().is_none() && Instant::now() < deadline {
            thread::sleep(EXIT_POLL);
        }
        if self.exited.is_none() {
            // Both calls can only fail if the child is already gone, which is what we want.
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exited = Some(status);
            }
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}
