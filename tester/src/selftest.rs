//! `selftest`: one scenario suite, the same code on Windows and on storsim. Every case asserts
//! exact outcomes (statuses, counts, sequence numbers); cases that need powers only an emulated
//! machine has (process exit, removal) run on storsim and are reported skipped on Windows.

use std::time::{Duration, Instant};

use revcall_client::server::{Answer, FetchRoom, MemoryDisk, Session, Step};
use revcall_protocol::status::*;
use revcall_protocol::{
    CURSOR_NOW, CommitResult, EventKind, LunSpec, Opcode, Request, VERSION, WaitFlags,
    decode_request,
};
use serde::Serialize;

use revcall_client::malformed::{self, Class};

use crate::client::{
    Adapter, Delivery, PROMPT, RequestError, Watcher, delivery, encode, wait_reply_size,
};
use crate::transport::{Lab, Transport};

/// A case's result.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub name: &'static str,
    /// "passed", "failed" or "skipped".
    pub outcome: &'static str,
    pub detail: String,
    pub ms: f64,
}

/// The whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub backend: &'static str,
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cases: Vec<CaseResult>,
}

type Outcome = Result<String, String>;

macro_rules! check {
    ($cond:expr, $($what:tt)+) => {
        if !$cond {
            return Err(format!($($what)+));
        }
    };
}

/// A short pause in which a parked request would have completed if it were not parked.
const SETTLE: Duration = Duration::from_millis(20);

struct Ctx<'t, T: Transport> {
    transport: &'t T,
}

impl<'t, T: Transport> Ctx<'t, T> {
    fn open(&self, process: u32) -> Result<Adapter<'t, T>, String> {
        Adapter::open(self.transport, process).map_err(|e| e.to_string())
    }

    fn lab(&self) -> &dyn Lab {
        self.transport
            .lab()
            .expect("lab cases run only where a lab exists")
    }

    /// The newest sequence number now.
    fn head(&self, adapter: &Adapter<'t, T>) -> Result<u64, String> {
        adapter
            .stats()
            .map(|s| s.head_seq)
            .map_err(|e| e.to_string())
    }

    /// Waits until no discovery is running, so a case never sees another case's
    /// DiscoveryComplete event.
    fn quiesce(&self) {
        let Ok(adapter) = self.open(1) else {
            return;
        };
        let deadline = Instant::now() + PROMPT;
        while let Ok(stats) = adapter.stats() {
            if stats.discoveries_completed >= stats.discoveries_started || Instant::now() > deadline
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        adapter.close();
    }

    /// A WAIT that must complete at once (events newer than `cursor` are retained), decoded.
    fn wait_now(
        &self,
        adapter: &Adapter<'t, T>,
        cursor: u64,
        max_events: u32,
    ) -> Result<Delivery, String> {
        let request = encode(&Request::Wait { cursor, max_events });
        let completion = adapter
            .raw(&request, wait_reply_size(max_events), PROMPT)
            .map_err(|e| e.to_string())?;
        delivery(&completion).map_err(|e| e.to_string())
    }

    /// The decoded completion of a posted WAIT.
    fn delivered(&self, pending: &T::Pending) -> Result<Delivery, String> {
        let completion = self
            .transport
            .wait(pending, PROMPT)
            .ok_or("a WAIT never completed")?;
        delivery(&completion).map_err(|e| e.to_string())
    }

    /// FIREs `count` events with `code`.
    fn fire(&self, adapter: &Adapter<'t, T>, code: u32, count: u64) -> Result<(), String> {
        (0..count).try_for_each(|i| adapter.fire(code, i).map(drop).map_err(|e| e.to_string()))
    }

    fn pending(&self, pending: &T::Pending) -> bool {
        self.transport.wait(pending, SETTLE).is_none()
    }
}

/// A request record with an honest size field and any body (valid or not).
fn record(opcode: u16, body: &[u8]) -> Vec<u8> {
    let size = 8 + body.len() as u32;
    let mut bytes = size.to_le_bytes().to_vec();
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&opcode.to_le_bytes());
    bytes.extend_from_slice(body);
    bytes
}

