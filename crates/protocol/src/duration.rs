//! Durations as people write them, one syntax for every flag, setting and API field that takes
//! one: jiff's "friendly" format (`90s`, `30m`, `2h`, `1d`, `1h30m`, `2d 3h`, `1 hour 30
//! minutes`, also ISO 8601 `PT1H`), or a bare number of seconds (`90`). A day is 24 hours and a
//! week 7 days; months and years, whose length varies, are refused, and so are negative and
//! fractional values.

use jiff::{Span, SpanRelativeTo, Unit};

/// The longest duration accepted: 100 years (beyond that, a wait or an expiry is not one).
pub const MAX_SECS: u64 = 100 * 366 * 86_400;

/// What is wrong with a duration; the message names the value and shows the syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad duration {value:?}: {reason} (write e.g. 90s, 30m, 2h, 1d, 1h30m or 2d 3h)")]
pub struct DurationError {
    pub value: String,
    pub reason: String,
}

/// Whole seconds of a duration.
pub fn parse(s: &str) -> Result<u64, DurationError> {
    let t = s.trim();
    let err = |reason: &str| DurationError {
        value: s.to_owned(),
        reason: reason.to_owned(),
    };
    if t.is_empty() {
        return Err(err("it is empty"));
    }
    let secs = if t.bytes().all(|b| b.is_ascii_digit()) {
        t.parse::<u64>()
            .map_err(|_| err("the number is too large"))?
    } else {
        let span: Span = t.parse().map_err(|e: jiff::Error| {
            let text = e.to_string();
            // jiff says what it expected at length; keep its last clause.
            let reason = text.rsplit(": ").next().unwrap_or(&text).to_owned();
            err(&reason)
        })?;
        if span.is_negative() {
            return Err(err("it is negative"));
        }
        if span.get_years() != 0 || span.get_months() != 0 {
            return Err(err("months and years have no fixed length: use days"));
        }
        let total = span
            .total((Unit::Second, SpanRelativeTo::days_are_24_hours()))
            .map_err(|_| err("it is too long"))?;
        if total.fract() != 0.0 {
            return Err(err("it is not a whole number of seconds"));
        }
        if !(0.0..=MAX_SECS as f64).contains(&total) {
            return Err(err("it is longer than 100 years"));
        }
        total as u64
    };
    if secs > MAX_SECS {
        return Err(err("it is longer than 100 years"));
    }
    Ok(secs)
}

/// Seconds in the same syntax, exactly: `5400` as `1h30m`, `0` as `0s`.
pub fn format(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut rest = secs;
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if rest >= n {
            out.push_str(&format!("{}{unit}", rest / n));
            rest %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax_for_every_duration() {
        for (s, want) in [
            ("0", 0),
            ("0s", 0),
            ("90", 90),
            ("90s", 90),
            ("30m", 1800),
            ("1h", 3600),
            ("2h", 7200),
            ("1d", 86_400),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            ("2d 3h", 2 * 86_400 + 3 * 3600),
            ("1 hour 30 minutes", 5400),
            ("1w", 7 * 86_400),
            ("PT1H", 3600),
            (" 15m ", 900),
        ] {
            assert_eq!(parse(s), Ok(want), "{s}");
        }
        for bad in [
            "", "soon", "1x", "h", "-5m", "5m ago", "1mo", "1y", "1.5s", "1h30", "200y",
        ] {
            let e = parse(bad).expect_err(bad);
            let text = e.to_string();
            assert!(text.contains(&format!("{bad:?}")), "{text}");
            assert!(text.contains("30m"), "the syntax is shown: {text}");
        }
        assert!(
            parse("1mo")
                .unwrap_err()
                .to_string()
                .contains("no fixed length")
        );
        assert!(
            parse("101000d")
                .unwrap_err()
                .to_string()
                .contains("100 years")
        );
    }

    #[test]
    fn formatted_durations_read_back() {
        assert_eq!(format(5400), "1h30m");
        assert_eq!(format(0), "0s");
        assert_eq!(format(86_400 + 1), "1d1s");
        for n in [1, 59, 60, 3599, 3601, 93_784, 7 * 86_400] {
            assert_eq!(parse(&format(n)), Ok(n), "{n}");
        }
    }
}
