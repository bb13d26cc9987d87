//! Giving freed memory back to the system after a burst.
//!
//! Allocators keep freed memory for reuse. The binary's allocator, mimalloc (which also serves
//! BoringSSL's C allocations, `override`), purges freed pages only when a thread next
//! allocates, or a second later at the earliest: after a flood of connections the worker
//! threads go quiet and the pages stay resident (a flood of 480 uploads left 130 MB of a 42 MB
//! baseline, for good; glibc's arenas did the same before: 176 MB of 24 MB). [`Trimmer`] asks
//! every [`TRIM_EVERY`]: mimalloc to collect and purge what expired (`mi_collect`), and glibc to
//! return its free pages (`malloc_trim`), so an embedder on the system allocator is covered
//! too. Each call finds its allocator idle or busy and costs microseconds.

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::time::{Duration, Instant};

/// How often freed pages are handed back: well within a minute after a flood ends.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// The background service that calls [`release`] every [`TRIM_EVERY`].
#[derive(Debug, Default)]
pub struct Trimmer;

#[async_trait]
impl BackgroundService for Trimmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TRIM_EVERY) => {}
            }
            let t = Instant::now();
            release();
            log::debug!(target: "gatehouse::memory", "freed memory handed back in {:?}", t.elapsed());
        }
    }
}

/// Asks the allocators to return freed pages to the system now.
pub fn release() {
    crate::ffi::release_freed_memory();
}
