//! Fuzzes `MessageReader`, the frame-to-message parser, in both roles: a stream fed whole, in
//! pseudo-random pieces and byte by byte must give the same events, error and unconsumed bytes,
//! without a panic. The property is `checks::frame_parser` (fuzz/checks.rs), which
//! crates/proto/tests/fuzz_regressions.rs replays on the seeds and kept crash inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::frame_parser(data);
});
