//! The platform an image index is resolved to: `os/architecture[/variant]`,
//! linux/amd64 unless the caller asks for another.

use std::fmt;

/// An image platform, as image indexes and configs name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`, `windows`, …
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, … when the architecture has variants and one is wanted.
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".to_owned(),
            architecture: "amd64".to_owned(),
            variant: None,
        }
    }
}

impl Platform {
    /// Parses `os/architecture[/variant]` (`linux/arm64/v8`).
    pub fn parse(text: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |part: &&str| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        };
        match parts.as_slice() {
            [os, architecture] if parts.iter().all(valid) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*architecture).to_owned(),
                variant: None,
            }),
            [os, architecture, variant] if parts.iter().all(valid) => Ok(Platform {
                os: (*os).to_owned(),
                architecture: (*architecture).to_owned(),
                variant: Some((*variant).to_owned()),
            }),
            _ => Err(format!(
                "`{text}` is not a platform (expected os/architecture[/variant], e.g. linux/amd64)"
            )),
        }
    }

    /// Whether an image of `os`/`architecture`/`variant` runs here: a wanted
    /// variant must match; an unwanted one is accepted, as Docker does.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.os == os
            && self.architecture == architecture
            && match &self.variant {
                Some(wanted) => variant == Some(wanted.as_str()),
                None => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_platform_is_linux_amd64() {
        assert_eq!(Platform::default().to_string(), "linux/amd64");
    }

    #[test]
    fn platform_parses_with_and_without_variant() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").map(|p| p.to_string()),
            Ok("linux/arm64/v8".to_owned())
        );
        assert_eq!(Platform::parse("linux/amd64"), Ok(Platform::default()));
    }

    #[test]
    fn malformed_platforms_are_refused() {
        for text in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "Linux/AMD64",
            "linux/amd 64",
        ] {
            assert!(Platform::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_wanted_variant_must_match_but_an_unwanted_one_is_accepted() {
        let arm = Platform::parse("linux/arm/v7").unwrap_or_default();
        assert!(arm.matches("linux", "arm", Some("v7")));
        assert!(!arm.matches("linux", "arm", Some("v6")));
        assert!(Platform::default().matches("linux", "amd64", Some("v3")));
        assert!(!Platform::default().matches("windows", "amd64", None));
    }
}
