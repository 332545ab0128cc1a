//! The leak audit: no secret, in any encoding we use, appears in a text (a log, a status
//! report).

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// A secret under audit: a label for the failure message and its raw bytes.
pub struct Secret {
    pub label: String,
    pub bytes: Vec<u8>,
}

impl Secret {
    pub fn new(label: impl Into<String>, bytes: &[u8]) -> Secret {
        Secret {
            label: label.into(),
            bytes: bytes.to_vec(),
        }
    }
}

/// Every way we write bytes: hex (both cases), base64 (standard and URL-safe, with and without
/// padding); for secrets longer than 32 bytes, each 32-byte half as well (a key's scalar or
/// nonce prefix may be printed alone).
fn encodings(bytes: &[u8]) -> Vec<String> {
    let mut parts = vec![bytes.to_vec()];
    if bytes.len() > 32 {
        parts.extend(bytes.chunks(32).map(<[u8]>::to_vec));
    }
    let mut out = Vec::new();
    for part in parts {
        let hex: String = part.iter().map(|b| format!("{b:02x}")).collect();
        out.push(hex.to_uppercase());
        out.push(hex);
        for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
            out.push(engine.encode(&part));
        }
    }
    out
}

/// Panics naming the secret and the text if any encoding of any secret occurs in any text.
/// Also checks plain-text secrets (a token) given as `literal`.
pub fn assert_no_secret(
    texts: &[(String, String)],
    secrets: &[Secret],
    literals: &[(String, String)],
) {
    let mut needles: Vec<(String, String)> = literals.to_vec();
    for secret in secrets {
        assert!(!secret.bytes.is_empty(), "empty secret {}", secret.label);
        for encoding in encodings(&secret.bytes) {
            needles.push((secret.label.clone(), encoding));
        }
    }
    for (name, text) in texts {
        for (label, needle) in &needles {
            assert!(!text.contains(needle.as_str()), "{label} appears in {name}");
        }
    }
    eprintln!(
        "leak audit: {} secrets in {} encodings, {} texts ({} bytes): clean",
        secrets.len() + literals.len(),
        needles.len(),
        texts.len(),
        texts.iter().map(|(_, t)| t.len()).sum::<usize>()
    );
}
