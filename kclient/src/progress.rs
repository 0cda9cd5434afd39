//! What one completed WAIT means: the cursor to send next, the events and the exact count of
//! events missed, and whether to re-arm. Pure, so the host tests it; the completion routine
//! runs it.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use revcall_protocol::{Reply, WaitFlags, decode_reply};
use storport_abi::status::user::{
    STATUS_CANCELLED, STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_NOT_SUPPORTED, STATUS_SUCCESS,
};

use crate::Sink;

/// Why a subscription ended. `repr(u32)`: [`Stats::end`] holds it (0 while it runs).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The adapter's last event arrived (WAIT reply with FINAL and no MORE).
    Final = 1,
    /// The adapter went away before a FINAL reply reached us (STATUS_DEVICE_REMOVED or
    /// STATUS_DELETE_PENDING).
    Removed = 2,
    /// The subscriber stopped it (its IRP came back cancelled, or was not sent again).
    Stopped = 3,
    /// The device does not serve revcall's channel (STATUS_NOT_SUPPORTED,
    /// STATUS_INVALID_DEVICE_REQUEST, or a reply that is not a WAIT reply).
    NotRevcall = 4,
    /// Any other failure; [`Stats::end_status`] has the status.
    Failed = 5,
}

impl End {
    /// The code [`Stats::end`] holds for `self`.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The end a [`Stats::end`] code names (`None` for 0: still running).
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => Self::Final,
            2 => Self::Removed,
            3 => Self::Stopped,
            4 => Self::NotRevcall,
            5 => Self::Failed,
            _ => return None,
        })
    }
}

/// What a subscription has done, readable at any time from any thread (relaxed counters).
/// `repr(C)`: a client driver exports one, and storsim reads it out of the loaded image.
#[repr(C)]
#[derive(Default)]
pub struct Stats {
    /// WAITs sent (the first and every re-arm).
    pub sent: AtomicU64,
    /// WAIT replies received.
    pub replies: AtomicU64,
    /// Events delivered to the sink.
    pub delivered: AtomicU64,
    /// Events the adapter reported as no longer held for us (the replies' `lost`).
    pub lost: AtomicU64,
    /// The cursor: the sequence number of the last event delivered.
    pub cursor: AtomicU64,
    /// Breaks of the sequence: each event that does not follow the one before it (the first
    /// of a reply: cursor + lost + 1), and each reply whose cursor is not its last event or
    /// goes backwards. 0 unless the adapter broke its contract.
    pub gaps: AtomicU64,
    /// An [`End`] code; 0 while the subscription runs.
    pub end: AtomicU32,
    /// The status of the completion that ended it.
    pub end_status: AtomicU32,
}

impl Stats {
    pub const fn new() -> Self {
        Self {
            sent: AtomicU64::new(0),
            replies: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            end: AtomicU32::new(0),
            end_status: AtomicU32::new(0),
        }
    }

    /// How it ended, or `None` while it runs.
    pub fn ended(&self) -> Option<End> {
        End::from_code(self.end.load(Ordering::Acquire))
    }

    /// Every counter, read once.
    pub fn snapshot(&self) -> Snapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Snapshot {
            sent: load(&self.sent),
            replies: load(&self.replies),
            delivered: load(&self.delivered),
            lost: load(&self.lost),
            cursor: load(&self.cursor),
            gaps: load(&self.gaps),
            end: self.ended(),
            end_status: self.end_status.load(Ordering::Relaxed),
        }
    }
}

/// [`Stats`] as plain values, for whoever judges a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub sent: u64,
    pub replies: u64,
    pub delivered: u64,
    pub lost: u64,
    pub cursor: u64,
    pub gaps: u64,
    pub end: Option<End>,
    pub end_status: u32,
}

impl Snapshot {
    /// Whether the accounting is exact for a subscription that started from cursor 0: every
    /// sequence number up to the cursor delivered or counted lost, and no gap.
    pub fn exact(&self) -> bool {
        self.gaps == 0 && self.delivered + self.lost == self.cursor
    }
}

/// After a completion: send the next WAIT, or stop with this end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Rearm,
    End(End),
}

