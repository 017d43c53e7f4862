//! Edge protection that runs before a request's signature is checked:
//! which client may post to a source, and how often.
//!
//! Rate limiting happens before verification on purpose: a flood of forged
//! requests must not cost an HMAC (or an ed25519 verify) each. The price is
//! that forged requests also spend the source's budget; `allow_ips` is the
//! tool against a hostile network.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::HeaderMap;

use crate::config::{Cidr, Rate};

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

/// The client's address: the socket peer, or — when the peer is a trusted
/// proxy — the right-most `X-Forwarded-For` entry that is not itself a
/// trusted proxy (entries further left are client-controlled and could be
/// forged).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.ip().to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|entry| entry.trim().parse::<IpAddr>().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .map(|ip| ip.to_canonical())
        .find(|ip| !is_trusted(*ip))
        .or_else(|| forwarded.first().map(|ip| ip.to_canonical()))
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

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

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let proxy: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let stranger: SocketAddr = "203.0.113.9:1234".parse().unwrap();
        // From a trusted proxy: the right-most untrusted hop.
        assert_eq!(
            client_ip(proxy, &xff("1.1.1.1, 192.0.2.1, 10.0.0.7"), &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        // A forged left-most entry does not win.
        assert_eq!(client_ip(proxy, &xff("6.6.6.6, 192.0.2.1"), &trusted), "192.0.2.1".parse::<IpAddr>().unwrap());
        // Not from a trusted proxy: the header is ignored.
        assert_eq!(client_ip(stranger, &xff("192.0.2.1"), &trusted), stranger.ip());
        // No trusted proxies configured: always the peer.
        assert_eq!(client_ip(proxy, &xff("192.0.2.1"), &[]), proxy.ip());
        // Trusted proxy without the header: the proxy itself.
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy.ip());
    }
}
