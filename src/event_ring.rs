//! The adapter's event ring: a fixed window of the newest events, numbered without gaps.
//!
//! Every waiter keeps its own cursor (the last `seq` it saw), so every waiter sees every event
//! still retained, and one that fell behind learns exactly how many it missed.

use revcall_protocol::{EventKind, EventRecord, WaitReplyWriter};

/// Events retained per adapter (8 KiB of records).
pub const RING_CAPACITY: usize = 256;

/// # Invariants
///
/// The records with `seq` in `oldest()..=head` sit at index `seq % RING_CAPACITY`.
/// All-zero bytes are the empty ring (the Windows device extension starts zeroed).
pub struct EventRing {
    records: [EventRecord; RING_CAPACITY],
    head: u64,
    overwrites: u64,
}

/// What [`EventRing::read_into`] delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The `seq` of the last delivered event: the waiter's next cursor.
    pub cursor: u64,
    /// Events after the old cursor that were overwritten before this read.
    pub lost: u64,
    /// Retained events after the new cursor that did not fit.
    pub more: bool,
}

impl EventRing {
    pub const fn new() -> Self {
        Self {
            records: [EventRecord::EMPTY; RING_CAPACITY],
            head: 0,
            overwrites: 0,
        }
    }

    /// The newest `seq`; 0 before the first event.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest retained `seq`; 0 before the first event.
    pub fn oldest(&self) -> u64 {
        match self.head {
            0 => 0,
            head => head.saturating_sub(RING_CAPACITY as u64 - 1).max(1),
        }
    }

    pub fn overwrites(&self) -> u64 {
        self.overwrites
    }

    /// Appends an event, overwriting the oldest when full; returns its `seq`.
    pub fn publish(&mut self, kind: EventKind, arg0: u64, arg1: u64) -> u64 {
        if self.head >= RING_CAPACITY as u64 {
            self.overwrites += 1;
        }
        self.head += 1;
        let seq = self.head;
        self.records[index(seq)] = EventRecord {
            seq,
            kind: kind as u32,
            reserved: 0,
            arg0,
            arg1,
        };
        seq
    }

    /// Writes the events after `cursor` into `writer`, oldest first, as many as fit.
    ///
    /// `cursor` must not be ahead of [`head`](Self::head); with nothing newer the reply is
    /// empty and the cursor unchanged.
    pub fn read_into(&self, cursor: u64, writer: &mut WaitReplyWriter<'_>) -> Delivery {
        debug_assert!(
            cursor <= self.head,
            "cursor {cursor} ahead of head {}",
            self.head
        );
        let wanted = cursor + 1;
        let first = wanted.max(self.oldest());
        let lost = first - wanted;
        let mut last = cursor;
        for seq in first..=self.head {
            if !writer.push(&self.records[index(seq)]) {
                break;
            }
            last = seq;
        }
        // A cursor that fell out of the ring advances past the gap even if nothing fits.
        Delivery {
            cursor: last.max(first - 1),
            lost,
            more: last < self.head,
        }
    }
}

impl Default for EventRing {
    fn default() -> Self {
        Self::new()
    }
}

fn index(seq: u64) -> usize {
    (seq % RING_CAPACITY as u64) as usize
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use revcall_protocol::{Reply, decode_reply};
    use std::vec::Vec;

    fn ring_with(n: u64) -> EventRing {
        let mut ring = EventRing::new();
        for i in 1..=n {
            assert_eq!(ring.publish(EventKind::Injected, i, 0), i);
        }
        ring
    }

    /// Reads with a buffer of `room` events and returns (delivery, seqs delivered).
    fn read(ring: &EventRing, cursor: u64, room: usize) -> (Delivery, Vec<u64>) {
        let mut buf = std::vec![0u8; 32 + 32 * room];
        let mut writer = WaitReplyWriter::new(&mut buf, u32::MAX).unwrap();
        let delivery = ring.read_into(cursor, &mut writer);
        let n = writer.finish(delivery.cursor, delivery.lost, 0);
        let Ok(Reply::Wait { events, .. }) = decode_reply(&buf[..n]) else {
            panic!()
        };
        (delivery, events.map(|e| e.seq).collect())
    }

    #[test]
    fn empty_ring_has_no_head_and_no_oldest() {
        let ring = EventRing::new();
        assert_eq!((ring.head(), ring.oldest(), ring.overwrites()), (0, 0, 0));
    }

    #[test]
    fn delivers_in_order_and_batches_to_the_buffer() {
        let ring = ring_with(5);
        let (d, seqs) = read(&ring, 1, 3);
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(
            d,
            Delivery {
                cursor: 4,
                lost: 0,
                more: true
            }
        );
        let (d, seqs) = read(&ring, 4, 3);
        assert_eq!(seqs, [5]);
        assert_eq!(
            d,
            Delivery {
                cursor: 5,
                lost: 0,
                more: false
            }
        );
    }

    #[test]
    fn a_waiter_that_fell_behind_learns_exactly_what_it_lost() {
        let n = RING_CAPACITY as u64 + 10;
        let ring = ring_with(n);
        assert_eq!(ring.oldest(), 11);
        assert_eq!(ring.overwrites(), 10);
        let (d, seqs) = read(&ring, 3, 2);
        // Events 4..=10 are gone: 7 lost; delivery resumes at the oldest retained.
        assert_eq!(
            d,
            Delivery {
                cursor: 12,
                lost: 7,
                more: true
            }
        );
        assert_eq!(seqs, [11, 12]);
        let (d, _) = read(&ring, 0, 1);
        assert_eq!(d.lost, 10);
    }

    #[test]
    fn every_event_is_delivered_or_counted_lost() {
        // Whatever the reader's pace, delivered + lost covers every seq exactly once.
        for room in 1..5usize {
            let mut ring = EventRing::new();
            let mut cursor = 0;
            let (mut delivered, mut lost) = (0u64, 0u64);
            for round in 0..2000u64 {
                for _ in 0..(round % 7) {
                    ring.publish(EventKind::Injected, 0, 0);
                }
                if ring.head() > cursor {
                    let (d, seqs) = read(&ring, cursor, room);
                    assert_eq!(seqs.first().copied(), Some(cursor + 1 + d.lost));
                    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
                    delivered += seqs.len() as u64;
                    lost += d.lost;
                    cursor = d.cursor;
                }
            }
            assert_eq!(delivered + lost, cursor);
        }
    }
}
