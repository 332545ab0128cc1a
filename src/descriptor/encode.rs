//! The master descriptor written byte for byte as C tor writes an onion service's own
//! descriptor (rend-spec-v3 §2.4-2.5; tor's `hs_descriptor.c` and `hs_service.c`), so that
//! nothing but the introduction points tells an HSDir or a client that it was merged.
//!
//! Why not Arti's `HsDescBuilder`: it pads the first encrypted layer to a multiple of 10 KiB
//! (C tor: 10 000 bytes), writes one fake `auth-client` line (C tor: 16) and exactly as many
//! real ones as there are clients (C tor: padded with fakes to a multiple of 16, shuffled),
//! sorts introduction points by key and dates their certificates from the moment of
//! building (C tor: from the start of the hour). None of that can be set through the builder,
//! and each of them sets our descriptors apart from every C-tor service's, so the three
//! layers are written here. Arti still checks them: every unit test parses and decrypts what
//! this module writes with Arti's client-side parser.
//!
//! The layers, from the inside out:
//! - inner (`encrypted`): `create2-formats 2`, `flow-control` as the consensus enables it,
//!   then per introduction point `introduction-point`, `onion-key ntor`, `auth-key` (cert type
//!   09), `enc-key ntor`, `enc-key-cert` (type 0B), both certified by the descriptor-signing
//!   key until the start of the hour plus [`CERT_LIFETIME`];
//! - middle (`superencrypted`): `desc-auth-type x25519`, `desc-auth-ephemeral-key`, the
//!   `auth-client` lines, the encrypted inner layer; zero-padded to a multiple of 10 000 bytes;
//! - outer: `hs-descriptor 3`, `descriptor-lifetime`, `descriptor-signing-key-cert` (type 08,
//!   from now for [`CERT_LIFETIME`]), `revision-counter`, `superencrypted`, `signature`.
//!
//! Each encrypted layer is `salt ‖ AES-256-CTR(plaintext) ‖ MAC` with keys from
//! SHAKE-256(secret data ‖ subcredential ‖ revision counter ‖ salt ‖ layer constant). With
//! restricted discovery the inner layer's secret data also holds a random descriptor cookie,
//! which each authorized client finds, encrypted to it, in its `auth-client` line.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use cipher::{KeyIvInit as _, StreamCipher as _};
use rand::seq::SliceRandom as _;
use rand::{CryptoRng, Rng, RngExt as _};
use sha3::digest::{ExtendableOutput as _, Update as _, XofReader as _};
use sha3::{Digest as _, Sha3_256, Shake256};
use tor_cert::{CertType, CertifiedKey, Ed25519Cert, EncodedEd25519Cert};
use tor_hscrypto::Subcredential;
use tor_llcrypto::cipher::aes::Aes256Ctr;
use tor_llcrypto::pk::keymanip::convert_curve25519_to_ed25519_public;
use tor_llcrypto::pk::{curve25519, ed25519};
use tor_netdoc::doc::hsdesc::IntroPointDesc;
use zeroize::Zeroizing;

use crate::params::{CERT_LIFETIME, C_TOR_FLOWCTRL_VERSIONS, DESCRIPTOR_LIFETIME_MINUTES};

/// The first encrypted layer's plaintext is zero-padded to a multiple of this
/// (`HS_DESC_SUPERENC_PLAINTEXT_PAD_MULTIPLE`).
const MIDDLE_LAYER_PAD_MULTIPLE: usize = 10_000;
/// `auth-client` lines come in multiples of this; a service without restricted discovery
/// writes this many fake ones (`HS_DESC_AUTH_CLIENT_MULTIPLE`).
const AUTH_CLIENT_MULTIPLE: usize = 16;
/// Salt of each encrypted layer.
const SALT_LEN: usize = 16;
/// The descriptor cookie: the secret shared with the authorized clients.
const DESCRIPTOR_COOKIE_LEN: usize = 16;
const CLIENT_ID_LEN: usize = 8;
const IV_LEN: usize = 16;
/// Prefix of the signed text (rend-spec-v3 §2.4).
const SIGNATURE_PREFIX: &[u8] = b"Tor onion service descriptor sig v3";
/// The `create2-formats` a C-tor service lists: ntor.
const CREATE2_FORMAT_NTOR: u8 = 2;

