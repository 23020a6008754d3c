//! Process information from `/proc`: resident memory and the open-files limit.

/// Resident set size (`VmRSS`) of process `pid` in KiB, if readable.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss(&status)
}

/// Extracts the `VmRSS:   1234 kB` value from a `/proc/<pid>/status` text.
fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
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
    fn parses_vmrss() {
        let s = "Name:\tx\nVmPeak:\t  100 kB\nVmRSS:\t   4321 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss(s), Some(4321));
        assert_eq!(parse_vmrss("Name: x\n"), None);
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
