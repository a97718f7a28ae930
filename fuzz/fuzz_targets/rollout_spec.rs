//! The settings of a rollout as the admin API takes them (`StartRequest` JSON, then
//! `Spec::parse`) and each of their parsers: never a panic; a parsed spec is stored (JSON) and
//! read back the same; durations, percentages and thresholds print as text that parses to the
//! same value; waves rise to 100%.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_protocol::rollout::StartRequest;
use semithin_server::rollout::spec::{
    Canary, Spec, Threshold, format_duration, format_percent, parse_duration, parse_percent,
    parse_waves,
};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = vec![(
        "request".to_owned(),
        br#"{"channel":"lab","release":"aa","selector":"site=a","canary":"lab-01,lab-02","waves":"5%,25.5%,100%","soak":"1h30m","max_failures":"2.5%","window":"Mon-Fri 18:00-06:00","tz":"Europe/Madrid","max_per_hour":20}"#.to_vec(),
    )];
    for (i, s) in [
        "90s",
        "1d2h3m4s",
        "12.34%",
        "3",
        "5%,100%",
        "lab-01, lab-07",
    ]
    .iter()
    .enumerate()
    {
        out.push((format!("text-{i}"), s.as_bytes().to_vec()));
    }
    out
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<StartRequest>(data)
        && let Ok(spec) = Spec::parse(&r)
    {
        let stored = serde_json::to_vec(&spec).unwrap();
        assert_eq!(serde_json::from_slice::<Spec>(&stored).unwrap(), spec);
    }
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(d) = parse_duration(s) {
        assert!((0..=366 * 86_400).contains(&d));
        assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{s:?}");
    }
    if let Ok(p) = parse_percent(s) {
        assert!(p <= 10_000);
        assert_eq!(parse_percent(&format_percent(p)), Ok(p), "{s:?}");
    }
    if let Ok(w) = parse_waves(s) {
        assert!(w.windows(2).all(|p| p[0] < p[1]) && w.first() > Some(&0) && w.last() == Some(&10_000));
    }
    if let Ok(t) = Threshold::parse(s) {
        assert_eq!(Threshold::parse(&t.to_string()), Ok(t), "{s:?}");
    }
    if let Ok(Canary::Names(names)) = Canary::parse(s) {
        assert!(!names.is_empty());
        for n in &names {
            semithin_protocol::selector::check_name(n).expect("a canary is a machine name");
        }
    }
});
