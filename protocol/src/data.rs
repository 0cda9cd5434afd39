//! The data path's records: a server ATTACHes to a LUN, FETCHes the LUN's I/O and answers with
//! COMMIT_AND_FETCH. docs/DATAPATH.md §1–§2 is the specification.

use core::ops::Range;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{Header, Opcode, VERSION};

/// The largest data transfer of one SRB (what the adapter reports to Storport as
/// MaximumTransferLength): the room a FETCH reply needs for one WRITE's payload.
pub const MAX_TRANSFER: u32 = 64 * 1024;

/// The most descriptors one FETCH may ask for.
pub const MAX_DESCRIPTORS: u32 = 32;

/// The most results one COMMIT may carry.
pub const MAX_RESULTS: u32 = 64;

/// ATTACH body: the handle becomes a server of `lun` until its ATTACH completes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct AttachRequest {
    pub lun: u32,
    pub reserved: u32,
}

/// FETCH body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FetchRequest {
    /// 1..=[`MAX_DESCRIPTORS`].
    pub max_descriptors: u32,
    pub reserved: u32,
}

/// COMMIT_AND_FETCH body, followed by `count` [`CommitResult`]s and then the READ data of
/// those results, in result order.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct CommitRequest {
    /// 0..=[`MAX_RESULTS`].
    pub count: u32,
    /// 0: commit only (completes at once); else as FETCH's.
    pub max_descriptors: u32,
}

/// SCSI status a server may answer with.
pub struct ScsiStatus;

impl ScsiStatus {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
}

/// One SRB's outcome, as the server reports it.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct CommitResult {
    /// The descriptor's tag.
    pub tag: u64,
    /// [`ScsiStatus::GOOD`] or [`ScsiStatus::CHECK_CONDITION`].
    pub scsi_status: u8,
    /// With CHECK CONDITION: the sense key (1..=0xE, but not the obsolete 0xC), ASC and ASCQ;
    /// zero with GOOD.
    pub sense_key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// A GOOD READ: blocks × block size; every other result: 0.
    pub data_len: u32,
}

impl CommitResult {
    /// The first field out of its documented range, if any.
    pub fn invalid_field(&self) -> Option<&'static str> {
        // The common case first, in one comparison: GOOD (0) with no sense.
        const _: () = assert!(ScsiStatus::GOOD == 0);
        if u32::from_le_bytes([self.scsi_status, self.sense_key, self.asc, self.ascq]) == 0 {
            return None;
        }
        match self.scsi_status {
            ScsiStatus::GOOD if (self.sense_key, self.asc, self.ascq) != (0, 0, 0) => {
                Some("sense_key")
            }
            ScsiStatus::GOOD => None,
            // NO SENSE is no failure; 0xC is obsolete and 0xF reserved (SPC-4 §4.5.6).
            ScsiStatus::CHECK_CONDITION if matches!(self.sense_key, 0 | 0xC | 0xF..) => {
                Some("sense_key")
            }
            ScsiStatus::CHECK_CONDITION if self.data_len != 0 => Some("data_len"),
            ScsiStatus::CHECK_CONDITION => None,
            _ => Some("scsi_status"),
        }
    }
}

/// The operations a descriptor asks a server to do.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataOp {
    Read = 1,
    Write = 2,
    /// SYNCHRONIZE CACHE: make every acknowledged WRITE durable.
    Flush = 3,
    /// The payload holds [`UnmapRange`]s.
    Unmap = 4,
}

impl TryFrom<u8> for DataOp {
    type Error = u8;

    fn try_from(value: u8) -> Result<Self, u8> {
        Ok(match value {
            1 => Self::Read,
            2 => Self::Write,
            3 => Self::Flush,
            4 => Self::Unmap,
            other => return Err(other),
        })
    }
}

/// Bits of [`Descriptor::flags`].
pub struct DescriptorFlags;

impl DescriptorFlags {
    /// Force unit access: the WRITE is durable before it is committed GOOD.
    pub const FUA: u8 = 1;
}

/// FETCH and COMMIT_AND_FETCH reply body, followed by `count` [`Descriptor`]s and their
/// payloads.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct FetchReply {
    pub count: u32,
    /// [`FetchFlags`] bits.
    pub flags: u32,
    /// Results of this request's commit dropped because their SRB was already completed by a
    /// reset, an abort or a removal.
    pub stale: u32,
    pub reserved: u32,
}

/// Bits of [`FetchReply::flags`].
pub struct FetchFlags;

