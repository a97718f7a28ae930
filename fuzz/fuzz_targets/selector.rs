//! Machine names, labels and selectors as an admin request or a machine's report carries them:
//! parsing never panics, what parses prints as text that parses to the same selector, a label
//! selector matches the labels and facts it names (and a fact condition nothing without facts),
//! and a name is a selector of that one machine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_protocol::selector::{FACT_PREFIX, Labels, Selector, check_name, parse_label};
use semithin_protocol::vars::{Facts, Interface};

/// Facts that hold every fact condition of `l` a value can give (numbers only when they parse).
fn facts_for(l: &Labels) -> Option<Facts> {
    let mut f = Facts::default();
    let mut iface = Interface::default();
    for (k, v) in l {
        let Some(name) = k.strip_prefix(FACT_PREFIX) else {
            continue;
        };
        match name {
            "hostname" => f.hostname = v.clone(),
            "cpu_model" => f.cpu_model = v.clone(),
            "dmi_vendor" => f.dmi_vendor = Some(v.clone()),
            "dmi_product" => f.dmi_product = Some(v.clone()),
            "mac" => iface.mac = Some(v.clone()),
            "ip" => iface.addresses.push(v.clone()),
            "cpu_count" => f.cpu_count = v.parse().ok().filter(|n: &u32| n.to_string() == *v)?,
            _ => return None,
        }
    }
    f.interfaces.push(iface);
    Some(f)
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    [
        "*",
        "lab-07",
        "site=school-12,class=lab",
        " hw/model=x1 , os=debian ",
        "a=b,a=c",
        "k=",
        "fact.dmi_vendor=LENOVO,site=a",
        "fact.dmi_product=ThinkPad T480",
        "fact.mac=52:54:00:12:34:56",
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
                let labels: Labels =
                    l.iter().filter(|(k, _)| !k.starts_with(FACT_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect();
                // a fact condition never matches a machine that reported no facts
                assert_eq!(sel.matches("any", &labels), !sel.uses_facts());
                if let Some(f) = facts_for(l) {
                    assert!(sel.matches_facts("any", &labels, Some(&f)), "{s:?}");
                }
                for (k, v) in &labels {
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
