//! The build context: which files a `COPY`/`ADD` selects, where they land in
//! the image, and the digest of what was selected — the part of a step key
//! that comes from the user's files.
//!
//! Selection follows Docker: a directory source copies its contents, a file
//! source lands at `dest` (or inside it when `dest` ends in `/` or there
//! are several sources), `*` and `?` match within one path component, and
//! `.dockerignore` removes files (its patterns also allow `**` and `!`
//! exceptions; the last matching pattern decides). A source may not leave
//! the context, by `..` or through a symlink.
//!
//! The digest covers each selected entry's destination path, type, mode,
//! content and link target — never the context's location on the host, an
//! mtime or the host's uid — so two checkouts of the same files on two
//! machines give the same key.

use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use strata_proto::Digest;

/// What one selected entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink(String),
}

/// One entry a `COPY` puts into the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyEntry {
    /// The file on the host.
    pub host: PathBuf,
    /// Absolute path in the image, normalised (`/app/main.rs`).
    pub dest: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777`), after `--chmod`.
    pub mode: u32,
    /// A file named as the whole destination (`COPY f /usr/local/bin`, no
    /// trailing `/`): if that is a directory in the image when the step
    /// runs, the file lands inside it, as Docker does.
    pub into_existing_dir: bool,
    /// Named by the instruction (or matched by its glob), as opposed to
    /// found inside a named directory: only such a file is an archive that
    /// `ADD` unpacks.
    pub named: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("COPY source {0:?} is outside the build context")]
    Escapes(String),
    #[error("COPY source {0:?} matches no file in the build context (or all are in .dockerignore)")]
    NoMatch(String),
    #[error("COPY source {name:?} is a symlink to {target:?}, outside the build context")]
    SymlinkEscapes { name: String, target: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContextError {
    let what = what.into();
    move |source| ContextError::Io { what, source }
}

/// A build context directory and its ignore rules.
#[derive(Clone, Debug)]
pub struct BuildContext {
    root: PathBuf,
    ignore: Vec<IgnoreRule>,
    /// Where `COPY <<EOF` bodies and `ADD <url>` downloads are written as
    /// files, made on first use and removed with the last clone of the
    /// context.
    inline: Arc<Mutex<Option<tempfile::TempDir>>>,
}

#[derive(Clone, Debug)]
struct IgnoreRule {
    pattern: Vec<String>,
    negated: bool,
}

impl BuildContext {
    pub fn open(root: &Path) -> Result<BuildContext, ContextError> {
        if !root.is_dir() {
            return Err(ContextError::NotADirectory(root.to_path_buf()));
        }
        let ignore_file = root.join(".dockerignore");
        let ignore = match std::fs::read_to_string(&ignore_file) {
            Ok(text) => parse_ignore(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(".dockerignore")(e)),
        };
        Ok(BuildContext {
            root: root.to_path_buf(),
            ignore,
            inline: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether a context-relative path (`a/b.txt`) is excluded.
    pub fn is_ignored(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        let mut ignored = false;
        for rule in &self.ignore {
            // A pattern matching a directory covers everything below it.
            let matches = (1..=parts.len()).any(|n| glob_components(&rule.pattern, &parts[..n]));
            if matches {
                ignored = !rule.negated;
            }
        }
        ignored
    }

    /// The entries `COPY <<A [<<B ...] dest` makes: one file per heredoc,
    /// named by its delimiter when `dest` is a directory, else `dest`
    /// itself, mode 0644 unless `chmod` says otherwise.
    pub fn select_inline(
        &self,
        files: &[strata_dockerfile::InlineFile],
        dest: &str,
        cwd: &str,
        chmod: Option<u32>,
    ) -> Result<Vec<CopyEntry>, ContextError> {
        let dest_abs = crate::image::resolve_path(cwd, dest);
        let into_dir =
            dest.ends_with('/') || dest == "." || dest.ends_with("/.") || files.len() > 1;
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let host = self.inline_file(&file.content)?;
            let dest = if into_dir {
                crate::image::resolve_path(&dest_abs, &file.name)
            } else {
                dest_abs.clone()
            };
            out.push(CopyEntry {
                host,
                dest,
                kind: EntryKind::File,
                mode: chmod.unwrap_or(0o644),
                into_existing_dir: !into_dir,
                named: true,
            });
        }
        out.sort_by(|a, b| a.dest.cmp(&b.dest));
        Ok(out)
    }

    /// A file holding `content`, in the context's inline directory.
    fn inline_file(&self, content: &str) -> Result<PathBuf, ContextError> {
        let path = self
            .inline_dir()?
            .join(blake3::hash(content.as_bytes()).to_hex().as_str());
        std::fs::write(&path, content).map_err(io_err(path.display().to_string()))?;
        Ok(path)
    }

    /// Where the file an `ADD <url>` pinned by `sha256_hex` is fetched to
    /// when its step runs, named `name`.
    pub fn download_path(&self, sha256_hex: &str, name: &str) -> Result<PathBuf, ContextError> {
        let dir = self.inline_dir()?.join(sha256_hex);
        std::fs::create_dir_all(&dir).map_err(io_err(dir.display().to_string()))?;
        Ok(dir.join(name))
    }

    /// The directory for files the Dockerfile itself supplies (heredocs,
    /// downloads), made on first use, 0700.
    fn inline_dir(&self) -> Result<PathBuf, ContextError> {
        let mut dir = self
            .inline
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(dir) = dir.as_ref() {
            return Ok(dir.path().to_path_buf());
        }
        let made = tempfile::Builder::new()
            .prefix("strata-inline-")
            .tempdir()
            .map_err(io_err(
                "making a directory for COPY heredocs and ADD downloads",
            ))?;
        let path = made.path().to_path_buf();
        *dir = Some(made);
        Ok(path)
    }

    /// The entries `COPY sources... dest` selects, sorted by destination.
    /// `cwd` resolves a relative `dest`; `chmod` overrides file modes.
    pub fn select(
        &self,
        sources: &[String],
        dest: &str,
        cwd: &str,
        chmod: Option<u32>,
    ) -> Result<Vec<CopyEntry>, ContextError> {
        let dest_abs = crate::image::resolve_path(cwd, dest);
        // `dest/`, `.` and `dir/.` name a directory (Docker keeps the slash
        // of both when it resolves the destination against WORKDIR).
        let into_dir =
            dest.ends_with('/') || dest == "." || dest.ends_with("/.") || sources.len() > 1;
        let mut out = Vec::new();
        for source in sources {
            let matches = self.expand_source(source)?;
            if matches.is_empty() {
                return Err(ContextError::NoMatch(source.clone()));
            }
            let into_dir = into_dir || matches.len() > 1 || has_glob(source);
            for rel in matches {
                let host = self.root.join(&rel);
                let meta =
                    std::fs::metadata(&host).map_err(io_err(format!("COPY source {source}")))?;
                self.check_inside(source, &host)?;
                if meta.is_dir() {
                    self.walk_dir(&host, &rel, &dest_abs, chmod, &mut out)?;
                } else {
                    let name = rel.rsplit('/').next().unwrap_or(&rel);
                    let target = if into_dir {
                        crate::image::resolve_path(&dest_abs, name)
                    } else {
                        dest_abs.clone()
                    };
                    let mut selected = entry(&host, target, &meta, chmod)?;
                    selected.into_existing_dir = !into_dir;
                    selected.named = true;
                    out.push(selected);
                }
            }
        }
        out.sort_by(|a, b| a.dest.cmp(&b.dest));
        out.dedup_by(|a, b| a.dest == b.dest);
        Ok(out)
    }

    /// Context-relative paths a source names, globs expanded, ignored
    /// paths dropped, sorted.
    fn expand_source(&self, source: &str) -> Result<Vec<String>, ContextError> {
        let mut parts = Vec::new();
        for c in Path::new(source.trim_start_matches('/')).components() {
            match c {
                Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
                Component::CurDir | Component::RootDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(ContextError::Escapes(source.into()));
                    }
                }
                Component::Prefix(_) => return Err(ContextError::Escapes(source.into())),
            }
        }
        let mut found = vec![String::new()];
        for part in &parts {
            let mut next = Vec::new();
            for base in &found {
                if has_glob(part) {
                    let dir = self.root.join(base);
                    let Ok(entries) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    let mut names: Vec<String> = entries
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| glob_component(part, n))
                        .collect();
                    names.sort();
                    next.extend(names.into_iter().map(|n| join_rel(base, &n)));
                } else {
                    next.push(join_rel(base, part));
                }
            }
            found = next;
        }
        Ok(found
            .into_iter()
            .filter(|rel| {
                (rel.is_empty() || !self.is_ignored(rel))
                    && std::fs::symlink_metadata(self.root.join(rel)).is_ok()
            })
            .collect())
    }

    /// Refuses a source whose real location is outside the context.
    fn check_inside(&self, source: &str, host: &Path) -> Result<(), ContextError> {
        let root = self
            .root
            .canonicalize()
            .map_err(io_err("the build context"))?;
        let real = host
            .canonicalize()
            .map_err(io_err(format!("COPY source {source}")))?;
        if !real.starts_with(&root) {
            return Err(ContextError::SymlinkEscapes {
                name: source.into(),
                target: real.display().to_string(),
            });
        }
        Ok(())
    }

    /// A directory's contents (not the directory itself) under `dest`.
    fn walk_dir(
        &self,
        dir: &Path,
        rel: &str,
        dest: &str,
        chmod: Option<u32>,
        out: &mut Vec<CopyEntry>,
    ) -> Result<(), ContextError> {
        let meta = std::fs::metadata(dir).map_err(io_err(dir.display().to_string()))?;
        out.push(entry(dir, dest.to_string(), &meta, chmod)?);
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .map_err(io_err(dir.display().to_string()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let name = name.to_string_lossy().into_owned();
            let child_rel = join_rel(rel, &name);
            if self.is_ignored(&child_rel) {
                continue;
            }
            let host = dir.join(&name);
            let child_dest = crate::image::resolve_path(dest, &name);
            let meta = std::fs::symlink_metadata(&host).map_err(io_err(child_rel.clone()))?;
            if meta.is_dir() {
                self.walk_dir(&host, &child_rel, &child_dest, chmod, out)?;
            } else if meta.is_file() || meta.file_type().is_symlink() {
                out.push(entry(&host, child_dest, &meta, chmod)?);
            }
            // Sockets, fifos and devices in a context are skipped, as Docker does.
        }
        Ok(())
    }
}

fn entry(
    host: &Path,
    dest: String,
    meta: &std::fs::Metadata,
    chmod: Option<u32>,
) -> Result<CopyEntry, ContextError> {
    use std::os::unix::fs::PermissionsExt;
    let kind = if meta.file_type().is_symlink() {
        let target = std::fs::read_link(host).map_err(io_err(host.display().to_string()))?;
        EntryKind::Symlink(target.to_string_lossy().into_owned())
    } else if meta.is_dir() {
        EntryKind::Dir
    } else {
        EntryKind::File
    };
    let mode = match (&kind, chmod) {
        (EntryKind::Symlink(_), _) => 0o777,
        (_, Some(m)) => m,
        _ => meta.permissions().mode() & 0o7777,
    };
    Ok(CopyEntry {
        host: host.to_path_buf(),
        dest,
        kind,
        mode,
        into_existing_dir: false,
        named: false,
    })
}

/// BLAKE3 over each entry's destination, type, mode, and content or link
/// target, in order.
pub fn digest_entries(entries: &[CopyEntry]) -> Result<Digest, ContextError> {
    let mut h = blake3::Hasher::new();
    h.update(b"strata-copy-v1\0");
    for e in entries {
        h.update(e.dest.as_bytes());
        h.update(b"\0");
        h.update(&e.mode.to_le_bytes());
        match &e.kind {
            EntryKind::Dir => {
                h.update(b"d");
            }
            EntryKind::Symlink(t) => {
                h.update(b"l");
                h.update(t.as_bytes());
                h.update(b"\0");
            }
            EntryKind::File => {
                h.update(b"f");
                let mut f =
                    std::fs::File::open(&e.host).map_err(io_err(e.host.display().to_string()))?;
                let mut content = blake3::Hasher::new();
                std::io::copy(&mut f, &mut content)
                    .map_err(io_err(e.host.display().to_string()))?;
                h.update(content.finalize().as_bytes());
            }
        }
    }
    Ok(h.finalize().into())
}

fn join_rel(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_string()
    } else {
        format!("{base}/{name}")
    }
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn parse_ignore(text: &str) -> Vec<IgnoreRule> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (negated, pat) = match l.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, l),
            };
            let pattern = pat
                .split('/')
                .filter(|p| !p.is_empty() && *p != ".")
                .map(str::to_owned)
                .collect();
            IgnoreRule { pattern, negated }
        })
        .collect()
}

/// Matches path components against pattern components; `**` matches any
/// number of components.
fn glob_components(pattern: &[String], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=path.len()).any(|skip| glob_components(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((first, tail)) => glob_component(p, first) && glob_components(rest, tail),
            None => false,
        },
    }
}

/// `*` (any run), `?` (one character) and `[abc]`/`[a-z]` within one
/// component.
fn glob_component(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_chars(&p, &n)
}

fn glob_chars(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| glob_chars(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && glob_chars(&p[1..], &n[1..]),
        Some('[') => {
            let Some(close) = p.iter().position(|&c| c == ']') else {
                return n.first() == Some(&'[') && glob_chars(&p[1..], &n[1..]);
            };
            let Some(&c) = n.first() else { return false };
            let class = &p[1..close];
            let mut ok = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    ok |= (class[i]..=class[i + 2]).contains(&c);
                    i += 3;
                } else {
                    ok |= class[i] == c;
                    i += 1;
                }
            }
            ok && glob_chars(&p[close + 1..], &n[1..])
        }
        Some(&c) => n.first() == Some(&c) && glob_chars(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn context(files: &[(&str, &str)], ignore: &str) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        std::fs::write(dir.path().join(".dockerignore"), ignore).unwrap();
        let ctx = BuildContext::open(dir.path()).unwrap();
        (dir, ctx)
    }

    fn dests(entries: &[CopyEntry]) -> Vec<&str> {
        entries.iter().map(|e| e.dest.as_str()).collect()
    }

    /// Docker's destination rules, one row each: sources, destination as
    /// written, WORKDIR, then where each entry lands and whether a file may
    /// still land inside an existing image directory when the step runs.
    #[test]
    fn copy_destination_rules_follow_docker() {
        let (_d, ctx) = context(
            &[("f", "f"), ("g.txt", "g"), ("h.txt", "h"), ("dir/x", "x")],
            "",
        );
        type Row<'a> = (&'a [&'a str], &'a str, &'a str, &'a [(&'a str, bool)]);
        let rows: &[Row] = &[
            // A file to a path without a slash: that path is its name...
            (&["f"], "/dst", "/", &[("/dst", true)]),
            // ...unless the image has a directory there at run time.
            (&["f"], "/usr/local/bin", "/", &[("/usr/local/bin", true)]),
            // A trailing slash, `.` or `dir/.` name a directory.
            (&["f"], "/dst/", "/", &[("/dst/f", false)]),
            (&["f"], ".", "/app", &[("/app/f", false)]),
            (&["f"], "./", "/app", &[("/app/f", false)]),
            (&["f"], "sub/.", "/app", &[("/app/sub/f", false)]),
            // Relative destinations resolve against WORKDIR, `..` included.
            (&["f"], "../x", "/app", &[("/x", true)]),
            (&["f"], "y", "/app", &[("/app/y", true)]),
            // Several sources, or a glob, go into the destination.
            (
                &["g.txt", "h.txt"],
                "/dst/",
                "/",
                &[("/dst/g.txt", false), ("/dst/h.txt", false)],
            ),
            (
                &["*.txt"],
                "/dst",
                "/",
                &[("/dst/g.txt", false), ("/dst/h.txt", false)],
            ),
            // A directory contributes its contents, not itself.
            (&["dir"], "/opt", "/", &[("/opt", false), ("/opt/x", false)]),
            (
                &["dir/"],
                "/opt/",
                "/",
                &[("/opt", false), ("/opt/x", false)],
            ),
        ];
        for (sources, dest, cwd, expected) in rows {
            let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
            let entries = ctx.select(&sources, dest, cwd, None).unwrap();
            let got: Vec<(&str, bool)> = entries
                .iter()
                .map(|e| (e.dest.as_str(), e.into_existing_dir))
                .collect();
            assert_eq!(&got, expected, "COPY {sources:?} {dest} (WORKDIR {cwd})");
        }
    }

    #[test]
    fn files_dirs_and_globs_land_where_docker_puts_them() {
        let (_d, ctx) = context(
            &[
                ("a.txt", "a"),
                ("b.txt", "b"),
                ("src/main.rs", "m"),
                ("src/lib/x.rs", "x"),
            ],
            "",
        );
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            dests(&ctx.select(&s(&["a.txt"]), "/x", "/", None).unwrap()),
            ["/x"]
        );
        assert_eq!(
            dests(&ctx.select(&s(&["a.txt"]), "x/", "/app", None).unwrap()),
            ["/app/x/a.txt"]
        );
        assert_eq!(
            dests(&ctx.select(&s(&["*.txt"]), "/t", "/", None).unwrap()),
            ["/t/a.txt", "/t/b.txt"]
        );
        assert_eq!(
            dests(&ctx.select(&s(&["src"]), "/app", "/", None).unwrap()),
            ["/app", "/app/lib", "/app/lib/x.rs", "/app/main.rs"]
        );
    }

    #[test]
    fn dockerignore_excludes_with_exceptions() {
        let (_d, ctx) = context(
            &[
                ("keep.rs", "k"),
                ("target/out", "o"),
                ("logs/a.log", "l"),
                ("logs/keep.log", "k"),
            ],
            "# build output\ntarget\n**/*.log\n!logs/keep.log\n",
        );
        let got = ctx.select(&[".".into()], "/", "/", None).unwrap();
        let got = dests(&got);
        assert!(
            got.contains(&"/keep.rs") && got.contains(&"/logs/keep.log"),
            "{got:?}"
        );
        assert!(
            !got.iter()
                .any(|d| d.contains("target") || d.ends_with("a.log")),
            "{got:?}"
        );
    }

    #[test]
    fn sources_outside_the_context_are_refused() {
        let (d, ctx) = context(&[("a", "a")], "");
        assert!(matches!(
            ctx.select(&["../etc/passwd".into()], "/", "/", None),
            Err(ContextError::Escapes(_))
        ));
        std::os::unix::fs::symlink("/etc", d.path().join("evil")).unwrap();
        assert!(matches!(
            ctx.select(&["evil".into()], "/", "/", None),
            Err(ContextError::SymlinkEscapes { .. })
        ));
        assert!(matches!(
            ctx.select(&["nope".into()], "/", "/", None),
            Err(ContextError::NoMatch(_))
        ));
    }

    #[test]
    fn the_digest_sees_content_and_mode_but_not_location_or_mtime() {
        let files = [("a.txt", "hello"), ("d/b.txt", "world")];
        let (d1, c1) = context(&files, "");
        let (_d2, c2) = context(&files, "");
        let sel = |c: &BuildContext| c.select(&[".".into()], "/app", "/", None).unwrap();
        let digest = |c: &BuildContext| digest_entries(&sel(c)).unwrap();
        assert_eq!(digest(&c1), digest(&c2), "another checkout, same key");

        let f = std::fs::File::options()
            .write(true)
            .open(d1.path().join("a.txt"))
            .unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH).unwrap();
        assert_eq!(digest(&c1), digest(&c2), "mtime is not part of it");

        std::fs::write(d1.path().join("a.txt"), "hellO").unwrap();
        assert_ne!(digest(&c1), digest(&c2), "content is");
        std::fs::write(d1.path().join("a.txt"), "hello").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            d1.path().join("a.txt"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(digest(&c1), digest(&c2), "mode is");
    }
}
