//! Refusals of clients that have not authenticated (no or a bad token, the rate limit, the
//! token-less loopback mode's Host and Origin checks), counted instead of written one by one:
//! a flood from one address must not fill the disk nor the log.
//!
//! The first such refusal of an address and status in an interval (`--audit-aggregate-seconds`,
//! 60 by default) is written in full, with its request id; the others of that interval are
//! counted, and when the interval ends one line says how many there were in all. At most
//! [`MAX_TRACKED`] addresses are followed at once; past that, the others share one count (the
//! line's `client` is `null`). An authenticated client's refusals are always written in full.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Addresses (and statuses) counted at once; past this, one shared count.
pub const MAX_TRACKED: usize = 1024;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its address and status in the interval: write it in full.
    Write,
    /// Counted into the interval's line.
    Counted,
}

#[derive(Debug)]
struct Window {
    opened: Instant,
    first: String,
    reason: String,
    first_request_id: Option<String>,
    count: u64,
}

/// The counts of the current intervals, by address and status.
#[derive(Debug)]
pub struct Tally {
    interval: Duration,
    windows: Mutex<HashMap<(Option<IpAddr>, u16), Window>>,
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Tally {
    /// Counts per `interval`; a zero interval writes every refusal in full.
    pub fn new(interval: Duration) -> Tally {
        Tally {
            interval,
            windows: Mutex::default(),
        }
    }

    /// How long an interval lasts.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One refusal with `status` and `reason` of `client` (request `request_id`): write it in
    /// full, or count it.
    pub fn refusal(
        &self,
        client: Option<IpAddr>,
        status: u16,
        reason: &str,
        request_id: Option<&str>,
    ) -> Verdict {
        if self.interval.is_zero() {
            return Verdict::Write;
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let mut key = (client, status);
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            key = (None, status);
        }
        if let Some(w) = windows.get_mut(&key) {
            w.count += 1;
            return Verdict::Counted;
        }
        windows.insert(
            key,
            Window {
                opened: Instant::now(),
                first: now_text(),
                reason: reason.to_string(),
                first_request_id: request_id.map(str::to_string),
                count: 1,
            },
        );
        Verdict::Write
    }

    /// The lines of the intervals that ended by `now` (all of them with `all`), each interval
    /// with more than its first refusal; their counts start again.
    pub fn due(&self, now: Instant, all: bool) -> Vec<Value> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let ended: Vec<_> = windows
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.opened) >= self.interval)
            .map(|(k, _)| *k)
            .collect();
        let last = now_text();
        let mut lines = Vec::new();
        for key in ended {
            let Some(w) = windows.remove(&key) else {
                continue;
            };
            if w.count > 1 {
                lines.push(json!({
                    "event": "refusals",
                    "client": key.0.map(|ip| ip.to_string()),
                    "status": key.1,
                    "error": w.reason,
                    "refusals": w.count,
                    "written_in_full": 1,
                    "first_request_id": w.first_request_id,
                    "from": w.first,
                    "to": last,
                }));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_is_written_the_rest_counted_per_address_and_status() {
        let tally = Tally::new(Duration::from_secs(60));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(
            tally.refusal(Some(a), 401, "no token", Some("r1")),
            Verdict::Write
        );
        for _ in 0..999 {
            assert_eq!(
                tally.refusal(Some(a), 401, "no token", None),
                Verdict::Counted
            );
        }
        assert_eq!(
            tally.refusal(Some(a), 429, "rate limit", None),
            Verdict::Write
        );
        assert_eq!(
            tally.refusal(Some(b), 401, "no token", None),
            Verdict::Write
        );
        assert!(tally.due(Instant::now(), false).is_empty(), "not yet");
        let lines = tally.due(Instant::now() + Duration::from_secs(61), false);
        // Only the interval with more than its first refusal has a line.
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["client"], "10.0.0.1");
        assert_eq!(lines[0]["status"], 401);
        assert_eq!(lines[0]["refusals"], 1000);
        assert_eq!(lines[0]["first_request_id"], "r1");
        // A new interval starts with a line in full.
        assert_eq!(
            tally.refusal(Some(a), 401, "no token", None),
            Verdict::Write
        );
    }

    #[test]
    fn past_the_tracked_addresses_the_others_share_one_count() {
        let tally = Tally::new(Duration::from_secs(60));
        for i in 0..MAX_TRACKED as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(
                tally.refusal(Some(ip), 401, "no token", None),
                Verdict::Write
            );
        }
        let mut written = 0;
        for i in 0..5000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            if tally.refusal(Some(ip), 401, "no token", None) == Verdict::Write {
                written += 1;
            }
        }
        assert_eq!(written, 1, "one line for all the others");
        let lines = tally.due(Instant::now(), true);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["client"], Value::Null);
        assert_eq!(lines[0]["refusals"], 5000);
    }

    #[test]
    fn a_zero_interval_writes_every_refusal() {
        let tally = Tally::new(Duration::ZERO);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(
                tally.refusal(Some(a), 401, "no token", None),
                Verdict::Write
            );
        }
        assert!(tally.due(Instant::now(), true).is_empty());
    }
}
