//! Parsing of human-friendly flag values.

/// CPU as Kubernetes writes it: `500m` (millicores) or `1.5` (cores).
pub fn cpu_millis(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a CPU amount: use cores (1, 0.5) or millicores (500m)");
    if let Some(m) = s.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| bad());
    }
    let cores: f64 = s.parse().map_err(|_| bad())?;
    if !cores.is_finite() || !(0.0..=1.0e6).contains(&cores) {
        return Err(bad());
    }
    Ok((cores * 1000.0).round() as u64)
}

/// Memory in MiB: `512`, `512Mi`, `2Gi`.
pub fn memory_mib(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a memory amount: use MiB (512), 512Mi or 2Gi");
    let (num, mult) = if let Some(n) = s.strip_suffix("Gi") {
        (n, 1024)
    } else if let Some(n) = s.strip_suffix("Mi") {
        (n, 1)
    } else {
        (s, 1)
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(bad)
}

/// `key=value`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// A duration as people write it: `250ms`, `30s`, `5m`, `1h 30m`.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}): use 250ms, 30s, 5m or 1h"))?;
    u64::try_from(d.as_millis()).map_err(|_| format!("{s:?} is too long"))
}

/// How long a finished job is kept: a duration (7d, 12h), or `forever` (0);
/// read as the server reads its `--job-retention`.
pub fn retention_ms(s: &str) -> Result<u64, String> {
    gantry_server::parse_retention(s)
}

/// `[HOST:]PORT` for a TCP readiness probe.
pub fn tcp_probe(s: &str) -> Result<gantry_client::api::TcpProbe, String> {
    let (host, port) = host_port(s)?;
    Ok(gantry_client::api::TcpProbe { host, port })
}

/// `[HOST:]PORT[/PATH]` for an HTTP readiness probe.
pub fn http_probe(s: &str) -> Result<gantry_client::api::HttpProbe, String> {
    let s = s.strip_prefix("http://").unwrap_or(s);
    let (addr, path) = match s.find('/') {
        Some(i) => (&s[..i], s[i..].to_owned()),
        None => (s, String::new()),
    };
    let (host, port) = host_port(addr)?;
    Ok(gantry_client::api::HttpProbe { host, port, path })
}

fn host_port(s: &str) -> Result<(String, u32), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p),
        None => (String::new(), s),
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("{s:?}: expected [HOST:]PORT with a port from 1 to 65535"))?;
    Ok((host, u32::from(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t10_parses_units_and_refuses_garbage() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("1.5"), Ok(1500));
        assert!(cpu_millis("-1").is_err());
        assert!(cpu_millis("lots").is_err());
        assert_eq!(memory_mib("2Gi"), Ok(2048));
        assert_eq!(memory_mib("512"), Ok(512));
        assert!(memory_mib("1Ti").is_err());
        assert_eq!(key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(key_value("=b").is_err());
        assert_eq!(duration_ms("5m"), Ok(300_000));
        assert_eq!(duration_ms("250ms"), Ok(250));
        assert!(duration_ms("soon").is_err());
    }

    #[test]
    fn t10_probe_targets() {
        let h = http_probe("8080/health").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.path.as_str()),
            ("", 8080, "/health")
        );
        let h = http_probe("http://10.0.0.1:80").unwrap();
        assert_eq!(
            (h.host.as_str(), h.port, h.path.as_str()),
            ("10.0.0.1", 80, "")
        );
        let t = tcp_probe("db:5432").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("db", 5432));
        assert!(tcp_probe("0").is_err());
        assert!(tcp_probe("host:99999").is_err());
        assert!(http_probe("x/y").unwrap_err().contains("[HOST:]PORT"));
    }
}
