//! A request of any type, with arbitrary bytes as its protobuf encoding, through the gRPC
//! adapters and the core: refused or served, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    itc_server::fuzzing::call_services(data);
});
