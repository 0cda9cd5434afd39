//! Work items (IoInitializeWorkItem, IoQueueWorkItemEx, IoUninitializeWorkItem) and the system
//! worker thread that runs them at PASSIVE_LEVEL, one after another, as an emulated CPU.

use std::collections::{HashMap, VecDeque};
use std::ffi::c_void;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::cpu::{self, PASSIVE_LEVEL};
use crate::machine::{Machine, Running};
use crate::verifier::{BugCheck, Code, rules};

/// An IO_WORKITEM_ROUTINE_EX.
pub type WorkRoutine =
    unsafe extern "win64" fn(io_object: *mut c_void, context: *mut c_void, item: *mut c_void);

/// `IoSizeofWorkItem()` on x64 Windows 10.
pub const WORK_ITEM_SIZE: u32 = 0x58;

struct Item {
    io_object: usize,
    /// Initialised by a driver loaded above the adapter.
    running: Running,
    queued: bool,
}

struct Queued {
    item: usize,
    routine: WorkRoutine,
    context: usize,
}

#[derive(Default)]
struct State {
    items: HashMap<usize, Item>,
    queue: VecDeque<Queued>,
    /// Items whose routine is running now.
    running: usize,
    worker: Option<JoinHandle<()>>,
    stopping: bool,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    changed: Condvar,
}

impl WorkQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// IoInitializeWorkItem, by code of `running`.
    pub fn initialize(&self, machine: &Machine, item: usize, io_object: usize, running: Running) {
        let mut state = self.lock();
        if state.items.get(&item).is_some_and(|found| found.queued) {
            drop(state);
            return machine.report(misuse(
                item,
                "IoInitializeWorkItem of a work item still queued",
            ));
        }
        state.items.insert(
            item,
            Item {
                io_object,
                running,
                queued: false,
            },
        );
    }

    /// IoUninitializeWorkItem: `false` (and reported) if it is still queued.
    pub fn uninitialize(&self, machine: &Machine, item: usize) {
        let mut state = self.lock();
        match state.items.get(&item) {
            Some(found) if found.queued => {
                drop(state);
                machine.report(misuse(
                    item,
                    "IoUninitializeWorkItem of a work item still queued",
                ));
            }
            Some(_) => {
                state.items.remove(&item);
            }
            None => {
                drop(state);
                machine.report(misuse(
                    item,
                    "IoUninitializeWorkItem of a work item never initialised",
                ));
            }
        }
    }

    /// IoQueueWorkItemEx: runs `routine(io_object, context, item)` on the worker thread.
    pub fn queue(
        self: &Arc<Self>,
        machine: &Arc<Machine>,
        item: usize,
        routine: WorkRoutine,
        context: usize,
    ) {
        let mut state = self.lock();
        let refused = match state.items.get_mut(&item) {
            None => Some("IoQueueWorkItemEx of a work item never initialised"),
            Some(found) if found.queued => Some("IoQueueWorkItemEx of a work item already queued"),
            Some(found) => {
                found.queued = true;
                None
            }
        };
        if let Some(why) = refused {
            drop(state);
            return machine.report(misuse(item, why));
        }
        state.queue.push_back(Queued {
            item,
            routine,
            context,
        });
        if state.worker.is_none() && !state.stopping {
            let (queue, machine) = (self.clone(), machine.clone());
            state.worker = Some(
                std::thread::Builder::new()
                    .name("storsim-worker".into())
                    .spawn(move || queue.work(&machine))
                    .expect("the worker thread starts"),
            );
        }
        drop(state);
        self.changed.notify_all();
    }

    /// The system worker thread's loop.
    fn work(&self, machine: &Machine) {
        cpu::enter_thread();
        loop {
            let (next, io_object, running) = {
                let mut state = self.lock();
                loop {
                    if state.stopping {
                        return;
                    }
                    if let Some(next) = state.queue.pop_front() {
                        // Initialise and uninitialise refuse a queued item, so it is there.
                        let Some(item) = state.items.get_mut(&next.item) else {
                            continue;
                        };
                        item.queued = false;
                        let found = (item.io_object, item.running);
                        state.running += 1;
                        break (next, found.0, found.1);
                    }
                    state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                }
            };
            running.enter(|| {
                machine.call_driver("work item", PASSIVE_LEVEL, || {
                    // SAFETY: IoQueueWorkItemEx's contract: the routine the driver gave, its
                    // IoObject and context, the item; PASSIVE_LEVEL in a system thread.
                    unsafe {
                        (next.routine)(
                            io_object as *mut c_void,
                            next.context as *mut c_void,
                            next.item as *mut c_void,
                        )
                    }
                })
            });
            self.lock().running -= 1;
            self.changed.notify_all();
        }
    }

    /// Items initialised by `running`'s code that are queued (their routine not started).
    pub fn queued(&self, running: Running) -> usize {
        self.lock()
            .items
            .values()
            .filter(|item| item.running == running && item.queued)
            .count()
    }

    /// Waits up to `limit` for the queue to run dry; `true` if it did.
    pub fn settle(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while !state.queue.is_empty() || state.running > 0 {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// Ends the worker thread (the session is over); queued items are dropped.
    pub fn stop(&self) {
        let worker = {
            let mut state = self.lock();
            state.stopping = true;
            state.queue.clear();
            state.worker.take()
        };
        self.changed.notify_all();
        if let Some(worker) = worker
            && worker.thread().id() != std::thread::current().id()
        {
            let _ = worker.join();
        }
    }
}

fn misuse(item: usize, what: &str) -> BugCheck {
    BugCheck::new(
        Code::DriverVerifierDetectedViolation,
        [rules::OBJECT_MISUSE, item as u64, 0, 0],
        format!("{what} ({item:#x})"),
    )
}
