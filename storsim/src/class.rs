//! The disk class driver's side of the bus, as disk.sys and classpnp play it: after the
//! miniport's BusChangeDetected, enumerate the logical units (REPORT LUNS, then per LUN the
//! standard INQUIRY, the VPD pages it lists, READ CAPACITY (10, then 16 when it saturates) and
//! MODE SENSE of all pages), and issue block commands to a disk. Each command is an SRB in pool
//! memory through Storport's HwStartIo (`Port::execute`).
//!
//! What Storport sends after BusChangeDetected is not documented (DISK.md §3.3): WinSpd and
//! WNBD answer both REPORT LUNS and per-LUN INQUIRY, so the model sends both.
//!
//! `Port::execute` checks every completed SRB (`DataTransferLength` never above the request).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use revcall_scsi::{Command, PageControl, Sense};

use crate::machine::Machine;
use crate::miniport::Extension;
use crate::pool::SpecialPool;
use crate::port::{Direction, Outcome, Port, Srb};
use crate::verifier::{BugCheck, Code, rules};

/// One disk as the class driver sees it after enumeration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    pub lun: u8,
    pub vendor: String,
    pub product: String,
    /// VPD 0x80.
    pub serial: String,
    /// VPD 0x83's descriptors, raw.
    pub identifiers: Vec<u8>,
    /// VPD 0x00.
    pub vpd_pages: Vec<u8>,
    pub block_size: u32,
    pub block_count: u64,
    pub write_protected: bool,
    /// The caching page's WCE: flushes are sent.
    pub write_cache: bool,
    /// VPD B2's LBPU: UNMAP is sent.
    pub unmap: bool,
}

/// A command handed to HwStartIo and not yet collected ([`DiskClass::submit`]).
pub struct InFlight {
    srb: Srb,
    direction: Direction,
}

/// How one SCSI command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// `SrbStatus` without the AUTOSENSE_VALID / QUEUE_FROZEN bits.
    pub srb_status: u8,
    pub scsi_status: u8,
    /// The autosense data, when the miniport reported it valid.
    pub sense: Option<Sense>,
    /// The data the command returned (data-in), cut to `DataTransferLength`.
    pub data: Vec<u8>,
}

const SRB_STATUS_SUCCESS: u8 = 0x01;
/// The LUNs the class model probes for one REPORT LUNS did not list (SCSI-2's eight).
const GHOST_PROBE_LUNS: u8 = 8;
const SRB_STATUS_AUTOSENSE_VALID: u8 = 0x80;

/// The class driver for the adapter's one target.
pub struct DiskClass {
    machine: Arc<Machine>,
    port: Arc<Port>,
    extension: Extension,
    /// Collected SRBs kept for the next commands, when storsim's own blocks are not trapped
    /// ([`SpecialPool::DriverOnly`]): classpnp takes SRBs from a lookaside list and Storport
    /// SRB extensions from a preallocated list, so a request costs Windows no pool
    /// allocation. Four allocations and four frees per SRB were half of what the submitting
    /// CPU did in `storsim bench` once a server ran beside it, each a hold of the pool's lock
    /// the other CPU had just taken. With every block trapped (tests, tortures) each SRB is
    /// freed, so a miniport touching one after completing it faults.
    lookaside: Mutex<Vec<Srb>>,
}

/// SRBs the lookaside keeps, at most (the deepest queue `storsim bench` keeps is 128).
const LOOKASIDE_SRBS: usize = 256;

impl Drop for DiskClass {
    fn drop(&mut self) {
        let lookaside = self.lookaside.get_mut().unwrap_or_else(|p| p.into_inner());
        for srb in lookaside.drain(..) {
            self.port.free_srb(srb);
        }
    }
}

impl DiskClass {
    pub fn new(machine: Arc<Machine>, port: Arc<Port>, extension: Extension) -> Self {
        Self {
            machine,
            port,
            extension,
            lookaside: Mutex::new(Vec::new()),
        }
    }

