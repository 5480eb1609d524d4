//! The per-client rate limit of `serve --rate-limit N`: each client address may make N API
//! requests a minute, in bursts of up to N (the generic cell rate algorithm of `governor`).
//! Behind a reverse proxy every request comes from the proxy's address: limit there instead.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Requests per minute per client address.
pub struct RateLimit {
    per_minute: NonZeroU32,
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    checks: AtomicU64,
}

impl RateLimit {
    /// `per_minute` requests a minute per address; `None` for 0 (no limit).
    pub fn new(per_minute: u32) -> Option<RateLimit> {
        let per_minute = NonZeroU32::new(per_minute)?;
        Some(RateLimit {
            per_minute,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            clock: DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    /// `Ok` when `client` may go on, else how long it should wait.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        // Now and then, clients whose budget is full again are forgotten: the table stays small.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter
            .check_key(&client)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// The limit, for messages.
    pub fn per_minute(&self) -> u32 {
        self.per_minute.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_budget() {
        let limit = RateLimit::new(3).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limit.check(a).is_ok());
        }
        let wait = limit.check(a).unwrap_err();
        // One request's worth of a 3-a-minute budget comes back within 20 s.
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(limit.check(b).is_ok());
        assert!(RateLimit::new(0).is_none());
    }
}
