//! A disk server's side of the data path, independent of how requests travel: the work a
//! FETCH reply carries, and the COMMIT that answers it from a [`Backend`] (docs/DATAPATH.md).

use revcall_protocol::{
    CommitResult, DataOp, Descriptor, FetchFlags, MAX_TRANSFER, Reply, ScsiStatus, UnmapRange,
    commit_head_size, decode_reply, encode_commit, encode_commit_head, fetch_reply_size,
};
use zerocopy::FromBytes;

use std::time::Duration;

use revcall_protocol::Request;

use crate::channel::{Adapter, PROMPT, RequestError, encode};
use crate::transport::Transport;

/// The most WRITE payloads one FETCH reply makes room for, in transfers of the largest size.
/// Room for all 32 at 64 KiB would be a 2 MiB METHOD_BUFFERED SystemBuffer per FETCH,
/// allocated by the I/O manager each time, for payloads that are mostly 4 KiB.
pub const FETCH_PAYLOAD_TRANSFERS: usize = 4;

/// The output buffer a server's FETCHes ask for: descriptors, and payload room that follows
/// what the replies carried. The driver hands out descriptors while their payloads fit (and
/// always one: it checked the buffer against the largest payload on arrival), so room is
/// batching for WRITEs and nothing else — but every byte of it is a SystemBuffer the I/O
/// manager allocates for each FETCH. One largest payload to start; twice the room (up to
/// [`FETCH_PAYLOAD_TRANSFERS`]) after a reply whose payloads took more than half of it, half
/// after [`FETCH_ROOM_PATIENCE`] replies in a row that took less than a quarter (a READ's
/// reply takes none): a burst of WRITEs finds the room the last one grew.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchRoom {
    transfers: usize,
    /// Replies in a row whose payloads took less than a quarter of the room.
    underused: u32,
}

/// Replies in a row that leave most of the payload room unused before it halves.
pub const FETCH_ROOM_PATIENCE: u32 = 8;

impl Default for FetchRoom {
    fn default() -> Self {
        Self {
            transfers: 1,
            underused: 0,
        }
    }
}

impl FetchRoom {
    /// The most room: [`FETCH_PAYLOAD_TRANSFERS`] largest payloads.
    pub const MOST: Self = Self {
        transfers: FETCH_PAYLOAD_TRANSFERS,
        underused: 0,
    };

    /// The output length of a FETCH of up to `max_descriptors`.
    pub fn size(&self, max_descriptors: u32) -> u32 {
        let n = max_descriptors.max(1) as usize;
        fetch_reply_size(n, self.payload_room(max_descriptors)) as u32
    }

    /// The payload bytes that output length leaves room for (no more transfers than
    /// descriptors).
    fn payload_room(&self, max_descriptors: u32) -> usize {
        (max_descriptors.max(1) as usize).min(self.transfers) * MAX_TRANSFER as usize
    }

    /// Follows a reply of `work` to a FETCH of `max_descriptors` sized by [`size`](Self::size).
    pub fn follow(&mut self, work: &Work, max_descriptors: u32) {
        let room = self.payload_room(max_descriptors);
        let used: usize = work.items.iter().map(|(_, payload)| payload.len()).sum();
        self.underused = if used * 4 < room {
            self.underused + 1
        } else {
            0
        };
        if used * 2 > room {
            self.transfers = (self.transfers * 2).min(FETCH_PAYLOAD_TRANSFERS);
        } else if self.underused == FETCH_ROOM_PATIENCE {
            (self.transfers, self.underused) = ((self.transfers / 2).max(1), 0);
        }
    }
}

/// The work of one FETCH (or COMMIT_AND_FETCH) reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    pub items: Vec<(Descriptor, Vec<u8>)>,
    /// The session ended: stop serving.
    pub last: bool,
    /// Results of the last COMMIT the driver dropped (their SRB was reset or removed).
    pub stale: u32,
}

