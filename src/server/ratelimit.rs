//! The per-key rate limit of the partner endpoints: a token bucket for each
//! data import key (keyed by the key id, so only keys that authorized get a
//! bucket and the map is bounded by the number of keys).
//!
//! A bucket holds up to `per_hour` tokens and refills at `per_hour / 3600`
//! tokens a second; a request takes one. A fresh key may thus send a whole
//! hour's allowance at once (a one-time backfill at full speed), and after
//! that at the sustained rate. A refused request is told how long until a
//! token is back, in whole seconds (at least 1), for `Retry-After`.
//! `per_hour == 0` turns the limit off.

use std::sync::Mutex;
use std::time::Instant;

use hashbrown::HashMap;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets by key id.
#[derive(Debug)]
pub struct RateLimiter {
    per_hour: u64,
    buckets: Mutex<HashMap<Box<str>, Bucket>>,
}

impl RateLimiter {
    /// A limiter of `per_hour` requests per key (0: no limit).
    pub fn new(per_hour: u64) -> Self {
        RateLimiter {
            per_hour,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The configured limit (0: none).
    pub fn per_hour(&self) -> u64 {
        self.per_hour
    }

    /// Takes a token for `key` now; `Err(retry_after_secs)` when none is left.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        self.check_at(key, Instant::now())
    }

    /// [`Self::check`] at a given instant (tests drive the clock).
    pub fn check_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        if self.per_hour == 0 {
            return Ok(());
        }
        let capacity = self.per_hour as f64;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = match buckets.get_mut(key) {
            Some(b) => b,
            None => buckets.entry(key.into()).or_insert(Bucket {
                tokens: capacity,
                last: now,
            }),
        };
        // An instant earlier than the last one (callers racing between
        // taking `now` and the lock) refills nothing.
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        if now > bucket.last {
            bucket.last = now;
        }
        bucket.tokens = (bucket.tokens + elapsed * capacity / 3600.0).min(capacity);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - bucket.tokens) * 3600.0 / capacity).ceil();
            Err((wait as u64).max(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_refuses_with_retry_after() {
        let limiter = RateLimiter::new(3600); // one token a second
        let t0 = Instant::now();
        for _ in 0..3600 {
            assert_eq!(limiter.check_at("k1", t0), Ok(()));
        }
        assert_eq!(limiter.check_at("k1", t0), Err(1));
        // Another key has its own bucket.
        assert_eq!(limiter.check_at("k2", t0), Ok(()));
        // Half a second later still nothing; a second later one token.
        assert_eq!(
            limiter.check_at("k1", t0 + Duration::from_millis(500)),
            Err(1)
        );
        assert_eq!(limiter.check_at("k1", t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(limiter.check_at("k1", t0 + Duration::from_secs(1)), Err(1));
    }

    #[test]
    fn retry_after_is_whole_seconds_until_a_token() {
        let limiter = RateLimiter::new(2); // one token every 1800 s
        let t0 = Instant::now();
        assert!(limiter.check_at("k", t0).is_ok());
        assert!(limiter.check_at("k", t0).is_ok());
        assert_eq!(limiter.check_at("k", t0), Err(1800));
        assert_eq!(
            limiter.check_at("k", t0 + Duration::from_millis(1500)),
            Err(1799)
        );
        assert!(limiter
            .check_at("k", t0 + Duration::from_secs(1800))
            .is_ok());
    }

    #[test]
    fn refill_is_capped_and_zero_means_unlimited() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(100 * 3600);
        assert!(limiter.check_at("k", t0).is_ok());
        let allowed = (0..100)
            .filter(|_| limiter.check_at("k", later).is_ok())
            .count();
        assert_eq!(allowed, 10);

        let unlimited = RateLimiter::new(0);
        assert!((0..10_000).all(|_| unlimited.check("k").is_ok()));
    }

    #[test]
    fn an_earlier_instant_refills_nothing() {
        let limiter = RateLimiter::new(3600);
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3600 {
            assert!(limiter.check_at("k", t1).is_ok());
        }
        assert!(limiter.check_at("k", t0).is_err());
    }
}
