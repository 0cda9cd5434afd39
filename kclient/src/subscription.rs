//! One subscription to the adapter's events: the IRP lent to the adapter, taken back in the
//! completion routine, sent again from a work item, and cancelled and awaited at the end.
//!
//! Who owns the IRP, at every moment (the `state` under `lock`):
//! * `Owned`: the subscription (before the first send, in the completion routine, in the
//!   work item until it sends again). Only the owner touches the IRP and [`Progress`].
//! * `Armed`: the adapter. [`Subscription::stop`] may only cancel it then.
//! * `Done`: home for good. The end is signalled by the work item, never by the completion
//!   routine: a queued work item keeps the driver loaded until its routine returns, while
//!   nothing keeps it loaded under a completion routine's last instructions. The work item
//!   drops the adapter's reference, then signals `returned`; nothing touches the shared block
//!   after that except `stop`, which frees it.
//!
//! `stop` sets `stopping` under the lock and cancels only an armed IRP; the work item checks
//! `stopping` under the same lock before it arms, so an IRP is either cancelled after it was
//! sent or never sent again. The IRP is reused (IoReuseIrp, which clears its Cancel flag)
//! before it is marked armed, so a cancel can never be wiped out by the reuse.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering;

use nt_imports::ntoskrnl::{
    IoAllocateIrp, IoCancelIrp, IoFreeIrp, IoInitializeWorkItem, IoQueueWorkItemEx, IoReuseIrp,
    IoSizeofWorkItem, IoUninitializeWorkItem, IofCallDriver, KeAcquireSpinLockRaiseToDpc,
    KeInitializeEvent, KeReleaseSpinLock, KeSetEvent, KeWaitForSingleObject,
};
use revcall_protocol::{Request, encode_request, wait_reply_len};
use storport_abi::status::{STATUS_INSUFFICIENT_RESOURCES, STATUS_MORE_PROCESSING_REQUIRED};
use storport_abi::{
    DELAYED_WORK_QUEUE, DEVICE_OBJECT, DRIVER_OBJECT, EXECUTIVE, IO_WORKITEM,
    IO_WORKITEM_ROUTINE_EX, IRP, KERNEL_MODE, KEVENT, KSPIN_LOCK, NOTIFICATION_EVENT, NTSTATUS,
    STATUS_SUCCESS,
};

use crate::adapter::Adapter;
use crate::progress::{End, Progress, Stats, Step};
use crate::{Sink, request};

/// How to subscribe.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The first WAIT's cursor: 0 for every event the adapter still holds,
    /// `revcall_protocol::CURSOR_NOW` for only what comes next.
    pub cursor: u64,
    /// Events per reply (the buffer is sized for them).
    pub max_events: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cursor: 0,
            max_events: 32,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Owned,
    Armed,
    Done,
}

/// Under `Shared::lock`.
struct Guarded {
    state: State,
    stopping: bool,
}

/// The nonpaged block the completion routine and the work item find through their context.
struct Shared<S> {
    lock: UnsafeCell<KSPIN_LOCK>,
    guarded: UnsafeCell<Guarded>,
    /// The IRP's owner's alone (see the module comment).
    progress: UnsafeCell<Progress>,
    returned: UnsafeCell<KEVENT>,
    /// The IRP's owner's; released by the end's work item, so a subscription that ended
    /// (FINAL, the adapter gone) no longer holds the adapter's FILE_OBJECT.
    adapter: UnsafeCell<Option<Adapter>>,
    irp: *mut IRP,
    buffer: *mut u8,
    capacity: usize,
    max_events: u32,
    work_item: *mut IO_WORKITEM,
    stats: &'static Stats,
    sink: S,
}

/// A running subscription. Dropping it stops it (and waits, so PASSIVE_LEVEL).
pub struct Subscription<S: Sink> {
    shared: NonNull<Shared<S>>,
}

// SAFETY: the handle only reaches the shared block through `stop` (and `sink`, which is
// `Sync`); the block's mutable parts are guarded as the module comment says.
unsafe impl<S: Sink + Send> Send for Subscription<S> {}
// SAFETY: as above: `&Subscription` only gives `&S`.
unsafe impl<S: Sink + Send> Sync for Subscription<S> {}

