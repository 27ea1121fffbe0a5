//! The content address: BLAKE3-256 of raw bytes, written `b3:<64 hex>`.
//!
//! A fixed 32-byte value type with exactly one parser and one printer, so an
//! invalid digest is refused at the edge and cannot exist further in.

use std::fmt;
use std::str::FromStr;

/// BLAKE3-256 of a run of raw (uncompressed) bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest must be 32 bytes, got {0}")]
    WrongLength(usize),
    #[error("digest must look like b3:<64 lowercase hex digits>, got {0:?}")]
    BadText(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub const fn from_array(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// Accepts exactly 32 bytes, as digests travel on the wire.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DigestError> {
        <[u8; 32]>::try_from(bytes)
            .map(Digest)
            .map_err(|_| DigestError::WrongLength(bytes.len()))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }

    /// The 64 lowercase hex digits, without the `b3:` prefix.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b3:{}", self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DigestError::BadText(s.to_owned());
        let hex = s.strip_prefix("b3:").ok_or_else(bad)?.as_bytes();
        if hex.len() != 64 {
            return Err(bad());
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn digest_of_empty_input_is_blake3_of_nothing() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "b3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn malformed_text_is_refused() {
        for bad in [
            "",
            "b3:",
            "sha256:00",
            "b3:ABCD",
            &format!("b3:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Digest::from_slice(&[0; 31]),
            Err(DigestError::WrongLength(31))
        );
    }

    proptest! {
        #[test]
        fn printed_digest_parses_back_to_itself(bytes in any::<[u8; 32]>()) {
            let d = Digest::from_array(bytes);
            prop_assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
        }
    }
}
