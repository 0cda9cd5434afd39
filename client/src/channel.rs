//! The client side of revcall's channel over any [`Transport`]: requests and their replies,
//! and a [`Watcher`] that keeps K WAITs outstanding, follows its cursor and counts what it lost.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use revcall_protocol::status::STATUS_SUCCESS;
use revcall_protocol::{
    CURSOR_NOW, DiscoverReply, EventRecord, LunEntry, LunSpec, MAX_REQUEST_SIZE, Opcode, Reply,
    Request, StatsReply, WaitReply, decode_reply, encode_request,
};

use crate::transport::{Completion, Transport, TransportError};

/// How long a request that should complete promptly may take.
pub const PROMPT: Duration = Duration::from_secs(5);

/// What went wrong with a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("the driver answered {0:#010x}{desc}", desc = describe(*.0))]
    Status(u32),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the reply does not decode: {0}")]
    BadReply(String),
}

/// A word on a status: its name, and for the ones a user meets most, what it means here.
pub fn describe(status: u32) -> String {
    use revcall_protocol::status::*;
    let meaning = match status {
        STATUS_REVISION_MISMATCH => ": the driver speaks another protocol version",
        STATUS_NOT_SUPPORTED => ": FIRE is disabled by EnableFireInjection",
        STATUS_DELETE_PENDING => ": the adapter is being removed",
        STATUS_QUOTA_EXCEEDED => ": too many requests parked (or disks, or servers)",
        STATUS_NO_SUCH_DEVICE => ": no such LUN",
        STATUS_OBJECT_NAME_COLLISION => ": another disk has that serial number or unique id",
        STATUS_INVALID_DEVICE_STATE => {
            ": this handle serves no LUN (ATTACH first), or already serves one"
        }
        STATUS_NOT_FOUND => ": no such tag is outstanding (never fetched, or already committed)",
        STATUS_ACCESS_DENIED => ": the tag was fetched by another server",
        STATUS_INVALID_BUFFER_SIZE => ": the READ data is not the size the SRB asked for",
        _ => "",
    };
    name(status).map_or_else(String::new, |name| format!(" ({name}{meaning})"))
}

/// Room for a WAIT reply with `max_events` events.
pub fn wait_reply_size(max_events: u32) -> u32 {
    64 + 32 * max_events.max(1)
}

/// Encodes a request.
pub fn encode(request: &Request) -> Vec<u8> {
    let mut bytes = [0u8; MAX_REQUEST_SIZE];
    let len = encode_request(request, &mut bytes).expect("every request fits MAX_REQUEST_SIZE");
    bytes[..len].to_vec()
}

/// An open handle to an adapter.
pub struct Adapter<'t, T: Transport> {
    pub transport: &'t T,
    pub handle: T::Handle,
}

impl<'t, T: Transport> Adapter<'t, T> {
    pub fn open(transport: &'t T, process: u32) -> Result<Self, TransportError> {
        Ok(Self {
            transport,
            handle: transport.open(process)?,
        })
    }

    /// Sends raw bytes; the completion, or the status refused before the driver.
    pub fn raw(
        &self,
        input: &[u8],
        out_len: u32,
        limit: Duration,
    ) -> Result<Completion, RequestError> {
        let pending = self
            .transport
            .submit(self.handle, input, out_len)
            .map_err(RequestError::Status)?;
        self.transport
            .wait(&pending, limit)
            .ok_or(RequestError::Timeout(limit))
    }

    /// Sends a request and waits for its completion.
    pub fn call(&self, request: &Request, out_len: u32) -> Result<Completion, RequestError> {
        self.raw(&encode(request), out_len, PROMPT)
    }

    /// FIRE: the new event's sequence number.
    pub fn fire(&self, code: u32, value: u64) -> Result<u64, RequestError> {
        let completion = self.call(&Request::Fire { code, value }, 64)?;
        fired(completion.status, &completion.output)
    }

    pub fn discover(&self, delay_ms: u32) -> Result<DiscoverReply, RequestError> {
        let completion = self.call(&Request::Discover { delay_ms }, 64)?;
        discovery(completion.status, &completion.output)
    }