impl FetchFlags {
    /// The session is over (its LUN or the adapter went away): stop serving.
    pub const FINAL: u32 = 1;
}

/// One SRB for the server.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct Descriptor {
    /// Names the SRB in the COMMIT: slot (low 16 bits) and the slot's generation.
    pub tag: u64,
    pub lba: u64,
    pub blocks: u32,
    /// Where in the reply the WRITE data or the UNMAP ranges sit; 0, 0 otherwise.
    pub payload_offset: u32,
    pub payload_len: u32,
    pub lun: u8,
    /// A [`DataOp`] value.
    pub op: u8,
    /// [`DescriptorFlags`] bits.
    pub flags: u8,
    pub reserved: u8,
}

/// One range of an UNMAP payload.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct UnmapRange {
    pub lba: u64,
    pub blocks: u32,
    pub reserved: u32,
}

/// Where a FETCH reply's descriptors start.
pub const FETCH_PREFIX: usize = size_of::<Header>() + size_of::<FetchReply>();

/// The size of a FETCH reply with `count` descriptors and `payload` payload bytes.
pub const fn fetch_reply_size(count: usize, payload: usize) -> usize {
    FETCH_PREFIX + count * size_of::<Descriptor>() + payload
}

/// A descriptor's bytes in a FETCH reply.
type DescriptorRoom = [u8; size_of::<Descriptor>()];

/// Writes a FETCH (or COMMIT_AND_FETCH) reply whose descriptor count is known up front:
/// descriptors first, each payload after all of them, in order.
pub struct FetchReplyWriter<'a> {
    /// The header and the body.
    prefix: &'a mut [u8],
    /// Room for `count` descriptors.
    descriptors: &'a mut [DescriptorRoom],
    /// Room for the payloads promised to `new`.
    payloads: &'a mut [u8],
    opcode: Opcode,
    written: usize,
    payload_used: usize,
}

impl<'a> FetchReplyWriter<'a> {
    /// `None` if `out` cannot hold `count` descriptors and `payload` bytes.
    pub fn new(out: &'a mut [u8], opcode: Opcode, count: usize, payload: usize) -> Option<Self> {
        let (head, rest) = out.split_at_mut_checked(fetch_reply_size(count, 0))?;
        let (prefix, descriptors) = head.split_at_mut(FETCH_PREFIX);
        Some(Self {
            prefix,
            descriptors: descriptors.as_chunks_mut().0,
            payloads: rest.get_mut(..payload)?,
            opcode,
            written: 0,
            payload_used: 0,
        })
    }

    /// Adds `descriptor` with `payload_len` payload bytes (its offset is filled in) and
    /// returns the payload's bytes to fill. `None` once `count` descriptors are written or the
    /// payload would pass what `new` was promised.
    pub fn push(&mut self, mut descriptor: Descriptor, payload_len: usize) -> Option<&mut [u8]> {
        let payloads_at = fetch_reply_size(self.descriptors.len(), 0);
        let room = self.descriptors.get_mut(self.written)?;
        let start = self.payload_used;
        let payload = self
            .payloads
            .get_mut(start..start.checked_add(payload_len)?)?;
        (descriptor.payload_offset, descriptor.payload_len) = if payload_len == 0 {
            (0, 0)
        } else {
            // Below the reply's size, which a u32 holds (`finish`).
            ((payloads_at + start) as u32, payload_len as u32)
        };
        room.copy_from_slice(descriptor.as_bytes());
        self.written += 1;
        self.payload_used = start + payload_len;
        Some(payload)
    }

    /// Writes the header and body; returns the reply's size. Room promised for descriptors
    /// that were not pushed is zeroed and stays between the descriptors and the payloads.
    pub fn finish(self, flags: u32, stale: u32) -> usize {
        let count = self.descriptors.len();
        self.descriptors[self.written..].fill([0; size_of::<Descriptor>()]);
        let size = fetch_reply_size(count, self.payload_used);
        let header = Header {
            size: size as u32,
            version: VERSION,
            opcode: self.opcode as u16,
        };
        let body = FetchReply {
            count: self.written as u32,
            flags,
            stale,
            reserved: 0,
        };
        self.prefix[..size_of::<Header>()].copy_from_slice(header.as_bytes());
        self.prefix[size_of::<Header>()..].copy_from_slice(body.as_bytes());
        size
    }
}

/// A COMMIT's results and their data, once [`decode_request`](crate::decode_request) has
/// accepted the record.
#[derive(Clone, Debug)]
pub struct Commit<'a> {
    record: &'a [u8],
    results: &'a [u8],
    /// Where the data of the first READ starts in `record`.
    data_start: usize,
}

