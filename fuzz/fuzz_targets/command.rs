//! Decoding a Raft payload and applying it: never a panic, whatever the bytes.
#![no_main]

use gantry_core::{Command, State};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = serde_json::from_slice::<Command>(data) {
        let mut state = State::default();
        state.apply(1, &cmd);
        state.apply(2, &cmd);
        if let Ok(snap) = state.to_snapshot() {
            let restored = State::from_snapshot(&snap).expect("own snapshot must restore");
            assert_eq!(restored, state);
        }
    }
    let _ = State::from_snapshot(data);
});
