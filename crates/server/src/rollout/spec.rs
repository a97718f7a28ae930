//! The syntax of a rollout's settings, as the command line and the API take them: durations
//! (`30m`, `90s`, `1h30m`, the syntax of every duration), percentages (`5%`, `2.5%`), waves (`5%,25%,100%`), failure
//! thresholds (`5%` or a count) and canaries (a count or names). Every error names the value.

use serde::{Deserialize, Serialize};

/// Seconds of a duration in the one syntax of every duration (`30s`, `10m`, `2h`, `1d`,
/// `1h30m`, `2d 3h`, a bare number of seconds: [`semithin_protocol::duration`]), at most a year.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let secs = semithin_protocol::duration::parse(s).map_err(|e| e.to_string())?;
    if secs > 366 * 86_400 {
        return Err(format!("duration {s:?} is longer than a year"));
    }
    Ok(secs as i64)
}

/// `90s` as `1m30s`, `0` as `0s`.
pub fn format_duration(secs: i64) -> String {
    semithin_protocol::duration::format(secs.max(0) as u64)
}

/// A percentage in hundredths of a percent: `5%` is 500, `2.5%` is 250; the `%` may be left
/// out. At most two decimals, 0 to 100.
pub fn parse_percent(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let bad = || format!("bad percentage {s:?}: expected e.g. 5%, 25% or 2.5%");
    let n = t.strip_suffix('%').unwrap_or(t).trim();
    let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
    if whole.is_empty()
        || frac.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || whole.len() > 3
    {
        return Err(bad());
    }
    let w: u32 = whole.parse().map_err(|_| bad())?;
    let f: u32 = format!("{frac:0<2}").parse().map_err(|_| bad())?;
    let v = w * 100 + f;
    if v > 10_000 {
        return Err(format!("percentage {s:?} is over 100%"));
    }
    Ok(v)
}

/// `2500` as `25%`, `250` as `2.5%`.
pub fn format_percent(v: u32) -> String {
    if v.is_multiple_of(100) {
        format!("{}%", v / 100)
    } else if v.is_multiple_of(10) {
        format!("{}.{}%", v / 100, (v % 100) / 10)
    } else {
        format!("{}.{:02}%", v / 100, v % 100)
    }
}

/// Cumulative percentages of the machines after the canaries, rising, the last 100%.
pub fn parse_waves(s: &str) -> Result<Vec<u32>, String> {
    let mut out: Vec<u32> = Vec::new();
    for part in s.split(',') {
        let v = parse_percent(part).map_err(|e| format!("bad waves {s:?}: {e}"))?;
        if v == 0 {
            return Err(format!("bad waves {s:?}: a wave of 0% moves no machine"));
        }
        if out.last().is_some_and(|l| *l >= v) {
            return Err(format!(
                "bad waves {s:?}: the percentages are cumulative, each above the one before \
                 (5%,25%,100%)"
            ));
        }
        out.push(v);
    }
    if out.last() != Some(&10_000) {
        return Err(format!(
            "bad waves {s:?}: the last wave must be 100%, so that every machine is reached"
        ));
    }
    Ok(out)
}

/// More failures than this halt a rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Threshold {
    /// Hundredths of a percent of the machines admitted so far.
    Percent(u32),
    /// A number of machines.
    Count(u32),
}

impl Threshold {
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.ends_with('%') {
            return parse_percent(t)
                .map(Threshold::Percent)
                .map_err(|e| format!("bad --max-failures: {e}"));
        }
        t.parse::<u32>().map(Threshold::Count).map_err(|_| {
            format!("bad --max-failures {s:?}: expected a percentage (5%) or a count (3)")
        })
    }

    /// Whether `failed` failures among `admitted` machines pass the threshold.
    pub fn exceeded(self, failed: usize, admitted: usize) -> bool {
        match self {
            Threshold::Count(n) => failed > n as usize,
            Threshold::Percent(p) => failed as u64 * 10_000 > p as u64 * admitted as u64,
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Percent(p) => f.write_str(&format_percent(*p)),
            Threshold::Count(n) => write!(f, "{n}"),
        }
    }
}

/// The canary machines: a count, chosen by the rollout, or names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Canary {
    Count(u32),
    Names(Vec<String>),
}

impl Canary {
    /// A number is a count; anything else is a comma-separated list of machine names.
    pub fn parse(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if let Ok(n) = t.parse::<u32>() {
            return Ok(Canary::Count(n));
        }
        let mut names = Vec::new();
        for n in t.split(',').map(str::trim) {
            semithin_protocol::selector::check_name(n)
                .map_err(|e| format!("bad --canary {s:?}: {e} (a count, or machine names)"))?;
            if !names.iter().any(|x| x == n) {
                names.push(n.to_owned());
            }
        }
        Ok(Canary::Names(names))
    }
}

impl std::fmt::Display for Canary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Canary::Count(n) => write!(f, "{n}"),
            Canary::Names(v) => f.write_str(&v.join(",")),
        }
    }
}

/// Everything a rollout was told, parsed; stored as JSON in its row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spec {
    pub canary: Canary,
    pub waves: Vec<u32>,
    pub soak_secs: i64,
    pub max_failures: Threshold,
    pub window: Option<String>,
    pub tz: Option<String>,
    pub max_per_hour: Option<u32>,
}

