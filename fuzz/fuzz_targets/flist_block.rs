#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| zos_fuzz::flist_block(data));
