//! The SRBs Storport builds (its own bus scan's INQUIRY, and the SCSI commands of the disk
//! class model above it), in pool memory like the real port driver's, with a data buffer, a
//! sense buffer and the miniport's SrbExtension.

use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;

use storport_abi::SCSI_REQUEST_BLOCK;

use crate::pool::{Owner, Pool};

const TAG: u32 = u32::from_le_bytes(*b"Srb ");

/// An SRB and the blocks it points at; the addresses are live pool blocks until `free`.
///
/// Storport reads and writes its SRBs directly, and so does this: through the pool each
/// access took the pool's lock, a cache miss whenever a CPU serving the miniport had taken
/// it last, several times per SRB.
pub struct Srb {
    srb: usize,
    data: usize,
    extension: usize,
    sense: usize,
    data_len: u32,
    extension_len: u32,
    /// (TargetId, Lun).
    address: (u8, u8),
    /// The CDB's operation code (0 without a CDB).
    opcode: u8,
    /// Whether the miniport has it; shared with the port's table of the SRBs it knows.
    standing: Arc<Standing>,
}

/// Whether one SRB is with the miniport, and who waits for it. Handing an SRB over,
/// completing it and looking at it touch this alone (its own cache line, as Windows touches
/// the SRB's own request block), not a table the submitting and the completing CPU both
/// write: with one such table each of them found its lock in the other's cache, a miss per
/// SRB each side.
#[derive(Default)]
pub(super) struct Standing {
    /// Set when Storport hands the SRB to HwStartIo, cleared when the miniport completes
    /// it. Written under `waiter`'s lock; read without it.
    outstanding: AtomicBool,
    /// The thread asleep until the SRB completes, if one is.
    waiter: Mutex<Option<Thread>>,
    /// In the port's table: an SRB joins at its first hand-over and leaves when freed.
    pub(super) known: AtomicBool,
}

impl Standing {
    fn waiter(&self) -> std::sync::MutexGuard<'_, Option<Thread>> {
        self.waiter.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn is_outstanding(&self) -> bool {
        self.outstanding.load(Ordering::Acquire)
    }

    /// Storport hands it to the miniport.
    pub(super) fn hand_over(&self) {
        let mut waiter = self.waiter();
        *waiter = None;
        self.outstanding.store(true, Ordering::Release);
    }

    /// The miniport completes it: what `status` reads, taken while it is still outstanding
    /// (its issuer frees it once it is not), or `None` if it was not outstanding. Wakes the
    /// thread asleep on it.
    pub(super) fn complete(&self, status: impl FnOnce() -> u8) -> Option<u8> {
        let mut waiter = self.waiter();
        if !self.is_outstanding() {
            return None;
        }
        let status = status();
        self.outstanding.store(false, Ordering::Release);
        if let Some(waiter) = waiter.take() {
            waiter.unpark();
        }
        Some(status)
    }

    /// Registers `me` to be woken when it completes; `false` if it already has.
    pub(super) fn sleep_on(&self, me: &Thread) -> bool {
        let mut waiter = self.waiter();
        if !self.is_outstanding() {
            return false;
        }
        if waiter.as_ref().is_none_or(|w| w.id() != me.id()) {
            *waiter = Some(me.clone());
        }
        true
    }
}

/// What the miniport left in a completed SRB, read in one access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `SrbStatus`, flags included.
    pub status: u8,
    pub scsi_status: u8,
    /// `DataTransferLength`: the bytes the miniport says it moved.
    pub transferred: u32,
}

/// Which way an SRB's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    None,
    /// Device to host (READ, INQUIRY): SRB_FLAGS_DATA_IN.
    In,
    /// Host to device (WRITE): SRB_FLAGS_DATA_OUT.
    Out,
}

/// classpnp's sense buffer (SENSE_BUFFER_SIZE).
const SENSE_LEN: usize = 18;

/// disk.sys's default TimeOutValue, in seconds (DISK.md §4.1).
pub const TIMEOUT_S: u32 = 10;

impl Srb {
    /// An INQUIRY (36 bytes of data in) to LUN 0 of `target`: the port's own bus scan.
    pub fn inquiry(pool: &Pool, target: u8, extension_size: u32) -> Option<Self> {
        Self::scsi(
            pool,
            (target, 0),
            &[0x12, 0, 0, 0, 36, 0],
            36,
            Direction::In,
            extension_size,
        )
    }

