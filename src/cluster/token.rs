//! The join token: everything a new node needs to join a cluster, in one line to paste.
//!
//! `rustbalance init` prints a token; `rustbalance join <token>` on another VPS uses it to reach
//! the founding node and to hold the master key. The token is
//!
//! ```text
//! rb1:BASE64(JSON)
//! {
//!   "version": 1,
//!   "origin": { "node_id": "...", "wg_pubkey": "BASE64 (32 bytes)", "wg_endpoint": "HOST:PORT" },
//!   "master_key_encrypted": "BASE64 (64-byte expanded master key + 16-byte GCM tag)",
//!   "encryption_nonce": "BASE64 (12 bytes)",
//!   "cluster_secret": "BASE64 (32 bytes)"
//! }
//! ```
//!
//! Base64 is the standard alphabet with padding, as WireGuard writes its keys.
//!
//! The master key is sealed with AES-256-GCM under [`ClusterSecret::token_key`], with the
//! version and the origin fields as associated data. The key to open it travels in the same
//! token, so this is **not** secrecy from whoever holds the token (see [`TOKEN_WARNING`]); it
//! keeps the key out of sight of a casual look at the JSON, and it makes any change to the
//! token (a flipped byte, an edited origin pointing the new node at another endpoint) fail as
//! [`TokenError::Tampered`] instead of producing a wrong key or a wrong peer.
//!
//! Every way a token can be malformed has its own [`TokenError`] variant, so the operator is
//! told what is wrong with what they pasted. No error and no `Debug` output contains secret
//! bytes.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::cluster::secret::ClusterSecret;
use crate::cluster::{Endpoint, NodeId};
use crate::keys::MasterKey;

/// What every token starts with; the digit is the token format's version.
pub const TOKEN_PREFIX: &str = "rb1:";

/// The only `version` this program reads and writes.
const TOKEN_VERSION: u64 = 1;

/// Length of a WireGuard public key and of the cluster secret.
const KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce.
const NONCE_LEN: usize = 12;
/// Length of the sealed master key: the 64-byte expanded key and the 16-byte GCM tag.
const SEALED_MASTER_KEY_LEN: usize = 64 + 16;

/// Domain separation for the associated data, so no other AES-GCM use could accept a token.
const AAD_LABEL: &[u8] = b"rustbalance join token";

/// To print next to every token: it is as sensitive as the master key.
pub const TOKEN_WARNING: &str = "This join token contains the master key and the cluster \
    secret: anyone who has it can impersonate your onion service and join your cluster. \
    Handle it like the master key itself: paste it only onto your own nodes, over a secure \
    channel, and do not keep it in shell history, chat logs or tickets.";

/// The node that issued the token, which a joining node contacts first.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TokenOrigin {
    pub node_id: NodeId,
    /// The origin's WireGuard public key.
    pub wg_pubkey: [u8; 32],
    /// Where the origin listens for cluster traffic.
    pub wg_endpoint: Endpoint,
}

/// A decoded join token. `Debug` shows the origin and the onion address, never a secret.
pub struct JoinToken {
    pub origin: TokenOrigin,
    pub cluster_secret: ClusterSecret,
    pub master_key: MasterKey,
}

/// Why a join token was refused. Each variant says what is wrong with the pasted text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this is not a RustBalance join token: it must start with \"{TOKEN_PREFIX}\"; copy the whole token that `rustbalance init` printed")]
    WrongPrefix,
    #[error("the join token is damaged: the text after \"{TOKEN_PREFIX}\" is not valid base64; copy the token again in one piece")]
    BadBase64,
    #[error("the join token is damaged: its content is not the expected JSON ({0})")]
    BadJson(String),
    #[error("the join token has version {0}, but this program only reads version {TOKEN_VERSION}: use the same RustBalance version on all nodes")]
    UnknownVersion(u64),
    #[error("the join token is damaged: field `{field}` is not valid base64")]
    BadFieldBase64 { field: &'static str },
    #[error("the join token is damaged: field `{field}` holds {found} bytes, expected {expected}")]
    BadLength {
        field: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("the join token's origin node id is invalid: {0}")]
    BadNodeId(String),
    #[error("the join token's origin endpoint is invalid: {0}")]
    BadEndpoint(String),
    #[error("the join token was altered or damaged: its encrypted master key does not verify against its cluster secret and origin; get a fresh token from the origin node")]
    Tampered,
    #[error("the join token decrypts, but what it holds is not an ed25519 master key: the token was made by a faulty program; get a fresh token")]
    BadMasterKey,
}