impl<S: Sink> Subscription<S> {
    /// Subscribes `sink` to `adapter`'s events and sends the first WAIT. PASSIVE_LEVEL.
    ///
    /// # Errors
    ///
    /// STATUS_INSUFFICIENT_RESOURCES when the IRP, the buffer or the block cannot be had (the
    /// adapter and the sink are dropped then).
    ///
    /// # Safety
    ///
    /// `driver` is the caller's driver object, and the caller stops (or drops) the
    /// subscription before its DriverUnload returns.
    pub unsafe fn start(
        driver: *mut DRIVER_OBJECT,
        adapter: Adapter,
        options: Options,
        stats: &'static Stats,
        sink: S,
    ) -> Result<Self, NTSTATUS> {
        const {
            assert!(
                align_of::<Shared<S>>() <= 16,
                "nonpaged pool blocks are 16-aligned"
            )
        };
        let max_events = options.max_events.max(1);
        let capacity = wait_reply_len(max_events as usize).max(revcall_protocol::MAX_REQUEST_SIZE);
        // SAFETY: plain arguments.
        let irp = unsafe { IoAllocateIrp(adapter.stack_size(), 0) };
        let buffer = request::allocate(capacity);
        // SAFETY: no arguments.
        let work_item: *mut IO_WORKITEM =
            request::allocate(unsafe { IoSizeofWorkItem() } as usize).cast();
        let block = request::allocate(size_of::<Shared<S>>()).cast::<Shared<S>>();
        let (Some(shared), false, false, false) = (
            NonNull::new(block),
            irp.is_null(),
            buffer.is_null(),
            work_item.is_null(),
        ) else {
            if !irp.is_null() {
                // SAFETY: our fresh IRP, never sent.
                unsafe { IoFreeIrp(irp) };
            }
            for block in [buffer, work_item.cast(), block.cast()] {
                if !block.is_null() {
                    // SAFETY: our own fresh block.
                    unsafe { request::free(block) };
                }
            }
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        };
        // SAFETY: a fresh block of Shared<S>'s size from nonpaged pool (16-aligned).
        unsafe {
            shared.as_ptr().write(Shared {
                lock: UnsafeCell::new(0),
                guarded: UnsafeCell::new(Guarded {
                    state: State::Owned,
                    stopping: false,
                }),
                progress: UnsafeCell::new(Progress::new(options.cursor)),
                returned: UnsafeCell::new(KEVENT::new()),
                adapter: UnsafeCell::new(Some(adapter)),
                irp,
                buffer,
                capacity,
                max_events,
                work_item,
                stats,
                sink,
            })
        };
        // SAFETY: just written; nobody else knows it yet.
        let block = unsafe { shared.as_ref() };
        // SAFETY: the event in the block, which lives until `stop` has waited on it.
        unsafe { KeInitializeEvent(block.returned.get(), NOTIFICATION_EVENT, 0) };
        // SAFETY: the caller's driver object, which stays loaded until `stop` returns.
        unsafe { IoInitializeWorkItem(driver.cast(), work_item) };
        // SAFETY: the IRP is ours (state Owned): the first send.
        unsafe { send(shared.as_ptr()) };
        Ok(Self { shared })
    }

    /// The sink (for a driver that reads what it gathered).
    pub fn sink(&self) -> &S {
        // SAFETY: the block lives as long as this handle; the sink is only shared.
        unsafe { &self.shared.as_ref().sink }
    }

    /// Stops the subscription: cancels the WAIT at the adapter if it is there, waits until the
    /// IRP is home, frees everything and drops the adapter's reference. PASSIVE_LEVEL.
    pub fn stop(self) {
        drop(self);
    }
}

