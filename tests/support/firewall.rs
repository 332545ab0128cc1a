//! Cutting one process off the Tor network while everything else keeps working.
//!
//! The private Tor network and the cluster both live on 127.0.0.1, so an address rule cannot
//! single out one node. [`TcpCut`] moves the node's process into a cgroup (v2) of its own and
//! drops every TCP packet it sends (`iptables -m cgroup --path`): its Tor client's connections
//! to the relays stall, as behind a broken firewall, while its cluster traffic (UDP) flows on.
//! The rule lives in the test's own network namespace (the suite runs under `unshare -n`),
//! and dropping the guard removes it and the cgroup, also on panic.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::HarnessError;

/// One process's TCP cut off; restored when dropped.
pub struct TcpCut {
    pid: u32,
    cgroup: PathBuf,
    name: String,
}

impl TcpCut {
    /// Cuts every TCP packet process `pid` sends. Needs root, cgroup v2 and iptables'
    /// `cgroup` match; says which is missing otherwise.
    pub fn start(pid: u32) -> Result<TcpCut, HarnessError> {
        let root = cgroup2_root()?;
        let name = format!("rb-tcp-cut-{pid}");
        let cgroup = root.join(&name);
        fs::create_dir_all(&cgroup).map_err(|e| {
            HarnessError::new(format!("cannot create cgroup {}: {e}", cgroup.display()))
        })?;
        let cut = TcpCut { pid, cgroup, name };
        fs::write(cut.cgroup.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            HarnessError::new(format!("cannot move process {pid} into {}: {e}", cut.name))
        })?;
        iptables(&[
            "-I", "OUTPUT", "-p", "tcp", "-m", "cgroup", "--path", &cut.name, "-j", "DROP",
        ])?;
        Ok(cut)
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        let rule = [
            "-D", "OUTPUT", "-p", "tcp", "-m", "cgroup", "--path", &self.name, "-j", "DROP",
        ];
        if let Err(err) = iptables(&rule) {
            eprintln!("firewall: {err}");
        }
        // Back to the root cgroup, so the empty one can be removed (the process may be gone).
        if let Some(root) = self.cgroup.parent() {
            let _ = fs::write(root.join("cgroup.procs"), self.pid.to_string());
        }
        let _ = fs::remove_dir(&self.cgroup);
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid system).
fn cgroup2_root() -> Result<PathBuf, HarnessError> {
    let mounts = fs::read_to_string("/proc/mounts")
        .map_err(|e| HarnessError::new(format!("cannot read /proc/mounts: {e}")))?;
    mounts
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.get(2) == Some(&"cgroup2"))
        .and_then(|fields| fields.get(1).map(PathBuf::from))
        .ok_or_else(|| HarnessError::new("no cgroup v2 hierarchy is mounted".to_owned()))
}

fn iptables(args: &[&str]) -> Result<(), HarnessError> {
    let output = Command::new("iptables")
        .args(args)
        .output()
        .map_err(|e| HarnessError::new(format!("cannot run iptables: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(HarnessError::new(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
