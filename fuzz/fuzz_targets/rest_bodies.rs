//! Every REST request body type of `protocol::rest` decoded from any input: never
//! panics, and what decodes re-encodes (see `protocol::fuzzing::REST_BODIES`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| protocol::fuzzing::rest_bodies(data));
