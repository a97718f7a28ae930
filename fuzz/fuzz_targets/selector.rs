//! Machine names, labels and selectors as an admin request or a machine's report carries them:
//! parsing never panics, what parses prints as text that parses to the same selector, a label
//! selector matches the labels it names, and a name is a selector of that one machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_protocol::selector::{Labels, Selector, check_name, parse_label};

fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        "*",
        "lab-07",
        "site=school-12,class=lab",
        " hw/model=x1 , os=debian ",
        "a=b,a=c",
        "k=",
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| (format!("sel-{i}"), s.as_bytes().to_vec()))
    .collect()
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = Selector::parse(s) {
        let text = sel.to_string();
        assert_eq!(Selector::parse(&text).as_ref().ok(), Some(&sel), "{s:?} printed as {text:?}");
        match &sel {
            Selector::All => assert!(sel.matches("any", &Labels::new())),
            Selector::Name(n) => {
                check_name(n).expect("a name selector holds a valid name");
                assert!(sel.matches(n, &Labels::new()));
            }
            Selector::Labels(l) => {
                assert!(!l.is_empty());
                assert!(sel.matches("any", l));
                for (k, v) in l {
                    assert_eq!(parse_label(&format!("{k}={v}")).ok(), Some((k.clone(), v.clone())));
                }
            }
        }
    }
    if check_name(s).is_ok() {
        assert_eq!(Selector::parse(s).ok(), Some(Selector::Name(s.to_owned())));
    }
    if let Ok((k, v)) = parse_label(s) {
        assert_eq!(parse_label(&format!("{k}={v}")).ok(), Some((k, v)));
    }
});
