//! `semithin profile assign`: each profile's machines (its `machines` selector) assigned to its
//! channel through the server, after checking that no machine is selected by two profiles.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use semithin_image::stack::Def;
use semithin_protocol::api::MachineInfo;
use serde_json::json;

use crate::cli::admin::ServerArgs;
use crate::cli::print_json;

pub(super) fn assign(
    defs: &BTreeMap<String, Def>,
    names: &[String],
    json: bool,
    server: &ServerArgs,
) -> Result<ExitCode> {
    let chosen: Vec<&String> = if names.is_empty() {
        defs.iter()
            .filter(|(_, d)| d.machines.is_some())
            .map(|(n, _)| n)
            .collect()
    } else {
        names.iter().collect()
    };
    let client = server.client()?;
    // Which profile each machine would get: two is a mistake to refuse before changing any.
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    let mut plan = Vec::new();
    for n in &chosen {
        let d = defs
            .get(*n)
            .with_context(|| format!("no profile named {n:?}"))?;
        let Some(sel) = &d.machines else {
            bail!(
                "profile {n:?} names no machines: `semithin profile set {n} --machines SELECTOR`"
            );
        };
        let path = format!("/api/v1/admin/machines?selector={}", url_escape(sel));
        let machines: Vec<MachineInfo> = client.get("listing the machines", &path)?;
        for m in &machines {
            if let Some(prev) = owner.insert(m.name.clone(), n.as_str()) {
                bail!(
                    "machine {} is selected by profile {prev:?} and by profile {n:?}: make \
                     their `machines` selectors exclusive (nothing assigned)",
                    m.name
                );
            }
        }
        plan.push((n.as_str(), sel.clone(), d.channel(n)));
    }
    let mut results = Vec::new();
    for (n, sel, ch) in plan {
        let a: semithin_protocol::api::Affected = client.post(
            "assigning",
            "/api/v1/admin/assign",
            &semithin_protocol::api::AssignRequest {
                selector: sel.clone(),
                channel: ch.clone(),
                unpublished: true,
            },
        )?;
        if !json {
            outln!(
                "profile {n} ({sel}) -> {ch}: {} machine(s) moved{}",
                a.machines.len(),
                if a.machines.is_empty() {
                    String::new()
                } else {
                    format!(": {}", a.machines.join(", "))
                }
            );
        }
        results.push(json!({"profile": n, "selector": sel, "channel": ch, "moved": a.machines}));
    }
    if json {
        print_json(&results)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
