//! When a sync's request is sent again, and when a periodic sync runs.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::error::{Error, Result};

/// How a failed request is retried: timeouts, connection errors, 429 and
/// 5xx are sent again, up to `attempts` sends in all, after an exponential
/// backoff with jitter (a 429's `Retry-After` instead, when it has one);
/// any other 4xx is never sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sends of one request at most (at least 1).
    pub attempts: u32,
    /// The first backoff.
    pub base: Duration,
    /// The longest backoff (a `Retry-After` may ask for longer).
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first): the
    /// backoff `base * 2^retry`, capped at `max`, with "equal jitter": a
    /// uniform draw between half of it and all of it, so that clients
    /// that failed together do not come back together.
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let full = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = full / 2;
        let nanos = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.gen_range(0..=nanos))
    }
}

/// What to do with a request's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Acknowledged (a 2xx).
    Done,
    /// Send it again; after the server's `Retry-After` when it gave one.
    Retry {
        /// The server's `Retry-After`.
        after: Option<Duration>,
    },
    /// Never send it again (a 4xx other than 429, or a 1xx/3xx).
    Refuse,
}

/// The verdict on an HTTP status.
pub fn verdict(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Done,
        429 => Verdict::Retry { after: retry_after },
        500..=599 => Verdict::Retry { after: retry_after },
        _ => Verdict::Refuse,
    }
}

/// A period as `--every` takes it: a whole number followed by `s`, `m`,
/// `h` or `d` (`30s`, `1m`, `1h`, `1d`), at least one second.
pub fn parse_period(text: &str) -> Result<Duration> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--every {text:?}: expected a period such as 1m, 1h or 1d (a whole number and s, m, h or d)"
        ))
    };
    let t = text.trim();
    let unit = match t.chars().last().ok_or_else(bad)? {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return Err(bad()),
    };
    let digits = &t[..t.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let secs = n.checked_mul(unit).ok_or_else(bad)?;
    if secs == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

/// When the run after one that started at `last` starts, if it is now
/// `now`: the next tick of the period after `last` that has not passed,
/// and how many ticks were skipped because the run overran them (runs are
/// skipped, never stacked).
pub fn next_start(last: Instant, period: Duration, now: Instant) -> (Instant, u64) {
    let elapsed = now.saturating_duration_since(last);
    if elapsed <= period {
        return (last + period, 0);
    }
    let p = period.as_nanos().max(1);
    let ticks = elapsed.as_nanos().div_ceil(p);
    let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
    (last + period.saturating_mul(ticks), u64::from(ticks) - 1)
}
