//! Reply records: the driver's encoders and the clients' decoder.
//!
//! A reply is written only on success; on any error status the driver returns zero bytes.
//! `Header.size` of a reply equals the byte count the driver reports (`IoStatus.Information`),
//! and every one of those bytes was written by the encoder: reserved fields are written as 0.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::data::{AttachReply, Descriptor, FetchReply, Fetched, MAX_TRANSFER};
use crate::lun::{LunCreateReply, LunEntry, LunListReply, MAX_LUNS};
use crate::{EventRecord, Header, Opcode, VERSION};

/// Replies start with the same header as requests; `opcode` echoes the request's.
pub type ReplyHeader = Header;

/// WAIT reply body, followed by `count` [`EventRecord`]s.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct WaitReply {
    /// The cursor to send with the next WAIT: the `seq` of the last event delivered.
    pub cursor: u64,
    /// Events between the request's cursor and the first delivered event that the ring no
    /// longer held: exactly how many this waiter missed.
    pub lost: u64,
    pub count: u32,
    /// [`WaitFlags`] bits.
    pub flags: u32,
}

/// Bits of [`WaitReply::flags`].
pub struct WaitFlags;

impl WaitFlags {
    /// More retained events follow the last delivered one: re-arm at once.
    pub const MORE: u32 = 1;
    /// The adapter is gone. With MORE, re-arm to drain the events still retained; once the
    /// cursor is up to date, further requests fail with STATUS_DEVICE_REMOVED.
    pub const FINAL: u32 = 2;
}

/// FIRE reply body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FireReply {
    /// The sequence number the injected event received.
    pub seq: u64,
}

/// DISCOVER reply body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct DiscoverReply {
    /// The discovery this request joined; its DiscoveryComplete event carries the same id.
    pub id: u64,
    /// 1 if a discovery was already running and this request joined it.
    pub coalesced: u32,
    pub reserved: u32,
}

/// STATS reply body: the channel's counters since the adapter was first started.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct StatsReply {
    pub parked_now: u64,
    pub parked_peak: u64,
    pub parked_cap: u64,
    pub ring_capacity: u64,
    /// Sequence number of the newest event (0: none yet).
    pub head_seq: u64,
    /// Sequence number of the oldest retained event (0: none yet).
    pub oldest_seq: u64,
    pub events_published: u64,
    pub events_injected: u64,
    /// Events pushed out of the ring by newer ones.
    pub ring_overwrites: u64,
    /// Service IRPs completed, by every path (this STATS request is not yet counted).
    pub completed: u64,
    /// Of those, completed with STATUS_CANCELLED.
    pub cancelled: u64,
    /// Of those, refused with an error status.
    pub rejected: u64,
    pub discoveries_started: u64,
    pub discoveries_completed: u64,
    /// 1 once the adapter is removed or surprise-removed.
    pub closed: u64,
}

impl Opcode {
    /// The smallest output buffer this opcode's reply needs; a WAIT needs room for one event.
    pub const fn min_reply_size(self) -> usize {
        size_of::<ReplyHeader>()
            + match self {
                Self::Wait => size_of::<WaitReply>() + size_of::<EventRecord>(),
                Self::Fire => size_of::<FireReply>(),
                Self::Discover => size_of::<DiscoverReply>(),
                Self::Stats => size_of::<StatsReply>(),
                Self::LunCreate => size_of::<LunCreateReply>(),
                Self::LunRemove => 0,
                // Room for every LUN there can be, so a list is never cut short.
                Self::LunList => size_of::<LunListReply>() + MAX_LUNS * size_of::<LunEntry>(),
                Self::Attach => size_of::<AttachReply>(),
                // One descriptor and the largest payload, so the first one always fits.
                Self::Fetch | Self::CommitAndFetch => {
                    size_of::<FetchReply>() + size_of::<Descriptor>() + MAX_TRANSFER as usize
                }
            }
    }
}