/// Decodes a completed FETCH or COMMIT_AND_FETCH.
pub fn work(status: u32, output: &[u8]) -> Result<Work, RequestError> {
    if status != revcall_protocol::status::STATUS_SUCCESS {
        return Err(RequestError::Status(status));
    }
    match decode_reply(output) {
        Ok(Reply::Fetch(fetched)) => Ok(Work {
            items: fetched
                .descriptors()
                .map(|d| (d, fetched.payload(&d).unwrap_or_default().to_vec()))
                .collect(),
            last: fetched.reply.flags & FetchFlags::FINAL != 0,
            stale: fetched.reply.stale,
        }),
        other => Err(RequestError::BadReply(format!("{other:?}"))),
    }
}

/// A SCSI error a backend answers with: sense key, ASC, ASCQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Failure {
    pub const UNRECOVERED_READ_ERROR: Self = Self {
        key: 3,
        asc: 0x11,
        ascq: 0,
    };
    pub const WRITE_ERROR: Self = Self {
        key: 3,
        asc: 0x0C,
        ascq: 0,
    };
    pub const LBA_OUT_OF_RANGE: Self = Self {
        key: 5,
        asc: 0x21,
        ascq: 0,
    };
}

/// Where a server keeps a LUN's blocks.
pub trait Backend {
    /// Fills `out` from `lba` on.
    fn read(&mut self, lba: u64, out: &mut [u8]) -> Result<(), Failure>;
    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), Failure>;
    fn flush(&mut self) -> Result<(), Failure>;
    /// Deallocates `blocks` blocks from `lba` on.
    fn unmap(&mut self, lba: u64, blocks: u32) -> Result<(), Failure>;
}

/// A LUN's bytes in memory; unmapped blocks read back as zeros.
pub struct MemoryDisk {
    block_size: u32,
    bytes: Vec<u8>,
}

impl MemoryDisk {
    pub fn new(block_size: u32, block_count: u64) -> Self {
        Self {
            block_size,
            bytes: vec![0; (u64::from(block_size) * block_count) as usize],
        }
    }

    fn range(&self, lba: u64, len: usize) -> Result<std::ops::Range<usize>, Failure> {
        let start = lba
            .checked_mul(u64::from(self.block_size))
            .and_then(|start| usize::try_from(start).ok())
            .ok_or(Failure::LBA_OUT_OF_RANGE)?;
        let end = start.checked_add(len).ok_or(Failure::LBA_OUT_OF_RANGE)?;
        (end <= self.bytes.len())
            .then_some(start..end)
            .ok_or(Failure::LBA_OUT_OF_RANGE)
    }

    /// The bytes of `blocks` blocks from `lba` on.
    pub fn blocks(&self, lba: u64, blocks: u32) -> &[u8] {
        let len = blocks as usize * self.block_size as usize;
        self.range(lba, len)
            .map_or(&[][..], |range| &self.bytes[range])
    }
}

impl Backend for MemoryDisk {
    fn read(&mut self, lba: u64, out: &mut [u8]) -> Result<(), Failure> {
        let range = self.range(lba, out.len())?;
        out.copy_from_slice(&self.bytes[range]);
        Ok(())
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), Failure> {
        let range = self.range(lba, data.len())?;
        self.bytes[range].copy_from_slice(data);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    fn unmap(&mut self, lba: u64, blocks: u32) -> Result<(), Failure> {
        let range = self.range(lba, blocks as usize * self.block_size as usize)?;
        self.bytes[range].fill(0);
        Ok(())
    }
}

/// A COMMIT's results and READ data, in the order the driver wants them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub results: Vec<CommitResult>,
    pub data: Vec<u8>,
}

impl Answer {
    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }

    /// The COMMIT_AND_FETCH record that sends this answer and asks for up to
    /// `max_descriptors` more (0: commit only).
    pub fn encode(&self, max_descriptors: u32) -> Vec<u8> {
        let mut out = vec![0; 16 + self.results.len() * 16 + self.data.len()];
        let len = encode_commit(&mut out, max_descriptors, &self.results, &self.data)
            .expect("sized for the record");
        out.truncate(len);
        out
    }
}

