//! Several nodes as real processes on 127.0.0.1, without Tor: `init`, `join` with the real
//! token (as an argument, from a file and on standard input) over real UDP and WireGuard, the new member announced to the others, `status` from
//! every node, and bad input (tampered tokens, a wrong cluster secret, a dead origin, garbage
//! datagrams) refused with a clear error and nothing changed.
//!
//! No Tor network runs here, so Arti cannot bootstrap and no node can publish: the cluster
//! layer must work regardless (election with Tor is covered by `e2e_cluster`). Arti is pointed
//! at a closed local port, never at the public network.

mod support;

use std::fs;
use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use rustbalance::cluster::secret::ClusterSecret;
use rustbalance::cluster::token::JoinToken;
use support::balancer::{free_udp_port, join_args, Balancer, LogWatcher, NOWHERE_ARTI};
use support::impostor::Impostor;

const BACKEND: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid.onion";
const SETTLE: Duration = Duration::from_secs(30);

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The token line `init` printed.
fn token_from(init_output: &str) -> String {
    init_output
        .lines()
        .find(|line| line.starts_with("rb1:"))
        .expect("init prints a token")
        .to_owned()
}

/// Every file below `dir` with its contents, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.display().to_string(), fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

/// A token for the same origin under a different cluster secret (what someone who guessed
/// the address but not the secret could make), or pointing at another endpoint.
fn forged_token(real: &str, secret: ClusterSecret, endpoint: Option<String>) -> String {
    let mut token = JoinToken::decode(real).unwrap();
    token.cluster_secret = secret;
    if let Some(endpoint) = endpoint {
        token.origin.wg_endpoint = endpoint.parse().unwrap();
    }
    token.encode(&mut rand::rng())
}