fn expect_status<T: Transport>(
    adapter: &Adapter<'_, T>,
    input: &[u8],
    out_len: u32,
    want: u32,
) -> Outcome {
    let got = adapter
        .raw(input, out_len, PROMPT)
        .map_err(|e| e.to_string())?;
    check!(
        got.status == want,
        "{} bytes in, {out_len} out: status {:#x}, expected {want:#x}",
        input.len(),
        got.status
    );
    check!(
        got.output.is_empty() || want == STATUS_SUCCESS,
        "an error carried {} bytes",
        got.output.len()
    );
    Ok(format!("{:#x}", got.status))
}

fn park_then_fire<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waiting = a.post_wait(CURSOR_NOW, 4).map_err(|e| e.to_string())?;
    check!(
        ctx.pending(&waiting),
        "a WAIT with cursor NOW completed before any event"
    );
    let seq = a.fire(7, 42).map_err(|e| e.to_string())?;
    let got = ctx.delivered(&waiting)?;
    check!(
        got.events.len() == 1 && got.events[0].seq == seq,
        "expected exactly event {seq}, got {:?}",
        got.events
    );
    check!(
        got.events[0].kind == EventKind::Injected as u32
            && got.events[0].arg0 == 7
            && got.events[0].arg1 == 42,
        "event fields {:?}",
        got.events[0]
    );
    check!(
        got.reply.cursor == seq && got.reply.lost == 0,
        "cursor {} lost {}",
        got.reply.cursor,
        got.reply.lost
    );
    a.close();
    Ok(format!("event {seq} delivered to the parked WAIT"))
}

fn k_outstanding<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waits: Vec<_> = (0..4)
        .map(|_| a.post_wait(CURSOR_NOW, 4))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    check!(
        waits.iter().all(|w| ctx.pending(w)),
        "a WAIT completed early"
    );
    let seq = a.fire(1, 1).map_err(|e| e.to_string())?;
    for wait in &waits {
        let got = ctx.delivered(wait)?;
        check!(
            got.events.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![seq],
            "got {:?}",
            got.events
        );
    }
    a.close();
    Ok("4 outstanding WAITs on one handle each delivered the event".into())
}

fn broadcast<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let handles: Vec<_> = (0..3).map(|i| ctx.open(10 + i)).collect::<Result<_, _>>()?;
    let waits: Vec<_> = handles
        .iter()
        .map(|h| h.post_wait(CURSOR_NOW, 4))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let seq = handles[0].fire(2, 2).map_err(|e| e.to_string())?;
    for wait in &waits {
        let got = ctx.delivered(wait)?;
        check!(
            got.events.last().map(|e| e.seq) == Some(seq),
            "got {:?}",
            got.events
        );
    }
    handles.into_iter().for_each(Adapter::close);
    Ok("3 handles saw the same event".into())
}

fn batching<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let head = ctx.head(&a)?;
    ctx.fire(&a, 3, 6)?;
    let got = ctx.wait_now(&a, head, 16)?;
    let seqs: Vec<u64> = got.events.iter().map(|e| e.seq).collect();
    check!(
        seqs == (head + 1..=head + 6).collect::<Vec<_>>(),
        "one completion should carry {}..={}, got {seqs:?}",
        head + 1,
        head + 6
    );
    check!(
        got.reply.flags & WaitFlags::MORE == 0,
        "MORE set with nothing left"
    );
    a.close();
    Ok("6 events in one completion".into())
}

fn more_flag_and_cursor<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let head = ctx.head(&a)?;
    ctx.fire(&a, 4, 5)?;
    let first = ctx.wait_now(&a, head, 2)?;
    check!(
        first.events.len() == 2 && first.reply.flags & WaitFlags::MORE != 0,
        "expected 2 events and MORE, got {} flags {:#x}",
        first.events.len(),
        first.reply.flags
    );
    let rest = ctx.wait_now(&a, first.reply.cursor, 16)?;
    check!(
        rest.events.first().map(|e| e.seq) == Some(head + 3) && rest.events.len() == 3,
        "resumed at {:?}",
        rest.events.first()
    );
    let parked = a
        .post_wait(rest.reply.cursor, 4)
        .map_err(|e| e.to_string())?;
    check!(ctx.pending(&parked), "an up-to-date cursor must park");
    let seq = a.fire(4, 9).map_err(|e| e.to_string())?;
    let last = ctx.delivered(&parked)?;
    check!(
        last.events.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![seq],
        "got {:?}",
        last.events
    );
    a.close();
    Ok("MORE, then resume exactly at the cursor, then park".into())
}