impl<S: Sink> Drop for Subscription<S> {
    fn drop(&mut self) {
        let shared = self.shared.as_ptr();
        // SAFETY: the block lives until the end of this function.
        let block = unsafe { &*shared };
        let armed = block.with_lock(|guarded| {
            guarded.stopping = true;
            guarded.state == State::Armed
        });
        if armed {
            // SAFETY: the IRP is allocated until below; cancelling one that has completed
            // meanwhile only sets its flag (we free it after it is home).
            unsafe { IoCancelIrp(block.irp) };
        }
        // SAFETY: the block's event, signalled once the IRP is home for good.
        unsafe {
            KeWaitForSingleObject(
                block.returned.get().cast(),
                EXECUTIVE,
                KERNEL_MODE,
                0,
                null_mut(),
            )
        };
        // SAFETY: no work item is queued (the last one signalled `returned` or never was).
        unsafe { IoUninitializeWorkItem(block.work_item) };
        // SAFETY: home for good: no driver below holds it.
        unsafe { IoFreeIrp(block.irp) };
        // SAFETY: the blocks were allocated in `start` and nothing refers to them any more.
        unsafe { request::free(block.work_item.cast()) };
        // SAFETY: as above.
        unsafe { request::free(block.buffer) };
        // SAFETY: drops the sink (the adapter's reference went with the end), then frees the
        // block; the `block` borrow is not used after this.
        unsafe { shared.drop_in_place() };
        // SAFETY: as above.
        unsafe { request::free(shared.cast()) };
    }
}

impl<S> Shared<S> {
    /// The adapter, while the subscription runs.
    ///
    /// # Safety
    ///
    /// The caller owns the IRP (state Owned) and the subscription has not ended.
    unsafe fn adapter(&self) -> &Adapter {
        // SAFETY: the caller's promise: only the end's work item takes it, after the end.
        let adapter = unsafe { &*self.adapter.get() };
        adapter
            .as_ref()
            .expect("the adapter is released only after the subscription ended")
    }

