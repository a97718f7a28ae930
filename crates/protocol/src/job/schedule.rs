//! When a job runs: its [`Schedule`] read as cron in a time zone (croner over jiff), and the
//! occurrence machines may be given at a time.

use super::*;

impl Schedule {
    pub fn recurring(&self) -> bool {
        self.every.is_some()
    }

    fn cron(&self) -> Result<Option<croner::Cron>, String> {
        let Some(e) = &self.every else {
            return Ok(None);
        };
        let fields = e.split_whitespace().count();
        if fields != 5 && !e.trim().starts_with('@') {
            return Err(format!(
                "bad cron expression {e:?}: 5 fields (minute hour day month weekday) or \
                 @hourly, @daily, @weekly, @monthly, @yearly; {fields} field(s) given"
            ));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(e)
            .map_err(|err| format!("bad cron expression {e:?}: {err}"))?;
        if !ever_matches(&cron.pattern) {
            return Err(format!(
                "cron expression {e:?} names no time that exists (such as February 30): the \
                 job would never run"
            ));
        }
        Ok(Some(cron))
    }

    /// The time zone of `every`.
    fn zone(&self) -> Result<jiff::tz::TimeZone, String> {
        match &self.tz {
            None => Ok(jiff::tz::TimeZone::UTC),
            Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
                format!(
                    "unknown time zone {name:?}: an IANA name such as Europe/Madrid or \
                     America/New_York"
                )
            }),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.cron()?;
        self.zone()?;
        if self.tz.is_some() && self.every.is_none() {
            return Err("a time zone is for a schedule with `every` (a cron expression)".into());
        }
        if self.window_secs == Some(0) {
            return Err("a window must be at least 1 s".into());
        }
        if let Some(at) = self.at
            && !(0..=253_402_300_799).contains(&at)
        {
            return Err(format!("bad start time {at}"));
        }
        Ok(())
    }

    /// The occurrence machines may be given at `now`, if any: pure, so that the server decides it
    /// and an agent can check it.
    pub fn occurrence(&self, id: &str, created_at: i64, now: i64) -> Option<Occurrence> {
        let cron = self.cron().ok()?;
        let first = self.at.unwrap_or(created_at);
        let Some(cron) = cron else {
            if now < first {
                return None;
            }
            let end = self.window_secs.map(|w| first.saturating_add(w as i64));
            return (end.is_none_or(|e| now < e)).then(|| Occurrence {
                delivery: id.to_owned(),
                start: first,
                end,
            });
        };
        let t = to_time(now, self.zone().ok()?)?;
        let prev = cron.find_previous_occurrence(&t, true).ok()?.seconds();
        if prev < first {
            return None;
        }
        let next = cron
            .find_next_occurrence(&t, false)
            .ok()
            .map(|n| n.seconds());
        let end = match (self.window_secs, next) {
            (Some(w), Some(n)) => Some(prev.saturating_add(w as i64).min(n)),
            (Some(w), None) => Some(prev.saturating_add(w as i64)),
            (None, n) => n,
        };
        (end.is_none_or(|e| now < e)).then(|| Occurrence {
            delivery: format!("{id}.{prev}"),
            start: prev,
            end,
        })
    }

    /// When the next occurrence after `now` starts (`None`: there is none).
    pub fn next_start(&self, created_at: i64, now: i64) -> Option<i64> {
        let first = self.at.unwrap_or(created_at);
        match self.cron().ok()? {
            None => (first > now).then_some(first),
            Some(cron) => {
                let from = to_time(now.max(first.saturating_sub(1)), self.zone().ok()?)?;
                cron.find_next_occurrence(&from, false)
                    .ok()
                    .map(|n| n.seconds())
            }
        }
    }

    /// No occurrence is open at `now` and none will be: a single job whose window passed.
    pub fn over(&self, created_at: i64, now: i64) -> bool {
        if self.recurring() {
            return false;
        }
        let first = self.at.unwrap_or(created_at);
        self.window_secs
            .is_some_and(|w| now >= first.saturating_add(w as i64))
    }
}

