//! The statuses a service IRP can complete with, and what each means on this channel. The
//! values themselves live once, in `storport_abi::status` (the DWORD view user mode sees).
//!
//! | status | on this channel |
//! |---|---|
//! | `STATUS_SUCCESS` | the reply is in the output buffer |
//! | `STATUS_PENDING` | Storport's return from the dispatch of every service IRP |
//! | `STATUS_INVALID_PARAMETER` | malformed request: truncated, size field wrong, reserved bits set, argument out of range, or no buffer at all |
//! | `STATUS_INVALID_DEVICE_REQUEST` | unknown opcode, or an I/O control code other than the service IOCTL |
//! | `STATUS_BUFFER_TOO_SMALL` | the output buffer cannot hold the reply (a WAIT needs room for one event) |
//! | `STATUS_QUOTA_EXCEEDED` | the parked-request cap of this adapter is reached |
//! | `STATUS_REVISION_MISMATCH` | the request's protocol version is not this driver's |
//! | `STATUS_NOT_SUPPORTED` | FIRE while event injection is disabled by `EnableFireInjection` |
//! | `STATUS_CANCELLED` | the parked request was cancelled (CancelIoEx, thread or process exit) |
//! | `STATUS_DEVICE_REMOVED` | the adapter was removed or surprise-removed before this request arrived |
//! | `STATUS_DELETE_PENDING` | Storport's answer once the adapter's removal rundown has started |
//! | `STATUS_NO_SUCH_DEVICE` | LUN_REMOVE or ATTACH of a LUN that does not exist |
//! | `STATUS_OBJECT_NAME_COLLISION` | LUN_CREATE with another LUN's serial number or unique id |
//! | `STATUS_INVALID_DEVICE_STATE` | FETCH or COMMIT on a handle with no ATTACH parked; a second ATTACH on one handle; an ATTACH with no FILE_OBJECT |
//! | `STATUS_NOT_FOUND` | COMMIT of a tag never handed out, or already committed |
//! | `STATUS_ACCESS_DENIED` | COMMIT of a tag another session fetched |
//! | `STATUS_INVALID_BUFFER_SIZE` | COMMIT whose GOOD READ data is not the size the SRB asked for, or data for a GOOD non-READ |

pub use storport_abi::status::is_error;
pub use storport_abi::status::name;
pub use storport_abi::status::user::{
    STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_DELETE_PENDING,
    STATUS_DEVICE_REMOVED, STATUS_INVALID_BUFFER_SIZE, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_NO_SUCH_DEVICE, STATUS_NOT_FOUND,
    STATUS_NOT_SUPPORTED, STATUS_OBJECT_NAME_COLLISION, STATUS_PENDING, STATUS_QUOTA_EXCEEDED,
    STATUS_REVISION_MISMATCH, STATUS_SUCCESS,
};

use crate::{DecodeError, decode_request};

impl DecodeError {
    /// The status a request that fails to decode this way is refused with (README,
    /// "Statuses"): a version mismatch and an unknown opcode have their own; every other defect
    /// is an invalid parameter.
    pub const fn status(&self) -> u32 {
        match self {
            DecodeError::UnsupportedVersion { .. } => STATUS_REVISION_MISMATCH,
            DecodeError::UnknownOpcode { .. } => STATUS_INVALID_DEVICE_REQUEST,
            DecodeError::Truncated { .. }
            | DecodeError::SizeMismatch { .. }
            | DecodeError::BadLength { .. }
            | DecodeError::ReservedNotZero { .. }
            | DecodeError::InvalidArgument { .. } => STATUS_INVALID_PARAMETER,
        }
    }
}

/// The status the driver must refuse `input` with when the caller offers `out_len` bytes for
/// the reply, or `None` if the request is well formed and fits: the oracle the malformed-input
/// tests, the torture and the fuzz target share.
pub fn refusal(input: &[u8], out_len: u32) -> Option<u32> {
    match decode_request(input) {
        Err(error) => Some(error.status()),
        Ok(request) if (out_len as usize) < request.min_reply_size() => {
            Some(STATUS_BUFFER_TOO_SMALL)
        }
        Ok(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_map_to_the_documented_statuses() {
        assert_eq!(
            DecodeError::Truncated { len: 0 }.status(),
            STATUS_INVALID_PARAMETER
        );
        assert_eq!(
            DecodeError::UnsupportedVersion { version: 9 }.status(),
            STATUS_REVISION_MISMATCH
        );
        assert_eq!(
            DecodeError::UnknownOpcode { opcode: 99 }.status(),
            STATUS_INVALID_DEVICE_REQUEST
        );
        assert_eq!(refusal(&[], 64), Some(STATUS_INVALID_PARAMETER));
    }
}
