//! What the benchmarks read of a process in `/proc`: CPU time and memory.

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Linux reports process CPU time in clock ticks of 1/100 s (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU time of a process, all its threads.
pub(crate) fn cpu_seconds(pid: impl std::fmt::Display) -> Result<f64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or("unexpected /proc stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |index: usize| -> Result<f64, BoxError> {
        Ok(fields
            .get(index)
            .ok_or("short /proc stat")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15; the slice starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// A size in kB from `/proc/PID/status`, such as `VmRSS:` or `VmHWM:`.
pub(crate) fn status_kb(pid: impl std::fmt::Display, key: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .ok_or_else(|| format!("no {key} in /proc status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}
