//! What the machine is, as it reports it (docs/CONFIG.md, "Facts"): host name, network
//! interfaces with their MAC and IP addresses, CPU, memory, disks, DMI vendor and product.
//! Read from `/proc` and `/sys` below a root (`facts_root`, `/` by default) and from the
//! kernel's list of interface addresses; every value is cut to the bounds the server accepts
//! (`protocol::vars::fact_limits`), so a strange machine still reports.

use std::path::Path;

use semithin_protocol::vars::{Disk, Facts, Interface, fact_limits};

/// Trimmed, without control characters, at most `TEXT_BYTES` (cut at a character boundary).
fn clean(s: &str) -> String {
    let s: String = s.trim().chars().filter(|c| !c.is_control()).collect();
    let mut end = s.len().min(fact_limits::TEXT_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default().to_owned()
}

fn read(root: &Path, rel: &str) -> Option<String> {
    let t = std::fs::read_to_string(root.join(rel)).ok()?;
    let c = clean(&t);
    (!c.is_empty()).then_some(c)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The addresses of each interface (IPv4 and IPv6), from the kernel.
fn addresses() -> Vec<(String, String)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in list {
        let Some(addr) = a.address else { continue };
        let ip = if let Some(v4) = addr.as_sockaddr_in() {
            v4.ip().to_string()
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            v6.ip().to_string()
        } else {
            continue;
        };
        out.push((a.interface_name.clone(), ip));
    }
    out
}

/// Gathers the facts below `root` (`/` on a machine).
pub fn gather(root: &Path) -> Facts {
    let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| clean(v))
        })
        .unwrap_or_default();
    let cpu_count = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count() as u32;
    let memory_bytes = std::fs::read_to_string(root.join("proc/meminfo"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        })
        .unwrap_or(0);
    let addrs = addresses();
    let mut interfaces = Vec::new();
    for name in names(&root.join("sys/class/net")) {
        if name == "lo" || interfaces.len() >= fact_limits::INTERFACES {
            continue;
        }
        let mac = read(root, &format!("sys/class/net/{name}/address"))
            .filter(|m| m != "00:00:00:00:00:00");
        let addresses = addrs
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, a)| clean(a))
            .take(fact_limits::ADDRESSES)
            .collect();
        interfaces.push(Interface {
            name: clean(&name),
            mac,
            addresses,
        });
    }
    let mut disks = Vec::new();
    for name in names(&root.join("sys/block")) {
        // a disk has a device behind it; loop, ram and zram devices do not
        if !root.join(format!("sys/block/{name}/device")).exists()
            || disks.len() >= fact_limits::DISKS
        {
            continue;
        }
        let sectors: u64 = read(root, &format!("sys/block/{name}/size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        disks.push(Disk {
            name: clean(&name),
            size_bytes: sectors * 512,
            model: read(root, &format!("sys/block/{name}/device/model")),
        });
    }
    Facts {
        hostname: read(root, "proc/sys/kernel/hostname").unwrap_or_default(),
        interfaces,
        cpu_model,
        cpu_count,
        memory_bytes,
        disks,
        dmi_vendor: read(root, "sys/class/dmi/id/sys_vendor"),
        dmi_product: read(root, "sys/class/dmi/id/product_name"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn facts_are_read_below_the_root_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(r, "proc/sys/kernel/hostname", "lab-01\n");
        put(
            r,
            "proc/cpuinfo",
            "processor\t: 0\nmodel name\t: Test CPU @ 2GHz\n\nprocessor\t: 1\nmodel name\t: Test CPU @ 2GHz\n",
        );
        put(
            r,
            "proc/meminfo",
            "MemTotal:        2048000 kB\nMemFree: 1 kB\n",
        );
        put(r, "sys/class/net/lo/address", "00:00:00:00:00:00\n");
        put(r, "sys/class/net/eth9/address", "52:54:00:12:34:56\n");
        put(r, "sys/block/vdz/size", "2048\n");
        put(r, "sys/block/vdz/device/model", "Disk\u{1b}[2J X\n");
        put(r, "sys/block/loop0/size", "8\n");
        put(r, "sys/class/dmi/id/sys_vendor", "LENOVO\n");
        put(r, "sys/class/dmi/id/product_name", &"P".repeat(1000));
        let f = gather(r);
        assert_eq!(f.hostname, "lab-01");
        assert_eq!(f.cpu_count, 2);
        assert_eq!(f.cpu_model, "Test CPU @ 2GHz");
        assert_eq!(f.memory_bytes, 2048000 * 1024);
        assert_eq!(f.interfaces.len(), 1);
        assert_eq!(f.interfaces[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(f.disks.len(), 1);
        assert_eq!(f.disks[0].size_bytes, 2048 * 512);
        assert_eq!(f.disks[0].model.as_deref(), Some("Disk[2J X"));
        assert_eq!(f.dmi_vendor.as_deref(), Some("LENOVO"));
        assert_eq!(
            f.dmi_product.as_ref().unwrap().len(),
            fact_limits::TEXT_BYTES
        );
        // what the server accepts
        f.check().unwrap();
        // nothing there: empty facts, still valid
        let e = gather(&r.join("nothing"));
        assert_eq!(e.hostname, "");
        e.check().unwrap();
    }
}
