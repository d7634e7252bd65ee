//! Every client frame goes through `decode_client_msg`: it must never panic, and a decoded
//! message's `request_id` is at most 64 characters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match huddle_signaling::protocol::decode_client_msg(text) {
        Ok((_, rid)) | Err(huddle_signaling::protocol::DecodeError { request_id: rid, .. }) => {
            assert!(rid.is_none_or(|r| r.len() <= 64));
        }
    }
});
