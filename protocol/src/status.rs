//! The NTSTATUS values a service IRP can complete with, and what each means on this channel.
//!
//! Values from [MS-ERREF] 2.3.1. User mode sees them raw in `OVERLAPPED.Internal`.

pub const STATUS_SUCCESS: u32 = 0x0000_0000;
/// Storport's return from the dispatch of every service IRP.
pub const STATUS_PENDING: u32 = 0x0000_0103;
/// Malformed request: truncated, size field wrong, reserved bits set, argument out of range,
/// or no buffer at all.
pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
/// Unknown opcode, or an I/O control code other than the service IOCTL.
pub const STATUS_INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
/// The output buffer cannot hold the reply (a WAIT needs room for one event).
pub const STATUS_BUFFER_TOO_SMALL: u32 = 0xC000_0023;
/// The parked-request cap of this adapter is reached.
pub const STATUS_QUOTA_EXCEEDED: u32 = 0xC000_0044;
/// The request's protocol version is not this driver's.
pub const STATUS_REVISION_MISMATCH: u32 = 0xC000_0059;
/// FIRE while event injection is disabled by the `EnableFireInjection` registry value.
pub const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;
/// The parked request was cancelled (CancelIoEx, thread or process exit).
pub const STATUS_CANCELLED: u32 = 0xC000_0120;
/// The adapter was removed or surprise-removed before this request arrived.
pub const STATUS_DEVICE_REMOVED: u32 = 0xC000_02B6;
/// Storport's answer once the adapter's removal rundown has started.
pub const STATUS_DELETE_PENDING: u32 = 0xC000_0056;

/// Whether `status` is an error (severity bits 11): the I/O manager then copies no output back.
pub const fn is_error(status: u32) -> bool {
    status >> 30 == 3
}
