#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| smtprelay::fuzzing::data_receiver(data));