/// `join --no-start` at 127.0.0.1:`port`, waiting at most `timeout` seconds.
fn join_no_start(node: &Balancer, port: u16, token: &str, timeout: &str) -> std::process::Output {
    let mut args = join_args(token, port);
    args.extend(["--timeout", timeout, "--no-start"].map(str::to_owned));
    node.run(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `init` of the first node at `endpoint` (with `extra` arguments), its config given short
/// timers and no reachable Tor, then started. Returns what `init` printed and a watcher of
/// its log, once its cluster transport listens.
fn start_first_node(a: &mut Balancer, endpoint: &str, extra: &[&str]) -> (String, LogWatcher) {
    let printed = a.init_first_node_with(endpoint, extra);
    let config_path = a.config_dir().join("config.toml");
    let mut config = fs::read_to_string(&config_path).unwrap();
    config.push_str("\n[timing]\nheartbeat_interval_secs = 1\npublisher_timeout_secs = 3\ntakeover_grace_secs = 3\n");
    config.push_str(NOWHERE_ARTI);
    fs::write(&config_path, config).unwrap();
    a.start(&["run"]);
    let mut log = LogWatcher::new(a.log_path());
    log.wait_for("cluster transport listening", "", SETTLE);
    (printed, log)
}

#[test]
fn nodes_join_with_the_token_learn_each_other_and_refuse_bad_input() {
    let root = tempfile::tempdir().unwrap();
    let (port_a, port_b, port_c) = (free_udp_port(), free_udp_port(), free_udp_port());
    let endpoint = |port: u16| format!("127.0.0.1:{port}");

    // The first node.
    let mut a = Balancer::new(root.path(), "a");
    let backend = format!("web1={BACKEND}");
    let (printed, mut a_log) =
        start_first_node(&mut a, &endpoint(port_a), &["--backend", &backend]);
    let token = token_from(&printed);
    for option in ["rustbalance join", "--token-file", "--endpoint"] {
        assert!(
            printed.contains(option),
            "the join line lacks {option}:\n{printed}"
        );
    }

    // Bad tokens: refused at once, exit 2, nothing written.
    let mut b = Balancer::new(root.path(), "b");
    let mut tampered = token.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (bad, expected) in [
        (
            format!("rb2:{}", &token[4..]),
            "not a RustBalance join token",
        ),
        (token[..token.len() - 10].to_owned(), "damaged"),
        (tampered, "join token"),
    ] {
        let output = join_no_start(&b, port_b, &bad, "5");
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
        assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
        assert!(!b.config_dir().exists(), "a refused token wrote files");
    }

    // A request under the wrong cluster secret gets no answer; a dead origin neither.
    let a_files = snapshot(a.config_dir());
    let wrong_secret = forged_token(&token, ClusterSecret::generate(), None);
    let output = join_no_start(&b, port_b, &wrong_secret, "3");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("no answer"), "{}", stderr(&output));
    assert!(stderr(&output).contains("nothing was changed"));
    assert!(!b.config_dir().exists());
    a_log.wait_for("join request", "", SETTLE);

    let real = JoinToken::decode(&token).unwrap();
    let dead_origin = forged_token(&token, real.cluster_secret, Some(endpoint(free_udp_port())));
    let output = join_no_start(&b, port_b, &dead_origin, "2");
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("no answer"), "{}", stderr(&output));
    assert!(!b.config_dir().exists());

    // Garbage at the origin's port is logged and changes nothing.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in [
        &b"garbage"[..],
        &[1, 0, 0, 0, 9, 9][..],
        &[
            4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
        ][..],
        &b"J{\"node_id\":\"x\"}"[..],
        &[][..],
    ] {
        probe.send_to(datagram, ("127.0.0.1", port_a)).unwrap();
    }
    a_log.wait_for("WARN", "", SETTLE);
    assert_eq!(
        snapshot(a.config_dir()),
        a_files,
        "bad input changed the origin's files"
    );

    // A token file that is missing, or not a token, or a token given twice: one-line errors.
    let missing = root.path().join("no-such-token");
    let output = b.run(&[
        "join",
        "--token-file",
        missing.to_str().unwrap(),
        "--endpoint",
        &endpoint(port_b),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no-such-token"),
        "{}",
        stderr(&output)
    );
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    let output = b.run_with_stdin(
        &["join", "--token-file", "-", "--endpoint", &endpoint(port_b)],
        "hello\n",
    );
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    let output = b.run(&[
        "join",
        &token,
        "--token-file",
        "-",
        "--endpoint",
        &endpoint(port_b),
    ]);
    assert_eq!(
        output.status.code(),
        Some(2),
        "both a token and a token file were taken"
    );
    assert!(!b.config_dir().exists());

    // The real token, on standard input: B joins and gets priority 2 and the cluster's
    // configuration.
    let b_endpoint = endpoint(port_b);
    let output = b.run_with_stdin(
        &[
            "join",
            "--token-file",
            "-",
            "--endpoint",
            &b_endpoint,
            "--listen",
            &b_endpoint,
            "--timeout",
            "20",
            "--no-start",
        ],
        &format!("{token}\n"),
    );
    assert!(output.status.success(), "join: {}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("priority:     2"), "{out}");
    assert!(out.contains("cluster size: 2 nodes"), "{out}");
    let b_config = fs::read_to_string(b.config_dir().join("config.toml")).unwrap();
    assert!(b_config.contains(BACKEND), "{b_config}");
    assert!(b_config.contains("takeover_grace_secs = 3"), "{b_config}");
    assert!(b_config.contains("127.0.0.1:9"), "{b_config}");
    b.start(&["run"]);

    // Joining again with the same node changes nothing.
    let b_files = snapshot(b.config_dir());
    let again = join_no_start(&b, port_b, &token, "20");
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("already belongs"),
        "{}",
        stdout(&again)
    );
    assert_eq!(snapshot(b.config_dir()), b_files);

    // C joins from a token file and runs straight away; A tells B about it. The token is
    // not on C's command line, so no other user of the machine can read it there.
    let mut c = Balancer::new(root.path(), "c");
    let token_file = root.path().join("c-token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    c.start(&[
        "join",
        "--token-file",
        token_file.to_str().unwrap(),
        "--endpoint",
        &endpoint(port_c),
        "--listen",
        &endpoint(port_c),
    ]);
    let mut c_log = LogWatcher::new(c.log_path());
    c_log.wait_for("priority:     3", "", SETTLE);
    c_log.wait_for("cluster size: 3 nodes", "", SETTLE);
    let cmdline = fs::read(format!("/proc/{}/cmdline", c.pid())).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains("rb1:"),
        "the token is on the running node's command line"
    );

    let live_peers = |status: &serde_json::Value| {
        status["peers"]
            .as_array()
            .map(|peers| peers.iter().filter(|p| p["live"] == true).count())
            .unwrap_or(0)
    };
    for node in [&a, &b, &c] {
        let status = node.wait_status("two live peers", SETTLE, |s| live_peers(s) == 2);
        // Without Tor nobody can publish: the node says so and is unhealthy.
        assert_eq!(status["tor"]["bootstrapped"], false);
        assert_eq!(status["publisher"], serde_json::Value::Null);
    }
    let b_peers = fs::read_dir(b.config_dir().join("peers")).unwrap().count();
    assert_eq!(b_peers, 2, "B saved A and the announced C");
    let a_status = a.status().unwrap();
    let priorities: Vec<u64> = a_status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["priority"].as_u64().unwrap())
        .collect();
    assert_eq!(priorities, [2, 3]);

    // The table for people, and the exit status for monitoring.
    let table = a.run(&["status"]);
    assert_eq!(table.status.code(), Some(1), "no publisher: unhealthy");
    let text = stdout(&table);
    assert!(
        text.contains("UNHEALTHY: no publisher in the cluster"),
        "{text}"
    );
    assert!(text.contains("priority 2"), "{text}");

    for node in [&mut c, &mut b, &mut a] {
        assert!(node.stop_cleanly(), "a node did not stop cleanly");
    }
    let gone = a.run(&["status"]);
    assert_eq!(gone.status.code(), Some(3), "{}", stderr(&gone));
    assert!(stderr(&gone).contains("no rustbalance daemon answers"));
}

