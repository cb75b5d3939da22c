#![allow(clippy::unwrap_used)]

use super::*;
use futures::StreamExt;
use gantry_proto::transport::Transport;

fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: vec![],
    }
}

/// A replica from before `StreamAppend` (here: a server without the Raft
/// service at all) answers UNIMPLEMENTED: the first stream fails as
/// unreachable, so openraft backs off and tries again, and every later
/// one goes out as unary `AppendEntries` calls instead.
#[tokio::test]
async fn t20_a_replica_without_stream_append_is_sent_unary_appends() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (_health, service) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let mut client = PeerClient {
        peers: Peers::new(Transport::insecure(), None),
        target: 2,
        reach: Reachability::new(2, &addr),
        addr,
        streaming: true,
    };
    let option = RPCOption::new(Duration::from_secs(5));
    let first = match client
        .stream_append(futures::stream::iter(vec![heartbeat()]), option.clone())
        .await
    {
        Ok(_) => "a stream".to_owned(),
        Err(RPCError::Unreachable(_)) => "unreachable".to_owned(),
        Err(e) => e.to_string(),
    };
    assert_eq!(first, "unreachable");
    assert!(!client.streaming, "the replica is marked as not streaming");

    // Now sequential: the unary AppendEntries call is what fails here.
    let mut answers = client
        .stream_append(futures::stream::iter(vec![heartbeat()]), option)
        .await
        .unwrap();
    let answer = answers.next().await.unwrap();
    assert!(
        matches!(&answer, Err(RPCError::Network(e)) if e.to_string().contains("not implemented")),
        "{answer:?}"
    );
}