const WAIT_PREFIX: usize = size_of::<ReplyHeader>() + size_of::<WaitReply>();

/// Writes a WAIT reply event by event, straight into the output buffer.
pub struct WaitReplyWriter<'a> {
    out: &'a mut [u8],
    capacity: usize,
    count: usize,
}

impl<'a> WaitReplyWriter<'a> {
    /// Returns `None` if `out` cannot hold a reply with one event.
    pub fn new(out: &'a mut [u8], max_events: u32) -> Option<Self> {
        if out.len() < Opcode::Wait.min_reply_size() || max_events == 0 {
            return None;
        }
        let room = (out.len() - WAIT_PREFIX) / size_of::<EventRecord>();
        let capacity = room.min(usize::try_from(max_events).unwrap_or(usize::MAX));
        Some(Self {
            out,
            capacity,
            count: 0,
        })
    }

    /// How many events this reply can carry (at least 1).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn is_full(&self) -> bool {
        self.count == self.capacity
    }

    /// Appends one event; returns false (writing nothing) when the reply is full.
    pub fn push(&mut self, event: &EventRecord) -> bool {
        if self.is_full() {
            return false;
        }
        let at = WAIT_PREFIX + self.count * size_of::<EventRecord>();
        self.out[at..at + size_of::<EventRecord>()].copy_from_slice(event.as_bytes());
        self.count += 1;
        true
    }

    /// Writes the header and body; returns the reply's size in bytes.
    pub fn finish(self, cursor: u64, lost: u64, flags: u32) -> usize {
        let size = wait_reply_len(self.count);
        let body = WaitReply {
            cursor,
            lost,
            count: self.count as u32,
            flags,
        };
        write_prefix(self.out, Opcode::Wait, size, body.as_bytes());
        size
    }
}

/// The size of a WAIT reply carrying `events` events (its IoStatus.Information).
pub const fn wait_reply_len(events: usize) -> usize {
    WAIT_PREFIX + events * size_of::<EventRecord>()
}

fn write_prefix(out: &mut [u8], opcode: Opcode, size: usize, body: &[u8]) {
    let header = ReplyHeader {
        size: size as u32,
        version: VERSION,
        opcode: opcode as u16,
    };
    let (head, rest) = out.split_at_mut(size_of::<ReplyHeader>());
    head.copy_from_slice(header.as_bytes());
    rest[..body.len()].copy_from_slice(body);
}

fn encode_fixed(out: &mut [u8], opcode: Opcode, body: &[u8]) -> Option<usize> {
    let size = size_of::<ReplyHeader>() + body.len();
    let out = out.get_mut(..size)?;
    write_prefix(out, opcode, size, body);
    Some(size)
}

/// Encodes a FIRE reply; `None` if `out` is too small.
pub fn encode_fire_reply(out: &mut [u8], reply: &FireReply) -> Option<usize> {
    encode_fixed(out, Opcode::Fire, reply.as_bytes())
}

/// Encodes a DISCOVER reply; `None` if `out` is too small.
pub fn encode_discover_reply(out: &mut [u8], reply: &DiscoverReply) -> Option<usize> {
    encode_fixed(out, Opcode::Discover, reply.as_bytes())
}

/// Encodes a STATS reply; `None` if `out` is too small.
pub fn encode_stats_reply(out: &mut [u8], reply: &StatsReply) -> Option<usize> {
    encode_fixed(out, Opcode::Stats, reply.as_bytes())
}

/// Encodes an ATTACH reply (the session ended); `None` if `out` is too small.
pub fn encode_attach_reply(out: &mut [u8], reply: &AttachReply) -> Option<usize> {
    encode_fixed(out, Opcode::Attach, reply.as_bytes())
}

/// Encodes a LUN_CREATE reply; `None` if `out` is too small.
pub fn encode_lun_create_reply(out: &mut [u8], reply: &LunCreateReply) -> Option<usize> {
    encode_fixed(out, Opcode::LunCreate, reply.as_bytes())
}

