//! The image written into an OCI layout directory: only the layer blobs the
//! directory lacks move, each exactly as chosen (a base layer's original
//! blob, a layer of this build compressed once); config and manifest last,
//! then the tag.

use std::fs::File;

use strata_client::{Client, Progress};
use strata_dockerfile::LayoutRef;

use super::base::{BlobLayer, LayerSource};
use super::error::BuildError;
use crate::oci::OciLayout;

/// What writing the output moved.
pub(crate) struct Written {
    /// Layer bytes written into the directory.
    pub layer_bytes: u64,
    /// Layer bytes downloaded from the cache to do it.
    pub downloaded: u64,
}

pub(crate) async fn write_output(
    client: &Client,
    layers: &[BlobLayer],
    output: &LayoutRef,
    config: &[u8],
    manifest: &[u8],
) -> Result<Written, BuildError> {
    let write_err = BuildError::oci;
    let out = OciLayout::create(std::path::Path::new(&output.dir))
        .map_err(write_err("creating the output layout"))?;
    let mut written = Written {
        layer_bytes: 0,
        downloaded: 0,
    };
    for BlobLayer { layer, source } in layers {
        let blob = &layer.blob;
        if out.has_blob(&blob.digest, blob.size) {
            continue;
        }
        let mut file = out.temp_blob().map_err(write_err("writing the output"))?;
        match source {
            LayerSource::File(p) => {
                let mut r = File::open(p)
                    .map_err(BuildError::io(format!("reading layer {}", p.display())))?;
                std::io::copy(&mut r, &mut file).map_err(BuildError::io("writing the output"))?;
            }
            LayerSource::Store(d) => {
                let (report, w) = client
                    .pull(d, file, &Progress::new())
                    .await
                    .map_err(BuildError::cache("downloading a layer for the output"))?;
                written.downloaded += report.total_bytes;
                file = w;
            }
        }
        out.commit_blob(file, &blob.digest)
            .map_err(write_err("writing the output"))?;
        written.layer_bytes += blob.size;
    }
    out.put_blob(config)
        .map_err(write_err("writing the output"))?;
    let digest = out
        .put_blob(manifest)
        .map_err(write_err("writing the output"))?;
    out.set_tag(output.tag_or_default(), &digest, manifest.len() as u64)
        .map_err(write_err("writing the output"))?;
    Ok(written)
}
