//! A channel's log on one worker thread: the blocks published to the channel, in order, each
//! held once, and a cursor per subscriber into it.
//!
//! A broadcast is an append: the block goes at the head of the log, and the subscribers that
//! were idle at the head are handed back to be woken. Each subscriber writes from its cursor to
//! the head, a few `iovec`s per write (one per block), and its cursor moves on when the write
//! completes. Nothing is done per subscriber per message: the cost is per subscriber per write.
//!
//! Positions are (block sequence number, byte offset in the block). Every block counts the
//! cursors in it; the log drops blocks from its front once no cursor is in them, so a block
//! lives as long as its slowest reader needs it and no longer (a write in flight holds its
//! blocks by reference, apart from the log). The bytes the log holds are bounded by its window:
//! when an append takes it over the window the log is *full*, and its owner pauses publishers
//! and, past `--slow-timeout`, moves the readers still behind the window (the slow policy); see
//! [`super::channel`].

use super::block::Block;
use super::compressed::Encoding;
use super::registry::ChannelShared;
use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

/// A block in one thread's log of a channel.
#[derive(Debug)]
pub struct LogBlock {
    seq: u64,
    /// Messages appended to the log before this block.
    frames_before: u64,
    block: Arc<Block>,
    /// Cursors in this block.
    readers: Cell<u32>,
}

impl LogBlock {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn bytes(&self) -> &[u8] {
        self.block.bytes()
    }

    /// The block's frames as a subscriber with `encoding` is sent them.
    pub fn encoded(&self, encoding: Encoding) -> &[u8] {
        self.block.encoded(encoding)
    }

    /// The plain length, which the window counts.
    pub fn len(&self) -> usize {
        self.block.len()
    }

    pub fn is_empty(&self) -> bool {
        self.block.is_empty()
    }

    pub fn frames(&self) -> u32 {
        self.block.frames()
    }

    pub fn origin(&self) -> u64 {
        self.block.origin()
    }

    /// The offset of its last publication, if its publications are numbered.
    pub fn last_offset(&self) -> Option<u64> {
        self.block.last_offset()
    }

    /// Messages appended to the log before this block.
    pub fn frames_before(&self) -> u64 {
        self.frames_before
    }

    /// Messages appended to the log up to the end of this block.
    pub fn frames_through(&self) -> u64 {
        self.frames_before + u64::from(self.frames())
    }
}

/// A position in a log: a byte of a block, or the head (the sequence number the next block
/// will have, offset 0).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub seq: u64,
    pub off: usize,
}

/// Something parked in a log, waiting for the next append: it knows its slot in the idle list,
/// so that it leaves that list in O(1).
pub trait Parked {
    /// Its index in the idle list; `u32::MAX` when not parked.
    fn park_slot(&self) -> &Cell<u32>;
}

/// The slot of something not parked.
pub const NOT_PARKED: u32 = u32::MAX;

/// Where a log reports that it is over its window: the channel's state shared by the node's
/// threads, and this thread's bit in it.
#[derive(Debug, Clone)]
pub struct FullFlag {
    pub shared: Arc<ChannelShared>,
    pub thread: usize,
}

/// One thread's log of a channel (see the module documentation).
#[derive(Debug)]
pub struct ChannelLog<W> {
    blocks: VecDeque<Rc<LogBlock>>,
    /// The sequence number of `blocks[0]` (the head's, when the log is empty).
    base_seq: u64,
    /// Messages appended so far.
    frames_total: u64,
    /// Bytes of the blocks held.
    bytes: usize,
    /// Cursors at the head.
    at_head: u32,
    /// Readers waiting at the head for the next append.
    idle: Vec<Rc<W>>,
    /// Most bytes held before the log is full (`--channel-window`).
    window: usize,
    /// Since when the log has been over its window.
    full_since: Option<Instant>,
    flag: Option<FullFlag>,
}

impl<W: Parked> ChannelLog<W> {
    /// An empty log holding at most `window` bytes before it is full; `flag` is where it says
    /// so (none for a log no other thread cares about, like the echo path's).
    pub fn new(window: usize, flag: Option<FullFlag>) -> Self {
        ChannelLog {
            blocks: VecDeque::new(),
            base_seq: 0,
            frames_total: 0,
            bytes: 0,
            at_head: 0,
            idle: Vec::new(),
            window: window.max(1),
            full_since: None,
            flag,
        }
    }

    /// The position of the next block.
    pub fn head(&self) -> Pos {
        Pos {
            seq: self.base_seq + self.blocks.len() as u64,
            off: 0,
        }
    }

    /// A new cursor, at the head: it will read what is appended from now on.
    pub fn join(&mut self) -> Pos {
        self.at_head += 1;
        self.head()
    }

    /// A cursor leaves the log.
    pub fn leave(&mut self, pos: Pos) {
        self.uncount(pos);
        self.trim();
    }

    /// A cursor moves forward from `from` to `to`.
    pub fn advance(&mut self, from: Pos, to: Pos) {
        if from == to {
            return;
        }
        self.count(to);
        self.uncount(from);
        self.trim();
    }

