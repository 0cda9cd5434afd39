//! Sense data: why a command ended in CHECK CONDITION (DISK.md §5.8, §5.9).

/// Fixed-format sense data is 18 bytes (classpnp's SENSE_BUFFER_SIZE).
pub const FIXED_SENSE_LEN: usize = 18;

/// SPC sense keys.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    VolumeOverflow = 0xD,
    Miscompare = 0xE,
}

impl TryFrom<u8> for SenseKey {
    type Error = u8;

    /// A key a server sends is checked here: 0xC is obsolete and above 0xF is not a key.
    fn try_from(value: u8) -> Result<Self, u8> {
        Ok(match value {
            0x0 => Self::NoSense,
            0x1 => Self::RecoveredError,
            0x2 => Self::NotReady,
            0x3 => Self::MediumError,
            0x4 => Self::HardwareError,
            0x5 => Self::IllegalRequest,
            0x6 => Self::UnitAttention,
            0x7 => Self::DataProtect,
            0x8 => Self::BlankCheck,
            0x9 => Self::VendorSpecific,
            0xA => Self::CopyAborted,
            0xB => Self::AbortedCommand,
            0xD => Self::VolumeOverflow,
            0xE => Self::Miscompare,
            other => return Err(other),
        })
    }
}

/// A sense key with its additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    const fn new(key: SenseKey, asc: u8, ascq: u8) -> Self {
        Self { key, asc, ascq }
    }

    pub const INVALID_OPCODE: Self = Self::new(SenseKey::IllegalRequest, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Self = Self::new(SenseKey::IllegalRequest, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Self = Self::new(SenseKey::IllegalRequest, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Self = Self::new(SenseKey::IllegalRequest, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Self =
        Self::new(SenseKey::IllegalRequest, 0x26, 0x00);
    pub const WRITE_PROTECTED: Self = Self::new(SenseKey::DataProtect, 0x27, 0x00);
    pub const UNRECOVERED_READ_ERROR: Self = Self::new(SenseKey::MediumError, 0x11, 0x00);
    pub const WRITE_ERROR: Self = Self::new(SenseKey::MediumError, 0x0C, 0x00);
    pub const NOT_READY_BECOMING_READY: Self = Self::new(SenseKey::NotReady, 0x04, 0x01);
    /// classpnp does not retry it: for a LUN whose server is gone (docs/DATAPATH.md §3).
    pub const NOT_READY_MANUAL_INTERVENTION: Self = Self::new(SenseKey::NotReady, 0x04, 0x03);
    pub const POWER_ON_RESET: Self = Self::new(SenseKey::UnitAttention, 0x29, 0x00);
    pub const CAPACITY_CHANGED: Self = Self::new(SenseKey::UnitAttention, 0x2A, 0x09);
    pub const INTERNAL_TARGET_FAILURE: Self = Self::new(SenseKey::HardwareError, 0x44, 0x00);

    /// Writes fixed-format sense (response code 0x70, current error) into `out`, cut to its
    /// length; returns the bytes written.
    pub fn write_fixed(&self, out: &mut [u8]) -> usize {
        let mut sense = [0u8; FIXED_SENSE_LEN];
        sense[0] = 0x70;
        sense[2] = self.key as u8;
        // Additional sense length: the bytes after byte 7.
        sense[7] = (FIXED_SENSE_LEN - 8) as u8;
        sense[12] = self.asc;
        sense[13] = self.ascq;
        let n = out.len().min(FIXED_SENSE_LEN);
        out[..n].copy_from_slice(&sense[..n]);
        n
    }

    /// Reads fixed (0x70/0x71) or descriptor (0x72/0x73) format sense, as classpnp does.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let (key, asc, ascq) = match bytes.first()? & 0x7F {
            0x70 | 0x71 => (*bytes.get(2)? & 0x0F, *bytes.get(12)?, *bytes.get(13)?),
            0x72 | 0x73 => (*bytes.get(1)? & 0x0F, *bytes.get(2)?, *bytes.get(3)?),
            _ => return None,
        };
        Some(Self {
            key: SenseKey::try_from(key).ok()?,
            asc,
            ascq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_sense_has_the_documented_layout() {
        let mut out = [0xEEu8; 32];
        assert_eq!(Sense::LBA_OUT_OF_RANGE.write_fixed(&mut out), 18);
        assert_eq!(out[0], 0x70);
        assert_eq!(out[2], 0x05);
        assert_eq!(out[7], 10);
        assert_eq!((out[12], out[13]), (0x21, 0x00));
        assert_eq!(out[18], 0xEE, "nothing past 18 bytes");
        assert_eq!(Sense::parse(&out), Some(Sense::LBA_OUT_OF_RANGE));
        let mut short = [0u8; 8];
        assert_eq!(Sense::WRITE_PROTECTED.write_fixed(&mut short), 8);
    }

    #[test]
    fn descriptor_sense_parses_and_keys_are_checked() {
        assert_eq!(
            Sense::parse(&[0x72, 0x03, 0x11, 0x00]),
            Some(Sense::UNRECOVERED_READ_ERROR)
        );
        assert_eq!(Sense::parse(&[0x72, 0x0C, 0, 0]), None, "0xC is not a key");
        assert_eq!(Sense::parse(&[0x00; 18]), None);
        for raw in 0..=0xFFu8 {
            if let Ok(key) = SenseKey::try_from(raw) {
                assert_eq!(key as u8, raw);
            } else {
                assert!(raw == 0xC || raw > 0xE);
            }
        }
    }
}
