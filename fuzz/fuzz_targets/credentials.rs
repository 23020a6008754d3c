//! Device-token verification, API key and bearer parsing and the admin token
//! comparison on any input (see `credentials::fuzzing::credentials`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| credentials::fuzzing::credentials(data));
