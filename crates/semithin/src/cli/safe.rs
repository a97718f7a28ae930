//! Text that came from a machine or a server, fit for a terminal: every control character
//! (escape sequences, carriage returns, C1 controls such as the one-byte CSI) and every
//! direction override is shown as its `\u{..}` escape, so a machine named, labelled or erring
//! with `\x1b[2J` cannot clear or rewrite the admin's screen.

use std::fmt;

/// `s` with control characters escaped; keeps nothing but printable text on one line.
pub fn safe(s: &str) -> Safe<'_> {
    Safe { text: s }
}

/// `Option<&str>` shown safely, `-` when absent.
pub fn safe_or_dash(s: Option<&str>) -> Safe<'_> {
    safe(s.unwrap_or("-"))
}

pub struct Safe<'a> {
    text: &'a str,
}

fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for Safe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.text.chars().any(hostile) {
            return f.pad(self.text);
        }
        let mut out = String::with_capacity(self.text.len() + 16);
        for c in self.text.chars() {
            if hostile(c) {
                out.extend(c.escape_unicode());
            } else {
                out.push(c);
            }
        }
        f.pad(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_control_characters_and_keeps_the_rest() {
        assert_eq!(safe("\u{1b}[2Jx").to_string(), "\\u{1b}[2Jx");
        assert_eq!(safe("a\rb\u{9b}c").to_string(), "a\\u{d}b\\u{9b}c");
        assert_eq!(safe("évier\u{202e}").to_string(), "évier\\u{202e}");
        assert_eq!(safe("a\nb").to_string(), "a\\u{a}b");
        assert_eq!(format!("{:<5}|", safe("ab")), "ab   |");
        assert_eq!(format!("{:<5}|", safe("\u{7}")), "\\u{7}|");
    }
}
