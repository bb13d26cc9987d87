//! [`Authorizer`]: the call-out for HTTP requests, Kea commands and cluster links.
//!
//! The YAML rules (route `allow`/`deny`, Kea `rules`) decide first, synchronously; an
//! authorizer added with [`crate::Gatehouse::with_authorizer`] is asked next, and both must
//! allow. It may call an external decision service: Gatehouse bounds each call in time, fails
//! closed on an error or a timeout, caches decisions that carry a TTL per identity and target,
//! and re-asks about a live cluster link when its decision's TTL runs out, closing the link if
//! the answer has turned to deny (how Consul re-checks intentions).

use super::Identity;
use crate::metrics::Metrics;
use async_trait::async_trait;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a caller asks to do.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// An HTTP request on a route.
    Http {
        /// Route name.
        route: &'a str,
        /// Request method.
        method: &'a str,
        /// Normalised path.
        path: &'a str,
    },
    /// A Kea command on a route, parsed and allowed by the route's own rules.
    Kea {
        /// Route name.
        route: &'a str,
        /// `command`.
        command: &'a str,
        /// The services it runs on (`ca` when none was named).
        services: &'a [String],
    },
    /// A cluster link, routed by its SNI to an upstream group.
    Link {
        /// The SNI the client sent (`""` when none).
        sni: &'a str,
        /// The upstream group's name.
        upstream: &'a str,
    },
}

impl Target<'_> {
    /// `http`, `kea` or `link`.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Http { .. } => "http",
            Target::Kea { .. } => "kea",
            Target::Link { .. } => "link",
        }
    }
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Http {
                route,
                method,
                path,
            } => write!(f, "http {route} {method} {path}"),
            Target::Kea {
                route,
                command,
                services,
            } => write!(f, "kea {route} {command} {}", services.join(",")),
            Target::Link { sni, upstream } => write!(f, "link {sni} {upstream}"),
        }
    }
}

/// One authorization question.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The listener the caller came in on.
    pub listener: &'a str,
    /// Who asks.
    pub identity: Identity<'a>,
    /// What for.
    pub target: Target<'a>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the caller may go on.
    pub allow: bool,
    /// Why (shown in a refusal, logged, audited).
    pub reason: Cow<'static, str>,
    /// How long the answer may be reused for the same identity and target; for a cluster link,
    /// when to ask again (and close the link if the answer changed). `None`: not cached, and a
    /// link is never re-checked.
    pub ttl: Option<Duration>,
}

impl Decision {
    /// Allowed, not cached.
    pub fn allow() -> Decision {
        Decision {
            allow: true,
            reason: Cow::Borrowed("allowed"),
            ttl: None,
        }
    }

    /// Denied for `reason`, not cached.
    pub fn deny(reason: impl Into<Cow<'static, str>>) -> Decision {
        Decision {
            allow: false,
            reason: reason.into(),
            ttl: None,
        }
    }

    /// The same decision, valid for `ttl`.
    pub fn with_ttl(mut self, ttl: Duration) -> Decision {
        self.ttl = Some(ttl);
        self
    }
}

/// A decision point Gatehouse consults for HTTP requests, Kea commands and cluster links.
///
/// ```
/// use gatehouse::authz::{Authorizer, Decision, Question, Target};
/// use std::time::Duration;
///
/// /// Keeps `shutdown` to the night shift's certificate.
/// struct NightShift;
///
/// #[gatehouse::async_trait]
/// impl Authorizer for NightShift {
///     fn name(&self) -> &str {
///         "night-shift"
///     }
///     async fn authorize(&self, q: &Question<'_>) -> gatehouse::Result<Decision> {
///         Ok(match q.target {
///             Target::Kea { command: "shutdown", .. } if q.identity.cn() != Some("night-ops") => {
///                 Decision::deny("only night-ops may shut Kea down")
///             }
///             _ => Decision::allow().with_ttl(Duration::from_secs(30)),
///         })
///     }
/// }
/// ```
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// A short name for logs and refusals.
    fn name(&self) -> &str;

    /// Decides one question. An `Err` (say, the decision service is down) denies: Gatehouse
    /// fails closed.
    async fn authorize(&self, q: &Question<'_>) -> crate::Result<Decision>;
}

/// Most decisions kept; when full, the cache is emptied (a flood of distinct paths must not
/// grow memory).
const CACHE_MAX: usize = 10_000;

/// An added authorizer with what Gatehouse puts around it: a time bound, fail-closed errors,
/// and the TTL cache.
pub struct Guarded {
    inner: Box<dyn Authorizer>,
    timeout: Duration,
    calls: prometheus::IntCounterVec,
    cache: Mutex<HashMap<String, (Instant, Decision)>>,
}

