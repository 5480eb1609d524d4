//! indicatif progress bars with one look across the tool. They draw on stderr only when it is a
//! terminal, so logs and CI output stay clean.
//!
//! A caller that runs many jobs under one bar of its own (`xray tune` over its trials) can
//! [`set_quiet`] the jobs: their bars are then hidden and their [`note`]s dropped.

use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::{ProgressBar, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Hides the bars made from now on and drops [`note`]s, until called with `false`.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether [`set_quiet`] is in force.
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Prints one line of progress information on stderr, unless quiet.
pub fn note(line: &str) {
    if !is_quiet() {
        eprintln!("{line}");
    }
}

/// A bar over a download of `len` bytes (a spinner with the count when the size is unknown),
/// labelled `what` (hidden when quiet).
pub fn byte_bar(len: Option<u64>, what: &str) -> ProgressBar {
    if is_quiet() {
        return ProgressBar::hidden();
    }
    let (bar, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec:>12} eta {eta:>4}",
        ),
        None => (
            ProgressBar::no_length(),
            "{prefix} {spinner} {bytes} {bytes_per_sec:>12}",
        ),
    };
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A bar over `len` items labelled `what`, with rate and time left (hidden when quiet).
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if is_quiet() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} {per_sec:>10} eta {eta:>4} {msg}",
        )
        .expect("the template is valid")
        .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}
