//! Free loopback ports for the processes a test starts.

/// Ports this process handed out already: tests in one binary run in
/// parallel, and a port released by one cluster must not go to another.
static HANDED_OUT: std::sync::LazyLock<std::sync::RwLock<std::collections::HashSet<u16>>> =
    std::sync::LazyLock::new(Default::default);

/// The lowest port the kernel hands out for outgoing connections.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Loopback addresses on free ports, checked by binding them and released
/// for the child. They are drawn below the kernel's ephemeral range when it
/// is known, so that no outgoing connection (of this process or another)
/// can take one between its release and the child's bind; else port 0.
pub fn free_addrs(n: usize) -> anyhow::Result<Vec<String>> {
    use rand::Rng;
    let mut held = Vec::new();
    let mut addrs = Vec::new();
    let mut handed = HANDED_OUT
        .write()
        .map_err(|_| anyhow::anyhow!("port registry poisoned"))?;
    let low = ephemeral_low().filter(|l| *l > 12_000);
    let mut tries = 0;
    while addrs.len() < n {
        tries += 1;
        let l = match low {
            Some(low) if tries < 10_000 => {
                let port = rand::rng().random_range(10_000..low);
                match std::net::TcpListener::bind(("127.0.0.1", port)) {
                    Ok(l) => l,
                    Err(_) => continue,
                }
            }
            _ => std::net::TcpListener::bind("127.0.0.1:0")?,
        };
        let addr = l.local_addr()?;
        if handed.insert(addr.port()) {
            addrs.push(addr.to_string());
        }
        // Keep every listener open until all are chosen, so none is
        // chosen twice.
        held.push(l);
    }
    Ok(addrs)
}
