//! Gantry's cluster PKI: one CA made with rcgen, and leaf certificates whose
//! SAN URI `spiffe://gantry/<role>/<name>` says who the holder is (role:
//! server, agent or client). Keys are written 0600 and nothing is ever
//! overwritten. [`identity_from_der`] reads the identity back from a peer's
//! certificate.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
const URI_PREFIX: &str = "spiffe://gantry/";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: already exists; refusing to overwrite (remove it or use another directory)")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid {what}: {why}")]
    Invalid { what: &'static str, why: String },
}

/// What a certificate's holder may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Server,
    Agent,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "server",
            Self::Agent => "agent",
            Self::Client => "client",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Self::Server),
            "agent" => Ok(Self::Agent),
            "client" => Ok(Self::Client),
            other => Err(format!(
                "{other:?} is not a role: use server, agent or client"
            )),
        }
    }
}

/// Who a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}", self.role.as_str(), self.name)
    }

    /// Parses `spiffe://gantry/<role>/<name>`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        let (role, name) = rest.split_once('/')?;
        let role = role.parse().ok()?;
        valid_name(name).ok()?;
        Some(Self {
            role,
            name: name.to_owned(),
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.role.as_str(), self.name)
    }
}

/// Names are what node ids and replica names look like: letters, digits, `.`, `-`, `_`.
pub fn valid_name(name: &str) -> Result<(), PkiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid {
            what: "name",
            why: format!("{name:?}: use 1-128 letters, digits, '.', '-' or '_'"),
        })
    }
}

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little backdating tolerates clock skew between hosts.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(i64::from(days));
}

/// A new self-signed cluster CA.
pub fn new_ca(days: u32) -> Result<Pair, PkiError> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Gantry cluster CA");
    params.distinguished_name = dn;
    validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// What to put in a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub identity: Identity,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub days: u32,
    /// Moves the validity window this many days into the past (0 normally;
    /// more than `days` makes an already expired certificate, for tests of refusal).
    pub backdate_days: u32,
}

/// A leaf certificate for `spec`, signed by `ca`. Servers get server and
/// client authentication (they dial each other); others get client only.
pub fn issue(ca: &Pair, spec: &LeafSpec) -> Result<Pair, PkiError> {
    valid_name(&spec.identity.name)?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.identity.to_string());
    params.distinguished_name = dn;
    params
        .subject_alt_names
        .push(SanType::URI(spec.identity.uri().try_into()?));
    for d in &spec.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(d.clone().try_into()?));
    }
    for ip in &spec.ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match spec.identity.role {
        Role::Server => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Agent | Role::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    validity(&mut params, spec.days);
    let back = Duration::days(i64::from(spec.backdate_days));
    params.not_before -= back;
    params.not_after -= back;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Reads the identity from a peer certificate (DER): the one
/// `spiffe://gantry/...` SAN URI. Anything else is an error.
pub fn identity_from_der(der: &[u8]) -> Result<Identity, PkiError> {
    let bad = |why: String| PkiError::Invalid {
        what: "peer certificate",
        why,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| bad(format!("cannot parse: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("bad subject alternative names: {e}")))?
        .ok_or_else(|| bad("no subject alternative names".into()))?;
    let mut found = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
        _ => None,
    });
    let uri = found
        .next()
        .ok_or_else(|| bad("no spiffe://gantry/<role>/<name> URI".into()))?;
    if found.next().is_some() {
        return Err(bad("more than one gantry identity URI".into()));
    }
    Identity::from_uri(uri)
        .ok_or_else(|| bad(format!("{uri:?} is not spiffe://gantry/<role>/<name>")))
}

/// Writes a new file; never replaces an existing one. `secret` files are 0600.
pub fn write_new(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    opts.mode(if secret { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists {
                path: path.to_owned(),
            }
        } else {
            PkiError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    f.write_all(contents.as_bytes())
        .map_err(|source| PkiError::Io {
            path: path.to_owned(),
            source,
        })
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Loads the CA from `dir` (`ca.pem`, `ca-key.pem`).
pub fn load_ca(dir: &Path) -> Result<Pair, PkiError> {
    Ok(Pair {
        cert_pem: read(&dir.join(CA_CERT))?,
        key_pem: read(&dir.join(CA_KEY))?,
    })
}

/// Writes `<stem>.pem` and `<stem>-key.pem` (0600) into `dir`, refusing to overwrite.
pub fn write_pair(dir: &Path, stem: &str, pair: &Pair) -> Result<(PathBuf, PathBuf), PkiError> {
    std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    for p in [&cert, &key] {
        if p.exists() {
            return Err(PkiError::Exists { path: p.clone() });
        }
    }
    write_new(&cert, &pair.cert_pem, false)?;
    write_new(&key, &pair.key_pem, true)?;
    Ok((cert, key))
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