    /// An EXECUTE_SCSI SRB to (`target`, `lun`) with `cdb`, a zeroed data buffer of
    /// `data_len` bytes and an 18-byte sense buffer, all in pool memory like the port
    /// driver's.
    pub fn scsi(
        pool: &Pool,
        address: (u8, u8),
        cdb: &[u8],
        data_len: u32,
        direction: Direction,
        extension_size: u32,
    ) -> Option<Self> {
        let function = storport_abi::srb_function::EXECUTE_SCSI;
        Self::build(
            pool,
            function,
            address,
            cdb,
            data_len,
            direction,
            extension_size,
        )
    }

    /// SRB_FUNCTION_RESET_LOGICAL_UNIT to (`target`, `lun`): the first step of Storport's
    /// reset ladder (DISK.md §4.2).
    pub fn reset_lun(pool: &Pool, address: (u8, u8), extension_size: u32) -> Option<Self> {
        let function = storport_abi::srb_function::RESET_LOGICAL_UNIT;
        Self::build(
            pool,
            function,
            address,
            &[],
            0,
            Direction::None,
            extension_size,
        )
    }

    fn build(
        pool: &Pool,
        function: u8,
        address: (u8, u8),
        cdb: &[u8],
        data_len: u32,
        direction: Direction,
        extension_size: u32,
    ) -> Option<Self> {
        let block = |size: usize| match size {
            0 => Some(0),
            size => pool
                .allocate_zeroed(size, TAG, Owner::Port)
                .ok()
                .map(|p| p as usize),
        };
        let mut srb = Self {
            srb: block(size_of::<SCSI_REQUEST_BLOCK>())?,
            data: block(data_len as usize)?,
            extension: block(extension_size as usize)?,
            sense: block(SENSE_LEN)?,
            data_len,
            extension_len: extension_size,
            address,
            opcode: 0,
            standing: Arc::default(),
        };
        srb.issue(function, address, cdb, direction);
        Some(srb)
    }

    /// The same blocks as a fresh EXECUTE_SCSI SRB to `address` with `cdb`: the SRB, its
    /// data, extension and sense buffers zeroed and its fields written again, as classpnp
    /// reuses an SRB from its lookaside list (and Storport its SRB extensions) instead of
    /// allocating them per request.
    pub fn reissue(&mut self, address: (u8, u8), cdb: &[u8], direction: Direction) {
        for (block, len) in [
            (self.data, self.data_len),
            (self.sense, SENSE_LEN as u32),
            (self.extension, self.extension_len),
        ] {
            if block != 0 {
                self.zero(block, len as usize);
            }
        }
        let function = storport_abi::srb_function::EXECUTE_SCSI;
        self.issue(function, address, cdb, direction);
    }

