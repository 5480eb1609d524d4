//! `predict --out FILE`: a prediction file that a killed task resumes, and `xray merge`, which
//! joins the files of a sharded job and checks that every input appears exactly once.
//!
//! Rows go to `FILE.partial`, appended and synced to disk piece by piece; the file gets its
//! name only when every input has a row, so `FILE` is always complete. Run again, the command
//! reads the partial file (dropping a last line torn by the kill) and predicts only what is
//! missing. Beside `FILE`, `FILE.json` says which shard it is, how many inputs the shard had
//! and how many rows are errors, so `xray merge` can tell a missing shard from an empty one.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::shard::Shard;
use crate::error::Error;

/// The two row formats a prediction file may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowFormat {
    /// A header line, then one CSV row per input; the path is the first column.
    Csv,
    /// One JSON object per line, with a `path` field.
    Jsonl,
}

impl RowFormat {
    /// The format that a file name's extension implies (`.csv`, `.jsonl` or `.ndjson`).
    pub fn from_extension(path: &Path) -> Option<RowFormat> {
        match path.extension()?.to_str()? {
            "csv" => Some(RowFormat::Csv),
            "jsonl" | "ndjson" => Some(RowFormat::Jsonl),
            _ => None,
        }
    }
}

/// What `FILE.json` records of a finished prediction file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// `I/N`, or `None` for an unsharded run.
    pub shard: Option<String>,
    /// Inputs this shard had.
    pub inputs: usize,
    /// Rows written (one per input).
    pub rows: usize,
    /// Rows that carry an error instead of a prediction.
    pub errors: usize,
    /// The run folder's name.
    pub model: String,
    /// The rows' format.
    pub format: RowFormat,
}

/// The sidecar manifest of prediction file `path`.
pub fn manifest_path(path: &Path) -> PathBuf {
    crate::fsutil::with_suffix(path, ".json")
}

/// Where rows go until the file is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    crate::fsutil::with_suffix(path, ".partial")
}

/// An open prediction file being written (see the module documentation).
#[derive(Debug)]
pub struct PredictionFile {
    path: PathBuf,
    partial: PathBuf,
    file: std::fs::File,
    format: RowFormat,
    done: HashSet<String>,
    errors: usize,
}

impl PredictionFile {
    /// Opens `path` for `format` rows under `header` (CSV), carrying on from a partial file or
    /// from an earlier complete one (a rerun with new inputs adds their rows).
    pub fn open(path: &Path, format: RowFormat, header: Option<&str>) -> Result<PredictionFile> {
        let partial = partial_path(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if !partial.exists() && path.exists() {
            std::fs::copy(path, &partial).with_context(|| {
                format!("cannot copy {} to {}", path.display(), partial.display())
            })?;
        }
        let mut text = match std::fs::read(&partial) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", partial.display())),
        };
        // A kill mid-write leaves at most one torn line, without its newline.
        let whole = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = whole < text.len();
        text.truncate(whole);
        let rows = read_rows(&text, format, &partial)?;
        if let (RowFormat::Csv, Some(header), Some(found)) = (format, header, &rows.header) {
            if found != header {
                return Err(Error::usage(format!(
                    "{}: its columns ({found}) are not this model's ({header}); give another --out",
                    partial.display()
                ))
                .into());
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        file.set_len(whole as u64)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))?;
        if torn {
            eprintln!(
                "{}: dropped a last line cut short by an interruption",
                partial.display()
            );
        }
        if whole == 0 {
            if let (RowFormat::Csv, Some(header)) = (format, header) {
                file.write_all(format!("{header}\n").as_bytes())?;
            }
        }
        let mut done = HashSet::new();
        for row in &rows.rows {
            done.insert(row.path.clone());
        }
        Ok(PredictionFile {
            path: path.to_path_buf(),
            partial,
            file,
            format,
            errors: rows.rows.iter().filter(|r| r.error).count(),
            done,
        })
    }

    /// The paths that already have a row.
    pub fn done(&self) -> &HashSet<String> {
        &self.done
    }

