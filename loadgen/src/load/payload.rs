//! What a benchmark message carries: who sent it, its sequence number and its intended time.
//!
//! The first 24 bytes of every binary message are `run_tag u32 | publisher u32 | seq u64 |
//! intended_ns u64`, little-endian; the rest is padding up to `--size`. The run tag is random
//! per run so that stray traffic on the channel (another client, an earlier run) is counted as
//! foreign instead of corrupting the statistics.
//!
//! The padding is zeros by default, or JSON-like text (`--payload json`): what a compression
//! benchmark needs, since zeros compress far better than any real message.

/// Bytes of the stamp at the start of every message; `--size` may not be smaller.
pub const STAMP_LEN: usize = 24;

/// The stamp carried by one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub run_tag: u32,
    pub publisher: u32,
    pub seq: u64,
    pub intended_ns: u64,
}

impl Stamp {
    /// Writes the stamp into the first [`STAMP_LEN`] bytes of `out` (which must be that long).
    pub fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.run_tag.to_le_bytes());
        out[4..8].copy_from_slice(&self.publisher.to_le_bytes());
        out[8..16].copy_from_slice(&self.seq.to_le_bytes());
        out[16..24].copy_from_slice(&self.intended_ns.to_le_bytes());
    }

    /// Reads a stamp from the start of a payload, or `None` if it is too short.
    #[inline]
    pub fn read(buf: &[u8]) -> Option<Stamp> {
        let b: &[u8; STAMP_LEN] = buf.get(..STAMP_LEN)?.try_into().ok()?;
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        Some(Stamp {
            run_tag: u32_at(0),
            publisher: u32_at(4),
            seq: u64_at(8),
            intended_ns: u64_at(16),
        })
    }
}

/// What fills a message after its stamp.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// Zero bytes: the cheapest to produce; compresses to almost nothing.
    #[default]
    Zeros,
    /// Quotes as JSON text (symbols, prices, sizes from a fixed pseudo-random sequence):
    /// compresses about as well as real JSON (deflate level 1: to roughly a third).
    Json,
}

impl Payload {
    /// A whole message body of `size` bytes: [`STAMP_LEN`] zero bytes (the stamp's place), then
    /// the padding.
    pub fn body(self, size: usize) -> Vec<u8> {
        let mut out = vec![0u8; STAMP_LEN];
        match self {
            Payload::Zeros => out.resize(size.max(STAMP_LEN), 0),
            Payload::Json => {
                let mut x: u64 = 0x2545_F491_4F6C_DD1D;
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut text = String::from("{\"type\":\"quotes\",\"items\":[");
                let mut i = 0u64;
                while text.len() < size {
                    let r = next();
                    text.push_str(&format!(
                        "{{\"symbol\":\"S{:03}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"size\":{},\"venue\":\"{}\"}},",
                        r % 500,
                        90 + r % 20,
                        (r >> 8) % 100,
                        90 + (r >> 16) % 20,
                        (r >> 24) % 100,
                        (r >> 32) % 10_000,
                        ["XNAS", "XNYS", "BATS", "ARCX"][(i % 4) as usize],
                    ));
                    i += 1;
                }
                out.extend_from_slice(text.as_bytes());
                out.truncate(size.max(STAMP_LEN));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_have_the_size_asked() {
        for size in [24, 64, 1024, 65_536] {
            for kind in [Payload::Zeros, Payload::Json] {
                let body = kind.body(size);
                assert_eq!(body.len(), size);
                assert!(body[..STAMP_LEN].iter().all(|&b| b == 0));
            }
        }
        let json = Payload::Json.body(1024);
        assert!(json[STAMP_LEN..].starts_with(b"{\"type\":\"quotes\""));
    }

    #[test]
    fn round_trip() {
        let s = Stamp {
            run_tag: 0xdead_beef,
            publisher: 7,
            seq: 1 << 40,
            intended_ns: 123_456_789_012,
        };
        let mut buf = [0u8; 64];
        s.write(&mut buf);
        assert_eq!(Stamp::read(&buf), Some(s));
        assert_eq!(Stamp::read(&buf[..23]), None);
    }
}
