//! Which channel this machine follows: the server names it at every check-in, and the agent
//! takes it only when something it trusts confirms it (docs/TRUST.md, "Channel assignment").
//!
//! - A channel pinned in the agent's config wins over anything else.
//! - Otherwise, when the repository signs channel assignments (the targets role delegates
//!   `assignments/*`), the channel must be the one signed for this machine: a move is followed
//!   once it is signed, and a man in the middle cannot name another channel.
//! - A repository that does not sign them yet: the first channel named is kept (trust on first
//!   use), and a move is followed only with `follow_channel_changes`.

use semithin_trust::client::Client;
use semithin_trust::repo::assign;

use super::*;

impl Agent {
    /// The channel signed for this machine: `None` when the repository does not sign
    /// assignments, `Some(None)` when it does but names none for this machine.
    pub(crate) fn signed_assignment(
        &self,
        client: &mut Client<'_>,
    ) -> Result<Option<Option<String>>> {
        let Some(machine) = self.state.machine_id.as_deref() else {
            return Ok(None);
        };
        if !client.delegates(assign::ROLE) {
            return Ok(None);
        }
        let Some(info) = client.find_target(&assign::target_path(machine))? else {
            return Ok(Some(None));
        };
        let channel = assign::channel_of(&info)
            .map_err(|e| Error::Channel(format!("the signed assignment is malformed: {e}")))?;
        Ok(Some(Some(channel)))
    }

    /// Whether this machine follows `channel`, as the server names it: `Some(reason)` when it
    /// does not. Checked against the signed assignment (fetching the metadata at `meta_path`)
    /// when the channel is new to this machine.
    pub(crate) fn check_channel(
        &mut self,
        channel: &str,
        meta_path: &ApiPath,
    ) -> Result<Option<String>> {
        let signed = match (&self.cfg.channel, &self.state.channel) {
            (None, known) if known.as_deref() != Some(channel) => {
                // Metadata that cannot be fetched or verified now confirms nothing: the
                // channel is then taken or refused as without signed assignments, and the
                // release is checked against the signed assignment once it can be verified.
                let looked = self
                    .trust_client(meta_path)
                    .and_then(|mut c| self.signed_assignment(&mut c));
                match looked {
                    Ok(s) => s,
                    Err(e) => {
                        self.say(&format!(
                            "the signed channel assignment cannot be looked at now: {e}"
                        ));
                        None
                    }
                }
            }
            _ => None,
        };
        let (follows, refusal) = match (&self.cfg.channel, &self.state.channel, signed) {
            (Some(pin), _, _) if pin != channel => (
                Some(pin.clone()),
                Some(format!(
                    "the server names channel {channel:?} for this machine, but it is pinned \
                     to {pin:?} (`channel` in the agent's config): nothing is fetched from it"
                )),
            ),
            (Some(pin), _, _) => (Some(pin.clone()), None),
            (None, old, Some(Some(s))) if s == channel => {
                self.say(&match old {
                    Some(old) => {
                        format!("following the signed assignment from channel {old} to {channel}")
                    }
                    None => format!("following channel {channel}, as signed for this machine"),
                });
                (Some(channel.to_owned()), None)
            }
            (None, old, Some(s)) => (
                old.clone(),
                Some(format!(
                    "the server names channel {channel:?} for this machine, but the signed \
                     assignment says {}: the move is refused until the two agree (a man in the \
                     middle, or an assignment not signed yet)",
                    s.map_or("none".to_owned(), |s| format!("{s:?}"))
                )),
            ),
            (None, Some(old), None) if old != channel && !self.cfg.follow_channel_changes => (
                Some(old.clone()),
                Some(format!(
                    "the server moves this machine from channel {old:?} to {channel:?}, and \
                     nothing signed confirms the move (the repository does not sign channel \
                     assignments yet: a publish sets that up): to move it, set `channel = \
                     \"{channel}\"` in the agent's config (or --channel); to let the server \
                     move it, `follow_channel_changes = true`"
                )),
            ),
            (None, Some(old), None) if old != channel => {
                self.say(&format!(
                    "following the server from channel {old} to {channel} \
                     (follow_channel_changes)"
                ));
                (Some(channel.to_owned()), None)
            }
            (None, Some(old), None) => (Some(old.clone()), None),
            (None, None, None) => {
                self.say(&format!(
                    "following channel {channel}, the first the server named (a move to \
                     another is refused unless the config says so)"
                ));
                (Some(channel.to_owned()), None)
            }
        };
        if follows.is_some() && self.state.channel != follows {
            self.state.channel = follows;
            self.save()?;
        }
        Ok(refusal)
    }
}
