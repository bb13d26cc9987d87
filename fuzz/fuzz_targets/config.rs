//! The YAML configuration loader: parsing and lowering to the model never panic, whatever
//! the text.
#![no_main]
use gatehouse::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Config::parse(text, std::path::Path::new("/nonexistent"));
});
