//! `xray split ARCHIVE.zip`: a dataset as downloaded, still zipped. It is extracted once into
//! the split folder (`SPLIT_DIR/data/`), which the split then records as its data folder, so
//! that `train` and `eval` find every image from SPLIT_DIR alone and read plain files (random
//! access into a deflated archive would cost every epoch a decompression).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::Error;
use crate::progress;

/// Whether `path` is a zip archive (by its name; the content is checked on opening).
pub fn is_zip(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("zip"))
}

/// Extracts `archive` into `dest` (through `dest.partial`, renamed when complete) and returns
/// `dest`. An existing complete extraction of the same archive (same size) is reused. Entries
/// under `__MACOSX/` are not extracted; entries whose names would leave `dest` are refused.
pub fn extract_zip(archive: &Path, dest: &Path) -> Result<PathBuf> {
    let size = std::fs::metadata(archive)
        .with_context(|| format!("cannot read {}", archive.display()))?
        .len();
    let stamp = dest.join(".xray-archive");
    let expected = format!("{}\n{size}\n", archive.display());
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == expected) {
        return Ok(dest.to_path_buf());
    }
    let file = std::fs::File::open(archive)
        .with_context(|| format!("cannot read {}", archive.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        Error::usage(format!(
            "{}: not a readable zip archive ({e})",
            archive.display()
        ))
    })?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .with_context(|| format!("cannot create {}", partial.display()))?;
    let bar = progress::bar(zip.len() as u64, "extract");
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .with_context(|| format!("{}: entry {i}", archive.display()))?;
        bar.inc(1);
        let Some(name) = entry.enclosed_name() else {
            return Err(Error::usage(format!(
                "{}: entry {} would be written outside the folder",
                archive.display(),
                entry.name().unwrap_or_default()
            ))
            .into());
        };
        if name
            .components()
            .next()
            .is_some_and(|c| c.as_os_str() == "__MACOSX")
        {
            continue;
        }
        let target = partial.join(&name);
        if entry.is_dir() {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        std::io::copy(&mut entry, &mut out)
            .with_context(|| format!("{}: cannot extract {}", archive.display(), name.display()))?;
    }
    bar.finish_and_clear();
    std::fs::write(partial.join(".xray-archive"), expected)?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&partial, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(dest.to_path_buf())
}
