//! The fuzz targets: each takes arbitrary bytes, hands them to one of RustBalance's readers of
//! untrusted or damaged input, and uses what comes back as the program would. None may panic,
//! whatever the bytes. `fuzz_targets/` runs them under libFuzzer (`cargo fuzz run <target>`,
//! see `fuzz/README.md`); `tests/fuzz_corpus.rs` runs every target over the committed corpus
//! and mutations of it in every `cargo test` (the short pass CI makes).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rustbalance::cluster::messages::{JoinRequest, Message};
use rustbalance::cluster::token::JoinToken;
use rustbalance::cluster::transport::handle_untrusted_datagrams;
use rustbalance::cluster::NodeId;
use rustbalance::config::Config;
use rustbalance::descriptor::build::{
    build_descriptor, BlindedIdentity, DescriptorParams, MasterIdentity,
};
use rustbalance::descriptor::merge::{merge, BackendIntroPoints};
use rustbalance::descriptor::signer::{intro_point_id, intro_point_relay, MasterSigner};
use rustbalance::keys::MasterKey;
use rustbalance::publish::plan::PublishPlan;
use rustbalance::storage::{node_files, state};
use tor_hscrypto::time::TimePeriod;
use tor_linkspec::{EncodedLinkSpec, LinkSpecType};
use tor_llcrypto::pk::{curve25519, ed25519};
use tor_netdoc::doc::hsdesc::IntroPointDesc;

/// One target: arbitrary bytes in, a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target by name (the names of `fuzz_targets/*.rs` and of `corpus/*/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("join_token", join_token),
    ("config_toml", config_toml),
    ("wire_message", wire_message),
    ("datagram_router", datagram_router),
    ("backend_intro_points", backend_intro_points),
    ("state_json", state_json),
    ("peer_file", peer_file),
];

/// `rustbalance join <token>`: a token decodes or is refused; one that decodes encodes again
/// to a token that decodes.
pub fn join_token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(token) = JoinToken::decode(text) {
        let again = token.encode(&mut rand::rng());
        assert!(
            JoinToken::decode(&again).is_ok(),
            "a re-encoded token decodes"
        );
    }
}

/// config.toml as `run`, `status` and SIGHUP read it (the paths it names are not created).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let missing = Path::new("/nonexistent/rustbalance-fuzz");
    let _ = Config::parse(text, &missing.join("config.toml"), missing, missing);
}

/// A message out of a tunnel (after decryption), and a join request before its MAC is
/// checked: decoded or refused; a decoded message encodes again to the same message.
pub fn wire_message(data: &[u8]) {
    if let Ok(message) = Message::decode(data) {
        let _ = (message.msg_id(), message.claimed_sender(), message.kind());
        let _ = message.to_election();
        let encoded = message.encode().expect("a decoded message encodes");
        assert_eq!(Message::decode(&encoded).ok(), Some(message), "round trip");
    }
    let _ = JoinRequest::from_datagram(data);
}

/// Datagrams from anybody at the cluster port, before any authenticates: a sequence of them,
/// each prefixed with its length (2 bytes, big-endian).
pub fn datagram_router(data: &[u8]) {
    let datagrams = length_prefixed(data);
    handle_untrusted_datagrams(&datagrams);
}

/// Introduction points as a backend's decrypted descriptor may give them (any link
/// specifiers, any keys): named by relay and identity, merged and built into a master
/// descriptor. Each introduction point: a count of link specifiers, each as type, length and
/// body, then three 32-byte keys.
pub fn backend_intro_points(data: &[u8]) {
    let intro_points = intro_points_from(data);
    for ip in &intro_points {
        let _ = (intro_point_relay(ip), intro_point_id(ip));
    }
    let backends: Vec<(String, &[IntroPointDesc])> = intro_points
        .chunks(3)
        .enumerate()
        .map(|(i, ips)| (format!("b{i}"), ips))
        .collect();
    let inputs: Vec<BackendIntroPoints<'_, IntroPointDesc>> = backends
        .iter()
        .map(|(name, ips)| BackendIntroPoints {
            backend: name,
            intro_points: ips,
        })
        .collect();
    let seed = data.len() as u64;
    merge(&inputs, 20, seed, intro_point_relay, |ips| {
        let params = DescriptorParams {
            intro_points: ips,
            revision_counter: seed,
            flow_control: None,
            authorized_clients: &[],
            // Two hours in turn: the certificate cache of the one blinded key is dropped at
            // each change of hour, as a running node's is, instead of growing by every input's
            // random keys for the whole run.
            now: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + 3600 * (seed % 2)),
            size_limit: 50_000,
        };
        build_descriptor(blinded(), &params, &mut rand::rng()).is_ok()
    });
}

