//! `semithin fleet move` (place machines under relays, or on another channel) and `semithin
//! fleet tree` (the relays, level by level, from the paths the server recorded per machine).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Result, bail};
use semithin_protocol::api::{Affected, AssignRequest, MachineInfo, PlacementRequest};
use semithin_protocol::relay::RelayHealth;
use semithin_protocol::selector::Selector;
use serde::Serialize;

use super::admin::ServerArgs;
use super::print_json;
use super::safe::safe;

#[derive(clap::Args)]
pub struct MoveArgs {
    /// The machines: a name, `key=value[,key=value...]` (e.g. `site=school-12`) or `*`.
    selector: String,
    /// A relay the machines use first: its URL, or its name when it reported the URL it
    /// serves at (`semithin relay --url`). Repeatable: tried in order, then the servers they
    /// are configured with. Machines follow it with `follow_placement`.
    #[arg(long = "relay", value_name = "URL|NAME")]
    relays: Vec<String>,
    /// Drop the placement: the machines use only the servers they are configured with.
    #[arg(long, conflicts_with = "relays")]
    direct: bool,
    /// Also make them follow this published channel (as `fleet assign`).
    #[arg(long, value_name = "CHANNEL")]
    channel: Option<String>,
}

#[derive(clap::Args)]
pub struct TreeArgs {
    /// Print the tree as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run_move(server: &ServerArgs, a: MoveArgs) -> Result<ExitCode> {
    Selector::parse(&a.selector)?;
    if a.relays.is_empty() && !a.direct && a.channel.is_none() {
        bail!("nothing to do: give --relay URL, --direct or --channel CHANNEL");
    }
    let c = server.client()?;
    if !a.relays.is_empty() || a.direct {
        let r: Affected = c.post(
            "placing machines",
            "/api/v1/admin/placement",
            &PlacementRequest {
                selector: a.selector.clone(),
                upstreams: a.relays.clone(),
            },
        )?;
        let what = if a.direct {
            "placed straight under their servers".to_owned()
        } else {
            format!("placed under {}", a.relays.join(", "))
        };
        outln!("{what}: {} machine(s) changed", r.machines.len());
    }
    if let Some(channel) = a.channel {
        let r: Affected = c.post(
            "assigning",
            "/api/v1/admin/assign",
            &AssignRequest {
                selector: a.selector.clone(),
                channel: channel.clone(),
                unpublished: false,
            },
        )?;
        outln!(
            "assigned to {channel}: {} machine(s) changed",
            r.machines.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One level of the tree: the server (the root) or a relay.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Node {
    pub name: String,
    /// Machines (not relays) whose nearest relay this is (for the root: with no relay).
    pub machines: usize,
    /// Machines anywhere below it.
    pub total: usize,
    /// Machines below it by state (`updated`, `failed`, ...).
    pub states: BTreeMap<String, usize>,
    /// Machines below it by the release they run (short ids).
    pub releases: BTreeMap<String, usize>,
    /// The last check-in of a machine below it: when traffic last came through.
    pub last_seen: Option<i64>,
    /// A relay's own last report of its health (version, cache, upstream), when it made one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<RelayHealth>,
    pub children: Vec<Node>,
}

fn is_relay(m: &MachineInfo) -> bool {
    m.labels.get("role").map(String::as_str) == Some("relay")
}

/// The tree of relays from the machines' recorded paths (nearest relay first): pure.
pub fn tree(ms: &[MachineInfo]) -> Node {
    // parent of each relay, from every path: path[i] hangs under path[i + 1], the last under
    // the root
    let mut parent: BTreeMap<String, String> = BTreeMap::new();
    for m in ms {
        for (i, r) in m.relay_path.iter().enumerate() {
            let up = m.relay_path.get(i + 1).cloned().unwrap_or_default();
            parent.entry(r.clone()).or_insert(up);
        }
    }
    // relays enrolled but without traffic yet hang under the root
    for m in ms.iter().filter(|m| is_relay(m)) {
        parent
            .entry(m.name.clone())
            .or_insert_with(|| m.relay_path.first().cloned().unwrap_or_default());
    }
    fn build(name: &str, parent: &BTreeMap<String, String>, ms: &[MachineInfo]) -> Node {
        let mut n = Node {
            name: if name.is_empty() { "server" } else { name }.to_owned(),
            health: ms
                .iter()
                .find(|m| !name.is_empty() && m.name == name)
                .and_then(|m| m.relay.clone()),
            ..Node::default()
        };
        for m in ms.iter().filter(|m| !is_relay(m)) {
            let under = name.is_empty() || m.relay_path.iter().any(|r| r == name);
            if !under {
                continue;
            }
            n.total += 1;
            if m.relay_path.first().map(String::as_str).unwrap_or("") == name {
                n.machines += 1;
            }
            *n.states.entry(m.state.as_str().to_owned()).or_default() += 1;
            let rel = m
                .report
                .current
                .map(|r| r.short().to_string())
                .unwrap_or_else(|| "-".into());
            *n.releases.entry(rel).or_default() += 1;
            n.last_seen = n.last_seen.max(m.last_seen);
        }
        n.children = parent
            .iter()
            .filter(|(_, p)| p.as_str() == name)
            .map(|(c, _)| build(c, parent, ms))
            .collect();
        n
    }
    build("", &parent, ms)
}

fn print(n: &Node, depth: usize) -> Result<()> {
    let counts = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, v)| format!("{v} {}", safe(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let health = match &n.health {
        None if depth == 0 => String::new(),
        None => " [no report of its own yet]".to_owned(),
        Some(h) => format!(
            " [{}, reported {}{}, cache {} of {}, via {}]",
            safe(&h.status.version),
            super::fleet::ago(Some(h.at)),
            if h.late(semithin_server::now()) {
                " (LATE: stopped, or cut off from its upstream?)"
            } else {
                ""
            },
            super::human(h.status.cache_bytes),
            super::human(h.status.cache_limit),
            safe(&h.status.upstream)
        ),
    };
    outln!(
        "{}{}{health}: {} machine(s) here, {} in all ({}); releases: {}; last traffic {}",
        "  ".repeat(depth),
        safe(&n.name),
        n.machines,
        n.total,
        if n.states.is_empty() {
            "-".into()
        } else {
            counts(&n.states)
        },
        if n.releases.is_empty() {
            "-".into()
        } else {
            counts(&n.releases)
        },
        super::fleet::ago(n.last_seen)
    );
    for c in &n.children {
        print(c, depth + 1)?;
    }
    Ok(())
}

pub fn run_tree(server: &ServerArgs, a: TreeArgs) -> Result<ExitCode> {
    let c = server.client()?;
    let ms: Vec<MachineInfo> = c.get("listing machines", "/api/v1/admin/machines")?;
    let t = tree(&ms);
    if a.json {
        print_json(&t)?;
    } else {
        print(&t, 0)?;
    }
    Ok(ExitCode::SUCCESS)
}
