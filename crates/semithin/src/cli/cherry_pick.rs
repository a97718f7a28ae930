use std::process::ExitCode;

use anyhow::Result;
use semithin_store::{Repo, merge, refs};

use super::print_json;

#[derive(clap::Args)]
pub struct Args {
    /// The version whose changes (against its parent) are applied.
    reference: String,
    /// The channel whose head receives them; the result is committed there.
    #[arg(long)]
    onto: String,
    /// Message of the new version (default: "cherry-pick ID: original message").
    #[arg(long, short)]
    message: Option<String>,
    /// Print the result as JSON (for scripts).
    #[arg(long)]
    json: bool,
}

pub fn run(owned: Repo, a: Args) -> Result<ExitCode> {
    let repo = &owned;
    let id = refs::resolve(repo, &a.reference)?;
    let r = merge::cherry_pick(repo, id, &a.onto, a.message.as_deref())?;
    if a.json {
        print_json(&r)?;
    } else {
        outln!("{}", r.commit);
        outln!(
            "{}: applied {} onto {}",
            r.channel,
            semithin_protocol::ids::short_str(&r.picked),
            semithin_protocol::ids::short_str(&r.parent)
        );
    }
    let o = super::profile::after_move(repo, &r.channel, std::path::Path::new("/var/tmp"), a.json);
    drop(owned);
    super::profile::tell_if_published(&o, a.json)?;
    Ok(ExitCode::SUCCESS)
}