fn loss_detection<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let stats = a.stats().map_err(|e| e.to_string())?;
    let head = stats.head_seq;
    let fired = stats.ring_capacity + 44;
    ctx.fire(&a, 5, fired)?;
    let mut watcher = Watcher::start(&a, 1, head, 16).map_err(|e| e.to_string())?;
    let batch = watcher
        .next(PROMPT)
        .map_err(|e| e.to_string())?
        .ok_or("no delivery")?;
    check!(
        batch.lost == 44,
        "lost {} events, expected exactly 44 (ring {})",
        batch.lost,
        stats.ring_capacity
    );
    check!(
        batch.events.first().map(|e| e.seq) == Some(head + 45),
        "first delivered {:?}",
        batch.events.first().map(|e| e.seq)
    );
    watcher.stop();
    a.close();
    Ok(format!(
        "overflowed a {}-event ring by 44: lost = 44",
        stats.ring_capacity
    ))
}

fn watcher_misses_nothing<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let mut watcher = Watcher::start(&a, 3, CURSOR_NOW, 8).map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    for i in 0..50 {
        a.fire(6, i).map_err(|e| e.to_string())?;
        if i % 7 == 0 {
            while let Some(batch) = watcher
                .next(Duration::from_millis(1))
                .map_err(|e| e.to_string())?
            {
                seen.extend(batch.events.iter().map(|e| e.seq));
            }
        }
    }
    let deadline = Instant::now() + PROMPT;
    while seen.len() < 50 && Instant::now() < deadline {
        if let Some(batch) = watcher
            .next(Duration::from_millis(50))
            .map_err(|e| e.to_string())?
        {
            seen.extend(batch.events.iter().map(|e| e.seq));
        }
    }
    check!(
        seen.len() == 50 && watcher.lost == 0,
        "saw {} of 50, lost {}",
        seen.len(),
        watcher.lost
    );
    check!(
        seen.windows(2).all(|w| w[1] == w[0] + 1),
        "out of order: {seen:?}"
    );
    watcher.stop();
    a.close();
    Ok("3 outstanding WAITs, 50 events, none missed or repeated".into())
}

/// Follows `a` from `cursor` until an event satisfies `done`.
fn until<T: Transport>(
    ctx: &Ctx<'_, T>,
    a: &Adapter<'_, T>,
    first: T::Pending,
    done: impl Fn(&revcall_protocol::EventRecord) -> bool,
) -> Outcome {
    let mut pending = first;
    let deadline = Instant::now() + PROMPT;
    while Instant::now() < deadline {
        let got = ctx.delivered(&pending)?;
        if got.events.iter().any(&done) {
            return Ok(format!("at seq {}", got.reply.cursor));
        }
        pending = a
            .post_wait(got.reply.cursor, 8)
            .map_err(|e| e.to_string())?;
    }
    Err("the expected event never arrived".into())
}

fn discover_completes_later<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waiting = a.post_wait(CURSOR_NOW, 8).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let reply = a.discover(25).map_err(|e| e.to_string())?;
    check!(reply.coalesced == 0, "a fresh DISCOVER joined another");
    until(ctx, &a, waiting, |e| {
        e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == reply.id
    })?;
    let took = started.elapsed();
    check!(
        took >= Duration::from_millis(20),
        "completed after {took:?}, asked for 25 ms"
    );
    a.close();
    Ok(format!(
        "discovery {} completed after {:.1} ms",
        reply.id,
        took.as_secs_f64() * 1e3
    ))
}

fn discover_coalesces<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waiting = a.post_wait(CURSOR_NOW, 8).map_err(|e| e.to_string())?;
    let first = a.discover(50).map_err(|e| e.to_string())?;
    let second = a.discover(50).map_err(|e| e.to_string())?;
    check!(
        second.id == first.id && second.coalesced == 1,
        "second DISCOVER: {second:?}, first {first:?}"
    );
    until(ctx, &a, waiting, |e| {
        e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == first.id
    })?;
    a.close();
    Ok(format!("two DISCOVERs, one discovery ({})", first.id))
}

