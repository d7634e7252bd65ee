//! Arbitrary datagrams and stream bytes into the TURN server's sans-IO core.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    huddle_turn::fuzzing::feed(data);
});
