//! The Kea command parser and the answer reader never panic on any body.
#![no_main]
use gatehouse::http::kea;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = kea::parse(data) {
        assert!(!cmd.command.is_empty());
        let _ = kea::command_label(&cmd.command);
    }
    let _ = kea::result_codes(data);
});
