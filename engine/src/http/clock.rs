//! Wall-clock times for the admin API. The core keeps monotonic `Instant`s (it never reads
//! a wall clock); a reply turns one into UTC here: now's wall time minus the time elapsed
//! since the instant.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `at` as milliseconds since the Unix epoch, read against the wall clock now.
pub(crate) fn unix_ms(at: Instant) -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    since_epoch.saturating_sub(Instant::now().saturating_duration_since(at)).as_millis() as u64
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2023-11-14T22:13:20.000Z`).
pub(crate) fn rfc3339(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    let (h, min, s) = (rest / 3600, rest % 3600 / 60, rest % 60);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{:03}Z", unix_ms % 1000)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The JSON pair of an optional instant: RFC 3339 text and Unix seconds (both null when
/// absent).
pub(crate) fn json_pair(at: Option<Instant>) -> (serde_json::Value, serde_json::Value) {
    match at.map(unix_ms) {
        Some(ms) => (rfc3339(ms).into(), (ms / 1000).into()),
        None => (serde_json::Value::Null, serde_json::Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn an_instant_reads_as_a_wall_time_in_the_past() {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let at = Instant::now() - Duration::from_secs(10);
        let ms = unix_ms(at);
        assert!(ms <= wall - 9_000 && ms + 11_000 >= wall, "{ms} vs {wall}");
    }
}
