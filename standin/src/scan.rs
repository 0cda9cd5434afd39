//! The SRBs the stand-in sends: Storport's INQUIRY scan of the bus after the adapter starts and
//! after every BusChangeDetected, and — because Wine has no disk class driver — what disk.sys
//! and the partition manager send a new disk first: READ CAPACITY(10) and a READ of block 0.
//! So a LUN created from user mode is served from user mode under Wine too.
//!
//! One thread per adapter, one SRB at a time, built in pool like Storport's (SRB, SrbExtension,
//! sense and data buffers) and handed to HwStartIo with no lock held; RequestComplete wakes the
//! thread. An SRB not back within its TimeOutValue gets HwResetBus, as Storport's timeout
//! handling does, and is waited for again: its memory is the miniport's until it completes.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use revcall_scsi::{
    Command, Transfer, encode, parse_inquiry, parse_read_capacity10, parse_vpd_pages,
};
use storport_abi::{SCSI_REQUEST_BLOCK, srb_function, srb_status};

use crate::adapter::{Adapter, POOL_TAG};
use crate::nt::{self, KEVENT};

/// The LUNs scanned on target 0 (SCSI-2's eight; revcall reports as many).
const LUNS: u8 = 8;
/// disk.sys's TimeOutValue, in seconds.
const TIMEOUT_S: u32 = 10;
/// The largest block the first READ takes.
const DATA_LEN: usize = 4096;
const SENSE_LEN: usize = 32;
const SRB_FLAGS_DATA_IN: u32 = 0x40;
/// Peripheral device type of a direct-access block device.
const DISK: u8 = 0;
/// VPD page Unit Serial Number.
const VPD_SERIAL: u8 = 0x80;
/// The longest serial number compared (revcall's are 32 bytes).
const SERIAL_LEN: usize = 32;

/// What the scan last saw at a LUN: nothing, or a disk with this serial number (VPD 0x80;
/// zeros if the disk gave none). A LUN removed and re-created under its number between two
/// INQUIRYs of it is a disk at both, but with another serial: a new disk all the same.
type Seen = Option<[u8; SERIAL_LEN]>;

pub struct Scanner {
    rescan: UnsafeCell<KEVENT>,
    done: UnsafeCell<KEVENT>,
    /// The SRB in the miniport's hands, if any.
    current: AtomicPtr<SCSI_REQUEST_BLOCK>,
    thread: AtomicPtr<c_void>,
    stopping: AtomicBool,
}

// SAFETY: the events are reached only through the Ke routines, which synchronize themselves;
// the rest is atomic.
unsafe impl Sync for Scanner {}

/// What came back of one SRB: its statuses and the first bytes of its data.
struct Reply {
    srb_status: u8,
    data: [u8; 64],
}

impl Scanner {
    pub const fn new() -> Self {
        Self {
            rescan: UnsafeCell::new(KEVENT::new()),
            done: UnsafeCell::new(KEVENT::new()),
            current: AtomicPtr::new(null_mut()),
            thread: AtomicPtr::new(null_mut()),
            stopping: AtomicBool::new(false),
        }
    }

    /// Starts the scan thread, which scans at once. PnP path only.
    pub fn start(&self, adapter: &Adapter) {
        if !self.thread.load(Ordering::Acquire).is_null() {
            return;
        }
        self.stopping.store(false, Ordering::Release);
        // SAFETY: the scanner's own events, initialized before any thread can use them.
        unsafe { nt::KeInitializeEvent(self.rescan.get(), nt::SYNCHRONIZATION_EVENT, 1) };
        // SAFETY: as above.
        unsafe { nt::KeInitializeEvent(self.done.get(), nt::SYNCHRONIZATION_EVENT, 0) };
        // SAFETY: `run` on this adapter, which lives in the FDO's extension until after
        // `stop` has joined the thread.
        match unsafe { nt::spawn_thread(run, core::ptr::from_ref(adapter).cast_mut().cast()) } {
            Ok(thread) => self.thread.store(thread, Ordering::Release),
            Err(status) => log!("PsCreateSystemThread failed: %#x: no bus scan", status),
        }
    }

    /// BusChangeDetected: scan again (once, however many notifications come meanwhile).
    pub fn rescan(&self) {
        if !self.thread.load(Ordering::Acquire).is_null() {
            // SAFETY: the scanner's event, initialized in `start`.
            unsafe { nt::KeSetEvent(self.rescan.get(), 0, 0) };
        }
    }

