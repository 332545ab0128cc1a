//! The cluster secret: the one shared value from which every cluster credential is derived.
//!
//! A cluster is founded by `rustbalance init`, which draws 32 random bytes; `rustbalance join`
//! receives them in the join token. Nothing uses the raw bytes directly: each purpose gets its
//! own key through HKDF-SHA256 (RFC 5869) with a distinct `info` label, so a key that leaks from
//! one purpose (say a WireGuard preshared key read off one VPS's memory) tells nothing about the
//! others, and no two purposes can ever be confused for each other.
//!
//! | purpose | derivation |
//! |---|---|
//! | WireGuard preshared key of a pair of nodes | HKDF, info `rustbalance v1 wireguard psk` ‖ both node ids, sorted |
//! | AES-256-GCM key of the master key in a join token | HKDF, info `rustbalance v1 join token key` |
//! | MAC of a join request | HMAC-SHA256 under HKDF, info `rustbalance v1 join request mac key`, over node id, WireGuard key, endpoint and timestamp |
//! | the secret's public name ([`SecretId`]), which heartbeats carry during a rotation | the first 8 bytes of HKDF, info `rustbalance v1 secret id` |
//!
//! Variable-length inputs are length-prefixed, so no two different inputs encode the same
//! bytes (`"ab" ‖ "c"` differs from `"a" ‖ "bc"`).
//!
//! Whoever holds the secret can join the cluster and decrypt a join token, so it is treated
//! like the master key itself: wiped from memory on drop, never shown by `Debug`, no `Display`.

use std::fmt;

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::NodeId;

/// HKDF salt: names the protocol, so these keys differ from any other use of the same bytes.
const HKDF_SALT: &[u8] = b"rustbalance cluster secret v1";
/// HKDF info of the WireGuard preshared key of a pair of nodes.
const LABEL_PAIR_PSK: &[u8] = b"rustbalance v1 wireguard psk";
/// HKDF info of the key that encrypts the master key in a join token.
const LABEL_TOKEN_KEY: &[u8] = b"rustbalance v1 join token key";
/// HKDF info of the HMAC key that authenticates join requests.
const LABEL_JOIN_MAC_KEY: &[u8] = b"rustbalance v1 join request mac key";
/// HKDF info of a secret's public name.
const LABEL_SECRET_ID: &[u8] = b"rustbalance v1 secret id";

/// A cluster secret's public name: which secret a member holds, without revealing it (a
/// one-way derivation). Heartbeats carry it, so that during a rotation each pair of members
/// switches its tunnel once both hold the new secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretId(u64);

impl fmt::Display for SecretId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The secret every node of a cluster shares (32 random bytes).
pub struct ClusterSecret {
    bytes: Zeroizing<[u8; 32]>,
}

