//! Signed tags: a name for an object, as one writer set it at one time.
//!
//! A tag is the store's one mutable mapping, so its signature covers when
//! it was set as well as what it names ([`crate::signing`]): the store keeps
//! each signer's newest change to a name, and a replayed older change of the
//! same signer is refused rather than taken as a rollback.
//!
//! The stored form is the protobuf encoding of [`v1::SignedTag`].

use prost::Message;

use crate::signing::{self, PublicKey, Seal, SignatureError, SigningKey};
use crate::{Digest, DigestError, v1};

/// A tag and its writer's signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedTag {
    pub name: String,
    pub target: Digest,
    /// When the writer set it, ms since the Unix epoch.
    pub set_unix_ms: i64,
    pub seal: Seal,
}

/// Why a tag was refused.
#[derive(Debug, thiserror::Error)]
pub enum TagError {
    #[error("tag target digest: {0}")]
    BadTarget(DigestError),
    #[error("no tag sent")]
    Missing,
    #[error("tag signature: {0}")]
    Seal(#[from] SignatureError),
    #[error("stored tag is malformed: {0}")]
    Malformed(prost::DecodeError),
}

impl SignedTag {
    /// Tag `name` → `target`, set at `set_unix_ms`, signed by `signer`.
    pub fn sign(name: &str, target: Digest, set_unix_ms: i64, signer: &SigningKey) -> Self {
        let seal = signing::seal(signer, &signing::tag_message(name, &target, set_unix_ms));
        SignedTag {
            name: name.to_owned(),
            target,
            set_unix_ms,
            seal,
        }
    }

    /// The signer, if the signature verifies for it.
    pub fn verify(&self) -> Result<PublicKey, SignatureError> {
        signing::verify(
            &self.seal,
            &signing::tag_message(&self.name, &self.target, self.set_unix_ms),
        )?;
        Ok(self.seal.signer)
    }

    /// Parses a tag as sent; the signature's shape is checked, not the
    /// signature (see [`SignedTag::verify`]).
    pub fn from_wire(wire: Option<v1::SignedTag>) -> Result<Self, TagError> {
        let wire = wire.ok_or(TagError::Missing)?;
        Ok(SignedTag {
            target: Digest::from_slice(&wire.digest).map_err(TagError::BadTarget)?,
            seal: Seal::from_wire(&wire.signer, &wire.signature)?,
            name: wire.name,
            set_unix_ms: wire.set_unix_ms,
        })
    }

    pub fn to_wire(&self) -> v1::SignedTag {
        v1::SignedTag {
            name: self.name.clone(),
            digest: self.target.to_vec(),
            set_unix_ms: self.set_unix_ms,
            signer: self.seal.signer.as_bytes().to_vec(),
            signature: self.seal.signature.as_bytes().to_vec(),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, TagError> {
        let wire = v1::SignedTag::decode(bytes).map_err(TagError::Malformed)?;
        Self::from_wire(Some(wire))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signed_tag_round_trips_and_verifies_only_as_signed() {
        let key = SigningKey::from_seed(&[9; 32]).unwrap();
        let tag = SignedTag::sign("app:v1", Digest::of(b"image"), 1_700_000_000_000, &key);
        assert_eq!(tag.verify(), Ok(key.public_key()));
        let back = SignedTag::decode(&tag.encode()).unwrap();
        assert_eq!(back, tag);
        let invalid = Err(SignatureError::Invalid(key.public_key()));
        let mut renamed = tag.clone();
        renamed.name = "app:v2".into();
        assert_eq!(renamed.verify(), invalid);
        let mut moved = tag.clone();
        moved.target = Digest::of(b"evil");
        assert_eq!(moved.verify(), invalid);
        let mut redated = tag.clone();
        redated.set_unix_ms += 1;
        assert_eq!(redated.verify(), invalid);
    }

    /// Pins what a tag's signature covers (computed independently, as for
    /// step results).
    #[test]
    fn a_known_tag_has_a_known_signature() {
        let key = SigningKey::from_seed(&[9; 32]).unwrap();
        let tag = SignedTag::sign("app:v1", Digest::of(b"image"), 1_700_000_000_000, &key);
        let expected = concat!(
            "157bae56efe8ec9e0f872c5e2d9eb7630f56a29e72c0f94f3df2d8de1e1b5407",
            "1cd0005538c6b4f5633cf34a2664ca7e16b6032704fe3d7ffe3a128b04a96d00"
        );
        let hex: String = tag
            .seal
            .signature
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn an_unsigned_or_absent_tag_is_refused() {
        assert!(matches!(SignedTag::from_wire(None), Err(TagError::Missing)));
        let wire = v1::SignedTag {
            name: "a".into(),
            digest: Digest::of(b"x").to_vec(),
            ..Default::default()
        };
        assert!(matches!(
            SignedTag::from_wire(Some(wire)),
            Err(TagError::Seal(SignatureError::Unsigned))
        ));
    }
}
