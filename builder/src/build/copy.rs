//! COPY and ADD from the context: the owner `--chown` names, and the copy
//! items the layer crate turns into changes.

use std::path::Path;

use strata_layer::{CopyItem, LayerPath, resolve_image_path};

use crate::context::{CopyEntry, EntryKind};
use crate::image::resolve_path;

/// `--chown=user[:group]`: numbers as they are (a lone uid is also the
/// gid, as Docker does), names through the image's `/etc/passwd` and
/// `/etc/group`. Those are read only if they are regular files in `root`:
/// a symlink there could point at the host's.
pub(crate) fn chown_ids(chown: Option<&str>, root: &Path) -> Result<Option<(u32, u32)>, String> {
    let Some(spec) = chown else { return Ok(None) };
    let numeric = |s: &str| s.parse::<u32>().ok();
    match spec.split_once(':') {
        None if numeric(spec).is_some() => return Ok(numeric(spec).map(|u| (u, u))),
        Some((u, g)) if numeric(u).is_some() && numeric(g).is_some() => {
            return Ok(numeric(u).zip(numeric(g)));
        }
        _ => {}
    }
    let read = |name: &str| -> String {
        let path = root.join("etc").join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => std::fs::read_to_string(&path).unwrap_or_default(),
            _ => String::new(),
        }
    };
    strata_sandbox::resolve_owner(spec, &read("passwd"), &read("group"))
        .map(Some)
        .map_err(|e| format!("{spec}: {e}"))
}

/// One layer-crate copy item per selected entry (the selection already
/// honours `.dockerignore`, so nothing is walked again).
pub(crate) fn copy_items(
    entries: &[CopyEntry],
    chown: Option<(u32, u32)>,
) -> Result<Vec<CopyItem>, String> {
    entries
        .iter()
        .map(|e| {
            Ok(CopyItem {
                source: e.host.clone(),
                dest: LayerPath::from_image_path(Path::new(&e.dest))
                    .map_err(|p| format!("COPY destination {}: {p}", e.dest))?,
                chown,
                chmod: match e.kind {
                    EntryKind::Symlink(_) => None,
                    _ => Some(e.mode),
                },
                recursive: false,
                into_existing_dir: e.into_existing_dir,
            })
        })
        .collect()
}

/// The copy items of a `COPY --from` of an earlier stage whose file system
/// is `stage_root`. Sources are image paths of that stage, resolved inside
/// it (symlinks included, never leaving it); destinations follow the same
/// rules as a COPY from the context.
pub(crate) fn stage_copy_items(
    sources: &[String],
    dest: &str,
    cwd: &str,
    stage_root: &Path,
    chown: Option<(u32, u32)>,
    chmod: Option<u32>,
) -> Result<Vec<CopyItem>, String> {
    let into_dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || sources.len() > 1;
    let dest_abs = resolve_path(cwd, dest);
    let mut items = Vec::with_capacity(sources.len());
    for source in sources {
        if source.contains(['*', '?', '[']) {
            return Err(format!(
                "{source}: wildcards in COPY --from sources are not supported yet; name each path"
            ));
        }
        let written = resolve_path("/", source);
        let image_path = LayerPath::from_image_path(Path::new(&written))
            .map_err(|p| format!("{source}: {p}"))?;
        let real = resolve_image_path(stage_root, &image_path).map_err(|e| e.to_string())?;
        let host = stage_root.join(real.as_path());
        let meta = std::fs::symlink_metadata(&host)
            .map_err(|_| format!("{written} does not exist in that stage"))?;
        let name = written.rsplit('/').next().unwrap_or_default();
        let target = if into_dir && !meta.is_dir() && !name.is_empty() {
            resolve_path(&dest_abs, name)
        } else {
            dest_abs.clone()
        };
        items.push(CopyItem {
            source: host,
            dest: LayerPath::from_image_path(Path::new(&target))
                .map_err(|p| format!("COPY destination {target}: {p}"))?,
            chown,
            chmod,
            recursive: true,
            into_existing_dir: !into_dir && !meta.is_dir(),
        });
    }
    Ok(items)
}
