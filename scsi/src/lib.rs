//! The SCSI block-device command set a revcall virtual disk speaks, both ways: the driver
//! decodes the CDBs Storport hands HwStartIo and answers what identifies a disk itself
//! (INQUIRY and its VPD pages, READ CAPACITY, MODE SENSE, REPORT LUNS, …); storsim's disk
//! class model builds the CDBs disk.sys and classpnp send and parses the replies.
//!
//! Layouts are those of SPC/SBC as the WDK's `scsi.h` declares them, collected with their
//! sources in the reference's DISK.md §5 (opcodes, §5.1 INQUIRY, §5.2 VPD pages, §5.3 READ
//! CAPACITY, §5.4 MODE SENSE, §5.5 REPORT LUNS, §5.6 READ/WRITE, §5.7 SYNCHRONIZE CACHE and
//! UNMAP, §5.8 ASC/ASCQ, §5.9 fixed sense). Fixed-size records are zerocopy structs with
//! big-endian fields, so each layout is declared once and checked by the compiler; nothing
//! here is `unsafe`.
//!
//! `no_std` and allocation-free: it runs inside HwStartIo at DISPATCH_LEVEL.
#![no_std]

#[cfg(test)]
extern crate std;

mod answer;
mod cdb;
mod parse;
mod sense;
mod unmap;

pub use answer::{
    Identity, MAX_UNMAP_DESCRIPTORS, PRODUCT, REVISION, VENDOR, answer, check_range, naa,
};
pub use cdb::{CdbBlock, Command, PageControl, Transfer, decode, decode_block, encode};
pub use parse::{
    Capacity, Inquiry, ModeInfo, parse_inquiry, parse_mode_sense, parse_read_capacity10,
    parse_read_capacity16, parse_report_luns, parse_vpd_pages,
};
pub use sense::{FIXED_SENSE_LEN, Sense, SenseKey};
pub use unmap::{UnmapRanges, unmap_ranges, write_unmap_list};

/// The opcodes this crate knows (SPC/SBC; DISK.md §5).
pub mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ6: u8 = 0x08;
    pub const WRITE6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SENSE6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const MEDIUM_REMOVAL: u8 = 0x1E;
    pub const READ_CAPACITY10: u8 = 0x25;
    pub const READ10: u8 = 0x28;
    pub const WRITE10: u8 = 0x2A;
    pub const VERIFY10: u8 = 0x2F;
    pub const SYNCHRONIZE_CACHE10: u8 = 0x35;
    pub const UNMAP: u8 = 0x42;
    pub const MODE_SENSE10: u8 = 0x5A;
    pub const READ16: u8 = 0x88;
    pub const WRITE16: u8 = 0x8A;
    pub const VERIFY16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE16: u8 = 0x91;
    pub const SERVICE_ACTION_IN16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const READ12: u8 = 0xA8;
    pub const WRITE12: u8 = 0xAA;
    /// SERVICE ACTION IN(16)'s READ CAPACITY(16).
    pub const SA_READ_CAPACITY16: u8 = 0x10;
}