/// Serves every descriptor of `work` from `backend`.
pub fn answer(work: &Work, block_size: u32, backend: &mut impl Backend) -> Answer {
    let mut answer = Answer {
        results: Vec::with_capacity(work.items.len()),
        data: Vec::with_capacity(read_bytes(work, block_size)),
    };
    for (descriptor, payload) in &work.items {
        let result = serve(descriptor, payload, block_size, backend, &mut answer.data);
        answer.results.push(result);
    }
    answer
}

/// A COMMIT_AND_FETCH record built in the buffer it is sent from, kept batch after batch:
/// the results in the slots reserved for them, a backend's READ data read straight into
/// place. Through an [`Answer`] each READ's data was copied twice more (into the answer as it
/// grew, then into the record) by the CPU that serves the LUN.
#[derive(Clone, Debug, Default)]
pub struct Commit {
    record: Vec<u8>,
    results: Vec<CommitResult>,
}

impl Commit {
    /// Serves every descriptor of `work` from `backend` into the record.
    pub fn answer(&mut self, work: &Work, block_size: u32, backend: &mut impl Backend) {
        let head = commit_head_size(work.items.len());
        self.record.clear();
        self.record.reserve(head + read_bytes(work, block_size));
        self.record.resize(head, 0);
        self.results.clear();
        for (descriptor, payload) in &work.items {
            let result = serve(descriptor, payload, block_size, backend, &mut self.record);
            self.results.push(result);
        }
    }

    /// How many SRBs the record answers.
    pub fn answered(&self) -> usize {
        self.results.len()
    }

    /// The record, asking for up to `max_descriptors` more (0: commit only).
    pub fn record(&mut self, max_descriptors: u32) -> &[u8] {
        let data = self.record.len() - commit_head_size(self.results.len());
        encode_commit_head(&mut self.record, max_descriptors, &self.results, data)
            .expect("the record holds its head");
        &self.record
    }
}

/// The READ data `work` asks for, in bytes.
fn read_bytes(work: &Work, block_size: u32) -> usize {
    work.items
        .iter()
        .filter(|(descriptor, _)| descriptor.op == DataOp::Read as u8)
        .map(|(descriptor, _)| descriptor.blocks as usize * block_size as usize)
        .sum()
}

/// Serves one descriptor from `backend`: a READ's data is appended to `data`.
fn serve(
    descriptor: &Descriptor,
    payload: &[u8],
    block_size: u32,
    backend: &mut impl Backend,
    data: &mut Vec<u8>,
) -> CommitResult {
    let bytes = descriptor.blocks as usize * block_size as usize;
    let outcome = match DataOp::try_from(descriptor.op) {
        Ok(DataOp::Read) => {
            let start = data.len();
            data.resize(start + bytes, 0);
            let done = backend.read(descriptor.lba, &mut data[start..]);
            if done.is_err() {
                data.truncate(start);
            }
            done.map(|()| bytes as u32)
        }
        Ok(DataOp::Write) => backend.write(descriptor.lba, payload).map(|()| 0),
        Ok(DataOp::Flush) => backend.flush().map(|()| 0),
        Ok(DataOp::Unmap) => payload
            .chunks_exact(size_of::<UnmapRange>())
            .filter_map(|chunk| UnmapRange::read_from_bytes(chunk).ok())
            .try_for_each(|range| backend.unmap(range.lba, range.blocks))
            .map(|()| 0),
        // An op this server does not know: refuse it as the device would.
        Err(_) => Err(Failure {
            key: 5,
            asc: 0x20,
            ascq: 0,
        }),
    };
    match outcome {
        Ok(data_len) => CommitResult {
            tag: descriptor.tag,
            data_len,
            ..CommitResult::default()
        },
        Err(failure) => CommitResult {
            tag: descriptor.tag,
            scsi_status: ScsiStatus::CHECK_CONDITION,
            sense_key: failure.key,
            asc: failure.asc,
            ascq: failure.ascq,
            data_len: 0,
        },
    }
}