/// A holder of the cluster secret (an old token) joins under id `0`, then announces itself with
/// priority 1 as a publisher that can publish: membership is the source of truth, so its
/// messages are refused (logged once) and nobody follows it. A second stranger joining under
/// the same id with another key is not admitted.
#[test]
fn an_impostor_with_the_cluster_secret_cannot_make_itself_publisher() {
    let root = tempfile::tempdir().unwrap();
    let port_a = free_udp_port();
    let endpoint_a = format!("127.0.0.1:{port_a}");
    let mut a = Balancer::new(root.path(), "a");
    let (printed, mut a_log) = start_first_node(&mut a, &endpoint_a, &[]);
    let token = JoinToken::decode(&token_from(&printed)).unwrap();
    let origin_addr = endpoint_a.parse().unwrap();

    // Admitted under id 0, with the next free priority; then it lies about its priority.
    let (impostor, accept) = Impostor::join("0", &token, origin_addr);
    let accept = accept.expect("a holder of the cluster secret is admitted");
    assert_eq!(accept.assigned_priority.to_string(), "2");
    impostor.claim_first_priority(5);
    a_log.wait_for(
        "from 0: 0 claims priority 1",
        "admitted with priority 2",
        SETTLE,
    );
    let status = a.status().unwrap();
    assert_eq!(status["publisher"], serde_json::Value::Null, "{status:#}");
    let log = fs::read_to_string(a.log_path()).unwrap();
    assert_eq!(
        log.matches("0 claims priority 1").count(),
        1,
        "ten lies, logged once:\n{log}"
    );

    // Another stranger under the same id, with its own key: not admitted.
    let (_second, refused) = Impostor::join("0", &token, origin_addr);
    assert!(
        refused.is_err(),
        "a second node was admitted under a member's id"
    );
    a_log.wait_for(
        "refused the join request of 0",
        "another WireGuard key",
        SETTLE,
    );
    drop(impostor);
    assert!(a.stop_cleanly(), "a did not stop cleanly");
}

