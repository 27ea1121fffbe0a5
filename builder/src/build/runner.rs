//! The state of a running build — its layers so far, and the working root
//! file system once a step needs one — and how a missed step is executed:
//! run (or copy), snapshot as a deterministic layer, store.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_client::{Client, Progress};
use strata_layer::{
    ApplyOptions, Change, CopyItem, IdMap, LayerPath, WriteOptions, apply_layer, copy_changes,
    workdir_changes, write_layer,
};
use strata_proto::{Digest, oci_digest};
use strata_sandbox::IdMapping;

use super::archive::{archive_kind, unpack};
use super::base::{BuiltLayer, LayerContent, LayerSource};
use super::copy::{chown_ids, copy_items, stage_copy_items};
use super::error::BuildError;
use super::plan::{Planned, UrlFetch};
use super::run_step::layer_idmap;
use super::{BuildOptions, Event};
use crate::blob::{BlobError, LayerStream};
use crate::context::{CopyEntry, EntryKind};
use crate::image::{HistoryEntry, LayerRef, MEDIA_TYPE_LAYER};
use strata_dockerfile::Instruction;

/// What executing one missed step produced.
pub(crate) struct Executed {
    /// The stored layer (manifest digest) and its size, if the step has one.
    pub layer: Option<(Digest, u64)>,
    pub uploaded: u64,
    /// How long the step's own command ran (zero but for RUN).
    pub command_time: Duration,
    /// What confined a RUN step, for its provenance (empty for others).
    pub sandbox: String,
}

pub(crate) struct Runner<'a> {
    pub(super) client: &'a Client,
    pub(super) opts: &'a BuildOptions,
    pub(super) scratch: tempfile::TempDir,
    pub(super) ids: IdMapping,
    pub(super) layer_ids: IdMap,
    pub layers: Vec<BuiltLayer>,
    pub history: Vec<HistoryEntry>,
    /// The working rootfs and how many of `layers` it holds.
    rootfs: Option<(PathBuf, usize)>,
    pub downloaded: u64,
}

