//! The authz-server's wall clock: token times, `revoked_at`, key schedules, heartbeats. It
//! is the clock every service reads ([`revocation::since_epoch`]), plus a test-only offset.
//!
//! Nothing that bounds staleness reads it across machines: the heartbeat measures how far
//! publication lags on the database's clock alone ([`crate::store::Store::publish_lag_ms`]).
//! Built with the `test-clock` feature (the system tests turn it on), the clock can be
//! shifted by `REVGATE_TEST_CLOCK_OFFSET_MS` to play a replica whose clock is wrong; a build
//! without the feature has no such knob.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    let real = revocation::since_epoch().as_millis() as u64;
    real.saturating_add_signed(offset_ms())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    now_ms() / 1000
}

#[cfg(feature = "test-clock")]
fn offset_ms() -> i64 {
    static OFFSET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *OFFSET.get_or_init(|| {
        let offset = std::env::var("REVGATE_TEST_CLOCK_OFFSET_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if offset != 0 {
            tracing::warn!(
                offset_ms = offset,
                "test clock: this server's clock is shifted"
            );
        }
        offset
    })
}

#[cfg(not(feature = "test-clock"))]
fn offset_ms() -> i64 {
    0
}
