//! The append-only audit log of `serve --audit-log FILE`: one JSON object per line for every
//! answered image and every refused request.
//!
//! A line holds when (UTC), the server's request id (and, apart, the id the client sent), the
//! client's address and token id (never the token), the input's sha256 and size, the model's
//! name and weights sha256, and the answer: label, probabilities, out-of-distribution score and
//! flag, or the status and reason of a refusal. It never holds the image, the upload's file
//! name or anything read from a DICOM header, so it carries no patient identifier.
//!
//! One writer thread owns the file, fed through a bounded channel: the async runtime never
//! waits on the disk. The writer takes every line queued, writes them with one `O_APPEND`
//! write and one `fdatasync`, then acknowledges them (group commit), so a flood of refusals
//! costs one sync per batch, not one per line. An answer waits for its acknowledgement: a
//! prediction that cannot be logged is not given. When the channel is full the request is
//! refused 503 rather than answered without its line. The log is rotated by size
//! (`--audit-max-mb`) and reopened on SIGHUP, for logrotate.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::sync::oneshot;

/// Batches of lines that may wait for the writer; more are refused (503).
pub const CHANNEL_CAPACITY: usize = 4096;

/// The writer's answer to one batch: written and synced, or why not.
pub type Written = oneshot::Receiver<Result<(), String>>;

/// The writer is this far behind: the request is refused instead of answered unlogged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit log is behind (its writer has {CHANNEL_CAPACITY} batches waiting)")]
pub struct Busy;

enum Message {
    Lines(String, Option<oneshot::Sender<Result<(), String>>>),
    Reopen,
}

/// An open audit log and its writer thread (a clone writes through the same thread).
#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: SyncSender<Message>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Message::Lines(..) => f.write_str("Lines"),
            Message::Reopen => f.write_str("Reopen"),
        }
    }
}

/// How the file is rotated.
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    /// Rotate when the file grows past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept: `FILE.1` (newest) to `FILE.keep`.
    pub keep: usize,
}

fn open_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .with_context(|| {
            format!(
                "--audit-log {}: cannot open it for appending",
                path.display()
            )
        })
}

impl AuditLog {
    /// Opens `path` for appending (created with mode 0640 when new) and starts its writer.
    pub fn open(path: &Path, rotation: Option<Rotation>) -> Result<AuditLog> {
        let file = open_file(path)?;
        let (tx, rx) = sync_channel(CHANNEL_CAPACITY);
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            rotation,
        };
        std::thread::Builder::new()
            .name("xray-audit".into())
            .spawn(move || writer.run(rx))
            .context("starting the audit writer")?;
        Ok(AuditLog { tx })
    }

    /// Queues `records` (one line each, the `time` added now); the receiver says when they are
    /// on disk. `Err(Busy)` when the writer is too far behind.
    pub fn submit(&self, records: &[Value]) -> Result<Written, Busy> {
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut text = String::new();
        for record in records {
            let mut line = serde_json::Map::new();
            line.insert("time".into(), Value::String(time.clone()));
            if let Value::Object(fields) = record {
                line.extend(fields.clone());
            }
            text.push_str(&Value::Object(line).to_string());
            text.push('\n');
        }
        let (ack, written) = oneshot::channel();
        match self.tx.try_send(Message::Lines(text, Some(ack))) {
            Ok(()) => Ok(written),
            Err(TrySendError::Full(_)) => Err(Busy),
            Err(TrySendError::Disconnected(_)) => {
                let (ack, written) = oneshot::channel();
                let _ = ack.send(Err("the audit writer stopped".into()));
                Ok(written)
            }
        }
    }

    /// Writes `records` and waits until they are on disk (from a thread that may block); why
    /// they could not be written: the writer too far behind, or the disk.
    pub fn write_blocking(&self, records: &[Value]) -> Result<(), String> {
        let written = self.submit(records).map_err(|busy| busy.to_string())?;
        written
            .blocking_recv()
            .unwrap_or_else(|_| Err("the audit writer stopped".into()))
    }

    /// Closes and opens the file again by name (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Message::Reopen);
    }
}