impl<'a> Runner<'a> {
    /// A runner for a stage whose base has `layers` and `history`.
    pub fn new(
        client: &'a Client,
        opts: &'a BuildOptions,
        layers: Vec<BuiltLayer>,
        history: Vec<HistoryEntry>,
    ) -> Result<Self, BuildError> {
        std::fs::create_dir_all(&opts.scratch)
            .map_err(BuildError::io("creating the scratch directory"))?;
        // 0700: the working rootfs below holds the image's setuid files,
        // owned by mapped ids; no other local user may reach them.
        let scratch = tempfile::Builder::new()
            .prefix("strata-build-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in(&opts.scratch)
            .map_err(BuildError::io("creating the scratch directory"))?;
        let ids = IdMapping::detect().map_err(BuildError::sandbox("choosing the sandbox's ids"))?;
        let layer_ids = layer_idmap(&ids)?;
        Ok(Runner {
            client,
            opts,
            scratch,
            ids,
            layer_ids,
            layers,
            history,
            rootfs: None,
            downloaded: 0,
        })
    }

    /// Takes a cached layer: only its manifest is fetched (for the OCI
    /// digest and size), never its bytes.
    pub async fn adopt_stored_layer(&mut self, digest: Digest) -> Result<u64, BuildError> {
        let manifest = self
            .client
            .get_manifest(&digest)
            .await
            .map_err(BuildError::cache("fetching a layer's manifest"))?;
        let size = manifest.total_length();
        self.layers.push(BuiltLayer {
            diff_id: manifest.oci_digest(),
            content: LayerContent::Tar {
                size,
                source: LayerSource::Store(digest),
            },
        });
        Ok(size)
    }

    /// Makes the working rootfs hold every layer so far, downloading what
    /// it lacks.
    pub async fn materialise(&mut self) -> Result<PathBuf, BuildError> {
        let (root, have) = match self.rootfs.take() {
            Some(r) => r,
            None => {
                let root = self.scratch.path().join("rootfs");
                std::fs::create_dir_all(&root).map_err(BuildError::io("creating the rootfs"))?;
                (root, 0)
            }
        };
        let pending = self.layers[have..].to_vec();
        for (n, built) in pending.iter().enumerate() {
            let (layer, source) = built.readable();
            let path = match source {
                LayerSource::File(p) => p.clone(),
                LayerSource::Store(d) => self.download_layer(d).await?,
            };
            self.apply(have + n + 1, &layer, &path, &root)?;
        }
        let n = self.layers.len();
        self.rootfs = Some((root.clone(), n));
        Ok(root)
    }

    async fn download_layer(&mut self, digest: &Digest) -> Result<PathBuf, BuildError> {
        let tmp = self.scratch.path().join("download.tar");
        let file = File::create(&tmp).map_err(BuildError::io("creating a download file"))?;
        let (report, mut w) = self
            .client
            .pull(digest, BufWriter::new(file), &Progress::new())
            .await
            .map_err(BuildError::cache("downloading a parent layer"))?;
        w.flush()
            .map_err(BuildError::io("writing a downloaded layer"))?;
        self.downloaded += report.total_bytes;
        Ok(tmp)
    }

    /// Extracts layer `number` (1-based, for errors) from its blob at
    /// `path`: decompressed as it streams, then the blob's digest and size
    /// and the tar's diff_id are checked. A refusal fails the build before
    /// any step runs on the result; the working rootfs is scratch.
    fn apply(
        &self,
        number: usize,
        layer: &LayerRef,
        path: &Path,
        root: &Path,
    ) -> Result<(), BuildError> {
        let what = || format!("layer {number} ({})", layer.blob.digest);
        let file = File::open(path).map_err(BuildError::io(format!(
            "opening {} at {}",
            what(),
            path.display()
        )))?;
        let mut stream =
            LayerStream::new(file, layer.blob.compression).map_err(|e| BuildError::Blob {
                what: what(),
                source: e,
            })?;
        let applied = apply_layer(
            &mut stream,
            root,
            &self.layer_ids,
            &ApplyOptions {
                skip_device_nodes: true,
            },
        );
        // A blob that is not what it claims explains a failed extraction
        // better than the extractor's own error, so check it first.
        let checked = match applied {
            Ok(_) => stream.finish(layer),
            Err(e) => {
                return Err(match stream.finish(layer) {
                    Err(blob) if !matches!(blob, BlobError::Read(_)) => BuildError::Blob {
                        what: what(),
                        source: blob,
                    },
                    _ => BuildError::Layer {
                        what: format!("applying {}", what()),
                        source: e,
                    },
                });
            }
        };
        checked.map_err(|e| BuildError::Blob {
            what: what(),
            source: e,
        })
    }

    /// Runs one missed step, snapshots and stores its layer. `from_root` is
    /// the file system of the stage a `COPY --from` reads.
    pub async fn execute(
        &mut self,
        s: &Planned,
        from_root: Option<&Path>,
        events: &mut (dyn FnMut(Event<'_>) + Send),
    ) -> Result<Executed, BuildError> {
        let mut command_time = Duration::ZERO;
        let mut sandbox = String::new();
        let changes = match &s.instruction {
            Instruction::Run { command, network } => {
                let root = self.materialise().await?;
                let (changes, took, confinement) =
                    self.run_step(s, command, *network, &root, events)?;
                command_time = took;
                sandbox = confinement;
                changes
            }
            Instruction::Workdir(_) => {
                let root = self.materialise().await?;
                let changes = workdir(s, &root)?;
                if changes.is_empty() {
                    return Ok(Executed {
                        layer: None,
                        uploaded: 0,
                        command_time,
                        sandbox,
                    });
                }
                changes
            }
            Instruction::Copy {
                chown,
                chmod,
                sources,
                dest,
                from: Some(from),
                ..
            } => {
                let root = self.materialise().await?;
                let owner = chown_ids(chown.as_deref(), &root)
                    .map_err(|e| s.site.error(format!("COPY --chown={e}")))?;
                let stage_root = from_root.ok_or_else(|| {
                    s.site
                        .error(format!("COPY --from={from}: no stage file system"))
                })?;
                let items = stage_copy_items(
                    sources,
                    dest,
                    s.config_before.cwd(),
                    stage_root,
                    owner,
                    *chmod,
                )
                .map_err(|e| s.site.error(format!("COPY --from={from}: {e}")))?;
                copy_changes(&items, &root).map_err(|e| s.site.error(format!("COPY: {e}")))?
            }
            Instruction::Copy { chown, .. } | Instruction::Add { chown, .. } => {
                let root = self.materialise().await?;
                let owner = chown_ids(chown.as_deref(), &root)
                    .map_err(|e| s.site.error(format!("COPY --chown={e}")))?;
                let entries = s.copy.as_deref().unwrap_or_default();
                if let (Some(fetch), [entry]) = (&s.fetch, entries) {
                    fetch_url(fetch, &entry.host)
                        .await
                        .map_err(|e| s.site.error(format!("ADD: {e}")))?;
                }
                let mut items = copy_items(entries, owner).map_err(|e| s.site.error(e))?;
                if matches!(s.instruction, Instruction::Add { .. }) {
                    self.unpack_archives(s, entries, &mut items, owner)?;
                }
                copy_changes(&items, &root).map_err(|e| s.site.error(format!("COPY: {e}")))?
            }
            _ => {
                return Ok(Executed {
                    layer: None,
                    uploaded: 0,
                    command_time,
                    sandbox,
                });
            }
        };
        let (digest, size, uploaded) = self.store_layer(s, &changes).await?;
        Ok(Executed {
            layer: Some((digest, size)),
            uploaded,
            command_time,
            sandbox,
        })
    }

    /// `ADD` unpacks a named local archive at its destination directory
    /// instead of copying it: its copy item is replaced by the unpacked tree.
    fn unpack_archives(
        &self,
        s: &Planned,
        entries: &[CopyEntry],
        items: &mut [CopyItem],
        owner: Option<(u32, u32)>,
    ) -> Result<(), BuildError> {
        for (n, (entry, item)) in entries.iter().zip(items.iter_mut()).enumerate() {
            if !entry.named || entry.kind != EntryKind::File {
                continue;
            }
            let archive = archive_kind(&entry.host)
                .map_err(BuildError::io(format!("reading {}", entry.host.display())))?;
            let Some(kind) = archive else { continue };
            let into = self
                .scratch
                .path()
                .join(format!("add-{}-{n}", self.layers.len()));
            std::fs::create_dir(&into).map_err(BuildError::io("creating an unpack directory"))?;
            unpack(&entry.host, kind, &into, &self.layer_ids).map_err(|e| {
                s.site.error(format!(
                    "ADD: unpacking {}: {e}",
                    entry.host.file_name().unwrap_or_default().to_string_lossy()
                ))
            })?;
            // `ADD a.tar.gz /dir/` and `ADD a.tar.gz /dir` both unpack into /dir.
            let dest = if entry.into_existing_dir {
                item.dest.clone()
            } else {
                item.dest.parent().unwrap_or_else(LayerPath::root)
            };
            *item = CopyItem {
                source: into,
                dest,
                chown: owner,
                chmod: None,
                recursive: true,
                into_existing_dir: false,
            };
        }
        Ok(())
    }

    /// Writes the changes as a layer tar, pushes it, and adds it to the
    /// image. Returns its store digest, size and the bytes uploaded.
    async fn store_layer(
        &mut self,
        s: &Planned,
        changes: &[Change],
    ) -> Result<(Digest, u64, u64), BuildError> {
        let tar_path = self
            .scratch
            .path()
            .join(format!("layer-{}.tar", self.layers.len()));
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tar_path)
            .map_err(BuildError::io("creating the layer file"))?;
        let mut w = BufWriter::new(&mut file);
        let summary = write_layer(
            changes,
            &mut w,
            &WriteOptions {
                epoch: self.opts.epoch,
                preserve_hardlinks: true,
            },
        )
        .map_err(|e| s.site.error(format!("snapshotting the step: {e}")))?;
        w.flush()
            .map_err(BuildError::io("writing the layer file"))?;
        drop(w);
        file.rewind()
            .map_err(BuildError::io("rewinding the layer"))?;
        let pushed = self
            .client
            .push_file(file, MEDIA_TYPE_LAYER, &Progress::new())
            .await
            .map_err(BuildError::cache("storing the layer"))?;
        // The working rootfs does not hold this layer yet: the next step
        // that needs a file system applies it (`materialise`), and a last
        // step never pays for it.
        self.layers.push(BuiltLayer {
            diff_id: oci_digest(&pushed.sha256),
            content: LayerContent::Tar {
                size: summary.bytes,
                source: LayerSource::File(tar_path),
            },
        });
        Ok((pushed.digest, summary.bytes, pushed.sent_bytes))
    }
}

/// The directories `WORKDIR` must create, owned by the step's `USER` (as
/// BuildKit does); none when the directory exists.
fn workdir(s: &Planned, root: &Path) -> Result<Vec<Change>, BuildError> {
    let dir = s.config_after.cwd();
    let path = LayerPath::from_image_path(Path::new(dir))
        .map_err(|p| s.site.error(format!("WORKDIR {dir}: {p}")))?;
    let user = &s.config_before.user;
    let owner = chown_ids((!user.is_empty()).then_some(user.as_str()), root)
        .map_err(|e| s.site.error(format!("WORKDIR {dir}: {e}")))?
        .unwrap_or((0, 0));
    workdir_changes(root, &path, owner).map_err(|e| s.site.error(format!("WORKDIR {dir}: {e}")))
}

/// The most an `ADD <url>` may download (a server that sends more is cut
/// off: the checksum would refuse it anyway, after the disk had filled).
const MAX_ADD_URL_BYTES: u64 = 16 << 30;

/// Fetches an `ADD <url>` into `path` unless a step of this build already
/// did (same checksum, same name), checked against its checksum.
async fn fetch_url(fetch: &UrlFetch, path: &std::path::Path) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let expected = strata_registry::BlobDigest::parse(&fetch.checksum.to_string())?;
    strata_registry::fetch_url_to_file(&fetch.url, &expected, path, MAX_ADD_URL_BYTES)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
