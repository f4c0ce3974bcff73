//! Wall-clock time on tokio's clock.
//!
//! Controllers write timestamps (conditions, events, leases) and compare them with the
//! present. [`now`] is the system time when first called, advanced by tokio's clock since
//! then, so under paused time (`#[tokio::test(start_paused = true)]`) timestamps advance
//! with `tokio::time::advance` as timers do.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use keelson_core::k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use keelson_core::k8s_openapi::jiff::{SignedDuration, Timestamp};

static ANCHOR: OnceLock<(Timestamp, tokio::time::Instant)> = OnceLock::new();

/// The current time (see the [module docs](self)).
pub fn now() -> Timestamp {
    let (wall, at) = *ANCHOR.get_or_init(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let wall = Timestamp::from_nanosecond(i128::try_from(secs).unwrap_or(0))
            .unwrap_or(Timestamp::UNIX_EPOCH);
        (wall, tokio::time::Instant::now())
    });
    let elapsed = tokio::time::Instant::now().saturating_duration_since(at);
    wall.checked_add(SignedDuration::try_from(elapsed).unwrap_or(SignedDuration::ZERO))
        .unwrap_or(wall)
}

/// [`now`] at second precision, as a `Time`.
pub fn now_time() -> Time {
    let t = now();
    Time(Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// [`now`] at microsecond precision, as a `MicroTime`.
pub fn now_micro() -> MicroTime {
    let t = now();
    MicroTime(Timestamp::from_microsecond(t.as_microsecond()).unwrap_or(t))
}

/// Seconds from `t` to now (negative if `t` is in the future).
pub fn seconds_since(t: &Time) -> i64 {
    now().as_second() - t.0.as_second()
}
