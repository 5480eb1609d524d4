//! New DICOM UIDs for the objects xray writes.
//!
//! Without `--uid-root`, every UID is `2.25.` followed by a random 128-bit number in decimal
//! (PS3.5 B.2: a UUID-derived UID, unique without registering anything). With a root an
//! organisation owns (`--uid-root 1.2.826.0.1.3680043.10.1234`), a UID is
//! `ROOT.MICROSECONDS.PROCESS.COUNTER`: the time, the process id and a counter keep two UIDs of
//! one root apart, within the 64 characters a UID may have.

use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Result;
use rand::RngCore;

use crate::error::Error;

/// Longest root accepted: what remains of the 64 characters holds time, process and counter.
pub const MAX_ROOT_CHARS: usize = 32;

/// Where new UIDs come from.
#[derive(Debug)]
pub struct UidRoot {
    root: Option<String>,
    counter: AtomicU64,
}

impl Default for UidRoot {
    fn default() -> Self {
        UidRoot {
            root: None,
            counter: AtomicU64::new(0),
        }
    }
}

impl UidRoot {
    /// A root given on the command line: digits in dot-separated components, no component with
    /// a leading zero, at most [`MAX_ROOT_CHARS`] characters (a usage error otherwise).
    pub fn parse(root: &str) -> Result<UidRoot> {
        let root = root.trim().trim_end_matches('.');
        let bad = |why: &str| Error::usage(format!("--uid-root {root}: {why}"));
        if root.is_empty() {
            return Err(bad("empty").into());
        }
        if root.len() > MAX_ROOT_CHARS {
            return Err(bad(&format!(
                "longer than {MAX_ROOT_CHARS} characters (a UID has 64, and xray appends time, process and counter)"
            ))
            .into());
        }
        super::vr::check_uid(root).map_err(|why| bad(&format!("not a UID: {why}")))?;
        Ok(UidRoot {
            root: Some(root.to_string()),
            counter: AtomicU64::new(0),
        })
    }

    /// The root as given, or `2.25` for UUID-derived UIDs.
    pub fn describe(&self) -> &str {
        self.root.as_deref().unwrap_or("2.25")
    }

    /// A UID never handed out before.
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        match &self.root {
            None => {
                let mut bytes = [0u8; 16];
                rand::thread_rng().fill_bytes(&mut bytes);
                // Version 4, variant 1, as a UUID: the number is a valid random UUID.
                bytes[6] = (bytes[6] & 0x0f) | 0x40;
                bytes[8] = (bytes[8] & 0x3f) | 0x80;
                format!("2.25.{}", u128::from_be_bytes(bytes))
            }
            Some(root) => {
                let micros = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros())
                    .unwrap_or(0);
                format!("{root}.{micros}.{}.{}", std::process::id(), n + 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(uid: &str) -> bool {
        uid.len() <= 64
            && uid.split('.').all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'))
            })
    }

    #[test]
    fn uuid_derived_uids_are_valid_and_distinct() {
        let root = UidRoot::default();
        let uids: std::collections::HashSet<String> = (0..1000).map(|_| root.next()).collect();
        assert_eq!(uids.len(), 1000);
        assert!(
            uids.iter().all(|u| u.starts_with("2.25.") && valid(u)),
            "{uids:?}"
        );
    }

    #[test]
    fn a_root_prefixes_valid_distinct_uids_within_64_characters() {
        let root = UidRoot::parse("1.2.826.0.1.3680043.10.12345678").unwrap();
        let a = root.next();
        let b = root.next();
        assert_ne!(a, b);
        for u in [&a, &b] {
            assert!(u.starts_with("1.2.826.0.1.3680043.10.12345678."), "{u}");
            assert!(valid(u), "{u}");
        }
    }

    #[test]
    fn bad_roots_are_usage_errors() {
        for bad in ["", "1.2.x", "1..2", "1.02.3", &"1.2".repeat(20)] {
            let e = UidRoot::parse(bad).unwrap_err();
            assert!(e.to_string().contains("--uid-root"), "{bad}: {e}");
        }
    }
}
