//! The pieces of a delta pack a machine decodes before applying anything: the pack's start
//! (magic, ids, zstd-compressed header), bsdiff patches in the pack's layout, and gzip files
//! taken apart. None panics; what is accepted comes back the same when written again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use semithin_delta::pack::{
    Codec, Header, Item, Kind, Method, Segment, Target, read_start, write_start,
};
use semithin_delta::{bspatch, gz};
use semithin_fuzz::write_seeds;

fn start(data: &[u8]) {
    if let Ok((from, to, header, n)) = read_start(&mut &data[..]) {
        assert!(n as usize <= data.len());
        let again = write_start(&from, &to, &header).expect("an accepted header is written");
        let (f2, t2, h2, _) = read_start(&mut again.as_slice()).expect("and read back");
        assert_eq!((f2, t2, h2), (from, to, header));
    }
}

fn patch(data: &[u8]) {
    if let Ok(crate_layout) = bspatch::join(data) {
        // `join` checks every length, so the pack's layout comes back exactly.
        assert_eq!(
            bspatch::split(&crate_layout).expect("split what join made"),
            data
        );
    }
}

fn gzip(data: &[u8]) {
    let _ = gz::decompress(data);
    if let Some(g) = gz::open(data) {
        assert_eq!(gz::compress(&g.header, g.level, &g.raw), data);
    }
}

fn seeds() -> Vec<(String, Vec<u8>)> {
    let header = Header {
        segments: vec![Segment {
            kind: Kind::Patches,
            codec: Codec::Zstd,
            items: vec![
                Item {
                    target: Target::File(0),
                    method: Method::Bsdiff(b"usr/bin/x".to_vec()),
                    len: 9,
                },
                Item {
                    target: Target::Tree(1),
                    method: Method::Gzip {
                        base: Some(b"a.gz".to_vec()),
                        level: 9,
                        header: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3],
                    },
                    len: 4,
                },
            ],
            compressed_len: 30,
        }],
    };
    let mut s = vec![0u8];
    s.extend(write_start(&[1; 32], &[2; 32], &header).unwrap());
    let old: Vec<u8> = (0..5000u32).map(|i| (i % 253) as u8).collect();
    let mut new = old.clone();
    new[100] = 9;
    new.extend_from_slice(b"tail");
    let mut raw_patch = Vec::new();
    bsdiff::diff(&old, &new, &mut raw_patch).unwrap();
    let mut p = vec![1u8];
    p.extend(bspatch::split(&raw_patch).unwrap());
    let mut g = vec![2u8];
    g.extend(gz::compress(
        &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3],
        9,
        b"hello hello hello\n",
    ));
    vec![
        ("start".into(), s),
        ("bsdiff".into(), p),
        ("gzip".into(), g),
    ]
}

fuzz_target!(init: write_seeds(seeds()), |data: &[u8]| {
    let Some((m, rest)) = data.split_first() else { return };
    match m % 3 {
        0 => start(rest),
        1 => patch(rest),
        _ => gzip(rest),
    }
});
