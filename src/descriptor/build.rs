//! Building and signing the master descriptor (rend-spec-v3 §2.4-2.5).
//!
//! For one time period: blind the master identity key for that period and make that period's
//! descriptor-signing key ([`BlindedIdentity`], computed once per period: the blinded key is
//! what the HSDirs index and what certifies the descriptor-signing key; C tor too keeps one
//! signing key for all uploads of a period's descriptor), then for every descriptor certify
//! the signing key anew for [`CERT_LIFETIME`], and write, encrypt and sign the
//! document as C tor does ([`super::encode`]). Every backend introduction point's auth-key and
//! enc-key is re-certified under our descriptor-signing key (certificate types 09 and 0B),
//! which is what makes a client accept backend introduction points under the master address.
//!
//! The revision counter follows rend-spec-v3 Appendix F.2 as C tor computes it: an
//! order-preserving encryption of the seconds since the start of the SRV period, keyed by
//! SHA3-256(`"rev-counter-generation\0"` ‖ the period's blinded secret key). Every node holding
//! the master key derives the same blinded key, so counters agree across the cluster without
//! any handover, and the counters of two periods share nothing that links their blinded keys.
//!
//! This module uses Arti's pure key and certificate crates (tor-hscrypto, tor-llcrypto,
//! tor-cert) but nothing that touches the network.

use std::time::SystemTime;

use rand::{CryptoRng, Rng};
use tor_hscrypto::ope::{AesOpeKey, SrvPeriodOffset};
use tor_hscrypto::pk::{HsBlindId, HsBlindIdKey, HsBlindIdKeypair, HsIdKey, HsIdKeypair};
use tor_hscrypto::time::TimePeriod;
use tor_hscrypto::Subcredential;
use tor_llcrypto::pk::{curve25519, ed25519};
use tor_netdoc::doc::hsdesc::{create_desc_sign_key_cert, IntroPointDesc};
use zeroize::Zeroizing;

use super::encode::{
    encode_descriptor, EncodeError, FlowControl, IntroPointCerts, LayerContent, LayerKeys,
};
use crate::keys::onion_address::OnionAddress;
use crate::params::CERT_LIFETIME;

/// The master identity, ready to blind and sign. Never printed.
pub struct MasterIdentity {
    keypair: HsIdKeypair,
    address: OnionAddress,
}

/// Why a descriptor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("the master key is not a valid ed25519 expanded key")]
    BadMasterKey,
    #[error("cannot blind the master key for time period {0}")]
    Blinding(u64),
    #[error("cannot certify the descriptor-signing key: {0}")]
    Certificate(String),
    #[error("cannot encode the descriptor: {0}")]
    Encode(#[from] EncodeError),
    #[error("the descriptor would be {limit} bytes or more, the HSDirs' limit")]
    TooLarge { limit: usize },
}

impl MasterIdentity {
    /// From tor's 64-byte expanded secret key `a ‖ h` (the body of `hs_ed25519_secret_key`).
    pub fn from_expanded_secret(expanded_secret: &[u8; 64]) -> Result<Self, BuildError> {
        let expanded = ed25519::ExpandedKeypair::from_secret_key_bytes(*expanded_secret)
            .ok_or(BuildError::BadMasterKey)?;
        let public: [u8; 32] = expanded.public().to_bytes();
        Ok(MasterIdentity {
            keypair: HsIdKeypair::from(expanded),
            address: OnionAddress::from_public_key(public),
        })
    }

    pub fn address(&self) -> OnionAddress {
        self.address
    }
}

impl std::fmt::Debug for MasterIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MasterIdentity({})", self.address)
    }
}

/// The blinded id and subcredential of `address` in `period`: what a client (or our health
/// check) needs to find and decrypt that service's descriptor.
pub fn blinded_id_and_subcredential(
    address: &OnionAddress,
    period: TimePeriod,
) -> Option<(HsBlindId, Subcredential)> {
    let id_key = HsIdKey::try_from(tor_hscrypto::pk::HsId::from(*address.public_key())).ok()?;
    let (blinded, subcredential) = id_key.compute_blinded_key(period).ok()?;
    Some((HsBlindId::from(blinded), subcredential))
}

/// The master identity blinded for one time period (rend-spec-v3 §2.1, Appendix A.2).
/// Blinding costs several scalar multiplications; the publisher does it once per period and
/// reuses it for every descriptor of that period.
pub struct BlindedIdentity {
    period: TimePeriod,
    public: HsBlindIdKey,
    keypair: HsBlindIdKeypair,
    subcredential: Subcredential,
    revision_key: AesOpeKey,
    /// This node's descriptor-signing key for the period (`KP_hs_desc_sign`).
    desc_signing: ed25519::Keypair,
    /// The introduction points' certificates under `desc_signing`, for the current hour.
    intro_point_certs: std::sync::Mutex<IntroPointCerts>,
}

