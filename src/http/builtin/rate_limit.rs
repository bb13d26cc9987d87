//! Per-identity request rates (`routes[].rate_limit`): a token bucket per caller and route,
//! the built-in [`HttpFilter`] [`RateLimit`].
//!
//! The caller is its certificate's CN (else its fingerprint) when verified, else its IP, so
//! one identity's flood only ever empties its own bucket. Buckets are exact (a shared sketch
//! like `pingora-limits` over-counts on collisions, which would let a flood limit a
//! neighbour); memory stays bounded because a full bucket is the same as none: idle ones
//! are swept, and past [`MAX_KEYS`] busy callers every further one shares a single overflow
//! bucket (so filling the table buys an attacker no unlimited requests).

use crate::config::RateLimitSettings;
use crate::http::filter::{EdgeAnswer, HttpAction, HttpFilter, Phases, Request};
use prometheus::IntCounter;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets kept per route at most.
pub const MAX_KEYS: usize = 100_000;
/// Buckets held before an idle sweep is worth its scan.
const SWEEP_AT: usize = 4_096;

/// One route's buckets.
pub struct Limiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_key: HashMap<String, Bucket>,
    /// Shared by every caller without a place in `by_key` while it is full.
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// `per_second` tokens refill each second, up to `burst`.
    pub fn new(s: &RateLimitSettings) -> Limiter {
        Limiter {
            per_second: s.requests_per_second,
            burst: f64::from(s.burst),
            buckets: Mutex::default(),
        }
    }

    /// Takes a token for `key` at `now`: `Ok`, or how long until one is there.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let refill = |bucket: &Bucket| {
            let dt = now.saturating_duration_since(bucket.at).as_secs_f64();
            (bucket.tokens + dt * self.per_second).min(self.burst)
        };
        let take = |bucket: &mut Bucket| {
            let tokens = refill(bucket);
            if tokens < 1.0 {
                let wait = (1.0 - tokens) / self.per_second;
                return Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX));
            }
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        };
        if let Some(bucket) = b.by_key.get_mut(key) {
            return take(bucket);
        }
        if b.by_key.len() >= SWEEP_AT
            && b.last_sweep
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            b.by_key.retain(|_, bucket| refill(bucket) < self.burst);
            b.last_sweep = Some(now);
        }
        if b.by_key.len() < MAX_KEYS {
            b.by_key.insert(
                key.to_string(),
                Bucket {
                    tokens: self.burst - 1.0,
                    at: now,
                },
            );
            return Ok(());
        }
        let overflow = b.overflow.get_or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        take(overflow)
    }

    /// How many callers have a bucket now.
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_key
            .len()
    }
}

/// The built-in filter behind `routes[].rate_limit`: 429 with `Retry-After` (Kea-shaped for
/// JSON clients) once a caller's bucket is empty; counted per route.
pub struct RateLimit {
    routes: HashMap<String, (Limiter, IntCounter)>,
}

impl RateLimit {
    /// For the given (route name, its limit, its `gatehouse_http_rate_limited_total` counter).
    pub fn new(
        routes: impl IntoIterator<Item = (String, RateLimitSettings, IntCounter)>,
    ) -> RateLimit {
        RateLimit {
            routes: routes
                .into_iter()
                .map(|(name, s, counter)| (name, (Limiter::new(&s), counter)))
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl HttpFilter for RateLimit {
    fn name(&self) -> &str {
        "rate-limit"
    }

    fn phases(&self) -> Phases {
        Phases::REQUEST
    }

    async fn request(&self, req: &Request<'_>) -> HttpAction {
        let Some((limiter, counter)) = self.routes.get(req.route) else {
            return HttpAction::Continue;
        };
        let key = req.identity.limit_key(req.client);
        match limiter.take(&key, Instant::now()) {
            Ok(()) => HttpAction::Continue,
            Err(wait) => {
                counter.inc();
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let text = format!(
                    "rate limit exceeded for {} on route '{}' (routes[].rate_limit)",
                    req.identity, req.route
                );
                HttpAction::Answer(
                    EdgeAnswer::refusal(req, 429, &text)
                        .with_header("retry-after", secs.to_string()),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rps: f64, burst: u32) -> Limiter {
        Limiter::new(&RateLimitSettings {
            requests_per_second: rps,
            burst,
        })
    }

    #[test]
    fn burst_then_refill_per_key() {
        let l = limiter(2.0, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(l.take("cn:a", t0).is_ok());
        }
        let wait = l.take("cn:a", t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(500) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(
            l.take("cn:b", t0).is_ok(),
            "another caller has its own bucket"
        );
        assert!(
            l.take("cn:a", t0 + Duration::from_millis(500)).is_ok(),
            "refilled"
        );
        assert!(l.take("cn:a", t0 + Duration::from_millis(500)).is_err());
    }

    #[test]
    fn idle_buckets_are_swept_and_memory_is_bounded() {
        let l = limiter(1000.0, 2);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            assert!(l.take(&format!("ip:{i}"), t0).is_ok());
        }
        assert_eq!(l.keys(), SWEEP_AT);
        // A second later every bucket is full again: the next new caller sweeps them.
        assert!(l.take("ip:new", t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(l.keys(), 1);
        let busy = limiter(0.001, 1);
        for i in 0..MAX_KEYS {
            assert!(busy.take(&format!("k{i}"), t0).is_ok());
        }
        // Past the table, callers share one overflow bucket (burst 1): the first passes.
        assert!(busy.take("late-1", t0).is_ok());
        assert!(
            busy.take("late-2", t0).is_err(),
            "untracked callers share a limit"
        );
        assert_eq!(busy.keys(), MAX_KEYS, "no more buckets than MAX_KEYS");
        assert!(busy.take("k0", t0).is_err(), "tracked callers stay limited");
    }
}
