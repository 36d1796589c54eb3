//! Fuzzes `handshake::parse_request`, the server's upgrade-request parser: it never panics,
//! never reads past the header block it reports, and asks for more bytes on every prefix of a
//! valid request. The property is `checks::handshake` (fuzz/checks.rs), which
//! crates/proto/tests/fuzz_regressions.rs replays on the seeds and kept crash inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::handshake(data));
