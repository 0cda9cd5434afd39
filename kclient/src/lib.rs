//! revcall-kclient: the kernel-mode side of revcall's event channel, for any Rust WDM driver.
//!
//! `IOCTL_MINIPORT_PROCESS_SERVICE_IRP` is documented for "a user-mode application or
//! kernel-mode driver". A kernel-mode caller has no overlapped I/O: it owns an IRP, lends it to
//! the adapter, and learns the outcome in its IoCompletion routine, at IRQL ≤ DISPATCH_LEVEL in
//! whatever thread completed it. This crate is that caller, written once:
//!
//! * `Adapter` (driver target): the adapter's device object from its name
//!   (IoGetDeviceObjectPointer), the FILE_OBJECT reference held while the caller uses it and
//!   dropped once; `Adapter::is_revcall` asks it for STATS, so a driver can tell revcall's
//!   adapter from the other Storport adapters of the machine.
//! * `Subscription` (driver target): one IRP allocated once with the adapter's StackSize and
//!   one nonpaged buffer; each WAIT is IoReuseIrp + a METHOD_BUFFERED device control +
//!   IoCallDriver. The completion routine decodes the reply ([`Progress`]), hands the events to
//!   the caller's [`Sink`], returns STATUS_MORE_PROCESSING_REQUIRED and re-arms from a work
//!   item at PASSIVE_LEVEL (Storport dispatches service IRPs at PASSIVE_LEVEL, and re-arming
//!   inside the completion routine would recurse once per synchronous completion).
//!   `Subscription::stop` cancels the IRP and waits for it to come back before freeing it.
//! * [`Progress`] and [`Stats`] (any target): the cursor, the exact `lost` accounting and the
//!   verdict on each completion, pure and unit-tested on the host; storsim reads a client
//!   driver's `Stats` through the same type.
//!
//! Not (yet) here: target-device notification (IoRegisterPlugPlayNotification), so a caller
//! cannot let go of the adapter on GUID_TARGET_DEVICE_QUERY_REMOVE and an orderly removal may
//! wait for it to stop; and retries: the adapter's refusals under load (STATUS_QUOTA_EXCEEDED
//! at its parked-request cap, STATUS_INSUFFICIENT_RESOURCES) end the subscription
//! ([`End::Failed`]) rather than re-arming later.
#![cfg_attr(target_os = "windows", no_std)]

mod progress;

pub use progress::{End, Progress, Snapshot, Stats, Step};

#[cfg(target_os = "windows")]
mod adapter;
#[cfg(target_os = "windows")]
mod request;
#[cfg(target_os = "windows")]
mod subscription;

#[cfg(target_os = "windows")]
pub use adapter::Adapter;
#[cfg(target_os = "windows")]
pub use subscription::{Options, Subscription};

/// What the subscriber does with what arrives. Called from the completion routine: IRQL ≤
/// DISPATCH_LEVEL, an arbitrary thread, never two calls at once for one subscription.
pub trait Sink: Sync {
    /// The events of one reply, in sequence order; `lost` events the adapter no longer held
    /// came before the first of them.
    fn events(&self, events: revcall_protocol::ReplyEvents<'_>, lost: u64);
    /// The subscription ended; nothing is delivered after this.
    fn ended(&self, end: End);
}
