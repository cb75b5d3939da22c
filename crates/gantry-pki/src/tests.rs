use std::os::unix::fs::PermissionsExt;

use super::*;

fn der(pem_text: &str) -> Vec<u8> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).unwrap();
    pem.contents
}

#[test]
fn t10_identity_round_trips_through_a_certificate() {
    let ca = new_ca(30).unwrap();
    let spec = LeafSpec {
        identity: Identity {
            role: Role::Agent,
            name: "gpu-01".into(),
        },
        dns: vec!["gpu-01.example".into()],
        ips: vec!["10.0.0.7".parse().unwrap()],
        days: 30,
        backdate_days: 0,
    };
    let leaf = issue(&ca, &spec).unwrap();
    let id = identity_from_der(&der(&leaf.cert_pem)).unwrap();
    assert_eq!(id, spec.identity);
    // The CA itself names nobody.
    assert!(identity_from_der(&der(&ca.cert_pem)).is_err());
    assert!(identity_from_der(b"garbage").is_err());
}

#[test]
fn t10_uri_parsing_and_names() {
    let id = Identity::from_uri("spiffe://gantry/server/replica-1").unwrap();
    assert_eq!((id.role, id.name.as_str()), (Role::Server, "replica-1"));
    assert!(Identity::from_uri("spiffe://other/server/x").is_none());
    assert!(Identity::from_uri("spiffe://gantry/admin/x").is_none());
    assert!(Identity::from_uri("spiffe://gantry/agent/a/b").is_none());
    assert!(valid_name("").is_err());
    assert!(valid_name("a b").is_err());
}

#[test]
fn t10_keys_are_private_and_nothing_is_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(1).unwrap();
    let (cert, key) = write_pair(dir.path(), "ca", &ca).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&cert), 0o644);
    let err = write_pair(dir.path(), "ca", &ca).unwrap_err();
    assert!(matches!(err, PkiError::Exists { .. }), "{err}");
}
