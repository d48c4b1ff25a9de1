//! How long a test waits for something before it fails: one setting for every test.
//!
//! Tests never sleep to synchronise: they wait for a condition ([`eventually`]) or a
//! future ([`within`]), failing with what they waited for once [`patience`] has passed.
//! `MERIDIAN_TEST_PATIENCE_S` sets the patience (default 30 s) for slow machines.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// The patience when `MERIDIAN_TEST_PATIENCE_S` is not set.
const DEFAULT: Duration = Duration::from_secs(30);
/// How often [`eventually`] looks again.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// How long any awaited condition may take before the test fails.
pub fn patience() -> Duration {
    static PATIENCE: OnceLock<Duration> = OnceLock::new();
    *PATIENCE.get_or_init(|| {
        std::env::var("MERIDIAN_TEST_PATIENCE_S")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(DEFAULT, Duration::from_secs)
    })
}

/// Waits until `condition` holds, looking every 20 ms, failing the test (with `what`)
/// after [`patience`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience();
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {:?} waiting until {what}",
            patience()
        );
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

/// Awaits `future`, failing the test (with `what`) after [`patience`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(patience(), future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {:?} waiting for {what}", patience()),
    }
}