/// The thread that owns the file.
struct Writer {
    path: PathBuf,
    file: File,
    rotation: Option<Rotation>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Message>) {
        while let Ok(first) = rx.recv() {
            let mut text = String::new();
            let mut acks = Vec::new();
            let mut reopen = false;
            // Everything already queued goes in this write and this sync.
            for message in std::iter::once(first).chain(rx.try_iter()) {
                match message {
                    Message::Lines(lines, ack) => {
                        text.push_str(&lines);
                        acks.extend(ack);
                    }
                    Message::Reopen => reopen = true,
                }
            }
            let mut result = Ok(());
            if reopen {
                result = self.reopen();
            }
            if !text.is_empty() && result.is_ok() {
                result = self
                    .file
                    .write_all(text.as_bytes())
                    .and_then(|_| self.file.sync_data())
                    .with_context(|| format!("writing the audit log {}", self.path.display()))
                    .and_then(|_| self.rotate_if_full());
            }
            let result = result.map_err(|e| format!("{e:#}"));
            if let Err(e) = &result {
                tracing::error!("serve: {e}");
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
    }

    fn reopen(&mut self) -> Result<()> {
        self.file = open_file(&self.path)?;
        Ok(())
    }

    /// Past the size limit: FILE.(k-1) becomes FILE.k, FILE becomes FILE.1, a new FILE starts.
    fn rotate_if_full(&mut self) -> Result<()> {
        let Some(rotation) = self.rotation else {
            return Ok(());
        };
        let (size, regular) = self
            .file
            .metadata()
            .map_or((0, false), |m| (m.len(), m.is_file()));
        // A device or a pipe (/dev/full, a FIFO to a collector) is never renamed.
        if !regular || size < rotation.max_bytes {
            return Ok(());
        }
        let numbered = |k: usize| PathBuf::from(format!("{}.{k}", self.path.display()));
        let keep = rotation.keep.max(1);
        let _ = std::fs::remove_file(numbered(keep));
        for k in (1..keep).rev() {
            let _ = std::fs::rename(numbered(k), numbered(k + 1));
        }
        std::fs::rename(&self.path, numbered(1))
            .with_context(|| format!("rotating the audit log {}", self.path.display()))?;
        self.reopen()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read_lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn appends_lines_and_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::open(&path, None).unwrap();
        log.write_blocking(&[
            json!({"request_id": "a", "part": 0}),
            json!({"request_id": "a", "part": 1}),
        ])
        .unwrap();
        drop(log);
        let log = AuditLog::open(&path, None).unwrap();
        log.write_blocking(&[json!({"request_id": "b"})]).unwrap();
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["earlier"], true);
        assert_eq!(lines[2]["part"], 1);
        assert_eq!(lines[3]["request_id"], "b");
        let time = lines[1]["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(time).is_ok());
    }

    #[test]
    fn many_batches_are_all_written_and_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, None).unwrap();
        let pending: Vec<Written> = (0..500)
            .map(|i| log.submit(&[json!({ "n": i })]).unwrap())
            .collect();
        for written in pending {
            written.blocking_recv().unwrap().unwrap();
        }
        let lines = read_lines(&path);
        assert_eq!(lines.len(), 500);
        // In the order they were queued.
        assert!(lines.iter().enumerate().all(|(i, l)| l["n"] == json!(i)));
    }

    #[test]
    fn rotates_by_size_and_reopens_after_a_move() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(
            &path,
            Some(Rotation {
                max_bytes: 300,
                keep: 2,
            }),
        )
        .unwrap();
        for i in 0..20 {
            log.write_blocking(&[json!({ "n": i, "pad": "x".repeat(40) })])
                .unwrap();
        }
        let rotated = |k: usize| PathBuf::from(format!("{}.{k}", path.display()));
        assert!(rotated(1).exists() && rotated(2).exists());
        assert!(!rotated(3).exists(), "keeps 2");
        assert!(std::fs::metadata(&path).unwrap().len() < 300);
        // The newest line is in the live file or, if it just rotated, in FILE.1.
        let newest = read_lines(&path)
            .last()
            .cloned()
            .unwrap_or_else(|| read_lines(&rotated(1)).last().cloned().unwrap());
        assert_eq!(newest["n"], 19);

        // logrotate's move: lines keep going to the moved file until the reopen.
        let moved = dir.path().join("moved.jsonl");
        std::fs::rename(&path, &moved).unwrap();
        log.write_blocking(&[json!({"after": "move"})]).unwrap();
        log.reopen();
        log.write_blocking(&[json!({"after": "reopen"})]).unwrap();
        assert_eq!(read_lines(&moved).last().unwrap()["after"], "move");
        assert_eq!(read_lines(&path)[0]["after"], "reopen");
    }
}
