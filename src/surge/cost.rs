//! What the simulator itself costs, read from `/proc` (Linux), so a report
//! can show that the load generator was not the bottleneck. Elsewhere the
//! figures are simply absent.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` times. The kernel exposes
/// them in USER_HZ, which is 100 on every architecture Linux supports for
/// userspace (it is part of the ABI, independent of the kernel's HZ).
const USER_HZ: u64 = 100;

/// User + system CPU time of this process so far.
pub(crate) fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces and parentheses: count
    // fields after its closing parenthesis. utime and stime are fields 14, 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(
        Duration::from_secs(ticks / USER_HZ)
            + Duration::from_millis((ticks % USER_HZ) * 1000 / USER_HZ),
    )
}

/// The highest resident set size of this process so far (`VmHWM`), in bytes.
pub(crate) fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    kib_field(&status, "VmHWM:")
}

fn kib_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line[name.len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The soft limit on open files, when it is finite: each active pupil holds
/// a socket, so a ceiling above it would turn into `EMFILE` errors that are
/// the simulator's, not the target's.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_figures_are_read_on_linux() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        // Burn a little CPU so the figure is not zero by luck.
        let mut x = 0_u64;
        for i in 0..5_000_000_u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_time().is_some(), "cpu time from /proc/self/stat");
        assert!(peak_rss_bytes().is_some_and(|b| b > 1 << 20), "VmHWM");
        assert!(open_files_limit().is_some_and(|n| n > 0), "Max open files");
    }

    #[test]
    fn status_fields_are_parsed_in_kib() {
        let status = "Name:\tdigue\nVmHWM:\t   20480 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(kib_field(status, "VmHWM:"), Some(20 << 20));
    }
}
