//! The append-only audit log of `serve --audit-log FILE`: one JSON object per line for every
//! answered image and every refused request.
//!
//! A line holds when (UTC), the request id, the client's address and token id (never the
//! token), the input's sha256 and size, the model's name and weights sha256, and the answer:
//! label, probabilities, out-of-distribution score and flag, or the status and reason of a
//! refusal. It never holds the image, the upload's file name or anything read from a DICOM
//! header, so it carries no patient identifier. Lines are written whole with `O_APPEND` and
//! flushed to disk before the answer leaves: a prediction that cannot be logged is not given.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use serde_json::Value;

/// An open audit log.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens `path` for appending (created with mode 0640 when new).
    pub fn open(path: &Path) -> Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)
            .with_context(|| {
                format!(
                    "--audit-log {}: cannot open it for appending",
                    path.display()
                )
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Appends `records` (one line each, with the `time` added) and syncs them to disk.
    pub fn append(&self, records: &[Value]) -> Result<()> {
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
        let mut file = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("audit log lock poisoned"))?;
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_data())
            .with_context(|| format!("writing the audit log {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn appends_lines_and_keeps_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::open(&path).unwrap();
        log.append(&[
            json!({"request_id": "a", "part": 0}),
            json!({"request_id": "a", "part": 1}),
        ])
        .unwrap();
        drop(log);
        let log = AuditLog::open(&path).unwrap();
        log.append(&[json!({"request_id": "b"})]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["earlier"], true);
        assert_eq!(lines[2]["part"], 1);
        assert_eq!(lines[3]["request_id"], "b");
        let time = lines[1]["time"].as_str().unwrap();
        assert!(time.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(time).is_ok());
    }
}
