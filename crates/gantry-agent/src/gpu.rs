//! Where the node's GPU facts come from: NVML (the driver), or an inventory
//! file that tests and simulations hand the agent instead. Registration (the
//! hello's GPU list) and the health checks' telemetry both read the same
//! source, so a node never registers GPUs its checks cannot see.

use std::path::{Path, PathBuf};

use gantry_proto::v1::{GpuInfo, GpuTelemetry};
use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::{EccCounter, MemoryError, TemperatureSensor};
use nvml_wrapper::error::NvmlError;
use serde::Deserialize;

const MIB: u64 = 1024 * 1024;

/// The origin of GPU inventory and telemetry.
#[derive(Debug)]
pub enum GpuSource {
    /// The NVIDIA driver, initialised once: init loads the library and
    /// enumerates devices, too costly to repeat at every check. Boxed: the
    /// handle holds the library's whole symbol table (about 12 KB).
    Nvml(Box<Nvml>),
    /// `--gpu-inventory FILE`, a test/simulation input. Re-read at each check
    /// so a test can change the node's GPUs under a running agent.
    File(PathBuf),
    /// No driver or no GPU: the node has zero GPUs.
    None,
}

/// The inventory file's shape; unknown fields are refused so a typo does not
/// silently become a default.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    gpus: Vec<InventoryGpu>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryGpu {
    uuid: String,
    model: String,
    memory_total_mib: u64,
    #[serde(default)]
    memory_used_mib: u64,
    #[serde(default)]
    utilization_percent: u32,
    #[serde(default)]
    temperature_c: u32,
    #[serde(default)]
    power_mw: u32,
    #[serde(default)]
    ecc_errors: u64,
}

// === impl GpuSource ===

impl GpuSource {
    /// The inventory file when one is given, else NVML, else nothing. Says
    /// once, at start, which one it is.
    pub fn detect(inventory: Option<&Path>) -> GpuSource {
        if let Some(path) = inventory {
            tracing::warn!(
                file = %path.display(),
                "GPUs come from an inventory file (a test/simulation input); NVML is not used"
            );
            return GpuSource::File(path.to_owned());
        }
        match Nvml::init() {
            Ok(nvml) => GpuSource::Nvml(Box::new(nvml)),
            Err(e) => {
                tracing::info!(reason = %e, "NVML is not available (no NVIDIA driver or GPU): 0 GPUs");
                GpuSource::None
            }
        }
    }

    /// The GPUs to register. An NVML device that cannot be opened is skipped
    /// (its health check then fails); an inventory file that cannot be read
    /// is an error, since it is a configuration the operator gave.
    pub fn inventory(&self) -> Result<Vec<GpuInfo>, String> {
        let gpus = match self {
            GpuSource::None => return Ok(Vec::new()),
            GpuSource::File(path) => read_inventory(path)?.iter().map(info).collect(),
            GpuSource::Nvml(nvml) => nvml_inventory(nvml),
        };
        tracing::info!(count = gpus.len(), source = self.name(), "GPUs found");
        Ok(gpus)
    }

    /// Every GPU's state now, or why it cannot be read (one unreadable GPU
    /// makes the whole answer an error: the node is then not trustworthy).
    pub fn telemetry(&self) -> Result<Vec<GpuTelemetry>, String> {
        match self {
            GpuSource::None => Ok(Vec::new()),
            GpuSource::File(path) => read_inventory(path),
            GpuSource::Nvml(nvml) => nvml_telemetry(nvml),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            GpuSource::Nvml(_) => "nvml",
            GpuSource::File(_) => "inventory file",
            GpuSource::None => "none",
        }
    }
}

/// The registration view of a GPU's telemetry.
pub fn info(t: &GpuTelemetry) -> GpuInfo {
    GpuInfo {
        index: t.index,
        uuid: t.uuid.clone(),
        model: t.model.clone(),
        memory_total_mib: t.memory_total_mib,
    }
}

/// Reads and validates an inventory file; errors name the file and field.
pub fn read_inventory(path: &Path) -> Result<Vec<GpuTelemetry>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read the GPU inventory: {e}", path.display()))?;
    parse_inventory(&path.display().to_string(), &text)
}

