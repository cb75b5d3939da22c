//! TLS flags shared by every command that talks gRPC: mutual TLS under the
//! cluster CA, or plaintext only with an explicit `--insecure`.

use std::path::PathBuf;

use gantry_proto::transport::{TlsPaths, Transport};

use crate::{EXIT_USAGE, Failure};

#[derive(clap::Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// The cluster CA certificate (PEM).
    #[arg(long, env = "GANTRY_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), issued by `gantry certs`.
    #[arg(long, env = "GANTRY_CERT", global = true)]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "GANTRY_KEY", global = true)]
    pub key: Option<PathBuf>,
    /// Plaintext gRPC with no authentication. Anyone who can reach the port
    /// can do anything: for a laptop or a test, never a shared network.
    #[arg(long, env = "GANTRY_INSECURE", global = true)]
    pub insecure: bool,
}

fn usage(message: String) -> Failure {
    Failure {
        message,
        code: EXIT_USAGE,
    }
}

impl SecurityArgs {
    /// The TLS files, or `None` with `--insecure`; anything in between is a usage error.
    pub fn tls_paths(&self) -> Result<Option<TlsPaths>, Failure> {
        match (&self.ca, &self.cert, &self.key, self.insecure) {
            (Some(ca), Some(cert), Some(key), false) => Ok(Some(TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None, None, true) => Ok(None),
            (_, _, _, true) => Err(usage(
                "invalid configuration: insecure: given together with TLS files: choose one".into(),
            )),
            _ => Err(usage(
                "invalid configuration: tls: give --ca, --cert and --key (or GANTRY_CA, GANTRY_CERT, \
                 GANTRY_KEY; see `gantry certs init`), or --insecure for plaintext"
                    .into(),
            )),
        }
    }

    pub fn transport(&self) -> Result<Transport, Failure> {
        match self.tls_paths()? {
            Some(paths) => Transport::mtls(&paths).map_err(|e| usage(e.to_string())),
            None => Ok(Transport::insecure()),
        }
    }
}
