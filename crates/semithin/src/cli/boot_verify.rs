//! `agent boot-verify`: what the initramfs runs before it mounts the deployment (docs/BOOT.md,
//! "Verification at boot"). Shared by `semithin` and `semithin-initrd`.

use std::process::ExitCode;

use super::safe::safe;

/// `agent boot-verify`, in the initramfs: every line on stderr (the console), prefixed
/// `semithin:` as the boot script's own.
pub fn run(state: &std::path::Path) -> ExitCode {
    let say = |s: &str| eprintln!("semithin: {s}");
    let start = std::time::Instant::now();
    say("verifying the deployment against its release (semithin.verify=off skips this)");
    let r = match semithin_agent::repair::boot::boot_verify(state) {
        Ok(r) => r,
        Err(e) => {
            say(&format!(
                "cannot verify the deployment in {}: {}",
                safe(&state.display().to_string()),
                safe(&format!("{e:#}"))
            ));
            return ExitCode::FAILURE;
        }
    };
    let Some(rel) = &r.release else {
        say("no deployment is current: nothing to verify");
        return ExitCode::SUCCESS;
    };
    let short = rel.get(..12).unwrap_or(rel);
    for p in &r.problems {
        say(&format!("  {}", safe(p)));
    }
    say(&format!(
        "deployment {short}: {} files, {} bytes verified against the release in {:.1} s; {} path(s) differed, {} put back",
        r.files,
        r.bytes,
        start.elapsed().as_secs_f64(),
        r.problems.len(),
        r.repaired
    ));
    if let Some(q) = &r.quarantine {
        say(&format!(
            "what was not the release's was moved to {}",
            safe(&q.display().to_string())
        ));
    }
    for e in &r.errors {
        say(&format!("error: {}", safe(e)));
    }
    if let Some(e) = &r.unrecorded {
        say(&format!(
            "warning: what was found is not recorded for the agent: {}",
            safe(e)
        ));
    }
    if r.unresolved() {
        say(&format!(
            "deployment {short} could not be verified or put right from the local store"
        ));
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
