//! Token buckets: one per WebSocket connection, one per sender for the HTTP
//! API (where there is no connection to hang a bucket on), and one per client
//! address for WebSocket upgrades ([`address_key`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Refills `rate` tokens per second up to `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes `cost` tokens if there are that many.
    pub fn try_take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// True when the bucket would be full at `now`: forgetting it changes nothing.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Beyond this many senders, full buckets are forgotten before adding one.
const MAX_KEYS: usize = 10_000;

/// The bucket key of a client address for the upgrade limit: an IPv4
/// address (IPv4-mapped IPv6 included) as itself, an IPv6 address by its /64,
/// since one host is routinely given a whole /64 and would otherwise have
/// 2^64 buckets.
pub fn address_key(ip: std::net::IpAddr) -> String {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Token buckets by key (the HTTP API limits each sender, the upgrade each
/// client address).
pub struct KeyedBuckets {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl KeyedBuckets {
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket if it has one.
    pub fn try_take(&self, key: &str, now: Instant) -> bool {
        let Ok(mut buckets) = self.buckets.lock() else {
            return true;
        };
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            buckets.retain(|_, b| !b.is_full(now));
        }
        buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst))
            .try_take(1.0, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0);
        assert_eq!((0..8).filter(|_| b.try_take(1.0, t0)).count(), 5);
        assert!(!b.try_take(1.0, t0 + Duration::from_millis(50)));
        assert!(b.try_take(1.0, t0 + Duration::from_millis(110)));
        // Idle time never banks more than the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..8).filter(|_| b.try_take(1.0, later)).count(), 5);
    }

    #[test]
    fn keyed_buckets_are_independent() {
        let t0 = Instant::now();
        let k = KeyedBuckets::new(1.0, 2.0);
        assert!(k.try_take("a", t0) && k.try_take("a", t0));
        assert!(!k.try_take("a", t0));
        assert!(k.try_take("b", t0));
    }

    #[test]
    fn addresses_share_a_bucket_per_ipv4_address_or_ipv6_64() {
        let key = |s: &str| address_key(s.parse().expect("an address"));
        assert_eq!(key("127.0.0.1"), "127.0.0.1");
        assert_eq!(key("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
    }
}
