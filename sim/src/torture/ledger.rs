//! The torture's invariants as pure checks on what clients saw, so that a doctored completion
//! sequence can be fed to them (see the tests at the end): which statuses each request path
//! allows, each waiter's view of the event stream — strictly ordered, every gap exactly what
//! the driver reported as `lost`, each FIRE source in its own order — and the driver's STATS
//! counters against the completions clients saw.

use std::collections::HashMap;

use revcall_protocol::status::{
    STATUS_CANCELLED, STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED, STATUS_NO_SUCH_DEVICE,
    STATUS_NOT_SUPPORTED, STATUS_QUOTA_EXCEEDED, STATUS_SUCCESS,
};
use revcall_protocol::{CURSOR_NOW, EventKind, EventRecord, StatsReply, WaitFlags, WaitReply};

/// What a request was, for the statuses it may end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Wait,
    /// A WAIT of a flood past the parked cap.
    Flood,
    Fire,
    Discover,
    Stats,
    LunCreate,
    LunRemove,
    LunList,
    /// A malformed request and the one error status its defect must produce.
    Malformed(u32),
}

/// What may excuse an error status a request would not otherwise end with.
#[derive(Clone, Copy, Debug, Default)]
pub struct Excuses {
    /// A cancel that could have reached the request was issued.
    pub cancel_requested: bool,
    /// The low-resources simulation is on.
    pub low_resources: bool,
    /// A flood may have filled the parked cap while the request was out.
    pub cap_full: bool,
}

/// Whether a request on `path` may complete with `status`. Storport's own refusal
/// (STATUS_DELETE_PENDING: removal under way, or a handle to a removed adapter) is allowed on
/// every path; STATUS_CANCELLED only if a cancel could have reached it; a WAIT's
/// STATUS_QUOTA_EXCEEDED only from a flood or while one filled the cap; FIRE's
/// STATUS_NOT_SUPPORTED only under low-resources simulation (the driver could not read its
/// registry value, and the test hook fails closed).
pub fn allowed(path: Path, status: u32, excuses: Excuses) -> bool {
    if status == STATUS_DELETE_PENDING {
        return true;
    }
    match path {
        Path::Flood if status == STATUS_QUOTA_EXCEEDED => true,
        Path::Wait if status == STATUS_QUOTA_EXCEEDED => excuses.cap_full,
        Path::Wait | Path::Flood => {
            status == STATUS_SUCCESS
                || status == STATUS_DEVICE_REMOVED
                || (status == STATUS_CANCELLED && excuses.cancel_requested)
        }
        Path::Fire if status == STATUS_NOT_SUPPORTED => excuses.low_resources,
        Path::Fire | Path::Discover => status == STATUS_SUCCESS || status == STATUS_DEVICE_REMOVED,
        Path::Stats | Path::LunList => status == STATUS_SUCCESS,
        // Another CPU may have taken the last LUN number, or removed the LUN first.
        Path::LunCreate => {
            [STATUS_SUCCESS, STATUS_QUOTA_EXCEEDED, STATUS_DEVICE_REMOVED].contains(&status)
        }
        Path::LunRemove => {
            [STATUS_SUCCESS, STATUS_NO_SUCH_DEVICE, STATUS_DEVICE_REMOVED].contains(&status)
        }
        Path::Malformed(expected) => status == expected,
    }
}

/// What one adapter instance's STATS counters must say, from the completions clients saw of
/// the requests they sent it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DriverView {
    pub completed: u64,
    pub cancelled: u64,
    pub rejected: u64,
    pub injected: u64,
}

impl DriverView {
    /// A request on `path` completed with `status`. STATUS_DELETE_PENDING is Storport's own
    /// refusal: that request never reached the driver.
    pub fn saw(&mut self, path: Path, status: u32) {
        if status == STATUS_DELETE_PENDING {
            return;
        }
        self.completed += 1;
        if status == STATUS_CANCELLED {
            self.cancelled += 1;
        } else if revcall_protocol::status::is_error(status) {
            self.rejected += 1;
        }
        if path == Path::Fire && status == STATUS_SUCCESS {
            self.injected += 1;
        }
    }

    pub fn merge(&mut self, other: &DriverView) {
        self.completed += other.completed;
        self.cancelled += other.cancelled;
        self.rejected += other.rejected;
        self.injected += other.injected;
    }

    /// The counters of `stats` that disagree with this view, as (name, driver, clients).
    pub fn disagreements(&self, stats: &StatsReply) -> Vec<(&'static str, u64, u64)> {
        [
            ("completed", stats.completed, self.completed),
            ("cancelled", stats.cancelled, self.cancelled),
            ("rejected", stats.rejected, self.rejected),
            ("events_injected", stats.events_injected, self.injected),
        ]
        .into_iter()
        .filter(|(_, driver, clients)| driver != clients)
        .collect()
    }
}

