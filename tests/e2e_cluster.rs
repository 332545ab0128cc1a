//! End to end, on a private Tor network: a cluster of three balancer nodes (real processes:
//! `init`, two `join`s with the real token, WireGuard over UDP on 127.0.0.1) in front of two
//! C-tor backends.
//!
//! 1. The first node publishes; the others join as standbys (one with the token as an
//!    argument, one with `--token-file`). An impostor that holds the cluster secret joins
//!    as `0` and claims priority 1: refused by every member, the publisher stays, and
//!    `rustbalance remove 0` takes it out.
//! 2. The publisher is killed with SIGKILL: the best standby takes over within
//!    `publisher_timeout + takeover_grace` and a few seconds, its descriptor is on the HSDirs
//!    (read back through Arti: a newer revision listing both backends), and the C-tor client
//!    still reaches both backends through the master address.
//!    While the old publisher is down, `rustbalance backend add` on a standby: every member
//!    runs the new version within a few heartbeats and the publisher's next upload lists the
//!    new backend; `backend exclude` on the publisher takes it out again.
//! 3. The old publisher comes back: it stays a standby (no flapping), and it caught up with
//!    the shared configuration changed while it was down.
//! 4. The new publisher stops cleanly: it releases the lease and the best remaining node (the
//!    returned first node, priority 1) takes over at once, without waiting for the grace.
//! 5. The publisher's Tor is cut (every TCP packet it sends dropped) while its cluster traffic
//!    flows: its next health round reaches no HSDir, it stops announcing that it can publish
//!    and hands the lease over; the standby's descriptor is on the HSDirs within the detection
//!    bound (one health interval and one round of HSDir timeouts) plus a few seconds, and the
//!    client reaches the master. When the path returns there is one publisher, and the cut
//!    node follows it once its Tor reaches an HSDir again.
//! 6. A partition (the publisher's cluster port cut both ways, Tor intact): each side
//!    publishes; healed, one publisher within a few heartbeats and the HSDirs hold the newest
//!    revision.
//! 7. c restarts with its clock a minute ahead (libfaketime): a shows the skew, c follows a,
//!    and never do two nodes publish for longer than a heartbeat.
//! 8. `rustbalance remove` of a member that is down: when it returns it is told, stops, and
//!    refuses to start again.
//!    Then the cluster secret is rotated on the standby: the publisher switches too, and keeps
//!    the lease.
//! 9. Every node ran with debug logging: no secret (master key, blinded keys, cluster secret,
//!    WireGuard private keys, key-encryption keys, the join token), in any encoding we use,
//!    appears in any log or status report.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

use rustbalance::cluster::token::JoinToken;
use rustbalance::keys::files::load_master_key_with;
use rustbalance::keys::onion_address::OnionAddress;
use rustbalance::keys::KekSource;
use support::balancer::{free_udp_port, longest_two_publishers, Balancer, LogWatcher};
use support::firewall::{NodeCgroup, UdpPortCut};
use support::impostor::Impostor;
use support::master::{fetch_until_seen, Observer};
use support::secrets::{assert_no_secret, Secret};
use support::{NetworkOptions, TorNetwork};

const HEALTH_INTERVAL_SECS: u64 = 10;
const HEARTBEAT_INTERVAL_SECS: u64 = 1;
const PUBLISHER_TIMEOUT_SECS: u64 = 3;
const TAKEOVER_GRACE_SECS: u64 = 5;
/// The design's bound for a killed publisher: timeout + grace + 10 s until the standby's
/// descriptor is on the HSDirs.
const TAKEOVER_BOUND: Duration =
    Duration::from_secs(PUBLISHER_TIMEOUT_SECS + TAKEOVER_GRACE_SECS + 10);
/// Generous waits for a busy 2-core CI machine (bootstrap, first health round, upload).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// A node learns that its own Tor is cut at the end of its next health round: within one
/// health interval and two rounds of HSDir requests (30 s each) that time out.
const TOR_CUT_DETECTION: Duration = Duration::from_secs(HEALTH_INTERVAL_SECS + 60);

