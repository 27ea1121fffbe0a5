//! A series of "builds" of an application image, each a set of layer tars,
//! for measuring dedup and throughput on data shaped like real use.
//!
//! Every build has three layers, as a typical image does:
//! - **base**: a large OS layer, the same in every build. It is a tar of
//!   real files on this machine (by default the first `base_bytes` of
//!   `/usr`, walked in sorted order) or, with [`BaseSource::Synthetic`],
//!   generated files, so tests do not depend on the host;
//! - **deps**: third-party packages, which change rarely: every
//!   [`DEPS_EVERY`] builds one package is upgraded (its files rewritten);
//! - **app**: the application's own files, which change a little every
//!   build: a few files edited in place, bytes inserted into one, one file
//!   deleted, one renamed, one added, and the "compiled binary" partly
//!   rewritten.
//!
//! Given the same spec (and, for a real base, the same host files) the
//! corpus is byte-for-byte the same: layers are tars with sorted entries,
//! mtime 0 and uid/gid 0, and all changes come from a seeded PRNG. Nothing
//! is stored anywhere: the layers are generated in memory on demand.

use std::path::{Path, PathBuf};

use crate::data::{Rng, realistic_corpus};

/// Builds between two upgrades of one dependency package.
pub const DEPS_EVERY: usize = 4;

/// Where the base layer's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseSource {
    /// Real files under this directory (e.g. `/usr`).
    Host(PathBuf),
    /// Generated files: host-independent, for tests.
    Synthetic,
}

/// What corpus to generate.
#[derive(Clone, Debug)]
pub struct CorpusSpec {
    pub seed: u64,
    pub builds: usize,
    pub base: BaseSource,
    pub base_bytes: u64,
    pub deps_bytes: u64,
    pub app_bytes: u64,
}

impl CorpusSpec {
    /// A corpus of about `total` bytes per build: 75% base, 20% deps, 5% app.
    pub fn sized(seed: u64, builds: usize, total: u64, base: BaseSource) -> Self {
        CorpusSpec {
            seed,
            builds,
            base,
            base_bytes: total / 100 * 75,
            deps_bytes: total / 100 * 20,
            app_bytes: (total / 100 * 5).max(64 << 10),
        }
    }
}

/// One layer tar of one build.
#[derive(Clone, Debug)]
pub struct Layer {
    /// "base", "deps" or "app".
    pub name: &'static str,
    pub tar: std::sync::Arc<Vec<u8>>,
}

/// The layers of one build, base first.
#[derive(Clone, Debug)]
pub struct Build {
    pub index: usize,
    pub layers: Vec<Layer>,
}

impl Build {
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|l| l.tar.len() as u64).sum()
    }
}

/// A file of a generated layer.
#[derive(Clone, Debug, PartialEq, Eq)]
struct File {
    path: String,
    mode: u32,
    content: Vec<u8>,
}

/// Generates the builds of a corpus, one after the other: each build's app
/// and deps layers are the previous build's with this build's changes.
#[derive(Debug)]
pub struct Corpus {
    spec: CorpusSpec,
    rng: Rng,
    base: Layer,
    deps: Vec<Vec<File>>,
    app: Vec<File>,
    next: usize,
    files_made: u64,
}

impl Corpus {
    /// Prepares the base layer and the first build's files.
    pub fn new(spec: CorpusSpec) -> std::io::Result<Corpus> {
        let mut rng = Rng::new(spec.seed);
        let base_tar = match &spec.base {
            BaseSource::Host(dir) => host_tar(dir, spec.base_bytes)?,
            BaseSource::Synthetic => {
                let files = generated_files(&mut rng, "usr/lib/base", spec.base_bytes, 0);
                tar_of(&files)
            }
        };
        let package_count = 8;
        let deps = (0..package_count)
            .map(|p| {
                let prefix = format!("opt/deps/pkg{p:02}");
                generated_files(&mut rng, &prefix, spec.deps_bytes / package_count, p)
            })
            .collect();
        let app = generated_files(&mut rng, "app/src", spec.app_bytes, 1000);
        Ok(Corpus {
            base: Layer {
                name: "base",
                tar: std::sync::Arc::new(base_tar),
            },
            rng,
            deps,
            app,
            next: 0,
            files_made: 0,
            spec,
        })
    }

