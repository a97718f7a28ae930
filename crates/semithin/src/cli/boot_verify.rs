//! `agent boot-verify [--quick]`: what the initramfs runs before it mounts the deployment
//! (docs/BOOT.md, "Verification at boot"). Shared by `semithin` and `semithin-initrd`.

use std::process::ExitCode;

use super::safe::safe;

/// `agent boot-verify [--quick]`, in the initramfs: every line on stderr (the console),
/// prefixed `semithin:` as the boot script's own.
pub fn run(state: &std::path::Path, quick: bool) -> ExitCode {
    use semithin_agent::repair::boot::{self, Mode, Quick};
    let say = |s: &str| eprintln!("semithin: {s}");
    let start = std::time::Instant::now();
    let mode = if quick {
        Mode::Quick
    } else {
        say("verifying the deployment against its release (semithin.verify=off skips this)");
        Mode::Full
    };
    let r = match boot::boot_verify_mode(state, mode) {
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
    match &r.quick {
        Some(Quick::Unchanged { entries, secs }) => {
            say(&format!(
                "deployment {short}: {entries} entries unchanged since verified (quick check, {secs:.2} s)"
            ));
            if let Some(e) = &r.unrecorded {
                say(&format!(
                    "warning: the check is not recorded for the agent: {}",
                    safe(e)
                ));
            }
            return ExitCode::SUCCESS;
        }
        Some(Quick::Fallback(why)) => say(&format!(
            "deployment {short}: {}: verifying it against its release in full",
            safe(why)
        )),
        None => {}
    }
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
    match &r.sealed {
        Some(Ok(n)) => say(&format!(
            "deployment {short} sealed ({n} entries): the next quick check reads no file unless it changes"
        )),
        Some(Err(why)) if !r.unresolved() => say(&format!("deployment {short}: {}", safe(why))),
        _ => {}
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