fn node_args(command: &str, port: u16) -> Vec<String> {
    let endpoint = format!("127.0.0.1:{port}");
    vec![
        command.to_owned(),
        "--endpoint".into(),
        endpoint.clone(),
        "--listen".into(),
        endpoint,
    ]
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_standby_takes_over_from_a_dead_publisher_and_clients_still_reach_the_master() {
    let mut net = TorNetwork::start(NetworkOptions::default()).expect("private Tor network");
    let root = net.data_dir().join("cluster");
    let ports = [free_udp_port(), free_udp_port(), free_udp_port()];

    // 1. The first node, its backends, and two more nodes joining with its token.
    let mut a = Balancer::new(&root, "a");
    a.set_env("RUST_LOG", "debug");
    let (master_onion, token) = a.init_first_node(&format!("127.0.0.1:{}", ports[0]));
    net.add_backend("alpha", Some(&master_onion))
        .expect("backend alpha");
    net.add_backend("beta", Some(&master_onion))
        .expect("backend beta");
    // Added to the cluster later, with `rustbalance backend add`.
    net.add_backend("gamma", Some(&master_onion))
        .expect("backend gamma");
    let config_path = a.config_dir().join("config.toml");
    let mut config = fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "\n[[backends]]\nname = \"alpha\"\naddress = \"{}\"\n\n\
         [[backends]]\nname = \"beta\"\naddress = \"{}\"\n\n\
         [timing]\nhealth_interval_secs = {HEALTH_INTERVAL_SECS}\npublish_interval_secs = 60\n\
         heartbeat_interval_secs = {HEARTBEAT_INTERVAL_SECS}\n\
         publisher_timeout_secs = {PUBLISHER_TIMEOUT_SECS}\ntakeover_grace_secs = {TAKEOVER_GRACE_SECS}\n\n{}",
        net.backend_onion("alpha"),
        net.backend_onion("beta"),
        net.arti_toml()
    ));
    fs::write(&config_path, &config).unwrap();

    a.start(&["run"]);
    let mut a_log = LogWatcher::new(a.log_path());
    a_log.wait_for("this node is now the publisher", "", START_TIMEOUT);
    a_log.wait_for("published descriptor", "from 2 backend(s)", START_TIMEOUT);
    let a_id = a.status().expect("status of a")["node_id"].clone();

    let following_a = |status: &serde_json::Value| {
        status["role"] == "standby"
            && status["publisher"] == a_id
            && status["can_publish"] == true
            && status["backends"]
                .as_array()
                .is_some_and(|b| b.iter().all(|b| b["state"] == "healthy"))
    };
    // One after the other, so that the priorities are known: 2 for b, 3 for c.
    let mut b = Balancer::new(&root, "b");
    let mut c = Balancer::new(&root, "c");
    let mut statuses = Vec::new();
    let token_file = root.join("token");
    fs::write(&token_file, format!("{token}\n")).unwrap();
    for (node, port, by_file) in [(&mut b, ports[1], false), (&mut c, ports[2], true)] {
        node.set_env("RUST_LOG", "debug");
        let mut args = node_args("join", port);
        if by_file {
            args.insert(1, "--token-file".into());
            args.insert(2, token_file.display().to_string());
        } else {
            args.insert(1, token.clone());
        }
        node.start(&as_strs(&args));
        statuses.push(node.wait_status("standby following a", START_TIMEOUT, following_a));
    }
    let (b_status, c_status) = (&statuses[0], &statuses[1]);
    assert_eq!(b_status["priority"], 2);
    assert_eq!(c_status["priority"], 3);
    let b_id = b_status["node_id"].clone();

    fs::remove_file(&token_file).unwrap();

    // An impostor with the cluster secret joins through a as 0 and claims priority 1.
    let decoded = JoinToken::decode(&token).unwrap();
    let (impostor, accept) = Impostor::join(
        "0",
        &decoded,
        format!("127.0.0.1:{}", ports[0]).parse().unwrap(),
    );
    assert!(accept.is_ok(), "a holder of the cluster secret is admitted");
    let mut a_log = LogWatcher::from_end(a.log_path());
    impostor.claim_first_priority(10);
    a_log.wait_for(
        "from 0: 0 claims priority 1",
        "admitted with priority",
        START_TIMEOUT,
    );
    for node in [&a, &b, &c] {
        node.wait_status("the cluster still following a", START_TIMEOUT, |status| {
            status["publisher"] == a_id
        });
    }
    assert_eq!(a.status().expect("status of a")["role"], "publisher");
    let removed = a.run(&["remove", "0"]);
    assert!(
        removed.status.success(),
        "remove 0: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    drop(impostor);
    let no_impostor = |status: &serde_json::Value| {
        status["peers"]
            .as_array()
            .is_some_and(|peers| peers.iter().all(|peer| peer["node_id"] != "0"))
    };
    for node in [&a, &b, &c] {
        node.wait_status("0 removed", START_TIMEOUT, no_impostor);
    }

    let master: OnionAddress = master_onion.parse().unwrap();
    let observer = Observer::start(&config, &root.join("observer"));
    let revisions_before = observer.master_revisions(&master);

    // 2. Kill the publisher.
    let mut b_log = LogWatcher::from_end(b.log_path());
    let c_log = LogWatcher::from_end(c.log_path());
    a.kill_hard();
    let killed = Instant::now();
    b_log.wait_for("this node is now the publisher", "", TAKEOVER_BOUND);
    let claimed = killed.elapsed();
    b_log.wait_for("published descriptor", "from 2 backend(s)", TAKEOVER_BOUND);
    let uploaded = killed.elapsed();
    eprintln!(
        "measured: publisher killed -> standby claimed the lease after {:.1} s, its descriptor accepted by the HSDirs after {:.1} s (timeout {PUBLISHER_TIMEOUT_SECS} s + grace {TAKEOVER_GRACE_SECS} s)",
        claimed.as_secs_f64(),
        uploaded.as_secs_f64()
    );
    assert!(
        uploaded <= TAKEOVER_BOUND,
        "took {uploaded:?}, more than timeout + grace + 10 s"
    );
    assert!(
        claimed >= Duration::from_secs(PUBLISHER_TIMEOUT_SECS),
        "claimed after {claimed:?}, before the publisher could even be suspect"
    );
    let c_text = c_log.text_since(c_log.position());
    assert!(
        !c_text.contains("this node is now the publisher"),
        "priority 3 claimed while priority 2 was healthy:\n{c_text}"
    );
    // The new publisher's descriptor replaced the old one's for every period: per period, the
    // HSDirs hold a higher revision than before (a period that began or ended in between has
    // nothing to compare with; the two sets always share one).
    let revisions_after = observer.master_revisions(&master);
    let compared: Vec<(u64, u64, u64)> = revisions_before
        .iter()
        .filter_map(|(period, before)| {
            revisions_after
                .get(period)
                .map(|after| (*period, *before, *after))
        })
        .collect();
    assert!(
        !compared.is_empty(),
        "no time period in common: before {revisions_before:?}, after {revisions_after:?}"
    );
    for (period, before, after) in compared {
        assert!(
            after > before,
            "period {period}: revision {after} after the failover, {before} before"
        );
    }
    assert_eq!(
        observer.backends_listed(&master, &net, &["alpha", "beta"], &["alpha", "beta"]),
        ["alpha", "beta"]
    );
    net.newnym().expect("NEWNYM");
    let both = BTreeSet::from([net.backend_page("alpha"), net.backend_page("beta")]);
    assert_eq!(
        fetch_until_seen(&net, &master_onion, &both),
        both,
        "after the failover the master address should still lead to both backends"
    );

    // 2b. While a is down, a standby adds a backend: the publisher's next upload lists it.
    let added_at = Instant::now();
    let added = c.run(&["backend", "add", "gamma", &net.backend_onion("gamma")]);
    assert!(
        added.status.success(),
        "backend add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let version_of = |node: &Balancer| node.status().expect("status")["config_version"].clone();
    let added_version = version_of(&c);
    b.wait_status("b on c's version", START_TIMEOUT, |status| {
        status["config_version"] == added_version
    });
    let everywhere = added_at.elapsed();
    b_log.wait_for("published descriptor", "from 3 backend(s)", START_TIMEOUT);
    eprintln!(
        "measured: backend add on a standby -> every running member on the new version after {:.1} s, the publisher's descriptor with the new backend accepted after {:.1} s (heartbeat {HEARTBEAT_INTERVAL_SECS} s, health interval {HEALTH_INTERVAL_SECS} s)",
        everywhere.as_secs_f64(),
        added_at.elapsed().as_secs_f64()
    );
    assert_eq!(
        observer.backends_listed(
            &master,
            &net,
            &["alpha", "beta", "gamma"],
            &["alpha", "beta", "gamma"]
        ),
        ["alpha", "beta", "gamma"]
    );
    // And out again, on the publisher this time.
    let excluded = b.run(&["backend", "exclude", "gamma"]);
    assert!(
        excluded.status.success(),
        "backend exclude: {}",
        String::from_utf8_lossy(&excluded.stderr)
    );
    let cluster_version = version_of(&b);
    b_log.wait_for("published descriptor", "from 2 backend(s)", START_TIMEOUT);

    // 3. The old publisher returns and stays a standby. It runs in a cgroup of its own from
    // now on, so that step 5 can cut its TCP.
    let a_cgroup = NodeCgroup::create("a").expect("a cgroup for node a");
    a.set_cgroup(a_cgroup.procs_file());
    let mut a_log = LogWatcher::from_end(a.log_path());
    a.start(&["run"]);
    let following_b = |status: &serde_json::Value| {
        status["role"] == "standby" && status["publisher"] == b_id && status["can_publish"] == true
    };
    a.wait_status("returned node following b", START_TIMEOUT, following_b);
    // It missed two versions of the shared configuration while it was down.
    a.wait_status("returned node caught up", START_TIMEOUT, |status| {
        status["config_version"] == cluster_version
            && status["backends"].as_array().is_some_and(|backends| {
                backends
                    .iter()
                    .any(|backend| backend["name"] == "gamma" && backend["state"] == "excluded")
            })
    });
    std::thread::sleep(Duration::from_secs(
        PUBLISHER_TIMEOUT_SECS + TAKEOVER_GRACE_SECS + 2,
    ));
    let a_status = a.status().expect("status of a");
    assert!(following_b(&a_status), "{a_status:#}");
    assert_eq!(b.status().expect("status of b")["role"], "publisher");
    let a_text = a_log.text_since(a_log.position());
    assert!(
        !a_text.contains("this node is now the publisher"),
        "the returning node took the lease back:\n{a_text}"
    );

    // 4. A clean stop hands over at once, to the best remaining node.
    assert!(b.stop_cleanly(), "b did not exit cleanly");
    let stopped = Instant::now();
    a_log.wait_for(
        "this node is now the publisher",
        "",
        Duration::from_secs(PUBLISHER_TIMEOUT_SECS + TAKEOVER_GRACE_SECS),
    );
    let handover = stopped.elapsed();
    eprintln!(
        "measured: clean stop of the publisher -> the next node claimed after {:.1} s",
        handover.as_secs_f64()
    );
    assert!(
        handover < Duration::from_secs(TAKEOVER_GRACE_SECS),
        "a clean stop should not wait for the grace ({handover:?})"
    );
    a_log.wait_for("published descriptor", "from 2 backend(s)", TAKEOVER_BOUND);

    // 5. The publisher's Tor is cut while its heartbeats flow.
    let c_id = c_status["node_id"].clone();
    let mut c_log = LogWatcher::from_end(c.log_path());
    let cut = a_cgroup.cut_tcp().expect("cut the publisher's TCP");
    let cut_at = Instant::now();
    let bound = TOR_CUT_DETECTION + Duration::from_secs(TAKEOVER_GRACE_SECS + 10);
    c_log.wait_for("this node is now the publisher", "", bound);
    c_log.wait_for("published descriptor", "from 2 backend(s)", bound);
    eprintln!(
        "measured: publisher's Tor cut while its heartbeats flow -> the standby's descriptor accepted after {:.1} s (detection bound {} s, grace {TAKEOVER_GRACE_SECS} s)",
        cut_at.elapsed().as_secs_f64(),
        TOR_CUT_DETECTION.as_secs()
    );
    net.newnym().expect("NEWNYM");
    assert_eq!(
        fetch_until_seen(&net, &master_onion, &both),
        both,
        "with the publisher's Tor cut the master address should still lead to both backends"
    );
    drop(cut);
    let following_c = |status: &serde_json::Value| {
        status["role"] == "standby" && status["publisher"] == c_id && status["can_publish"] == true
    };
    a.wait_status("the cut node following c", START_TIMEOUT, following_c);
    assert_eq!(c.status().expect("status of c")["role"], "publisher");

    // 6. A partition: the publisher c's cluster port is cut both ways while both keep their
    // Tor. Each side has a publisher (a claims after timeout + grace); healed, the better one
    // (a, priority 1) keeps the lease within a few heartbeats, c follows it, and the HSDirs
    // hold a revision at least as new as either side uploaded.
    let partition = UdpPortCut::start(ports[2]).expect("partition c");
    let mut a_log = LogWatcher::from_end(a.log_path());
    a_log.wait_for("this node is now the publisher", "", bound);
    a_log.wait_for("published descriptor", "", bound);
    let partitioned = Instant::now();
    drop(partition);
    let a_id_now = a.status().expect("status of a")["node_id"].clone();
    let following_a_again =
        |status: &serde_json::Value| status["role"] == "standby" && status["publisher"] == a_id_now;
    c.wait_status(
        "c following a after the heal",
        START_TIMEOUT,
        following_a_again,
    );
    eprintln!(
        "measured: partition healed -> one publisher after {:.1} s (heartbeat {HEARTBEAT_INTERVAL_SECS} s)",
        partitioned.elapsed().as_secs_f64()
    );
    let a_status = a.status().expect("status of a");
    assert_eq!(a_status["role"], "publisher", "{a_status:#}");
    let uploaded_max = [&a_status, &c.status().expect("status of c")]
        .iter()
        .flat_map(|status| status["publishes"].as_array().cloned().unwrap_or_default())
        .filter_map(|upload| {
            Some((
                upload["time_period"].as_u64()?,
                upload["revision_counter"].as_u64()?,
            ))
        })
        .fold(
            BTreeMap::new(),
            |mut max: BTreeMap<u64, u64>, (period, revision)| {
                let entry = max.entry(period).or_default();
                *entry = (*entry).max(revision);
                max
            },
        );
    let held = observer.master_revisions(&master);
    for (period, revision) in &uploaded_max {
        if let Some(on_hsdirs) = held.get(period) {
            assert!(
                on_hsdirs >= revision,
                "period {period}: the HSDirs hold revision {on_hsdirs}, older than {revision} uploaded"
            );
        }
    }

    // 7. c restarts with its clock a minute ahead.
    assert!(c.stop_cleanly(), "c did not exit cleanly");
    c.set_clock_offset("+60s");
    c.start(&["run"]);
    c.wait_status("c, a minute ahead, following a", START_TIMEOUT, |status| {
        status["role"] == "standby" && status["publisher"] == a_id_now
    });
    let offset_of_c = |status: &serde_json::Value| {
        status["peers"].as_array().and_then(|peers| {
            peers
                .iter()
                .find(|peer| peer["node_id"] == c_id)
                .and_then(|peer| peer["clock_offset_ms"].as_i64())
        })
    };
    let a_status = a.wait_status("a showing c's clock offset", START_TIMEOUT, |s| {
        offset_of_c(s).is_some_and(|ms| ms > 50_000)
    });
    // The private network's consensus is valid for 60 s only, so c, a minute ahead, never
    // holds one it can use: it must stay a standby that cannot publish, and nobody else may
    // start publishing because of it. (Failing over from a publisher that ran ahead, its Tor
    // working, is `e2e_clock`, on a network whose consensus stays valid longer.)
    let longest_double = longest_two_publishers(&[&a, &c], Duration::from_secs(20));
    eprintln!(
        "measured: clock +60 s: a shows c {:.1} s ahead; at most {:.1} s with two publishers over 20 s",
        offset_of_c(&a_status).unwrap_or_default() as f64 / 1000.0,
        longest_double.as_secs_f64()
    );
    assert!(
        longest_double <= Duration::from_secs(HEARTBEAT_INTERVAL_SECS),
        "two nodes published at once for {longest_double:?}"
    );
    assert_eq!(a.status().expect("status of a")["role"], "publisher");
    // Back to the true time for the rest of the test.
    assert!(c.stop_cleanly(), "c did not exit cleanly");
    c.set_clock_offset("+0s");
    c.start(&["run"]);
    c.wait_status("c back, following a", START_TIMEOUT, following_a_again);

    // 8. b (stopped in step 4) is removed while down; when it returns it is told and stops.
    let b_id_text = b_id.as_str().expect("b's id").to_owned();
    let removed = a.run(&["remove", &b_id_text]);
    assert!(
        removed.status.success(),
        "remove b: {}",
        String::from_utf8_lossy(&removed.stderr)
    );
    b.start(&["run"]);
    let exit = b
        .wait_exit(START_TIMEOUT)
        .expect("the removed node stops on its own");
    assert!(!exit.success(), "a removed node exits with an error");
    let again = b.run(&["run"]);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("removed from the cluster"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The cluster secret rotated on the standby: both switch, and a keeps publishing.
    let secret_of = |node: &Balancer| fs::read(node.config_dir().join("cluster.key")).unwrap();
    let old_secret = secret_of(&a);
    let rotated = c.run(&["rotate-secret"]);
    assert!(
        rotated.status.success(),
        "rotate-secret: {}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let rotated_at = Instant::now();
    while secret_of(&a) == old_secret || a.config_dir().join("cluster.key.previous").exists() {
        assert!(
            rotated_at.elapsed() < START_TIMEOUT,
            "a did not switch to the new cluster secret"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(secret_of(&a), secret_of(&c));
    eprintln!(
        "measured: rotate-secret on a standby -> the publisher on the new secret after {:.1} s",
        rotated_at.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(PUBLISHER_TIMEOUT_SECS + 1));
    c.wait_status(
        "c following a under the new secret",
        START_TIMEOUT,
        following_a_again,
    );
    assert_eq!(a.status().expect("status of a")["role"], "publisher");

    // 9. The leak audit, over everything the nodes printed and reported.
    let mut texts = Vec::new();
    for (name, node) in [("a", &a), ("c", &c)] {
        for args in [&["status"][..], &["status", "--json"][..]] {
            let output = node.run(args);
            texts.push((
                format!("{name}: rustbalance {}", args.join(" ")),
                String::from_utf8_lossy(&output.stdout).into_owned()
                    + &String::from_utf8_lossy(&output.stderr),
            ));
        }
    }
    for node in [&mut c, &mut a] {
        assert!(node.stop_cleanly(), "a node did not exit cleanly");
    }
    for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
        texts.push((
            format!("log of {name}"),
            fs::read_to_string(node.log_path()).unwrap(),
        ));
    }
    let read_base64 = |path: std::path::PathBuf| {
        use base64::Engine as _;
        let text = fs::read_to_string(&path).unwrap();
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    };
    let master_key = load_master_key_with(
        &a.config_dir().join("master.key"),
        &KekSource {
            credentials_dir: None,
            credstore: a.credstore_dir().to_owned(),
        },
    )
    .expect("a's master key");
    let mut secrets = vec![
        Secret::new("the master key", master_key.expanded_secret()),
        Secret::new(
            "the cluster secret",
            &read_base64(a.config_dir().join("cluster.key")),
        ),
        Secret::new("the cluster secret before the rotation", &{
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(String::from_utf8_lossy(&old_secret).trim())
                .expect("the old cluster secret")
        }),
    ];
    for (index, blinded) in observer.blinded_secrets(&master_key).iter().enumerate() {
        secrets.push(Secret::new(format!("blinded key {index}"), blinded));
    }
    for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
        secrets.push(Secret::new(
            format!("{name}'s WireGuard private key"),
            &read_base64(node.config_dir().join("wg_private.key")),
        ));
        secrets.push(Secret::new(
            format!("{name}'s key-encryption key"),
            &read_base64(node.credstore_dir().join("rustbalance-master-kek")),
        ));
    }
    let payload = token.trim_start_matches("rb1:");
    let literals = [
        ("the join token".to_owned(), token.clone()),
        (
            "the join token's payload".to_owned(),
            payload[..64].to_owned(),
        ),
    ];
    assert_no_secret(&texts, &secrets, &literals);
}
