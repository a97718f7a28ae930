//! Charts drawn on the server as SVG: no script, no library, a few hundred bytes each.

use std::fmt::Write;

/// Escapes text for SVG (XML).
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A bar chart of two series per day (`(label, a, b)`), `a` in green and `b` in red, each bar
/// titled with its value. Pure: the same input draws the same bytes.
pub fn bars(days: &[(String, u64, u64)], a_name: &str, b_name: &str) -> String {
    const W: usize = 720;
    const H: usize = 160;
    const TOP: usize = 14;
    const BOTTOM: usize = 20;
    let max = days.iter().map(|d| d.1.max(d.2)).max().unwrap_or(0).max(1);
    let n = days.len().max(1);
    let slot = (W - 40) / n;
    let bar = (slot.saturating_sub(4) / 2).max(1);
    let plot = (H - TOP - BOTTOM) as u64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" \
         height=\"{H}\" role=\"img\" aria-label=\"{} and {} per day\">",
        esc(a_name),
        esc(b_name)
    );
    let _ = write!(
        s,
        "<text x=\"0\" y=\"10\">{max}</text><line x1=\"36\" y1=\"{TOP}\" x2=\"{W}\" y2=\"{TOP}\" \
         stroke=\"#d8dee4\"/><line x1=\"36\" y1=\"{}\" x2=\"{W}\" y2=\"{}\" stroke=\"#d8dee4\"/>",
        H - BOTTOM,
        H - BOTTOM
    );
    for (i, (label, a, b)) in days.iter().enumerate() {
        let x = 40 + i * slot;
        for (j, (v, color, name)) in [(*a, "#1a7f37", a_name), (*b, "#cf222e", b_name)]
            .into_iter()
            .enumerate()
        {
            let h = v * plot / max;
            let y = H as u64 - BOTTOM as u64 - h;
            let _ = write!(
                s,
                "<rect x=\"{}\" y=\"{y}\" width=\"{bar}\" height=\"{h}\" fill=\"{color}\">\
                 <title>{}: {v} {}</title></rect>",
                x + j * bar,
                esc(label),
                esc(name)
            );
        }
        if n <= 16 || i % 2 == 0 {
            let _ = write!(s, "<text x=\"{x}\" y=\"{}\">{}</text>", H - 6, esc(label));
        }
    }
    let _ = write!(
        s,
        "<rect x=\"{}\" y=\"2\" width=\"8\" height=\"8\" fill=\"#1a7f37\"/><text x=\"{}\" y=\"10\">{}</text>\
         <rect x=\"{}\" y=\"2\" width=\"8\" height=\"8\" fill=\"#cf222e\"/><text x=\"{}\" y=\"10\">{}</text></svg>",
        W - 200,
        W - 188,
        esc(a_name),
        W - 100,
        W - 88,
        esc(b_name)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_highest_and_escape_labels() {
        let svg = bars(
            &[("12-01".into(), 4, 0), ("<x>".into(), 2, 1)],
            "updates",
            "failures",
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        // the highest bar fills the plot (160 - 14 - 20 = 126), half of it is 63
        assert!(svg.contains("height=\"126\""), "{svg}");
        assert!(svg.contains("height=\"63\""), "{svg}");
        assert!(svg.contains("&lt;x&gt;: 1 failures"));
        assert!(!svg.contains("<x>"));
        // nothing at all still draws
        assert!(bars(&[], "a", "b").contains("</svg>"));
    }
}
