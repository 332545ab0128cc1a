//! Self-test of the private Tor network harness (`tests/support`).
//!
//! The end-to-end tests trust this harness as their ground truth, so it is checked on its own:
//! backends come up and are reachable through their onion addresses, the HSDirs hold their
//! descriptors, the `[arti]` table is valid TOML that names only our own network, and stopping
//! and restarting a backend does what the tests will expect.
//!
//! The two tests build one network each and run in parallel, which also checks that two
//! networks can coexist in one process. Needs Debian's `tor` package (`tor`, `tor-gencert`).

mod support;

use std::time::{Duration, Instant};

use support::{NetworkOptions, TorNetwork};

const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fetch from a stopped backend may take before it counts as unreachable.
const UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(20);

fn start_network() -> TorNetwork {
    let started = Instant::now();
    let network = TorNetwork::start(NetworkOptions::default()).expect("the test network starts");
    eprintln!(
        "network ready in {:.1}s at {}",
        started.elapsed().as_secs_f64(),
        network.data_dir().display()
    );
    network
}

#[test]
fn backends_are_reachable_through_their_onion_addresses() {
    let mut network = start_network();
    network
        .add_backend("alpha", None)
        .expect("backend alpha comes up");
    // An Onionbalance instance (of alpha's address, the only valid one at hand) still serves
    // its own address.
    let alpha = network.backend_onion("alpha");
    network
        .add_backend("beta", Some(&alpha))
        .expect("backend beta comes up as an instance");
    let beta = network.backend_onion("beta");
    assert_ne!(alpha, beta);

    for (name, onion) in [("alpha", &alpha), ("beta", &beta)] {
        let started = Instant::now();
        let body = network
            .fetch(
                &format!("http://{onion}/"),
                &format!("selftest-{name}"),
                FETCH_TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("fetching {name}'s page: {e}"));
        eprintln!(
            "fetched {name}'s page in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(body, network.backend_page(name));
        assert!(body.contains(&format!("backend {name}")));
    }

    let descriptors = network
        .hsfetch(&alpha, FETCH_TIMEOUT)
        .expect("HSDirs hold alpha's descriptor");
    eprintln!(
        "hsfetch returned {} copies of alpha's descriptor",
        descriptors.len()
    );
    for descriptor in &descriptors {
        assert!(
            descriptor.starts_with("hs-descriptor 3\n"),
            "not a v3 descriptor: {descriptor:.80}"
        );
        assert!(descriptor.contains("\nsuperencrypted\n-----BEGIN MESSAGE-----\n"));
    }
}

#[test]
fn stopped_backend_is_unreachable_until_restarted() {
    let mut network = start_network();
    check_arti_toml(&network.arti_toml());

    network
        .add_backend("gamma", None)
        .expect("backend gamma comes up");
    let url = format!("http://{}/", network.backend_onion("gamma"));
    let page = network.backend_page("gamma");
    assert_eq!(
        network
            .fetch(&url, "before-stop", FETCH_TIMEOUT)
            .expect("gamma is reachable"),
        page
    );

    network.stop_backend("gamma");
    // Right after the stop this fails by timing out rather than quickly (see `stop_backend`).
    let outcome = network.fetch(&url, "after-stop", UNREACHABLE_TIMEOUT);
    assert!(
        outcome.is_err(),
        "a stopped backend still served {outcome:?}"
    );
    eprintln!(
        "stopped backend: {}",
        outcome.err().map(|e| e.to_string()).unwrap_or_default()
    );

    let onion = network.backend_onion("gamma");
    network.restart_backend("gamma").expect("gamma comes back");
    assert_eq!(
        network.backend_onion("gamma"),
        onion,
        "a restarted backend keeps its address"
    );
    assert_eq!(
        network
            .fetch(&url, "after-restart", FETCH_TIMEOUT)
            .expect("gamma is reachable again"),
        page
    );
}

/// The `[arti]` table is TOML with the shape `tests/support/tornet.rs` writes and names no public
/// address.
fn check_arti_toml(text: &str) {
    let value: toml::Value = text
        .parse()
        .unwrap_or_else(|e| panic!("arti_toml() is not TOML: {e}\n{text}"));
    let arti = &value["arti"];

    let fallbacks = arti["tor_network"]["fallback_caches"]
        .as_array()
        .expect("fallback_caches is a list");
    assert_eq!(fallbacks.len(), 3, "one fallback cache per authority");
    for fallback in fallbacks {
        let rsa = fallback["rsa_identity"].as_str().expect("rsa_identity");
        assert!(
            rsa.len() == 40 && rsa.chars().all(|c| c.is_ascii_hexdigit()),
            "rsa_identity {rsa:?}"
        );
        // Arti decodes ed25519 identities as unpadded standard base64 of 32 bytes: 43 characters.
        let ed = fallback["ed_identity"].as_str().expect("ed_identity");
        assert!(
            ed.len() == 43
                && ed
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/'),
            "ed_identity {ed:?}"
        );
        let orports = fallback["orports"].as_array().expect("orports");
        assert!(!orports.is_empty());
        for orport in orports {
            let orport = orport.as_str().expect("orport is a string");
            assert!(
                orport.starts_with("127.0.0.1:"),
                "orport {orport:?} is not on 127.0.0.1"
            );
        }
    }

    let v3idents = arti["tor_network"]["authorities"]["v3idents"]
        .as_array()
        .expect("v3idents is a list");
    assert_eq!(v3idents.len(), 3);
    assert_eq!(
        arti["path_rules"]["ipv4_subnet_family_prefix"].as_integer(),
        Some(33)
    );
    assert_eq!(
        arti["path_rules"]["ipv6_subnet_family_prefix"].as_integer(),
        Some(129)
    );
    assert_eq!(
        arti["override_net_params"]["hsdir_interval"].as_integer(),
        Some(8)
    );
    assert_eq!(
        arti["override_net_params"]["cbtdisabled"].as_integer(),
        Some(1)
    );

    // Whatever the table says, every dotted-quad in it is the loopback address.
    for word in text.split(|c: char| !(c.is_ascii_digit() || c == '.')) {
        if word.split('.').count() == 4 && word.split('.').all(|part| part.parse::<u8>().is_ok()) {
            assert_eq!(
                word, "127.0.0.1",
                "arti_toml() names a non-loopback address"
            );
        }
    }
}
