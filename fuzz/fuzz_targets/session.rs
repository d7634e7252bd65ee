//! Whole sessions through the sans-IO session core: the fuzzer picks the world (token, node,
//! door, resume) and a sequence of inputs (client messages and raw frames, room messages, lobby
//! decisions, media events, a socket that fails and comes back, virtual time passing). The core
//! must never panic, never emit anything after its Close, never send `joined` twice, never ask
//! for a timeout that does not move time on, and always end within its timers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    huddle_signaling::fuzzing::session(data);
});
