//! The one table of what the verifier reports: the bug-check codes storsim raises (with their
//! Windows names) and the P1 values storsim defines for rules Windows has no code for.
//!
//! Every [`super::BugCheck`] takes its name from [`Code`], so a name is written once; the
//! README's table of storsim rules is checked against [`STORSIM_RULES`] by a test.

/// A bug-check code storsim raises, named as Windows names it (bugcodes.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 0x1E: an exception in kernel mode (here: an illegal instruction).
    KmodeExceptionNotHandled,
    /// 0x35: IoCallDriver with no stack location left.
    NoMoreIrpStackLocations,
    /// 0x44: an IRP completed twice.
    MultipleIrpCompleteRequests,
    /// 0x50: a fault on an address no allocation covers.
    PageFaultInNonpagedArea,
    /// 0xC1: special pool found its guard bytes changed.
    SpecialPoolDetectedMemoryCorruption,
    /// 0xC2: a bad pool request (double free, wrong tag, …).
    BadPoolCaller,
    /// 0xC4: Driver Verifier's general code; P1 says which rule.
    DriverVerifierDetectedViolation,
    /// 0xC7: a timer or DPC still queued when its memory or code goes away.
    TimerOrDpcInvalid,
    /// 0xC9: I/O verification; P1 says which rule.
    DriverVerifierIomanagerViolation,
    /// 0xCC: an access to freed special pool.
    PageFaultInFreedSpecialPool,
    /// 0xCD: an access past the end of a special-pool block.
    PageFaultBeyondEndOfAllocation,
    /// 0xCE: a driver unloaded with operations still pending (its IRP at a lower driver).
    DriverUnloadedWithoutCancellingPendingOperations,
    /// 0xD1: an invalid address touched at DISPATCH_LEVEL or above (a NULL spin lock).
    DriverIrqlNotLessOrEqual,
    /// 0xF1: Storport's own verifier (SCSI verification); P1 says which rule.
    ScsiVerifierDetectedViolation,
}

impl Code {
    /// Every code, for tables and lookups.
    pub const ALL: [Code; 14] = [
        Code::KmodeExceptionNotHandled,
        Code::NoMoreIrpStackLocations,
        Code::MultipleIrpCompleteRequests,
        Code::PageFaultInNonpagedArea,
        Code::SpecialPoolDetectedMemoryCorruption,
        Code::BadPoolCaller,
        Code::DriverVerifierDetectedViolation,
        Code::TimerOrDpcInvalid,
        Code::DriverVerifierIomanagerViolation,
        Code::PageFaultInFreedSpecialPool,
        Code::PageFaultBeyondEndOfAllocation,
        Code::DriverUnloadedWithoutCancellingPendingOperations,
        Code::DriverIrqlNotLessOrEqual,
        Code::ScsiVerifierDetectedViolation,
    ];

    /// The bug-check number.
    pub const fn value(self) -> u32 {
        match self {
            Code::KmodeExceptionNotHandled => 0x1E,
            Code::NoMoreIrpStackLocations => 0x35,
            Code::MultipleIrpCompleteRequests => 0x44,
            Code::PageFaultInNonpagedArea => 0x50,
            Code::SpecialPoolDetectedMemoryCorruption => 0xC1,
            Code::BadPoolCaller => 0xC2,
            Code::DriverVerifierDetectedViolation => 0xC4,
            Code::TimerOrDpcInvalid => 0xC7,
            Code::DriverVerifierIomanagerViolation => 0xC9,
            Code::PageFaultInFreedSpecialPool => 0xCC,
            Code::PageFaultBeyondEndOfAllocation => 0xCD,
            Code::DriverUnloadedWithoutCancellingPendingOperations => 0xCE,
            Code::DriverIrqlNotLessOrEqual => 0xD1,
            Code::ScsiVerifierDetectedViolation => 0xF1,
        }
    }

    /// The symbolic name a debugger prints.
    pub const fn name(self) -> &'static str {
        match self {
            Code::KmodeExceptionNotHandled => "KMODE_EXCEPTION_NOT_HANDLED",
            Code::NoMoreIrpStackLocations => "NO_MORE_IRP_STACK_LOCATIONS",
            Code::MultipleIrpCompleteRequests => "MULTIPLE_IRP_COMPLETE_REQUESTS",
            Code::PageFaultInNonpagedArea => "PAGE_FAULT_IN_NONPAGED_AREA",
            Code::SpecialPoolDetectedMemoryCorruption => "SPECIAL_POOL_DETECTED_MEMORY_CORRUPTION",
            Code::BadPoolCaller => "BAD_POOL_CALLER",
            Code::DriverVerifierDetectedViolation => "DRIVER_VERIFIER_DETECTED_VIOLATION",
            Code::TimerOrDpcInvalid => "TIMER_OR_DPC_INVALID",
            Code::DriverVerifierIomanagerViolation => "DRIVER_VERIFIER_IOMANAGER_VIOLATION",
            Code::PageFaultInFreedSpecialPool => "PAGE_FAULT_IN_FREED_SPECIAL_POOL",
            Code::PageFaultBeyondEndOfAllocation => "PAGE_FAULT_BEYOND_END_OF_ALLOCATION",
            Code::DriverUnloadedWithoutCancellingPendingOperations => {
                "DRIVER_UNLOADED_WITHOUT_CANCELLING_PENDING_OPERATIONS"
            }
            Code::DriverIrqlNotLessOrEqual => "DRIVER_IRQL_NOT_LESS_OR_EQUAL",
            Code::ScsiVerifierDetectedViolation => "SCSI_VERIFIER_DETECTED_VIOLATION",
        }
    }
}

