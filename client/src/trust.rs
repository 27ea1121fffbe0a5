//! Whose step results and tags this client uses, and whose key it signs
//! its own with.
//!
//! The decision is local (DESIGN.md, Trust): the server stores one result
//! per signer and answers with the one the client prefers, but every hit is
//! checked here — its signature and its signer — before anything uses it.
//! An entry from a signer outside the list, or one whose signature does not
//! verify, is a miss that can be named (`untrusted`), never a hit.

use std::fmt;
use std::sync::Arc;

use strata_proto::{Digest, PublicKey, SignedTag, SigningKey, StepResult};

/// This client's signing key and trust list.
#[derive(Clone, Debug, Default)]
pub struct TrustPolicy {
    signing_key: Option<Arc<SigningKey>>,
    /// Most preferred first; the signing key's own public key leads.
    trusted: Vec<PublicKey>,
}

impl TrustPolicy {
    /// Signs with `signing_key` (without one, nothing can be recorded) and
    /// trusts its own public key first, then `trusted` in order.
    pub fn new(
        signing_key: Option<SigningKey>,
        trusted: impl IntoIterator<Item = PublicKey>,
    ) -> Self {
        let mut list: Vec<PublicKey> = signing_key.iter().map(SigningKey::public_key).collect();
        for key in trusted {
            if !list.contains(&key) {
                list.push(key);
            }
        }
        TrustPolicy {
            signing_key: signing_key.map(Arc::new),
            trusted: list,
        }
    }

    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.signing_key.as_deref()
    }

    /// The trusted signers, most preferred first.
    pub fn trusted(&self) -> &[PublicKey] {
        &self.trusted
    }

    pub fn trusts(&self, signer: &PublicKey) -> bool {
        self.trusted.contains(signer)
    }

    /// What `result`, found under step `key`, is to this client.
    pub fn judge_step(&self, key: &Digest, result: StepResult) -> StepLookup {
        match result.verify(key) {
            Ok(signer) if self.trusts(&signer) => StepLookup::Hit(result),
            Ok(signer) => StepLookup::Untrusted(Distrust::NotTrusted(signer)),
            Err(e) => StepLookup::Untrusted(Distrust::BadSignature {
                claimed: result.signer(),
                why: e.to_string(),
            }),
        }
    }

    /// What `tag`, found under name `name`, is to this client.
    pub fn judge_tag(&self, name: &str, tag: SignedTag) -> TagLookup {
        if tag.name != name {
            return TagLookup::Untrusted(Distrust::BadSignature {
                claimed: Some(tag.seal.signer),
                why: format!("asked for tag {name:?}, the server sent {:?}", tag.name),
            });
        }
        match tag.verify() {
            Ok(signer) if self.trusts(&signer) => TagLookup::Hit(tag),
            Ok(signer) => TagLookup::Untrusted(Distrust::NotTrusted(signer)),
            Err(e) => TagLookup::Untrusted(Distrust::BadSignature {
                claimed: Some(tag.seal.signer),
                why: e.to_string(),
            }),
        }
    }
}

/// One step key's answer, as this client's policy sees it. (Most answers
/// are hits: boxing one would cost an allocation per lookup for nothing.)
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum StepLookup {
    Miss,
    /// Signed by a trusted signer, and the signature verifies.
    Hit(StepResult),
    /// A result exists, but this client will not use it.
    Untrusted(Distrust),
}

/// One tag name's answer, as this client's policy sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum TagLookup {
    Miss,
    Hit(SignedTag),
    Untrusted(Distrust),
}

/// Why an entry that exists is not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Distrust {
    /// Validly signed by a key outside the trust list.
    NotTrusted(PublicKey),
    /// Unsigned, or the signature does not verify (a forgery, or damage).
    BadSignature {
        claimed: Option<PublicKey>,
        why: String,
    },
}

impl Distrust {
    /// The signer the entry names, if any.
    pub fn signer(&self) -> Option<PublicKey> {
        match self {
            Distrust::NotTrusted(k) => Some(*k),
            Distrust::BadSignature { claimed, .. } => *claimed,
        }
    }
}

impl fmt::Display for Distrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distrust::NotTrusted(k) => {
                write!(f, "signed by {k}, which is not in the trust list")
            }
            Distrust::BadSignature {
                claimed: Some(k),
                why,
            } => write!(f, "forged or damaged: it names signer {k}, but {why}"),
            Distrust::BadSignature { claimed: None, why } => {
                write!(f, "forged or damaged: {why}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_seed(&[b; 32]).unwrap()
    }

    fn result(layer: &[u8]) -> StepResult {
        StepResult {
            layer: Some(Digest::of(layer)),
            config: b"{}".to_vec(),
            provenance: Default::default(),
            seal: None,
        }
    }

    #[test]
    fn own_key_leads_the_list_and_duplicates_are_dropped() {
        let own = key(1).public_key();
        let other = key(2).public_key();
        let p = TrustPolicy::new(Some(key(1)), [other, own, other]);
        assert_eq!(p.trusted(), &[own, other]);
        assert!(TrustPolicy::default().trusted().is_empty());
    }

    #[test]
    fn hits_are_used_only_from_trusted_signers_with_valid_signatures() {
        let k = Digest::of(b"step");
        let p = TrustPolicy::new(Some(key(1)), [key(2).public_key()]);
        for (signer, trusted) in [(key(1), true), (key(2), true), (key(3), false)] {
            let mut r = result(b"layer");
            r.sign(&k, &signer);
            let judged = p.judge_step(&k, r.clone());
            if trusted {
                assert_eq!(judged, StepLookup::Hit(r));
            } else {
                assert_eq!(
                    judged,
                    StepLookup::Untrusted(Distrust::NotTrusted(signer.public_key()))
                );
            }
        }
        // A trusted signer's result with its layer swapped: a forgery.
        let mut forged = result(b"layer");
        forged.sign(&k, &key(1));
        forged.layer = Some(Digest::of(b"evil"));
        assert!(matches!(
            p.judge_step(&k, forged),
            StepLookup::Untrusted(Distrust::BadSignature { claimed: Some(c), .. }) if c == key(1).public_key()
        ));
        // Unsigned.
        assert!(matches!(
            p.judge_step(&k, result(b"layer")),
            StepLookup::Untrusted(Distrust::BadSignature { claimed: None, .. })
        ));
        // A trusted result moved under another key.
        let mut moved = result(b"layer");
        moved.sign(&Digest::of(b"another step"), &key(1));
        assert!(matches!(
            p.judge_step(&k, moved),
            StepLookup::Untrusted(Distrust::BadSignature { .. })
        ));
    }

    #[test]
    fn a_tag_is_used_only_under_the_name_asked_for() {
        let p = TrustPolicy::new(Some(key(1)), []);
        let tag = SignedTag::sign("app:v1", Digest::of(b"x"), 1, &key(1));
        assert_eq!(
            p.judge_tag("app:v1", tag.clone()),
            TagLookup::Hit(tag.clone())
        );
        assert!(matches!(
            p.judge_tag("app:v2", tag),
            TagLookup::Untrusted(Distrust::BadSignature { .. })
        ));
        let theirs = SignedTag::sign("app:v1", Digest::of(b"x"), 1, &key(4));
        assert_eq!(
            p.judge_tag("app:v1", theirs),
            TagLookup::Untrusted(Distrust::NotTrusted(key(4).public_key()))
        );
    }
}
