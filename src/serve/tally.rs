//! Refusals counted instead of written one by one, so that a flood from one address fills
//! neither the disk nor the log: on the HTTP side those of clients that have not authenticated
//! (no or a bad token, the rate limit, the token-less loopback mode's Host and Origin checks),
//! on the DICOM side rejected associations.
//!
//! The first refusal of an address, status and reason in an interval
//! (`--audit-aggregate-seconds`, 60 by default) is written to the audit log in full, with its
//! request id; the others of that interval are counted, and when the interval ends one line
//! says how many there were in all. IPv6 addresses are counted by their /64 (one host holds a
//! whole /64). At most [`MAX_TRACKED`] keys are followed at once; past that, the others share
//! one count per status (the line's `client` is `null`). The operator's log gets one line per
//! interval with the totals ([`summary`]), never a line per refusal.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::audit::AuditLog;

/// Keys (address, status, reason) counted at once; past this, one shared count per status.
pub const MAX_TRACKED: usize = 1024;

/// What to do with one refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The first of its key in the interval: write it in full.
    Write,
    /// Counted into the interval's line.
    Counted,
}

/// The address a count is kept under: an IPv4 address as it is, an IPv6 address by its /64.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

type Key = (Option<IpAddr>, u16, String);

#[derive(Debug)]
struct Window {
    opened: Instant,
    reason: String,
    first: String,
    first_request_id: Option<String>,
    count: u64,
}

/// The refusals of one key in an interval that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Count {
    /// The address (an IPv6 one as its /64); `None`: the addresses past [`MAX_TRACKED`].
    pub client: Option<IpAddr>,
    /// The HTTP status (or the DICOM side's own code).
    pub status: u16,
    /// Why (of the first refusal, for the shared count).
    pub reason: String,
    /// Refusals in the interval, the one written in full included.
    pub refusals: u64,
    /// The request id of the one written in full.
    pub first_request_id: Option<String>,
    /// When the interval began and ended (RFC 3339).
    pub from: String,
    /// See `from`.
    pub to: String,
}

impl Count {
    /// The audit line of this count (only worth writing when `refusals > 1`).
    pub fn line(&self) -> Value {
        json!({
            "event": "refusals",
            "client": self.client.map(|ip| ip.to_string()),
            "status": self.status,
            "error": self.reason,
            "refusals": self.refusals,
            "written_in_full": 1,
            "first_request_id": self.first_request_id,
            "from": self.from,
            "to": self.to,
        })
    }
}

/// The counts of the current intervals, by address, status and reason.
#[derive(Debug)]
pub struct Tally {
    interval: Duration,
    windows: Mutex<HashMap<Key, Window>>,
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
        let mut key = (client.map(address_key), status, reason.to_string());
        if !windows.contains_key(&key) && windows.len() >= MAX_TRACKED {
            // The shared count: one per status (no address, no reason in its key), found
            // without a scan of the tracked keys; it keeps the reason of its first refusal.
            key = (None, status, String::new());
        }
        if let Some(w) = windows.get_mut(&key) {
            w.count += 1;
            return Verdict::Counted;
        }
        windows.insert(
            key,
            Window {
                opened: Instant::now(),
                reason: reason.to_string(),
                first: now_text(),
                first_request_id: request_id.map(str::to_string),
                count: 1,
            },
        );
        Verdict::Write
    }

    /// The counts of the intervals that ended by `now` (all of them with `all`); their keys
    /// start again.
    pub fn due(&self, now: Instant, all: bool) -> Vec<Count> {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let ended: Vec<Key> = windows
            .iter()
            .filter(|(_, w)| all || now.duration_since(w.opened) >= self.interval)
            .map(|(k, _)| k.clone())
            .collect();
        let to = now_text();
        let mut counts = Vec::new();
        for key in ended {
            let Some(w) = windows.remove(&key) else {
                continue;
            };
            counts.push(Count {
                client: key.0,
                status: key.1,
                reason: w.reason,
                refusals: w.count,
                first_request_id: w.first_request_id,
                from: w.first,
                to: to.clone(),
            });
        }
        counts
    }
}

impl Tally {
    /// Writes the counts whose interval ended by now (all of them with `all`): one line with
    /// the totals to the log, headed `what` ("serve: refused without a valid token"), and to
    /// `audit`, for each count with more than the refusal written in full, the line `line`
    /// makes of it. Not waited for: the writer syncs them with its next batch.
    pub fn flush(
        &self,
        all: bool,
        what: &str,
        audit: Option<&AuditLog>,
        line: impl Fn(&Count) -> Value,
    ) {
        let counts = self.due(Instant::now(), all);
        let Some(summary) = summary(&counts) else {
            return;
        };
        tracing::warn!(
            "{what} in the last {} s: {summary}",
            self.interval.as_secs()
        );
        let lines: Vec<Value> = counts.iter().filter(|c| c.refusals > 1).map(line).collect();
        if let (Some(audit), false) = (audit, lines.is_empty()) {
            if let Err(busy) = audit.submit(&lines) {
                tracing::error!("{what}: the counts were not audited: {busy}");
            }
        }
    }