    pub fn stats(&self) -> Result<StatsReply, RequestError> {
        let completion = self.call(&Request::Stats, 256)?;
        stats(completion.status, &completion.output)
    }

    /// LUN_CREATE: the new LUN's number.
    pub fn create_lun(&self, spec: LunSpec) -> Result<u32, RequestError> {
        let completion = self.call(&Request::LunCreate(spec), 64)?;
        lun_created(completion.status, &completion.output)
    }

    pub fn remove_lun(&self, lun: u32) -> Result<(), RequestError> {
        let completion = self.call(&Request::LunRemove { lun }, 64)?;
        lun_removed(completion.status, &completion.output)
    }

    pub fn list_luns(&self) -> Result<Vec<LunEntry>, RequestError> {
        let room = Opcode::LunList.min_reply_size() as u32;
        let completion = self.call(&Request::LunList, room)?;
        luns_listed(completion.status, &completion.output)
    }

    /// Posts a WAIT without waiting for it.
    pub fn post_wait(&self, cursor: u64, max_events: u32) -> Result<T::Pending, RequestError> {
        self.transport
            .submit(
                self.handle,
                &encode(&Request::Wait { cursor, max_events }),
                wait_reply_size(max_events),
            )
            .map_err(RequestError::Status)
    }

    pub fn close(self) {
        self.transport.close(self.handle);
    }
}

/// The reply of a completed request (its status and output bytes), if it succeeded and
/// decodes.
fn reply(status: u32, output: &[u8]) -> Result<Reply<'_>, RequestError> {
    if status != STATUS_SUCCESS {
        return Err(RequestError::Status(status));
    }
    decode_reply(output).map_err(|e| RequestError::BadReply(format!("{e:?}")))
}

fn unexpected(reply: Reply<'_>) -> RequestError {
    RequestError::BadReply(format!("{reply:?}"))
}

/// A completed FIRE: the new event's sequence number.
pub fn fired(status: u32, output: &[u8]) -> Result<u64, RequestError> {
    match reply(status, output)? {
        Reply::Fire(reply) => Ok(reply.seq),
        other => Err(unexpected(other)),
    }
}

/// A completed DISCOVER.
pub fn discovery(status: u32, output: &[u8]) -> Result<DiscoverReply, RequestError> {
    match reply(status, output)? {
        Reply::Discover(reply) => Ok(reply),
        other => Err(unexpected(other)),
    }
}

/// A completed LUN_CREATE: the LUN's number.
pub fn lun_created(status: u32, output: &[u8]) -> Result<u32, RequestError> {
    match reply(status, output)? {
        Reply::LunCreate(reply) => Ok(reply.lun),
        other => Err(unexpected(other)),
    }
}

/// A completed LUN_REMOVE.
pub fn lun_removed(status: u32, output: &[u8]) -> Result<(), RequestError> {
    match reply(status, output)? {
        Reply::LunRemove => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// A completed LUN_LIST.
pub fn luns_listed(status: u32, output: &[u8]) -> Result<Vec<LunEntry>, RequestError> {
    match reply(status, output)? {
        Reply::LunList(entries) => Ok(entries.collect()),
        other => Err(unexpected(other)),
    }
}

/// A completed STATS.
pub fn stats(status: u32, output: &[u8]) -> Result<StatsReply, RequestError> {
    match reply(status, output)? {
        Reply::Stats(reply) => Ok(reply),
        other => Err(unexpected(other)),
    }
}

/// A WAIT's reply, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub reply: WaitReply,
    pub events: Vec<EventRecord>,
}

/// Decodes a completed WAIT.
pub fn delivery(completion: &Completion) -> Result<Delivery, RequestError> {
    wait_delivery(completion.status, &completion.output)
}

/// Decodes a completed WAIT from its status and output bytes.
pub fn wait_delivery(status: u32, output: &[u8]) -> Result<Delivery, RequestError> {
    match reply(status, output)? {
        Reply::Wait { reply, events } => Ok(Delivery {
            reply,
            events: events.collect(),
        }),
        other => Err(unexpected(other)),
    }
}

/// New events for a watcher, and how many it provably missed before them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<EventRecord>,
    pub lost: u64,
    /// The adapter said this is its last word (FINAL).
    pub last: bool,
}