    /// An SRB for an EXECUTE_SCSI command: one from the lookaside with the same data length,
    /// or a new one.
    fn srb(
        &self,
        address: (u8, u8),
        cdb: &[u8],
        data_len: u32,
        direction: Direction,
    ) -> Option<Srb> {
        let pool = self.machine.pool();
        let kept = {
            let mut lookaside = self.lookaside.lock().unwrap_or_else(|p| p.into_inner());
            let at = lookaside
                .iter()
                .rposition(|srb| srb.requested() == data_len);
            at.map(|at| lookaside.swap_remove(at))
        };
        match kept {
            Some(mut srb) => {
                srb.reissue(address, cdb, direction);
                Some(srb)
            }
            None => Srb::scsi(
                pool,
                address,
                cdb,
                data_len,
                direction,
                self.port.srb_extension_size(),
            ),
        }
    }

    /// Done with `srb` (Storport's again): kept for the next command, or freed.
    fn retire(&self, srb: Srb) {
        if self.machine.config().special_pool == SpecialPool::DriverOnly {
            let mut lookaside = self.lookaside.lock().unwrap_or_else(|p| p.into_inner());
            if lookaside.len() < LOOKASIDE_SRBS {
                return lookaside.push(srb);
            }
        }
        self.port.free_srb(srb);
    }

    /// Sends one command to `lun`: `data_len` bytes in (or, with `payload`, out). `None` if
    /// the SRB could not be built or was never completed (reported).
    pub fn command(
        &self,
        lun: u8,
        command: &Command,
        data_len: u32,
        payload: Option<&[u8]>,
    ) -> Option<Completion> {
        let flight = self.submit(lun, command, data_len, payload)?;
        self.finish(flight)
    }

    /// Hands one command to HwStartIo and returns with it in flight, so that a caller can
    /// keep a queue depth: [`DiskClass::first_done`] tells which of its SRBs completed,
    /// [`DiskClass::finish`] collects each. `None` if the SRB could not be built.
    pub fn submit(
        &self,
        lun: u8,
        command: &Command,
        data_len: u32,
        payload: Option<&[u8]>,
    ) -> Option<InFlight> {
        let (cdb, len) = revcall_scsi::encode(command);
        let direction = match (payload, data_len) {
            (_, 0) => Direction::None,
            (Some(_), _) => Direction::Out,
            (None, _) => Direction::In,
        };
        let srb = self.srb((0, lun), &cdb[..len], data_len, direction)?;
        if let Some(payload) = payload {
            srb.set_data(payload);
        }
        if !self.port.submit(self.extension, &srb) {
            self.retire(srb);
            return None;
        }
        Some(InFlight { srb, direction })
    }

    /// Waits (at most `limit`) until one of `flights` is completed by the miniport: its index.
    pub fn first_done(&self, flights: &[InFlight], limit: Duration) -> Option<usize> {
        let srbs: Vec<&Srb> = flights.iter().map(|flight| &flight.srb).collect();
        self.port.first_done(&srbs, limit)
    }

    /// Waits for `flight` (through Storport's reset ladder if it times out) and collects how
    /// it ended. `None` if it was never completed (reported; the SRB stays the miniport's).
    pub fn finish(&self, flight: InFlight) -> Option<Completion> {
        let InFlight { srb, direction } = flight;
        if !self.port.finish_srb(self.extension, &srb) {
            return None;
        }
        let Outcome {
            status,
            scsi_status,
            transferred,
        } = srb.outcome();
        let mut data = srb.data();
        data.truncate(transferred.min(srb.requested()) as usize);
        if status & 0x3F == SRB_STATUS_SUCCESS {
            let (moved, counter) = match direction {
                Direction::None => (0, &self.port.counters().bytes_read),
                Direction::Out => (transferred, &self.port.counters().bytes_written),
                Direction::In => (data.len() as u32, &self.port.counters().bytes_read),
            };
            counter.fetch_add(u64::from(moved), std::sync::atomic::Ordering::Relaxed);
        }
        let completion = Completion {
            srb_status: status & 0x3F,
            scsi_status,
            sense: (status & SRB_STATUS_AUTOSENSE_VALID != 0)
                .then(|| Sense::parse(&srb.sense()))
                .flatten(),
            data,
        };
        self.retire(srb);
        Some(completion)
    }

