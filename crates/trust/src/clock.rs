//! TUF's `expires` times: `YYYY-MM-DDTHH:MM:SSZ`, UTC.

use time::OffsetDateTime;
use time::format_description::FormatItem;
use time::macros::format_description;

const FORMAT: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// Seconds since the epoch of a TUF time string.
pub fn parse(s: &str) -> Option<i64> {
    let dt = time::PrimitiveDateTime::parse(s, FORMAT).ok()?;
    Some(dt.assume_utc().unix_timestamp())
}

/// The TUF time string of `secs`.
pub fn format(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| secs.to_string())
}

/// Now, in seconds since the epoch.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::parse("2030-01-01T00:00:00Z"), Some(1_893_456_000));
        assert_eq!(super::format(1_893_456_000), "2030-01-01T00:00:00Z");
        assert_eq!(super::parse("2030-01-01T00:00:00+01:00"), None);
        assert_eq!(super::parse("2030-01-01 00:00:00Z"), None);
    }
}
