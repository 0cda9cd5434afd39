//! Progress of a long run on stderr: a bar on a terminal, a line per tenth of the run
//! otherwise (a CI log), nothing when not asked for. Shared by the tortures.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    total: u64,
    /// What the run is called in its lines ("torture"), and what it counts ("ops").
    name: &'static str,
    unit: &'static str,
    next_line: AtomicU64,
}

impl Progress {
    pub fn new(show: bool, total: u64, name: &'static str, unit: &'static str) -> Self {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{elapsed_precise}} [{{bar:40}}] {{pos}}/{{len}} {unit} (eta {{eta}}) {{msg}}"
                ))
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            lines: show && bar.is_none(),
            bar,
            total,
            name,
            unit,
            next_line: AtomicU64::new(1),
        }
    }

    /// `done` of the total; `status` says the rest (removals, failures).
    pub fn update(&self, done: u64, status: impl FnOnce() -> String) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            bar.set_message(status());
        } else if self.lines {
            let tenth = self.next_line.load(Ordering::Relaxed);
            if tenth <= 10 && done >= self.total * tenth / 10 {
                self.next_line.store(tenth + 1, Ordering::Relaxed);
                eprintln!(
                    "{}: {done}/{} {}, {}",
                    self.name,
                    self.total,
                    self.unit,
                    status()
                );
            }
        }
    }

    pub fn finish(&self, status: String) {
        if let Some(bar) = &self.bar {
            bar.finish_with_message(status);
        }
    }
}
