//! Background work on a period, stopped by the shared shutdown signal.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `tick` now and then every `period` until `shutdown` is cancelled; the handle ends
/// once it has stopped. A tick that overruns the period skips the ticks it missed rather than
/// running them back to back, and a tick is never cut off by the shutdown mid-way.
pub fn spawn_every<F, Fut>(
    period: Duration,
    shutdown: CancellationToken,
    mut tick: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut timer = tokio::time::interval(period);
        timer.set_missed_tick_behavior(MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = timer.tick() => tick().await,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_on_its_period_and_stops_on_shutdown() {
        let count = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let task = {
            let count = count.clone();
            spawn_every(Duration::from_secs(10), shutdown.clone(), move || {
                count.fetch_add(1, Ordering::SeqCst);
                std::future::ready(())
            })
        };
        // The first tick is at once, then one each period (the clock is paused: it advances
        // only when every task waits).
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert_eq!(count.load(Ordering::SeqCst), 3);
        shutdown.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            3,
            "it ticked after the shutdown"
        );
    }
}
