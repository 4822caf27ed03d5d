//! A small measuring harness: runs a workload several times and prints the
//! median rate, so that `cargo bench` output reads as figures, not noise.

use std::time::{Duration, Instant};

/// What one run of a workload did.
pub(crate) struct Work {
    /// Events processed.
    pub(crate) events: u64,
    /// Bytes processed.
    pub(crate) bytes: u64,
}

/// Runs `workload` `runs` times (after one warm-up run) and prints the
/// median events/s and MB/s under `name`. Returns the median events/s, or
/// `None` when the command line's filter (`cargo bench -- WORD`) leaves the
/// workload out.
pub(crate) fn measure(name: &str, runs: usize, mut workload: impl FnMut() -> Work) -> Option<f64> {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    if filter.is_some_and(|filter| !name.contains(&filter)) {
        return None;
    }
    workload();
    let mut samples: Vec<(f64, f64)> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let work = workload();
            let seconds = start.elapsed().max(Duration::from_nanos(1)).as_secs_f64();
            (work.events as f64 / seconds, work.bytes as f64 / seconds)
        })
        .collect();
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (events_per_second, bytes_per_second) = samples[samples.len() / 2];
    println!(
        "{name:<48} {:>12.0} events/s {:>9.1} MB/s {:>8.0} ns/event",
        events_per_second,
        bytes_per_second / 1e6,
        1e9 / events_per_second
    );
    Some(events_per_second)
}