/// The subscription's position in the adapter's event sequence. Only the IRP's owner touches
/// it (the completion routine, then the work item that re-arms), so it needs no lock.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    /// The `cursor` of the next WAIT.
    cursor: u64,
}

impl Progress {
    /// Starting after `cursor`: 0 for every event the adapter still holds.
    pub const fn new(cursor: u64) -> Self {
        Self { cursor }
    }

    pub const fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Takes one completed WAIT: its `status` and the `reply` bytes (Information of them).
    /// Events go to `sink`, counts to `stats`; the answer says whether to re-arm.
    pub fn on_completion(
        &mut self,
        status: u32,
        reply: &[u8],
        stats: &Stats,
        sink: &impl Sink,
    ) -> Step {
        match status {
            STATUS_SUCCESS => {}
            STATUS_DEVICE_REMOVED | STATUS_DELETE_PENDING => return Step::End(End::Removed),
            STATUS_CANCELLED => return Step::End(End::Stopped),
            STATUS_NOT_SUPPORTED | STATUS_INVALID_DEVICE_REQUEST => {
                return Step::End(End::NotRevcall);
            }
            _ => return Step::End(End::Failed),
        }
        let Ok(Reply::Wait { reply, events }) = decode_reply(reply) else {
            return Step::End(End::NotRevcall);
        };
        stats.replies.fetch_add(1, Ordering::Relaxed);
        // Exact accounting: the first event follows the cursor after `lost` missed ones, the
        // rest follow each other. (The first WAIT may ask for "now", which has no number.)
        let mut expected = (self.cursor != revcall_protocol::CURSOR_NOW)
            .then(|| self.cursor.wrapping_add(reply.lost).wrapping_add(1));
        for event in events.clone() {
            if expected.is_some_and(|seq| seq != event.seq) {
                stats.gaps.fetch_add(1, Ordering::Relaxed);
            }
            expected = Some(event.seq.wrapping_add(1));
        }
        let last = expected.map(|next| next.wrapping_sub(1));
        let backwards = self.cursor != revcall_protocol::CURSOR_NOW && reply.cursor < self.cursor;
        let misplaced = reply.count != 0 && last != Some(reply.cursor);
        if backwards || misplaced {
            stats.gaps.fetch_add(1, Ordering::Relaxed);
        }
        let count = events.len() as u64;
        sink.events(events, reply.lost);
        stats.delivered.fetch_add(count, Ordering::Relaxed);
        stats.lost.fetch_add(reply.lost, Ordering::Relaxed);
        if reply.cursor != revcall_protocol::CURSOR_NOW {
            self.cursor = reply.cursor;
        }
        stats.cursor.store(self.cursor, Ordering::Relaxed);
        if reply.flags & WaitFlags::FINAL != 0 && reply.flags & WaitFlags::MORE == 0 {
            Step::End(End::Final)
        } else {
            Step::Rearm
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revcall_protocol::{EventRecord, ReplyEvents, WaitReplyWriter, wait_reply_len};
    use std::sync::Mutex;
    use std::vec::Vec;

    #[derive(Default)]
    struct Seen(Mutex<Vec<(u64, u64)>>);

    impl Sink for Seen {
        fn events(&self, events: ReplyEvents<'_>, lost: u64) {
            let mut seen = self.0.lock().unwrap();
            seen.extend(events.map(|e| (e.seq, lost)));
        }
        fn ended(&self, _end: End) {}
    }

    fn reply(seqs: &[u64], cursor: u64, lost: u64, flags: u32) -> Vec<u8> {
        let mut out = std::vec![0u8; wait_reply_len(seqs.len().max(1))];
        let mut writer = WaitReplyWriter::new(&mut out, seqs.len().max(1) as u32).unwrap();
        for &seq in seqs {
            assert!(writer.push(&EventRecord {
                seq,
                kind: 1,
                ..EventRecord::EMPTY
            }));
        }
        let len = writer.finish(cursor, lost, flags);
        out.truncate(len);
        out
    }

    #[test]
    fn follows_the_cursor_and_counts_lost_exactly() {
        let (stats, sink) = (Stats::new(), Seen::default());
        let mut progress = Progress::new(0);
        let first = reply(&[4, 5], 5, 3, 0);
        assert_eq!(
            progress.on_completion(STATUS_SUCCESS, &first, &stats, &sink),
            Step::Rearm
        );
        let second = reply(&[6], 6, 0, WaitFlags::FINAL | WaitFlags::MORE);
        assert_eq!(
            progress.on_completion(STATUS_SUCCESS, &second, &stats, &sink),
            Step::Rearm,
            "FINAL with MORE: drain what is still held"
        );
        let last = reply(&[7], 7, 0, WaitFlags::FINAL);
        assert_eq!(
            progress.on_completion(STATUS_SUCCESS, &last, &stats, &sink),
            Step::End(End::Final)
        );
        assert_eq!(progress.cursor(), 7);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 4);
        assert_eq!(stats.lost.load(Ordering::Relaxed), 3);
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 0);
        assert_eq!(*sink.0.lock().unwrap(), [(4, 3), (5, 3), (6, 0), (7, 0)]);
        let now = stats.snapshot();
        assert_eq!((now.replies, now.end), (3, None));
        assert!(now.exact(), "{now:?}");
        stats.lost.fetch_add(1, Ordering::Relaxed);
        assert!(!stats.snapshot().exact(), "one lost too many");
    }

