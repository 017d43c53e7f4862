//! A token bucket, shared by the stages that limit rates: the ingress
//! refuses requests over a source's `rate_limit` (429), and a worker waits
//! before sending over a subscription's `rate_limit`.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::Rate;

/// A token bucket: `burst` tokens, refilled at `rate`.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: Rate, burst: Option<u32>) -> Self {
        let per_second = rate.per_second();
        let burst = burst.map_or(per_second.ceil().max(1.0), f64::from);
        Self { per_second, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// `"{rate}/s burst {burst}"`, for `hookwire check`.
    pub fn describe(&self) -> String {
        format!("{}/s burst {}", self.per_second, self.burst)
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        while let Err(wait) = self.check() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn check(&self) -> Result<(), Duration> {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().expect("rate limiter lock poisoned");
        let (tokens, last) = *state;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills_at_rate() {
        let limiter = RateLimiter::new("10/s".parse().unwrap(), Some(3));
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check_at(start).is_ok());
        }
        let wait = limiter.check_at(start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100), "{wait:?}");
        assert!(limiter.check_at(start + Duration::from_millis(100)).is_ok());
        assert!(limiter.check_at(start + Duration::from_millis(100)).is_err());
        // Idle time refills only up to the burst.
        let later = start + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(limiter.check_at(later).is_ok());
        }
        assert!(limiter.check_at(later).is_err());
    }

    #[test]
    fn default_burst_is_one_seconds_worth() {
        let limiter = RateLimiter::new("2/m".parse().unwrap(), None);
        let now = Instant::now();
        assert!(limiter.check_at(now).is_ok());
        let wait = limiter.check_at(now).unwrap_err();
        assert!(wait > Duration::from_secs(29), "{wait:?}");
    }
}