    /// RequestComplete for `srb`: false if it is not the SRB the scanner sent.
    pub fn completed(&self, srb: *mut SCSI_REQUEST_BLOCK) -> bool {
        if srb.is_null()
            || self
                .current
                .compare_exchange(srb, null_mut(), Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return false;
        }
        // SAFETY: the scanner's event; the thread waits on it for this SRB.
        unsafe { nt::KeSetEvent(self.done.get(), 0, 0) };
        true
    }

    /// Ends the thread and waits for it (an SRB in flight is waited for first). PnP path only.
    pub fn stop(&self) {
        let thread = self.thread.load(Ordering::Acquire);
        if thread.is_null() {
            return;
        }
        self.stopping.store(true, Ordering::Release);
        self.rescan();
        // SAFETY: the thread `start` spawned, joined once (PnP path), from another thread.
        unsafe { nt::join_thread(thread) };
        self.thread.store(null_mut(), Ordering::Release);
    }

    /// Sends one EXECUTE_SCSI SRB with `command` to LUN `lun` of target 0 and waits for it.
    fn execute(
        &self,
        adapter: &Adapter,
        lun: u8,
        command: &Command,
        data_len: usize,
    ) -> Option<Reply> {
        let extension_size = (adapter.miniport().srb_extension_size as usize).next_multiple_of(16);
        let srb_size = size_of::<SCSI_REQUEST_BLOCK>().next_multiple_of(16);
        let block = nt::allocate_zeroed(srb_size + SENSE_LEN + extension_size + DATA_LEN, POOL_TAG)
            .cast::<u8>();
        if block.is_null() {
            return None;
        }
        let sense = block.wrapping_add(srb_size);
        let srb_extension = sense.wrapping_add(SENSE_LEN);
        let data = srb_extension.wrapping_add(extension_size);
        let (cdb, cdb_len) = encode(command);
        let srb = block.cast::<SCSI_REQUEST_BLOCK>();
        {
            // SAFETY: the zeroed block starts with room for an SRB, 16-aligned (pool), and
            // nothing else reaches it before HwStartIo.
            let fields = unsafe { &mut *srb };
            fields.Length = size_of::<SCSI_REQUEST_BLOCK>() as u16;
            fields.Function = srb_function::EXECUTE_SCSI;
            fields.Lun = lun;
            fields.CdbLength = cdb_len as u8;
            fields.Cdb = cdb;
            fields.SrbFlags = if data_len == 0 { 0 } else { SRB_FLAGS_DATA_IN };
            fields.DataTransferLength = data_len as u32;
            fields.TimeOutValue = TIMEOUT_S;
            fields.DataBuffer = if data_len == 0 {
                null_mut()
            } else {
                data.cast()
            };
            fields.SenseInfoBuffer = sense.cast();
            fields.SenseInfoBufferLength = SENSE_LEN as u8;
            fields.SrbExtension = if extension_size == 0 {
                null_mut()
            } else {
                srb_extension.cast()
            };
        }
        self.current.store(srb, Ordering::Release);
        // SAFETY: the miniport's HwStartIo on its extension with a complete SRB, no lock held;
        // the SRB and its buffers are the miniport's until RequestComplete.
        unsafe { (adapter.miniport().routines.start_io)(adapter.extension(), srb) };
        let timeout = nt::relative_ms(u64::from(TIMEOUT_S) * 1000);
        let mut reset = false;
        while !self.current.load(Ordering::Acquire).is_null() {
            // SAFETY: the scanner's event, set by `completed`.
            let waited = unsafe {
                nt::KeWaitForSingleObject(
                    self.done.get().cast(),
                    nt::EXECUTIVE,
                    nt::KERNEL_MODE,
                    0,
                    if reset { core::ptr::null() } else { &timeout },
                )
            };
            if waited != nt::STATUS_SUCCESS && !reset {
                log!(
                    "LUN %u: SRB %p not back in %u s: HwResetBus",
                    u32::from(lun),
                    srb,
                    TIMEOUT_S
                );
                reset = true;
                // SAFETY: the miniport's HwResetBus on its extension, path 0.
                unsafe { (adapter.miniport().routines.reset_bus)(adapter.extension(), 0) };
            }
        }
        let mut reply = Reply {
            // SAFETY: the SRB is back with us (RequestComplete), its status written.
            srb_status: unsafe { (*srb).SrbStatus } & 0x3F,
            data: [0; 64],
        };
        // SAFETY: the SRB is back: its data buffer holds at least 64 bytes (DATA_LEN).
        unsafe { core::ptr::copy_nonoverlapping(data, reply.data.as_mut_ptr(), reply.data.len()) };
        // SAFETY: the block allocated above; the miniport gave the SRB back.
        unsafe { nt_imports::ntoskrnl::ExFreePoolWithTag(block.cast(), POOL_TAG) };
        Some(reply)
    }

