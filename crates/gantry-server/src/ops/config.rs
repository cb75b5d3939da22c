//! A replica's configuration, validated before anything starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gantry_proto::transport::TlsPaths;
use serde::Deserialize;

/// Everything `gantry server` needs. Built by the CLI from flags, `GANTRY_*`
/// environment variables and an optional TOML file (in that order of
/// precedence), then checked by [`ServerConfig::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// This replica's id; must be a key of `peers`.
    pub id: u64,
    /// Address to listen on (`host:port`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Where to serve `/metrics`, `/health`, `/ready` and `/live` over plain
    /// HTTP (`host:port`); off when unset.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Every replica of the initial cluster: id → `host:port` other replicas reach it at.
    pub peers: BTreeMap<u64, String>,
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftTimings,
    /// Never bootstrap the cluster: for a replica that is added to a running
    /// cluster with `gantry cluster add-replica`.
    #[serde(default)]
    pub join: bool,
    /// How long a client request may wait for a leader or a commit before
    /// the replica answers UNAVAILABLE (a client's own grpc-timeout, if shorter, wins).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A node is lost when no replica has held its session for this long.
    #[serde(default = "default_node_grace_ms")]
    pub node_grace_ms: u64,
    /// mTLS material: required unless `insecure`.
    #[serde(skip)]
    pub tls: Option<TlsPaths>,
    /// Plaintext, no authentication: only when asked for explicitly.
    #[serde(default)]
    pub insecure: bool,
    /// Submit requests per second each client identity may make (a token bucket).
    #[serde(default = "default_submit_rate")]
    pub submit_rate: u32,
    /// How many submit requests a client may make at once before the rate applies.
    #[serde(default = "default_submit_burst")]
    pub submit_burst: u32,
    /// The placement policy for jobs that name none: strict, balanced or aggressive.
    #[serde(default = "default_placement")]
    pub placement: String,
    /// When new submissions are refused (see `admission`).
    #[serde(default)]
    pub admission: AdmissionLimits,
}

/// When a replica refuses new submissions with RESOURCE_EXHAUSTED.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionLimits {
    /// Free space kept in the data dir: below it, submissions are refused
    /// (an alarm, like etcd's NOSPACE) until space is freed.
    pub disk_reserve_mib: u64,
    /// Pending tasks the cluster holds at most (0: no limit).
    pub max_pending_tasks: u64,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        Self {
            disk_reserve_mib: 256,
            max_pending_tasks: 1_000_000,
        }
    }
}

impl AdmissionLimits {
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk_reserve_mib.saturating_mul(1024 * 1024)
    }
}

fn default_placement() -> String {
    "balanced".to_owned()
}

fn default_submit_rate() -> u32 {
    2_000
}

fn default_submit_burst() -> u32 {
    4_000
}

fn default_node_grace_ms() -> u64 {
    10_000
}

/// Raft timing and compaction knobs, in milliseconds and entries.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTimings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_every: 10_000,
        }
    }
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// A configuration problem: the field and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        field,
        problem: problem.into(),
    }
}

// === impl ServerConfig ===