impl MasterIdentity {
    /// Blind the master key for `period`.
    pub fn blind(&self, period: TimePeriod) -> Result<BlindedIdentity, BuildError> {
        let (public, keypair, subcredential) = self
            .keypair
            .compute_blinded_key(period)
            .map_err(|_| BuildError::Blinding(period.interval_num()))?;
        // C tor hashes the prefix with its terminating NUL; Arti's key adds the prefix
        // without it, so the NUL leads the secret.
        let blinded: &ed25519::ExpandedKeypair = keypair.as_ref();
        let mut revision_secret = Zeroizing::new(vec![0u8]);
        revision_secret.extend_from_slice(&blinded.to_secret_key_bytes());
        Ok(BlindedIdentity {
            period,
            public,
            keypair,
            subcredential,
            revision_key: AesOpeKey::from_secret(&revision_secret),
            desc_signing: ed25519::Keypair::generate(&mut rand::rng()),
            intro_point_certs: std::sync::Mutex::default(),
        })
    }
}

impl BlindedIdentity {
    pub fn period(&self) -> TimePeriod {
        self.period
    }

    /// The blinded public key, as HSDirs index descriptors by it.
    pub fn blind_id(&self) -> HsBlindId {
        self.public.id()
    }

    /// The revision counter for a descriptor built `srv_offset` seconds after the start of
    /// the SRV period this time period belongs to.
    pub fn revision_counter(&self, srv_offset: SrvPeriodOffset) -> u64 {
        self.revision_key.encrypt(srv_offset)
    }

    /// The blinded signing key's secret (scalar ‖ nonce prefix). Nothing in the program reads
    /// it: it exists for the tests that check no secret ever reaches a log or a status report.
    #[doc(hidden)]
    pub fn secret_bytes_for_leak_tests(&self) -> zeroize::Zeroizing<[u8; 64]> {
        let keypair: &tor_llcrypto::pk::ed25519::ExpandedKeypair = self.keypair.as_ref();
        zeroize::Zeroizing::new(keypair.to_secret_key_bytes())
    }
}

/// Everything that varies between two descriptors of the same blinded identity.
pub struct DescriptorParams<'a, T = IntroPointDesc> {
    pub intro_points: &'a [T],
    pub revision_counter: u64,
    /// What the consensus tells a C-tor service to advertise (none: congestion control off).
    pub flow_control: Option<FlowControl>,
    /// Restricted discovery: the clients that may find the service (empty: anyone).
    pub authorized_clients: &'a [curve25519::PublicKey],
    pub now: SystemTime,
    /// The HSDirs reject a descriptor of this many bytes or more (`HSV3MaxDescriptorSize`).
    pub size_limit: usize,
}

// By hand: derived impls would demand `T: Copy`, but only a reference to the list is copied.
impl<T> Clone for DescriptorParams<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DescriptorParams<'_, T> {}