    /// `pos` moved past the ends of blocks (in `encoding`, the reader's) and past blocks that
    /// `reader` published itself (a publisher does not get its own messages back); the count
    /// is not moved.
    pub fn skip(&self, mut pos: Pos, reader: u64, encoding: Encoding) -> Pos {
        while let Some(block) = self.block(pos.seq) {
            let end = match encoding {
                Encoding::Plain => block.len(),
                _ if pos.off == 0 => usize::MAX,
                _ => block.encoded(encoding).len(),
            };
            if pos.off >= end || (pos.off == 0 && block.origin() == reader) {
                pos = Pos {
                    seq: pos.seq + 1,
                    off: 0,
                };
            } else {
                break;
            }
        }
        pos
    }

    /// The block with sequence number `seq`, while the log holds it.
    pub fn block(&self, seq: u64) -> Option<&Rc<LogBlock>> {
        let index = seq.checked_sub(self.base_seq)?;
        self.blocks.get(usize::try_from(index).ok()?)
    }

    /// The blocks from `seq` to the head.
    pub fn blocks_from(&self, seq: u64) -> impl Iterator<Item = &Rc<LogBlock>> {
        let index = seq.saturating_sub(self.base_seq);
        self.blocks.range(
            usize::try_from(index)
                .unwrap_or(usize::MAX)
                .min(self.blocks.len())..,
        )
    }

    /// Messages appended before position `seq` (the head's: all of them).
    pub fn frames_before(&self, seq: u64) -> u64 {
        self.block(seq)
            .map_or(self.frames_total, |block| block.frames_before)
    }

    /// Appends a block at the head. The cursors at the head are now at its start; the readers
    /// that were parked there are returned by [`ChannelLog::take_idle`].
    pub fn append(&mut self, block: Arc<Block>) {
        let entry = LogBlock {
            seq: self.head().seq,
            frames_before: self.frames_total,
            readers: Cell::new(std::mem::take(&mut self.at_head)),
            block,
        };
        self.frames_total += u64::from(entry.frames());
        self.bytes += entry.len();
        self.blocks.push_back(Rc::new(entry));
        self.trim();
        if self.bytes > self.window && self.full_since.is_none() {
            self.full_since = Some(Instant::now());
            if let Some(flag) = &self.flag {
                flag.shared.set_full(flag.thread, true);
            }
        }
    }

    /// Parks a reader that has nothing to write until the next append.
    pub fn park(&mut self, reader: Rc<W>) {
        if reader.park_slot().get() != NOT_PARKED {
            return;
        }
        reader.park_slot().set(self.idle.len() as u32);
        self.idle.push(reader);
    }

    /// Takes a reader out of the idle list, if it is in it.
    pub fn unpark(&mut self, reader: &W) {
        let slot = reader.park_slot().replace(NOT_PARKED);
        if slot == NOT_PARKED {
            return;
        }
        let slot = slot as usize;
        if slot < self.idle.len() {
            self.idle.swap_remove(slot);
            if let Some(moved) = self.idle.get(slot) {
                moved.park_slot().set(slot as u32);
            }
        }
    }

    /// Moves the parked readers into `woken` (emptied first), to be woken: they are no longer
    /// parked. The two lists trade buffers, so neither is allocated again.
    pub fn take_idle(&mut self, woken: &mut Vec<Rc<W>>) {
        woken.clear();
        std::mem::swap(&mut self.idle, woken);
        for reader in woken.iter() {
            reader.park_slot().set(NOT_PARKED);
        }
    }

    /// Readers parked.
    pub fn parked(&self) -> usize {
        self.idle.len()
    }

    /// Bytes of the blocks held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Since when the log has been over its window, if it is.
    pub fn full_since(&self) -> Option<Instant> {
        self.full_since
    }

    /// The oldest position within the window: the start of the oldest block such that it and
    /// the blocks after it hold at most the window (the newest block is always kept). `None`
    /// when the log is not over its window.
    pub fn window_start(&self) -> Option<Pos> {
        if self.bytes <= self.window {
            return None;
        }
        Some(self.start_keeping(self.window))
    }

    /// The start of the oldest block such that it and the blocks after it hold at most `bytes`
    /// (the newest block is always kept).
    pub fn start_keeping(&self, bytes: usize) -> Pos {
        let mut kept = 0usize;
        let mut seq = self.head().seq;
        for block in self.blocks.iter().rev() {
            if kept > 0 && kept + block.len() > bytes {
                break;
            }
            kept += block.len();
            seq = block.seq;
        }
        Pos { seq, off: 0 }
    }

    fn count(&mut self, pos: Pos) {
        match self.block(pos.seq) {
            Some(block) => block.readers.set(block.readers.get() + 1),
            None if pos.seq >= self.head().seq => self.at_head += 1,
            None => {}
        }
    }

    fn uncount(&mut self, pos: Pos) {
        match self.block(pos.seq) {
            Some(block) => block.readers.set(block.readers.get().saturating_sub(1)),
            None if pos.seq >= self.head().seq => self.at_head = self.at_head.saturating_sub(1),
            None => {}
        }
    }