/// A small LUN whose serial and unique id no earlier run left behind: `tag`, the process and
/// the clock.
fn unique_spec(tag: &str) -> LunSpec {
    let mut serial = [b' '; 32];
    let stamp = format!(
        "{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    );
    let stamp = &stamp.as_bytes()[..stamp.len().min(32)];
    serial[..stamp.len()].copy_from_slice(stamp);
    let mut unique_id = [0x5E; 16];
    unique_id[..stamp.len().min(16)].copy_from_slice(&stamp[stamp.len().saturating_sub(16)..]);
    LunSpec {
        block_count: 2048,
        block_size: 512,
        serial,
        unique_id,
        ..LunSpec::default()
    }
}

/// A disk served from user mode: the refusals a server meets (FETCH before ATTACH, a second
/// ATTACH, an unknown tag, a LUN that does not exist), the I/O the system sends served from
/// memory (on storsim the disk class model writes and reads back a block; on Windows the
/// system reads the new disk), and LUN_REMOVE ending the session.
fn disk_served_from_user_mode<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let lun = a
        .create_lun(unique_spec("SERVED"))
        .map_err(|e| e.to_string())?;
    let server = ctx.open(1)?;
    let status = |adapter: &Adapter<'_, T>, record: &[u8], out: u32| {
        adapter
            .raw(record, out, PROMPT)
            .map(|done| done.status)
            .map_err(|e| e.to_string())
    };
    let fetch = crate::client::encode(&Request::Fetch { max_descriptors: 1 });
    check!(
        status(&server, &fetch, FetchRoom::MOST.size(1))? == STATUS_INVALID_DEVICE_STATE,
        "a FETCH before any ATTACH was not refused INVALID_DEVICE_STATE"
    );
    let mut session = Session::attach(&server, lun, 8, 2).map_err(|e| e.to_string())?;
    let again = crate::client::encode(&Request::Attach { lun });
    check!(
        status(&server, &again, 16)? == STATUS_INVALID_DEVICE_STATE,
        "a second ATTACH on one handle was not refused INVALID_DEVICE_STATE"
    );
    let unknown = Answer {
        results: vec![CommitResult {
            tag: u64::MAX << 16,
            ..CommitResult::default()
        }],
        data: Vec::new(),
    };
    check!(
        status(&server, &unknown.encode(0), FetchRoom::MOST.size(0))? == STATUS_NOT_FOUND,
        "a COMMIT of a tag never handed out was not refused NOT_FOUND"
    );
    let luns = a.list_luns().map_err(|e| e.to_string())?;
    if let Some(absent) = (0..8).find(|n| luns.iter().all(|e| e.lun != *n)) {
        let other = ctx.open(1)?;
        let attach = crate::client::encode(&Request::Attach { lun: absent });
        check!(
            status(&other, &attach, 16)? == STATUS_NO_SUCH_DEVICE,
            "ATTACH to LUN {absent}, which does not exist, was not refused NO_SUCH_DEVICE"
        );
        other.close();
    }
    let mut disk = MemoryDisk::new(512, 2048);
    let mut served = 0;
    let mut step = |served: &mut usize| -> Result<bool, String> {
        match session
            .step(512, &mut disk, Duration::from_millis(50))
            .map_err(|e| e.to_string())?
        {
            Step::Served(n) => *served += n,
            Step::Idle => {}
            Step::Ended => return Ok(false),
        }
        Ok(true)
    };
    let io = match ctx.transport.lab().filter(|lab| lab.has_disk_class()) {
        Some(lab) => {
            let block: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
            let read = std::thread::scope(|scope| {
                let io = scope.spawn(|| lab.disk_write_read(lun as u8, 16, &block));
                while !io.is_finished() {
                    step(&mut served)?;
                }
                io.join()
                    .map_err(|_| "the disk class thread panicked".to_string())?
            })?;
            check!(read == block, "block 16 read back other bytes");
            check!(
                served == 2,
                "{served} SRBs served for one WRITE and one READ"
            );
            "a WRITE and a READ back served".to_string()
        }
        None => {
            // Windows reads a new disk (its partition table) at once.
            let deadline = Instant::now() + Duration::from_secs(15);
            while served == 0 && Instant::now() < deadline {
                step(&mut served)?;
            }
            check!(served > 0, "Windows sent the new disk no I/O within 15 s");
            format!("{served} SRBs of Windows' own served")
        }
    };
    a.remove_lun(lun).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + PROMPT;
    while step(&mut served)? {
        check!(
            Instant::now() < deadline,
            "the session did not end with its LUN"
        );
    }
    let ended = session.stop();
    check!(
        ended == Some(STATUS_SUCCESS),
        "the ATTACH ended {ended:?}, not SUCCESS with its LUN"
    );
    server.close();
    a.close();
    Ok(format!("LUN {lun}: {io}; the session ended with the LUN"))
}

