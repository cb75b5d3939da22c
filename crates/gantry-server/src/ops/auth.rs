//! Who is calling, from the peer certificate, and what that role may do.
//! One table, here (docs/security.md has the same):
//!
//! | service | role |
//! |---|---|
//! | RaftService (internal) | server |
//! | AgentService.Connect | agent, and hello.node_id must equal the certificate's name |
//! | JobService, NodeService, ClusterService writes | client (cluster changes also server, when a replica forwards them) |
//! | their reads | client or server |

use std::collections::HashMap;
use std::sync::RwLock;

use gantry_pki::{Identity, Role};
use tonic::{Request, Status};

use crate::replica::Replica;

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

/// The caller's identity; `None` when the replica runs `--insecure`.
pub fn caller<T>(replica: &Replica, req: &Request<T>) -> Result<Option<Identity>, Status> {
    if !replica.secure {
        return Ok(None);
    }
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    replica.identities.get(leaf).map(Some)
}

fn names(roles: &[Role]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The caller, if its role is one of `allowed`; else PermissionDenied (logged).
pub fn require<T>(
    replica: &Replica,
    req: &Request<T>,
    allowed: &[Role],
    what: &str,
) -> Result<Option<Identity>, Status> {
    let id = caller(replica, req)?;
    if let Some(id) = &id
        && !allowed.contains(&id.role)
    {
        tracing::warn!(caller = %id, call = what, "permission denied");
        return Err(Status::permission_denied(format!(
            "{what} is not allowed for {id}: it needs a {} certificate",
            names(allowed)
        )));
    }
    Ok(id)
}

pub const SERVER: &[Role] = &[Role::Server];
pub const AGENT: &[Role] = &[Role::Agent];
/// Public reads: clients, and replicas (which forward and probe).
pub const READ: &[Role] = &[Role::Client, Role::Server];
/// Public writes: clients only.
pub const WRITE: &[Role] = &[Role::Client];
/// A write a replica forwarded to the leader on a client's behalf.
pub const FORWARDED_WRITE: &[Role] = &[Role::Client, Role::Server];
