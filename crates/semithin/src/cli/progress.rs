//! Progress bars on a terminal; nothing when output goes to a script.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use semithin_store::Progress;

pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    enabled: bool,
}

impl Bar {
    /// A bar drawn on stderr when it is a terminal and `quiet` is false.
    pub fn new(quiet: bool) -> Self {
        Self {
            bar: Mutex::new(None),
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    pub fn finish(&self) {
        if let Some(b) = self.bar.lock().expect("lock").take() {
            b.finish_and_clear();
        }
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, total: Option<u64>) {
        let mut guard = self.bar.lock().expect("lock");
        if let Some(b) = guard.take() {
            b.finish_and_clear();
        }
        if !self.enabled {
            return;
        }
        let bytes = matches!(name, "storing" | "writing" | "exporting");
        let bar = match total {
            Some(t) if !bytes => {
                ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()).with_style(
                    ProgressStyle::with_template(
                        "{msg:>10} [{bar:30}] {human_pos}/{human_len} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                )
            }
            Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr())
                .with_style(
                    ProgressStyle::with_template(
                        "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                ),
            None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template("{msg:>10} {spinner} {bytes} {bytes_per_sec}")
                    .expect("valid template"),
            ),
        };
        bar.set_message(name.to_owned());
        *guard = Some(bar);
    }

    fn advance(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("lock").as_ref() {
            b.inc(n);
        }
    }

    fn warn(&self, message: &str) {
        match self.bar.lock().expect("lock").as_ref() {
            Some(b) => b.suspend(|| note!("warning: {message}")),
            None => note!("warning: {message}"),
        }
    }
}