/// The JSON inside the token, as written.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenJson {
    version: u64,
    origin: OriginJson,
    master_key_encrypted: String,
    encryption_nonce: String,
    cluster_secret: String,
}

impl Drop for TokenJson {
    /// The base64 of the cluster secret is as secret as the bytes.
    fn drop(&mut self) {
        self.cluster_secret.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OriginJson {
    node_id: String,
    wg_pubkey: String,
    wg_endpoint: String,
}

/// Read first, alone, so that a token of another version is reported as such rather than as
/// a field it has and we do not know.
#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

impl JoinToken {
    /// The token text: `rb1:` and the base64 of the JSON. `rng` draws the AES-GCM nonce.
    pub fn encode(&self, rng: &mut impl CryptoRng) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        let key = Zeroizing::new(self.cluster_secret.token_key());
        let aad = associated_data(&self.origin);
        let sealed = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]))
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: self.master_key.expanded_secret(),
                    aad: &aad,
                },
            )
            // AES-GCM fails only for messages over 64 GiB; this one is 64 bytes.
            .expect("AES-GCM seals a 64-byte message");
        let json = TokenJson {
            version: TOKEN_VERSION,
            origin: OriginJson {
                node_id: self.origin.node_id.to_string(),
                wg_pubkey: BASE64.encode(self.origin.wg_pubkey),
                wg_endpoint: self.origin.wg_endpoint.to_string(),
            },
            master_key_encrypted: BASE64.encode(&sealed),
            encryption_nonce: BASE64.encode(nonce),
            cluster_secret: BASE64.encode(self.cluster_secret.as_bytes()),
        };
        // A struct of strings and a number always serializes.
        let text = Zeroizing::new(serde_json::to_vec(&json).expect("token JSON serializes"));
        format!("{TOKEN_PREFIX}{}", BASE64.encode(&text[..]))
    }

    /// Parses and checks a token. Surrounding white space (a pasted newline) is ignored.
    pub fn decode(token: &str) -> Result<JoinToken, TokenError> {
        let body = token
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::WrongPrefix)?;
        let text = Zeroizing::new(BASE64.decode(body).map_err(|_| TokenError::BadBase64)?);

        let VersionOnly { version } = serde_json::from_slice(&text).map_err(json_error)?;
        if version != TOKEN_VERSION {
            return Err(TokenError::UnknownVersion(version));
        }
        let json: TokenJson = serde_json::from_slice(&text).map_err(json_error)?;

        let origin = TokenOrigin {
            node_id: NodeId::try_from(json.origin.node_id.clone())
                .map_err(TokenError::BadNodeId)?,
            wg_pubkey: decode_fixed("origin.wg_pubkey", &json.origin.wg_pubkey)?,
            wg_endpoint: json
                .origin
                .wg_endpoint
                .parse()
                .map_err(TokenError::BadEndpoint)?,
        };
        let nonce: [u8; NONCE_LEN] = decode_fixed("encryption_nonce", &json.encryption_nonce)?;
        let sealed: [u8; SEALED_MASTER_KEY_LEN] =
            decode_fixed("master_key_encrypted", &json.master_key_encrypted)?;
        let cluster_secret = ClusterSecret::from_bytes(
            *decode_fixed::<KEY_LEN>("cluster_secret", &json.cluster_secret).map(Zeroizing::new)?,
        );

        let key = Zeroizing::new(cluster_secret.token_key());
        let aad = associated_data(&origin);
        let opened = Zeroizing::new(
            Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]))
                .decrypt(
                    Nonce::from_slice(&nonce),
                    Payload {
                        msg: &sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| TokenError::Tampered)?,
        );
        let mut expanded = Zeroizing::new([0u8; 64]);
        // GCM's plaintext is as long as the ciphertext less the tag: 80 - 16 = 64 bytes.
        expanded.copy_from_slice(&opened);
        let master_key =
            MasterKey::from_expanded(&expanded).map_err(|_| TokenError::BadMasterKey)?;

        Ok(JoinToken {
            origin,
            cluster_secret,
            master_key,
        })
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("origin", &self.origin)
            .field("cluster_secret", &self.cluster_secret)
            .field("master_key", &self.master_key)
            .finish()
    }
}

/// The bytes the GCM tag binds besides the master key: the format version and every origin
/// field, each of fixed length or length-prefixed so no two origins encode alike.
fn associated_data(origin: &TokenOrigin) -> Vec<u8> {
    let mut aad = AAD_LABEL.to_vec();
    aad.extend_from_slice(&TOKEN_VERSION.to_be_bytes());
    for field in [
        origin.node_id.as_str().as_bytes(),
        &origin.wg_pubkey[..],
        origin.wg_endpoint.to_string().as_bytes(),
    ] {
        // Node ids are at most 64 bytes, keys 32 and endpoints a host name and port.
        let len = u32::try_from(field.len()).expect("origin field shorter than 4 GiB");
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(field);
    }
    aad
}