/// Parses inventory JSON (`{"gpus":[{"uuid":…,"model":…,"memory_total_mib":…}]}`);
/// a GPU's index is its position. `origin` prefixes every error.
pub fn parse_inventory(origin: &str, text: &str) -> Result<Vec<GpuTelemetry>, String> {
    let file: InventoryFile =
        serde_json::from_str(text).map_err(|e| format!("{origin}: invalid GPU inventory: {e}"))?;
    let mut gpus = Vec::with_capacity(file.gpus.len());
    for (i, g) in file.gpus.into_iter().enumerate() {
        let field = |name: &str, why: &str| format!("{origin}: gpus[{i}].{name}: {why}");
        if g.uuid.trim().is_empty() {
            return Err(field("uuid", "must not be empty"));
        }
        if gpus.iter().any(|o: &GpuTelemetry| o.uuid == g.uuid) {
            return Err(field("uuid", &format!("{:?} appears twice", g.uuid)));
        }
        if g.model.trim().is_empty() {
            return Err(field("model", "must not be empty"));
        }
        if g.memory_total_mib == 0 {
            return Err(field("memory_total_mib", "must be more than 0"));
        }
        if g.utilization_percent > 100 {
            return Err(field("utilization_percent", "must be 0 to 100"));
        }
        gpus.push(GpuTelemetry {
            index: u32::try_from(i).map_err(|_| field("", "too many GPUs"))?,
            uuid: g.uuid,
            model: g.model,
            memory_total_mib: g.memory_total_mib,
            // Used above total is kept, not refused: it is what a test sets to
            // make the GPU memory health check fail.
            memory_used_mib: g.memory_used_mib,
            utilization_percent: g.utilization_percent,
            temperature_c: g.temperature_c,
            power_mw: g.power_mw,
            ecc_errors: g.ecc_errors,
        });
    }
    Ok(gpus)
}

fn nvml_inventory(nvml: &Nvml) -> Vec<GpuInfo> {
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
            memory_total_mib: device.memory_info().map_or(0, |m| m.total / MIB),
        });
    }
    gpus
}

fn nvml_telemetry(nvml: &Nvml) -> Result<Vec<GpuTelemetry>, String> {
    let count = nvml
        .device_count()
        .map_err(|e| format!("NVML cannot count the GPUs: {e}"))?;
    (0..count)
        .map(|index| {
            let device = nvml
                .device_by_index(index)
                .map_err(|e| format!("GPU {index}: NVML cannot open it: {e}"))?;
            let unreadable = |what: &str, e: NvmlError| format!("GPU {index}: {what}: {e}");
            let memory = device.memory_info().map_err(|e| unreadable("memory", e))?;
            Ok(GpuTelemetry {
                index,
                uuid: device.uuid().map_err(|e| unreadable("uuid", e))?,
                model: device.name().map_err(|e| unreadable("name", e))?,
                memory_total_mib: memory.total / MIB,
                memory_used_mib: memory.used / MIB,
                utilization_percent: unsupported_as_zero(device.utilization_rates())
                    .map_err(|e| unreadable("utilization", e))?
                    .map_or(0, |u| u.gpu),
                temperature_c: device
                    .temperature(TemperatureSensor::Gpu)
                    .map_err(|e| unreadable("temperature", e))?,
                power_mw: unsupported_as_zero(device.power_usage())
                    .map_err(|e| unreadable("power", e))?
                    .unwrap_or(0),
                // GPUs without ECC (most consumer boards) answer NotSupported:
                // they have no ECC errors to report.
                ecc_errors: unsupported_as_zero(
                    device.total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile),
                )
                .map_err(|e| unreadable("ECC errors", e))?
                .unwrap_or(0),
            })
        })
        .collect()
}