/// A readable name for the statuses a run reports (`CANCELLED`; hex if it has no name).
pub fn status_name(status: u32) -> String {
    storport_abi::status::name(status).map_or_else(
        || format!("{status:#010x}"),
        |name| name.trim_start_matches("STATUS_").to_owned(),
    )
}

/// How a waiter's view of the event stream broke.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("a successful WAIT delivered no event ({0:?})")]
    NoEvents(WaitReply),
    #[error("reply count {count} but {events} events")]
    CountMismatch { count: u32, events: usize },
    #[error(
        "after cursor {cursor} with lost {lost} the first event is seq {first} (a gap or a repeat not accounted for)"
    )]
    Gap { cursor: u64, lost: u64, first: u64 },
    #[error("events out of order or with a gap inside one reply: seq {0} then {1}")]
    NotConsecutive(u64, u64),
    #[error("reply cursor {cursor} is not the last delivered seq {last}")]
    CursorNotLast { cursor: u64, last: u64 },
    #[error("FIRE source {fired_by:#x}: value {value} delivered after {previous} (seq {seq})")]
    SourceOutOfOrder {
        fired_by: u64,
        value: u64,
        previous: u64,
        seq: u64,
    },
    #[error(
        "STATUS_DEVICE_REMOVED at cursor {cursor} but the last event delivered (kind {kind}) was not the removal"
    )]
    RemovalNotDelivered { cursor: u64, kind: u32 },
    #[error(
        "reply flags {flags:#x} up to seq {last}: a reply with the removal event must say FINAL, and a FINAL reply without MORE must end with it"
    )]
    FinalFlag { flags: u32, last: u64 },
    #[error(
        "{events} delivered + {lost} lost do not make the events between cursor {base} and {cursor}"
    )]
    Accounting {
        events: u64,
        lost: u64,
        base: u64,
        cursor: u64,
    },
}

/// One waiter's view of one adapter instance's event stream.
#[derive(Clone, Debug)]
pub struct WaiterLog {
    /// The cursor to send next: where the waiter started, then the last seq it was given.
    pub cursor: u64,
    /// The cursor this log started from, once known (`CURSOR_NOW` resolves at the first reply).
    base: Option<u64>,
    last_kind: Option<u32>,
    pub events: u64,
    pub lost: u64,
    /// Of `lost`, what the first reply reported: history older than the ring when a waiter
    /// starts at cursor 0, rather than events it fell behind on while following.
    pub lost_at_start: u64,
    /// Per FIRE source (the event's `code`), the last `value` seen: each source fires in order.
    sources: HashMap<u64, u64>,
}

impl WaiterLog {
    /// A waiter starting at `cursor` (0: everything retained, or [`CURSOR_NOW`]).
    pub fn new(cursor: u64) -> Self {
        Self {
            cursor,
            base: (cursor != CURSOR_NOW).then_some(cursor),
            last_kind: None,
            events: 0,
            lost: 0,
            lost_at_start: 0,
            sources: HashMap::new(),
        }
    }

