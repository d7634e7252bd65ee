//! The wire protocol of `/ws`: the types live in the `huddle-protocol` crate (shared with the
//! media SFU and the load tester); this module re-exports them under the name signaling has
//! always used.

pub use huddle_protocol::*;
