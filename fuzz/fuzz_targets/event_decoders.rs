//! Any stored event, decoded by every decoder of the service: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orders::fuzzing::decode_stored_event(data));
