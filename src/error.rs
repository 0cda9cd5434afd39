//! NTSTATUS as a type, and how request errors map onto it.

use revcall_protocol::{DecodeError, status};

/// An NTSTATUS value.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const SUCCESS: Self = Self(status::STATUS_SUCCESS);
    pub const INVALID_PARAMETER: Self = Self(status::STATUS_INVALID_PARAMETER);
    pub const INVALID_DEVICE_REQUEST: Self = Self(status::STATUS_INVALID_DEVICE_REQUEST);
    pub const BUFFER_TOO_SMALL: Self = Self(status::STATUS_BUFFER_TOO_SMALL);
    pub const QUOTA_EXCEEDED: Self = Self(status::STATUS_QUOTA_EXCEEDED);
    pub const REVISION_MISMATCH: Self = Self(status::STATUS_REVISION_MISMATCH);
    pub const NOT_SUPPORTED: Self = Self(status::STATUS_NOT_SUPPORTED);
    pub const CANCELLED: Self = Self(status::STATUS_CANCELLED);
    pub const DEVICE_REMOVED: Self = Self(status::STATUS_DEVICE_REMOVED);
    pub const NO_SUCH_DEVICE: Self = Self(status::STATUS_NO_SUCH_DEVICE);
    pub const OBJECT_NAME_COLLISION: Self = Self(status::STATUS_OBJECT_NAME_COLLISION);
    pub const INVALID_DEVICE_STATE: Self = Self(status::STATUS_INVALID_DEVICE_STATE);
    pub const INVALID_BUFFER_SIZE: Self = Self(status::STATUS_INVALID_BUFFER_SIZE);
    pub const ACCESS_DENIED: Self = Self(status::STATUS_ACCESS_DENIED);
    pub const NOT_FOUND: Self = Self(status::STATUS_NOT_FOUND);

    /// The value as the signed `NTSTATUS` Windows declares.
    pub const fn to_ntstatus(self) -> i32 {
        self.0 as i32
    }
}

impl From<DecodeError> for Status {
    fn from(error: DecodeError) -> Self {
        Self(error.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use revcall_protocol::Opcode;

    #[test]
    fn decode_errors_map_to_documented_statuses() {
        assert_eq!(
            Status::from(DecodeError::Truncated { len: 0 }),
            Status::INVALID_PARAMETER
        );
        assert_eq!(
            Status::from(DecodeError::UnsupportedVersion { version: 9 }),
            Status::REVISION_MISMATCH
        );
        assert_eq!(
            Status::from(DecodeError::UnknownOpcode { opcode: 9 }),
            Status::INVALID_DEVICE_REQUEST
        );
        assert_eq!(
            Status::from(DecodeError::ReservedNotZero {
                opcode: Opcode::Fire
            }),
            Status::INVALID_PARAMETER
        );
        assert!(revcall_protocol::status::is_error(Status::QUOTA_EXCEEDED.0));
        assert_eq!(Status::CANCELLED.to_ntstatus(), -1_073_741_536);
    }
}
