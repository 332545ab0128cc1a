//! Cutting one process off the Tor network while everything else keeps working.
//!
//! The private Tor network and the cluster both live on 127.0.0.1, so an address rule cannot
//! single out one node. A node started inside a [`NodeCgroup`] (cgroup v2) of its own can be
//! cut with [`NodeCgroup::cut_tcp`]: every TCP packet its sockets send is dropped (`iptables -m
//! cgroup --path`), so its Tor client's connections to the relays stall as behind a broken
//! firewall, while its cluster traffic (UDP) flows on. A socket belongs to the cgroup of the
//! process that created it, which is why the node must start inside the cgroup: moving a running
//! process would leave its open connections untouched. The rules live in the test's own network
//! namespace (the suite runs under `unshare -n`), and the guards remove them and the cgroup when
//! dropped, also on panic.
//!
//! [`UdpPortCut`] does the opposite for a partition: every UDP datagram to or from one node's
//! cluster port is dropped, while its Tor (TCP) keeps working.

use std::fs;
use std::path::PathBuf;
use std::process::Command;

use super::HarnessError;

/// A cgroup for one node, to start it in.
pub struct NodeCgroup {
    dir: PathBuf,
    /// Its path relative to the cgroup v2 root, as iptables names it.
    name: String,
}

impl NodeCgroup {
    /// A new, empty cgroup named after `node` and this test process. Needs root and cgroup v2.
    pub fn create(node: &str) -> Result<NodeCgroup, HarnessError> {
        let name = format!("rb-test-{}-{node}", std::process::id());
        let dir = cgroup2_root()?.join(&name);
        fs::create_dir_all(&dir).map_err(|e| {
            HarnessError::new(format!("cannot create cgroup {}: {e}", dir.display()))
        })?;
        Ok(NodeCgroup { dir, name })
    }

    /// The file a process writes `0` to in order to enter the cgroup.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// Drops every TCP packet sent from sockets created in the cgroup, until the returned
    /// guard is dropped. Needs iptables with its `cgroup` match.
    pub fn cut_tcp(&self) -> Result<TcpCut, HarnessError> {
        let rule = TcpCut {
            name: self.name.clone(),
        };
        iptables(&rule.args("-I"))?;
        Ok(rule)
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        // A process still inside goes back to the parent, so the cgroup can be removed.
        if let (Ok(procs), Some(parent)) =
            (fs::read_to_string(self.procs_file()), self.dir.parent())
        {
            for pid in procs.lines() {
                let _ = fs::write(parent.join("cgroup.procs"), pid);
            }
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

/// One cgroup's TCP cut off; restored when dropped.
pub struct TcpCut {
    name: String,
}

impl TcpCut {
    fn args<'a>(&'a self, action: &'a str) -> [&'a str; 10] {
        [
            action, "OUTPUT", "-p", "tcp", "-m", "cgroup", "--path", &self.name, "-j", "DROP",
        ]
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        if let Err(err) = iptables(&self.args("-D")) {
            eprintln!("firewall: {err}");
        }
    }
}

/// One node's cluster port cut off from every other: a partition of the cluster, Tor intact.
/// Restored when dropped.
pub struct UdpPortCut {
    port: String,
}

impl UdpPortCut {
    /// Drops every UDP datagram to or from `port` on 127.0.0.1.
    pub fn start(port: u16) -> Result<UdpPortCut, HarnessError> {
        let cut = UdpPortCut {
            port: port.to_string(),
        };
        for direction in ["--dport", "--sport"] {
            iptables(&cut.args("-I", direction))?;
        }
        Ok(cut)
    }

    fn args<'a>(&'a self, action: &'a str, direction: &'a str) -> [&'a str; 8] {
        [
            action, "INPUT", "-p", "udp", direction, &self.port, "-j", "DROP",
        ]
    }
}

impl Drop for UdpPortCut {
    fn drop(&mut self) {
        for direction in ["--dport", "--sport"] {
            if let Err(err) = iptables(&self.args("-D", direction)) {
                eprintln!("firewall: {err}");
            }
        }
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