/// Why an introduction point could not be written into the descriptor.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("cannot certify an introduction point's key: {0}")]
    Certificate(String),
    #[error("an introduction point has more than 255 link specifiers")]
    TooManyLinkSpecifiers,
    #[error("cannot write a link specifier: {0}")]
    LinkSpecifier(String),
    #[error("an introduction point's enc-key has no ed25519 form")]
    EncKeyNotConvertible,
}

/// The `flow-control` line: the SENDME increment a client's rendezvous circuit should use
/// with congestion control (proposal 324), after the FlowCtrl versions C tor writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowControl {
    pub sendme_inc: u8,
}

/// The two certificates (auth-key, enc-key-cert) of each introduction point under one
/// descriptor-signing key, for the hour they are dated from. C tor dates them from the start
/// of the hour, so every build within the hour would sign the same bytes again: two ed25519
/// signatures and a curve25519-to-ed25519 conversion per introduction point, most of a
/// build's time. Entries of an earlier hour are dropped when the hour changes.
#[derive(Default)]
pub struct IntroPointCerts {
    hour_start: u64,
    /// Keyed by the introduction point's auth key and enc key together.
    certs: HashMap<[u8; 64], (EncodedEd25519Cert, EncodedEd25519Cert)>,
}

impl IntroPointCerts {
    /// Both certificates of `intro_point`, signed by `desc_signing` until `hour_start` +
    /// [`CERT_LIFETIME`].
    fn get(
        &mut self,
        desc_signing: &ed25519::Keypair,
        intro_point: &IntroPointDesc,
        hour_start: u64,
    ) -> Result<&(EncodedEd25519Cert, EncodedEd25519Cert), EncodeError> {
        if hour_start != self.hour_start {
            self.certs.clear();
            self.hour_start = hour_start;
        }
        let auth_key: &ed25519::PublicKey = intro_point.ipt_sid_key().as_ref();
        let enc_key: &curve25519::PublicKey = intro_point.svc_ntor_key().as_ref();
        let mut id = [0u8; 64];
        id[..32].copy_from_slice(auth_key.as_bytes());
        id[32..].copy_from_slice(enc_key.as_bytes());
        let entry = match self.certs.entry(id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let expiry =
                    SystemTime::UNIX_EPOCH + Duration::from_secs(hour_start) + CERT_LIFETIME;
                let signer_id = ed25519::Ed25519Identity::from(desc_signing.verifying_key());
                let certify = |cert_type, key: ed25519::Ed25519Identity| {
                    Ed25519Cert::builder()
                        .cert_type(cert_type)
                        .expiration(expiry)
                        .signing_key(signer_id)
                        .cert_key(CertifiedKey::Ed25519(key))
                        .encode_and_sign(desc_signing)
                        .map_err(|err| EncodeError::Certificate(err.to_string()))
                };
                let auth_cert = certify(CertType::HS_IP_V_SIGNING, auth_key.into())?;
                let enc_key_as_ed25519 = convert_curve25519_to_ed25519_public(enc_key, 0)
                    .ok_or(EncodeError::EncKeyNotConvertible)?;
                let enc_cert = certify(CertType::HS_IP_CC_SIGNING, (&enc_key_as_ed25519).into())?;
                entry.insert((auth_cert, enc_cert))
            }
        };
        Ok(entry)
    }
}

/// Keys of one descriptor: the blinded identity and a descriptor-signing key made for it.
pub struct LayerKeys<'a> {
    /// The blinded public key (first part of every layer's secret data).
    pub blinded_public: [u8; 32],
    pub subcredential: Subcredential,
    pub revision_counter: u64,
    pub desc_signing: &'a ed25519::Keypair,
    /// The type-08 certificate of `desc_signing`, signed by the blinded key.
    pub desc_signing_cert: &'a [u8],
}