impl ServerConfig {
    /// The cluster's default placement policy (balanced if unreadable;
    /// `validate` refuses that at start).
    pub fn placement_policy(&self) -> gantry_core::PlacementPolicy {
        match gantry_core::PlacementPolicy::parse(&self.placement) {
            Some(gantry_core::PlacementPolicy::ClusterDefault) | None => {
                gantry_core::PlacementPolicy::Balanced
            }
            Some(p) => p,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(bad("id", "must be 1 or more (0 means \"none\" in the API)"));
        }
        if self.peers.is_empty() {
            return Err(bad(
                "peers",
                "is empty: list every replica as ID=HOST:PORT,... including this one",
            ));
        }
        if !self.peers.contains_key(&self.id) {
            return Err(bad(
                "peers",
                format!(
                    "does not contain this replica's id {}: add {}=HOST:PORT",
                    self.id, self.id
                ),
            ));
        }
        if self.peers.contains_key(&0) {
            return Err(bad("peers", "replica id 0 is not allowed"));
        }
        for (id, addr) in &self.peers {
            if addr
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(bad(
                    "peers",
                    format!("address {addr:?} of replica {id} is not HOST:PORT"),
                ));
            }
        }
        if !matches!(
            gantry_core::PlacementPolicy::parse(&self.placement),
            Some(
                gantry_core::PlacementPolicy::Strict
                    | gantry_core::PlacementPolicy::Balanced
                    | gantry_core::PlacementPolicy::Aggressive
            )
        ) {
            return Err(bad(
                "placement",
                format!(
                    "{:?} is not a policy: use strict, balanced or aggressive",
                    self.placement
                ),
            ));
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "is empty: give a directory for Raft data"));
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 {
            return Err(bad("raft.heartbeat_ms", "must be at least 1"));
        }
        if r.election_timeout_min_ms <= r.heartbeat_ms {
            return Err(bad(
                "raft.election_timeout_min_ms",
                format!(
                    "must be greater than raft.heartbeat_ms ({}); three times or more is usual",
                    r.heartbeat_ms
                ),
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(bad(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        if r.snapshot_every == 0 {
            return Err(bad("raft.snapshot_every", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(bad("request_timeout_ms", "must be at least 1"));
        }
        match (&self.tls, self.insecure) {
            (None, false) => {
                return Err(bad(
                    "tls",
                    "no TLS files: give --tls-ca, --tls-cert and --tls-key (see `gantry certs init`), \
                     or --insecure for plaintext without authentication",
                ));
            }
            (Some(_), true) => {
                return Err(bad("insecure", "given together with TLS files: choose one"));
            }
            _ => {}
        }
        if self.submit_rate == 0 || self.submit_burst == 0 {
            return Err(bad(
                "submit_rate",
                "submit_rate and submit_burst must be at least 1",
            ));
        }
        if self.node_grace_ms < 1_000 {
            return Err(bad(
                "node_grace_ms",
                "must be at least 1000: shorter than a reconnect would mark healthy nodes lost",
            ));
        }
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn node_grace(&self) -> Duration {
        Duration::from_millis(self.node_grace_ms)
    }

    /// The openraft configuration these settings mean.
    pub(crate) fn openraft(&self) -> Result<openraft::Config, ConfigError> {
        let r = &self.raft;
        openraft::Config {
            cluster_name: "gantry".into(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every),
            max_in_snapshot_log_to_keep: r.snapshot_every.min(1_000),
            purge_batch_size: r.snapshot_every.clamp(1, 256),
            max_payload_entries: 1_000,
            // A replica whose data dir was lost rejoins empty and is caught
            // up by snapshot; without this openraft's leader treats the
            // follower's shorter log as a bug and stops.
            allow_log_reversion: Some(true),
            // A replica that cannot win an election (restarted with an old
            // log, or cut off and back) asks first instead of raising the
            // term and forcing the cluster into an election.
            enable_pre_vote: Some(true),
            // A leader killed before its last appends were flushed comes
            // back with a shorter log. Restored as leader in the same term
            // (openraft's default), it would give new entries the log ids
            // of the lost ones, which followers already hold with other
            // contents: they keep theirs, and the replicas diverge. It
            // stands for election instead; a new term gives new log ids.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| bad("raft", e.to_string()))
    }
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| bad("peers", format!("{part:?} is not ID=HOST:PORT")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad("peers", format!("{id:?} in {part:?} is not a replica id")))?;
        if peers.insert(id, addr.trim().to_owned()).is_some() {
            return Err(bad("peers", format!("replica id {id} is listed twice")));
        }
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ServerConfig {
        ServerConfig {
            id: 1,
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            peers: parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap(),
            data_dir: "/tmp/x".into(),
            raft: RaftTimings::default(),
            join: false,
            request_timeout_ms: 1000,
            node_grace_ms: 10_000,
            placement: default_placement(),
            tls: None,
            insecure: true,
            submit_rate: 2_000,
            submit_burst: 4_000,
            admission: AdmissionLimits::default(),
        }
    }

    #[test]
    fn t10_valid_config_passes_and_maps_to_openraft() {
        cfg().validate().unwrap();
        cfg().openraft().unwrap();
    }

    #[test]
    fn t10_errors_name_the_field() {
        let mut c = cfg();
        c.id = 3;
        assert_eq!(c.validate().unwrap_err().field, "peers");
        let mut c = cfg();
        c.raft.election_timeout_min_ms = 50;
        assert_eq!(
            c.validate().unwrap_err().field,
            "raft.election_timeout_min_ms"
        );
        assert_eq!(parse_peers("1=a:1,1=b:2").unwrap_err().field, "peers");
        assert!(parse_peers("x=a:1").is_err());
        let mut c = cfg();
        c.insecure = false;
        assert_eq!(c.validate().unwrap_err().field, "tls");
        let mut c = cfg();
        c.peers.insert(2, "nope".into());
        assert!(c.validate().unwrap_err().problem.contains("HOST:PORT"));
    }
}
