//! Run the private Tor test network by hand, e.g. to try `rustbalance run` against it.
//!
//! ```text
//! cargo run --example tornet -- [--backends N] [--master <addr>.onion]
//! ```
//!
//! Starts the same network the end-to-end tests use (`tests/support`): three authorities, six
//! relays, a C-tor client and N onion-service backends (default 2), each an Onionbalance instance
//! of `--master` if given. Prints the data directory, the client's SOCKS port, each backend's
//! onion address and the `[arti]` table to paste into rustbalance's config.toml, then runs until
//! Ctrl-C (or end of standard input) and shuts everything down.
//!
//! Try a backend with: `curl --socks5-hostname 127.0.0.1:<port> http://<backend>.onion/`.
//! Set `RB_KEEP_TORNET=1` to keep the directory (logs, torrcs) afterwards.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Read;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use support::tornet::check_onion;
use support::{NetworkOptions, TorNetwork};

const USAGE: &str =
    "usage: cargo run --example tornet -- [--backends N] [--master <56 chars>.onion]";
/// How often the main thread checks whether it was asked to stop.
const STOP_POLL: Duration = Duration::from_millis(200);

/// Set by the signal handler or by the stdin watcher.
static STOP: AtomicBool = AtomicBool::new(false);

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

// std has no signal handling; the C library's signal(2) is linked anyway. The handler only
// stores to an atomic, which is async-signal-safe.
extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
}

extern "C" fn request_stop(_signum: i32) {
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    backends: usize,
    master: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        backends: 2,
        master: None,
    };
    let mut words = std::env::args().skip(1);
    while let Some(word) = words.next() {
        match word.as_str() {
            "--backends" => {
                let value = words.next().ok_or("--backends needs a number")?;
                args.backends = value
                    .parse()
                    .map_err(|_| format!("--backends: {value:?} is not a number"))?;
            }
            "--master" => {
                let master = words.next().ok_or("--master needs an onion address")?;
                // Checked now rather than after the half-minute network start-up.
                check_onion(&master).map_err(|e| e.to_string())?;
                args.master = Some(master);
            }
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe {
        signal(SIGINT, request_stop);
        signal(SIGTERM, request_stop);
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), support::HarnessError> {
    let started = Instant::now();
    eprintln!("starting the network (about 30 s)...");
    let mut network = TorNetwork::start(NetworkOptions::default())?;
    for index in 1..=args.backends {
        network.add_backend(&format!("b{index}"), args.master.as_deref())?;
    }
    println!("network ready in {:.1}s", started.elapsed().as_secs_f64());
    println!("data directory:   {}", network.data_dir().display());
    println!("client SocksPort: {}", network.socks_addr());
    for index in 1..=args.backends {
        println!(
            "backend b{index}:       {}",
            network.backend_onion(&format!("b{index}"))
        );
    }
    println!(
        "\n# Paste into rustbalance's config.toml:\n{}",
        network.arti_toml()
    );
    println!("Press Ctrl-C (or close standard input) to stop.");

    // Standing by until told to stop; the network is shut down when `network` is dropped.
    thread::spawn(|| {
        // Any outcome (EOF or a read error) means nobody is there to type Ctrl-C any more.
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        STOP.store(true, Ordering::SeqCst);
    });
    while !STOP.load(Ordering::SeqCst) {
        thread::sleep(STOP_POLL);
    }
    eprintln!("stopping...");
    Ok(())
}