/// Keeps `depth` WAITs outstanding on one handle (the inverted-call pattern: an event that
/// fires between a completion and the re-send still finds a WAIT), re-arms each with the
/// newest cursor, drops events already seen, and counts gaps in the sequence as lost.
pub struct Watcher<'a, 't, T: Transport> {
    adapter: &'a Adapter<'t, T>,
    outstanding: VecDeque<T::Pending>,
    cursor: u64,
    last_seq: Option<u64>,
    max_events: u32,
    pub delivered: u64,
    pub lost: u64,
}

impl<'a, 't, T: Transport> Watcher<'a, 't, T> {
    /// Starts at `cursor` (0: everything retained, [`CURSOR_NOW`]: only new events).
    pub fn start(
        adapter: &'a Adapter<'t, T>,
        depth: usize,
        cursor: u64,
        max_events: u32,
    ) -> Result<Self, RequestError> {
        let mut watcher = Self {
            adapter,
            outstanding: VecDeque::new(),
            cursor,
            last_seq: None,
            max_events,
            delivered: 0,
            lost: 0,
        };
        for _ in 0..depth.max(1) {
            watcher
                .outstanding
                .push_back(adapter.post_wait(cursor, max_events)?);
        }
        Ok(watcher)
    }

    /// WAITs in flight.
    pub fn depth(&self) -> usize {
        self.outstanding.len()
    }

    /// Waits up to `limit` for the oldest WAIT; `Ok(None)` if nothing arrived.
    pub fn next(&mut self, limit: Duration) -> Result<Option<Batch>, RequestError> {
        let deadline = Instant::now() + limit;
        let Some(front) = self.outstanding.front() else {
            return Ok(None);
        };
        let Some(completion) = self
            .adapter
            .transport
            .wait(front, deadline.saturating_duration_since(Instant::now()))
        else {
            return Ok(None);
        };
        self.outstanding.pop_front();
        let delivery = delivery(&completion)?;
        let mut batch = Batch {
            last: delivery.reply.flags & revcall_protocol::WaitFlags::FINAL != 0,
            ..Batch::default()
        };
        for event in delivery.events {
            if self.last_seq.is_some_and(|last| event.seq <= last) {
                continue;
            }
            let expected = self
                .last_seq
                .map_or(event.seq - delivery.reply.lost, |last| last + 1);
            batch.lost += event.seq - expected;
            self.last_seq = Some(event.seq);
            batch.events.push(event);
        }
        if self.cursor == CURSOR_NOW || delivery.reply.cursor > self.cursor {
            self.cursor = delivery.reply.cursor;
        }
        self.delivered += batch.events.len() as u64;
        self.lost += batch.lost;
        if !batch.last {
            self.outstanding
                .push_back(self.adapter.post_wait(self.cursor, self.max_events)?);
        }
        Ok(Some(batch))
    }

