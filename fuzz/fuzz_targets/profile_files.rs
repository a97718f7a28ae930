//! What an admin writes or a repository holds about images: profile files (`image build`),
//! layered profile definitions (`REPO/profiles/NAME.toml`) and the lines a composition and a
//! package layer keep in their commit messages. Parsing never panics; a definition that parses
//! is written back as text that parses to the same definition; the message lines read back what
//! was written, and every package name they give is one apt can be handed.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use semithin_fuzz::write_seeds;
use semithin_image::profile::{self, check_package};
use semithin_image::stack::{Def, LayerPackages, Made};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let tree = "ab".repeat(32);
    [
        "\u{0}channel = \"lab/stable\"\nsuite = \"bookworm\"\nmirror = \"http://deb.debian.org/debian\"\npackages = [\"hello\", \"vim=2:9.0\"]\n[[sources]]\nname = \"tools\"\nuri = \"https://apt.example/debian\"\nsuite = \"bookworm\"\nkey = \"k.asc\"\n",
        "\u{1}layers = [\"os/base\", \"lab/software\"]\npublish = \"auto\"\nmachines = \"class=lab\"\n",
        "\u{1}extends = \"lab\"\nlayers = [\"lab/room-203\"]\nconflicts = \"refuse\"\nchannel = \"rooms/203\"\n",
        &format!("\u{2}image add lab/tools: hello\nLayer-Base: {tree}\nLayer-Install: hello stone=1.0\nLayer-Remove: nano\n"),
        &format!("\u{2}compose lab\n\nLayer: os/base {tree}\nLayer: lab/files {tree}\n"),
    ]
    .iter()
    .enumerate()
    .map(|(i, s)| (format!("profile-{i}"), s.as_bytes().to_vec()))
    .collect()
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    match which % 3 {
        0 => {
            let _ = profile::parse(text, Path::new("fuzz.toml"));
        }
        1 => {
            if let Ok(d) = Def::parse("fuzz", text) {
                let again = Def::parse("fuzz", &d.to_toml()).expect("a definition written back parses");
                assert_eq!(again, d);
            }
        }
        _ => {
            if let Ok(Some(p)) = LayerPackages::parse(text) {
                for n in p.install.iter().chain(&p.remove) {
                    check_package(n).expect("the names read are package names");
                }
                assert_eq!(LayerPackages::parse(&p.lines()), Ok(Some(p.clone())));
            }
            let m = Made::parse(text);
            assert_eq!(Made::parse(&m.lines()), m, "{text:?}");
        }
    }
});
