//! The three layers of an onion service descriptor as plaintext, for comparing ours with C
//! tor's line by line. Decrypted here, independently of both Arti's parser and our encoder,
//! from rend-spec-v3 §2.5.3: keys = SHAKE-256(blinded key ‖ subcredential ‖ revision counter
//! ‖ salt ‖ layer constant); the blob is salt ‖ AES-256-CTR ciphertext ‖ MAC.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cipher::{KeyIvInit as _, StreamCipher as _};
use sha3::digest::{ExtendableOutput as _, Update as _, XofReader as _};
use sha3::{Digest as _, Sha3_256, Shake256};
use tor_hscrypto::time::TimePeriod;

use rustbalance::descriptor::build::blinded_id_and_subcredential;
use rustbalance::keys::onion_address::OnionAddress;

/// A descriptor's layers, each as the text that was encrypted (the middle one without its
/// zero padding, whose length is kept apart).
pub struct Layers {
    pub outer: String,
    pub middle: String,
    /// The middle layer's length with its zero padding.
    pub middle_padded_len: usize,
    pub inner: String,
}

/// Decrypt `text`, a descriptor of `address` for `period` published without restricted
/// discovery. Panics with a message saying what failed: a test helper.
pub fn layers(text: &str, address: &OnionAddress, period: TimePeriod) -> Layers {
    let (blinded, subcredential) =
        blinded_id_and_subcredential(address, period).expect("blinding the address");
    let blinded: [u8; 32] = blinded.into();
    let revision: u64 = item_arg(text, "revision-counter")
        .parse()
        .expect("a numeric revision counter");
    let decrypt = |layer_text: &str, keyword: &str, constant: &[u8]| {
        let blob = object_after(layer_text, keyword);
        let (salt, rest) = blob.split_at(16);
        let (ciphertext, mac) = rest.split_at(rest.len() - 32);
        let mut keys = [0u8; 80];
        Shake256::default()
            .chain(blinded)
            .chain(subcredential.as_ref())
            .chain(revision.to_be_bytes())
            .chain(salt)
            .chain(constant)
            .finalize_xof()
            .read(&mut keys);
        let expected_mac = Sha3_256::new()
            .chain_update(32u64.to_be_bytes())
            .chain_update(&keys[48..])
            .chain_update(16u64.to_be_bytes())
            .chain_update(salt)
            .chain_update(ciphertext)
            .finalize();
        assert_eq!(&expected_mac[..], mac, "the {keyword} layer's MAC");
        let key: [u8; 32] = keys[..32].try_into().unwrap();
        let iv: [u8; 16] = keys[32..48].try_into().unwrap();
        let mut plaintext = ciphertext.to_vec();
        tor_llcrypto::cipher::aes::Aes256Ctr::new(&key.into(), &iv.into())
            .apply_keystream(&mut plaintext);
        plaintext
    };
    let middle = decrypt(text, "superencrypted", b"hsdir-superencrypted-data");
    let middle_padded_len = middle.len();
    let middle = String::from_utf8(middle)
        .expect("the middle layer is text")
        .trim_end_matches('\0')
        .to_owned();
    let inner = decrypt(&middle, "encrypted", b"hsdir-encrypted-data");
    Layers {
        outer: text.to_owned(),
        middle,
        middle_padded_len,
        inner: String::from_utf8(inner).expect("the inner layer is text"),
    }
}

/// The layer's lines with every value replaced by its length, objects by their label (and
/// certificates by their line count): what two descriptors built by the same code share
/// whatever their keys and introduction points.
pub fn shape(layer: &str) -> Vec<String> {
    let mut shape = Vec::new();
    let mut object: Option<(String, usize)> = None;
    for line in layer.lines() {
        if let Some(label) = line.strip_prefix("-----BEGIN ") {
            object = Some((label.trim_end_matches('-').to_owned(), 0));
        } else if line.starts_with("-----END ") {
            let (label, lines) = object.take().expect("END without BEGIN");
            // An encrypted layer's length follows what it holds (how many introduction
            // points); a certificate's does not.
            if label == "MESSAGE" {
                shape.push(format!("  [{label}]"));
            } else {
                shape.push(format!("  [{label}: {lines} lines]"));
            }
        } else if let Some((_, lines)) = &mut object {
            *lines += 1;
        } else {
            let mut words = line.split(' ');
            let keyword = words.next().unwrap_or_default();
            let args: Vec<String> = words
                .map(|word| match word {
                    // Words that are the same for every service: keep them.
                    "ntor" | "x25519" => word.to_owned(),
                    _ if keyword == "create2-formats"
                        || keyword == "flow-control"
                        || keyword == "hs-descriptor"
                        || keyword == "descriptor-lifetime" =>
                    {
                        word.to_owned()
                    }
                    // Counters grow with time: their length says nothing.
                    _ if keyword == "revision-counter" => "<number>".to_owned(),
                    _ => format!("<{}>", word.len()),
                })
                .collect();
            shape.push(
                format!("{keyword} {}", args.join(" "))
                    .trim_end()
                    .to_owned(),
            );
        }
    }
    shape
}

/// The expiry, in hours since the epoch, of every Ed25519 certificate in `layer` whose
/// object follows a line starting with `keyword`.
pub fn cert_expiry_hours(layer: &str, keyword: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut rest = layer;
    while let Some(at) = rest.find(&format!("\n{keyword}\n")) {
        rest = &rest[at + 1..];
        let cert = object_after(rest, keyword);
        // version (1), type (1), expiration in hours (4, big-endian)
        found.push(u32::from_be_bytes(cert[2..6].try_into().unwrap()));
        rest = &rest[keyword.len()..];
    }
    found
}

/// The first argument of the first line starting with `keyword`.
pub fn item_arg<'a>(text: &'a str, keyword: &str) -> &'a str {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{keyword} ")))
        .unwrap_or_else(|| panic!("no {keyword} line"))
}

/// The bytes of the object that follows the line `keyword`.
fn object_after(text: &str, keyword: &str) -> Vec<u8> {
    let start = text
        .find(&format!("{keyword}\n-----BEGIN "))
        .unwrap_or_else(|| panic!("no {keyword} object"));
    let body: String = text[start..]
        .lines()
        .skip(2)
        .take_while(|line| !line.starts_with("-----END "))
        .collect();
    STANDARD.decode(body).expect("the object is base64")
}
