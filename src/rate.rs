//! Per-connection rate limits: one token bucket for updates and one for
//! awareness messages, as `governor`'s GCRA (a token bucket kept as one
//! timestamp, so an idle connection costs nothing to refill).
//!
//! What happens to the excess is the session's business: `/ws` refuses it
//! with `RATE_LIMITED` and a retry time, `/yjs` drops it and resyncs later.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota};

/// The configured rates (0 per second: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rates {
    pub updates_per_sec: u32,
    pub update_burst: u32,
    pub awareness_per_sec: u32,
    pub awareness_burst: u32,
}

impl Rates {
    /// No limits.
    pub fn unlimited() -> Self {
        Self::default()
    }
}

/// What a message counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Update,
    Awareness,
}

/// One connection's buckets.
pub struct ConnectionRates {
    updates: Option<DefaultDirectRateLimiter>,
    awareness: Option<DefaultDirectRateLimiter>,
}

fn bucket(per_sec: u32, burst: u32) -> Option<DefaultDirectRateLimiter> {
    let per_sec = NonZeroU32::new(per_sec)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
    Some(DefaultDirectRateLimiter::direct(
        Quota::per_second(per_sec).allow_burst(burst),
    ))
}

impl ConnectionRates {
    /// Full buckets for `rates`.
    pub fn new(rates: &Rates) -> Self {
        Self {
            updates: bucket(rates.updates_per_sec, rates.update_burst),
            awareness: bucket(rates.awareness_per_sec, rates.awareness_burst),
        }
    }

    /// Takes a token for one message of `kind`.
    ///
    /// # Errors
    /// The bucket is empty: the time until it holds a token again.
    pub fn check(&self, kind: Kind) -> Result<(), Duration> {
        let limiter = match kind {
            Kind::Update => &self.updates,
            Kind::Awareness => &self.awareness,
        };
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_excess_is_refused_with_a_wait() {
        let rates = ConnectionRates::new(&Rates {
            updates_per_sec: 1,
            update_burst: 3,
            awareness_per_sec: 0,
            awareness_burst: 0,
        });
        for _ in 0..3 {
            assert_eq!(rates.check(Kind::Update), Ok(()));
        }
        let wait = rates.check(Kind::Update).expect_err("bucket empty");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Awareness has no limit here.
        for _ in 0..1000 {
            assert_eq!(rates.check(Kind::Awareness), Ok(()));
        }
    }
}
