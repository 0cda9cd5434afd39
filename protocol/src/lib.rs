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

mod data;
mod event;
mod ioctl;
mod lun;
mod reply;
mod request;
pub mod status;

pub use status::refusal;

pub use data::{
    AttachReply, AttachRequest, Commit, CommitRequest, CommitResult, DataOp, Descriptor,
    DescriptorFlags, FETCH_PREFIX, FetchFlags, FetchReply, FetchReplyWriter, FetchRequest, Fetched,
    MAX_DESCRIPTORS, MAX_RESULTS, MAX_TRANSFER, ScsiStatus, UnmapRange, commit_head_size,
    encode_commit, encode_commit_head, fetch_reply_size,
};
pub use event::{EventKind, EventRecord};
pub use ioctl::{IOCTL_MINIPORT_PROCESS_SERVICE_IRP, ctl_code};
pub use lun::{
    DEFAULT_QUEUE_DEPTH, LunCreateReply, LunCreateRequest, LunEntry, LunFlags, LunListReply,
    LunRemoveRequest, LunSpec, MAX_LUNS, MAX_QUEUE_DEPTH,
};
pub use reply::{
    DiscoverReply, FireReply, Records, Reply, ReplyError, ReplyEvents, ReplyHeader, StatsReply,
    WaitFlags, WaitReply, WaitReplyWriter, decode_reply, encode_attach_reply,
    encode_discover_reply, encode_fire_reply, encode_lun_create_reply, encode_lun_list_reply,
    encode_lun_remove_reply, encode_stats_reply, wait_reply_len,
};
pub use request::{
    CURSOR_NOW, DISCOVER_DELAY_MS_MAX, DecodeError, DiscoverRequest, FireRequest, Header,
    MAX_REQUEST_SIZE, Opcode, Request, WaitRequest, decode_request, encode_request,
};

/// The protocol version this crate speaks. A request with another version is refused with
/// `STATUS_REVISION_MISMATCH`; the tester reports it as a driver/tool version mismatch.
/// Version 2 adds the virtual-disk records (docs/DATAPATH.md); version 1 had only the event
/// channel's four opcodes, whose records are unchanged.
pub const VERSION: u16 = 2;