    pub fn spec(&self) -> &CorpusSpec {
        &self.spec
    }

    /// The next build, or `None` after `spec.builds` of them.
    pub fn next_build(&mut self) -> Option<Build> {
        if self.next >= self.spec.builds {
            return None;
        }
        let index = self.next;
        self.next += 1;
        if index > 0 {
            if index.is_multiple_of(DEPS_EVERY) {
                self.upgrade_a_package();
            }
            self.change_app();
        }
        let deps: Vec<File> = self.deps.iter().flatten().cloned().collect();
        Some(Build {
            index,
            layers: vec![
                self.base.clone(),
                Layer {
                    name: "deps",
                    tar: std::sync::Arc::new(tar_of(&deps)),
                },
                Layer {
                    name: "app",
                    tar: std::sync::Arc::new(tar_of(&self.app)),
                },
            ],
        })
    }

    fn upgrade_a_package(&mut self) {
        let p = self.rng.below(self.deps.len());
        let bytes: u64 = self.deps[p].iter().map(|f| f.content.len() as u64).sum();
        let prefix = format!("opt/deps/pkg{p:02}");
        let seed = self.rng.next_u64();
        self.deps[p] = generated_files(&mut Rng::new(seed), &prefix, bytes, seed);
    }

    /// A day's work on the application: edits, an insert, a delete, a
    /// rename, a new file, and a rebuilt binary.
    fn change_app(&mut self) {
        let rng = &mut self.rng;
        for _ in 0..3 {
            let f = rng.below(self.app.len());
            let content = &mut self.app[f].content;
            if !content.is_empty() {
                let at = rng.below(content.len());
                let end = (at + rng.range(1, 200)).min(content.len());
                for b in &mut content[at..end] {
                    *b = b'a' + (rng.next_u64() % 26) as u8;
                }
            }
        }
        let f = rng.below(self.app.len());
        let at = rng.below(self.app[f].content.len() + 1);
        let inserted = realistic_corpus(rng.range(100, 4000), rng.next_u64());
        self.app[f].content.splice(at..at, inserted);

        if self.app.len() > 4 {
            let gone = rng.below(self.app.len());
            self.app.remove(gone);
            let moved = rng.below(self.app.len());
            self.app[moved].path.push_str(".renamed");
        }
        self.files_made += 1;
        let size = rng.range(1000, 20_000);
        let seed = rng.next_u64();
        self.app.push(File {
            path: format!("app/src/new_{:04}.rs", self.files_made),
            mode: 0o644,
            content: realistic_corpus(size, seed),
        });
        self.app.sort_by(|a, b| a.path.cmp(&b.path));

        // The binary: a linker output moves code around; model it as a
        // tenth of its bytes rewritten in a few places.
        if let Some(bin) = self.app.iter_mut().find(|f| f.path.ends_with("/app.bin")) {
            let len = bin.content.len();
            for _ in 0..4 {
                let span = (len / 40).max(1);
                let at = rng.below(len.saturating_sub(span).max(1));
                let fresh = realistic_corpus(span, rng.next_u64());
                let end = (at + span).min(len);
                bin.content[at..end].copy_from_slice(&fresh[..end - at]);
            }
        }
    }
}