/// What one [`Session::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Answered this many SRBs (and fetched again).
    Served(usize),
    /// Nothing arrived in time.
    Idle,
    /// The session is over: its LUN or the adapter went away (FINAL, or the FETCH failed).
    Ended,
}

/// Whether a FETCH's status says the session ended under it (rather than that the driver
/// refused what this server sent).
fn session_over(status: u32) -> bool {
    use revcall_protocol::status::*;
    matches!(
        status,
        STATUS_DEVICE_REMOVED
            | STATUS_DELETE_PENDING
            | STATUS_CANCELLED
            | STATUS_INVALID_DEVICE_STATE
    )
}

/// A server's session on one handle: its ATTACH stays pending while it serves, and `depth`
/// FETCHes (or COMMIT_AND_FETCHes) are always outstanding, so the driver can hand out new work
/// while the server is busy with the last (docs/DATAPATH.md §3).
pub struct Session<'a, 't, T: Transport> {
    adapter: &'a Adapter<'t, T>,
    attach: T::Pending,
    /// Outstanding, in the order the driver completes them (it fills the longest parked first).
    fetches: std::collections::VecDeque<T::Pending>,
    max_descriptors: u32,
    room: FetchRoom,
    commit: Commit,
}

impl<'a, 't, T: Transport> Session<'a, 't, T> {
    /// ATTACHes `adapter`'s handle to `lun` and posts `depth` FETCHes (at least one).
    ///
    /// # Errors
    ///
    /// The ATTACH's status when the driver refused it at once (no such LUN, a handle that
    /// already serves one, …), or a FETCH's that could not be sent.
    pub fn attach(
        adapter: &'a Adapter<'t, T>,
        lun: u32,
        max_descriptors: u32,
        depth: usize,
    ) -> Result<Self, RequestError> {
        let transport = adapter.transport;
        let attach = transport
            .submit(adapter.handle, &encode(&Request::Attach { lun }), 16)
            .map_err(RequestError::Status)?;
        // A refused ATTACH completes at once; a good one stays pending.
        if let Some(done) = transport.wait(&attach, Duration::ZERO) {
            return Err(RequestError::Status(done.status));
        }
        let mut session = Self {
            adapter,
            attach,
            fetches: std::collections::VecDeque::new(),
            max_descriptors,
            room: FetchRoom::default(),
            commit: Commit::default(),
        };
        let fetch = encode(&Request::Fetch { max_descriptors });
        for _ in 0..depth.max(1) {
            let pending = transport
                .submit(adapter.handle, &fetch, session.room.size(max_descriptors))
                .map_err(RequestError::Status)?;
            session.fetches.push_back(pending);
        }
        Ok(session)
    }

    /// Waits up to `limit` for work, serves it from `backend` and sends the answer (which
    /// fetches again).
    ///
    /// # Errors
    ///
    /// A reply that does not decode, or a COMMIT the driver refused.
    pub fn step(
        &mut self,
        block_size: u32,
        backend: &mut impl Backend,
        limit: Duration,
    ) -> Result<Step, RequestError> {
        let transport = self.adapter.transport;
        let Some(fetch) = self.fetches.front() else {
            return Ok(Step::Ended);
        };
        let Some(done) = transport.wait(fetch, limit) else {
            return Ok(Step::Idle);
        };
        self.fetches.pop_front();
        let work = match work(done.status, &done.output) {
            Ok(work) if !work.last => work,
            Ok(_) => return Ok(Step::Ended),
            Err(RequestError::Status(status)) if session_over(status) => return Ok(Step::Ended),
            Err(other) => return Err(other),
        };
        self.commit.answer(&work, block_size, backend);
        self.room.follow(&work, self.max_descriptors);
        let next = transport
            .submit(
                self.adapter.handle,
                self.commit.record(self.max_descriptors),
                self.room.size(self.max_descriptors),
            )
            .map_err(RequestError::Status)?;
        self.fetches.push_back(next);
        Ok(Step::Served(self.commit.answered()))
    }

