//! Replicas in their own network namespaces, so tests can partition them.
//!
//! Each replica gets a namespace with a veth pair onto a bridge in the
//! test's own namespace; the bridge holds `10.S.T.254`, replica `i` holds
//! `10.S.T.i`. Agents and clients stay in the test's namespace and reach
//! every replica through the bridge. A cut from `a` to `b` is a blackhole
//! route to `b` inside `a`'s namespace: packets `a` sends to `b` vanish (a
//! real partition: timeouts, not refusals). TCP needs both directions, so
//! a one-way cut at the packet level stops every connection between the
//! two; what stays one-way is who notices first.
//!
//! Needs root and `ip` (iproute2). [`Netns::create`] fails cleanly
//! otherwise, and the harness falls back to loopback and says so.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Netns {
    prefix: String,
    bridge: String,
    net: (u8, u8),
    ids: Vec<u64>,
}

/// Runs `program args...`; its stderr is the error when it fails.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    run("iptables", args)
}

/// Whether the host's FORWARD chain drops by default.
fn forward_policy_drops() -> bool {
    Command::new("iptables")
        .args(["-S", "FORWARD"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("-P FORWARD DROP"))
}

impl Netns {
    /// Namespaces for replicas `ids` (1..=253), or why they could not be made.
    pub fn create(ids: &[u64]) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Names fit IFNAMSIZ (15); the subnet is unique per process and cluster.
        let prefix = format!("gt{}x{n}", pid % 100_000);
        let net = (100 + (n % 100) as u8, (pid % 250) as u8);
        let me = Netns {
            bridge: format!("{prefix}b"),
            prefix,
            net,
            ids: ids.to_vec(),
        };
        // On failure, dropping `me` removes whatever was made.
        me.setup(ids)?;
        Ok(me)
    }

    fn setup(&self, ids: &[u64]) -> anyhow::Result<()> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        // Where bridged frames pass the host's iptables and its FORWARD
        // policy drops them (Docker sets that), let this bridge's through.
        if forward_policy_drops() {
            self.forward_rule("-I")?;
        }
        ip(&[
            "addr",
            "add",
            &format!("10.{}.{}.254/24", self.net.0, self.net.1),
            "dev",
            &self.bridge,
        ])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        for id in ids {
            let (ns, outer) = (self.ns(*id), format!("{}v{id}", self.prefix));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &outer, "master", &self.bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.ip(*id)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Inserts (`-I`) or deletes (`-D`) the rule that accepts this bridge's
    /// forwarded frames.
    fn forward_rule(&self, op: &str) -> anyhow::Result<()> {
        let b = self.bridge.as_str();
        iptables(&[op, "FORWARD", "-i", b, "-o", b, "-j", "ACCEPT"])
    }

    fn teardown(&self, ids: &[u64]) {
        if forward_policy_drops() {
            let _ = self.forward_rule("-D");
        }
        for id in ids {
            let _ = ip(&["netns", "del", &self.ns(*id)]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }

    fn ns(&self, id: u64) -> String {
        format!("{}r{id}", self.prefix)
    }

    /// Replica `id`'s address.
    pub fn ip(&self, id: u64) -> String {
        format!("10.{}.{}.{id}", self.net.0, self.net.1)
    }

    /// The command prefix that runs a program inside replica `id`'s namespace.
    pub fn exec(&self, id: u64) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(id)]
    }

    /// Drops every packet `from` sends to `to`.
    pub fn cut(&self, from: u64, to: u64) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns(from),
            "route",
            "replace",
            "blackhole",
            &format!("{}/32", self.ip(to)),
        ])
    }

    /// Cuts both ways between every member of `a` and every member of `b`.
    pub fn split(&self, a: &[u64], b: &[u64]) -> anyhow::Result<()> {
        for x in a {
            for y in b {
                self.cut(*x, *y)?;
                self.cut(*y, *x)?;
            }
        }
        Ok(())
    }

    /// Removes every cut.
    pub fn heal(&self) -> anyhow::Result<()> {
        for id in &self.ids {
            ip(&["-n", &self.ns(*id), "route", "flush", "type", "blackhole"])?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.teardown(&self.ids);
    }
}
