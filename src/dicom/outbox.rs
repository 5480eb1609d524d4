//! The results waiting to be sent: a folder of DICOM files (mode 0600 in a 0700 folder), each
//! removed once the destination has stored it. A sender thread sends whatever is there over
//! one association at a time, and when the destination is down it tries again with a growing
//! pause (1 s doubling to 30 s), so a PACS that is away for a minute loses nothing; the files
//! survive a restart of xray and are sent by the next one. The folder has a size bound: a
//! result that would pass it is refused, and the image it answers gets "out of resources",
//! so that the sender of the image tries again later.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};

use super::scu::{store, Node, Sent};
use super::stow::Stow;

/// Where results go.
#[derive(Debug, Clone)]
pub enum Destination {
    /// A DICOM node, by C-STORE as `calling_ae`.
    Dicom {
        /// The node.
        node: Node,
        /// Our calling AE title.
        calling_ae: String,
    },
    /// A DICOMweb server, by STOW-RS.
    Stow(Stow),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::Dicom { node, .. } => write!(f, "{node}"),
            Destination::Stow(s) => write!(f, "{s}"),
        }
    }
}

impl Destination {
    /// Sends `files`: one [`Sent`] each, or an error when the destination cannot be reached.
    pub fn send(&self, files: &[PathBuf], timeout: Duration) -> Result<Vec<Sent>> {
        match self {
            Destination::Dicom { node, calling_ae } => store(files, node, calling_ae, timeout),
            Destination::Stow(s) => s.store(files, timeout),
        }
    }
}

/// Longest pause between two attempts while the destination is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Results sent in one association at most.
const BATCH: usize = 64;

/// The queue folder and its sender.
#[derive(Debug)]
pub struct Outbox {
    dir: PathBuf,
    max_bytes: u64,
    /// How long a file the destination refused is kept (for the operator to look at).
    keep_refused: Duration,
    wake: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

/// What the sender reports of each attempt (for the audit log and metrics).
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A file was stored by the destination, this many seconds after the image it answers
    /// was received.
    Stored(PathBuf, f64),
    /// The destination refused a file with a status; the file is set aside as `.refused`.
    Refused(PathBuf, u16),
    /// The destination could not be reached; everything stays queued.
    Unreachable(String),
    /// This many refused files passed their keeping time and were removed.
    Expired(usize),
}