    /// Ends the session: cancels the ATTACH and the outstanding FETCHes (the driver gives what
    /// this server held to another server of the LUN) and waits for them. The ATTACH's status.
    pub fn stop(self) -> Option<u32> {
        let transport = self.adapter.transport;
        transport.cancel(self.adapter.handle, &self.attach);
        for fetch in &self.fetches {
            transport.cancel(self.adapter.handle, fetch);
            transport.wait(fetch, PROMPT);
        }
        transport.wait(&self.attach, PROMPT).map(|done| done.status)
    }
}

/// A LUN's blocks in a file (created or extended to the LUN's size), for a disk whose contents
/// outlive its server.
pub struct FileDisk {
    file: std::fs::File,
    block_size: u32,
    bytes: u64,
}

impl FileDisk {
    /// Opens (creating if needed) `path` and sizes it to `block_count` blocks.
    ///
    /// # Errors
    ///
    /// The file system's.
    pub fn open(
        path: &std::path::Path,
        block_size: u32,
        block_count: u64,
    ) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let bytes = u64::from(block_size) * block_count;
        if file.metadata()?.len() < bytes {
            file.set_len(bytes)?;
        }
        Ok(Self {
            file,
            block_size,
            bytes,
        })
    }

    fn at(&mut self, lba: u64, len: usize) -> Result<(), Failure> {
        use std::io::Seek;
        let start = lba
            .checked_mul(u64::from(self.block_size))
            .filter(|start| start + len as u64 <= self.bytes)
            .ok_or(Failure::LBA_OUT_OF_RANGE)?;
        self.file
            .seek(std::io::SeekFrom::Start(start))
            .map(|_| ())
            .map_err(|_| Failure::UNRECOVERED_READ_ERROR)
    }
}

impl Backend for FileDisk {
    fn read(&mut self, lba: u64, out: &mut [u8]) -> Result<(), Failure> {
        use std::io::Read;
        self.at(lba, out.len())?;
        self.file
            .read_exact(out)
            .map_err(|_| Failure::UNRECOVERED_READ_ERROR)
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), Failure> {
        use std::io::Write;
        self.at(lba, data.len())?;
        self.file.write_all(data).map_err(|_| Failure::WRITE_ERROR)
    }

    fn flush(&mut self) -> Result<(), Failure> {
        self.file.sync_data().map_err(|_| Failure::WRITE_ERROR)
    }

