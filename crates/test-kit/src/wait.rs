//! Waiting for a readiness condition: poll it until it holds, up to a bound that only turns
//! a hang into a failure (no test asserts how long anything took). The poll interval starts
//! short and grows, so a condition that holds soon is seen soon and a long wait costs little.

use std::future::Future;
use std::time::{Duration, Instant};

/// First poll interval.
const FIRST: Duration = Duration::from_millis(5);
/// Longest poll interval.
const LONGEST: Duration = Duration::from_millis(100);

fn next(interval: Duration) -> Duration {
    (interval * 2).min(LONGEST)
}

/// Polls `f` until it returns `Some`, for at most `timeout`; `None` when it never did.
pub fn try_poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = FIRST;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(interval.min(deadline - now));
        interval = next(interval);
    }
}

/// Polls `f` until it returns `Some` and returns that; panics naming `what` after `timeout`.
pub fn poll_until<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    try_poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for: {what}"))
}

/// Polls `f` until it holds, for at most `timeout`; whether it did.
pub fn try_wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    try_poll_until(timeout, || f().then_some(())).is_some()
}

/// Polls `f` until it holds; panics naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    poll_until(timeout, what, || f().then_some(()))
}

/// [`try_poll_until`] for async tests: awaits `f()` until it returns `Some`, sleeping on the
/// tokio timer in between, for at most `timeout`; `None` when it never did.
pub async fn try_poll_until_async<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut interval = FIRST;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = next(interval);
    }
}

/// [`wait_until`] for async tests: awaits `f()` until it holds, sleeping on the tokio timer
/// in between; panics naming `what` after `timeout`.
pub async fn wait_until_async<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let held = try_poll_until_async(timeout, || {
        let fut = f();
        async move { fut.await.then_some(()) }
    })
    .await;
    assert!(
        held.is_some(),
        "timed out after {timeout:?} waiting for: {what}"
    );
}
