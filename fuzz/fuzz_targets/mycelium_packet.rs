#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| zos_fuzz::mycelium_packet(data));