    #[test]
    fn a_gap_the_lost_count_does_not_explain_is_counted() {
        let (stats, sink) = (Stats::new(), Seen::default());
        let mut progress = Progress::new(10);
        // Two missed (11, 12) but reported as one.
        let bytes = reply(&[13, 15], 15, 1, 0);
        assert_eq!(
            progress.on_completion(STATUS_SUCCESS, &bytes, &stats, &sink),
            Step::Rearm
        );
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_reply_cursor_that_is_not_its_last_event_or_goes_back_is_a_gap() {
        let (stats, sink) = (Stats::new(), Seen::default());
        let mut progress = Progress::new(10);
        let bytes = reply(&[11, 12], 13, 0, 0);
        progress.on_completion(STATUS_SUCCESS, &bytes, &stats, &sink);
        assert_eq!(
            stats.gaps.load(Ordering::Relaxed),
            1,
            "cursor past the last event"
        );
        let bytes = reply(&[], 5, 0, WaitFlags::FINAL);
        progress.on_completion(STATUS_SUCCESS, &bytes, &stats, &sink);
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 2, "cursor going back");
    }

    #[test]
    fn a_first_wait_for_now_has_no_expected_sequence() {
        let (stats, sink) = (Stats::new(), Seen::default());
        let mut progress = Progress::new(revcall_protocol::CURSOR_NOW);
        let bytes = reply(&[42], 42, 0, 0);
        progress.on_completion(STATUS_SUCCESS, &bytes, &stats, &sink);
        assert_eq!(stats.gaps.load(Ordering::Relaxed), 0);
        assert_eq!(progress.cursor(), 42);
    }

    #[test]
    fn statuses_end_the_subscription_with_their_reason() {
        let (stats, sink) = (Stats::new(), Seen::default());
        let mut progress = Progress::new(0);
        let mut end = |status| progress.on_completion(status, &[], &stats, &sink);
        assert_eq!(end(STATUS_DEVICE_REMOVED), Step::End(End::Removed));
        assert_eq!(end(STATUS_DELETE_PENDING), Step::End(End::Removed));
        assert_eq!(end(STATUS_CANCELLED), Step::End(End::Stopped));
        assert_eq!(end(STATUS_NOT_SUPPORTED), Step::End(End::NotRevcall));
        assert_eq!(
            end(STATUS_INVALID_DEVICE_REQUEST),
            Step::End(End::NotRevcall)
        );
        assert_eq!(
            end(storport_abi::status::user::STATUS_QUOTA_EXCEEDED),
            Step::End(End::Failed)
        );
        assert_eq!(
            end(STATUS_SUCCESS),
            Step::End(End::NotRevcall),
            "success with bytes that are no WAIT reply"
        );
        assert_eq!(stats.replies.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn end_codes_round_trip() {
        for end in [
            End::Final,
            End::Removed,
            End::Stopped,
            End::NotRevcall,
            End::Failed,
        ] {
            assert_eq!(End::from_code(end.code()), Some(end));
        }
        assert_eq!(End::from_code(0), None);
    }
}
