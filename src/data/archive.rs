//! `xray split ARCHIVE.zip`: a dataset as downloaded, still zipped. It is extracted once into
//! the split folder (`SPLIT_DIR/data/`), which the split then records as its data folder, so
//! that `train` and `eval` find every image from SPLIT_DIR alone and read plain files (random
//! access into a deflated archive would cost every epoch a decompression).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::error::Error;
use crate::progress;

/// Most entries extracted from one archive.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most an entry may inflate, as a multiple of its compressed size (images, already
/// compressed, inflate about 1x; uncompressed DICOM or TIFF a few times; a zip bomb
/// thousands of times)...
pub const MAX_RATIO: u64 = 100;
/// ...beyond this much, which any entry may reach (a small text file).
pub const RATIO_SLACK_BYTES: u64 = 1 << 20;

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
///
/// Zip bombs are refused (usage, exit 2) with the partial extraction removed: more than
/// [`MAX_ENTRIES`] entries; an entry whose declared size is over [`MAX_RATIO`] times its
/// compressed size (plus [`RATIO_SLACK_BYTES`]), refused before anything of it is written; an
/// entry whose data inflates past that, whatever it declared, stopped there; and more in all
/// than [`MAX_RATIO`] times the archive's size (entries that share compressed data).
pub fn extract_zip(archive: &Path, dest: &Path) -> Result<PathBuf> {
    // Long on purpose: each check of an entry (its name, declared and actual size, ratio, the
    // running total, links) stands beside the write it guards.
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
    let bomb = |why: String| -> anyhow::Error {
        Error::usage(format!(
            "{}: {why}; refused as a zip bomb (extract it yourself if you trust it, then split the folder)",
            archive.display()
        ))
        .into()
    };
    if zip.len() > MAX_ENTRIES {
        return Err(bomb(format!(
            "{} entries, more than {MAX_ENTRIES}",
            zip.len()
        )));
    }
    let total_cap = MAX_RATIO * size + RATIO_SLACK_BYTES;
    let mut total = 0u64;
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
        let compressed = entry.compressed_size();
        let cap = MAX_RATIO * compressed + RATIO_SLACK_BYTES;
        let too_much = |bytes: u64| {
            format!(
                "entry {} inflates to {} MiB or more from {} KiB, over {MAX_RATIO} times",
                name.display(),
                bytes >> 20,
                compressed >> 10
            )
        };
        if entry.size() > cap {
            let why = too_much(entry.size());
            let _ = std::fs::remove_dir_all(&partial);
            return Err(bomb(why));
        }
        let mut out = std::fs::File::create(&target)
            .with_context(|| format!("cannot write {}", target.display()))?;
        let left = cap.min(total_cap.saturating_sub(total));
        let written = match std::io::copy(&mut (&mut entry).take(left + 1), &mut out) {
            Ok(n) => n,
            Err(e) => {
                drop(out);
                let _ = std::fs::remove_dir_all(&partial);
                return Err(Error::usage(format!(
                    "{}: cannot extract {}: {e}",
                    archive.display(),
                    name.display()
                ))
                .into());
            }
        };
        total += written;
        if written > left {
            let why = if written > cap {
                too_much(written)
            } else {
                format!(
                    "its entries inflate past {} MiB, {MAX_RATIO} times the archive",
                    total_cap >> 20
                )
            };
            drop(out);
            let _ = std::fs::remove_dir_all(&partial);
            return Err(bomb(why));
        }
    }
    bar.finish_and_clear();
    std::fs::write(partial.join(".xray-archive"), expected)?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&partial, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(dest.to_path_buf())
}