    /// Every second, on the current Tokio runtime, calls `flush`, until the process ends; with
    /// a zero interval (nothing counted) or outside a runtime, nothing.
    pub fn every_second(&self, flush: impl Fn() + Send + 'static) {
        if self.interval.is_zero() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                flush();
            }
        });
    }
}

/// One line for the operator's log: the refusals of `counts` by status, from how many
/// addresses, and the three addresses with the most.
pub fn summary(counts: &[Count]) -> Option<String> {
    if counts.is_empty() {
        return None;
    }
    let mut by_status: std::collections::BTreeMap<u16, (u64, usize)> = Default::default();
    for c in counts {
        let e = by_status.entry(c.status).or_default();
        e.0 += c.refusals;
        e.1 += 1;
    }
    let mut top: Vec<&Count> = counts.iter().collect();
    top.sort_by_key(|c| std::cmp::Reverse(c.refusals));
    let statuses: Vec<String> = by_status
        .iter()
        .map(|(status, (n, keys))| format!("{n} x {status} ({keys} address/reason pairs)"))
        .collect();
    let most: Vec<String> = top
        .iter()
        .take(3)
        .map(|c| {
            let who = c
                .client
                .map_or("other addresses".into(), |ip| ip.to_string());
            format!("{who} {} x {} ({})", c.refusals, c.status, c.reason)
        })
        .collect();
    Some(format!(
        "{}; most from {}",
        statuses.join(", "),
        most.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(counts: &[Count]) -> Vec<&Count> {
        counts.iter().filter(|c| c.refusals > 1).collect()
    }

    #[test]
    fn the_first_is_written_the_rest_counted_per_address_status_and_reason() {
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
        // Another reason at the same address and status is its own count (an expired token's
        // id is not hidden behind "no token").
        assert_eq!(
            tally.refusal(Some(a), 401, "expired token t1", None),
            Verdict::Write
        );
        assert_eq!(
            tally.refusal(Some(a), 429, "rate limit", None),
            Verdict::Write
        );
        assert_eq!(
            tally.refusal(Some(b), 401, "no token", None),
            Verdict::Write
        );
        assert!(tally.due(Instant::now(), false).is_empty(), "not yet");
        let counts = tally.due(Instant::now() + Duration::from_secs(61), false);
        assert_eq!(counts.len(), 4);
        let lines = written(&counts);
        // Only the interval with more than its first refusal has an audit line.
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = lines[0].line();
        assert_eq!(line["client"], "10.0.0.1");
        assert_eq!(line["status"], 401);
        assert_eq!(line["refusals"], 1000);
        assert_eq!(line["first_request_id"], "r1");
        let text = summary(&counts).unwrap();
        assert!(
            text.contains("1002 x 401 (3 address/reason pairs)"),
            "{text}"
        );
        assert!(text.contains("1 x 429"), "{text}");
        assert!(
            text.contains("most from 10.0.0.1 1000 x 401 (no token)"),
            "{text}"
        );
        // A new interval starts with a line in full.
        assert_eq!(
            tally.refusal(Some(a), 401, "no token", None),
            Verdict::Write
        );
    }

    #[test]
    fn ipv6_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let tally = Tally::new(Duration::from_secs(60));
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(
            tally.refusal(Some(one), 401, "no token", None),
            Verdict::Write
        );
        assert_eq!(
            tally.refusal(Some(other), 401, "no token", None),
            Verdict::Counted
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(address_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
        let counts = tally.due(Instant::now(), true);
        assert_eq!(counts[0].client, Some("2001:db8:1:2::".parse().unwrap()));
    }

    #[test]
    fn past_the_tracked_keys_the_others_share_one_count() {
        let tally = Tally::new(Duration::from_secs(60));
        for i in 0..MAX_TRACKED as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            assert_eq!(
                tally.refusal(Some(ip), 401, "no token", None),
                Verdict::Write
            );
        }
        let mut written_in_full = 0;
        for i in 0..5000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            let reason = if i % 2 == 0 {
                "no token"
            } else {
                "unknown token"
            };
            if tally.refusal(Some(ip), 401, reason, None) == Verdict::Write {
                written_in_full += 1;
            }
        }
        assert_eq!(written_in_full, 1, "one line for all the others");
        let counts = tally.due(Instant::now(), true);
        let lines = written(&counts);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].line()["client"], Value::Null);
        assert_eq!(lines[0].refusals, 5000);
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
