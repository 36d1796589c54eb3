//! Payload masking (RFC 6455 §5.3).
//!
//! Every byte a client sends is XORed with a 4-byte key. Unmasking sits on the hot path of every
//! received frame, so it works on 8-byte words (one XOR per word; the compiler vectorises the
//! loop) and touches the unaligned head and tail byte by byte. The key is rotated for the word
//! loop so that it lines up with the payload's offset.

/// XORs `buf` in place with `key`, as if `buf` started at payload offset 0.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    apply_mask_at(buf, key, 0);
}

/// XORs `buf` in place with `key`, for a `buf` that starts `offset` bytes into the payload.
///
/// Lets a frame be unmasked in pieces as it arrives.
pub fn apply_mask_at(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // Head: bytes until `buf` reaches 8-byte alignment in memory.
    let head = buf.as_ptr().align_offset(8).min(buf.len());
    let (head_bytes, rest) = buf.split_at_mut(head);
    for (i, b) in head_bytes.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
    let phase = (offset + head) & 3;
    let rotated = [
        key[phase],
        key[(phase + 1) & 3],
        key[(phase + 2) & 3],
        key[(phase + 3) & 3],
    ];
    let key32 = u32::from_ne_bytes(rotated);
    // Both halves hold the same four bytes, so the word's byte order does not matter.
    let key64 = (u64::from(key32) << 32) | u64::from(key32);
    let mut words = rest.chunks_exact_mut(8);
    for word in &mut words {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_ne_bytes(w) ^ key64;
        word.copy_from_slice(&x.to_ne_bytes());
    }
    // Tail: what is left after the last whole word; its phase is unchanged since words are 8 bytes.
    for (i, b) in words.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_naive_at_every_length_and_alignment() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let storage: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for align in 0..16 {
            for len in 0..=64 {
                for offset in 0..4 {
                    let mut fast = storage.clone();
                    let mut slow = storage.clone();
                    apply_mask_at(&mut fast[align..align + len], key, offset);
                    naive(&mut slow[align..align + len], key, offset);
                    assert_eq!(fast, slow, "align {align} len {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn masking_twice_restores_the_payload() {
        let original: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut buf = original.clone();
        apply_mask(&mut buf, [1, 2, 3, 4]);
        assert_ne!(buf, original);
        apply_mask(&mut buf, [1, 2, 3, 4]);
        assert_eq!(buf, original);
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut buf = *b"Hello";
        apply_mask(&mut buf, [0x37, 0xfa, 0x21, 0x3d]);
        assert_eq!(buf, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn split_unmasking_equals_whole() {
        let key = [9, 8, 7, 6];
        let original: Vec<u8> = (0..300u32).map(|i| (i * 13) as u8).collect();
        let mut whole = original.clone();
        apply_mask(&mut whole, key);
        for split in 0..original.len() {
            let mut parts = original.clone();
            let (a, b) = parts.split_at_mut(split);
            apply_mask_at(a, key, 0);
            apply_mask_at(b, key, split);
            assert_eq!(parts, whole, "split at {split}");
        }
    }
}
