//! The one backoff: exponential from a base, capped, with a little jitter. The work
//! queue's per-key retries, the LXD events reconnect, the Kubernetes watches and the
//! status writer all wait by it.
//!
//! `BackoffConfig::delay` is pure (the random draw comes in as a parameter, so the delay
//! sequence is exact in tests); `Backoff` is the same sequence for one retry loop.
//! Imports nothing of the crate: it sits at the bottom.

use std::time::Duration;

/// Largest share of the delay added as jitter: the delay is multiplied by a factor drawn in
/// `[1.0, 1.0 + JITTER)`, so that keys that failed together do not all retry in the same
/// instant.
pub const JITTER: f64 = 0.1;

/// How long a failing key waits before its next try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub base: Duration,
    /// No retry waits longer than this, jitter included.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(5 * 60),
        }
    }
}

impl BackoffConfig {
    /// The delay before retry `failures` (failures so far, the first failure is 1):
    /// `base * 2^(failures - 1)`, jittered, never above `cap`. `0` is treated as `1`.
    pub fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        self.delay_with_draw(failures, rng.f64())
    }

    /// As [`BackoffConfig::delay`], with the random draw given: `draw` in `[0.0, 1.0)` picks
    /// the jitter factor `1.0 + JITTER * draw`. A draw outside that range is clamped.
    pub fn delay_with_draw(&self, failures: u32, draw: f64) -> Duration {
        let doublings = failures.saturating_sub(1);
        let exponential = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |delay| delay.min(self.cap));
        let draw = if draw.is_finite() {
            draw.clamp(0.0, 1.0)
        } else {
            0.0
        };
        // Jitter is added rather than multiplied in, so a zero draw gives the exact
        // exponential delay (no float round trip) and nothing here can panic on overflow.
        let jitter = Duration::try_from_secs_f64(exponential.as_secs_f64() * JITTER * draw)
            .unwrap_or(Duration::ZERO);
        exponential.saturating_add(jitter).min(self.cap)
    }
}

/// One retry loop's delays: the `config`'s sequence, counting its own attempts;
/// `reset` after a success starts over from the base.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Backoff {
        Backoff::with_rng(config, fastrand::Rng::new())
    }

    /// A seeded generator makes the sequence reproducible in tests.
    pub fn with_rng(config: BackoffConfig, rng: fastrand::Rng) -> Backoff {
        Backoff {
            config,
            failures: 0,
            rng,
        }
    }

    /// The delay before the next try, counting one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.config.delay(self.failures, &mut self.rng)
    }

    /// The delay the next failure will wait, before jitter (for log lines).
    pub fn peek(&self) -> Duration {
        self.config
            .delay_with_draw(self.failures.saturating_add(1), 0.0)
    }

    /// Waits the next delay (tokio's clock, so a paused test clock drives it).
    pub async fn wait(&mut self) {
        let delay = self.next_delay();
        tokio::time::sleep(delay).await;
    }

    /// A success: the next failure waits the base again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_base_and_stops_at_cap() {
        let config = BackoffConfig::default();
        let delays: Vec<Duration> = (1..=12).map(|n| config.delay_with_draw(n, 0.0)).collect();
        assert_eq!(
            delays,
            vec![
                ms(500),
                ms(1_000),
                ms(2_000),
                ms(4_000),
                ms(8_000),
                ms(16_000),
                ms(32_000),
                ms(64_000),
                ms(128_000),
                ms(256_000),
                ms(300_000),
                ms(300_000),
            ]
        );
    }

    #[test]
    fn backoff_jitter_stays_within_range_and_never_exceeds_cap() {
        let config = BackoffConfig::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for n in 1..=20 {
            let exact = config.delay_with_draw(n, 0.0);
            for _ in 0..200 {
                let delay = config.delay(n, &mut rng);
                assert!(delay >= exact, "retry {n}: {delay:?} below {exact:?}");
                assert!(delay <= config.cap, "retry {n}: {delay:?} above the cap");
                if exact < config.cap {
                    assert!(
                        delay.as_secs_f64() < exact.as_secs_f64() * (1.0 + JITTER),
                        "retry {n}: {delay:?} has more than {JITTER} jitter over {exact:?}"
                    );
                }
            }
        }
        // The largest possible draw still stays inside the jitter band.
        assert!(config.delay_with_draw(1, 0.999_999) < ms(550));
        assert_eq!(config.delay_with_draw(1, 0.5), ms(525));
    }

    #[test]
    fn backoff_is_reproducible_from_a_seed() {
        let config = BackoffConfig::default();
        let mut a = fastrand::Rng::with_seed(42);
        let mut b = fastrand::Rng::with_seed(42);
        for n in 1..=10 {
            assert_eq!(config.delay(n, &mut a), config.delay(n, &mut b));
        }
    }

    #[test]
    fn backoff_does_not_overflow_for_large_failure_counts() {
        let config = BackoffConfig::default();
        for n in [32, 33, 64, 1_000, u32::MAX] {
            assert_eq!(config.delay_with_draw(n, 0.99), config.cap);
        }
        let unbounded = BackoffConfig {
            base: Duration::MAX,
            cap: Duration::MAX,
        };
        assert_eq!(unbounded.delay_with_draw(1_000, 0.99), Duration::MAX);
        assert_eq!(unbounded.delay_with_draw(1, 0.99), Duration::MAX);
    }

    #[test]
    fn backoff_treats_zero_failures_and_odd_draws_as_the_first_retry() {
        let config = BackoffConfig::default();
        assert_eq!(config.delay_with_draw(0, 0.0), ms(500));
        assert_eq!(config.delay_with_draw(1, f64::NAN), ms(500));
        assert_eq!(config.delay_with_draw(1, -3.0), ms(500));
        assert_eq!(config.delay_with_draw(1, 7.0), ms(550));
    }

    #[test]
    fn backoff_base_above_cap_is_capped() {
        let config = BackoffConfig {
            base: ms(10_000),
            cap: ms(1_000),
        };
        assert_eq!(config.delay_with_draw(1, 0.5), ms(1_000));
    }

    #[test]
    fn a_retry_loop_follows_the_config_and_starts_over_on_reset() {
        let config = BackoffConfig {
            base: ms(100),
            cap: ms(1_000),
        };
        let mut b = Backoff::with_rng(config, fastrand::Rng::with_seed(3));
        let mut rng = fastrand::Rng::with_seed(3);
        let expected: Vec<Duration> = (1..=6).map(|n| config.delay(n, &mut rng)).collect();
        let got: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(got, expected);
        assert_eq!(b.peek(), ms(1_000));
        b.reset();
        assert_eq!(b.peek(), ms(100));
        assert!(b.next_delay() < ms(111));
    }
}