    fn unmap(&mut self, lba: u64, blocks: u32) -> Result<(), Failure> {
        // Zeroes the range; a file system with holes would punch one (not portable in std).
        let zeros = vec![0; blocks as usize * self.block_size as usize];
        self.write(lba, &zeros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revcall_protocol::{FetchReplyWriter, Opcode};

    fn reply(items: &[(Descriptor, &[u8])]) -> Vec<u8> {
        let payload: usize = items.iter().map(|(_, p)| p.len()).sum();
        let mut out = vec![0; fetch_reply_size(items.len(), payload)];
        let mut writer =
            FetchReplyWriter::new(&mut out, Opcode::Fetch, items.len(), payload).expect("sized");
        for (descriptor, payload) in items {
            writer
                .push(*descriptor, payload.len())
                .expect("room")
                .copy_from_slice(payload);
        }
        let len = writer.finish(0, 0);
        out.truncate(len);
        out
    }

    fn descriptor(tag: u64, op: DataOp, lba: u64, blocks: u32) -> Descriptor {
        Descriptor {
            tag,
            op: op as u8,
            lba,
            blocks,
            ..Descriptor::default()
        }
    }

    #[test]
    fn fetch_room_grows_with_write_payloads_and_shrinks_after_reads() {
        let max = MAX_TRANSFER as usize;
        let writes = |bytes: usize| Work {
            items: vec![(descriptor(1, DataOp::Write, 0, 8), vec![0; bytes])],
            ..Work::default()
        };
        let reads = Work {
            items: vec![(descriptor(1, DataOp::Read, 0, 8), Vec::new())],
            ..Work::default()
        };
        let mut room = FetchRoom::default();
        assert_eq!(room.size(32), fetch_reply_size(32, max) as u32);
        assert_eq!(
            room.size(0),
            fetch_reply_size(1, max) as u32,
            "one descriptor at least"
        );
        room.follow(&writes(max / 2 + 1), 32);
        assert_eq!(room.size(32), fetch_reply_size(32, 2 * max) as u32);
        for _ in 0..4 {
            room.follow(&writes(2 * max), 32);
        }
        assert_eq!(room, FetchRoom::MOST, "no more than the most");
        // A quarter or more keeps the room; less, FETCH_ROOM_PATIENCE times in a row, halves it.
        for _ in 1..FETCH_ROOM_PATIENCE {
            room.follow(&reads, 32);
        }
        room.follow(&writes(max), 32);
        for _ in 1..FETCH_ROOM_PATIENCE {
            room.follow(&reads, 32);
        }
        assert_eq!(room.size(32), FetchRoom::MOST.size(32));
        room.follow(&reads, 32);
        assert_eq!(room.size(32), fetch_reply_size(32, 2 * max) as u32);
        for _ in 0..4 * FETCH_ROOM_PATIENCE {
            room.follow(&reads, 32);
        }
        let least = FetchRoom::default().size(32);
        assert_eq!(room.size(32), least, "one largest payload at least");
    }

    #[test]
    fn a_memory_disk_serves_writes_reads_unmaps_and_errors() {
        let mut disk = MemoryDisk::new(512, 16);
        let unmap = UnmapRange {
            lba: 1,
            blocks: 1,
            reserved: 0,
        };
        let bytes = reply(&[
            (descriptor(1, DataOp::Write, 0, 2), &[7; 1024]),
            (
                descriptor(2, DataOp::Unmap, 0, 1),
                zerocopy::IntoBytes::as_bytes(&unmap),
            ),
            (descriptor(3, DataOp::Read, 0, 2), &[]),
            (descriptor(4, DataOp::Read, 15, 2), &[]),
        ]);
        let work = work(0, &bytes).expect("decodes");
        assert_eq!(work.items.len(), 4);
        let answer = answer(&work, 512, &mut disk);
        let statuses: Vec<_> = answer.results.iter().map(|r| r.scsi_status).collect();
        assert_eq!(statuses, [0, 0, 0, ScsiStatus::CHECK_CONDITION]);
        assert_eq!(answer.results[2].data_len, 1024);
        assert_eq!(answer.data[..512], [7; 512]);
        assert_eq!(answer.data[512..], [0; 512], "block 1 was unmapped");
        assert_eq!(answer.results[3].sense_key, Failure::LBA_OUT_OF_RANGE.key);
        let record = answer.encode(4);
        assert!(revcall_protocol::decode_request(&record).is_ok());
        let mut again = MemoryDisk::new(512, 16);
        again.write(0, &[7; 1024]).expect("written");
        let mut commit = Commit::default();
        commit.answer(&work, 512, &mut again);
        assert_eq!(commit.answered(), 4);
        assert_eq!(commit.record(4), record, "built in place, the same record");
    }

    #[test]
    fn a_file_disk_keeps_its_blocks_and_refuses_past_the_end() {
        let path = std::env::temp_dir().join(format!("revcall-filedisk-{}", std::process::id()));
        {
            let mut disk = FileDisk::open(&path, 512, 8).expect("created");
            disk.write(3, &[9; 1024]).expect("written");
            disk.unmap(4, 1).expect("unmapped");
            disk.flush().expect("flushed");
            assert_eq!(disk.write(8, &[1; 512]), Err(Failure::LBA_OUT_OF_RANGE));
        }
        let mut again = FileDisk::open(&path, 512, 8).expect("reopened");
        let mut out = [0u8; 1024];
        again.read(3, &mut out).expect("read");
        assert_eq!(out[..512], [9; 512]);
        assert_eq!(out[512..], [0; 512], "block 4 was unmapped");
        drop(again);
        let _ = std::fs::remove_file(&path);
    }
}
