//! Who is calling, from the peer certificate, and what that role may do:
//! one table ([`POLICY`], every RPC by its path; docs/security.md has the
//! same), applied by one layer ([`AuthLayer`]) in front of every service.
//! A call not in the table is refused. Handlers that need the caller (an
//! agent's node name, a client's rate limit) read it with [`identity`].

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use gantry_pki::{Identity, Role};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower_layer::Layer;
use tower_service::Service;

/// Identities already read from certificates: a certificate is parsed once,
/// not on every call of every connection that presents it.
#[derive(Default)]
pub struct IdentityCache {
    known: RwLock<HashMap<Vec<u8>, Identity>>,
}

/// Certificates remembered at most; past it the cache starts over.
const MAX_CACHED_IDENTITIES: usize = 10_000;

impl IdentityCache {
    fn get(&self, der: &[u8]) -> Result<Identity, Status> {
        if let Ok(known) = self.known.read()
            && let Some(id) = known.get(der)
        {
            return Ok(id.clone());
        }
        let id = gantry_pki::identity_from_der(der)
            .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))?;
        if let Ok(mut known) = self.known.write() {
            if known.len() >= MAX_CACHED_IDENTITIES {
                known.clear();
            }
            known.insert(der.to_vec(), id.clone());
        }
        Ok(id)
    }
}

pub const SERVER: &[Role] = &[Role::Server];
pub const AGENT: &[Role] = &[Role::Agent];
/// Public reads: clients, and replicas (which forward and probe).
pub const READ: &[Role] = &[Role::Client, Role::Server];
/// Public writes: clients only.
pub const WRITE: &[Role] = &[Role::Client];
/// A write a replica forwards to the leader on a client's behalf.
pub const FORWARDED_WRITE: &[Role] = &[Role::Client, Role::Server];
/// Health and reflection: any certificate of the cluster.
pub const ANY: &[Role] = &[Role::Client, Role::Server, Role::Agent];

/// Who may call what. An entry ending in `/` covers a whole service.
pub const POLICY: &[(&str, &[Role])] = &[
    // Replica to replica.
    ("/gantry.internal.v1.RaftService/AppendEntries", SERVER),
    ("/gantry.internal.v1.RaftService/StreamAppend", SERVER),
    ("/gantry.internal.v1.RaftService/Vote", SERVER),
    ("/gantry.internal.v1.RaftService/PreVote", SERVER),
    ("/gantry.internal.v1.RaftService/TransferLeader", SERVER),
    ("/gantry.internal.v1.RaftService/InstallSnapshot", SERVER),
    ("/gantry.internal.v1.RaftService/Propose", SERVER),
    ("/gantry.internal.v1.RaftService/ReadIndex", SERVER),
    ("/gantry.internal.v1.RaftService/LocalStatus", SERVER),
    ("/gantry.internal.v1.RaftService/TailOutput", SERVER),
    ("/gantry.internal.v1.RaftService/ReportSessions", SERVER),
    // Agents (the handler also holds the hello to the certificate's name).
    ("/gantry.v1.AgentService/Connect", AGENT),
    // Jobs.
    ("/gantry.v1.JobService/SubmitJobs", WRITE),
    ("/gantry.v1.JobService/CancelJob", WRITE),
    ("/gantry.v1.JobService/GetJob", READ),
    ("/gantry.v1.JobService/ListJobs", READ),
    ("/gantry.v1.JobService/Watch", READ),
    ("/gantry.v1.JobService/Logs", READ),
    // Nodes.
    ("/gantry.v1.NodeService/ListNodes", READ),
    ("/gantry.v1.NodeService/SetEligibility", WRITE),
    ("/gantry.v1.NodeService/SetBlacklist", WRITE),
    // The cluster: membership changes come from clients, or from a replica
    // forwarding one to the leader.
    ("/gantry.v1.ClusterService/Status", READ),
    ("/gantry.v1.ClusterService/AddReplica", FORWARDED_WRITE),
    ("/gantry.v1.ClusterService/RemoveReplica", FORWARDED_WRITE),
    ("/gantry.v1.ClusterService/SaveSnapshot", WRITE),
    ("/gantry.v1.ClusterService/RestoreSnapshot", WRITE),
    ("/gantry.v1.ClusterService/CollectGarbage", FORWARDED_WRITE),
    // gRPC's own.
    ("/grpc.health.v1.Health/", ANY),
    ("/grpc.reflection.v1.ServerReflection/", ANY),
    ("/grpc.reflection.v1alpha.ServerReflection/", ANY),
];

/// The roles that may call `path`, if the table has it.
pub fn allowed(path: &str) -> Option<&'static [Role]> {
    POLICY.iter().find_map(|(p, roles)| {
        let hit = if p.ends_with('/') {
            path.starts_with(p)
        } else {
            path == *p
        };
        hit.then_some(*roles)
    })
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The caller of a request the layer let through; `None` under `--insecure`.
pub fn identity<T>(req: &tonic::Request<T>) -> Option<Identity> {
    req.extensions().get::<Identity>().cloned()
}

/// The caller's identity from its certificate, if its role may call `path`.
fn authorize(
    identities: &IdentityCache,
    path: &str,
    extensions: &http::Extensions,
) -> Result<Identity, Status> {
    let roles = allowed(path).ok_or_else(|| {
        Status::permission_denied(format!("{path} is not a call this replica serves"))
    })?;
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(|i| i.peer_certs())
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let id = identities.get(leaf)?;
    if !roles.contains(&id.role) {
        tracing::warn!(caller = %id, call = path, "permission denied");
        return Err(Status::permission_denied(format!(
            "{path} is not allowed for {id}: it needs a {} certificate",
            names(roles)
        )));
    }
    Ok(id)
}

/// Applies [`POLICY`] to every call; off (everything allowed) under
/// `--insecure`, where no caller has an identity.
#[derive(Clone)]
pub struct AuthLayer {
    identities: Option<Arc<IdentityCache>>,
}

impl AuthLayer {
    pub fn new(secure: bool) -> Self {
        Self {
            identities: secure.then(Default::default),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            identities: self.identities.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    identities: Option<Arc<IdentityCache>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> Service<http::Request<B>> for Auth<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if let Some(identities) = &self.identities {
            match authorize(identities, req.uri().path(), req.extensions()) {
                Ok(id) => {
                    req.extensions_mut().insert(id);
                }
                Err(status) => return Box::pin(async move { Ok(status.into_http()) }),
            }
        }
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC in the proto files has its line in the table, and the table
    /// names no RPC that does not exist: adding an RPC without deciding who
    /// may call it fails here.
    #[test]
    fn t10_every_rpc_has_an_entry() {
        use prost::Message;
        let set =
            prost_types::FileDescriptorSet::decode(gantry_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut rpcs = Vec::new();
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    rpcs.push(format!(
                        "/{}.{}/{}",
                        file.package(),
                        service.name(),
                        method.name()
                    ));
                }
            }
        }
        assert!(
            rpcs.len() > 20,
            "the descriptor set lists the RPCs: {rpcs:?}"
        );
        for rpc in &rpcs {
            assert!(allowed(rpc).is_some(), "{rpc} has no entry in auth::POLICY");
        }
        for (path, _) in POLICY {
            let known = if path.ends_with('/') {
                path.starts_with("/grpc.")
            } else {
                rpcs.contains(&(*path).to_owned())
            };
            assert!(known, "auth::POLICY names {path}, which no proto file has");
        }
        assert!(allowed("/gantry.v1.JobService/Nope").is_none());
        assert_eq!(allowed("/grpc.health.v1.Health/Check"), Some(ANY));
    }
}
