//! Step results: what one build step produced, stored under its step key.
//!
//! A result has an *outcome* — the layer it added (if any) and the image
//! config change — and a provenance that says who made it and how. Only the
//! outcome is the result's identity: the store keeps the first result under
//! a key and compares later ones by outcome, so two builders that agree are
//! not a conflict just because they ran at different times.
//!
//! Every result is signed by its writer ([`crate::signing`]): the seal
//! travels and is stored with the result, and is not part of its outcome.
//!
//! The stored form is the protobuf encoding of [`v1::StepResult`]. prost
//! writes fields in tag order and this message has no maps, so the encoding
//! of a given value is fixed.

use prost::Message;

use crate::signing::{self, PublicKey, Seal, SignatureError, SigningKey};
use crate::{Digest, DigestError, v1};

/// Largest encoded step result either end accepts: a config change and a
/// provenance are small; this bounds what a client can make the server keep.
pub const MAX_STEP_RESULT_BYTES: usize = 256 << 10;

/// A validated step result.
#[derive(Clone, Debug, PartialEq)]
pub struct StepResult {
    pub layer: Option<Digest>,
    pub config: Vec<u8>,
    pub provenance: v1::Provenance,
    /// The writer's signature; `None` until [`StepResult::sign`].
    pub seal: Option<Seal>,
}

/// Why a step result was refused.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step result layer digest: {0}")]
    BadLayer(DigestError),
    #[error("step result is {size} bytes encoded, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("stored step result is malformed: {0}")]
    Malformed(prost::DecodeError),
    #[error("step result signature: {0}")]
    Seal(#[from] SignatureError),
}