impl Spec {
    /// From the API's text fields; absent ones take the defaults.
    pub fn parse(r: &semithin_protocol::rollout::StartRequest) -> Result<Self, String> {
        let canary = Canary::parse(r.canary.as_deref().unwrap_or("1"))?;
        let waves = parse_waves(r.waves.as_deref().unwrap_or("100%"))?;
        let soak_secs = parse_duration(r.soak.as_deref().unwrap_or("0"))
            .map_err(|e| format!("bad --soak: {e}"))?;
        let max_failures = Threshold::parse(r.max_failures.as_deref().unwrap_or("0"))?;
        if r.tz.is_some() && r.window.is_none() {
            return Err("--tz is the time zone of --window; give a window too".into());
        }
        if let Some(w) = &r.window {
            super::window::Window::parse(w, r.tz.as_deref())?;
        }
        if r.max_per_hour == Some(0) {
            return Err(
                "--max-per-hour 0 would admit no machine; leave it out for no limit".into(),
            );
        }
        Ok(Spec {
            canary,
            waves,
            soak_secs,
            max_failures,
            window: r.window.clone(),
            tz: r.tz.clone(),
            max_per_hour: r.max_per_hour,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (s, want) in [
            ("0", 0),
            ("0s", 0),
            ("45s", 45),
            ("30m", 1800),
            ("2h", 7200),
            ("1d", 86_400),
            ("1h30m", 5400),
            (" 3s ", 3),
            // the syntax every duration flag shares
            ("10", 10),
            ("1w", 7 * 86_400),
            ("2d 3h", 2 * 86_400 + 3 * 3600),
            ("1.5h", 5400),
            ("10 minutes", 600),
        ] {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
        for bad in ["", "m", "1.5s", "-3s", "3s4", "400d", "1mo"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(parse_duration(&format_duration(93_784)), Ok(93_784));
    }

    #[test]
    fn percentages_and_waves() {
        assert_eq!(parse_percent("5%"), Ok(500));
        assert_eq!(parse_percent("2.5%"), Ok(250));
        assert_eq!(parse_percent("0.01"), Ok(1));
        assert_eq!(parse_percent("100%"), Ok(10_000));
        for bad in ["", "%", "101%", "1.234%", "-5%", "five", "5%%", "1000%"] {
            assert!(parse_percent(bad).is_err(), "{bad}");
        }
        assert_eq!(format_percent(250), "2.5%");
        assert_eq!(format_percent(2500), "25%");
        assert_eq!(format_percent(1), "0.01%");
        assert_eq!(parse_waves("5%,25%,100%"), Ok(vec![500, 2500, 10_000]));
        assert_eq!(parse_waves("100%"), Ok(vec![10_000]));
        for (bad, want) in [
            ("25%,5%,100%", "cumulative"),
            ("5%,5%,100%", "cumulative"),
            ("5%,50%", "must be 100%"),
            ("0%,100%", "moves no machine"),
            ("5%,x,100%", "bad percentage"),
        ] {
            let e = parse_waves(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn thresholds_count_or_percent_of_the_admitted() {
        let p = Threshold::parse("5%").unwrap();
        assert_eq!(p, Threshold::Percent(500));
        // 5% of 10 is half a machine: one failure passes it
        assert!(p.exceeded(1, 10));
        // 5% of 40 is 2 machines: 2 failures do not pass it, 3 do
        assert!(!p.exceeded(2, 40) && p.exceeded(3, 40));
        assert!(!p.exceeded(0, 0));
        let c = Threshold::parse("2").unwrap();
        assert!(!c.exceeded(2, 3) && c.exceeded(3, 3));
        let zero = Threshold::parse("0").unwrap();
        assert!(zero.exceeded(1, 100) && !zero.exceeded(0, 100));
        assert!(Threshold::parse("lots").is_err());
        assert!(Threshold::parse("150%").is_err());
        assert_eq!(p.to_string(), "5%");
    }

    #[test]
    fn canaries_and_specs() {
        assert_eq!(Canary::parse("2"), Ok(Canary::Count(2)));
        assert_eq!(
            Canary::parse("lab-01, lab-07,lab-01"),
            Ok(Canary::Names(vec!["lab-01".into(), "lab-07".into()]))
        );
        assert!(Canary::parse("lab 01").is_err());
        let mut r = semithin_protocol::rollout::StartRequest::default();
        let s = Spec::parse(&r).unwrap();
        assert_eq!(s.canary, Canary::Count(1));
        assert_eq!(s.waves, vec![10_000]);
        assert_eq!(s.max_failures, Threshold::Count(0));
        r.tz = Some("Europe/Madrid".into());
        assert!(Spec::parse(&r).unwrap_err().contains("give a window"));
        r.window = Some("Mon-Fri 25:00-06:00".into());
        assert!(Spec::parse(&r).unwrap_err().contains("not a time of day"));
        r.window = Some("Mon-Fri 18:00-06:00".into());
        r.max_per_hour = Some(0);
        assert!(Spec::parse(&r).unwrap_err().contains("admit no machine"));
        r.max_per_hour = Some(10);
        r.soak = Some("10 fortnights".into());
        assert!(Spec::parse(&r).unwrap_err().contains("bad --soak"));
    }
}