/// Encodes a LUN_REMOVE reply (a header alone); `None` if `out` is too small.
pub fn encode_lun_remove_reply(out: &mut [u8]) -> Option<usize> {
    encode_fixed(out, Opcode::LunRemove, &[])
}

/// Encodes a LUN_LIST reply with `entries` (at most [`MAX_LUNS`]); `None` if `out` is too
/// small.
pub fn encode_lun_list_reply(out: &mut [u8], entries: &[LunEntry]) -> Option<usize> {
    let prefix = size_of::<ReplyHeader>() + size_of::<LunListReply>();
    let size = prefix + size_of_val(entries);
    let out = out.get_mut(..size)?;
    let body = LunListReply {
        count: entries.len() as u32,
        reserved: 0,
    };
    write_prefix(out, Opcode::LunList, size, body.as_bytes());
    out[prefix..].copy_from_slice(entries.as_bytes());
    Some(size)
}

/// A decoded reply (client side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    Wait {
        reply: WaitReply,
        events: ReplyEvents<'a>,
    },
    Fire(FireReply),
    Discover(DiscoverReply),
    Stats(StatsReply),
    LunCreate(LunCreateReply),
    LunRemove,
    LunList(Records<'a, LunEntry>),
    Attach(AttachReply),
    /// FETCH and COMMIT_AND_FETCH.
    Fetch(Fetched<'a>),
}

/// The records that follow a reply's body (a WAIT's events, a LUN_LIST's entries), read by
/// copy (no alignment needed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Records<'a, T> {
    bytes: &'a [u8],
    record: core::marker::PhantomData<T>,
}

/// The events of a WAIT reply.
pub type ReplyEvents<'a> = Records<'a, EventRecord>;

impl<'a, T: FromBytes> Records<'a, T> {
    /// `bytes` must hold exactly `count` records.
    pub(crate) fn exactly(bytes: &'a [u8], count: u32) -> Option<Self> {
        // Compared by division: `count * size` could overflow a 32-bit usize.
        let record = size_of::<T>();
        (bytes.len().is_multiple_of(record) && bytes.len() / record == count as usize).then_some(
            Self {
                bytes,
                record: core::marker::PhantomData,
            },
        )
    }
}

impl<T: FromBytes> Iterator for Records<'_, T> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        let (record, rest) = T::read_from_prefix(self.bytes).ok()?;
        self.bytes = rest;
        Some(record)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.bytes.len() / size_of::<T>();
        (n, Some(n))
    }
}

impl<T: FromBytes> ExactSizeIterator for Records<'_, T> {}

/// Why bytes returned by the driver are not a valid reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    Truncated { len: usize },
    UnsupportedVersion { version: u16 },
    SizeMismatch { declared: u32, actual: usize },
    UnknownOpcode { opcode: u16 },
    BadLength { opcode: Opcode, actual: usize },
}

