//! Edge protection that runs before a request's signature is checked: which
//! client may post to a source (here), and how often ([`crate::rate`]).
//!
//! Rate limiting happens before verification on purpose: a flood of forged
//! requests must not cost an HMAC (or an ed25519 verify) each. The price is
//! that forged requests also spend the source's budget; `allow_ips` is the
//! tool against a hostile network.

use std::net::{IpAddr, SocketAddr};

use axum::http::HeaderMap;

use crate::config::Cidr;

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