    /// A script compared `bytes` read back with what it had written (the run's summary
    /// reports the total).
    pub fn verified(&self, bytes: u64) {
        self.port
            .counters()
            .bytes_verified
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A data-in command that must succeed; its data.
    fn ask(&self, lun: u8, command: Command, data_len: u32) -> Option<Vec<u8>> {
        let done = self.command(lun, &command, data_len, None)?;
        (done.srb_status == SRB_STATUS_SUCCESS).then_some(done.data)
    }

    /// The enumeration after BusChangeDetected: every LUN REPORT LUNS lists that answers
    /// INQUIRY as a direct-access device, with its identity.
    pub fn enumerate(&self) -> Vec<Disk> {
        let Some(report) = self.ask(0, Command::ReportLuns { alloc: 512 }, 512) else {
            self.machine
                .note("disk class: REPORT LUNS failed; no disks");
            return Vec::new();
        };
        let luns: Vec<u8> = revcall_scsi::parse_report_luns(&report)
            .map(Iterator::collect)
            .unwrap_or_default();
        let disks: Vec<Disk> = luns.iter().filter_map(|&lun| self.identify(lun)).collect();
        self.no_ghosts(&luns);
        self.machine.note(format!(
            "disk class: REPORT LUNS {luns:?}; disks {:?}",
            disks.iter().map(|d| d.lun).collect::<Vec<_>>()
        ));
        disks
    }

    /// Every other LUN of the target must not answer INQUIRY as a connected device: a LUN
    /// REPORT LUNS leaves out but that still answers is one removed and still served, or one a
    /// REPORT LUNS forgot — either way Windows' view of the bus and the miniport's disagree.
    fn no_ghosts(&self, listed: &[u8]) {
        for lun in (0..GHOST_PROBE_LUNS).filter(|lun| !listed.contains(lun)) {
            let inquiry = Command::Inquiry {
                evpd: false,
                page: 0,
                alloc: 36,
            };
            let Some(data) = self.ask(lun, inquiry, 36) else {
                continue;
            };
            // Peripheral qualifier 0: a device is connected at this LUN.
            if data.first().is_some_and(|&b| b >> 5 == 0) {
                self.machine.report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [rules::LUN_NOT_REPORTED, u64::from(lun), 0, 0],
                    format!(
                        "LUN {lun} answers INQUIRY as a connected device, but REPORT LUNS does \
                         not list it (listed: {listed:?})"
                    ),
                ));
            }
        }
    }

    fn vpd(&self, lun: u8, page: u8) -> Option<Vec<u8>> {
        let data = self.ask(
            lun,
            Command::Inquiry {
                evpd: true,
                page,
                alloc: 255,
            },
            255,
        )?;
        revcall_scsi::parse_vpd_pages(&data, page).map(<[u8]>::to_vec)
    }

    fn identify(&self, lun: u8) -> Option<Disk> {
        let standard = self.ask(
            lun,
            Command::Inquiry {
                evpd: false,
                page: 0,
                alloc: 96,
            },
            96,
        )?;
        let inquiry = revcall_scsi::parse_inquiry(&standard)?;
        if inquiry.qualifier != 0 || inquiry.device_type != 0 {
            return None;
        }
        let vpd_pages = self.vpd(lun, 0x00)?;
        let serial = self.vpd(lun, 0x80)?;
        let identifiers = self.vpd(lun, 0x83)?;
        // classpnp reads B2 only when VPD 0x00 lists it (and lists it in order).
        let unmap = vpd_pages.contains(&0xB2)
            && self
                .vpd(lun, 0xB2)
                .is_some_and(|b2| b2.get(1).is_some_and(|f| f & 0x80 != 0));
        let rc10 =
            revcall_scsi::parse_read_capacity10(&self.ask(lun, Command::ReadCapacity10, 8)?)?;
        let capacity = if rc10.last_lba == u64::from(u32::MAX) {
            revcall_scsi::parse_read_capacity16(&self.ask(
                lun,
                Command::ReadCapacity16 { alloc: 32 },
                32,
            )?)?
        } else {
            rc10
        };
        let all_pages = Command::ModeSense {
            ten: false,
            dbd: true,
            page: 0x3F,
            subpage: 0,
            control: PageControl::Current,
            alloc: 255,
        };
        let mode = revcall_scsi::parse_mode_sense(&self.ask(lun, all_pages, 255)?)?;
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim_end().to_owned();
        Some(Disk {
            lun,
            vendor: text(&inquiry.vendor),
            product: text(&inquiry.product),
            serial: text(&serial),
            identifiers,
            vpd_pages,
            block_size: capacity.block_size,
            block_count: capacity.last_lba + 1,
            write_protected: mode.write_protected,
            write_cache: mode.write_cache.unwrap_or(false),
            unmap,
        })
    }
}
