//! The `iovec`s of a round of writes: an arena the kernel reads at submission, and the
//! builder through which a writer describes what it sends.
//!
//! A write of many frames is one `sendmsg` over an `iovec` array. The arrays of every write in
//! a round live back to back in one arena owned by the ring; they must stay put until the
//! entries are submitted (the kernel copies them then: `IORING_FEAT_SUBMIT_STABLE`), so the
//! arena never grows past the capacity it was made with, and is cleared after each submission.

/// Most `iovec`s in one write (the kernel's `IOV_MAX`).
pub const MAX_IOVECS: usize = 1024;

/// Room for this many `iovec`s between two submissions (256 KiB).
const ARENA_IOVECS: usize = 16 * 1024;

/// The `iovec`s of the writes not yet submitted.
pub(crate) struct IovecArena {
    iovecs: Vec<libc::iovec>,
}

impl IovecArena {
    pub(crate) fn new() -> Self {
        IovecArena {
            iovecs: Vec::with_capacity(ARENA_IOVECS),
        }
    }

    /// Whether one more write (up to [`MAX_IOVECS`]) fits before the next submission.
    pub(crate) fn has_room_for_a_write(&self) -> bool {
        self.iovecs.capacity() - self.iovecs.len() >= MAX_IOVECS
    }

    /// A builder for one write's `iovec`s, appended after those already in the arena.
    pub(crate) fn builder(&mut self) -> IovecBuilder<'_> {
        let first = self.iovecs.len();
        IovecBuilder {
            iovecs: &mut self.iovecs,
            first,
        }
    }

    /// The arena may be reused: every entry pointing into it has been submitted.
    pub(crate) fn clear(&mut self) {
        self.iovecs.clear();
    }
}

/// One write's `iovec`s, as a writer describes them: slices of memory that stay valid until
/// the write completes, at most [`MAX_IOVECS`] of them; a slice that starts where the previous
/// one ends extends it rather than taking another `iovec`.
pub struct IovecBuilder<'a> {
    iovecs: &'a mut Vec<libc::iovec>,
    first: usize,
}

impl IovecBuilder<'_> {
    /// Adds `bytes` to the write; `false` (and nothing added) when the write already has
    /// [`MAX_IOVECS`] `iovec`s and `bytes` does not extend the last one.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        if let Some(last) = self.iovecs[self.first..].last_mut() {
            if (last.iov_base as *const u8).wrapping_add(last.iov_len) == bytes.as_ptr() {
                last.iov_len += bytes.len();
                return true;
            }
        }
        if self.len() == MAX_IOVECS {
            return false;
        }
        self.iovecs.push(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
        true
    }

    /// `iovec`s in this write so far.
    pub fn len(&self) -> usize {
        self.iovecs.len() - self.first
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether another `iovec` can be added.
    pub fn has_room(&self) -> bool {
        self.len() < MAX_IOVECS
    }

    /// Bytes in this write so far.
    pub fn bytes(&self) -> usize {
        self.iovecs[self.first..].iter().map(|v| v.iov_len).sum()
    }

    /// This write's `iovec`s.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [libc::iovec] {
        &mut self.iovecs[self.first..]
    }

    /// Takes this write's only `iovec` out of the arena (a plain `send` needs none).
    pub(crate) fn take_single(&mut self) -> Option<libc::iovec> {
        if self.len() == 1 {
            self.iovecs.pop()
        } else {
            None
        }
    }
}

/// A standalone arena and builder, for benches and tests that drive a writer without a ring.
pub struct ScratchIovecs {
    arena: IovecArena,
}

impl Default for ScratchIovecs {
    fn default() -> Self {
        ScratchIovecs {
            arena: IovecArena::new(),
        }
    }
}

impl ScratchIovecs {
    /// An empty builder (what the previous one held is discarded).
    pub fn builder(&mut self) -> IovecBuilder<'_> {
        self.arena.clear();
        self.arena.builder()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_slices_share_an_iovec_and_the_count_is_capped() {
        let block = vec![7u8; 4096];
        let other = vec![9u8; 16];
        let mut scratch = ScratchIovecs::default();
        let mut b = scratch.builder();
        assert!(b.push(&block[..100]));
        assert!(b.push(&block[100..300]));
        assert_eq!((b.len(), b.bytes()), (1, 300));
        assert!(b.push(&other));
        assert!(b.push(&block[1000..1010]));
        assert_eq!((b.len(), b.bytes()), (3, 326));
        let mut b = scratch.builder();
        let pieces: Vec<Vec<u8>> = (0..MAX_IOVECS + 1).map(|_| vec![1u8; 2]).collect();
        for p in &pieces[..MAX_IOVECS] {
            assert!(b.push(p));
        }
        assert!(!b.has_room());
        assert!(!b.push(&pieces[MAX_IOVECS]));
        assert_eq!(b.len(), MAX_IOVECS);
    }
}
