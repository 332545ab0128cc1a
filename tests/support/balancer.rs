//! RustBalance nodes as real processes of the built binary: each with its own config and
//! state directory and a log file, started and stopped by PID (also when a test fails).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::process::ProcessGuard;
use super::TorNetwork;

/// An `[arti]` table for nodes that must not reach any Tor network: its only directory is a
/// closed port on 127.0.0.1, so Arti never bootstraps (and never dials the public network).
pub const NOWHERE_ARTI: &str = "\n[arti.tor_network]\nfallback_caches = [\n    { rsa_identity = \"0000000000000000000000000000000000000001\", ed_identity = \"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE\", orports = [\"127.0.0.1:9\"] },\n]\n\n[arti.tor_network.authorities]\nv3idents = [\"0000000000000000000000000000000000000002\"]\n";

/// Debian's libfaketime, which changes what a process reads as the wall clock.
pub const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

/// Sample the nodes' roles for `duration`: the longest stretch during which two of them said
/// they were the publisher.
pub fn longest_two_publishers(nodes: &[&Balancer], duration: Duration) -> Duration {
    let end = Instant::now() + duration;
    let (mut longest, mut since) = (Duration::ZERO, None);
    while Instant::now() < end {
        let publishers = nodes
            .iter()
            .filter(|node| node.status().is_some_and(|s| s["role"] == "publisher"))
            .count();
        match (publishers > 1, since) {
            (true, None) => since = Some(Instant::now()),
            (true, Some(start)) => longest = longest.max(start.elapsed()),
            (false, _) => since = None,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    longest
}

/// `join TOKEN` with 127.0.0.1:`port` as the node's endpoint and listen address.
pub fn join_args(token: &str, port: u16) -> Vec<String> {
    let endpoint = format!("127.0.0.1:{port}");
    [
        "join",
        token,
        "--endpoint",
        &endpoint,
        "--listen",
        &endpoint,
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A UDP port on 127.0.0.1 free right now, for a node's cluster tunnel.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|addr| addr.port())
        .expect("a free UDP port on 127.0.0.1")
}

/// One node: `<root>/<name>/{etc,state,credstore,node.log}`.
pub struct Balancer {
    name: String,
    config_dir: PathBuf,
    state_dir: PathBuf,
    /// The node's own credential store, where init and join create the key-encryption key of
    /// master.key: each node is a machine of its own, and no test touches /etc/credstore.
    credstore_dir: PathBuf,
    log_path: PathBuf,
    process: Option<ProcessGuard>,
    /// Extra environment for every command of this node.
    env: Vec<(String, String)>,
    /// A cgroup's `cgroup.procs` the daemon enters before it starts (see `support::firewall`).
    cgroup_procs: Option<PathBuf>,
}

impl Balancer {
    pub fn new(root: &Path, name: &str) -> Balancer {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        Balancer {
            name: name.to_owned(),
            config_dir: dir.join("etc"),
            state_dir: dir.join("state"),
            credstore_dir: dir.join("credstore"),
            log_path: dir.join("node.log"),
            process: None,
            env: Vec::new(),
            cgroup_procs: None,
        }
    }

    /// From the next start on, the node's wall clock runs `offset` off (libfaketime's form,
    /// e.g. `+60s`; `+0s` for the true time), its monotonic clock (tokio's and boringtun's
    /// timers) true.
    pub fn set_clock_offset(&mut self, offset: &str) {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install Debian's libfaketime (tests/run.sh does)"
        );
        self.set_env("LD_PRELOAD", LIBFAKETIME);
        self.set_env("FAKETIME", offset);
        self.set_env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    }

    /// Set an environment variable for every later command of this node.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where this node's key-encryption key lives (its `RUSTBALANCE_CREDSTORE`).
    pub fn credstore_dir(&self) -> &Path {
        &self.credstore_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// `rustbalance --config-dir .. --state-dir .. <args>` for this node.
    pub fn command(&self, args: &[&str]) -> Command {
        // `RB_BALANCER_BINARY` runs another build (the static release binary, for the
        // figures in BENCHMARKS.md) under the same tests.
        let binary = std::env::var_os("RB_BALANCER_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_rustbalance").into());
        let mut command = Command::new(binary);
        command
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args)
            .env("RUSTBALANCE_CREDSTORE", &self.credstore_dir)
            .env_remove("CREDENTIALS_DIRECTORY")
            // The operator's default log (set_env may ask for more).
            .env_remove("RUST_LOG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Run a command that finishes (init, join --no-start, status, token) and return its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run rustbalance")
    }

    /// Like [`run`](Self::run), with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rustbalance");
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::io::Write::write_all(&mut stdin, input.as_bytes()).expect("write stdin");
        drop(stdin);
        child.wait_with_output().expect("wait for rustbalance")
    }

    /// `init --no-start` with `args`, listening on a free UDP port of 127.0.0.1, then `append`
    /// added to config.toml. Returns config.toml's text.
    pub fn init_local(&self, args: &[&str], append: &str) -> String {
        self.set_up_local(&["init"], args, append)
    }

    /// `import onionbalance <config_yaml> --no-start` on `net`, listening on a free UDP port
    /// of 127.0.0.1, then the network's `[arti]` table added to config.toml. Returns
    /// config.toml's text.
    pub fn import_onionbalance_on_network(&self, net: &TorNetwork, config_yaml: &Path) -> String {
        let config_yaml = config_yaml.display().to_string();
        self.set_up_local(
            &["import", "onionbalance", &config_yaml],
            &[],
            &format!("\n{}", net.arti_toml()),
        )
    }

    /// `<command> --no-start --listen <free port> <args>`, then `append` added to config.toml.
    fn set_up_local(&self, command: &[&str], args: &[&str], append: &str) -> String {
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let mut all = command.to_vec();
        all.extend_from_slice(&["--no-start", "--listen", &listen]);
        all.extend_from_slice(args);
        let init = self.run(&all);
        assert!(
            init.status.success(),
            "{}: {}",
            command.join(" "),
            String::from_utf8_lossy(&init.stderr)
        );
        let config_path = self.config_dir.join("config.toml");
        let mut config = fs::read_to_string(&config_path).unwrap();
        config.push_str(append);
        fs::write(&config_path, &config).unwrap();
        config
    }

    /// `init --no-start` of the first node of a cluster, reached and listening at `endpoint`
    /// (`HOST:PORT` on 127.0.0.1). Returns the master address and the join token it printed.
    pub fn init_first_node(&self, endpoint: &str) -> (String, String) {
        let printed = self.init_first_node_with(endpoint, &[]);
        let master_onion = printed
            .lines()
            .find_map(|line| line.trim().strip_prefix("master address: "))
            .expect("init prints the master address")
            .to_owned();
        let token = printed
            .lines()
            .find(|line| line.starts_with("rb1:"))
            .expect("init prints a token")
            .to_owned();
        (master_onion, token)
    }

    /// [`init_first_node`](Self::init_first_node) with `extra` arguments; returns what `init`
    /// printed.
    pub fn init_first_node_with(&self, endpoint: &str, extra: &[&str]) -> String {
        let mut args = vec![
            "init",
            "--no-start",
            "--endpoint",
            endpoint,
            "--listen",
            endpoint,
        ];
        args.extend_from_slice(extra);
        let init = self.run(&args);
        assert!(
            init.status.success(),
            "init: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        String::from_utf8_lossy(&init.stdout).into_owned()
    }

    /// A node that cannot reach any Tor network (see [`NOWHERE_ARTI`]).
    pub fn init_tor_less(&self) -> String {
        self.init_local(&[], NOWHERE_ARTI)
    }

    /// A node on `net` balancing `backends` of it, its master key imported from `seed` (a
    /// 32-byte seed file, one of the formats it reads), `append` and the network's `[arti]`
    /// table added to config.toml. Returns config.toml's text.
    pub fn init_on_network(
        &self,
        net: &TorNetwork,
        seed: &[u8; 32],
        backends: &[&str],
        append: &str,
    ) -> String {
        let args = self.import_args(net, seed, backends);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.init_local(&args, &format!("{append}\n{}", net.arti_toml()))
    }

    /// `init` arguments importing the master key from `seed` (written to a seed file beside
    /// the config directory) and balancing `backends` of `net`.
    pub fn import_args(&self, net: &TorNetwork, seed: &[u8; 32], backends: &[&str]) -> Vec<String> {
        let seed_path = self.config_dir.with_file_name("master-seed.key");
        fs::create_dir_all(seed_path.parent().unwrap()).unwrap();
        fs::write(&seed_path, seed).unwrap();
        let mut args = vec!["--import-key".to_owned(), seed_path.display().to_string()];
        for backend in backends {
            args.push("--backend".into());
            args.push(format!("{backend}={}", net.backend_onion(backend)));
        }
        args
    }

    /// Start a long-running command (`run`, or `join` without --no-start) in the background,
    /// its stdout and stderr appended to the node's log.
    pub fn start(&mut self, args: &[&str]) {
        assert!(self.process.is_none(), "{} is running already", self.name);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut command = match &self.cgroup_procs {
            None => self.command(args),
            Some(procs) => in_cgroup(procs, &self.command(args)),
        };
        command.stdout(log.try_clone().unwrap()).stderr(log);
        self.process = Some(ProcessGuard::spawn(self.name.clone(), &mut command).unwrap());
    }

    /// Start `join TOKEN` on 127.0.0.1:`port`: the join, then the daemon.
    pub fn start_joining(&mut self, token: &str, port: u16) {
        let args = join_args(token, port);
        self.start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Start the daemon (from the next [`start`](Self::start) on) inside the cgroup whose
    /// `cgroup.procs` is `procs`, so that every socket it opens belongs to that cgroup.
    pub fn set_cgroup(&mut self, procs: PathBuf) {
        self.cgroup_procs = Some(procs);
    }

    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("node running").pid()
    }

    /// The daemon's resident memory now and at its peak, in KiB (`/proc/<pid>/status`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().trim_end_matches(" kB").parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{}/status", self.pid()))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// The CPU time the daemon has used so far, user and system (`/proc/<pid>/stat`, in
    /// clock ticks of 1/100 s, as Linux reports them on every architecture we run).
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    /// SIGHUP: the daemon reads config.toml again.
    pub fn reload(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -HUP {}", self.pid());
    }

    /// SIGKILL: the node gets no chance to say goodbye.
    pub fn kill_hard(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill_hard();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited with status 0.
    pub fn stop_cleanly(&mut self) -> bool {
        let mut process = self.process.take().expect("node running");
        process.terminate();
        let status = process.wait_exit(Duration::from_secs(15));
        status.is_some_and(|s| s.success())
    }

    /// Wait for the node to exit on its own; its exit status, or `None` if it still runs
    /// after `timeout` (then it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = self
            .process
            .as_mut()
            .expect("node running")
            .wait_exit(timeout);
        if status.is_some() {
            self.process = None;
        }
        status
    }

    /// `status --json`, parsed; `None` while the daemon does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let output = self.run(&["status", "--json"]);
        serde_json::from_slice(&output.stdout).ok()
    }

    /// Wait until `status --json` satisfies `check`; returns that status.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if let Some(status) = status.as_ref().filter(|s| check(s)) {
                return status.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{}: {what} not seen within {timeout:?}; last status: {status:#?}\n--- log ---\n{}",
                self.name,
                fs::read_to_string(&self.log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Reads a log as it grows; each wait starts where the previous one matched.
pub struct LogWatcher {
    path: PathBuf,
    offset: usize,
}

impl LogWatcher {
    pub fn new(path: &Path) -> Self {
        LogWatcher {
            path: path.to_owned(),
            offset: 0,
        }
    }

    /// Watch only what is written from now on.
    pub fn from_end(path: &Path) -> Self {
        let offset = fs::read_to_string(path).map_or(0, |text| text.len());
        LogWatcher {
            path: path.to_owned(),
            offset,
        }
    }

    pub fn position(&self) -> usize {
        self.offset
    }

    pub fn text_since(&self, offset: usize) -> String {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        text.get(offset..).unwrap_or_default().to_owned()
    }

    /// Wait for a line containing both `first` and `second`; returns it.
    pub fn wait_for(&mut self, first: &str, second: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.path).unwrap_or_default();
            let mut line_start = self.offset;
            for line in text
                .get(self.offset..)
                .unwrap_or_default()
                .split_inclusive('\n')
            {
                line_start += line.len();
                if line.ends_with('\n') && line.contains(first) && line.contains(second) {
                    self.offset = line_start;
                    return line.trim_end().to_owned();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no line with {first:?} and {second:?} in {} within {timeout:?}; log since the last match:\n{}",
                self.path.display(),
                text.get(self.offset..).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `command` run by a shell that first moves itself into the cgroup of `procs`, then becomes
/// the command (same PID, so the process guard stops the node itself).
fn in_cgroup(procs: &Path, command: &Command) -> Command {
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg("echo 0 > \"$0\" && exec \"$@\"")
        .arg(procs)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    wrapped.stdin(Stdio::null());
    wrapped
}
