//! `ClientFrame::decode` on any input: never panics, and every accepted frame holds the
//! decoder's invariants (see `protocol::fuzzing::client_frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol::fuzzing::client_frame(data));
