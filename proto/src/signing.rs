//! Ed25519 signatures over step results and tags: who vouches for a cache
//! entry, checked where the entry is used.
//!
//! A shared cache is a supply chain: a step result tells every builder
//! "skip this step, take that layer". Tokens decide who may *write*; a
//! signature says who *wrote*, so each client can take hits only from the
//! signers it trusts (DESIGN.md, Trust). The server checks signatures too,
//! so it never stores an entry whose signer did not make it, but the
//! decision to use an entry is the client's.
//!
//! What is signed is a fixed, domain-separated byte string built here (and
//! only here), so both ends and every version agree on it:
//!
//! - a step result: `strata/step-result/v1\0`, the 32-byte step key, a byte
//!   1 and the 32-byte layer digest (or a byte 0 for no layer), then the
//!   config and the provenance (its protobuf encoding), each prefixed with
//!   its length as a little-endian u32;
//! - a tag: `strata/tag/v1\0`, the name prefixed with its length (u32 LE),
//!   the 32-byte object digest, and when it was set (ms since the Unix
//!   epoch, i64 LE), so a replayed older change can be told from a newer one.
//!
//! Signing is deterministic (Ed25519), so the same key over the same entry
//! gives the same bytes. ring does the arithmetic (already in the tree for
//! TLS).

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::Digest;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Length of the secret seed a key is made from.
pub const SEED_BYTES: usize = 32;

const STEP_DOMAIN: &[u8] = b"strata/step-result/v1\0";
const TAG_DOMAIN: &[u8] = b"strata/tag/v1\0";
/// How a public key is written for people: `ed25519:` and base64.
const PUBLIC_KEY_PREFIX: &str = "ed25519:";

/// A signer's identity: an Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; PUBLIC_KEY_BYTES]);

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_BYTES]);

/// A signature and whose it claims to be, as an entry carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub signer: PublicKey,
    pub signature: Signature,
}

/// Why a signature or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("not signed: every step result and tag carries its writer's signature")]
    Unsigned,
    #[error("a signer's public key is {PUBLIC_KEY_BYTES} bytes, not {0}")]
    BadKeyLength(usize),
    #[error("a signature is {SIGNATURE_BYTES} bytes, not {0}")]
    BadSignatureLength(usize),
    #[error("the signature does not verify for signer {0}")]
    Invalid(PublicKey),
    #[error("{0:?} is not a public key: write it as ed25519:BASE64 (see `strata key show`)")]
    BadKeyText(String),
    #[error("a signing key's seed is {SEED_BYTES} bytes, not {0}")]
    BadSeed(usize),
}

impl PublicKey {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SignatureError> {
        <[u8; PUBLIC_KEY_BYTES]>::try_from(bytes)
            .map(PublicKey)
            .map_err(|_| SignatureError::BadKeyLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.0
    }

    /// Checks `signature` over `message`.
    fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, &signature.0)
            .map_err(|_| SignatureError::Invalid(*self))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SignatureError::BadKeyText(s.chars().take(80).collect());
        let encoded = s.trim().strip_prefix(PUBLIC_KEY_PREFIX).ok_or_else(bad)?;
        let bytes = STANDARD.decode(encoded).map_err(|_| bad())?;
        PublicKey::from_slice(&bytes).map_err(|_| bad())
    }
}

impl Signature {
    pub fn from_slice(bytes: &[u8]) -> Result<Self, SignatureError> {
        <[u8; SIGNATURE_BYTES]>::try_from(bytes)
            .map(Signature)
            .map_err(|_| SignatureError::BadSignatureLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", STANDARD.encode(self.0))
    }
}

impl Seal {
    /// The seal an entry carries on the wire: both fields empty means
    /// unsigned.
    pub fn from_wire(signer: &[u8], signature: &[u8]) -> Result<Self, SignatureError> {
        if signer.is_empty() && signature.is_empty() {
            return Err(SignatureError::Unsigned);
        }
        Ok(Seal {
            signer: PublicKey::from_slice(signer)?,
            signature: Signature::from_slice(signature)?,
        })
    }