    /// Cancels every WAIT still out and collects their completions, so nothing is left behind.
    pub fn stop(mut self) -> Vec<Completion> {
        for pending in &self.outstanding {
            self.adapter.transport.cancel(self.adapter.handle, pending);
        }
        self.outstanding
            .drain(..)
            .filter_map(|p| self.adapter.transport.wait(&p, PROMPT))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use revcall_protocol::{EventKind, WaitFlags, WaitReplyWriter};

    use super::*;

    /// Answers each WAIT, in order, with the next scripted reply; nothing is ever pending.
    struct Scripted {
        replies: Mutex<VecDeque<Completion>>,
        cancelled: Mutex<usize>,
    }

    impl Scripted {
        fn new(replies: Vec<Completion>) -> Self {
            Self {
                replies: Mutex::new(replies.into()),
                cancelled: Mutex::new(0),
            }
        }
    }

    /// A WAIT reply carrying `seqs`.
    fn reply(seqs: &[u64], lost: u64, flags: u32) -> Completion {
        let mut out = vec![0u8; 64 + 32 * seqs.len().max(1)];
        let mut writer = WaitReplyWriter::new(&mut out, 16).expect("room for one event");
        for &seq in seqs {
            let event = EventRecord {
                seq,
                kind: EventKind::Injected as u32,
                ..EventRecord::EMPTY
            };
            assert!(writer.push(&event));
        }
        let len = writer.finish(seqs.last().copied().unwrap_or(0), lost, flags);
        out.truncate(len);
        Completion {
            status: 0,
            output: out,
        }
    }

    impl Transport for Scripted {
        type Handle = u32;
        type Pending = Option<Completion>;

        fn name(&self) -> &'static str {
            "scripted"
        }
        fn open(&self, _: u32) -> Result<u32, TransportError> {
            Ok(1)
        }
        fn submit(&self, _: u32, _: &[u8], _: u32) -> Result<Option<Completion>, u32> {
            Ok(self.replies.lock().unwrap().pop_front())
        }
        fn wait(&self, pending: &Option<Completion>, _: Duration) -> Option<Completion> {
            pending.clone()
        }
        fn cancel(&self, _: u32, _: &Option<Completion>) {
            *self.cancelled.lock().unwrap() += 1;
        }
        fn cancel_all(&self, _: u32) {}
        fn close(&self, _: u32) {}
    }

    fn seqs(batch: &Batch) -> Vec<u64> {
        batch.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn outstanding_waits_repeating_an_event_deliver_it_once() {
        let transport = Scripted::new(vec![
            reply(&[5], 0, 0),
            reply(&[5], 0, 0),
            reply(&[6], 0, 0),
        ]);
        let adapter = Adapter::open(&transport, 0).unwrap();
        let mut watcher = Watcher::start(&adapter, 2, CURSOR_NOW, 4).unwrap();
        assert_eq!(seqs(&watcher.next(PROMPT).unwrap().unwrap()), vec![5]);
        assert_eq!(
            seqs(&watcher.next(PROMPT).unwrap().unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(seqs(&watcher.next(PROMPT).unwrap().unwrap()), vec![6]);
        assert_eq!((watcher.delivered, watcher.lost), (2, 0));
    }

    #[test]
    fn gaps_in_the_sequence_are_counted_as_lost() {
        let transport = Scripted::new(vec![reply(&[10, 11], 3, 0), reply(&[14], 0, 0)]);
        let adapter = Adapter::open(&transport, 0).unwrap();
        let mut watcher = Watcher::start(&adapter, 1, 6, 4).unwrap();
        let first = watcher.next(PROMPT).unwrap().unwrap();
        assert_eq!(
            (seqs(&first), first.lost),
            (vec![10, 11], 3),
            "the driver's own lost count for the first reply"
        );
        let second = watcher.next(PROMPT).unwrap().unwrap();
        assert_eq!(
            (seqs(&second), second.lost),
            (vec![14], 2),
            "12 and 13 never arrived"
        );
        assert_eq!(watcher.lost, 5);
    }

    #[test]
    fn a_final_reply_is_not_re_armed_and_stop_cancels_the_rest() {
        let transport = Scripted::new(vec![reply(&[1], 0, WaitFlags::FINAL), reply(&[1], 0, 0)]);
        let adapter = Adapter::open(&transport, 0).unwrap();
        let mut watcher = Watcher::start(&adapter, 2, CURSOR_NOW, 4).unwrap();
        let batch = watcher.next(PROMPT).unwrap().unwrap();
        assert!(batch.last);
        assert_eq!(watcher.depth(), 1, "the FINAL WAIT was not re-armed");
        assert_eq!(watcher.stop().len(), 1);
        assert_eq!(*transport.cancelled.lock().unwrap(), 1);
    }

    #[test]
    fn errors_name_the_status() {
        assert!(
            RequestError::Status(0xC000_0059)
                .to_string()
                .contains("protocol version")
        );
        assert_eq!(wait_reply_size(0), 96);
    }
}