impl StepResult {
    pub fn from_wire(wire: v1::StepResult) -> Result<Self, StepError> {
        let size = wire.encoded_len();
        if size > MAX_STEP_RESULT_BYTES {
            return Err(StepError::TooLarge {
                size,
                limit: MAX_STEP_RESULT_BYTES,
            });
        }
        let layer = if wire.layer.is_empty() {
            None
        } else {
            Some(Digest::from_slice(&wire.layer).map_err(StepError::BadLayer)?)
        };
        let seal = match Seal::from_wire(&wire.signer, &wire.signature) {
            Ok(seal) => Some(seal),
            Err(SignatureError::Unsigned) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(StepResult {
            layer,
            config: wire.config,
            provenance: wire.provenance.unwrap_or_default(),
            seal,
        })
    }

    pub fn to_wire(&self) -> v1::StepResult {
        let (signer, signature) = self.seal.map_or((Vec::new(), Vec::new()), |s| {
            (
                s.signer.as_bytes().to_vec(),
                s.signature.as_bytes().to_vec(),
            )
        });
        v1::StepResult {
            layer: self.layer.map(|d| d.to_vec()).unwrap_or_default(),
            config: self.config.clone(),
            provenance: Some(self.provenance.clone()),
            signer,
            signature,
        }
    }

    /// The bytes a signature over this result under step `key` covers.
    fn signed_message(&self, key: &Digest) -> Vec<u8> {
        signing::step_message(
            key,
            self.layer.as_ref(),
            &self.config,
            &self.provenance.encode_to_vec(),
        )
    }

    /// Signs the result, as recorded under step `key`, with `signer`.
    pub fn sign(&mut self, key: &Digest, signer: &SigningKey) {
        self.seal = Some(signing::seal(signer, &self.signed_message(key)));
    }

    /// The signer, if the result carries a signature that verifies for it
    /// under step `key`. A result moved to another key does not verify.
    pub fn verify(&self, key: &Digest) -> Result<PublicKey, SignatureError> {
        let seal = self.seal.as_ref().ok_or(SignatureError::Unsigned)?;
        signing::verify(seal, &self.signed_message(key))?;
        Ok(seal.signer)
    }

    /// Who the result claims to be signed by (not checked).
    pub fn signer(&self) -> Option<PublicKey> {
        self.seal.map(|s| s.signer)
    }

    /// The stored form (see the module doc).
    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, StepError> {
        let wire = v1::StepResult::decode(bytes).map_err(StepError::Malformed)?;
        Self::from_wire(wire)
    }

    /// Whether two results have the same outcome (layer and config),
    /// whatever their provenance.
    pub fn same_outcome(&self, other: &StepResult) -> bool {
        self.layer == other.layer && self.config == other.config
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn result(layer: Option<Digest>, builder: &str) -> StepResult {
        StepResult {
            layer,
            config: br#"{"env":["A=1"]}"#.to_vec(),
            provenance: v1::Provenance {
                builder: builder.into(),
                instruction: "RUN true".into(),
                created_unix: 1,
                ..Default::default()
            },
            seal: None,
        }
    }

    #[test]
    fn encoding_round_trips_and_is_stable() {
        let r = result(Some(Digest::of(b"layer")), "strata 0.1.0");
        let bytes = r.encode();
        assert_eq!(bytes, r.clone().encode());
        assert_eq!(StepResult::decode(&bytes).unwrap(), r);
    }

    #[test]
    fn outcome_ignores_provenance() {
        let a = result(Some(Digest::of(b"layer")), "one");
        assert!(a.same_outcome(&result(Some(Digest::of(b"layer")), "two")));
        assert!(!a.same_outcome(&result(Some(Digest::of(b"other")), "one")));
        assert!(!a.same_outcome(&result(None, "one")));
    }

    #[test]
    fn a_signed_result_verifies_under_its_key_only_and_round_trips() {
        let signer = SigningKey::from_seed(&[3; 32]).unwrap();
        let key = Digest::of(b"step");
        let mut r = result(Some(Digest::of(b"layer")), "strata");
        assert_eq!(r.verify(&key), Err(SignatureError::Unsigned));
        r.sign(&key, &signer);
        assert_eq!(r.verify(&key), Ok(signer.public_key()));
        let back = StepResult::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.verify(&key), Ok(signer.public_key()));
        // The same result under another key, or with anything changed, does
        // not verify: a signature cannot be lifted onto another entry.
        let invalid = Err(SignatureError::Invalid(signer.public_key()));
        assert_eq!(r.verify(&Digest::of(b"other step")), invalid);
        for change in [
            (|r: &mut StepResult| r.layer = Some(Digest::of(b"evil"))) as fn(&mut StepResult),
            |r| r.layer = None,
            |r| r.config.push(b' '),
            |r| r.provenance.builder.push('!'),
            |r| r.provenance.hermetic = !r.provenance.hermetic,
        ] {
            let mut forged = r.clone();
            change(&mut forged);
            assert_eq!(forged.verify(&key), invalid);
        }
    }

    /// Pins what a step result's signature covers: computed independently
    /// (Python's `cryptography` over the bytes the module docs of
    /// `signing` lay out), so a change to the signed message, which would
    /// turn every recorded result untrusted, cannot pass unnoticed.
    #[test]
    fn a_known_result_has_a_known_signature() {
        let signer = SigningKey::from_seed(&[3; 32]).unwrap();
        let mut r = result(Some(Digest::of(b"layer")), "strata");
        r.sign(&Digest::of(b"step"), &signer);
        let expected = concat!(
            "15926c022835897b36bede94433fdb998cb460e3b61d6d448955001972f9b014",
            "ac24f7d973f47094040c4e6f93ef8714aaa2cadeda21d1a45a307eef8ed0d80f"
        );
        let hex: String = r
            .seal
            .unwrap()
            .signature
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn the_signer_is_the_one_who_signed_and_none_before() {
        let signer = SigningKey::from_seed(&[4; 32]).unwrap();
        let mut r = result(None, "x");
        assert_eq!(r.signer(), None);
        r.sign(&Digest::of(b"step"), &signer);
        assert_eq!(r.signer(), Some(signer.public_key()));
    }

    /// The size limit is exact: a result of the largest size decodes, one
    /// a byte larger is refused.
    #[test]
    fn the_step_result_size_limit_is_exact() {
        let mut wire = result(None, "x").to_wire();
        // The config's length prefix grows with it: settle on a size that
        // lands exactly on the limit.
        let mut pad = MAX_STEP_RESULT_BYTES;
        loop {
            wire.config = vec![b'x'; pad];
            let size = wire.encoded_len();
            if size == MAX_STEP_RESULT_BYTES {
                break;
            }
            pad = pad + MAX_STEP_RESULT_BYTES - size;
        }
        assert!(StepResult::from_wire(wire.clone()).is_ok());
        wire.config.push(b'x');
        assert!(matches!(
            StepResult::from_wire(wire),
            Err(StepError::TooLarge { size, limit })
                if size == MAX_STEP_RESULT_BYTES + 1 && limit == MAX_STEP_RESULT_BYTES
        ));
    }

    #[test]
    fn a_seal_of_the_wrong_shape_is_refused_on_decode() {
        let mut wire = result(None, "x").to_wire();
        wire.signer = vec![1; 32];
        wire.signature = vec![2; 10];
        assert!(matches!(
            StepResult::from_wire(wire),
            Err(StepError::Seal(SignatureError::BadSignatureLength(10)))
        ));
    }

    #[test]
    fn bad_layer_digest_and_oversize_are_refused() {
        let mut wire = result(None, "x").to_wire();
        wire.layer = vec![1, 2, 3];
        assert!(matches!(
            StepResult::from_wire(wire),
            Err(StepError::BadLayer(_))
        ));
        let mut wire = result(None, "x").to_wire();
        wire.config = vec![b'x'; MAX_STEP_RESULT_BYTES];
        assert!(matches!(
            StepResult::from_wire(wire),
            Err(StepError::TooLarge { .. })
        ));
    }
}
