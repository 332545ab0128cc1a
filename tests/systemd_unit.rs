//! The systemd integration: the unit file passes `systemd-analyze verify` (where systemd's
//! tools are installed), and a node started the way systemd starts it sends watchdog
//! keep-alives while its loops run, but no READY=1 before its Tor client has bootstrapped
//! (the READY=1 after bootstrap is checked by `e2e_bootstrap`).

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use support::balancer::{Balancer, LogWatcher};

const UNIT: &str = include_str!("../systemd/rustbalance.service");

#[test]
fn the_unit_is_hardened_and_passes_systemd_analyze_verify() {
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "User=rustbalance",
        "ConfigurationDirectory=rustbalance",
        "StateDirectory=rustbalance",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "LoadCredential=rustbalance-master-kek",
    ] {
        assert!(UNIT.contains(line), "the unit lacks {line:?}");
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("systemd-analyze is not installed here: verify skipped");
        return;
    }
    // verify checks that ExecStart= names an executable: point it at the binary just built.
    let dir = tempfile::tempdir().unwrap();
    let unit_path = dir.path().join("rustbalance.service");
    std::fs::write(
        &unit_path,
        UNIT.replace(
            "ExecStart=/usr/bin/rustbalance ",
            &format!("ExecStart={} ", env!("CARGO_BIN_EXE_rustbalance")),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit_path)
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {complaints}"
    );
    assert!(
        complaints.trim().is_empty(),
        "systemd-analyze verify: {complaints}"
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit_path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    if let Some(line) = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
    {
        eprintln!("measured: {line}");
    }
}

#[test]
fn keep_alives_flow_while_the_node_runs_and_ready_waits_for_tor() {
    let root = tempfile::tempdir().unwrap();
    let notify_path = root.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();

    let mut node = Balancer::new(root.path(), "node");
    // Tor cannot bootstrap: its only directory is a closed local port.
    node.init_tor_less();

    node.set_env("NOTIFY_SOCKET", notify_path.to_str().unwrap());
    // WatchdogSec=2s, as systemd announces it: keep-alives every second.
    node.set_env("WATCHDOG_USEC", "2000000");
    node.start(&["run"]);
    LogWatcher::new(node.log_path()).wait_for(
        "cluster transport listening",
        "",
        Duration::from_secs(30),
    );

    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        if let Ok(n) = systemd.recv(&mut buf) {
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let keep_alives = received.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(keep_alives >= 3, "too few keep-alives in 6 s: {received:?}");
    assert!(
        !received.iter().any(|m| m.contains("READY=1")),
        "READY=1 before Tor bootstrapped: {received:?}"
    );
    assert!(node.stop_cleanly());
    let mut stopping = false;
    while let Ok(n) = systemd.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1 on SIGTERM");
}
