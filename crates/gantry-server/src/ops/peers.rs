//! The `peers` setting: the replicas of the initial cluster, given as
//! `1=host:port,2=host:port` (flag, variable, TOML string) or a TOML table.

use std::collections::BTreeMap;

use super::config::{ConfigError, bad};

/// The replicas of the initial cluster: id → `host:port` others reach it at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers(pub BTreeMap<u64, String>);

impl std::ops::Deref for Peers {
    type Target = BTreeMap<u64, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Peers {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl std::str::FromStr for Peers {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_peers(s).map(Peers)
    }
}

impl<'de> serde::Deserialize<'de> for Peers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// `peers = "1=a:1,2=b:2"` or a `[peers]` table of `"1" = "a:1"`.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Given {
            List(String),
            Table(BTreeMap<String, String>),
        }
        match Given::deserialize(d)? {
            Given::List(s) => parse_peers(&s).map(Peers).map_err(serde::de::Error::custom),
            Given::Table(t) => {
                let mut peers = BTreeMap::new();
                for (k, v) in t {
                    let id = k.parse::<u64>().map_err(|_| {
                        serde::de::Error::custom(format!("peers: key {k:?} is not a replica id"))
                    })?;
                    peers.insert(id, v);
                }
                Ok(Peers(peers))
            }
        }
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