    /// Drops the blocks at the front that no cursor is in any more.
    fn trim(&mut self) {
        while let Some(front) = self.blocks.front() {
            if front.readers.get() > 0 {
                break;
            }
            self.bytes -= front.len();
            self.base_seq += 1;
            self.blocks.pop_front();
        }
        if self.bytes <= self.window && self.full_since.take().is_some() {
            if let Some(flag) = &self.flag {
                flag.shared.set_full(flag.thread, false);
            }
        }
    }
}

impl<W> Drop for ChannelLog<W> {
    fn drop(&mut self) {
        if self.full_since.is_some() {
            if let Some(flag) = &self.flag {
                flag.shared.set_full(flag.thread, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::block::BlockEncoder;
    use super::*;
    use ringcast_proto::frame::OpCode;

    #[derive(Default)]
    struct Reader(Cell<u32>);

    impl Parked for Reader {
        fn park_slot(&self) -> &Cell<u32> {
            &self.0
        }
    }

    fn block(frames: &[usize], origin: u64) -> Arc<Block> {
        let mut encoder = BlockEncoder::default();
        for &len in frames {
            encoder.push(OpCode::Binary, &vec![0u8; len]);
        }
        encoder.finish(origin).unwrap()
    }

    fn log(window: usize) -> ChannelLog<Reader> {
        ChannelLog::new(window, None)
    }

    #[test]
    fn blocks_live_while_a_cursor_is_in_them() {
        let mut log = log(1 << 20);
        let a = log.join();
        log.append(block(&[10, 10], 1));
        log.append(block(&[10], 1));
        assert_eq!((log.len(), log.bytes()), (2, 36));
        let b = log.join();
        assert_eq!(b, Pos { seq: 2, off: 0 });
        // a moves to the middle of block 0, then past it: block 0 goes.
        let mid = Pos { seq: 0, off: 12 };
        log.advance(a, mid);
        assert_eq!(log.len(), 2);
        let next = log.skip(Pos { seq: 0, off: 24 }, 99, Encoding::Plain);
        assert_eq!(next, Pos { seq: 1, off: 0 });
        log.advance(mid, next);
        assert_eq!((log.len(), log.bytes()), (1, 12));
        assert_eq!(log.frames_before(1), 2);
        log.leave(next);
        assert!(log.is_empty());
        assert_eq!(log.frames_before(log.head().seq), 3);
        log.leave(b);
        log.append(block(&[1], 1));
        assert!(log.is_empty(), "a block no cursor will read is not kept");
    }

    #[test]
    fn a_reader_skips_what_it_published() {
        let mut log = log(1 << 20);
        let pos = log.join();
        log.append(block(&[5], 7));
        log.append(block(&[5], 7));
        log.append(block(&[5], 8));
        assert_eq!(log.skip(pos, 7, Encoding::Plain), Pos { seq: 2, off: 0 });
        assert_eq!(log.skip(pos, 8, Encoding::Plain), pos);
        assert_eq!(
            log.skip(Pos { seq: 2, off: 7 }, 7, Encoding::Plain),
            Pos { seq: 3, off: 0 }
        );
    }

    #[test]
    fn parked_readers_are_woken_once_and_leave_in_constant_time() {
        let mut log = log(1 << 20);
        let readers: Vec<Rc<Reader>> = (0..5)
            .map(|_| Rc::new(Reader(Cell::new(NOT_PARKED))))
            .collect();
        for r in &readers {
            log.park(r.clone());
            log.park(r.clone());
        }
        assert_eq!(log.parked(), 5);
        log.unpark(&readers[1]);
        log.unpark(&readers[1]);
        assert_eq!(log.parked(), 4);
        let mut woken = Vec::new();
        log.take_idle(&mut woken);
        assert_eq!(woken.len(), 4);
        assert!(woken.iter().all(|r| r.park_slot().get() == NOT_PARKED));
        assert!(!woken.iter().any(|r| Rc::ptr_eq(r, &readers[1])));
        assert_eq!(log.parked(), 0);
    }

    #[test]
    fn the_window_is_counted_in_bytes_held_and_its_start_keeps_the_newest_block() {
        let mut log = log(100);
        let slow = log.join();
        for _ in 0..3 {
            log.append(block(&[38], 1)); // 40 bytes each
        }
        assert!(log.full_since().is_some());
        assert_eq!(log.window_start(), Some(Pos { seq: 1, off: 0 }));
        // The slow reader is moved to the window's start: block 0 goes, the log has room.
        log.advance(slow, Pos { seq: 1, off: 0 });
        assert_eq!(log.bytes(), 80);
        assert!(log.full_since().is_none());
        assert_eq!(log.window_start(), None);
        let mut big = ChannelLog::<Reader>::new(10, None);
        let _c = big.join();
        big.append(block(&[100], 1));
        assert_eq!(big.window_start(), Some(Pos { seq: 0, off: 0 }));
    }
}