impl<'a> Commit<'a> {
    /// The results of a COMMIT_AND_FETCH record `bytes`; `None` unless the record is one
    /// [`decode_request`](crate::decode_request) accepts.
    pub fn of(bytes: &'a [u8]) -> Option<Self> {
        let body = bytes.get(size_of::<Header>()..)?;
        let (commit, rest) = CommitRequest::read_from_prefix(body).ok()?;
        let split = (commit.count as usize).checked_mul(size_of::<CommitResult>())?;
        let results = rest.get(..split)?;
        Some(Self {
            record: bytes,
            results,
            data_start: bytes.len() - rest.len() + split,
        })
    }

    /// Each result with where its data lies in the record (empty unless it is a READ's): what
    /// a reader that lets go of the record meanwhile keeps.
    pub fn placed(self) -> impl Iterator<Item = (CommitResult, Range<usize>)> + 'a {
        let (mut at, end) = (self.data_start, self.record.len());
        self.results
            .chunks_exact(size_of::<CommitResult>())
            .filter_map(|chunk| CommitResult::read_from_bytes(chunk).ok())
            .map(move |result| {
                let len = (result.data_len as usize).min(end - at);
                at += len;
                (result, at - len..at)
            })
    }

    /// Each result with its data (empty unless it is a READ's).
    pub fn results(self) -> impl Iterator<Item = (CommitResult, &'a [u8])> {
        let record = self.record;
        self.placed()
            .map(move |(result, range)| (result, &record[range]))
    }
}

/// Validates a COMMIT_AND_FETCH body (everything after the header); the error is the field
/// to name in [`DecodeError::InvalidArgument`](crate::DecodeError), or `None` for a length
/// error.
pub(crate) fn check_commit(body: &[u8]) -> Result<CommitRequest, Option<&'static str>> {
    let (commit, rest) = CommitRequest::read_from_prefix(body).map_err(|_| None)?;
    if commit.count > MAX_RESULTS {
        return Err(Some("count"));
    }
    if commit.max_descriptors > MAX_DESCRIPTORS {
        return Err(Some("max_descriptors"));
    }
    let split = commit.count as usize * size_of::<CommitResult>();
    let (results, data) = (
        rest.get(..split).ok_or(None)?,
        rest.get(split..).ok_or(None)?,
    );
    let mut total = 0usize;
    // A tag given twice is found by sorting (a repeat sits next to itself), but only when two
    // tags share their low 10 bits: the SRBs of one COMMIT sit in different slots (the tag's
    // low bits, DATAPATH.md §1), so a valid COMMIT almost never pays for the sort.
    let (mut seen, mut shared) = ([0u64; 16], false);
    let records = || {
        results
            .chunks_exact(size_of::<CommitResult>())
            .filter_map(|chunk| CommitResult::read_from_bytes(chunk).ok())
    };
    for result in records() {
        if let Some(field) = result.invalid_field() {
            return Err(Some(field));
        }
        let (word, bit) = ((result.tag >> 6 & 0xF) as usize, result.tag & 0x3F);
        shared |= seen[word] >> bit & 1 != 0;
        seen[word] |= 1 << bit;
        total = total.checked_add(result.data_len as usize).ok_or(None)?;
    }
    if shared {
        let mut tags = [0u64; MAX_RESULTS as usize];
        for (tag, result) in tags.iter_mut().zip(records()) {
            *tag = result.tag;
        }
        let tags = &mut tags[..commit.count as usize];
        tags.sort_unstable();
        if tags.windows(2).any(|pair| pair[0] == pair[1]) {
            return Err(Some("tag"));
        }
    }
    if total != data.len() {
        return Err(None);
    }
    Ok(commit)
}

/// ATTACH reply body: the session is over.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct AttachReply {
    pub lun: u32,
    pub reserved: u32,
}

/// Encodes a COMMIT_AND_FETCH: `results`, then `data` (the READ data of those results, in
/// order). `None` if `out` is too small.
pub fn encode_commit(
    out: &mut [u8],
    max_descriptors: u32,
    results: &[CommitResult],
    data: &[u8],
) -> Option<usize> {
    let head = commit_head_size(results.len());
    let size = encode_commit_head(out, max_descriptors, results, data.len())?;
    out[head..size].copy_from_slice(data);
    Some(size)
}

/// The bytes of a COMMIT_AND_FETCH before its READ data, with `results` results.
pub const fn commit_head_size(results: usize) -> usize {
    size_of::<Header>() + size_of::<CommitRequest>() + results * size_of::<CommitResult>()
}