/// Four nodes join through the first at the same moment and the first is killed as soon as it
/// has recorded their joins: none of them was in the others' accepts, and the first can no
/// longer repeat its member list, so they must have learnt each other from the lists sent as
/// each join completed (the scale test found them strangers for a minute, each seeing no one
/// better and claiming the lease).
#[test]
fn nodes_joining_at_once_learn_each_other_though_the_first_dies() {
    let root = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..5).map(|_| free_udp_port()).collect();
    let endpoint = |port: u16| format!("127.0.0.1:{port}");
    let mut a = Balancer::new(root.path(), "a");
    let (printed, _a_log) = start_first_node(&mut a, &endpoint(ports[0]), &[]);
    let token = token_from(&printed);

    let mut joiners: Vec<Balancer> = (1..ports.len())
        .map(|i| Balancer::new(root.path(), &format!("n{i}")))
        .collect();
    for (node, &port) in joiners.iter_mut().zip(&ports[1..]) {
        node.start_joining(&token, port);
    }
    let ids: Vec<serde_json::Value> = joiners
        .iter()
        .map(|node| node.wait_status("running after its join", SETTLE, |_| true)["node_id"].clone())
        .collect();
    // Killed a second after it recorded every join, its announcements delivered (a join the
    // admitting node records but dies before announcing stays unknown to the others until it
    // returns: nothing else can vouch for the newcomer's priority).
    let deadline = std::time::Instant::now() + SETTLE;
    while fs::read_to_string(a.log_path())
        .unwrap_or_default()
        .matches("joined the cluster with priority")
        .count()
        < joiners.len()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a did not record the four joins"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    a.kill_hard();

    // Well within the minute after which the lists are repeated anyway.
    let learnt = Duration::from_secs(15);
    for (node, me) in joiners.iter().zip(&ids) {
        node.wait_status("every other joiner live", learnt, |status| {
            let live: Vec<&serde_json::Value> = status["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|peer| peer["live"] == true)
                .map(|peer| &peer["node_id"])
                .collect();
            ids.iter()
                .filter(|id| *id != me)
                .all(|id| live.contains(&id))
        });
    }
    for node in &mut joiners {
        assert!(node.stop_cleanly());
    }
}