/// What goes into the encrypted layers.
pub struct LayerContent<'a> {
    pub intro_points: &'a [IntroPointDesc],
    pub flow_control: Option<FlowControl>,
    /// Restricted discovery: the x25519 keys of the clients that may decrypt the inner layer.
    /// Empty: anyone who knows the address may.
    pub authorized_clients: &'a [curve25519::PublicKey],
    pub now: SystemTime,
}

/// The whole signed descriptor.
pub fn encode_descriptor<R: Rng + CryptoRng>(
    keys: &LayerKeys<'_>,
    content: &LayerContent<'_>,
    certs: &mut IntroPointCerts,
    rng: &mut R,
) -> Result<String, EncodeError> {
    let inner = inner_layer(keys.desc_signing, content, certs, rng)?;
    let cookie = (!content.authorized_clients.is_empty())
        .then(|| Zeroizing::new(rng.random::<[u8; DESCRIPTOR_COOKIE_LEN]>()));
    let mut inner_secret = Zeroizing::new(keys.blinded_public.to_vec());
    if let Some(cookie) = &cookie {
        inner_secret.extend_from_slice(cookie.as_slice());
    }
    let inner_encrypted = encrypt_layer(
        keys,
        &inner_secret,
        b"hsdir-encrypted-data",
        inner.as_bytes(),
        rng,
    );
    let middle = middle_layer(
        &keys.subcredential,
        content.authorized_clients,
        cookie.as_deref(),
        &inner_encrypted,
        rng,
    );
    let mut middle = Zeroizing::new(middle.into_bytes());
    let padded_len = middle.len().div_ceil(MIDDLE_LAYER_PAD_MULTIPLE) * MIDDLE_LAYER_PAD_MULTIPLE;
    middle.resize(padded_len, 0);
    let middle_encrypted = encrypt_layer(
        keys,
        &keys.blinded_public,
        b"hsdir-superencrypted-data",
        &middle,
        rng,
    );
    Ok(outer_layer(keys, &middle_encrypted))
}

/// The second (innermost) layer's plaintext.
fn inner_layer<R: Rng + CryptoRng>(
    desc_signing: &ed25519::Keypair,
    content: &LayerContent<'_>,
    certs: &mut IntroPointCerts,
    rng: &mut R,
) -> Result<String, EncodeError> {
    let mut text = format!("create2-formats {CREATE2_FORMAT_NTOR}\n");
    if let Some(flow) = content.flow_control {
        text += &format!(
            "flow-control {C_TOR_FLOWCTRL_VERSIONS} {}\n",
            flow.sendme_inc
        );
    }
    // C tor certifies introduction points from the start of the current hour.
    let since_epoch = content
        .now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let hour_start = since_epoch - since_epoch % 3600;
    // C tor lists them in the order of a hash table; the merge's order would group them by
    // backend.
    let mut intro_points: Vec<&IntroPointDesc> = content.intro_points.iter().collect();
    intro_points.shuffle(rng);
    for intro_point in intro_points {
        let mut link_specifiers = vec![u8::try_from(intro_point.link_specifiers().len())
            .map_err(|_| EncodeError::TooManyLinkSpecifiers)?];
        for spec in intro_point.link_specifiers() {
            tor_bytes::Writer::write(&mut link_specifiers, spec)
                .map_err(|err| EncodeError::LinkSpecifier(err.to_string()))?;
        }
        let (auth_cert, enc_cert) = certs.get(desc_signing, intro_point, hour_start)?;
        let enc_key: &curve25519::PublicKey = intro_point.svc_ntor_key().as_ref();
        text += &format!(
            "introduction-point {}\nonion-key ntor {}\nauth-key\n{}enc-key ntor {}\nenc-key-cert\n{}",
            STANDARD.encode(&link_specifiers),
            STANDARD.encode(intro_point.ipt_ntor_key().as_bytes()),
            object("ED25519 CERT", auth_cert.as_ref()),
            STANDARD.encode(enc_key.as_bytes()),
            object("ED25519 CERT", enc_cert.as_ref()),
        );
    }
    Ok(text)
}