/// Encodes all of a COMMIT_AND_FETCH but its READ data: the `data_len` bytes after the first
/// [`commit_head_size`] of `out`, which a server fills in place (a backend reading straight
/// into the record). The record's size; `None` if `out` is too small.
pub fn encode_commit_head(
    out: &mut [u8],
    max_descriptors: u32,
    results: &[CommitResult],
    data_len: usize,
) -> Option<usize> {
    let fixed = size_of::<Header>() + size_of::<CommitRequest>();
    let head = commit_head_size(results.len());
    let size = head + data_len;
    let out = out.get_mut(..size)?;
    let header = Header {
        size: u32::try_from(size).ok()?,
        version: VERSION,
        opcode: Opcode::CommitAndFetch as u16,
    };
    let body = CommitRequest {
        count: u32::try_from(results.len()).ok()?,
        max_descriptors,
    };
    out[..size_of::<Header>()].copy_from_slice(header.as_bytes());
    out[size_of::<Header>()..fixed].copy_from_slice(body.as_bytes());
    out[fixed..head].copy_from_slice(results.as_bytes());
    Some(size)
}

/// A decoded FETCH or COMMIT_AND_FETCH reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched<'a> {
    pub reply: FetchReply,
    bytes: &'a [u8],
}

impl<'a> Fetched<'a> {
    /// Checks that `count` descriptors follow and every payload lies inside `bytes` (the
    /// whole reply) and after the descriptors.
    pub(crate) fn new(reply: FetchReply, bytes: &'a [u8]) -> Option<Self> {
        if reply.count > MAX_DESCRIPTORS {
            return None;
        }
        let end = fetch_reply_size(reply.count as usize, 0);
        let descriptors = bytes.get(FETCH_PREFIX..end)?;
        let fetched = Self { reply, bytes };
        for chunk in descriptors.chunks_exact(size_of::<Descriptor>()) {
            let descriptor = Descriptor::read_from_bytes(chunk).ok()?;
            if descriptor.payload_len != 0 && (descriptor.payload_offset as usize) < end {
                return None;
            }
            fetched.payload(&descriptor)?;
        }
        Some(fetched)
    }