    /// Checks the seal over `message`.
    fn verify(&self, message: &[u8]) -> Result<(), SignatureError> {
        self.signer.verify(message, &self.signature)
    }
}

/// A writer's secret key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// The key made from a 32-byte secret seed (which the caller draws from
    /// the OS's random source and keeps).
    pub fn from_seed(seed: &[u8]) -> Result<Self, SignatureError> {
        if seed.len() != SEED_BYTES {
            return Err(SignatureError::BadSeed(seed.len()));
        }
        let pair = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| SignatureError::BadSeed(seed.len()))?;
        let public = PublicKey::from_slice(pair.public_key().as_ref())?;
        Ok(SigningKey { pair, public })
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn seal(&self, message: &[u8]) -> Seal {
        let signature = self.pair.sign(message);
        Seal {
            signer: self.public,
            // ring's Ed25519 signatures are always 64 bytes.
            signature: Signature(
                signature
                    .as_ref()
                    .try_into()
                    .unwrap_or([0; SIGNATURE_BYTES]),
            ),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("SigningKey")
            .field("public", &self.public)
            .finish()
    }
}

/// What a step result's signature covers (see the module docs).
pub(crate) fn step_message(
    key: &Digest,
    layer: Option<&Digest>,
    config: &[u8],
    provenance: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(STEP_DOMAIN.len() + 80 + config.len() + provenance.len());
    m.extend_from_slice(STEP_DOMAIN);
    m.extend_from_slice(key.as_bytes());
    match layer {
        Some(layer) => {
            m.push(1);
            m.extend_from_slice(layer.as_bytes());
        }
        None => m.push(0),
    }
    for part in [config, provenance] {
        m.extend_from_slice(&(part.len() as u32).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// What a tag's signature covers (see the module docs).
pub(crate) fn tag_message(name: &str, target: &Digest, set_unix_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(TAG_DOMAIN.len() + 48 + name.len());
    m.extend_from_slice(TAG_DOMAIN);
    m.extend_from_slice(&(name.len() as u32).to_le_bytes());
    m.extend_from_slice(name.as_bytes());
    m.extend_from_slice(target.as_bytes());
    m.extend_from_slice(&set_unix_ms.to_le_bytes());
    m
}

/// Signs `message` with `key`.
pub(crate) fn seal(key: &SigningKey, message: &[u8]) -> Seal {
    key.seal(message)
}

/// Checks `seal` over `message`.
pub(crate) fn verify(seal: &Seal, message: &[u8]) -> Result<(), SignatureError> {
    seal.verify(message)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(byte: u8) -> SigningKey {
        SigningKey::from_seed(&[byte; SEED_BYTES]).unwrap()
    }

    /// Unsigned means both fields empty; one of them alone is a malformed
    /// seal, named as such.
    #[test]
    fn a_seal_with_one_field_missing_is_malformed_not_unsigned() {
        assert_eq!(Seal::from_wire(&[], &[]), Err(SignatureError::Unsigned));
        assert_eq!(
            Seal::from_wire(&[], &[9; SIGNATURE_BYTES]),
            Err(SignatureError::BadKeyLength(0))
        );
        assert_eq!(
            Seal::from_wire(key(1).public_key().as_bytes(), &[]),
            Err(SignatureError::BadSignatureLength(0))
        );
    }

    #[test]
    fn a_known_seed_gives_the_rfc_8032_public_key_and_signature() {
        // RFC 8032, section 7.1, TEST 1 (the empty message).
        let seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let k = SigningKey::from_seed(&seed).unwrap();
        assert_eq!(
            k.public_key().as_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let s = seal(&k, b"");
        assert_eq!(
            s.signature.as_bytes().to_vec(),
            hex(concat!(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
                "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
            ))
        );
        verify(&s, b"").unwrap();
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_seal_verifies_only_for_its_message_and_signer() {
        let (a, b) = (key(1), key(2));
        let s = seal(&a, b"message");
        verify(&s, b"message").unwrap();
        assert_eq!(
            verify(&s, b"messagf"),
            Err(SignatureError::Invalid(a.public_key()))
        );
        let claimed = Seal {
            signer: b.public_key(),
            ..s
        };
        assert_eq!(
            verify(&claimed, b"message"),
            Err(SignatureError::Invalid(b.public_key()))
        );
        let mut flipped = s;
        flipped.signature.0[10] ^= 1;
        assert!(verify(&flipped, b"message").is_err());
    }

    #[test]
    fn public_keys_print_and_parse_back() {
        let k = key(7).public_key();
        let text = k.to_string();
        assert!(text.starts_with("ed25519:"), "{text}");
        assert_eq!(text.parse::<PublicKey>().unwrap(), k);
        assert_eq!(format!(" {text}\n").parse::<PublicKey>().unwrap(), k);
        for bad in [
            "",
            "ed25519:",
            "ed25519:!!!",
            "ssh-ed25519 AAAA",
            &text[..text.len() - 4],
        ] {
            assert!(
                matches!(bad.parse::<PublicKey>(), Err(SignatureError::BadKeyText(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn wire_seals_of_the_wrong_shape_are_refused() {
        assert_eq!(Seal::from_wire(&[], &[]), Err(SignatureError::Unsigned));
        assert_eq!(
            Seal::from_wire(&[1; 31], &[0; 64]),
            Err(SignatureError::BadKeyLength(31))
        );
        assert_eq!(
            Seal::from_wire(&[1; 32], &[0; 63]),
            Err(SignatureError::BadSignatureLength(63))
        );
        assert!(SigningKey::from_seed(&[0; 31]).is_err());
    }

    #[test]
    fn the_signed_messages_are_domain_separated_and_length_prefixed() {
        let d = Digest::of(b"x");
        // A step and a tag never sign the same bytes.
        assert_ne!(
            step_message(&d, None, b"", b"")[..8],
            tag_message("", &d, 0)[..8]
        );
        // Moving a byte from config to provenance changes the message.
        assert_ne!(
            step_message(&d, None, b"ab", b"c"),
            step_message(&d, None, b"a", b"bc")
        );
        assert_ne!(
            step_message(&d, Some(&d), b"", b""),
            step_message(&d, None, b"", b"")
        );
    }
}