    /// Runs `f` under the spin lock (IRQL raised to DISPATCH_LEVEL for its duration).
    fn with_lock<R>(&self, f: impl FnOnce(&mut Guarded) -> R) -> R {
        // SAFETY: the block's lock word, initialised to 0 (released).
        let old = unsafe { KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        // SAFETY: the lock is held: nobody else reaches `guarded` now.
        let result = f(unsafe { &mut *self.guarded.get() });
        // SAFETY: the lock taken above, released once at the IRQL it saved.
        unsafe { KeReleaseSpinLock(self.lock.get(), old) };
        result
    }
}

/// Sends the next WAIT. The IRP must be the subscription's (state Owned, not stopping is
/// checked here under the lock).
///
/// # Safety
///
/// `shared` is a live block whose IRP is owned by the caller.
unsafe fn send<S: Sink>(shared: *mut Shared<S>) {
    // SAFETY: the caller's promise.
    let block = unsafe { &*shared };
    // SAFETY: the IRP's owner alone touches the progress.
    let cursor = unsafe { (*block.progress.get()).cursor() };
    let input = {
        // SAFETY: the buffer is not in any IRP now; this borrow ends before it is.
        let out = unsafe { core::slice::from_raw_parts_mut(block.buffer, block.capacity) };
        encode_request(
            &Request::Wait {
                cursor,
                max_events: block.max_events,
            },
            out,
        )
    };
    let Some(input) = input else {
        // The buffer holds MAX_REQUEST_SIZE: a WAIT always fits.
        return finish(
            shared,
            Step::End(End::Failed),
            STATUS_INSUFFICIENT_RESOURCES as u32,
        );
    };
    // SAFETY: the IRP came back to us; reuse makes it new (and clears a stale Cancel).
    unsafe { IoReuseIrp(block.irp, STATUS_SUCCESS) };
    // SAFETY: we own the IRP and the subscription runs.
    let adapter = unsafe { block.adapter() };
    // SAFETY: a reused IRP with the adapter's StackSize; buffer and block live until `stop`.
    unsafe {
        request::prepare(
            block.irp,
            adapter,
            block.buffer,
            input as u32,
            block.capacity as u32,
            completed::<S>,
            shared.cast(),
        )
    };
    let go = block.with_lock(|guarded| {
        if guarded.stopping {
            guarded.state = State::Done;
            false
        } else {
            guarded.state = State::Armed;
            true
        }
    });
    if !go {
        return end(shared, End::Stopped, 0);
    }
    block.stats.sent.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the IRP now belongs to the adapter until `completed` runs.
    unsafe { IofCallDriver(adapter.device(), block.irp) };
}

/// The IO_COMPLETION_ROUTINE: takes the IRP back, hands over what came, and re-arms through
/// the work item (or ends). IRQL ≤ DISPATCH_LEVEL, any thread.
unsafe extern "win64" fn completed<S: Sink>(
    _device: *mut DEVICE_OBJECT,
    irp: *mut IRP,
    context: *mut c_void,
) -> NTSTATUS {
    let shared = context.cast::<Shared<S>>();
    // SAFETY: the block registered with this IRP, alive until `stop` has seen `returned`.
    let block = unsafe { &*shared };
    // SAFETY: the IRP is back with us; its status block is final.
    let (status, information) = unsafe { request::outcome(irp) };
    let reply = if status == STATUS_SUCCESS {
        // SAFETY: the buffer is ours again; Information of its bytes are the reply.
        unsafe { core::slice::from_raw_parts(block.buffer, information.min(block.capacity)) }
    } else {
        &[]
    };
    // SAFETY: the IRP's owner alone touches the progress.
    let progress = unsafe { &mut *block.progress.get() };
    let step = progress.on_completion(status as u32, reply, block.stats, &block.sink);
    finish(shared, step, status as u32);
    STATUS_MORE_PROCESSING_REQUIRED
}

/// After a completion: queue the re-arm, or end.
fn finish<S: Sink>(shared: *mut Shared<S>, step: Step, status: u32) {
    // SAFETY: the caller holds the IRP, so the block is alive.
    let block = unsafe { &*shared };
    let next = block.with_lock(|guarded| {
        let next = match step {
            Step::Rearm if !guarded.stopping => None,
            Step::Rearm => Some(End::Stopped),
            // Only `stop` cancels the IRP; a cancel from anyone else is a failure.
            Step::End(End::Stopped) if !guarded.stopping => Some(End::Failed),
            Step::End(end) => Some(end),
        };
        guarded.state = if next.is_none() {
            State::Owned
        } else {
            State::Done
        };
        next
    });
    match next {
        None => queue(shared, rearm_routine::<S>),
        Some(ended) => end(shared, ended, status),
    }
}

/// Queues the block's work item with `routine`.
fn queue<S: Sink>(shared: *mut Shared<S>, routine: IO_WORKITEM_ROUTINE_EX) {
    // SAFETY: the caller holds the block alive.
    let block = unsafe { &*shared };
    // SAFETY: the block's work item, initialised in `start` and not queued (the IRP's owner
    // alone queues it, once per turn); the block outlives the routine.
    unsafe { IoQueueWorkItemEx(block.work_item, routine, DELAYED_WORK_QUEUE, shared.cast()) };
}

/// The subscription ended (state Done): records it, tells the sink, and leaves the release
/// and the signal to the work item.
fn end<S: Sink>(shared: *mut Shared<S>, end: End, status: u32) {
    // SAFETY: the caller holds the block alive (it owns the IRP).
    let block = unsafe { &*shared };
    block.stats.end_status.store(status, Ordering::Relaxed);
    block.stats.end.store(end.code(), Ordering::Release);
    block.sink.ended(end);
    queue(shared, ended_routine::<S>);
}

/// The end's work item (PASSIVE_LEVEL, the driver kept loaded until it returns): drops the
/// adapter's reference, then signals `returned` — the last touch of the block.
unsafe extern "win64" fn ended_routine<S: Sink>(
    _io_object: *mut c_void,
    context: *mut c_void,
    _item: *mut IO_WORKITEM,
) {
    // SAFETY: queued by `end` with the block, which `stop` frees only after `returned`.
    let block = unsafe { &*context.cast::<Shared<S>>() };
    // SAFETY: the subscription ended: nothing sends again, so the adapter is ours to drop.
    drop(unsafe { (*block.adapter.get()).take() });
    // SAFETY: the block's event; nothing here touches the block afterwards.
    unsafe { KeSetEvent(block.returned.get(), 0, 0) };
}

/// The work item: PASSIVE_LEVEL in a system worker thread; sends the next WAIT.
unsafe extern "win64" fn rearm_routine<S: Sink>(
    _io_object: *mut c_void,
    context: *mut c_void,
    _item: *mut IO_WORKITEM,
) {
    // SAFETY: queued by `finish` with the block, whose IRP is owned (state Owned) until we send.
    unsafe { send(context.cast::<Shared<S>>()) };
}