    /// Appends `rows` (whole lines) for `paths`, `errors` of them error rows, and syncs them to
    /// disk before returning: what this returns for is never predicted again.
    pub fn append(&mut self, rows: &[u8], paths: &[String], errors: usize) -> Result<()> {
        self.file
            .write_all(rows)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot write {}", self.partial.display()))?;
        self.done.extend(paths.iter().cloned());
        self.errors += errors;
        Ok(())
    }

    /// Writes the manifest, then gives the file its name. `inputs`: how many the shard had.
    pub fn finish(self, shard: Option<String>, inputs: usize, model: &str) -> Result<Manifest> {
        let manifest = Manifest {
            shard,
            inputs,
            rows: self.done.len(),
            errors: self.errors,
            model: model.to_string(),
            format: self.format,
        };
        crate::fsutil::write_json_atomic(&manifest_path(&self.path), &manifest)?;
        self.file.sync_all()?;
        drop(self.file);
        std::fs::rename(&self.partial, &self.path)
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        Ok(manifest)
    }
}

/// One row of a prediction file.
#[derive(Debug, Clone)]
struct Row {
    path: String,
    /// Whether it carries an error instead of a prediction.
    error: bool,
    /// The line as written, without its newline.
    line: String,
}

#[derive(Debug)]
struct Rows {
    header: Option<String>,
    rows: Vec<Row>,
}

/// The rows of prediction-file text (whole lines only).
fn read_rows(text: &[u8], format: RowFormat, path: &Path) -> Result<Rows> {
    let bad =
        |line: usize, why: &str| Error::usage(format!("{}: line {line}: {why}", path.display()));
    let text = std::str::from_utf8(text).map_err(|_| bad(0, "not UTF-8 text"))?;
    let mut lines = text.lines().enumerate();
    let mut out = Rows {
        header: None,
        rows: Vec::new(),
    };
    match format {
        RowFormat::Csv => {
            let Some((_, header)) = lines.next() else {
                return Ok(out);
            };
            let columns: Vec<&str> = header.split(',').collect();
            if columns.first() != Some(&"path") || columns.last() != Some(&"error") {
                return Err(bad(1, "not a prediction CSV (path first, error last)").into());
            }
            out.header = Some(header.to_string());
            for (i, line) in lines {
                let record = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(line.as_bytes())
                    .records()
                    .next()
                    .and_then(|r| r.ok())
                    .ok_or_else(|| bad(i + 1, "not a CSV row"))?;
                if record.len() != columns.len() {
                    return Err(bad(i + 1, "wrong number of columns").into());
                }
                out.rows.push(Row {
                    path: record.get(0).unwrap_or("").to_string(),
                    error: !record.get(record.len() - 1).unwrap_or("").is_empty(),
                    line: line.to_string(),
                });
            }
        }
        RowFormat::Jsonl => {
            for (i, line) in lines {
                if line.trim().is_empty() {
                    continue;
                }
                let v: serde_json::Value =
                    serde_json::from_str(line).map_err(|_| bad(i + 1, "not a JSON object"))?;
                let path = v
                    .get("path")
                    .and_then(|p| p.as_str())
                    .ok_or_else(|| bad(i + 1, "no `path`"))?;
                out.rows.push(Row {
                    path: path.to_string(),
                    error: v.get("error").is_some(),
                    line: line.to_string(),
                });
            }
        }
    }
    Ok(out)
}

/// What [`merge`] joined.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeReport {
    /// Prediction files read.
    pub files: usize,
    /// Rows written.
    pub rows: usize,
    /// Rows that carry an error.
    pub errors: usize,
    /// The shard count the manifests give, when they do.
    pub shards: Option<usize>,
}

