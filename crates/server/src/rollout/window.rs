//! Maintenance windows: `Mon-Fri 18:00-06:00` in a time zone. A span whose end is not after its
//! start crosses midnight and belongs to the day it starts: `Fri 22:00-02:00` is Friday 22:00 to
//! Saturday 02:00. Wall-clock times in the zone, so a window stays 18:00 local across daylight
//! saving changes. Pure: every question takes the time (Unix seconds) as an argument.

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::{AmbiguousOffset, TimeZone};

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// One span: on these days (Monday first), from `start` to `end` minutes after midnight; `end`
/// at or before `start` ends the next day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    days: [bool; 7],
    start: u16,
    end: u16,
}

#[derive(Clone, Debug)]
pub struct Window {
    text: String,
    tz_name: String,
    tz: TimeZone,
    spans: Vec<Span>,
}

fn day(s: &str) -> Option<usize> {
    let l = s.to_ascii_lowercase();
    DAYS.iter()
        .position(|d| *d == l)
        .or_else(|| FULL.iter().position(|d| *d == l))
}

fn days(spec: &str) -> Result<[bool; 7], String> {
    let mut out = [false; 7];
    if matches!(spec.to_ascii_lowercase().as_str(), "daily" | "*") {
        return Ok([true; 7]);
    }
    for part in spec.split(',') {
        let part = part.trim();
        let bad = || {
            format!(
                "{part:?} is not a day or a range of days (Mon, Tue, ... Sun; Mon-Fri; Sat,Sun; \
                 daily)"
            )
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?);
                // a range may wrap over the week's end: Fri-Mon
                let mut d = a;
                loop {
                    out[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => out[day(part).ok_or_else(bad)?] = true,
        }
    }
    Ok(out)
}

fn minutes(s: &str, end: bool) -> Result<u16, String> {
    let bad = || format!("{s:?} is not a time of day (HH:MM, 00:00 to 24:00)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !end)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn span(s: &str) -> Result<Span, String> {
    let s = s.trim();
    let (d, t) = match s.rsplit_once(char::is_whitespace) {
        Some((d, t)) => (days(d.trim())?, t),
        None => ([true; 7], s),
    };
    let (a, b) = t
        .split_once('-')
        .ok_or_else(|| format!("{t:?} is not a span of time (HH:MM-HH:MM)"))?;
    let (start, end) = (minutes(a, false)?, minutes(b, true)?);
    if start == end {
        return Err(format!(
            "{t:?} is empty: a span ends after it starts (or, ending earlier, the next day)"
        ));
    }
    Ok(Span {
        days: d,
        start,
        end,
    })
}

impl Window {
    /// Parses `text` (spans separated by `;`, each `DAYS HH:MM-HH:MM` or `HH:MM-HH:MM` for every
    /// day) in the time zone `tz` (an IANA name; UTC when absent).
    pub fn parse(text: &str, tz: Option<&str>) -> Result<Self, String> {
        let tz_name = tz.unwrap_or("UTC").trim().to_owned();
        let zone = TimeZone::get(&tz_name).map_err(|e| {
            format!("unknown time zone {tz_name:?} (an IANA name such as Europe/Madrid): {e}")
        })?;
        let mut spans = Vec::new();
        for part in text.split(';').filter(|p| !p.trim().is_empty()) {
            spans.push(span(part).map_err(|e| format!("bad window {text:?}: {e}"))?);
        }
        if spans.is_empty() {
            return Err(format!(
                "bad window {text:?}: expected DAYS HH:MM-HH:MM, e.g. \"Mon-Fri 18:00-06:00\""
            ));
        }
        Ok(Self {
            text: text.trim().to_owned(),
            tz_name,
            tz: zone,
            spans,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn tz_name(&self) -> &str {
        &self.tz_name
    }

    /// Local weekday (Monday 0) and minute of the day at Unix time `t`.
    fn local(&self, t: i64) -> Option<(Date, usize, u16)> {
        let z = Timestamp::from_second(t)
            .ok()?
            .to_zoned_datetime(self.tz.clone());
        let wd = z.weekday().to_monday_zero_offset() as usize;
        Some((z.date(), wd, z.hour() as u16 * 60 + z.minute() as u16))
    }

    /// Whether the window is open at Unix time `t`.
    pub fn contains(&self, t: i64) -> bool {
        let Some((_, wd, m)) = self.local(t) else {
            return false;
        };
        let yesterday = (wd + 6) % 7;
        self.spans.iter().any(|s| {
            if s.start < s.end {
                s.days[wd] && s.start <= m && m < s.end
            } else {
                // crossing midnight: the evening of a listed day, or the morning after it
                (s.days[wd] && m >= s.start) || (s.days[yesterday] && m < s.end)
            }
        })
    }

    /// When the window is open next at or after `t`: `t` itself when it is open now.
    pub fn next_open(&self, t: i64) -> Option<i64> {
        if self.contains(t) {
            return Some(t);
        }
        let (mut date, _, _) = self.local(t)?;
        let mut best: Option<i64> = None;
        // Two weeks and a day: a weekly span that a daylight saving change skips opens a week
        // later.
        for _ in 0..15 {
            let wd = date.weekday().to_monday_zero_offset() as usize;
            for s in self.spans.iter().filter(|s| s.days[wd]) {
                // A span whose whole time was skipped that day (a daylight saving change) does
                // not open then.
                let at = self.start_at(date, s.start);
                if let Some(at) = at.filter(|a| *a > t && self.contains(*a)) {
                    best = Some(best.map_or(at, |b| b.min(at)));
                }
            }
            if best.is_some() {
                return best;
            }
            date = date.tomorrow().ok()?;
        }
        best
    }

    /// The instant the local time `minute` of `date` begins: when a daylight saving change
    /// skips that time, the end of the gap (the first instant after it).
    fn start_at(&self, date: Date, minute: u16) -> Option<i64> {
        let local = date.at((minute / 60) as i8, (minute % 60) as i8, 0, 0);
        let amb = self.tz.to_ambiguous_timestamp(local);
        let gap = matches!(amb.offset(), AmbiguousOffset::Gap { .. });
        let later = amb.later().ok()?;
        if !gap {
            return amb.compatible().ok().map(|ts| ts.as_second());
        }
        // `later` lies at or after the transition that opened the gap.
        let just_after = Timestamp::from_second(later.as_second().checked_add(1)?).ok()?;
        self.tz
            .preceding(just_after)
            .next()
            .map(|tr| tr.timestamp().as_second())
    }

    /// A local time for people: `2026-11-20 18:00 Europe/Madrid`.
    pub fn local_text(&self, t: i64) -> String {
        match Timestamp::from_second(t) {
            Ok(ts) => format!(
                "{} {}",
                ts.to_zoned_datetime(self.tz.clone())
                    .strftime("%Y-%m-%d %H:%M"),
                self.tz_name
            ),
            Err(_) => t.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix seconds of a local time in a zone.
    fn at(tz: &str, y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
        jiff::civil::date(y, mo, d)
            .at(h, mi, 0, 0)
            .to_zoned_datetime(TimeZone::get(tz).unwrap())
            .unwrap()
            .timestamp()
            .as_second()
    }

    #[test]
    fn an_evening_window_crossing_midnight_belongs_to_the_day_it_starts() {
        let w = Window::parse("Mon-Fri 18:00-06:00", Some("Europe/Madrid")).unwrap();
        let m = |d, h, mi| at("Europe/Madrid", 2026, 11, d, h, mi);
        // 2026-11-16 is a Monday
        assert!(!w.contains(m(16, 17, 59)));
        assert!(w.contains(m(16, 18, 0)));
        assert!(
            w.contains(m(17, 5, 59)),
            "Tuesday morning belongs to Monday"
        );
        assert!(!w.contains(m(17, 6, 0)));
        // Monday early morning belongs to Sunday, which is not listed
        assert!(!w.contains(m(16, 2, 0)));
        // Friday evening runs into Saturday morning; Saturday evening is closed
        assert!(w.contains(m(20, 23, 0)));
        assert!(w.contains(m(21, 5, 0)));
        assert!(!w.contains(m(21, 18, 30)));
        assert!(!w.contains(m(22, 23, 0)));
        // the next opening from Saturday noon is Monday 18:00
        assert_eq!(w.next_open(m(21, 12, 0)), Some(m(23, 18, 0)));
        assert_eq!(w.next_open(m(16, 19, 0)), Some(m(16, 19, 0)));
        assert_eq!(w.local_text(m(23, 18, 0)), "2026-11-23 18:00 Europe/Madrid");
    }

    #[test]
    fn the_time_zone_moves_the_window_and_daylight_saving_keeps_local_hours() {
        let madrid = Window::parse("Mon-Fri 18:00-06:00", Some("Europe/Madrid")).unwrap();
        let utc = Window::parse("Mon-Fri 18:00-06:00", None).unwrap();
        assert_eq!(utc.tz_name(), "UTC");
        // Monday 2026-11-16 17:30 UTC is 18:30 in Madrid (CET, UTC+1)
        let t = at("UTC", 2026, 11, 16, 17, 30);
        assert!(madrid.contains(t));
        assert!(!utc.contains(t));
        // in summer Madrid is UTC+2: 16:30 UTC on Monday 2026-07-13 is 18:30 there
        let t = at("UTC", 2026, 7, 13, 16, 30);
        assert!(madrid.contains(t));
        assert!(!utc.contains(t));
        // the night of the change to summer time (Sunday 2026-03-29) is not listed; Friday
        // 2026-03-27's night is, and ends at 06:00 local on Saturday
        assert!(madrid.contains(at("Europe/Madrid", 2026, 3, 28, 5, 59)));
        assert!(!madrid.contains(at("Europe/Madrid", 2026, 3, 28, 6, 0)));
    }

    #[test]
    fn next_open_skips_a_span_that_daylight_saving_skips_and_opens_at_a_gap_end() {
        // Lord Howe moves its clocks from 02:00 to 02:30 on 2026-10-04: a 02:00-02:30 window
        // does not exist that day and opens the next.
        let lh = Window::parse("02:00-02:30", Some("Australia/Lord_Howe")).unwrap();
        let t = at("Australia/Lord_Howe", 2026, 10, 4, 1, 0);
        let next = lh.next_open(t).unwrap();
        assert!(
            lh.contains(next),
            "not open at next_open: {}",
            lh.local_text(next)
        );
        assert_eq!(next, at("Australia/Lord_Howe", 2026, 10, 5, 2, 0));
        // New York skips 02:00-03:00 on 2026-03-08: a 02:30-03:30 window opens at 03:00.
        let ny = Window::parse("Sun 02:30-03:30", Some("America/New_York")).unwrap();
        let next = ny
            .next_open(at("America/New_York", 2026, 3, 8, 0, 0))
            .unwrap();
        assert!(
            ny.contains(next),
            "not open at next_open: {}",
            ny.local_text(next)
        );
        assert_eq!(next, at("America/New_York", 2026, 3, 8, 3, 0));
        // A weekly span skipped whole: from the Sunday before, the next opening is a week later.
        let ny = Window::parse("Sun 02:30-02:45", Some("America/New_York")).unwrap();
        let next = ny.next_open(at("America/New_York", 2026, 3, 1, 3, 0));
        assert_eq!(next, Some(at("America/New_York", 2026, 3, 15, 2, 30)));
    }

    #[test]
    fn days_spans_and_errors() {
        let w = Window::parse("Sat,Sun 00:00-24:00; Wed 12:00-13:00", Some("UTC")).unwrap();
        // 2026-11-21 is a Saturday
        assert!(w.contains(at("UTC", 2026, 11, 21, 0, 0)));
        assert!(w.contains(at("UTC", 2026, 11, 22, 23, 59)));
        assert!(!w.contains(at("UTC", 2026, 11, 23, 0, 0)));
        assert!(w.contains(at("UTC", 2026, 11, 18, 12, 30)));
        assert!(!w.contains(at("UTC", 2026, 11, 18, 13, 0)));
        let every = Window::parse("22:00-02:00", None).unwrap();
        assert!(every.contains(at("UTC", 2026, 11, 23, 1, 0)));
        let wrap = Window::parse("Fri-Mon 10:00-11:00", None).unwrap();
        assert!(wrap.contains(at("UTC", 2026, 11, 22, 10, 30)), "Sunday");
        assert!(!wrap.contains(at("UTC", 2026, 11, 24, 10, 30)), "Tuesday");
        for (text, tz, want) in [
            (
                "Mon-Fri 18:00-06:00",
                Some("Mars/Olympus"),
                "unknown time zone",
            ),
            ("Mon-Fry 18:00-06:00", None, "is not a day"),
            ("Mon 25:00-06:00", None, "not a time of day"),
            ("Mon 18:00-18:00", None, "is empty"),
            ("Mon 18:00", None, "not a span of time"),
            ("", None, "expected DAYS"),
            ("Mon 24:00-02:00", None, "not a time of day"),
            ("Mon 6:5-7:00", None, "not a time of day"),
        ] {
            let e = Window::parse(text, tz).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