/// Whether a cron pattern names any minute at all. croner looks for an occurrence up to the
/// year 5000 (or back to the year 1), minute by minute through days that do not match: a
/// pattern that never matches would take seconds on every look. Dates repeat with their
/// weekdays every 28 years (between 1901 and 2099), so 28 years of days decide it, fast.
fn ever_matches(p: &croner::CronPattern) -> bool {
    let any = |n: u32, f: &dyn Fn(u32) -> bool| (0..n).any(f);
    if !any(60, &|m| p.minute_match(m).unwrap_or(false))
        || !any(24, &|h| p.hour_match(h).unwrap_or(false))
    {
        return false;
    }
    // 2001-01-01 was a Monday
    let mut weekday = 1u32;
    for year in 2001..2029 {
        for month in 1..=12u32 {
            if !p.month_match(month).unwrap_or(false) {
                weekday += days_in(year, month);
                continue;
            }
            for day in 1..=days_in(year, month) {
                let wd = croner::Weekday::from_days_from_sunday(weekday % 7);
                if p.day_match(year, month, day, wd).unwrap_or(false) {
                    return true;
                }
                weekday += 1;
            }
        }
    }
    false
}

fn days_in(year: i32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn to_time(t: i64, tz: jiff::tz::TimeZone) -> Option<Zoned> {
    Some(Zoned(
        jiff::Timestamp::from_second(t).ok()?.to_zoned_datetime(tz),
    ))
}

/// A time in a time zone, as croner searches over it (croner knows chrono and an older jiff;
/// this is its trait over the jiff the workspace uses).
#[derive(Clone, Debug)]
struct Zoned(jiff::ZonedDateTime);

impl Zoned {
    fn seconds(&self) -> i64 {
        self.0.timestamp().as_second()
    }
}

impl croner::CronDateTime for Zoned {
    fn to_civil(&self) -> croner::CivilDateTime {
        let d = self.0.datetime();
        croner::CivilDateTime::new(
            croner::CivilDate::from_parts_unchecked(
                i32::from(d.year()),
                d.month() as u32,
                d.day() as u32,
            ),
            croner::CivilTime::from_parts_unchecked(
                d.hour() as u32,
                d.minute() as u32,
                d.second() as u32,
            ),
        )
    }

    fn civil_weekday(&self) -> croner::Weekday {
        croner::Weekday::from_days_from_sunday(self.0.weekday().to_sunday_zero_offset() as u32)
    }

    fn resolve_civil(
        &self,
        c: croner::CivilDateTime,
    ) -> Result<croner::Resolution<Self>, croner::errors::CronError> {
        use croner::errors::CronError;
        let year = i16::try_from(c.year()).map_err(|_| CronError::InvalidDate)?;
        let civil = jiff::civil::DateTime::new(
            year,
            c.month() as i8,
            c.day() as i8,
            c.hour() as i8,
            c.minute() as i8,
            c.second() as i8,
            0,
        )
        .map_err(|_| CronError::InvalidDate)?;
        let amb = self.0.time_zone().to_ambiguous_zoned_datetime(civil);
        Ok(match amb.offset() {
            jiff::tz::AmbiguousOffset::Unambiguous { .. } => croner::Resolution::Single(Zoned(
                amb.unambiguous().map_err(|_| CronError::InvalidTime)?,
            )),
            jiff::tz::AmbiguousOffset::Fold { .. } => croner::Resolution::Ambiguous(
                Zoned(amb.clone().earlier().map_err(|_| CronError::InvalidTime)?),
                Zoned(amb.later().map_err(|_| CronError::InvalidTime)?),
            ),
            jiff::tz::AmbiguousOffset::Gap { .. } => croner::Resolution::Gap,
        })
    }

    fn checked_add_seconds(&self, seconds: i64) -> Option<Self> {
        self.0
            .checked_add(jiff::SignedDuration::from_secs(seconds))
            .ok()
            .map(Zoned)
    }

    fn cmp_instant(&self, other: &Self) -> std::cmp::Ordering {
        self.0.timestamp().cmp(&other.0.timestamp())
    }
}
