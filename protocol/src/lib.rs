//! The wire ABI of revcall's reverse-callback channel.
//!
//! A caller sends `IOCTL_MINIPORT_PROCESS_SERVICE_IRP` to the adapter with a request record in
//! the input buffer; the driver answers with a reply record in the output buffer. Both buffers
//! are the same METHOD_BUFFERED `SystemBuffer`, so the driver decodes the whole request before
//! it writes a byte of the reply.
//!
//! Every record is little-endian, `repr(C)`, padded by explicit `reserved` fields that must be
//! zero, and starts with a [`Header`] `{size, version, opcode}`. Records are read by copy
//! (zerocopy's `read_from_prefix`), so no buffer alignment is assumed: user-mode buffers need
//! not be aligned, and the driver never forms a reference into one.
//!
//! This crate is `no_std` and allocation-free: the driver, storsim and the tester all use it.
#![no_std]

#[cfg(test)]
extern crate std;

mod event;
mod ioctl;
mod reply;
mod request;
pub mod status;

pub use status::refusal;

pub use event::{EventKind, EventRecord};
pub use ioctl::{IOCTL_MINIPORT_PROCESS_SERVICE_IRP, ctl_code};
pub use reply::{
    DiscoverReply, FireReply, Reply, ReplyError, ReplyEvents, ReplyHeader, StatsReply, WaitFlags,
    WaitReply, WaitReplyWriter, decode_reply, encode_discover_reply, encode_fire_reply,
    encode_stats_reply,
};
pub use request::{
    CURSOR_NOW, DISCOVER_DELAY_MS_MAX, DecodeError, DiscoverRequest, FireRequest, Header, Opcode,
    Request, WaitRequest, decode_request, encode_request,
};

/// The protocol version this crate speaks. A request with another version is refused with
/// `STATUS_REVISION_MISMATCH`; the tester reports it as a driver/tool version mismatch.
pub const VERSION: u16 = 1;
