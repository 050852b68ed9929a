//! The log store opened over a first segment of arbitrary bytes: it may refuse them, but
//! must neither panic nor hang.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    itc_server::fuzzing::open_log_segment(data);
});
