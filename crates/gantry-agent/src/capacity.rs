//! What this node offers: CPU and memory. GPUs come from [`crate::gpu`].

/// CPU cores visible to this process, in thousandths.
pub fn cpu_millis() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000
}

/// Total memory from /proc/meminfo, in MiB (0 if it cannot be read).
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| meminfo_kib(&s, "MemTotal"))
        .map_or(0, |kib| kib / 1024)
}

/// One field of /proc/meminfo (`MemTotal`, `MemAvailable`, …), in KiB.
pub(crate) fn meminfo_kib(meminfo: &str, field: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_reads_memory_and_cpu() {
        assert_eq!(
            meminfo_kib("MemTotal:       2048000 kB\nMemFree: 1 kB\n", "MemTotal"),
            Some(2_048_000)
        );
        assert_eq!(
            meminfo_kib("MemAvailableX: 1 kB\nMemAvailable: 7 kB", "MemAvailable"),
            Some(7)
        );
        assert_eq!(meminfo_kib("garbage", "MemTotal"), None);
        assert!(cpu_millis() >= 1000);
        assert!(memory_mib() > 0);
    }
}
