//! Parsing a replica's configuration file and peer list: an error or a
//! config, never a panic.
#![no_main]

use gantry_server::{ServerSettings, parse_peers};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // The same reading `gantry server --config` does.
        if let Ok(settings) = ServerSettings::from_toml(text) {
            let _ = settings.require();
            let _ = settings.resolve().validate();
        }
        let _ = parse_peers(text);
    }
});