/// Decodes the base64 field `field`, which must hold exactly `N` bytes.
fn decode_fixed<const N: usize>(field: &'static str, text: &str) -> Result<[u8; N], TokenError> {
    let bytes = Zeroizing::new(
        BASE64
            .decode(text)
            .map_err(|_| TokenError::BadFieldBase64 { field })?,
    );
    <[u8; N]>::try_from(&bytes[..]).map_err(|_| TokenError::BadLength {
        field,
        expected: N,
        found: bytes.len(),
    })
}

/// Describes a JSON error by its kind and position only for syntax errors: serde's message
/// for those quotes nothing from the input. For a missing, unknown or mistyped field the
/// message names the field and at most a value of the wrong type, never a well-formed secret
/// (every secret field is a string, and a string is what they expect).
fn json_error(error: serde_json::Error) -> TokenError {
    use serde_json::error::Category;
    let detail = match error.classify() {
        Category::Data => error.to_string(),
        Category::Syntax | Category::Io => format!(
            "syntax error at line {} column {}",
            error.line(),
            error.column()
        ),
        Category::Eof => "the JSON is cut short".to_owned(),
    };
    TokenError::BadJson(detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::Value;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn sample_token() -> JoinToken {
        JoinToken {
            origin: TokenOrigin {
                node_id: NodeId::try_from("node-alpha".to_owned()).unwrap(),
                wg_pubkey: [0x42; 32],
                wg_endpoint: "vps1.example.net:51820".parse().unwrap(),
            },
            cluster_secret: ClusterSecret::from_bytes([0x5a; 32]),
            master_key: MasterKey::from_seed(&[9; 32]),
        }
    }

    fn encoded() -> String {
        sample_token().encode(&mut rng())
    }

    /// The token's JSON, for editing.
    fn json_of(token: &str) -> Value {
        let text = BASE64
            .decode(token.strip_prefix(TOKEN_PREFIX).unwrap())
            .unwrap();
        serde_json::from_slice(&text).unwrap()
    }

    fn token_of(json: &Value) -> String {
        format!("{TOKEN_PREFIX}{}", BASE64.encode(json.to_string()))
    }

    /// `encoded()` with one JSON edit applied.
    fn edited(edit: impl FnOnce(&mut Value)) -> String {
        let mut json = json_of(&encoded());
        edit(&mut json);
        token_of(&json)
    }

    fn decode_err(token: &str) -> TokenError {
        JoinToken::decode(token).unwrap_err()
    }

    #[test]
    fn token_round_trips() {
        let original = sample_token();
        let decoded = JoinToken::decode(&original.encode(&mut rng())).unwrap();
        assert_eq!(decoded.origin, original.origin);
        assert_eq!(
            decoded.cluster_secret.as_bytes(),
            original.cluster_secret.as_bytes()
        );
        assert_eq!(
            decoded.master_key.expanded_secret(),
            original.master_key.expanded_secret()
        );
    }

    #[test]
    fn token_has_exactly_the_designed_fields() {
        let json = json_of(&encoded());
        let mut keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cluster_secret",
                "encryption_nonce",
                "master_key_encrypted",
                "origin",
                "version"
            ]
        );
        assert_eq!(json["version"], 1);
        assert_eq!(json["origin"]["node_id"], "node-alpha");
        assert_eq!(json["origin"]["wg_endpoint"], "vps1.example.net:51820");
        assert_eq!(json["origin"]["wg_pubkey"], BASE64.encode([0x42; 32]));
        assert_eq!(json["origin"].as_object().unwrap().len(), 3);
    }

    #[test]
    fn pasted_white_space_is_ignored() {
        assert!(JoinToken::decode(&format!("  {}\n", encoded())).is_ok());
    }

    #[test]
    fn wrong_prefix_is_rejected() {
        let token = encoded();
        let body = token.strip_prefix(TOKEN_PREFIX).unwrap();
        assert_eq!(decode_err(body), TokenError::WrongPrefix);
        assert_eq!(decode_err(&format!("rb2:{body}")), TokenError::WrongPrefix);
        assert_eq!(decode_err(""), TokenError::WrongPrefix);
    }

    #[test]
    fn bad_base64_is_rejected() {
        assert_eq!(decode_err("rb1:not*base64"), TokenError::BadBase64);
        let mut cut = encoded();
        cut.pop();
        assert_eq!(decode_err(&cut), TokenError::BadBase64);
    }

    #[test]
    fn bad_json_is_rejected() {
        let not_json = format!("{TOKEN_PREFIX}{}", BASE64.encode("{\"version\": 1,"));
        assert!(matches!(decode_err(&not_json), TokenError::BadJson(_)));
        let missing = edited(|json| {
            json.as_object_mut().unwrap().remove("cluster_secret");
        });
        assert!(
            matches!(decode_err(&missing), TokenError::BadJson(ref detail) if detail.contains("cluster_secret"))
        );
        let extra = edited(|json| json["surprise"] = Value::from(1));
        assert!(matches!(decode_err(&extra), TokenError::BadJson(_)));
    }

    #[test]
    fn unknown_version_is_rejected_before_its_fields_are_read() {
        let v2 = edited(|json| {
            json["version"] = Value::from(2);
            json["new_field"] = Value::from("x");
        });
        assert_eq!(decode_err(&v2), TokenError::UnknownVersion(2));
    }

    #[test]
    fn each_wrong_length_names_its_field() {
        for (pointer, field, expected) in [
            ("/origin/wg_pubkey", "origin.wg_pubkey", 32),
            ("/encryption_nonce", "encryption_nonce", 12),
            ("/master_key_encrypted", "master_key_encrypted", 80),
            ("/cluster_secret", "cluster_secret", 32),
        ] {
            for found in [expected - 1, expected + 1] {
                let token = edited(|json| {
                    *json.pointer_mut(pointer).unwrap() =
                        Value::from(BASE64.encode(vec![1u8; found]));
                });
                assert_eq!(
                    decode_err(&token),
                    TokenError::BadLength {
                        field,
                        expected,
                        found
                    }
                );
            }
            let token = edited(|json| *json.pointer_mut(pointer).unwrap() = Value::from("%%"));
            assert_eq!(decode_err(&token), TokenError::BadFieldBase64 { field });
        }
    }

    #[test]
    fn bad_origin_fields_are_rejected() {
        let id = edited(|json| json["origin"]["node_id"] = Value::from("Bad Id"));
        assert!(matches!(decode_err(&id), TokenError::BadNodeId(_)));
        let endpoint = edited(|json| json["origin"]["wg_endpoint"] = Value::from("vps1"));
        assert!(matches!(decode_err(&endpoint), TokenError::BadEndpoint(_)));
    }

    #[test]
    fn flipping_any_ciphertext_bit_is_tampering() {
        let original = json_of(&encoded());
        let sealed = BASE64
            .decode(original["master_key_encrypted"].as_str().unwrap())
            .unwrap();
        for index in 0..sealed.len() {
            let mut flipped = sealed.clone();
            flipped[index] ^= 0x01;
            let mut json = original.clone();
            json["master_key_encrypted"] = Value::from(BASE64.encode(&flipped));
            assert_eq!(
                decode_err(&token_of(&json)),
                TokenError::Tampered,
                "byte {index}"
            );
        }
    }

    #[test]
    fn editing_the_origin_nonce_or_secret_is_tampering() {
        let edits: [(&str, Value); 5] = [
            ("/origin/node_id", Value::from("node-mallory")),
            ("/origin/wg_pubkey", Value::from(BASE64.encode([0x43; 32]))),
            ("/origin/wg_endpoint", Value::from("evil.example.net:51820")),
            ("/encryption_nonce", Value::from(BASE64.encode([0; 12]))),
            ("/cluster_secret", Value::from(BASE64.encode([0x5b; 32]))),
        ];
        for (pointer, value) in edits {
            let token = edited(|json| *json.pointer_mut(pointer).unwrap() = value);
            assert_eq!(decode_err(&token), TokenError::Tampered, "{pointer}");
        }
    }

    #[test]
    fn debug_and_errors_show_no_secret() {
        let token = sample_token();
        let secret_b64 = BASE64.encode(token.cluster_secret.as_bytes());
        let shown = format!("{token:?}");
        assert!(shown.contains("node-alpha"));
        assert!(shown.contains("redacted"));
        assert!(!shown.contains(&secret_b64));
        assert!(!shown.contains("90, 90"), "secret bytes as a list: {shown}");

        let tampered = edited(|json| json["origin"]["node_id"] = Value::from("node-beta"));
        let message = decode_err(&tampered).to_string();
        assert!(!message.contains(&secret_b64));
    }

    #[test]
    fn nonces_differ_between_encodings() {
        let token = sample_token();
        let mut rng = rng();
        let first = json_of(&token.encode(&mut rng));
        let second = json_of(&token.encode(&mut rng));
        assert_ne!(first["encryption_nonce"], second["encryption_nonce"]);
    }
}
