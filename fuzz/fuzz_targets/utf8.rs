//! Fuzzes `Utf8Validator`, the incremental UTF-8 check of text messages, against
//! `std::str::from_utf8`.
//!
//! The first byte seeds the split points; the rest is fed in pieces. The validator must agree
//! with std on the whole input, and may fail early only on a prefix that std also rejects as
//! unfinishable (an invalid sequence, not merely a truncated character).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringcast_proto::utf8::Utf8Validator;

fuzz_target!(|data: &[u8]| {
    let [seed, text @ ..] = data else {
        return;
    };
    let expected = std::str::from_utf8(text).is_ok();
    let max_piece = 1 + (*seed & 15) as usize;
    let mut state = u32::from(*seed) | 0x5eed_0000;
    let mut v = Utf8Validator::new();
    let mut fed = 0;
    let mut failed = false;
    while fed < text.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (1 + state as usize % max_piece).min(text.len() - fed);
        if v.feed(&text[fed..fed + n]).is_err() {
            // Failing early is right only if no continuation could make the prefix valid.
            let prefix = &text[..fed + n];
            let err = std::str::from_utf8(prefix).expect_err("rejected a valid prefix");
            assert!(
                err.error_len().is_some(),
                "rejected a prefix that only ends in an unfinished character"
            );
            failed = true;
            break;
        }
        fed += n;
    }
    let accepted = !failed && v.finish().is_ok();
    assert_eq!(
        accepted,
        expected,
        "validator vs std on {} bytes",
        text.len()
    );
});
