//! `LayerPath`: a path inside an image, relative to the image root, already
//! checked. Every path that enters this module from a tar header, a caller or
//! a directory walk becomes a `LayerPath` first, so code further in never sees
//! an absolute path, a `..` or an empty component.
//!
//! Paths are raw bytes (Linux file names need not be UTF-8) separated by `/`.
//! They order *component by component*, which is the canonical order of a
//! layer: a parent sorts before its children and each subtree is contiguous.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Prefix that marks a whiteout file in an OCI layer.
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the opaque-directory marker in an OCI layer.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("it is absolute (expected a path relative to the image root)")]
    Absolute,
    #[error("it contains a '..' component (expected none)")]
    ParentDir,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it names the image root (expected a path below it)")]
    Root,
    #[error("expected a single file name, found a name containing '/'")]
    NotAName,
    #[error("a name starting with '.wh.' is reserved for OCI whiteouts")]
    ReservedName,
}

/// A checked, normalised path relative to the image root. The empty path is
/// the root itself.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct LayerPath(Vec<u8>);

impl LayerPath {
    /// The image root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Parses a relative path as tar headers carry them: `.` components, a
    /// leading `./`, repeated and trailing slashes are dropped; an absolute
    /// path, a `..` component or a NUL byte is refused. `"./"` is the root.
    pub fn parse(raw: &[u8]) -> Result<Self, PathProblem> {
        if raw.first() == Some(&b'/') {
            return Err(PathProblem::Absolute);
        }
        Self::from_components(raw)
    }

    /// Parses a path as a Dockerfile names it: a leading `/` means the image
    /// root, so `/usr/bin` and `usr/bin` are the same path. `..` is refused.
    pub fn from_image_path(path: &Path) -> Result<Self, PathProblem> {
        Self::from_components(path.as_os_str().as_bytes())
    }

    fn from_components(raw: &[u8]) -> Result<Self, PathProblem> {
        if raw.contains(&0) {
            return Err(PathProblem::Nul);
        }
        let mut out = Vec::with_capacity(raw.len());
        for component in raw.split(|&b| b == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => return Err(PathProblem::ParentDir),
                name => {
                    if !out.is_empty() {
                        out.push(b'/');
                    }
                    out.extend_from_slice(name);
                }
            }
        }
        Ok(Self(out))
    }

    /// The path of the child `name` of this directory.
    pub fn join(&self, name: &OsStr) -> Result<Self, PathProblem> {
        let name = name.as_bytes();
        match name {
            b"" | b"." => Err(PathProblem::Root),
            b".." => Err(PathProblem::ParentDir),
            _ if name.contains(&b'/') => Err(PathProblem::NotAName),
            _ if name.contains(&0) => Err(PathProblem::Nul),
            _ => {
                let mut out = self.0.clone();
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
                Ok(Self(out))
            }
        }
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a relative host path, to join onto a directory.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The last component; empty for the root.
    pub fn file_name(&self) -> &[u8] {
        self.components().last().unwrap_or_default()
    }

    /// The containing directory; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.is_root() {
            return None;
        }
        let cut = self.0.iter().rposition(|&b| b == b'/').unwrap_or(0);
        Some(Self(self.0[..cut].to_vec()))
    }

    pub fn components(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/').filter(|c| !c.is_empty())
    }

    /// Number of components; 0 for the root.
    pub fn depth(&self) -> usize {
        self.components().count()
    }

    /// The proper ancestors below the root, outermost first: `a/b/c` gives
    /// `a`, `a/b`.
    pub fn ancestors(&self) -> Vec<Self> {
        let mut out = Vec::new();
        let mut current = self.parent();
        while let Some(path) = current.filter(|p| !p.is_root()) {
            current = path.parent();
            out.push(path);
        }
        out.reverse();
        out
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &LayerPath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }

    /// Refuses names that an OCI extractor would read as whiteouts.
    pub(crate) fn check_not_reserved(&self) -> Result<(), PathProblem> {
        if self.components().any(|c| c.starts_with(WHITEOUT_PREFIX)) {
            return Err(PathProblem::ReservedName);
        }
        Ok(())
    }
}

/// The bytes of a `/`-separated path with `/` mapped to 0, so that plain
/// byte order is component order (NUL cannot occur in a name).
pub(crate) fn order_key(path: &[u8]) -> Vec<u8> {
    path.iter()
        .map(|&b| if b == b'/' { 0 } else { b })
        .collect()
}

impl Ord for LayerPath {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let key = |b: &u8| if *b == b'/' { 0 } else { *b };
        self.0.iter().map(key).cmp(other.0.iter().map(key))
    }
}

impl PartialOrd for LayerPath {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            return f.write_str("/");
        }
        write!(f, "/{}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for LayerPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn p(s: &str) -> LayerPath {
        LayerPath::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn tar_style_paths_are_normalised() {
        assert_eq!(p("./a//b/./c/"), p("a/b/c"));
        assert!(p("./").is_root());
        assert_eq!(p("a/b").to_string(), "/a/b");
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert_eq!(LayerPath::parse(b"/etc"), Err(PathProblem::Absolute));
        assert_eq!(LayerPath::parse(b"../x"), Err(PathProblem::ParentDir));
        assert_eq!(LayerPath::parse(b"a/../../x"), Err(PathProblem::ParentDir));
        assert_eq!(
            LayerPath::root().join(OsStr::new("..")),
            Err(PathProblem::ParentDir)
        );
        assert_eq!(
            LayerPath::root().join(OsStr::new("a/b")),
            Err(PathProblem::NotAName)
        );
    }

    #[test]
    fn image_paths_may_start_at_the_root() {
        assert_eq!(
            LayerPath::from_image_path(Path::new("/usr/bin")).unwrap(),
            p("usr/bin")
        );
        assert!(LayerPath::from_image_path(Path::new("/a/../b")).is_err());
    }

    #[test]
    fn order_is_component_wise_so_subtrees_stay_together() {
        let mut paths = [p("a-b"), p("a/z"), p("a"), p("a/b/c"), p("a.b"), p("b")];
        paths.sort();
        let names: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        assert_eq!(names, ["/a", "/a/b/c", "/a/z", "/a-b", "/a.b", "/b"]);
    }

    #[test]
    fn parents_and_ancestors() {
        assert_eq!(p("a/b/c").parent(), Some(p("a/b")));
        assert_eq!(p("a").parent(), Some(LayerPath::root()));
        assert_eq!(p("a/b/c").ancestors(), vec![p("a"), p("a/b")]);
        assert!(p("a/b").starts_with(&p("a")));
        assert!(!p("ab").starts_with(&p("a")));
        assert_eq!(p("a/b").file_name(), b"b");
    }
}
