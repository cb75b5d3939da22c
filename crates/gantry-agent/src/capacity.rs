//! What this node offers: CPU, memory and GPUs (through NVML).

use gantry_proto::v1::GpuInfo;

/// CPU cores visible to this process, in thousandths.
pub fn cpu_millis() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64) * 1000
}

/// Total memory from /proc/meminfo, in MiB (0 if it cannot be read).
pub fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| parse_mem_total_kib(&s))
        .map_or(0, |kib| kib / 1024)
}

fn parse_mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The node's NVIDIA GPUs through NVML. No driver or no GPU means zero GPUs
/// and one log line, never an error.
pub fn gpus() -> Vec<GpuInfo> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::info!(reason = %e, "NVML is not available (no NVIDIA driver or GPU): registering 0 GPUs");
            return Vec::new();
        }
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "NVML could not count devices: registering 0 GPUs");
            return Vec::new();
        }
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(index, error = %e, "NVML could not open a GPU; skipping it");
                continue;
            }
        };
        gpus.push(GpuInfo {
            index,
            uuid: device.uuid().unwrap_or_default(),
            model: device.name().unwrap_or_default(),
            memory_total_mib: device.memory_info().map_or(0, |m| m.total / (1024 * 1024)),
        });
    }
    tracing::info!(count = gpus.len(), "GPUs found through NVML");
    gpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_reads_memory_and_cpu() {
        assert_eq!(
            parse_mem_total_kib("MemTotal:       2048000 kB\nMemFree: 1 kB\n"),
            Some(2_048_000)
        );
        assert_eq!(parse_mem_total_kib("garbage"), None);
        assert!(cpu_millis() >= 1000);
        assert!(memory_mib() > 0);
    }

    #[test]
    fn t10_gpu_discovery_goes_through_nvml_and_degrades_to_zero() {
        // On a machine with a driver this lists its GPUs; without one, NVML's
        // init fails and the answer is an empty list rather than a panic.
        let gpus = gpus();
        let has_driver = nvml_wrapper::Nvml::init().is_ok();
        if !has_driver {
            assert!(gpus.is_empty());
        }
        for g in &gpus {
            assert!(!g.uuid.is_empty());
        }
    }
}
