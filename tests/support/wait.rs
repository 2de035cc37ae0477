//! Waiting for something to happen: polling a condition against a
//! deadline instead of sleeping for a guess. (Letting time pass — a TTL,
//! a claim window — is another matter: [`super::Proxy::advance`] moves
//! digue's clock.)

use std::fmt::Debug;
use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is polled.
pub const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` until it returns `Ok`, and returns that value; after
/// `limit`, fails the test saying `what` was expected and what the last
/// probe saw.
pub async fn wait_for<T, S: Debug>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, S>,
) -> T {
    let start = Instant::now();
    loop {
        match probe().await {
            Ok(done) => return done,
            Err(seen) => assert!(
                start.elapsed() < limit,
                "expected within {limit:?}: {what}; last seen: {seen:?}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `ok` until it holds; after `limit`, fails the test saying `what`
/// was expected.
pub async fn wait_until(what: &str, limit: Duration, mut ok: impl AsyncFnMut() -> bool) {
    wait_for(what, limit, async || {
        if ok().await { Ok(()) } else { Err("not yet") }
    })
    .await;
}
