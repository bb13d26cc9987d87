//! Waiting on conditions instead of sleeping: a port that listens, a predicate that holds, a
//! value that shows up, each with a deadline and a failure that names what never happened.
//!
//! A fixed sleep is either too short on a loaded machine (a flaky test) or longer than needed
//! everywhere else; these look again every [`POLL`] and return as soon as the condition holds.
//! The blocking forms are for code that runs outside the runtime (process helpers, the Kea and
//! Icinga launchers); async tests use the async ones, which leave the runtime's threads to the
//! in-process origins, sinks and Gatehouses the test is waiting on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

/// How often a wait looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// The first value `f` returns within `within`, looking every [`POLL`] (blocking); `None` when
/// it returned none in time.
pub fn first_within<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// The first value `f` returns (blocking); panics naming `what`, with `explain()` (what is worth
/// reading then), once `within` has passed.
pub fn wait_for<T>(
    what: &str,
    within: Duration,
    f: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    first_within(within, f).unwrap_or_else(|| {
        panic!(
            "timed out after {within:?} waiting for {what}\n{}",
            explain()
        )
    })
}

/// Blocks until `f` holds; panics naming `what` once `within` has passed.
pub fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, within, || f().then_some(()), String::new)
}

/// The first value the future `f` makes yields within `within`, trying every `every`; `None`
/// when none did in time.
pub async fn first_within_async<T, F, Fut>(within: Duration, every: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// The first value the future `f` makes yields, trying every `every`; panics naming `what`,
/// with `explain()`, once `within` has passed.
pub async fn eventually_some<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    f: F,
    explain: impl Fn() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match first_within_async(within, every, f).await {
        Some(v) => v,
        None => panic!(
            "timed out after {within:?} waiting for {what}\n{}",
            explain()
        ),
    }
}

/// Whether `f` held within `within` (async): for a caller that words its own failure.
pub async fn holds_within(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    first_within_async(within, POLL, || std::future::ready(f().then_some(())))
        .await
        .is_some()
}

/// Waits until `f` holds (async); panics naming `what`, with `explain()`, once `within` has
/// passed.
pub async fn until_explained(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> bool,
    explain: impl Fn() -> String,
) {
    let ready = || std::future::ready(f().then_some(()));
    eventually_some(what, within, POLL, ready, explain).await
}

/// Waits until `f` holds (async); panics naming `what` once `within` has passed.
pub async fn until(what: &str, within: Duration, f: impl FnMut() -> bool) {
    until_explained(what, within, f, String::new).await
}

/// Waits until `a` accepts connections; panics with `name`'s log (`log`) if the process exits
/// first or `deadline` passes.
pub fn wait_listening(name: &str, child: &mut Child, a: SocketAddr, deadline: Instant, log: &Path) {
    let ended = || {
        let status = child.try_wait().ok().flatten()?;
        Some(format!("exited with {status}"))
    };
    wait_until_listening(name, a, deadline, ended, Some(log));
}

/// Waits until `a` accepts connections; panics, with `log` if there is one, when `ended`
/// says why it never will or `deadline` passes.
pub(super) fn wait_until_listening(
    name: &str,
    a: SocketAddr,
    deadline: Instant,
    mut ended: impl FnMut() -> Option<String>,
    log: Option<&Path>,
) {
    let log_text = || {
        log.map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default()
    };
    let listening = || {
        if std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok() {
            return Some(());
        }
        if let Some(story) = ended() {
            panic!("{name} {story}:\n{}", log_text());
        }
        None
    };
    let within = deadline.saturating_duration_since(Instant::now());
    wait_for(
        &format!("{name} to listen on {a}"),
        within,
        listening,
        log_text,
    );
}