/// LUN_CREATE, LUN_LIST, LUN_REMOVE, each refusal, and the events that tell them. The LUN is
/// small and removed at once: on Windows the disk appears and goes (its I/O fails NOT READY
/// while no server serves it).
fn luns_create_list_remove<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waiting = a.post_wait(CURSOR_NOW, 8).map_err(|e| e.to_string())?;
    let spec = unique_spec("SELFTEST");
    let lun = a.create_lun(spec).map_err(|e| e.to_string())?;
    let refused = |result: Result<u32, RequestError>, status: u32| matches!(result, Err(RequestError::Status(s)) if s == status);
    check!(
        refused(a.create_lun(spec), STATUS_OBJECT_NAME_COLLISION),
        "a second LUN with the same serial was not refused OBJECT_NAME_COLLISION"
    );
    let listed = a.list_luns().map_err(|e| e.to_string())?;
    check!(
        listed
            .iter()
            .any(|e| e.lun == lun && e.block_count == 2048 && e.block_size == 512),
        "LUN {lun} not in LUN_LIST: {listed:?}"
    );
    a.remove_lun(lun).map_err(|e| e.to_string())?;
    check!(
        matches!(
            a.remove_lun(lun),
            Err(RequestError::Status(STATUS_NO_SUCH_DEVICE))
        ),
        "removing LUN {lun} twice was not refused NO_SUCH_DEVICE"
    );
    until(ctx, &a, waiting, |e| {
        e.kind == EventKind::LunRemoved as u32 && e.arg0 == u64::from(lun)
    })?;
    a.close();
    Ok(format!("LUN {lun} created, listed, removed"))
}

fn stats_count<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let before = a.stats().map_err(|e| e.to_string())?;
    a.fire(8, 8).map_err(|e| e.to_string())?;
    let after = a.stats().map_err(|e| e.to_string())?;
    check!(
        after.head_seq == before.head_seq + 1
            && after.events_injected == before.events_injected + 1,
        "{before:?} → {after:?}"
    );
    check!(
        after.parked_cap >= 1 && after.ring_capacity >= 1,
        "{after:?}"
    );
    a.close();
    Ok(format!("head {} → {}", before.head_seq, after.head_seq))
}

/// STATS agrees with what this client saw: every request it completed, cancelled or refused
/// is counted once, and the DiscoveryComplete event names as many DISCOVERs as joined it.
fn stats_match_what_the_client_saw<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let before = a.stats().map_err(|e| e.to_string())?;
    for round in 0..3 {
        a.fire(10, round).map_err(|e| e.to_string())?;
    }
    let refused = a
        .raw(&[0xFF; 3], 64, PROMPT)
        .map_err(|e| e.to_string())?
        .status;
    check!(
        refused == STATUS_INVALID_PARAMETER,
        "a 3-byte request: {refused:#x}"
    );
    let doomed = a.post_wait(CURSOR_NOW, 1).map_err(|e| e.to_string())?;
    ctx.transport.cancel(a.handle, &doomed);
    let cancelled = ctx
        .transport
        .wait(&doomed, PROMPT)
        .ok_or("the cancelled WAIT never completed")?;
    check!(
        cancelled.status == STATUS_CANCELLED,
        "{:#x}",
        cancelled.status
    );
    let waiting = a.post_wait(CURSOR_NOW, 8).map_err(|e| e.to_string())?;
    let first = a.discover(20).map_err(|e| e.to_string())?;
    let second = a.discover(20).map_err(|e| e.to_string())?;
    check!(second.id == first.id, "the second DISCOVER did not join");
    let joined = std::cell::Cell::new(None);
    until(ctx, &a, waiting, |e| {
        let done = e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == first.id;
        if done {
            joined.set(Some(e.arg1));
        }
        done
    })?;
    let joined = joined.get();
    check!(
        joined == Some(2),
        "DiscoveryComplete says {joined:?} joined, 2 did"
    );
    let after = a.stats().map_err(|e| e.to_string())?;
    // Completed since `before` was answered: that STATS itself, 3 FIREs, the refusal, the
    // cancelled WAIT, 2 DISCOVERs and the WAITs `until` saw complete (at least one).
    let completed = after.completed - before.completed;
    check!(
        (9..=9 + 8).contains(&completed),
        "completed grew by {completed}: {before:?} → {after:?}"
    );
    check!(
        (
            after.cancelled - before.cancelled,
            after.rejected - before.rejected,
            after.events_injected - before.events_injected,
            after.discoveries_started - before.discoveries_started,
            after.discoveries_completed - before.discoveries_completed,
        ) == (1, 1, 3, 1, 1),
        "{before:?} → {after:?}"
    );
    a.close();
    Ok(format!(
        "{completed} completions, 1 cancelled, 1 refused, 3 fired, 1 discovery joined by 2"
    ))
}

