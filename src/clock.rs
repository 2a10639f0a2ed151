//! Time as the relay stores it (Unix seconds and milliseconds, which survive a restart) and
//! where such a time falls on Tokio's monotonic clock (which timers, and tests with a paused
//! clock, use).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}

/// A Unix time in seconds as RFC 3339 (UTC, whole seconds): how `/health`, the status page
/// and the CLI write times for people.
pub fn rfc3339(unix_secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix_secs)).to_string()
}

/// The instant at which a Unix time in milliseconds falls (clamped to the start of the
/// monotonic clock when it lies further back).
pub fn instant_at_unix_ms(at_ms: u64) -> Instant {
    let (now, now_ms) = (Instant::now(), unix_ms());
    if at_ms >= now_ms {
        now + Duration::from_millis(at_ms - now_ms)
    } else {
        now.checked_sub(Duration::from_millis(now_ms - at_ms))
            .unwrap_or(now)
    }
}

/// The Unix time in milliseconds at which an instant falls.
pub fn unix_ms_at(at: Instant) -> u64 {
    let (now, now_ms) = (Instant::now(), unix_ms());
    if at >= now {
        now_ms + at.duration_since(now).as_millis() as u64
    } else {
        now_ms.saturating_sub(now.duration_since(at).as_millis() as u64)
    }
}