    /// Checks a successful WAIT reply to a request sent with this log's cursor, and moves on.
    ///
    /// # Errors
    ///
    /// What is wrong with the reply: no events, a first event not right after the cursor plus
    /// `lost`, a gap or reordering inside it, a cursor that is not the last event, or a FIRE
    /// source out of its own order.
    pub fn absorb(&mut self, reply: &WaitReply, events: &[EventRecord]) -> Result<(), StreamError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Err(StreamError::NoEvents(*reply));
        };
        if reply.count as usize != events.len() {
            return Err(StreamError::CountMismatch {
                count: reply.count,
                events: events.len(),
            });
        }
        let expected_first = match self.base {
            Some(_) => reply
                .lost
                .checked_add(1)
                .and_then(|n| self.cursor.checked_add(n)),
            // CURSOR_NOW resolved to the head when the WAIT arrived: anything at or past it.
            None => (first.seq > reply.lost).then_some(first.seq),
        };
        if expected_first != Some(first.seq) {
            return Err(StreamError::Gap {
                cursor: self.cursor,
                lost: reply.lost,
                first: first.seq,
            });
        }
        for pair in events.windows(2) {
            if pair[1].seq != pair[0].seq + 1 {
                return Err(StreamError::NotConsecutive(pair[0].seq, pair[1].seq));
            }
        }
        if reply.cursor != last.seq {
            return Err(StreamError::CursorNotLast {
                cursor: reply.cursor,
                last: last.seq,
            });
        }
        let is_final =
            |event: &EventRecord| EventKind::try_from(event.kind).is_ok_and(EventKind::is_final);
        let final_flag = reply.flags & WaitFlags::FINAL != 0;
        let more = reply.flags & WaitFlags::MORE != 0;
        if (events.iter().any(is_final) && !final_flag) || (final_flag && !more && !is_final(last))
        {
            return Err(StreamError::FinalFlag {
                flags: reply.flags,
                last: last.seq,
            });
        }
        for event in events {
            if event.kind == EventKind::Injected as u32
                && let Some(previous) = self.sources.insert(event.arg0, event.arg1)
                && previous >= event.arg1
            {
                return Err(StreamError::SourceOutOfOrder {
                    fired_by: event.arg0,
                    value: event.arg1,
                    previous,
                    seq: event.seq,
                });
            }
        }
        if self.events == 0 {
            self.lost_at_start = reply.lost;
        }
        self.base.get_or_insert(first.seq - reply.lost - 1);
        self.cursor = last.seq;
        self.last_kind = Some(last.kind);
        self.events += events.len() as u64;
        self.lost += reply.lost;
        Ok(())
    }

    /// A WAIT with this log's cursor was refused STATUS_DEVICE_REMOVED: the adapter is gone and
    /// the waiter is up to date, so the last event it saw must be the final one.
    ///
    /// # Errors
    ///
    /// The waiter never got the removal event (it was lost silently).
    pub fn removed(&self) -> Result<(), StreamError> {
        match self.last_kind {
            None => Ok(()),
            Some(kind) if EventKind::try_from(kind).is_ok_and(EventKind::is_final) => Ok(()),
            Some(kind) => Err(StreamError::RemovalNotDelivered {
                cursor: self.cursor,
                kind,
            }),
        }
    }

    /// The accounting at the end of the waiter's life: every sequence number from where it
    /// started to its cursor was either delivered or counted lost.
    ///
    /// # Errors
    ///
    /// The counts do not add up.
    pub fn close(&self) -> Result<(), StreamError> {
        let Some(base) = self.base else {
            return Ok(());
        };
        if self.cursor.checked_sub(base) != self.events.checked_add(self.lost) {
            return Err(StreamError::Accounting {
                events: self.events,
                lost: self.lost,
                base,
                cursor: self.cursor,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> EventRecord {
        EventRecord {
            seq,
            kind: EventKind::Injected as u32,
            reserved: 0,
            arg0: 1,
            arg1: seq,
        }
    }

    fn reply(cursor: u64, lost: u64, count: u32) -> WaitReply {
        WaitReply {
            cursor,
            lost,
            count,
            flags: 0,
        }
    }

    #[test]
    fn a_clean_stream_with_loss_adds_up() {
        let mut log = WaiterLog::new(0);
        log.absorb(&reply(3, 0, 3), &[event(1), event(2), event(3)])
            .unwrap();
        // Events 4..=9 were overwritten before the next WAIT.
        log.absorb(&reply(11, 6, 2), &[event(10), event(11)])
            .unwrap();
        assert_eq!((log.events, log.lost), (5, 6));
        log.close().unwrap();
        // A doctored count no longer covers the span.
        log.lost += 1;
        assert!(matches!(log.close(), Err(StreamError::Accounting { .. })));
    }

    #[test]
    fn a_reply_that_miscounts_or_misplaces_its_cursor_fails() {
        let mut log = WaiterLog::new(0);
        assert!(matches!(
            log.absorb(&reply(2, 0, 3), &[event(1), event(2)]),
            Err(StreamError::CountMismatch { .. })
        ));
        assert!(matches!(
            log.absorb(&reply(1, 0, 2), &[event(1), event(2)]),
            Err(StreamError::CursorNotLast { .. })
        ));
        assert!(matches!(
            log.absorb(&reply(0, 0, 0), &[]),
            Err(StreamError::NoEvents(_))
        ));
    }

    #[test]
    fn a_gap_not_reported_as_lost_fails() {
        let mut log = WaiterLog::new(0);
        log.absorb(&reply(2, 0, 2), &[event(1), event(2)]).unwrap();
        let error = log.absorb(&reply(5, 1, 1), &[event(5)]).unwrap_err();
        assert_eq!(
            error,
            StreamError::Gap {
                cursor: 2,
                lost: 1,
                first: 5
            }
        );
    }

    #[test]
    fn a_repeated_or_reordered_event_fails() {
        let mut log = WaiterLog::new(0);
        log.absorb(&reply(2, 0, 2), &[event(1), event(2)]).unwrap();
        assert!(log.absorb(&reply(2, 0, 1), &[event(2)]).is_err());
        assert!(
            WaiterLog::new(0)
                .absorb(&reply(2, 0, 2), &[event(2), event(1)])
                .is_err()
        );
    }

    #[test]
    fn a_fire_source_out_of_its_order_fails() {
        let mut log = WaiterLog::new(0);
        let mut late = event(2);
        late.arg1 = 0;
        let error = log.absorb(&reply(2, 0, 2), &[event(1), late]).unwrap_err();
        assert!(
            matches!(error, StreamError::SourceOutOfOrder { .. }),
            "{error}"
        );
    }

    #[test]
    fn cursor_now_resolves_at_the_first_reply() {
        let mut log = WaiterLog::new(CURSOR_NOW);
        log.absorb(&reply(41, 0, 2), &[event(40), event(41)])
            .unwrap();
        log.absorb(&reply(42, 0, 1), &[event(42)]).unwrap();
        log.close().unwrap();
        assert_eq!(log.events, 3);
    }

    #[test]
    fn removal_must_have_been_delivered() {
        let mut log = WaiterLog::new(0);
        log.absorb(&reply(1, 0, 1), &[event(1)]).unwrap();
        assert_eq!(
            log.removed(),
            Err(StreamError::RemovalNotDelivered { cursor: 1, kind: 1 })
        );
        let mut removed = event(2);
        removed.kind = EventKind::AdapterRemoved as u32;
        let final_reply = WaitReply {
            flags: WaitFlags::FINAL,
            ..reply(2, 0, 1)
        };
        log.absorb(&final_reply, &[removed]).unwrap();
        log.removed().unwrap();
    }

    #[test]
    fn the_final_flag_goes_with_the_removal_event() {
        let mut removed = event(2);
        removed.kind = EventKind::SurpriseRemoved as u32;
        // The removal event without FINAL.
        let mut log = WaiterLog::new(0);
        assert_eq!(
            log.absorb(&reply(2, 0, 2), &[event(1), removed]),
            Err(StreamError::FinalFlag { flags: 0, last: 2 })
        );
        // FINAL and nothing more retained, but the last event is not the removal.
        let mut log = WaiterLog::new(0);
        let flagged = WaitReply {
            flags: WaitFlags::FINAL,
            ..reply(1, 0, 1)
        };
        assert!(matches!(
            log.absorb(&flagged, &[event(1)]),
            Err(StreamError::FinalFlag { .. })
        ));
        // FINAL with MORE: older events first, the removal still to come.
        let mut log = WaiterLog::new(0);
        let partial = WaitReply {
            flags: WaitFlags::FINAL | WaitFlags::MORE,
            ..reply(1, 0, 1)
        };
        log.absorb(&partial, &[event(1)]).unwrap();
    }

    #[test]
    fn statuses_per_path() {
        use revcall_protocol::status::{STATUS_BUFFER_TOO_SMALL, STATUS_INVALID_PARAMETER};
        let none = Excuses::default();
        let cancel = Excuses {
            cancel_requested: true,
            ..none
        };
        let low = Excuses {
            low_resources: true,
            ..none
        };
        let full = Excuses {
            cap_full: true,
            ..none
        };
        assert!(allowed(Path::Wait, STATUS_SUCCESS, none));
        assert!(!allowed(Path::Wait, STATUS_CANCELLED, none));
        assert!(allowed(Path::Wait, STATUS_CANCELLED, cancel));
        assert!(!allowed(Path::Wait, STATUS_QUOTA_EXCEEDED, cancel));
        assert!(allowed(Path::Wait, STATUS_QUOTA_EXCEEDED, full));
        assert!(!allowed(Path::Wait, STATUS_CANCELLED, full));
        assert!(allowed(Path::Flood, STATUS_QUOTA_EXCEEDED, cancel));
        assert!(allowed(Path::Fire, STATUS_DELETE_PENDING, none));
        assert!(!allowed(Path::Fire, STATUS_NOT_SUPPORTED, none));
        assert!(allowed(Path::Fire, STATUS_NOT_SUPPORTED, low));
        assert!(!allowed(Path::Fire, STATUS_QUOTA_EXCEEDED, full));
        assert!(!allowed(Path::Stats, STATUS_DEVICE_REMOVED, none));
        assert!(allowed(Path::LunCreate, STATUS_QUOTA_EXCEEDED, none));
        assert!(!allowed(Path::LunCreate, STATUS_NO_SUCH_DEVICE, none));
        assert!(allowed(Path::LunRemove, STATUS_NO_SUCH_DEVICE, none));
        assert!(!allowed(Path::LunList, STATUS_NO_SUCH_DEVICE, none));
        let too_small = Path::Malformed(STATUS_BUFFER_TOO_SMALL);
        assert!(allowed(too_small, STATUS_BUFFER_TOO_SMALL, none));
        assert!(!allowed(too_small, STATUS_INVALID_PARAMETER, none));
    }
}