/// The first (middle) layer's plaintext, before padding.
fn middle_layer<R: Rng + CryptoRng>(
    subcredential: &Subcredential,
    clients: &[curve25519::PublicKey],
    cookie: Option<&[u8; DESCRIPTOR_COOKIE_LEN]>,
    inner_encrypted: &[u8],
    rng: &mut R,
) -> String {
    let ephemeral = curve25519::StaticSecret::random_from_rng(&mut *rng);
    let ephemeral_public = curve25519::PublicKey::from(&ephemeral);
    let mut entries: Vec<String> = match cookie {
        Some(cookie) => clients
            .iter()
            .map(|client| {
                let shared = ephemeral.diffie_hellman(client);
                let mut keys = Zeroizing::new([0u8; CLIENT_ID_LEN + 32]);
                Shake256::default()
                    .chain(subcredential.as_ref())
                    .chain(shared.as_bytes())
                    .finalize_xof()
                    .read(keys.as_mut_slice());
                let (client_id, cookie_key) = keys.split_at(CLIENT_ID_LEN);
                let iv = rng.random::<[u8; IV_LEN]>();
                let mut encrypted_cookie = *cookie;
                let cookie_key: [u8; 32] = cookie_key.try_into().expect("32 bytes");
                Aes256Ctr::new(&cookie_key.into(), &iv.into())
                    .apply_keystream(&mut encrypted_cookie);
                auth_client_line(client_id, &iv, &encrypted_cookie)
            })
            .collect(),
        None => Vec::new(),
    };
    let padded = entries.len().div_ceil(AUTH_CLIENT_MULTIPLE).max(1) * AUTH_CLIENT_MULTIPLE;
    for _ in entries.len()..padded {
        entries.push(auth_client_line(
            &rng.random::<[u8; CLIENT_ID_LEN]>(),
            &rng.random::<[u8; IV_LEN]>(),
            &rng.random::<[u8; DESCRIPTOR_COOKIE_LEN]>(),
        ));
    }
    // The position of a client's line must not tell which client it is.
    entries.shuffle(rng);
    format!(
        "desc-auth-type x25519\ndesc-auth-ephemeral-key {}\n{}encrypted\n{}",
        STANDARD.encode(ephemeral_public.as_bytes()),
        entries.concat(),
        // C tor ends this layer without a newline after the object.
        object("MESSAGE", inner_encrypted).trim_end_matches('\n'),
    )
}

fn auth_client_line(client_id: &[u8], iv: &[u8], encrypted_cookie: &[u8]) -> String {
    format!(
        "auth-client {} {} {}\n",
        STANDARD_NO_PAD.encode(client_id),
        STANDARD_NO_PAD.encode(iv),
        STANDARD_NO_PAD.encode(encrypted_cookie)
    )
}

/// The outer document, signed by the descriptor-signing key.
fn outer_layer(keys: &LayerKeys<'_>, middle_encrypted: &[u8]) -> String {
    let body = format!(
        "hs-descriptor 3\ndescriptor-lifetime {DESCRIPTOR_LIFETIME_MINUTES}\ndescriptor-signing-key-cert\n{}revision-counter {}\nsuperencrypted\n{}",
        object("ED25519 CERT", keys.desc_signing_cert),
        keys.revision_counter,
        object("MESSAGE", middle_encrypted),
    );
    let mut signed = SIGNATURE_PREFIX.to_vec();
    signed.extend_from_slice(body.as_bytes());
    let signature = keys.desc_signing.sign(&signed);
    format!(
        "{body}signature {}\n",
        STANDARD_NO_PAD.encode(signature.to_bytes())
    )
}