/// state.json as a node reads it at start, then resumes its uploads from it.
pub fn state_json(data: &[u8]) {
    let dir = scratch_dir("state");
    std::fs::write(dir.join("state.json"), data).expect("scratch directory writable");
    let me = NodeId::try_from("node-a".to_owned()).expect("a valid node id");
    let Ok(Some(saved)) = state::load(&dir, &me) else {
        return;
    };
    for now in [0, 1_800_000_000, u64::MAX] {
        if let Some(uploads) = saved.uploads_to_resume(now, true, Duration::from_secs(120)) {
            let mut plan = PublishPlan::new(MasterSigner::new(master()), Duration::from_secs(600));
            plan.restore(uploads);
            let _ = plan.saved_uploads();
            plan.on_lease_gained();
        }
    }
}

/// A file in `peers/` as a node reads it at start.
pub fn peer_file(data: &[u8]) {
    let dir = scratch_dir("peers");
    let peers = dir.join("peers");
    std::fs::create_dir_all(&peers).expect("scratch directory writable");
    std::fs::write(peers.join("node-b.toml"), data).expect("scratch directory writable");
    let _ = node_files::load_peers(&dir);
}

/// Split `data` into length-prefixed pieces; a last piece shorter than its prefix says is
/// taken as it is.
pub fn length_prefixed(mut data: &[u8]) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    while let [high, low, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
        pieces.push(&rest[..len]);
        data = &rest[len..];
    }
    pieces
}

fn intro_points_from(mut data: &[u8]) -> Vec<IntroPointDesc> {
    let mut intro_points = Vec::new();
    while let [count, rest @ ..] = data {
        data = rest;
        let mut link_specifiers = Vec::new();
        for _ in 0..*count % 8 {
            let [kind, len, rest @ ..] = data else {
                return intro_points;
            };
            let len = usize::from(*len).min(rest.len());
            link_specifiers.push(EncodedLinkSpec::new(
                LinkSpecType::from(*kind),
                &rest[..len],
            ));
            data = &rest[len..];
        }
        let Some((keys, rest)) = data.split_first_chunk::<96>() else {
            return intro_points;
        };
        data = rest;
        let key =
            |i: usize| -> [u8; 32] { keys[i * 32..(i + 1) * 32].try_into().expect("32 bytes") };
        let Ok(session_id) = ed25519::PublicKey::from_bytes(&key(1)) else {
            continue;
        };
        let built = IntroPointDesc::builder()
            .link_specifiers(link_specifiers)
            .ipt_kp_ntor(curve25519::PublicKey::from(key(0)))
            .kp_hs_ipt_sid(session_id.into())
            .kp_hss_ntor(curve25519::PublicKey::from(key(2)).into())
            .build();
        if let Ok(ip) = built {
            intro_points.push(ip);
        }
    }
    intro_points
}

fn master() -> MasterIdentity {
    MasterIdentity::from_expanded_secret(MasterKey::from_seed(&[3; 32]).expanded_secret())
        .expect("a fixed, usable key")
}

/// The master key blinded once for a fixed period (blinding takes ~0.2 ms).
fn blinded() -> &'static BlindedIdentity {
    static BLINDED: OnceLock<BlindedIdentity> = OnceLock::new();
    BLINDED.get_or_init(|| {
        let period = TimePeriod::from_parts(1440, 20_000, 720);
        master().blind(period).expect("a fixed period blinds")
    })
}

/// A directory of this process for `what`'s files, emptied at exit by the OS's temp cleaning
/// only (one per process, reused by every run).
fn scratch_dir(what: &str) -> PathBuf {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let root = ROOT.get_or_init(|| tempfile::tempdir().expect("a temporary directory"));
    let dir = root.path().join(what);
    std::fs::create_dir_all(&dir).expect("scratch directory writable");
    dir
}
