//! Building and running a replica: config → storage → network → Raft →
//! one gRPC server with the internal and public services.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use gantry_proto::internal::v1::raft_service_server::RaftServiceServer;
use gantry_proto::transport::{MAX_MESSAGE_BYTES, Transport, reload};
use gantry_proto::v1::agent_service_server::AgentServiceServer;
use gantry_proto::v1::cluster_service_server::ClusterServiceServer;
use gantry_proto::v1::job_service_server::JobServiceServer;
use gantry_proto::v1::node_service_server::NodeServiceServer;
use gantry_store::Raft;
use openraft::BasicNode;
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;

use crate::agents::stream::AgentApi;
use crate::api::cluster::ClusterApi;
use crate::api::jobs::JobApi;
use crate::api::nodes::NodeApi;
use crate::ops::config::{ConfigError, ServerConfig};
use crate::raft::internal::InternalService;
use crate::raft::network::NetworkFactory;
use crate::raft::peers::{MAX_INTERNAL_MESSAGE_BYTES, Peers};
use crate::replica::Replica;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the data directory {dir}: {source}")]
    Storage { dir: String, source: std::io::Error },
    #[error("raft failed to start: {0}")]
    Raft(String),
    #[error("reflection service: {0}")]
    Reflection(String),
    #[error("TLS: {0}")]
    Tls(String),
}

/// How often TLS files are checked for renewal.
const TLS_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a stopping replica waits for calls in flight (unary calls
/// finishing; streams end at once) before it stops without them.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long Raft's own shutdown may take (a dead core may never answer).
const RAFT_SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// A running replica.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// Where `/metrics` and the HTTP health endpoints are served, if asked for.
    pub metrics_addr: Option<SocketAddr>,
    pub replica: Arc<Replica>,
    stop: Option<oneshot::Sender<()>>,
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<JoinHandle<()>>,
}

/// Binds `config.listen` and starts the replica.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, StartError> {
    config.validate()?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
    start_on(config, listener).await
}

/// Starts the replica on an already bound listener (tests bind port 0 first
/// so that every replica's address is known before any starts).
pub async fn start_on(
    config: ServerConfig,
    listener: TcpListener,
) -> Result<ServerHandle, StartError> {
    config.validate()?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: config.listen,
        source,
    })?;
    let raft_config = Arc::new(config.openraft()?);
    let (log, sm) = gantry_store::open(&config.data_dir).map_err(|source| StartError::Storage {
        dir: config.data_dir.display().to_string(),
        source,
    })?;
    let state = sm.reader();
    let transport = match &config.tls {
        Some(paths) => Transport::mtls(paths).map_err(|e| StartError::Tls(e.to_string()))?,
        None => {
            tracing::warn!(
                "--insecure: plaintext gRPC, no authentication; anyone who can reach {addr} can do anything"
            );
            Transport::insecure()
        }
    };
    // With TLS, certificates are watched and new connections use the newest.
    let tls_watch = match transport.tls_paths() {
        Some(paths) => Some(
            reload::watch_files(paths.clone(), TLS_RELOAD_INTERVAL)
                .map_err(|e| StartError::Tls(e.to_string()))?,
        ),
        None => None,
    };
    let peers = Peers::new(transport.clone(), tls_watch.clone());
    let network = NetworkFactory::new(peers.clone());
    let raft = Raft::new(config.id, raft_config, network, log, sm)
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    bootstrap(&raft, &config).await?;

    let parts = crate::replica::Parts {
        raft,
        state,
        port: Arc::new(peers.clone()),
        peers,
        secure: transport.is_secure(),
        wall: Box::new(crate::replica::clock::now_ms),
    };
    let (replica, mut background) = Replica::start(config, parts);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    background.push(tokio::spawn(crate::api::admission::monitor(
        replica.clone(),
    )));
    background.push(tokio::spawn(crate::ops::health::probe_loop(
        replica.clone(),
        health_reporter,
    )));
    let grpc_counters = crate::ops::metrics::GrpcCounters::default();
    let metrics_addr = match replica.config.metrics_listen {
        Some(m) => {
            let l = TcpListener::bind(m)
                .await
                .map_err(|source| StartError::Listen { addr: m, source })?;
            let (a, task) = crate::ops::metrics::serve(l, replica.clone(), grpc_counters.clone())
                .map_err(|source| StartError::Listen { addr: m, source })?;
            tracing::info!(addr = %a, "serving /metrics, /health, /ready and /live");
            background.push(task);
            Some(a)
        }
        None => None,
    };
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gantry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(gantry_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Reflection(e.to_string()))?;
    let router = transport
        .server()
        .layer(crate::ops::grpc_metrics::GrpcMetricsLayer::new(
            grpc_counters,
        ))
        .layer(crate::ops::auth::AuthLayer::new(replica.secure))
        .add_service(health_service)
        .add_service(
            RaftServiceServer::new(InternalService {
                replica: replica.clone(),
            })
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES),
        )
        .add_service(
            JobServiceServer::new(JobApi {
                replica: replica.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(ClusterServiceServer::new(ClusterApi {
            replica: replica.clone(),
        }))
        .add_service(
            AgentServiceServer::new(AgentApi {
                replica: replica.clone(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(NodeServiceServer::new(NodeApi {
            replica: replica.clone(),
        }))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stop_rx.await;
    };
    let serve = match tls_watch {
        Some(tls) => tokio::spawn(
            router.serve_with_incoming_shutdown(reload::incoming(listener, tls), stopped),
        ),
        // Our own listener (so port 0 works) bypasses the builder's socket
        // options: set TCP_NODELAY here or small replies wait on delayed ACKs.
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stopped,
        )),
    };
    tracing::info!(id = replica.id, %addr, "replica serving");
    Ok(ServerHandle {
        addr,
        metrics_addr,
        replica,
        stop: Some(stop_tx),
        serve,
        background,
    })
}

/// On first start, the replica with the lowest id in `peers` initialises
/// the cluster with the whole peer list. Every other replica waits to be
/// contacted by a leader, so a replica that joins later, or one restarted
/// with the same data, never starts a cluster of its own.
async fn bootstrap(raft: &Raft, config: &ServerConfig) -> Result<(), StartError> {
    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| StartError::Raft(e.to_string()))?;
    if initialized {
        tracing::info!(
            id = config.id,
            "found existing raft state; not bootstrapping"
        );
        return Ok(());
    }
    let lowest = config.peers.keys().next().copied();
    if config.join || lowest != Some(config.id) {
        tracing::info!(
            id = config.id,
            "empty raft state; waiting for the leader to contact this replica"
        );
        return Ok(());
    }
    let members: BTreeMap<u64, BasicNode> = config
        .peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr)))
        .collect();
    tracing::info!(id = config.id, ?members, "bootstrapping a new cluster");
    match raft.initialize(members).await {
        Ok(()) => Ok(()),
        Err(openraft::errors::RaftError::APIError(
            openraft::errors::InitializeError::NotAllowed(_),
        )) => Ok(()),
        Err(e) => Err(StartError::Raft(e.to_string())),
    }
}