/// The prediction files among `inputs`: files as given, folders' `.csv`/`.jsonl` files. A
/// folder holding a `.partial` file has an unfinished shard: an error.
fn prediction_files(inputs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found = Vec::new();
            for entry in std::fs::read_dir(input)
                .with_context(|| format!("cannot read {}", input.display()))?
            {
                let path = entry?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.ends_with(".partial") {
                    bail!(
                        "{}: unfinished (its task was stopped before the end); run that shard again",
                        path.display()
                    );
                }
                if RowFormat::from_extension(&path).is_some() {
                    found.push(path);
                }
            }
            found.sort();
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(
                Error::usage(format!("{}: no such file or folder", input.display())).into(),
            );
        }
    }
    let out_abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    files.retain(|f| std::path::absolute(f).map_or(true, |f| f != out_abs));
    if files.is_empty() {
        return Err(Error::usage("no prediction files (.csv or .jsonl) to merge").into());
    }
    Ok(files)
}

/// Joins the prediction files (or folders of them) `inputs` into `out`, checking that no
/// input appears twice, that the manifests' shards are all there (0 to N-1, each once, each
/// with its rows), and, given `expected` (the inputs' paths as `predict` writes them), that
/// every one of those appears and nothing else. Rows follow `expected`'s order, or the paths'
/// order without it.
pub fn merge(inputs: &[PathBuf], out: &Path, expected: Option<&[String]>) -> Result<MergeReport> {
    let files = prediction_files(inputs, out)?;
    let format = RowFormat::from_extension(&files[0]).unwrap_or(RowFormat::Jsonl);
    let mut header: Option<String> = None;
    let mut rows: Vec<Row> = Vec::new();
    let mut shards: Vec<(usize, usize, PathBuf)> = Vec::new();
    let mut without_manifest = Vec::new();
    for file in &files {
        let (read, manifest) = read_prediction_file(file, format, &files[0])?;
        if let Some(h) = read.header {
            match &header {
                Some(first) if *first != h => bail!(
                    "{}: its columns are not those of {} (another model?)",
                    file.display(),
                    files[0].display()
                ),
                Some(_) => {}
                None => header = Some(h),
            }
        }
        match manifest.map(|m| m.shard) {
            Some(Some(s)) => {
                // Written as `I/N` by `predict`: no scheduler variable is read back.
                let shard = Shard::parse(&s, |_| None).map_err(|e| {
                    anyhow::anyhow!("{}: bad shard ({e})", manifest_path(file).display())
                })?;
                shards.push((shard.index, shard.count, file.clone()));
            }
            Some(None) => {}
            None => without_manifest.push(file.clone()),
        }
        rows.extend(read.rows);
    }
    let count = check_shards(&shards, &without_manifest)?;
    no_input_twice(&rows)?;
    let ordered = in_input_order(&rows, expected)?;
    let mut text = String::new();
    if let Some(h) = &header {
        text.push_str(h);
        text.push('\n');
    }
    for r in &ordered {
        text.push_str(&r.line);
        text.push('\n');
    }
    crate::fsutil::write_atomic(out, text.as_bytes())?;
    Ok(MergeReport {
        files: files.len(),
        rows: ordered.len(),
        errors: ordered.iter().filter(|r| r.error).count(),
        shards: count,
    })
}

/// One finished prediction file's rows, in `format` like `first`'s, and its manifest when it
/// has one (whose row count must match).
fn read_prediction_file(
    file: &Path,
    format: RowFormat,
    first: &Path,
) -> Result<(Rows, Option<Manifest>)> {
    if RowFormat::from_extension(file) != Some(format) {
        bail!(
            "{}: not the same format as {}",
            file.display(),
            first.display()
        );
    }
    let text = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    if !text.is_empty() && !text.ends_with(b"\n") {
        bail!("{}: its last line is cut short", file.display());
    }
    let read = read_rows(&text, format, file)?;
    let Ok(bytes) = std::fs::read(manifest_path(file)) else {
        return Ok((read, None));
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: not a manifest", manifest_path(file).display()))?;
    if m.rows != read.rows.len() {
        bail!(
            "{}: {} rows, but its manifest says {}",
            file.display(),
            read.rows.len(),
            m.rows
        );
    }
    Ok((read, Some(m)))
}

/// No input may have two rows (two shards that both took it).
fn no_input_twice(rows: &[Row]) -> Result<()> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        *seen.entry(r.path.as_str()).or_default() += 1;
    }
    let twice: Vec<&str> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(p, _)| *p)
        .collect();
    if !twice.is_empty() {
        bail!(
            "{} input(s) appear in more than one row, e.g. {}",
            twice.len(),
            examples(&twice)
        );
    }
    Ok(())
}

