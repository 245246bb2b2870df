//! The standard `process_*` families every Prometheus client library exports, read
//! from `/proc/self` when scraped: dashboards and alerts written for any service
//! (memory, CPU, descriptors near their limit) work on Weir unchanged.

use std::fmt::Write;

/// What `/proc/self` says of this process now.
#[derive(Debug, Default, PartialEq)]
pub struct Process {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// The families, or nothing where `/proc` is not there to read.
pub fn render(out: &mut String) {
    let Some(p) = read() else { return };
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, seconds.",
            p.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size, bytes.",
            p.resident_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size, bytes (plugin instance slots reserve much of it).",
            p.virtual_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, seconds.",
            p.start_time_seconds,
        ),
        (
            "process_open_fds",
            "gauge",
            "Open file descriptors (about one per connection).",
            p.open_fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
            p.max_fds as f64,
        ),
        ("process_threads", "gauge", "OS threads.", p.threads as f64),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

#[cfg(target_os = "linux")]
pub fn read() -> Option<Process> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    // SAFETY: sysconf and getrlimit only read system values into what they return or
    // the struct passed in.
    let (ticks, page, max_fds) = unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // rlim_t is not u64 on every Linux target.
        #[allow(clippy::unnecessary_cast)]
        let max = match libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) {
            0 => l.rlim_cur as u64,
            _ => 0,
        };
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
            max,
        )
    };
    let mut p = from_stat(&stat, ticks.max(1) as f64, page.max(1) as u64, btime)?;
    p.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    p.max_fds = max_fds;
    Some(p)
}

#[cfg(not(target_os = "linux"))]
pub fn read() -> Option<Process> {
    None
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may hold
/// spaces or parentheses itself, so fields are counted from the last `)`.
pub fn from_stat(stat: &str, ticks: f64, page: u64, btime: u64) -> Option<Process> {
    let after = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state): utime is field 14, so f[11].
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(Process {
        cpu_seconds: (num(11)? + num(12)?) as f64 / ticks,
        threads: num(17)?,
        start_time_seconds: btime as f64 + num(19)? as f64 / ticks,
        virtual_bytes: num(20)?,
        resident_bytes: num(21)? * page,
        open_fds: 0,
        max_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (weir (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 7 0 12345 104857600 2560 18446744073709551615";
        let p = from_stat(stat, 100.0, 4096, 1_700_000_000).unwrap();
        assert_eq!(p.cpu_seconds, 3.0);
        assert_eq!(p.threads, 7);
        assert!((p.start_time_seconds - 1_700_000_123.45).abs() < 1e-3);
        assert_eq!(p.virtual_bytes, 104_857_600);
        assert_eq!(p.resident_bytes, 2560 * 4096);
        assert_eq!(from_stat("4242 (weir) S 1", 100.0, 4096, 0), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_as_alive() {
        let p = read().expect("/proc/self");
        assert!(p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 3);
        assert!(p.max_fds >= p.open_fds);
        let mut out = String::new();
        render(&mut out);
        assert!(out.contains("\nprocess_open_fds "), "{out}");
    }
}
