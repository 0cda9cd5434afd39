//! KEVENTs: the dispatcher objects drivers set and wait on (KeInitializeEvent, KeSetEvent,
//! KeWaitForSingleObject). The state lives here, keyed by the KEVENT's address; the driver's
//! 0x18 bytes are only its name. One condition variable wakes every waiter on any change,
//! which is cheap at the handful of waiters a driver has.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// `EVENT_TYPE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Stays signalled until reset; wakes every waiter.
    Notification,
    /// Wakes one waiter and resets itself.
    Synchronization,
}

#[derive(Clone, Copy, Debug)]
struct Event {
    kind: Kind,
    signalled: bool,
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    Signalled,
    TimedOut,
    /// The address was never given to KeInitializeEvent.
    Uninitialized,
}

#[derive(Default)]
pub struct Events {
    events: Mutex<HashMap<usize, Event>>,
    changed: Condvar,
}

impl Events {
    /// KeInitializeEvent (also re-initialises an event a driver reuses, e.g. on its stack).
    pub fn initialize(&self, addr: usize, kind: Kind, signalled: bool) {
        self.lock().insert(addr, Event { kind, signalled });
    }

    /// KeSetEvent: the previous state, or `None` for an address never initialised.
    pub fn set(&self, addr: usize) -> Option<bool> {
        let previous = {
            let mut events = self.lock();
            let event = events.get_mut(&addr)?;
            std::mem::replace(&mut event.signalled, true)
        };
        self.changed.notify_all();
        Some(previous)
    }

    /// KeWaitForSingleObject: `None` waits without limit.
    pub fn wait(&self, addr: usize, timeout: Option<Duration>) -> Waited {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut events = self.lock();
        loop {
            let Some(event) = events.get_mut(&addr) else {
                return Waited::Uninitialized;
            };
            if event.signalled {
                if event.kind == Kind::Synchronization {
                    event.signalled = false;
                }
                return Waited::Signalled;
            }
            let left = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return Waited::TimedOut,
                },
                None => Duration::from_secs(3600),
            };
            events = self
                .changed
                .wait_timeout(events, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Event>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_notification_event_stays_set_and_wakes_a_waiter() {
        let events = Arc::new(Events::default());
        events.initialize(0x1000, Kind::Notification, false);
        let waiter = {
            let events = events.clone();
            std::thread::spawn(move || events.wait(0x1000, None))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(events.set(0x1000), Some(false));
        assert_eq!(waiter.join().unwrap(), Waited::Signalled);
        assert_eq!(events.wait(0x1000, Some(Duration::ZERO)), Waited::Signalled);
        assert_eq!(events.set(0x1000), Some(true), "set twice");
    }

    #[test]
    fn a_synchronization_event_resets_when_it_releases_a_waiter() {
        let events = Events::default();
        events.initialize(0x2000, Kind::Synchronization, true);
        assert_eq!(events.wait(0x2000, Some(Duration::ZERO)), Waited::Signalled);
        assert_eq!(events.wait(0x2000, Some(Duration::ZERO)), Waited::TimedOut);
    }

    #[test]
    fn unknown_events_are_named_as_such() {
        let events = Events::default();
        assert_eq!(events.set(0x3000), None);
        assert_eq!(events.wait(0x3000, None), Waited::Uninitialized);
    }
}