/// Decodes the `Information` bytes of a successful completion.
///
/// # Errors
///
/// A [`ReplyError`] naming the first thing that is wrong.
pub fn decode_reply(bytes: &[u8]) -> Result<Reply<'_>, ReplyError> {
    let Ok((header, body)) = ReplyHeader::read_from_prefix(bytes) else {
        return Err(ReplyError::Truncated { len: bytes.len() });
    };
    if header.version != VERSION {
        return Err(ReplyError::UnsupportedVersion {
            version: header.version,
        });
    }
    if usize::try_from(header.size) != Ok(bytes.len()) {
        return Err(ReplyError::SizeMismatch {
            declared: header.size,
            actual: bytes.len(),
        });
    }
    let opcode =
        Opcode::try_from(header.opcode).map_err(|opcode| ReplyError::UnknownOpcode { opcode })?;
    let bad_length = ReplyError::BadLength {
        opcode,
        actual: bytes.len(),
    };
    match opcode {
        Opcode::Wait => {
            let (reply, events) = WaitReply::read_from_prefix(body).map_err(|_| bad_length)?;
            let events = Records::exactly(events, reply.count).ok_or(bad_length)?;
            Ok(Reply::Wait { reply, events })
        }
        Opcode::Fire => FireReply::read_from_bytes(body)
            .map(Reply::Fire)
            .map_err(|_| bad_length),
        Opcode::Discover => DiscoverReply::read_from_bytes(body)
            .map(Reply::Discover)
            .map_err(|_| bad_length),
        Opcode::Stats => StatsReply::read_from_bytes(body)
            .map(Reply::Stats)
            .map_err(|_| bad_length),
        Opcode::LunCreate => LunCreateReply::read_from_bytes(body)
            .map(Reply::LunCreate)
            .map_err(|_| bad_length),
        Opcode::LunRemove if body.is_empty() => Ok(Reply::LunRemove),
        Opcode::LunRemove => Err(bad_length),
        Opcode::LunList => {
            let (list, entries) = LunListReply::read_from_prefix(body).map_err(|_| bad_length)?;
            if list.count as usize > MAX_LUNS {
                return Err(bad_length);
            }
            Records::exactly(entries, list.count)
                .map(Reply::LunList)
                .ok_or(bad_length)
        }
        Opcode::Attach => AttachReply::read_from_bytes(body)
            .map(Reply::Attach)
            .map_err(|_| bad_length),
        Opcode::Fetch | Opcode::CommitAndFetch => {
            let (reply, _) = FetchReply::read_from_prefix(body).map_err(|_| bad_length)?;
            Fetched::new(reply, bytes)
                .map(Reply::Fetch)
                .ok_or(bad_length)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn event(seq: u64) -> EventRecord {
        EventRecord {
            seq,
            kind: 1,
            reserved: 0,
            arg0: seq * 10,
            arg1: seq * 100,
        }
    }

    #[test]
    fn minimum_reply_sizes() {
        assert_eq!(Opcode::Wait.min_reply_size(), 64);
        assert_eq!(Opcode::Fire.min_reply_size(), 16);
        assert_eq!(Opcode::Discover.min_reply_size(), 24);
        assert_eq!(Opcode::Stats.min_reply_size(), 128);
        assert_eq!(Opcode::LunCreate.min_reply_size(), 16);
        assert_eq!(Opcode::LunRemove.min_reply_size(), 8);
        assert_eq!(Opcode::LunList.min_reply_size(), 16 + 8 * 32);
    }

    #[test]
    fn lun_replies_round_trip() {
        let mut buf = [0xAAu8; 512];
        let created = LunCreateReply {
            lun: 3,
            reserved: 0,
        };
        let n = encode_lun_create_reply(&mut buf, &created).unwrap();
        assert_eq!(decode_reply(&buf[..n]), Ok(Reply::LunCreate(created)));
        let n = encode_lun_remove_reply(&mut buf).unwrap();
        assert_eq!(n, 8);
        assert_eq!(decode_reply(&buf[..n]), Ok(Reply::LunRemove));
        let entries = [
            LunEntry {
                lun: 0,
                block_count: 100,
                block_size: 512,
                ..Default::default()
            },
            LunEntry {
                lun: 5,
                flags: crate::LunFlags::READ_ONLY,
                block_count: 7,
                block_size: 4096,
                queue_depth: 32,
                outstanding: 2,
                reserved: 0,
            },
        ];
        let n = encode_lun_list_reply(&mut buf, &entries).unwrap();
        assert_eq!(n, 16 + 64);
        let Ok(Reply::LunList(listed)) = decode_reply(&buf[..n]) else {
            panic!("not a LUN_LIST reply")
        };
        assert_eq!(listed.collect::<Vec<_>>(), entries);
        assert!(
            buf[n..].iter().all(|&b| b == 0xAA),
            "nothing written past the reply"
        );
        assert_eq!(encode_lun_list_reply(&mut buf[..79], &entries), None);
        // An entry count that disagrees with the bytes.
        buf[8] = 3;
        assert!(matches!(
            decode_reply(&buf[..n]),
            Err(ReplyError::BadLength {
                opcode: Opcode::LunList,
                ..
            })
        ));
    }

    #[test]
    fn wait_writer_is_bounded_by_buffer_and_max_events() {
        let mut small = [0u8; 63];
        assert!(WaitReplyWriter::new(&mut small, 8).is_none());
        let mut buf = [0xAAu8; 64 + 32 * 3 + 31];
        assert_eq!(WaitReplyWriter::new(&mut buf, 100).unwrap().capacity(), 4);
        assert_eq!(WaitReplyWriter::new(&mut buf, 2).unwrap().capacity(), 2);
        assert!(WaitReplyWriter::new(&mut buf, 0).is_none());
    }

    #[test]
    fn wait_reply_round_trips_and_reports_exact_size() {
        let mut buf = [0xAAu8; 256];
        let mut writer = WaitReplyWriter::new(&mut buf, 3).unwrap();
        assert!(writer.push(&event(5)));
        assert!(writer.push(&event(6)));
        let size = writer.finish(6, 4, WaitFlags::MORE);
        assert_eq!(size, 32 + 64);
        // Nothing past `size` was touched.
        assert!(buf[size..].iter().all(|&b| b == 0xAA));
        let Ok(Reply::Wait { reply, events }) = decode_reply(&buf[..size]) else {
            panic!("not a wait reply")
        };
        assert_eq!(
            reply,
            WaitReply {
                cursor: 6,
                lost: 4,
                count: 2,
                flags: WaitFlags::MORE
            }
        );
        assert_eq!(events.collect::<Vec<_>>(), [event(5), event(6)]);
    }

    #[test]
    fn fixed_replies_round_trip() {
        let mut buf = [0u8; 128];
        let n = encode_fire_reply(&mut buf, &FireReply { seq: 7 }).unwrap();
        assert_eq!(
            decode_reply(&buf[..n]),
            Ok(Reply::Fire(FireReply { seq: 7 }))
        );
        let d = DiscoverReply {
            id: 3,
            coalesced: 1,
            reserved: 0,
        };
        let n = encode_discover_reply(&mut buf, &d).unwrap();
        assert_eq!(decode_reply(&buf[..n]), Ok(Reply::Discover(d)));
        let s = StatsReply {
            parked_now: 2,
            closed: 1,
            ..Default::default()
        };
        let n = encode_stats_reply(&mut buf, &s).unwrap();
        assert_eq!(n, 128);
        assert_eq!(decode_reply(&buf[..n]), Ok(Reply::Stats(s)));
        assert_eq!(encode_stats_reply(&mut buf[..127], &s), None);
    }

    #[test]
    fn malformed_replies_are_named() {
        assert_eq!(decode_reply(&[1, 2]), Err(ReplyError::Truncated { len: 2 }));
        let mut buf = [0u8; 16];
        encode_fire_reply(&mut buf, &FireReply { seq: 1 }).unwrap();
        assert_eq!(
            decode_reply(&buf[..12]),
            Err(ReplyError::SizeMismatch {
                declared: 16,
                actual: 12
            })
        );
        let mut wait = [0u8; 64];
        let w = WaitReplyWriter::new(&mut wait, 1).unwrap();
        let n = w.finish(0, 0, 0);
        wait[24] = 1; // claims one event, carries none
        assert_eq!(
            decode_reply(&wait[..n]),
            Err(ReplyError::BadLength {
                opcode: Opcode::Wait,
                actual: 32
            })
        );
    }

    proptest! {
        #[test]
        fn decode_reply_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_reply(&bytes);
        }
    }
}
