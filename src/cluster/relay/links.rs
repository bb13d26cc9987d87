//! Bookkeeping of open links: anonymous links in total and per address (the anonymous caps),
//! authenticated links per identity and route (`max_links_per_identity`, newest wins).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Open anonymous links, in total and per client IP (entries leave the map at zero, so it
/// holds at most `anonymous_max_clients` addresses).
#[derive(Default)]
pub(super) struct AnonLinks(Mutex<AnonCount>);

#[derive(Default)]
pub(super) struct AnonCount {
    pub(super) total: usize,
    pub(super) per_ip: HashMap<Option<IpAddr>, usize>,
}

pub(super) enum AnonRefusal {
    Total,
    PerIp,
}

impl AnonLinks {
    /// A place for one more anonymous link from `ip`, under `max` in total and `per_ip`.
    pub(super) fn take(
        &self,
        ip: Option<IpAddr>,
        max: usize,
        per_ip: usize,
    ) -> Result<AnonSlot<'_>, AnonRefusal> {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= max {
            return Err(AnonRefusal::Total);
        }
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= per_ip {
            return Err(AnonRefusal::PerIp);
        }
        c.per_ip.insert(ip, from_ip + 1);
        c.total += 1;
        Ok(AnonSlot { links: self, ip })
    }
}

/// One anonymous link's place in [`AnonLinks`]; released on drop.
pub(super) struct AnonSlot<'a> {
    pub(super) links: &'a AnonLinks,
    pub(super) ip: Option<IpAddr>,
}

impl Drop for AnonSlot<'_> {
    fn drop(&mut self) {
        let mut c = self.links.0.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

/// A live link's id and the signal that closes it.
pub(super) type LiveLink = (u64, Arc<Notify>);

/// Open authenticated links per (CN, route), oldest first, for `max_links_per_identity`.
#[derive(Default)]
pub(super) struct LiveLinks {
    pub(super) by_cn: Mutex<HashMap<String, VecDeque<LiveLink>>>,
    pub(super) next: AtomicU64,
}

impl LiveLinks {
    /// Registers a link of `cn`; the oldest ones beyond `max` are told to close.
    pub(super) fn open(&self, cn: &str, max: usize) -> LiveSlot<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        let mut m = self.by_cn.lock().unwrap_or_else(|p| p.into_inner());
        let links = m.entry(cn.to_string()).or_default();
        links.push_back((id, close.clone()));
        let mut replaced = 0;
        while links.len() > max.max(1) {
            if let Some((_, old)) = links.pop_front() {
                // A stored permit: the old link sees it even if it is not waiting yet.
                old.notify_one();
                replaced += 1;
            }
        }
        LiveSlot {
            links: self,
            cn: cn.to_string(),
            id,
            close,
            replaced,
        }
    }
}

/// One authenticated link's place in [`LiveLinks`]; released on drop.
pub(super) struct LiveSlot<'a> {
    pub(super) links: &'a LiveLinks,
    pub(super) cn: String,
    pub(super) id: u64,
    pub(super) close: Arc<Notify>,
    /// How many older links this one displaced.
    pub(super) replaced: u64,
}

impl Drop for LiveSlot<'_> {
    fn drop(&mut self) {
        let mut m = self.links.by_cn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(links) = m.get_mut(&self.cn) {
            links.retain(|(id, _)| *id != self.id);
            if links.is_empty() {
                m.remove(&self.cn);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_slots() {
        let links = AnonLinks::default();
        let (a, b) = (
            Some(IpAddr::from([10, 0, 0, 1])),
            Some(IpAddr::from([10, 0, 0, 2])),
        );
        let a1 = links.take(a, 3, 2).ok().unwrap();
        let _a2 = links.take(a, 3, 2).ok().unwrap();
        assert!(matches!(links.take(a, 3, 2), Err(AnonRefusal::PerIp)));
        let _b1 = links.take(b, 3, 2).ok().unwrap();
        assert!(matches!(links.take(b, 3, 2), Err(AnonRefusal::Total)));
        drop(a1);
        assert!(links.take(a, 3, 2).is_ok());
        let c = links.0.lock().unwrap();
        assert_eq!(
            (c.total, c.per_ip.len()),
            (2, 2),
            "released slots leave the map"
        );
    }
}
