//! Every NTSTATUS value the project uses, written once ([MS-ERREF] 2.3.1).
//!
//! The kernel types a status as `NTSTATUS` (a signed 32-bit value: what a driver returns and
//! stores in `IoStatus.Status`); user mode reads the same bits as a DWORD
//! (`OVERLAPPED.Internal`). One table makes both views, so a value cannot differ between them,
//! and names each status for people.

use crate::NTSTATUS;

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        $( $(#[$doc])* pub const $name: NTSTATUS = $value as u32 as NTSTATUS; )*

        /// The same values as user mode and the host tools see them (a DWORD).
        pub mod user {
            $( $(#[$doc])* pub const $name: u32 = $value; )*
        }

        /// The status's symbolic name (`STATUS_CANCELLED`), if it is one of the table's.
        pub const fn name(status: u32) -> Option<&'static str> {
            match status {
                $( $value => Some(stringify!($name)), )*
                _ => None,
            }
        }
    };
}

statuses! {
    STATUS_SUCCESS = 0x0000_0000;
    /// A wait's timeout expired.
    STATUS_TIMEOUT = 0x0000_0102;
    /// The request goes on asynchronously (Storport's answer to every service IRP).
    STATUS_PENDING = 0x0000_0103;
    STATUS_INVALID_HANDLE = 0xC000_0008;
    /// A malformed request or argument.
    STATUS_INVALID_PARAMETER = 0xC000_000D;
    /// A LUN that does not exist.
    STATUS_NO_SUCH_DEVICE = 0xC000_000E;
    /// An unknown opcode, or a control code the device does not serve.
    STATUS_INVALID_DEVICE_REQUEST = 0xC000_0010;
    /// A completion routine keeps the IRP (it is the caller's again).
    STATUS_MORE_PROCESSING_REQUIRED = 0xC000_0016;
    STATUS_ACCESS_DENIED = 0xC000_0022;
    /// The output buffer cannot hold the reply.
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023;
    /// A per-adapter limit is reached (parked requests).
    STATUS_QUOTA_EXCEEDED = 0xC000_0044;
    /// A new LUN's serial number or unique id is another LUN's.
    STATUS_OBJECT_NAME_COLLISION = 0xC000_0035;
    /// No object has that name (IoGetDeviceObjectPointer of a device that does not exist).
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC000_0034;
    /// The device is being removed (Storport's rundown is closed).
    STATUS_DELETE_PENDING = 0xC000_0056;
    /// The request's revision (protocol or structure version) is not the receiver's.
    STATUS_REVISION_MISMATCH = 0xC000_0059;
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A;
    /// A request the handle's state does not allow (FETCH or COMMIT without an ATTACH).
    STATUS_INVALID_DEVICE_STATE = 0xC000_0184;
    /// A COMMIT's READ data is not the size the SRB asked for.
    STATUS_INVALID_BUFFER_SIZE = 0xC000_0206;
    /// A COMMIT names a tag the driver never handed out, or one already committed.
    STATUS_NOT_FOUND = 0xC000_0225;
    STATUS_NOT_SUPPORTED = 0xC000_00BB;
    /// The request was cancelled (CancelIoEx, thread or process exit).
    STATUS_CANCELLED = 0xC000_0120;
    /// The device was removed.
    STATUS_DEVICE_REMOVED = 0xC000_02B6;
}

/// A status as people read it: `STATUS_CANCELLED`, or its hex value if the table has no name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Named(pub u32);

impl core::fmt::Display for Named {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match name(self.0) {
            Some(name) => f.write_str(name),
            None => write!(f, "{:#010x}", self.0),
        }
    }
}

/// NT_ERROR: severity "error" (the I/O manager then copies no output back).
pub const fn is_error(status: u32) -> bool {
    status >> 30 == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_views_and_the_names_agree() {
        assert_eq!(STATUS_CANCELLED as u32, user::STATUS_CANCELLED);
        assert_eq!(user::STATUS_CANCELLED, 0xC000_0120);
        assert_eq!(
            name(user::STATUS_DEVICE_REMOVED),
            Some("STATUS_DEVICE_REMOVED")
        );
        assert_eq!(name(0x1234_5678), None);
        assert!(is_error(user::STATUS_CANCELLED) && !is_error(user::STATUS_PENDING));
    }
}
