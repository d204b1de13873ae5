//! A token bucket for per-connection publish limits.

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
}