fn cancel_one<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let keep = a.post_wait(CURSOR_NOW, 1).map_err(|e| e.to_string())?;
    let doomed = a.post_wait(CURSOR_NOW, 1).map_err(|e| e.to_string())?;
    check!(ctx.pending(&doomed), "completed early");
    ctx.transport.cancel(a.handle, &doomed);
    let cancelled = ctx
        .transport
        .wait(&doomed, PROMPT)
        .ok_or("the cancelled WAIT never completed")?;
    check!(
        cancelled.status == STATUS_CANCELLED,
        "status {:#x}",
        cancelled.status
    );
    check!(
        ctx.pending(&keep),
        "cancelling one WAIT completed the other"
    );
    a.fire(9, 9).map_err(|e| e.to_string())?;
    check!(
        ctx.transport
            .wait(&keep, PROMPT)
            .is_some_and(|c| c.status == STATUS_SUCCESS),
        "the kept WAIT did not deliver"
    );
    a.close();
    Ok("one cancelled, the other delivered".into())
}

fn cancel_all<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waits: Vec<_> = (0..5)
        .map(|_| a.post_wait(CURSOR_NOW, 1))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ctx.transport.cancel_all(a.handle);
    for wait in &waits {
        let got = ctx
            .transport
            .wait(wait, PROMPT)
            .ok_or("a WAIT survived CancelIoEx(handle, NULL)")?;
        check!(got.status == STATUS_CANCELLED, "status {:#x}", got.status);
    }
    a.close();
    Ok("5 WAITs cancelled with STATUS_CANCELLED".into())
}

fn parked_cap<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let stats = a.stats().map_err(|e| e.to_string())?;
    let room = stats.parked_cap - stats.parked_now;
    let waits: Vec<_> = (0..room)
        .map(|_| a.post_wait(CURSOR_NOW, 1))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let over = a
        .raw(
            &encode(&Request::Wait {
                cursor: CURSOR_NOW,
                max_events: 1,
            }),
            96,
            PROMPT,
        )
        .map_err(|e| e.to_string())?;
    check!(
        over.status == STATUS_QUOTA_EXCEEDED,
        "request {} past the cap: status {:#x}",
        room + 1,
        over.status
    );
    ctx.transport.cancel_all(a.handle);
    for wait in &waits {
        check!(
            ctx.transport
                .wait(wait, PROMPT)
                .is_some_and(|c| c.status == STATUS_CANCELLED),
            "a parked WAIT was not cancelled"
        );
    }
    a.close();
    Ok(format!(
        "cap {}: request {} refused with STATUS_QUOTA_EXCEEDED",
        stats.parked_cap,
        room + 1
    ))
}

fn null_buffer<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    expect_status(&a, &[], 0, STATUS_INVALID_PARAMETER)?;
    expect_status(&a, &[], 64, STATUS_INVALID_PARAMETER)
}

/// Class `C` of the malformed-request catalogue (`revcall_client::malformed`, which the
/// torture draws from too): 20 samples, each refused with the class's status. (Its last class,
/// another I/O control code, needs a transport that sends other codes: the tests cover it.)
fn refuses<T: Transport, const C: usize>(ctx: &Ctx<'_, T>) -> Outcome {
    let class = Class::ALL[C];
    let a = ctx.open(1)?;
    let mut rng = fastrand::Rng::with_seed(C as u64);
    for _ in 0..20 {
        let bad = malformed::sample(class, &mut rng, 1 << 20);
        expect_status(&a, &bad.input, bad.out_len, bad.expected)?;
    }
    Ok(format!("20 requests of class {class:?} refused"))
}

