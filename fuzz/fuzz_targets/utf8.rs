//! Fuzzes `Utf8Validator`, the incremental UTF-8 check of text messages: over any split it
//! agrees with `std::str::from_utf8`. The property is `checks::utf8` (fuzz/checks.rs), which
//! crates/proto/tests/fuzz_regressions.rs replays on the seeds and kept crash inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| {
    checks::utf8(data);
});
