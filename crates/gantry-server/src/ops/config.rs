//! A replica's configuration, declared once: each setting's field (its TOML
//! key; with dashes, its flag), type, default, `GANTRY_*` variable and help
//! are one entry in [`settings!`]. The CLI's flags, `--config` files and the
//! fuzz target all read [`ServerSettings`]; [`ServerSettings::resolve`]
//! layers them and applies the defaults; [`ServerConfig::validate`] checks
//! the result before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gantry_proto::transport::TlsPaths;

pub use super::peers::{Peers, parse_peers};

/// The resolved type of an entry: its own with a default, else optional.
macro_rules! resolved_ty {
    ($ty:ty) => { Option<$ty> };
    ($ty:ty, $default:expr) => { $ty };
}

/// An entry's resolved value: what was set, else its default (if it has one).
macro_rules! resolved_value {
    ($set:expr, $ty:ty) => {
        $set
    };
    ($set:expr, $ty:ty, $default:expr) => {
        $set.unwrap_or_else(|| $default)
    };
}

/// An entry's default: its own, or unset.
macro_rules! default_value {
    ($ty:ty) => {
        None
    };
    ($ty:ty, $default:expr) => {
        $default
    };
}

/// Declares a group of settings once. Generates the layer (`$layer`: every
/// field optional; clap flags and `GANTRY_*` variables, and serde for a
/// TOML table, unknown keys refused), the resolved settings (`$resolved`),
/// the resolved defaults, and `over` / `resolve`.
macro_rules! settings {
    (
        $(#[doc = $ldoc:literal])*
        pub struct $layer:ident => $(#[doc = $rdoc:literal])* $resolved:ident {
            $(
                $(#[doc = $doc:literal])*
                #[arg($($arg:tt)*)]
                $(#[serde($($serde:tt)*)])?
                $name:ident : $ty:ty $(= $default:expr)?,
            )*
        }
        sections {
            $(
                $(#[doc = $sdoc:literal])*
                $sname:ident : $slayer:ident => $sres:ident,
            )*
        }
    ) => {
        $(#[doc = $ldoc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::Args)]
        #[serde(deny_unknown_fields)]
        pub struct $layer {
            $(
                $(#[doc = $doc])*
                #[arg($($arg)*)]
                $(#[serde($($serde)*)])?
                pub $name: Option<$ty>,
            )*
            $(
                $(#[doc = $sdoc])*
                #[command(flatten)]
                #[serde(default)]
                pub $sname: $slayer,
            )*
        }

        $(#[doc = $rdoc])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct $resolved {
            $(
                $(#[doc = $doc])*
                pub $name: resolved_ty!($ty $(, $default)?),
            )*
            $(
                $(#[doc = $sdoc])*
                pub $sname: $sres,
            )*
        }

        impl Default for $resolved {
            fn default() -> Self {
                Self {
                    $( $name: default_value!($ty $(, $default)?), )*
                    $( $sname: $sres::default(), )*
                }
            }
        }

        impl $layer {
            /// These settings where they are set, `lower`'s elsewhere.
            pub fn over(self, lower: Self) -> Self {
                Self {
                    $( $name: self.$name.or(lower.$name), )*
                    $( $sname: self.$sname.over(lower.$sname), )*
                }
            }

            /// The settings, with defaults where nothing was set.
            pub fn resolve(self) -> $resolved {
                $resolved {
                    $( $name: resolved_value!(self.$name, $ty $(, $default)?), )*
                    $( $sname: self.$sname.resolve(), )*
                }
            }

            /// Every key this table takes, for messages.
            pub const KEYS: &'static [&'static str] =
                &[$(stringify!($name),)* $(stringify!($sname),)*];
        }
    };
}

settings! {
    /// `gantry server`'s settings as given: flags, `GANTRY_*` variables or a
    /// TOML file (`--config`), each layer optional, flags and variables over
    /// the file.
    pub struct ServerSettings =>
    /// Everything a replica runs with; checked by [`ServerConfig::validate`].
    ServerConfig {
        /// This replica's id (1 or more), one of the ids in --peers.
        #[arg(long, env = "GANTRY_ID")]
        id: u64 = 0,
        /// Address to listen on, HOST:PORT (port 0 picks a free port).
        #[arg(long, env = "GANTRY_LISTEN")]
        listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0)),
        /// Serve /metrics (Prometheus), /health, /ready and /live over HTTP on HOST:PORT.
        #[arg(long, env = "GANTRY_METRICS_LISTEN")]
        metrics_listen: SocketAddr,
        /// Every replica of the initial cluster: ID=HOST:PORT,ID=HOST:PORT,...
        /// (in a file also a table of "ID" = "HOST:PORT").
        #[arg(long, env = "GANTRY_PEERS")]
        peers: Peers = Peers::default(),
        /// Directory for this replica's Raft log, vote and snapshots.
        #[arg(long, env = "GANTRY_DATA_DIR")]
        data_dir: PathBuf = PathBuf::new(),
        /// Join a running cluster (added with `gantry cluster add-replica`); never bootstrap.
        #[arg(long, env = "GANTRY_JOIN", num_args = 0..=1, default_missing_value = "true",
              value_parser = clap::builder::BoolishValueParser::new())]
        join: bool = false,
        /// Longest a client request waits for a leader or a commit, ms (a
        /// client's own shorter grpc-timeout wins) [default: 10000].
        #[arg(long, env = "GANTRY_REQUEST_TIMEOUT_MS")]
        request_timeout_ms: u64 = 10_000,
        /// A node is lost when no replica has held its agent's stream this
        /// long, ms [default: 10000].
        #[arg(long, env = "GANTRY_NODE_GRACE_MS")]
        node_grace_ms: u64 = 10_000,
        /// Submit requests per second per client identity (token bucket) [default: 2000].
        #[arg(long, env = "GANTRY_SUBMIT_RATE")]
        submit_rate: u32 = 2_000,
        /// Submit requests a client may burst before the rate applies [default: 4000].
        #[arg(long, env = "GANTRY_SUBMIT_BURST")]
        submit_burst: u32 = 4_000,
        /// How long a finished job is kept before it is garbage-collected,
        /// for jobs that name none (e.g. 24h, 30m; 0: for ever) [default: 24h].
        #[arg(long, env = "GANTRY_JOB_RETENTION")]
        job_retention: String = "24h".to_owned(),
        /// How often the leader garbage-collects finished jobs, ms [default: 60000].
        #[arg(long, env = "GANTRY_GC_INTERVAL_MS")]
        gc_interval_ms: u64 = 60_000,
        /// Placement policy for jobs that name none: strict, balanced or
        /// aggressive [default: balanced].
        #[arg(long, env = "GANTRY_PLACEMENT")]
        placement: String = "balanced".to_owned(),
        /// mTLS material: a `[tls]` table in the file (the CLI's --tls-* flags otherwise).
        #[arg(skip)]
        tls: TlsPaths,
        /// Plaintext, no authentication: only when asked for explicitly.
        #[arg(skip)]
        insecure: bool = false,
    }
    sections {
        /// Raft timing and compaction (`[raft]` in the file).
        raft: RaftSettings => RaftTimings,
        /// When new submissions are refused (`[admission]` in the file).
        admission: AdmissionSettings => AdmissionLimits,
    }
}

settings! {
    /// Raft timing and compaction, as given.
    pub struct RaftSettings =>
    /// Raft timing and compaction knobs, in milliseconds and entries.
    RaftTimings {
        /// Raft heartbeat interval, ms [default: 50].
        #[arg(long, env = "GANTRY_HEARTBEAT_MS")]
        heartbeat_ms: u64 = 50,
        /// Shortest election timeout, ms [default: 300].
        #[arg(long, env = "GANTRY_ELECTION_TIMEOUT_MIN_MS")]
        election_timeout_min_ms: u64 = 300,
        /// Longest election timeout, ms [default: 600].
        #[arg(long, env = "GANTRY_ELECTION_TIMEOUT_MAX_MS")]
        election_timeout_max_ms: u64 = 600,
        /// Snapshot and compact the log every this many entries [default: 10000].
        #[arg(long, env = "GANTRY_SNAPSHOT_EVERY")]
        snapshot_every: u64 = 10_000,
    }
    sections {}
}

settings! {
    /// When submissions are refused, as given.
    pub struct AdmissionSettings =>
    /// When a replica refuses new submissions with RESOURCE_EXHAUSTED.
    AdmissionLimits {
        /// Free space (MiB) kept in the data dir: below it, new submissions
        /// are refused (an alarm, like etcd's NOSPACE) until space is freed [default: 256].
        #[arg(long, env = "GANTRY_DISK_RESERVE_MIB")]
        disk_reserve_mib: u64 = 256,
        /// Pending tasks the cluster takes at most before refusing
        /// submissions (0: no limit) [default: 1000000].
        #[arg(long, env = "GANTRY_MAX_PENDING_TASKS")]
        max_pending_tasks: u64 = 1_000_000,
    }
    sections {}
}

impl AdmissionLimits {
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk_reserve_mib.saturating_mul(1024 * 1024)
    }
}

impl ServerSettings {
    /// Reads a `--config` file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| bad("config", e.to_string()))
    }

    /// The settings a replica cannot start without, named with their flag
    /// and variable when missing.
    pub fn require(&self) -> Result<(), ConfigError> {
        let missing = |field: &'static str, flag: &str, env: &str| {
            bad(
                field,
                format!("is required: pass {flag}, set {env}, or put it in --config"),
            )
        };
        if self.id.is_none() {
            return Err(missing("id", "--id", "GANTRY_ID"));
        }
        if self.listen.is_none() {
            return Err(missing("listen", "--listen", "GANTRY_LISTEN"));
        }
        if self.peers.is_none() {
            return Err(missing("peers", "--peers", "GANTRY_PEERS"));
        }
        if self.data_dir.is_none() {
            return Err(missing("data_dir", "--data-dir", "GANTRY_DATA_DIR"));
        }
        Ok(())
    }
}

/// A configuration problem: the field and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {field}: {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

pub(crate) fn bad(field: &'static str, problem: impl Into<String>) -> ConfigError {
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

    /// The cluster's job retention, ms (0: for ever); 24h if unreadable
    /// (`validate` refuses that).
    pub fn job_retention_ms(&self) -> u64 {
        parse_retention(&self.job_retention).unwrap_or(86_400_000)
    }

    pub fn gc_interval(&self) -> Duration {
        Duration::from_millis(self.gc_interval_ms)
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
        for (id, addr) in self.peers.iter() {
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
        if let Err(e) = parse_retention(&self.job_retention) {
            return Err(bad("job_retention", e));
        }
        if self.gc_interval_ms < 100 {
            return Err(bad("gc_interval_ms", "must be at least 100"));
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
    pub fn openraft(&self) -> Result<openraft::Config, ConfigError> {
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

/// A retention as operators write it (the server's `--job-retention`, a
/// job's `--retention`): a duration such as `24h`, `7d` or `90m`, or `0`
/// (also `forever`) for ever; in ms.
pub fn parse_retention(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text == "0" || text == "forever" {
        return Ok(0);
    }
    let d = humantime::parse_duration(text).map_err(|e| {
        format!("{text:?} is not a retention such as 24h, 7d or 90m, or forever: {e}")
    })?;
    match u64::try_from(d.as_millis()) {
        Err(_) => Err(format!("{text:?} is too long")),
        Ok(0) => Err(format!(
            "{text:?}: write forever (or 0) to keep jobs for ever"
        )),
        Ok(ms) => Ok(ms),
    }
}
