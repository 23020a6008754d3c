//! Process information from `/proc`: resident memory, threads, open file descriptors,
//! CPU time and the open-files limit.

/// Kernel clock ticks per second of `utime`/`stime` (`USER_HZ`, 100 on Linux's
/// user-space ABI on every common architecture).
pub const TICKS_PER_SEC: f64 = 100.0;

/// Resident set size (`VmRSS`) of process `pid` in KiB, if readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "VmRSS:")
}

/// Threads of process `pid` (`Threads:` of `/proc/<pid>/status`), if readable.
pub fn threads(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "Threads:")
}

/// Open file descriptors of process `pid` (entries of `/proc/<pid>/fd`), if readable.
pub fn open_fds(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(dir.count() as u64)
}

/// User + system CPU ticks of `pid` from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

/// Fields 14 and 15 (`utime`, `stime`) of a `/proc/<pid>/stat` line; the command name
/// (field 2, in parentheses) may hold spaces, so fields are counted after its `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The number after `name` (e.g. `VmRSS:   1234 kB`) in a `/proc/<pid>/status` text.
fn status_field(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// This process's (soft, hard) open-files limit; `None` means unlimited or unknown.
pub fn open_files_limit() -> (Option<u64>, Option<u64>) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return (None, None);
    };
    parse_nofile(&limits)
}

/// Extracts the "Max open files" soft and hard values from a `/proc/<pid>/limits` text.
fn parse_nofile(limits: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = limits.lines().find(|l| l.starts_with("Max open files")) else {
        return (None, None);
    };
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().and_then(|v| v.parse().ok());
    let hard = fields.next().and_then(|v| v.parse().ok());
    (soft, hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_fields() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t   4321 kB\nThreads:\t7\n";
        assert_eq!(status_field(s, "VmRSS:"), Some(4321));
        assert_eq!(status_field(s, "Threads:"), Some(7));
        assert_eq!(status_field("Name: x\n", "VmRSS:"), None);
    }

    #[test]
    fn parses_cpu_ticks_after_the_command_name() {
        let stat = "4242 (switch board) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0";
        assert_eq!(parse_cpu_ticks(stat), Some(175));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(threads(me).is_some_and(|t| t >= 1));
        assert!(open_fds(me).is_some_and(|n| n >= 3));
        assert!(cpu_ticks(me).is_some());
    }

    #[test]
    fn parses_nofile() {
        let s = "Limit                     Soft Limit           Hard Limit           Units     \n\
                 Max open files            1024                 524288               files     \n";
        assert_eq!(parse_nofile(s), (Some(1024), Some(524288)));
        let u = "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_nofile(u), (None, None));
    }
}