/// The rows in the order of `expected` (every expected input has one, and no row is for
/// another file), or sorted by path without it.
fn in_input_order<'a>(rows: &'a [Row], expected: Option<&[String]>) -> Result<Vec<&'a Row>> {
    let Some(expected) = expected else {
        let mut all: Vec<&Row> = rows.iter().collect();
        all.sort_by(|a, b| a.path.cmp(&b.path));
        return Ok(all);
    };
    let by_path: HashMap<&str, &Row> = rows.iter().map(|r| (r.path.as_str(), r)).collect();
    let missing: Vec<&str> = expected
        .iter()
        .map(String::as_str)
        .filter(|p| !by_path.contains_key(p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of the {} inputs have no row, e.g. {}",
            missing.len(),
            expected.len(),
            examples(&missing)
        );
    }
    let wanted: HashSet<&str> = expected.iter().map(String::as_str).collect();
    let extra: Vec<&str> = by_path
        .keys()
        .copied()
        .filter(|p| !wanted.contains(p))
        .collect();
    if !extra.is_empty() {
        bail!(
            "{} row(s) are for files that are not among the inputs, e.g. {}",
            extra.len(),
            examples(&extra)
        );
    }
    Ok(expected.iter().map(|p| by_path[p.as_str()]).collect())
}

