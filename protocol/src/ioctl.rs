//! The I/O control code of the service-IRP channel.

/// `CTL_CODE(DeviceType, Function, Method, Access)` from the WDK's `devioctl.h`.
pub const fn ctl_code(device_type: u32, function: u32, method: u32, access: u32) -> u32 {
    (device_type << 16) | (access << 14) | (function << 2) | method
}

const FILE_DEVICE_CONTROLLER: u32 = 0x4;
const METHOD_BUFFERED: u32 = 0;
const FILE_READ_ACCESS: u32 = 1;
const FILE_WRITE_ACCESS: u32 = 2;

/// `IOCTL_MINIPORT_PROCESS_SERVICE_IRP` (ntddscsi.h): METHOD_BUFFERED, and only handles opened
/// for both read and write may send it.
pub const IOCTL_MINIPORT_PROCESS_SERVICE_IRP: u32 = ctl_code(
    FILE_DEVICE_CONTROLLER,
    0x040E,
    METHOD_BUFFERED,
    FILE_READ_ACCESS | FILE_WRITE_ACCESS,
);

const _: () = assert!(IOCTL_MINIPORT_PROCESS_SERVICE_IRP == 0x0004_D038);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_matches_windows_sdk_value() {
        // windows-sys: IOCTL_MINIPORT_PROCESS_SERVICE_IRP = 315448.
        assert_eq!(IOCTL_MINIPORT_PROCESS_SERVICE_IRP, 315_448);
        assert_eq!(IOCTL_MINIPORT_PROCESS_SERVICE_IRP & 3, METHOD_BUFFERED);
        // IOCTL_SCSI_MINIPORT is function 0x402 of the same device type.
        assert_eq!(ctl_code(4, 0x402, 0, 3), 0x0004_D008);
    }
}
