//! Server-side TLS that follows its files: the certificate, key and CA are
//! re-read when they change on disk, and every new connection is accepted
//! with the newest configuration. Connections already open keep theirs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::{TlsPaths, TransportError};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the gRPC server to take them.
const ACCEPT_QUEUE: usize = 128;

fn tls_err(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Tls(format!("{what}: {e}"))
}

/// Reads the files and builds a server configuration that requires a client
/// certificate from the CA.
pub fn server_config(paths: &TlsPaths) -> Result<ServerConfig, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(&paths.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_err(&paths.cert.display().to_string(), e))?;
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .map_err(|e| tls_err(&paths.key.display().to_string(), e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(&paths.ca)
        .map_err(|e| tls_err(&paths.ca.display().to_string(), e))?
    {
        let ca = ca.map_err(|e| tls_err(&paths.ca.display().to_string(), e))?;
        roots
            .add(ca)
            .map_err(|e| tls_err(&paths.ca.display().to_string(), e))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls_err("client verifier", e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("certificate and key", e))?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

fn stamp(paths: &TlsPaths) -> Vec<Option<SystemTime>> {
    [&paths.ca, &paths.cert, &paths.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Builds the configuration now (an error here stops the start), then
/// checks the files every `every` and publishes a rebuilt configuration
/// when they change. A bad new set of files is logged and the old
/// configuration kept.
pub fn watch_files(
    paths: TlsPaths,
    every: Duration,
) -> Result<watch::Receiver<Arc<ServerConfig>>, TransportError> {
    let (tx, rx) = watch::channel(Arc::new(server_config(&paths)?));
    tokio::spawn(async move {
        let mut last = stamp(&paths);
        loop {
            tokio::time::sleep(every).await;
            if tx.is_closed() {
                return;
            }
            let now = stamp(&paths);
            if now == last {
                continue;
            }
            match server_config(&paths) {
                Ok(cfg) => {
                    last = now;
                    tracing::info!(cert = %paths.cert.display(), "TLS certificates reloaded");
                    let _ = tx.send(Arc::new(cfg));
                }
                // Files may be mid-replacement: try again next round.
                Err(e) => {
                    tracing::warn!(error = %e, "new TLS files not usable yet; keeping the current ones")
                }
            }
        }
    });
    Ok(rx)
}

/// Accepts TCP connections and completes their TLS handshakes off the
/// accept loop, with the newest configuration for each.
pub fn incoming(
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = TlsAcceptor::from(tls.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