    /// INQUIRY on every LUN; a disk not seen before (or seen with another serial number) gets
    /// READ CAPACITY and a READ of block 0.
    fn scan(&self, adapter: &Adapter, seen: &mut [Seen; LUNS as usize]) {
        for lun in 0..LUNS {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let inquiry = Command::Inquiry {
                evpd: false,
                page: 0,
                alloc: 36,
            };
            let disk = self
                .execute(adapter, lun, &inquiry, 36)
                .filter(|r| r.srb_status == srb_status::SUCCESS)
                .and_then(|r| parse_inquiry(&r.data))
                .is_some_and(|i| i.qualifier == 0 && i.device_type == DISK);
            let now = disk.then(|| self.serial(adapter, lun));
            let slot = &mut seen[usize::from(lun)];
            match (*slot, now) {
                (None, Some(_)) => self.first_read(adapter, lun),
                (Some(before), Some(serial)) if before != serial => {
                    log!("LUN %u: replaced by another disk", u32::from(lun));
                    self.first_read(adapter, lun);
                }
                (Some(_), None) => log!("LUN %u: gone", u32::from(lun)),
                _ => {}
            }
            *slot = now;
        }
    }

    /// The serial number of the disk at `lun` (VPD 0x80), zero-padded; zeros if it has none.
    fn serial(&self, adapter: &Adapter, lun: u8) -> [u8; SERIAL_LEN] {
        let page = Command::Inquiry {
            evpd: true,
            page: VPD_SERIAL,
            alloc: 64,
        };
        let mut serial = [0; SERIAL_LEN];
        if let Some(reply) = self
            .execute(adapter, lun, &page, 64)
            .filter(|r| r.srb_status == srb_status::SUCCESS)
            && let Some(body) = parse_vpd_pages(&reply.data, VPD_SERIAL)
        {
            let len = body.len().min(SERIAL_LEN);
            serial[..len].copy_from_slice(&body[..len]);
        }
        serial
    }

    fn first_read(&self, adapter: &Adapter, lun: u8) {
        let Some(capacity) = self
            .execute(adapter, lun, &Command::ReadCapacity10, 8)
            .filter(|r| r.srb_status == srb_status::SUCCESS)
            .and_then(|r| parse_read_capacity10(&r.data))
        else {
            log!("LUN %u: disk, READ CAPACITY failed", u32::from(lun));
            return;
        };
        let block = capacity.block_size as usize;
        if block == 0 || block > DATA_LEN {
            log!(
                "LUN %u: disk with %u-byte blocks: not read",
                u32::from(lun),
                capacity.block_size
            );
            return;
        }
        let read = Command::Read(Transfer {
            lba: 0,
            blocks: 1,
            fua: false,
        });
        let status = self
            .execute(adapter, lun, &read, block)
            .map_or(0xFF, |r| u32::from(r.srb_status));
        log!(
            "LUN %u: disk, %u blocks of %u bytes; READ of block 0: SRB status %#x",
            u32::from(lun),
            (capacity.last_lba + 1) as u32,
            capacity.block_size,
            status
        );
    }
}

/// The scan thread: scans whenever asked, until told to stop.
unsafe extern "system" fn run(context: *mut c_void) {
    // SAFETY: `start` passed its adapter, which outlives the thread (`stop` joins it first).
    let adapter = unsafe { &*context.cast::<Adapter>() };
    let scanner = &adapter.scanner;
    let mut seen: [Seen; LUNS as usize] = [None; LUNS as usize];
    loop {
        // SAFETY: the scanner's event, set by `rescan` (and initially).
        unsafe {
            nt::KeWaitForSingleObject(
                scanner.rescan.get().cast(),
                nt::EXECUTIVE,
                nt::KERNEL_MODE,
                0,
                core::ptr::null(),
            )
        };
        if scanner.stopping.load(Ordering::Acquire) {
            break;
        }
        scanner.scan(adapter, &mut seen);
    }
    // SAFETY: ends this system thread.
    unsafe { nt::PsTerminateSystemThread(nt::STATUS_SUCCESS) };
}