/// Why a replica stopped by itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failed {
    #[error("the gRPC server stopped: {0}")]
    Server(String),
    /// Storage failed (a full disk, an I/O error) or another fatal error:
    /// the process should exit and be restarted.
    #[error("the Raft core stopped: {0}")]
    Raft(String),
}

/// How a replica stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Every call in flight ended by itself.
    Gracefully,
    /// Calls were still open after the grace period and were cut.
    CallsCut,
}

// === impl ServerHandle ===

impl ServerHandle {
    /// Stops serving and shuts Raft down.
    pub async fn shutdown(mut self) -> Stopped {
        // A leader hands over first, so writes pause for one hand-off
        // instead of an election timeout.
        hand_off_leadership(&self.replica).await;
        for task in self.background.drain(..) {
            task.abort();
        }
        // Long-lived streams end first (agents reconnect elsewhere, a
        // leader's replication stream is cut): graceful shutdown waits for
        // every open stream.
        self.replica.stopping.cancel();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(RAFT_SHUTDOWN_BOUND, self.replica.raft.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "raft shutdown"),
            Err(_) => tracing::warn!("raft did not shut down in time; stopping without it"),
        }
        match tokio::time::timeout(STOP_GRACE, &mut self.serve).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
            Err(_) => {
                tracing::warn!(
                    grace_s = STOP_GRACE.as_secs(),
                    "calls still open after the grace period; stopping without them"
                );
                self.serve.abort();
                return Stopped::CallsCut;
            }
        }
        Stopped::Gracefully
    }

    /// Waits until the server stops by itself (it does not, unless it
    /// fails), or its Raft core stops: a replica whose core is dead must not
    /// live on as a process its supervisor thinks is healthy.
    pub async fn wait(&mut self) -> Result<(), Failed> {
        let mut metrics = self.replica.raft.metrics();
        let core_stopped = async move {
            loop {
                if let Err(e) = &metrics.borrow_watched().running_state {
                    return e.to_string();
                }
                if metrics.changed().await.is_err() {
                    return "the Raft core stopped".to_owned();
                }
            }
        };
        tokio::select! {
            r = &mut self.serve => match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Failed::Server(e.to_string())),
                Err(e) => Err(Failed::Server(e.to_string())),
            },
            why = core_stopped => Err(Failed::Raft(why)),
        }
    }
}

/// If this replica leads, asks the most up-to-date voter to take over and
/// waits (a few election timeouts at most) until it has.
async fn hand_off_leadership(replica: &Replica) {
    let m = replica.raft.metrics().borrow_watched().clone();
    if m.current_leader != Some(replica.id) || !m.state.is_leader() {
        return;
    }
    let voters: Vec<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != replica.id)
        .collect();
    let matched = |id: &u64| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .map_or(0, |l| l.index)
    };
    let Some(to) = voters
        .iter()
        .copied()
        .max_by_key(|id| (matched(id), u64::MAX - id))
    else {
        return;
    };
    tracing::info!(to, "shutting down: handing leadership over");
    if let Err(e) = replica.raft.trigger().transfer_leader(to).await {
        tracing::warn!(error = %e, "could not hand leadership over");
        return;
    }
    let limit = std::time::Duration::from_millis(
        replica
            .config
            .raft
            .election_timeout_max_ms
            .saturating_mul(3),
    );
    let moved = replica
        .raft
        .wait(Some(limit))
        .metrics(
            |m| m.current_leader != Some(replica.id),
            "leadership handed over",
        )
        .await;
    match moved {
        Ok(m) => tracing::info!(leader = ?m.current_leader, "leadership handed over"),
        Err(e) => tracing::warn!(error = %e, "leadership not handed over in time; stopping anyway"),
    }
}
