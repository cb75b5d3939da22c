//! Who is calling, from the peer certificate, and what that role may do.
//! One table, here (docs/security.md has the same):
//!
//! | service | role |
//! |---|---|
//! | RaftService (internal) | server |
//! | AgentService.Connect | agent, and hello.node_id must equal the certificate's name |
//! | JobService, NodeService, ClusterService writes | client (cluster changes also server, when a replica forwards them) |
//! | their reads | client or server |

use gantry_pki::{Identity, Role};
use tonic::{Request, Status};

use crate::replica::Replica;

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
    gantry_pki::identity_from_der(leaf)
        .map(Some)
        .map_err(|e| Status::unauthenticated(format!("client certificate: {e}")))
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
