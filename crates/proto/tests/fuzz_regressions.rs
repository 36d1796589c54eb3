//! Replays fuzz inputs through the properties of the cargo-fuzz targets (fuzz/fuzz_targets/),
//! under the ordinary `cargo test`, so that what fuzzing established stays established.
//!
//! Inputs: the committed seeds (fuzz/seeds/<target>/) and every input kept from a fuzzing
//! finding (fuzz/regressions/<target>/, one file per crash, named after the libFuzzer
//! artifact). The properties are the targets' own, from the one module both include
//! (fuzz/checks.rs): `MessageReader` never panics and gives the same events fed whole, in
//! pseudo-random pieces and byte by byte; `parse_request` never reads past the header block it
//! reports and accepts a valid request only once it is whole; `Utf8Validator` agrees with
//! `std::str::from_utf8` over any split. On top of them, the seeds taken from RFC 6455 must
//! parse to what the RFC says.

#[path = "../../../fuzz/checks.rs"]
mod checks;

use checks::Owned;
use ringcast_proto::handshake::{parse_request, Request};
use std::path::{Path, PathBuf};

/// The fuzz crate's folder.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The committed seed `name` of `target`.
fn seed(target: &str, name: &str) -> Vec<u8> {
    std::fs::read(fuzz_dir().join("seeds").join(target).join(name)).unwrap()
}

/// Every input kept for `target`: seeds and regressions, as (name, bytes).
fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = fuzz_dir();
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            out.push((
                format!(
                    "{dir}/{target}/{}",
                    path.file_name().unwrap().to_string_lossy()
                ),
                std::fs::read(&path).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

// --- frame_parser -----------------------------------------------------------------------------

#[test]
fn frame_parser_inputs_replay() {
    let inputs = inputs("frame_parser");
    assert!(inputs.len() >= 10, "seeds missing: {}", inputs.len());
    for (name, data) in &inputs {
        let outcome = checks::frame_parser(data).unwrap_or_else(|| panic!("{name}: too short"));
        // The RFC 6455 §5.7 seeds are valid streams: they parse to events, without error.
        if name.contains("/rfc_") {
            assert_eq!(outcome.error, None, "{name}");
            assert!(!outcome.events.is_empty(), "{name}");
        }
    }
}

#[test]
fn rfc_examples_parse_to_the_rfc_messages() {
    let frame_seed = |name: &str| seed("frame_parser", name);
    let hello = Owned::Message(1, b"Hello".to_vec());
    assert_eq!(
        checks::frame_parser(&frame_seed("rfc_unmasked_hello"))
            .unwrap()
            .events,
        [hello]
    );
    let masked = checks::frame_parser(&frame_seed("rfc_masked_hello")).unwrap();
    assert_eq!(masked.events, [Owned::Message(1, b"Hello".to_vec())]);
    let fragmented = checks::frame_parser(&frame_seed("rfc_fragmented_unmasked")).unwrap();
    assert_eq!(
        fragmented.events,
        [Owned::Fragment, Owned::Message(1, b"Hello".to_vec())]
    );
    let too_big = checks::frame_parser(&frame_seed("masked_too_big")).unwrap();
    assert_eq!(too_big.error.map(|e| e.code().0), Some(1009));
    let bad_utf8 = checks::frame_parser(&frame_seed("masked_invalid_utf8")).unwrap();
    assert_eq!(bad_utf8.error.map(|e| e.code().0), Some(1007));
}

// --- handshake --------------------------------------------------------------------------------

#[test]
fn handshake_inputs_replay() {
    let inputs = inputs("handshake");
    assert!(inputs.len() >= 5, "seeds missing");
    for (_, data) in &inputs {
        checks::handshake(data);
    }
    // The RFC 6455 §1.2 request is accepted with the RFC's accept key.
    let rfc = seed("handshake", "rfc_request");
    let Ok(Some((Request::Upgrade { accept_key, .. }, _))) = parse_request(&rfc, 8192) else {
        panic!("the RFC request was not accepted");
    };
    assert_eq!(accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

// --- utf8 -------------------------------------------------------------------------------------

#[test]
fn utf8_inputs_replay() {
    let inputs = inputs("utf8");
    assert!(inputs.len() >= 5, "seeds missing");
    for (name, data) in &inputs {
        let accepted = checks::utf8(data).unwrap();
        let want = matches!(
            name.rsplit('/').next().unwrap(),
            "ascii" | "kosme" | "four_byte"
        );
        if name.starts_with("seeds/") {
            assert_eq!(accepted, want, "{name}");
        }
    }
}