/// Build, encrypt and sign the master descriptor for the blinded identity's period.
pub fn build_descriptor<R: Rng + CryptoRng>(
    blinded: &BlindedIdentity,
    params: &DescriptorParams<'_>,
    rng: &mut R,
) -> Result<String, BuildError> {
    let desc_signing = &blinded.desc_signing;
    let desc_signing_cert = create_desc_sign_key_cert(
        &desc_signing.verifying_key(),
        &blinded.keypair,
        params.now + CERT_LIFETIME,
    )
    .map_err(|err| BuildError::Certificate(err.to_string()))?;
    let text = encode_descriptor(
        &LayerKeys {
            blinded_public: blinded.public.as_ref().to_bytes(),
            subcredential: blinded.subcredential,
            revision_counter: params.revision_counter,
            desc_signing,
            desc_signing_cert: desc_signing_cert.as_ref(),
        },
        &LayerContent {
            intro_points: params.intro_points,
            flow_control: params.flow_control,
            authorized_clients: params.authorized_clients,
            now: params.now,
        },
        // A panic elsewhere while the lock was held leaves whole entries or none.
        &mut blinded
            .intro_point_certs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        rng,
    )?;
    // The HSDirs require `len < limit`.
    if text.len() >= params.size_limit {
        return Err(BuildError::TooLarge {
            limit: params.size_limit,
        });
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::synthetic::synthetic_intro_points;
    use base64::Engine as _;
    use curve25519_dalek::Scalar;
    use sha2::Sha512;
    use sha3::{Digest as _, Sha3_256};
    use std::time::Duration;
    use tor_checkable::Timebound;
    use tor_hscrypto::pk::HsClientDescEncKeypair;
    use tor_netdoc::doc::hsdesc::HsDesc;

    /// A tor-style expanded key whose scalar is *not* derived from a seed (as vanity keys).
    fn random_expanded_secret() -> [u8; 64] {
        let mut secret = [0u8; 64];
        rand::rng().fill_bytes(&mut secret);
        secret[0] &= 248;
        secret[31] &= 63;
        secret[31] |= 64;
        secret
    }

    fn period(interval_num: u64) -> TimePeriod {
        // 1440-minute periods with the 12-hour rotation offset of the public network.
        let when =
            SystemTime::UNIX_EPOCH + Duration::from_secs(interval_num * 86_400 + 12 * 3600 + 3600);
        TimePeriod::new(
            Duration::from_secs(86_400),
            when,
            Duration::from_secs(12 * 3600),
        )
        .unwrap()
    }

    fn params(intro_points: &[IntroPointDesc]) -> DescriptorParams<'_> {
        DescriptorParams {
            intro_points,
            revision_counter: 42,
            flow_control: Some(FlowControl { sendme_inc: 31 }),
            authorized_clients: &[],
            now: SystemTime::now(),
            size_limit: 50_000,
        }
    }

    /// What a client does: blind the *public* key from the address, then verify and decrypt.
    fn client_view(
        address: &OnionAddress,
        period: TimePeriod,
        text: &str,
    ) -> Result<HsDesc, String> {
        client_view_with_key(address, period, text, None)
    }

    /// The same, for a client that holds a restricted-discovery key.
    fn client_view_with_key(
        address: &OnionAddress,
        period: TimePeriod,
        text: &str,
        key: Option<&curve25519::StaticSecret>,
    ) -> Result<HsDesc, String> {
        let (blind_id, subcredential) = blinded_id_and_subcredential(address, period).unwrap();
        let keypair = key.map(|secret| {
            HsClientDescEncKeypair::new(
                curve25519::PublicKey::from(secret).into(),
                secret.clone().into(),
            )
        });
        HsDesc::parse_decrypt_validate(text, &blind_id, &subcredential, keypair.as_ref())
            .map_err(|e| format!("{e:?}"))
            .map(|bound| bound.dangerously_assume_timely())
    }

    fn client_key() -> curve25519::StaticSecret {
        curve25519::StaticSecret::random_from_rng(rand::rng())
    }

    #[test]
    fn descriptors_from_expanded_keys_verify_for_the_master_address() {
        let master = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let ips = synthetic_intro_points(3);
        for interval in [20_000, 20_001, 20_500] {
            let text = build_descriptor(
                &master.blind(period(interval)).unwrap(),
                &params(&ips),
                &mut rand::rng(),
            )
            .unwrap();
            let descriptor = client_view(&master.address(), period(interval), &text)
                .unwrap_or_else(|e| panic!("period {interval}: {e}"));
            assert_eq!(descriptor.intro_points().len(), 3);
            assert_eq!(u64::from(descriptor.revision()), 42);
            let (versions, sendme_inc) = descriptor.flow_control().unwrap();
            assert_eq!(
                (versions.to_string().as_str(), sendme_inc.get()),
                ("FlowCtrl=1-2", 31)
            );
            // A client of the next period derives another blinded key and must not accept it.
            assert!(client_view(&master.address(), period(interval + 1), &text).is_err());
        }
    }

    /// Checks the blinded signing key against rend-spec-v3 Appendix A.2, computed here
    /// independently of Arti: scalar a' = clamp(h)·a, public A' = a'·B, and the nonce prefix
    /// RH' = SHA-512("Derive temporary signing key hash input" ‖ RH)[..32]. An empty or
    /// unblinded prefix would leak the master key from a single published descriptor.
    #[test]
    fn blinded_signing_key_matches_the_spec() {
        let expanded = random_expanded_secret();
        let master = MasterIdentity::from_expanded_secret(&expanded).unwrap();
        for interval in [19_000, 20_000, 21_000] {
            let period = period(interval);
            let blinded = master.blind(period).unwrap();
            let blinded: &ed25519::ExpandedKeypair = blinded.keypair.as_ref();
            let blinded_secret = blinded.to_secret_key_bytes();

            let mut h: [u8; 32] = Sha3_256::new()
                .chain_update(b"Derive temporary signing key\0")
                .chain_update(master.address().public_key())
                .chain_update(b"(15112221349535400772501151409588531511454012693041857206046113283949847762202, 46316835694926478169428394003475163141307993866256225615783033603165251855960)")
                .chain_update(b"key-blind")
                .chain_update(interval.to_be_bytes())
                .chain_update(1440u64.to_be_bytes())
                .finalize()
                .into();
            h[0] &= 248;
            h[31] &= 63;
            h[31] |= 64;
            let a = Scalar::from_bytes_mod_order(expanded[..32].try_into().unwrap());
            let expected_scalar = Scalar::from_bytes_mod_order(h) * a;
            assert_eq!(blinded_secret[..32], expected_scalar.to_bytes());

            let expected_prefix = Sha512::new()
                .chain_update(b"Derive temporary signing key hash input")
                .chain_update(&expanded[32..])
                .finalize();
            assert_eq!(blinded_secret[32..], expected_prefix[..32]);

            let expected_public =
                curve25519_dalek::EdwardsPoint::mul_base(&expected_scalar).compress();
            assert_eq!(blinded.public().to_bytes(), expected_public.to_bytes());
            let (client_blinded, _) =
                blinded_id_and_subcredential(&master.address(), period).unwrap();
            assert_eq!(<[u8; 32]>::from(client_blinded), expected_public.to_bytes());
        }
    }

    #[test]
    fn a_descriptor_signed_by_another_key_is_rejected() {
        let real = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let forger = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let ips = synthetic_intro_points(2);
        let forged = build_descriptor(
            &forger.blind(period(20_000)).unwrap(),
            &params(&ips),
            &mut rand::rng(),
        )
        .unwrap();
        assert!(client_view(&real.address(), period(20_000), &forged).is_err());
    }

    #[test]
    fn size_limit_is_strict_at_the_boundary() {
        let master = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let ips = synthetic_intro_points(20);
        let blinded = master.blind(period(20_000)).unwrap();
        let text = build_descriptor(&blinded, &params(&ips), &mut rand::rng()).unwrap();
        // Same inputs give the same length (fixed-size keys, padded encrypted layers).
        let len = text.len();
        let with_limit = |size_limit| DescriptorParams {
            size_limit,
            ..params(&ips)
        };
        assert!(build_descriptor(&blinded, &with_limit(len + 1), &mut rand::rng()).is_ok());
        assert!(matches!(
            build_descriptor(&blinded, &with_limit(len), &mut rand::rng()),
            Err(BuildError::TooLarge { limit }) if limit == len
        ));
    }

    #[test]
    fn revision_counters_agree_across_instances_and_only_grow() {
        let secret = random_expanded_secret();
        let node_a = MasterIdentity::from_expanded_secret(&secret)
            .unwrap()
            .blind(period(20_000))
            .unwrap();
        let node_b = MasterIdentity::from_expanded_secret(&secret)
            .unwrap()
            .blind(period(20_000))
            .unwrap();
        let mut previous = 0;
        // Offsets across a whole 24-hour SRV period, in uneven steps.
        let mut offset = 0u32;
        while offset < 86_400 {
            let counter_a = node_a.revision_counter(SrvPeriodOffset::from(offset));
            assert_eq!(
                counter_a,
                node_b.revision_counter(SrvPeriodOffset::from(offset))
            );
            assert!(counter_a > previous, "not increasing at offset {offset}");
            previous = counter_a;
            offset += 1 + offset % 997;
        }
        let next_period = MasterIdentity::from_expanded_secret(&secret)
            .unwrap()
            .blind(period(20_001))
            .unwrap();
        assert_ne!(
            next_period.revision_counter(SrvPeriodOffset::from(1000)),
            node_a.revision_counter(SrvPeriodOffset::from(1000)),
            "each period's counter key comes from its own blinded key"
        );
    }

    /// The counter as C tor computes it (hs_service.c, crypto_ope.c), written out here
    /// independently of Arti: key = SHA3-256("rev-counter-generation\0" ‖ blinded secret key
    /// (64 bytes)); the counter for offset n is the sum of n+1 words, each a little-endian u16
    /// of the AES-256-CTR keystream (zero IV) plus one.
    #[test]
    fn revision_counter_is_c_tors() {
        use cipher::{KeyIvInit as _, StreamCipher as _};
        let master = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let blinded = master.blind(period(20_000)).unwrap();
        let blinded_secret = blinded.secret_bytes_for_leak_tests();
        let key: [u8; 32] = Sha3_256::new()
            .chain_update(b"rev-counter-generation\0")
            .chain_update(blinded_secret.as_slice())
            .finalize()
            .into();
        for offset in [0u32, 1, 17, 3600, 86_399] {
            let mut stream = vec![0u8; 2 * (offset as usize + 1)];
            tor_llcrypto::cipher::aes::Aes256Ctr::new(&key.into(), &[0u8; 16].into())
                .apply_keystream(&mut stream);
            let expected: u64 = stream
                .chunks(2)
                .map(|word| u64::from(u16::from_le_bytes([word[0], word[1]])) + 1)
                .sum();
            assert_eq!(
                blinded.revision_counter(SrvPeriodOffset::from(offset)),
                expected,
                "offset {offset}"
            );
        }
    }

    /// As C tor, one descriptor-signing key serves every upload of a period (its certificate,
    /// a deterministic ed25519 signature, is then the same within the hour).
    #[test]
    fn one_signing_key_per_period() {
        let master = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let ips = synthetic_intro_points(2);
        let now = SystemTime::now();
        let cert = |blinded: &BlindedIdentity| {
            let same_moment = DescriptorParams {
                now,
                ..params(&ips)
            };
            let text = build_descriptor(blinded, &same_moment, &mut rand::rng()).unwrap();
            text.split("descriptor-signing-key-cert\n")
                .nth(1)
                .and_then(|rest| rest.split("-----END").next())
                .unwrap()
                .to_owned()
        };
        let period_a = master.blind(period(20_000)).unwrap();
        let period_b = master.blind(period(20_001)).unwrap();
        assert_eq!(cert(&period_a), cert(&period_a));
        assert_ne!(cert(&period_a), cert(&period_b));
    }

    #[test]
    fn restricted_discovery_admits_only_the_listed_clients() {
        let master = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        let ips = synthetic_intro_points(3);
        let (alice, bob, mallory) = (client_key(), client_key(), client_key());
        let clients = [
            curve25519::PublicKey::from(&alice),
            curve25519::PublicKey::from(&bob),
        ];
        let text = build_descriptor(
            &master.blind(period(20_000)).unwrap(),
            &DescriptorParams {
                authorized_clients: &clients,
                ..params(&ips)
            },
            &mut rand::rng(),
        )
        .unwrap();
        for client in [&alice, &bob] {
            let descriptor =
                client_view_with_key(&master.address(), period(20_000), &text, Some(client))
                    .unwrap();
            assert_eq!(descriptor.intro_points().len(), 3);
        }
        assert!(
            client_view_with_key(&master.address(), period(20_000), &text, Some(&mallory)).is_err()
        );
        assert!(client_view(&master.address(), period(20_000), &text).is_err());
    }

    /// The outer document and the first layer's size as C tor writes them: the items in
    /// order, the first layer's plaintext padded to a multiple of 10 000 bytes (Arti's builder
    /// pads to 10 KiB).
    #[test]
    fn outer_layout_is_c_tors() {
        let master = MasterIdentity::from_expanded_secret(&random_expanded_secret()).unwrap();
        for count in [1, 8, 20] {
            let ips = synthetic_intro_points(count);
            let text = build_descriptor(
                &master.blind(period(20_000)).unwrap(),
                &params(&ips),
                &mut rand::rng(),
            )
            .unwrap();
            let mut in_object = false;
            let mut keywords = Vec::new();
            for line in text.lines() {
                if line.starts_with("-----BEGIN ") {
                    in_object = true;
                } else if line.starts_with("-----END ") {
                    in_object = false;
                } else if !in_object {
                    keywords.push(line.split(' ').next().unwrap());
                }
            }
            assert_eq!(
                keywords,
                [
                    "hs-descriptor",
                    "descriptor-lifetime",
                    "descriptor-signing-key-cert",
                    "revision-counter",
                    "superencrypted",
                    "signature"
                ]
            );
            assert!(text.starts_with("hs-descriptor 3\ndescriptor-lifetime 180\n"));
            let blob: String = text
                .split("-----BEGIN MESSAGE-----\n")
                .nth(1)
                .and_then(|rest| rest.split("-----END MESSAGE-----").next())
                .unwrap()
                .lines()
                .collect();
            let blob = base64::engine::general_purpose::STANDARD
                .decode(blob)
                .unwrap();
            // salt (16) ‖ ciphertext ‖ MAC (32)
            assert_eq!((blob.len() - 16 - 32) % 10_000, 0, "{count} intro points");
        }
    }
}