fn huge_input<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    expect_status(
        &a,
        &record(Opcode::Stats as u16, &vec![0; 65536 - 8]),
        256,
        STATUS_INVALID_PARAMETER,
    )
}

fn lengths_around_records<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let mut checked = 0;
    // Each record, the output room it gets, and what its exact form completes with.
    let records = [
        (
            Request::Wait {
                cursor: 0,
                max_events: 1,
            },
            256,
            STATUS_SUCCESS,
        ),
        (Request::Fire { code: 0, value: 0 }, 256, STATUS_SUCCESS),
        (Request::Discover { delay_ms: 1 }, 256, STATUS_SUCCESS),
        (Request::Stats, 256, STATUS_SUCCESS),
        // No LUN 4000 exists: the exact record reaches the LUN table and is refused there.
        (Request::LunRemove { lun: 4000 }, 256, STATUS_NO_SUCH_DEVICE),
        (Request::LunList, 512, STATUS_SUCCESS),
    ];
    for (request, out_len, valid) in records {
        let exact = encode(&request);
        for len in exact.len().saturating_sub(2)..=exact.len() + 2 {
            let mut input = exact.clone();
            input.resize(len, 0);
            if len >= 4 {
                input[..4].copy_from_slice(&(len as u32).to_le_bytes());
            }
            let want = decode_request(&input).map_or_else(|error| error.status(), |_| valid);
            expect_status(&a, &input, out_len, want)?;
            checked += 1;
        }
    }
    Ok(format!("{checked} lengths around six record sizes"))
}

fn handle_close_keeps_parked<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let other = ctx.open(2)?;
    let waiting = a.post_wait(CURSOR_NOW, 1).map_err(|e| e.to_string())?;
    a.close();
    if let Some(early) = ctx.transport.wait(&waiting, SETTLE) {
        return Err(format!(
            "closing the handle completed its WAIT (no cleanup reaches a Storport miniport): {early:?}"
        ));
    }
    let seq = other.fire(10, 10).map_err(|e| e.to_string())?;
    let got = ctx.delivered(&waiting)?;
    check!(
        got.events.last().map(|e| e.seq) == Some(seq),
        "got {:?}",
        got.events
    );
    other.close();
    Ok("a WAIT outlives CloseHandle and still delivers".into())
}

fn process_exit_cancels<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(77)?;
    let waits: Vec<_> = (0..3)
        .map(|_| a.post_wait(CURSOR_NOW, 1))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ctx.lab().exit_process(77);
    for wait in &waits {
        let got = ctx
            .transport
            .wait(wait, ctx.lab().settle())
            .ok_or("still pending after process exit")?;
        check!(got.status == STATUS_CANCELLED, "status {:#x}", got.status);
    }
    Ok("3 WAITs cancelled by process exit".into())
}

fn removal<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waits: Vec<_> = (0..3)
        .map(|_| a.post_wait(CURSOR_NOW, 4))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    check!(waits.iter().all(|w| ctx.pending(w)), "completed early");
    ctx.lab().remove();
    for wait in &waits {
        let got = ctx
            .transport
            .wait(wait, ctx.lab().settle())
            .ok_or("a parked WAIT survived removal")?;
        let final_reply = delivery(&got).is_ok_and(|d| d.reply.flags & WaitFlags::FINAL != 0);
        check!(
            got.status == STATUS_DEVICE_REMOVED || final_reply,
            "status {:#x}, not FINAL",
            got.status
        );
    }
    // Refused when it completes, or already in the call (no IRP pended either way).
    let late = match a.raw(&encode(&Request::Stats), 256, PROMPT) {
        Ok(done) => done.status,
        Err(RequestError::Status(status)) => status,
        Err(other) => return Err(other.to_string()),
    };
    check!(
        late == ctx.lab().refusal_after_removal(),
        "a request after removal: {late:#x}"
    );
    a.close();
    ctx.lab().restart().map_err(|e| e.to_string())?;
    Ok("removal completed 3 parked WAITs; a later request is refused".into())
}