/// The shared configuration and the membership are changed on any member, and every member
/// follows: `backend add` on a standby reaches the others (one of them stopped during the
/// change catches up when it returns), a hand edit plus SIGHUP is a new version too, an edit
/// that cannot be made is refused where it was made, and `remove` takes a member out
/// everywhere; the removed node is told, stops and refuses to start again.
#[test]
fn shared_configuration_and_membership_change_from_any_member() {
    const SECOND_BACKEND: &str = "pg6mmjiyjmcrsslvykfwnntlaru7p5svn6y2ymmju6nubxndf4pscryd.onion";
    let root = tempfile::tempdir().unwrap();
    let (port_a, port_b, port_c) = (free_udp_port(), free_udp_port(), free_udp_port());
    let endpoint = |port: u16| format!("127.0.0.1:{port}");
    let mut a = Balancer::new(root.path(), "a");
    let backend = format!("web1={BACKEND}");
    let (printed, _a_log) = start_first_node(&mut a, &endpoint(port_a), &["--backend", &backend]);
    let token = token_from(&printed);
    let mut b = Balancer::new(root.path(), "b");
    let mut c = Balancer::new(root.path(), "c");
    for (node, port) in [(&mut b, port_b), (&mut c, port_c)] {
        let joined = join_no_start(node, port, &token, "10");
        assert!(joined.status.success(), "join: {}", stderr(&joined));
        node.start(&["run"]);
    }
    let version_of = |status: &serde_json::Value| status["config_version"].clone();
    let a_version = version_of(&a.wait_status("a up", SETTLE, |s| {
        s["peers"].as_array().is_some_and(|p| p.len() == 2)
    }));
    let all_live = |s: &serde_json::Value| {
        s["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["live"] == true))
    };
    for node in [&b, &c] {
        let status = node.wait_status("every member live", SETTLE, all_live);
        assert_eq!(
            version_of(&status),
            a_version,
            "a joined node runs the cluster's version"
        );
    }
    let c_id = c.status().unwrap()["node_id"].as_str().unwrap().to_owned();

    // c is down while a standby adds a backend.
    assert!(c.stop_cleanly(), "c did not stop cleanly");
    let added = b.run(&["backend", "add", "web2", SECOND_BACKEND]);
    assert!(added.status.success(), "backend add: {}", stderr(&added));
    assert!(
        stdout(&added).contains("sent to 2 member(s)"),
        "{}",
        stdout(&added)
    );
    let new_version = version_of(&b.status().unwrap());
    assert_ne!(new_version, a_version);
    assert_eq!(new_version["by"], b.status().unwrap()["node_id"]);
    let has_web2 = |s: &serde_json::Value| {
        s["backends"]
            .as_array()
            .is_some_and(|list| list.iter().any(|backend| backend["name"] == "web2"))
    };
    let a_status = a.wait_status("a on b's version", SETTLE, |s| {
        version_of(s) == new_version && has_web2(s)
    });
    assert_eq!(a_status["node_id"], serde_json::json!(a_status["node_id"]));
    let a_config = fs::read_to_string(a.config_dir().join("config.toml")).unwrap();
    assert!(a_config.contains(SECOND_BACKEND), "{a_config}");
    assert!(
        a_config.contains(&format!("listen = \"{}\"", endpoint(port_a))),
        "a keeps its own [cluster] table:\n{a_config}"
    );

    // c returns and catches up from its peers' heartbeats.
    c.start(&["run"]);
    c.wait_status("c caught up", SETTLE, |s| {
        version_of(s) == new_version && has_web2(s)
    });
    let c_config = fs::read_to_string(c.config_dir().join("config.toml")).unwrap();
    assert!(c_config.contains(SECOND_BACKEND), "{c_config}");
    assert!(c_config.contains(&format!("id = \"{c_id}\"")), "{c_config}");

    // An edit that cannot be made is refused on the node where it was made, and goes nowhere.
    for (args, error) in [
        (
            vec![
                "backend",
                "add",
                "web2",
                "75w6bo2hfqkeyltppkrnaxrmo542ty5evcuuxkideukynzfqa32mu6ad.onion",
            ],
            "exists already",
        ),
        (
            vec!["backend", "add", "web3", SECOND_BACKEND],
            "already configured",
        ),
        (vec!["backend", "remove", "nosuch"], "no backend is named"),
        (
            vec!["backend", "add", "bad/name", BACKEND],
            "not a valid backend name",
        ),
    ] {
        let refused = a.run(&args);
        assert!(!refused.status.success(), "{args:?} was accepted");
        assert!(
            stderr(&refused).contains(error),
            "{args:?}: {}",
            stderr(&refused)
        );
        assert_eq!(stderr(&refused).lines().count(), 1, "{}", stderr(&refused));
    }
    assert_eq!(version_of(&a.status().unwrap()), new_version);

    // A hand edit and SIGHUP on a: a new version, which b writes into its config.toml.
    let a_config_path = a.config_dir().join("config.toml");
    let mut edited = fs::read_to_string(&a_config_path).unwrap();
    edited.push_str("\n[health]\ndead_after_failures = 5\n");
    fs::write(&a_config_path, edited).unwrap();
    nix_kill(a.pid(), "HUP");
    let hup_version =
        version_of(&a.wait_status("a's new version", SETTLE, |s| version_of(s) != new_version));
    b.wait_status("b on a's version", SETTLE, |s| version_of(s) == hup_version);
    let b_config = fs::read_to_string(b.config_dir().join("config.toml")).unwrap();
    assert!(b_config.contains("dead_after_failures = 5"), "{b_config}");

    // c is removed (on a): every member forgets it, c is told, stops, and will not start again.
    let removed = a.run(&["remove", &c_id]);
    assert!(removed.status.success(), "remove: {}", stderr(&removed));
    let exit = c
        .wait_exit(SETTLE)
        .expect("the removed node stops on its own");
    assert!(!exit.success(), "a removed node exits with an error");
    for node in [&a, &b] {
        node.wait_status("c forgotten", SETTLE, |s| {
            s["peers"]
                .as_array()
                .is_some_and(|p| p.iter().all(|p| p["node_id"] != c_id.as_str()))
        });
        let removed_dir = node.config_dir().join("removed");
        assert!(removed_dir.join(format!("{c_id}.toml")).exists());
        assert!(!node
            .config_dir()
            .join("peers")
            .join(format!("{c_id}.toml"))
            .exists());
    }
    let again = c.run(&["run"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("removed from the cluster"),
        "{}",
        stderr(&again)
    );
    let refused = a.run(&["remove", &c_id]);
    assert!(
        stderr(&refused).contains("not a member"),
        "{}",
        stderr(&refused)
    );

    for node in [&mut b, &mut a] {
        assert!(node.stop_cleanly(), "a node did not stop cleanly");
    }
}

/// Send signal `name` (e.g. `HUP`) to `pid`.
fn nix_kill(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// `rotate-secret` on one member: the members that run switch their tunnels to the new secret
/// (heartbeats keep flowing), one that was down gets it when it returns, and a token made
/// before admits nobody while a new one does.
#[test]
fn the_cluster_secret_is_replaced_on_every_member() {
    let root = tempfile::tempdir().unwrap();
    let (port_a, port_b, port_c) = (free_udp_port(), free_udp_port(), free_udp_port());
    let endpoint = |port: u16| format!("127.0.0.1:{port}");
    let mut a = Balancer::new(root.path(), "a");
    let (printed, _a_log) = start_first_node(&mut a, &endpoint(port_a), &[]);
    let old_token = token_from(&printed);
    let mut b = Balancer::new(root.path(), "b");
    let mut c = Balancer::new(root.path(), "c");
    for (node, port) in [(&mut b, port_b), (&mut c, port_c)] {
        let joined = join_no_start(node, port, &old_token, "10");
        assert!(joined.status.success(), "join: {}", stderr(&joined));
        node.start(&["run"]);
    }
    let all_live = |s: &serde_json::Value| {
        s["peers"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["live"] == true))
    };
    for node in [&a, &b, &c] {
        node.wait_status("every member live", SETTLE, all_live);
    }
    let secret_of = |node: &Balancer| fs::read(node.config_dir().join("cluster.key")).unwrap();
    let old_secret = secret_of(&a);
    let c_id = c.status().unwrap()["node_id"].as_str().unwrap().to_owned();

    // c is down while a rotates the secret.
    assert!(c.stop_cleanly(), "c did not stop cleanly");
    let rotated = a.run(&["rotate-secret"]);
    assert!(
        rotated.status.success(),
        "rotate-secret: {}",
        stderr(&rotated)
    );
    assert_ne!(secret_of(&a), old_secret);
    let deadline = std::time::Instant::now() + SETTLE;
    while secret_of(&b) != secret_of(&a) {
        assert!(
            std::time::Instant::now() < deadline,
            "b never got the new secret"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // a and b talk under the new key; only c's tunnel still waits on the old one.
    let previous = a.config_dir().join("cluster.key.previous");
    let b_id = b.status().unwrap()["node_id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_secs(4));
    let b_live = |s: &serde_json::Value| {
        s["peers"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["node_id"] == b_id.as_str() && p["live"] == true)
        })
    };
    a.wait_status("b heard under the new secret", SETTLE, b_live);
    let pending = fs::read_to_string(&previous).expect("a keeps the previous secret for c");
    assert!(
        pending.contains(&c_id) && !pending.contains(&b_id),
        "{pending}"
    );
    assert_eq!(
        a.status().unwrap()["secret_rotation_pending"],
        serde_json::json!([c_id])
    );
    let shown = stdout(&a.run(&["status"]));
    assert!(shown.contains("rotation under way, waiting for"), "{shown}");

    // A token made before admits nobody now.
    let d = Balancer::new(root.path(), "d");
    let refused = join_no_start(&d, free_udp_port(), &old_token, "3");
    assert!(!refused.status.success(), "an old token was accepted");
    assert!(!d.config_dir().join("config.toml").exists());

    // c returns with the old secret: it is sent the new one, and every tunnel switches.
    c.start(&["run"]);
    let deadline = std::time::Instant::now() + SETTLE;
    while secret_of(&c) != secret_of(&a) || previous.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "c never switched (c has the new secret: {}; a still keeps the old: {})",
            secret_of(&c) == secret_of(&a),
            previous.exists()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in [&a, &b, &c] {
        node.wait_status("every member live again", SETTLE, |s| {
            all_live(s) && s["secret_rotation_pending"] == serde_json::json!([])
        });
    }

    // A new token works.
    let token = a.run(&["token"]);
    assert!(token.status.success(), "token: {}", stderr(&token));
    let new_token = token_from(&stdout(&token));
    let joined = join_no_start(&d, free_udp_port(), &new_token, "10");
    assert!(
        joined.status.success(),
        "join with the new token: {}",
        stderr(&joined)
    );

    for node in [&mut c, &mut b, &mut a] {
        assert!(node.stop_cleanly(), "a node did not stop cleanly");
    }
}
