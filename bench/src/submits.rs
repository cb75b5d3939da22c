//! The submit load: clients each making one unary call after another,
//! against Gantry's replicas, the echo server (see `echo`) or etcd.

use std::sync::Arc;

use gantry_client::{Client, ClientOptions, api};

use crate::etcd::{Etcd, EtcdClient};
use crate::load::{Latencies, concurrent};
use cluster_tests::Cluster;

/// The job every submission carries.
pub fn spec() -> api::JobSpec {
    api::JobSpec {
        argv: vec!["/bin/true".into()],
        max_attempts: 1,
        ..Default::default()
    }
}

/// Clients spread over the replicas, as etcd's are. With `follow` each
/// moves to the leader the first follower's reply names; without, two
/// requests in three are forwarded by a follower.
pub fn clients(cluster: &Cluster, n: usize, follow: bool) -> anyhow::Result<Vec<Client>> {
    let opts = ClientOptions {
        follow_leader: follow,
        ..cluster.client_options()?
    };
    clients_of(&cluster.live_addrs(), n, &opts)
}

/// `n` clients of the servers at `addrs`, the i-th starting at the i-th.
pub fn clients_of(addrs: &[String], n: usize, opts: &ClientOptions) -> anyhow::Result<Vec<Client>> {
    (0..n)
        .map(|c| {
            let mut order = addrs.to_vec();
            order.rotate_left(c % addrs.len().max(1));
            Ok(Client::new(&order, opts.clone())?)
        })
        .collect()
}

/// Every client in `cs` submits `requests` requests of `batch` jobs.
pub async fn submit_with(
    cs: Arc<Vec<Client>>,
    requests: usize,
    batch: usize,
) -> anyhow::Result<Latencies> {
    Ok(submit_indexed(cs, requests, batch).await?.0)
}

/// [`submit_with`], and the lowest and highest commit index the replies
/// gave (0 and 0 from a server that gives none): how many log entries
/// the submissions took.
pub async fn submit_indexed(
    cs: Arc<Vec<Client>>,
    requests: usize,
    batch: usize,
) -> anyhow::Result<(Latencies, (u64, u64))> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let n = cs.len();
    let low = Arc::new(AtomicU64::new(u64::MAX));
    let high = Arc::new(AtomicU64::new(0));
    let (lo, hi) = (low.clone(), high.clone());
    let l = concurrent(n, requests, batch, move |i| {
        let (cs, lo, hi) = (cs.clone(), lo.clone(), hi.clone());
        async move {
            let reply = cs[i / requests.max(1) % cs.len()]
                .submit_jobs(vec![spec(); batch])
                .await?;
            lo.fetch_min(reply.commit_index, Ordering::Relaxed);
            hi.fetch_max(reply.commit_index, Ordering::Relaxed);
            Ok(())
        }
    })
    .await?;
    let high = high.load(Ordering::Relaxed);
    Ok((l, (low.load(Ordering::Relaxed).min(high), high)))
}

/// `n` new clients of `cluster`, each submitting `requests` requests of `batch` jobs.
pub async fn gantry_submits(
    cluster: &Cluster,
    n: usize,
    requests: usize,
    batch: usize,
    follow: bool,
) -> anyhow::Result<Latencies> {
    submit_with(Arc::new(clients(cluster, n, follow)?), requests, batch).await
}

/// `n` clients of `etcd`, spread over its members.
pub fn etcd_clients(etcd: &Etcd, n: usize) -> anyhow::Result<Vec<EtcdClient>> {
    (0..n)
        .map(|c| EtcdClient::new(&etcd.client_addrs[c % etcd.client_addrs.len()]))
        .collect()
}

/// Every client in `cs` makes `requests` puts.
pub async fn put_with(cs: Arc<Vec<EtcdClient>>, requests: usize) -> anyhow::Result<Latencies> {
    let n = cs.len();
    concurrent(n, requests, 1, move |i| {
        let cs = cs.clone();
        async move {
            cs[i / requests.max(1) % cs.len()]
                .put(format!("job/{i}").as_bytes())
                .await
        }
    })
    .await
}

/// `n` new clients of `etcd`, each making `requests` puts.
pub async fn etcd_puts(etcd: &Etcd, n: usize, requests: usize) -> anyhow::Result<Latencies> {
    put_with(Arc::new(etcd_clients(etcd, n)?), requests).await
}
