//! Image references: the one parser behind `FROM`, `--tag` and `--output`,
//! so a name means the same thing wherever a user writes it.
//!
//! Two shapes:
//! - `oci:DIR[:TAG]` — an OCI image layout directory ([`LayoutRef`]). The
//!   directory ends at the *first* `:` after `oci:`, as skopeo's `oci:`
//!   transport reads it; a directory whose name holds a `:` cannot be named.
//! - `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]` — a named image ([`ImageRef`]),
//!   read as Docker reads it: the first component is a registry host when it
//!   holds a `.` or a `:` or is `localhost`; path components are lower-case
//!   letters, digits and single separators (`.`, `_`, `__`, runs of `-`), and
//!   an upper-case name is refused up front, as `docker build -t` refuses it.
//!
//! Nothing here does I/O.

use std::fmt;

use thiserror::Error;

/// Docker's default registry, for names without a host.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag a reference without one means.
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference was refused; the text names the reference and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ReferenceError {
    message: String,
}

fn refuse(reference: &str, rule: impl fmt::Display) -> ReferenceError {
    ReferenceError {
        message: format!("invalid image reference `{reference}`: {rule}"),
    }
}

/// `oci:DIR[:TAG]`: an image in an OCI layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    /// The directory, as written.
    pub dir: String,
    /// The tag (`org.opencontainers.image.ref.name`), if one was written.
    pub tag: Option<String>,
}

impl LayoutRef {
    /// Parses `oci:DIR[:TAG]`.
    pub fn parse(reference: &str) -> Result<LayoutRef, ReferenceError> {
        let rest = reference
            .strip_prefix("oci:")
            .ok_or_else(|| refuse(reference, "expected oci:DIR[:TAG]"))?;
        let (dir, tag) = match rest.split_once(':') {
            Some((dir, tag)) => (dir, Some(tag)),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(refuse(reference, "the directory after `oci:` is missing"));
        }
        let tag = tag.map(|t| check_tag(reference, t)).transpose()?;
        Ok(LayoutRef {
            dir: dir.to_owned(),
            tag,
        })
    }

    /// The tag, or [`DEFAULT_TAG`].
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for LayoutRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci:{}", self.dir)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        Ok(())
    }
}

/// `[HOST[:PORT]/]PATH[:TAG][@sha256:HEX]`: a named image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    host: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl ImageRef {
    /// Parses a name as Docker does (see the module docs).
    pub fn parse(reference: &str) -> Result<ImageRef, ReferenceError> {
        if reference.is_empty() {
            return Err(refuse(reference, "the name is empty"));
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => (rest, Some(check_digest(reference, digest)?)),
            None => (reference, None),
        };
        // A `:` after the last `/` starts the tag; one before it is a port.
        let (name, tag) = match rest.rfind(':').filter(|&i| !rest[i..].contains('/')) {
            Some(i) => (&rest[..i], Some(check_tag(reference, &rest[i + 1..])?)),
            None => (rest, None),
        };
        let (host, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(check_host(reference, first)?), path)
            }
            _ => (None, name),
        };
        check_path(reference, path)?;
        Ok(ImageRef {
            host,
            path: path.to_owned(),
            tag,
            digest,
        })
    }

    /// Parses a name to keep an image under (`--tag`): a digest is refused,
    /// since a digest names content and cannot be assigned.
    pub fn parse_tag_name(reference: &str) -> Result<ImageRef, ReferenceError> {
        let parsed = ImageRef::parse(reference)?;
        if parsed.digest.is_some() {
            return Err(refuse(
                reference,
                "a name to keep an image under cannot carry a digest",
            ));
        }
        Ok(parsed)
    }

    /// The registry host (and port) as written, if any.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// The path as written: `debian`, `team/app`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The tag, or [`DEFAULT_TAG`].
    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// The pinned digest (`sha256:HEX`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The registry to ask: the host, or [`DEFAULT_REGISTRY`].
    pub fn registry(&self) -> &str {
        self.host.as_deref().unwrap_or(DEFAULT_REGISTRY)
    }

    /// The repository on that registry: Docker Hub's official images live
    /// under `library/`.
    pub fn repository(&self) -> String {
        if self.host.is_none() && !self.path.contains('/') {
            format!("library/{}", self.path)
        } else {
            self.path.clone()
        }
    }

    /// `[HOST/]PATH:TAG`, the tag defaulted: the key an image is kept under
    /// in the store, so `app` and `app:latest` are one name.
    pub fn store_name(&self) -> String {
        format!("{}:{}", self.name(), self.tag_or_default())
    }

    /// `[HOST/]PATH`, as written.
    pub fn name(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}/{}", self.path),
            None => self.path.clone(),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// A tag as OCI defines it: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(reference: &str, tag: &str) -> Result<String, ReferenceError> {
    let mut chars = tag.chars();
    let valid = tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !valid {
        return Err(refuse(
            reference,
            format_args!(
                "the tag `{tag}` must be 1 to 128 letters, digits, _ . - (not starting with . or -)"
            ),
        ));
    }
    Ok(tag.to_owned())
}

/// `sha256:` and 64 lower-case hex digits.
fn check_digest(reference: &str, digest: &str) -> Result<String, ReferenceError> {
    let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if !valid {
        return Err(refuse(
            reference,
            format_args!("the digest `{digest}` must be sha256: and 64 lower-case hex digits"),
        ));
    }
    Ok(digest.to_owned())
}

