//! Tests of the configuration's one declaration (see `config.rs`).

use super::*;

fn cfg() -> ServerConfig {
    ServerConfig {
        id: 1,
        peers: "1=127.0.0.1:7001,2=127.0.0.1:7002".parse().unwrap(),
        data_dir: "/tmp/x".into(),
        request_timeout_ms: 1000,
        insecure: true,
        ..ServerConfig::default()
    }
}

/// A stand-in for the CLI: the settings' flags on a command of their own.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    settings: ServerSettings,
}

fn flags(args: &[&str]) -> ServerSettings {
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("gantry-server").chain(args.iter().copied()))
        .unwrap()
        .settings
}

/// One declaration: the same settings given as flags or in a file
/// resolve alike, flags win over the file, and unset ones get the
/// defaults a replica documents.
#[test]
fn t10_flags_and_file_are_one_declaration() {
    let file = ServerSettings::from_toml(
        r#"
        id = 2
        listen = "127.0.0.1:7002"
        peers = "1=127.0.0.1:7001,2=127.0.0.1:7002"
        data_dir = "/var/lib/gantry"
        join = true
        node_grace_ms = 5000
        placement = "strict"
        insecure = true
        [raft]
        heartbeat_ms = 25
        [admission]
        max_pending_tasks = 7
        "#,
    )
    .unwrap();
    let given = flags(&[
        "--id=2",
        "--listen=127.0.0.1:7002",
        "--peers=1=127.0.0.1:7001,2=127.0.0.1:7002",
        "--data-dir=/var/lib/gantry",
        "--join",
        "--node-grace-ms=5000",
        "--placement=strict",
        "--heartbeat-ms=25",
        "--max-pending-tasks=7",
    ]);
    let mut from_flags = given.clone().resolve();
    from_flags.insecure = true;
    let from_file = file.clone().resolve();
    assert_eq!(from_flags, from_file);
    assert_eq!(from_file.request_timeout_ms, 10_000, "a default");
    assert_eq!(from_file.raft.election_timeout_min_ms, 300, "a default");
    from_file.validate().unwrap();
    // Flags over the file.
    let both = flags(&["--node-grace-ms=9000"]).over(file).resolve();
    assert_eq!(both.node_grace_ms, 9_000);
    assert_eq!(both.raft.heartbeat_ms, 25);
    // Peers as a table too.
    let t = ServerSettings::from_toml("[peers]\n\"1\" = \"a:1\"\n").unwrap();
    assert_eq!(t.peers.unwrap().get(&1).map(String::as_str), Some("a:1"));
}

/// Adding a setting is its entry plus its line in the operator's table:
/// a setting missing from docs/operations.md fails here.
#[test]
fn t10_every_setting_is_documented() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md"),
    )
    .unwrap();
    let keys = ServerSettings::KEYS
        .iter()
        .filter(|k| !["raft", "admission"].contains(k))
        .map(|k| (*k).to_owned())
        .chain(RaftSettings::KEYS.iter().map(|k| format!("raft.{k}")))
        .chain(
            AdmissionSettings::KEYS
                .iter()
                .map(|k| format!("admission.{k}")),
        );
    for k in keys {
        assert!(
            doc.contains(&format!("`{k}`")) || doc.contains(&format!("`[{k}]")),
            "setting {k} is not in docs/operations.md's table"
        );
    }
}

#[test]
fn t10_unknown_or_missing_settings_are_named() {
    let e = ServerSettings::from_toml("node_grace = 5000\n").unwrap_err();
    assert!(e.problem.contains("node_grace"), "{e}");
    let e = ServerSettings::from_toml("[raft]\nheartbeat = 5\n").unwrap_err();
    assert!(e.problem.contains("heartbeat"), "{e}");
    let e = flags(&["--id=1"]).require().unwrap_err();
    assert_eq!(e.field, "listen");
    assert!(e.problem.contains("--listen") && e.problem.contains("GANTRY_LISTEN"));
    assert!(ServerSettings::KEYS.contains(&"raft"));
}

#[test]
fn t10_valid_config_passes_and_maps_to_openraft() {
    cfg().validate().unwrap();
    cfg().openraft().unwrap();
}

#[test]
fn t10_errors_name_the_field() {
    let mut c = cfg();
    c.id = 3;
    assert_eq!(c.validate().unwrap_err().field, "peers");
    let mut c = cfg();
    c.raft.election_timeout_min_ms = 50;
    assert_eq!(
        c.validate().unwrap_err().field,
        "raft.election_timeout_min_ms"
    );
    assert_eq!(parse_peers("1=a:1,1=b:2").unwrap_err().field, "peers");
    assert!(parse_peers("x=a:1").is_err());
    let mut c = cfg();
    c.insecure = false;
    assert_eq!(c.validate().unwrap_err().field, "tls");
    let mut c = cfg();
    c.peers.insert(2, "nope".into());
    assert!(c.validate().unwrap_err().problem.contains("HOST:PORT"));
}