impl ClusterSecret {
    /// A new random secret for a new cluster, from the thread's generator (seeded by the
    /// operating system; it panics only if the operating system has no randomness to give).
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(&mut bytes[..]);
        ClusterSecret { bytes }
    }

    /// The secret with these bytes (read from a join token or the state file).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        // `bytes` is a copy the caller owns; wiping it is the caller's business.
        ClusterSecret {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// The raw bytes, only for writing them into a join token or the state file.
    /// Whether both are the same secret, in constant time.
    pub fn same_as(&self, other: &ClusterSecret) -> bool {
        let difference = self
            .as_bytes()
            .iter()
            .zip(other.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(difference) == 0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// The WireGuard preshared key between nodes `a` and `b`. The same whichever node asks
    /// (`pair_psk(a, b) == pair_psk(b, a)`), and different for every pair, so one pair's key
    /// opens no other pair's tunnel.
    pub fn pair_psk(&self, a: &NodeId, b: &NodeId) -> [u8; 32] {
        let (first, second) = if a <= b { (a, b) } else { (b, a) };
        let mut info = LABEL_PAIR_PSK.to_vec();
        push_length_prefixed(&mut info, first.as_str().as_bytes());
        push_length_prefixed(&mut info, second.as_str().as_bytes());
        self.derive(&info)
    }

    /// This secret's public name.
    pub fn id(&self) -> SecretId {
        let okm = self.derive(LABEL_SECRET_ID);
        let mut first = [0u8; 8];
        first.copy_from_slice(&okm[..8]);
        SecretId(u64::from_be_bytes(first))
    }

    /// The AES-256-GCM key that encrypts the master key inside a join token.
    pub fn token_key(&self) -> [u8; 32] {
        self.derive(LABEL_TOKEN_KEY)
    }

    /// The HMAC-SHA256 tag a joining node puts on its join request: it binds the node's id,
    /// its WireGuard public key, its endpoint and the time of the request, so none can be
    /// changed in flight and an old request cannot be replayed once its timestamp is stale.
    pub fn join_mac(
        &self,
        node_id: &NodeId,
        wg_pubkey: &[u8; 32],
        endpoint: &str,
        timestamp_secs: u64,
    ) -> [u8; 32] {
        self.join_mac_state(node_id, wg_pubkey, endpoint, timestamp_secs)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Whether `tag` is [`join_mac`](Self::join_mac) of these fields, compared in constant
    /// time so a forger learns nothing from how long a rejection takes.
    pub fn verify_join_mac(
        &self,
        node_id: &NodeId,
        wg_pubkey: &[u8; 32],
        endpoint: &str,
        timestamp_secs: u64,
        tag: &[u8; 32],
    ) -> bool {
        self.join_mac_state(node_id, wg_pubkey, endpoint, timestamp_secs)
            .verify_slice(tag)
            .is_ok()
    }

    /// HMAC state over the join request's fields, each length-prefixed or of fixed length.
    fn join_mac_state(
        &self,
        node_id: &NodeId,
        wg_pubkey: &[u8; 32],
        endpoint: &str,
        timestamp_secs: u64,
    ) -> Hmac<Sha256> {
        let key = Zeroizing::new(self.derive(LABEL_JOIN_MAC_KEY));
        // HMAC accepts keys of any length; 32 bytes cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key[..])
            .expect("HMAC takes a key of any length");
        let mut message = Vec::new();
        push_length_prefixed(&mut message, node_id.as_str().as_bytes());
        message.extend_from_slice(wg_pubkey);
        push_length_prefixed(&mut message, endpoint.as_bytes());
        message.extend_from_slice(&timestamp_secs.to_be_bytes());
        mac.update(&message);
        mac
    }

    /// 32 bytes of HKDF-SHA256 output for `info`.
    fn derive(&self, info: &[u8]) -> [u8; 32] {
        let mut okm = [0u8; 32];
        // HKDF-SHA256 can produce up to 255 × 32 bytes; 32 cannot fail.
        Hkdf::<Sha256>::new(Some(HKDF_SALT), &self.bytes[..])
            .expand(info, &mut okm)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        okm
    }
}

/// Appends `bytes` preceded by its length as a big-endian u32.
fn push_length_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Node ids are at most 64 bytes and endpoints a host name and port; neither nears 4 GiB.
    let len = u32::try_from(bytes.len()).expect("field shorter than 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Clone for ClusterSecret {
    fn clone(&self) -> Self {
        ClusterSecret::from_bytes(*self.as_bytes())
    }
}

impl PartialEq for ClusterSecret {
    fn eq(&self, other: &Self) -> bool {
        self.same_as(other)
    }
}

impl Eq for ClusterSecret {}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str) -> NodeId {
        NodeId::try_from(id.to_owned()).unwrap()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The secret 00 01 02 … 1f.
    fn counting_secret() -> ClusterSecret {
        ClusterSecret::from_bytes(std::array::from_fn(|i| i as u8))
    }

    // The expected values below were computed independently of this code, with Python's
    // `hmac` and `hashlib` (HKDF written out from RFC 5869), from the same labels and encoding.

    #[test]
    fn token_key_matches_fixed_vector() {
        assert_eq!(hex(&counting_secret().token_key()), TOKEN_KEY_VECTOR);
    }

    #[test]
    fn pair_psk_matches_fixed_vector() {
        let psk = counting_secret().pair_psk(&node("node-b"), &node("node-a"));
        assert_eq!(hex(&psk), PAIR_PSK_VECTOR);
    }

    #[test]
    fn join_mac_matches_fixed_vector() {
        let tag = counting_secret().join_mac(
            &node("node-c"),
            &[7u8; 32],
            "vps3.example.net:51820",
            1_700_000_000,
        );
        assert_eq!(hex(&tag), JOIN_MAC_VECTOR);
    }

    const TOKEN_KEY_VECTOR: &str =
        "fa58f504387b482b9851a59656b30be0cd955642a4bfc1b31a0cbdb4f4aa2003";
    const PAIR_PSK_VECTOR: &str =
        "446968812cecd6678ef1e120f6f67c25fe5d0772a6446270855c579463c7768d";
    const JOIN_MAC_VECTOR: &str =
        "660f0038248a9e02aca2ce6bfd4d3417bb2e9967aa293a173ecb27c1068dfcfe";

    #[test]
    fn pair_psk_is_the_same_from_both_ends_and_differs_per_pair() {
        let secret = ClusterSecret::generate();
        let (a, b, c) = (node("alpha"), node("beta"), node("gamma"));
        assert_eq!(secret.pair_psk(&a, &b), secret.pair_psk(&b, &a));
        assert_ne!(secret.pair_psk(&a, &b), secret.pair_psk(&a, &c));
        assert_ne!(secret.pair_psk(&a, &b), secret.pair_psk(&b, &c));
    }

    #[test]
    fn pair_psk_does_not_confuse_id_boundaries() {
        // Without length prefixes "ab"+"c" and "a"+"bc" would hash the same bytes.
        let secret = counting_secret();
        assert_ne!(
            secret.pair_psk(&node("ab"), &node("c")),
            secret.pair_psk(&node("a"), &node("bc"))
        );
    }

    #[test]
    fn each_purpose_gets_its_own_key() {
        let secret = counting_secret();
        let token = secret.token_key();
        let psk = secret.pair_psk(&node("a"), &node("b"));
        assert_ne!(token, psk);
        assert_ne!(token, *secret.as_bytes());
        assert_ne!(ClusterSecret::generate().token_key(), token);
    }

    #[test]
    fn join_mac_verifies_only_the_fields_it_was_made_for() {
        let secret = counting_secret();
        let id = node("node-c");
        let key = [7u8; 32];
        let endpoint = "vps3.example.net:51820";
        let tag = secret.join_mac(&id, &key, endpoint, 1_700_000_000);
        assert!(secret.verify_join_mac(&id, &key, endpoint, 1_700_000_000, &tag));

        assert!(!secret.verify_join_mac(&node("node-d"), &key, endpoint, 1_700_000_000, &tag));
        assert!(!secret.verify_join_mac(&id, &[8u8; 32], endpoint, 1_700_000_000, &tag));
        assert!(!secret.verify_join_mac(&id, &key, "vps4.example.net:51820", 1_700_000_000, &tag));
        assert!(!secret.verify_join_mac(&id, &key, endpoint, 1_700_000_001, &tag));
        let mut bad_tag = tag;
        bad_tag[31] ^= 1;
        assert!(!secret.verify_join_mac(&id, &key, endpoint, 1_700_000_000, &bad_tag));
    }

    #[test]
    fn join_mac_with_a_wrong_secret_is_rejected() {
        let id = node("node-c");
        let tag = ClusterSecret::generate().join_mac(&id, &[7u8; 32], "h:1", 5);
        assert!(!counting_secret().verify_join_mac(&id, &[7u8; 32], "h:1", 5, &tag));
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        assert_eq!(
            format!("{:?}", counting_secret()),
            "ClusterSecret([redacted])"
        );
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(
            ClusterSecret::generate().as_bytes(),
            ClusterSecret::generate().as_bytes()
        );
    }
}