/// `host[:port]`: DNS labels (letters, digits, `-`, `.`) and a numeric port.
fn check_host(reference: &str, host: &str) -> Result<String, ReferenceError> {
    let (name, port) = match host.split_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    let name_ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if !name_ok || !port_ok {
        return Err(refuse(
            reference,
            format_args!("the registry `{host}` must be HOST or HOST:PORT"),
        ));
    }
    Ok(host.to_owned())
}

/// Path components as Docker's grammar has them: lower-case alphanumerics
/// joined by single `.`, `_`, `__` or runs of `-`.
fn check_path(reference: &str, path: &str) -> Result<(), ReferenceError> {
    if path.is_empty() {
        return Err(refuse(reference, "the repository name is empty"));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(refuse(
            reference,
            format_args!("the repository name `{path}` must be lower-case"),
        ));
    }
    for component in path.split('/') {
        if !is_path_component(component) {
            return Err(refuse(
                reference,
                format_args!(
                    "`{component}` in `{path}` must be lower-case letters and digits, \
                     joined by single . or _, __, or runs of -"
                ),
            ));
        }
    }
    Ok(())
}

fn is_path_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes: Vec<char> = component.chars().collect();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator: String = bytes[start..i].iter().collect();
        let ok =
            matches!(separator.as_str(), "." | "_" | "__") || separator.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str) -> ImageRef {
        ImageRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn a_bare_name_is_an_official_image_on_docker_hub() {
        let r = image("debian");
        assert_eq!(r.host(), None);
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/debian");
        assert_eq!(r.tag(), None);
        assert_eq!(r.store_name(), "debian:latest");
        assert_eq!(r.to_string(), "debian");
    }

    #[test]
    fn a_first_component_with_a_dot_colon_or_localhost_is_a_registry() {
        let r = image("127.0.0.1:5000/library/debian:bookworm");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "library/debian");
        assert_eq!(r.tag(), Some("bookworm"));
        assert_eq!(image("localhost/app").registry(), "localhost");
        assert_eq!(image("ghcr.io/o/app:v1").repository(), "o/app");
        // No dot, no colon: a Docker Hub user, not a host.
        let user = image("team/app:1.2");
        assert_eq!(user.registry(), "docker.io");
        assert_eq!(user.repository(), "team/app");
    }

    #[test]
    fn a_colon_before_a_slash_is_a_port_not_a_tag() {
        let r = image("registry:5000/app");
        assert_eq!(r.host(), Some("registry:5000"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.store_name(), "registry:5000/app:latest");
    }

    #[test]
    fn a_digest_pins_the_image_and_round_trips() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = image(&format!("debian:12@{d}"));
        assert_eq!(r.tag(), Some("12"));
        assert_eq!(r.digest(), Some(d.as_str()));
        assert_eq!(r.to_string(), format!("debian:12@{d}"));
    }

    #[test]
    fn upper_case_names_are_refused_as_docker_refuses_them() {
        let e = ImageRef::parse("MyApp").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid image reference `MyApp`: the repository name `MyApp` must be lower-case"
        );
        // A tag may hold capitals; a host is case-insensitive DNS.
        assert_eq!(image("app:V1").tag(), Some("V1"));
        assert!(ImageRef::parse("Registry.io/app").is_ok());
    }

    #[test]
    fn hostile_and_malformed_names_are_refused_with_the_rule() {
        for bad in [
            "",
            ":tag",
            "app:",
            "app:-x",
            "app::x",
            "a//b",
            "/app",
            "app/",
            "a..b",
            "a._b",
            "-app",
            "app-",
            "app@sha256:short",
            "app@md5:abc",
            &format!("app@sha256:{}", "AB".repeat(32)),
            "host.io:99999/app",
            "host.io:/app",
            "ho_st.io/app",
            "app:../../etc",
            "ap p",
            "app\n",
            &format!("app:{}", "t".repeat(129)),
        ] {
            let e = ImageRef::parse(bad);
            assert!(e.is_err(), "{bad:?} was accepted as {e:?}");
            assert!(
                e.unwrap_err()
                    .to_string()
                    .starts_with(&format!("invalid image reference `{bad}`")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn docker_separators_are_accepted() {
        for good in ["a.b", "a_b", "a__b", "a-b", "a---b", "a1/b2/c3", "0"] {
            assert!(ImageRef::parse(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_name_to_keep_an_image_under_cannot_carry_a_digest() {
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(
            ImageRef::parse_tag_name(&format!("app@{d}"))
                .unwrap_err()
                .to_string()
                .contains("cannot carry a digest")
        );
        assert_eq!(
            ImageRef::parse_tag_name("app").unwrap().store_name(),
            "app:latest"
        );
    }

    #[test]
    fn a_layout_splits_at_the_first_colon_so_every_use_agrees() {
        let r = LayoutRef::parse("oci:./images/base:v1").unwrap();
        assert_eq!(r.dir, "./images/base");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.to_string(), "oci:./images/base:v1");
        let r = LayoutRef::parse("oci:/abs/dir").unwrap();
        assert_eq!((r.dir.as_str(), r.tag_or_default()), ("/abs/dir", "latest"));
        // `D/o:x:v1` is directory `D/o` with tag `x:v1`, which is no tag.
        let e = LayoutRef::parse("oci:D/o:x:v1").unwrap_err().to_string();
        assert!(e.contains("the tag `x:v1`"), "{e}");
        assert!(LayoutRef::parse("oci:").is_err());
        assert!(LayoutRef::parse("oci::v1").is_err());
        assert!(LayoutRef::parse("dir:v1").is_err());
    }
}
