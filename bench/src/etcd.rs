//! A 3-member etcd cluster on loopback, driven the way the submit scenario
//! drives Gantry (one put per unary gRPC request, the same client counts),
//! so the ratio to etcd is measured in the same run on the same machine.
//! Used only where an `etcd` binary is installed (`apt-get install etcd-server`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tonic::codegen::http::uri::PathAndQuery;

use cluster_tests::free_addrs;

/// `etcdserverpb.PutRequest`: the two fields a put needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `etcdserverpb.PutResponse`; its fields are not read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {}

pub struct Etcd {
    pub client_addrs: Vec<String>,
    children: Vec<Option<Child>>,
    _dir: tempfile::TempDir,
}

/// The etcd binary, if one is installed.
pub fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    })
}

impl Etcd {
    /// Starts 3 members with the given heartbeat and election timeout (ms)
    /// and waits until a put commits.
    pub async fn start(heartbeat_ms: u64, election_ms: u64) -> anyhow::Result<Self> {
        let bin = binary().context("etcd is not installed")?;
        let dir = tempfile::Builder::new().prefix("bench-etcd-").tempdir()?;
        let addrs = free_addrs(6)?;
        let (client, peer) = addrs.split_at(3);
        let initial = peer
            .iter()
            .enumerate()
            .map(|(i, p)| format!("e{i}=http://{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut children = Vec::new();
        for i in 0..3 {
            let log = std::fs::File::create(dir.path().join(format!("e{i}.log")))?;
            let child = Command::new(&bin)
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &format!("http://{}", client[i])])
                .args(["--advertise-client-urls", &format!("http://{}", client[i])])
                .args(["--listen-peer-urls", &format!("http://{}", peer[i])])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{}", peer[i]),
                ])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "gantry-bench"])
                .args(["--heartbeat-interval", &heartbeat_ms.to_string()])
                .args(["--election-timeout", &election_ms.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            children.push(Some(child));
        }
        let etcd = Self {
            client_addrs: client.to_vec(),
            children,
            _dir: dir,
        };
        let client = EtcdClient::new(&etcd.client_addrs[0])?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.put(b"warm-up").await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "etcd did not accept a put in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(etcd)
    }

    pub fn pids(&self) -> Vec<(String, u32)> {
        self.children
            .iter()
            .enumerate()
            .filter_map(|(i, c)| Some((format!("etcd {}", i + 1), c.as_ref()?.id()?)))
            .collect()
    }
}

/// A unary gRPC client for `etcdserverpb.KV/Put`.
#[derive(Clone)]
pub struct EtcdClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EtcdClient {
    pub fn new(addr: &str) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Self {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One committed put (etcd answers after the Raft commit and apply).
    pub async fn put(&self, key: &[u8]) -> anyhow::Result<()> {
        let mut grpc = self.grpc.clone();
        grpc.ready().await?;
        let req = PutRequest {
            key: key.to_vec(),
            value: b"/bin/true".to_vec(),
        };
        grpc.unary::<_, PutResponse, _>(
            tonic::Request::new(req),
            PathAndQuery::from_static("/etcdserverpb.KV/Put"),
            tonic_prost::ProstCodec::default(),
        )
        .await?;
        Ok(())
    }
}