impl Guarded {
    /// Wraps `inner`; each call may take at most `timeout`; outcomes are counted in `metrics`.
    pub fn new(inner: Box<dyn Authorizer>, timeout: Duration, metrics: &Metrics) -> Guarded {
        Guarded {
            inner,
            timeout,
            calls: metrics.authorizer_calls.clone(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The wrapped authorizer's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// Asks (or answers from the cache). Never fails: errors and timeouts deny.
    pub async fn decide(&self, q: &Question<'_>) -> Decision {
        let key = cache_key(q);
        if let Some(d) = self.cached(&key) {
            self.calls
                .with_label_values(&[q.target.kind(), "cached"])
                .inc();
            return d;
        }
        let d = match tokio::time::timeout(self.timeout, self.inner.authorize(q)).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                self.calls
                    .with_label_values(&[q.target.kind(), "error"])
                    .inc();
                return Decision::deny(format!(
                    "authorizer {} failed ({}); failing closed",
                    self.name(),
                    crate::logsafe::EscText(&e.to_string())
                ));
            }
            Err(_) => {
                self.calls
                    .with_label_values(&[q.target.kind(), "timeout"])
                    .inc();
                return Decision::deny(format!(
                    "authorizer {} did not answer within {:?}; failing closed",
                    self.name(),
                    self.timeout
                ));
            }
        };
        self.calls
            .with_label_values(&[q.target.kind(), if d.allow { "allow" } else { "deny" }])
            .inc();
        if let Some(ttl) = d.ttl {
            let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(key, (Instant::now() + ttl, d.clone()));
        }
        d
    }

    /// Asks again, past the cache: a live link's re-check.
    pub async fn recheck(&self, q: &Question<'_>) -> Decision {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&cache_key(q));
        self.decide(q).await
    }

    fn cached(&self, key: &str) -> Option<Decision> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        match c.get(key) {
            Some((until, d)) if *until > Instant::now() => Some(d.clone()),
            Some(_) => {
                c.remove(key);
                None
            }
            None => None,
        }
    }
}

fn cache_key(q: &Question<'_>) -> String {
    let who = match q.identity.cert() {
        Some(c) => c.fingerprint.as_str(),
        None => "anonymous",
    };
    // A basic-auth user is a caller of its own, with or without a certificate.
    let user = q.identity.user().unwrap_or("");
    format!("{}\u{0}{who}\u{0}{user}\u{0}{}", q.listener, q.target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counting {
        calls: Arc<AtomicUsize>,
        /// The decision, or the error's context.
        answer: Result<Decision, &'static str>,
        delay: Duration,
    }

    #[async_trait]
    impl Authorizer for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        async fn authorize(&self, _: &Question<'_>) -> crate::Result<Decision> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.answer.clone().map_err(crate::Error::extension)
        }
    }

    fn guarded(
        answer: Result<Decision, &'static str>,
        delay: Duration,
    ) -> (Guarded, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let g = Guarded::new(
            Box::new(Counting {
                calls: calls.clone(),
                answer,
                delay,
            }),
            Duration::from_millis(200),
            &Metrics::register(&prometheus::Registry::new()).unwrap(),
        );
        (g, calls)
    }

    const Q: Question<'static> = Question {
        listener: "edge",
        identity: Identity::Anonymous,
        target: Target::Http {
            route: "r",
            method: "GET",
            path: "/",
        },
    };

    #[tokio::test]
    async fn ttl_caches_and_errors_fail_closed() {
        let (g, calls) = guarded(
            Ok(Decision::allow().with_ttl(Duration::from_secs(60))),
            Duration::ZERO,
        );
        assert!(g.decide(&Q).await.allow);
        assert!(g.decide(&Q).await.allow);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "second answer from the cache"
        );
        assert!(g.recheck(&Q).await.allow);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a re-check skips the cache"
        );

        let (g, calls) = guarded(Ok(Decision::deny("no")), Duration::ZERO);
        assert!(!g.decide(&Q).await.allow);
        assert!(!g.decide(&Q).await.allow);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "no TTL, no cache");

        let (g, _) = guarded(Err("connection refused"), Duration::ZERO);
        let d = g.decide(&Q).await;
        assert!(!d.allow && d.reason.contains("failing closed"), "{d:?}");

        let (g, _) = guarded(Ok(Decision::allow()), Duration::from_secs(5));
        let d = g.decide(&Q).await;
        assert!(!d.allow && d.reason.contains("did not answer"), "{d:?}");
    }
}
