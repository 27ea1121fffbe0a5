//! COPY and ADD from the context: the owner `--chown` names, and the copy
//! items the layer crate turns into changes.

use std::path::Path;

use strata_layer::{CopyItem, LayerPath};

use crate::context::{CopyEntry, EntryKind};

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