/// Files under `prefix` adding up to about `bytes`: sources, configs and
/// one larger `app.bin`, with realistic content.
fn generated_files(rng: &mut Rng, prefix: &str, bytes: u64, salt: u64) -> Vec<File> {
    let mut files = Vec::new();
    let bin = bytes / 4;
    if bin > 0 {
        files.push(File {
            path: format!("{prefix}/app.bin"),
            mode: 0o755,
            content: realistic_corpus(bin as usize, rng.next_u64() ^ salt),
        });
    }
    let mut made = bin;
    let mut n = 0;
    while made < bytes {
        let size = rng
            .range(2_000, 200_000)
            .min((bytes - made) as usize)
            .max(1);
        files.push(File {
            path: format!(
                "{prefix}/file_{n:05}.{}",
                ["rs", "toml", "json", "txt"][n % 4]
            ),
            mode: 0o644,
            content: realistic_corpus(size, rng.next_u64() ^ salt),
        });
        made += size as u64;
        n += 1;
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// A GNU header with nothing host-specific in it: mtime 0, root-owned.
fn header(mode: u32, size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// A tar of generated files, in the order given (sorted by path).
fn tar_of(files: &[File]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = header(f.mode, f.content.len() as u64, tar::EntryType::Regular);
        // In-memory writes cannot fail, and the generated paths are valid.
        let _ = b.append_data(&mut h, &f.path, &f.content[..]);
    }
    b.into_inner().unwrap_or_default()
}

/// A tar of the real files under `dir` (regular files and symlinks, sorted
/// walk: a directory's files first, then its subdirectories; unreadable
/// entries skipped) until `budget` bytes of content.
pub fn host_tar(dir: &Path, budget: u64) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::with_capacity(budget as usize + (1 << 20)));
    let mut taken = 0u64;
    let root = dir.parent().unwrap_or(Path::new("/"));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        // Depth first, in sorted order: push subdirectories in reverse.
        let mut subdirs = Vec::new();
        for path in names {
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let rel = rel.to_string_lossy().into_owned();
            if meta.is_dir() {
                subdirs.push(path);
            } else if meta.file_type().is_symlink() {
                if let Ok(target) = std::fs::read_link(&path) {
                    let mut h = header(0o777, 0, tar::EntryType::Symlink);
                    let _ = b.append_link(&mut h, &rel, &target);
                }
            } else if meta.is_file() {
                let Ok(content) = std::fs::read(&path) else {
                    continue;
                };
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o7777;
                let mut h = header(mode, content.len() as u64, tar::EntryType::Regular);
                b.append_data(&mut h, &rel, &content[..])?;
                taken += content.len() as u64;
                if taken >= budget {
                    return b.into_inner();
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn small(seed: u64) -> CorpusSpec {
        CorpusSpec {
            seed,
            builds: 6,
            base: BaseSource::Synthetic,
            base_bytes: 2 << 20,
            deps_bytes: 1 << 20,
            app_bytes: 256 << 10,
        }
    }

    fn all_builds(spec: CorpusSpec) -> Vec<Build> {
        let mut c = Corpus::new(spec).unwrap();
        std::iter::from_fn(|| c.next_build()).collect()
    }

    fn tars(builds: &[Build]) -> Vec<Vec<u8>> {
        builds
            .iter()
            .flat_map(|b| b.layers.iter().map(|l| l.tar.to_vec()))
            .collect()
    }

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
        let a = all_builds(small(7));
        assert_eq!(a.len(), 6);
        assert_eq!(tars(&a), tars(&all_builds(small(7))));
        let b = all_builds(small(8));
        assert_ne!(tars(&a), tars(&b));
    }

    #[test]
    fn builds_change_the_way_images_do() {
        let builds = all_builds(small(1));
        for pair in builds.windows(2) {
            let (prev, next) = (&pair[0], &pair[1]);
            assert_eq!(prev.layers[0].tar, next.layers[0].tar, "base never changes");
            assert_ne!(
                prev.layers[2].tar, next.layers[2].tar,
                "app changes every build"
            );
            let deps_changed = prev.layers[1].tar != next.layers[1].tar;
            assert_eq!(
                deps_changed,
                next.index % DEPS_EVERY == 0,
                "build {}",
                next.index
            );
        }
        // Every layer is a readable tar.
        for layer in &builds[5].layers {
            let mut archive = tar::Archive::new(&layer.tar[..]);
            assert!(archive.entries().unwrap().count() > 1);
        }
    }

    #[test]
    fn a_host_base_is_a_tar_of_real_files_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/b")).unwrap();
        std::fs::write(dir.path().join("src/a.txt"), vec![b'a'; 3000]).unwrap();
        std::fs::write(dir.path().join("src/b/c.txt"), vec![b'c'; 3000]).unwrap();
        std::os::unix::fs::symlink("a.txt", dir.path().join("src/link")).unwrap();
        let tar = host_tar(&dir.path().join("src"), 1 << 20).unwrap();
        let mut archive = tar::Archive::new(&tar[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["src/a.txt", "src/link", "src/b/c.txt"]);
        // A budget stops the walk after the file that reaches it.
        let tar = host_tar(&dir.path().join("src"), 1000).unwrap();
        assert_eq!(tar::Archive::new(&tar[..]).entries().unwrap().count(), 1);
    }
}
