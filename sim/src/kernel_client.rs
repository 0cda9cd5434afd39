//! The kernel-client scenario: revcall-client.sys (or a client fixture) loaded above
//! revcall.sys in the same emulated kernel, its IRPs routed to revcall's Storport device.
//!
//! Three lives of the client, each checked against what revcall published. Events are fired
//! before the first loads (more than the ring holds, so each first WAIT from cursor 0 learns
//! an exact `lost`); each life reads that backlog, then 200 more are fired one by one, and:
//! 1. it unloads with its WAIT parked: cancelled, awaited, freed (ends Stopped);
//! 2. it unloads during the burst, its completions and re-arms in flight (ends Stopped:
//!    whatever it was doing, the unload waits for the IRP);
//! 3. the adapter is removed with its WAIT parked: the reply carries FINAL (ends Final); then
//!    it unloads.
//!
//! Each time: every event delivered in order (`gaps` 0), `delivered + lost` = the last
//! sequence number, `lost` = what the ring no longer held; and at each unload storsim's
//! verifier checks the IRP came back, was freed and the reference dropped.

use std::path::Path;
use std::time::{Duration, Instant};

use revcall_kclient::{End, Stats};
use storsim::driver::{RunError, UpperDriver};

use crate::client::Channel;
use crate::{Failures, KernelRef};

/// The service the client driver is registered as.
pub(crate) const SERVICE: &str = "revcallclient";

/// Events fired before the client loads: more than revcall's ring keeps (256).
const BEFORE: u64 = 300;
/// Events fired one by one while it is subscribed.
const WHILE: u64 = 200;

/// How long the client may take to catch up with what was fired.
const PATIENCE: Duration = Duration::from_secs(10);

/// The client driver's counters, read out of its image (the export `RevcallClientStats`).
pub(crate) fn stats(client: &UpperDriver) -> Option<&Stats> {
    let addr = client.export("RevcallClientStats")?;
    // SAFETY: revcall-client.sys exports its `revcall_kclient::Stats` (repr(C), atomics)
    // under this name; the image stays mapped while `client` lives, which bounds the borrow.
    Some(unsafe { &*(addr as *const Stats) })
}

/// Polls `done` until it holds or [`PATIENCE`] runs out.
pub(crate) fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// How a life of the client ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Unloaded once caught up, its WAIT parked at revcall: cancelled and awaited.
    Parked,
    /// Unloaded right after a burst, while its completions and re-arms are in flight.
    Busy,
    /// The adapter removed with its WAIT parked: the reply carries FINAL; then unloaded.
    Removal,
}

pub fn run(kernel: &KernelRef, client: &Path, failures: &Failures) -> Result<(), RunError> {
    kernel.start_adapter()?;
    let user = Channel::open(kernel, 300);
    for value in 0..BEFORE {
        let _ = user.fire(0x100, value);
    }
    for (name, ending) in [
        ("1", Ending::Parked),
        ("2", Ending::Busy),
        ("3", Ending::Removal),
    ] {
        life(kernel, client, &user, (name, ending), failures)?;
    }
    user.close();
    Ok(())
}

/// One life of the client: load, the backlog, what is fired while it runs, its `ending`,
/// unload; checked against revcall's STATS.
fn life(
    kernel: &KernelRef,
    path: &Path,
    user: &Channel,
    (name, ending): (&str, Ending),
    failures: &Failures,
) -> Result<(), RunError> {
    let before = user.stats().ok();
    let client = storsim::driver::load_upper(kernel, path, SERVICE)?;
    let backlog = before.map_or(0, |s| s.head_seq);
    let mut head = backlog;
    let mut fire = || {
        for value in 0..WHILE {
            if let Ok(seq) = user.fire(0x200, value) {
                head = seq;
            }
        }
    };
    let Some(stats) = stats(&client) else {
        // A client fixture: the same script, and the verifier's checks are the verdict.
        kernel.note(format!(
            "{} exports no RevcallClientStats: only the verifier judges it",
            path.display()
        ));
        fire();
        std::thread::sleep(Duration::from_millis(50));
        if ending == Ending::Removal {
            kernel.remove_adapter(|| {});
        }
        client.unload(kernel);
        return Ok(());
    };
    // The backlog first: events fired while it still reads the ring would push out ones it
    // has not read yet, and its lost count, though still exact, would not be the ring's.
    failures.expect(
        eventually(|| stats.cursor.load(std::sync::atomic::Ordering::Relaxed) == backlog),
        || format!("client life {name}: to read the backlog up to {backlog}"),
    );
    if ending == Ending::Busy {
        // The burst goes on while it unloads: completions and re-arms in flight throughout.
        std::thread::scope(|scope| {
            let burst = scope.spawn(|| {
                storsim::cpu::enter_thread();
                fire();
            });
            std::thread::sleep(Duration::from_millis(2));
            client.unload(kernel);
            let _ = burst.join();
        });
    } else {
        fire();
        // Caught up, and the next WAIT parked at revcall (nothing else parks on this adapter).
        let parked = eventually(|| {
            stats.cursor.load(std::sync::atomic::Ordering::Relaxed) == head
                && user.stats().is_ok_and(|now| now.parked_now == 1)
        });
        failures.expect(parked, || {
            format!(
                "client life {name}: caught up to event {head} with its WAIT parked, at {}",
                stats.cursor.load(std::sync::atomic::Ordering::Relaxed)
            )
        });
        if ending == Ending::Removal {
            kernel.remove_adapter(|| {});
            failures.expect(eventually(|| stats.ended().is_some()), || {
                "the client to end after the adapter's removal".into()
            });
            // Ended, it lets go of the adapter before anyone unloads it.
            failures.expect(
                eventually(|| kernel.io().leftovers().references == 0),
                || "the ended client to drop its FILE_OBJECT reference".into(),
            );
        }
        client.unload(kernel);
    }
    let now = stats.snapshot();
    let (delivered, lost, cursor, end) = (now.delivered, now.lost, now.cursor, now.end);
    for (figure, value) in [
        ("delivered", delivered),
        ("lost", lost),
        ("cursor", cursor),
        ("gaps", now.gaps),
        ("waits", now.sent),
        ("end", end.map_or(0, End::code).into()),
    ] {
        kernel.figure(format!("client{name}.{figure}"), value);
    }
    kernel.note(format!(
        "client life {name}: {delivered} events delivered, {lost} lost, cursor {cursor}, ended {end:?}"
    ));
    failures.expect(now.exact(), || {
        format!(
            "client life {name}: every event in order, delivered {delivered} + lost {lost} = \
             cursor {cursor}, {} gaps",
            now.gaps
        )
    });
    if let Some(before) = before {
        // Its first WAIT asked from 0: everything older than the ring's oldest is lost.
        let expected = before.oldest_seq.saturating_sub(1);
        failures.expect(lost == expected, || {
            format!("client life {name}: exactly {expected} events lost, counted {lost}")
        });
    }
    let want_end = if ending == Ending::Removal {
        End::Final
    } else {
        End::Stopped
    };
    failures.expect(end == Some(want_end), || {
        format!("client life {name}: to end {want_end:?}, ended {end:?}")
    });
    // Parked: it had everything; busy: anything up to the last event; removal: the removal
    // event follows the last fired one.
    let cursor_right = match ending {
        Ending::Parked => cursor == head,
        Ending::Busy => (backlog..=head).contains(&cursor),
        Ending::Removal => cursor == head + 1,
    };
    failures.expect(cursor_right, || {
        format!("client life {name}: cursor {cursor} after events up to {head}")
    });
    Ok(())
}
