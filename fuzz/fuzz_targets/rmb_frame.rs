#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| zos_fuzz::rmb_frame(data));