    pub fn descriptors(&self) -> impl Iterator<Item = Descriptor> + 'a {
        let end = fetch_reply_size(self.reply.count as usize, 0);
        self.bytes[FETCH_PREFIX..end]
            .chunks_exact(size_of::<Descriptor>())
            .filter_map(|chunk| Descriptor::read_from_bytes(chunk).ok())
    }

    /// The descriptor's payload (empty if it has none); `None` if it lies outside the reply.
    pub fn payload(&self, descriptor: &Descriptor) -> Option<&'a [u8]> {
        let start = descriptor.payload_offset as usize;
        self.bytes
            .get(start..start.checked_add(descriptor.payload_len as usize)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DecodeError, Reply, Request, decode_reply, decode_request};
    use std::vec::Vec;

    fn result(tag: u64, data_len: u32) -> CommitResult {
        CommitResult {
            tag,
            data_len,
            ..CommitResult::default()
        }
    }

    #[test]
    fn record_sizes_are_the_documented_ones() {
        assert_eq!(size_of::<CommitResult>(), 16);
        assert_eq!(size_of::<Descriptor>(), 32);
        assert_eq!(size_of::<UnmapRange>(), 16);
        assert_eq!(FETCH_PREFIX, 24);
    }

    #[test]
    fn a_commit_round_trips_with_its_data() {
        let mut out = [0u8; 256];
        let results = [result(7, 4), result(9, 0), result(11, 2)];
        let size = encode_commit(&mut out, 4, &results, b"abcdxy").expect("fits");
        let bytes = &out[..size];
        assert_eq!(
            decode_request(bytes),
            Ok(Request::CommitAndFetch {
                count: 3,
                max_descriptors: 4
            })
        );
        let pairs: Vec<_> = Commit::of(bytes).expect("decoded").results().collect();
        assert_eq!(pairs.len(), 3);
        assert_eq!((pairs[0].0.tag, pairs[0].1), (7, &b"abcd"[..]));
        assert_eq!(pairs[1].1, b"");
        assert_eq!(pairs[2].1, b"xy");
    }

    #[test]
    fn a_bad_commit_is_refused_with_its_reason() {
        let mut out = [0u8; 256];
        let invalid = |field| {
            Err(DecodeError::InvalidArgument {
                opcode: Opcode::CommitAndFetch,
                field,
            })
        };
        let decode = |results: &[CommitResult], data: &[u8], out: &mut [u8]| {
            let size = encode_commit(out, 1, results, data).expect("fits");
            decode_request(&out[..size])
        };
        // Data left over, and data missing.
        assert!(matches!(
            decode(&[result(1, 0)], b"zz", &mut out),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            decode(&[result(1, 8)], b"zz", &mut out),
            Err(DecodeError::BadLength { .. })
        ));
        assert_eq!(
            decode(&[result(1, 0), result(1, 0)], b"", &mut out),
            invalid("tag")
        );
        // Tags that share their low 10 bits are told apart exactly (the repeat among them too).
        let (a, b, c) = (result(5, 0), result(5 | 1 << 10, 0), result(5 | 1 << 16, 0));
        assert!(decode(&[a, b, c], b"", &mut out).is_ok());
        assert_eq!(decode(&[a, b, c, b], b"", &mut out), invalid("tag"));
        assert_eq!(decode(&[c, result(9, 0), c], b"", &mut out), invalid("tag"));
        let check = |key, data_len| CommitResult {
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense_key: key,
            asc: 0x11,
            data_len,
            ..result(1, 0)
        };
        for key in [0, 0xC, 0xF, 0x10] {
            assert_eq!(
                decode(&[check(key, 0)], b"", &mut out),
                invalid("sense_key")
            );
        }
        assert!(decode(&[check(0xE, 0)], b"", &mut out).is_ok());
        assert_eq!(decode(&[check(3, 2)], b"zz", &mut out), invalid("data_len"));
        assert!(decode(&[check(3, 0)], b"", &mut out).is_ok());
        let odd = CommitResult {
            scsi_status: 8,
            ..result(1, 0)
        };
        assert_eq!(decode(&[odd], b"", &mut out), invalid("scsi_status"));
        let good_with_sense = CommitResult {
            asc: 1,
            ..result(1, 0)
        };
        assert_eq!(
            decode(&[good_with_sense], b"", &mut out),
            invalid("sense_key")
        );
        let too_many: Vec<_> = (0..=u64::from(MAX_RESULTS)).map(|t| result(t, 0)).collect();
        let mut big = [0u8; 2048];
        assert_eq!(decode(&too_many, b"", &mut big), invalid("count"));
    }

    #[test]
    fn fetch_replies_place_payloads_after_the_descriptors_they_use() {
        let mut out = [0u8; 512];
        let mut writer =
            FetchReplyWriter::new(&mut out, Opcode::Fetch, 3, 8).expect("room for three");
        let write = Descriptor {
            tag: 5,
            op: DataOp::Write as u8,
            blocks: 1,
            ..Descriptor::default()
        };
        writer
            .push(write, 8)
            .expect("payload")
            .copy_from_slice(b"12345678");
        let read = Descriptor {
            tag: 6,
            op: DataOp::Read as u8,
            ..Descriptor::default()
        };
        assert!(writer.push(read, 0).is_some());
        // Only two of the three promised: the third's room stays, zeroed.
        let size = writer.finish(0, 2);
        assert_eq!(size, fetch_reply_size(3, 8));
        let Ok(Reply::Fetch(fetched)) = decode_reply(&out[..size]) else {
            panic!("a FETCH reply");
        };
        assert_eq!((fetched.reply.count, fetched.reply.stale), (2, 2));
        let descriptors: Vec<_> = fetched.descriptors().collect();
        assert_eq!(descriptors[0].tag, 5);
        assert_eq!(fetched.payload(&descriptors[0]), Some(&b"12345678"[..]));
        assert_eq!(fetched.payload(&descriptors[1]), Some(&b""[..]));
        // A payload pointing into the descriptors is malformed.
        out[FETCH_PREFIX + 20..FETCH_PREFIX + 24].copy_from_slice(&8u32.to_le_bytes());
        assert!(decode_reply(&out[..size]).is_err());
    }

    #[test]
    fn a_writer_refuses_more_than_it_was_promised() {
        let mut out = [0u8; 128];
        assert!(FetchReplyWriter::new(&mut out, Opcode::Fetch, 4, 0).is_none());
        let mut writer = FetchReplyWriter::new(&mut out, Opcode::Fetch, 1, 4).expect("fits");
        assert!(writer.push(Descriptor::default(), 5).is_none());
        assert!(writer.push(Descriptor::default(), 4).is_some());
        assert!(writer.push(Descriptor::default(), 0).is_none());
    }
}