fn surprise_removal<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let a = ctx.open(1)?;
    let waits: Vec<_> = (0..3)
        .map(|_| a.post_wait(CURSOR_NOW, 4))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    ctx.lab().surprise_remove();
    for wait in &waits {
        check!(
            ctx.transport.wait(wait, ctx.lab().settle()).is_some(),
            "a parked WAIT survived surprise removal"
        );
    }
    ctx.lab().remove();
    a.close();
    ctx.lab().restart().map_err(|e| e.to_string())?;
    Ok("surprise removal completed 3 parked WAITs".into())
}

fn verifier_clean<T: Transport>(ctx: &Ctx<'_, T>) -> Outcome {
    let violations = ctx.lab().violations();
    check!(violations.is_empty(), "verifier: {violations:#?}");
    Ok("no verifier violation so far".into())
}

/// Every case: name, needs the lab, body.
type Case<T> = (&'static str, bool, fn(&Ctx<'_, T>) -> Outcome);

fn cases<T: Transport>() -> Vec<Case<T>> {
    vec![
        ("park_then_fire", false, park_then_fire),
        ("k_outstanding_on_one_handle", false, k_outstanding),
        ("broadcast_to_several_handles", false, broadcast),
        ("batching", false, batching),
        ("more_flag_and_cursor_resume", false, more_flag_and_cursor),
        ("loss_detection_by_ring_overflow", false, loss_detection),
        ("watcher_misses_nothing", false, watcher_misses_nothing),
        ("discover_completes_later", false, discover_completes_later),
        ("discover_coalesces", false, discover_coalesces),
        ("stats_count_events", false, stats_count),
        ("luns_create_list_remove", false, luns_create_list_remove),
        (
            "disk_served_from_user_mode",
            false,
            disk_served_from_user_mode,
        ),
        (
            "stats_match_what_the_client_saw",
            false,
            stats_match_what_the_client_saw,
        ),
        ("cancel_one", false, cancel_one),
        ("cancel_all", false, cancel_all),
        ("parked_request_cap", false, parked_cap),
        ("null_buffer", false, null_buffer),
        ("truncated_header", false, refuses::<T, 0>),
        ("wrong_version", false, refuses::<T, 1>),
        ("size_field_mismatch", false, refuses::<T, 2>),
        ("unknown_opcode", false, refuses::<T, 3>),
        ("wrong_body_length", false, refuses::<T, 4>),
        ("reserved_not_zero", false, refuses::<T, 5>),
        ("invalid_arguments", false, refuses::<T, 6>),
        ("cursor_from_the_future", false, refuses::<T, 7>),
        ("output_too_small", false, refuses::<T, 8>),
        ("huge_input", false, huge_input),
        ("lengths_around_each_record", false, lengths_around_records),
        (
            "handle_close_keeps_parked_waits",
            true,
            handle_close_keeps_parked,
        ),
        (
            "process_exit_cancels_parked_waits",
            true,
            process_exit_cancels,
        ),
        ("removal_with_parked_waits", true, removal),
        ("surprise_removal_with_parked_waits", true, surprise_removal),
        ("verifier_clean", true, verifier_clean),
    ]
}

/// Runs every case in order; `progress` hears each result as it comes.
pub fn run<T: Transport>(transport: &T, mut progress: impl FnMut(&CaseResult)) -> Report {
    let ctx = Ctx { transport };
    let mut results = Vec::new();
    for (name, needs_lab, body) in cases::<T>() {
        let started = Instant::now();
        let (outcome, detail) = if needs_lab && transport.lab().is_none() {
            (
                "skipped",
                "needs storsim (process exit, removal)".to_owned(),
            )
        } else {
            ctx.quiesce();
            match body(&ctx) {
                Ok(detail) => ("passed", detail),
                Err(detail) => ("failed", detail),
            }
        };
        let result = CaseResult {
            name,
            outcome,
            detail,
            ms: started.elapsed().as_secs_f64() * 1e3,
        };
        progress(&result);
        results.push(result);
    }
    Report::from(transport.name(), results)
}

impl Report {
    pub fn from(backend: &'static str, cases: Vec<CaseResult>) -> Self {
        let count = |what| cases.iter().filter(|c| c.outcome == what).count();
        Self {
            backend,
            passed: count("passed"),
            failed: count("failed"),
            skipped: count("skipped"),
            cases,
        }
    }
}