/// `salt ‖ AES-256-CTR(plaintext) ‖ MAC` (rend-spec-v3 §2.5.3).
fn encrypt_layer<R: Rng + CryptoRng>(
    keys: &LayerKeys<'_>,
    secret_data: &[u8],
    constant: &[u8],
    plaintext: &[u8],
    rng: &mut R,
) -> Vec<u8> {
    let salt = rng.random::<[u8; SALT_LEN]>();
    let mut derived = Zeroizing::new([0u8; 32 + 16 + 32]);
    Shake256::default()
        .chain(secret_data)
        .chain(keys.subcredential.as_ref())
        .chain(keys.revision_counter.to_be_bytes())
        .chain(salt)
        .chain(constant)
        .finalize_xof()
        .read(derived.as_mut_slice());
    let key: [u8; 32] = derived[..32].try_into().expect("32 bytes");
    let iv: [u8; 16] = derived[32..48].try_into().expect("16 bytes");
    let mac_key = &derived[48..];

    let mut out = Vec::with_capacity(SALT_LEN + plaintext.len() + 32);
    out.extend_from_slice(&salt);
    out.extend_from_slice(plaintext);
    Aes256Ctr::new(&key.into(), &iv.into()).apply_keystream(&mut out[SALT_LEN..]);
    let mac = Sha3_256::new()
        .chain_update((mac_key.len() as u64).to_be_bytes())
        .chain_update(mac_key)
        .chain_update((SALT_LEN as u64).to_be_bytes())
        .chain_update(salt)
        .chain_update(&out[SALT_LEN..])
        .finalize();
    out.extend_from_slice(&mac);
    out
}

/// A PEM-style object: base64 in lines of 64 characters, each ending in a newline.
fn object(label: &str, bytes: &[u8]) -> String {
    let encoded = STANDARD.encode(bytes);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text += std::str::from_utf8(line).expect("base64 is ASCII");
        text.push('\n');
    }
    text += &format!("-----END {label}-----\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_wrap_at_64_columns_as_tor_does() {
        let text = object("MESSAGE", &[7u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN MESSAGE-----");
        // 100 bytes: 136 base64 characters.
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[2].len(), 64);
        assert_eq!(lines[3].len(), 8);
        assert!(lines[3].ends_with('='));
        assert_eq!(lines[4], "-----END MESSAGE-----");
    }

    #[test]
    fn introduction_point_certificates_are_signed_once_an_hour() {
        let desc_signing = ed25519::Keypair::generate(&mut rand::rng());
        let ips = crate::descriptor::synthetic::synthetic_intro_points(2);
        let mut certs = IntroPointCerts::default();
        let bytes = |pair: &(EncodedEd25519Cert, EncodedEd25519Cert)| {
            (pair.0.as_ref().to_vec(), pair.1.as_ref().to_vec())
        };
        let hour = 1_800_000_000 / 3600 * 3600;
        let first = bytes(certs.get(&desc_signing, &ips[0], hour).unwrap());
        certs.get(&desc_signing, &ips[1], hour).unwrap();
        assert_eq!(certs.certs.len(), 2);
        assert_eq!(
            bytes(certs.get(&desc_signing, &ips[0], hour).unwrap()),
            first
        );
        // The next hour: dated an hour later, and last hour's entries gone.
        let next = bytes(certs.get(&desc_signing, &ips[0], hour + 3600).unwrap());
        assert_ne!(next, first);
        assert_eq!(certs.certs.len(), 1);
        // version (1), type (1), expiry in hours (4)
        let expiry_hours = |cert: &[u8]| u32::from_be_bytes(cert[2..6].try_into().unwrap());
        assert_eq!(
            expiry_hours(&first.0),
            u32::try_from(hour / 3600 + 54).unwrap()
        );
        assert_eq!(expiry_hours(&next.1), expiry_hours(&first.1) + 1);
    }

    #[test]
    fn fake_auth_clients_fill_to_a_multiple_of_sixteen() {
        let subcredential = Subcredential::from([3u8; 32]);
        let count = |clients: usize| {
            let keys: Vec<curve25519::PublicKey> = (0..clients)
                .map(|_| {
                    curve25519::PublicKey::from(&curve25519::StaticSecret::random_from_rng(
                        rand::rng(),
                    ))
                })
                .collect();
            let cookie = [9u8; DESCRIPTOR_COOKIE_LEN];
            let text = middle_layer(
                &subcredential,
                &keys,
                (!keys.is_empty()).then_some(&cookie),
                b"x",
                &mut rand::rng(),
            );
            text.lines()
                .filter(|line| line.starts_with("auth-client "))
                .count()
        };
        assert_eq!(count(0), 16);
        assert_eq!(count(1), 16);
        assert_eq!(count(16), 16);
        assert_eq!(count(17), 32);
    }
}
