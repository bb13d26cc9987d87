//! One issuer's keys: fetched when first needed, refreshed in the background once they are
//! `refresh_interval` old, fetched again at once for an unknown `kid` — at most once per
//! `min_refresh_interval`, whoever asks — and used for at most `max_stale` after the last
//! fetch that worked; past that the issuer's tokens are refused until a fetch works again.

use super::fetch::Fetcher;
use super::jws::KeySet;
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where the keys come from.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    /// `{issuer}/.well-known/openid-configuration`, then its `jwks_uri`.
    Discovery(String),
    /// A JWK set URL.
    Url(String),
    /// A JWK set file, read again on each refresh.
    File(PathBuf),
}

/// When keys are fetched.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub refresh_interval: Duration,
    pub min_refresh_interval: Duration,
    pub max_stale: Duration,
}

struct Loaded {
    set: Arc<KeySet>,
    at: Instant,
}

/// The cache of one issuer's keys.
pub(crate) struct KeyCache {
    issuer: Arc<str>,
    source: Source,
    fetcher: Fetcher,
    timing: Timing,
    loaded: ArcSwapOption<Loaded>,
    /// When the last fetch ended (successful or not): the rate limit.
    last_attempt: Mutex<Option<Instant>>,
    /// A background refresh is under way (one at a time, not one per request).
    refreshing: AtomicBool,
    /// One fetch at a time; those who need keys now wait for it.
    fetching: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
}

impl KeyCache {
    pub fn new(
        issuer: Arc<str>,
        source: Source,
        fetcher: Fetcher,
        timing: Timing,
        metrics: Arc<Metrics>,
    ) -> KeyCache {
        KeyCache {
            issuer,
            source,
            fetcher,
            timing,
            loaded: ArcSwapOption::empty(),
            last_attempt: Mutex::new(None),
            refreshing: AtomicBool::new(false),
            fetching: tokio::sync::Mutex::new(()),
            metrics,
        }
    }

    /// The keys to verify with now: fetched first if there are none (or only keys past
    /// `max_stale`), refreshed behind the caller's back once `refresh_interval` old.
    /// `None`: no usable keys (fail closed).
    pub async fn current(self: &Arc<Self>) -> Option<Arc<KeySet>> {
        let now = Instant::now();
        if let Some(l) = self.loaded.load_full() {
            let age = now.duration_since(l.at);
            if age < self.timing.refresh_interval {
                return Some(l.set.clone());
            }
            if age < self.timing.max_stale {
                if self.may_fetch() && !self.refreshing.swap(true, Ordering::AcqRel) {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.refresh(None).await;
                        me.refreshing.store(false, Ordering::Release);
                    });
                }
                return Some(l.set.clone());
            }
        }
        self.refresh(None).await;
        self.usable()
    }

    /// After a token named a `kid` that `seen` lacks: one fetch (if the rate limit allows),
    /// then the keys as they are.
    pub async fn after_unknown_kid(&self, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        self.refresh(Some(seen)).await;
        self.usable()
    }

    /// Whether the rate limit lets a fetch start now.
    fn may_fetch(&self) -> bool {
        self.last_attempt
            .lock()
            .is_ok_and(|last| last.is_none_or(|t| t.elapsed() >= self.timing.min_refresh_interval))
    }

    fn usable(&self) -> Option<Arc<KeySet>> {
        self.loaded
            .load_full()
            .filter(|l| l.at.elapsed() < self.timing.max_stale)
            .map(|l| l.set.clone())
    }

    /// Fetches the keys unless another fetch replaced them meanwhile (`seen`: the set the
    /// caller found lacking; else the set held when called), or the last fetch ended under
    /// `min_refresh_interval` ago.
    async fn refresh(&self, seen: Option<&Arc<KeySet>>) {
        let set = || self.loaded.load_full().map(|l| l.set.clone());
        let seen = seen.cloned().or_else(set);
        let _one = self.fetching.lock().await;
        let same = match (set(), &seen) {
            (Some(now), Some(seen)) => Arc::ptr_eq(&now, seen),
            (now, _) => now.is_none(),
        };
        if !same {
            return;
        }
        if !self.may_fetch() {
            return;
        }
        let result = self.fetch().await.and_then(|set| {
            // A set with nothing usable in it is a failure: the keys held stay.
            if set.keys.is_empty() {
                Err(format!(
                    "no usable key in the JWK set ({})",
                    set.skipped.join("; ")
                ))
            } else {
                Ok(set)
            }
        });
        // From the end of a fetch: one that takes longer than the interval does not let the
        // requests queued behind it start another at once.
        if let Ok(mut last) = self.last_attempt.lock() {
            *last = Some(Instant::now());
        }
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .bearer_key_fetches
            .with_label_values(&[&self.issuer, label])
            .inc();
        match result {
            Ok(set) => {
                for s in &set.skipped {
                    log::info!(target: "gatehouse::bearer", "issuer {}: key skipped: {s}", self.issuer);
                }
                log::debug!(target: "gatehouse::bearer", "issuer {}: {} keys", self.issuer, set.keys.len());
                self.loaded.store(Some(Arc::new(Loaded {
                    set: Arc::new(set),
                    at: Instant::now(),
                })));
            }
            Err(e) => {
                let age = self.loaded.load().as_ref().map(|l| l.at.elapsed());
                let keeps = match age {
                    Some(a) if a < self.timing.max_stale => format!(
                        "keys fetched {}s ago stay in use for {}s more",
                        a.as_secs(),
                        (self.timing.max_stale - a).as_secs()
                    ),
                    _ => "its tokens are refused until a fetch works".into(),
                };
                log::warn!(target: "gatehouse::bearer", "issuer {}: cannot fetch keys: {e}; {keeps}", self.issuer);
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, String> {
        let body = match &self.source {
            Source::File(p) => {
                return tokio::fs::read(p)
                    .await
                    .map_err(|e| format!("{}: {e}", p.display()))
                    .and_then(|b| KeySet::parse(&b).map_err(|e| format!("{}: {e}", p.display())))
            }
            Source::Url(u) => self.fetcher.get(u).await.map_err(|e| format!("{u}: {e}"))?,
            Source::Discovery(issuer) => {
                let url = discovery_url(issuer);
                let doc = self
                    .fetcher
                    .get(&url)
                    .await
                    .map_err(|e| format!("{url}: {e}"))?;
                let jwks_uri = jwks_uri(&doc, issuer).map_err(|e| format!("{url}: {e}"))?;
                self.fetcher
                    .get(&jwks_uri)
                    .await
                    .map_err(|e| format!("{jwks_uri}: {e}"))?
            }
        };
        KeySet::parse(&body)
    }
}

/// OpenID Connect Discovery 1.0 §4: the path appended to the issuer.
pub(crate) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// The `jwks_uri` of a discovery document, whose `issuer` must be the one asked for (§4.3).
fn jwks_uri(doc: &[u8], issuer: &str) -> Result<String, String> {
    let v: serde_json::Value = serde_json::from_slice(doc).map_err(|e| format!("not JSON: {e}"))?;
    let said = v.get("issuer").and_then(|i| i.as_str());
    if said != Some(issuer) {
        return Err(format!(
            "the document names issuer {:?}, not {issuer:?}",
            said.unwrap_or("(none)")
        ));
    }
    v.get("jwks_uri")
        .and_then(|u| u.as_str())
        .map(str::to_string)
        .ok_or_else(|| "no jwks_uri".to_string())
}
