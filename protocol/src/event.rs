//! Event records: what a WAIT delivers.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// One event as it travels in a WAIT reply. 32 bytes.
///
/// `seq` numbers every event an adapter publishes, from 1 without gaps, so a waiter can tell
/// exactly which events it saw and which it missed.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct EventRecord {
    pub seq: u64,
    /// An [`EventKind`] value.
    pub kind: u32,
    pub reserved: u32,
    /// Kind-specific: FIRE's `code`, DISCOVER's id, the LUN.
    pub arg0: u64,
    /// Kind-specific: FIRE's `value`, the number of DISCOVER requests a discovery answered, a
    /// new LUN's capacity in bytes.
    pub arg1: u64,
}

const _: () = assert!(size_of::<EventRecord>() == 32);

impl EventRecord {
    /// An all-zero record (`seq` 0 is never a real event), for filling fixed arrays in `const`.
    pub const EMPTY: Self = Self {
        seq: 0,
        kind: 0,
        reserved: 0,
        arg0: 0,
        arg1: 0,
    };
}

/// What happened.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A caller's FIRE request (test injection).
    Injected = 1,
    /// A DISCOVER operation finished on the Storport timer.
    DiscoveryComplete = 2,
    /// HwInitialize ran: the adapter is up.
    AdapterStarted = 3,
    /// `ScsiStopAdapter`: the adapter is stopped; parked requests stay parked.
    AdapterStopped = 4,
    /// `ScsiRestartAdapter`.
    AdapterRestarted = 5,
    /// `ScsiAdapterSurpriseRemoval`: the adapter is gone; this is the last event.
    SurpriseRemoved = 6,
    /// `HwCompleteServiceIrp`: the adapter is being removed; this is the last event.
    AdapterRemoved = 7,
    /// LUN_CREATE: LUN `arg0` exists, `arg1` bytes; Storport was told the bus changed.
    LunCreated = 8,
    /// LUN_REMOVE: LUN `arg0` is gone; Storport was told the bus changed.
    LunRemoved = 9,
    /// A server ATTACHed to LUN `arg0`, which now has `arg1` servers.
    ServerAttached = 10,
    /// A server of LUN `arg0` died (its ATTACH was cancelled); the `arg1` SRBs it held went
    /// back to the LUN's queue. With no server left the LUN's grace period starts.
    ServerLost = 11,
    /// LUN `arg0`'s grace period ended with no server: its `arg1` queued SRBs, and its I/O
    /// from now until a server attaches, fail NOT READY.
    LunOrphaned = 12,
    /// Storport reset LUN `arg0` (`u64::MAX`: the whole bus, HwResetBus): the `arg1` SRBs
    /// queued for or held by servers were completed (ABORTED or BUS_RESET). Storport resets
    /// what timed out: a server too slow, or stalled.
    Reset = 13,
}

impl EventKind {
    /// Whether no event can follow this one.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::SurpriseRemoved | Self::AdapterRemoved)
    }
}

impl TryFrom<u32> for EventKind {
    type Error = u32;

    fn try_from(value: u32) -> Result<Self, u32> {
        Ok(match value {
            1 => Self::Injected,
            2 => Self::DiscoveryComplete,
            3 => Self::AdapterStarted,
            4 => Self::AdapterStopped,
            5 => Self::AdapterRestarted,
            6 => Self::SurpriseRemoved,
            7 => Self::AdapterRemoved,
            8 => Self::LunCreated,
            9 => Self::LunRemoved,
            10 => Self::ServerAttached,
            11 => Self::ServerLost,
            12 => Self::LunOrphaned,
            13 => Self::Reset,
            other => return Err(other),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_values_are_refused() {
        for raw in 0..16u32 {
            match EventKind::try_from(raw) {
                Ok(kind) => assert_eq!(kind as u32, raw),
                Err(v) => {
                    assert_eq!(v, raw);
                    assert!(raw == 0 || raw > 13);
                }
            }
        }
        assert!(EventKind::AdapterRemoved.is_final());
        assert!(!EventKind::Injected.is_final());
    }
}
