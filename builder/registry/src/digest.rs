//! `sha256:<hex>`: the one digest form registries and OCI descriptors use
//! here. Parsed once at the edge, so a digest inside the crate is always
//! well formed; other algorithms are refused with a message naming them.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A SHA-256 content digest, written `sha256:<64 lower-case hex>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobDigest {
    hex: String,
}

impl BlobDigest {
    /// Parses `sha256:<64 hex>`; anything else is refused with the reason.
    pub fn parse(text: &str) -> Result<BlobDigest, String> {
        let Some((algorithm, hex)) = text.split_once(':') else {
            return Err(format!(
                "`{text}` is not a digest (expected sha256:<64 hex digits>)"
            ));
        };
        if algorithm != "sha256" {
            return Err(format!(
                "digest `{text}` uses `{algorithm}`; only sha256 digests are supported"
            ));
        }
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "digest `{text}` is malformed (expected 64 lower-case hex digits after `sha256:`)"
            ));
        }
        Ok(BlobDigest {
            hex: hex.to_owned(),
        })
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> BlobDigest {
        BlobDigest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    /// The digest a finished hasher holds.
    pub(crate) fn from_hasher(hasher: Sha256) -> BlobDigest {
        BlobDigest {
            hex: format!("{:x}", hasher.finalize()),
        }
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The 32 bytes of the digest.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(self.hex.as_bytes().chunks(2)) {
            // `parse` admits only lower-case hex, two digits a byte.
            let digit = |c: u8| {
                if c.is_ascii_digit() {
                    c - b'0'
                } else {
                    c - b'a' + 10
                }
            };
            *byte = digit(pair[0]) << 4 | digit(pair[1]);
        }
        out
    }
}

impl fmt::Display for BlobDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl std::str::FromStr for BlobDigest {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        BlobDigest::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_empty_input_is_the_well_known_one() {
        assert_eq!(
            BlobDigest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn bytes_are_the_hex_digits_decoded() {
        let digest = BlobDigest::parse(&format!("sha256:00ff{}a9", "5c".repeat(29))).unwrap();
        let mut expected = [0x5c; 32];
        (expected[0], expected[1], expected[31]) = (0x00, 0xff, 0xa9);
        assert_eq!(digest.to_bytes(), expected);
    }

    #[test]
    fn digest_round_trips_through_parse_and_display() {
        let digest = BlobDigest::of(b"strata");
        assert_eq!(BlobDigest::parse(&digest.to_string()), Ok(digest));
    }

    #[test]
    fn hostile_digests_are_refused_with_a_reason() {
        for text in [
            "",
            "sha256",
            "sha256:",
            "sha512:00",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../../../etc/passwd",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855/",
        ] {
            let err = BlobDigest::parse(text).expect_err(text);
            assert!(err.contains("digest") || err.contains("sha256"), "{err}");
        }
    }
}