    /// Writes the SRB's fields for `function` to `address` with `cdb`.
    fn issue(&mut self, function: u8, (target, lun): (u8, u8), cdb: &[u8], direction: Direction) {
        self.address = (target, lun);
        self.opcode = cdb.first().copied().unwrap_or(0);
        // The fields a SCSI command needs, written in one access: the pool's lock is shared
        // with the CPUs serving the miniport, and a locked access per field made the
        // submitting CPU queue behind them a dozen times per SRB.
        let mut fields = [0u8; size_of::<SCSI_REQUEST_BLOCK>()];
        let mut put = |offset: usize, bytes: &[u8]| {
            fields[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        let length = size_of::<SCSI_REQUEST_BLOCK>() as u16;
        put(
            offset_of!(SCSI_REQUEST_BLOCK, Length),
            &length.to_le_bytes(),
        );
        put(offset_of!(SCSI_REQUEST_BLOCK, Function), &[function]);
        put(offset_of!(SCSI_REQUEST_BLOCK, TargetId), &[target]);
        put(offset_of!(SCSI_REQUEST_BLOCK, Lun), &[lun]);
        put(
            offset_of!(SCSI_REQUEST_BLOCK, CdbLength),
            &[cdb.len() as u8],
        );
        put(offset_of!(SCSI_REQUEST_BLOCK, Cdb), cdb);
        put(
            offset_of!(SCSI_REQUEST_BLOCK, DataTransferLength),
            &self.data_len.to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, DataBuffer),
            &(self.data as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SrbExtension),
            &(self.extension as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SenseInfoBuffer),
            &(self.sense as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SenseInfoBufferLength),
            &[SENSE_LEN as u8],
        );
        let flags: u32 = match direction {
            Direction::None => 0,
            Direction::In => 0x40,
            Direction::Out => 0x80,
        };
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SrbFlags),
            &flags.to_le_bytes(),
        );
        // classpnp's default disk timeout (DISK.md §4.1).
        put(
            offset_of!(SCSI_REQUEST_BLOCK, TimeOutValue),
            &10u32.to_le_bytes(),
        );
        self.write(self.srb, &fields);
    }

    /// The data buffer's bytes (what a data-in command returned).
    pub fn data(&self) -> Vec<u8> {
        if self.data == 0 {
            return Vec::new();
        }
        self.read(self.data, self.data_len as usize)
    }

    /// Fills the data buffer (a data-out command's payload).
    pub fn set_data(&self, bytes: &[u8]) {
        if self.data != 0 {
            self.write(self.data, &bytes[..bytes.len().min(self.data_len as usize)]);
        }
    }

    /// The sense buffer's bytes.
    pub fn sense(&self) -> Vec<u8> {
        self.read(self.sense, SENSE_LEN)
    }

    /// Status, SCSI status and transfer length, once the miniport has completed it (Storport
    /// owns it again).
    pub fn outcome(&self) -> Outcome {
        let fields = self.read(self.srb, size_of::<SCSI_REQUEST_BLOCK>());
        let at = offset_of!(SCSI_REQUEST_BLOCK, DataTransferLength);
        Outcome {
            status: fields[offset_of!(SCSI_REQUEST_BLOCK, SrbStatus)],
            scsi_status: fields[offset_of!(SCSI_REQUEST_BLOCK, ScsiStatus)],
            transferred: u32::from_le_bytes(fields[at..at + 4].try_into().expect("4 bytes")),
        }
    }

    /// The data length the SRB asked for.
    pub fn requested(&self) -> u32 {
        self.data_len
    }

    /// The CDB's operation code, as built (Storport reads its own copy, not the miniport's).
    pub fn opcode(&self) -> u8 {
        self.opcode
    }

    /// (TargetId, Lun).
    pub fn address(&self) -> (u8, u8) {
        self.address
    }

    pub fn addr(&self) -> usize {
        self.srb
    }

    /// Whether Storport has had it back since it last handed it to the miniport.
    pub fn is_completed(&self) -> bool {
        !self.standing.is_outstanding()
    }

    pub(super) fn standing(&self) -> &Arc<Standing> {
        &self.standing
    }

    pub fn as_ptr(&self) -> *mut SCSI_REQUEST_BLOCK {
        self.srb as *mut _
    }

    /// `SrbStatus`, once the miniport has completed it (Storport owns it again).
    pub fn status(&self) -> u8 {
        self.outcome().status
    }

    /// Where `at..at + len` lies in one of this SRB's blocks, or a panic: a storsim bug.
    fn inside(&self, at: usize, len: usize) -> *mut u8 {
        let blocks = [
            (self.srb, size_of::<SCSI_REQUEST_BLOCK>()),
            (self.data, self.data_len as usize),
            (self.sense, SENSE_LEN),
            (self.extension, self.extension_len as usize),
        ];
        assert!(
            blocks
                .iter()
                .any(|&(block, size)| block != 0 && at >= block && at + len <= block + size),
            "bytes {at:#x}+{len} are not inside the SRB's blocks"
        );
        at as *mut u8
    }

    fn read(&self, at: usize, len: usize) -> Vec<u8> {
        let from = self.inside(at, len);
        let mut out = vec![0; len];
        // SAFETY: `inside` checked the bytes lie in a block `build` allocated for this SRB,
        // live (read-write, whatever the special pool traps) until `free` consumes it. The
        // miniport may write them meanwhile only by a bug, which Storport's own reads do not
        // stop either; the copy is of plain bytes.
        unsafe { std::ptr::copy_nonoverlapping(from, out.as_mut_ptr(), len) };
        out
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        let to = self.inside(at, bytes.len());
        // SAFETY: as in `read`: this SRB's live block, written before the SRB goes to the
        // miniport or after it gave it back.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), to, bytes.len()) };
    }

    fn zero(&self, at: usize, len: usize) {
        let to = self.inside(at, len);
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(to, 0, len) };
    }

    /// Frees its blocks (Storport's table forgets it first: [`super::Port::free_srb`]).
    pub(super) fn free(self, pool: &Pool) {
        for block in [self.srb, self.data, self.extension, self.sense] {
            if block != 0 {
                let _ = pool.free(block as *mut u8, None);
            }
        }
    }
}
