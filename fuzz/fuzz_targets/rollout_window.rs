//! Maintenance windows of a rollout (`Window::parse`, text and time zone as an admin request
//! carries them) and the questions the rollout asks of them: never a panic; an accepted window
//! parses again from its own text; at any time it is open now or opens later, and the time
//! `next_open` gives is one at which it is open.
//!
//! Input: `time u64le` (taken modulo about year 9999), then `TZ\nWINDOW` (no newline: UTC).
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_server::rollout::window::Window;

const MAX_TIME: u64 = 253_402_000_000;

fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        "Europe/Madrid\nMon-Fri 18:00-06:00",
        "America/New_York\nSat,Sun 00:00-24:00; Wed 02:30-02:45",
        "\nFri 22:00-02:00",
        "UTC\ndaily 01:00-01:30",
        "Australia/Lord_Howe\n02:00-02:30;Fri-Mon 23:59-00:01",
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| {
        let mut b = 1_774_746_000u64.to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        (format!("window-{i}"), b)
    })
    .collect()
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Some((t, rest)) = data.split_first_chunk::<8>() else { return };
    let t = (u64::from_le_bytes(*t) % MAX_TIME) as i64;
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let (tz, text) = match text.split_once('\n') {
        Some((tz, w)) => (Some(tz), w),
        None => (None, text),
    };
    let Ok(w) = Window::parse(text, tz) else { return };
    let again = Window::parse(w.text(), Some(w.tz_name())).expect("a window parses from its text");
    assert_eq!(again.contains(t), w.contains(t));
    let _ = w.local_text(t);
    let next = w.next_open(t).expect("a window opens within two weeks");
    assert!(next >= t, "next_open({t}) = {next} is earlier");
    if w.contains(t) {
        assert_eq!(next, t);
    }
    assert!(w.contains(next), "{text:?} in {tz:?}: not open at next_open({t}) = {next}");
});