/// Telemetry a board does not offer is absent, not a failure.
fn unsupported_as_zero<T>(r: Result<T, NvmlError>) -> Result<Option<T>, NvmlError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(NvmlError::NotSupported) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A100: &str = r#"{"gpus":[
        {"uuid":"GPU-a","model":"NVIDIA A100-SXM4-80GB","memory_total_mib":81920,
         "memory_used_mib":1024,"utilization_percent":50,"temperature_c":40,
         "power_mw":60000,"ecc_errors":0},
        {"uuid":"GPU-b","model":"NVIDIA A100-SXM4-80GB","memory_total_mib":81920}
    ]}"#;

    #[test]
    fn t10_inventory_file_parses_with_defaults_and_positions() {
        let gpus = parse_inventory("inv.json", A100).unwrap();
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[0].index, 0);
        assert_eq!(gpus[0].memory_used_mib, 1024);
        assert_eq!(gpus[0].power_mw, 60000);
        assert_eq!(gpus[1].index, 1);
        assert_eq!(gpus[1].uuid, "GPU-b");
        assert_eq!(gpus[1].temperature_c, 0);
        assert_eq!(info(&gpus[1]).memory_total_mib, 81920);
        assert!(
            parse_inventory("inv.json", r#"{"gpus":[]}"#)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn t10_inventory_errors_name_the_file_and_field() {
        let err = |text: &str| parse_inventory("inv.json", text).unwrap_err();
        let e = err(r#"{"gpus":[{"model":"m","memory_total_mib":1}]}"#);
        assert!(e.starts_with("inv.json:") && e.contains("uuid"), "{e}");
        let e = err(r#"{"gpus":[{"uuid":" ","model":"m","memory_total_mib":1}]}"#);
        assert!(
            e.contains("inv.json: gpus[0].uuid: must not be empty"),
            "{e}"
        );
        let e = err(r#"{"gpus":[{"uuid":"a","model":"m","memory_total_mib":1},
                        {"uuid":"a","model":"m","memory_total_mib":1}]}"#);
        assert!(e.contains("gpus[1].uuid"), "{e}");
        let e = err(r#"{"gpus":[{"uuid":"a","model":"m","memory_total_mib":0}]}"#);
        assert!(e.contains("gpus[0].memory_total_mib"), "{e}");
        let e = err(r#"{"gpus":[{"uuid":"a","model":"m","memory_total_mib":1,"temp":3}]}"#);
        assert!(e.contains("unknown field `temp`"), "{e}");
        let e = err(
            r#"{"gpus":[{"uuid":"a","model":"m","memory_total_mib":1,"utilization_percent":101}]}"#,
        );
        assert!(e.contains("gpus[0].utilization_percent"), "{e}");
        assert!(err("not json").starts_with("inv.json: invalid GPU inventory"));
    }

    #[test]
    fn t10_inventory_file_is_reread_at_each_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gpus.json");
        let source = GpuSource::File(path.clone());
        let e = source.telemetry().unwrap_err();
        assert!(e.contains("gpus.json: cannot read"), "{e}");
        std::fs::write(&path, A100).unwrap();
        assert_eq!(source.inventory().unwrap().len(), 2);
        std::fs::write(&path, r#"{"gpus":[]}"#).unwrap();
        assert!(source.telemetry().unwrap().is_empty());
    }

    #[test]
    fn t10_gpu_discovery_goes_through_nvml_and_degrades_to_zero() {
        // On a machine with a driver this lists its GPUs; without one, NVML's
        // init fails and the answer is no GPUs rather than a panic or error.
        let source = GpuSource::detect(None);
        let has_driver = Nvml::init().is_ok();
        assert_eq!(matches!(source, GpuSource::Nvml(_)), has_driver);
        let gpus = source.inventory().unwrap();
        if !has_driver {
            assert!(gpus.is_empty());
            assert!(source.telemetry().unwrap().is_empty());
        }
        for g in &gpus {
            assert!(!g.uuid.is_empty());
        }
        if has_driver {
            let telemetry = source.telemetry().unwrap();
            assert_eq!(telemetry.len(), gpus.len());
            for t in &telemetry {
                assert!(t.memory_total_mib > 0 && t.memory_used_mib <= t.memory_total_mib);
            }
        }
    }
}
