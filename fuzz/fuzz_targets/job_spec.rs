//! Jobs as an agent receives them in a check-in answer (`Delivery`: the spec, its delivery id and
//! an admin signature) and the server in an admin request: parsing, the schema check, the
//! schedule's occurrences and signature verification never panic. What parses is written back
//! as the same value; an occurrence contains the time it is asked for and names its own job;
//! a job that is over has no occurrence; and only a spec the admin key really signed verifies.
//!
//! Input: `now u64le` (taken modulo year 9999) then the delivery's JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_protocol::job::{
    Action, AdminKey, AptSource, Delivery, JobSpec, Schedule, SourceKey, SpecJson, job_of_delivery,
    verify,
};

const MAX_TIME: u64 = 253_402_300_799;

fn key() -> AdminKey {
    AdminKey::from_file_text(&"07".repeat(32)).unwrap()
}

fn spec(action: Action, schedule: Schedule) -> JobSpec {
    JobSpec {
        id: "0123456789abcdef0123456789abcdef".into(),
        action,
        timeout_secs: 600,
        schedule,
        created_at: 1_800_000_000,
    }
}

/// The specs the admin key signed: the seeds.
fn signed_specs() -> Vec<JobSpec> {
    vec![
        spec(
            Action::Command {
                argv: vec!["/bin/true".into(), "x".into()],
            },
            Schedule::default(),
        ),
        spec(
            Action::AptInstall {
                packages: vec!["vim".into(), "libc6:amd64=2.36-9".into()],
            },
            Schedule {
                at: Some(1_800_000_100),
                every: None,
                window_secs: Some(3600),
                tz: None,
            },
        ),
        spec(
            Action::AptUpgrade {
                dist: true,
                security_only: true,
            },
            Schedule {
                at: None,
                every: Some("30 2 * * 1-5".into()),
                window_secs: Some(600),
                tz: None,
            },
        ),
        spec(
            Action::AptSourceAdd(AptSource {
                name: "extra".into(),
                uri: "https://deb.example.org/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into()],
                key: SourceKey::Binary("99000d".into()),
            }),
            Schedule::default(),
        ),
        spec(
            Action::Capture {
                paths: vec!["/var/lib/foo".into()],
            },
            Schedule::default(),
        ),
        spec(
            Action::Reboot,
            Schedule {
                at: None,
                every: Some("*/5 * * * *".into()),
                window_secs: None,
                tz: None,
            },
        ),
    ]
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let k = key();
    signed_specs()
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = SpecJson::new(s);
            let d = Delivery {
                delivery: s.id.parse().expect("job ids are delivery ids"),
                signature: Some(k.sign(&s).unwrap()),
                spec: s,
            };
            let mut b = 1_800_000_050u64.to_le_bytes().to_vec();
            b.extend(serde_json::to_vec(&d).unwrap());
            (format!("delivery-{i}"), b)
        })
        .collect()
}

fn check(d: &Delivery, now: i64, trusted: &[[u8; 32]]) {
    let back: Delivery = serde_json::from_slice(&serde_json::to_vec(d).unwrap()).unwrap();
    assert_eq!(&back, d, "a delivery changed on a round trip");
    let s = &d.spec;
    let _ = (
        s.action.kind(),
        s.action.describe(),
        job_of_delivery(d.delivery.as_ref()),
    );
    if let Some(sig) = &d.signature
        && verify(s, sig, trusted).is_ok()
    {
        assert!(
            signed_specs().contains(s.spec()),
            "a spec nobody signed verifies: {s:?}"
        );
    }
    if s.validate().is_err() {
        return;
    }
    let _ = s.schedule.next_start(s.created_at, now);
    let occurrence = s.occurrence(now);
    if let Some(o) = &occurrence {
        assert!(
            o.start <= now && o.end.is_none_or(|e| now < e),
            "{o:?} at {now}"
        );
        assert_eq!(job_of_delivery(&o.delivery), Ok(s.id.as_str()), "{o:?}");
        assert!(s.delivery_is_due(&o.delivery, now));
    }
    if s.schedule.over(s.created_at, now) {
        assert_eq!(occurrence, None, "a job that is over has an occurrence");
    }
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Some((t, json)) = data.split_first_chunk::<8>() else { return };
    let now = (u64::from_le_bytes(*t) % (MAX_TIME + 1)) as i64;
    let trusted = [semithin_protocol::job::parse_public_key(&key().public_hex()).unwrap()];
    if let Ok(d) = serde_json::from_slice::<Delivery>(json) {
        check(&d, now, &trusted);
    }
    if let Ok(k) = SourceKey::from_file_bytes(json) {
        assert!(k.validate().is_ok());
        let (_, bytes) = k.file();
        assert_eq!(SourceKey::from_file_bytes(&bytes).as_ref(), Ok(&k));
    }
});