/// A rule storsim checks that Windows reports under 0xC4 with a P1 of its own (storsim's P1s
/// start at 0x57000000, 'W' for "would", outside every DDI compliance rule id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub p1: u64,
    /// What the driver did, as the README's table says it.
    pub what: &'static str,
}

/// An IRP completed while a spin lock is held (SDV SpinLockSafe).
pub const SPIN_LOCK_SAFE: u64 = 0x5700_0001;
/// A service IRP completed with IoCompleteRequest instead of StorPortCompleteServiceIrp.
pub const SERVICE_IRP_BYPASSED_STORPORT: u64 = 0x5700_0002;
/// Removal cannot finish: rundown references or DPCs outlive the limit.
pub const REMOVAL_HANG: u64 = 0x5700_0003;
/// Output bytes reported in Information that the driver never wrote.
pub const UNWRITTEN_OUTPUT: u64 = 0x5700_0004;
/// An SRB completed with SRB_STATUS_PENDING (SDV StorPortStatusPending).
pub const SRB_STATUS_PENDING: u64 = 0x5700_0006;
/// HwFindAdapter's result or configuration.
pub const FIND_ADAPTER_CONFIG: u64 = 0x5700_0007;
/// Service IRPs still owned by the miniport after HwFreeAdapterResources.
pub const IRPS_LEFT_AFTER_FLUSH: u64 = 0x5700_0008;
/// A StorPortNotification type storsim does not emulate.
pub const UNEMULATED: u64 = 0x5700_0009;
/// A cancel routine returned holding the cancel spin lock (SDV CancelSpinLock).
pub const CANCEL_SPIN_LOCK_KEPT: u64 = 0x5700_000A;
/// An SRB never completed.
pub const SRB_NEVER_COMPLETED: u64 = 0x5700_000B;
/// An argument a Storport routine cannot take.
pub const BAD_ARGUMENT: u64 = 0x5700_000C;
/// An SRB completed with DataTransferLength above the request's.
pub const SRB_TRANSFER_RAISED: u64 = 0x5700_000D;
/// An SRB still pending after Storport's LUN reset and HwResetBus.
pub const SRB_PENDING_AFTER_RESET: u64 = 0x5700_000E;
/// An SRB completed while the miniport holds a spin lock of its own.
pub const SRB_COMPLETED_UNDER_LOCK: u64 = 0x5700_000F;
/// An SRB still pending when the adapter's removal is over.
pub const SRB_PENDING_AT_REMOVAL: u64 = 0x5700_0010;
/// A StorPortInitializeTimer timer the miniport did not free.
pub const TIMER_NOT_FREED: u64 = 0x5700_0011;
/// A LUN answering INQUIRY as connected that REPORT LUNS does not list.
pub const LUN_NOT_REPORTED: u64 = 0x5700_0012;

/// IoFreeIrp of an IRP a driver below still owns.
pub const IRP_FREED_IN_USE: u64 = 0x5700_0013;
/// A wait that can block, at DISPATCH_LEVEL (a completion routine's IRQL).
pub const BLOCKING_AT_DISPATCH: u64 = 0x5700_0014;
/// A PASSIVE_LEVEL-only call above PASSIVE_LEVEL.
pub const PASSIVE_ONLY: u64 = 0x5700_0015;
/// An object reference still held when its driver unloads.
pub const REFERENCE_LEAKED: u64 = 0x5700_0016;
/// IoCallDriver nested past the depth bound.
pub const CALL_DRIVER_RECURSION: u64 = 0x5700_0017;
/// A driver's own IRP completed with no completion routine taking it back.
pub const COMPLETED_PAST_TOP: u64 = 0x5700_0018;
/// An object a kernel routine cannot take.
pub const OBJECT_MISUSE: u64 = 0x5700_0019;
/// A wait without a timeout that nothing satisfies.
pub const WAIT_NEVER_SATISFIED: u64 = 0x5700_001A;

