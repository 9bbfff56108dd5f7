//! Any file, read and checked as `strata events import` reads one: never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| orders::fuzzing::check_import_file(data));