/// Refuses a queue folder that others can read, write or enter (the results carry patient
/// names and IDs) or that is not ours: it must be 0700 and owned by this user.
fn check_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(dir).with_context(|| format!("the results queue {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let mode = meta.mode() & 0o777;
    if meta.uid() != me || mode & 0o077 != 0 {
        return Err(crate::error::Error::usage(format!(
            "the results queue {} is mode {mode:o} and owned by uid {}: it holds patient data, so it must be 0700 and this user's (chmod 700 it, or name another with --results-queue)",
            dir.display(),
            meta.uid()
        ))
        .into());
    }
    Ok(())
}

impl Outbox {
    /// Opens (creating, 0700) the queue folder `dir`, holding at most `max_bytes` (waiting
    /// and refused files together), refused files kept for `keep_refused`.
    pub fn open(dir: &Path, max_bytes: u64, keep_refused: Duration) -> Result<Outbox> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the results queue {}", dir.display()))?;
        check_private(dir)?;
        Ok(Outbox {
            dir: dir.to_path_buf(),
            max_bytes,
            keep_refused,
            wake: Arc::new((Mutex::new(false), Condvar::new())),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The queue folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The queued files (`*.dcm`, not those being written), oldest name first, and their
    /// total size.
    pub fn pending(&self) -> (Vec<PathBuf>, u64) {
        // Not a file still being written (write_with's `NAME.PID.tmp.dcm`).
        self.files("dcm", |path| !path.to_string_lossy().contains(".tmp."))
    }

    /// Whether `bytes` more fit under the bound, which counts the files set aside as
    /// refused too: they hold patient data as much as the waiting ones.
    pub fn has_room(&self, bytes: u64) -> bool {
        self.pending().1 + self.refused().1 + bytes <= self.max_bytes
    }

    /// The files the destination refused (`*.refused`), by name, and their total size.
    pub fn refused(&self) -> (Vec<PathBuf>, u64) {
        self.files("refused", |_| true)
    }

    /// The folder's files with extension `ext` that `keep` takes, sorted by name, and their
    /// total size.
    fn files(&self, ext: &str, keep: impl Fn(&Path) -> bool) -> (Vec<PathBuf>, u64) {
        let mut files = Vec::new();
        let mut bytes = 0;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let path = e.path();
                if path.extension().is_some_and(|x| x == ext) && keep(&path) {
                    bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                    files.push(path);
                }
            }
        }
        files.sort();
        (files, bytes)
    }

    /// Removes the refused files older than the keeping time; how many.
    pub fn expire_refused(&self) -> usize {
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for path in self.refused().0 {
            let old = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > self.keep_refused);
            if old && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// Queues `objects` (name, encoded Part 10 file) answering an image received at
    /// `received`, together: all of them or, when they would pass the bound, none (an error).
    /// File names start with the time of receipt (microseconds since 1970), so results go out
    /// in order and their delivery time can be told.
    pub fn push(
        &self,
        objects: &[(String, Vec<u8>)],
        received: std::time::SystemTime,
    ) -> Result<()> {
        let total: u64 = objects.iter().map(|(_, b)| b.len() as u64).sum();
        if !self.has_room(total) {
            anyhow::bail!(
                "the results queue {} is full ({} MiB bound)",
                self.dir.display(),
                self.max_bytes >> 20
            );
        }
        let stamp = micros(received);
        // Two images received in the same microsecond must not share a name (the second
        // would replace the first): a number of this process's, after the time.
        static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        for (i, (name, bytes)) in objects.iter().enumerate() {
            let path = self.dir.join(format!("{stamp:020}-{n:08}-{i}-{name}.dcm"));
            crate::fsutil::write_private(&path, bytes)?;
        }
        self.notify();
        Ok(())
    }

    fn notify(&self) {
        let (lock, cvar) = &*self.wake;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cvar.notify_all();
    }

    /// Starts the sender: it sends the queue to `to` until [`Outbox::stop`], calling `report`
    /// after each attempt.
    pub fn start(
        self: &Arc<Self>,
        to: Destination,
        timeout: Duration,
        report: impl Fn(Delivery) + Send + 'static,
    ) -> Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("xray-dicom-send".into())
            .spawn(move || {
                let mut backoff = Duration::from_secs(1);
                while !me.stop.load(Ordering::Relaxed) {
                    let expired = me.expire_refused();
                    if expired > 0 {
                        report(Delivery::Expired(expired));
                    }
                    let (files, _) = me.pending();
                    if files.is_empty() {
                        me.wait(MAX_BACKOFF);
                        continue;
                    }
                    let batch = &files[..files.len().min(BATCH)];
                    let delay = match to.send(batch, timeout) {
                        Ok(results) => settle(batch, results, &report),
                        Err(e) => {
                            report(Delivery::Unreachable(format!("{e:#}")));
                            true
                        }
                    };
                    if delay {
                        me.wait(backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        backoff = Duration::from_secs(1);
                    }
                }
            })
            .context("starting the results sender")
    }

    /// Sleeps until new results arrive, [`Outbox::stop`], or `at_most`.
    fn wait(&self, at_most: Duration) {
        let (lock, cvar) = &*self.wake;
        let mut woken = lock.lock().unwrap_or_else(|e| e.into_inner());
        if !*woken {
            woken = cvar
                .wait_timeout(woken, at_most)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        *woken = false;
    }

    /// Asks the sender to stop after its current attempt.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.notify();
    }
}

/// Removes what was stored, sets aside what was refused (`.refused`), keeps the rest, and
/// reports each; whether the destination stopped answering (then wait before the next try).
fn settle(batch: &[PathBuf], results: Vec<Sent>, report: &impl Fn(Delivery)) -> bool {
    let mut later = false;
    for (path, sent) in batch.iter().zip(results) {
        match sent {
            Sent::Stored => {
                let _ = std::fs::remove_file(path);
                report(Delivery::Stored(path.clone(), since_received(path)));
            }
            Sent::Refused(status) => {
                let _ = std::fs::rename(path, path.with_extension("refused"));
                report(Delivery::Refused(path.clone(), status));
            }
            Sent::Later => later = true,
        }
    }
    if later {
        report(Delivery::Unreachable(
            "the destination stopped answering".into(),
        ));
    }
    later
}

/// Microseconds since 1970 of `t`.
fn micros(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// Seconds from the receipt time at the start of a queued file's name until now.
fn since_received(path: &Path) -> f64 {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(at) = name.split('-').next().and_then(|s| s.parse::<u128>().ok()) else {
        return f64::NAN;
    };
    (micros(std::time::SystemTime::now()).saturating_sub(at)) as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_results_are_private_ordered_bounded_and_timed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("q"), 1000, Duration::from_secs(3600)).unwrap();
        let earlier = std::time::SystemTime::now() - Duration::from_secs(3);
        outbox
            .push(
                &[("sr".into(), vec![1; 300]), ("sc".into(), vec![2; 300])],
                earlier,
            )
            .unwrap();
        outbox
            .push(&[("sr".into(), vec![3; 300])], std::time::SystemTime::now())
            .unwrap();
        let (files, bytes) = outbox.pending();
        assert_eq!(bytes, 900);
        assert_eq!(std::fs::read(&files[0]).unwrap(), vec![1; 300]);
        assert_eq!(std::fs::read(&files[2]).unwrap(), vec![3; 300]);
        for f in &files {
            assert_eq!(
                std::fs::metadata(f).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let mode = std::fs::metadata(outbox.dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        let waited = since_received(&files[0]);
        assert!((3.0..60.0).contains(&waited), "{waited}");
        // Past the bound: nothing of the batch is queued.
        let e = outbox
            .push(
                &[("sr".into(), vec![4; 50]), ("sc".into(), vec![5; 60])],
                earlier,
            )
            .unwrap_err();
        assert!(e.to_string().contains("full"), "{e}");
        assert_eq!(outbox.pending().0.len(), 3);
    }

    #[test]
    fn refused_files_count_against_the_bound_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("q"), 1000, Duration::from_secs(1)).unwrap();
        let now = std::time::SystemTime::now();
        outbox.push(&[("sr".into(), vec![1; 600])], now).unwrap();
        let (files, _) = outbox.pending();
        settle(&files, vec![Sent::Refused(0x0122)], &|_| {});
        assert!(outbox.pending().0.is_empty());
        assert_eq!(outbox.refused().1, 600);
        // The refused file still takes its room.
        assert!(!outbox.has_room(500));
        assert_eq!(outbox.expire_refused(), 0);
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(outbox.expire_refused(), 1);
        assert!(outbox.has_room(500));
    }

    #[test]
    fn a_shared_or_foreign_queue_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        std::fs::create_dir(&q).unwrap();
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Outbox::open(&q, 1000, Duration::from_secs(1)).unwrap_err();
        assert!(e.to_string().contains("must be 0700"), "{e}");
        std::fs::set_permissions(&q, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(Outbox::open(&q, 1000, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn results_received_in_the_same_microsecond_keep_their_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("q"), 10_000, Duration::from_secs(1)).unwrap();
        let now = std::time::SystemTime::now();
        for i in 0..5u8 {
            outbox.push(&[("sr".into(), vec![i; 10])], now).unwrap();
        }
        assert_eq!(outbox.pending().0.len(), 5);
    }
}