/// Every storsim-defined P1, with the sentence the README's table gives it.
pub const STORSIM_RULES: [Rule; 25] = [
    Rule {
        p1: SPIN_LOCK_SAFE,
        what: "an IRP completed while a spin lock is held (SDV SpinLockSafe)",
    },
    Rule {
        p1: SERVICE_IRP_BYPASSED_STORPORT,
        what: "a service IRP completed with IoCompleteRequest instead of StorPortCompleteServiceIrp (leaks Storport's rundown reference)",
    },
    Rule {
        p1: REMOVAL_HANG,
        what: "removal cannot finish: rundown references (parked service IRPs) or DPCs outlive the limit — Windows would hang the PnP thread",
    },
    Rule {
        p1: UNWRITTEN_OUTPUT,
        what: "output bytes reported in Information that the driver never wrote (kernel memory disclosure; runs of 4+ bytes, 8+ in outputs past 4 KiB)",
    },
    Rule {
        p1: SRB_STATUS_PENDING,
        what: "an SRB completed with SRB_STATUS_PENDING (SDV StorPortStatusPending)",
    },
    Rule {
        p1: FIND_ADAPTER_CONFIG,
        what: "HwFindAdapter's result or configuration (SpReturnValue, StorPortVirtualDevice2, StorPortFindAdapter; P2 the field offset or the return value)",
    },
    Rule {
        p1: IRPS_LEFT_AFTER_FLUSH,
        what: "service IRPs still owned by the miniport after HwFreeAdapterResources",
    },
    Rule {
        p1: UNEMULATED,
        what: "a StorPortNotification type storsim does not emulate",
    },
    Rule {
        p1: CANCEL_SPIN_LOCK_KEPT,
        what: "a cancel routine returned holding the cancel spin lock (SDV CancelSpinLock)",
    },
    Rule {
        p1: SRB_NEVER_COMPLETED,
        what: "an SRB never completed",
    },
    Rule {
        p1: BAD_ARGUMENT,
        what: "an argument a Storport routine cannot take",
    },
    Rule {
        p1: SRB_TRANSFER_RAISED,
        what: "an SRB completed with DataTransferLength above what the request asked for",
    },
    Rule {
        p1: SRB_PENDING_AFTER_RESET,
        what: "an SRB still pending after its timeout, Storport's LUN reset and HwResetBus (the reset must complete every SRB of the bus)",
    },
    Rule {
        p1: SRB_COMPLETED_UNDER_LOCK,
        what: "an SRB completed while the miniport holds a spin lock of its own (Storport's StartIo lock, held around HwResetBus, excepted)",
    },
    Rule {
        p1: SRB_PENDING_AT_REMOVAL,
        what: "an SRB still pending when the adapter's removal reaches HwFreeAdapterResources (a removal must complete every SRB, SRB_STATUS_NO_DEVICE)",
    },
    Rule {
        p1: TIMER_NOT_FREED,
        what: "a timer from StorPortInitializeTimer still allocated after HwFreeAdapterResources (StorPortFreeTimer frees it)",
    },
    Rule {
        p1: LUN_NOT_REPORTED,
        what: "a LUN answers INQUIRY as a connected device but REPORT LUNS does not list it (a removed LUN still answering)",
    },
    Rule {
        p1: IRP_FREED_IN_USE,
        what: "IoFreeIrp of an IRP a driver below still owns (not completed back to its caller)",
    },
    Rule {
        p1: BLOCKING_AT_DISPATCH,
        what: "a wait that can block (KeWaitForSingleObject with a non-zero timeout) at DISPATCH_LEVEL, where completion routines run",
    },
    Rule {
        p1: PASSIVE_ONLY,
        what: "a PASSIVE_LEVEL-only call above PASSIVE_LEVEL (IoGetDeviceObjectPointer; IoCallDriver of a service IRP, which Storport dispatches to HwProcessServiceRequest at PASSIVE_LEVEL)",
    },
    Rule {
        p1: REFERENCE_LEAKED,
        what: "a driver unloaded still holding an object reference (the FILE_OBJECT from IoGetDeviceObjectPointer never dereferenced)",
    },
    Rule {
        p1: CALL_DRIVER_RECURSION,
        what: "IoCallDriver nested past 8 calls on one thread: a completion routine sending its IRP again from inside the completion (stack exhaustion on Windows)",
    },
    Rule {
        p1: COMPLETED_PAST_TOP,
        what: "a driver's own IRP (IoAllocateIrp) completed with no completion routine returning STATUS_MORE_PROCESSING_REQUIRED",
    },
    Rule {
        p1: OBJECT_MISUSE,
        what: "an object a kernel routine cannot take: a KEVENT never initialised, an IRP not from IoAllocateIrp, a work item queued twice or uninitialised while queued, a dereference without a reference",
    },
    Rule {
        p1: WAIT_NEVER_SATISFIED,
        what: "a wait without a timeout that nothing satisfies within 30 s (the driver's thread would hang: an unload waiting for an IRP that never comes back)",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_rules_are_distinct() {
        let mut values: Vec<u32> = Code::ALL.iter().map(|c| c.value()).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(values.len(), Code::ALL.len());
        let mut p1s: Vec<u64> = STORSIM_RULES.iter().map(|r| r.p1).collect();
        p1s.sort_unstable();
        p1s.dedup();
        assert_eq!(p1s.len(), STORSIM_RULES.len());
        assert!(p1s.iter().all(|p1| p1 >> 24 == 0x57));
    }
}
