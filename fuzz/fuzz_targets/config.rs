//! Parsing a replica's configuration file and peer list: an error or a
//! config, never a panic.
#![no_main]

use gantry_server::{ServerConfig, parse_peers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(cfg) = toml::from_str::<ServerConfig>(text) {
            let _ = cfg.validate();
        }
        let _ = parse_peers(text);
    }
});
