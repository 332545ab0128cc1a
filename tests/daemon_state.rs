//! The daemon's state file and configuration reload, as real processes on 127.0.0.1 without
//! Tor: state.json is always whole however the daemon is killed, SIGHUP applies a good
//! config and refuses a bad one, keeping the running one, a node set up by hand (a
//! config.toml and a master key, as for Onionbalance) runs, and the log stays readable without
//! a network (and under journald).

mod support;

use std::fs;
use std::time::Duration;

use rustbalance::storage::state::{SavedState, STATE_FILE};
use support::balancer::{Balancer, LogWatcher, NOWHERE_ARTI};

const BACKEND: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";
const SETTLE: Duration = Duration::from_secs(30);

fn tor_less_node(root: &std::path::Path) -> Balancer {
    let node = Balancer::new(root, "node");
    node.init_tor_less();
    node
}

#[test]
fn the_state_file_is_always_whole_whenever_the_daemon_is_killed() {
    let root = tempfile::tempdir().unwrap();
    let mut node = tor_less_node(root.path());
    let state_path = root.path().join("node/state").join(STATE_FILE);
    let mut seen_whole = 0;
    for round in 0..30u64 {
        node.start(&["run"]);
        // Kill at scattered moments of the start-up, when the file is first written.
        std::thread::sleep(Duration::from_millis(20 + (round * 37) % 400));
        node.kill_hard();
        if let Ok(bytes) = fs::read(&state_path) {
            let state: SavedState = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                panic!(
                    "round {round}: state.json is not whole ({err}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            });
            assert_eq!(state.version, 1);
            seen_whole += 1;
        }
    }
    assert!(
        seen_whole > 10,
        "the daemon rarely wrote state.json: {seen_whole} of 30"
    );
    // A clean run removes what killed writes left behind, and writes the file once more.
    node.start(&["run"]);
    LogWatcher::new(node.log_path()).wait_for("cluster transport listening", "", SETTLE);
    std::thread::sleep(Duration::from_secs(2));
    assert!(node.stop_cleanly());
    let leftovers: Vec<_> = fs::read_dir(state_path.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn sighup_applies_a_good_config_and_refuses_a_bad_one() {
    let root = tempfile::tempdir().unwrap();
    let mut node = tor_less_node(root.path());
    node.start(&["run"]);
    let mut log = LogWatcher::new(node.log_path());
    log.wait_for("cluster transport listening", "", SETTLE);
    let backends = |node: &Balancer| {
        node.status().expect("status")["backends"]
            .as_array()
            .unwrap()
            .len()
    };
    assert_eq!(backends(&node), 0);

    let config_path = node.config_dir().join("config.toml");
    let good = fs::read_to_string(&config_path).unwrap();
    let with_backend = format!("{good}\n[[backends]]\nname = \"web1\"\naddress = \"{BACKEND}\"\n");
    fs::write(&config_path, &with_backend).unwrap();
    node.reload();
    log.wait_for("configuration reloaded", "", SETTLE);
    assert_eq!(backends(&node), 1);

    fs::write(
        &config_path,
        format!("{with_backend}\n[timing]\nheartbeat_interval_secs = 0\n"),
    )
    .unwrap();
    node.reload();
    let line = log.wait_for("configuration not reloaded", "", SETTLE);
    assert!(line.contains("config.toml"), "{line}");
    assert_eq!(backends(&node), 1, "the running configuration changed");
    let text = fs::read_to_string(node.log_path()).unwrap();
    assert!(!text.contains("panicked"), "{text}");
    assert!(node.stop_cleanly());
}

#[test]
fn a_node_written_by_hand_runs_and_creates_its_cluster_files() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let mut node = Balancer::new(root.path(), "node");
    let dir = node.config_dir().to_owned();
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    fs::copy("tests/data/onionbalance_master_key.pem", dir.join("ob.pem")).unwrap();
    fs::set_permissions(dir.join("ob.pem"), fs::Permissions::from_mode(0o600)).unwrap();
    let listen = support::balancer::free_udp_port();
    fs::write(
        dir.join("config.toml"),
        format!(
            "[node]\nid = \"by-hand\"\npriority = 1\nmaster_key = \"ob.pem\"\n\n[cluster]\nlisten = \"127.0.0.1:{listen}\"\nendpoint = \"127.0.0.1:{listen}\"\n\n[[backends]]\nname = \"web1\"\naddress = \"{BACKEND}\"\n{NOWHERE_ARTI}"
        ),
    )
    .unwrap();
    node.start(&["run"]);
    let mut log = LogWatcher::new(node.log_path());
    log.wait_for("no cluster files", "created cluster.key", SETTLE);
    log.wait_for("cluster transport listening", "", SETTLE);
    let status = node.status().expect("status");
    assert_eq!(status["node_id"], "by-hand", "{status:#}");
    assert_eq!(
        status["master_address"],
        "75w6bo2hfqkeyltppkrnaxrmo542ty5evcuuxkideukynzfqa32mu6ad.onion"
    );
    for file in ["cluster.key", "wg_private.key"] {
        let mode = fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let secret = fs::read(dir.join("cluster.key")).unwrap();
    // Others can join it now: a token is printed from these files.
    let token = node.run(&["token"]);
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    assert!(node.stop_cleanly());

    // Created once: a restart keeps them.
    node.start(&["run"]);
    log.wait_for("cluster transport listening", "", SETTLE);
    assert!(node.stop_cleanly());
    assert_eq!(fs::read(dir.join("cluster.key")).unwrap(), secret);
    let text = fs::read_to_string(node.log_path()).unwrap();
    assert_eq!(text.matches("no cluster files").count(), 1, "{text}");
}

#[test]
fn prometheus_metrics_are_served_on_the_configured_loopback_port() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let mut node = Balancer::new(root.path(), "node");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    node.init_local(
        &[],
        &format!(
            "\n[status]\nmetrics_listen = \"127.0.0.1:{port}\"\n{}",
            support::balancer::NOWHERE_ARTI
        ),
    );
    node.start(&["run"]);
    LogWatcher::new(node.log_path()).wait_for("Prometheus metrics on", "", SETTLE);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.0 200 OK"), "{response}");
    // Without Tor: no publisher, not bootstrapped, unhealthy.
    assert!(
        response.contains("\nrustbalance_tor_bootstrapped{node=\""),
        "{response}"
    );
    assert!(
        response.contains("rustbalance_healthy{node=\""),
        "{response}"
    );
    assert!(
        response
            .lines()
            .any(|l| l.starts_with("rustbalance_healthy{") && l.ends_with(" 0")),
        "{response}"
    );
    assert!(node.stop_cleanly());
}

/// Without a network Arti retries every second; the log stays readable: 30 s of `run` give at
/// most 25 lines, none longer than 300 characters. Under journald (stderr is the stream
/// `JOURNAL_STREAM` names) each line starts with its priority and carries no timestamp.
#[test]
fn without_a_network_the_log_stays_short_and_readable() {
    use std::os::unix::fs::MetadataExt;
    let root = tempfile::tempdir().unwrap();
    let mut node = Balancer::new(root.path(), "node");
    node.init_local(&["--backend", &format!("web1={BACKEND}")], NOWHERE_ARTI);
    node.start(&["run"]);
    std::thread::sleep(Duration::from_secs(30));
    // What the log says of the bootstrap, status says too.
    let status = node.status().expect("status");
    assert_eq!(status["tor"]["bootstrapped"], false, "{status:#}");
    assert!(status["tor"]["bootstrap_percent"].is_u64(), "{status:#}");
    let log = fs::read_to_string(node.log_path()).unwrap();
    assert!(node.stop_cleanly());
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() <= 25, "{} lines in 30 s:\n{log}", lines.len());
    for line in &lines {
        assert!(
            line.chars().count() <= 300,
            "a line of {} characters: {line}",
            line.chars().count()
        );
    }
    assert!(
        log.contains("Z  INFO rustbalance::daemon: starting as master"),
        "{log}"
    );

    fs::remove_file(node.log_path()).unwrap();
    fs::write(node.log_path(), "").unwrap();
    let stream = fs::metadata(node.log_path()).unwrap();
    node.set_env(
        "JOURNAL_STREAM",
        &format!("{}:{}", stream.dev(), stream.ino()),
    );
    node.start(&["run"]);
    let line = LogWatcher::new(node.log_path()).wait_for("starting as master", "", SETTLE);
    assert!(
        line.starts_with("<6> INFO rustbalance::daemon: starting as master"),
        "{line}"
    );
    assert!(node.stop_cleanly());
}

#[test]
fn doctor_names_what_is_wrong_with_a_node_in_plain_words() {
    let root = tempfile::tempdir().unwrap();
    let mut node = Balancer::new(root.path(), "node");
    node.init_local(&["--backend", &format!("web1={BACKEND}")], NOWHERE_ARTI);
    let doctor = |node: &Balancer| {
        let output = node.run(&["doctor"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.code(), text)
    };
    let expect = |text: &str, lines: &[&str]| {
        for line in lines {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "no line starting {line:?}:\n{text}"
            );
        }
    };

    // Stopped: its files are fine, the daemon is not there to ask.
    let (code, text) = doctor(&node);
    assert_eq!(code, Some(1), "{text}");
    expect(
        &text,
        &[
            "ok    config ",
            "ok    keys                   the master key opens (master ",
            "ok    key-encryption key     found at ",
            "FAIL  daemon                 no rustbalance daemon answers",
        ],
    );

    // Running without a network: Tor is the problem, the backend is not checked yet.
    node.start(&["run"]);
    LogWatcher::new(node.log_path()).wait_for("cluster transport listening", "", SETTLE);
    let (code, text) = doctor(&node);
    assert_eq!(code, Some(1), "{text}");
    expect(
        &text,
        &[
            "FAIL  tor                    not bootstrapped (",
            "WARN  hsdirs                 the master descriptor was not read back yet",
            "WARN  backend web1           not checked yet",
        ],
    );
    assert!(!text.contains("FAIL  daemon"), "{text}");
    assert!(node.stop_cleanly());

    // Another key-encryption key than the master key was sealed with: said, naming the file.
    let kek_path = node.credstore_dir().join("rustbalance-master-kek");
    let kek = fs::read_to_string(&kek_path).unwrap();
    let other = if kek.starts_with('A') { "B" } else { "A" };
    fs::write(&kek_path, format!("{other}{}", &kek[1..])).unwrap();
    let (code, text) = doctor(&node);
    assert_eq!(code, Some(1), "{text}");
    expect(&text, &["FAIL  keys "]);
    assert!(text.contains("master.key"), "{text}");
    fs::write(&kek_path, kek).unwrap();

    // A broken config.toml: the line names the file and what is wrong.
    let config_path = node.config_dir().join("config.toml");
    let good = fs::read_to_string(&config_path).unwrap();
    fs::write(
        &config_path,
        good.replace("[node]", "[node]\npriority = \"high\""),
    )
    .unwrap();
    let (code, text) = doctor(&node);
    assert_eq!(code, Some(1), "{text}");
    expect(&text, &["FAIL  config "]);
    assert!(text.contains("priority"), "{text}");
}