/// The manifests' shards must agree on N and cover 0 to N-1 once each; the shard count.
fn check_shards(shards: &[(usize, usize, PathBuf)], without: &[PathBuf]) -> Result<Option<usize>> {
    let Some(&(_, n, _)) = shards.first() else {
        return Ok(None);
    };
    if let Some((_, other, file)) = shards.iter().find(|(_, m, _)| *m != n) {
        bail!(
            "{} is a shard of {other}, the others of {n}",
            file.display()
        );
    }
    if let Some(file) = without.first() {
        bail!(
            "{} has no manifest ({}): it was not written by `xray predict --out` to the end",
            file.display(),
            manifest_path(file).display()
        );
    }
    let mut by_index: Vec<Vec<&Path>> = vec![Vec::new(); n];
    for (i, _, file) in shards {
        by_index[*i].push(file);
    }
    if let Some(files) = by_index.iter().find(|f| f.len() > 1) {
        bail!(
            "{} and {} are the same shard",
            files[0].display(),
            files[1].display()
        );
    }
    let missing: Vec<String> = (0..n)
        .filter(|&i| by_index[i].is_empty())
        .map(|i| format!("{i}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!("shard(s) {} missing of {n}", missing.join(", "));
    }
    Ok(Some(n))
}

fn examples(paths: &[&str]) -> String {
    let mut shown: Vec<&str> = paths.to_vec();
    shown.sort();
    let more = shown.len().saturating_sub(3);
    shown.truncate(3);
    let mut s = shown.join(", ");
    if more > 0 {
        s.push_str(&format!(" and {more} more"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "path,label,probability,error";

    fn write_shard(dir: &Path, name: &str, shard: &str, paths: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let mut f = PredictionFile::open(&path, RowFormat::Csv, Some(HEADER)).unwrap();
        let rows: String = paths.iter().map(|p| format!("{p},a,0.9,\n")).collect();
        let owned: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        f.append(rows.as_bytes(), &owned, 0).unwrap();
        f.finish(Some(shard.into()), paths.len(), "m").unwrap();
        path
    }

    #[test]
    fn resumes_after_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.csv");
        let mut f = PredictionFile::open(&path, RowFormat::Csv, Some(HEADER)).unwrap();
        f.append(
            b"a.png,x,0.5,\nb.png,y,0.6,\n",
            &["a.png".into(), "b.png".into()],
            0,
        )
        .unwrap();
        drop(f);
        // A kill in the middle of the third row.
        let partial = partial_path(&path);
        let mut text = std::fs::read(&partial).unwrap();
        text.extend_from_slice(b"c.pn");
        std::fs::write(&partial, &text).unwrap();
        assert!(!path.exists(), "the file gets its name only when complete");

        let mut f = PredictionFile::open(&path, RowFormat::Csv, Some(HEADER)).unwrap();
        let done: HashSet<String> = ["a.png", "b.png"].iter().map(|s| s.to_string()).collect();
        assert_eq!(f.done(), &done);
        f.append(b"c.png,x,0.7,\n", &["c.png".into()], 0).unwrap();
        let m = f.finish(None, 3, "m").unwrap();
        assert_eq!(m.rows, 3);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{HEADER}\na.png,x,0.5,\nb.png,y,0.6,\nc.png,x,0.7,\n")
        );
        assert!(!partial.exists());

        // Another model's columns are refused.
        std::fs::write(&partial, "path,label,other,error\n").unwrap();
        let e = PredictionFile::open(&path, RowFormat::Csv, Some(HEADER)).unwrap_err();
        assert!(format!("{e:#}").contains("not this model's"), "{e:#}");
    }

    #[test]
    fn merge_checks_shards_and_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let shards = dir.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        write_shard(&shards, "s0.csv", "0/3", &["b.png", "d.png"]);
        write_shard(&shards, "s1.csv", "1/3", &["a.png"]);
        let out = dir.path().join("all.csv");
        // Shard 2 is missing.
        let e = merge(std::slice::from_ref(&shards), &out, None).unwrap_err();
        assert_eq!(e.to_string(), "shard(s) 2/3 missing of 3");
        // An empty shard is a shard.
        write_shard(&shards, "s2.csv", "2/3", &[]);
        let r = merge(std::slice::from_ref(&shards), &out, None).unwrap();
        assert_eq!((r.files, r.rows, r.shards), (3, 3, Some(3)));
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            format!("{HEADER}\na.png,a,0.9,\nb.png,a,0.9,\nd.png,a,0.9,\n")
        );
        // In the inputs' order; a missing input and an extra row are named.
        let expected: Vec<String> = ["d.png", "a.png", "b.png"].map(String::from).to_vec();
        merge(std::slice::from_ref(&shards), &out, Some(&expected)).unwrap();
        assert!(std::fs::read_to_string(&out)
            .unwrap()
            .starts_with(&format!("{HEADER}\nd.png")));
        let more: Vec<String> = ["a.png", "b.png", "d.png", "e.png"]
            .map(String::from)
            .to_vec();
        let e = merge(std::slice::from_ref(&shards), &out, Some(&more)).unwrap_err();
        assert_eq!(e.to_string(), "1 of the 4 inputs have no row, e.g. e.png");
        let fewer: Vec<String> = ["a.png", "b.png"].map(String::from).to_vec();
        let e = merge(std::slice::from_ref(&shards), &out, Some(&fewer)).unwrap_err();
        assert!(
            e.to_string().contains("not among the inputs, e.g. d.png"),
            "{e}"
        );
        // The same input in two shards.
        write_shard(&shards, "s2.csv", "2/3", &["a.png"]);
        let e = merge(std::slice::from_ref(&shards), &out, None).unwrap_err();
        assert!(
            e.to_string()
                .contains("appear in more than one row, e.g. a.png"),
            "{e}"
        );
        // An unfinished shard.
        std::fs::write(shards.join("s3.csv.partial"), HEADER).unwrap();
        let e = merge(std::slice::from_ref(&shards), &out, None).unwrap_err();
        assert!(e.to_string().contains("unfinished"), "{e}");
    }

    #[test]
    fn merge_refuses_a_manifest_naming_no_shard() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("all.csv");
        // Shard 5 of 4 (a manifest edited by hand): an error naming the manifest, not a panic.
        let file = write_shard(dir.path(), "s5.csv", "5/4", &["a.png"]);
        let e = merge(&[file], &out, None).unwrap_err();
        assert!(e.to_string().contains("s5.csv.json: bad shard"), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert_eq!(crate::error::exit_code(&e), 1);
    }
}
